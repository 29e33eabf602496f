//! `POST|PUT /pub/{channel}`.

use std::sync::Arc;

use crate::body::RequestBody;
use bytes::Bytes;
use halley_engine::Published;
use halley_engine::access::{Action, Via};
use halley_engine::idempotency::{self, Claim, Keyed};
use halley_proto::{Channel, Meta, Payload, is_binary_type, push_json_string};
use http_body_util::{BodyExt, Limited};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response};

use crate::body::{Body, full};
use crate::error::ApiError;
use crate::query::Query;
use crate::state::App;

/// The longest `ttl=` a message may be given, in seconds (a year; its channel's history keeps
/// it no longer than the channel's own TTL anyway).
pub const MAX_MESSAGE_TTL: u64 = 365 * 24 * 3600;

/// `type=` and `ttl=`: what the publisher says besides the data ([`Meta`]).
fn meta(query: &Query) -> Result<Option<Box<Meta>>, ApiError> {
    let kind = match query.get("type") {
        None => None,
        Some(kind) if halley_proto::valid_type(kind) => Some(Box::<str>::from(kind)),
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "type is 1 to {} characters of A-Z a-z 0-9 _ . : -",
                halley_proto::MAX_TYPE_LEN
            )));
        }
    };
    let expires_ms = match query.get("ttl") {
        None => None,
        Some(text) => {
            let ttl = text
                .parse::<u64>()
                .ok()
                .filter(|t| (1..=MAX_MESSAGE_TTL).contains(t))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "ttl is a number of seconds, 1 to {MAX_MESSAGE_TTL}"
                    ))
                })?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            Some(now + ttl * 1000)
        }
    };
    Ok((kind.is_some() || expires_ms.is_some()).then(|| Box::new(Meta { kind, expires_ms })))
}

/// Most channels one `POST /pub` publishes to (the path's and `channel=` parameters): each is
/// a policy decision and a broker round trip made while the publisher waits.
pub const MAX_PUBLISH_CHANNELS: usize = 16;

/// `POST /pub/{channel}[?channel=…]`: the body to one channel or (with `channel=` parameters)
/// to several, each with its own id; with `Idempotency-Key`, once however often it is sent
/// within the window ([`halley_engine::idempotency`]).
pub async fn publish<B: RequestBody>(
    app: &Arc<App>,
    channel: &str,
    request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let mut channels = vec![Channel::parse(channel)?];
    for name in query.get_all("channel") {
        let channel = Channel::parse(name)?;
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    if channels.len() > MAX_PUBLISH_CHANNELS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_PUBLISH_CHANNELS} channels per publish"
        )));
    }
    let meta = meta(&query)?;
    let key = match request.headers().get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|k| idempotency::valid_key(k))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "Idempotency-Key is 1 to {} characters of visible ASCII",
                        idempotency::MAX_KEY_LEN
                    ))
                })?
                .to_owned(),
        ),
    };
    // Every channel is decided before anything is published: a publish refused on one
    // channel publishes on none.
    let mut allowed = Vec::with_capacity(channels.len());
    for channel in channels {
        if channel.is_meta() || channel.is_service() {
            return Err(halley_engine::EngineError::Reserved(channel).into());
        }
        let who = app
            .allow(
                request.headers(),
                &query,
                Action::Publish(&channel, Via::Http),
            )
            .await?;
        allowed.push((channel, who));
    }
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
    let Some(key) = key else {
        return publish_all(app, allowed, payload, meta)
            .await
            .map(json_response);
    };
    let scope = match &allowed[0].1 {
        who if who.backend => "b".to_owned(),
        who => match &who.user {
            Some(user) => format!("u:{user}"),
            None => "a".to_owned(),
        },
    };
    let names = allowed.iter().map(|(c, _)| c.as_str());
    // What was published: the data, and its type and time to live as asked (not the expiry,
    // which a retry computes anew).
    let published = format!(
        "{}\0{}\0{}",
        query.get("type").unwrap_or(""),
        query.get("ttl").unwrap_or(""),
        payload.json()
    );
    let keyed = Keyed::new(&scope, &key, names, &published);
    match app.engine.claim_key(&keyed).await? {
        Claim::Fresh => {}
        Claim::Done(answer) => {
            let mut response = json_response(answer);
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
        Claim::Pending => {
            return Err(ApiError::Conflict(
                "a publish with this Idempotency-Key is under way; retry for its answer".into(),
            ));
        }
        Claim::Mismatch => {
            return Err(ApiError::Unprocessable(
                "this Idempotency-Key was used for another publish (other channels or data)".into(),
            ));
        }
    }
    // Released if this future is dropped before it settles (the publisher went away): a
    // retry then publishes, rather than waiting out the window.
    let mut claim = Held {
        app: app.clone(),
        keyed: Some(keyed),
    };
    let result = publish_all(app, allowed, payload, meta).await;
    let keyed = claim.keyed.take().expect("settled once");
    app.engine
        .settle_key(&keyed, result.as_ref().ok().map(String::as_str))
        .await;
    result.map(json_response)
}

/// A claimed idempotency key not settled yet.
struct Held {
    app: Arc<App>,
    keyed: Option<Keyed>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(keyed) = self.keyed.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let app = self.app.clone();
            runtime.spawn(async move { app.engine.settle_key(&keyed, None).await });
        }
    }
}

/// Publishes `payload` to each channel (in order) and returns the answer's body: one
/// channel's `{"channel","id","subscribers"}`, or `{"published":[…]}` for several. A failure
/// part way stops there and says which were published.
async fn publish_all(
    app: &App,
    allowed: Vec<(Channel, halley_engine::access::Principal)>,
    payload: Payload,
    meta: Option<Box<Meta>>,
) -> Result<String, ApiError> {
    if allowed.len() == 1 {
        let (channel, who) = allowed.into_iter().next().expect("one");
        let published = app
            .engine
            .publish_as_with(&who, channel, payload, meta)
            .await?;
        return Ok(published_body(&published));
    }
    let mut done = Vec::with_capacity(allowed.len());
    for (channel, who) in allowed {
        let published = app
            .engine
            .publish_as_with(&who, channel, payload.clone(), meta.clone())
            .await;
        match published {
            Ok(published) => done.push(published_json(&published)),
            Err(e) if done.is_empty() => return Err(e.into()),
            Err(e) => {
                let e = ApiError::from(e);
                return Err(ApiError::Unavailable(format!(
                    "{e}; published before it: {}",
                    serde_json::Value::Array(done)
                )));
            }
        }
    }
    Ok(serde_json::json!({ "published": done }).to_string())
}

fn json_response(body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
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
