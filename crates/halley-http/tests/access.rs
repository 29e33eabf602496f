//! The access policy at every entry point, over real HTTP and WebSocket: the route table walked
//! route by route against a locked-down policy (so a route added later cannot skip the policy),
//! the Bayeux publish-key bypass, a table of credentials × entry points, and tokens that expire
//! on open connections.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{
    TestServer, Ws, bayeux, bayeux_client, bayeux_handshake, hs256, now, within, ws_json,
};
use futures_util::{SinkExt, StreamExt};
use halley_engine::access::{
    AccessConfig, NamespaceConfig, Policy, PublishRule, SubscribeRule, TokenConfig,
};
use halley_http::routes::{Gate, Handler, ROUTES, Verb};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const KEY: &str = "backend-key";
const SECRET: &str = "test-secret-of-32-bytes-or-more!";

fn namespace(channels: &str, subscribe: SubscribeRule, publish: PublishRule) -> NamespaceConfig {
    NamespaceConfig {
        subscribe,
        publish,
        ..NamespaceConfig::new(channels)
    }
}

/// `/open/**` is public, `/chat/**` needs a token (and its claims to publish), `/user/{sub}/**`
/// is each user's own; anything else (`/locked/**`) is covered by no namespace.
fn locked() -> AccessConfig {
    AccessConfig {
        publish_key: Some(KEY.into()),
        tokens: TokenConfig {
            hs256_secret: Some(SECRET.into()),
            ..TokenConfig::default()
        },
        namespaces: vec![
            namespace("/open/**", SubscribeRule::Anyone, PublishRule::Anyone),
            namespace("/chat/**", SubscribeRule::Token, PublishRule::Claim),
            namespace("/user/{sub}/**", SubscribeRule::User, PublishRule::Backend),
        ],
        app: None,
    }
}

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// An HS256 token over `claims`, signed with `secret`.
fn token_with(claims: Value, secret: &str) -> String {
    hs256(&claims, secret)
}

fn token(claims: Value) -> String {
    token_with(claims, SECRET)
}

/// Alice's token for `/chat/**`, valid for an hour.
fn alice() -> String {
    token(json!({
        "sub": "alice",
        "exp": now() + 3600,
        "iat": now(),
        "channels": ["/chat/**"],
        "publish": ["/chat/**"],
    }))
}

/// How a request to `handler` is made complete (a JSONP publish needs its callback and data).
fn request_path(handler: Handler, verb: Verb, example: &str) -> String {
    let extra = match (handler, verb) {
        (Handler::PublishJsonp, _) => "callback=cb&data=1",
        (Handler::InboxSend, Verb::Get) => "callback=cb&message=hi",
        _ => "",
    };
    join(example, extra)
}

fn join(path: &str, extra: &str) -> String {
    match (extra.is_empty(), path.contains('?')) {
        (true, _) => path.to_string(),
        (false, true) => format!("{path}&{extra}"),
        (false, false) => format!("{path}?{extra}"),
    }
}

fn method(verb: Verb) -> &'static str {
    match verb {
        Verb::Get => "GET",
        Verb::Head => "HEAD",
        Verb::Post => "POST",
        Verb::Put => "PUT",
    }
}

/// Sends one request and returns its status once the head has arrived (held routes included).
async fn status_of(s: &TestServer, verb: Verb, path: &str) -> u16 {
    let mut request = s.request(method(verb), path);
    let body = match verb {
        Verb::Post | Verb::Put => {
            request = request.header("content-type", "text/plain");
            Bytes::from_static(b"x")
        }
        _ => Bytes::new(),
    };
    let open = s.open(request.body(Full::new(body)).unwrap()).await;
    open.status.as_u16()
}

