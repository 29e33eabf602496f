//! Shared harness for the HTTP integration tests: a real [`Server`] on `127.0.0.1:0`, and small
//! real clients (hyper HTTP/1.1, raw TCP for exact bytes, tokio-tungstenite for WebSocket).
//!
//! Nothing here sleeps to synchronise: every wait is for an observable event (response headers,
//! bytes on a socket, a subscriber count in `/api/channels`), and every await is bounded by
//! [`WAIT`] so that a server bug fails the test instead of hanging it.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod app;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use halley_engine::access::{AccessConfig, Policy};
use halley_engine::bayeux::{Bayeux, BayeuxConfig, NoServices, PolicyOnly};
use halley_engine::{Engine, EngineConfig};
use halley_http::{HttpConfig, Server};
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
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

/// The longest any single step of a test may take before it counts as a failure.
pub const WAIT: Duration = Duration::from_secs(5);

/// Awaits `future`, failing the test (instead of hanging it) after [`WAIT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(WAIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {WAIT:?}: {what}"),
    }
}

pub type Ws = WebSocketStream<TcpStream>;

/// The test defaults: an ephemeral port, connects held 300 ms, a 3 s drain.
fn test_http() -> HttpConfig {
    HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        hold_timeout: Duration::from_millis(300),
        drain_timeout: Duration::from_secs(3),
        ..HttpConfig::default()
    }
}

