//! Where the broker's Redis is: one address (`redis://`), or the master that Redis Sentinel
//! names (`redis+sentinel://`), asked again on every (re)connect so that a node follows a
//! failover by itself.
//!
//! A URL's query may also set how a failover is made safe (see the crate doc, "Failover"):
//! `epoch=master|offset` ([`EpochRule`]), `wait=<replicas>` and `wait-timeout=<ms>`
//! ([`RedisConfig::wait_replicas`], [`RedisConfig::wait_timeout`]).

use std::time::Duration;

use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{IntoConnectionInfo, RedisConnectionInfo};

use crate::{EpochRule, RedisConfig};

/// Time allowed to ask the sentinels for the master and to check that it is one. Covers a
/// sentinel that does not answer (the next one is asked) and a named master that is down.
pub const SENTINEL_TIMEOUT: Duration = Duration::from_secs(3);

/// Most sentinel addresses in one URL: a deployment has three or five; more is a typo.
pub const MAX_SENTINELS: usize = 16;

/// How connections to Redis are made.
pub(crate) enum Target {
    /// One address; a failover must keep it (a virtual IP, a proxy).
    Direct(redis::Client),
    /// Ask the sentinels for the master named `master`, then connect there with `node`'s
    /// database and credentials.
    Sentinel {
        /// `Sentinel`'s lookups take `&mut self`; only the supervisor asks, one lookup at a
        /// time, so this lock is never contended.
        sentinel: tokio::sync::Mutex<Sentinel>,
        master: String,
        node: SentinelNodeConnectionInfo,
        /// The sentinels' own addresses (`redis://host:port/`), for `watch`.
        sentinels: Vec<String>,
    },
}

/// What a broker URL says: where, and the settings its query overrides.
pub(crate) struct Parsed {
    pub target: Target,
    pub epoch: Option<EpochRule>,
    pub wait_replicas: Option<usize>,
    pub wait_timeout: Option<Duration>,
}

impl Target {
    /// A client for the current master: the address itself, or whom the sentinels name now.
    pub async fn master(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Target::Direct(client) => Ok(client.clone()),
            Target::Sentinel {
                sentinel,
                master,
                node,
                ..
            } => {
                let lookup = async {
                    sentinel
                        .lock()
                        .await
                        .async_master_for(master, Some(node))
                        .await
                };
                match tokio::time::timeout(SENTINEL_TIMEOUT, lookup).await {
                    Ok(found) => found,
                    Err(_) => Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "no sentinel named a reachable master in time",
                    ))),
                }
            }
        }
    }

    #[cfg(test)]
    pub fn is_sentinel(&self) -> bool {
        matches!(self, Target::Sentinel { .. })
    }
}

/// How often the switch watcher pings its sentinel: a sentinel gone without a FIN is noticed
/// within this (plus `COMMAND_TIMEOUT`), and the next one is watched.
const WATCH_PING: Duration = Duration::from_secs(5);

/// Listens to the sentinels' `+switch-master` announcements (on one sentinel at a time, the
/// next when it fails) and tells the supervisor when the master it is on was replaced: a
/// master demoted while alive keeps answering until Sentinel reconfigures it, which can take
/// seconds; with this the nodes move as soon as the failover ends. A master that died is
/// followed without it (its connections fail).
pub(crate) async fn watch(
    shared: std::sync::Arc<crate::broker::Shared>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let Target::Sentinel {
        master, sentinels, ..
    } = &shared.target
    else {
        return;
    };
    let mut backoff = crate::RECONNECT_MIN;
    for url in sentinels.iter().cycle() {
        let error = tokio::select! {
            _ = cancel.cancelled() => return,
            e = watch_one(&shared, url, master, &mut backoff) => e,
        };
        tracing::debug!(%error, sentinel = %url, "redis broker: sentinel watch lost");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(crate::RECONNECT_MAX);
    }
}

async fn watch_one(
    shared: &crate::broker::Shared,
    url: &str,
    master: &str,
    backoff: &mut Duration,
) -> redis::RedisError {
    use futures_util::StreamExt;
    let failed = |what: &'static str| redis::RedisError::from((redis::ErrorKind::Io, what));
    let client = match redis::Client::open(url) {
        Ok(client) => client,
        Err(e) => return e,
    };
    let mut pubsub =
        match tokio::time::timeout(crate::CONNECT_TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => return e,
            Err(_) => return failed("sentinel connect timed out"),
        };
    match tokio::time::timeout(crate::COMMAND_TIMEOUT, pubsub.subscribe("+switch-master")).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return e,
        Err(_) => return failed("sentinel subscribe timed out"),
    }
    *backoff = crate::RECONNECT_MIN;
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(WATCH_PING);
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return failed("sentinel closed the connection");
                };
                // `<master name> <old ip> <old port> <new ip> <new port>`
                let text = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
                let parts: Vec<&str> = text.split(' ').collect();
                if let [name, _, _, ip, port] = parts[..]
                    && name == master
                {
                    switched(shared, ip, port);
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(crate::COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e,
                    Err(_) => return failed("sentinel ping timed out"),
                }
            }
        }
    }
}

/// The sentinels made `ip:port` the master: if this node's session is elsewhere, it ends.
fn switched(shared: &crate::broker::Shared, ip: &str, port: &str) {
    let here = shared
        .client()
        .map(|c| c.get_connection_info().addr().to_string());
    let there = format!("{ip}:{port}");
    if here.is_some_and(|here| here != there) && shared.current().is_some() {
        tracing::warn!(master = %there, "redis broker: Sentinel switched the master; reconnecting");
        shared.demoted.notify_one();
    }
}

