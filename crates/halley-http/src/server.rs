//! The accept loop, per-connection budgets and graceful drain.
//!
//! Every connection first has its request head read here (bounded in size and time: the
//! slowloris guard), because rupy's `Head: less` pull must answer with no HTTP response at all,
//! which an HTTP library cannot express. A malformed head is refused here with a JSON error
//! (hyper's own refusals have empty bodies); the HTTP/2 preface (h2c with prior knowledge)
//! is handed to hyper's HTTP/2 server (`crate::secure`, which also serves TLS). Held
//! requests (subscriptions, rupy's pull, Bayeux long-polling) are served here too (the lean
//! path: their idle cost), each later head of the connection read the same way; everything
//! else is handed to hyper with the bytes already read put back in front ([`Rewind`]), and
//! hyper reads the rest of that connection.
//!
//! Drain: cancelling the shutdown token stops the accept loop, tells every held response to
//! end with reconnect advice, asks idle keep-alive connections to close, and then waits up to
//! the drain timeout for the connection tasks (tracked by a `TaskTracker`) to finish.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use halley_engine::Engine;
use halley_engine::bayeux::{Bayeux, BayeuxConfig, NoServices, PolicyOnly, Services};
use http_body_util::Full;
use hyper::body::Body as _;
use hyper::{Method, Request, Response, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app;
use crate::body::Body;
use crate::config::{MAX_HEAD, MAX_HEADERS};
use crate::cors::Origins;
use crate::direct;
use crate::hooks::Webhooks;
use crate::metrics::{Kind, Metrics};
use crate::outbound::Outbound;
use crate::query::Query;
use crate::routes::{self, Handler};
use crate::rpc::Rpc;
use crate::state::App;
use crate::tls::Tls;
use crate::{HttpConfig, rupy, secure};

/// After a failed `accept` (typically EMFILE at the file-descriptor limit), wait this long
/// before trying again instead of spinning on the error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a refused connection (503, a malformed head) gets to receive its answer, and then
/// to stop sending before it is closed.
const REJECT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes read (and dropped) from a refused connection while waiting for it to close (see
/// [`linger`]); a client still sending more is then cut off.
const LINGER_BYTES: usize = 64 * 1024;

/// What a server shares with the calls it makes to the application.
struct Parts {
    /// The one pooled client for every call to the application.
    outbound: Outbound,
    metrics: Arc<Metrics>,
    rpc: Option<Rpc>,
}

impl Parts {
    fn new(config: &HttpConfig) -> Parts {
        let outbound = Outbound::new();
        let metrics = Arc::new(Metrics::default());
        let rpc = config
            .rpc
            .clone()
            .map(|rpc| Rpc::new(rpc, outbound.clone(), metrics.clone()));
        Parts {
            outbound,
            metrics,
            rpc,
        }
    }
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    /// The TLS-only listener, when configured (`TlsConfig::listen`); its certificate is the
    /// app's (`App::tls`).
    tls: Option<TcpListener>,
    app: Arc<App>,
    heartbeat: watch::Sender<()>,
    slots: Arc<Semaphore>,
}

/// One open connection's slot under the connection cap; freed when the last holder (the
/// connection task, or a WebSocket task it upgraded into) drops it.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The peer's address, for a request that needs it (Bayeux counts handshakes per source).
/// Put in the request's extensions on hyper's path and on the lean path's Bayeux requests only:
/// an idle subscriber's request carries no extensions.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub std::net::IpAddr);

impl Peer {
    /// The TCP peer's address.
    pub fn of<B>(request: &Request<B>) -> Option<std::net::IpAddr> {
        request.extensions().get::<Peer>().map(|p| p.0)
    }

    /// The client's address: the TCP peer's, or, when that is a trusted proxy, the nearest
    /// address in `X-Forwarded-For` (read from the right: each proxy appends the address it
    /// was reached from) that is not one. A malformed entry ends the walk at the last address
    /// read before it: what a client wrote on its own left of it is never believed.
    pub fn client<B>(request: &Request<B>, trusted: &[ipnet::IpNet]) -> Option<std::net::IpAddr> {
        let peer = Peer::of(request)?;
        let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|net| net.contains(&ip));
        let mut client = peer.to_canonical();
        if !is_trusted(client) {
            return Some(client);
        }
        let values = request.headers().get_all("x-forwarded-for").iter().rev();
        'walk: for value in values {
            let Ok(value) = value.to_str() else {
                break;
            };
            for hop in value.rsplit(',') {
                match hop.trim().parse::<std::net::IpAddr>() {
                    Ok(ip) => {
                        client = ip.to_canonical();
                        if !is_trusted(client) {
                            break 'walk;
                        }
                    }
                    Err(_) => break 'walk,
                }
            }
        }
        Some(client)
    }
}

impl Server {
    /// Binds with a default Bayeux server (the policy decides, connects held for the hold
    /// timeout).
    pub async fn bind(config: HttpConfig, engine: Engine) -> io::Result<Server> {
        let bayeux = BayeuxConfig {
            timeout: config.hold_timeout,
            ..BayeuxConfig::default()
        };
        Server::bind_configured(config, engine, bayeux).await
    }

    /// Binds with a Bayeux server built here with these budgets: the policy decides, and
    /// `/service/**` calls go to the application when `config.rpc` is set (through the same
    /// bound as `POST /rpc/…`).
    pub async fn bind_configured(
        config: HttpConfig,
        engine: Engine,
        bayeux: BayeuxConfig,
    ) -> io::Result<Server> {
        let parts = Parts::new(&config);
        let services: Arc<dyn Services> = match &parts.rpc {
            Some(rpc) => Arc::new(rpc.clone()),
            None => Arc::new(NoServices),
        };
        let bayeux = Bayeux::spawn(engine.clone(), bayeux, Arc::new(PolicyOnly), services);
        Server::assemble(config, engine, bayeux, parts)
    }

    /// Binds with a Bayeux server of the caller's (its own authorizer, services, budgets).
    /// `POST /rpc/…` still calls `config.rpc` when set.
    pub async fn bind_with(
        config: HttpConfig,
        engine: Engine,
        bayeux: Bayeux,
    ) -> io::Result<Server> {
        let parts = Parts::new(&config);
        Server::assemble(config, engine, bayeux, parts)
    }

