//! Halley's test kit: what every integration test suite needs to start servers, brokers and
//! clients, in one place (a dev-dependency, never published).
//!
//! - Servers: [`TestServer`] (one in-process server on `127.0.0.1:0`, memory broker), [`Node`]
//!   (an in-process server on a shared broker of any kind), [`Process`] (the `halley` binary as
//!   a node).
//! - Brokers: [`Redis`], a `redis-server` of the test's own on a free port; [`Sentinels`], a
//!   master, its replicas and three Redis Sentinels (a failover on demand); [`Nats`], one or
//!   three `nats-server -js` of the test's own; [`TestBroker`], one of the three chosen by a
//!   [`BrokerKind`], so that one cluster suite runs on each (`tests/cluster.rs` here).
//! - Clients: [`Client`] (plain HTTP/1.1 with hyper, raw TCP for exact bytes, WebSocket with
//!   tokio-tungstenite), [`Sse`], [`wire::Transport`] (the streaming wire formats byte for
//!   byte), and [`subscriber`]: one resuming subscriber for every transport and Bayeux's three,
//!   as the chaos tests drive them.
//! - curl as a running client: [`Curl`] (its output read as it arrives).
//! - TLS: [`tls::TestCa`], certificates made at test time for `TestServer::with_tls`.
//! - Stand-ins: [`app::FakeApp`], the application behind Halley (webhooks, RPC, auth-url).
//!
//! Nothing here sleeps to synchronise: every wait is for an observable event (response headers,
//! bytes on a socket, a count in `/api/channels`, a status of `/healthz`), and every await is
//! bounded ([`WAIT`], or a [`Client`]'s own limit) so that a server bug fails the test instead
//! of hanging it.
//!
//! Each test crate keeps a thin `tests/common/mod.rs` (`pub use halley_testkit::*;` plus what
//! only it needs), so tests write `common::TestServer` as before.

pub mod access;
pub mod app;
pub mod cluster;
mod curl;
mod nats;
mod node;
mod process;
pub mod proxy;
mod redis;
mod sentinel;
mod server;
pub mod subscriber;
pub mod tls;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub use curl::{Curl, curl_installed};
pub use nats::Nats;
pub use node::{BrokerAddr, BrokerKind, Node, NodeBroker, TestBroker};
pub use process::{Process, halley_binary};
pub use redis::{DOWN_AFTER, FAILOVER_TIMEOUT, MASTER_NAME, NODE_WAIT, Redis, redis_config};
pub use sentinel::{FAILOVER_WAIT, Sentinels};
pub use server::{TestServer, bayeux, bayeux_client, bayeux_handshake};

/// The longest any single step of a test may take before it counts as a failure.
pub const WAIT: Duration = Duration::from_secs(5);

/// Polling period for observable conditions that have no event to await.
pub const POLL: Duration = Duration::from_millis(20);

/// Awaits `future`, failing the test (instead of hanging it) after [`WAIT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    within_for(WAIT, what, future).await
}

/// Awaits `future`, failing the test after `limit`.
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

pub type Ws = WebSocketStream<TcpStream>;

