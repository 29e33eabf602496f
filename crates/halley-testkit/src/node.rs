//! [`Node`]: one Halley server (in-process, on `127.0.0.1:0`) on a shared broker, whichever it
//! is — a [`crate::Redis`], the master a [`crate::Sentinels`] names, or a [`crate::Nats`]
//! cluster — and [`TestBroker`], the broker's servers of a test chosen by [`BrokerKind`], so
//! that one cluster test runs unchanged on every broker.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use halley_engine::access::Policy;
use halley_engine::{Engine, EngineConfig};
use halley_http::{HttpConfig, Server};
use halley_nats::{NatsBroker, NatsConfig};
use halley_redis::{RedisBroker, RedisConfig};
use http_body_util::Full;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::redis::{NODE_WAIT, redis_config};
use crate::{Client, Nats, Open, Redis, Reply, Sentinels, eventually, within_for};

/// Anything that names the broker a node connects to (its `--broker` URL).
pub trait BrokerAddr {
    fn broker_url(&self) -> String;
}

/// The brokers' servers name themselves.
macro_rules! broker_addr_by_url {
    ($($t:ty),*) => {
        $(
            impl BrokerAddr for $t {
                fn broker_url(&self) -> String {
                    self.url()
                }
            }
        )*
    };
}

broker_addr_by_url!(Redis, Sentinels, Nats, TestBroker);

impl BrokerAddr for str {
    fn broker_url(&self) -> String {
        self.to_owned()
    }
}

impl BrokerAddr for String {
    fn broker_url(&self) -> String {
        self.clone()
    }
}

/// The brokers one cluster suite runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    /// One `redis-server` (`redis://`).
    Redis,
    /// A master, two replicas and three sentinels (`redis+sentinel://`, `WAIT 1`).
    Sentinel,
    /// Three clustered `nats-server -js` (`nats://`, the stream R3).
    Nats,
}

/// The broker servers of one test.
pub enum TestBroker {
    Redis(Redis),
    Sentinel(Sentinels),
    Nats(Nats),
}

impl TestBroker {
    /// Starts the servers of `kind` and returns once they are ready.
    pub async fn start(kind: BrokerKind) -> TestBroker {
        match kind {
            BrokerKind::Redis => TestBroker::Redis(Redis::start().await),
            BrokerKind::Sentinel => TestBroker::Sentinel(Sentinels::start(2).await),
            BrokerKind::Nats => TestBroker::Nats(Nats::cluster().await),
        }
    }

    pub fn kind(&self) -> BrokerKind {
        match self {
            TestBroker::Redis(_) => BrokerKind::Redis,
            TestBroker::Sentinel(_) => BrokerKind::Sentinel,
            TestBroker::Nats(_) => BrokerKind::Nats,
        }
    }

    /// The nodes' `--broker` URL.
    pub fn url(&self) -> String {
        match self {
            TestBroker::Redis(redis) => redis.url(),
            TestBroker::Sentinel(set) => set.url(),
            TestBroker::Nats(nats) => nats.url(),
        }
    }

    /// Whether the broker keeps what it acknowledged when [`TestBroker::kill_one`] kills a
    /// server: a replicated one does; one Redis loses its memory.
    pub fn survives_a_server(&self) -> bool {
        !matches!(self, TestBroker::Redis(_))
    }

    /// Kills (SIGKILL, like a crash) the server whose loss a replicated broker must survive:
    /// the Redis master, or the NATS server leading Halley's stream. One Redis is killed and
    /// started again, empty, at once — the nearest it has to a failover.
    pub async fn kill_one(&mut self) -> String {
        match self {
            TestBroker::Redis(redis) => {
                redis.kill();
                redis.start_again().await;
                format!("redis-server on {} (restarted empty)", redis.port)
            }
            TestBroker::Sentinel(set) => {
                let old = set.kill_master().await;
                format!("the Redis master on {old}")
            }
            TestBroker::Nats(nats) => {
                let leader = nats.stream_leader("HALLEY").await;
                nats.kill(leader);
                format!("nats-server {leader}, the stream's leader")
            }
        }
    }

