//! One resuming subscriber for every transport: the eight of `GET /sub` and rupy's pull, and
//! Bayeux over its three. A [`Subscriber`] keeps what it needs to come back after its
//! connection is cut (its last id; for Bayeux its session and acknowledged batch), so a test
//! can drop the connection at any moment and [`Subscriber::next`] carries on from where it was.
//!
//! Every read is bounded by the [`Client`]'s wait; a connection the server ends (a farewell,
//! a lagged cut-off, a node going away) comes back as [`Item::End`], after which `next`
//! reconnects by itself.

use std::collections::VecDeque;

use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::{Client, Event, Open, Ws, parse_id};

/// Every way to subscribe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `?transport=sse` (resume: `Last-Event-ID`).
    Sse,
    /// `?transport=stream&format=json` (chunked NDJSON).
    Stream,
    /// `?transport=iframe&callback=f`.
    Iframe,
    /// `?transport=multipart`.
    Multipart,
    /// `?transport=longpoll`: one held request per batch, position in `X-Halley-Last-Id`.
    LongPoll,
    /// `?transport=jsonp&callback=f`: position and gap in the callback's second argument.
    Jsonp,
    /// `Upgrade: websocket` on `/sub`.
    WebSocket,
    /// rupy's `/pull?name=…&channel=…`: data lines only (the test maps them to ids).
    Pull,
    /// Bayeux `long-polling` (POST `/cometd`), with the ack extension.
    BayeuxLongPolling,
    /// Bayeux `callback-polling` (GET `/cometd?message=…&jsonp=…`), with the ack extension.
    BayeuxCallbackPolling,
    /// Bayeux `websocket` on `/cometd`, with the ack extension.
    BayeuxWebSocket,
}

/// The eight transports of the native API (DESIGN.md §3 and rupy's pull).
pub const NATIVE: [Kind; 8] = [
    Kind::Sse,
    Kind::Stream,
    Kind::Iframe,
    Kind::Multipart,
    Kind::LongPoll,
    Kind::Jsonp,
    Kind::WebSocket,
    Kind::Pull,
];

/// Bayeux's three.
pub const BAYEUX: [Kind; 3] = [
    Kind::BayeuxLongPolling,
    Kind::BayeuxCallbackPolling,
    Kind::BayeuxWebSocket,
];

impl Kind {
    pub fn is_bayeux(self) -> bool {
        BAYEUX.contains(&self)
    }

    /// Whether the wire carries ids (rupy's pull carries data only).
    pub fn has_ids(self) -> bool {
        self != Kind::Pull
    }

    fn bayeux_type(self) -> &'static str {
        match self {
            Kind::BayeuxLongPolling => "long-polling",
            Kind::BayeuxCallbackPolling => "callback-polling",
            _ => "websocket",
        }
    }
}

/// What a subscriber reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A message; `id` is `None` where the wire carries data only (rupy pull).
    Message { id: Option<String>, data: String },
    /// The server said that messages were lost before what follows: a `gap` (event, header,
    /// JSONP meta) — or, over Bayeux, which has no gap, that the session is gone and the
    /// client had to handshake again.
    Gap,
    /// The connection ended (the server's farewell, `lagged`, a cut, a node gone); the next
    /// [`Subscriber::next`] reconnects.
    End(String),
}

enum Conn {
    Open(Open),
    Ws(Box<Ws>),
    /// A polling transport between (or in) its requests.
    Polling,
}

/// Bayeux session state that survives a cut connection.
struct Session {
    client_id: String,
    /// The last batch whose connect reply arrived (sent back as `ext.ack`).
    ack: Option<u64>,
}

