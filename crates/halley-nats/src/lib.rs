//! Halley on NATS JetStream: many nodes behave as one server.
//!
//! - [`NatsBroker`] implements [`halley_engine::Broker`] on a NATS cluster with JetStream: the
//!   stream assigns ids and keeps history, and every node reads it whole to feed its [`Hub`].
//!   [`NatsBroker::spawn`] starts its background task.
//! - [`NatsConfig`] holds the servers' addresses, the stream's name and limits; [`engine`]
//!   builds an [`halley_engine::Engine`] over it.
//!
//! Invariant: this is the only crate that knows NATS.
//!
//! # Data model
//!
//! One stream, [`NatsConfig::stream`] (default `HALLEY`), holds every message under the
//! subjects `<subject_prefix>.>` (default `halley.>`). A channel is one subject (`subject.rs`:
//! `/a/b.c` is `halley.a.b%2Ec`, reversibly and without collisions). Each stored message is
//! the payload's JSON with these headers:
//!
//! | header | what |
//! |---|---|
//! | `Halley-Prev` | the stream sequence of the previous message on the same subject (0: none) |
//! | `Halley-Origin` | `<node>:<n>`: the node that published it and its local number (publish waits for its own copy) |
//! | `Halley-Us` | when it was published (Unix µs, the publishing node's clock; latency metrics) |
//! | `Halley-Type`, `Halley-Expires` | the message's type and expiry ([`halley_proto::Meta`]), when set |
//!
//! Presence lives beside it in a key-value bucket, `<stream>_PRESENCE` (one key per node,
//! `max_age` = [`NatsConfig::presence_ttl`]).
//!
//! A message id is `<epoch>-<stream sequence>`; the epoch is the stream's creation time (Unix
//! nanoseconds), the same on every node.
//!
//! # Why these choices
//!
//! **One stream, one order.** The stream sequence is one total order across all channels and
//! all nodes, so it is the id's offset as it is: ids grow in the order messages reach every
//! subscriber, and a wildcard subscriber resumes from a single id. `publish` is a JetStream
//! publish that waits for the stream's acknowledgement — with replicas, that is once a
//! majority stored it.
//!
//! **Fan-out is the stream itself.** Every node reads the whole stream with an ordered
//! consumer from the sequence after the last one it delivered, and hands each message to its
//! hub in sequence order. After a reconnect it starts again from there, so its subscribers
//! miss nothing that is still stored. The stream being also the history, there is no second
//! log to trim: a node misses a message only if history evicted it before the node read it,
//! which the `Halley-Prev` chain shows (logged and counted in
//! [`Stats::broker_errors`](halley_engine::Stats)). As with Redis, every node receives every
//! message, also of channels it has no subscriber of.
//!
//! **Exact gaps by a chain per channel.** History per channel is the stream's per-subject
//! limit (`max_msgs_per_subject`, [`NatsConfig::max_history`]); a channel whose namespace keeps
//! fewer is purged down to its size after each publish. A resume of channel C from S has a
//! gap iff a message of C after S was removed. Each message carries `Halley-Prev`, the
//! sequence of C's previous message, and is published with `Nats-Expected-Last-Subject-Sequence`
//! set to it, so the server rejects it if another message of C came in between (the publish then
//! reads C's last sequence and tries again, at most [`PUBLISH_ATTEMPTS`] times). The chain is
//! therefore exact, and the oldest message of C after S tells whether anything between was
//! removed: `Halley-Prev > S`. The cost: nodes keep C's last sequence from their fan-out, so a
//! publish costs no extra round trip unless another node published on C since this node's
//! fan-out saw it; the first publish on a channel a node has not seen, and each conflict,
//! cost one read of the subject's last message. Concurrent publishes to one channel thus
//! serialise (each conflict retries); publishes to different channels do not interact.
//!
//! **Ages.** JetStream 2.9 has one `max_age` per stream ([`NatsConfig::max_age`]: the longest
//! history TTL). Messages older than their own channel's TTL (by the stream's timestamp) are
//! treated as evicted when history is read, as the Redis broker does. Age removes the oldest
//! messages of the whole stream, so when a channel has nothing left after S but the stream lost
//! messages after S (its first sequence is past S + 1), the channel may have lost some: that
//! resume reports a gap — also for a wildcard resume from before the stream's oldest message,
//! where it may be a false alarm. Never a silent loss.
//!
//! **Epochs.** The stream's creation time. If the stream is deleted and created again (a
//! cluster that lost its storage), ids of the old one are answered with a gap, never mixed with
//! the new sequences; nodes notice within [`CHECK_INTERVAL`] and deliver the new stream from
//! its start. A publish in between, acknowledged by the new stream with a sequence not past
//! what the node delivered, gets a 503 rather than an id of the wrong epoch (it is stored, and
//! delivered with its right id).
//!
//! **Publish waits for its own copy.** As with Redis: [`Broker::publish`] returns once this
//! node's fan-out delivered the message to the local hub, so the count is real and one
//! client's consecutive publishes reach local subscribers in order.
//!
//! **Failure.** The NATS client reconnects by itself (to any of the servers it knows). While
//! it is not connected, or the stream cannot be read, publish and resume fail with
//! [`BrokerError::Unavailable`] (HTTP 503), [`Broker::healthy`] is false, and subscribers stay
//! connected; the supervisor starts the fan-out again from the last delivered sequence when
//! NATS is back ([`RECONNECT_MIN`] doubling to [`RECONNECT_MAX`] while the client is not
//! connected, to [`SESSION_RETRY_MAX`] while it is and the stream is unavailable).
//!
//! **Presence.** Each node writes its subscriber counts and chat members, as one JSON value
//! under its id, to the key-value bucket `<stream>_PRESENCE` when they change (checked every
//! [`NatsConfig::presence_interval`]) and at least every third of [`NatsConfig::presence_ttl`];
//! every node watches the bucket and keeps the others' latest values, dropping those not
//! refreshed within the TTL (so a node that dies vanishes from listings by then). Details in
//! `presence.rs`.
//!
//! **Idempotency keys** are shared the same way, in `<stream>_KEYS`: a claim is a key-value
//! `create` (set if absent), so a retry that lands on another node is recognised (`keys.rs`).
//!
//! **Control.** The control API (disconnect, unsubscribe, revoke, list a user, stats) reaches
//! every node over core NATS request/reply on `<subject_prefix>-control`; the asking node
//! waits for as many answers as presence knows nodes (at most [`CONTROL_TIMEOUT`]).
//! Revocations are also kept in the bucket `<stream>_REVOKED`, read by every node when it
//! starts listening and after each reconnect. Details in `control.rs`.
//!
//! **Limits.** `max_channels` is enforced from the stream's subject count read every
//! [`CHECK_INTERVAL`] (approximate under a burst of new channels); the revocation bucket is not
//! bounded by `MAX_REVOCATIONS` as each node's table is (a node past it refuses the new user).
//!
//! [`Hub`]: halley_engine::Hub
//! [`Broker::publish`]: halley_engine::Broker::publish
//! [`Broker::healthy`]: halley_engine::Broker::healthy
//! [`BrokerError::Unavailable`]: halley_engine::BrokerError::Unavailable

