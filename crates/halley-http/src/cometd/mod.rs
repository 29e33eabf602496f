//! Bayeux on `/cometd`: `long-polling` (POST a JSON batch), `callback-polling` (GET with
//! `message=` and `jsonp=`), `websocket` (upgrade on the same path) and Faye's `eventsource`
//! (an event stream at `/cometd/{clientId}`). The protocol itself is
//! `halley_engine::bayeux`; this module only frames it.

mod eventsource;
mod ws;

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use halley_engine::bayeux::{Browser, Caller, Connect, Handled, Outbox};
use halley_proto::Message;
use halley_proto::bayeux::{BayeuxMessage, parse_batch};
use hyper::header::{CONTENT_TYPE, COOKIE, HeaderMap, HeaderValue, SET_COOKIE, UPGRADE};
use hyper::{Method, Request, Response};

use crate::app::Handling;
use crate::body::{Body, RequestBody, full};
use crate::error::ApiError;
use crate::metrics::{Kind, LATENCY, Open, now_us};
use crate::publish::read_body;
use crate::query::{Query, valid_callback};
use crate::server::Peer;
use crate::state::App;
use crate::transport::held_headers;
use halley_engine::access::Principal;

const BROWSER_COOKIE: &str = "BAYEUX_BROWSER";

/// Picks the way (WebSocket, callback-polling, long-polling) before any future exists, and
/// boxes it: a held connect lives in one of them, sized for itself and without this level
/// keeping the request (see [`crate::app::Handling`]).
pub fn handle<'a, B: RequestBody>(app: &'a Arc<App>, request: Request<B>) -> Handling<'a> {
    let upgrade = request
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    match *request.method() {
        Method::GET if upgrade => Box::pin(ws::upgrade(app, request)),
        Method::GET if eventsource::wanted(request.headers()) => {
            Box::pin(eventsource::open(app, request))
        }
        Method::GET => Box::pin(callback_polling(app, request)),
        Method::POST => long_polling(app, request),
        _ => Box::pin(std::future::ready(Err(ApiError::MethodNotAllowed))),
    }
}

/// A long-polling POST. Not an `async fn`: one keeps room for its arguments (the request,
/// ~0.25 KiB) for its whole life, held connect included. The request's credentials and cookie
/// are read here; its body is read by a future of its own, freed once read; what is held is
/// the batch's processing alone.
fn long_polling<'a, B: RequestBody>(app: &'a Arc<App>, request: Request<B>) -> Handling<'a> {
    let browser = browser_id(request.headers());
    let peer = Peer::client(&request, &app.config.trusted_proxies);
    // The transport's credentials, for a handshake in this batch (its `ext` wins over them).
    let who = match app.admit(request.headers(), &Query::parse(request.uri().query())) {
        Ok(who) => who,
        Err(e) => return Box::pin(std::future::ready(Err(e))),
    };
    let reading = Box::pin(read_body(app, request));
    Box::pin(async move {
        // The body (and the connection's read buffer it may share) is not kept through the
        // hold, nor the future that read it.
        let batch = posted_batch(&reading.await?)?;
        let (out, new_browser) = process(
            app,
            Box::new(Job {
                batch,
                browser,
                peer,
                who,
                kind: Kind::LongPoll,
            }),
        )
        .await;
        let mut response = Response::new(full(out.freeze()));
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
        held_headers(headers, false);
        set_browser_cookie(headers, new_browser);
        Ok(response)
    })
}

