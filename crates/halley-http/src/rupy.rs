//! rupy compatibility: `/push?name=&message=` and the Comet Stream `/pull?name=`.
//!
//! A push publishes `{"name":N,"message":M}` to the channel (default `/talk`), so the same
//! message reaches every other transport as an object. A pull is a chunked stream with one
//! message per `\n`-terminated line, never the puller's own: the pushed message text itself
//! (rupy's clients read it so), the object as compact JSON with `format=json`, or, for a
//! browser (`Accept: text/html`, or `format=html`), the text as a live HTML page in a sandbox.
//! Where the channel's namespace stamps messages with their sender (`stamp = true`), a push
//! with a token is published under the token's name, and with `"from"` like every publish.
//! With the request header `Head: less`, rupy's clients get rupy's minimal head (the status
//! line, the framing and the content type; nothing else): `server.rs` spots such pulls and
//! pushes before HTTP parsing, and reads a `POST /push` body that has no `Content-Length`.

use std::sync::Arc;

use crate::body::RequestBody;
use halley_engine::access::{Action, Via};
use halley_proto::{Channel, Pattern, Payload};
use hyper::HeaderMap;
use hyper::header::{
    ACCEPT, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Method, Request, Response};

use crate::body::Body;
use crate::config::MAX_NAME;
use crate::error::ApiError;
use crate::metrics::Kind;
use crate::publish::{published_response, read_body};
use crate::query::Query;
use crate::state::App;
use crate::transport::{PullForm, Wire, stream_response};

/// The channel rupy's talk uses when the request names none.
pub const DEFAULT_CHANNEL: &str = "/talk";

pub async fn push<B: RequestBody>(
    app: &Arc<App>,
    request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let mut query = Query::parse(request.uri().query());
    let headers = request.headers().clone();
    if request.method() == Method::POST {
        // rupy's own clients send their form with no Content-Type at all.
        let is_form = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.starts_with("application/x-www-form-urlencoded"));
        let body = read_body(app, request).await?;
        if is_form {
            query.extend_form(&body);
        }
    }
    let message = query
        .get("message")
        .ok_or_else(|| ApiError::BadRequest("message is required".into()))?;
    let channel = Channel::parse(query.get("channel").unwrap_or(DEFAULT_CHANNEL))?;
    let who = app
        .allow(&headers, &query, Action::Publish(&channel, Via::Http))
        .await?;
    // In a namespace that stamps its messages, a token holder's name is the one its token
    // gives (and `name` may be left out); the stamp adds "from" as on every other publish.
    let stamp = app.policy().stamp(&who, &channel);
    let signed = stamp.as_ref().and_then(|_| who.name());
    let name = match &signed {
        Some(signed) => signed,
        None => name(&query)?,
    };
    // Built by hand so that "name" comes first: pullers recognise their own messages by
    // that prefix without parsing every message (see `own_prefix`).
    let data = format!(
        "{}\"message\":{}}}",
        own_prefix(name),
        serde_json::to_string(message).unwrap()
    );
    // The text above is JSON by construction.
    let payload = Payload::from_json(data.as_bytes()).unwrap();
    let published = app.engine.publish_as(&who, channel, payload).await?;
    Ok(published_response(&published))
}

fn name(query: &Query) -> Result<&str, ApiError> {
    match query.get("name") {
        Some(n) if !n.is_empty() && n.len() <= MAX_NAME => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "name is required (1 to {MAX_NAME} bytes)"
        ))),
    }
}

/// The prefix of a pushed message's JSON that identifies its sender.
pub fn own_prefix(name: &str) -> String {
    // Serialising a &str cannot fail.
    format!("{{\"name\":{},", serde_json::to_string(name).unwrap())
}

