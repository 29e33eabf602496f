//! One subscriber connection per task, for every kind of subscriber the tool knows.
//!
//! A subscriber is *ready* (counted as connected) once the server holds it: the response head
//! arrived (SSE, stream, Nchan), the upgrade was answered with 101 (WebSocket), or — where the
//! server answers nothing until a message comes — the held request was sent after everything
//! before it succeeded (native long-poll; Bayeux: handshake and subscribe answered
//! successfully, then `/meta/connect` sent).

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;

use crate::wire::{Conn, Dechunk, Scan, now_ns, source_addr, ws_frame, ws_upgrade};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Halley `GET /sub/{ch}` with `Accept: text/event-stream`.
    Sse,
    /// Halley `GET /sub/{ch}?transport=stream` (chunked lines).
    Stream,
    /// Halley `GET /sub/{ch}?transport=gif` (the forever GIF). Its frames are pictures, with no
    /// timestamp to read: for `hold` (what an idle GIF costs), deliveries stay 0.
    Gif,
    /// Halley `GET /sub/{ch}?transport=longpoll`, re-issued with `last_id` after each answer.
    Longpoll,
    /// Halley WebSocket on `/sub/{ch}`.
    Ws,
    /// Bayeux long-polling on `--cometd-path` (Halley `/cometd`, Faye, CometD).
    BayeuxLp,
    /// Bayeux WebSocket on `--cometd-path`.
    BayeuxWs,
    /// Nchan EventSource subscriber, `GET {nchan-sub}?id={ch}`.
    NchanSse,
    /// Bayeux long-polling on a Faye server (the same client as `bayeux-lp`; set
    /// `--cometd-path` to the Faye mount point).
    Faye,
    /// Centrifuge's uni-directional EventSource, `GET /connection/sse?channel={ch}`: the server
    /// connects the client and subscribes it to the channel (bench/peers/centrifuge).
    CentrifugeSse,
    /// Centrifuge/Centrifugo WebSocket on `/connection/websocket`, JSON protocol: a connect
    /// command, a subscribe command, then publications pushed.
    CentrifugeWs,
    /// Pushpin HTTP streaming as EventSource, `GET /sub?id={ch}` through Pushpin to an origin
    /// that answers `Grip-Hold: stream` (bench/peers/pushpin-origin.js).
    PushpinSse,
    /// socket.io over WebSocket only (`/socket.io/?EIO=4&transport=websocket`, engine.io v4):
    /// connect to the main namespace, emit `subscribe` with the channel and wait for its ack.
    SocketioWs,
}

/// Where and how to reach the server; shared by subscribers and publishers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub addr: SocketAddr,
    /// Channel `i` is `{prefix}/{i}` (Halley, Bayeux) or Nchan id `{prefix minus slashes}-{i}`.
    pub prefix: String,
    pub cometd_path: String,
    pub nchan_sub: String,
    pub nchan_pub: String,
    /// Where publishes go when not to `addr` (Pushpin's publish port).
    #[serde(default)]
    pub publish_addr: Option<SocketAddr>,
    pub connect_timeout_ms: u64,
    /// Extra request header lines (`--header`), e.g. `Authorization: Bearer …`, sent with every
    /// request head.
    #[serde(default)]
    pub headers: Vec<String>,
    /// `--header-file`: one more header line per subscriber, taken in turn (subscriber `i`
    /// sends line `i mod N`), e.g. a different user's token for each. Workers get the path
    /// (a command line could not hold 10,000 tokens) and read it ([`Target::load`]).
    #[serde(default)]
    pub header_file: Option<std::path::PathBuf>,
    #[serde(skip)]
    pub per_subscriber: Vec<String>,
}

impl Target {
    pub fn channel(&self, i: usize) -> String {
        format!("{}/{i}", self.prefix)
    }

