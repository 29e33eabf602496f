//! The control API over real HTTP: a user with a token connected over SSE, WebSocket,
//! long-poll, JSONP, an NDJSON stream and Bayeux is disconnected at once with a notice on each;
//! one channel of a two-channel connection is taken off; a user's connections are listed; a
//! revocation ends what the user has open and refuses the token afterwards; callers without
//! the backend key are refused, and bad input is a 400.
//!
//! "At once" is checked against budgets that cannot be what ended a connection: the hold
//! timeout and heartbeat are far beyond the test's own wait ([`common::WAIT`]).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::access::{KEY, chat_access, chat_token};
use common::{Reply, TestServer, Ws, bayeux, now, within, ws_json};
use futures_util::{SinkExt, StreamExt};
use halley_engine::access::{AccessConfig, Policy};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn access() -> AccessConfig {
    chat_access()
}

/// A policy on a clock the test moves, and a server asking it whose hold timeout and
/// heartbeat are far beyond any wait of the test.
async fn server() -> (Arc<TestServer>, Policy, Arc<AtomicU64>) {
    let clock = Arc::new(AtomicU64::new(now()));
    let read = clock.clone();
    let policy = Policy::with_clock(access(), move || read.load(Ordering::Relaxed)).unwrap();
    let s = TestServer::with_policy(policy.clone(), Some(KEY.into()), |http| {
        http.hold_timeout = Duration::from_secs(120);
        http.heartbeat_interval = Duration::from_secs(120);
    })
    .await;
    (Arc::new(s), policy, clock)
}

fn token(policy: &Policy, user: &str) -> String {
    chat_token(policy, user)
}

/// A control request with the backend key.
async fn control(s: &TestServer, path: &str, body: Value) -> Reply {
    let request = s
        .request("POST", path)
        .header("content-type", "application/json")
        .header("x-halley-key", KEY)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    s.send(request).await
}

async fn listing(s: &TestServer, user: &str) -> Value {
    let reply = s
        .get(&format!("/api/control/user?user={user}&key={KEY}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// Waits until `user` has `n` connections the control API can reach: the observable sign
/// that held requests were admitted.
async fn wait_connections(s: &TestServer, user: &str, n: u64) {
    within(&format!("{user} to have {n} connections"), async {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tick.tick().await;
            if listing(s, user).await["count"] == n {
                return;
            }
        }
    })
    .await;
}

/// Sends a GET in its own task: for held requests, answered only later.
fn held_get(s: &Arc<TestServer>, path: String) -> JoinHandle<Reply> {
    let s = s.clone();
    tokio::spawn(async move { s.get(&path).await })
}

/// A Bayeux client of `/chat/a` with `token` in its handshake.
async fn bayeux_client(s: &TestServer, token: &str) -> String {
    let replies = bayeux(
        s,
        json!([{"channel": "/meta/handshake", "version": "1.0", "id": "h",
                "supportedConnectionTypes": ["long-polling"], "ext": {"token": token}}]),
    )
    .await;
    let client = replies[0]["clientId"].as_str().unwrap().to_string();
    // Subscribed, and past its first connect (answered at once): its next connect is held.
    let replies = bayeux(
        s,
        json!([{"channel": "/meta/subscribe", "clientId": client, "subscription": "/chat/a"},
               {"channel": "/meta/connect", "clientId": client, "connectionType": "long-polling"}]),
    )
    .await;
    assert_eq!(replies[0]["successful"], true, "{replies:?}");
    assert_eq!(replies[1]["successful"], true, "{replies:?}");
    client
}

/// A held Bayeux connect, in its own task.
fn held_connect(s: &Arc<TestServer>, client: &str) -> JoinHandle<Vec<Value>> {
    let s = s.clone();
    let batch = json!([{"channel": "/meta/connect", "clientId": client,
                        "connectionType": "long-polling", "id": "c"}]);
    tokio::spawn(async move { bayeux(&s, batch).await })
}

fn connect_reply(replies: &[Value]) -> Value {
    replies
        .iter()
        .find(|r| r["channel"] == "/meta/connect")
        .cloned()
        .unwrap_or_else(|| panic!("no connect reply in {replies:?}"))
}

/// The text frames up to the close, and the close frame.
async fn ws_until_close(ws: &mut Ws) -> (Vec<Value>, Option<(CloseCode, String)>) {
    let mut frames = Vec::new();
    loop {
        match within("ws frame", ws.next()).await {
            Some(Ok(Frame::Text(t))) => frames.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Frame::Close(close))) => {
                return (frames, close.map(|c| (c.code, c.reason.to_string())));
            }
            Some(Ok(_)) => {}
            other => panic!("websocket ended without a close: {other:?}"),
        }
    }
}

