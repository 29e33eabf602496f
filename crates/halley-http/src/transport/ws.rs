//! WebSocket on `/sub/{channel}`: one text frame per message (the message object), pings as
//! heartbeats, and — when publishing is allowed — text frames from the client published to the
//! channel it is on.
//!
//! Every WebSocket Halley serves (this one, Bayeux's, the Autobahn echo of test builds) ends
//! the same way ([`spawn_upgraded`]): a client's close is answered with a close, a frame the
//! server cannot take is refused with the close code RFC 6455 names for it ([`refusal`]: 1009
//! over the body limit, 1007 for text that is not UTF-8, 1002 for a protocol violation), and
//! after a close frame the server half-closes TCP and reads until the client closes its side
//! ([`finish`]), so that clients see a clean close. A write that cannot progress for
//! [`HttpConfig::write_stall_timeout`](crate::HttpConfig::write_stall_timeout) ends the
//! connection without a goodbye, as on HTTP streams ([`send`]).

use std::sync::Arc;
use std::time::Duration;

use crate::body::RequestBody;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use halley_engine::control::Closing;
use halley_engine::{Event, Subscription};
use halley_proto::{Channel, MessageId, Pattern, Payload, PayloadError};
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Frame, Utf8Bytes};

use crate::body::{Body, empty};
use crate::error::ApiError;
use crate::metrics::{Kind, Open};
use crate::state::App;
use halley_engine::access::{Action, Principal, Stamp, Via};
use halley_engine::observe;

/// tungstenite allocates its read buffer eagerly, 128 KiB by default: that alone would be the
/// biggest cost of an idle subscriber. Clients send little (an occasional publish), and a
/// larger message just takes several reads, so 1 KiB (measured: 7.0 KiB per idle WebSocket
/// subscriber with 4 KiB, 4.0 KiB with 1 KiB; bench/README.md).
const READ_BUFFER: usize = 1024;

/// Most bytes queued for a client that is not reading, beyond which writes fail and the
/// connection is closed. The subscriber queue bounds messages; this bounds bytes.
const MAX_WRITE_BUFFER: usize = 1024 * 1024;

/// After its close frame, how long the server waits for the client to close its side of TCP
/// (reading and discarding what it still sends) before it drops the socket anyway. Closing
/// with unread bytes would make the kernel answer with a reset, which can destroy the close
/// frame before the client reads it; a client answers a close within a round trip, so 2 s
/// only matters for one that never does. The timer exists only for a closing socket.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Most bytes read and discarded while waiting for the client to close its side (its close
/// answer, the rest of a refused message still in flight). Past this the socket is dropped.
const MAX_LINGER_BYTES: usize = 256 * 1024;

/// The subprotocol of native `/sub` WebSockets (`Sec-WebSocket-Protocol`): one JSON text
/// frame per message or control object (clients/js/PROTOCOL.md). Requesting it is optional.
pub const NATIVE_PROTOCOL: &str = "halley.v1";

/// The subprotocols Bayeux WebSockets (`/cometd`) accept: Bayeux batches as text frames.
/// The CometD and Faye clients send none by default; CometD's `protocol` option sends the
/// one it is configured with, and these are the names in use for Bayeux.
pub const BAYEUX_PROTOCOLS: &[&str] = &["bayeux", "cometd"];

/// What a native WebSocket sends besides message objects, as the upgrade asked.
#[derive(Clone, Copy, Debug)]
pub struct Frames {
    /// Open with `{"event":"position",…}` (`position=1`).
    pub announce: bool,
    /// A binary body ([`halley_proto::Payload::binary`]) as a binary frame of its bytes
    /// (`binary=frames`), not its message object (which carries its channel and id).
    pub binary: bool,
}

