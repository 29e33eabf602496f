//! Connections served by hyper alone: TLS (its handshake, then HTTP/2 or HTTP/1.1 as ALPN
//! chose) and cleartext HTTP/2 with prior knowledge (h2c).
//!
//! Neither goes through the lean path of `server.rs`: that path reads and writes HTTP/1.1 on
//! the TCP socket itself (its idle cost, and the hub's direct writes, depend on that). Here
//! every request is hyper's, every response body is polled by hyper, and a stream is written
//! by its own task; `direct::Offer`s are ignored as on hyper's HTTP/1.1 path.
//!
//! **Invariant:** every write here is bounded by the write-stall timeout too: the socket under
//! TLS or HTTP/2 is a [`Stalling`], which fails a write that makes no progress for that long,
//! so a client that stops reading frees its connection as on the lean path.
//!
//! **Boundary:** WebSocket is HTTP/1.1 only (RFC 8441, WebSocket over HTTP/2, is not
//! offered: no `SETTINGS_ENABLE_CONNECT_PROTOCOL`): a browser opens `wss://` on a connection
//! of its own, negotiated `http/1.1`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::header::{COOKIE, HeaderValue};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::app;
use crate::config::MAX_HEAD;
use crate::server::{Peer, Slot};
use crate::state::App;
use crate::tls::Tls;

/// Most streams a client may have open at once on one HTTP/2 connection (the
/// `SETTINGS_MAX_CONCURRENT_STREAMS` Halley announces). RFC 9113 §6.5.2 advises no fewer than
/// 100; a browser holding more EventSources than this to one origin queues the rest until one
/// closes. The connection cap (`max-connections`) counts connections, not streams: one
/// connection may hold this many subscribers.
pub const MAX_H2_STREAMS: u32 = 100;

/// Bytes of response data hyper's HTTP/2 server accepts from one stream ahead of what the
/// client's flow-control window lets it send. hyper's default is 400 KiB per stream; a
/// subscriber's backlog already waits in its own bounded queue (`queue-capacity`), so this
/// only needs to keep the socket busy.
pub const H2_SEND_BUFFER: usize = 64 * 1024;

/// Serves a TLS connection: the handshake (bounded by the header timeout, like a request head:
/// a client that opens a connection and says nothing is the same slowloris), then HTTP/2 when
/// the client offered `h2`, HTTP/1.1 otherwise.
pub(crate) async fn serve_tls(app: Arc<App>, tls: Tls, stream: TcpStream, slot: Arc<Slot>) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok().map(|a| Peer(a.ip()));
    let io = Stalling::new(stream, app.config.write_stall_timeout);
    let handshake = tokio::time::timeout(app.config.header_timeout, tls.acceptor().accept(io));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                app.metrics
                    .tls_handshake_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(%error, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        },
        _ = app.shutdown.cancelled() => return,
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    if h2 {
        serve_h2(app, TokioIo::new(stream), peer, slot).await;
    } else {
        serve_http1(app, TokioIo::new(stream), peer, slot).await;
    }
}

/// Serves cleartext HTTP/2 begun with the connection preface (prior knowledge: `curl
/// --http2-prior-knowledge`, h2load, gRPC). `read` is what the lean path read of it already.
pub(crate) async fn serve_h2c(
    app: Arc<App>,
    stream: TcpStream,
    read: bytes::BytesMut,
    slot: Arc<Slot>,
) {
    let peer = stream.peer_addr().ok().map(|a| Peer(a.ip()));
    let io = crate::server::Rewind::new(read.freeze(), stream);
    let io = Stalling::new(io, app.config.write_stall_timeout);
    serve_h2(app, TokioIo::new(io), peer, slot).await;
}

/// The service every hyper connection runs: the peer's address and the connection's slot in
/// each request's extensions, then the router.
fn service(
    app: &Arc<App>,
    peer: Option<Peer>,
    slot: Arc<Slot>,
) -> impl hyper::service::Service<
    Request<hyper::body::Incoming>,
    Response = hyper::Response<crate::body::Body>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<hyper::Response<crate::body::Body>, std::convert::Infallible>>
             + Send
             + 'static,