/// A subscriber of one pattern over one transport that resumes by itself.
pub struct Subscriber {
    pub kind: Kind,
    pattern: String,
    /// rupy pull's name (never receives its own pushes).
    name: String,
    /// The id to resume from.
    pub last_id: Option<String>,
    /// More query parameters for every request of a `/sub` transport (`recent=5`).
    pub params: Vec<String>,
    /// Bayeux: the `ext` of its `/meta/subscribe` (`{"recent": 5}`).
    pub subscribe_ext: Option<Value>,
    conn: Option<Conn>,
    pending: VecDeque<Item>,
    session: Option<Session>,
    /// Bayeux: messages up to this id were acknowledged (their batch's reply arrived), so
    /// the server must never send them again; later ones it may (the ack extension resends
    /// what it does not know arrived).
    pub confirmed: Option<(u64, u64)>,
    /// The id of the newest message read (Bayeux: for `confirmed`).
    newest: Option<(u64, u64)>,
    /// Connections opened (the first included).
    pub connects: u64,
    /// What it did last (connects, polls and what they answered), newest last: for a failing
    /// test to show.
    pub trace: VecDeque<String>,
}

/// Entries kept in [`Subscriber::trace`].
const TRACE: usize = 16;

impl Subscriber {
    pub fn new(kind: Kind, pattern: &str, last_id: Option<String>) -> Subscriber {
        Subscriber {
            kind,
            pattern: pattern.to_owned(),
            name: format!("chaos-{:x}", rand::random::<u32>()),
            last_id,
            params: Vec::new(),
            subscribe_ext: None,
            conn: None,
            pending: VecDeque::new(),
            session: None,
            confirmed: None,
            newest: None,
            connects: 0,
            trace: VecDeque::new(),
        }
    }