    fn assemble(
        config: HttpConfig,
        engine: Engine,
        bayeux: Bayeux,
        parts: Parts,
    ) -> io::Result<Server> {
        let listener = listen(config.listen)?;
        let tls = match &config.tls {
            None => None,
            Some(tls) => {
                let (certificate, loaded) = Tls::load(tls).map_err(io::Error::other)?;
                tracing::info!(
                    cert = %loaded.cert.display(),
                    sha256 = %loaded.fingerprint,
                    chain = loaded.chain,
                    "tls: certificate loaded"
                );
                let listener = match tls.listen {
                    Some(addr) => Some(listen(addr)?),
                    None => None,
                };
                Some((listener, certificate))
            }
        };
        let (tls, certificate) = match tls {
            Some((listener, certificate)) => (listener, Some(certificate)),
            None => (None, None),
        };
        let (heartbeat, heartbeat_rx) = watch::channel(());
        let slots = Arc::new(Semaphore::new(config.max_connections));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        if let Some(webhooks) = config.webhooks.clone() {
            let events = webhooks.events;
            let observer = Webhooks::spawn(
                webhooks,
                parts.outbound.clone(),
                parts.metrics.clone(),
                shutdown.clone(),
                &tracker,
            );
            if engine.set_observer(Arc::new(observer), events).is_err() {
                shutdown.cancel();
                return Err(io::Error::other(
                    "the engine already tells another observer; webhooks need it",
                ));
            }
        }
        if let Some(auth) = config.auth.clone() {
            tracing::info!(url = %auth.url, "access: asking the application (auth-url)");
            if config.allowed_origins.is_empty() || config.allowed_origins.iter().any(|o| o == "*")
            {
                // auth-url forwards the caller's cookies, and "any origin" lets every page send
                // its visitors' cookies (cors.rs).
                tracing::warn!(
                    "allowed-origins is any origin: every web page can act with its visitors' cookies; set allowed-origins to your sites"
                );
            }
            let application = crate::auth::AuthUrl::new(auth, parts.outbound.clone());
            if engine.set_application(Arc::new(application)).is_err() {
                shutdown.cancel();
                return Err(io::Error::other(
                    "the engine already asks another application; auth-url needs it",
                ));
            }
        }
        let app = Arc::new(App {
            engine,
            bayeux,
            origins: Origins::new(&config.allowed_origins),
            config,
            metrics: parts.metrics,
            heartbeat: heartbeat_rx,
            shutdown,
            tracker,
            rpc: parts.rpc,
            dashboard: Default::default(),
            tls: certificate,
            latency: Default::default(),
        });
        crate::dashboard::install(&app);
        Ok(Server {
            listener,
            tls,
            app,
            heartbeat,
            slots,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address.
        self.listener.local_addr().unwrap()
    }

    /// The TLS-only listener's address, when there is one (the one port speaks TLS too,
    /// whenever a certificate is configured).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        // A bound listener always has a local address.
        self.tls.as_ref().map(|l| l.local_addr().unwrap())
    }

    /// The certificate TLS presents, to [`Tls::reload`] it (SIGHUP in the binary).
    pub fn tls(&self) -> Option<Tls> {
        self.app.tls.clone()
    }

    /// Cancel this token to stop the server; `run` then drains and returns.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.app.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then drains (bounded by the drain timeout).
    pub async fn run(self) {
        let Server {
            listener,
            tls,
            app,
            heartbeat,
            slots,
        } = self;
        let ticker = {
            let shutdown = app.shutdown.clone();
            let engine = app.engine.clone();
            let bayeux = app.bayeux.clone();
            let every = app.config.heartbeat_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            // Streams wait on their subscriber's signal only (stream.rs), and
                            // held Bayeux connects on their session's (`Bayeux::shutdown`).
                            engine.wake_subscribers();
                            bayeux.shutdown();
                            return;
                        }
                        _ = tick.tick() => {
                            let _ = heartbeat.send(());
                            engine.wake_subscribers();
                        }
                    }
                }
            })
        };
        loop {
            // Both listeners share the connection cap and the drain.
            let accepted = tokio::select! {
                _ = app.shutdown.cancelled() => break,
                accepted = listener.accept() => accepted.map(|(stream, _)| (stream, None)),
                accepted = accept_tls(&tls, &app.tls) => accepted,
            };
            let (stream, secure) = match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            app.metrics.accepted.fetch_add(1, Ordering::Relaxed);
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                app.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                // A TLS client cannot read a plain 503: it is closed at once.
                if secure.is_none() {
                    tokio::spawn(reject(stream));
                }
                continue;
            };
            app.metrics.connections.fetch_add(1, Ordering::Relaxed);
            let slot = Arc::new(Slot {
                _permit: permit,
                metrics: app.metrics.clone(),
            });
            match secure {
                None => app.tracker.spawn(connection(app.clone(), stream, slot)),
                Some(tls) => app
                    .tracker
                    .spawn(secure::serve_tls(app.clone(), tls, stream, slot)),
            };
        }
        drop(listener);
        drop(tls);
        app.tracker.close();
        if tokio::time::timeout(app.config.drain_timeout, app.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = app.tracker.len(),
                "drain timeout: dropping connections still open"
            );
        }
        ticker.abort();
    }
}

/// The next connection on the TLS-only listener, with its certificate; never, without one.
async fn accept_tls(
    listener: &Option<TcpListener>,
    tls: &Option<Tls>,
) -> io::Result<(TcpStream, Option<Tls>)> {
    match (listener, tls) {
        (Some(listener), Some(tls)) => {
            let (stream, _) = listener.accept().await?;
            Ok((stream, Some(tls.clone())))
        }
        _ => std::future::pending().await,
    }
}

async fn reject(mut stream: TcpStream) {
    let body = r#"{"error":"too many connections; retry later"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REJECT_WRITE_TIMEOUT, stream.write_all(response.as_bytes())).await;
}

pub(crate) enum Head {
    /// The connection closed or timed out before a full head; nothing to answer.
    Gone,
    TooLarge,
    Complete(BytesMut),
}

pub(crate) async fn read_head(stream: &mut (impl AsyncRead + Unpin), timeout: Duration) -> Head {
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            if buf.len() >= MAX_HEAD {
                return Head::TooLarge;
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Head::Gone,
                Ok(_) => {}
            }
            if head_ends(&buf) {
                return Head::Complete(std::mem::take(&mut buf));
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Head::Gone)
}

/// Whether `buf` holds a whole head: an empty line, ended by CRLF or (as hyper and httparse
/// also accept) a bare LF.
fn head_ends(buf: &[u8]) -> bool {
    buf.windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && buf.get(i + 2) == Some(&b'\n')))
}

/// The first line of the HTTP/2 connection preface (RFC 9113 §3.4), sent by
/// `curl --http2-prior-knowledge`, h2load and gRPC clients.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// A head refused before anything is served: its status and the JSON error's text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) error: String,
    /// Answer in HTTP/1.0 (the request said so); HTTP/1.1 otherwise, also when the request
    /// line could not be read.
    http10: bool,
}

impl Refusal {
    fn bad(error: impl Into<String>) -> Refusal {
        Refusal {
            status: 400,
            error: error.into(),
            http10: false,
        }
    }
}

/// What a request head asks for.
pub(crate) enum Route {
    /// A malformed head (or one Halley does not serve): answered with this, then closed.
    Refuse(Refusal),
    /// The HTTP/2 connection preface (prior knowledge, h2c): as a connection's first bytes it
    /// is served by hyper's HTTP/2 server (`secure::serve_h2c`); after HTTP/1.1 requests on
    /// the same connection it is refused with HTTP/2's own words ([`refuse_http2`]).
    Http2,
    /// rupy's `Head: less` pull, with its query string.
    HeadlessPull(String),
    /// rupy's push: one that says `Head: less`, or a `POST` whose form follows the head with
    /// no `Content-Length` (rupy's own clients send both), or any push on a connection that
    /// spoke so before. Served by [`rupy_pushes`].
    RupyPush(Box<RupyPush>),
    /// A subscriber `GET`, or a Bayeux `POST` with a `Content-Length` body, served on the lean
    /// path. The buffer read so far holds `head_len` bytes of head, then the start of the body;
    /// `more` body bytes are still to be read.
    Lean {
        request: Box<Request<Full<Bytes>>>,
        keep_alive: bool,
        http10: bool,
        head_len: usize,
        more: usize,
    },
    /// Everything else: hyper serves the rest of the connection.
    Hyper,
}

/// A rupy push read on the lean path.
pub(crate) struct RupyPush {
    pub(crate) request: Request<Full<Bytes>>,
    /// It said `Head: less`: it, and every later push on its connection, is answered with
    /// rupy's minimal head.
    pub(crate) head_less: bool,
    pub(crate) keep_alive: bool,
    pub(crate) head_len: usize,
    /// The body's declared length; `None` for rupy's unframed form: the body is what follows
    /// the head (see [`unframed_body`]).
    pub(crate) length: Option<usize>,
}

/// Reads a connection's first head: refuses what is malformed (with a JSON error, which hyper's
/// own refusals lack), spots rupy's headerless pull and pushes, and picks the lean path or
/// hyper.
pub(crate) fn classify(head: &[u8], cometd_path: &str, body_limit: usize) -> Route {
    classify_on(head, cometd_path, body_limit, false)
}