/// A running server; dropping it starts the graceful drain.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    /// The task running `Server::run`; it completes once the drain is over.
    pub done: Option<JoinHandle<()>>,
    /// The configured publish key, which [`TestServer::publish`] sends.
    pub key: Option<String>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestServer {
    /// A server with test-sized timeouts (hold 300 ms) and otherwise default budgets.
    pub async fn start() -> TestServer {
        TestServer::with(|_, _| {}).await
    }

    /// A server whose configuration `tweak` adjusts after the test defaults are applied.
    pub async fn with(tweak: impl FnOnce(&mut HttpConfig, &mut EngineConfig)) -> TestServer {
        let mut http = test_http();
        let mut engine = EngineConfig::default();
        tweak(&mut http, &mut engine);
        let server = Server::bind(http, Engine::in_memory(engine)).await.unwrap();
        TestServer::launch(server, None)
    }

    /// A server with only a publish key configured (every publish needs it).
    pub async fn with_key(key: &str) -> TestServer {
        TestServer::with_access(AccessConfig {
            publish_key: Some(key.into()),
            ..AccessConfig::default()
        })
        .await
    }

    /// A server whose engine asks the policy built from `access`.
    pub async fn with_access(access: AccessConfig) -> TestServer {
        let key = access.publish_key.clone();
        let policy = Policy::new(access).expect("a valid access configuration");
        TestServer::with_policy(policy, key, |_| {}).await
    }

    /// A server whose engine asks `policy` (a clone of which the test may keep, to revoke);
    /// `key` is the backend key [`TestServer::publish`] sends.
    pub async fn with_policy(
        policy: Policy,
        key: Option<String>,
        tweak: impl FnOnce(&mut HttpConfig),
    ) -> TestServer {
        let mut http = test_http();
        tweak(&mut http);
        let engine = Engine::in_memory(EngineConfig::default());
        assert!(engine.set_policy(policy).is_ok());
        let server = Server::bind(http, engine).await.unwrap();
        TestServer::launch(server, key)
    }

    /// A server on `engine` (the test set its policy, grace…), with `key` the backend key
    /// [`TestServer::publish`] sends and `tweak` applied to the test defaults.
    pub async fn with_engine(
        engine: Engine,
        key: Option<String>,
        tweak: impl FnOnce(&mut HttpConfig),
    ) -> TestServer {
        let mut http = test_http();
        tweak(&mut http);
        let server = Server::bind(http, engine).await.unwrap();
        TestServer::launch(server, key)
    }

    /// A server whose members stay present for `grace` after their last connection closed.
    pub async fn with_presence_grace(grace: std::time::Duration) -> TestServer {
        let http = test_http();
        let engine = Engine::in_memory(EngineConfig::default());
        engine.set_presence_grace(grace);
        let server = Server::bind(http, engine).await.unwrap();
        TestServer::launch(server, None)
    }

    /// A server with its own Bayeux configuration. `tweak` gets the test defaults, with the
    /// Bayeux connect timeout equal to the hold timeout as [`Server::bind`] sets it; a tweak
    /// that changes one should change the other.
    pub async fn with_bayeux(
        tweak: impl FnOnce(&mut HttpConfig, &mut EngineConfig, &mut BayeuxConfig),
    ) -> TestServer {
        let mut http = test_http();
        let mut engine = EngineConfig::default();
        let mut bayeux = BayeuxConfig {
            timeout: http.hold_timeout,
            ..BayeuxConfig::default()
        };
        tweak(&mut http, &mut engine, &mut bayeux);
        let engine = Engine::in_memory(engine);
        let bayeux = Bayeux::spawn(
            engine.clone(),
            bayeux,
            Arc::new(PolicyOnly),
            Arc::new(NoServices),
        );
        let server = Server::bind_with(http, engine, bayeux).await.unwrap();
        TestServer::launch(server, None)
    }

    fn launch(server: Server, key: Option<String>) -> TestServer {
        let addr = server.local_addr();
        let shutdown = server.shutdown_token();
        let done = Some(tokio::spawn(server.run()));
        TestServer {
            addr,
            shutdown,
            done,
            key,
        }
    }

    /// A request builder with the `Host` header a browser would send.
    pub fn request(&self, method: &str, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
    }

    /// Sends `request` on a fresh connection and reads the whole response.
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

    /// Sends `request` on a fresh connection and returns once the response head has arrived.
    pub async fn open(&self, request: Request<Full<Bytes>>) -> Open {
        let what = format!("{} {}", request.method(), request.uri());
        let stream = within(&what, TcpStream::connect(self.addr)).await.unwrap();
        // Without this, a request written in two segments (head, then a large body) waits for
        // a delayed ACK (Nagle), ~40 ms per request.
        stream.set_nodelay(true).unwrap();
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

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request("GET", path).body(Full::default()).unwrap())
            .await
    }

    /// Opens a held `GET` (a streaming subscriber) and returns once its headers arrived — which
    /// for every streaming transport means the subscription exists.
    pub async fn stream(&self, path: &str) -> Open {
        self.stream_with(path, &[]).await
    }

    /// [`TestServer::stream`] with extra request headers.
    pub async fn stream_with(&self, path: &str, headers: &[(&str, &str)]) -> Open {
        let mut request = self.request("GET", path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.open(request.body(Full::default()).unwrap()).await
    }

    pub async fn post(&self, path: &str, content_type: &str, body: impl Into<Bytes>) -> Reply {
        let request = self
            .request("POST", path)
            .header("content-type", content_type)
            .body(Full::new(body.into()))
            .unwrap();
        self.send(request).await
    }

    /// Publishes a text body to `channel` (with the publish key, if one is configured) and
    /// returns the new message's id.
    pub async fn publish(&self, channel: &str, text: &str) -> String {
        self.publish_as(channel, "text/plain", text).await
    }

    /// Publishes a JSON body to `channel` and returns the new message's id.
    pub async fn publish_json(&self, channel: &str, json: &str) -> String {
        self.publish_as(channel, "application/json", json).await
    }

    async fn publish_as(&self, channel: &str, content_type: &str, body: &str) -> String {
        let mut request = self
            .request("POST", &format!("/pub{channel}"))
            .header("content-type", content_type);
        if let Some(key) = &self.key {
            request = request.header("x-halley-key", key);
        }
        let reply = self
            .send(
                request
                    .body(Full::new(Bytes::from(body.to_owned())))
                    .unwrap(),
            )
            .await;
        reply.expect_published(channel)
    }

    /// The value of one sample in `/metrics`, e.g. `halley_subscribers{transport="sse"}`.
    pub async fn metric(&self, sample: &str) -> i64 {
        let reply = self.get("/metrics").await;
        assert_eq!(reply.status, 200);
        metric_value(&reply.body, sample)
            .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{}", reply.body))
    }

    /// Waits until the `/metrics` sample `sample` equals `n`: the observable sign that held
    /// requests (e.g. `halley_subscribers{transport="longpoll"}`, Bayeux connects) started or
    /// ended.
    pub async fn wait_metric(&self, sample: &str, n: i64) {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut last = 0;
        for _ in 0..300 {
            tick.tick().await;
            last = self.metric(sample).await;
            if last == n {
                return;
            }
        }
        panic!("{sample} never reached {n} (last seen {last})");
    }

    /// Waits until `/api/channels` lists `name` (a channel or pattern) with at least `n`
    /// subscribers: the observable sign that a held request (long-poll, headless pull) has
    /// subscribed.
    pub async fn wait_subscribers(&self, name: &str, n: u64) {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for _ in 0..300 {
            tick.tick().await;
            if self.subscribers(name).await >= n {
                return;
            }
        }
        panic!("{name} never reached {n} subscribers");
    }

    /// Current subscriber count of `name` according to `/api/channels`.
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

    /// A raw TCP connection, for checks on exact bytes.
    pub async fn raw(&self) -> TcpStream {
        within("raw connect", TcpStream::connect(self.addr))
            .await
            .unwrap()
    }

    /// A raw connection that has sent `head` (which must end with the blank line).
    pub async fn raw_request(&self, head: &str) -> TcpStream {
        let mut stream = self.raw().await;
        within("raw write", stream.write_all(head.as_bytes()))
            .await
            .unwrap();
        stream
    }

    /// A WebSocket client connected to `path`, with extra request `headers`.
    pub async fn ws_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut request = format!("ws://{}{path}", self.addr)
            .into_client_request()
            .unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let stream = self.raw().await;
        within(
            "websocket handshake",
            tokio_tungstenite::client_async(request, stream),
        )
        .await
        .map(|(ws, _response)| ws)
    }

    /// A WebSocket subscriber of `path`; the subscription exists once this returns.
    pub async fn ws(&self, path: &str) -> Ws {
        self.ws_with(path, &[])
            .await
            .unwrap_or_else(|e| panic!("websocket {path}: {e}"))
    }

    /// A request that is refused must leave the server serving: checks a publish still works.
    pub async fn assert_still_serving(&self) {
        let reply = self.get("/healthz").await;
        assert_eq!(reply.status, 200, "server stopped serving: {}", reply.body);
        self.publish("/still/serving", "yes").await;
    }
}

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

    /// Asserts a `{"error": "..."}` JSON refusal with `status`.
    pub fn expect_error(&self, status: u16) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let json = self.json();
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "error body should be {{\"error\": \"...\"}}: {}",
            self.body
        );
    }

    /// Asserts a successful publish to `channel`; returns the message id.
    pub fn expect_published(&self, channel: &str) -> String {
        assert_eq!(self.status, 200, "publish to {channel}: {}", self.body);
        let json = self.json();
        assert_eq!(json["channel"], channel, "{}", self.body);
        assert!(json["subscribers"].is_u64(), "{}", self.body);
        json["id"].as_str().expect("id is a string").to_owned()
    }
}