#[tokio::test]
async fn every_policy_gated_route_refuses_a_caller_the_policy_refuses() {
    let s = TestServer::with_access(locked()).await;
    let mut walked = 0;
    for route in ROUTES {
        for &(verb, handler) in route.methods {
            if handler == Handler::Bayeux {
                continue; // Bayeux answers in its own form: see the Bayeux test below.
            }
            let path = request_path(handler, verb, route.example);
            let anonymous = status_of(&s, verb, &path).await;
            let backend = status_of(&s, verb, &join(&path, &format!("key={KEY}"))).await;
            match route.gate {
                Gate::Policy => {
                    assert!(
                        anonymous == 401 || anonymous == 403,
                        "{} {path} without a credential: {anonymous}",
                        method(verb)
                    );
                    // The refusal is a JSON error, not a bare status.
                    if verb == Verb::Get {
                        s.get(&path).await.expect_error(anonymous);
                    }
                    walked += 1;
                }
                Gate::Public(_) => assert!(
                    anonymous != 401 && anonymous != 403,
                    "{} {path} is public but answered {anonymous}",
                    method(verb)
                ),
            }
            // The backend key passes everything (the policy is what refused, not the route).
            assert!(
                backend != 401 && backend != 403,
                "{} {path} with the backend key: {backend}",
                method(verb)
            );
        }
    }
    assert!(walked >= 12, "walked {walked} gated routes");
    // rupy's headerless pull asks the same policy: its one line is the error.
    let mut pull = s
        .raw_request("GET /pull?name=one&channel=/locked/a HTTP/1.1\r\nHead: less\r\n\r\n")
        .await;
    let got = String::from_utf8(common::read_to_close(&mut pull).await).unwrap();
    assert!(got.contains("\"error\""), "{got:?}");
    // Every transport of /sub, not only long-polling.
    for transport in [
        "sse",
        "stream",
        "iframe&callback=f",
        "multipart",
        "jsonp&callback=f",
    ] {
        let path = format!("/sub/locked/a?transport={transport}");
        s.get(&path).await.expect_error(401);
    }
    let refused = s.ws_with("/sub/locked/a", &[]).await;
    assert!(
        refused.is_err(),
        "a WebSocket upgrade to /locked/a was accepted"
    );
}

// ---- Bayeux ----

fn error_code(reply: &Value) -> u16 {
    let error = reply["error"].as_str().unwrap_or_default();
    error
        .split(':')
        .next()
        .unwrap_or_default()
        .parse()
        .unwrap_or(0)
}

/// Regression: with `--publish-key` set, a Bayeux client (handshake, then publish on
/// long-polling `/cometd`) published without the key, and `/sub` subscribers received it.
#[tokio::test]
async fn bayeux_publish_without_the_publish_key_is_refused() {
    let s = TestServer::with_key("k").await;
    let mut sub = s.stream("/sub/chat/a?transport=stream&format=json").await;
    let client = bayeux_client(&s, json!({})).await;
    let replies = bayeux(
        &s,
        json!([{"channel": "/chat/a", "clientId": client, "data": "sneaked", "id": "p"}]),
    )
    .await;
    assert_eq!(replies[0]["successful"], false, "{}", replies[0]);
    assert_eq!(error_code(&replies[0]), 401, "{}", replies[0]);
    // Over callback-polling too.
    let batch = json!([{"channel": "/chat/a", "clientId": client, "data": "sneaked", "id": "q"}]);
    let path = format!(
        "/cometd?jsonp=cb&message={}",
        form_urlencoded::byte_serialize(batch.to_string().as_bytes()).collect::<String>()
    );
    let reply = s.get(&path).await;
    assert!(reply.body.contains("\"401:"), "{}", reply.body);
    // With the key in the handshake's ext, the same client publishes.
    let keyed = bayeux_client(&s, json!({"key": "k"})).await;
    let replies = bayeux(
        &s,
        json!([{"channel": "/chat/a", "clientId": keyed, "data": "with the key", "id": "p"}]),
    )
    .await;
    assert_eq!(replies[0]["successful"], true, "{}", replies[0]);
    // The subscriber's first message is the keyed one: the refused ones went nowhere.
    let first = sub.json_line().await;
    assert_eq!(first["data"], "with the key", "{first}");
}

