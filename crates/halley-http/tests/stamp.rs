//! Stamping (`stamp = true` on a namespace): at every publish entry point, over real HTTP and
//! WebSocket, the server writes the publisher's identity into the message's `"from"` —
//! overwriting whatever the client put there — refuses data that is not an object, leaves the
//! backend's messages alone, and stamps an anonymous publisher `null`.

mod common;

use bytes::Bytes;
use common::{Open, TestServer, Ws, bayeux, bayeux_client, hs256, now, ws_json};
use futures_util::SinkExt;
use halley_engine::access::{
    AccessConfig, NamespaceConfig, PublishRule, SubscribeRule, TokenConfig,
};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

const KEY: &str = "backend-key";
const SECRET: &str = "test-secret-of-32-bytes-or-more!";

fn namespace(channels: &str, publish: PublishRule, stamp: bool) -> NamespaceConfig {
    NamespaceConfig {
        subscribe: SubscribeRule::Anyone,
        publish,
        stamp,
        ..NamespaceConfig::new(channels)
    }
}

/// `/talk/**`: tokens publish (by claim), stamped. `/open/**`: anyone publishes, stamped.
/// `/plain/**`: anyone publishes, not stamped. `/inbox/**`: inboxes, stamped.
fn config() -> AccessConfig {
    AccessConfig {
        publish_key: Some(KEY.into()),
        tokens: TokenConfig {
            hs256_secret: Some(SECRET.into()),
            ..TokenConfig::default()
        },
        namespaces: vec![
            namespace("/talk/**", PublishRule::Claim, true),
            namespace("/open/**", PublishRule::Anyone, true),
            namespace("/plain/**", PublishRule::Anyone, false),
            namespace("/inbox/**", PublishRule::Anyone, true),
        ],
        app: None,
    }
}

/// An HS256 token over `claims`.
fn token(claims: Value) -> String {
    hs256(&claims, SECRET)
}

/// Alice's token: she may publish anywhere under `/talk`, `/open` and `/plain`, and the
/// application vouches for her name and colour.
fn alice() -> String {
    token(json!({
        "sub": "u-alice",
        "exp": now() + 3600,
        "iat": now(),
        "publish": ["/talk/**", "/open/**", "/plain/**"],
        "info": {"name": "Alice", "color": "#1e90ff"},
    }))
}

fn alice_from() -> Value {
    json!({"user": "u-alice", "info": {"name": "Alice", "color": "#1e90ff"}})
}

/// What a forger sends: bob's name, and a "from" of its own making.
fn forged(n: u32) -> Value {
    json!({"name": "bob", "message": n, "color": "#ff0000", "from": {"user": "u-bob", "info": {"name": "bob"}}})
}