/// The content security policy of a browser's pull: sandboxed without `allow-scripts` (no
/// script runs, not even a meta refresh, and the page has an opaque origin, so it holds no
/// cookie or storage of Halley's), and nothing fetched (`default-src 'none'`: a pushed
/// `<img src=/push?…>` reaches nobody). Inline styles may format.
pub const PULL_HTML_POLICY: &str =
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";

/// Which form a pull's lines take: `format=json|text|html|sse`, else Server-Sent Events for an
/// EventSource (it accepts `text/event-stream`), HTML for a browser (one that accepts
/// `text/html`: what a browser asks for when it opens a page), else the text.
pub fn pull_form(headers: &HeaderMap, query: &Query) -> Result<PullForm, ApiError> {
    match query.get("format") {
        Some("json") => Ok(PullForm::Json),
        Some("text") => Ok(PullForm::Text),
        Some("html") => Ok(PullForm::Html),
        Some("sse") => Ok(PullForm::Sse),
        Some(other) => Err(ApiError::BadRequest(format!(
            "unknown format {other:?} (text, json, html, sse)"
        ))),
        None => {
            let accepts = |what: &str| {
                headers
                    .get_all(ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains(what))
            };
            Ok(if accepts("text/event-stream") {
                PullForm::Sse
            } else if accepts("text/html") {
                PullForm::Html
            } else {
                PullForm::Text
            })
        }
    }
}

/// The subscription and wire format of a pull, shared by the HTTP and the `Head: less` form.
pub async fn open_pull(
    app: &App,
    headers: &HeaderMap,
    query: &Query,
) -> Result<(halley_engine::Subscription, Wire), ApiError> {
    let name = name(query)?;
    let form = pull_form(headers, query)?;
    let pattern = Pattern::parse(query.get("channel").unwrap_or(DEFAULT_CHANNEL))?;
    let who = app
        .allow(headers, query, Action::Subscribe(&pattern))
        .await?;
    let resume = match query.get("last_id").filter(|v| !v.is_empty()) {
        None => None,
        Some(text) => Some(
            text.parse()
                .map_err(|_| ApiError::BadRequest(format!("malformed last_id {text:?}")))?,
        ),
    };
    // `recent=N` (Halley's, not rupy's): the channel's newest messages first, as on /sub.
    let recent = crate::transport::recent(query, std::slice::from_ref(&pattern))?;
    let start = halley_engine::Start {
        resume,
        recent,
        added: Vec::new(),
    };
    let mut sub = app.engine.subscribe_from(vec![pattern], start).await?;
    sub.admitted_as(&who, Kind::Pull.name());
    let wire = Wire::Pull {
        form,
        skip: own_prefix(name).into(),
    };
    Ok((sub, wire))
}

pub async fn pull<B: RequestBody>(
    app: &Arc<App>,
    request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    if request.method() == Method::HEAD {
        // The same checks and policy decision as the pull's, without subscribing.
        name(&query)?;
        let form = pull_form(request.headers(), &query)?;
        let pattern = Pattern::parse(query.get("channel").unwrap_or(DEFAULT_CHANNEL))?;
        app.allow(request.headers(), &query, Action::Subscribe(&pattern))
            .await?;
        let wire = Wire::Pull {
            form,
            skip: "".into(),
        };
        let mut response = crate::transport::head_only(wire.content_type());
        sandbox(form, &mut response);
        return Ok(response);
    }
    let (sub, wire) = open_pull(app, request.headers(), &query).await?;
    let form = match &wire {
        Wire::Pull { form, .. } => *form,
        _ => PullForm::Text,
    };
    let mut response = stream_response(app, sub, wire, Kind::Pull);
    sandbox(form, &mut response);
    Ok(response)
}

/// A browser's pull shows what others pushed as HTML: sandboxed (see [`PULL_HTML_POLICY`]),
/// and never sniffed as anything else.
fn sandbox(form: PullForm, response: &mut Response<Body>) {
    if form == PullForm::Html {
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PULL_HTML_POLICY),
        );
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    }
}
