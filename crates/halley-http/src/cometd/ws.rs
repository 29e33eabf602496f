//! Bayeux over WebSocket: batches in both directions as text frames. Messages are pushed as
//! they arrive; a `/meta/connect` is held (answered after its timeout, or at once when a newer
//! connect, a disconnect or shutdown comes) without holding up delivery. Closing, refusing a
//! bad frame and a client that stops reading are handled as on every Halley WebSocket
//! (`crate::transport::ws`).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::Either;
use futures_util::stream::FuturesUnordered;
use halley_engine::bayeux::{Browser, Caller, Handled, Link, ServiceError, Wake};
use halley_proto::bayeux::BayeuxMessage;
use halley_proto::bayeux::parse_batch;
use hyper::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as Frame, Utf8Bytes};

use super::Output;
use crate::body::{Body, RequestBody};
use crate::error::ApiError;
use crate::metrics::Kind;
use crate::query::Query;
use crate::rpc::MAX_CALLS_PER_CONNECTION;
use crate::state::App;
use crate::transport::{BAYEUX_PROTOCOLS, Ending, Ws, accept_websocket, refuse, spawn_upgraded};
use halley_engine::access::Principal;

pub async fn upgrade<B: RequestBody>(
    app: &Arc<App>,
    mut request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let mut response = accept_websocket(request.headers(), BAYEUX_PROTOCOLS)?;
    // The upgrade's credentials, for a handshake on this socket (its `ext` wins over them).
    let who = app.admit(request.headers(), &Query::parse(request.uri().query()))?;
    // An upgrade without the browser cookie is answered with one, as a handshake over HTTP
    // is: a browser's next socket (CometD reconnects with the same clientId) carries it.
    let presented = super::browser_id(request.headers());
    let offered = presented.is_none().then(super::new_browser_id);
    super::set_browser_cookie(response.headers_mut(), offered.clone());
    let upgraded = Upgraded {
        who,
        peer: crate::server::Peer::client(&request, &app.config.trusted_proxies),
        presented: presented.is_some(),
        browser: presented.or(offered).map(String::into_boxed_str),
    };
    // Made here and captured boxed: the socket's loop borrows it, so that none of it is an
    // argument of an `async fn` (each would keep a second copy in every idle socket's task),
    // and the closure that carries it into the task and the future it becomes each keep a
    // word for it, not the whole.
    let mut socket = Box::new(Socket {
        upgraded,
        link: Link::persistent(),
        calls: None,
    });
    spawn_upgraded(app, &mut request, |app, mut ws| async move {
        let ending = run(&app, &mut ws, &mut socket).await;
        (app, ws, ending)
    });
    Ok(response)
}

fn text(out: Output) -> Frame {
    // Output holds JSON built from Rust strings: valid UTF-8.
    Frame::Text(Utf8Bytes::try_from(Bytes::from(out.finish())).unwrap())
}

/// Service calls running for this socket; their replies are sent as they come, while
/// deliveries go on. A reply comes boxed: the loop's `select!` keeps room for each branch's
/// output in every idle socket's task, and a `BayeuxMessage` inline cost 0.25 KiB per idle
/// Bayeux WebSocket client (halley-bench hold, 10,000).
type Calls = FuturesUnordered<std::pin::Pin<Box<dyn Future<Output = Box<BayeuxMessage>> + Send>>>;

/// What the upgrade request told about its client, for every batch on the socket (kept in
/// the socket's box, [`Socket`]). A session handshaken here is bound to the
/// upgrade's browser cookie, as over HTTP: at once when the upgrade carried it, else to the one
/// its 101 answer set, once a request for the session comes back with it.
struct Upgraded {
    who: Principal,
    peer: Option<std::net::IpAddr>,
    /// The upgrade carried `browser` (else the 101 offered it).
    presented: bool,
    browser: Option<Box<str>>,
}

impl Upgraded {
    fn browser(&self) -> Browser<'_> {
        match &self.browser {
            None => Browser::Unknown,
            Some(b) if self.presented => Browser::Presented(b),
            Some(b) => Browser::Offered(b),
        }
    }
}

/// What a Bayeux WebSocket keeps while it is open.
struct Socket {
    upgraded: Upgraded,
    /// The socket's part in its session's delivery: the connect it holds, the messages it
    /// delivers (the engine's one connect loop, driven here as over long-polling).
    link: Link,
    /// Boxed and made on the first call: a socket that never calls pays one word.
    calls: Option<Box<Calls>>,
}

/// What woke a Bayeux WebSocket's loop.
enum Event {
    Frame(Option<Result<Frame, tungstenite::Error>>),
    Wake(Wake),
    Reply(Box<BayeuxMessage>),
}

