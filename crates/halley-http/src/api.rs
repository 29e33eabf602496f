//! What the browser client needs beyond subscribing and publishing: inboxes (unguessable client
//! addresses), presence listings, and JSONP answers for browsers without CORS
//! (clients/js/PROTOCOL.md).

use std::sync::Arc;

use bytes::Bytes;
use halley_engine::access::{Action, Via};
use halley_proto::{Channel, Pattern, Payload, inbox};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response};
use serde_json::{Value, json};

use crate::body::{Body, RequestBody, full};
use crate::error::ApiError;
use crate::publish::{published_json, read_body};
use crate::query::Query;
use crate::state::App;

/// A JSON answer, or `/**/cb(<json>);` when the request named a callback (script tags cannot
/// read anything else).
pub fn reply(value: &Value, callback: Option<&str>) -> Response<Body> {
    reply_json(value.to_string(), callback)
}

/// [`reply`] for JSON text already written. In a JSONP answer, U+2028 and U+2029 (line
/// terminators to older JavaScript, though not to JSON) and `<` are escaped
/// ([`crate::transport::put_script_safe`]).
pub fn reply_json(json: String, callback: Option<&str>) -> Response<Body> {
    let (body, content_type) = match callback {
        None => (Bytes::from(json), "application/json"),
        Some(cb) => {
            let mut out = bytes::BytesMut::with_capacity(json.len() + cb.len() + 8);
            out.extend_from_slice(b"/**/");
            out.extend_from_slice(cb.as_bytes());
            out.extend_from_slice(b"(");
            crate::transport::put_script_safe(json.as_bytes(), &mut out);
            out.extend_from_slice(b");");
            (out.freeze(), "application/javascript; charset=utf-8")
        }
    };
    let mut response = Response::new(full(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if callback.is_some() {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A JSONP request must come from an allowed origin, as for every other embedding.
fn jsonp<'q, B>(
    app: &App,
    query: &'q Query,
    request: &Request<B>,
) -> Result<Option<&'q str>, ApiError> {
    let callback = query.callback()?;
    if callback.is_some() {
        app.origins.check_embedding(request.headers())?;
    }
    Ok(callback)
}

/// `POST /api/inbox` (or `GET` with a callback): mints a secret and its address. The secret is
/// 128 bits from the thread-local CSPRNG (`rand`'s ChaCha, seeded by the OS).
pub fn mint<B: RequestBody>(app: &App, request: &Request<B>) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let callback = jsonp(app, &query, request)?;
    if request.method() == Method::GET && callback.is_none() {
        return Err(ApiError::MethodNotAllowed);
    }
    let secret = inbox::secret_from(rand::random::<u128>());
    let channel = inbox::channel_for(&secret).expect("a minted secret is well-formed");
    let value = json!({
        "secret": secret,
        "channel": channel.as_str(),
        "path": channel.as_str(),
    });
    Ok(reply(&value, callback))
}

/// `POST /inbox/{address}` or `GET /inbox/{address}?message=…&callback=…`: sends to an inbox.
pub async fn send<B: RequestBody>(
    app: &Arc<App>,
    address: &str,
    request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let mut query = Query::parse(request.uri().query());
    let callback = jsonp(app, &query, &request)?.map(str::to_string);
    let channel = Channel::parse(&format!("{}{address}", inbox::PREFIX))?;
    if address.len() != inbox::HEX_LEN || address.contains('/') {
        return Err(ApiError::NotFound);
    }
    let who = app
        .allow(
            request.headers(),
            &query,
            Action::Publish(&channel, Via::Http),
        )
        .await?;
    let payload = match *request.method() {
        // A script tag can only send a GET: `data` carries JSON, `message` text.
        Method::GET if callback.is_some() => match query.get("data") {
            Some(data) => Payload::from_json(data.as_bytes())?,
            None => Payload::string(message(&query)?),
        },
        Method::GET => return Err(ApiError::MethodNotAllowed),
        Method::POST => {
            let content_type = request
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            let body = read_body(app, request).await?;
            if content_type.starts_with("application/json") {
                Payload::from_json(&body)?
            } else if content_type.starts_with("application/x-www-form-urlencoded") {
                query.extend_form(&body);
                Payload::string(message(&query)?)
            } else {
                Payload::from_text(&body)?
            }
        }
        _ => return Err(ApiError::MethodNotAllowed),
    };
    let published = app.engine.publish_as(&who, channel, payload).await?;
    Ok(reply(&published_json(&published), callback.as_deref()))
}

fn message(query: &Query) -> Result<&str, ApiError> {
    query
        .get("message")
        .ok_or_else(|| ApiError::BadRequest("message is required".into()))
}

/// `GET /api/presence?channel=C` (its members) or `?prefix=P` (channels with members).
pub async fn presence<B: RequestBody>(
    app: &App,
    request: &Request<B>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let callback = jsonp(app, &query, request)?;
    let who = app.admit(request.headers(), &query)?;
    let value = match query.get("channel") {
        Some(name) => {
            let channel = Channel::parse(name)?;
            app.authorize(&who, Action::ReadPresence(&Pattern::Exact(channel.clone())))
                .await?;
            let members = app.engine.members(&channel).await?;
            json!({ "channel": channel.as_str(), "members": members })
        }
        None => {
            let prefix = query.get("prefix").unwrap_or("");
            app.authorize(&who, Action::ReadPresence(&covering(prefix)?))
                .await?;
            let rows: Vec<Value> = app
                .engine
                .presence(prefix)
                .await?
                .into_iter()
                .map(|(channel, members)| {
                    json!({ "channel": channel.as_str(), "count": members.len(), "members": members })
                })
                .collect();
            json!({ "channels": rows })
        }
    };
    Ok(reply(&value, callback))
}

/// The pattern a listing by name prefix can reveal: everything under the prefix's last `/`
/// (`/chat/` and `/chat/ro` → `/chat/**`; `/chat` → `/**`, since it also lists `/chatter`).
pub fn covering(prefix: &str) -> Result<Pattern, ApiError> {
    let parent = prefix.rfind('/').map_or("/", |i| &prefix[..=i]);
    Ok(Pattern::parse(&format!("{parent}**"))?)
}

/// Most messages `/api/history` returns at once, and how many without `limit`. A chat shows a
/// screenful of context; history itself keeps up to `--history-size`.
pub const MAX_HISTORY_LIMIT: usize = 100;
const DEFAULT_HISTORY_LIMIT: usize = 20;

/// `GET /api/history?channel=C[&limit=N]`: the newest messages of a channel, oldest first.
pub async fn history<B: RequestBody>(
    app: &App,
    request: &Request<B>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let callback = jsonp(app, &query, request)?;
    let name = query
        .get("channel")
        .ok_or_else(|| ApiError::BadRequest("channel is required".into()))?;
    let channel = Channel::parse(name)?;
    if channel.is_private() {
        return Err(ApiError::NotYours(format!("{channel} is an inbox")));
    }
    app.allow(request.headers(), &query, Action::History(&channel))
        .await?;
    let limit = match query.get("limit") {
        None => DEFAULT_HISTORY_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_HISTORY_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit must be 1 to {MAX_HISTORY_LIMIT}"))
            })?,
    };
    let messages = app.engine.recent(&channel, limit).await?;
    // Each message's object is already written (and shared with every transport): the
    // answer is put together from them, never parsed again, so it gives back exactly what
    // was published — member order and escapes included — and cannot fail on stored data.
    let mut body = String::with_capacity(
        64 + messages
            .iter()
            .map(|m| m.json_object().len() + 1)
            .sum::<usize>(),
    );
    body.push_str(r#"{"channel":"#);
    halley_proto::push_json_string(&mut body, channel.as_str());
    body.push_str(r#","messages":["#);
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        // A message object is UTF-8: written from a `String` in `Message::json_object`.
        body.push_str(&String::from_utf8_lossy(m.json_object()));
    }
    body.push_str("]}");
    Ok(reply_json(body, callback))
}
