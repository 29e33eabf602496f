//! Webhooks end to end: a real server telling a real HTTP application (`common::app`) what
//! happens — signed batches, retries and refusals, a full queue that drops and counts without
//! slowing delivery, presence and occupancy events, publish events only where asked.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::app::{Answer, FakeApp};
use common::{TestServer, hs256, within, ws_json};
use futures_util::SinkExt;
use halley_engine::access::{
    AccessConfig, NamespaceConfig, Policy, PublishRule, SubscribeRule, TokenConfig,
};
use halley_engine::observe::Kinds;
use halley_engine::{Engine, EngineConfig};
use halley_http::hooks::WebhookConfig;
use halley_http::outbound::Endpoint;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

const SECRET: &str = "webhook-secret";
const TOKEN_SECRET: &str = "test-secret-of-32-bytes-or-more!";
const KEY: &str = "backend-key";
const GRACE: Duration = Duration::from_millis(200);

/// Webhooks to `app`, retried after 10 ms (doubling) rather than half a second.
fn hooks_to(app: &FakeApp) -> WebhookConfig {
    let mut config = WebhookConfig::new(Endpoint::parse(&app.url("/events")).unwrap(), SECRET);
    config.backoff = Duration::from_millis(10);
    config
}

/// A server telling `hooks`, under `policy`, members and channels leaving after [`GRACE`].
async fn server(hooks: WebhookConfig, policy: Policy, key: Option<&str>) -> TestServer {
    let engine = Engine::in_memory(EngineConfig::default());
    engine.set_presence_grace(GRACE);
    assert!(engine.set_policy(policy).is_ok());
    TestServer::with_engine(engine, key.map(str::to_owned), |http| {
        http.webhooks = Some(hooks);
    })
    .await
}

/// An open server telling `app` the default events.
async fn open_server(app: &FakeApp) -> TestServer {
    server(hooks_to(app), Policy::open(), None).await
}