    /// Starts again what [`TestBroker::kill_one`] killed, as its operator should: the NATS
    /// server rejoins the cluster with an empty store and catches up from the others (this
    /// returns once it is current with the stream's leader; see
    /// [`TestBroker::revive_with_store`] for why empty); the old Redis master comes back empty and
    /// the sentinels make it a replica of the new one.
    pub async fn revive(&mut self) {
        match self {
            TestBroker::Redis(_) => {}
            TestBroker::Sentinel(set) => {
                for server in &mut set.servers {
                    if !server.is_up() {
                        server.start_again().await;
                    }
                }
            }
            TestBroker::Nats(nats) => {
                for i in 0..nats.servers() {
                    if !nats.is_up(i) {
                        nats.restart_empty(i).await;
                    }
                }
                nats.wait_current("HALLEY").await;
            }
        }
    }

    /// As [`TestBroker::revive`], but the NATS server keeps the store it had when it was
    /// killed. nats-server 2.9.10 (Debian's) then serves, at some sequences, messages that it
    /// had stored as the stream's leader but the cluster never committed — messages answered
    /// 503 — in place of the ones the new leader committed there: an id seen with two
    /// messages (`tests/kill.rs`, the ignored test, shows it).
    pub async fn revive_with_store(&mut self) {
        match self {
            TestBroker::Nats(nats) => {
                nats.restart_all().await;
                nats.wait_current("HALLEY").await;
            }
            _ => self.revive().await,
        }
    }

    /// A broker outage: every server killed (SIGKILL). [`TestBroker::restart_all`] brings it
    /// back — one Redis empty; Sentinel's servers empty, under the same master (the sentinels
    /// do not fail over to a replica that is down too); NATS with its stores.
    pub fn kill_all(&mut self) {
        match self {
            TestBroker::Redis(redis) => redis.kill(),
            TestBroker::Sentinel(set) => {
                for server in &mut set.servers {
                    server.kill();
                }
            }
            TestBroker::Nats(nats) => nats.kill_all(),
        }
    }

    /// Starts again what [`TestBroker::kill_all`] killed.
    pub async fn restart_all(&mut self) {
        match self {
            TestBroker::Redis(redis) => redis.start_again().await,
            TestBroker::Sentinel(set) => {
                for server in &mut set.servers {
                    server.start_again().await;
                }
            }
            TestBroker::Nats(nats) => nats.restart_all().await,
        }
    }
}

/// A node's broker, of whichever kind.
pub enum NodeBroker {
    Redis(Arc<RedisBroker>),
    Nats(Arc<NatsBroker>),
}

impl NodeBroker {
    /// Stops the broker's tasks (nothing is cleaned up in the broker: as a crash).
    pub fn shutdown(&self) {
        match self {
            NodeBroker::Redis(b) => b.shutdown(),
            NodeBroker::Nats(b) => b.shutdown(),
        }
    }

    /// The node's id in the cluster.
    pub fn node(&self) -> u64 {
        match self {
            NodeBroker::Redis(b) => b.node(),
            NodeBroker::Nats(b) => b.node(),
        }
    }

    /// Whether the node is connected to its broker within `limit`.
    pub async fn connected(&self, limit: Duration) -> bool {
        match self {
            NodeBroker::Redis(b) => b.connected(limit).await,
            NodeBroker::Nats(b) => b.connected(limit).await,
        }
    }

    /// Whether the node listens to the control API's channel within `limit`.
    pub async fn control_ready(&self, limit: Duration) -> bool {
        match self {
            NodeBroker::Redis(b) => b.control_ready(limit).await,
            NodeBroker::Nats(b) => b.control_ready(limit).await,
        }
    }
}

/// How a node is made: its settings beyond the tests' defaults (presence every 100 ms,
/// expiring after 1 s; hold 500 ms, drain 2 s).
struct Settings<'a> {
    engine: Box<dyn FnOnce(&mut EngineConfig) + 'a>,
    http: Box<dyn FnOnce(&mut HttpConfig) + 'a>,
    redis: Box<dyn FnOnce(&mut RedisConfig) + 'a>,
    nats: Box<dyn FnOnce(&mut NatsConfig) + 'a>,
    policy: Option<Policy>,
    /// Return only once connected to the broker (and to its control channel with a policy).
    connect: bool,
}

