//! `POST|PUT /pub/{channel}`.

use std::sync::Arc;

use crate::body::RequestBody;
use bytes::Bytes;
use halley_engine::Published;
use halley_engine::access::{Action, Via};
use halley_proto::{Channel, Payload, is_binary_type, push_json_string};
use http_body_util::{BodyExt, Limited};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response};

use crate::body::{Body, full};
use crate::error::ApiError;
use crate::query::Query;
use crate::state::App;

pub async fn publish<B: RequestBody>(
    app: &Arc<App>,
    channel: &str,
    request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let channel = Channel::parse(channel)?;
    let who = app
        .allow(
            request.headers(),
            &query,
            Action::Publish(&channel, Via::Http),
        )
        .await?;
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let body = read_body(app, request).await?;
    // The body's type is kept: JSON as JSON, images, sound, video and octet streams as bytes
    // with their type (`Payload::binary`), anything else as text.
    let payload = if content_type == "application/json" || content_type.ends_with("+json") {
        Payload::from_json(&body)?
    } else if is_binary_type(&content_type) {
        Payload::binary(&content_type, &body)
    } else {
        Payload::from_text(&body)?
    };
    let published = app.engine.publish_as(&who, channel, payload).await?;
    Ok(published_response(&published))
}

/// Reads a request body, refusing (413) anything over the body limit before reading it when
/// `Content-Length` says so, and while reading it otherwise.
pub async fn read_body<B: RequestBody>(app: &App, request: Request<B>) -> Result<Bytes, ApiError> {
    read_body_within(request, app.config.body_limit).await
}

/// [`read_body`] with a limit of its own (413 beyond `limit` bytes).
pub async fn read_body_within<B: RequestBody>(
    request: Request<B>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge(limit));
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge(limit)),
        Err(e) => Err(ApiError::BadRequest(format!("could not read body: {e}"))),
    }
}

/// `GET /pub/{channel}?data=<JSON>&callback=cb`: publishing for browsers without CORS, which can
/// only load scripts. Without a callback a GET is refused: a plain GET (a crawler, a prefetch)
/// must never publish.
pub async fn publish_jsonp<B: RequestBody>(
    app: &Arc<App>,
    channel: &str,
    request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let Some(callback) = query.callback()? else {
        return Err(ApiError::MethodNotAllowed);
    };
    app.origins.check_embedding(request.headers())?;
    let channel = Channel::parse(channel)?;
    let who = app
        .allow(
            request.headers(),
            &query,
            Action::Publish(&channel, Via::Http),
        )
        .await?;
    let data = query
        .get("data")
        .ok_or_else(|| ApiError::BadRequest("data (JSON) is required".into()))?;
    let payload = Payload::from_json(data.as_bytes())?;
    let published = app.engine.publish_as(&who, channel, payload).await?;
    Ok(crate::api::reply(
        &published_json(&published),
        Some(callback),
    ))
}

pub fn published_json(published: &Published) -> serde_json::Value {
    serde_json::json!({
        "channel": published.message.channel.as_str(),
        "id": published.message.id.to_string(),
        "subscribers": published.subscribers,
    })
}

/// The same object as [`published_json`], written directly: this answers every publish, and
/// building a `serde_json::Value` to print it cost ~8.7k instructions per publish (callgrind).
pub fn published_body(published: &Published) -> String {
    let channel = published.message.channel.as_str();
    let mut body = String::with_capacity(channel.len() + 80);
    body.push_str(r#"{"channel":"#);
    push_json_string(&mut body, channel);
    body.push_str(r#","id":""#);
    published.message.id.push_to(&mut body);
    body.push_str(r#"","subscribers":"#);
    body.push_str(itoa::Buffer::new().format(published.subscribers));
    body.push('}');
    body
}

pub fn published_response(published: &Published) -> Response<Body> {
    let mut response = Response::new(full(published_body(published)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