/// The signature the application computes to check a body: `sha256=` and the hex HMAC.
fn expected_signature(secret: &str, body: &[u8]) -> String {
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

fn channels(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{} {}", e["name"].as_str().unwrap(), e["channel"]))
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn batches_are_signed_with_an_hmac_of_the_body() {
    let mut app = FakeApp::ok().await;
    let s = open_server(&app).await;
    let before = now_ms();
    let _sub = s.stream("/sub/room/a?transport=sse").await;
    let batch = app.next().await;
    assert_eq!(batch.path, "/events");
    assert_eq!(batch.header("content-type"), Some("application/json"));
    let signature = batch.header("x-halley-signature").unwrap();
    assert_eq!(signature, expected_signature(SECRET, &batch.body));
    assert_ne!(signature, expected_signature("another", &batch.body));
    let body = batch.json();
    let event = &body["events"][0];
    assert_eq!(event["name"], "channel_occupied");
    assert_eq!(event["channel"], "/room/a");
    let at = event["time_ms"].as_u64().unwrap();
    assert!(
        at >= before && body["time_ms"].as_u64().unwrap() >= at,
        "{body}"
    );
    s.wait_metric("halley_webhook_events_sent_total", 1).await;
}

#[tokio::test]
async fn a_batch_is_retried_after_5xx_and_taken_once_in_order() {
    let script = vec![Answer::Json(503, "{}"), Answer::Json(503, "{}")];
    let mut app = FakeApp::start(script, Answer::Json(200, "{}")).await;
    let s = open_server(&app).await;
    let _a = s.stream("/sub/room/a?transport=sse").await;
    let _b = s.stream("/sub/room/b?transport=sse").await;
    let _c = s.stream("/sub/room/c?transport=sse").await;
    // Two 503s, then the same batch once more: same body, same signature.
    let first = app.next().await;
    let second = app.next().await;
    let taken = app.next().await;
    assert_eq!(first.body, second.body);
    assert_eq!(second.body, taken.body);
    assert_eq!(
        first.header("x-halley-signature"),
        taken.header("x-halley-signature")
    );
    // Whatever the batches, the application took each event once, in order.
    let mut events = taken.events();
    while events.len() < 3 {
        events.extend(app.next().await.events());
    }
    assert_eq!(
        channels(&events),
        [
            r#"channel_occupied "/room/a""#,
            r#"channel_occupied "/room/b""#,
            r#"channel_occupied "/room/c""#
        ]
    );
    s.wait_metric("halley_webhook_events_sent_total", 3).await;
    assert_eq!(s.metric("halley_webhook_retries_total").await, 2);
    assert_eq!(s.metric("halley_webhook_events_failed_total").await, 0);
}

#[tokio::test]
async fn a_refusal_is_not_retried_and_a_batch_failing_every_attempt_is_given_up() {
    let script = vec![
        Answer::Json(400, r#"{"error":"no"}"#),
        Answer::Json(503, "{}"),
        Answer::Json(500, "{}"),
    ];
    let mut app = FakeApp::start(script, Answer::Json(200, "{}")).await;
    let mut hooks = hooks_to(&app);
    hooks.attempts = 2;
    let s = server(hooks, Policy::open(), None).await;
    let _a = s.stream("/sub/room/a?transport=sse").await;
    assert_eq!(
        channels(&app.next().await.events()),
        [r#"channel_occupied "/room/a""#]
    );
    s.wait_metric("halley_webhook_events_failed_total", 1).await;
    // The next event is a new batch, not the refused one again.
    let _b = s.stream("/sub/room/b?transport=sse").await;
    let first = app.next().await;
    let again = app.next().await;
    assert_eq!(channels(&first.events()), [r#"channel_occupied "/room/b""#]);
    assert_eq!(first.body, again.body);
    s.wait_metric("halley_webhook_events_failed_total", 2).await;
    let _c = s.stream("/sub/room/c?transport=sse").await;
    assert_eq!(
        channels(&app.next().await.events()),
        [r#"channel_occupied "/room/c""#]
    );
    s.wait_metric("halley_webhook_events_sent_total", 1).await;
    assert_eq!(s.metric("halley_webhook_retries_total").await, 1);
}

/// `/chat/**` reports publishes (anyone publishes); nothing else is covered.
fn publish_reporting() -> Policy {
    Policy::new(AccessConfig {
        namespaces: vec![NamespaceConfig {
            publish: PublishRule::Anyone,
            webhooks: Some(Kinds::parse(&["publish"]).unwrap()),
            ..NamespaceConfig::new("/chat/**")
        }],
        ..AccessConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_while_delivery_goes_on() {
    let mut app = FakeApp::start(vec![Answer::Stall], Answer::Json(200, "{}")).await;
    let mut hooks = hooks_to(&app);
    hooks.queue_size = 4;
    let s = server(hooks, publish_reporting(), None).await;
    let mut sub = s.stream("/sub/chat/a?transport=stream&format=json").await;
    s.publish_json("/chat/a", "0").await;
    // The application holds the first batch: the sending task waits on it.
    let held = app.next().await;
    assert_eq!(held.events()[0]["data"], 0);
    for n in 1..20 {
        s.publish_json("/chat/a", &n.to_string()).await;
    }
    // Every message reached its subscriber while the webhook was stalled.
    for n in 0..20 {
        assert_eq!(sub.json_line().await["data"], n);
    }
    assert!(
        !app.has_more(),
        "nothing more was sent while the batch was held"
    );
    // One in flight, four queued, fifteen dropped.
    assert_eq!(s.metric("halley_webhook_queued").await, 5);
    assert_eq!(s.metric("halley_webhook_events_dropped_total").await, 15);
    app.release();
    let rest = app.events(4).await;
    let data: Vec<&Value> = rest.iter().map(|e| &e["data"]).collect();
    assert_eq!(data, [1, 2, 3, 4]);
    s.wait_metric("halley_webhook_events_sent_total", 5).await;
    assert_eq!(s.metric("halley_webhook_queued").await, 0);
}

fn enc(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn members_joining_and_leaving_and_channels_occupied_and_vacated() {
    let mut app = FakeApp::ok().await;
    let s = open_server(&app).await;
    let declaration = json!({"channel": "/talk", "member": "m-alice-1", "info": {"name": "alice"}});
    let alice = s
        .stream(&format!(
            "/sub/talk?transport=sse&presence={}",
            enc(&declaration.to_string())
        ))
        .await;
    let events = app.events(2).await;
    assert_eq!(events[0]["name"], "channel_occupied");
    assert_eq!(events[0]["channel"], "/talk");
    assert_eq!(events[1]["name"], "member_added");
    assert_eq!(events[1]["channel"], "/talk");
    assert_eq!(events[1]["member"], "m-alice-1");
    assert_eq!(events[1]["info"], json!({"name": "alice"}));
    // Her connection closes: after the grace she has left and the channel is empty.
    drop(alice);
    let mut events = app.events(2).await;
    events.sort_by_key(|e| e["name"].as_str().unwrap().to_owned());
    assert_eq!(events[0]["name"], "channel_vacated");
    assert_eq!(events[1]["name"], "member_removed");
    assert_eq!(events[1]["member"], "m-alice-1");
    assert_eq!(events[1]["info"], json!({"name": "alice"}));
}

/// An HS256 token over `claims`.
fn token(claims: Value) -> String {
    hs256(&claims, TOKEN_SECRET)
}

#[tokio::test]
async fn publishes_are_told_from_every_way_in_only_where_a_namespace_asks() {
    let mut app = FakeApp::ok().await;
    let namespace = |channels: &str, publish, webhooks: Option<&[&str]>| NamespaceConfig {
        subscribe: SubscribeRule::Anyone,
        publish,
        webhooks: webhooks.map(|k| Kinds::parse(k).unwrap()),
        ..NamespaceConfig::new(channels)
    };
    let policy = Policy::new(AccessConfig {
        publish_key: Some(KEY.into()),
        tokens: TokenConfig {
            hs256_secret: Some(TOKEN_SECRET.into()),
            ..TokenConfig::default()
        },
        namespaces: vec![
            namespace("/chat/**", PublishRule::Claim, Some(&["publish"])),
            namespace("/news/**", PublishRule::Anyone, None),
        ],
        app: None,
    })
    .unwrap();
    let s = server(hooks_to(&app), policy, Some(KEY)).await;
    let alice = token(json!({
        "sub": "alice",
        "publish": ["/chat/**"],
        "info": {"name": "Alice"},
    }));
    let bearer = format!("Bearer {alice}");

    // POST /pub with a token: told, with who published.
    let request = s
        .request("POST", "/pub/chat/a")
        .header("content-type", "application/json")
        .header("authorization", &bearer)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"n":1}"#,
        )))
        .unwrap();
    let id = s.send(request).await.expect_published("/chat/a");
    let event = &app.events(1).await[0];
    assert_eq!(
        *event,
        json!({
            "name": "client_publish", "channel": "/chat/a", "time_ms": event["time_ms"],
            "id": id, "data": {"n": 1}, "user": "alice", "info": {"name": "Alice"},
        })
    );
    // The backend's own publish, and a publish where no namespace asks: not told…
    s.publish_json("/chat/a", r#"{"n":2}"#).await;
    s.post("/pub/news/a", "application/json", r#"{"n":3}"#)
        .await
        .expect_published("/news/a");
    // …so the next event is rupy's push.
    let push = s
        .get(&format!(
            "/push?name=bob&message=hi&channel=/chat/b&token={alice}"
        ))
        .await;
    push.expect_published("/chat/b");
    let event = &app.events(1).await[0];
    assert_eq!(event["channel"], "/chat/b");
    assert_eq!(event["data"], json!({"name": "bob", "message": "hi"}));
    assert_eq!(event["user"], "alice");

    // A frame on a native WebSocket.
    let mut ws = s.ws(&format!("/sub/chat/c?token={alice}")).await;
    within("ws send", ws.send(Frame::text(r#"{"n":4}"#)))
        .await
        .unwrap();
    assert_eq!(ws_json(&mut ws).await["data"], json!({"n": 4}));
    let event = &app.events(1).await[0];
    assert_eq!(event["channel"], "/chat/c");
    assert_eq!(event["data"], json!({"n": 4}));
    assert_eq!(event["user"], "alice");

    // A Bayeux publish, from a session handshaken with the token.
    let handshake = json!([{
        "channel": "/meta/handshake", "version": "1.0", "id": "h",
        "supportedConnectionTypes": ["long-polling"], "ext": {"token": alice},
    }]);
    let replies = s
        .post("/cometd", "application/json", handshake.to_string())
        .await
        .json();
    let client = replies[0]["clientId"].as_str().unwrap().to_owned();
    let publish = json!([{"channel": "/chat/d", "clientId": client, "data": {"n": 5}, "id": "p"}]);
    let replies = s
        .post("/cometd", "application/json", publish.to_string())
        .await
        .json();
    assert_eq!(replies[0]["successful"], true, "{replies}");
    let event = &app.events(1).await[0];
    assert_eq!(event["channel"], "/chat/d");
    assert_eq!(event["data"], json!({"n": 5}));
    assert_eq!(event["user"], "alice");
    assert!(!app.has_more());
}