/// A response whose body is read as it arrives (held and streaming transports).
pub struct Open {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Incoming,
    /// Everything received so far.
    pub buf: Vec<u8>,
    /// How much of `buf` the test has already consumed with [`Open::expect`].
    pub seen: usize,
}

impl Open {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Reads one more data frame; false at the end of the body.
    async fn fill(&mut self) -> bool {
        let text = String::from_utf8_lossy(&self.buf[self.seen..]).into_owned();
        loop {
            let frame = within(&format!("more body after {text:?}"), self.body.frame()).await;
            match frame {
                None => return false,
                Some(Err(e)) => panic!("body failed after {text:?}: {e}"),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                        return true;
                    }
                }
            }
        }
    }

    /// Asserts that the next bytes of the body are exactly `expected`.
    pub async fn expect(&mut self, expected: &str) {
        let want = self.seen + expected.len();
        while self.buf.len() < want {
            if !self.fill().await {
                break;
            }
        }
        let end = want.min(self.buf.len());
        assert_eq!(
            String::from_utf8_lossy(&self.buf[self.seen..end]),
            expected,
            "unexpected body bytes"
        );
        self.seen = end;
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

    /// The next non-empty line (NDJSON streams open with a blank line and use blank lines as
    /// heartbeats), parsed as JSON.
    pub async fn json_line(&mut self) -> Value {
        loop {
            let line = self.line().await;
            if !line.is_empty() {
                return serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
            }
        }
    }

    /// Reads to the end of the body (which must come within [`WAIT`]); returns what was unread.
    pub async fn rest(&mut self) -> String {
        while self.fill().await {}
        let text = String::from_utf8(self.buf[self.seen..].to_vec()).unwrap();
        self.seen = self.buf.len();
        text
    }
}

