//! Long-polling and JSONP: hold the request until at least one message (or the hold timeout),
//! then answer with everything available as one batch.
//!
//! The control API answers a held poll at once. The body stays a batch of messages; what
//! happened is said beside it: long-poll in headers — `X-Halley-Unsubscribed: /a,/b` (the
//! patterns taken off), `X-Halley-Disconnected: <reason>` (the connection is over; not a ban:
//! the next poll is admitted if the credential still holds), `X-Halley-Expired: token revoked`
//! (the next poll with that token is refused) — reasons percent-encoded UTF-8; JSONP in the
//! second argument: `"unsubscribed": […]`, `"disconnected": "…"`, `"expired": "…"`.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use halley_engine::access::Principal;
use halley_engine::control::Closing;
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

/// A long-poll or JSONP request, as `/sub` decided it.
pub struct Poll {
    pub patterns: Vec<Pattern>,
    pub start: halley_engine::Start,
    pub presence: Vec<super::Declaration>,
    /// JSONP's callback; `None` for a plain long-poll.
    pub callback: Option<String>,
    pub who: Principal,
    /// The longest the client lets it be held, in seconds (`wait`, at most the hold timeout);
    /// `0` is interval polling: answered at once with what there is. Two bytes: it is kept
    /// across the subscription's opening, and a wider field cost every held poll 48 bytes of
    /// layout (`-Zprint-type-sizes`).
    pub wait: Option<u16>,
}

/// Holds a poll until there is something to say. The request comes boxed: an `async fn` keeps
/// room for its arguments for its whole life, and these are spent when the subscription
/// opens (one box, freed then, instead of ~100 bytes in every held poll).
pub async fn hold(app: &Arc<App>, request: Box<Poll>) -> Result<Response<Body>, ApiError> {
    // Taken apart through a temporary, so that the box is freed at the end of this
    // statement: moved out of as a parameter, it would stay allocated until the poll is
    // answered (dhat: 104 B per held poll).
    let Poll {
        patterns,
        start,
        presence,
        callback,
        who,
        wait,
    } = *{ request };
    let kind = if callback.is_some() {
        Kind::Jsonp
    } else {
        Kind::LongPoll
    };
    let _open = Open::new(&app.metrics, kind);
    // Boxed: opening a subscription (the policy, history) is ~0.9 KiB of future that a held
    // poll never needs again, and inline it sized every held poll for it (dhat: the poll's
    // future 1,184 bytes; `-Zprint-type-sizes`).
    let mut sub = Box::pin(super::open(app, patterns, start, presence)).await?;
    // A held poll is one of its user's connections for the control API.
    sub.reachable_as(&who, kind.name());
    drop(who);
    let mut shutting_down = false;
    // Held up to `wait` seconds (at most the hold timeout); `wait=0` is interval polling. A
    // resume still reading history waits for it (up to the hold timeout) whatever `wait` says,
    // so that an unheld poll answers with what history has rather than with nothing.
    let hold = match wait {
        Some(w) if !sub.replaying() => {
            std::time::Duration::from_secs(w.into()).min(app.config.hold_timeout)
        }
        _ => app.config.hold_timeout,
    };
    let first = tokio::select! {
        biased;
        _ = app.shutdown.cancelled() => { shutting_down = true; None }
        event = sub.next() => Some(event),
        _ = tokio::time::sleep(hold) => None,
    };
    // Boxed: collecting the answer (and waiting for a replay's next batch) is not what a held
    // poll waits in; inline, its locals and its own wait sized every held poll for them.
    Ok(Box::pin(collect(app, sub, first, callback, shutting_down)).await)
}

