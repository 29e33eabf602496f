//! WebSocket on `/sub/{channel}`: one text frame per message (the message object), pings as
//! heartbeats, and — when publishing is allowed — text frames from the client published to the
//! channel it is on.

use std::sync::Arc;

use crate::body::RequestBody;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use halley_engine::control::Closing;
use halley_engine::{Event, Subscription};
use halley_proto::{Channel, MessageId, Pattern, Payload, PayloadError};
use hyper::header::{CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message as Frame, Utf8Bytes};

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

pub async fn upgrade<B: RequestBody>(
    app: &Arc<App>,
    patterns: Vec<Pattern>,
    resume: Option<MessageId>,
    presence: Vec<super::Declaration>,
    announce: bool,
    mut request: Request<B>,
    who: Principal,
) -> Result<Response<Body>, ApiError> {
    let response = accept_websocket(request.headers())?;
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
    spawn_upgraded(app, &mut request, move |app, tx, rx| async move {
        run(&app, tx, rx, sub, publish_to, announce).await;
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

/// Runs `serve` on the WebSocket once the `101` answer has gone out, as a tracked task (so a
/// drain waits for it) that carries the connection's slot under the cap and counts as an open
/// WebSocket subscriber.
pub fn spawn_upgraded<B, F, Fut>(app: &Arc<App>, request: &mut Request<B>, serve: F)
where
    F: FnOnce(Arc<App>, WsSink, WsStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let on_upgrade = hyper::upgrade::on(&mut *request);
    let slot = request
        .extensions_mut()
        .remove::<Arc<crate::server::Slot>>();
    let open = Open::new(&app.metrics, Kind::WebSocket);
    let app = app.clone();
    app.clone().tracker.spawn(async move {
        let _held = (open, slot);
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = websocket_config(app.config.body_limit);
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                // Split here, so that the socket is never an argument of the long-lived
                // futures below (an argument keeps its room in a future for its whole life).
                let (tx, rx) = ws.split();
                serve(app, tx, rx).await;
            }
            Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
        }
    });
}

/// Checks a WebSocket handshake request and builds its `101 Switching Protocols` answer.
pub fn accept_websocket(headers: &hyper::HeaderMap) -> Result<Response<Body>, ApiError> {
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
    Ok(response)
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

async fn run(
    app: &App,
    mut tx: WsSink,
    mut rx: WsStream,
    mut sub: Subscription,
    publish_to: Option<Channel>,
    announce: bool,
) {
    let mut heartbeat = super::stream::fresh(&app.heartbeat);
    if sub.gap() {
        let gap = Bytes::from(super::gap_object(&sub));
        if tx.send(text(&gap)).await.is_err() {
            return;
        }
    }
    if announce && let Some(id) = sub.position() {
        let object = serde_json::json!({ "event": "position", "last_id": id.to_string() });
        if tx
            .send(text(&Bytes::from(object.to_string())))
            .await
            .is_err()
        {
            return;
        }
    }
    // Shutdown, messages and heartbeat ticks all arrive through the subscriber's signal (the
    // server's ticker calls `Engine::wake_subscribers`), checked in that order; the only other
    // thing waited on is the client's next frame.
    loop {
        if app.shutdown.is_cancelled() {
            let _ = tx
                .send(close(CloseCode::Away, "server shutting down; reconnect"))
                .await;
            break;
        }
        let (mut fed, mut lagged) = (false, false);
        // A control notice ends the loop as its value, so that it is no local of the loop's
        // awaits (every idle socket's task would be sized for it).
        let control = loop {
            let Some(event) = sub.try_next() else {
                break None;
            };
            match event {
                Event::Message(m) => {
                    if tx.feed(text(m.json_object())).await.is_err() {
                        return;
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
            match Box::pin(say_control(&mut tx, &sub, event)).await {
                Said::Over => break,
                Said::Gone => return,
                Said::GoingOn => continue,
            }
        }
        if lagged {
            let notice = Bytes::from_static(br#"{"event":"lagged"}"#);
            let _ = tx.feed(text(&notice)).await;
            let _ = tx
                .send(close(
                    CloseCode::Again,
                    "fell behind; resume from your last id",
                ))
                .await;
            break;
        }
        if fed && tx.flush().await.is_err() {
            return;
        }
        match heartbeat.has_changed() {
            Ok(false) => {}
            Ok(true) => {
                heartbeat.mark_unchanged();
                // A token that expired or was revoked ends the connection, said in-band first
                // (boxed: this rare goodbye would otherwise size every idle socket's task).
                if let Some(denied) = sub.lapsed() {
                    Box::pin(say_lapsed(&mut tx, denied)).await;
                    break;
                }
                if tx.send(Frame::Ping(Bytes::new())).await.is_err() {
                    break;
                }
            }
            // The ticker is gone: the server is stopping.
            Err(_) => break,
        }
        tokio::select! {
            biased;
            _ = sub.signalled() => {}
            frame = rx.next() => match frame {
                Some(Ok(Frame::Text(body))) => {
                    // Boxed: the engine's publish inline would size every idle socket's task
                    // for it.
                    let reply = Box::pin(publish(
                        app,
                        publish_to.as_ref(),
                        sub.attached::<Publishing>(),
                        body.as_str(),
                    ))
                    .await;
                    if let Some(reply) = reply
                        && tx.send(text(&Bytes::from(reply))).await.is_err() {
                            break;
                        }
                }
                Some(Ok(Frame::Binary(_))) => {
                    let _ = tx.send(close(CloseCode::Unsupported, "text frames only")).await;
                    break;
                }
                Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// The `expired` notice, then close 1008 (policy violation) with the reason.
async fn say_lapsed(tx: &mut WsSink, denied: halley_engine::access::Denied) {
    let notice = Bytes::from(super::lapse_object(&denied));
    let _ = tx.feed(text(&notice)).await;
    let _ = tx
        .send(Frame::Close(Some(CloseFrame {
            code: CloseCode::Policy,
            reason: close_reason(&denied.to_string()),
        })))
        .await;
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
async fn say_control(tx: &mut WsSink, sub: &Subscription, event: Event) -> Said {
    let closing = match event {
        Event::Closed(closing) => closing,
        Event::Unsubscribed(pattern) => {
            let notice = Bytes::from(super::unsubscribed_object(&pattern));
            if tx.send(text(&notice)).await.is_err() {
                return Said::Gone;
            }
            if !sub.patterns().is_empty() {
                return Said::GoingOn;
            }
            Closing::Disconnected(Some(super::UNSUBSCRIBED_ALL.into()))
        }
        Event::Message(_) | Event::Lagged => return Said::GoingOn,
    };
    say_closed(tx, closing).await;
    Said::Over
}

/// The application ended the connection (the control API): `disconnected` and close 1008
/// with the reason, or — revoked — the lapsed goodbye.
async fn say_closed(tx: &mut WsSink, closing: Closing) {
    let reason = match closing {
        Closing::Revoked(denied) => return say_lapsed(tx, denied).await,
        Closing::Disconnected(reason) => reason,
    };
    let notice = Bytes::from(super::disconnected_object(reason.as_deref()));
    let _ = tx.feed(text(&notice)).await;
    let reason = super::disconnect_reason(reason.as_deref());
    let _ = tx
        .send(Frame::Close(Some(CloseFrame {
            code: CloseCode::Policy,
            reason: close_reason(reason),
        })))
        .await;
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