/// Reads from a raw socket until `needle` has arrived; returns everything read.
pub async fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // Only the bytes that arrived since the last search (plus an overlap) are searched, so
    // reading megabytes stays linear.
    let mut searched: usize = 0;
    loop {
        let from = searched.saturating_sub(needle.len());
        if buf[from..].windows(needle.len()).any(|w| w == needle) {
            return buf;
        }
        searched = buf.len();
        let n = within(
            &format!("raw read until {:?}", String::from_utf8_lossy(needle)),
            stream.read(&mut chunk),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "raw read failed after {:?}: {e}",
                String::from_utf8_lossy(&buf)
            )
        });
        assert!(
            n > 0,
            "connection closed before {:?}; read {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads from a raw socket until the peer closes it (EOF or reset); returns everything read.
pub async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match within("raw read until close", stream.read(&mut chunk)).await {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The next WebSocket frame that is not a ping or pong.
pub async fn ws_next(ws: &mut Ws) -> Frame {
    use futures_util::StreamExt;
    loop {
        let frame = within("websocket frame", ws.next())
            .await
            .expect("websocket ended")
            .expect("websocket error");
        if !matches!(frame, Frame::Ping(_) | Frame::Pong(_)) {
            return frame;
        }
    }
}

/// The next WebSocket text frame, parsed as JSON.
pub async fn ws_json(ws: &mut Ws) -> Value {
    match ws_next(ws).await {
        Frame::Text(text) => serde_json::from_str(text.as_str())
            .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}")),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The value of `sample` (a metric name with its labels) in Prometheus text.
pub fn metric_value(text: &str, sample: &str) -> Option<i64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

/// `{"channel","id","data"}` as the server writes it (compact JSON).
pub fn message_object(channel: &str, id: &str, data_json: &str) -> String {
    format!(r#"{{"channel":"{channel}","id":"{id}","data":{data_json}}}"#)
}

/// The same id in another epoch: what a client resuming after a restart would send.
pub fn foreign_epoch(id: &str) -> String {
    let (epoch, offset) = id.split_once('-').unwrap();
    let epoch = u64::from_str_radix(epoch, 16).unwrap() ^ 0x10;
    format!("{epoch:x}-{offset}")
}

/// An id's (epoch, offset), to compare ids without depending on more than their documented shape.
pub fn parse_id(id: &str) -> (u64, u64) {
    let (epoch, offset) = id.split_once('-').expect("id is <epoch hex>-<offset>");
    (
        u64::from_str_radix(epoch, 16).expect("epoch is hex"),
        offset.parse().expect("offset is decimal"),
    )
}

/// POSTs a Bayeux batch to `/cometd` (long-polling) and returns the replies.
pub async fn bayeux(s: &TestServer, batch: Value) -> Vec<Value> {
    let reply = s
        .post("/cometd", "application/json", batch.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}

/// The reply to a long-polling Bayeux handshake with `ext`.
pub async fn bayeux_handshake(s: &TestServer, ext: Value) -> Value {
    let replies = bayeux(
        s,
        serde_json::json!([{"channel": "/meta/handshake", "version": "1.0",
                "supportedConnectionTypes": ["long-polling"], "id": "h", "ext": ext}]),
    )
    .await;
    replies[0].clone()
}

/// A long-polling Bayeux session opened with `ext`: its clientId.
pub async fn bayeux_client(s: &TestServer, ext: Value) -> String {
    let reply = bayeux_handshake(s, ext).await;
    assert_eq!(reply["successful"], true, "{reply}");
    reply["clientId"].as_str().unwrap().to_string()
}

/// Now, in Unix seconds (for token claims).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token over `claims`, signed with `secret`.
pub fn hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}
