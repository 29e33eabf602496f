//! The streaming transports: SSE, chunked lines, forever-iframe, multipart, the forever GIF,
//! and rupy's pull.
//! One loop serves them all; [`Wire`] is the only thing that differs.

use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use halley_engine::control::Closing;
use halley_engine::{Event, Subscription};
use halley_proto::{Message, Pattern};
use hyper::Response;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::body::{Body, streaming};
use crate::config::IFRAME_PADDING;
use crate::metrics::{Kind, LATENCY, Open, now_us};
use crate::state::App;

/// Most queued messages coalesced into one write. Batching what is already queued saves a
/// syscall per message under load; the cap keeps one chunk from growing large.
const COALESCE: usize = 64;

const BOUNDARY: &str = "halley";

/// A transport's wire format.
#[derive(Debug, Clone)]
pub enum Wire {
    Sse {
        json: bool,
    },
    /// One message per `\n`-terminated line.
    Lines {
        json: bool,
    },
    /// The bytes of binary bodies one after another, and nothing else: no line ends, no
    /// heartbeats, no notices, other messages left out (`transport=stream&binary=raw`: a sound
    /// stream to a player, frames to a file).
    Raw,
    /// rupy's pull: one message per `\n`-terminated line, never the puller's own (`skip`: the
    /// prefix of its own pushes' JSON, see `rupy::own_prefix`), in one of its [`PullForm`]s.
    Pull {
        form: PullForm,
        skip: Box<str>,
    },
    Iframe {
        callback: String,
    },
    /// One part per message: its object as `application/json`, or — a binary body
    /// ([`halley_proto::Payload::binary`]) — its bytes with their own content type, so that a
    /// live image plays in an `<img>`. A browser shows a part only once the next part's headers
    /// have come, so after a binary part the next one is opened at once with the same type
    /// (`open`, with the bytes that close it if something else comes first: the same image
    /// again). A heartbeat repeats the image (an `<img>` breaks on a JSON part).
    Multipart {
        open: Option<Box<halley_proto::Binary>>,
    },
    /// Opera 9's event-source, SSE's forerunner (`application/x-dom-event-stream`): blocks of
    /// `Event:` (the DOM event to fire, `message` for messages) and `data:` lines.
    DomEvents,
    /// The forever GIF (`gif.rs`): a frame of the last lines per batch of messages.
    Gif(Box<super::gif::Screen>),
}

/// What a rupy pull's lines carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullForm {
    /// The pushed message text itself (what rupy's clients read), as plain text.
    Text,
    /// The same text as HTML, for a browser: a page whose messages format (`hello<br>`)
    /// but, sandboxed, never run script (`rupy::pull` sets the headers).
    Html,
    /// The data as one line of JSON (`{"name":…,"message":…}` for a push): `format=json`.
    Json,
    /// The text as Server-Sent Events (`data:` lines), for an EventSource: rupy's event-stream
    /// demo (`Accept: text/event-stream`, or `format=sse`).
    Sse,
}

