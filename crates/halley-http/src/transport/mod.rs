//! `GET /sub/{channel}`: choose the transport from the request (DESIGN.md §3), subscribe with
//! resume, and answer in that transport's wire format.
//!
//! How each transport shows a gap (history could not cover a resume):
//! every HTTP transport sets the response header `X-Halley-Gap: true`; in-band, SSE sends an
//! `event: gap`, the JSON-framed transports (WebSocket, `format=json` streams, iframe,
//! multipart) send a control object `{"event":"gap",…}` first, and JSONP passes
//! `{"gap":true,…}` as the callback's second argument. Raw line streams have only the header.
//!
//! The control API's notices (`halley_engine::control`) come in the same family: SSE `event:
//! disconnected` / `event: unsubscribed`, the control objects `{"event":"disconnected",
//! "reason":…}` / `{"event":"unsubscribed","channel":…}` on JSON-framed transports, and on
//! long-poll and JSONP the answer's headers and second argument (see `poll.rs`). A revocation
//! is said as a lapsed token is (`expired`).

mod font;
mod gif;
mod poll;
mod refresh;
mod stream;
mod ws;

pub(crate) use stream::put_script_safe;

use std::sync::Arc;

use crate::body::RequestBody;
use halley_engine::access::{Action, Verdict};
use halley_engine::{MAX_RECENT, Start, Subscription};
use halley_proto::{Channel, MessageId, Pattern, inbox};
use hyper::header::{ACCEPT, HeaderMap, UPGRADE};
use hyper::{Method, Request};

use crate::app::Handling;
use crate::error::ApiError;
use crate::metrics::Kind;
use crate::query::{Query, valid_callback};
use crate::state::App;

pub use stream::{PullForm, Wire, chunks, fresh, head_only, held_headers, stream_response};
#[cfg(feature = "autobahn")]
pub use ws::{AUTOBAHN_ECHO, echo};
pub use ws::{
    BAYEUX_PROTOCOLS, Ending, Ws, accept_websocket, refuse, spawn_upgraded, ws_text_head,
};

/// Most channels (or patterns) one `/sub` connection may ask for. A browser's connection carries
/// its rooms, its inbox and a few more; 16 keeps a resume (one history read per pattern) cheap.
pub const MAX_SUB_CHANNELS: usize = 16;

/// Most presence declarations on one connection.
pub const MAX_PRESENCE: usize = 16;

/// Largest `info` object of a presence declaration, in bytes of JSON. A name and a colour take
/// 40; 512 leaves room for an avatar URL without letting a member bloat every listing.
pub const MAX_PRESENCE_INFO: usize = 512;

/// `GET /sub/{channel}` and `GET /sub?channel=…&channel=…`: subscribe one connection to every
/// channel named (the path's and each `channel` parameter), with presence declarations and the
/// inbox secret when given (clients/js/PROTOCOL.md).
pub fn subscribe<'a, B: RequestBody>(
    app: &'a Arc<App>,
    channel: Option<String>,
    request: Request<B>,
) -> Handling<'a> {
    match prepare(app, channel, request) {
        Ok(handling) => handling,
        Err(e) => Box::pin(std::future::ready(Err(e))),
    }
}

