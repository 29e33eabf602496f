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
use bytes::{Buf, Bytes};
use futures_util::{SinkExt, StreamExt};
use halley_engine::control::Closing;
use halley_engine::{Event, Subscription};
use halley_proto::{Channel, Pattern, Payload, PayloadError};
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
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
    start: halley_engine::Start,
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
    let mut sub = super::open(app, patterns, start, presence).await?;
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
    spawn_upgraded(app, &mut request, move |app, mut ws| async move {
        // Binary frames for binary bodies are this socket's own choice: deliveries write text.
        if !socket.frames.binary {
            ws.lend(&socket.sub);
        }
        let ending = run(&app, &mut ws, &mut socket).await;
        (app, ws, ending)
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
    spawn_upgraded(app, &mut request, |app, mut ws| async move {
        let ending = loop {
            let frame = tokio::select! {
                biased;
                _ = app.shutdown.cancelled() => {
                    let away = close(CloseCode::Away, "server shutting down");
                    break said(ws.send(&app, away).await);
                }
                frame = ws.next() => frame,
            };
            match frame {
                Some(Ok(message @ (Frame::Text(_) | Frame::Binary(_)))) => {
                    if !ws.send(&app, message).await {
                        break Ending::Gone;
                    }
                }
                Some(Ok(Frame::Close(_))) => break Ending::Closed,
                Some(Err(error)) => break refuse(&app, &mut ws, &error).await,
                None => break Ending::Gone,
                Some(Ok(_)) => {}
            }
        };
        (app, ws, ending)
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

/// The connection a request upgrades into.
type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// A server-side WebSocket that keeps tungstenite's state only while a message is being read.
///
/// tungstenite allocates its read buffer ([`READ_BUFFER`]) when a socket is made and keeps it
/// for the socket's life, with its write buffer and tokio-tungstenite's two waker proxies:
/// ~1.5 KiB per idle socket, most of what an idle WebSocket cost (dhat). Here they exist from
/// the first byte a client sends until what was read ends on a message boundary ([`Bounds`]);
/// then they are dropped, and the socket waits for its next byte with nothing but the
/// connection. The server's frames are written here ([`Ws::send`]), not through tungstenite:
/// they are whole, unmasked frames, and writing them needs no state.
pub struct Ws {
    /// The connection, while tungstenite's state is dropped.
    idle: Option<Io>,
    /// tungstenite's state, while a message is being read (boxed: an idle socket keeps a word).
    live: Option<Box<WebSocketStream<Io>>>,
    /// Messages tungstenite has handed out: [`Bounds`] counts those the client sent (both
    /// wrap; only their equality matters).
    read: u32,
    /// The body limit, for the sockets made again ([`websocket_config`]).
    body_limit: usize,
}

/// The upgraded connection, with what its reads have shown of the client's frames.
pub struct Io {
    inner: Conn,
    bounds: Bounds,
}

/// The connection under a WebSocket: hyper's upgraded one, or — when hyper gave back the
/// socket itself with nothing read ahead — the socket, shareable with the hub's deliveries
/// (`crate::direct`): a native WebSocket lends it ([`Ws::lend`]), and every write here takes
/// it back first, writing the rest of a frame a delivery began.
enum Conn {
    Upgraded(Upgraded),
    Shared(Box<Shared>),
    /// The socket, with what hyper had read ahead still to be read (a client that sent frames
    /// before it had the answer to its handshake); never lent.
    Rewound(crate::server::Rewind),
}

struct Shared {
    socket: Arc<crate::direct::Socket>,
    /// Set once the socket is lent to the hub.
    slot: Option<halley_engine::direct::SinkSlot>,
    /// What is left to write of a frame a delivery began.
    rest: bytes::BytesMut,
}

impl Shared {
    /// Takes the socket back from the hub and writes what a delivery left of its frame:
    /// ready once nothing of that is left.
    fn poll_settle(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::{Poll, ready};
        if let Some(slot) = &self.slot
            && let Some((message, written)) = ready!(slot.poll_take(cx))
        {
            let mut rest = self.socket.encode(&message);
            let _ = rest.split_to((written as usize).min(rest.len()));
            self.rest = rest;
        }
        let stream = &self.socket.stream;
        while !self.rest.is_empty() {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(&self.rest) {
                Ok(n) => {
                    let _ = self.rest.split_to(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // Its memory goes with it.
        self.rest = bytes::BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

impl Conn {
    /// The connection hyper handed over: the socket itself when it can be had whole.
    fn of(upgraded: hyper::upgrade::Upgraded) -> Conn {
        match upgraded.downcast::<TokioIo<crate::server::Rewind>>() {
            Ok(parts) if parts.read_buf.is_empty() => match parts.io.into_inner().into_stream() {
                Ok(stream) => Conn::Shared(Box::new(Shared {
                    socket: Arc::new(crate::direct::Socket::new(
                        stream,
                        crate::direct::Frames::WsText,
                        false,
                    )),
                    slot: None,
                    rest: bytes::BytesMut::new(),
                })),
                Err(rewind) => Conn::Rewound(rewind),
            },
            Ok(parts) => Conn::Rewound(parts.io.into_inner().after(parts.read_buf)),
            Err(upgraded) => Conn::Upgraded(TokioIo::new(upgraded)),
        }
    }
}

/// Where the bytes read from a client stand among its frames: in a frame's header, in its
/// payload, inside a fragmented message, and how many messages (control frames, and data
/// frames that end a message) have ended. Only lengths and flags are read; tungstenite, which
/// reads the same bytes, checks them.
#[derive(Default)]
struct Bounds {
    /// The header being read (at most 14 bytes: 2, an extended length of 8, a mask of 4).
    head: [u8; 14],
    have: u8,
    /// Payload bytes of the current frame still to come.
    left: u64,
    /// The current frame's first byte (FIN and opcode).
    first: u8,
    /// A data message has begun and not ended (FIN not yet seen).
    open: bool,
    /// Messages ended so far (wrapping).
    ended: u32,
}

impl Bounds {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len() as u64);
                self.left -= n;
                bytes = &bytes[n as usize..];
                if self.left == 0 {
                    self.end_frame();
                }
                continue;
            }
            self.head[usize::from(self.have)] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have < 2 {
                continue;
            }
            let second = self.head[1];
            let extended = match second & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if second & 0x80 != 0 { 4 } else { 0 };
            if usize::from(self.have) < 2 + extended + mask {
                continue;
            }
            self.left = match extended {
                2 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                8 => u64::from_be_bytes(self.head[2..10].try_into().unwrap_or([0; 8])),
                _ => u64::from(second & 0x7f),
            };
            self.first = self.head[0];
            self.have = 0;
            if self.left == 0 {
                self.end_frame();
            }
        }
    }

    fn end_frame(&mut self) {
        let fin = self.first & 0x80 != 0;
        if self.first & 0x08 != 0 {
            // A control frame is a message of its own (tungstenite hands each out).
            self.ended = self.ended.wrapping_add(1);
        } else if fin {
            self.ended = self.ended.wrapping_add(1);
            self.open = false;
        } else {
            self.open = true;
        }
    }

    /// What was read ends on a message boundary, and tungstenite has handed out `read` of
    /// its messages: it holds nothing of the client's.
    fn at_rest(&self, read: u32) -> bool {
        self.have == 0 && self.left == 0 && !self.open && self.ended == read
    }
}

impl AsyncRead for Io {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = match &mut this.inner {
            Conn::Upgraded(inner) => std::pin::Pin::new(inner).poll_read(cx, buf),
            Conn::Rewound(inner) => std::pin::Pin::new(inner).poll_read(cx, buf),
            Conn::Shared(shared) => poll_read_shared(&shared.socket.stream, cx, buf),
        };
        if let std::task::Poll::Ready(Ok(())) = &polled {
            this.bounds.feed(&buf.filled()[before..]);
        }
        polled
    }
}

/// A read through a shared reference, as tokio's own halves do.
fn poll_read_shared(
    stream: &tokio::net::TcpStream,
    cx: &mut std::task::Context<'_>,
    buf: &mut tokio::io::ReadBuf<'_>,
) -> std::task::Poll<std::io::Result<()>> {
    loop {
        std::task::ready!(stream.poll_read_ready(cx))?;
        match stream.try_read(buf.initialize_unfilled()) {
            Ok(n) => {
                buf.advance(n);
                return std::task::Poll::Ready(Ok(()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return std::task::Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match &mut self.inner {
            Conn::Upgraded(inner) => std::pin::Pin::new(inner).poll_write(cx, buf),
            Conn::Rewound(inner) => std::pin::Pin::new(inner).poll_write(cx, buf),
            Conn::Shared(shared) => {
                std::task::ready!(shared.poll_settle(cx))?;
                std::pin::Pin::new(&mut crate::direct::Shared(&shared.socket.stream))
                    .poll_write(cx, buf)
            }
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.inner {
            Conn::Upgraded(inner) => std::pin::Pin::new(inner).poll_flush(cx),
            Conn::Rewound(inner) => std::pin::Pin::new(inner).poll_flush(cx),
            Conn::Shared(shared) => shared.poll_settle(cx),
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.inner {
            Conn::Upgraded(inner) => std::pin::Pin::new(inner).poll_shutdown(cx),
            Conn::Rewound(inner) => std::pin::Pin::new(inner).poll_shutdown(cx),
            Conn::Shared(shared) => {
                std::task::ready!(shared.poll_settle(cx))?;
                // Closing: the hub lets go of the socket, so that it is this connection's alone
                // (a delivery that still holds it for a moment means no half-close).
                if let Some(slot) = shared.slot.take() {
                    slot.detach();
                }
                match Arc::get_mut(&mut shared.socket) {
                    Some(socket) => std::pin::Pin::new(&mut socket.stream).poll_shutdown(cx),
                    None => std::task::Poll::Ready(Ok(())),
                }
            }
        }
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match &mut self.inner {
            Conn::Upgraded(inner) => std::pin::Pin::new(inner).poll_write_vectored(cx, bufs),
            Conn::Rewound(inner) => std::pin::Pin::new(inner).poll_write_vectored(cx, bufs),
            Conn::Shared(shared) => {
                std::task::ready!(shared.poll_settle(cx))?;
                std::pin::Pin::new(&mut crate::direct::Shared(&shared.socket.stream))
                    .poll_write_vectored(cx, bufs)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Conn::Upgraded(inner) => inner.is_write_vectored(),
            Conn::Rewound(inner) => inner.is_write_vectored(),
            Conn::Shared(_) => true,
        }
    }
}

impl Ws {
    /// The client's next message; `None` once it is gone. Cancel-safe: the loops wait for it
    /// alongside their own events.
    pub async fn next(&mut self) -> Option<Result<Frame, WsError>> {
        if let Some(live) = self.live.as_deref_mut()
            && live.get_ref().bounds.at_rest(self.read)
        {
            // Nothing of a message is read: tungstenite's state goes, once what it queued
            // (the answer to a ping) is written.
            live.flush().await.ok()?;
            self.idle = self.live.take().map(|live| live.into_inner());
        }
        if self.live.is_none() {
            // Idle: the first bytes the client sends are read here, into the stack, and
            // tungstenite is made with them.
            let io = self.idle.as_mut()?;
            let part = std::future::poll_fn(|cx| {
                let mut chunk = [0u8; READ_BUFFER];
                let mut buf = tokio::io::ReadBuf::new(&mut chunk);
                std::pin::Pin::new(&mut *io)
                    .poll_read(cx, &mut buf)
                    .map(|read| read.map(|()| buf.filled().to_vec()))
            })
            .await;
            // Its end (nothing read) or a failed read: the client is gone.
            let part = part.ok().filter(|part| !part.is_empty())?;
            let io = self.idle.take()?;
            let config = websocket_config(self.body_limit);
            // Ready at its first poll (tokio-tungstenite makes the socket without I/O), so
            // that nothing taken above is lost to a cancel. Boxed: its future is 560 bytes,
            // and inline it sized every socket's task for it.
            let live = Box::pin(WebSocketStream::from_partially_read(
                io,
                part,
                Role::Server,
                Some(config),
            ))
            .await;
            self.live = Some(Box::new(live));
        }
        let message = self.live.as_deref_mut()?.next().await;
        if let Some(Ok(_)) = message {
            self.read = self.read.wrapping_add(1);
        }
        message
    }

    /// Writes a frame, bounded by the write stall timeout ([`send`]): `false` when the client
    /// is gone or took no bytes for that long, and the connection should just be dropped.
    /// What tungstenite queued (a pong, a close's answer) goes out whole first.
    ///
    /// Not an `async fn`: the frame is encoded before the future exists, which keeps only its
    /// bytes (an `async fn` kept the frame as its argument and again as a local: this future
    /// is part of every socket's task, sized for its largest await).
    pub fn send<'a>(&'a mut self, app: &'a App, frame: Frame) -> impl Future<Output = bool> + 'a {
        let (head, payload) = encode(frame);
        let mut bytes = head.chain(payload);
        async move {
            if let Some(live) = self.live.as_deref_mut()
                && !send(app, live.flush()).await
            {
                return false;
            }
            let io = match (self.idle.as_mut(), self.live.as_deref_mut()) {
                (Some(io), _) => io,
                (None, Some(live)) => live.get_mut(),
                (None, None) => return false,
            };
            let write = std::pin::pin!(io.write_all_buf(&mut bytes));
            send(app, write).await
        }
    }

    /// Lends the socket to the hub, so that deliveries to `sub` write their text frames
    /// themselves while this socket waits (`crate::direct`); a no-op on a connection hyper
    /// could not give back whole.
    pub fn lend(&mut self, sub: &Subscription) {
        if let Some(Io {
            inner: Conn::Shared(shared),
            ..
        }) = self.idle.as_mut()
        {
            let slot = sub.sink_slot();
            slot.attach(shared.socket.clone());
            shared.slot = Some(slot);
        }
    }

    /// Whether a delivery may write to the socket while this one waits: it is lent, and
    /// nothing of ours is half written (tungstenite's state is dropped only once what it
    /// queued went out).
    fn lent_and_idle(&self) -> bool {
        matches!(
            self.idle.as_ref(),
            Some(Io { inner: Conn::Shared(shared), .. }) if shared.slot.is_some() && shared.rest.is_empty()
        )
    }

    /// Takes the socket back from the hub before the loop takes anything from the
    /// subscription: the rest of a frame a delivery began is written first (its message
    /// leaves the queue with it). Polled, not an `async fn`: it is part of every socket's task.
    fn poll_settle(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let io = match (self.idle.as_mut(), self.live.as_deref_mut()) {
            (Some(io), _) => io,
            (None, Some(live)) => live.get_mut(),
            (None, None) => {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()));
            }
        };
        let Conn::Shared(shared) = &mut io.inner else {
            return std::task::Poll::Ready(Ok(()));
        };
        shared.poll_settle(cx)
    }

    /// The connection, with tungstenite's state dropped once what it queued is written.
    async fn into_io(mut self, app: &App) -> Option<Io> {
        if let Some(live) = self.live.as_deref_mut() {
            // A flush that meets the closed state reports success (tokio-tungstenite), so an
            // error here means the socket failed: nothing to linger for.
            if !send(app, live.flush()).await {
                return None;
            }
        }
        self.idle.or(self.live.map(|live| live.into_inner()))
    }
}

/// A server frame's header (FIN, opcode, length; never masked) and payload.
fn encode(frame: Frame) -> (Head, Bytes) {
    let (opcode, payload) = match frame {
        Frame::Text(text) => (0x1, Bytes::from(text)),
        Frame::Binary(bytes) => (0x2, bytes),
        Frame::Close(None) => (0x8, Bytes::new()),
        Frame::Close(Some(close)) => {
            let mut payload = Vec::with_capacity(2 + close.reason.len());
            payload.extend_from_slice(&u16::from(close.code).to_be_bytes());
            payload.extend_from_slice(close.reason.as_bytes());
            (0x8, Bytes::from(payload))
        }
        Frame::Ping(bytes) => (0x9, bytes),
        Frame::Pong(bytes) => (0xa, bytes),
        // A raw frame: Halley never sends one; it is written as tungstenite formats it.
        Frame::Frame(frame) => {
            let mut bytes = Vec::with_capacity(frame.len());
            // Writing into a Vec cannot fail.
            let _ = frame.format(&mut bytes);
            return (Head::default(), Bytes::from(bytes));
        }
    };
    (head_of(opcode, payload.len()), payload)
}

/// A whole, unmasked server frame's header: FIN, `opcode`, the payload's length.
fn head_of(opcode: u8, len: usize) -> Head {
    let mut head = Head::default();
    head.push(0x80 | opcode);
    match len {
        n if n < 126 => head.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            head.push(126);
            (n as u16)
                .to_be_bytes()
                .into_iter()
                .for_each(|b| head.push(b));
        }
        n => {
            head.push(127);
            (n as u64)
                .to_be_bytes()
                .into_iter()
                .for_each(|b| head.push(b));
        }
    }
    head
}

/// The header of a text frame of `len` bytes (what a delivery that writes itself sends
/// before a message's JSON object, `crate::direct`).
pub fn ws_text_head(len: usize) -> WsHead {
    WsHead(head_of(0x1, len))
}

/// A text frame's header, as [`ws_text_head`] gives it.
pub struct WsHead(Head);

impl WsHead {
    pub fn as_slice(&self) -> &[u8] {
        &self.0.bytes[..usize::from(self.0.len)]
    }
}

/// A frame header, written from where it lies (no allocation per frame).
#[derive(Default)]
struct Head {
    bytes: [u8; 10],
    /// Written so far, of `len`.
    at: u8,
    len: u8,
}

impl Head {
    fn push(&mut self, byte: u8) {
        self.bytes[usize::from(self.len)] = byte;
        self.len += 1;
    }
}

impl Buf for Head {
    fn remaining(&self) -> usize {
        usize::from(self.len - self.at)
    }

    fn chunk(&self) -> &[u8] {
        &self.bytes[usize::from(self.at)..usize::from(self.len)]
    }

    fn advance(&mut self, n: usize) {
        // `Buf`'s contract: never past what remains.
        self.at += n.min(self.remaining()) as u8;
    }
}

/// How a WebSocket's conversation ended, and so how its connection is closed.
pub enum Ending {
    /// The client is gone, or stopped taking bytes: the socket is dropped as it is.
    Gone,
    /// A close frame was sent or a client's close answered (tungstenite queues that answer
    /// itself): it goes out, then the server ends TCP ([`finish`]).
    Closed,
}

/// What serving a WebSocket hands back to [`spawn_upgraded`]: the app it was given, the
/// socket, and how it ended.
pub type Served = (Arc<App>, Ws, Ending);

/// Runs `serve` on the WebSocket once the `101` answer has gone out, as a tracked task (so a
/// drain waits for it) that carries the connection's slot under the cap and counts as an open
/// WebSocket subscriber; then closes the connection as `serve`'s [`Ending`] says.
pub fn spawn_upgraded<B, F, Fut>(app: &Arc<App>, request: &mut Request<B>, serve: F)
where
    F: FnOnce(Arc<App>, Ws) -> Fut + Send + 'static,
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
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "websocket upgrade failed");
                return;
            }
        };
        // Idle from the start: tungstenite's state is made with the client's first bytes.
        let ws = Ws {
            idle: Some(Io {
                inner: Conn::of(upgraded),
                bounds: Bounds::default(),
            }),
            live: None,
            read: 0,
            body_limit: app.config.body_limit,
        };
        // The app comes back with the socket: kept here meanwhile, it would be one more word
        // in every idle socket's task.
        if let (app, ws, Ending::Closed) = serve(app, ws).await {
            // Boxed: only a closing socket needs room for the linger.
            Box::pin(finish(&app, ws)).await;
        }
    });
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
pub fn send<F, E>(app: &App, write: F) -> Sending<'_, F>
where
    F: Future<Output = Result<(), E>> + Unpin,
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

impl<F, E> Future for Sending<'_, F>
where
    F: Future<Output = Result<(), E>> + Unpin,
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
async fn finish(app: &App, ws: Ws) {
    let lingers = !app.shutdown.is_cancelled();
    let Some(mut io) = ws.into_io(app).await else {
        return;
    };
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
/// socket's task is sized for its wait and one write (`-Zprint-type-sizes`, bench/README.md).
// Not an `async fn` (which clippy prefers): one keeps its arguments twice, as arguments and
// as locals, in every idle socket's task.
#[allow(clippy::manual_async_fn)]
fn run<'a>(
    app: &'a App,
    ws: &'a mut Ws,
    socket: &'a mut Socket,
) -> impl Future<Output = Ending> + 'a {
    async move {
        if !Box::pin(opening(app, ws, socket)).await {
            return Ending::Gone;
        }
        // Shutdown, messages and heartbeat ticks all arrive through the subscriber's signal (the
        // server's ticker calls `Engine::wake_subscribers`), checked in that order; the only other
        // thing waited on is the client's next frame.
        loop {
            // The socket back from the hub (`crate::direct`) before anything is taken from the
            // subscription or written; what a delivery left of its frame is written first,
            // bounded like every write.
            if !send(app, std::future::poll_fn(|cx| ws.poll_settle(cx))).await {
                return Ending::Gone;
            }
            if app.shutdown.is_cancelled() {
                return said(Box::pin(say_away(app, ws)).await);
            }
            let mut lagged = false;
            // A control notice ends the loop as its value, so that it is no local of the loop's
            // awaits (every idle socket's task would be sized for it).
            let control = loop {
                let Some(event) = socket.sub.try_next() else {
                    break None;
                };
                match event {
                    Event::Message(m) => {
                        if socket.sub.last_was_live() {
                            crate::metrics::LATENCY.record(
                                Kind::WebSocket,
                                m.published_us(),
                                crate::metrics::now_us(),
                            );
                        }
                        let frame = match m.binary() {
                            Some(binary) if socket.frames.binary => {
                                Frame::Binary(binary.bytes.clone())
                            }
                            _ => text(m.json_object()),
                        };
                        if !ws.send(app, frame).await {
                            return Ending::Gone;
                        }
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
                match Box::pin(say_control(app, ws, &socket.sub, event)).await {
                    Said::Over => return Ending::Closed,
                    Said::Gone => return Ending::Gone,
                    Said::GoingOn => continue,
                }
            }
            if lagged {
                return said(Box::pin(say_lagged(app, ws)).await);
            }
            match socket.heartbeat.has_changed() {
                Ok(false) => {}
                Ok(true) => {
                    socket.heartbeat.mark_unchanged();
                    // A token that expired or was revoked ends the connection, said in-band first
                    // (boxed: this rare goodbye would otherwise size every idle socket's task).
                    if let Some(denied) = socket.sub.lapsed() {
                        return said(Box::pin(say_lapsed(app, ws, denied)).await);
                    }
                    if !ws.send(app, Frame::Ping(Bytes::new())).await {
                        return Ending::Gone;
                    }
                }
                // The ticker is gone: the server is stopping.
                Err(_) => return Ending::Gone,
            }
            // Everything is written and the socket waits: a delivery may write the next
            // message itself, if the socket is lent.
            if ws.lent_and_idle() {
                socket.sub.arm();
            }
            let frame = tokio::select! {
                biased;
                _ = socket.sub.signalled() => continue,
                frame = ws.next() => frame,
            };
            match frame {
                Some(Ok(Frame::Text(body))) => {
                    // Boxed: the engine's publish inline would size every idle socket's task for
                    // it.
                    if !Box::pin(publish_frame(app, ws, socket, body)).await {
                        return Ending::Gone;
                    }
                }
                Some(Ok(Frame::Binary(_))) => {
                    let refused = close(CloseCode::Unsupported, "text frames only");
                    return said(Box::pin(ws.send(app, refused)).await);
                }
                // tungstenite has queued the answering close; `finish` sends it.
                Some(Ok(Frame::Close(_))) => return Ending::Closed,
                Some(Err(error)) => return Box::pin(refuse(app, ws, &error)).await,
                None => return Ending::Gone,
                Some(Ok(_)) => {}
            }
        }
    }
}

/// What a socket says first, when there is something: the resume's gap, its position.
/// Whether the client is still there.
async fn opening(app: &App, ws: &mut Ws, socket: &Socket) -> bool {
    if socket.sub.gap() {
        let gap = Bytes::from(super::gap_object(&socket.sub));
        if !ws.send(app, text(&gap)).await {
            return false;
        }
    }
    if socket.frames.announce
        && let Some(id) = socket.sub.position()
    {
        let object = serde_json::json!({ "event": "position", "last_id": id.to_string() });
        if !ws.send(app, text(&Bytes::from(object.to_string()))).await {
            return false;
        }
    }
    true
}

/// The server is shutting down: close 1001. Whether the close went out.
async fn say_away(app: &App, ws: &mut Ws) -> bool {
    let away = close(CloseCode::Away, "server shutting down; reconnect");
    ws.send(app, away).await
}

/// The client fell behind: the `lagged` notice, then close 1013. The goodbye is bounded like
/// any write: a client that reads nothing (which is how it fell behind) is dropped after the
/// stall timeout instead of kept forever. Whether the close went out.
async fn say_lagged(app: &App, ws: &mut Ws) -> bool {
    let notice = Bytes::from_static(br#"{"event":"lagged"}"#);
    let bye = close(CloseCode::Again, "fell behind; resume from your last id");
    ws.send(app, text(&notice)).await && ws.send(app, bye).await
}

/// Publishes a client's text frame and answers a refusal. Whether the client is still there.
async fn publish_frame(app: &App, ws: &mut Ws, socket: &Socket, body: Utf8Bytes) -> bool {
    let reply = publish(
        app,
        socket.publish_to.as_ref(),
        socket.sub.attached::<Publishing>(),
        body.as_str(),
    )
    .await;
    match reply {
        Some(reply) => ws.send(app, text(&Bytes::from(reply))).await,
        None => true,
    }
}

/// How a connection ends after its goodbye: closed if the close frame went out.
fn said(sent: bool) -> Ending {
    if sent { Ending::Closed } else { Ending::Gone }
}

/// Answers a read error with the close frame it calls for ([`refusal`]), if any.
pub async fn refuse(app: &App, ws: &mut Ws, error: &WsError) -> Ending {
    tracing::debug!(%error, "websocket read failed");
    match refusal(error) {
        Some(frame) => said(ws.send(app, frame).await),
        None => Ending::Gone,
    }
}

/// The `expired` notice, then close 1008 (policy violation) with the reason. Whether the
/// close went out.
async fn say_lapsed(app: &App, ws: &mut Ws, denied: halley_engine::access::Denied) -> bool {
    let notice = Bytes::from(super::lapse_object(&denied));
    let bye = Frame::Close(Some(CloseFrame {
        code: CloseCode::Policy,
        reason: close_reason(&denied.to_string()),
    }));
    ws.send(app, text(&notice)).await && ws.send(app, bye).await
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
async fn say_control(app: &App, ws: &mut Ws, sub: &Subscription, event: Event) -> Said {
    let closing = match event {
        Event::Closed(closing) => closing,
        Event::Unsubscribed(pattern) => {
            let notice = Bytes::from(super::unsubscribed_object(&pattern));
            if !ws.send(app, text(&notice)).await {
                return Said::Gone;
            }
            if !sub.patterns().is_empty() {
                return Said::GoingOn;
            }
            Closing::Disconnected(Some(super::UNSUBSCRIBED_ALL.into()))
        }
        Event::Message(_) | Event::Lagged => return Said::GoingOn,
    };
    if say_closed(app, ws, closing).await {
        Said::Over
    } else {
        Said::Gone
    }
}

/// The application ended the connection (the control API): `disconnected` and close 1008
/// with the reason, or — revoked — the lapsed goodbye. Whether the close went out.
async fn say_closed(app: &App, ws: &mut Ws, closing: Closing) -> bool {
    let reason = match closing {
        Closing::Revoked(denied) => return say_lapsed(app, ws, denied).await,
        Closing::Disconnected(reason) => reason,
    };
    let notice = Bytes::from(super::disconnected_object(reason.as_deref()));
    let reason = super::disconnect_reason(reason.as_deref());
    let bye = Frame::Close(Some(CloseFrame {
        code: CloseCode::Policy,
        reason: close_reason(reason),
    }));
    ws.send(app, text(&notice)).await && ws.send(app, bye).await
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

#[cfg(test)]
mod tests {
    use super::Bounds;

    /// A client frame: FIN and opcode, then a masked payload of `len` bytes.
    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut bytes = vec![if fin { 0x80 } else { 0 } | opcode];
        match len {
            n if n < 126 => bytes.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                bytes.push(0x80 | 126);
                bytes.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                bytes.push(0x80 | 127);
                bytes.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes.extend(std::iter::repeat_n(0x5a, len));
        bytes
    }

    /// Feeds `bytes` in pieces of `step`, as reads might bring them.
    fn feed(bounds: &mut Bounds, bytes: &[u8], step: usize) {
        for piece in bytes.chunks(step) {
            bounds.feed(piece);
        }
    }

    #[test]
    fn a_message_is_at_rest_only_once_whole_and_handed_out() {
        for len in [0, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            for step in [1, 3, 14, 1024] {
                let bytes = frame(true, 0x1, len);
                let mut bounds = Bounds::default();
                feed(&mut bounds, &bytes[..bytes.len() - 1], step);
                assert!(!bounds.at_rest(0), "len {len} step {step}: a byte short");
                assert!(!bounds.at_rest(1), "len {len} step {step}: a byte short");
                bounds.feed(&bytes[bytes.len() - 1..]);
                assert!(
                    bounds.at_rest(1),
                    "len {len} step {step}: whole, handed out"
                );
                assert!(
                    !bounds.at_rest(0),
                    "len {len} step {step}: whole, not handed out"
                );
            }
        }
    }

    #[test]
    fn a_fragmented_message_is_not_at_rest_between_its_frames() {
        let mut bounds = Bounds::default();
        feed(&mut bounds, &frame(false, 0x1, 10), 4);
        assert!(!bounds.at_rest(0));
        // A ping inside the message is a message of its own, but the text is still open.
        feed(&mut bounds, &frame(true, 0x9, 4), 4);
        assert!(!bounds.at_rest(1));
        feed(&mut bounds, &frame(false, 0x0, 300), 7);
        assert!(!bounds.at_rest(1));
        feed(&mut bounds, &frame(true, 0x0, 0), 1);
        assert!(bounds.at_rest(2));
    }

    #[test]
    fn server_frames_have_the_length_encoding_rfc_6455_gives_their_payload() {
        use super::{Bytes, Frame, encode};
        use bytes::Buf;
        for (len, head) in [
            (0, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_535, vec![0x81, 126, 0xff, 0xff]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let text = "a".repeat(len);
            let (h, payload) = encode(Frame::text(text));
            let mut written = h.chain(payload);
            let bytes = written.copy_to_bytes(written.remaining());
            assert_eq!(&bytes[..head.len()], &head[..], "len {len}");
            assert_eq!(bytes.len(), head.len() + len);
        }
        let (h, payload) = encode(Frame::Ping(Bytes::from_static(b"hi")));
        assert_eq!(h.chunk(), &[0x89, 2]);
        assert_eq!(&payload[..], b"hi");
    }

    #[test]
    fn two_messages_in_one_read_are_at_rest_once_both_are_handed_out() {
        let mut bytes = frame(true, 0x1, 20);
        bytes.extend(frame(true, 0xa, 0));
        let mut bounds = Bounds::default();
        bounds.feed(&bytes);
        assert!(!bounds.at_rest(1));
        assert!(bounds.at_rest(2));
    }
}