/// [`classify`], on a connection that has already spoken rupy's push (`rupy`): every push on
/// it is rupy's.
pub(crate) fn classify_on(head: &[u8], cometd_path: &str, body_limit: usize, rupy: bool) -> Route {
    if head.starts_with(HTTP2_PREFACE) {
        return Route::Http2;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(head) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return Route::Refuse(Refusal::bad("malformed request head: incomplete"));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Route::Refuse(Refusal {
                status: 431,
                error: format!("more than {MAX_HEADERS} header fields"),
                http10: false,
            });
        }
        Err(httparse::Error::Version) => {
            return Route::Refuse(Refusal::bad(
                "malformed request line: HTTP/1.0 and HTTP/1.1 only",
            ));
        }
        Err(error) => {
            // httparse's words ("invalid header name", …) say which part: a header line
            // without a colon, a NUL, an obs-fold continuation line, a bad request line.
            return Route::Refuse(Refusal::bad(format!("malformed request head: {error}")));
        }
    };
    // A complete parse has all three.
    let (Some(method), Some(path), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Route::Refuse(Refusal::bad("malformed request line"));
    };
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let route = path.split_once('?').map_or(path, |(r, _)| r);
    // rupy's client sends its headerless pull without Host: it is not HTTP.
    if method == "GET"
        && routes::resolve(&Method::GET, route, cometd_path)
            .is_ok_and(|e| e.handler == Handler::Pull)
        && header("head").is_some_and(|v| v.eq_ignore_ascii_case(b"less"))
    {
        return Route::HeadlessPull(path.split_once('?').map_or("", |(_, q)| q).to_string());
    }
    let refuse = |mut refusal: Refusal| {
        refusal.http10 = version == 0;
        Route::Refuse(refusal)
    };
    let length = match framing(parsed.headers, version) {
        Ok(length) => length,
        Err(refusal) => return refuse(refusal),
    };
    // What hyper would refuse with an empty 400 is refused here, with words.
    if hyper::Uri::try_from(path).is_err() {
        return refuse(Refusal::bad("malformed request target"));
    }
    if !matches!(method, "GET" | "POST") {
        return Route::Hyper;
    }
    let method = if method == "GET" {
        Method::GET
    } else {
        Method::POST
    };
    // The same route table as the router's: the lean path serves only what it resolves to —
    // the held requests, whose idle cost it exists for. Everything else (publishes, the API,
    // assets) is hyper's: a request that is answered at once costs fewer instructions there
    // (a keep-alive publish: 29,300 with hyper, 33,300 on this path; callgrind, bench/README.md).
    let handler = routes::resolve(&method, route, cometd_path)
        .ok()
        .map(|e| e.handler);
    let connection = header("connection").map(|v| v.to_ascii_lowercase());
    let has = |token: &[u8]| {
        connection
            .as_ref()
            .is_some_and(|c| c.split(|b| *b == b',').any(|t| t.trim_ascii() == token))
    };
    let http10 = version == 0;
    let keep_alive = if http10 {
        has(b"keep-alive")
    } else {
        !has(b"close")
    };
    let extra = head.len() - len;
    if handler == Some(Handler::Push)
        && header("transfer-encoding").is_none()
        && header("upgrade").is_none()
        && header("expect").is_none()
    {
        let head_less = header("head").is_some_and(|v| v.eq_ignore_ascii_case(b"less"));
        // A POST without Content-Length has no body in HTTP (RFC 9112 §6.3); rupy's clients
        // send their form after such a head all the same. A push whose message is in its
        // query string needs no body: it is read the HTTP way.
        let query = path.split_once('?').map_or("", |(_, q)| q);
        let has_message = form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "message");
        let unframed = method == Method::POST && length.is_none() && !has_message;
        let length = if unframed {
            None
        } else {
            Some(length.unwrap_or(0))
        };
        if (head_less || unframed || rupy)
            && length.is_none_or(|n| extra <= n)
            && let Some(request) = build_request(method.clone(), path, http10, parsed.headers)
        {
            return Route::RupyPush(Box::new(RupyPush {
                request,
                head_less,
                keep_alive,
                head_len: len,
                length,
            }));
        }
    }
    let length = length.unwrap_or(0);
    let lean_route = match (&method, handler) {
        (&Method::GET, Some(Handler::Subscribe | Handler::Pull)) => length == 0,
        // Bayeux long-polling: the held connect is the idle cost of a Bayeux client.
        (&Method::POST, Some(Handler::Bayeux)) => {
            length <= body_limit && header("expect").is_none()
        }
        _ => false,
    };
    // Bytes beyond the body (a pipelined request) stay with hyper, which handles pipelining;
    // chunked bodies and upgrades too.
    if !lean_route
        || header("transfer-encoding").is_some()
        || header("upgrade").is_some()
        || extra > length
    {
        return Route::Hyper;
    }
    match build_request(method, path, http10, parsed.headers) {
        Some(request) => Route::Lean {
            request: Box::new(request),
            keep_alive,
            http10,
            head_len: len,
            more: length - extra,
        },
        // A header or URI that the http types refuse: let hyper give the proper error.
        None => Route::Hyper,
    }
}

/// The request a parsed head describes, with an empty body; `None` when the http types refuse
/// a header or the URI.
fn build_request(
    method: Method,
    path: &str,
    http10: bool,
    headers: &[httparse::Header<'_>],
) -> Option<Request<Full<Bytes>>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .version(if http10 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        });
    for h in headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    builder.body(Full::new(Bytes::new())).ok()
}

