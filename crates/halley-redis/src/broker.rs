//! [`RedisBroker`]: the [`Broker`] trait on Redis. Requests (publish, replay, listings) run on
//! the shared command connection; the fan-out and housekeeping run in `node`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use halley_engine::control::{Command, Remote};
use halley_engine::idempotency::KeyClaim;
use halley_engine::{
    Broker, BrokerError, ChannelEntry, EngineConfig, Gather, Hub, Member, Replay, Stats,
};
use halley_proto::{Channel, Message, MessageId, Meta, Pattern, Payload};
use redis::aio::MultiplexedConnection;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::reply::{self, Entry};
use crate::scripts::Scripts;
use crate::{ECHO_TIMEOUT, RedisConfig};

/// Channels read per page when scanning the registry (wildcard resume, listings). Keeps each
/// reply small; the total is bounded by `max_channels`.
const SCAN_PAGE: usize = 1000;

/// Channel histories read per round trip during a wildcard resume. Each read returns up to
/// one batch (`replay_batch`) of messages and the batch being put together is trimmed back
/// to one batch as it goes, so a resume holds at most (this + 2) batches at once however many
/// channels match.
const REPLAY_PIPELINE: usize = 8;

/// Key names. Streams carry the epoch in their names (see `scripts`).
pub(crate) struct Keys {
    pub prefix: String,
    pub seq: String,
    pub last: String,
    pub nodes: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            seq: format!("{prefix}seq"),
            last: format!("{prefix}last"),
            nodes: format!("{prefix}nodes"),
        }
    }

    pub fn log(&self, epoch: u64) -> String {
        format!("{}log:{epoch:x}", self.prefix)
    }

    pub fn history(&self, epoch: u64, channel: &str) -> String {
        format!("{}h:{epoch:x}:{channel}", self.prefix)
    }

    pub fn presence(&self, node: u64) -> String {
        format!("{}presence:{node:x}", self.prefix)
    }

    pub fn members(&self, node: &str) -> String {
        format!("{}members:{node}", self.prefix)
    }
}

/// What the fan-out reader has delivered to the hub, and who is waiting for it.
#[derive(Default)]
pub(crate) struct Delivery {
    /// The last id handed to the hub (or where the reader started). Every later message of
    /// this epoch will be handed to the hub after now, which makes it a valid cursor.
    pub position: Option<MessageId>,
    /// Publishes of this node waiting for their message to come back, by local sequence.
    pub waiters: HashMap<u64, oneshot::Sender<usize>>,
}

/// The command connection of the current session, and what a publish needs to know of it.
#[derive(Clone)]
pub(crate) struct Live {
    pub conn: MultiplexedConnection,
    /// The server's `run_id`, passed to the publish script under `EpochRule::Master` (else
    /// empty).
    pub master: Arc<str>,
    /// The session's generation: a replica acknowledgement is asked only of the master the
    /// publish was written to.
    pub generation: u64,
}

/// A publish waiting for replicas' acknowledgement (`node::acknowledge`).
pub(crate) struct AckRequest {
    pub generation: u64,
    pub answer: oneshot::Sender<bool>,
}

pub(crate) struct Shared {
    pub hub: Hub,
    pub stats: Arc<Stats>,
    pub engine: EngineConfig,
    pub config: RedisConfig,
    /// Where the master is (asked again at every reconnect).
    pub target: crate::target::Target,
    /// A client for the master of the current (or last) session; the control channel's
    /// subscriber connects through it. None before the first session.
    pub client: Mutex<Option<redis::Client>>,
    /// This node's random id: names its presence key and marks the messages it published.
    pub node: u64,
    pub keys: Keys,
    pub scripts: Scripts,
    /// The command connection, present while Redis is reachable. Cloned for each request
    /// (a multiplexed connection pipelines concurrent requests); never held across an await.
    pub conn: Mutex<Option<Live>>,
    /// Told when a command found the server no longer a master (`READONLY`: a failover
    /// demoted it without closing our connections): the supervisor then reconnects.
    pub demoted: tokio::sync::Notify,
    /// Publishes waiting for replicas' acknowledgement; taken by the session's acknowledger.
    pub acks: tokio::sync::mpsc::Sender<AckRequest>,
    pub ack_queue: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<AckRequest>>,
    /// True while connected; also what `connected()` waits on.
    pub healthy: watch::Sender<bool>,
    pub delivery: Mutex<Delivery>,
    pub next_seq: AtomicU64,
    /// Bumped on every successful (re)connect, so presence is rewritten into a Redis that may
    /// have lost it.
    pub generation: AtomicU64,
    /// The control channel (`control.rs`).
    pub control: crate::control::State,
}

