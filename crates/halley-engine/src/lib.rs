//! Halley's engine: who is subscribed to what, and what they are owed.
//!
//! - [`Engine`] is the cheap-to-clone facade the transports use: [`Engine::publish`] and
//!   [`Engine::subscribe`]. It owns a [`Hub`] and a [`Broker`].
//! - [`Hub`] is this process's registry of local subscribers (exact channels and wildcard
//!   patterns), each with a bounded queue. [`Hub::deliver`] fans a message out to them.
//! - [`Broker`] is where messages get their ids and history lives. [`MemoryBroker`] keeps both in
//!   this process; a Redis broker keeps them in Redis and fans out between nodes. Either way the
//!   broker hands every message to each node's hub, so nothing above the engine changes.
//! - [`Subscription`] is one subscriber's handle: the replayed history it is owed on resume, then
//!   live messages, deduplicated by id, or [`Event::Lagged`] when it fell too far behind.
//!
//! - [`bayeux::Bayeux`] runs Bayeux 1.0 sessions (handshake, connect, subscribe, publish, the ack
//!   and timesync extensions) over the engine, for any transport.
//!
//! - [`presence`] keeps who is on a channel and announces joins and leaves.
//!
//! - [`observe`] tells an [`observe::Observer`] (set once, like the policy) what happens on
//!   channels: members joining and leaving, channels occupied and vacated, clients publishing.
//!   It only enqueues; nothing on the delivery path calls it.
//! - [`control`] is the application's control over its users' connections (disconnect,
//!   unsubscribe, revoke, list), here and — through the broker — on every node.
//! - [`sources`] is a token bucket per client address in a bounded table (Bayeux handshakes;
//!   the HTTP layer's latency reports).
//!
//! Invariant: the engine knows nothing about HTTP or Redis.
//!
//! Slow subscribers: every subscriber queue holds at most
//! [`EngineConfig::queue_capacity`] messages. A subscriber whose queue is full is *cut off*: its
//! queue is freed, it is removed from the hub, and its next event is [`Event::Lagged`]. The
//! transport ends the response; the client reconnects with its last id and the history fills the
//! hole (or the server reports a gap). Nothing is dropped silently and nothing grows unbounded.

pub mod access;
pub mod bayeux;
mod broker;
mod config;
pub mod control;
pub mod direct;
mod engine;
mod hub;
pub mod idempotency;
mod memory;
pub mod observe;
mod occupancy;
pub mod presence;
mod replay;
pub mod sources;
mod stats;

pub use broker::{Broker, BrokerError, ChannelEntry, Gather, Member, Replay};
pub use config::{DEFAULT_REPLAY_BATCH, EngineConfig, HistoryLimits, HistoryRules};
pub use engine::{ChannelInfo, Engine, EngineError, MAX_RECENT, PresenceGuard, Published, Start};
pub use hub::{Event, Hub, Subscription};
pub use memory::MemoryBroker;
pub use stats::{Gauges, MAX_TRAFFIC_ROWS, NodeStats, Stats};