/// A long-polling body: a JSON batch, or a form body `message=<batch>` — what Faye's
/// cross-origin transport sends (through `XDomainRequest` where that is all there is), since a
/// JSON content type from another origin costs a preflight and XDomainRequest cannot send one.
/// Read by its first byte, whatever the content type says (`text/plain`, none, or a form's).
fn posted_batch(body: &[u8]) -> Result<Vec<BayeuxMessage>, ApiError> {
    let bad = |e: halley_proto::bayeux::BatchError| ApiError::BadRequest(e.to_string());
    match body.trim_ascii_start().first() {
        Some(b'[' | b'{') | None => parse_batch(body).map_err(bad),
        Some(_) => {
            let form = std::str::from_utf8(body)
                .map_err(|_| ApiError::BadRequest("a form body must be UTF-8".into()))?;
            let form = Query::parse(Some(form));
            let message = form.get("message").ok_or_else(|| {
                ApiError::BadRequest(
                    "a long-polling body is a JSON batch, or a form with message=<batch>".into(),
                )
            })?;
            parse_batch(message.as_bytes()).map_err(bad)
        }
    }
}

async fn callback_polling<B: RequestBody>(
    app: &Arc<App>,
    request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let callback = query.get("jsonp").unwrap_or("");
    if !valid_callback(callback) {
        return Err(ApiError::BadRequest(
            "jsonp must match ^[A-Za-z_$][A-Za-z0-9_$.]{0,63}$".into(),
        ));
    }
    app.origins.check_embedding(request.headers())?;
    let message = query
        .get("message")
        .ok_or_else(|| ApiError::BadRequest("message is required".into()))?;
    if message.len() > app.config.body_limit {
        return Err(ApiError::TooLarge(app.config.body_limit));
    }
    let batch = parse_batch(message.as_bytes()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let browser = browser_id(request.headers());
    let who = app.admit(request.headers(), &query)?;
    let peer = Peer::client(&request, &app.config.trusted_proxies);
    let (out, new_browser) = process(
        app,
        Box::new(Job {
            batch,
            browser,
            peer,
            who,
            kind: Kind::Jsonp,
        }),
    )
    .await;
    let mut body = BytesMut::with_capacity(out.len() + callback.len() + 8);
    body.put_slice(b"/**/");
    body.put_slice(callback.as_bytes());
    body.put_u8(b'(');
    body.put_slice(&out);
    body.put_slice(b");");
    let mut response = Response::new(full(body.freeze()));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/javascript;charset=UTF-8"),
    );
    held_headers(headers, false);
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    set_browser_cookie(headers, new_browser);
    Ok(response)
}

/// Answers a batch's messages in order, but for its (last) `/meta/connect`, which is returned
/// to be held; and whether it held a successful handshake.
async fn answer(
    app: &Arc<App>,
    batch: Vec<BayeuxMessage>,
    caller: Caller<'_>,
) -> (Output, Option<Connect>, bool) {
    let mut out = Output::default();
    let mut connect: Option<Connect> = None;
    let mut handshaken = false;
    for message in batch {
        match Box::pin(app.bayeux.handle_in(message, &caller)).await {
            Handled::Reply(reply) => {
                handshaken |= reply.channel == "/meta/handshake" && reply.successful == Some(true);
                out.reply(&reply);
            }
            // A call to the application (`/service/**`): this request's answer waits for it,
            // bounded by the call's timeout; a held connect is another request.
            Handled::Call(call) => out.reply(&call.reply().await),
            Handled::Connect(c) => {
                // Two connects in one batch: the earlier one is answered at once.
                if let Some(earlier) = connect.replace(c) {
                    out.reply(&app.bayeux.connect_reply(&earlier, false));
                }
            }
        }
    }
    (out, connect, handshaken)
}

/// A batch to run ([`process`]), with what its request said of its client.
struct Job {
    batch: Vec<BayeuxMessage>,
    browser: Option<String>,
    peer: Option<std::net::IpAddr>,
    who: Principal,
    kind: Kind,
}

