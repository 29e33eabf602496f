//! Faye's `eventsource` connection type: `GET {cometd}/{clientId}` with
//! `Accept: text/event-stream` opens a stream of the session's messages, each batch one SSE
//! event whose data is a Bayeux JSON array. The client sends everything else — handshake,
//! subscribes, publishes, and connects with `connectionType: "eventsource"` that keep the
//! session alive — as long-polling requests, answered at once (`halley_engine::bayeux`).
//!
//! The stream is a persistent [`Link`] with no connect of its own ([`Link::stream`]): it
//! delivers as messages come, ends when the session ends or the client moves to another
//! connection type (a connect that takes delivery over), and heartbeats while idle.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use halley_engine::bayeux::{Browser, ConnectGuard, Link};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Request, Response};
use tokio::sync::watch;

use super::Output;
use crate::body::{Body, RequestBody, streaming};
use crate::error::ApiError;
use crate::metrics::{Kind, Open};
use crate::state::App;
use crate::transport::{fresh, held_headers};

/// Whether a `GET` on the Bayeux path asks for an event stream (as an EventSource does).
pub fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// Opens the stream for the session named by the path's last segment; 404 when there is no
/// such session (or it is bound to another browser): an EventSource that is refused does not
/// retry, and Faye falls back to long-polling.
pub async fn open<B: RequestBody>(
    app: &Arc<App>,
    request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let client_id = request
        .uri()
        .path()
        .strip_prefix(app.config.cometd_path.as_str())
        .map(|rest| rest.trim_matches('/'))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or_else(|| {
            ApiError::BadRequest("an event stream is opened at {path}/{clientId}".into())
        })?;
    let browser = super::browser_id(request.headers());
    let presented = browser
        .as_deref()
        .map_or(Browser::Unknown, Browser::Presented);
    let session = app
        .bayeux
        .stream_session(client_id, presented)
        .ok_or(ApiError::NotFound)?;
    drop(request);
    let mut link = Link::persistent();
    let mut first = Output::default();
    let guard = link.stream(session, &mut first.on(Kind::Sse));
    let retry_ms = u32::try_from(app.config.retry.as_millis()).unwrap_or(u32::MAX);
    let mut preamble = BytesMut::new();
    preamble.put_slice(format!("retry: {retry_ms}\n\n").as_bytes());
    if !first.is_empty() {
        event(first, &mut preamble);
    }
    let state = Stream {
        app: app.clone(),
        link,
        _guard: guard,
        heartbeat: fresh(&app.heartbeat),
        preamble: Some(preamble.freeze()),
        done: false,
        _open: Open::new(&app.metrics, Kind::Sse),
    };
    let chunks = futures_util::stream::unfold(state, |mut state| async move {
        let chunk = state.next().await?;
        Some((chunk, state))
    });
    let mut response = Response::new(streaming(chunks));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    held_headers(headers, false);
    Ok(response)
}

/// One batch as one SSE event: `data: [...]`. Bayeux JSON is compact: no line breaks.
fn event(batch: Output, out: &mut BytesMut) {
    out.put_slice(b"data: ");
    out.put_slice(&batch.finish());
    out.put_slice(b"\n\n");
}

struct Stream {
    app: Arc<App>,
    link: Link,
    /// Keeps the session from expiring while the stream is open.
    _guard: ConnectGuard,
    heartbeat: watch::Receiver<()>,
    preamble: Option<Bytes>,
    done: bool,
    _open: Open,
}

impl Stream {
    /// The next chunk: what opened the stream, a batch, a heartbeat; `None` once the session
    /// ended, another connection took it over, or the server is shutting down.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(preamble) = self.preamble.take() {
            return Some(preamble);
        }
        while !self.done {
            tokio::select! {
                biased;
                // The EventSource reconnects (`retry:`), to this node or another.
                _ = self.app.shutdown.cancelled() => return None,
                wake = self.link.wait(&self.app.bayeux) => {
                    let mut batch = Output::default();
                    self.link.wake(&self.app.bayeux, wake, &mut batch.on(Kind::Sse));
                    self.done = !self.link.delivering();
                    if !batch.is_empty() {
                        let mut out = BytesMut::new();
                        event(batch, &mut out);
                        return Some(out.freeze());
                    }
                }
                changed = self.heartbeat.changed() => {
                    self.done = changed.is_err();
                    return Some(Bytes::from_static(b":\n\n"));
                }
            }
        }
        None
    }
}