/// Everything a `/sub` request decides (its channels, transport, resume point, presence, and
/// the policy's answer), done before any future exists: the held future of each transport
/// carries only what that transport needs — not the request, the query or the caller's
/// credentials (each word kept here is paid by every idle subscriber).
fn prepare<'a, B: RequestBody>(
    app: &'a Arc<App>,
    channel: Option<String>,
    request: Request<B>,
) -> Result<Handling<'a>, ApiError> {
    let query = Query::parse(request.uri().query());
    let patterns = patterns(channel.as_deref(), &query)?;
    let kind = select(request.headers(), &query)?;
    let start = start(request.headers(), &query, &patterns, kind)?;
    let presence = declarations(&query)?;
    // A GIF's parameters are checked before anything is asked or subscribed.
    let screen = match kind {
        Kind::Gif => Some(Box::new(gif::Screen::from_query(&query)?)),
        _ => None,
    };
    // One policy decision per channel and declaration, when the subscription starts; nothing
    // is checked per message. What the application decides is asked in a future of its own,
    // which only connections to such namespaces have.
    let who = app.admit(request.headers(), &query)?;
    let mut asks = Vec::new();
    let actions = patterns
        .iter()
        .map(Action::Subscribe)
        .chain(presence.iter().map(|d| Action::Presence(&d.channel)));
    for action in actions {
        if let Verdict::Ask(kind, channel) = app.judge(&who, action)? {
            asks.push((kind, channel));
        }
    }
    let admitted = Admitted {
        who,
        patterns,
        kind,
        start,
        presence,
        screen,
    };
    if asks.is_empty() {
        return dispatch(app, admitted, query, request);
    }
    Ok(Box::pin(async move {
        let mut admitted = admitted;
        for (kind, channel) in asks {
            let vouched = app.engine.ask(&admitted.who, kind, &channel).await?;
            admitted.who = halley_engine::access::vouched(&admitted.who, vouched);
        }
        dispatch(app, admitted, query, request)?.await
    }))
}

/// A `/sub` request the policy (and the application, where it decides) said yes to.
struct Admitted {
    who: halley_engine::access::Principal,
    patterns: Vec<Pattern>,
    kind: Kind,
    start: Start,
    presence: Vec<Declaration>,
    /// What a GIF shows and how (`transport=gif`).
    screen: Option<Box<gif::Screen>>,
}

