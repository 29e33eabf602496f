//! Halley on Redis: many nodes behave as one server.
//!
//! - [`RedisBroker`] implements [`halley_engine::Broker`] on a Redis server: it assigns ids,
//!   keeps history, fans every message out to every node's [`Hub`], and shares presence
//!   (subscriber counts) between nodes. [`RedisBroker::spawn`] starts its background task.
//! - [`RedisConfig`] holds its address (one server, or Redis Sentinel's master name) and
//!   budgets, and how a failover is made safe ([`EpochRule`], `wait_replicas`); [`engine`]
//!   builds an [`halley_engine::Engine`] over it.
//!
//! Invariant: this is the only crate that knows Redis.
//!
//! # Data model (all keys under [`RedisConfig::prefix`], default `halley:`)
//!
//! | key | type | what |
//! |---|---|---|
//! | `seq` | hash | `epoch` (hex), `offset` (last id issued), `forgotten` (see below); `master` (the `run_id` that began the epoch, under [`EpochRule::Master`]), `prev`/`base` (the epoch before and its last offset here) |
//! | `ack` | string | a counter the acknowledger increments before each `WAIT` (see "Failover") |
//! | `log:<epoch>` | stream | the fan-out log: every message, id `0-<offset>`, ~[`RedisConfig::log_len`] long |
//! | `h:<epoch>:<channel>` | stream | a channel's history, id `0-<offset>`, ≤ its history size, TTL its history TTL (`EngineConfig::history`) |
//! | `last` | zset | channel → offset of its last message (registry, `max_channels`, wildcard resume) |
//! | `expiry` | zset | channel → when its history expires; the sweep then forgets it and raises `forgotten` |
//! | `nodes` | set | ids of nodes that have written presence |
//! | `presence:<node>` | hash | that node's subscriber counts by name; TTL [`RedisConfig::presence_ttl`] |
//! | `members:<node>` | hash | that node's chat members: `<channel>\n<member id>` → info (JSON); same TTL |
//! | `control`, `control:<node>` | pub/sub channels | the control API's commands, and answers to one node (`control.rs`) |
//! | `revoked` | hash | user → revoked before (Unix seconds); read by every node when it (re)subscribes |
//!
//! Streams carry the epoch in their names, so a new epoch never appends to an old stream.
//! A history entry holds the data, its time, and `e`: the highest offset the channel had lost
//! (trimmed or expired) when it was added — a resume from below `e` has a gap. Entries older
//! than their channel's history TTL are treated as evicted at replay. Redis must not evict these keys on its
//! own (`maxmemory-policy noeviction`, the default): a silently evicted key is a silent loss.
//!
//! # Why these choices
//!
//! **Ids and order.** One Lua script per publish takes the next offset (`HINCRBY seq offset`),
//! appends to the channel's history and to the fan-out log. Redis runs scripts one at a time,
//! so execution order is id order, across all channels and all nodes: the engine's invariant
//! (ids grow in the order messages reach subscribers) holds cluster-wide, and a wildcard
//! subscriber can resume from a single id.
//!
//! **Fan-out by a stream, not pub/sub.** Every node reads the one `log` stream with a blocking
//! `XREAD` on a dedicated connection and hands each entry to its hub in log order. Pub/sub
//! would be as fast but forgets what it sent while a node was disconnected; with the log, a
//! node that reconnects continues from the last offset it delivered and its subscribers miss
//! nothing. The log's offsets are contiguous, so a node that was away longer than the log
//! covers sees the hole, fills it from the channels' histories (in order, up to the replay
//! limit), and logs and counts whatever history no longer has either. The trade-off: every node receives every message, also for
//! channels it has no subscriber of. Routing per channel (a pub/sub channel per Halley channel,
//! pattern subscriptions for wildcards) would spare that traffic but gives up the single total
//! order a wildcard resume relies on, and loses messages across reconnects. One node handles
//! the whole cluster's message rate anyway when a `/**` subscriber is connected to it.
//!
//! **Epochs.** The epoch is created with `HSETNX` by whoever needs it first. If Redis loses
//! its data (a restart without persistence), the next publish or reconnect creates a new
//! epoch, and ids from the old one are answered with a gap — never silently.
//!
//! **Publish waits for its own copy.** [`Broker::publish`] returns once this node's reader has
//! delivered the message to the local hub, so the reported subscriber count is real and one
//! client's consecutive publishes reach local subscribers in order.
//!
//! **Failure.** All Redis traffic goes through connections owned by one supervisor task. When
//! Redis is unreachable, publish and resume fail with [`BrokerError::Unavailable`] (HTTP 503),
//! [`Broker::healthy`] is false, subscribers stay connected, and the supervisor reconnects
//! with backoff ([`RECONNECT_MIN`] doubling to [`RECONNECT_MAX`]), then resumes the fan-out
//! from the last delivered offset by itself. Every failure counts in
//! [`Stats::broker_errors`](halley_engine::Stats).
//!
//! **Presence.** Each node writes its subscriber counts to `presence:<node>` whenever they
//! change (checked every [`RedisConfig::presence_interval`]) and refreshes that key's TTL; a
//! node that dies stops refreshing, and its counts vanish after [`RedisConfig::presence_ttl`].
//! Members (who is in a chat room, [`halley_engine::presence`]) travel the same way in
//! `members:<node>`, so `/api/presence` on any node lists everyone, and a member whose reconnect
//! lands on another node is not announced as leaving and joining.
//!
//! **Control.** The control API (disconnect, unsubscribe, revoke, list a user) reaches every
//! node through a pub/sub channel; each node applies a command to its own hub and answers the
//! asking node on that node's channel, which waits for as many answers as `PUBLISH` reached
//! nodes (at most [`CONTROL_TIMEOUT`]). Revocations are also kept in the `revoked` hash, read
//! by every node whenever it (re)subscribes, so a node that starts or reconnects later honours
//! them. Details and why in `control.rs`.
//!
//! **Failover (Redis Sentinel).** With `redis+sentinel://host:port[,…]/<master>[/db]` the
//! supervisor asks the sentinels for the master at every (re)connect (the first sentinel that
//! names a master that says it is one, within [`SENTINEL_TIMEOUT`]). A failover is followed by
//! itself: the dead master's connections fail, or the sentinels announce another master
//! (`+switch-master`, heard on one sentinel's pub/sub at a time), or a command is answered
//! `READONLY` (a demoted master); the supervisor then backs off and asks again. Replication is asynchronous, so
//! the promoted replica may lack the old master's last writes. Two mechanisms, each a setting:
//!
//! - [`EpochRule::Master`]: `seq` records the `run_id` of the server that began the epoch, and
//!   every publish (and reconnect) passes its own server's; the script that finds another one
//!   begins a new epoch in the same step. Ids the old master issued and lost are never issued
//!   again; a resume from before the change is answered with a gap (the new master cannot know
//!   what it lacks). Costs one more hash field read per publish.
//! - `wait_replicas` (`WAIT`): a publish is answered only once that many replicas have it, else
//!   503. Then nothing answered as published is lost with the master. The acknowledger (one
//!   per session, its own connection) answers waiting publishes in batches: `INCR ack` then
//!   `WAIT`, which counts replicas that have that connection's last write — so every publish
//!   written before it. At most [`ACK_QUEUE`] publishes wait at once, [`ACK_BATCH`] per `WAIT`.
//!
//! A node's reader that finds a new epoch first reads the old epoch's log to its end (nobody
//! appends to it any more), so its live subscribers get everything the new master has of it.
//!
//! What neither mechanism covers: an old master that stays up (a switchover, a partition)
//! takes writes until the nodes hear of the new one, and a replica still following it may
//! acknowledge them; they are then missing from the new master's history (ids not reused; a
//! resume from among them is told of a gap). Sentinel is not a consensus protocol.
//!
//! **Not supported:** Redis Cluster (the scripts touch keys computed at run time, and the
//! fan-out log is one key by design). Sentinels are asked without credentials or TLS (the
//! URL's credentials and database are the master's).
//!
//! [`Hub`]: halley_engine::Hub
//! [`Broker::publish`]: halley_engine::Broker::publish
//! [`Broker::healthy`]: halley_engine::Broker::healthy
//! [`BrokerError::Unavailable`]: halley_engine::BrokerError::Unavailable