/// The answer of a poll whose wait ended with `first`: it and whatever else is there, up to a
/// batch ([`MAX_BATCH`]).
async fn collect(
    app: &App,
    mut sub: Subscription,
    first: Option<Event>,
    callback: Option<String>,
    shutting_down: bool,
) -> Response<Body> {
    let mut batch = BytesMut::from(&b"["[..]);
    let mut last = sub.position();
    let mut count = 0;
    let mut notes = Notes::default();
    let mut event = first;
    let kind = if callback.is_some() {
        Kind::Jsonp
    } else {
        Kind::LongPoll
    };
    let now = crate::metrics::now_us();
    while let Some(e) = event.take() {
        match e {
            Event::Message(m) => {
                if sub.last_was_live() {
                    crate::metrics::LATENCY.record(kind, m.published_us(), now);
                }
                if count > 0 {
                    batch.put_u8(b',');
                }
                batch.put_slice(m.json_object());
                last = Some(m.id);
                count += 1;
                if count == MAX_BATCH {
                    break;
                }
            }
            Event::Lagged => break,
            Event::Closed(closing) => {
                notes.closed = Some(closing);
                break;
            }
            Event::Unsubscribed(pattern) => {
                notes.unsubscribed.push(pattern);
                if sub.patterns().is_empty() {
                    let all = super::UNSUBSCRIBED_ALL.into();
                    notes.closed = Some(Closing::Disconnected(Some(all)));
                    break;
                }
            }
        }
        event = match sub.try_next() {
            // A far-behind resume fills the answer from history, a batch at a time: wait for
            // the next batch (read at once) rather than answer with part of one.
            None if sub.replaying() => tokio::select! {
                biased;
                _ = app.shutdown.cancelled() => None,
                event = replayed(&mut sub) => event,
                _ = tokio::time::sleep(app.config.hold_timeout) => None,
            },
            next => next,
        };
    }
    batch.put_u8(b']');
    answer(app, &sub, batch, last, callback, shutting_down, &notes)
}

/// The next event once the replay's next batch is in; `None` when the replay ended with
/// nothing more (live messages are not waited for: the answer goes with what it has).
async fn replayed(sub: &mut Subscription) -> Option<Event> {
    // Bounded: each wake-up finds the batch in or the replay a step further.
    while sub.replaying() {
        sub.signalled().await;
        if let Some(event) = sub.try_next() {
            return Some(event);
        }
    }
    None
}

/// What the control API did to a held poll, said beside its batch.
#[derive(Default)]
struct Notes {
    /// At most the connection's patterns (`MAX_SUB_CHANNELS`).
    unsubscribed: Vec<Pattern>,
    closed: Option<Closing>,
}

/// `text` as a header value: printable ASCII as it is, anything else (and `%`) percent-encoded
/// as UTF-8, so that `decodeURIComponent` gives it back.
fn header_text(text: &str) -> HeaderValue {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // Only printable ASCII is left.
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static(""))
}

fn answer(
    app: &App,
    sub: &Subscription,
    batch: BytesMut,
    last: Option<MessageId>,
    callback: Option<String>,
    shutting_down: bool,
    notes: &Notes,
) -> Response<Body> {
    let last_text = last.map(|id| id.to_string());
    let unsubscribed: Vec<String> = notes.unsubscribed.iter().map(|p| p.to_string()).collect();
    let (disconnected, expired) = match &notes.closed {
        None => (None, None),
        Some(Closing::Disconnected(reason)) => {
            (Some(super::disconnect_reason(reason.as_deref())), None)
        }
        Some(Closing::Revoked(denied)) => (None, Some(denied.to_string())),
    };
    let (content_type, body) = match callback {
        None => ("application/json", batch.freeze()),
        Some(cb) => {
            // Script tags cannot read headers, so the position and gap ride in a second
            // argument: f(messages, {last_id, gap}), and so does what the control API did.
            let mut meta = serde_json::json!({ "last_id": last_text, "gap": sub.gap() });
            if !unsubscribed.is_empty() {
                meta["unsubscribed"] = unsubscribed.clone().into();
            }
            if let Some(reason) = disconnected {
                meta["disconnected"] = reason.into();
            }
            if let Some(error) = &expired {
                meta["expired"] = error.as_str().into();
            }
            let mut out = BytesMut::new();
            out.put_slice(b"/**/");
            out.put_slice(cb.as_bytes());
            out.put_u8(b'(');
            super::stream::put_script_safe(&batch, &mut out);
            out.put_u8(b',');
            super::stream::put_script_safe(meta.to_string().as_bytes(), &mut out);
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
    if !unsubscribed.is_empty() {
        headers.insert(
            "x-halley-unsubscribed",
            header_text(&unsubscribed.join(",")),
        );
    }
    if let Some(reason) = disconnected {
        headers.insert("x-halley-disconnected", header_text(reason));
    }
    if let Some(error) = &expired {
        headers.insert("x-halley-expired", header_text(error));
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