/// The held future of the transport an admitted `/sub` request chose.
fn dispatch<'a, B: RequestBody>(
    app: &'a Arc<App>,
    admitted: Admitted,
    query: Query,
    request: Request<B>,
) -> Result<Handling<'a>, ApiError> {
    let Admitted {
        who,
        patterns,
        kind,
        start,
        mut presence,
        screen,
    } = admitted;
    // What the application vouches for (in the token, or in its answer) is who this member
    // is; a client cannot claim another name or colour.
    if let Some(info) = who
        .info
        .as_deref()
        .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
    {
        for d in &mut presence {
            d.info = info.clone();
        }
    }
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
    if request.method() == Method::HEAD {
        // The head a GET would get, after the same checks and policy decision; nothing is
        // subscribed and nothing held (an uptime checker's `curl -I`).
        let content_type = match kind {
            Kind::WebSocket => {
                return Err(ApiError::BadRequest(
                    "a WebSocket upgrade is a GET request".into(),
                ));
            }
            Kind::LongPoll => "application/json",
            Kind::Jsonp => {
                callback()?;
                "application/javascript; charset=utf-8"
            }
            Kind::Sse => Wire::Sse { json }.content_type(),
            Kind::Stream if query.get("binary") == Some("raw") => Wire::Raw.content_type(),
            Kind::Stream => Wire::Lines { json }.content_type(),
            Kind::Iframe => Wire::Iframe {
                callback: callback()?,
            }
            .content_type(),
            Kind::Multipart => Wire::Multipart { open: None }.content_type(),
            Kind::DomEvents => Wire::DomEvents.content_type(),
            Kind::Refresh => {
                refresh::Refresh::from_query(&patterns, &query, start.resume)?;
                "text/html; charset=utf-8"
            }
            Kind::Gif => "image/gif",
            Kind::Pull => unreachable!("select never picks pull"),
        };
        return Ok(Box::pin(std::future::ready(Ok(stream::head_only(
            content_type,
        )))));
    }
    let announce = announce(&query);
    let wire = match kind {
        Kind::WebSocket => {
            // `binary=frames`: binary bodies as binary frames of their bytes (a live image's
            // frames for a page that shows them); by default every message is its JSON object.
            let frames = ws::Frames {
                announce,
                binary: query.get("binary") == Some("frames"),
            };
            return Ok(Box::pin(ws::upgrade(
                app, patterns, start, presence, frames, request, who,
            )));
        }
        Kind::LongPoll | Kind::Jsonp => {
            let callback = match kind {
                Kind::Jsonp => Some(callback()?),
                _ => None,
            };
            let wait = match query.get("wait") {
                None => None,
                // Beyond u16, as long as the hold timeout anyway.
                Some(text) => Some(
                    text.parse::<u64>()
                        .map(|w| w.min(u16::MAX.into()) as u16)
                        .map_err(|_| {
                            ApiError::BadRequest(
                                "wait is a number of seconds (0: do not hold)".into(),
                            )
                        })?,
                ),
            };
            return Ok(Box::pin(poll::hold(
                app,
                Box::new(poll::Poll {
                    patterns,
                    start,
                    presence,
                    callback,
                    who,
                    wait,
                }),
            )));
        }
        Kind::Sse => Wire::Sse { json },
        Kind::Stream if query.get("binary") == Some("raw") => Wire::Raw,
        Kind::Stream => Wire::Lines { json },
        Kind::Iframe => Wire::Iframe {
            callback: callback()?,
        },
        Kind::Multipart => Wire::Multipart { open: None },
        Kind::DomEvents => Wire::DomEvents,
        Kind::Refresh => {
            let refresh = refresh::Refresh::from_query(&patterns, &query, start.resume)?;
            let path = request.uri().path().to_owned();
            let raw = request.uri().query().unwrap_or("").to_owned();
            drop((who, presence, request, screen));
            return Ok(Box::pin(async move {
                refresh::page(app, refresh, &path, &raw).await
            }));
        }
        Kind::Gif => match screen {
            Some(screen) => Wire::Gif(screen),
            None => unreachable!("prepare checks a GIF's parameters"),
        },
        Kind::Pull => unreachable!("select never picks pull"),
    };
    Ok(Box::pin(async move {
        let mut wire = wire;
        let mut start = start;
        if let Wire::Gif(screen) = &mut wire
            && start.resume.is_none()
        {
            start.resume = gif_backlog(app, &patterns, screen).await;
        }
        let mut sub = open(app, patterns, start, presence).await?;
        sub.admitted_as(&who, kind.name());
        drop(who);
        Ok(stream::stream_response_announcing(
            app, sub, wire, kind, announce,
        ))
    }))
}

/// A GIF opened with no resume point starts with the channel's last lines, as a chat box does:
/// the oldest of them is drawn in the first frame and the subscription resumes after it, so
/// the others come through history in order, and nothing published meanwhile is missed or
/// shown twice. Only for one exact public channel; with none (or no history), a blank start.
async fn gif_backlog(
    app: &App,
    patterns: &[Pattern],
    screen: &mut gif::Screen,
) -> Option<MessageId> {
    let [pattern] = patterns else {
        return None;
    };
    let channel = pattern.exact().filter(|c| !c.is_private())?;
    let recent = app.engine.recent(channel, screen.capacity()).await.ok()?;
    let oldest = recent.first()?;
    screen.seed(oldest);
    Some(oldest.id)
}

/// `?position=1`: open the stream with where it starts (`{"event":"position","last_id":…}`), so
/// that a client cut off before the first message still knows where to resume from.
fn announce(query: &Query) -> bool {
    matches!(query.get("position"), Some("1" | "true"))
}

