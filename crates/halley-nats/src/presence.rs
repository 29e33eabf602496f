//! Presence across nodes: each node's subscriber counts and chat members in a JetStream
//! key-value bucket (`<stream>_PRESENCE`), one key per node, and every node's view of the
//! others from a watch on the bucket.
//!
//! Invariant: a node's entry is put when its counts or members change (checked every
//! [`NatsConfig::presence_interval`](crate::NatsConfig::presence_interval)) and at least every
//! third of [`NatsConfig::presence_ttl`](crate::NatsConfig::presence_ttl) otherwise; readers
//! drop an entry not refreshed for that TTL (counted from when this node received it, so that
//! clocks need not agree), and the bucket's `max_age` removes it from the server. A node that
//! dies thus vanishes from listings within the TTL (twice the TTL for a reader that starts
//! right after it died).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};

use futures_util::StreamExt;
use halley_engine::Member;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::Shared;
use crate::node::{RECONNECT_MAX, RECONNECT_MIN};

/// Most other nodes whose presence a node keeps (a bound on the table, not expected to be
/// reached: a cluster of Halley nodes is tens, not thousands). Past it, new nodes are not
/// counted until others expire (logged).
pub const MAX_NODES: usize = 1024;

/// A node's subscriber counts (by subscribed name) and chat members.
type Entry = (Vec<(String, usize)>, Vec<Member>);

/// What a node last published, as received.
pub(crate) struct Seen {
    at: Instant,
    counts: Vec<(String, usize)>,
    members: Vec<Member>,
}

/// The other nodes' presence, by node id.
#[derive(Default)]
pub(crate) struct Others {
    nodes: HashMap<u64, Seen>,
}

impl Others {
    fn fresh(&self, ttl: Duration) -> impl Iterator<Item = &Seen> {
        let now = Instant::now();
        self.nodes
            .values()
            .filter(move |s| now.duration_since(s.at) < ttl)
    }

    /// Other nodes alive (refreshed within `ttl`).
    pub fn count(&self, ttl: Duration) -> usize {
        self.fresh(ttl).count()
    }

    pub fn subscribers(&self, prefix: &str, ttl: Duration) -> Vec<(String, usize)> {
        let mut totals: std::collections::BTreeMap<String, usize> = Default::default();
        for seen in self.fresh(ttl) {
            for (name, n) in &seen.counts {
                if name.starts_with(prefix) {
                    *totals.entry(name.clone()).or_default() += n;
                }
            }
        }
        totals.into_iter().collect()
    }

    pub fn members(&self, prefix: &str, ttl: Duration) -> Vec<Member> {
        self.fresh(ttl)
            .flat_map(|s| s.members.iter())
            .filter(|m| m.channel.as_str().starts_with(prefix))
            .cloned()
            .collect()
    }
}

fn encode(counts: &[(String, usize)], members: &[Member]) -> bytes::Bytes {
    let members: Vec<Value> = members
        .iter()
        .map(|m| json!([m.channel.as_str(), m.member, m.info]))
        .collect();
    bytes::Bytes::from(json!({"counts": counts, "members": members}).to_string())
}

/// A node's entry, or `None` when it is not one Halley wrote.
fn decode(value: &[u8]) -> Option<Entry> {
    let value: Value = serde_json::from_slice(value).ok()?;
    let counts = value
        .get("counts")?
        .as_array()?
        .iter()
        .filter_map(|pair| Some((pair[0].as_str()?.to_owned(), pair[1].as_u64()? as usize)))
        .collect();
    let members = value
        .get("members")?
        .as_array()?
        .iter()
        .filter_map(|m| {
            Some(Member {
                channel: halley_proto::Channel::parse(m[0].as_str()?).ok()?,
                member: m[1].as_str()?.to_owned(),
                info: m[2].clone(),
            })
        })
        .collect();
    Some((counts, members))
}

/// Keeps this node's entry current and the view of the others, until cancelled; starts again
/// (with backoff) whenever the bucket cannot be reached.
pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut backoff = RECONNECT_MIN;
    let mut up = shared.healthy.subscribe();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = up.wait_for(|up| *up) => if r.is_err() { return },
        }
        let error = tokio::select! {
            _ = cancel.cancelled() => return,
            e = session(&shared, &mut backoff) => e,
        };
        shared.error();
        tracing::warn!(%error, retry_in = ?backoff, "nats broker: presence stopped");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// The key-value bucket `<stream>_<suffix>` whose entries expire after `max_age`, created