impl Wire {
    pub fn content_type(&self) -> &'static str {
        match self {
            Wire::Sse { .. } => "text/event-stream",
            Wire::Lines { json: true, .. } => "application/x-ndjson",
            Wire::Lines { json: false, .. } => "text/plain; charset=utf-8",
            Wire::Raw => "application/octet-stream",
            Wire::Pull {
                form: PullForm::Html,
                ..
            } => "text/html; charset=utf-8",
            Wire::Pull {
                form: PullForm::Sse,
                ..
            } => "text/event-stream",
            Wire::Pull { .. } => "text/plain; charset=utf-8",
            Wire::Iframe { .. } => "text/html; charset=utf-8",
            Wire::Multipart { .. } => "multipart/x-mixed-replace; boundary=halley",
            Wire::DomEvents => "application/x-dom-event-stream",
            Wire::Gif(_) => "image/gif",
        }
    }

    /// What opens the stream: SSE's `retry:`, the iframe's page and padding, and the gap
    /// signal when the resume has one.
    pub fn preamble(&self, sub: &Subscription, retry_ms: u32) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Wire::Sse { .. } => out.put_slice(format!("retry: {retry_ms}\n\n").as_bytes()),
            Wire::Iframe { .. } => {
                out.put_slice(b"<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body>");
                out.put_slice(b"<!--");
                out.put_bytes(b' ', IFRAME_PADDING);
                out.put_slice(b"-->\n");
            }
            // The same padding as the forever-iframe's, for the same browsers; no script at
            // all (the page is sandboxed without it).
            Wire::Pull {
                form: PullForm::Html,
                ..
            } => {
                out.put_slice(b"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>pull</title></head><body>");
                out.put_slice(b"<!--");
                out.put_bytes(b' ', IFRAME_PADDING);
                out.put_slice(b"-->\n");
            }
            Wire::Gif(screen) => screen.preamble(&mut out),
            // A first byte at once, so a client can tell a live stream from one a proxy holds
            // back (clients/js/PROTOCOL.md); a blank line is a heartbeat to NDJSON readers.
            Wire::Lines { json: true, .. } => out.put_u8(b'\n'),
            _ => {}
        }
        if sub.gap() {
            match (self, sub.position()) {
                // With an `id:` (the position after the gap), so that an EventSource that
                // reconnects before the next message resumes from there: without it, it sent
                // the id that had the gap again and was told of the same gap every time.
                (Wire::Sse { .. }, Some(id)) => {
                    let object = super::gap_object(sub);
                    out.put_slice(format!("event: gap\nid: {id}\ndata: {object}\n\n").as_bytes());
                }
                _ => self.control("gap", &super::gap_object(sub), &mut out),
            }
        }
        out.freeze()
    }

    /// Where the stream starts, `{"event":"position","last_id":…}`, for a client that must be
    /// able to resume even if the connection breaks before the first message (asked for with
    /// `?position=1`). SSE also carries it as the event's `id:`, so EventSource resends it.
    pub fn position(&self, sub: &Subscription, out: &mut BytesMut) {
        let Some(id) = sub.position() else {
            return;
        };
        let object = serde_json::json!({ "event": "position", "last_id": id.to_string() });
        match self {
            Wire::Sse { .. } => {
                out.put_slice(format!("event: position\nid: {id}\ndata: {object}\n\n").as_bytes());
            }
            _ => self.control("position", &object.to_string(), out),
        }
    }

    /// A control object (`{"event":…}`) in this wire's framing; raw lines have none.
    fn control(&self, event: &str, object: &str, out: &mut BytesMut) {
        match self {
            Wire::Sse { .. } => {
                out.put_slice(format!("event: {event}\ndata: {object}\n\n").as_bytes());
            }
            Wire::Lines { json: true, .. } => {
                out.put_slice(object.as_bytes());
                out.put_u8(b'\n');
            }
            // A GIF has nowhere to say them but its picture; its end says why it ended.
            Wire::Lines { json: false, .. } | Wire::Raw | Wire::Pull { .. } | Wire::Gif(_) => {}
            Wire::Iframe { callback } => script(callback, object.as_bytes(), out),
            Wire::Multipart { .. } => part(object.as_bytes(), out),
            Wire::DomEvents => {
                out.put_slice(format!("Event: {event}\ndata: {object}\n\n").as_bytes());
            }
        }
    }

    pub fn message(&mut self, m: &Message, out: &mut BytesMut) {
        match self {
            Wire::Sse { json: false } => out.put_slice(m.sse_frame()),
            Wire::Sse { json: true } => {
                out.put_slice(format!("id: {}\ndata: ", m.id).as_bytes());
                out.put_slice(m.json_object());
                out.put_slice(b"\n\n");
            }
            Wire::Raw => {
                if let Some(binary) = m.binary() {
                    out.put_slice(&binary.bytes);
                }
            }
            Wire::Lines { json } => {
                match json {
                    true => out.put_slice(m.json_object()),
                    false => out.put_slice(m.line().as_bytes()),
                }
                out.put_u8(b'\n');
            }
            Wire::Pull { .. } if self.skips(m) => {}
            Wire::Pull { form, .. } => {
                match form {
                    PullForm::Json => out.put_slice(m.line().as_bytes()),
                    PullForm::Text | PullForm::Html => put_pushed_text(m, out),
                    PullForm::Sse => {
                        // One line of text (see `put_pushed_text`), so one `data:` line.
                        out.put_slice(b"data: ");
                        put_pushed_text(m, out);
                        out.put_u8(b'\n');
                    }
                }
                out.put_u8(b'\n');
            }
            Wire::Iframe { callback } => script(callback, m.json_object(), out),
            Wire::Multipart { .. } => part(m.json_object(), out),
            // SSE's frame (`id:` and one `data:` line per line) after the event's name; a
            // reader of the old format ignores the field it does not know.
            Wire::DomEvents => {
                out.put_slice(b"Event: message\n");
                out.put_slice(m.sse_frame());
            }
            // Drawn by [`Wire::flush`], once for all the messages taken together.
            Wire::Gif(screen) => screen.push(m),
        }
    }

    /// What the messages just written leave to say: the GIF's frame of its new lines.
    fn flush(&mut self, out: &mut BytesMut) {
        if let Wire::Gif(screen) = self {
            screen.flush(out);
        }
    }

    /// The frames a delivery may write for this wire itself (`crate::direct`): only those
    /// that are the same for every subscriber and need nothing of the stream's state.
    pub fn direct_frames(&self) -> Option<crate::direct::Frames> {
        match self {
            Wire::Sse { json: false } => Some(crate::direct::Frames::Sse),
            Wire::Lines { json: true } => Some(crate::direct::Frames::Ndjson),
            _ => None,
        }
    }

    /// The message's frame as bytes shared with every other subscriber, when this wire has
    /// one (SSE's frame is cached on the message).
    fn shared_frame(&self, m: &Message) -> Option<Bytes> {
        match self {
            Wire::Sse { json: false } => Some(m.sse_frame().clone()),
            _ => None,
        }
    }

    pub fn heartbeat(&self) -> Bytes {
        match self {
            Wire::Sse { .. }
            | Wire::DomEvents
            | Wire::Pull {
                form: PullForm::Sse,
                ..
            } => Bytes::from_static(b":\n\n"),
            // Nothing: see `chunks`, which drops empty chunks.
            Wire::Raw => Bytes::new(),
            Wire::Lines { .. } | Wire::Pull { .. } | Wire::Iframe { .. } => {
                Bytes::from_static(b"\n")
            }
            Wire::Multipart { open: Some(open) } => {
                let mut out = BytesMut::new();
                out.put_slice(&open.bytes);
                out.put_slice(format!("\r\n--{BOUNDARY}\r\n").as_bytes());
                part_head(&open.content_type, &mut out);
                out.freeze()
            }
            Wire::Multipart { open: None } => {
                let mut out = BytesMut::new();
                part(br#"{"event":"heartbeat"}"#, &mut out);
                out.freeze()
            }
            Wire::Gif(_) => super::gif::heartbeat(),
        }
    }

    /// The last words of a stream whose credential lapsed (see [`super::lapse_object`]). No
    /// `retry:` for SSE: reconnecting with the same token would be refused; the client gets a
    /// new one first.
    pub fn lapse(&mut self, denied: &halley_engine::access::Denied, out: &mut BytesMut) {
        self.control("expired", &super::lapse_object(denied), out);
        self.end("expired", out);
    }

    /// The last words of a stream the application ended (the control API): `disconnected`
    /// with its reason, or — revoked — the same as a lapsed token.
    pub fn closed(&mut self, closing: &Closing, out: &mut BytesMut) {
        match closing {
            Closing::Revoked(denied) => self.lapse(denied, out),
            Closing::Disconnected(reason) => {
                let reason = reason.as_deref();
                self.control("disconnected", &super::disconnected_object(reason), out);
                self.end("disconnected", out);
            }
        }
    }

    /// Says that the application took `pattern` off this connection.
    pub fn unsubscribed(&self, pattern: &Pattern, out: &mut BytesMut) {
        self.control("unsubscribed", &super::unsubscribed_object(pattern), out);
    }

    /// The end of a multipart body, or of a GIF (a last frame saying `why`, and the
    /// trailer); other wires end with the response.
    fn end(&mut self, why: &str, out: &mut BytesMut) {
        match self {
            Wire::Multipart { .. } => out.put_slice(format!("--{BOUNDARY}--\r\n").as_bytes()),
            Wire::Gif(screen) => screen.end(why, out),
            _ => {}
        }
    }

    /// The last words of a stream: after lagging, or on shutdown (with reconnect advice).
    pub fn farewell(&mut self, event: &str, retry_ms: u32, out: &mut BytesMut) {
        if let Wire::Sse { .. } = self {
            out.put_slice(format!("retry: {retry_ms}\n").as_bytes());
        }
        self.control(
            event,
            &format!(r#"{{"event":"{event}","retry":{retry_ms}}}"#),
            out,
        );
        self.end(event, out);
    }
}

/// A message as rupy's pull shows it: the text of its `message` (what `/push` publishes, and
/// what the talk chat sends), else the data as [`Message::line`] gives it (a string as it is,
/// anything else as JSON). A text with a line break is sent as a JSON string, where the break
/// is escaped, so that one message stays one line.
fn put_pushed_text(m: &Message, out: &mut BytesMut) {
    #[derive(serde::Deserialize)]
    struct Pushed<'a> {
        #[serde(borrow)]
        message: std::borrow::Cow<'a, str>,
    }
    let json = m.data.json();
    // Only an object can have a message; anything else is not parsed at all.
    let pushed = json
        .starts_with('{')
        .then(|| serde_json::from_str::<Pushed<'_>>(json).ok())
        .flatten();
    match pushed {
        Some(Pushed { message }) if message.contains(['\n', '\r']) => {
            // Serialising a string cannot fail.
            out.put_slice(serde_json::to_string(&*message).unwrap().as_bytes());
        }
        Some(Pushed { message }) => out.put_slice(message.as_bytes()),
        None => out.put_slice(m.line().as_bytes()),
    }
}

fn script(callback: &str, json: &[u8], out: &mut BytesMut) {
    out.put_slice(b"<script>parent.");
    out.put_slice(callback.as_bytes());
    out.put_u8(b'(');
    put_script_safe(json, out);
    out.put_slice(b")</script>\n");
}

/// Appends JSON text to go inside a script (the forever-iframe's inline `<script>`, a JSONP
/// answer) with what a script cannot take escaped: `<` as `\u003c`, so that no `</script>`
/// or `<!--` in a message ends or bends the element, and U+2028 and U+2029 as `\u2028` and
/// `\u2029`, which JSON allows raw in strings but JavaScript before ES2019 reads as line
/// breaks (a syntax error in a string literal). All three only occur inside JSON strings,
/// where the escape means the same character.
pub fn put_script_safe(json: &[u8], out: &mut BytesMut) {
    let mut start = 0;
    let mut i = 0;
    while i < json.len() {
        let (escape, len): (&[u8], usize) = match json[i] {
            b'<' => (b"\\u003c", 1),
            // U+2028 and U+2029 in UTF-8: E2 80 A8, E2 80 A9.
            0xE2 if json.get(i + 1) == Some(&0x80) && json.get(i + 2) == Some(&0xA8) => {
                (b"\\u2028", 3)
            }
            0xE2 if json.get(i + 1) == Some(&0x80) && json.get(i + 2) == Some(&0xA9) => {
                (b"\\u2029", 3)
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.put_slice(&json[start..i]);
        out.put_slice(escape);
        i += len;
        start = i;
    }
    out.put_slice(&json[start..]);
}

fn part_head(content_type: &str, out: &mut BytesMut) {
    out.put_slice(format!("Content-Type: {content_type}\r\n\r\n").as_bytes());
}

impl Wire {
    /// Whether this wire writes nothing of `m`: rupy's pull leaves out its client's own pushes,
    /// a raw byte stream what is not binary.
    fn skips(&self, m: &Message) -> bool {
        match self {
            Wire::Pull { skip, .. } => m.data.json().starts_with(&**skip),
            Wire::Raw => m.binary().is_none(),
            _ => false,
        }
    }

    /// Writes a message; on multipart, a binary body as described at [`Wire::Multipart`].
    fn write_message(&mut self, m: &Message, out: &mut BytesMut) {
        let Wire::Multipart { open } = self else {
            return self.message(m, out);
        };
        match (m.binary(), open.as_deref()) {
            // The open part takes the bytes; the next one is opened.
            (Some(binary), Some(part)) if part.content_type == binary.content_type => {
                out.put_slice(&binary.bytes);
            }
            (Some(binary), _) => {
                self.close_open(out);
                out.put_slice(format!("--{BOUNDARY}\r\n").as_bytes());
                part_head(&binary.content_type, out);
                out.put_slice(&binary.bytes);
            }
            (None, _) => {
                self.close_open(out);
                return self.message(m, out);
            }
        }
        let Some(binary) = m.binary() else { return };
        out.put_slice(format!("\r\n--{BOUNDARY}\r\n").as_bytes());
        part_head(&binary.content_type, out);
        if let Wire::Multipart { open } = self {
            *open = Some(Box::new(binary.clone()));
        }
    }

    /// Ends the part a binary body left open (multipart) with that body again, so that what
    /// follows starts a part of its own.
    fn close_open(&mut self, out: &mut BytesMut) {
        if let Wire::Multipart { open } = self
            && let Some(part) = open.take()
        {
            out.put_slice(&part.bytes);
            out.put_slice(b"\r\n");
        }
    }
}

fn part(body: &[u8], out: &mut BytesMut) {
    out.put_slice(format!("--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n").as_bytes());
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

struct Stream {
    sub: Subscription,
    wire: Wire,
    heartbeat: watch::Receiver<()>,
    shutdown: CancellationToken,
    retry_ms: u32,
    preamble: Option<Bytes>,
    done: bool,
    /// The wire's frames can be written by a delivery (`crate::direct`). Beside `done`, in
    /// padding.
    direct: bool,
    open: Open,
}

impl Stream {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(p) = self.preamble.take().filter(|p| !p.is_empty()) {
            return Poll::Ready(Some(p));
        }
        // One wait per turn, on the subscriber's signal: messages, heartbeat ticks and shutdown
        // all arrive through it (the server's ticker calls `Engine::wake_subscribers`), and
        // shutdown goes first, then messages, then heartbeats.
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if self.shutdown.is_cancelled() {
                self.done = true;
                let mut out = BytesMut::new();
                self.wire.close_open(&mut out);
                self.wire.farewell("reconnect", self.retry_ms, &mut out);
                return Poll::Ready(Some(out.freeze()));
            }
            if let Some(event) = self.sub.try_next() {
                // The common case under broadcast: one message, whose frame is already encoded
                // and shared by every subscriber — hand it on without a copy.
                if let Event::Message(m) = &event
                    && let Some(frame) = self.wire.shared_frame(m)
                {
                    self.written(m);
                    let Some(next) = self.sub.try_next() else {
                        return Poll::Ready(Some(frame));
                    };
                    let mut out = BytesMut::new();
                    out.put_slice(&frame);
                    self.take(next, &mut out);
                    return Poll::Ready(Some(out.freeze()));
                }
                let mut out = BytesMut::new();
                self.take(event, &mut out);
                return Poll::Ready(Some(out.freeze()));
            }
            match self.heartbeat.has_changed() {
                Ok(false) => {}
                Ok(true) => {
                    self.heartbeat.mark_unchanged();
                    // A token that expired or was revoked ends the stream, with a notice.
                    if let Some(denied) = self.sub.lapsed() {
                        self.done = true;
                        let mut out = BytesMut::new();
                        self.wire.close_open(&mut out);
                        self.wire.lapse(&denied, &mut out);
                        return Poll::Ready(Some(out.freeze()));
                    }
                    return Poll::Ready(Some(self.wire.heartbeat()));
                }
                // The ticker is gone: the server is stopping.
                Err(_) => {
                    self.done = true;
                    return Poll::Ready(Some(self.wire.heartbeat()));
                }
            }
            if self.sub.poll_signalled(cx).is_pending() {
                // Everything is written and the stream waits: a delivery may write the next
                // message itself (`crate::direct`), when the server lent it the socket.
                if self.direct {
                    self.sub.arm();
                }
                return Poll::Pending;
            }
        }
    }

    /// Counts `m`'s publish→write latency, when it came live (just handed out by the
    /// subscription) and the wire writes it.
    fn written(&self, m: &Message) {
        if self.sub.last_was_live() && !self.wire.skips(m) {
            LATENCY.record(self.open.kind(), m.published_us(), now_us());
        }
    }

    /// Writes `event` and whatever else is already queued (up to [`COALESCE`]), then what the
    /// wire draws of them all (a GIF's frame).
    fn take(&mut self, event: Event, out: &mut BytesMut) {
        self.take_queued(event, out);
        self.wire.flush(out);
    }

    fn take_queued(&mut self, mut event: Event, out: &mut BytesMut) {
        for written in 1..=COALESCE {
            match event {
                Event::Message(m) => {
                    self.written(&m);
                    self.wire.write_message(&m, out);
                }
                Event::Lagged => {
                    self.done = true;
                    self.wire.close_open(out);
                    self.wire.farewell("lagged", self.retry_ms, out);
                    return;
                }
                Event::Closed(closing) => {
                    self.done = true;
                    self.wire.close_open(out);
                    self.wire.closed(&closing, out);
                    return;
                }
                Event::Unsubscribed(pattern) => {
                    self.wire.close_open(out);
                    self.wire.unsubscribed(&pattern, out);
                    // A connection left with no channel has nothing more to say.
                    if self.sub.patterns().is_empty() {
                        self.done = true;
                        let all = Closing::Disconnected(Some(super::UNSUBSCRIBED_ALL.into()));
                        self.wire.closed(&all, out);
                        return;
                    }
                }
            }
            // Stop before taking a message this chunk has no room for: it would be lost.
            if written == COALESCE {
                return;
            }
            match self.sub.try_next() {
                Some(next) => event = next,
                None => return,
            }
        }
    }
}

/// The chunks of a stream for `sub` in `wire`'s format: preamble, messages, heartbeats, and
/// a farewell on lag or shutdown.
pub fn chunks(
    app: &App,
    sub: Subscription,
    wire: Wire,
    kind: Kind,
    announce: bool,
) -> impl futures_util::Stream<Item = Bytes> + Send + 'static {
    let retry_ms = u32::try_from(app.config.retry.as_millis()).unwrap_or(u32::MAX);
    let mut preamble = BytesMut::from(&wire.preamble(&sub, retry_ms)[..]);
    if announce {
        wire.position(&sub, &mut preamble);
    }
    let stream = Stream {
        preamble: Some(preamble.freeze()),
        direct: wire.direct_frames().is_some(),
        sub,
        wire,
        heartbeat: fresh(&app.heartbeat),
        shutdown: app.shutdown.clone(),
        retry_ms,
        done: false,
        open: Open::new(&app.metrics, kind),
    };
    // A hand-written poll, not an async block: nothing is moved or boxed per chunk.
    let mut stream = stream;
    // Empty chunks (a raw byte stream's heartbeats and notices) are not written: an empty
    // chunk is how a chunked body ends.
    futures_util::stream::poll_fn(move |cx| {
        loop {
            match stream.poll_chunk(cx) {
                Poll::Ready(Some(chunk)) if chunk.is_empty() => continue,
                other => return other,
            }
        }
    })
}

/// A held streaming response for `sub` in `wire`'s format.
pub fn stream_response(app: &App, sub: Subscription, wire: Wire, kind: Kind) -> Response<Body> {
    stream_response_announcing(app, sub, wire, kind, false)
}

/// [`stream_response`], opening with the stream's position when `announce` (see
/// [`Wire::position`]). The position is also in the `X-Halley-Last-Id` header either way.
pub fn stream_response_announcing(
    app: &App,
    sub: Subscription,
    wire: Wire,
    kind: Kind,
    announce: bool,
) -> Response<Body> {
    let gap = sub.gap();
    let position = sub.position();
    let content_type = wire.content_type();
    let offer = wire.direct_frames().map(|frames| crate::direct::Offer {
        slot: sub.sink_slot(),
        frames,
    });
    let body = streaming(chunks(app, sub, wire, kind, announce));
    let mut response = Response::new(body);
    if let Some(offer) = offer {
        response.extensions_mut().insert(offer);
    }
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    held_headers(headers, gap);
    if let Some(v) = position.and_then(|id| HeaderValue::from_str(&id.to_string()).ok()) {
        headers.insert("x-halley-last-id", v);
    }
    response
}

/// The answer to a `HEAD` on a streaming or held endpoint: the status and headers its `GET`
/// would start with. The body is an empty stream rather than an empty whole body, so that no
/// `Content-Length: 0` claims the `GET`'s body is empty.
pub fn head_only(content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(crate::body::streaming(futures_util::stream::empty()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    held_headers(headers, false);
    response
}

/// Headers every held response carries so that proxies pass it through unbuffered.
pub fn held_headers(headers: &mut hyper::HeaderMap, gap: bool) {
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if gap {
        headers.insert("x-halley-gap", HeaderValue::from_static("true"));
    }
}

/// A heartbeat receiver that waits for the *next* tick, not one that happened before it existed.
pub fn fresh(heartbeat: &watch::Receiver<()>) -> watch::Receiver<()> {
    let mut receiver = heartbeat.clone();
    receiver.borrow_and_update();
    receiver
}
