//! Scale-out: [`Redis`], a `redis-server` of the test's own (free port, no persistence, temp
//! dir, killed on drop), and [`Node`], an in-process Halley server on it.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use halley_engine::{Engine, EngineConfig};
use halley_http::{HttpConfig, Server};
use halley_redis::{RedisBroker, RedisConfig};
use http_body_util::Full;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Client, Open, POLL, Reply, eventually, within_for};

/// How long a step against a node or Redis may take: longer than a single server's
/// [`crate::WAIT`], as a message crosses Redis and the nodes share two cores with it.
pub const NODE_WAIT: Duration = Duration::from_secs(10);

/// A redis-server of this test's own.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    role: Role,
}

/// What a [`Redis`] process is: a master, a replica of the server on a port, or a sentinel
/// watching the master on a port (see [`crate::Sentinels`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Role {
    Master,
    ReplicaOf(u16),
    Sentinel { master: u16 },
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Redis {
    /// Starts redis-server on a free port without persistence and waits until it answers.
    pub async fn start() -> Redis {
        Redis::start_as(Role::Master).await
    }

    pub(crate) async fn start_as(role: Role) -> Redis {
        let dir = std::env::temp_dir().join(format!(
            "halley-redis-test-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // Another process may take the port between our probe and redis binding it; then
        // redis exits and we try another port.
        let mut redis = Redis {
            child: None,
            port: 0,
            dir,
            role,
        };
        for _ in 0..10 {
            redis.port = free_port();
            if redis.spawn().await {
                return redis;
            }
        }
        panic!("could not start redis-server");
    }

    async fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        if let Role::Sentinel { master } = self.role {
            // A sentinel rewrites its file (what it learns of replicas and other sentinels).
            let conf = self.dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} {}\n\
                     sentinel failover-timeout {MASTER_NAME} {}\n\
                     sentinel parallel-syncs {MASTER_NAME} 2\n",
                    self.port,
                    self.dir.display(),
                    DOWN_AFTER.as_millis(),
                    FAILOVER_TIMEOUT.as_millis(),
                ),
            )
            .unwrap();
            command.arg(&conf).arg("--sentinel");
        } else {
            command
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                // A replica's first sync starts at once, not after the default 5 s wait for
                // more replicas.
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(&self.dir);
            if let Role::ReplicaOf(master) = self.role {
                command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
            }
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: install Debian's redis-server (scripts/test does)");
        self.child = Some(child);
        let until = tokio::time::Instant::now() + NODE_WAIT;
        while tokio::time::Instant::now() < until {
            if let Some(Ok(Some(_exited))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if self.ping().await {
                return true;
            }
            tokio::time::sleep(POLL).await;
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    async fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
            Ok(Ok(_)) if &buf == b"+PONG\r\n"
        )
    }

    /// Sends one command (RESP array of bulk strings) and returns the raw reply.
    pub async fn command(&self, args: &[&str]) -> String {
        command_at(self.port, args).await
    }

    /// Stops the process (SIGSTOP): it keeps its connections but answers nothing — a replica
    /// so paused falls behind its master.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Whether the process is running (not killed).
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }
}