#[tokio::test]
async fn bayeux_asks_the_policy_on_every_transport() {
    let s = TestServer::with_access(locked()).await;
    // Long-polling: a handshake is open, a subscribe or publish to /locked is not.
    let client = bayeux_client(&s, json!({})).await;
    let replies = bayeux(
        &s,
        json!([
            {"channel": "/meta/subscribe", "clientId": client, "subscription": "/locked/a", "id": "s"},
            {"channel": "/locked/a", "clientId": client, "data": 1, "id": "p"},
            {"channel": "/meta/subscribe", "clientId": client, "subscription": "/open/a", "id": "o"},
        ]),
    )
    .await;
    assert_eq!(error_code(&replies[0]), 401, "{}", replies[0]);
    assert_eq!(error_code(&replies[1]), 401, "{}", replies[1]);
    assert_eq!(replies[2]["successful"], true, "{}", replies[2]);
    // A bad token in the handshake is refused there, with reconnect: none.
    let reply = bayeux_handshake(
        &s,
        json!({"token": token_with(json!({"sub": "x"}), "other")}),
    )
    .await;
    assert_eq!(error_code(&reply), 401, "{reply}");
    assert_eq!(reply["advice"]["reconnect"], "none", "{reply}");
    // A token from the transport's Authorization header counts for the handshake.
    let request = s
        .request("POST", "/cometd")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", alice()))
        .body(Full::new(Bytes::from(
            json!([{"channel": "/meta/handshake", "version": "1.0", "id": "h"}]).to_string(),
        )))
        .unwrap();
    let reply: Vec<Value> = serde_json::from_str(&s.send(request).await.body).unwrap();
    let alice_client = reply[0]["clientId"].as_str().unwrap().to_string();
    let replies = bayeux(
        &s,
        json!([{"channel": "/meta/subscribe", "clientId": alice_client, "subscription": "/chat/a", "id": "s"}]),
    )
    .await;
    assert_eq!(replies[0]["successful"], true, "{}", replies[0]);
    // WebSocket: the same decisions on a socket.
    let mut ws = s.ws("/cometd").await;
    ws_send(
        &mut ws,
        json!([{"channel": "/meta/handshake", "version": "1.0", "id": "h", "ext": {"token": alice()},
                "supportedConnectionTypes": ["websocket"]}]),
    )
    .await;
    let reply = ws_json(&mut ws).await;
    let ws_client = reply[0]["clientId"].as_str().unwrap().to_string();
    ws_send(
        &mut ws,
        json!([
            {"channel": "/meta/subscribe", "clientId": ws_client, "subscription": "/user/bob/inbox", "id": "s"},
            {"channel": "/meta/subscribe", "clientId": ws_client, "subscription": "/user/alice/inbox", "id": "t"},
        ]),
    )
    .await;
    let replies = ws_json(&mut ws).await;
    assert_eq!(error_code(&replies[0]), 403, "{replies}");
    assert_eq!(replies[1]["successful"], true, "{replies}");
}

async fn ws_send(ws: &mut Ws, batch: Value) {
    within("ws send", ws.send(Frame::Text(batch.to_string().into())))
        .await
        .unwrap();
}

// ---- credentials × entry points ----