pub async fn upgrade<B: RequestBody>(
    app: &Arc<App>,
    patterns: Vec<Pattern>,
    resume: Option<MessageId>,
    presence: Vec<super::Declaration>,
    frames: Frames,
    mut request: Request<B>,
    who: Principal,
) -> Result<Response<Body>, ApiError> {
    let response = accept_websocket(request.headers(), &[NATIVE_PROTOCOL])?;
    // Frames are published to the channel subscribed to, when there is exactly one (and it is
    // not a wildcard) and the policy lets this caller publish there from a connection; a
    // connection on several channels publishes with `POST /pub`. Decided once, here, with the
    // stamp its frames get where the namespace stamps messages (the identity is not kept).
    let (publish_to, extra) = match patterns.as_slice() {
        [Pattern::Exact(channel)] => match app
            .authorize(&who, Action::Publish(channel, Via::Client))
            .await
        {
            Ok(who) => {
                let stamp = app.policy().stamp(&who, channel);
                let reported = (!who.backend
                    && app.engine.observes(channel, observe::Kind::Publish))
                .then(|| Reported {
                    user: who.user.clone(),
                    info: who.info.clone(),
                });
                let extra = (stamp.is_some() || reported.is_some())
                    .then_some(Publishing { stamp, reported });
                (Some(channel.clone()), extra)
            }
            Err(_) => (None, None),
        },
        _ => (None, None),
    };
    // Subscribe before answering 101: a refusal is still an HTTP error, and nothing published
    // between the handshake and the first read is missed.
    let mut sub = super::open(app, patterns, resume, presence).await?;
    sub.admitted_as(&who, Kind::WebSocket.name());
    if let Some(extra) = extra {
        sub.attach(extra);
    }
    drop(who);
    // Made here and captured boxed: the socket's loop borrows it, so that none of it is an
    // argument of an `async fn` (each would keep a second copy of itself in every idle
    // socket's task), and the closure that carries it into the task and the future it
    // becomes each keep a word for it, not the whole (160 bytes twice, `-Zprint-type-sizes`).
    let mut socket = Box::new(Socket {
        heartbeat: super::stream::fresh(&app.heartbeat),
        sub,
        publish_to,
        frames,
    });
    spawn_upgraded(app, &mut request, move |app, mut tx, mut rx| async move {
        let ending = run(&app, &mut tx, &mut rx, &mut socket).await;
        (app, tx, rx, ending)
    });
    Ok(response)
}

/// What a native WebSocket keeps while it is open: its subscription, where its frames are
/// published, what it sends, and its view of the heartbeat ticker.
struct Socket {
    sub: Subscription,
    publish_to: Option<Channel>,
    heartbeat: tokio::sync::watch::Receiver<()>,
    frames: Frames,
}

/// Test builds only (the `autobahn` feature): a WebSocket that echoes every message back, for
/// the Autobahn test suite (`scripts/autobahn`). It runs on exactly what every Halley
/// WebSocket runs on — [`websocket_config`] with the configured body limit,
/// [`spawn_upgraded`], [`send`], [`refuse`] — so what the suite finds holds for `/sub` and
/// `/cometd`.
#[cfg(feature = "autobahn")]
pub const AUTOBAHN_ECHO: &str = "/_autobahn/echo";

/// The Autobahn echo's upgrade ([`AUTOBAHN_ECHO`]).
#[cfg(feature = "autobahn")]
pub async fn echo<B: RequestBody>(
    app: &Arc<App>,
    mut request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let response = accept_websocket(request.headers(), &[])?;
    spawn_upgraded(app, &mut request, |app, mut tx, mut rx| async move {
        let ending = loop {
            let frame = tokio::select! {
                biased;
                _ = app.shutdown.cancelled() => {
                    let away = close(CloseCode::Away, "server shutting down");
                    break said(send(&app, tx.send(away)).await);
                }
                frame = rx.next() => frame,
            };
            match frame {
                Some(Ok(message @ (Frame::Text(_) | Frame::Binary(_)))) => {
                    if !send(&app, tx.send(message)).await {
                        break Ending::Gone;
                    }
                }
                Some(Ok(Frame::Close(_))) => break Ending::Closed,
                Some(Err(error)) => break refuse(&app, &mut tx, &error).await,
                None => break Ending::Gone,
                Some(Ok(_)) => {}
            }
        };
        (app, tx, rx, ending)
    });
    Ok(response)
}