/// The patterns of a `/sub` request: the path's channel first, then every `channel` parameter.
/// Inbox channels need their secret in `inbox`.
fn patterns(channel: Option<&str>, query: &Query) -> Result<Vec<Pattern>, ApiError> {
    let mut patterns = Vec::new();
    for name in channel.into_iter().chain(query.get_all("channel")) {
        let pattern = Pattern::parse(name)?;
        if !patterns.contains(&pattern) {
            patterns.push(pattern);
        }
    }
    if patterns.is_empty() {
        return Err(ApiError::BadRequest(
            "name a channel: /sub/{channel} or /sub?channel=…".into(),
        ));
    }
    if patterns.len() > MAX_SUB_CHANNELS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_SUB_CHANNELS} channels per connection"
        )));
    }
    let own = query.get("inbox").and_then(inbox::channel_for);
    for pattern in &patterns {
        if let Some(c) = pattern.exact().filter(|c| c.is_private())
            && own.as_ref() != Some(c)
        {
            return Err(ApiError::NotYours(format!(
                "{c} is an inbox: subscribe with its secret (inbox=)"
            )));
        }
    }
    Ok(patterns)
}

/// One `presence` parameter: who this connection says it is on which channel.
#[derive(Debug)]
pub struct Declaration {
    channel: Channel,
    member: String,
    info: serde_json::Value,
}

fn declarations(query: &Query) -> Result<Vec<Declaration>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        channel: String,
        member: String,
        #[serde(default)]
        info: serde_json::Map<String, serde_json::Value>,
    }
    let bad = |why: String| ApiError::BadRequest(format!("presence: {why}"));
    let mut out = Vec::new();
    for text in query.get_all("presence") {
        if out.len() == MAX_PRESENCE {
            return Err(bad(format!("at most {MAX_PRESENCE} per connection")));
        }
        let raw: Raw = serde_json::from_str(text)
            .map_err(|e| bad(format!("expected {{\"channel\",\"member\",\"info\"}}: {e}")))?;
        let channel = Channel::parse(&raw.channel)?;
        if !(8..=64).contains(&raw.member.len())
            || !raw
                .member
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("member must be 8-64 characters of [A-Za-z0-9_-]".into()));
        }
        let info = serde_json::Value::Object(raw.info);
        if info.to_string().len() > MAX_PRESENCE_INFO {
            return Err(bad(format!("info larger than {MAX_PRESENCE_INFO} bytes")));
        }
        out.push(Declaration {
            channel,
            member: raw.member,
            info,
        });
    }
    Ok(out)
}

/// Subscribes and declares presence; the presence lasts as long as the subscription.
pub async fn open(
    app: &App,
    patterns: Vec<Pattern>,
    start: Start,
    presence: Vec<Declaration>,
) -> Result<Subscription, ApiError> {
    let mut sub = app.engine.subscribe_from(patterns, start).await?;
    for d in presence {
        let guard = app.engine.join(d.channel, &d.member, d.info).await?;
        sub.keep(guard);
    }
    Ok(sub)
}

fn select(headers: &HeaderMap, query: &Query) -> Result<Kind, ApiError> {
    let upgrade = headers.get(UPGRADE).and_then(|v| v.to_str().ok());
    if upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return Ok(Kind::WebSocket);
    }
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    if query.get("transport").is_none() {
        if accept.is_some_and(|a| a.contains("text/event-stream")) {
            return Ok(Kind::Sse);
        }
        // Opera 9's `<event-source>` asks for its own type.
        if accept.is_some_and(|a| a.contains("application/x-dom-event-stream")) {
            return Ok(Kind::DomEvents);
        }
    }
    Ok(match query.get("transport") {
        None | Some("longpoll" | "long-polling" | "poll") => Kind::LongPoll,
        Some("sse" | "eventsource") => Kind::Sse,
        Some("stream") => Kind::Stream,
        Some("iframe") => Kind::Iframe,
        Some("multipart") => Kind::Multipart,
        Some("dom-events") => Kind::DomEvents,
        Some("refresh") => Kind::Refresh,
        Some("jsonp") => Kind::Jsonp,
        Some("gif") => Kind::Gif,
        Some("websocket") => {
            return Err(ApiError::BadRequest(
                "transport=websocket needs an Upgrade: websocket request".into(),
            ));
        }
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown transport {other:?} (longpoll, jsonp, stream, iframe, multipart, sse, dom-events, gif, refresh, websocket)"
            )));
        }
    })
}