/// Runs a batch: everything is answered in order, except a `/meta/connect`, which is held last
/// and answered together with the messages it collected. Returns the JSON array and, when the
/// request had no browser cookie, the id to set.
///
/// A session is bound to the browser cookie its handshake came with, or was answered with
/// ([`Browser`]): once a request for it has come back with that cookie, requests for it
/// without it are answered as for an unknown client.
async fn process(app: &Arc<App>, job: Box<Job>) -> (BytesMut, Option<String>) {
    // Taken apart through a temporary, so that the box is freed at the end of this statement:
    // an `async fn` keeps room for its arguments for its whole life, and a held connect needs
    // only the browser of them.
    let Job {
        batch,
        browser,
        peer,
        who,
        kind,
    } = *{ job };
    // The id a handshake's answer will set, made only when one is asked for without a cookie.
    let offered = (browser.is_none() && batch.iter().any(|m| m.channel == "/meta/handshake"))
        .then(new_browser_id);
    let bound = match (&browser, &offered) {
        (Some(b), _) => Browser::Presented(b),
        (None, Some(o)) => Browser::Offered(o),
        (None, None) => Browser::Unknown,
    };
    let caller = Caller::new(&who).peer(peer).browser(bound);
    // Boxed, and over before the hold: the batch and the caller's credentials are not kept
    // by a held connect.
    let (out, connect, handshaken) = Box::pin(answer(app, batch, caller)).await;
    drop(who);
    let new_browser = offered.filter(|_| handshaken);
    let out = match connect {
        None => out,
        Some(connect) => {
            // The answer and the subscriber's count in one, `out` moved in: a held request's
            // future keeps the two as before (640 bytes, `size_of_val`; a `let … else` here
            // kept 8 more).
            let mut held = Held {
                out,
                open: Open::new(&app.metrics, kind),
            };
            app.bayeux
                .poll(connect, browser.as_deref(), &mut held)
                .await;
            held.out
        }
    };
    (out.finish(), new_browser)
}

/// A held polling connect's answer, and its count among the open subscribers, whose transport
/// also labels the publish→write latency of the live messages in it.
struct Held {
    out: Output,
    open: Open,
}

impl Outbox for Held {
    fn data(&mut self, message: &Arc<Message>, live: bool) {
        self.out.data(message, live, self.open.kind());
    }

    fn reply(&mut self, reply: &BayeuxMessage) {
        self.out.reply(reply);
    }
}

/// An answer being written on a connection ([`Output::on`]) that is counted as `kind`'s.
struct Writing<'a> {
    out: &'a mut Output,
    kind: Kind,
}

impl Outbox for Writing<'_> {
    fn data(&mut self, message: &Arc<Message>, live: bool) {
        self.out.data(message, live, self.kind);
    }

    fn reply(&mut self, reply: &BayeuxMessage) {
        self.out.reply(reply);
    }
}

/// A JSON array being written.
#[derive(Default)]
struct Output {
    buf: BytesMut,
}

impl Output {
    /// Where a link writes into this answer, on a connection of `kind`.
    fn on(&mut self, kind: Kind) -> Writing<'_> {
        Writing { out: self, kind }
    }

    /// A delivered message is `{"channel","id","data"}`, which is already a valid Bayeux data
    /// message, so the cached encoding is reused as is. A live one's publish→write latency is
    /// counted as `kind`'s: the answer or frame is written once put together.
    fn data(&mut self, message: &Message, live: bool, kind: Kind) {
        if live {
            LATENCY.record(kind, message.published_us(), now_us());
        }
        self.sep();
        self.buf.put_slice(message.json_object());
    }

    fn sep(&mut self) {
        self.buf
            .put_u8(if self.buf.is_empty() { b'[' } else { b',' });
    }

    fn reply(&mut self, reply: &BayeuxMessage) {
        self.sep();
        self.buf.put_slice(reply.to_json().as_bytes());
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn finish(mut self) -> BytesMut {
        if self.buf.is_empty() {
            self.buf.put_u8(b'[');
        }
        self.buf.put_u8(b']');
        self.buf
    }
}

fn browser_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == BROWSER_COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty() && v.len() <= 64)
}

fn new_browser_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn set_browser_cookie(headers: &mut HeaderMap, id: Option<String>) {
    if let Some(value) = id.and_then(|id| {
        HeaderValue::from_str(&format!(
            "{BROWSER_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax"
        ))
        .ok()
    }) {
        headers.insert(SET_COOKIE, value);
    }
}
