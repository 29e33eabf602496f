//! Long-polling and JSONP: hold the request until at least one message (or the hold timeout),
//! then answer with everything available as one batch.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use halley_engine::{Event, Subscription};
use halley_proto::{MessageId, Pattern};
use hyper::Response;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};

use crate::body::{Body, full};
use crate::config::MAX_BATCH;
use crate::error::ApiError;
use crate::metrics::{Kind, Open};
use crate::state::App;

use super::stream::held_headers;

pub async fn hold(
    app: &Arc<App>,
    patterns: Vec<Pattern>,
    resume: Option<MessageId>,
    presence: Vec<super::Declaration>,
    callback: Option<String>,
) -> Result<Response<Body>, ApiError> {
    let kind = if callback.is_some() {
        Kind::Jsonp
    } else {
        Kind::LongPoll
    };
    let _open = Open::new(&app.metrics, kind);
    let mut sub = super::open(app, patterns, resume, presence).await?;
    let mut batch = BytesMut::from(&b"["[..]);
    let mut last = sub.position();
    let mut count = 0;
    let mut shutting_down = false;
    let first = tokio::select! {
        biased;
        _ = app.shutdown.cancelled() => { shutting_down = true; None }
        event = sub.next() => Some(event),
        _ = tokio::time::sleep(app.config.hold_timeout) => None,
    };
    if let Some(event) = first {
        let mut event = Some(event);
        while let Some(Event::Message(m)) = event {
            if count > 0 {
                batch.put_u8(b',');
            }
            batch.put_slice(m.json_object());
            last = Some(m.id);
            count += 1;
            if count == MAX_BATCH {
                break;
            }
            event = sub.try_next();
        }
    }
    batch.put_u8(b']');
    Ok(answer(app, &sub, batch, last, callback, shutting_down))
}

fn answer(
    app: &App,
    sub: &Subscription,
    batch: BytesMut,
    last: Option<MessageId>,
    callback: Option<String>,
    shutting_down: bool,
) -> Response<Body> {
    let last_text = last.map(|id| id.to_string());
    let (content_type, body) = match callback {
        None => ("application/json", batch.freeze()),
        Some(cb) => {
            // Script tags cannot read headers, so the position and gap ride in a second
            // argument: f(messages, {last_id, gap}).
            let meta = serde_json::json!({ "last_id": last_text, "gap": sub.gap() });
            let mut out = BytesMut::new();
            out.put_slice(b"/**/");
            out.put_slice(cb.as_bytes());
            out.put_u8(b'(');
            out.put_slice(&batch);
            out.put_u8(b',');
            out.put_slice(meta.to_string().as_bytes());
            out.put_slice(b");");
            ("application/javascript; charset=utf-8", out.freeze())
        }
    };
    let jsonp = content_type.starts_with("application/javascript");
    let mut response = Response::new(full(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    held_headers(headers, sub.gap());
    if jsonp {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let Some(id) = last_text.and_then(|t| HeaderValue::from_str(&t).ok()) {
        headers.insert("x-halley-last-id", id);
    }
    if shutting_down {
        let secs = app.config.retry.as_secs().max(1).to_string();
        headers.insert(
            "retry-after",
            HeaderValue::from_str(&secs).unwrap_or(HeaderValue::from_static("1")),
        );
    }
    response
}