    pub fn nchan_id(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix.trim_matches('/').replace('/', "-"))
    }

    /// The `Host` header's value, followed by the extra header lines: every request head is
    /// written as `…Host: {host()}\r\n…`, so this is where `--header` goes in.
    pub fn host(&self) -> String {
        let mut host = self.addr.to_string();
        for line in &self.headers {
            host.push_str("\r\n");
            host.push_str(line);
        }
        host
    }

    /// Reads the `--header-file`, if there is one.
    pub fn load(&mut self) -> io::Result<()> {
        if let Some(path) = &self.header_file {
            self.per_subscriber = std::fs::read_to_string(path)?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned)
                .collect();
        }
        Ok(())
    }

    /// [`Target::host`] for subscriber `index`, with its line of `--header-file`.
    pub fn host_for(&self, index: usize) -> String {
        let mut host = self.host();
        if !self.per_subscriber.is_empty() {
            host.push_str("\r\n");
            host.push_str(&self.per_subscriber[index % self.per_subscriber.len()]);
        }
        host
    }

    pub async fn connect(&self, index: usize) -> io::Result<Conn> {
        Conn::connect(
            self.addr,
            source_addr(index),
            Duration::from_millis(self.connect_timeout_ms),
        )
        .await
    }

    /// A publisher's connection: to `publish_addr` if set, else to `addr`.
    pub async fn connect_publisher(&self, index: usize) -> io::Result<Conn> {
        Conn::connect(
            self.publish_addr.unwrap_or(self.addr),
            source_addr(index),
            Duration::from_millis(self.connect_timeout_ms),
        )
        .await
    }
}

/// What a worker's subscribers add up to. Latencies are in microseconds.
pub struct Stats {
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    pub deliveries: AtomicU64,
    pub last_recv_ns: AtomicU64,
    pub latency: Mutex<Histogram<u64>>,
    pub first_error: Mutex<Option<String>>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            last_recv_ns: AtomicU64::new(0),
            latency: Mutex::new(new_histogram()),
            first_error: Mutex::new(None),
        }
    }

    /// Counts every timestamp found in `bytes` as one delivery received now.
    fn record(&self, scan: &mut Scan, bytes: &[u8]) {
        let now = now_ns();
        let mut n = 0u64;
        let mut lat = Vec::new();
        scan.feed(bytes, &mut |ts| {
            n += 1;
            lat.push(now.saturating_sub(ts) / 1000);
        });
        if n == 0 {
            return;
        }
        self.deliveries.fetch_add(n, Ordering::Relaxed);
        self.last_recv_ns.fetch_max(now, Ordering::Relaxed);
        // A poisoned lock only means another task panicked mid-record; the counts stay usable.
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        for us in lat {
            h.saturating_record(us.max(1));
        }
    }

    pub fn error(&self, e: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(e);
    }
}

/// 1 µs to 10 min at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Cannot fail: the bounds are constants that satisfy the constructor's preconditions.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Marks a subscriber connected, once, and gives back its connect-concurrency permit.
struct Ready<'a> {
    stats: &'a Stats,
    done: bool,
    permit: Option<OwnedSemaphorePermit>,
}

