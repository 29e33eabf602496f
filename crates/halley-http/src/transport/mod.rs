//! `GET /sub/{channel}`: choose the transport from the request (DESIGN.md §3), subscribe with
//! resume, and answer in that transport's wire format.
//!
//! How each transport shows a gap (history could not cover a resume):
//! every HTTP transport sets the response header `X-Halley-Gap: true`; in-band, SSE sends an
//! `event: gap`, the JSON-framed transports (WebSocket, `format=json` streams, iframe,
//! multipart) send a control object `{"event":"gap",…}` first, and JSONP passes
//! `{"gap":true,…}` as the callback's second argument. Raw line streams have only the header.

mod poll;
mod stream;
mod ws;

use std::sync::Arc;

use crate::body::RequestBody;
use halley_proto::{MessageId, Pattern};
use hyper::header::{ACCEPT, HeaderMap, UPGRADE};
use hyper::{Request, Response};

use crate::app::App;
use crate::body::Body;
use crate::error::ApiError;
use crate::metrics::Kind;
use crate::query::{Query, valid_callback};

pub use stream::{Wire, chunks, held_headers, stream_response};
pub use ws::{accept_websocket, spawn_upgraded};

pub async fn subscribe<B: RequestBody>(
    app: &Arc<App>,
    channel: &str,
    request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let pattern = Pattern::parse(channel)?;
    let kind = select(request.headers(), &query)?;
    let resume = resume_id(request.headers(), &query, kind == Kind::Sse)?;
    let callback = || -> Result<String, ApiError> {
        let callback = query.get("callback").unwrap_or("");
        if !valid_callback(callback) {
            return Err(ApiError::BadRequest(
                "callback must match ^[A-Za-z_$][A-Za-z0-9_$.]{0,63}$".into(),
            ));
        }
        app.origins.check_embedding(request.headers())?;
        Ok(callback.to_string())
    };
    let json = query.get("format") == Some("json");
    let wire = match kind {
        Kind::WebSocket => return ws::upgrade(app, pattern, resume, request, &query).await,
        Kind::LongPoll => return poll::hold(app, pattern, resume, None).await,
        Kind::Jsonp => return poll::hold(app, pattern, resume, Some(callback()?)).await,
        Kind::Sse => Wire::Sse { json },
        Kind::Stream => Wire::Lines { json, skip: None },
        Kind::Iframe => Wire::Iframe {
            callback: callback()?,
        },
        Kind::Multipart => Wire::Multipart,
        Kind::Pull => unreachable!("select never picks pull"),
    };
    let sub = app.engine.subscribe(pattern, resume).await?;
    Ok(stream_response(app, sub, wire, kind))
}

fn select(headers: &HeaderMap, query: &Query) -> Result<Kind, ApiError> {
    let upgrade = headers.get(UPGRADE).and_then(|v| v.to_str().ok());
    if upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return Ok(Kind::WebSocket);
    }
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    if accept.is_some_and(|a| a.contains("text/event-stream")) && query.get("transport").is_none() {
        return Ok(Kind::Sse);
    }
    Ok(match query.get("transport") {
        None | Some("longpoll" | "long-polling" | "poll") => Kind::LongPoll,
        Some("sse" | "eventsource") => Kind::Sse,
        Some("stream") => Kind::Stream,
        Some("iframe") => Kind::Iframe,
        Some("multipart") => Kind::Multipart,
        Some("jsonp") => Kind::Jsonp,
        Some("websocket") => {
            return Err(ApiError::BadRequest(
                "transport=websocket needs an Upgrade: websocket request".into(),
            ));
        }
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown transport {other:?} (longpoll, jsonp, stream, iframe, multipart, sse, websocket)"
            )));
        }
    })
}

/// `Last-Event-ID` (sent by a reconnecting EventSource, newer than the URL's) wins over
/// `last_id`. A malformed id is refused rather than guessed at.
fn resume_id(headers: &HeaderMap, query: &Query, sse: bool) -> Result<Option<MessageId>, ApiError> {
    let header = sse
        .then(|| headers.get("last-event-id").and_then(|v| v.to_str().ok()))
        .flatten()
        .filter(|v| !v.is_empty());
    match header.or(query.get("last_id")).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("malformed last_id {text:?}"))),
    }
}

/// The control object sent in-band when a resume has a gap.
fn gap_object(sub: &halley_engine::Subscription) -> String {
    serde_json::json!({
        "event": "gap",
        "channel": sub.pattern().to_string(),
        "last_id": sub.position().map(|p| p.to_string()),
    })
    .to_string()
}
