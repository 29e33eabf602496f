//! The accept loop, per-connection budgets and graceful drain.
//!
//! Every connection first has its request head read here (bounded in size and time: the
//! slowloris guard), because rupy's `Head: less` pull must answer with no HTTP response at all,
//! which an HTTP library cannot express. Everything else is handed to hyper with the bytes
//! already read put back in front ([`Rewind`]).
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

use bytes::{Buf, Bytes, BytesMut};
use halley_engine::Engine;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{self, App};
use crate::config::MAX_HEAD;
use crate::cors::Origins;
use crate::metrics::{Kind, Metrics};
use crate::query::Query;
use crate::{HttpConfig, rupy};

/// After a failed `accept` (typically EMFILE at the file-descriptor limit), wait this long
/// before trying again instead of spinning on the error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a refused (503) connection gets to receive its answer.
const REJECT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
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

impl Server {
    pub async fn bind(config: HttpConfig, engine: Engine) -> io::Result<Server> {
        let listener = TcpListener::bind(config.listen).await?;
        let (heartbeat, heartbeat_rx) = watch::channel(());
        let slots = Arc::new(Semaphore::new(config.max_connections));
        let app = Arc::new(App {
            engine,
            origins: Origins::new(&config.allowed_origins),
            config,
            metrics: Arc::new(Metrics::default()),
            heartbeat: heartbeat_rx,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        Ok(Server {
            listener,
            app,
            heartbeat,
            slots,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address.
        self.listener.local_addr().unwrap()
    }

    /// Cancel this token to stop the server; `run` then drains and returns.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.app.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then drains (bounded by the drain timeout).
    pub async fn run(self) {
        let Server {
            listener,
            app,
            heartbeat,
            slots,
        } = self;
        let ticker = {
            let shutdown = app.shutdown.clone();
            let every = app.config.heartbeat_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tick.tick() => { let _ = heartbeat.send(()); }
                    }
                }
            })
        };
        loop {
            let accepted = tokio::select! {
                _ = app.shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, _peer) = match accepted {
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
                tokio::spawn(reject(stream));
                continue;
            };
            app.metrics.connections.fetch_add(1, Ordering::Relaxed);
            let slot = Arc::new(Slot {
                _permit: permit,
                metrics: app.metrics.clone(),
            });
            app.tracker.spawn(connection(app.clone(), stream, slot));
        }
        drop(listener);
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

async fn reject(mut stream: TcpStream) {
    let body = r#"{"error":"too many connections; retry later"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REJECT_WRITE_TIMEOUT, stream.write_all(response.as_bytes())).await;
}

enum Head {
    /// The connection closed or timed out before a full head; nothing to answer.
    Gone,
    TooLarge,
    Complete(BytesMut),
}

async fn read_head(stream: &mut TcpStream, timeout: Duration) -> Head {
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
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                return Head::Complete(std::mem::take(&mut buf));
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Head::Gone)
}

/// Whether the head is `GET /pull… ` with `Head: less`; returns the query string if so.
fn headless_pull(head: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    request.parse(head).ok()?;
    let path = request.path?;
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let less = request
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("head") && h.value.eq_ignore_ascii_case(b"less"));
    (request.method == Some("GET") && route == "/pull" && less).then(|| query.to_string())
}

async fn connection(app: Arc<App>, mut stream: TcpStream, slot: Arc<Slot>) {
    let _ = stream.set_nodelay(true);
    let head = match read_head(&mut stream, app.config.header_timeout).await {
        Head::Gone => return,
        Head::TooLarge => {
            let _ = stream
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 38\r\n\r\n{\"error\":\"request head is too large\"}\n")
                .await;
            return;
        }
        Head::Complete(head) => head,
    };
    if let Some(query) = headless_pull(&head) {
        raw_pull(&app, stream, &query).await;
        return;
    }
    let io = TokioIo::new(Rewind {
        prefix: head.freeze(),
        inner: stream,
    });
    let service_app = app.clone();
    let service = service_fn(move |mut request| {
        request.extensions_mut().insert(slot.clone());
        let app = service_app.clone();
        async move { Ok::<_, std::convert::Infallible>(app::handle(app, request).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
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

/// rupy's `Head: less` pull: message lines straight onto the socket, no HTTP framing.
async fn raw_pull(app: &Arc<App>, stream: TcpStream, query: &str) {
    let query = Query::parse(Some(query));
    let (mut reader, mut writer) = stream.into_split();
    let (sub, wire) = match rupy::open_pull(app, &query).await {
        Ok(opened) => opened,
        Err(error) => {
            // No headers to carry a status: the error object is the one line sent.
            let line = format!("{}\n", serde_json::json!({ "error": error.to_string() }));
            let _ = writer.write_all(line.as_bytes()).await;
            return;
        }
    };
    let mut chunks = std::pin::pin!(crate::transport::chunks(app, sub, wire, Kind::Pull));
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            chunk = futures_util::StreamExt::next(&mut chunks) => match chunk {
                Some(chunk) => {
                    if writer.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            // Anything the client sends is ignored; end of stream means it went away.
            read = reader.read(&mut scratch) => if matches!(read, Ok(0) | Err(_)) {
                return;
            },
        }
    }
}

/// A stream that yields `prefix` before reading from `inner`.
struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spots_headless_pulls() {
        let check = |head: &str, expected: Option<&str>| {
            assert_eq!(headless_pull(head.as_bytes()).as_deref(), expected, "{head:?}");
        };
        check("GET /pull?name=a HTTP/1.1\r\nHead: less\r\n\r\n", Some("name=a"));
        check("GET /pull?name=a HTTP/1.1\r\nhead: LESS\r\n\r\n", Some("name=a"));
        check("GET /pull?name=a HTTP/1.1\r\nHost: x\r\n\r\n", None);
        check("GET /pullx HTTP/1.1\r\nHead: less\r\n\r\n", None);
        check("POST /pull HTTP/1.1\r\nHead: less\r\n\r\n", None);
        check("garbage\r\n\r\n", None);
    }
}