impl Ready<'_> {
    fn mark(&mut self) {
        if !self.done {
            self.done = true;
            self.permit = None;
            self.stats.connected.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs subscriber `index` (global over all workers) on channel `channel` until the
/// connection ends; failures are counted in `stats`, never returned. `permit` is held until
/// the subscriber is ready or failed.
pub async fn run(
    kind: Kind,
    target: &Target,
    index: usize,
    channel: usize,
    stats: &Stats,
    permit: OwnedSemaphorePermit,
) {
    let mut ready = Ready {
        stats,
        done: false,
        permit: Some(permit),
    };
    let result = match kind {
        Kind::Sse
        | Kind::Stream
        | Kind::Gif
        | Kind::NchanSse
        | Kind::CentrifugeSse
        | Kind::PushpinSse => stream(kind, target, index, channel, stats, &mut ready).await,
        Kind::Ws => websocket(target, index, channel, stats, &mut ready).await,
        Kind::Longpoll => longpoll(target, index, channel, stats, &mut ready).await,
        Kind::BayeuxLp | Kind::Faye => bayeux_lp(target, index, channel, stats, &mut ready).await,
        Kind::BayeuxWs => bayeux_ws(target, index, channel, stats, &mut ready).await,
        Kind::CentrifugeWs => centrifuge_ws(target, index, channel, stats, &mut ready).await,
        Kind::SocketioWs => socketio_ws(target, index, channel, stats, &mut ready).await,
    };
    ready.permit = None;
    if let Err(e) = result {
        let counter = if ready.done {
            &stats.dropped
        } else {
            &stats.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        stats.error(format!("subscriber {index}: {e}"));
    }
}

fn status(expected: &[u16], got: u16, what: &str) -> io::Result<()> {
    if expected.contains(&got) {
        Ok(())
    } else {
        Err(io::Error::other(format!("{what}: HTTP status {got}")))
    }
}

async fn stream(
    kind: Kind,
    target: &Target,
    index: usize,
    channel: usize,
    stats: &Stats,
    ready: &mut Ready<'_>,
) -> io::Result<()> {
    let host = target.host_for(index);
    let request = match kind {
        Kind::Sse => format!(
            "GET /sub{} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n",
            target.channel(channel)
        ),
        Kind::Stream => format!(
            "GET /sub{}?transport=stream HTTP/1.1\r\nHost: {host}\r\n\r\n",
            target.channel(channel)
        ),
        Kind::Gif => format!(
            "GET /sub{}?transport=gif HTTP/1.1\r\nHost: {host}\r\n\r\n",
            target.channel(channel)
        ),
        Kind::CentrifugeSse => format!(
            "GET /connection/sse?channel={} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n",
            target.channel(channel)
        ),
        Kind::PushpinSse => format!(
            "GET /sub?id={} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n",
            target.channel(channel)
        ),
        _ => format!(
            "GET {}?id={} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n",
            target.nchan_sub,
            target.nchan_id(channel)
        ),
    };
    let mut conn = target.connect(index).await?;
    conn.send(request.as_bytes()).await?;
    let head = conn.read_head().await?;
    status(&[200], head.status, "subscribe")?;
    ready.mark();
    let mut scan = Scan::default();
    let mut dechunk = head.chunked.then(Dechunk::default);
    loop {
        match dechunk.as_mut() {
            Some(d) => {
                let (_, done) = d.feed(&conn.buf, &mut |data| stats.record(&mut scan, data))?;
                if done {
                    return Err(io::Error::other("stream ended"));
                }
            }
            None => stats.record(&mut scan, &conn.buf),
        }
        conn.buf.clear();
        conn.fill().await?;
    }
}

async fn websocket(
    target: &Target,
    index: usize,
    channel: usize,
    stats: &Stats,
    ready: &mut Ready<'_>,
) -> io::Result<()> {
    let mut conn = target.connect(index).await?;
    let path = format!("/sub{}", target.channel(channel));
    conn.send(ws_upgrade(&path, &target.host_for(index)).as_bytes())
        .await?;
    let head = conn.read_head().await?;
    status(&[101], head.status, "upgrade")?;
    ready.mark();
    let mut scan = Scan::default();
    loop {
        let (opcode, payload) = conn.read_frame().await?;
        ws_control(&mut conn, opcode, &payload).await?;
        stats.record(&mut scan, &payload);
    }
}

/// Answers pings, turns a close into an error; data frames pass.
async fn ws_control(conn: &mut Conn, opcode: u8, payload: &[u8]) -> io::Result<()> {
    match opcode {
        0x9 => conn.send(&ws_frame(0xA, payload)).await,
        0x8 => Err(io::Error::other("WebSocket closed by the server")),
        _ => Ok(()),
    }
}

async fn longpoll(
    target: &Target,
    index: usize,
    channel: usize,
    stats: &Stats,
    ready: &mut Ready<'_>,
) -> io::Result<()> {
    let host = target.host_for(index);
    let path = format!("/sub{}?transport=longpoll", target.channel(channel));
    let mut conn = target.connect(index).await?;
    let mut last_id: Option<String> = None;
    let mut scan = Scan::default();
    loop {
        let resume = last_id
            .as_deref()
            .map(|id| format!("&last_id={id}"))
            .unwrap_or_default();
        conn.send(format!("GET {path}{resume} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        ready.mark();
        let head = conn.read_head().await?;
        status(&[200], head.status, "long-poll")?;
        let body = conn.read_body(&head).await?;
        stats.record(&mut scan, &body);
        if head.last_id.is_some() {
            last_id = head.last_id.clone();
        }
        if head.close {
            conn = target.connect(index).await?;
        }
    }
}

/// A Bayeux client's state: its id, once handshaken.
fn handshake_reply(body: &[u8]) -> io::Result<String> {
    let replies: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| io::Error::other(format!("handshake reply is not a JSON array: {e}")))?;
    replies
        .iter()
        .find(|m| m["channel"] == "/meta/handshake" && m["successful"] == true)
        .and_then(|m| m["clientId"].as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            io::Error::other(format!(
                "handshake failed: {}",
                String::from_utf8_lossy(body)
            ))
        })
}

fn successful(body: &[u8], channel: &str) -> io::Result<()> {
    let replies: Vec<serde_json::Value> = serde_json::from_slice(body).unwrap_or_default();
    if replies
        .iter()
        .any(|m| m["channel"] == channel && m["successful"] == true)
    {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{channel} failed: {}",
            String::from_utf8_lossy(body)
        )))
    }
}

pub fn handshake_message(connection_type: &str) -> String {
    format!(
        r#"[{{"channel":"/meta/handshake","version":"1.0","minimumVersion":"1.0","supportedConnectionTypes":["{connection_type}"]}}]"#
    )
}