mod broker;
mod control;
#[doc(hidden)]
pub mod fuzzing;
mod node;
mod reply;
mod scripts;
mod target;

use std::sync::Arc;
use std::time::Duration;

use halley_engine::{BrokerError, Engine, EngineConfig, Hub, Stats};

pub use broker::RedisBroker;
pub use control::{CONTROL_TIMEOUT, MAX_IN_FLIGHT, MAX_NODES, PING_INTERVAL};
pub use node::{
    ACK_BATCH, ACK_QUEUE, COMMAND_TIMEOUT, CONNECT_TIMEOUT, ECHO_TIMEOUT, READ_BATCH, READ_BLOCK,
    RECONNECT_MAX, RECONNECT_MIN,
};
pub use target::{MAX_SENTINELS, SENTINEL_TIMEOUT};

/// When a new epoch begins, besides Redis having lost its data (see the crate doc, "Failover").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochRule {
    /// When Redis went back behind an id a node already delivered (its offset is lower).
    /// Catches a failover to a replica that lacks writes only if some node saw them before
    /// any node published again: ids can be issued twice.
    Offset,
    /// Also whenever the server executing the publish is another one than the epoch's (its
    /// `run_id`: another process — a promoted replica, a restart). Ids are never issued twice;
    /// every resume from before the change is answered with a gap.
    Master,
}