> + Clone {
    let app = app.clone();
    service_fn(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(slot.clone());
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        if request.version() == Version::HTTP_2 {
            join_cookies(request.headers_mut());
        }
        let app = app.clone();
        async move { Ok::<_, std::convert::Infallible>(app::handle(&app, request).await) }
    })
}

/// HTTP/2 lets a client split `Cookie` into one field per cookie (RFC 9113 §8.2.3, browsers
/// do); they are joined again with `"; "` before anything reads them, as the RFC asks of a
/// server handing them on, so that every reader (auth-url's forwarded cookies, Bayeux's
/// browser cookie) sees one field as over HTTP/1.1.
fn join_cookies(headers: &mut hyper::HeaderMap) {
    if headers.get_all(COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for value in headers.get_all(COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, value);
    }
}

/// hyper's HTTP/2 server on `io` until the connection ends; on shutdown it sends GOAWAY and
/// lets the open streams end (each held response says goodbye as on HTTP/1.1).
async fn serve_h2<I>(app: Arc<App>, io: TokioIo<I>, peer: Option<Peer>, slot: Arc<Slot>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service(&app, peer, slot);
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        // The same bound on a request's header fields as on an HTTP/1.1 head.
        .max_header_list_size(MAX_HEAD as u32)
        .max_send_buf_size(H2_SEND_BUFFER)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "HTTP/2 connection ended with an error");
            }
        }
        _ = app.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// hyper's HTTP/1.1 server (with upgrades: WebSocket, `wss://`) on a TLS connection, or on a
/// plain one the lean path handed over (`server::serve_hyper`).
pub(crate) async fn serve_http1<I>(
    app: Arc<App>,
    io: TokioIo<I>,
    peer: Option<Peer>,
    slot: Arc<Slot>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service(&app, peer, slot);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // Later heads on the connection get the same 16 KiB bound as the first (hyper answers
        // 431 above it).
        .max_buf_size(MAX_HEAD)
        // No `max_headers`: hyper then parses into a zeroed array on every request (~700
        // instructions of a keep-alive publish, callgrind); its own bound of 100 stands.
        .header_read_timeout(app.config.header_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        }
        _ = app.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A socket whose writes fail with `TimedOut` once one has made no progress for `stall`
/// (`HttpConfig::write_stall_timeout`): the lean path's `bounded`, for connections whose
/// writes hyper and rustls make. The timer exists only while a write is blocked.
pub(crate) struct Stalling<S> {
    inner: S,
    stall: Duration,
    blocked: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Stalling<S> {
    pub(crate) fn new(inner: S, stall: Duration) -> Stalling<S> {
        Stalling {
            inner,
            stall,
            blocked: None,
        }
    }

    /// What a write (or flush) returned, with the stall rule applied: progress clears the
    /// timer, `Pending` arms it (once) and fails when it fires.
    fn judge<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.blocked = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let stall = self.stall;
                let timer = self
                    .blocked
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stalling<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stalling<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.judge(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.judge(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.judge(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.judge(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cookies_are_joined_for_every_reader() {
        let check = |fields: &[&str], expected: Option<&str>| {
            let mut headers = hyper::HeaderMap::new();
            for field in fields {
                headers.append(COOKIE, HeaderValue::from_str(field).unwrap());
            }
            join_cookies(&mut headers);
            let all: Vec<_> = headers.get_all(COOKIE).iter().collect();
            match expected {
                None => assert!(all.is_empty()),
                Some(joined) => assert_eq!(all, [joined], "{fields:?}"),
            }
        };
        check(&[], None);
        check(&["a=1"], Some("a=1"));
        check(&["a=1", "BAYEUX_BROWSER=x"], Some("a=1; BAYEUX_BROWSER=x"));
        check(&["a=1; b=2", "c=3"], Some("a=1; b=2; c=3"));
    }

    /// A write that cannot proceed fails after the stall time, and only then.
    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_fails_after_the_stall() {
        use tokio::io::AsyncWriteExt;
        // A pipe of 64 bytes whose reader never reads.
        let (mut writer, _reader) = tokio::io::duplex(64);
        writer.write_all(&[0; 64]).await.unwrap();
        let mut stalling = Stalling::new(writer, Duration::from_secs(30));
        let started = tokio::time::Instant::now();
        let error = stalling.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }
}