fn subscribe_message(client_id: &str, channel: &str) -> String {
    format!(
        r#"[{{"channel":"/meta/subscribe","clientId":"{client_id}","subscription":"{channel}"}}]"#
    )
}

fn connect_message(client_id: &str, connection_type: &str) -> String {
    format!(
        r#"[{{"channel":"/meta/connect","clientId":"{client_id}","connectionType":"{connection_type}"}}]"#
    )
}

/// POSTs a Bayeux batch on a keep-alive connection and returns the reply body.
pub async fn bayeux_post(
    conn: &mut Conn,
    target: &Target,
    host: &str,
    body: &str,
) -> io::Result<Vec<u8>> {
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        target.cometd_path,
        body.len()
    );
    conn.send(request.as_bytes()).await?;
    let head = conn.read_head().await?;
    status(&[200], head.status, "Bayeux POST")?;
    let body = conn.read_body(&head).await?;
    if head.close {
        return Err(io::Error::other("server closed a Bayeux connection"));
    }
    Ok(body)
}

async fn bayeux_lp(
    target: &Target,
    index: usize,
    channel: usize,
    stats: &Stats,
    ready: &mut Ready<'_>,
) -> io::Result<()> {
    let mut conn = target.connect(index).await?;
    let host = target.host_for(index);
    let client_id = handshake_reply(
        &bayeux_post(&mut conn, target, &host, &handshake_message("long-polling")).await?,
    )?;
    let reply = bayeux_post(
        &mut conn,
        target,
        &host,
        &subscribe_message(&client_id, &target.channel(channel)),
    )
    .await?;
    successful(&reply, "/meta/subscribe")?;
    let mut scan = Scan::default();
    stats.record(&mut scan, &reply);
    let connect = connect_message(&client_id, "long-polling");
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{connect}",
        target.cometd_path,
        connect.len()
    );
    loop {
        conn.send(request.as_bytes()).await?;
        ready.mark();
        let head = conn.read_head().await?;
        status(&[200], head.status, "connect")?;
        let body = conn.read_body(&head).await?;
        stats.record(&mut scan, &body);
        if memfind(&body, br#""reconnect":"handshake""#) || head.close {
            return Err(io::Error::other(format!(
                "connect refused: {}",
                String::from_utf8_lossy(&body)
            )));
        }
    }
}

async fn bayeux_ws(
    target: &Target,
    index: usize,
    channel: usize,
    stats: &Stats,
    ready: &mut Ready<'_>,
) -> io::Result<()> {
    let mut conn = target.connect(index).await?;
    conn.send(ws_upgrade(&target.cometd_path, &target.host_for(index)).as_bytes())
        .await?;
    let head = conn.read_head().await?;
    status(&[101], head.status, "upgrade")?;
    let mut scan = Scan::default();
    conn.send(&ws_frame(0x1, handshake_message("websocket").as_bytes()))
        .await?;
    let client_id = loop {
        let (opcode, payload) = conn.read_frame().await?;
        ws_control(&mut conn, opcode, &payload).await?;
        if memfind(&payload, b"/meta/handshake") {
            break handshake_reply(&payload)?;
        }
    };
    conn.send(&ws_frame(
        0x1,
        subscribe_message(&client_id, &target.channel(channel)).as_bytes(),
    ))
    .await?;
    loop {
        let (opcode, payload) = conn.read_frame().await?;
        ws_control(&mut conn, opcode, &payload).await?;
        stats.record(&mut scan, &payload);
        if memfind(&payload, b"/meta/subscribe") {
            successful(&payload, "/meta/subscribe")?;
            break;
        }
    }
    let connect = ws_frame(0x1, connect_message(&client_id, "websocket").as_bytes());
    conn.send(&connect).await?;
    ready.mark();
    loop {
        let (opcode, payload) = conn.read_frame().await?;
        ws_control(&mut conn, opcode, &payload).await?;
        stats.record(&mut scan, &payload);
        if memfind(&payload, b"/meta/connect") {
            if memfind(&payload, br#""reconnect":"handshake""#) {
                return Err(io::Error::other(format!(
                    "connect refused: {}",
                    String::from_utf8_lossy(&payload)
                )));
            }
            conn.send(&connect).await?;
        }
    }
}