/// Where Redis is, and the budgets of the Redis broker.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` (also `redis://:password@host:port/db`), or
    /// `redis+sentinel://host:port[,host:port…]/<master name>[/db]`: the master is asked of
    /// the sentinels at every (re)connect. The query may set `epoch`, `wait` and
    /// `wait-timeout` (the fields below of the same meaning).
    pub url: String,
    /// Prefix of every key Halley writes, so that several Halley clusters (or other
    /// applications) can share one Redis.
    pub prefix: String,
    /// How often a node checks whether its subscriber counts changed and refreshes its
    /// presence key. `/api/channels` on another node is at most this stale.
    pub presence_interval: Duration,
    /// How long a node's presence outlives its last refresh: after a node dies, its
    /// subscribers disappear from listings within this time. Several intervals, so that a
    /// slow refresh does not make a live node flicker.
    pub presence_ttl: Duration,
    /// How often expired channels are forgotten (removed from the registry, so that they no
    /// longer count against `max_channels`).
    pub sweep_interval: Duration,
    /// Approximate length of the fan-out log. It only has to cover a node's read lag and
    /// reconnect time while *other* nodes keep publishing (when Redis itself is down nobody
    /// publishes): at 1,000 messages a second that is 10 s, twice the longest reconnect
    /// backoff. Messages are stored in full, so this costs Redis about `log_len` × message
    /// size of memory. A node that falls further behind fills the hole from the channels'
    /// histories; when those no longer hold all of it, the node's subscribers are cut off
    /// before anything past the hole reaches them and resume with an explicit gap (logged and
    /// counted as a broker error).
    pub log_len: usize,
    /// When a new epoch begins. Default: [`EpochRule::Master`] with Sentinel, else
    /// [`EpochRule::Offset`] (a restarted Redis with persistence keeps its epoch).
    pub epoch: EpochRule,
    /// Replicas that must have a publish (`WAIT`) before it is answered as published; 0:
    /// answered once the master has it. Default 1 with Sentinel, else 0. A publish not
    /// acknowledged within [`RedisConfig::wait_timeout`] is answered 503.
    pub wait_replicas: usize,
    /// How long a publish waits for its replicas' acknowledgement (`WAIT`'s timeout). A
    /// replica normally answers within a millisecond; this is what a publish takes when none
    /// is there.
    pub wait_timeout: Duration,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> RedisConfig {
        let url: String = url.into();
        let sentinel = url.starts_with("redis+sentinel://");
        RedisConfig {
            url,
            prefix: "halley:".into(),
            presence_interval: Duration::from_secs(1),
            presence_ttl: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(10),
            log_len: 10_000,
            epoch: if sentinel {
                EpochRule::Master
            } else {
                EpochRule::Offset
            },
            wait_replicas: usize::from(sentinel),
            wait_timeout: Duration::from_millis(500),
        }
    }
}

/// An engine whose broker is Redis. The broker starts connecting in the background; see
/// [`RedisBroker::connected`] to wait for it. Must be called inside a tokio runtime (the
/// broker spawns its tasks there).
pub fn engine(
    config: RedisConfig,
    engine: EngineConfig,
) -> Result<(Engine, Arc<RedisBroker>), BrokerError> {
    let stats = Arc::new(Stats::default());
    let hub = Hub::new(engine.queue_capacity, stats.clone());
    let broker = RedisBroker::spawn(config, engine, hub.clone(), stats.clone())?;
    Ok((Engine::with_broker(hub, broker.clone(), stats), broker))
}
