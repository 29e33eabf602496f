//! Calls from clients to the application (`rpc_url`) end to end, against a real HTTP
//! application (`common::app`): `POST /rpc/{method}` and Bayeux `/service/**` over
//! long-polling and WebSocket — the caller's identity, the answer to that caller only, the
//! policy's decision, and what a refusing, failing, unreachable, busy or slow application
//! becomes.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::app::{Answer, FakeApp};
use common::{Reply, TestServer, Ws, bayeux, hs256, within, ws_json};
use futures_util::SinkExt;
use halley_engine::access::{AccessConfig, NamespaceConfig, Policy, PublishRule, TokenConfig};
use halley_engine::{Engine, EngineConfig};
use halley_http::HttpConfig;
use halley_http::outbound::Endpoint;
use halley_http::rpc::RpcConfig;
use hmac::{KeyInit, Mac};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

const TOKEN_SECRET: &str = "test-secret-of-32-bytes-or-more!";
const RPC_SECRET: &str = "rpc-secret";

fn rpc_to(app: &FakeApp) -> RpcConfig {
    RpcConfig::new(Endpoint::parse(&app.url("/rpc")).unwrap())
}

/// A server under `policy` calling `rpc`, with `tweak` for the rest.
async fn server(policy: Policy, rpc: RpcConfig, tweak: impl FnOnce(&mut HttpConfig)) -> TestServer {
    let engine = Engine::in_memory(EngineConfig::default());
    assert!(engine.set_policy(policy).is_ok());
    TestServer::with_engine(engine, None, |http| {
        http.rpc = Some(rpc);
        tweak(http);
    })
    .await
}

/// Tokens are checked; `/service/**` takes calls from tokens whose `publish` claim covers
/// them.
fn token_policy() -> Policy {
    Policy::new(AccessConfig {
        tokens: TokenConfig {
            hs256_secret: Some(TOKEN_SECRET.into()),
            ..TokenConfig::default()
        },
        namespaces: vec![NamespaceConfig {
            publish: PublishRule::Claim,
            ..NamespaceConfig::new("/service/**")
        }],
        ..AccessConfig::default()
    })
    .unwrap()
}

/// An HS256 token over `claims`.
fn token(claims: Value) -> String {
    hs256(&claims, TOKEN_SECRET)
}

fn alice() -> String {
    token(json!({"sub": "alice", "publish": ["/service/users/**"], "info": {"name": "Alice"}}))
}