mod broker;
mod control;
mod keys;
mod node;
mod presence;
mod subject;

use std::sync::Arc;
use std::time::Duration;

use halley_engine::{BrokerError, Engine, EngineConfig, Hub, Stats};

pub use broker::NatsBroker;
pub use control::{CONTROL_TIMEOUT, MAX_ANSWERS};
pub use node::{CHECK_INTERVAL, RECONNECT_MAX, RECONNECT_MIN, SESSION_RETRY_MAX};
pub use presence::MAX_NODES;
pub use subject::{channel as channel_subject, parse as parse_subject};

/// Time allowed to open a connection to a NATS server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Time allowed for one JetStream request (a publish's acknowledgement, a stream read). A
/// cluster that answers nothing for this long counts as unavailable (publish gets 503) rather
/// than holding requests open; a replicated publish takes milliseconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a publish waits for its own message to come back through the fan-out before it
/// answers with a local count of 0 (the message is stored by then and reaches other nodes).
pub const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

/// Most tries of one publish whose expected last sequence was stale (another message of the
/// channel came in between, see "Exact gaps"). Each retry reads the current one first, so
/// this is only exhausted by more than this many concurrent publishers of one channel; the
/// publish then fails with 503.
pub const PUBLISH_ATTEMPTS: usize = 16;