/// Where the subscription starts: the resume id, and `recent=N`, each channel's newest N
/// messages first, atomically with the live flow ([`Start::recent`]; at most [`MAX_RECENT`]).
/// `added=` names the channels it is for (repeated; the client's new ones); with a resume id
/// it is for those only (a client adding a channel to the connection it resumes), without
/// one and without `added=`, for every channel. Wildcard patterns have no
/// newest messages of their own: asked of patterns only, it is refused rather than silently
/// giving nothing.
fn start(
    headers: &HeaderMap,
    query: &Query,
    patterns: &[Pattern],
    kind: Kind,
) -> Result<Start, ApiError> {
    let resume = resume_id(headers, query, kind == Kind::Sse)?;
    let recent = recent(query, patterns)?;
    let mut added = Vec::new();
    for text in query.get_all("added") {
        let channel = Channel::parse(text)?;
        if !patterns.iter().any(|p| p.exact() == Some(&channel)) {
            return Err(ApiError::BadRequest(format!(
                "added={channel} is not one of this connection's channels"
            )));
        }
        added.push(channel);
    }
    Ok(Start {
        resume,
        recent,
        added,
    })
}

/// `recent=N` of a request for `patterns`: 0 when absent; refused when too many, malformed,
/// or asked of wildcard patterns only.
pub(crate) fn recent(query: &Query, patterns: &[Pattern]) -> Result<u16, ApiError> {
    let Some(text) = query.get("recent").filter(|v| !v.is_empty()) else {
        return Ok(0);
    };
    let n = text
        .parse::<u16>()
        .ok()
        .filter(|n| *n <= MAX_RECENT)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "recent is a number of messages per channel, 0 to {MAX_RECENT}"
            ))
        })?;
    if n > 0 && patterns.iter().all(|p| p.exact().is_none()) {
        return Err(ApiError::BadRequest(
            "recent gives channels' newest messages; a wildcard pattern has none (name the channels)"
                .into(),
        ));
    }
    Ok(n)
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

/// The control object that ends an open connection whose token expired or was revoked:
/// `{"event":"expired","error":…}`. The client fetches a new token and resumes from its last id.
pub fn lapse_object(denied: &halley_engine::access::Denied) -> String {
    serde_json::json!({ "event": "expired", "error": denied.to_string() }).to_string()
}

/// What a disconnect without a reason of the application's says.
pub const DISCONNECTED: &str = "disconnected by the application";

/// What ends a connection whose last channel the control API took off.
pub const UNSUBSCRIBED_ALL: &str = "unsubscribed from every channel";

/// The reason a disconnect notice gives.
pub fn disconnect_reason(reason: Option<&str>) -> &str {
    reason.unwrap_or(DISCONNECTED)
}

/// The control object that ends a connection the application disconnected (the control API):
/// `{"event":"disconnected","reason":…}`. Not a ban: the client may come back.
pub fn disconnected_object(reason: Option<&str>) -> String {
    serde_json::json!({ "event": "disconnected", "reason": disconnect_reason(reason) }).to_string()
}

/// The control object that says the application took `pattern` off this connection:
/// `{"event":"unsubscribed","channel":…}`.
pub fn unsubscribed_object(pattern: &Pattern) -> String {
    serde_json::json!({ "event": "unsubscribed", "channel": pattern.to_string() }).to_string()
}

/// The control object sent in-band when a resume has a gap.
fn gap_object(sub: &halley_engine::Subscription) -> String {
    serde_json::json!({
        "event": "gap",
        "channel": sub.pattern().to_string(),
        "channels": sub.patterns().iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "last_id": sub.position().map(|p| p.to_string()),
    })
    .to_string()
}