/// A Bayeux WebSocket's life. Everything it keeps is borrowed ([`Socket`]); what it does when
/// woken is one boxed step ([`act`]), so that an idle socket's task is sized for its wait alone
/// (with the steps inline, their locals kept 112 bytes of every idle socket's task).
// Not an `async fn` (which clippy prefers): one keeps its arguments twice, as arguments and
// as locals, in every idle socket's task.
#[allow(clippy::manual_async_fn)]
fn run<'a>(
    app: &'a App,
    ws: &'a mut Ws,
    socket: &'a mut Socket,
) -> impl Future<Output = Ending> + 'a {
    async move {
        loop {
            // The shutdown reaches a socket that delivers through its session (with its other
            // wake-ups, `Bayeux::shutdown`); one that does not (no handshake yet) waits for it
            // in the link's place: an idle socket's task keeps room for one wait, not both.
            let waiting = if socket.link.delivering() {
                Either::Left(socket.link.wait(&app.bayeux))
            } else {
                Either::Right(async {
                    app.shutdown.cancelled().await;
                    Wake::Shutdown
                })
            };
            let event = tokio::select! {
                frame = ws.next() => Event::Frame(frame),
                wake = waiting => Event::Wake(wake),
                // A poll_fn over one reference: an idle socket's task keeps 8 bytes for this
                // branch.
                Some(reply) = std::future::poll_fn(|cx| match socket.calls.as_deref_mut() {
                    Some(calls) if !calls.is_empty() => calls.poll_next_unpin(cx),
                    _ => std::task::Poll::Pending,
                }) => Event::Reply(reply),
            };
            if let Some(ending) = Box::pin(act(app, ws, socket, event)).await {
                return ending;
            }
        }
    }
}

/// Does what woke the loop; `Some` when the connection is over.
async fn act(app: &App, ws: &mut Ws, socket: &mut Socket, event: Event) -> Option<Ending> {
    match event {
        Event::Frame(frame) => {
            let body = match frame {
                Some(Ok(Frame::Text(body))) => body,
                // tungstenite has queued the answering close; it goes out as the connection
                // ends.
                Some(Ok(Frame::Close(_))) => return Some(Ending::Closed),
                Some(Err(error)) => return Some(refuse(app, ws, &error).await),
                None => return Some(Ending::Gone),
                Some(Ok(_)) => return None,
            };
            handle_frame(app, ws, socket, body).await
        }
        Event::Wake(Wake::Shutdown) => Some(say_away(app, ws, &mut socket.link).await),
        Event::Wake(wake) => {
            let mut out = Output::default();
            socket
                .link
                .wake(&app.bayeux, wake, &mut out.on(Kind::WebSocket));
            (!out.is_empty() && !ws.send(app, text(out)).await).then_some(Ending::Gone)
        }
        Event::Reply(reply) => {
            let mut out = Output::default();
            out.reply(&reply);
            (!ws.send(app, text(out)).await).then_some(Ending::Gone)
        }
    }
}

/// The server is shutting down: the held connect answered, then close 1001.
async fn say_away(app: &App, ws: &mut Ws, link: &mut Link) -> Ending {
    let mut out = Output::default();
    link.release(&app.bayeux, false, &mut out.on(Kind::WebSocket));
    if !out.is_empty() && !ws.send(app, text(out)).await {
        return Ending::Gone;
    }
    let away = Frame::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: Utf8Bytes::from_static("server shutting down; reconnect"),
    }));
    closed(ws.send(app, away).await)
}

/// Handles a batch that came in a text frame; `Some` when the connection is over.
async fn handle_frame(
    app: &App,
    ws: &mut Ws,
    socket: &mut Socket,
    body: Utf8Bytes,
) -> Option<Ending> {
    let batch = match parse_batch(body.as_bytes()) {
        Ok(batch) => batch,
        Err(e) => {
            let refused = Frame::Close(Some(CloseFrame {
                code: CloseCode::Invalid,
                reason: Utf8Bytes::from(e.to_string()),
            }));
            return Some(closed(ws.send(app, refused).await));
        }
    };
    let mut out = Output::default();
    let mut disconnected = false;
    // Boxed, like the handling: one per frame, so handshakes are counted per batch.
    let upgraded = &socket.upgraded;
    let caller = Box::new(
        Caller::new(&upgraded.who)
            .peer(upgraded.peer)
            .browser(upgraded.browser()),
    );
    for message in batch {
        // Boxed: handling a message is not what an idle socket waits in.
        match Box::pin(app.bayeux.handle_in(message, &caller)).await {
            Handled::Reply(reply) => {
                disconnected |=
                    reply.channel == "/meta/disconnect" && reply.successful == Some(true);
                out.reply(&reply);
            }
            Handled::Call(call) => {
                let calls = socket.calls.get_or_insert_with(Default::default);
                if calls.len() >= MAX_CALLS_PER_CONNECTION {
                    out.reply(&call.refuse(ServiceError {
                        code: 503,
                        message: format!(
                            "more than {MAX_CALLS_PER_CONNECTION} calls in flight on this connection"
                        ),
                    }));
                } else {
                    calls.push(Box::pin(async move { Box::new(call.reply().await) }));
                }
            }
            Handled::Connect(connect) => {
                socket
                    .link
                    .connect(&app.bayeux, connect, &mut out.on(Kind::WebSocket))
            }
        }
    }
    if disconnected {
        socket
            .link
            .release(&app.bayeux, true, &mut out.on(Kind::WebSocket));
        let sent = ws.send(app, text(out)).await && ws.send(app, Frame::Close(None)).await;
        return Some(closed(sent));
    }
    if !out.is_empty() && !ws.send(app, text(out)).await {
        return Some(Ending::Gone);
    }
    None
}

/// How the connection ends after a goodbye: closed if the close frame went out.
fn closed(sent: bool) -> Ending {
    if sent { Ending::Closed } else { Ending::Gone }
}