/// Parses `redis://…`, `rediss://…` or `redis+sentinel://[user:password@]host:port[,host:port…]/master[/db]`,
/// each with an optional query of Halley's settings.
pub(crate) fn parse(url: &str) -> Result<Parsed, String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let (mut epoch, mut wait_replicas, mut wait_timeout) = (None, None, None);
    // Halley's settings are taken out; anything else stays for the redis crate (`protocol=`).
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "epoch" => {
                epoch = Some(match value {
                    "master" => EpochRule::Master,
                    "offset" => EpochRule::Offset,
                    _ => return Err(format!("epoch={value}: use master or offset")),
                })
            }
            "wait" => {
                wait_replicas = Some(
                    value
                        .parse()
                        .map_err(|_| format!("wait={value}: a number of replicas"))?,
                )
            }
            "wait-timeout" => {
                let ms: u64 = value
                    .parse()
                    .map_err(|_| format!("wait-timeout={value}: milliseconds"))?;
                if ms == 0 {
                    // WAIT's 0 is "forever": a dead replica would hold every publish.
                    return Err("wait-timeout must be at least 1 ms".into());
                }
                wait_timeout = Some(Duration::from_millis(ms));
            }
            _ => rest.push(pair),
        }
    }
    let query = if rest.is_empty() {
        String::new()
    } else {
        format!("?{}", rest.join("&"))
    };
    let target = match base.strip_prefix("redis+sentinel://") {
        Some(after) => sentinel(after)?,
        None => Target::Direct(redis::Client::open(format!("{base}{query}")).map_err(text)?),
    };
    Ok(Parsed {
        target,
        epoch,
        wait_replicas,
        wait_timeout,
    })
}

fn text(e: redis::RedisError) -> String {
    e.to_string()
}

/// `[user:password@]host:port[,host:port…]/master[/db]`: the credentials and database are
/// the master's (the sentinels are asked without).
fn sentinel(after: &str) -> Result<Target, String> {
    let (authority, path) = after
        .split_once('/')
        .ok_or("redis+sentinel:// needs /<master name> after the sentinels")?;
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let mut parts = path.split('/');
    let master = parts.next().unwrap_or_default();
    if master.is_empty() {
        return Err("redis+sentinel:// needs a master name".into());
    }
    let db: i64 = match parts.next() {
        None | Some("") => 0,
        Some(db) => db
            .parse()
            .map_err(|_| format!("{db:?} is not a database number"))?,
    };
    if parts.next().is_some_and(|p| !p.is_empty()) {
        return Err("redis+sentinel://…/<master>[/<db>]: too many path segments".into());
    }
    let mut sentinels = Vec::new();
    let mut urls = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() || !host.contains(':') {
            return Err(format!("sentinel {host:?}: use host:port"));
        }
        let url = format!("redis://{host}/");
        sentinels.push(url.as_str().into_connection_info().map_err(text)?);
        urls.push(url);
    }
    if sentinels.len() > MAX_SENTINELS {
        return Err(format!("more than {MAX_SENTINELS} sentinels"));
    }
    let mut redis = RedisConnectionInfo::default().set_db(db);
    if let Some(userinfo) = userinfo {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        if !user.is_empty() {
            redis = redis.set_username(user);
        }
        if !password.is_empty() {
            redis = redis.set_password(password);
        }
    }
    let sentinel = Sentinel::build(sentinels).map_err(text)?;
    Ok(Target::Sentinel {
        sentinel: tokio::sync::Mutex::new(sentinel),
        master: master.to_owned(),
        node: SentinelNodeConnectionInfo::default().set_redis_connection_info(redis),
        sentinels: urls,
    })
}

/// Applies what a URL's query said over `config`'s fields.
pub(crate) fn apply(parsed: &Parsed, config: &mut RedisConfig) {
    if let Some(epoch) = parsed.epoch {
        config.epoch = epoch;
    }
    if let Some(n) = parsed.wait_replicas {
        config.wait_replicas = n;
    }
    if let Some(t) = parsed.wait_timeout {
        config.wait_timeout = t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let check = |url: &str, expected: Result<(bool, Option<EpochRule>, Option<usize>), ()>| {
            let got = parse(url)
                .map(|p| (p.target.is_sentinel(), p.epoch, p.wait_replicas))
                .map_err(|_| ());
            assert_eq!(got, expected, "{url}");
        };
        check("redis://127.0.0.1:6379/2", Ok((false, None, None)));
        check(
            "redis://127.0.0.1:6379/?wait=1&epoch=master",
            Ok((false, Some(EpochRule::Master), Some(1))),
        );
        check(
            "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster",
            Ok((true, None, None)),
        );
        check(
            "redis+sentinel://:secret@127.0.0.1:26379/mymaster/3?wait=0&epoch=offset",
            Ok((true, Some(EpochRule::Offset), Some(0))),
        );
        check("redis+sentinel://127.0.0.1:26379", Err(()));
        check("redis+sentinel://127.0.0.1:26379/", Err(()));
        check("redis+sentinel://127.0.0.1:26379/m/x", Err(()));
        check("redis+sentinel://127.0.0.1:26379/m/1/2", Err(()));
        check("redis+sentinel://127.0.0.1/m", Err(()));
        check("redis+sentinel://127.0.0.1:1,,127.0.0.1:2/m", Err(()));
        check("redis://127.0.0.1/?epoch=never", Err(()));
        check("redis://127.0.0.1/?wait=x", Err(()));
        check("redis://127.0.0.1/?wait-timeout=0", Err(()));
    }
}