impl Default for Settings<'_> {
    fn default() -> Self {
        Settings {
            engine: Box::new(|_| {}),
            http: Box::new(|_| {}),
            redis: Box::new(|_| {}),
            nats: Box::new(|_| {}),
            policy: None,
            connect: true,
        }
    }
}

/// One Halley node (in-process) on a shared broker. It derefs to its [`Client`].
pub struct Node {
    pub addr: SocketAddr,
    pub engine: Engine,
    pub broker: NodeBroker,
    shutdown: CancellationToken,
    done: Option<JoinHandle<()>>,
    client: Client,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.broker.shutdown();
    }
}

impl Deref for Node {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Node {
    /// A node on `broker` with the tests' defaults; it returns once connected.
    pub async fn start(broker: &(impl BrokerAddr + ?Sized)) -> Node {
        Node::make(broker.broker_url(), Settings::default()).await
    }

    /// A node whose engine settings `tweak` adjusts.
    pub async fn with(
        broker: &(impl BrokerAddr + ?Sized),
        tweak: impl FnOnce(&mut EngineConfig),
    ) -> Node {
        let settings = Settings {
            engine: Box::new(tweak),
            ..Settings::default()
        };
        Node::make(broker.broker_url(), settings).await
    }

    /// A node on Redis (or Sentinel) whose engine and Redis settings are adjusted.
    pub async fn with_configs(
        broker: &(impl BrokerAddr + ?Sized),
        tweak: impl FnOnce(&mut EngineConfig),
        tweak_redis: impl FnOnce(&mut RedisConfig),
    ) -> Node {
        let settings = Settings {
            engine: Box::new(tweak),
            redis: Box::new(tweak_redis),
            ..Settings::default()
        };
        Node::make(broker.broker_url(), settings).await
    }

    /// A node on the master the sentinels name (`redis+sentinel://`, see [`Sentinels`]), its
    /// broker settings adjusted by `tweak_redis` (`wait_replicas`, `epoch`).
    pub async fn on_sentinels(
        sentinels: &Sentinels,
        tweak_redis: impl FnOnce(&mut RedisConfig),
    ) -> Node {
        Node::with_configs(sentinels, |_| {}, tweak_redis).await
    }

    /// A node on NATS whose engine and NATS settings are adjusted.
    pub async fn on_nats(
        url: &(impl BrokerAddr + ?Sized),
        tweak: impl FnOnce(&mut EngineConfig),
        tweak_nats: impl FnOnce(&mut NatsConfig),
    ) -> Node {
        let settings = Settings {
            engine: Box::new(tweak),
            nats: Box::new(tweak_nats),
            ..Settings::default()
        };
        Node::make(url.broker_url(), settings).await
    }

    /// A node on NATS that may not reach it (yet): it returns without waiting to connect.
    pub async fn unconnected_nats(
        url: &(impl BrokerAddr + ?Sized),
        tweak: impl FnOnce(&mut EngineConfig),
        tweak_nats: impl FnOnce(&mut NatsConfig),
    ) -> Node {
        let settings = Settings {
            engine: Box::new(tweak),
            nats: Box::new(tweak_nats),
            connect: false,
            ..Settings::default()
        };
        Node::make(url.broker_url(), settings).await
    }

    /// A node whose HTTP settings `tweak_http` adjusts too.
    pub async fn with_http(
        broker: &(impl BrokerAddr + ?Sized),
        tweak: impl FnOnce(&mut EngineConfig),
        tweak_http: impl FnOnce(&mut HttpConfig),
    ) -> Node {
        let settings = Settings {
            engine: Box::new(tweak),
            http: Box::new(tweak_http),
            ..Settings::default()
        };
        Node::make(broker.broker_url(), settings).await
    }

    /// A node whose engine asks `policy`; it returns once the node also listens to the
    /// control API's channel (which it joins once its policy is set).
    pub async fn with_policy(broker: &(impl BrokerAddr + ?Sized), policy: Policy) -> Node {
        let settings = Settings {
            policy: Some(policy),
            ..Settings::default()
        };
        Node::make(broker.broker_url(), settings).await
    }