impl Shared {
    pub fn error(&self) {
        self.stats.broker_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the failure and turns it into the error publishers and resumers see.
    pub fn unavailable(&self, e: impl std::fmt::Display) -> BrokerError {
        self.error();
        BrokerError::Unavailable(e.to_string())
    }

    pub fn connection(&self) -> Result<MultiplexedConnection, BrokerError> {
        self.live().map(|live| live.conn)
    }

    /// The command connection if connected, without counting its absence as an error.
    pub fn current(&self) -> Option<MultiplexedConnection> {
        let live = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        live.as_ref().map(|live| live.conn.clone())
    }

    pub fn live(&self) -> Result<Live, BrokerError> {
        let live = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
        live.ok_or_else(|| self.unavailable("not connected to Redis"))
    }

    /// The client of the current master, once a session found one.
    pub fn client(&self) -> Option<redis::Client> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A failed command of session `generation`: counted, and if the server said it is a
    /// replica now, the supervisor is told to find the master again — unless that session
    /// already ended (a stale notice would end the next one, on the right master).
    pub fn failed(&self, e: redis::RedisError, generation: u64) -> BrokerError {
        if e.code() == Some("READONLY") && self.generation.load(Ordering::Relaxed) == generation {
            self.demoted.notify_one();
        }
        self.unavailable(e)
    }

    fn position(&self) -> Option<MessageId> {
        self.delivery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .position
    }

    async fn seq(&self, conn: &mut MultiplexedConnection) -> Result<Seq, BrokerError> {
        let s = self;
        let (time, seq): (redis::Value, redis::Value) = redis::pipe()
            .cmd("TIME")
            .cmd("HMGET")
            .arg(&s.keys.seq)
            .arg(&["epoch", "offset", "forgotten"])
            .query_async(conn)
            .await
            .map_err(|e| s.unavailable(e))?;
        let parse = || -> Result<Seq, reply::Malformed> {
            let mut time = reply::array(time)?.into_iter();
            let (Some(secs), Some(micros)) = (time.next(), time.next()) else {
                return Err(reply::Malformed("TIME"));
            };
            let now_ms = reply::number(secs)? * 1000 + reply::number(micros)? / 1000;
            let mut seq = reply::array(seq)?.into_iter();
            let epoch = match seq.next().map(reply::optional_text).transpose()?.flatten() {
                Some(hex) => {
                    Some(u64::from_str_radix(&hex, 16).map_err(|_| reply::Malformed("epoch"))?)
                }
                None => None,
            };
            let mut number = || -> Result<u64, reply::Malformed> {
                match seq.next().map(reply::optional_text).transpose()?.flatten() {
                    Some(n) => n.parse().map_err(|_| reply::Malformed("offset")),
                    None => Ok(0),
                }
            };
            let offset = number()?;
            let forgotten = number()?;
            Ok(Seq {
                now_ms,
                epoch,
                offset,
                forgotten,
            })
        };
        parse().map_err(|e| s.unavailable(e))
    }

    /// Channels (with their last offsets) whose last message is after `from`, newest last.
    async fn changed_since(
        &self,
        conn: &mut MultiplexedConnection,
        from: u64,
    ) -> Result<Vec<(String, u64)>, BrokerError> {
        let s = self;
        let mut out = Vec::new();
        let mut floor = from;
        while out.len() < s.engine.max_channels {
            let page: redis::Value = redis::cmd("ZRANGEBYSCORE")
                .arg(&s.keys.last)
                .arg(format!("({floor}"))
                .arg("+inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(SCAN_PAGE)
                .query_async(conn)
                .await
                .map_err(|e| s.unavailable(e))?;
            let page = reply::pairs(page).map_err(|e| s.unavailable(e))?;
            let full = page.len() == SCAN_PAGE;
            // Scores are unique (each is the offset of a different message), so paging by
            // score neither skips nor repeats a channel.
            if let Some((_, score)) = page.last() {
                floor = *score;
            }
            out.extend(page);
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// One batch of what channels matching `pattern` hold after `after`, oldest first (see
    /// [`Broker::replay`]).
    pub async fn replay(
        &self,
        conn: &mut MultiplexedConnection,
        pattern: &Pattern,
        after: MessageId,
        limit: usize,
    ) -> Result<Replay, BrokerError> {
        let s = self;
        let seq = self.seq(conn).await?;
        let Some(epoch) = seq.epoch else {
            // Redis has no epoch: its data is gone and nothing was published since.
            return Ok(Replay {
                messages: Vec::new(),
                gap: true,
                more: None,
            });
        };
        let same_epoch = after.epoch == epoch;
        let mut gap = !same_epoch || after.offset > seq.offset;
        let from = if same_epoch {
            after.offset.min(seq.offset)
        } else {
            0
        };
        if same_epoch && seq.forgotten > from {
            gap = true;
        }
        let candidates: Vec<(String, u64)> = match pattern.exact() {
            Some(channel) => {
                let last: Option<u64> = redis::cmd("ZSCORE")
                    .arg(&s.keys.last)
                    .arg(channel.as_str())
                    .query_async(conn)
                    .await
                    .map_err(|e| s.unavailable(e))?;
                last.filter(|l| *l > from)
                    .map(|l| (channel.to_string(), l))
                    .into_iter()
                    .collect()
            }
            None => self
                .changed_since(conn, from)
                .await?
                .into_iter()
                .filter(|(name, _)| Channel::parse(name).is_ok_and(|c| pattern.matches(&c)))
                .collect(),
        };
        let limit = limit.max(1);
        // Each channel's messages older than its history TTL count as evicted.
        let oldest_ms = |channel: &Channel| {
            seq.now_ms
                .saturating_sub(s.engine.history(channel).ttl.as_millis() as u64)
        };
        let mut batch = Gather::new(limit);
        for chunk in candidates.chunks(REPLAY_PIPELINE) {
            let mut pipe = redis::pipe();
            for (name, _) in chunk {
                let key = s.keys.history(epoch, name);
                // The newest entry carries the highest offset the channel lost so far; the
                // batch is read forward from the cursor.
                pipe.cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1);
                pipe.cmd("XRANGE")
                    .arg(&key)
                    .arg(format!("(0-{from}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit);
            }
            let replies: Vec<redis::Value> =
                pipe.query_async(conn).await.map_err(|e| s.unavailable(e))?;
            let mut replies = replies.into_iter();
            for (name, _last) in chunk {
                let (Some(newest), Some(read)) = (replies.next(), replies.next()) else {
                    return Err(s.unavailable(reply::Malformed("pipeline")));
                };
                let newest = reply::entries(newest).map_err(|e| s.unavailable(e))?;
                let read = reply::entries(read).map_err(|e| s.unavailable(e))?;
                let channel = Channel::parse(name).map_err(|e| s.unavailable(e))?;
                let evicted = match newest.first() {
                    Some(entry) => entry.number("e").unwrap_or(u64::MAX),
                    // The channel has messages after `from` (that is why it is a
                    // candidate), so no entry at all means its history expired before the
                    // sweep forgot it.
                    None => u64::MAX,
                };
                gap |= evicted > from;
                // A read that stopped past the offset read first holds all this batch takes
                // of the channel.
                let cut = (read.len() == limit)
                    .then(|| read.last().map(|e| MessageId::new(epoch, e.offset)))
                    .flatten()
                    .filter(|c| c.offset <= seq.offset);
                // Past what the batch can still take, nothing is decoded. Nor past the offset
                // read first: the channels are listed and read one after another, so a
                // message published meanwhile may be in one channel's read while an earlier
                // one, on a channel listed before it existed, is not — and the live flow would
                // then drop that one as older than what was replayed. What comes after `seq`
                // reaches the subscriber live: it registered before its replay began.
                let bound = batch.bound();
                let read: Vec<Entry> = read
                    .into_iter()
                    .take_while(|e| {
                        e.offset <= seq.offset && bound.is_none_or(|b| e.offset <= b.offset)
                    })
                    .collect();
                let (messages, skipped) =
                    decode(&channel, epoch, oldest_ms(&channel), seq.now_ms, read);
                gap |= skipped;
                batch.add(messages, cut);
            }
        }
        Ok(batch.finish(gap))
    }

    /// The newest `limit` messages of `channel` (see [`Broker::recent`]).
    pub async fn recent(
        &self,
        conn: &mut MultiplexedConnection,
        channel: &Channel,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, BrokerError> {
        let s = self;
        let seq = self.seq(conn).await?;
        let Some(epoch) = seq.epoch else {
            return Ok(Vec::new());
        };
        let read: redis::Value = redis::cmd("XREVRANGE")
            .arg(s.keys.history(epoch, channel.as_str()))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(conn)
            .await
            .map_err(|e| s.unavailable(e))?;
        let mut read = reply::entries(read).map_err(|e| s.unavailable(e))?;
        read.reverse();
        let oldest_ms = seq
            .now_ms
            .saturating_sub(s.engine.history(channel).ttl.as_millis() as u64);
        Ok(decode(channel, epoch, oldest_ms, seq.now_ms, read).0)
    }
}

/// The Redis broker. Dropping it (or [`RedisBroker::shutdown`]) stops its background task and
/// closes its connections; its presence then expires on its own.
pub struct RedisBroker {
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Removes a publish's waiter however the publish ends (error, timeout, or its caller gave up).
struct WaiterGuard<'a> {
    shared: &'a Shared,
    seq: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        let mut delivery = self
            .shared
            .delivery
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        delivery.waiters.remove(&self.seq);
    }
}

impl RedisBroker {
    /// Starts the broker: its supervisor connects in the background (see
    /// [`RedisBroker::connected`]) and delivers every message to `hub`. Fails only on a
    /// malformed URL. Must be called inside a tokio runtime.
    pub fn spawn(
        config: RedisConfig,
        engine: EngineConfig,
        hub: Hub,
        stats: Arc<Stats>,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        let mut config = config;
        let parsed = crate::target::parse(&config.url)
            .map_err(|e| BrokerError::Unavailable(format!("bad Redis URL: {e}")))?;
        crate::target::apply(&parsed, &mut config);
        let (acks, ack_queue) = tokio::sync::mpsc::channel(crate::ACK_QUEUE);
        let shared = Arc::new(Shared {
            hub,
            stats,
            engine,
            keys: Keys::new(&config.prefix),
            config,
            target: parsed.target,
            client: Mutex::new(None),
            demoted: tokio::sync::Notify::new(),
            acks,
            ack_queue: tokio::sync::Mutex::new(ack_queue),
            node: rand::random::<u64>() | 1,
            scripts: Scripts::new(),
            conn: Mutex::new(None),
            healthy: watch::Sender::new(false),
            delivery: Mutex::new(Delivery::default()),
            next_seq: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            control: crate::control::State::default(),
        });
        let cancel = CancellationToken::new();
        tokio::spawn(crate::node::supervise(shared.clone(), cancel.clone()));
        tokio::spawn(crate::node::housekeeping(shared.clone(), cancel.clone()));
        tokio::spawn(crate::control::listen(shared.clone(), cancel.clone()));
        tokio::spawn(crate::target::watch(shared.clone(), cancel.clone()));
        Ok(Arc::new(RedisBroker { shared, cancel }))
    }

    /// Waits up to `within` for the connection to Redis; true once connected.
    pub async fn connected(&self, within: Duration) -> bool {
        let mut rx = self.shared.healthy.subscribe();
        tokio::time::timeout(within, rx.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits up to `within` until this node listens to the control API's channel (see
    /// `control.rs`): other nodes' disconnects and revocations reach it from then on. It
    /// subscribes once the engine's policy is set.
    pub async fn control_ready(&self, within: Duration) -> bool {
        let mut rx = self.shared.control.up.subscribe();
        tokio::time::timeout(within, rx.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops the background task and drops the connections, as a crash would: nothing is
    /// cleaned up in Redis (presence expires by its TTL).
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// This node's id (hex in its presence key name).
    pub fn node(&self) -> u64 {
        self.shared.node
    }

    /// The other nodes that wrote presence, and `HGETALL` of the key `key(node)` of each (in
    /// one round trip).
    async fn other_nodes(
        &self,
        conn: &mut MultiplexedConnection,
        key: impl Fn(&str) -> String,
    ) -> Result<(Vec<String>, Vec<redis::Value>), BrokerError> {
        let s = &self.shared;
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&s.keys.nodes)
            .query_async(conn)
            .await
            .map_err(|e| s.unavailable(e))?;
        let me = format!("{:x}", s.node);
        let others: Vec<String> = nodes.into_iter().filter(|n| *n != me).collect();
        if others.is_empty() {
            return Ok((others, Vec::new()));
        }
        let mut pipe = redis::pipe();
        for node in &others {
            pipe.cmd("HGETALL").arg(key(node));
        }
        let replies = pipe.query_async(conn).await.map_err(|e| s.unavailable(e))?;
        Ok((others, replies))
    }
}

/// The sequence hash and Redis's clock, read together.
struct Seq {
    now_ms: u64,
    epoch: Option<u64>,
    offset: u64,
    forgotten: u64,
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(
        &self,
        channel: Channel,
        data: Payload,
        meta: Option<Box<Meta>>,
    ) -> Result<(Arc<Message>, usize), BrokerError> {
        let s = &self.shared;
        let Live {
            mut conn,
            master,
            generation,
        } = s.live()?;
        let limits = s.engine.history(&channel);
        let seq = s.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        s.delivery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiters
            .insert(seq, tx);
        let _guard = WaiterGuard { shared: s, seq };
        let reply: redis::Value = s
            .scripts
            .publish
            .arg(&s.keys.prefix)
            .arg(channel.as_str())
            .arg(data.json())
            .arg(format!("{:x}", rand::random::<u64>() | 1))
            .arg(limits.size)
            .arg(limits.ttl.as_millis().max(1) as u64)
            .arg(s.engine.max_channels)
            .arg(s.config.log_len)
            .arg(format!("{:x}:{seq}", s.node))
            .arg(
                meta.as_deref()
                    .and_then(|m| m.kind.as_deref())
                    .unwrap_or(""),
            )
            .arg(meta.as_deref().and_then(|m| m.expires_ms).unwrap_or(0))
            .arg(&*master)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| s.failed(e, generation))?;
        if let redis::Value::Int(0) = reply {
            return Err(BrokerError::TooManyChannels(s.engine.max_channels));
        }
        let id = (|| {
            let mut parts = reply::array(reply)?.into_iter();
            let (Some(epoch), Some(offset)) = (parts.next(), parts.next()) else {
                return Err(reply::Malformed("publish reply"));
            };
            let epoch = u64::from_str_radix(&reply::text(epoch)?, 16)
                .map_err(|_| reply::Malformed("epoch"))?;
            Ok(MessageId::new(epoch, reply::number(offset)?))
        })()
        .map_err(|e| s.unavailable(e))?;
        if s.config.wait_replicas > 0 {
            // Answered as published only once enough replicas have it: a failover can then
            // not lose it. Not acknowledged in time, it may still be delivered (it is in the
            // master), but the publisher is told it may be lost.
            let (answer, acked) = oneshot::channel();
            s.acks
                .try_send(AckRequest { generation, answer })
                .map_err(|_| s.unavailable("too many publishes waiting for replicas"))?;
            let within = s.config.wait_timeout + crate::COMMAND_TIMEOUT;
            match tokio::time::timeout(within, acked).await {
                Ok(Ok(true)) => {}
                _ => {
                    return Err(s.unavailable(format!(
                        "message {id} was not acknowledged by {} replica(s) in time",
                        s.config.wait_replicas
                    )));
                }
            }
        }
        // The message is in Redis now; whatever happens next, the publish happened. Waiting
        // for our own copy gives a real local count and keeps one publisher's messages in
        // order for local subscribers; if it does not come (the reader is reconnecting), the
        // other nodes still deliver it.
        let subscribers = match tokio::time::timeout(ECHO_TIMEOUT, rx).await {
            Ok(Ok(n)) => n,
            _ => {
                tracing::warn!(%id, "published, but this node's fan-out did not echo it in time");
                0
            }
        };
        Ok((Arc::new(Message::new(channel, id, data)), subscribers))
    }

    async fn replay(
        &self,
        pattern: &Pattern,
        after: MessageId,
        limit: usize,
    ) -> Result<Replay, BrokerError> {
        let mut conn = self.shared.connection()?;
        self.shared.replay(&mut conn, pattern, after, limit).await
    }

    fn replay_batch(&self) -> usize {
        self.shared.engine.replay_batch
    }

    async fn recent(
        &self,
        channel: &Channel,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, BrokerError> {
        let mut conn = self.shared.connection()?;
        self.shared.recent(&mut conn, channel, limit).await
    }

    async fn cursor(&self) -> Result<MessageId, BrokerError> {
        if let Some(position) = self.shared.position() {
            return Ok(position);
        }
        let mut conn = self.shared.connection()?;
        let seq = self.shared.seq(&mut conn).await?;
        let epoch = seq
            .epoch
            .ok_or_else(|| self.shared.unavailable("Redis has no epoch yet"))?;
        Ok(MessageId::new(epoch, seq.offset))
    }

    async fn channels(&self, prefix: &str) -> Result<Vec<ChannelEntry>, BrokerError> {
        let s = &self.shared;
        let mut conn = s.connection()?;
        let Some(epoch) = self.shared.seq(&mut conn).await?.epoch else {
            return Ok(Vec::new());
        };
        let mut rows = Vec::new();
        let mut cursor = 0u64;
        // Bounded: the registry holds at most max_channels (plus a sweep's lag) members.
        for _ in 0..=(s.engine.max_channels / SCAN_PAGE + 10) {
            let (next, page): (u64, redis::Value) = redis::cmd("ZSCAN")
                .arg(&s.keys.last)
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", glob_escape(prefix)))
                .arg("COUNT")
                .arg(SCAN_PAGE)
                .query_async(&mut conn)
                .await
                .map_err(|e| s.unavailable(e))?;
            for (name, offset) in reply::pairs(page).map_err(|e| s.unavailable(e))? {
                if let Ok(channel) = Channel::parse(&name) {
                    rows.push(ChannelEntry {
                        channel,
                        last_id: Some(MessageId::new(epoch, offset)),
                    });
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(rows)
    }

    async fn remote_subscribers(&self, prefix: &str) -> Result<Vec<(String, usize)>, BrokerError> {
        let s = &self.shared;
        let mut conn = s.connection()?;
        let (others, replies) = self
            .other_nodes(&mut conn, |node| {
                format!("{}presence:{node}", s.keys.prefix)
            })
            .await?;
        let mut totals: BTreeMap<String, usize> = BTreeMap::new();
        let mut dead = Vec::new();
        for (node, value) in others.iter().zip(replies) {
            let counts = reply::pairs(value).map_err(|e| s.unavailable(e))?;
            if counts.is_empty() {
                // Expired (the node died) or nobody subscribed there; a node that gains
                // subscribers adds itself back.
                dead.push(node.as_str());
            }
            for (name, n) in counts {
                if name.starts_with(prefix) {
                    *totals.entry(name).or_default() += n as usize;
                }
            }
        }
        if !dead.is_empty() {
            let _: Result<(), _> = redis::cmd("SREM")
                .arg(&s.keys.nodes)
                .arg(&dead)
                .query_async(&mut conn)
                .await;
        }
        Ok(totals.into_iter().collect())
    }

    async fn remote_members(&self, prefix: &str) -> Result<Vec<Member>, BrokerError> {
        let s = &self.shared;
        let mut conn = s.connection()?;
        let (_, replies) = self
            .other_nodes(&mut conn, |node| s.keys.members(node))
            .await?;
        let mut members = Vec::new();
        for value in replies {
            for (field, info) in reply::text_pairs(value).map_err(|e| s.unavailable(e))? {
                let Some((channel, member)) = field.split_once('\n') else {
                    continue;
                };
                if !channel.starts_with(prefix) {
                    continue;
                }
                // Written by a node from validated values; anything else is skipped.
                let (Ok(channel), Ok(info)) = (
                    halley_proto::Channel::parse(channel),
                    serde_json::from_str(&info),
                ) else {
                    continue;
                };
                members.push(Member {
                    channel,
                    member: member.to_string(),
                    info,
                });
            }
        }
        Ok(members)
    }

    fn clustered(&self) -> bool {
        true
    }

    async fn control(&self, command: &Command) -> Result<Remote, BrokerError> {
        crate::control::request(&self.shared, command).await
    }

    fn node(&self) -> Option<String> {
        Some(format!("{:x}", self.shared.node))
    }

    /// `SET NX PX` on `{prefix}idem:{name}`: one key for every node, gone after its window.
    async fn claim_key(
        &self,
        name: &str,
        value: &str,
        window: std::time::Duration,
    ) -> Result<KeyClaim, BrokerError> {
        let s = &self.shared;
        let mut conn = s.connection()?;
        let key = format!("{}idem:{name}", s.keys.prefix);
        let ms = window.as_millis().max(1) as u64;
        // Twice at most: a key that expired between the SET and the GET is free again.
        for _ in 0..2 {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async(&mut conn)
                .await
                .map_err(|e| s.unavailable(e))?;
            if set.is_some() {
                return Ok(KeyClaim::Claimed);
            }
            let held: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| s.unavailable(e))?;
            if let Some(held) = held {
                return Ok(KeyClaim::Held(held));
            }
        }
        Err(s.unavailable("an idempotency key came and went twice"))
    }

    async fn settle_key(
        &self,
        name: &str,
        value: Option<&str>,
        window: std::time::Duration,
    ) -> Result<bool, BrokerError> {
        let s = &self.shared;
        let mut conn = s.connection()?;
        let key = format!("{}idem:{name}", s.keys.prefix);
        let cmd = match value {
            Some(value) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(&key)
                    .arg(value)
                    .arg("PX")
                    .arg(window.as_millis().max(1) as u64);
                cmd
            }
            None => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(&key);
                cmd
            }
        };
        let _: redis::Value = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| s.unavailable(e))?;
        Ok(true)
    }

    fn healthy(&self) -> bool {
        *self.shared.healthy.borrow()
    }
}

/// One channel's history entries (oldest first) as messages, and whether any had to be left
/// out: older than the history TTL (evicted, as the in-memory broker does it) or undecodable
/// (written by something else; skipped and logged rather than failing every reader).
fn decode(
    channel: &Channel,
    epoch: u64,
    oldest_ms: u64,
    now_ms: u64,
    entries: Vec<Entry>,
) -> (Vec<Arc<Message>>, bool) {
    let mut skipped = false;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        if entry.number("t").unwrap_or(0) < oldest_ms {
            skipped = true;
            continue;
        }
        // Past its own expiry: its publisher said so; not a loss (no gap).
        if entry.number("x").is_some_and(|x| x <= now_ms) {
            continue;
        }
        let Some(data) = entry.field("d").and_then(|d| Payload::from_json(d).ok()) else {
            tracing::warn!(%channel, offset = entry.offset, "redis broker: undecodable history entry skipped");
            skipped = true;
            continue;
        };
        out.push(Arc::new(Message::with_meta(
            channel.clone(),
            MessageId::new(epoch, entry.offset),
            data,
            meta_of(&entry),
        )));
    }
    (out, skipped)
}

/// A stored entry's type (`k`) and expiry (`x`), when it has either.
pub(crate) fn meta_of(entry: &Entry) -> Option<Box<Meta>> {
    let kind = entry
        .field("k")
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| halley_proto::valid_type(k));
    let expires_ms = entry.number("x");
    (kind.is_some() || expires_ms.is_some()).then(|| {
        Box::new(Meta {
            kind: kind.map(Into::into),
            expires_ms,
        })
    })
}

/// Escapes Redis glob metacharacters so that a user-supplied prefix matches literally.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_literally() {
        let check = |input: &str, expected: &str| assert_eq!(glob_escape(input), expected);
        check("/chat/", "/chat/");
        check("/a*b?[c]\\", "/a\\*b\\?\\[c\\]\\\\");
    }
}