/// What each kind of credential earns at every entry point (for a `/chat/a` action): 401 for
/// none or a bad one, 403 for a good one that does not cover the channel, success otherwise.
#[tokio::test]
async fn credentials_by_entry_point() {
    let policy = Policy::new(locked()).unwrap();
    let s = TestServer::with_policy(policy.clone(), Some(KEY.into()), |_| {}).await;
    let revoked = token(
        json!({"sub": "mallory", "exp": now() + 3600, "iat": now() - 10,
                               "channels": ["/chat/**"], "publish": ["/chat/**"]}),
    );
    policy.revoke("mallory", now()).unwrap();
    let none_alg = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(json!({"sub": "alice", "exp": now() + 3600, "channels": ["/chat/**"], "publish": ["/chat/**"]})
            .to_string()
            .as_bytes())
    );
    let credentials: Vec<(&str, Option<String>, u16)> = vec![
        ("no credential", None, 401),
        (
            "expired",
            Some(token(
                json!({"sub": "alice", "exp": now() - 60, "channels": ["/chat/**"], "publish": ["/chat/**"]}),
            )),
            401,
        ),
        (
            "not yet valid",
            Some(token(
                json!({"sub": "alice", "exp": now() + 3600, "nbf": now() + 600,
                              "channels": ["/chat/**"], "publish": ["/chat/**"]}),
            )),
            401,
        ),
        (
            "bad signature",
            Some(token_with(
                json!({"sub": "alice", "exp": now() + 3600, "channels": ["/chat/**"], "publish": ["/chat/**"]}),
                "another-secret-entirely-32-bytes",
            )),
            401,
        ),
        ("alg none", Some(none_alg), 401),
        ("revoked", Some(revoked), 401),
        (
            "wrong channel",
            Some(token(
                json!({"sub": "alice", "exp": now() + 3600, "channels": ["/other/**"], "publish": ["/other/**"]}),
            )),
            403,
        ),
        ("valid", Some(alice()), 200),
    ];
    for (what, token, expected) in &credentials {
        let query = |path: &str| match token {
            Some(t) => join(path, &format!("token={t}")),
            None => path.to_string(),
        };
        let bearer = token.as_ref().map(|t| format!("Bearer {t}"));
        let mut got = Vec::new();
        // Query-string token: EventSource, JSONP, iframe, stream, pull, the APIs.
        for path in [
            "/sub/chat/a?transport=sse",
            "/sub/chat/a?transport=stream",
            "/sub/chat/a?transport=jsonp&callback=f",
            "/pub/chat/a?callback=cb&data=1",
            "/push?name=n&message=m&channel=/chat/a",
            "/pull?name=n&channel=/chat/a",
            "/api/history?channel=/chat/a",
            "/api/presence?channel=/chat/a",
        ] {
            let open = s
                .open(
                    s.request("GET", &query(path))
                        .body(Full::default())
                        .unwrap(),
                )
                .await;
            got.push((path.to_string(), open.status.as_u16()));
        }
        // Authorization: Bearer, on a publish and a long-poll.
        for (method, path) in [("POST", "/pub/chat/a"), ("GET", "/sub/chat/a")] {
            let mut request = s.request(method, path).header("content-type", "text/plain");
            if let Some(b) = &bearer {
                request = request.header("authorization", b.as_str());
            }
            let open = s
                .open(request.body(Full::new(Bytes::from_static(b"x"))).unwrap())
                .await;
            got.push((format!("{method} {path} (bearer)"), open.status.as_u16()));
        }
        // The WebSocket upgrade.
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect();
        let ws = s.ws_with("/sub/chat/a", &headers).await;
        let ws_status = match ws {
            Ok(_) => 200,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                response.status().as_u16()
            }
            Err(e) => panic!("{what}: websocket: {e}"),
        };
        got.push(("websocket".into(), ws_status));
        for (entry, status) in &got {
            assert_eq!(status, expected, "{what} at {entry}");
        }
        // Bayeux: the token in the handshake's ext.
        let ext = token.as_ref().map_or(json!({}), |t| json!({"token": t}));
        let handshake = bayeux_handshake(&s, ext).await;
        let code = if handshake["successful"] == true {
            let client = handshake["clientId"].as_str().unwrap();
            let replies = bayeux(
                &s,
                json!([{"channel": "/meta/subscribe", "clientId": client, "subscription": "/chat/a", "id": "s"}]),
            )
            .await;
            if replies[0]["successful"] == true {
                200
            } else {
                error_code(&replies[0])
            }
        } else {
            error_code(&handshake)
        };
        assert_eq!(code, *expected, "{what} over Bayeux: {handshake}");
    }
}

// ---- tokens that expire on open connections ----

/// A policy on a clock the test moves: expiry without waiting for it.
fn clocked() -> (Policy, Arc<AtomicU64>) {
    let clock = Arc::new(AtomicU64::new(now()));
    let read = clock.clone();
    let policy = Policy::with_clock(locked(), move || read.load(Ordering::Relaxed)).unwrap();
    (policy, clock)
}