#[tokio::test]
async fn disconnect_ends_a_users_connections_on_every_transport_at_once() {
    let (s, policy, _) = server().await;
    let alice = token(&policy, "alice");
    let bob = token(&policy, "bob");
    let mut sse = s
        .stream(&format!("/sub/chat/a?transport=sse&token={alice}"))
        .await;
    assert_eq!(sse.status, 200);
    let mut ndjson = s
        .stream(&format!(
            "/sub/chat/a?transport=stream&format=json&token={alice}"
        ))
        .await;
    let mut ws = s
        .ws_with(
            "/sub/chat/a",
            &[("authorization", &format!("Bearer {alice}"))],
        )
        .await
        .unwrap();
    let longpoll = held_get(&s, format!("/sub/chat/a?token={alice}"));
    let jsonp = held_get(
        &s,
        format!("/sub/chat/a?transport=jsonp&callback=cb&token={alice}"),
    );
    let client = bayeux_client(&s, &alice).await;
    let connect = held_connect(&s, &client);
    let mut bobs = s
        .stream(&format!("/sub/chat/a?transport=sse&token={bob}"))
        .await;
    wait_connections(&s, "alice", 6).await;
    s.wait_metric(r#"halley_subscribers{transport="longpoll"}"#, 2)
        .await;

    let reply = control(
        &s,
        "/api/control/disconnect",
        json!({"user": "alice", "reason": "spam — again"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["disconnected"], 6, "{}", reply.body);
    assert_eq!(reply.json()["nodes"], json!({"others": 0, "answered": 0}));

    // SSE: `event: disconnected` with the reason, then the end.
    sse.until("event: disconnected\n").await;
    let data = sse.until("\n\n").await;
    assert!(data.contains(r#""reason":"spam — again""#), "{data:?}");
    assert_eq!(sse.rest().await, "");
    // NDJSON: the control object, then the end.
    let notice = ndjson.json_line().await;
    assert_eq!(
        notice,
        json!({"event": "disconnected", "reason": "spam — again"})
    );
    assert_eq!(ndjson.rest().await, "");
    // WebSocket: the notice, then close 1008 with the reason.
    let (frames, close) = ws_until_close(&mut ws).await;
    assert_eq!(
        frames,
        [json!({"event": "disconnected", "reason": "spam — again"})]
    );
    assert_eq!(close, Some((CloseCode::Policy, "spam — again".to_string())));
    // Long-poll: answered at once, the body an (empty) batch, the reason in a header.
    let answer = within("the held long-poll", longpoll).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "[]");
    assert_eq!(
        answer.header("x-halley-disconnected"),
        Some("spam %E2%80%94 again")
    );
    // JSONP: in the second argument.
    let answer = within("the held JSONP poll", jsonp).await.unwrap();
    assert!(
        answer.body.contains(r#""disconnected":"spam — again""#),
        "{}",
        answer.body
    );
    // Bayeux: the held connect says so, with advice to handshake again.
    let replies = within("the held Bayeux connect", connect).await.unwrap();
    let reply = connect_reply(&replies);
    assert_eq!(reply["successful"], false, "{reply}");
    assert_eq!(reply["error"], "402::disconnected spam again", "{reply}");
    assert_eq!(reply["advice"]["reconnect"], "handshake", "{reply}");

    // Bob saw nothing of it, and alice may come back: a disconnect is not a ban.
    assert_eq!(listing(&s, "alice").await["count"], 0);
    s.publish("/chat/a", "still here").await;
    bobs.until("data: still here").await;
    let back = s
        .stream(&format!("/sub/chat/a?transport=sse&token={alice}"))
        .await;
    assert_eq!(back.status, 200);
    let replies = bayeux(
        &s,
        json!([{"channel": "/meta/handshake", "version": "1.0", "id": "h",
                "supportedConnectionTypes": ["long-polling"], "ext": {"token": alice}}]),
    )
    .await;
    assert_eq!(replies[0]["successful"], true, "{replies:?}");
}

#[tokio::test]
async fn unsubscribe_takes_one_channel_off_a_two_channel_connection() {
    let (s, policy, _) = server().await;
    let alice = token(&policy, "alice");
    let mut sse = s
        .stream(&format!(
            "/sub?channel=/chat/a&channel=/chat/b&transport=sse&format=json&token={alice}"
        ))
        .await;
    let mut ws = s
        .ws_with(
            "/sub?channel=/chat/a&channel=/chat/b",
            &[("authorization", &format!("Bearer {alice}"))],
        )
        .await
        .unwrap();
    let longpoll = held_get(
        &s,
        format!("/sub?channel=/chat/a&channel=/chat/b&token={alice}"),
    );
    wait_connections(&s, "alice", 3).await;

    let reply = control(
        &s,
        "/api/control/unsubscribe",
        json!({"user": "alice", "channel": "/chat/a"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.json(),
        json!({"user": "alice", "channel": "/chat/a", "unsubscribed": 3,
               "nodes": {"others": 0, "answered": 0}})
    );
    // The held long-poll is answered at once, saying which channel went.
    let answer = within("the held long-poll", longpoll).await.unwrap();
    assert_eq!(answer.header("x-halley-unsubscribed"), Some("/chat/a"));
    assert_eq!(answer.header("x-halley-disconnected"), None);
    // The open connections say so, and carry on with the other channel only.
    sse.until("event: unsubscribed\n").await;
    assert!(sse.until("\n\n").await.contains(r#""channel":"/chat/a""#));
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"event": "unsubscribed", "channel": "/chat/a"})
    );
    s.publish("/chat/a", "gone").await;
    s.publish("/chat/b", "kept").await;
    let next = sse.until("\n\n").await;
    assert!(next.contains(r#""data":"kept""#), "{next:?}");
    let frame = ws_json(&mut ws).await;
    assert_eq!(frame["data"], "kept", "{frame}");
    let listed = listing(&s, "alice").await;
    for c in listed["connections"].as_array().unwrap() {
        assert_eq!(c["channels"], json!(["/chat/b"]), "{listed}");
    }

    // The last channel taken off ends the connection.
    let reply = control(
        &s,
        "/api/control/unsubscribe",
        json!({"user": "alice", "channel": "/chat/b"}),
    )
    .await;
    assert_eq!(reply.json()["unsubscribed"], 2, "{}", reply.body);
    sse.until("event: unsubscribed\n").await;
    sse.until("event: disconnected\n").await;
    assert!(
        sse.until("\n\n")
            .await
            .contains("unsubscribed from every channel")
    );
    assert_eq!(sse.rest().await, "");
    let (frames, close) = ws_until_close(&mut ws).await;
    assert_eq!(frames[0]["event"], "unsubscribed");
    assert_eq!(frames[1]["event"], "disconnected");
    assert_eq!(close.map(|c| c.0), Some(CloseCode::Policy));
}

#[tokio::test]
async fn listing_shows_each_connection_with_its_transport_and_channels() {
    let (s, policy, _) = server().await;
    let alice = token(&policy, "alice");
    let _sse = s
        .stream(&format!(
            "/sub?channel=/chat/b&channel=/chat/a&transport=sse&token={alice}"
        ))
        .await;
    let _ws = s
        .ws_with(
            "/sub/chat/**",
            &[("authorization", &format!("Bearer {alice}"))],
        )
        .await
        .unwrap();
    let _client = bayeux_client(&s, &alice).await;
    let listed = listing(&s, "alice").await;
    assert_eq!(listed["user"], "alice");
    assert_eq!(listed["count"], 3, "{listed}");
    let rows: Vec<(String, Value)> = listed["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(c["since"].as_u64().unwrap() >= now() - 60, "{c}");
            assert!(c["id"].is_u64(), "{c}");
            (
                c["transport"].as_str().unwrap().to_owned(),
                c["channels"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("sse".into(), json!(["/chat/a", "/chat/b"])),
            ("websocket".into(), json!(["/chat/**"])),
            ("bayeux".into(), json!(["/chat/a"])),
        ]
    );
    // Nobody, or an anonymous subscriber, has nothing to list.
    let _anonymous = s.stream("/sub/open/a?transport=sse").await;
    assert_eq!(listing(&s, "nobody").await["connections"], json!([]));
}

#[tokio::test]
async fn revoke_ends_open_connections_and_refuses_the_token_afterwards() {
    let (s, policy, clock) = server().await;
    let alice = token(&policy, "alice");
    let mut sse = s
        .stream(&format!("/sub/chat/a?transport=sse&token={alice}"))
        .await;
    let mut ws = s
        .ws_with(
            "/sub/chat/a",
            &[("authorization", &format!("Bearer {alice}"))],
        )
        .await
        .unwrap();
    let longpoll = held_get(&s, format!("/sub/chat/a?token={alice}"));
    let client = bayeux_client(&s, &alice).await;
    let connect = held_connect(&s, &client);
    wait_connections(&s, "alice", 4).await;
    s.wait_metric(r#"halley_subscribers{transport="longpoll"}"#, 2)
        .await;

    // Without `before`: every token issued until now, this second's included.
    let reply = control(&s, "/api/control/revoke", json!({"user": "alice"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["disconnected"], 4, "{}", reply.body);
    assert_eq!(reply.json()["before"], clock.load(Ordering::Relaxed) + 1);

    // Said as a lapsed token is: the client fetches a new one.
    sse.until("event: expired\n").await;
    assert!(
        sse.until("\n\n")
            .await
            .contains(r#""error":"token revoked""#)
    );
    let (frames, close) = ws_until_close(&mut ws).await;
    assert_eq!(
        frames,
        [json!({"event": "expired", "error": "token revoked"})]
    );
    assert_eq!(close, Some((CloseCode::Policy, "token revoked".into())));
    let answer = within("the held long-poll", longpoll).await.unwrap();
    assert_eq!(answer.header("x-halley-expired"), Some("token revoked"));
    let reply = connect_reply(&within("the held connect", connect).await.unwrap());
    assert_eq!(reply["error"], "401::token revoked", "{reply}");
    assert_eq!(reply["advice"]["reconnect"], "handshake", "{reply}");

    // The token is refused from now on, on every entry point.
    let refused = s.get(&format!("/sub/chat/a?token={alice}")).await;
    refused.expect_error(401);
    assert!(refused.body.contains("revoked"), "{}", refused.body);
    let replies = bayeux(
        &s,
        json!([{"channel": "/meta/handshake", "version": "1.0", "id": "h",
                "supportedConnectionTypes": ["long-polling"], "ext": {"token": alice}}]),
    )
    .await;
    assert_eq!(replies[0]["error"], "401::token revoked", "{replies:?}");
    assert_eq!(replies[0]["advice"]["reconnect"], "none", "{replies:?}");
    // A token the application issues later is not.
    clock.fetch_add(5, Ordering::Relaxed);
    let fresh = token(&policy, "alice");
    let back = s
        .stream(&format!("/sub/chat/a?transport=sse&token={fresh}"))
        .await;
    assert_eq!(back.status, 200);
}

#[tokio::test]
async fn the_control_api_is_the_backends_alone() {
    let (s, policy, _) = server().await;
    let alice = token(&policy, "alice");
    let body = json!({"user": "alice"}).to_string();
    for path in [
        "/api/control/disconnect",
        "/api/control/revoke",
        "/api/control/unsubscribe",
    ] {
        // No credential: 401. A user's token: 403. A wrong key: 401.
        let post = |extra: Option<(&'static str, String)>| {
            let mut request = s
                .request("POST", path)
                .header("content-type", "application/json");
            if let Some((name, value)) = extra {
                request = request.header(name, value);
            }
            request.body(Full::new(Bytes::from(body.clone()))).unwrap()
        };
        s.send(post(None)).await.expect_error(401);
        s.send(post(Some(("authorization", format!("Bearer {alice}")))))
            .await
            .expect_error(403);
        s.send(post(Some(("x-halley-key", "wrong".into()))))
            .await
            .expect_error(401);
    }
    s.get("/api/control/user?user=alice")
        .await
        .expect_error(401);
    s.get(&format!("/api/control/user?user=alice&token={alice}"))
        .await
        .expect_error(403);
    // A server without a backend key has no control API at all.
    let open = TestServer::start().await;
    open.get("/api/control/user?user=alice&key=anything")
        .await
        .expect_error(403);
}

#[tokio::test]
async fn bad_control_requests_are_400_with_a_json_error() {
    let (s, _, _) = server().await;
    for (path, body) in [
        ("/api/control/disconnect", "not json".to_string()),
        ("/api/control/disconnect", json!({}).to_string()),
        ("/api/control/disconnect", json!({"user": ""}).to_string()),
        (
            "/api/control/disconnect",
            json!({"user": "a", "reason": "x".repeat(257)}).to_string(),
        ),
        (
            "/api/control/disconnect",
            json!({"user": "a", "reason": "line\nbreak"}).to_string(),
        ),
        (
            "/api/control/disconnect",
            json!({"user": "a", "extra": 1}).to_string(),
        ),
        (
            "/api/control/unsubscribe",
            json!({"user": "a", "channel": "no-slash"}).to_string(),
        ),
        ("/api/control/unsubscribe", json!({"user": "a"}).to_string()),
        (
            "/api/control/revoke",
            json!({"user": "a", "before": "yesterday"}).to_string(),
        ),
        (
            "/api/control/revoke",
            json!({"user": "a", "before": -1}).to_string(),
        ),
    ] {
        let request = s
            .request("POST", path)
            .header("x-halley-key", KEY)
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let reply = s.send(request).await;
        assert_eq!(reply.status, 400, "{path} {body}: {}", reply.body);
        reply.expect_error(400);
    }
    let huge = json!({"user": "a", "reason": "x".repeat(5000)}).to_string();
    let request = s
        .request("POST", "/api/control/disconnect")
        .header("x-halley-key", KEY)
        .body(Full::new(Bytes::from(huge)))
        .unwrap();
    s.send(request).await.expect_error(413);
    s.get(&format!("/api/control/user?key={KEY}"))
        .await
        .expect_error(400);
    s.assert_still_serving().await;
}

/// The transports not covered above: iframe and multipart (the control object in their
/// framing, multipart's closing boundary), a raw line stream (just the end), and Bayeux over
/// WebSocket (the held connect is answered; the socket stays for a new handshake).
#[tokio::test]
async fn disconnect_on_iframe_multipart_raw_lines_and_bayeux_websocket() {
    let (s, policy, _) = server().await;
    let alice = token(&policy, "alice");
    let mut iframe = s
        .stream(&format!(
            "/sub/chat/a?transport=iframe&callback=cb&token={alice}"
        ))
        .await;
    let mut multipart = s
        .stream(&format!("/sub/chat/a?transport=multipart&token={alice}"))
        .await;
    let mut lines = s
        .stream(&format!("/sub/chat/a?transport=stream&token={alice}"))
        .await;
    let mut ws = s.ws("/cometd").await;
    let send = |batch: Value| Frame::Text(batch.to_string().into());
    within(
        "ws send",
        ws.send(send(
            json!([{"channel": "/meta/handshake", "version": "1.0", "id": "h",
                "supportedConnectionTypes": ["websocket"], "ext": {"token": alice}}]),
        )),
    )
    .await
    .unwrap();
    let client = ws_json(&mut ws).await[0]["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    within(
        "ws send",
        ws.send(send(json!([
            {"channel": "/meta/subscribe", "clientId": client, "subscription": "/chat/a", "id": "s"},
            {"channel": "/meta/connect", "clientId": client, "connectionType": "websocket", "id": "c"},
        ]))),
    )
    .await
    .unwrap();
    let replies = ws_json(&mut ws).await;
    assert_eq!(replies[0]["successful"], true, "{replies}");
    assert_eq!(
        replies[1]["successful"], true,
        "the first connect: {replies}"
    );
    // The next connect is held; the subscribe's reply in its frame says it was taken.
    within(
        "ws send",
        ws.send(send(json!([
            {"channel": "/meta/connect", "clientId": client, "connectionType": "websocket", "id": "c"},
            {"channel": "/meta/subscribe", "clientId": client, "subscription": "/chat/a", "id": "s2"},
        ]))),
    )
    .await
    .unwrap();
    let replies = ws_json(&mut ws).await;
    assert_eq!(replies[0]["id"], "s2", "{replies}");
    wait_connections(&s, "alice", 4).await;

    let reply = control(
        &s,
        "/api/control/disconnect",
        json!({"user": "alice", "reason": "<b>bye</b>"}),
    )
    .await;
    assert_eq!(reply.json()["disconnected"], 4, "{}", reply.body);
    // iframe: a script call with the object ('<' escaped), then the end.
    let rest = iframe.rest().await;
    assert!(
        rest.contains(r#"<script>parent.cb({"event":"disconnected","reason":"\u003cb>bye\u003c/b>"})</script>"#),
        "{rest:?}"
    );
    // multipart: a part with the object, then the closing boundary.
    let rest = multipart.rest().await;
    assert!(rest.contains(r#"{"event":"disconnected""#), "{rest:?}");
    assert!(rest.ends_with("--halley--\r\n"), "{rest:?}");
    // Raw lines have no framing for a notice: the stream just ends.
    assert_eq!(lines.rest().await, "");
    // Bayeux over WebSocket: the held connect says so; the socket stays open.
    let replies = ws_json(&mut ws).await;
    let reply = connect_reply(replies.as_array().unwrap());
    assert_eq!(reply["error"], "402::disconnected b bye /b", "{reply}");
    assert_eq!(reply["advice"]["reconnect"], "handshake", "{reply}");
    within(
        "ws send",
        ws.send(send(
            json!([{"channel": "/meta/handshake", "version": "1.0", "id": "h2",
                "supportedConnectionTypes": ["websocket"], "ext": {"token": alice}}]),
        )),
    )
    .await
    .unwrap();
    assert_eq!(
        ws_json(&mut ws).await[0]["successful"],
        true,
        "back as a new session"
    );
}

/// A disconnect notice over the WebSocket is the last frame even when messages were queued,
/// and a client that sends frames meanwhile does not hold it up.
#[tokio::test]
async fn a_websocket_disconnect_is_not_held_up_by_queued_messages() {
    let (s, policy, _) = server().await;
    let alice = token(&policy, "alice");
    let mut ws = s
        .ws_with(
            "/sub/chat/a",
            &[("authorization", &format!("Bearer {alice}"))],
        )
        .await
        .unwrap();
    within("ws send", ws.send(Frame::Ping(Bytes::new())))
        .await
        .unwrap();
    s.publish("/chat/a", "one").await;
    assert_eq!(ws_json(&mut ws).await["data"], "one");
    let reply = control(&s, "/api/control/disconnect", json!({"user": "alice"})).await;
    assert_eq!(reply.json()["disconnected"], 1);
    let (frames, close) = ws_until_close(&mut ws).await;
    assert_eq!(
        frames.last(),
        Some(&json!({"event": "disconnected", "reason": "disconnected by the application"}))
    );
    assert_eq!(close.map(|c| c.0), Some(CloseCode::Policy));
}
