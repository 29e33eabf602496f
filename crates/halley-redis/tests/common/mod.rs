//! Harness for the scale-out tests: a real `redis-server` of our own (free port, no
//! persistence, temp dir, killed on drop), Halley nodes on `127.0.0.1:0` sharing it, and small
//! real clients (hyper HTTP/1.1, tokio-tungstenite WebSocket).
//!
//! Nothing here sleeps to synchronise: every wait is for an observable event (response
//! headers, bytes on a socket, a count in `/api/channels`, a status of `/healthz`), polled in a
//! bounded loop, and every await is bounded so that a bug fails the test instead of hanging it.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use halley_engine::{Engine, EngineConfig};
use halley_http::{HttpConfig, Server};
use halley_redis::{RedisBroker, RedisConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_util::sync::CancellationToken;

/// The longest any single step may take before it counts as a failure.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polling period for observable conditions.
pub const POLL: Duration = Duration::from_millis(20);

/// Awaits `future`, failing the test (instead of hanging it) after [`WAIT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    within_for(WAIT, what, future).await
}

pub async fn within_for<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `check` every [`POLL`] until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within_for(limit, what, async {
        let mut tick = tokio::time::interval(POLL);
        loop {
            tick.tick().await;
            if let Some(value) = check().await {
                return value;
            }
        }
    })
    .await
}

/// A redis-server of this test's own.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
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
        };
        for _ in 0..10 {
            redis.port = {
                let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                probe.local_addr().unwrap().port()
            };
            if redis.spawn().await {
                return redis;
            }
        }
        panic!("could not start redis-server");
    }

    async fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: install Debian's redis-server (scripts/test does)");
        self.child = Some(child);
        let until = tokio::time::Instant::now() + WAIT;
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
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        let mut s = within(
            "redis connect",
            TcpStream::connect(("127.0.0.1", self.port)),
        )
        .await
        .unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let mut reply = String::new();
        within("redis reply", s.read_to_string(&mut reply))
            .await
            .unwrap();
        reply
    }

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

/// The broker settings of the tests: presence refreshed every 100 ms, expiring after 1 s.
pub fn redis_config(url: &str) -> RedisConfig {
    let mut config = RedisConfig::new(url);
    config.presence_interval = Duration::from_millis(100);
    config.presence_ttl = Duration::from_secs(1);
    config.sweep_interval = Duration::from_secs(1);
    config
}