    /// Drops the connection (a cut: nothing is said to the server).
    pub fn cut(&mut self) {
        if self.conn.is_some() {
            self.log("cut".into());
        }
        self.conn = None;
        if self.kind.is_bayeux() {
            // A Bayeux batch that arrived whole is the client's (its connect reply is
            // acknowledged with the next connect): cutting the connection does not unsee it.
            self.pending
                .retain(|item| matches!(item, Item::Message { .. }));
        } else {
            // Resumed from the last id handed out: what was read beyond it comes again.
            self.pending.clear();
        }
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Opens the connection on `client` (resuming from [`Subscriber::last_id`]; Bayeux: with
    /// its session, or a new one subscribed to the pattern). Returns once subscribed where
    /// the transport shows it (headers, upgrade, subscribe reply); a polling transport
    /// subscribes with each poll.
    pub async fn connect(&mut self, client: &Client) {
        self.cut();
        self.connects += 1;
        self.log(format!(
            "connect to {} after {:?}",
            client.addr, self.last_id
        ));
        let resume = self
            .last_id
            .as_ref()
            .map(|id| format!("last_id={}", encode(id)));
        let query = |own: &[&str]| {
            let params: Vec<String> = own
                .iter()
                .map(|s| s.to_string())
                .chain(self.params.iter().cloned())
                .chain(resume.clone())
                .collect();
            format!("/sub{}?{}", self.pattern, params.join("&"))
        };
        let conn = match self.kind {
            Kind::Sse => {
                let last = self.last_id.clone();
                let mut headers = vec![("accept", "text/event-stream")];
                if let Some(id) = &last {
                    headers.push(("last-event-id", id));
                }
                let mut path = format!("/sub{}?transport=sse", self.pattern);
                for param in &self.params {
                    path.push('&');
                    path.push_str(param);
                }
                self.open(client, &path, &headers).await
            }
            Kind::Stream => {
                self.open(client, &query(&["transport=stream", "format=json"]), &[])
                    .await
            }
            Kind::Iframe => {
                self.open(client, &query(&["transport=iframe", "callback=f"]), &[])
                    .await
            }
            Kind::Multipart => {
                self.open(client, &query(&["transport=multipart"]), &[])
                    .await
            }
            Kind::Pull => {
                let mut path =
                    format!("/pull?name={}&channel={}", self.name, encode(&self.pattern));
                for param in &self.params {
                    path.push('&');
                    path.push_str(param);
                }
                if let Some(r) = &resume {
                    path.push('&');
                    path.push_str(r);
                }
                self.open(client, &path, &[]).await
            }
            Kind::WebSocket => Some(Conn::Ws(Box::new(
                client.ws(&query(&["transport=websocket"])).await,
            ))),
            Kind::LongPoll | Kind::Jsonp => None,
            Kind::BayeuxLongPolling | Kind::BayeuxCallbackPolling => {
                if self.session.is_none() {
                    self.handshake(client, None).await;
                }
                None
            }
            Kind::BayeuxWebSocket => {
                let mut ws = client.ws("/cometd").await;
                if self.session.is_none() {
                    self.handshake(client, Some(&mut ws)).await;
                }
                let connect = self.bayeux_connect();
                ws_send(&mut ws, &json!([connect])).await;
                Some(Conn::Ws(Box::new(ws)))
            }
        };
        // Polling transports have no connection between polls.
        self.conn = Some(conn.unwrap_or(Conn::Polling));
    }

    async fn open(
        &mut self,
        client: &Client,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<Conn> {
        let open = client.stream_with(path, headers).await;
        assert_eq!(open.status, 200, "GET {path}");
        if open.header("x-halley-gap") == Some("true") {
            self.pending.push_back(Item::Gap);
        }
        Some(Conn::Open(open))
    }

    /// The next item, reconnecting first if the connection was cut or ended.
    pub async fn next(&mut self, client: &Client) -> Item {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return self.note(item);
            }
            if self.conn.is_none() {
                self.connect(client).await;
                continue;
            }
            match self.read(client).await {
                Ok(()) => {}
                Err(why) => {
                    self.conn = None;
                    return Item::End(why);
                }
            }
        }
    }

    fn log(&mut self, entry: String) {
        if self.trace.len() == TRACE {
            self.trace.pop_front();
        }
        self.trace.push_back(entry);
    }

    /// Remembers the position of a message handed out.
    fn note(&mut self, item: Item) -> Item {
        if let Item::Message { id: Some(id), .. } = &item {
            self.last_id = Some(id.clone());
            self.newest = Some(parse_id(id));
        }
        if let Item::End(_) = &item {
            self.conn = None;
        }
        item
    }

    /// Reads from the connection (or polls once) into `pending`; `Err` when it ended.
    async fn read(&mut self, client: &Client) -> Result<(), String> {
        match self.kind {
            Kind::LongPoll | Kind::Jsonp => return self.poll(client).await,
            Kind::BayeuxLongPolling | Kind::BayeuxCallbackPolling => {
                let connect = self.bayeux_connect();
                let replies = self.bayeux_http(client, &json!([connect])).await?;
                let ids: Vec<&Value> = replies
                    .iter()
                    .filter(|r| {
                        !r["channel"]
                            .as_str()
                            .unwrap_or("/meta/")
                            .starts_with("/meta/")
                    })
                    .map(|r| &r["id"])
                    .collect();
                let reply = replies.iter().find(|r| r["channel"] == "/meta/connect");
                self.log(format!(
                    "connect (ack {}) on {} → {} messages {:?}..{:?}, reply {}",
                    connect["ext"]["ack"],
                    client.addr,
                    ids.len(),
                    ids.first(),
                    ids.last(),
                    reply.map_or("none".into(), |r| format!(
                        "successful {} ack {}",
                        r["successful"], r["ext"]["ack"]
                    )),
                ));
                return self.bayeux_replies(client, None, replies).await;
            }
            _ => {}
        }
        let kind = self.kind;
        match self.conn.as_mut().unwrap() {
            Conn::Polling => unreachable!("streams have a connection"),
            Conn::Ws(_) if kind == Kind::BayeuxWebSocket => {
                let Some(Conn::Ws(mut ws)) = self.conn.take() else {
                    unreachable!()
                };
                let frame = next_text(&mut ws, client).await?;
                let replies: Vec<Value> = serde_json::from_str(&frame)
                    .map_err(|e| format!("Bayeux frame is not a batch ({e}): {frame}"))?;
                self.bayeux_replies(client, Some(&mut ws), replies).await?;
                self.conn = Some(Conn::Ws(ws));
                Ok(())
            }
            Conn::Ws(ws) => {
                let text = next_text(ws, client).await?;
                let value: Value = serde_json::from_str(&text)
                    .map_err(|e| format!("frame is not JSON ({e}): {text}"))?;
                let item = object_item(&value);
                self.pending.push_back(item);
                Ok(())
            }
            Conn::Open(open) => {
                let item = match kind {
                    Kind::Sse => loop {
                        let block = until(open, "\n\n").await?;
                        if let Some(event) = Event::parse(&block) {
                            break match event.event.as_deref() {
                                None => Item::Message {
                                    id: event.id,
                                    data: event.data,
                                },
                                Some("gap") => Item::Gap,
                                Some(other) => Item::End(other.to_owned()),
                            };
                        }
                    },
                    Kind::Stream => loop {
                        let line = until(open, "\n").await?;
                        if line.trim().is_empty() {
                            continue;
                        }
                        break object_item(&parse(line.trim_end())?);
                    },
                    Kind::Iframe => loop {
                        // The padding comment and heartbeats are not scripts.
                        let chunk = until(open, "\n").await?;
                        let Some(script) = chunk.strip_prefix("<script>parent.f(") else {
                            continue;
                        };
                        let inner = script
                            .strip_suffix(")</script>\n")
                            .ok_or_else(|| format!("not a callback script: {chunk:?}"))?;
                        break object_item(&parse(inner)?);
                    },
                    Kind::Multipart => loop {
                        until(open, "\r\n\r\n").await?;
                        let body = until(open, "\r\n").await?;
                        let value = parse(body.trim_end())?;
                        if value["event"] == "heartbeat" {
                            continue;
                        }
                        break object_item(&value);
                    },
                    Kind::Pull => loop {
                        let line = until(open, "\n").await?;
                        let line = line.trim_end_matches('\n');
                        if line.is_empty() {
                            continue;
                        }
                        break Item::Message {
                            id: None,
                            data: line.to_owned(),
                        };
                    },
                    _ => unreachable!(),
                };
                self.pending.push_back(item);
                Ok(())
            }
        }
    }

    /// One long-poll or JSONP request.
    async fn poll(&mut self, client: &Client) -> Result<(), String> {
        let mut path = match self.kind {
            Kind::Jsonp => format!("/sub{}?transport=jsonp&callback=f", self.pattern),
            _ => format!("/sub{}?transport=longpoll", self.pattern),
        };
        for param in &self.params {
            path.push('&');
            path.push_str(param);
        }
        if let Some(id) = &self.last_id {
            path.push_str(&format!("&last_id={}", encode(id)));
        }
        let reply = client.get(&path).await;
        if reply.status != 200 {
            return Err(format!("GET {path}: {} {}", reply.status, reply.body));
        }
        let (messages, gap, position) = match self.kind {
            Kind::Jsonp => {
                let inner = reply
                    .body
                    .strip_prefix("/**/f(")
                    .and_then(|b| b.strip_suffix(");"))
                    .ok_or_else(|| format!("not a JSONP answer: {}", reply.body))?;
                let both: Value = parse(&format!("[{inner}]"))?;
                let meta = &both[1];
                (
                    both[0].clone(),
                    meta["gap"] == true,
                    meta["last_id"].as_str().map(str::to_owned),
                )
            }
            _ => (
                parse(&reply.body)?,
                reply.header("x-halley-gap") == Some("true"),
                reply.header("x-halley-last-id").map(str::to_owned),
            ),
        };
        let list = messages.as_array().ok_or("the answer is not an array")?;
        self.log(format!(
            "GET {path} on {} → {} messages {:?}..{:?}, gap {gap}, position {position:?}",
            client.addr,
            list.len(),
            list.first().map(|m| m["id"].clone()),
            list.last().map(|m| m["id"].clone()),
        ));
        if gap {
            self.pending.push_back(Item::Gap);
        }
        for m in list {
            self.pending.push_back(object_item(m));
        }
        // An empty answer still moves the position (it says where to resume).
        if self.pending.is_empty()
            && let Some(position) = position
        {
            self.last_id = Some(position);
        }
        Ok(())
    }

    fn bayeux_connect(&self) -> Value {
        let session = self.session.as_ref().expect("a Bayeux session");
        let mut connect = json!({
            "channel": "/meta/connect",
            "clientId": session.client_id,
            "connectionType": self.kind.bayeux_type(),
        });
        if let Some(ack) = session.ack {
            connect["ext"] = json!({ "ack": ack });
        }
        connect
    }

    /// One Bayeux batch over HTTP (long-polling or callback-polling).
    async fn bayeux_http(&self, client: &Client, batch: &Value) -> Result<Vec<Value>, String> {
        let reply = match self.kind {
            Kind::BayeuxCallbackPolling => {
                let path = format!("/cometd?jsonp=cb&message={}", encode(&batch.to_string()));
                client.get(&path).await
            }
            _ => {
                client
                    .post("/cometd", "application/json", batch.to_string())
                    .await
            }
        };
        if reply.status != 200 {
            return Err(format!("/cometd: {} {}", reply.status, reply.body));
        }
        let body = match self.kind {
            Kind::BayeuxCallbackPolling => reply
                .body
                .strip_prefix("/**/cb(")
                .and_then(|b| b.strip_suffix(");"))
                .ok_or_else(|| format!("not a callback answer: {}", reply.body))?
                .to_owned(),
            _ => reply.body,
        };
        match parse(&body)? {
            Value::Array(replies) => Ok(replies),
            other => Err(format!("not a Bayeux batch: {other}")),
        }
    }

    /// Handshakes (ack extension on) and subscribes to the pattern: over HTTP, or over `ws`.
    async fn handshake(&mut self, client: &Client, mut ws: Option<&mut Ws>) {
        let handshake = json!([{
            "channel": "/meta/handshake", "version": "1.0",
            "supportedConnectionTypes": [self.kind.bayeux_type()],
            "ext": {"ack": true},
        }]);
        let replies = self
            .bayeux_exchange(client, ws.as_deref_mut(), &handshake)
            .await;
        let reply = replies
            .iter()
            .find(|r| r["channel"] == "/meta/handshake")
            .unwrap_or_else(|| panic!("no handshake reply in {replies:?}"));
        assert_eq!(reply["successful"], true, "{reply}");
        assert_eq!(
            reply["ext"]["ack"], true,
            "the ack extension is on: {reply}"
        );
        let client_id = reply["clientId"].as_str().unwrap().to_owned();
        let mut subscribe = json!([{
            "channel": "/meta/subscribe", "clientId": client_id, "subscription": self.pattern,
        }]);
        if let Some(ext) = &self.subscribe_ext {
            subscribe[0]["ext"] = ext.clone();
        }
        let replies = self.bayeux_exchange(client, ws, &subscribe).await;
        let reply = replies
            .iter()
            .find(|r| r["channel"] == "/meta/subscribe")
            .unwrap_or_else(|| panic!("no subscribe reply in {replies:?}"));
        assert_eq!(reply["successful"], true, "{reply}");
        self.session = Some(Session {
            client_id,
            ack: None,
        });
        // A new session starts with nothing to send again.
        self.confirmed = self.newest;
    }

    async fn bayeux_exchange(
        &self,
        client: &Client,
        ws: Option<&mut Ws>,
        batch: &Value,
    ) -> Vec<Value> {
        match ws {
            None => self
                .bayeux_http(client, batch)
                .await
                .unwrap_or_else(|e| panic!("{batch}: {e}")),
            Some(ws) => {
                ws_send(ws, batch).await;
                loop {
                    let text = next_text(ws, client)
                        .await
                        .unwrap_or_else(|e| panic!("{batch}: {e}"));
                    let replies: Vec<Value> = serde_json::from_str(&text).unwrap();
                    // Messages of an earlier session may still arrive; only replies count.
                    if replies.iter().any(|r| {
                        r["channel"]
                            .as_str()
                            .is_some_and(|c| c.starts_with("/meta/"))
                    }) {
                        return replies;
                    }
                }
            }
        }
    }

    /// Turns a batch of Bayeux replies and messages into items; a connect reply closes a
    /// batch (ack) and, over WebSocket, sends the next connect.
    async fn bayeux_replies(
        &mut self,
        client: &Client,
        mut ws: Option<&mut Box<Ws>>,
        replies: Vec<Value>,
    ) -> Result<(), String> {
        for reply in replies {
            let channel = reply["channel"].as_str().unwrap_or_default();
            if channel != "/meta/connect" {
                if !channel.starts_with("/meta/") {
                    self.pending.push_back(Item::Message {
                        id: reply["id"].as_str().map(str::to_owned),
                        data: text_of(&reply["data"]),
                    });
                }
                continue;
            }
            if reply["successful"] == true {
                if let (Some(session), Some(ack)) =
                    (self.session.as_mut(), reply["ext"]["ack"].as_u64())
                {
                    session.ack = Some(ack);
                }
                // Everything read before this reply belongs to batches now acknowledged.
                let newest = self.pending.iter().rev().find_map(|item| match item {
                    Item::Message { id: Some(id), .. } => Some(parse_id(id)),
                    _ => None,
                });
                self.confirmed = newest.or(self.newest).max(self.confirmed);
                if let Some(ws) = ws.as_deref_mut() {
                    let connect = self.bayeux_connect();
                    ws_send(ws, &json!([connect])).await;
                }
                continue;
            }
            // The session is gone (cut off as lagged, or unknown on this node): handshake
            // again; what was published meanwhile is lost, and the client knows it.
            if reply["advice"]["reconnect"] == "handshake"
                || reply["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("402"))
            {
                self.session = None;
                self.pending.push_back(Item::Gap);
                match ws.as_deref_mut() {
                    Some(ws) => {
                        self.handshake(client, Some(ws)).await;
                        let connect = self.bayeux_connect();
                        ws_send(ws, &json!([connect])).await;
                    }
                    None => self.handshake(client, None).await,
                }
                continue;
            }
            return Err(format!("connect refused: {reply}"));
        }
        Ok(())
    }
}

/// Reads up to and including `needle`; `Err` when the body ended, failed or stayed quiet
/// for the client's wait.
async fn until(open: &mut Open, needle: &str) -> Result<String, String> {
    loop {
        if let Some(text) = open.take_until(needle) {
            return Ok(text);
        }
        match tokio::time::timeout(open.wait, open.body.frame()).await {
            Err(_) => return Err("no data for the client's wait".into()),
            Ok(None) => return Err("the server ended the response".into()),
            Ok(Some(Err(e))) => return Err(format!("the response failed: {e}")),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    open.buf.extend_from_slice(&data);
                }
            }
        }
    }
}