/// How a connection's frames are published, where that is more than the channel (kept with
/// its subscription: [`Subscription::attach`]).
struct Publishing {
    /// The stamp its frames get where the namespace stamps messages (the identity is not kept).
    stamp: Option<Stamp>,
    /// Who publishes, kept only where the channel reports publishes to the application and
    /// the caller is not the backend: an open socket does not otherwise keep its caller's
    /// claims.
    reported: Option<Reported>,
}

/// A publisher as a publish event reports it: its user and presence info.
struct Reported {
    user: Option<Box<str>>,
    info: Option<Box<str>>,
}

/// The WebSocket a request upgrades into.
pub type Upgraded = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;
/// Its sending half.
pub type WsSink = futures_util::stream::SplitSink<Upgraded, Frame>;
/// Its receiving half.
pub type WsStream = futures_util::stream::SplitStream<Upgraded>;

/// How a WebSocket's conversation ended, and so how its connection is closed.
pub enum Ending {
    /// The client is gone, or stopped taking bytes: the socket is dropped as it is.
    Gone,
    /// A close frame was sent or a client's close answered (tungstenite queues that answer
    /// itself): it goes out, then the server ends TCP ([`finish`]).
    Closed,
}

/// What serving a WebSocket hands back to [`spawn_upgraded`]: the app it was given, the two
/// halves, and how it ended.
pub type Served = (Arc<App>, WsSink, WsStream, Ending);

/// Runs `serve` on the WebSocket once the `101` answer has gone out, as a tracked task (so a
/// drain waits for it) that carries the connection's slot under the cap and counts as an open
/// WebSocket subscriber; then closes the connection as `serve`'s [`Ending`] says.
pub fn spawn_upgraded<B, F, Fut>(app: &Arc<App>, request: &mut Request<B>, serve: F)
where
    F: FnOnce(Arc<App>, WsSink, WsStream) -> Fut + Send + 'static,
    Fut: Future<Output = Served> + Send + 'static,
{
    let on_upgrade = hyper::upgrade::on(&mut *request);
    let slot = request
        .extensions_mut()
        .remove::<Arc<crate::server::Slot>>();
    let open = Open::new(&app.metrics, Kind::WebSocket);
    let app = app.clone();
    app.clone().tracker.spawn(async move {
        let _held = (open, slot);
        // Boxed: the upgrade and the making of the WebSocket are over before the socket
        // idles, and inline they sized every idle socket's task for them.
        let Some((tx, rx)) = Box::pin(accept(app.config.body_limit, on_upgrade)).await else {
            return;
        };
        // The app comes back with the halves: kept here meanwhile, it would be one more word
        // in every idle socket's task.
        if let (app, tx, rx, Ending::Closed) = serve(app, tx, rx).await {
            // Boxed: only a closing socket needs room for the linger.
            Box::pin(finish(&app, tx, rx)).await;
        }
    });
}