/// Checks what decides where a request ends and which host it is for (RFC 9112 §6.3, §3.2),
/// the fields whose misreading lets one request hide another (smuggling): `Host` exactly once
/// in HTTP/1.1, `Content-Length` a number that every occurrence agrees on, `Transfer-Encoding`
/// only `chunked`, only in HTTP/1.1 and never with a `Content-Length`. Returns the length.
fn framing(headers: &[httparse::Header<'_>], version: u8) -> Result<Option<usize>, Refusal> {
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    match (named("host").count(), version) {
        (0, 1) => return Err(Refusal::bad("an HTTP/1.1 request must carry a Host header")),
        (0 | 1, _) => {}
        _ => return Err(Refusal::bad("more than one Host header")),
    }
    let mut length = None;
    for value in named("content-length").flat_map(|v| v.split(|b| *b == b',')) {
        let value = value.trim_ascii();
        let n = std::str::from_utf8(value)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| Refusal::bad("malformed Content-Length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(Refusal::bad("conflicting Content-Length headers"));
        }
        length = Some(n);
    }
    let codings: Vec<&[u8]> = named("transfer-encoding")
        .flat_map(|v| v.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    if let Some(last) = codings.last() {
        if version == 0 {
            return Err(Refusal::bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if length.is_some() {
            return Err(Refusal::bad(
                "both Content-Length and Transfer-Encoding: send one",
            ));
        }
        if !last.eq_ignore_ascii_case(b"chunked") {
            return Err(Refusal::bad(
                "Transfer-Encoding must end with chunked (the body's length is unknown)",
            ));
        }
        if codings.len() > 1 {
            return Err(Refusal {
                status: 501,
                error: "only the chunked transfer coding is supported".into(),
                http10: false,
            });
        }
    }
    Ok(length)
}

/// Answers a refused head with its JSON error and closes the connection.
async fn refuse(mut stream: TcpStream, refusal: Refusal) {
    let body = serde_json::json!({ "error": refusal.error }).to_string();
    let reason = hyper::StatusCode::from_u16(refusal.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let response = format!(
        "HTTP/1.{} {} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        if refusal.http10 { 0 } else { 1 },
        refusal.status,
        body.len()
    );
    let written =
        tokio::time::timeout(REJECT_WRITE_TIMEOUT, stream.write_all(response.as_bytes())).await;
    if matches!(written, Ok(Ok(()))) {
        linger(stream).await;
    }
}

/// The HTTP/2 refusal, for a preface sent after HTTP/1.1 requests on one connection (RFC 9113
/// §3.4 allows it only first): a server preface (an empty SETTINGS frame) and a GOAWAY with
/// the error code HTTP_1_1_REQUIRED (RFC 9113 §7), whose debug data says so.
async fn refuse_http2(mut stream: TcpStream) {
    const HTTP_1_1_REQUIRED: u32 = 0xd;
    let debug = b"HTTP/1.1 only";
    let mut frames = BytesMut::with_capacity(9 + 9 + 8 + debug.len());
    // SETTINGS: length 0, type 0x4, no flags, stream 0.
    frames.put_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    // GOAWAY: type 0x7 on stream 0; the last stream processed (none), the code, the text.
    let length = (8 + debug.len()) as u32;
    frames.put_slice(&length.to_be_bytes()[1..]);
    frames.put_slice(&[0x7, 0, 0, 0, 0, 0]);
    frames.put_u32(0);
    frames.put_u32(HTTP_1_1_REQUIRED);
    frames.put_slice(debug);
    let written = tokio::time::timeout(REJECT_WRITE_TIMEOUT, stream.write_all(&frames)).await;
    if matches!(written, Ok(Ok(()))) {
        linger(stream).await;
    }
}

/// Closes after a refusal without losing it: ends the sending side, then reads and drops what
/// the client still sends (bounded) until it closes too. Closing at once with unread bytes in
/// the socket makes the kernel send a reset, which can destroy the answer before the client
/// has read it.
async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut scratch = [0u8; 1024];
    let mut left = LINGER_BYTES;
    let drain = async {
        while left > 0 {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(REJECT_WRITE_TIMEOUT, drain).await;
}

/// The first byte of a TLS record that carries a handshake (RFC 8446 §5.1, `handshake(22)`):
/// every TLS connection opens with one (its ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

enum Opening {
    Tls,
    Plain,
    /// Closed, or silent for the header timeout, or the server is draining.
    Gone,
}

/// How a connection on the one port opens, seen without reading it (`peek`): a TLS handshake,
/// or anything else (plain HTTP, the HTTP/2 preface).
async fn opens_tls(stream: &TcpStream, app: &App) -> Opening {
    let mut first = [0u8; 1];
    let peek = tokio::time::timeout(app.config.header_timeout, stream.peek(&mut first));
    tokio::select! {
        peeked = peek => match peeked {
            Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => Opening::Tls,
            Ok(Ok(1)) => Opening::Plain,
            _ => Opening::Gone,
        },
        _ = app.shutdown.cancelled() => Opening::Gone,
    }
}

async fn connection(app: Arc<App>, mut stream: TcpStream, slot: Arc<Slot>) {
    let _ = stream.set_nodelay(true);
    // With a certificate, the one port speaks TLS too: a connection whose first byte opens a
    // TLS handshake is hyper's, under rustls (no HTTP/1.1 request starts with that byte).
    if app.tls.is_some() {
        match Box::pin(opens_tls(&stream, &app)).await {
            Opening::Tls => {
                if let Some(tls) = app.tls.clone() {
                    return Box::pin(secure::serve_tls(app, tls, stream, slot)).await;
                }
            }
            Opening::Plain => {}
            Opening::Gone => return,
        }
    }
    let head = loop {
        // Each step is boxed: tokio stores a task's whole future, sized for its largest state,
        // for as long as the connection lives; unboxed, hyper's connection and every handler
        // would make each idle subscriber carry ~6 KiB of space it never uses.
        // The select is boxed with it: a shutdown watch and a peer watch inline in this future
        // sized every held subscriber's task for them (~0.4 KiB, dhat).
        let read = Box::pin(async {
            let read = read_head(&mut stream, app.config.header_timeout);
            // An idle keep-alive connection waiting for its next request must not hold the
            // drain.
            tokio::select! {
                head = read => head,
                _ = app.shutdown.cancelled() => Head::Gone,
            }
        });
        let mut head = match read.await {
            Head::Gone => return,
            Head::TooLarge => return Box::pin(refuse(stream, head_too_large())).await,
            Head::Complete(head) => head,
        };
        // What the lean path writes, whichever way it was made: one write below for every
        // arm, so that their heads and bodies share one place in this future (an arm with a
        // write of its own sized every connection's task for both: +128 bytes per idle
        // subscriber, dhat).
        let (response_head, body, keep_alive, chunked) =
            match classify(&head, &app.config.cometd_path, app.config.body_limit) {
                Route::Refuse(refusal) => {
                    app.metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
                    return Box::pin(refuse(stream, refusal)).await;
                }
                Route::Http2 => return Box::pin(secure::serve_h2c(app, stream, head, slot)).await,
                Route::HeadlessPull(query) => {
                    // Nothing of the head may stay allocated while the pull lasts (1 KiB per idle
                    // `Head: less` pull, measured with bench/idle_rss.py).
                    drop(head);
                    let Some((head, body)) =
                        Box::pin(open_raw_pull(&app, &mut stream, query)).await
                    else {
                        return;
                    };
                    // The lean path's writer, from this future as for every held response: a
                    // future of the pull's own around it cost each idle pull 0.5 KiB (RSS).
                    (head, body, false, true)
                }
                Route::RupyPush(push) => {
                    return Box::pin(rupy_pushes(app, stream, head, push, slot)).await;
                }
                Route::Lean {
                    mut request,
                    keep_alive,
                    http10,
                    head_len,
                    more,
                } => {
                    if head.len() > head_len || more > 0 {
                        // The body follows the head: what was read with it, then the rest.
                        let mut body = head.split_off(head_len);
                        if more > 0 {
                            // A slow body is bounded like a slow head (slowloris).
                            let reading = read_more(&mut stream, &mut body, more);
                            // Boxed: a timer inline would size this task's future for its
                            // whole life.
                            let reading =
                                Box::pin(tokio::time::timeout(app.config.header_timeout, reading));
                            match reading.await {
                                Ok(Ok(())) => {}
                                _ => return,
                            }
                        }
                        *request.body_mut() = Full::new(body.freeze());
                    }
                    // Nothing may keep the head buffer (or a slice of it) past this point: it
                    // would stay allocated for as long as the response streams (regression: an
                    // empty split-off tail kept 1 KiB per idle subscriber alive).
                    drop(head);
                    // Out of its box in a block of its own: a box moved out of is freed at the end
                    // of its scope, and this arm's scope lasts as long as the response (~0.25 KiB
                    // per idle subscriber, dhat).
                    // Marked inside the block too: a local borrowed in this arm's scope would keep
                    // its room (the whole request, 256 bytes) across the awaits below (dhat: +0.25
                    // KiB per idle subscriber).
                    let request = {
                        let boxed = request;
                        let mut request = *boxed;
                        mark_peer(&app, &stream, &mut request);
                        request
                    };
                    let handling = Box::pin(app::handle(&app, request));
                    let Some(response) = until_peer_closes(&stream, handling).await else {
                        return;
                    };
                    let keep_alive = keep_alive && !app.shutdown.is_cancelled();
                    // Decided by a plain function that consumes the response: the response
                    // borrowed here would keep its room in this future for the connection's
                    // life (dhat, debug build: 288 → 424 bytes).
                    match lean_head(response, keep_alive, http10) {
                        Lean::Plain(head, body, keep_alive, chunked) => {
                            (head, body, keep_alive, chunked)
                        }
                        Lean::Direct(head, body, chunked, offer) => {
                            let stall = app.config.write_stall_timeout;
                            let writer = direct_writer(stream, head, body, chunked, offer, stall);
                            // This task ends here and the stream lives on in one the size of
                            // its writer: the connection's future and the writer's box cost
                            // each idle subscriber ~1 KiB together (dhat), this ~0.6.
                            // A combinator, not an async block: that would keep the writer
                            // twice (the captured one and the awaited one; dhat: 1,150 B).
                            let done = move |_| drop(slot);
                            app.tracker
                                .spawn(futures_util::FutureExt::map(writer, done));
                            return;
                        }
                    }
                }
                Route::Hyper => break head,
            };
        match Box::pin(write_response(
            Sock::Borrowed(&stream),
            response_head,
            body,
            keep_alive,
            chunked,
            app.config.write_stall_timeout,
        ))
        .await
        {
            Ok(true) if keep_alive && !app.shutdown.is_cancelled() => continue,
            _ => return,
        }
    };
    Box::pin(serve_hyper(app, stream, head, slot)).await;
}

/// The refusal of a request head longer than [`MAX_HEAD`], on the first request of a
/// connection or a later one.
fn head_too_large() -> Refusal {
    Refusal {
        status: 431,
        error: format!("request head larger than {MAX_HEAD} bytes"),
        http10: false,
    }
}

/// Bayeux (long-polling POSTs) bounds handshakes per peer address; nothing else on the lean
/// path needs it. Out of line: inline, its temporaries sized every idle subscriber's task.
#[inline(never)]
fn mark_peer(app: &App, stream: &TcpStream, request: &mut Request<Full<Bytes>>) {
    if request.uri().path().starts_with(&*app.config.cometd_path)
        && let Ok(peer) = stream.peer_addr()
    {
        request.extensions_mut().insert(Peer(peer.ip()));
    }
}

/// Hands the connection to hyper, with the head already read put back in front (the same
/// serving as a TLS connection's HTTP/1.1: `secure::serve_http1`).
async fn serve_hyper(app: Arc<App>, stream: TcpStream, head: BytesMut, slot: Arc<Slot>) {
    let peer = stream.peer_addr().ok().map(|a| Peer(a.ip()));
    let io = TokioIo::new(Rewind {
        prefix: head.freeze(),
        inner: stream,
    });
    crate::secure::serve_http1(app, io, peer, slot).await;
}

/// Reads exactly `more` bytes onto `buf`.
async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut, more: usize) -> io::Result<()> {
    let target = buf.len() + more;
    buf.reserve(more);
    while buf.len() < target {
        // Never past the body: a pipelined request behind it stays in the socket.
        let left = (target - buf.len()) as u64;
        if (&mut *stream).take(left).read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// What a lean-path writer does next.
enum Next {
    /// Write this body data.
    Data(Bytes),
    /// Write the rest of a message a delivery began (`crate::direct`): these bytes.
    Rest(BytesMut),
    /// The body ended.
    End,
    /// The peer closed (or the socket failed).
    Closed,
}

/// The body's next data, or its end, or `Closed` once the peer has closed (or the socket
/// failed). Polled by hand rather than as a `select!` of `frame()` and a `peek`: the
/// peek's readiness future would sit in every held response's future (dhat: ~0.1 KiB per idle
/// subscriber), where `poll_peek` keeps its waker in the socket's own slot. A peer that sends
/// data instead (a pipelined request) is not closed; that data is read after the response.
fn next_data(cx: &mut Context<'_>, body: &mut Body, stream: &TcpStream) -> Poll<Next> {
    loop {
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => return Poll::Ready(Next::Data(data)),
                // Trailers: the lean path sends none.
                Err(_) => continue,
            },
            Poll::Ready(None | Some(Err(_))) => return Poll::Ready(Next::End),
            Poll::Pending => break,
        }
    }
    let mut byte = [0u8; 1];
    match stream.poll_peek(cx, &mut ReadBuf::new(&mut byte)) {
        Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(Next::Closed),
        Poll::Ready(Ok(_)) | Poll::Pending => Poll::Pending,
    }
}

/// Runs `work` unless the peer goes away first, which cancels it (and so unsubscribes). A
/// `poll_fn` over two pointers, polled by hand as [`next_data`] is: a `select!` with a `peek`
/// kept the peek's readiness future beside the work, a boxed 312 bytes in every held request
/// (dhat), where `poll_peek` keeps its waker in the socket's own slot. Nothing
/// else reads the socket meanwhile: the request was read whole before the handler began.
fn until_peer_closes<'a, F: Future + ?Sized + 'a>(
    stream: &'a TcpStream,
    mut work: Pin<Box<F>>,
) -> impl Future<Output = Option<F::Output>> + 'a {
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        let mut byte = [0u8; 1];
        match stream.poll_peek(cx, &mut ReadBuf::new(&mut byte)) {
            Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(None),
            // Data instead (a pipelined request): read after the response.
            Poll::Ready(Ok(_)) | Poll::Pending => Poll::Pending,
        }
    })
}

/// `write_all`, bounded by the write stall timeout.
async fn write_all(
    stream: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    stall: Duration,
) -> io::Result<()> {
    bounded(stall, stream.write_all(bytes))
        .await
        .unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into()))
}