/// `POST /rpc{method}` with `body`, as the holder of `token` when given.
async fn call(s: &TestServer, method: &str, token: Option<&str>, body: &str) -> Reply {
    let mut request = s
        .request("POST", &format!("/rpc{method}"))
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    s.send(
        request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await
}

fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[tokio::test]
async fn a_call_carries_the_callers_identity_and_the_answer_comes_back() {
    let script = vec![
        Answer::Json(200, r#"{"data":{"found":["bob"]}}"#),
        Answer::Json(403, r#"{"error":"not your address book"}"#),
        Answer::Json(500, r#"{"data":"ignored"}"#),
    ];
    let mut app = FakeApp::start(script, Answer::Json(200, "{}")).await;
    let mut rpc = rpc_to(&app);
    rpc.secret = Some(RPC_SECRET.into());
    let s = server(token_policy(), rpc, |_| {}).await;
    let alice = alice();

    let reply = call(&s, "/users/find", Some(&alice), r#"{"q":"bob"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json(), json!({"found": ["bob"]}));
    let got = app.next().await;
    assert_eq!(got.path, "/rpc");
    assert_eq!(
        got.json(),
        json!({
            "method": "users/find", "channel": "/service/users/find", "data": {"q": "bob"},
            "user": "alice", "info": {"name": "Alice"}, "client": null,
        })
    );
    assert_eq!(
        got.header("x-halley-signature"),
        Some(signature(RPC_SECRET, &got.body).as_str())
    );

    // The application's refusal reaches the caller as it is; its failure is a 502.
    let refused = call(&s, "/users/find", Some(&alice), "{}").await;
    refused.expect_error(403);
    assert_eq!(refused.json()["error"], "not your address book");
    call(&s, "/users/find", Some(&alice), "")
        .await
        .expect_error(502);
    assert_eq!(app.next().await.json()["data"], json!({}));
    assert_eq!(app.next().await.json()["data"], Value::Null);

    // The policy decides before anything is sent: no token, a token that does not cover the
    // method, a method no namespace covers, bad input.
    call(&s, "/users/find", None, "{}").await.expect_error(401);
    call(&s, "/admin/drop", Some(&alice), "{}")
        .await
        .expect_error(403);
    call(&s, "/users/find", Some(&alice), "{not json")
        .await
        .expect_error(400);
    call(&s, "/users/*", Some(&alice), "{}")
        .await
        .expect_error(400);
    assert!(!app.has_more(), "refused calls reached the application");
    assert_eq!(s.metric("halley_rpc_answered_total").await, 1);
    assert_eq!(s.metric("halley_rpc_failed_total").await, 2);
}

#[tokio::test]
async fn an_unreachable_application_and_a_full_bound_are_503() {
    // Nothing listens on a port just freed.
    let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = RpcConfig::new(
        Endpoint::parse(&format!("http://{}/rpc", free.local_addr().unwrap())).unwrap(),
    );
    drop(free);
    let s = server(Policy::open(), down, |_| {}).await;
    let reply = call(&s, "/ping", None, "1").await;
    reply.expect_error(503);
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{}",
        reply.body
    );

    // One call at most: the second is refused at once while the first is held.
    let mut app = FakeApp::start(vec![Answer::Stall], Answer::Json(200, "{}")).await;
    let mut rpc = rpc_to(&app);
    rpc.concurrency = 1;
    let s = std::sync::Arc::new(server(Policy::open(), rpc, |_| {}).await);
    let first = {
        let s = s.clone();
        tokio::spawn(async move { call(&s, "/slow", None, r#""first""#).await })
    };
    assert_eq!(app.next().await.json()["data"], "first");
    let busy = call(&s, "/slow", None, r#""second""#).await;
    busy.expect_error(503);
    assert!(busy.body.contains("too many calls"), "{}", busy.body);
    app.release();
    let first = within("the first call", first).await.unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body, "null");
    assert_eq!(s.metric("halley_rpc_busy_total").await, 1);
    assert!(!app.has_more());
}

#[tokio::test(start_paused = true)]
async fn a_slow_application_is_504() {
    let app = FakeApp::start(vec![Answer::Stall], Answer::Json(200, "{}")).await;
    let mut rpc = rpc_to(&app);
    rpc.timeout = Duration::from_secs(2);
    let s = server(Policy::open(), rpc, |_| {}).await;
    let reply = call(&s, "/slow", None, "{}").await;
    reply.expect_error(504);
    assert!(
        reply.body.contains("did not answer within 2s"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn without_rpc_url_calls_are_501() {
    let s = TestServer::start().await;
    call(&s, "/anything", None, "{}").await.expect_error(501);
}

// ---- Bayeux ----

fn handshake(types: &str) -> Value {
    json!([{"channel": "/meta/handshake", "version": "1.0", "id": "h", "supportedConnectionTypes": [types]}])
}

#[tokio::test]
async fn a_long_polling_service_call_is_answered_in_its_request() {
    let script = vec![
        Answer::Json(200, r#"{"data":{"sum":3}}"#),
        Answer::Json(500, "{}"),
    ];
    let mut app = FakeApp::start(script, Answer::Json(200, "{}")).await;
    let s = server(Policy::open(), rpc_to(&app), |_| {}).await;
    let replies = bayeux(&s, handshake("long-polling")).await;
    let client = replies[0]["clientId"].as_str().unwrap().to_owned();
    let replies = bayeux(
        &s,
        json!([{"channel": "/service/add", "clientId": client, "data": [1, 2], "id": "c1"}]),
    )
    .await;
    assert_eq!(
        replies,
        [json!({"channel": "/service/add", "id": "c1", "successful": true, "data": {"sum": 3}})]
    );
    let got = app.next().await.json();
    assert_eq!(got["method"], "add");
    assert_eq!(got["data"], json!([1, 2]));
    assert_eq!(got["client"], client.as_str());
    assert_eq!(got["user"], Value::Null);
    let replies = bayeux(
        &s,
        json!([{"channel": "/service/add", "clientId": client, "data": [], "id": "c2"}]),
    )
    .await;
    assert_eq!(replies[0]["successful"], false, "{replies:?}");
    assert_eq!(
        replies[0]["error"],
        "502:/service/add:the application failed HTTP 500 Internal Server Error"
    );
}

async fn ws_send(ws: &mut Ws, batch: Value) {
    within("websocket send", ws.send(Frame::text(batch.to_string())))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_websocket_keeps_delivering_while_a_call_runs() {
    let mut app = FakeApp::start(vec![Answer::Stall], Answer::Json(200, r#"{"data":"ok"}"#)).await;
    let s = server(Policy::open(), rpc_to(&app), |http| {
        http.hold_timeout = Duration::from_secs(30);
    })
    .await;
    let mut ws = s.ws("/cometd").await;
    ws_send(&mut ws, handshake("websocket")).await;
    let client = ws_json(&mut ws).await[0]["clientId"]
        .as_str()
        .unwrap()
        .to_owned();
    ws_send(
        &mut ws,
        json!([
            {"channel": "/meta/subscribe", "clientId": client, "subscription": "/room", "id": "s"},
            {"channel": "/meta/connect", "clientId": client, "connectionType": "websocket", "id": "k"},
        ]),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await[0]["successful"], true);
    ws_send(
        &mut ws,
        json!([{"channel": "/service/slow", "clientId": client, "data": 1, "id": "c1"}]),
    )
    .await;
    app.next().await;
    // The application holds the call; a message still arrives at once.
    let id = s.publish("/room", "meanwhile").await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!([{"channel": "/room", "id": id, "data": "meanwhile"}])
    );
    app.release();
    assert_eq!(
        ws_json(&mut ws).await,
        json!([{"channel": "/service/slow", "id": "c1", "successful": true, "data": null}])
    );
}