/// Sends one command to the server on `port` and returns the raw reply.
pub(crate) async fn command_at(port: u16, args: &[&str]) -> String {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let mut s = within_for(
        NODE_WAIT,
        "redis connect",
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    within_for(NODE_WAIT, "redis reply", s.read_to_string(&mut reply))
        .await
        .unwrap();
    reply
}

impl Redis {
    /// Closes the Redis connections of one node (as a network blip would), leaving the rest.
    pub async fn disconnect(&self, node: u64) {
        let list = self.command(&["CLIENT", "LIST"]).await;
        let name = format!("name=halley-{node:x}-");
        let ids: Vec<&str> = list
            .lines()
            .filter(|line| line.contains(&name))
            .filter_map(|line| line.strip_prefix("id=")?.split(' ').next())
            .collect();
        assert!(!ids.is_empty(), "no connections of node {node:x} in {list}");
        for id in ids {
            self.command(&["CLIENT", "KILL", "ID", id]).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills redis-server (SIGKILL, like a crash; there is no persistence to lose anyway).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn start_again(&mut self) {
        assert!(self.spawn().await, "redis-server did not restart");
    }
}

/// The master's name the sentinels of [`crate::Sentinels`] watch.
pub const MASTER_NAME: &str = "halley";

/// How long a sentinel waits for an unanswering master before it calls it down: short, so
/// that a failover test takes seconds.
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);

/// Sentinel's `failover-timeout`: how soon a failed failover is tried again (and how long
/// replicas are given to follow the new master).
pub const FAILOVER_TIMEOUT: Duration = Duration::from_millis(3000);

/// A port nobody listens on now (another process may take it before the caller binds it).
pub(crate) fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// The broker settings of the tests: presence refreshed every 100 ms, expiring after 1 s.
pub fn redis_config(url: &str) -> RedisConfig {
    let mut config = RedisConfig::new(url);
    config.presence_interval = Duration::from_millis(100);
    config.presence_ttl = Duration::from_secs(1);
    config.sweep_interval = Duration::from_secs(1);
    config
}

/// One Halley node (in-process) on the shared Redis. It derefs to its [`Client`].
pub struct Node {
    pub addr: SocketAddr,
    pub engine: Engine,
    pub broker: Arc<RedisBroker>,
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
    pub async fn start(redis: &Redis) -> Node {
        Node::with(redis, |_| {}).await
    }

    pub async fn with(redis: &Redis, tweak: impl FnOnce(&mut EngineConfig)) -> Node {
        Node::with_configs(redis, tweak, |_| {}).await
    }

    pub async fn with_configs(
        redis: &Redis,
        tweak: impl FnOnce(&mut EngineConfig),
        tweak_redis: impl FnOnce(&mut RedisConfig),
    ) -> Node {
        Node::configured(redis.url(), tweak, tweak_redis, |_| {}, None).await
    }

    /// A node whose HTTP settings `tweak_http` adjusts too (after the node's defaults: hold
    /// 500 ms, drain 2 s).
    pub async fn with_http(
        redis: &Redis,
        tweak: impl FnOnce(&mut EngineConfig),
        tweak_http: impl FnOnce(&mut HttpConfig),
    ) -> Node {
        Node::configured(redis.url(), tweak, |_| {}, tweak_http, None).await
    }

    /// A node whose engine asks `policy`; it returns once the node also listens to the
    /// control API's channel (which it joins once its policy is set).
    pub async fn with_policy(redis: &Redis, policy: halley_engine::access::Policy) -> Node {
        Node::configured(redis.url(), |_| {}, |_| {}, |_| {}, Some(policy)).await
    }

    /// A node on the master the sentinels name (`redis+sentinel://`, see [`crate::Sentinels`]),
    /// its broker settings adjusted by `tweak_redis` (`wait_replicas`, `epoch`).
    pub async fn on_sentinels(
        sentinels: &crate::Sentinels,
        tweak_redis: impl FnOnce(&mut RedisConfig),
    ) -> Node {
        Node::configured(sentinels.url(), |_| {}, tweak_redis, |_| {}, None).await
    }

    async fn configured(
        url: String,
        tweak: impl FnOnce(&mut EngineConfig),
        tweak_redis: impl FnOnce(&mut RedisConfig),
        tweak_http: impl FnOnce(&mut HttpConfig),
        policy: Option<halley_engine::access::Policy>,
    ) -> Node {
        crate::init_test_log();
        let mut http = HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            hold_timeout: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(2),
            ..HttpConfig::default()
        };
        tweak_http(&mut http);
        let mut engine = EngineConfig::default();
        tweak(&mut engine);
        let mut config = redis_config(&url);
        tweak_redis(&mut config);
        let (engine, broker) = halley_redis::engine(config, engine).unwrap();
        assert!(
            broker.connected(NODE_WAIT).await,
            "node did not connect to Redis"
        );
        if let Some(policy) = policy {
            assert!(engine.set_policy(policy).is_ok());
            assert!(
                broker.control_ready(NODE_WAIT).await,
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
    /// cleaned up in Redis, then the HTTP server.
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