/// The next text frame; `Err` when the WebSocket closed, failed or stayed quiet.
async fn next_text(ws: &mut Ws, client: &Client) -> Result<String, String> {
    loop {
        match tokio::time::timeout(client.wait, ws.next()).await {
            Err(_) => return Err("no frame for the client's wait".into()),
            Ok(None) => return Err("the WebSocket ended".into()),
            Ok(Some(Err(e))) => return Err(format!("the WebSocket failed: {e}")),
            Ok(Some(Ok(Frame::Text(text)))) => return Ok(text.as_str().to_owned()),
            Ok(Some(Ok(Frame::Close(close)))) => return Err(format!("closed: {close:?}")),
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn ws_send(ws: &mut Ws, batch: &Value) {
    // A send to a node that went away fails; the next read says so.
    let _ = ws.send(Frame::text(batch.to_string())).await;
}

fn parse(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text:?}"))
}

/// A message object or a control object (`{"event": …}`) as an item.
fn object_item(value: &Value) -> Item {
    match value["event"].as_str() {
        Some("gap") => Item::Gap,
        Some(other) => Item::End(other.to_owned()),
        None => Item::Message {
            id: value["id"].as_str().map(str::to_owned),
            data: text_of(&value["data"]),
        },
    }
}

/// The text form of data: a string as-is, anything else as its compact JSON.
fn text_of(data: &Value) -> String {
    match data {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