/// Reads text frames until one contains `needle`, answering control frames and counting any
/// delivery that arrives in the meantime; returns that frame.
async fn ws_until(
    conn: &mut Conn,
    stats: &Stats,
    scan: &mut Scan,
    needle: &[u8],
) -> io::Result<Vec<u8>> {
    loop {
        let (opcode, payload) = conn.read_frame().await?;
        ws_control(conn, opcode, &payload).await?;
        stats.record(scan, &payload);
        if memfind(&payload, needle) {
            return Ok(payload);
        }
    }
}

async fn centrifuge_ws(
    target: &Target,
    index: usize,
    channel: usize,
    stats: &Stats,
    ready: &mut Ready<'_>,
) -> io::Result<()> {
    let mut conn = target.connect(index).await?;
    conn.send(ws_upgrade("/connection/websocket", &target.host_for(index)).as_bytes())
        .await?;
    let head = conn.read_head().await?;
    status(&[101], head.status, "upgrade")?;
    let mut scan = Scan::default();
    // Connect is method 0, which the JSON protocol leaves out; without a token the server
    // decides who the client is (bench/peers/centrifuge: anonymous).
    conn.send(&ws_frame(0x1, br#"{"id":1}"#)).await?;
    let reply = ws_until(&mut conn, stats, &mut scan, br#""id":1,"#).await?;
    if memfind(&reply, br#""error""#) {
        return Err(io::Error::other(format!(
            "connect refused: {}",
            String::from_utf8_lossy(&reply)
        )));
    }
    // Subscribe is method 1.
    let subscribe = format!(
        r#"{{"id":2,"method":1,"params":{{"channel":"{}"}}}}"#,
        target.channel(channel)
    );
    conn.send(&ws_frame(0x1, subscribe.as_bytes())).await?;
    let reply = ws_until(&mut conn, stats, &mut scan, br#""id":2,"#).await?;
    if memfind(&reply, br#""error""#) {
        return Err(io::Error::other(format!(
            "subscribe refused: {}",
            String::from_utf8_lossy(&reply)
        )));
    }
    ready.mark();
    loop {
        let (opcode, payload) = conn.read_frame().await?;
        ws_control(&mut conn, opcode, &payload).await?;
        stats.record(&mut scan, &payload);
    }
}

async fn socketio_ws(
    target: &Target,
    index: usize,
    channel: usize,
    stats: &Stats,
    ready: &mut Ready<'_>,
) -> io::Result<()> {
    let mut conn = target.connect(index).await?;
    conn.send(
        ws_upgrade(
            "/socket.io/?EIO=4&transport=websocket",
            &target.host_for(index),
        )
        .as_bytes(),
    )
    .await?;
    let head = conn.read_head().await?;
    status(&[101], head.status, "upgrade")?;
    let mut scan = Scan::default();
    // engine.io packet types lead each text frame: 0 open, 2 ping, 3 pong, 4 message; a
    // socket.io packet inside a message leads with its own type: 0 connect, 2 event, 3 ack.
    let (opcode, open) = conn.read_frame().await?;
    if opcode != 0x1 || !open.starts_with(b"0{") {
        return Err(io::Error::other(format!(
            "no engine.io open packet: {}",
            String::from_utf8_lossy(&open)
        )));
    }
    conn.send(&ws_frame(0x1, b"40")).await?;
    loop {
        let (opcode, payload) = conn.read_frame().await?;
        ws_control(&mut conn, opcode, &payload).await?;
        if payload.starts_with(b"40") {
            break;
        }
        if payload.starts_with(b"44") {
            return Err(io::Error::other(format!(
                "namespace connect refused: {}",
                String::from_utf8_lossy(&payload)
            )));
        }
    }
    // An event with ack id 0: the server's ack comes back as `430[…]`.
    let subscribe = format!(r#"420["subscribe","{}"]"#, target.channel(channel));
    conn.send(&ws_frame(0x1, subscribe.as_bytes())).await?;
    loop {
        let (opcode, payload) = conn.read_frame().await?;
        ws_control(&mut conn, opcode, &payload).await?;
        stats.record(&mut scan, &payload);
        if payload == b"2" {
            conn.send(&ws_frame(0x1, b"3")).await?;
        } else if payload.starts_with(b"430") {
            break;
        }
    }
    ready.mark();
    loop {
        let (opcode, payload) = conn.read_frame().await?;
        ws_control(&mut conn, opcode, &payload).await?;
        // The server pings every pingInterval (25 s by default) and drops a client that does
        // not answer within pingTimeout.
        if payload == b"2" {
            conn.send(&ws_frame(0x1, b"3")).await?;
            continue;
        }
        stats.record(&mut scan, &payload);
    }
}

pub fn memfind(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