/// The upgraded connection as a WebSocket, split into its halves; `None` when the upgrade
/// failed.
async fn accept(
    body_limit: usize,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Option<(WsSink, WsStream)> {
    match on_upgrade.await {
        Ok(upgraded) => {
            let config = websocket_config(body_limit);
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            // Split here, so that the socket is never an argument of the long-lived futures
            // (an argument keeps its room in a future for its whole life).
            Some(ws.split())
        }
        Err(error) => {
            tracing::debug!(%error, "websocket upgrade failed");
            None
        }
    }
}

/// Checks a WebSocket handshake request and builds its `101 Switching Protocols` answer. A
/// request that offers subprotocols (`Sec-WebSocket-Protocol`) gets the first of them that is
/// in `speaks` selected (spelled as the client did: browsers compare exactly), or a 400 that
/// names what the endpoint speaks; one that offers none is answered without one.
pub fn accept_websocket(
    headers: &hyper::HeaderMap,
    speaks: &[&str],
) -> Result<Response<Body>, ApiError> {
    if headers
        .get("sec-websocket-version")
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(ApiError::BadRequest("WebSocket version 13 required".into()));
    }
    let key = headers
        .get("sec-websocket-key")
        .ok_or_else(|| ApiError::BadRequest("missing Sec-WebSocket-Key".into()))?;
    let protocol = select_protocol(headers, speaks)?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    // derive_accept_key yields base64, always a valid header value.
    h.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).unwrap(),
    );
    if let Some(protocol) = protocol {
        h.insert(SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    Ok(response)
}

/// The subprotocol to select: `None` when the request offers none, the first offered that is
/// in `speaks`, or a refusal naming what is spoken.
fn select_protocol(
    headers: &hyper::HeaderMap,
    speaks: &[&str],
) -> Result<Option<HeaderValue>, ApiError> {
    let mut offered = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .peekable();
    if offered.peek().is_none() {
        return Ok(None);
    }
    match offered.find(|name| speaks.iter().any(|s| s.eq_ignore_ascii_case(name))) {
        // A token of a header value that was valid text: a valid header value.
        Some(name) => Ok(Some(HeaderValue::from_str(name).unwrap())),
        None if speaks.is_empty() => Err(ApiError::BadRequest(
            "this endpoint speaks no WebSocket subprotocol; connect without Sec-WebSocket-Protocol"
                .into(),
        )),
        None => Err(ApiError::BadRequest(format!(
            "unsupported WebSocket subprotocol; this endpoint speaks {} (or none)",
            speaks.join(", ")
        ))),
    }
}

/// Sends a frame (`feed` only queues it, `flush` writes what is queued), bounded by the write
/// stall timeout ([`HttpConfig::write_stall_timeout`](crate::HttpConfig::write_stall_timeout)):
/// `false` when the client is gone or took no bytes for that long, and the connection should
/// just be dropped. Its timer is armed only when the write cannot finish at once.
pub fn send<F>(app: &App, write: F) -> Sending<'_, F>
where
    F: Future<Output = Result<(), WsError>> + Unpin,
{
    Sending {
        write,
        app,
        timer: None,
    }
}

/// A WebSocket write bounded by the stall timeout ([`send`]). A future of its own rather than
/// an `async fn`: it is part of every WebSocket task's state (sized for its largest await), and
/// an `async fn` kept the write twice (as its argument and as its awaitee) — 0.13 KiB more per
/// idle WebSocket subscriber.
pub struct Sending<'a, F> {
    write: F,
    app: &'a App,
    /// Armed at the first poll that finds the write blocked; boxed, so that a write that never
    /// blocks costs one word.
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<F> Future for Sending<'_, F>
where
    F: Future<Output = Result<(), WsError>> + Unpin,
{
    type Output = bool;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<bool> {
        use std::task::Poll;
        let this = &mut *self;
        if let Poll::Ready(result) = std::pin::Pin::new(&mut this.write).poll(cx) {
            return Poll::Ready(result.is_ok());
        }
        let stall = this.app.config.write_stall_timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        // The write made no progress for the whole stall timeout: give up on the client.
        timer.as_mut().poll(cx).map(|()| false)
    }
}

/// The close frame that answers a read error which is the client's fault (RFC 6455 §7.4.1):
/// 1009 for a message over the body limit, 1007 for text that is not UTF-8, 1002 for a
/// protocol violation. `None` for an error that leaves no one to tell (I/O, a reset).
pub fn refusal(error: &WsError) -> Option<Frame> {
    let (code, reason) = match error {
        WsError::Capacity(_) => (CloseCode::Size, "message over the body limit".to_owned()),
        WsError::Utf8(_) => (CloseCode::Invalid, "text is not valid UTF-8".to_owned()),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return None,
        WsError::Protocol(error) => (CloseCode::Protocol, error.to_string()),
        _ => return None,
    };
    Some(Frame::Close(Some(CloseFrame {
        code,
        reason: close_reason(&reason),
    })))
}

/// Ends a connection whose close frame is queued or sent: writes what is queued (the answer
/// to a client's close), half-closes TCP, and reads and discards what the client still sends
/// until it closes its side, within [`CLOSE_LINGER`] and [`MAX_LINGER_BYTES`] — so that the
/// server ends TCP and the client sees a clean close, not a reset. While the server drains,
/// it does not wait for the client (the drain must end promptly): it half-closes and drops.
async fn finish(app: &App, mut tx: WsSink, rx: WsStream) {
    // A flush that meets the closed state reports success (tokio-tungstenite), so an error
    // here means the socket failed: nothing to linger for.
    if !send(app, tx.flush()).await {
        return;
    }
    let lingers = !app.shutdown.is_cancelled();
    // The halves of one stream always reunite.
    let Ok(ws) = tx.reunite(rx) else { return };
    let mut io = ws.into_inner();
    let lingering = async {
        io.shutdown().await?;
        if !lingers {
            return Ok(());
        }
        let mut scratch = [0u8; 1024];
        let mut left = MAX_LINGER_BYTES;
        loop {
            let n = io.read(&mut scratch).await?;
            if n == 0 || n >= left {
                return Ok::<_, std::io::Error>(());
            }
            left -= n;
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, lingering).await;
}

/// The budgets of a server-side WebSocket (see the constants above).
pub fn websocket_config(body_limit: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(body_limit))
        .max_frame_size(Some(body_limit))
}

fn text(bytes: &Bytes) -> Frame {
    // Message encodings are built from Rust strings, so they are UTF-8.
    Frame::Text(Utf8Bytes::try_from(bytes.clone()).unwrap())
}

fn close(code: CloseCode, reason: &'static str) -> Frame {
    Frame::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// A native WebSocket's life. Everything it keeps is borrowed ([`Socket`]); what it does
/// rarely (its opening notices, goodbyes, a client's publish) is boxed, so that an idle
/// socket's task is sized for its wait and one write (`-Zprint-type-sizes`: 744 → see
/// bench/README.md).
async fn run(app: &App, tx: &mut WsSink, rx: &mut WsStream, socket: &mut Socket) -> Ending {
    if !Box::pin(opening(app, tx, socket)).await {
        return Ending::Gone;
    }
    // Shutdown, messages and heartbeat ticks all arrive through the subscriber's signal (the
    // server's ticker calls `Engine::wake_subscribers`), checked in that order; the only other
    // thing waited on is the client's next frame.
    loop {
        if app.shutdown.is_cancelled() {
            return said(Box::pin(say_away(app, tx)).await);
        }
        let (mut fed, mut lagged) = (false, false);
        // A control notice ends the loop as its value, so that it is no local of the loop's
        // awaits (every idle socket's task would be sized for it).
        let control = loop {
            let Some(event) = socket.sub.try_next() else {
                break None;
            };
            match event {
                Event::Message(m) => {
                    let frame = match m.binary() {
                        Some(binary) if socket.frames.binary => Frame::Binary(binary.bytes.clone()),
                        _ => text(m.json_object()),
                    };
                    if !send(app, tx.feed(frame)).await {
                        return Ending::Gone;
                    }
                    fed = true;
                }
                Event::Lagged => {
                    lagged = true;
                    break None;
                }
                other => break Some(other),
            }
        };
        if let Some(event) = control {
            // Boxed, as the lapsed goodbye: rare, and not what an idle socket waits in.
            match Box::pin(say_control(app, tx, &socket.sub, event)).await {
                Said::Over => return Ending::Closed,
                Said::Gone => return Ending::Gone,
                Said::GoingOn => continue,
            }
        }
        if lagged {
            return said(Box::pin(say_lagged(app, tx)).await);
        }
        if fed && !send(app, tx.flush()).await {
            return Ending::Gone;
        }
        match socket.heartbeat.has_changed() {
            Ok(false) => {}
            Ok(true) => {
                socket.heartbeat.mark_unchanged();
                // A token that expired or was revoked ends the connection, said in-band first
                // (boxed: this rare goodbye would otherwise size every idle socket's task).
                if let Some(denied) = socket.sub.lapsed() {
                    return said(Box::pin(say_lapsed(app, tx, denied)).await);
                }
                if !send(app, tx.send(Frame::Ping(Bytes::new()))).await {
                    return Ending::Gone;
                }
            }
            // The ticker is gone: the server is stopping.
            Err(_) => return Ending::Gone,
        }
        let frame = tokio::select! {
            biased;
            _ = socket.sub.signalled() => continue,
            frame = rx.next() => frame,
        };
        match frame {
            Some(Ok(Frame::Text(body))) => {
                // Boxed: the engine's publish inline would size every idle socket's task for
                // it.
                if !Box::pin(publish_frame(app, tx, socket, body)).await {
                    return Ending::Gone;
                }
            }
            Some(Ok(Frame::Binary(_))) => {
                let refused = close(CloseCode::Unsupported, "text frames only");
                return said(Box::pin(send(app, tx.send(refused))).await);
            }
            // tungstenite has queued the answering close; `finish` sends it.
            Some(Ok(Frame::Close(_))) => return Ending::Closed,
            Some(Err(error)) => return Box::pin(refuse(app, tx, &error)).await,
            None => return Ending::Gone,
            Some(Ok(_)) => {}
        }
    }
}

/// What a socket says first, when there is something: the resume's gap, its position.
/// Whether the client is still there.
async fn opening(app: &App, tx: &mut WsSink, socket: &Socket) -> bool {
    if socket.sub.gap() {
        let gap = Bytes::from(super::gap_object(&socket.sub));
        if !send(app, tx.send(text(&gap))).await {
            return false;
        }
    }
    if socket.frames.announce
        && let Some(id) = socket.sub.position()
    {
        let object = serde_json::json!({ "event": "position", "last_id": id.to_string() });
        if !send(app, tx.send(text(&Bytes::from(object.to_string())))).await {
            return false;
        }
    }
    true
}

/// The server is shutting down: close 1001. Whether the close went out.
async fn say_away(app: &App, tx: &mut WsSink) -> bool {
    let away = close(CloseCode::Away, "server shutting down; reconnect");
    send(app, tx.send(away)).await
}

/// The client fell behind: the `lagged` notice, then close 1013. The goodbye is bounded like
/// any write: a client that reads nothing (which is how it fell behind) is dropped after the
/// stall timeout instead of kept forever. Whether the close went out.
async fn say_lagged(app: &App, tx: &mut WsSink) -> bool {
    let notice = Bytes::from_static(br#"{"event":"lagged"}"#);
    let bye = close(CloseCode::Again, "fell behind; resume from your last id");
    send(app, tx.feed(text(&notice))).await && send(app, tx.send(bye)).await
}

/// Publishes a client's text frame and answers a refusal. Whether the client is still there.
async fn publish_frame(app: &App, tx: &mut WsSink, socket: &Socket, body: Utf8Bytes) -> bool {
    let reply = publish(
        app,
        socket.publish_to.as_ref(),
        socket.sub.attached::<Publishing>(),
        body.as_str(),
    )
    .await;
    match reply {
        Some(reply) => send(app, tx.send(text(&Bytes::from(reply)))).await,
        None => true,
    }
}

/// How a connection ends after its goodbye: closed if the close frame went out.
fn said(sent: bool) -> Ending {
    if sent { Ending::Closed } else { Ending::Gone }
}

/// Answers a read error with the close frame it calls for ([`refusal`]), if any.
pub async fn refuse(app: &App, tx: &mut WsSink, error: &WsError) -> Ending {
    tracing::debug!(%error, "websocket read failed");
    match refusal(error) {
        Some(frame) => said(send(app, tx.send(frame)).await),
        None => Ending::Gone,
    }
}

/// The `expired` notice, then close 1008 (policy violation) with the reason. Whether the
/// close went out.
async fn say_lapsed(app: &App, tx: &mut WsSink, denied: halley_engine::access::Denied) -> bool {
    let notice = Bytes::from(super::lapse_object(&denied));
    let bye = Frame::Close(Some(CloseFrame {
        code: CloseCode::Policy,
        reason: close_reason(&denied.to_string()),
    }));
    send(app, tx.feed(text(&notice))).await && send(app, tx.send(bye)).await
}

/// What saying a control notice left of the connection.
enum Said {
    /// It goes on (a channel was taken off, others are left).
    GoingOn,
    /// It is over, goodbye said.
    Over,
    /// The client is gone.
    Gone,
}

/// A notice of the control API: a channel taken off (and, when it was the last, the end), or
/// the end the application asked for.
async fn say_control(app: &App, tx: &mut WsSink, sub: &Subscription, event: Event) -> Said {
    let closing = match event {
        Event::Closed(closing) => closing,
        Event::Unsubscribed(pattern) => {
            let notice = Bytes::from(super::unsubscribed_object(&pattern));
            if !send(app, tx.send(text(&notice))).await {
                return Said::Gone;
            }
            if !sub.patterns().is_empty() {
                return Said::GoingOn;
            }
            Closing::Disconnected(Some(super::UNSUBSCRIBED_ALL.into()))
        }
        Event::Message(_) | Event::Lagged => return Said::GoingOn,
    };
    if say_closed(app, tx, closing).await {
        Said::Over
    } else {
        Said::Gone
    }
}

/// The application ended the connection (the control API): `disconnected` and close 1008
/// with the reason, or — revoked — the lapsed goodbye. Whether the close went out.
async fn say_closed(app: &App, tx: &mut WsSink, closing: Closing) -> bool {
    let reason = match closing {
        Closing::Revoked(denied) => return say_lapsed(app, tx, denied).await,
        Closing::Disconnected(reason) => reason,
    };
    let notice = Bytes::from(super::disconnected_object(reason.as_deref()));
    let reason = super::disconnect_reason(reason.as_deref());
    let bye = Frame::Close(Some(CloseFrame {
        code: CloseCode::Policy,
        reason: close_reason(reason),
    }));
    send(app, tx.feed(text(&notice))).await && send(app, tx.send(bye)).await
}

/// Most bytes of a close frame's reason (RFC 6455: the frame's payload is at most 125 bytes,
/// 2 of them the code). A longer reason is cut at a character boundary; the notice before
/// the close has it whole.
const MAX_CLOSE_REASON: usize = 123;

fn close_reason(reason: &str) -> Utf8Bytes {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Utf8Bytes::from(reason[..end].to_owned())
}

/// Publishes a client's frame (its JSON value, or the text as a string when it is not JSON),
/// stamped with the connection's sender where the namespace says so (then only an object is
/// published), and reported to the application where the channel asks. Returns an error
/// object to send back, if any.
async fn publish(
    app: &App,
    channel: Option<&Channel>,
    how: Option<&Publishing>,
    body: &str,
) -> Option<String> {
    let Some(channel) = channel else {
        return Some(
            r#"{"event":"error","error":"publishing is not allowed on this connection (wildcard subscription or missing publish key)"}"#
                .into(),
        );
    };
    // A frame that is not JSON is text; JSON that cannot be stored (too deep, a lone
    // surrogate) is refused, as on every other way in.
    let payload = match Payload::from_json(body.as_bytes()) {
        Ok(payload) => payload,
        Err(PayloadError::InvalidJson | PayloadError::NotUtf8) => Payload::string(body),
        Err(e) => {
            return Some(
                serde_json::json!({ "event": "error", "error": e.to_string() }).to_string(),
            );
        }
    };
    let published = app
        .engine
        .publish_stamped(channel.clone(), payload, how.and_then(|h| h.stamp.as_ref()))
        .await;
    if let (Ok(published), Some(reported)) = (&published, how.and_then(|h| h.reported.as_ref())) {
        app.engine
            .observe_publish(published, reported.user.clone(), reported.info.clone());
    }
    match published {
        Ok(_) => None,
        Err(e) => Some(serde_json::json!({ "event": "error", "error": e.to_string() }).to_string()),
    }
}