/// `write_all_buf` (vectored when the socket supports it), bounded by the write stall timeout.
async fn write_all_buf(
    stream: &mut (impl AsyncWrite + Unpin),
    buf: &mut impl Buf,
    stall: Duration,
) -> io::Result<()> {
    bounded(stall, stream.write_all_buf(buf))
        .await
        .unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into()))
}

/// Runs a write; only one that cannot finish at once gets a timer, of `stall`
/// ([`HttpConfig::write_stall_timeout`]; WebSocket frames follow the same rule through
/// `transport::ws::Sending`). `None` when it made no progress for that long. Nearly every write
/// fits the socket buffer, and arming a timeout for each cost ~450 instructions per delivery
/// (callgrind).
async fn bounded<F: Future>(stall: Duration, write: F) -> Option<F::Output> {
    let mut write = std::pin::pin!(write);
    if let Poll::Ready(result) =
        std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await
    {
        return Some(result);
    }
    // Boxed, so that the timer takes no room in a held response's future until it is needed.
    Box::pin(tokio::time::timeout(stall, write)).await.ok()
}

/// The status line and headers of a lean-path response. Consumes the parts so that nothing of
/// them stays alive while the body streams.
fn encode_head(
    parts: hyper::http::response::Parts,
    length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
    http10: bool,
) -> BytesMut {
    let mut head = BytesMut::with_capacity(512);
    let status = parts.status;
    head.put_slice(
        format!(
            // As hyper does for the requests it serves: an HTTP/1.0 client is answered in
            // HTTP/1.0, so that every endpoint says the same.
            "{} {} {}\r\n",
            if http10 { "HTTP/1.0" } else { "HTTP/1.1" },
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in &parts.headers {
        head.put_slice(name.as_str().as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
    // RFC 9110 §6.6.1, and what hyper sends on the requests it serves.
    head.put_slice(b"date: ");
    put_date(&mut head);
    head.put_slice(b"\r\n");
    match length {
        Some(n) => head.put_slice(format!("content-length: {n}\r\n").as_bytes()),
        None if chunked => head.put_slice(b"transfer-encoding: chunked\r\n"),
        None => {}
    }
    head.put_slice(if keep_alive {
        &b"\r\n"[..]
    } else {
        &b"connection: close\r\n\r\n"[..]
    });
    head
}

/// Writes the current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), formatted once
/// per second per thread, as hyper does for its responses.
fn put_date(out: &mut BytesMut) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.put_slice(text.as_bytes());
    });
}

/// A lean-path response's head, its body, whether the connection may be kept, and whether the
/// body goes chunked. Done before [`write_response`]'s future exists, so that the response's
/// headers take no room in it for as long as a stream lasts.
fn response_head(
    response: Response<Body>,
    keep_alive: bool,
    http10: bool,
) -> (BytesMut, Body, bool, bool) {
    framed_head(response, keep_alive, http10, false)
}

/// [`response_head`], with a body of unknown length delimited by the connection's close
/// rather than chunked when `until_close` (RFC 9112 §6.3, the last rule; then the connection is
/// not kept).
fn framed_head(
    response: Response<Body>,
    keep_alive: bool,
    http10: bool,
    until_close: bool,
) -> (BytesMut, Body, bool, bool) {
    let (parts, body) = response.into_parts();
    let length = body.size_hint().exact();
    let chunked = length.is_none() && !http10 && !until_close;
    let keep_alive = keep_alive && (length.is_some() || chunked);
    (
        encode_head(parts, length, chunked, keep_alive, http10),
        body,
        keep_alive,
        chunked,
    )
}

/// A lean-path response, ready to write: on the connection's socket (its head, its body,
/// whether the connection may be kept, whether the body goes chunked), or on a socket shared
/// with the hub's deliveries (`crate::direct`), when the response offers that.
enum Lean {
    Plain(BytesMut, Body, bool, bool),
    Direct(BytesMut, Body, bool, direct::Offer),
}

fn lean_head(mut response: Response<Body>, keep_alive: bool, http10: bool) -> Lean {
    match response.extensions_mut().remove::<direct::Offer>() {
        Some(offer) => {
            // The connection ends with the stream: the socket is shared from now on. So an
            // event stream needs no chunks: its body is delimited by the close, as an
            // EventSource expects anyway (it never reuses the connection), and every event
            // costs each client and proxy one framing less to undo (and the delivering loop
            // one iovec instead of three). `transport=stream` stays chunked: it is the
            // chunked-streaming technique by name, and what its clients parse.
            let until_close = offer.frames == direct::Frames::Sse;
            let (head, body, _, chunked) = framed_head(response, false, http10, until_close);
            Lean::Direct(head, body, chunked, offer)
        }
        None => {
            let (head, body, keep_alive, chunked) = response_head(response, keep_alive, http10);
            Lean::Plain(head, body, keep_alive, chunked)
        }
    }
}

/// The writer of a response whose socket is shared with the hub's deliveries: the socket is
/// lent to the hub here, and the writer's future holds it.
fn direct_writer(
    stream: TcpStream,
    head: BytesMut,
    body: Body,
    chunked: bool,
    offer: direct::Offer,
    stall: Duration,
) -> impl Future<Output = io::Result<bool>> + Send {
    let socket = Arc::new(direct::Socket::new(stream, offer.frames, chunked));
    offer.slot.attach(socket.clone());
    let sock = Sock::Direct(socket, offer.slot);
    write_response(sock, head, body, false, chunked, stall)
}

/// Writes a response on the lean path: `Content-Length` for whole bodies, chunked (or, for
/// HTTP/1.0, close-delimited) for streams. Returns whether the connection may be reused.
/// On a socket shared with the hub's deliveries (`crate::direct`), the socket is taken back
/// from them before every write.
async fn write_response(
    sock: Sock<'_>,
    head: BytesMut,
    mut body: Body,
    keep_alive: bool,
    chunked: bool,
    stall: Duration,
) -> io::Result<bool> {
    let (stream, direct) = match &sock {
        Sock::Borrowed(stream) => (*stream, None),
        Sock::Direct(socket, slot) => (&socket.stream, Some((slot, &**socket))),
    };
    let mut writer = direct::Shared(stream);
    write_all(&mut writer, &head, stall).await?;
    drop(head);
    loop {
        let next = std::future::poll_fn(|cx| {
            if let Some((slot, socket)) = direct {
                match slot.poll_take(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some((message, written))) => {
                        let mut rest = socket.encode(&message);
                        let _ = rest.split_to((written as usize).min(rest.len()));
                        return Poll::Ready(Next::Rest(rest));
                    }
                    Poll::Ready(None) => {}
                }
            }
            next_data(cx, &mut body, stream)
        })
        .await;
        let data = match next {
            Next::Data(data) => data,
            Next::Rest(rest) => {
                write_all(&mut writer, &rest, stall).await?;
                continue;
            }
            Next::End => break,
            Next::Closed => return Ok(false),
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            // Size line, data, CRLF in one vectored write: no copy of the (shared) data.
            let mut size = [0u8; 18];
            let n = chunk_size_line(data.len(), &mut size);
            let mut chunk = Buf::chain(Buf::chain(&size[size.len() - n..], data), &b"\r\n"[..]);
            write_all_buf(&mut writer, &mut chunk, stall).await?;
        } else {
            write_all(&mut writer, &data, stall).await?;
        }
    }
    if chunked {
        write_all(&mut writer, b"0\r\n\r\n", stall).await?;
    }
    Ok(keep_alive)
}