/// An HTTP/1.1 and WebSocket client of one server (a [`TestServer`], [`Node`] or
/// [`Process`] derefs to its own); every step is bounded by `wait`.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub addr: SocketAddr,
    /// The longest one request (or read) may take.
    pub wait: Duration,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, wait: WAIT }
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
        let what = format!("{} {} on {}", request.method(), request.uri(), self.addr);
        let open = self.open(request).await;
        let body = within_for(self.wait, &what, open.body.collect())
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
        let what = format!("{} {} on {}", request.method(), request.uri(), self.addr);
        let stream = within_for(self.wait, &what, TcpStream::connect(self.addr))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        self.open_on(stream, request).await
    }

    /// [`Client::open`] on a connection the test made (e.g. with a small receive buffer).
    pub async fn open_on(&self, stream: TcpStream, request: Request<Full<Bytes>>) -> Open {
        let what = format!("{} {} on {}", request.method(), request.uri(), self.addr);
        // Without this, a request written in two segments (head, then a large body) waits for
        // a delayed ACK (Nagle), ~40 ms per request.
        stream.set_nodelay(true).unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let response = within_for(self.wait, &what, sender.send_request(request))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (head, body) = response.into_parts();
        Open {
            status: head.status,
            headers: head.headers,
            body,
            buf: Vec::new(),
            seen: 0,
            wait: self.wait,
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

    /// [`Client::stream`] with extra request headers.
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
        within_for(self.wait, "raw connect", TcpStream::connect(self.addr))
            .await
            .unwrap()
    }

    /// A raw connection that has sent `head` (which must end with the blank line).
    pub async fn raw_request(&self, head: &str) -> TcpStream {
        let mut stream = self.raw().await;
        within_for(self.wait, "raw write", stream.write_all(head.as_bytes()))
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
        within_for(
            self.wait,
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

    /// An SSE subscriber of `channel` (optionally resuming with `Last-Event-ID`); returns once
    /// the stream's `retry:` preamble arrived.
    pub async fn sse(&self, channel: &str, last_id: Option<&str>) -> Sse {
        let mut headers = vec![("accept", "text/event-stream")];
        if let Some(id) = last_id {
            headers.push(("last-event-id", id));
        }
        let mut open = self.stream_with(&format!("/sub{channel}"), &headers).await;
        assert_eq!(open.status, 200, "GET /sub{channel}");
        assert_eq!(open.until("\n\n").await, "retry: 2000\n\n");
        Sse { open }
    }

    /// POSTs a Bayeux batch to `/cometd` (long-polling) and returns the replies.
    pub async fn bayeux_batch(&self, batch: &Value) -> Vec<Value> {
        let request = self
            .request("POST", "/cometd")
            .header("content-type", "application/json;charset=UTF-8")
            .body(Full::new(Bytes::from(batch.to_string())))
            .unwrap();
        let reply = self.send(request).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json().as_array().expect("a Bayeux batch").clone()
    }

    /// `/healthz`'s status.
    pub async fn health(&self) -> StatusCode {
        self.get("/healthz").await.status
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
    /// The longest one read may take.
    pub wait: Duration,
}

impl Open {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Reads one more data frame; false at the end of the body.
    async fn fill(&mut self) -> bool {
        match self.try_fill().await {
            Ok(more) => more,
            Err(e) => {
                let text = String::from_utf8_lossy(&self.buf[self.seen..]).into_owned();
                panic!("body failed after {text:?}: {e}")
            }
        }
    }

    /// Reads one more data frame: `Ok(false)` at the end of the body, `Err` when the
    /// connection failed (the server cut it, or the node went away).
    pub async fn try_fill(&mut self) -> Result<bool, String> {
        loop {
            let text = || String::from_utf8_lossy(&self.buf[self.seen..]).into_owned();
            let frame = match tokio::time::timeout(self.wait, self.body.frame()).await {
                Ok(frame) => frame,
                Err(_) => panic!(
                    "timed out after {:?}: more body after {:?}",
                    self.wait,
                    text()
                ),
            };
            match frame {
                None => return Ok(false),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                        return Ok(true);
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

    /// The text up to and including the next `needle` if it has arrived already.
    pub fn take_until(&mut self, needle: &str) -> Option<String> {
        let rest = &self.buf[self.seen..];
        let at = rest
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())?;
        let end = self.seen + at + needle.len();
        let text = String::from_utf8(self.buf[self.seen..end].to_vec()).unwrap();
        self.seen = end;
        // Keep the buffer from growing for the whole life of a long stream.
        if self.seen > 64 * 1024 {
            self.buf.drain(..self.seen);
            self.seen = 0;
        }
        Some(text)
    }

    /// Reads up to and including the next `needle`; returns that text.
    pub async fn until(&mut self, needle: &str) -> String {
        loop {
            if let Some(text) = self.take_until(needle) {
                return text;
            }
            let unread = String::from_utf8_lossy(&self.buf[self.seen..]).into_owned();
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

    /// Reads to the end of the body (which must come within the wait); returns what was unread.
    pub async fn rest(&mut self) -> String {
        while self.fill().await {}
        let text = String::from_utf8(self.buf[self.seen..].to_vec()).unwrap();
        self.seen = self.buf.len();
        text
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

impl Event {
    /// Parses one event block (without its blank line); `None` for a heartbeat or a block
    /// with nothing but comments or `retry:`.
    pub fn parse(block: &str) -> Option<Event> {
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
            return None;
        }
        event.data = data.join("\n");
        Some(event)
    }
}

impl Sse {
    /// The next event, skipping heartbeats (`:` comments).
    pub async fn next(&mut self) -> Event {
        loop {
            let block = self.open.until("\n\n").await;
            if let Some(event) = Event::parse(&block) {
                return event;
            }
        }
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

/// The next WebSocket frame that is not a ping or pong, within [`WAIT`].
pub async fn ws_next(ws: &mut Ws) -> Frame {
    ws_next_within(WAIT, ws).await
}

/// The next WebSocket frame that is not a ping or pong, within `limit`.
pub async fn ws_next_within(limit: Duration, ws: &mut Ws) -> Frame {
    use futures_util::StreamExt;
    loop {
        let frame = within_for(limit, "websocket frame", ws.next())
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
    ws_json_within(WAIT, ws).await
}

/// [`ws_json`] bounded by `limit`.
pub async fn ws_json_within(limit: Duration, ws: &mut Ws) -> Value {
    match ws_next_within(limit, ws).await {
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

/// `HALLEY_TEST_LOG=debug` shows the in-process servers' logs (interleaved) when a test fails.
pub fn init_test_log() {
    if let Ok(filter) = std::env::var("HALLEY_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Every message id seen anywhere in a test (publish answers, subscribers, resumes) with the
/// data it carried: one id seen with two data is an id issued twice, and fails the test.
#[derive(Default)]
pub struct Ids {
    seen: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Ids {
    /// Records that `where_` saw `id` carrying `data`; panics if it carried other data before.
    pub fn saw(&self, id: &str, data: &str, where_: &str) {
        let mut seen = self.seen.lock().unwrap();
        if let Some(before) = seen.insert(id.to_owned(), data.to_owned()) {
            assert_eq!(
                before, data,
                "id {id} issued twice: {before:?} and {data:?} (seen by {where_})"
            );
        }
    }
}