    async fn make(url: String, settings: Settings<'_>) -> Node {
        crate::init_test_log();
        let mut http = HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            hold_timeout: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(2),
            ..HttpConfig::default()
        };
        (settings.http)(&mut http);
        let mut engine = EngineConfig::default();
        (settings.engine)(&mut engine);
        let (engine, broker, patience) = if url.starts_with("nats://") {
            let mut config = NatsConfig::new(&url);
            config.presence_interval = Duration::from_millis(100);
            config.presence_ttl = Duration::from_secs(1);
            (settings.nats)(&mut config);
            let (engine, broker) = halley_nats::engine(config, engine).unwrap();
            // A NATS node waits for the stream's leader too.
            (engine, NodeBroker::Nats(broker), 3 * NODE_WAIT)
        } else {
            let mut config = redis_config(&url);
            (settings.redis)(&mut config);
            let (engine, broker) = halley_redis::engine(config, engine).unwrap();
            (engine, NodeBroker::Redis(broker), NODE_WAIT)
        };
        if settings.connect {
            assert!(
                broker.connected(patience).await,
                "node did not connect to {url}"
            );
        }
        if let Some(policy) = settings.policy {
            assert!(engine.set_policy(policy).is_ok());
            assert!(
                broker.control_ready(patience).await,
                "node did not subscribe to the control channel"
            );
        }
        let server = Server::bind(http, engine.clone()).await.unwrap();
        let addr = server.local_addr();
        let shutdown = server.shutdown_token();
        let done = Some(tokio::spawn(server.run()));
        Node {
            addr,
            engine,
            broker,
            shutdown,
            done,
            client: Client {
                addr,
                wait: NODE_WAIT,
            },
        }
    }

    /// Stops the node as a crash would for its peers: the broker goes first, so nothing is
    /// cleaned up in it, then the HTTP server.
    pub async fn kill(&mut self) {
        self.broker.shutdown();
        self.shutdown.cancel();
        if let Some(done) = self.done.take() {
            within_for(NODE_WAIT, "node drain", done).await.unwrap();
        }
    }

    /// Whether [`Node::kill`] was called.
    pub fn is_down(&self) -> bool {
        self.done.is_none()
    }

    pub fn broker_errors(&self) -> u64 {
        halley_engine::Stats::get(&self.engine.stats().broker_errors)
    }

    pub async fn post(&self, path: &str, body: &str) -> Reply {
        self.client
            .post(path, "text/plain", Bytes::from(body.to_owned()))
            .await
    }

    /// Publishes text to `channel`; returns the reply (`id`, `subscribers`).
    pub async fn publish(&self, channel: &str, text: &str) -> Value {
        let reply = self.post(&format!("/pub{channel}"), text).await;
        assert_eq!(reply.status, 200, "publish to {channel}: {}", reply.body);
        reply.json()
    }

    /// Publishes and returns the new message's id.
    pub async fn publish_id(&self, channel: &str, text: &str) -> String {
        self.publish(channel, text).await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Opens a held `GET` (a streaming subscriber); once the head arrived, it is subscribed.
    pub async fn stream(&self, path: &str, headers: &[(&str, &str)]) -> Open {
        let open = self.client.stream_with(path, headers).await;
        assert_eq!(open.status, 200, "GET {path}");
        open
    }

    /// POSTs a Bayeux batch to `/cometd` and returns the response's messages.
    pub async fn bayeux(&self, batch: Value) -> Vec<Value> {
        self.client.bayeux_batch(&batch).await
    }

    /// Waits until this node's `/api/channels` shows exactly `n` subscribers of `name`.
    pub async fn wait_subscribers(&self, name: &str, n: u64) {
        eventually(
            NODE_WAIT,
            &format!("{name} to have {n} subscribers"),
            || async { (self.subscribers(name).await == n).then_some(()) },
        )
        .await;
    }

    /// A request builder (as the client's; kept for the tests that build by hand).
    pub fn request(&self, method: &str, path: &str) -> hyper::http::request::Builder {
        self.client.request(method, path)
    }

    pub async fn send(&self, request: hyper::Request<Full<Bytes>>) -> Reply {
        self.client.send(request).await
    }
}