/// The socket a lean-path response is written to: the connection's own, or one shared with
/// the hub's deliveries (`crate::direct`) for as long as the stream lasts (the connection ends
/// with it). Held by the writer's future itself, so that no wrapper future (and its copy of
/// the arguments) sits in every idle subscriber's task.
enum Sock<'a> {
    Borrowed(&'a TcpStream),
    Direct(Arc<direct::Socket>, halley_engine::direct::SinkSlot),
}

/// Writes `len` in hex and CRLF at the end of `out`; returns how many bytes that took.
pub(crate) fn chunk_size_line(len: usize, out: &mut [u8; 18]) -> usize {
    let mut at = out.len() - 2;
    out[at..].copy_from_slice(b"\r\n");
    let mut n = len;
    loop {
        at -= 1;
        out[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.len() - at
}

/// rupy's minimal head (what rupy sends for `Head: less`): the status line, the framing
/// (`Content-Length`, else `Transfer-Encoding: chunked`) and the content type; no `Date`,
/// `Server`, `Connection` or cookies.
fn minimal_head(status: hyper::StatusCode, length: Option<usize>, content_type: &[u8]) -> BytesMut {
    let mut head = BytesMut::with_capacity(128);
    head.put_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    match length {
        Some(n) => head.put_slice(format!("Content-Length: {n}\r\n").as_bytes()),
        None => head.put_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    head.put_slice(b"Content-Type: ");
    head.put_slice(content_type);
    head.put_slice(b"\r\n\r\n");
    head
}

/// A JSON error under rupy's minimal head, in one write.
fn minimal_error(status: hyper::StatusCode, error: &str) -> BytesMut {
    let body = serde_json::json!({ "error": error }).to_string();
    let mut out = minimal_head(status, Some(body.len()), b"application/json");
    out.put_slice(body.as_bytes());
    out
}

/// Opens rupy's `Head: less` pull: rupy's minimal head and the chunks to follow it (rupy's
/// clients read the chunk framing), with TCP_NODELAY (set on every connection). A refusal is
/// written here, a JSON error under the same head, and the connection closes.
async fn open_raw_pull(
    app: &Arc<App>,
    stream: &mut TcpStream,
    query: String,
) -> Option<(BytesMut, Body)> {
    let opened = {
        let query = Query::parse(Some(&query));
        rupy::open_pull(app, &hyper::HeaderMap::new(), &query).await
    };
    match opened {
        // Then written by the lean path's writer: chunk-framed (rupy's ActionScript client
        // splits each read on CRLF and shows the odd elements; size line, data and CRLF go in
        // one write), ended with the last chunk, and ended early when the client goes away.
        Ok((sub, wire)) => Some((
            minimal_head(hyper::StatusCode::OK, None, wire.content_type().as_bytes()),
            crate::body::streaming(crate::transport::chunks(app, sub, wire, Kind::Pull, false)),
        )),
        Err(error) => {
            let refusal = minimal_error(error.status(), &error.to_string());
            let _ = write_all(stream, &refusal, app.config.write_stall_timeout).await;
            None
        }
    }
}

/// Most bytes of a rupy push's unframed form body read at a time.
const UNFRAMED_READ: usize = 4096;

/// The body of a rupy push sent with no `Content-Length` (rupy's own clients): what came
/// after the head in the same read, else the first bytes to arrive (within the header
/// timeout), and whatever else has already arrived with them. There is no other end to find:
/// rupy's server reads it the same way, and its clients send each form in one write and the
/// next push only once this one is answered. More than `limit` bytes is refused.
async fn unframed_body(
    stream: &mut TcpStream,
    body: &mut BytesMut,
    limit: usize,
    timeout: Duration,
) -> Result<(), Refusal> {
    let too_large = || Refusal {
        status: 413,
        error: format!("body larger than {limit} bytes"),
        http10: false,
    };
    if body.is_empty() {
        body.reserve(UNFRAMED_READ);
        match tokio::time::timeout(timeout, stream.read_buf(body)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(Refusal::bad("the connection closed before the push's form")),
            Err(_) => {
                return Err(Refusal {
                    status: 408,
                    error: format!(
                        "no form body within {} s: send it right after the head (or with a Content-Length)",
                        timeout.as_secs()
                    ),
                    http10: false,
                });
            }
        }
    }
    loop {
        if body.len() > limit {
            return Err(too_large());
        }
        body.reserve(UNFRAMED_READ);
        match stream.try_read_buf(body) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(_) => return Err(Refusal::bad("the connection failed while reading the push")),
        }
    }
}

/// rupy's pushes, one after another on one connection, each answered before the next is read:
/// with rupy's minimal head once one said `Head: less` (its ActionScript client says it on the
/// first push only), else with the lean path's whole head. A request that is not a push hands
/// the connection to hyper.
async fn rupy_pushes(
    app: Arc<App>,
    mut stream: TcpStream,
    mut head: BytesMut,
    mut push: Box<RupyPush>,
    slot: Arc<Slot>,
) {
    let stall = app.config.write_stall_timeout;
    let mut minimal = false;
    loop {
        minimal |= push.head_less;
        let RupyPush {
            mut request,
            keep_alive,
            head_len,
            length,
            ..
        } = *push;
        let mut body = head.split_off(head_len);
        drop(head);
        let read = match length {
            Some(n) if n > app.config.body_limit => Err(Refusal {
                status: 413,
                error: format!("body larger than {} bytes", app.config.body_limit),
                http10: false,
            }),
            Some(n) => {
                let more = n - body.len();
                let reading = read_more(&mut stream, &mut body, more);
                match tokio::time::timeout(app.config.header_timeout, reading).await {
                    Ok(Ok(())) => Ok(()),
                    _ => return,
                }
            }
            None => {
                unframed_body(
                    &mut stream,
                    &mut body,
                    app.config.body_limit,
                    app.config.header_timeout,
                )
                .await
            }
        };
        if let Err(refusal) = read {
            app.metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
            if !minimal {
                return refuse(stream, refusal).await;
            }
            let status = hyper::StatusCode::from_u16(refusal.status)
                .unwrap_or(hyper::StatusCode::BAD_REQUEST);
            let answer = minimal_error(status, &refusal.error);
            if write_all(&mut stream, &answer, stall).await.is_ok() {
                linger(stream).await;
            }
            return;
        }
        *request.body_mut() = Full::new(body.freeze());
        let http10 = request.version() == Version::HTTP_10;
        let response = app::handle(&app, request).await;
        let keep_alive = keep_alive && !app.shutdown.is_cancelled();
        let written = if minimal {
            let (parts, body) = response.into_parts();
            let body = http_body_util::BodyExt::collect(body)
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let content_type = parts
                .headers
                .get(hyper::header::CONTENT_TYPE)
                .map_or(&b"application/json"[..], |v| v.as_bytes());
            // Head and body in one write: rupy's client sends its next push on each read.
            let mut answer = minimal_head(parts.status, Some(body.len()), content_type);
            answer.put_slice(&body);
            write_all(&mut stream, &answer, stall)
                .await
                .map(|()| keep_alive)
        } else {
            let (head, body, keep_alive, chunked) = response_head(response, keep_alive, http10);
            write_response(
                Sock::Borrowed(&stream),
                head,
                body,
                keep_alive,
                chunked,
                stall,
            )
            .await
        };
        if !matches!(written, Ok(true)) || app.shutdown.is_cancelled() {
            return;
        }
        let read = read_head(&mut stream, app.config.header_timeout);
        head = tokio::select! {
            head = read => match head {
                Head::Complete(head) => head,
                Head::Gone => return,
                Head::TooLarge => return refuse(stream, head_too_large()).await,
            },
            _ = app.shutdown.cancelled() => return,
        };
        push = match classify_on(&head, &app.config.cometd_path, app.config.body_limit, true) {
            Route::RupyPush(push) => push,
            Route::Refuse(refusal) => {
                app.metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
                return refuse(stream, refusal).await;
            }
            Route::Http2 => return refuse_http2(stream).await,
            // Anything else (a pull, a publish, a page): hyper serves the rest.
            _ => return serve_hyper(app, stream, head, slot).await,
        };
    }
}

/// A stream that yields `prefix` before reading from `inner`.
pub(crate) struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl Rewind {
    /// `inner`, with `prefix` (bytes already read from it) to be read first.
    pub(crate) fn new(prefix: Bytes, inner: TcpStream) -> Rewind {
        Rewind { prefix, inner }
    }

    /// The same socket with `before` to be read ahead of what is left of the prefix (what
    /// hyper read and did not use).
    pub(crate) fn after(mut self, before: Bytes) -> Rewind {
        if !before.is_empty() {
            let mut prefix = BytesMut::from(&before[..]);
            prefix.put_slice(&self.prefix);
            self.prefix = prefix.freeze();
        }
        self
    }

    /// The socket, once nothing read ahead is left to give back.
    pub(crate) fn into_stream(self) -> Result<TcpStream, Rewind> {
        if self.prefix.is_empty() {
            Ok(self.inner)
        } else {
            Err(self)
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Release the head buffer's memory for the rest of the connection's life.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Connections the kernel may queue before `accept` (the `listen(2)` backlog; the kernel caps it
/// at `net.core.somaxconn`, 4,096 here). `TcpListener::bind` asks for 128 (seen with `ss -ltn`);
/// when thousands of clients reconnect at once (a restart, a network blip) such a short queue
/// overflows and the dropped SYNs are retried only a second later (bench/README.md: 500
/// subscribers took 1.3 s to connect at 200 in flight). 4,096 is what Nchan's config asks for.
pub const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's and tokio's own bind do on Unix: a restarted server can rebind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Classifies `head`, with a `Host` header added to an HTTP/1.1 head that has none.
    fn check(head: &str, expected: &str) {
        let head = match head.split_once("HTTP/1.1\r\n") {
            Some((line, rest)) if !head.to_ascii_lowercase().contains("\nhost:") => {
                format!("{line}HTTP/1.1\r\nHost: h\r\n{rest}")
            }
            _ => head.to_string(),
        };
        check_exact(&head, expected);
    }

    fn check_exact(head: &str, expected: &str) {
        let got = match classify(head.as_bytes(), "/cometd", 100) {
            Route::HeadlessPull(q) => format!("headless {q}"),
            Route::RupyPush(p) => format!(
                "rupy push head_less={} length={:?} keep_alive={}",
                p.head_less, p.length, p.keep_alive
            ),
            Route::Lean {
                keep_alive,
                http10,
                more,
                ..
            } => format!("lean keep_alive={keep_alive} http10={http10} more={more}"),
            Route::Hyper => "hyper".to_string(),
            Route::Http2 => "http2".to_string(),
            Route::Refuse(r) => format!("{} {}", r.status, r.error),
        };
        assert_eq!(got, expected, "{head:?}");
    }

    #[test]
    fn routes_request_heads() {
        check(
            "GET /pull?name=a HTTP/1.1\r\nHead: less\r\n\r\n",
            "headless name=a",
        );
        check(
            "GET /pull?name=a HTTP/1.1\r\nhead: LESS\r\n\r\n",
            "headless name=a",
        );
        check(
            "GET /pull?name=a HTTP/1.1\r\nHost: x\r\n\r\n",
            "lean keep_alive=true http10=false more=0",
        );
        check("GET /pullx HTTP/1.1\r\nHead: less\r\n\r\n", "hyper");
        check("POST /pull HTTP/1.1\r\nHead: less\r\n\r\n", "hyper");
        check(
            "GET /sub/a HTTP/1.1\r\nConnection: close\r\n\r\n",
            "lean keep_alive=false http10=false more=0",
        );
        check(
            "GET /sub/a HTTP/1.0\r\n\r\n",
            "lean keep_alive=false http10=true more=0",
        );
        check(
            "GET /sub/a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
            "lean keep_alive=true http10=true more=0",
        );
        check("GET /sub/a HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", "hyper");
        check("GET /sub/a HTTP/1.1\r\nContent-Length: 3\r\n\r\n", "hyper");
        check(
            "GET /sub/a HTTP/1.1\r\n\r\nGET /sub/b HTTP/1.1\r\n\r\n",
            "hyper",
        );
        check("GET /pub/a HTTP/1.1\r\n\r\n", "hyper");
        check("GET /healthz HTTP/1.1\r\n\r\n", "hyper");
        check(
            "garbage\r\n\r\n",
            "400 malformed request head: invalid token",
        );
        // Bayeux long-polling: a POST on /cometd with a bounded Content-Length body.
        let lean = "lean keep_alive=true http10=false";
        check(
            "POST /cometd HTTP/1.1\r\nContent-Length: 10\r\n\r\n",
            &format!("{lean} more=10"),
        );
        check(
            "POST /cometd/connect HTTP/1.1\r\nContent-Length: 10\r\n\r\n[{}]",
            &format!("{lean} more=6"),
        );
        check(
            "POST /cometd HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]",
            &format!("{lean} more=0"),
        );
        check(
            "POST /cometd HTTP/1.1\r\nContent-Length: 101\r\n\r\n",
            "hyper",
        );
        check(
            "POST /cometd HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            "400 malformed Content-Length",
        );
        check(
            "POST /cometd HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "hyper",
        );
        check(
            "POST /cometd HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
            "hyper",
        );
        check(
            "POST /cometd HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]GET /",
            "hyper",
        );
        check(
            "POST /cometdx HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "hyper",
        );
        check("POST /pub/a HTTP/1.1\r\nContent-Length: 2\r\n\r\n", "hyper");
        // rupy's pushes: `Head: less`, or a POST whose form follows with no Content-Length.
        check(
            "POST /push HTTP/1.1\r\nHead: less\r\n\r\nname=a&message=b",
            "rupy push head_less=true length=None keep_alive=true",
        );
        check(
            "POST /push HTTP/1.1\r\n\r\nname=a&message=b",
            "rupy push head_less=false length=None keep_alive=true",
        );
        check(
            "GET /push?name=a&message=b HTTP/1.1\r\nHead: less\r\n\r\n",
            "rupy push head_less=true length=Some(0) keep_alive=true",
        );
        check(
            "POST /push HTTP/1.1\r\nHead: less\r\nContent-Length: 3\r\n\r\na=b",
            "rupy push head_less=true length=Some(3) keep_alive=true",
        );
        // An HTTP push: hyper's, as before (a message in the query string needs no body).
        check("GET /push?name=a&message=b HTTP/1.1\r\n\r\n", "hyper");
        check("POST /push?name=a&message=b HTTP/1.1\r\n\r\n", "hyper");
        check(
            "POST /push HTTP/1.1\r\nContent-Length: 3\r\n\r\na=b",
            "hyper",
        );
        check(
            "POST /push HTTP/1.1\r\nHead: less\r\nContent-Length: 1\r\n\r\na=b",
            "hyper",
        );
        check(
            "POST /push HTTP/1.1\r\nHead: less\r\nTransfer-Encoding: chunked\r\n\r\n",
            "hyper",
        );
        check("PUT /pub/a HTTP/1.1\r\nContent-Length: 2\r\n\r\n", "hyper");
        check("HEAD /sub/a HTTP/1.1\r\n\r\n", "hyper");
    }

    #[test]
    fn refuses_malformed_heads() {
        let bad = "400 malformed request head";
        let cases = [
            ("GET\r\n\r\n", &*format!("{bad}: invalid token")),
            (
                "GET /a HTTP/1.1 x\r\n\r\n",
                &format!("{bad}: invalid new line"),
            ),
            (
                "GET /a HTTP/2.0\r\n\r\n",
                "400 malformed request line: HTTP/1.0 and HTTP/1.1 only",
            ),
            (
                "GET /a HTTP/1.1\r\nBroken\r\n\r\n",
                &format!("{bad}: invalid header name"),
            ),
            (
                "GET /a HTTP/1.1\r\nX: a\0b\r\n\r\n",
                &format!("{bad}: invalid header value"),
            ),
            (
                "GET /a\0 HTTP/1.1\r\n\r\n",
                &format!("{bad}: invalid token"),
            ),
            (
                "GET /a HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
                &format!("{bad}: invalid header name"),
            ),
            (
                "GET /a HTTP/1.1\r\n\r\n",
                "400 an HTTP/1.1 request must carry a Host header",
            ),
            (
                "GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                "400 more than one Host header",
            ),
            ("GET /a HTTP/1.0\r\n\r\n", "hyper"),
            (
                "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n",
                "400 malformed Content-Length",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                "400 malformed Content-Length",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "400 conflicting Content-Length headers",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\n",
                "400 conflicting Content-Length headers",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                "hyper",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
                "400 Transfer-Encoding must end with chunked (the body's length is unknown)",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "501 only the chunked transfer coding is supported",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
                "400 both Content-Length and Transfer-Encoding: send one",
            ),
            (
                "POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "400 Transfer-Encoding in an HTTP/1.0 request",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
                "hyper",
            ),
            ("PRI * HTTP/2.0\r\n\r\n", "http2"),
            // rupy's headerless pull is not HTTP, and its client sends no Host.
            (
                "GET /pull?name=a HTTP/1.1\r\nHead: less\r\n\r\n",
                "headless name=a",
            ),
        ];
        for (head, expected) in cases {
            check_exact(head, expected);
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X{i}: y\r\n")).collect();
        check_exact(
            &format!("GET /a HTTP/1.1\r\nHost: h\r\n{many}\r\n"),
            &format!("431 more than {MAX_HEADERS} header fields"),
        );
    }

    #[test]
    fn a_head_ends_at_an_empty_line() {
        assert!(head_ends(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(head_ends(b"GET / HTTP/1.1\n\n"));
        assert!(head_ends(b"GET / HTTP/1.1\nHost: h\n\r\n"));
        assert!(!head_ends(b"GET / HTTP/1.1\r\nHost: h\r\n"));
        assert!(!head_ends(b"GET / HTTP/1.1\r\n\r"));
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Regression: with hyper's connection and the handlers inline, the per-connection future
    /// was 6.3 KiB, paid by every idle subscriber (16 KiB per idle SSE subscriber in all). The
    /// sizes are a property of the compiled types, not of timing; the bound leaves room for
    /// compiler changes while catching an unboxed hyper path.
    #[tokio::test]
    async fn idle_subscriber_futures_stay_small() {
        let server = Server::bind(
            HttpConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..HttpConfig::default()
            },
            halley_engine::Engine::in_memory(Default::default()),
        )
        .await
        .unwrap();
        let app = server.app.clone();
        let client = TcpStream::connect(server.local_addr()).await.unwrap();
        let slot = Arc::new(Slot {
            _permit: server.slots.clone().try_acquire_owned().unwrap(),
            metrics: app.metrics.clone(),
        });
        let response = Response::new(crate::body::empty());
        let (head, body, keep_alive, chunked) = response_head(response, true, false);
        let writer = write_response(
            Sock::Borrowed(&client),
            head,
            body,
            keep_alive,
            chunked,
            crate::config::WRITE_STALL_TIMEOUT,
        );
        assert!(
            std::mem::size_of_val(&writer) < 1024,
            "write_response: {}",
            std::mem::size_of_val(&writer)
        );
        drop(writer);
        let request = Request::builder()
            .uri("/cometd")
            .body(Full::new(Bytes::new()))
            .unwrap();
        // A held long-poll or Bayeux connect lives in this future (it was 4 KiB before each
        // handler was boxed in `route`).
        let handling = app::handle(&app, request);
        assert!(
            std::mem::size_of_val(&handling) < 1536,
            "handle: {}",
            std::mem::size_of_val(&handling)
        );
        drop(handling);
        let conn = connection(app.clone(), client, slot);
        assert!(
            std::mem::size_of_val(&conn) < 1024,
            "connection: {}",
            std::mem::size_of_val(&conn)
        );
        let sub = app
            .engine
            .subscribe(halley_proto::Pattern::parse("/a").unwrap(), None)
            .await
            .unwrap();
        let chunks = crate::transport::chunks(
            &app,
            sub,
            crate::transport::Wire::Sse { json: false },
            Kind::Sse,
            false,
        );
        assert!(
            std::mem::size_of_val(&chunks) < 1024,
            "chunks: {}",
            std::mem::size_of_val(&chunks)
        );
    }
}