/// One Halley node on the shared Redis.
pub struct Node {
    pub addr: SocketAddr,
    pub engine: Engine,
    pub broker: Arc<RedisBroker>,
    shutdown: CancellationToken,
    done: Option<JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.broker.shutdown();
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
        Node::configured(redis, tweak, tweak_redis, None).await
    }

    /// A node whose engine asks `policy`; it returns once the node also listens to the
    /// control API's channel (which it joins once its policy is set).
    pub async fn with_policy(redis: &Redis, policy: halley_engine::access::Policy) -> Node {
        Node::configured(redis, |_| {}, |_| {}, Some(policy)).await
    }

    async fn configured(
        redis: &Redis,
        tweak: impl FnOnce(&mut EngineConfig),
        tweak_redis: impl FnOnce(&mut RedisConfig),
        policy: Option<halley_engine::access::Policy>,
    ) -> Node {
        // HALLEY_TEST_LOG=debug shows the nodes' logs (interleaved) when a test fails.
        if let Ok(filter) = std::env::var("HALLEY_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let http = HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            hold_timeout: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(2),
            ..HttpConfig::default()
        };
        let mut engine = EngineConfig::default();
        tweak(&mut engine);
        let mut config = redis_config(&redis.url());
        tweak_redis(&mut config);
        let (engine, broker) = halley_redis::engine(config, engine).unwrap();
        assert!(
            broker.connected(WAIT).await,
            "node did not connect to Redis"
        );
        if let Some(policy) = policy {
            assert!(engine.set_policy(policy).is_ok());
            assert!(
                broker.control_ready(WAIT).await,
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
        }
    }

    /// Stops the node as a crash would for its peers: the broker goes first, so nothing is
    /// cleaned up in Redis, then the HTTP server.
    pub async fn kill(&mut self) {
        self.broker.shutdown();
        self.shutdown.cancel();
        if let Some(done) = self.done.take() {
            within("node drain", done).await.unwrap();
        }
    }

    pub fn broker_errors(&self) -> u64 {
        halley_engine::Stats::get(&self.engine.stats().broker_errors)
    }

    pub fn request(&self, method: &str, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
    }

    /// Sends `request` on a fresh connection and returns once the response head has arrived.
    pub async fn open(&self, request: Request<Full<Bytes>>) -> Open {
        let what = format!("{} {} on {}", request.method(), request.uri(), self.addr);
        let stream = within(&what, TcpStream::connect(self.addr)).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let response = within(&what, sender.send_request(request))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (head, body) = response.into_parts();
        Open {
            status: head.status,
            headers: head.headers,
            body,
            buf: Vec::new(),
            seen: 0,
        }
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> Reply {
        let what = format!("{} {}", request.method(), request.uri());
        let open = self.open(request).await;
        let body = within(&what, open.body.collect())
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body failed: {e}"))
            .to_bytes();
        Reply {
            status: open.status,
            headers: open.headers,
            body: String::from_utf8(body.to_vec()).expect("response body is UTF-8"),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request("GET", path).body(Full::default()).unwrap())
            .await
    }

    pub async fn post(&self, path: &str, body: &str) -> Reply {
        let request = self
            .request("POST", path)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        self.send(request).await
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
        let mut request = self.request("GET", path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let open = self.open(request.body(Full::default()).unwrap()).await;
        assert_eq!(open.status, 200, "GET {path}");
        open
    }

    /// An SSE subscriber of `channel` (optionally resuming with `Last-Event-ID`).
    pub async fn sse(&self, channel: &str, last_id: Option<&str>) -> Sse {
        let mut headers = vec![("accept", "text/event-stream")];
        if let Some(id) = last_id {
            headers.push(("last-event-id", id));
        }
        let mut open = self.stream(&format!("/sub{channel}"), &headers).await;
        assert_eq!(open.until("\n\n").await, "retry: 2000\n\n");
        Sse { open }
    }

    /// A WebSocket subscriber of `path`; the subscription exists once this returns.
    pub async fn ws(&self, path: &str) -> Ws {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let request = format!("ws://{}{path}", self.addr)
            .into_client_request()
            .unwrap();
        let stream = within("ws connect", TcpStream::connect(self.addr))
            .await
            .unwrap();
        within(
            "websocket handshake",
            tokio_tungstenite::client_async(request, stream),
        )
        .await
        .unwrap_or_else(|e| panic!("websocket {path}: {e}"))
        .0
    }

    /// POSTs a Bayeux batch to `/cometd` and returns the response's messages.
    pub async fn bayeux(&self, batch: Value) -> Vec<Value> {
        let request = self
            .request("POST", "/cometd")
            .header("content-type", "application/json;charset=UTF-8")
            .body(Full::new(Bytes::from(batch.to_string())))
            .unwrap();
        let reply = self.send(request).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json().as_array().expect("a Bayeux batch").clone()
    }

    /// Current subscriber count of `name` according to this node's `/api/channels`.
    pub async fn subscribers(&self, name: &str) -> u64 {
        let reply = self.get(&format!("/api/channels?prefix={name}")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply
            .json()
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["channel"] == name)
            .map_or(0, |row| row["subscribers"].as_u64().unwrap())
    }

    /// Waits until this node's `/api/channels` shows exactly `n` subscribers of `name`.
    pub async fn wait_subscribers(&self, name: &str, n: u64) {
        eventually(WAIT, &format!("{name} to have {n} subscribers"), || async {
            (self.subscribers(name).await == n).then_some(())
        })
        .await;
    }

    pub async fn health(&self) -> StatusCode {
        self.get("/healthz").await.status
    }
}

pub type Ws = WebSocketStream<TcpStream>;

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// A response whose body is read as it arrives.
pub struct Open {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Incoming,
    pub buf: Vec<u8>,
    pub seen: usize,
}

impl Open {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Reads one more data frame; false at the end of the body.
    async fn fill(&mut self) -> bool {
        loop {
            match within("more body", self.body.frame()).await {
                None => return false,
                Some(Err(e)) => panic!("body failed: {e}"),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                        return true;
                    }
                }
            }
        }
    }

    /// Reads up to and including the next `needle`; returns that text.
    pub async fn until(&mut self, needle: &str) -> String {
        loop {
            let rest = &self.buf[self.seen..];
            if let Some(at) = rest
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
            {
                let end = self.seen + at + needle.len();
                let text = String::from_utf8(self.buf[self.seen..end].to_vec()).unwrap();
                self.seen = end;
                return text;
            }
            let unread = String::from_utf8_lossy(rest).into_owned();
            assert!(
                self.fill().await,
                "body ended before {needle:?}; unread: {unread:?}"
            );
        }
    }

    /// The next `\n`-terminated line, without its terminator.
    pub async fn line(&mut self) -> String {
        let mut line = self.until("\n").await;
        line.pop();
        line
    }

    /// The next non-empty line (skips stream heartbeats), parsed as JSON.
    pub async fn json_line(&mut self) -> Value {
        loop {
            let line = self.line().await;
            if !line.is_empty() {
                return serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("line is not JSON ({e}): {line:?}"));
            }
        }
    }
}

/// An SSE stream, read event by event.
pub struct Sse {
    pub open: Open,
}

/// One SSE event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl Sse {
    /// The next event, skipping heartbeats (`:` comments).
    pub async fn next(&mut self) -> Event {
        loop {
            let block = self.open.until("\n\n").await;
            let mut event = Event::default();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    event.id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event.event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                }
            }
            if event.id.is_none() && event.event.is_none() && data.is_empty() {
                continue;
            }
            event.data = data.join("\n");
            return event;
        }
    }
}

/// The next WebSocket text frame, parsed as JSON (pings and pongs skipped).
pub async fn ws_json(ws: &mut Ws) -> Value {
    use futures_util::StreamExt;
    loop {
        let frame = within("websocket frame", ws.next())
            .await
            .expect("websocket ended")
            .expect("websocket error");
        match frame {
            Frame::Ping(_) | Frame::Pong(_) => continue,
            Frame::Text(text) => {
                return serde_json::from_str(text.as_str())
                    .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"));
            }
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// An id's (epoch, offset).
pub fn parse_id(id: &str) -> (u64, u64) {
    let (epoch, offset) = id.split_once('-').expect("id is <epoch hex>-<offset>");
    (
        u64::from_str_radix(epoch, 16).expect("epoch is hex"),
        offset.parse().expect("offset is decimal"),
    )
}