/// Where NATS is, and the stream Halley keeps there.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// `nats://host:port[,host:port…]`: the servers to connect to (any one will do; the
    /// client learns the others from it).
    pub url: String,
    /// The stream's name.
    pub stream: String,
    /// First token of every subject Halley uses, so that other applications (or another
    /// Halley cluster with its own stream) can share the NATS cluster.
    pub subject_prefix: String,
    /// Replicas of the stream (and buckets) when Halley creates them: `None` is 3 when the
    /// server Halley reaches is part of a cluster, 1 when it is alone. A cluster that cannot
    /// place them yet (forming, a server down) is tried again: never fewer for good. An
    /// existing stream keeps its own.
    pub replicas: Option<usize>,
    /// Messages kept per channel (the stream's `max_msgs_per_subject`): the largest history
    /// size of any namespace; `None` is the engine's `history_size`.
    pub max_history: Option<usize>,
    /// Age after which the stream drops a message: the longest history TTL; `None` is the
    /// engine's `history_ttl`.
    pub max_age: Option<Duration>,
    /// Bytes the stream may hold in all (oldest dropped first, which shows as a gap). Bounds
    /// the storage of a cluster with many channels.
    pub max_bytes: i64,
    /// How often a node checks whether its subscriber counts or members changed and writes
    /// them to the presence bucket. `/api/channels` on another node is at most this stale.
    pub presence_interval: Duration,
    /// How long a node's presence outlives its last write: after a node dies, its subscribers
    /// disappear from listings within this time. Several intervals, so that a slow write does
    /// not make a live node flicker.
    pub presence_ttl: Duration,
    /// Longest life of an idempotency key in its bucket (`<stream>_KEYS`): a key's window
    /// (`--idempotency-window`) longer than this is cut to it.
    pub key_max_age: Duration,
}

impl NatsConfig {
    pub fn new(url: impl Into<String>) -> NatsConfig {
        NatsConfig {
            url: url.into(),
            stream: "HALLEY".into(),
            subject_prefix: "halley".into(),
            replicas: None,
            max_history: None,
            max_age: None,
            max_bytes: 1 << 30,
            presence_interval: Duration::from_secs(1),
            presence_ttl: Duration::from_secs(10),
            key_max_age: Duration::from_secs(24 * 3600),
        }
    }

    /// The server addresses of [`NatsConfig::url`], for the client.
    pub fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, BrokerError> {
        let text = self.url.trim();
        let rest = text.strip_prefix("nats://").unwrap_or(text);
        rest.split(',')
            .map(|host| {
                let host = host.trim().trim_start_matches("nats://");
                format!("nats://{host}")
                    .parse::<async_nats::ServerAddr>()
                    .map_err(|e| {
                        BrokerError::Unavailable(format!("bad NATS address {host:?}: {e}"))
                    })
            })
            .collect()
    }
}

/// An engine whose broker is NATS. The broker starts connecting in the background; see
/// [`NatsBroker::connected`] to wait for it. Must be called inside a tokio runtime.
pub fn engine(
    config: NatsConfig,
    engine: EngineConfig,
) -> Result<(Engine, Arc<NatsBroker>), BrokerError> {
    let stats = Arc::new(Stats::default());
    let hub = Hub::new(engine.queue_capacity, stats.clone());
    let broker = NatsBroker::spawn(config, engine, hub.clone(), stats.clone())?;
    Ok((Engine::with_broker(hub, broker.clone(), stats), broker))
}