#[tokio::test]
async fn a_token_that_expires_ends_open_connections_with_a_notice() {
    let (policy, clock) = clocked();
    let s = TestServer::with_policy(policy, Some(KEY.into()), |http| {
        http.heartbeat_interval = Duration::from_millis(100);
    })
    .await;
    let short = token(json!({"sub": "alice", "exp": now() + 60, "channels": ["/chat/**"]}));
    let mut sse = s
        .stream(&format!("/sub/chat/a?transport=sse&token={short}"))
        .await;
    assert_eq!(sse.status, 200);
    let mut ws = s
        .ws_with(
            "/sub/chat/a",
            &[("authorization", &format!("Bearer {short}"))],
        )
        .await
        .unwrap();
    // Both are open and well; then the token's time is up (beyond any leeway).
    s.publish("/chat/a", "before").await;
    sse.until("before").await;
    clock.fetch_add(3600, Ordering::Relaxed);
    // SSE: an `expired` event, then the end of the stream.
    sse.until("event: expired").await;
    let got = sse.until("\n\n").await;
    assert!(got.contains(r#""error":"token expired""#), "{got}");
    // WebSocket: the notice, then a close with 1008 (policy violation).
    let mut notice = None;
    let close = loop {
        match within("ws frame", ws.next()).await {
            Some(Ok(Frame::Text(t))) => notice = Some(t.to_string()),
            Some(Ok(Frame::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("websocket ended without a close: {other:?}"),
        }
    };
    assert!(notice.is_some_and(|n| n.contains("\"expired\"")));
    assert_eq!(close.map(|c| c.code), Some(CloseCode::Policy));
    // Long-poll: the next poll with the same token is refused, saying why.
    let reply = s.get(&format!("/sub/chat/a?token={short}")).await;
    reply.expect_error(401);
    assert!(reply.body.contains("expired"), "{}", reply.body);
}

#[tokio::test]
async fn a_bayeux_session_whose_token_expired_is_told_to_handshake() {
    let (policy, clock) = clocked();
    let s = TestServer::with_policy(policy, Some(KEY.into()), |_| {}).await;
    let short = token(json!({"sub": "alice", "exp": now() + 60, "channels": ["/chat/**"]}));
    let client = bayeux_client(&s, json!({"token": short})).await;
    clock.fetch_add(3600, Ordering::Relaxed);
    let reply = within("the session to expire", async {
        loop {
            let replies = bayeux(
                &s,
                json!([{"channel": "/meta/connect", "clientId": client,
                        "connectionType": "long-polling", "id": "c"}]),
            )
            .await;
            let connect = replies
                .iter()
                .find(|r| r["channel"] == "/meta/connect")
                .cloned()
                .unwrap();
            if connect["successful"] == false {
                break connect;
            }
        }
    })
    .await;
    assert_eq!(error_code(&reply), 401, "{reply}");
    assert_eq!(reply["advice"]["reconnect"], "handshake", "{reply}");
}

// ---- namespace limits ----

#[tokio::test]
async fn a_namespace_caps_the_subscribers_of_each_channel() {
    let mut room = namespace("/room/**", SubscribeRule::Anyone, PublishRule::Anyone);
    room.max_subscribers = Some(2);
    let s = TestServer::with_access(AccessConfig {
        namespaces: vec![room],
        ..AccessConfig::default()
    })
    .await;
    let _one = s.stream("/sub/room/a?transport=sse").await;
    let _two = s.stream("/sub/room/a?transport=stream").await;
    // The third, on any transport, is refused with a JSON error; another channel is not full.
    s.get("/sub/room/a?transport=sse").await.expect_error(503);
    let other = s.stream("/sub/room/b?transport=sse").await;
    assert_eq!(other.status, 200);
    let client = bayeux_client(&s, json!({})).await;
    let replies = bayeux(
        &s,
        json!([{"channel": "/meta/subscribe", "clientId": client, "subscription": "/room/a", "id": "s"}]),
    )
    .await;
    assert_eq!(error_code(&replies[0]), 503, "{}", replies[0]);
}