fn enc(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Reads NDJSON lines until a message object (skipping heartbeats).
async fn next_message(open: &mut Open) -> Value {
    loop {
        let line = open.line().await;
        if !line.is_empty() {
            return serde_json::from_str(&line).unwrap();
        }
    }
}

/// A publish with `body` (a content type and bytes), sent with `headers`.
async fn send(
    s: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &str,
) -> common::Reply {
    let mut request = s.request(method, path).header("content-type", content_type);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    s.send(
        request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await
}

async fn ws_send(ws: &mut Ws, value: Value) {
    ws.send(Frame::text(value.to_string())).await.unwrap();
}

fn error_code(reply: &Value) -> u16 {
    reply["error"]
        .as_str()
        .and_then(|e| e.split(':').next())
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn every_publish_entry_point_stamps_the_sender() {
    let s = TestServer::with_access(config()).await;
    let mut sub = s.stream("/sub/talk/**?transport=stream&format=json").await;
    let bearer = format!("Bearer {}", alice());
    let auth = [("authorization", bearer.as_str())];
    let mut sent = Vec::new();

    // POST and PUT /pub.
    for (n, method) in [(1, "POST"), (2, "PUT")] {
        send(
            &s,
            method,
            "/pub/talk/a",
            &auth,
            "application/json",
            &forged(n).to_string(),
        )
        .await
        .expect_published("/talk/a");
        sent.push(("/pub", n));
    }
    // JSONP GET /pub.
    let reply = s
        .get(&format!(
            "/pub/talk/a?callback=cb&token={}&data={}",
            alice(),
            enc(&forged(3).to_string())
        ))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    sent.push(("jsonp", 3));
    // An inbox send is stamped like any other publish (its namespace stamps).
    let inbox = s.post("/api/inbox", "text/plain", "").await.json();
    let (inbox_channel, secret) = (
        inbox["channel"].as_str().unwrap().to_owned(),
        inbox["secret"].as_str().unwrap().to_owned(),
    );
    let mut owner = s
        .stream(&format!(
            "/sub?channel={inbox_channel}&inbox={secret}&transport=stream&format=json"
        ))
        .await;
    assert_eq!(owner.status, 200);
    let reply = send(
        &s,
        "POST",
        inbox["path"].as_str().unwrap(),
        &auth,
        "application/json",
        &forged(4).to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let got = next_message(&mut owner).await;
    assert_eq!(got["data"]["from"], alice_from(), "inbox send: {got}");
    assert_eq!(
        got["data"]["name"], "bob",
        "the name field is the client's: {got}"
    );

    // Frames on a native WebSocket.
    let mut ws = s.ws(&format!("/sub/talk/a?token={}", alice())).await;
    ws_send(&mut ws, forged(5)).await;
    sent.push(("websocket frame", 5));
    // Bayeux, long-polling, with the token in the handshake's ext.
    let client = bayeux_client(&s, json!({"token": alice()})).await;
    let replies = bayeux(
        &s,
        json!([{"channel": "/talk/a", "clientId": client, "data": forged(6), "id": "p"}]),
    )
    .await;
    assert_eq!(replies[0]["successful"], true, "{}", replies[0]);
    sent.push(("bayeux long-polling", 6));
    // Bayeux, callback-polling, on the same session.
    let batch = json!([{"channel": "/talk/a", "clientId": client, "data": forged(7), "id": "q"}]);
    let reply = s
        .get(&format!(
            "/cometd?jsonp=cb&message={}",
            enc(&batch.to_string())
        ))
        .await;
    assert!(reply.body.contains("\"successful\":true"), "{}", reply.body);
    sent.push(("bayeux callback-polling", 7));
    // Bayeux over WebSocket.
    let mut cometd = s.ws("/cometd").await;
    ws_send(
        &mut cometd,
        json!([{"channel": "/meta/handshake", "version": "1.0", "id": "h",
                "ext": {"token": alice()}, "supportedConnectionTypes": ["websocket"]}]),
    )
    .await;
    let reply = ws_json(&mut cometd).await;
    let ws_client = reply[0]["clientId"].as_str().unwrap().to_owned();
    ws_send(
        &mut cometd,
        json!([{"channel": "/talk/a", "clientId": ws_client, "data": forged(8), "id": "p"}]),
    )
    .await;
    let reply = ws_json(&mut cometd).await;
    assert_eq!(reply[0]["successful"], true, "{reply}");
    sent.push(("bayeux websocket", 8));

    for (entry, n) in sent {
        let got = next_message(&mut sub).await;
        assert_eq!(got["data"]["message"], n, "{entry}: {got}");
        assert_eq!(got["data"]["from"], alice_from(), "{entry}: {got}");
        assert_eq!(
            got["data"]["name"], "bob",
            "{entry}: the name is left: {got}"
        );
    }

    // rupy /push: the name comes from the token too (and `name` may be left out).
    for query in ["name=bob&", ""] {
        let reply = s
            .get(&format!(
                "/push?{query}message=hi&channel=/talk/a&token={}",
                alice()
            ))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let got = next_message(&mut sub).await;
        assert_eq!(
            got["data"],
            json!({"name": "Alice", "message": "hi", "from": alice_from()}),
            "push?{query}"
        );
    }
}

#[tokio::test]
async fn data_that_is_not_an_object_is_refused_where_messages_are_stamped() {
    let s = TestServer::with_access(config()).await;
    let bearer = format!("Bearer {}", alice());
    let auth = [("authorization", bearer.as_str())];
    let mut sub = s.stream("/sub/talk/**?transport=stream&format=json").await;
    let reply = send(&s, "POST", "/pub/talk/a", &auth, "text/plain", "hello").await;
    reply.expect_error(400);
    assert!(reply.body.contains("JSON object"), "{}", reply.body);
    send(&s, "POST", "/pub/talk/a", &auth, "application/json", "[1]")
        .await
        .expect_error(400);
    let reply = s
        .get(&format!("/pub/talk/a?callback=cb&token={}&data=1", alice()))
        .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    // A WebSocket frame: an error object back, the connection stays.
    let mut ws = s.ws(&format!("/sub/talk/a?token={}", alice())).await;
    ws.send(Frame::text("just text")).await.unwrap();
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["event"], "error", "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("JSON object"),
        "{reply}"
    );
    // Bayeux: 400::.
    let client = bayeux_client(&s, json!({"token": alice()})).await;
    let replies = bayeux(
        &s,
        json!([{"channel": "/talk/a", "clientId": client, "data": "just text", "id": "p"}]),
    )
    .await;
    assert_eq!(replies[0]["successful"], false, "{}", replies[0]);
    assert_eq!(error_code(&replies[0]), 400, "{}", replies[0]);
    // Nothing of that was published; an object still is, on the same WebSocket.
    ws_send(&mut ws, json!({"message": "an object"})).await;
    let got = next_message(&mut sub).await;
    assert_eq!(
        got["data"],
        json!({"message": "an object", "from": alice_from()}),
        "{got}"
    );
}

#[tokio::test]
async fn the_backend_key_publishes_as_it_likes() {
    let s = TestServer::with_access(config()).await;
    let mut sub = s.stream("/sub/talk/**?transport=stream&format=json").await;
    let data = json!({"name": "the app", "from": {"user": "system"}});
    let key = [("x-halley-key", KEY)];
    send(
        &s,
        "POST",
        "/pub/talk/a",
        &key,
        "application/json",
        &data.to_string(),
    )
    .await
    .expect_published("/talk/a");
    send(&s, "POST", "/pub/talk/a", &key, "text/plain", "plain text")
        .await
        .expect_published("/talk/a");
    assert_eq!(next_message(&mut sub).await["data"], data);
    assert_eq!(next_message(&mut sub).await["data"], "plain text");
}

#[tokio::test]
async fn anonymous_publishers_are_stamped_null() {
    let s = TestServer::with_access(config()).await;
    let mut sub = s.stream("/sub/open/**?transport=stream&format=json").await;
    send(
        &s,
        "POST",
        "/pub/open/a",
        &[],
        "application/json",
        &forged(1).to_string(),
    )
    .await
    .expect_published("/open/a");
    let got = next_message(&mut sub).await;
    assert_eq!(got["data"]["from"], Value::Null, "{got}");
    assert_eq!(got["data"]["name"], "bob", "{got}");
    // rupy: no token, so the name is the one asked for; "from" says nobody vouches for it.
    let reply = s.get("/push?name=carol&message=hi&channel=/open/a").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let got = next_message(&mut sub).await;
    assert_eq!(
        got["data"],
        json!({"name": "carol", "message": "hi", "from": null})
    );
    // A WebSocket without a token: its frames are stamped null too.
    let mut ws = s.ws("/sub/open/a").await;
    ws_send(&mut ws, forged(2)).await;
    let got = next_message(&mut sub).await;
    assert_eq!(got["data"]["message"], 2, "{got}");
    assert_eq!(got["data"]["from"], Value::Null, "{got}");
    // Where only tokens publish, an anonymous publish is refused before anything is stamped.
    send(
        &s,
        "POST",
        "/pub/talk/a",
        &[],
        "application/json",
        &forged(3).to_string(),
    )
    .await
    .expect_error(401);
}

#[tokio::test]
async fn namespaces_that_do_not_stamp_leave_data_alone() {
    let s = TestServer::with_access(config()).await;
    let mut sub = s.stream("/sub/plain/**?transport=stream&format=json").await;
    let bearer = format!("Bearer {}", alice());
    send(
        &s,
        "POST",
        "/pub/plain/a",
        &[("authorization", bearer.as_str())],
        "application/json",
        &forged(1).to_string(),
    )
    .await
    .expect_published("/plain/a");
    assert_eq!(next_message(&mut sub).await["data"], forged(1));
    let reply = s.get("/push?name=bob&message=hi&channel=/plain/a").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        next_message(&mut sub).await["data"],
        json!({"name": "bob", "message": "hi"})
    );
}