/// when missing (replicas as the stream's).
pub(crate) async fn bucket(
    shared: &Shared,
    suffix: &str,
    max_age: Duration,
) -> Result<kv::Store, String> {
    let link = shared.connected().ok_or("not connected to NATS")?;
    let name = format!("{}_{suffix}", shared.config.stream);
    if let Ok(store) = link.js.get_key_value(&name).await {
        return Ok(store);
    }
    // The bucket's stream made here, as a key-value bucket's is (`KV_<bucket>`, subjects
    // `$KV.<bucket>.>`): async-nats's `create_key_value` first reads the account's info, whose
    // 2.9 answer it cannot read.
    let replicas = crate::node::replicas(shared, &link.client);
    let config = async_nats::jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    };
    let error = match link.js.create_stream(config).await {
        Ok(_) => String::new(),
        Err(e) => format!("creating it with {replicas} replicas: {e}"),
    };
    // Another node may have created it meanwhile.
    link.js
        .get_key_value(&name)
        .await
        .map_err(|e| format!("presence bucket: {error}; {e}"))
}

async fn session(shared: &Shared, backoff: &mut Duration) -> String {
    let store = match bucket(shared, "PRESENCE", shared.config.presence_ttl).await {
        Ok(store) => store,
        Err(e) => return e,
    };
    let mut watch = match store.watch_all().await {
        Ok(watch) => watch,
        Err(e) => return format!("presence watch: {e}"),
    };
    let me = format!("{:x}", shared.node);
    let ttl = shared.config.presence_ttl;
    let mut tick = tokio::time::interval(shared.config.presence_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What was last written: in which session generation, and when.
    let mut written: Option<(u64, Entry, Instant)> = None;
    *backoff = RECONNECT_MIN;
    loop {
        tokio::select! {
            entry = watch.next() => {
                let entry = match entry {
                    Some(Ok(entry)) => entry,
                    Some(Err(e)) => return format!("presence watch: {e}"),
                    None => return "presence watch ended".into(),
                };
                let Ok(node) = u64::from_str_radix(&entry.key, 16) else {
                    continue;
                };
                if node == shared.node {
                    continue;
                }
                let mut others = shared.others.lock().unwrap_or_else(|e| e.into_inner());
                match (entry.operation, decode(&entry.value)) {
                    (Operation::Put, Some((counts, members))) => {
                        if others.nodes.len() >= MAX_NODES && !others.nodes.contains_key(&node) {
                            tracing::warn!(node = %entry.key, "nats broker: too many nodes; presence of this one not counted");
                            continue;
                        }
                        others.nodes.insert(node, Seen { at: Instant::now(), counts, members });
                    }
                    _ => {
                        others.nodes.remove(&node);
                    }
                }
                let now = Instant::now();
                others.nodes.retain(|_, s| now.duration_since(s.at) < ttl);
            }
            _ = tick.tick() => {
                let generation = shared.generation.load(Ordering::Relaxed);
                let mut counts = shared.hub.counts("");
                counts.sort_unstable();
                let members = shared.hub.local_members();
                let unchanged = written.as_ref().is_some_and(|(g, (c, m), at)| {
                    *g == generation && *c == counts && *m == members && at.elapsed() < ttl / 3
                });
                if unchanged {
                    continue;
                }
                if let Err(e) = store.put(&me, encode(&counts, &members)).await {
                    return format!("presence put: {e}");
                }
                written = Some((generation, (counts, members), Instant::now()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let counts = vec![("/a".to_owned(), 2), ("/b/**".to_owned(), 1)];
        let members = vec![Member {
            channel: halley_proto::Channel::parse("/chat/x").unwrap(),
            member: "m1".into(),
            info: json!({"name": "ann"}),
        }];
        assert_eq!(decode(&encode(&counts, &members)), Some((counts, members)));
        assert_eq!(decode(b"not json"), None);
    }
}
