//! Bayeux on `/cometd` over real HTTP and WebSocket: long-polling and callback-polling end to
//! end, the CometD path suffixes, request limits, the `BAYEUX_BROWSER` cookie and
//! `multiple-clients` advice, a held connect aborted by its client (Faye 1.4.3's crash),
//! WebSocket (pushes while a connect is held, timeout, preemption, disconnect) and shutdown.
//!
//! A held long-poll connect is observed through `/metrics` (`halley_subscribers` counts it
//! while it is held); a held WebSocket connect through the reply to a later frame on the same
//! socket, which the server handles in order.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::wire::Transport;
use common::{Reply, TestServer, Ws, read_to_close, within, ws_json, ws_next};
use futures_util::SinkExt;
use halley_engine::bayeux::SESSION_SWEEP_INTERVAL;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Held Bayeux long-polling connects.
const LONGPOLL: &str = r#"halley_subscribers{transport="longpoll"}"#;
/// Held Bayeux callback-polling connects.
const JSONP: &str = r#"halley_subscribers{transport="jsonp"}"#;

/// A server that holds connects for 30 s: longer than any wait in a test (5 s), so a connect
/// that should be answered at once but is held instead fails the test.
async fn patient() -> TestServer {
    TestServer::with(|http, _| http.hold_timeout = Duration::from_secs(30)).await
}

// ---- messages ----

fn handshake_message() -> Value {
    json!({
        "channel": "/meta/handshake",
        "version": "1.0",
        "minimumVersion": "1.0",
        "supportedConnectionTypes": ["websocket", "long-polling", "callback-polling"],
        "id": "h",
    })
}

fn subscribe_message(client: &str, subscription: &str) -> Value {
    json!({"channel": "/meta/subscribe", "clientId": client, "subscription": subscription, "id": "s"})
}

/// A connect held for the server's timeout.
fn connect_message(client: &str, id: &str) -> Value {
    json!({"channel": "/meta/connect", "clientId": client, "connectionType": "long-polling", "id": id})
}

/// A connect answered at once (CometD's first connect asks for timeout 0).
fn connect_now(client: &str, id: &str) -> Value {
    let mut connect = connect_message(client, id);
    connect["advice"] = json!({"timeout": 0});
    connect
}

fn disconnect_message(client: &str) -> Value {
    json!({"channel": "/meta/disconnect", "clientId": client, "id": "d"})
}

/// The one reply on `channel` with `id` in `messages`.
fn reply<'a>(messages: &'a [Value], channel: &str, id: &str) -> &'a Value {
    let found: Vec<&Value> = messages
        .iter()
        .filter(|m| m["channel"] == channel && m["id"] == id && m.get("successful").is_some())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one reply on {channel} with id {id}: {messages:?}"
    );
    found[0]
}

/// The delivered data messages (everything that is not a reply).
fn deliveries(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .filter(|m| m.get("successful").is_none())
        .cloned()
        .collect()
}

fn assert_successful(reply: &Value) {
    assert_eq!(reply["successful"], true, "{reply}");
}

// ---- long-polling ----

async fn post(s: &TestServer, path: &str, body: impl Into<Bytes>, cookie: Option<&str>) -> Reply {
    let mut request = s
        .request("POST", path)
        .header("content-type", "application/json;charset=UTF-8");
    if let Some(browser) = cookie {
        request = request.header("cookie", format!("other=1; BAYEUX_BROWSER={browser}"));
    }
    s.send(request.body(Full::new(body.into())).unwrap()).await
}

/// The messages of a successful Bayeux response.
fn messages(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/json;charset=UTF-8"),
        "{reply:?}"
    );
    reply.json().as_array().expect("a JSON array").clone()
}

/// POSTs `batch` to `/cometd` and returns the messages of the response.
async fn exchange(s: &TestServer, batch: Value) -> Vec<Value> {
    messages(&post(s, "/cometd", batch.to_string(), None).await)
}

async fn exchange_in(s: &TestServer, browser: &str, batch: Value) -> Vec<Value> {
    messages(&post(s, "/cometd", batch.to_string(), Some(browser)).await)
}

/// A new session's clientId, after its first connect (answered at once, as every client
/// sends it), so that its next connect is held.
async fn handshake(s: &TestServer) -> String {
    let replies = exchange(s, json!([handshake_message()])).await;
    let handshake = reply(&replies, "/meta/handshake", "h");
    assert_successful(handshake);
    let client = handshake["clientId"].as_str().unwrap().to_string();
    first_connect(s, None, &client).await;
    client
}

/// A session's first connect (without advice), which is answered at once.
async fn first_connect(s: &TestServer, browser: Option<&str>, client: &str) {
    let batch = json!([connect_message(client, "first")]).to_string();
    let replies = messages(&post(s, "/cometd", batch, browser).await);
    assert_successful(reply(&replies, "/meta/connect", "first"));
}

async fn subscribe(s: &TestServer, client: &str, channel: &str) {
    let replies = exchange(s, json!([subscribe_message(client, channel)])).await;
    assert_successful(reply(&replies, "/meta/subscribe", "s"));
}

async fn subscribe_in(s: &TestServer, browser: &str, client: &str, channel: &str) {
    let replies = exchange_in(s, browser, json!([subscribe_message(client, channel)])).await;
    assert_successful(reply(&replies, "/meta/subscribe", "s"));
}

/// The `BAYEUX_BROWSER` id a response sets, if any.
fn browser_cookie(reply: &Reply) -> Option<String> {
    let cookie = reply.header("set-cookie")?;
    let value = cookie.strip_prefix("BAYEUX_BROWSER=")?.split(';').next()?;
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
    assert!(attributes.contains(&"Path=/"), "{cookie}");
    assert!(attributes.contains(&"HttpOnly"), "{cookie}");
    Some(value.to_string())
}

#[tokio::test]
async fn long_polling_end_to_end() {
    let s = patient().await;
    let handshake = post(
        &s,
        "/cometd",
        json!([handshake_message()]).to_string(),
        None,
    )
    .await;
    let replies = messages(&handshake);
    assert_eq!(replies.len(), 1, "{replies:?}");
    let hs = &replies[0];
    assert_successful(hs);
    assert_eq!(hs["version"], "1.0");
    assert_eq!(
        hs["supportedConnectionTypes"],
        json!([
            "websocket",
            "eventsource",
            "long-polling",
            "cross-origin-long-polling",
            "callback-polling"
        ])
    );
    assert_eq!(hs["advice"]["timeout"], 30_000, "{hs}");
    assert_eq!(handshake.header("cache-control"), Some("no-cache"));
    let client = hs["clientId"].as_str().unwrap().to_string();

    // A batch: subscribe and CometD's first connect, answered together in order.
    let replies = exchange(
        &s,
        json!([
            subscribe_message(&client, "/chat/a"),
            connect_now(&client, "c0")
        ]),
    )
    .await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0]["channel"], "/meta/subscribe");
    assert_successful(&replies[0]);
    assert_eq!(replies[0]["subscription"], "/chat/a");
    assert_eq!(replies[1]["channel"], "/meta/connect");
    assert_successful(&replies[1]);

    // A held connect gets what is POSTed to /pub, then its own reply.
    let held = exchange(&s, json!([connect_message(&client, "c1")]));
    let publish = async {
        s.wait_metric(LONGPOLL, 1).await;
        s.publish("/chat/a", "hello").await
    };
    let (replies, id) = tokio::join!(held, publish);
    assert_eq!(
        replies,
        [
            json!({"channel": "/chat/a", "id": id, "data": "hello"}),
            replies[1].clone()
        ]
    );
    assert_eq!(replies[1]["channel"], "/meta/connect");
    assert_eq!(replies[1]["id"], "c1");
    assert_successful(&replies[1]);
    assert_eq!(s.metric(LONGPOLL).await, 0);

    // A Bayeux publish reaches the native API's subscribers of the same channel.
    let mut native = s.stream(&Transport::StreamJson.url("/chat/b", &[])).await;
    assert_eq!(native.line().await, "", "NDJSON opens with a blank line");
    let replies = exchange(
        &s,
        json!([{"channel": "/chat/b", "clientId": client, "data": {"n": 1}, "id": "p"}]),
    )
    .await;
    assert_successful(reply(&replies, "/chat/b", "p"));
    let line: Value = serde_json::from_str(&native.line().await).unwrap();
    assert_eq!(line["channel"], "/chat/b");
    assert_eq!(line["data"], json!({"n": 1}));

    // Unsubscribe stops delivery; disconnect forgets the client.
    let replies = exchange(
        &s,
        json!([{"channel": "/meta/unsubscribe", "clientId": client, "subscription": "/chat/a", "id": "u"}]),
    )
    .await;
    assert_successful(reply(&replies, "/meta/unsubscribe", "u"));
    s.publish("/chat/a", "unheard").await;
    let replies = exchange(&s, json!([connect_now(&client, "c2")])).await;
    assert!(deliveries(&replies).is_empty(), "{replies:?}");
    let replies = exchange(&s, json!([disconnect_message(&client)])).await;
    assert_successful(reply(&replies, "/meta/disconnect", "d"));
    let replies = exchange(&s, json!([connect_now(&client, "c3")])).await;
    let refused = reply(&replies, "/meta/connect", "c3");
    assert_eq!(refused["successful"], false);
    assert_eq!(refused["error"], "402::Unknown client");
    assert_eq!(refused["advice"]["reconnect"], "handshake");
}

#[tokio::test]
async fn cometd_path_suffixes_are_accepted() {
    let s = TestServer::start().await;
    // The CometD client appends the message type to the URL unless told not to.
    let replies = messages(
        &post(
            &s,
            "/cometd/handshake",
            json!([handshake_message()]).to_string(),
            None,
        )
        .await,
    );
    let client = reply(&replies, "/meta/handshake", "h")["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    for (path, message, channel, id) in [
        (
            "/cometd/subscribe",
            subscribe_message(&client, "/suffix"),
            "/meta/subscribe",
            "s",
        ),
        (
            "/cometd/connect",
            connect_now(&client, "c"),
            "/meta/connect",
            "c",
        ),
        (
            "/cometd/",
            json!({"channel": "/suffix", "clientId": client, "data": 1, "id": "p"}),
            "/suffix",
            "p",
        ),
        (
            "/cometd/disconnect",
            disconnect_message(&client),
            "/meta/disconnect",
            "d",
        ),
    ] {
        let replies = messages(&post(&s, path, json!([message]).to_string(), None).await);
        assert_successful(reply(&replies, channel, id));
    }
    for path in ["/cometdx", "/cometd-handshake"] {
        post(&s, path, json!([handshake_message()]).to_string(), None)
            .await
            .expect_error(404);
    }
}

/// Long-polling is served on the lean path (Content-Length bodies) and by hyper (anything
/// else, e.g. a chunked body): both answer the same.
#[tokio::test]
async fn chunked_long_polling_request_is_answered_too() {
    let s = TestServer::start().await;
    let body = json!([handshake_message()]).to_string();
    let head = format!(
        "POST /cometd HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        s.addr,
        body.len()
    );
    let mut stream = s.raw_request(&head).await;
    let response = String::from_utf8(read_to_close(&mut stream).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(r#""channel":"/meta/handshake""#),
        "{response}"
    );
    assert!(response.contains(r#""successful":true"#), "{response}");
}

#[tokio::test]
async fn malformed_bodies_are_refused_400_with_a_json_error() {
    let s = TestServer::start().await;
    let bodies: [&[u8]; 7] = [
        b"{",
        b"not json",
        b"",
        b"[1]",
        b"[{\"channel\": 5}]",
        b"[{\"channel\":\"/a\"}] trailing",
        b"\xff\xfe",
    ];
    for body in bodies {
        let reply = post(&s, "/cometd", Bytes::from_static(body), None).await;
        assert_eq!(
            reply.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(body),
            reply.body
        );
        reply.expect_error(400);
    }
    // An empty batch is well-formed: nothing to answer.
    let reply = post(&s, "/cometd", "[]", None).await;
    assert_eq!(messages(&reply), Vec::<Value>::new());
    s.assert_still_serving().await;
}

#[tokio::test]
async fn batches_of_more_than_100_messages_are_refused_400() {
    let s = TestServer::start().await;
    let batch = |n: usize| {
        Value::Array(
            (0..n)
                .map(|i| json!({"channel": "/b", "clientId": "nobody", "data": i, "id": i}))
                .collect(),
        )
    };
    let replies = exchange(&s, batch(100)).await;
    assert_eq!(replies.len(), 100);
    assert!(replies.iter().all(|r| r["error"] == "402::Unknown client"));
    post(&s, "/cometd", batch(101).to_string(), None)
        .await
        .expect_error(400);
    s.assert_still_serving().await;
}

#[tokio::test]
async fn bodies_over_the_body_limit_are_refused_413() {
    let s = TestServer::with(|http, _| http.body_limit = 1024).await;
    let sized = |len: usize| {
        let mut message = handshake_message();
        let skeleton = json!([message]).to_string().len() + r#","ext":{"pad":""}"#.len();
        message["ext"] = json!({"pad": "x".repeat(len - skeleton)});
        let body = json!([message]).to_string();
        assert_eq!(body.len(), len);
        body
    };
    let fits = post(&s, "/cometd", sized(1024), None).await;
    assert_successful(&messages(&fits)[0]);
    post(&s, "/cometd", sized(1025), None)
        .await
        .expect_error(413);
    post(&s, "/cometd", sized(64 * 1024), None)
        .await
        .expect_error(413);
    // The same limit for callback-polling's message parameter.
    s.get(&jsonp_path("cb", &sized(1025)))
        .await
        .expect_error(413);
    s.assert_still_serving().await;
}

// ---- callback-polling ----

fn jsonp_path(callback: &str, message: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(message.as_bytes()).collect();
    format!("/cometd?jsonp={callback}&message={encoded}")
}

/// GETs `batch` the callback-polling way and returns the messages passed to `callback`.
async fn jsonp(s: &TestServer, callback: &str, batch: Value) -> Vec<Value> {
    let reply = s.get(&jsonp_path(callback, &batch.to_string())).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("text/javascript;charset=UTF-8")
    );
    let call = reply
        .body
        .strip_prefix(&format!("/**/{callback}("))
        .and_then(|rest| rest.strip_suffix(");"))
        .unwrap_or_else(|| panic!("not a call of {callback}: {}", reply.body));
    serde_json::from_str::<Value>(call)
        .unwrap()
        .as_array()
        .expect("called with an array")
        .clone()
}

#[tokio::test]
async fn callback_polling_end_to_end() {
    let s = patient().await;
    let replies = jsonp(&s, "cb", json!([handshake_message()])).await;
    let hs = reply(&replies, "/meta/handshake", "h");
    assert_successful(hs);
    let client = hs["clientId"].as_str().unwrap().to_string();
    let replies = jsonp(&s, "cb", json!([connect_message(&client, "c0")])).await;
    assert_successful(reply(&replies, "/meta/connect", "c0"));
    let replies = jsonp(
        &s,
        "jQuery_123.cb$",
        json!([subscribe_message(&client, "/cp/a")]),
    )
    .await;
    assert_successful(reply(&replies, "/meta/subscribe", "s"));

    let held = jsonp(&s, "cb", json!([connect_message(&client, "c1")]));
    let publish = async {
        s.wait_metric(JSONP, 1).await;
        s.publish_json("/cp/a", r#"{"x":"</script>"}"#).await
    };
    let (replies, id) = tokio::join!(held, publish);
    assert_eq!(
        deliveries(&replies),
        [json!({"channel": "/cp/a", "id": id, "data": {"x": "</script>"}})]
    );
    assert_successful(reply(&replies, "/meta/connect", "c1"));

    // A publish in the query string arrives intact: the form encoding of a space ('+') and of
    // '+' itself ("%2B"), and non-ASCII text.
    let data = json!({"text": "a b+c é ✓", "n": [1.5, -2]});
    let replies = jsonp(
        &s,
        "cb",
        json!([{"channel": "/cp/a", "clientId": client, "data": data, "id": "p"}]),
    )
    .await;
    assert_successful(reply(&replies, "/cp/a", "p"));
    let replies = jsonp(&s, "cb", json!([connect_now(&client, "c2")])).await;
    assert_eq!(deliveries(&replies)[0]["data"], data);
    let raw = s
        .get(&jsonp_path(
            "cb",
            &json!([connect_now(&client, "c3")]).to_string(),
        ))
        .await;
    assert_eq!(raw.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn callback_polling_refuses_bad_callbacks_and_messages() {
    let s = TestServer::start().await;
    let handshake = json!([handshake_message()]).to_string();
    let long = "x".repeat(65);
    for callback in [
        "",
        "1cb",
        "a-b",
        "cb()",
        "alert(document.cookie)",
        "a%20b",
        "%3Cscript%3E",
        long.as_str(),
    ] {
        let reply = s.get(&jsonp_path(callback, &handshake)).await;
        assert_eq!(reply.status, 400, "callback {callback:?}: {}", reply.body);
        reply.expect_error(400);
    }
    for path in [
        "/cometd?message=%5B%5D".to_string(),
        "/cometd?jsonp=cb".to_string(),
        jsonp_path("cb", "{"),
        jsonp_path("cb", "[1]"),
    ] {
        s.get(&path).await.expect_error(400);
    }
    s.assert_still_serving().await;
}

// ---- BAYEUX_BROWSER and multiple-clients ----

#[tokio::test]
async fn second_held_connect_of_a_browser_gets_multiple_clients_advice() {
    let s = patient().await;
    let first = post(
        &s,
        "/cometd",
        json!([handshake_message()]).to_string(),
        None,
    )
    .await;
    let browser = browser_cookie(&first).expect("the handshake sets BAYEUX_BROWSER");
    assert!(!browser.is_empty());
    let a = messages(&first)[0]["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    // A handshake from the same browser (another tab) keeps its cookie.
    let second = post(
        &s,
        "/cometd",
        json!([handshake_message()]).to_string(),
        Some(&browser),
    )
    .await;
    assert_eq!(browser_cookie(&second), None, "the cookie is set only once");
    let b = messages(&second)[0]["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(a, b);
    for client in [&a, &b] {
        first_connect(&s, Some(&browser), client).await;
    }
    subscribe_in(&s, &browser, &a, "/mc/a").await;
    subscribe_in(&s, &browser, &b, "/mc/b").await;

    let held_a = exchange_in(&s, &browser, json!([connect_message(&a, "a1")]));
    let tab_b = async {
        s.wait_metric(LONGPOLL, 1).await;
        let started = Instant::now();
        let replies = exchange_in(&s, &browser, json!([connect_message(&b, "b1")])).await;
        let took = started.elapsed();
        // A's connect is still the one held: it gets A's next message.
        s.publish("/mc/a", "for a").await;
        (replies, took)
    };
    let (replies_a, (replies_b, took)) = tokio::join!(held_a, tab_b);

    assert!(
        took < Duration::from_secs(2),
        "answered at once, not held: {took:?}"
    );
    let connect_b = reply(&replies_b, "/meta/connect", "b1");
    assert_successful(connect_b);
    assert_eq!(connect_b["advice"]["multiple-clients"], true, "{connect_b}");
    assert_eq!(connect_b["advice"]["interval"], 2000, "{connect_b}");
    assert_eq!(deliveries(&replies_a)[0]["data"], "for a");
    let connect_a = reply(&replies_a, "/meta/connect", "a1");
    assert_successful(connect_a);
    assert_eq!(
        connect_a["advice"].get("multiple-clients"),
        None,
        "{connect_a}"
    );

    // Once A's connect is answered, B may hold one.
    let held_b = exchange_in(&s, &browser, json!([connect_message(&b, "b2")]));
    let publish = async {
        s.wait_metric(LONGPOLL, 1).await;
        s.publish("/mc/b", "for b").await
    };
    let (replies_b, _) = tokio::join!(held_b, publish);
    assert_eq!(deliveries(&replies_b)[0]["data"], "for b");
    assert_eq!(
        reply(&replies_b, "/meta/connect", "b2")["advice"].get("multiple-clients"),
        None
    );
}

#[tokio::test]
async fn connects_without_the_browser_cookie_are_each_held() {
    let s = patient().await;
    let a = handshake(&s).await;
    let b = handshake(&s).await;
    subscribe(&s, &a, "/nc/a").await;
    subscribe(&s, &b, "/nc/b").await;
    let held_a = exchange(&s, json!([connect_message(&a, "a")]));
    let held_b = exchange(&s, json!([connect_message(&b, "b")]));
    let publish = async {
        s.wait_metric(LONGPOLL, 2).await;
        s.publish("/nc/a", "a").await;
        s.publish("/nc/b", "b").await;
    };
    let (replies_a, replies_b, ()) = tokio::join!(held_a, held_b, publish);
    for (replies, id) in [(replies_a, "a"), (replies_b, "b")] {
        assert_eq!(deliveries(&replies)[0]["data"], id);
        let connect = reply(&replies, "/meta/connect", id);
        assert_eq!(connect["advice"].get("multiple-clients"), None, "{connect}");
    }
}

// ---- one held connect per session ----

/// Runs `batch` against `/cometd` in a task of its own (with the browser cookie, if given).
fn spawn_exchange(
    s: &Arc<TestServer>,
    browser: Option<&str>,
    batch: Value,
) -> JoinHandle<Vec<Value>> {
    let s = s.clone();
    let browser = browser.map(str::to_owned);
    tokio::spawn(async move {
        messages(&post(&s, "/cometd", batch.to_string(), browser.as_deref()).await)
    })
}

async fn joined<T>(what: &str, task: JoinHandle<T>) -> T {
    within(what, task).await.expect("the request task panicked")
}

/// A second connect of the same session answers the held one at once and is held itself.
async fn check_preemption(browser: bool) {
    let s = Arc::new(patient().await);
    let handshake = post(
        &s,
        "/cometd",
        json!([handshake_message()]).to_string(),
        None,
    )
    .await;
    let cookie = browser.then(|| browser_cookie(&handshake).unwrap());
    let client = messages(&handshake)[0]["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    first_connect(&s, cookie.as_deref(), &client).await;
    match &cookie {
        Some(browser) => subscribe_in(&s, browser, &client, "/pre").await,
        None => subscribe(&s, &client, "/pre").await,
    }

    let first = spawn_exchange(
        &s,
        cookie.as_deref(),
        json!([connect_message(&client, "c1")]),
    );
    s.wait_metric(LONGPOLL, 1).await;
    let second = spawn_exchange(
        &s,
        cookie.as_deref(),
        json!([connect_message(&client, "c2")]),
    );
    let replies = joined("the preempted connect", first).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    let c1 = reply(&replies, "/meta/connect", "c1");
    assert_successful(c1);
    // The newer connect is the one held now: it gets the next message, as a held connect of
    // the one client of its browser.
    s.publish("/pre", "after").await;
    let replies = joined("the second connect", second).await;
    let c2 = reply(&replies, "/meta/connect", "c2");
    assert_successful(c2);
    assert_eq!(c2["advice"].get("multiple-clients"), None, "{c2}");
    let data: Vec<Value> = deliveries(&replies)
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(data, [json!("after")], "{replies:?}");
}

#[tokio::test]
async fn long_polling_second_connect_of_a_session_answers_the_held_one() {
    check_preemption(false).await;
}

/// The same session's connects from one browser are a reconnect, not a second client.
#[tokio::test]
async fn long_polling_second_connect_of_a_session_in_one_browser_answers_the_held_one() {
    check_preemption(true).await;
}

/// CometD holds `/meta/connect` on one connection and sends `/meta/subscribe` on another.
#[tokio::test]
async fn subscribe_on_another_connection_while_a_connect_is_held() {
    let s = Arc::new(patient().await);
    let client = handshake(&s).await;
    subscribe(&s, &client, "/first").await;
    let held = spawn_exchange(&s, None, json!([connect_message(&client, "c")]));
    s.wait_metric(LONGPOLL, 1).await;
    let started = Instant::now();
    subscribe(&s, &client, "/second").await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "subscribe took {took:?}");
    assert!(!held.is_finished());
    s.publish("/second", "new").await;
    let replies = joined("held connect", held).await;
    assert_eq!(deliveries(&replies)[0]["data"], "new");
}

/// A client that keeps its connection open sends every request on it (the lean path's
/// keep-alive loop): handshake, subscribe, a held connect, disconnect.
#[tokio::test]
async fn long_polling_requests_share_one_keep_alive_connection() {
    let s = TestServer::start().await;
    let stream = within("connect", TcpStream::connect(s.addr)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(conn);
    let mut exchange_on = async |batch: Value| {
        within("ready", sender.ready()).await.unwrap();
        let request = s
            .request("POST", "/cometd")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(batch.to_string())))
            .unwrap();
        let response = within("response", sender.send_request(request))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = within("body", response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        serde_json::from_slice::<Vec<Value>>(&body).unwrap()
    };
    let replies = exchange_on(json!([handshake_message()])).await;
    let client = replies[0]["clientId"].as_str().unwrap().to_string();
    let replies = exchange_on(json!([subscribe_message(&client, "/ka")])).await;
    assert_successful(reply(&replies, "/meta/subscribe", "s"));
    let id = s.publish("/ka", "queued").await;
    let replies = exchange_on(json!([connect_message(&client, "c")])).await;
    assert_eq!(
        deliveries(&replies),
        [json!({"channel": "/ka", "id": id, "data": "queued"})]
    );
    // Held for the 300 ms timeout, then answered on the same connection.
    let replies = exchange_on(json!([connect_message(&client, "c2")])).await;
    assert_successful(reply(&replies, "/meta/connect", "c2"));
    let replies = exchange_on(json!([disconnect_message(&client)])).await;
    assert_successful(reply(&replies, "/meta/disconnect", "d"));
    assert!(!connection.is_finished(), "the connection stays open");
}

// ---- Faye 1.4.3: an aborted held connect ----

#[derive(Debug, Clone, Copy)]
enum Polling {
    Long,
    Callback,
}

#[derive(Debug, Clone, Copy)]
enum Abort {
    /// The client closes its side (FIN): the server could still write, so an answer would be
    /// seen.
    HalfClose,
    /// The client resets the connection.
    Reset,
}

/// Sends a held connect on a raw connection, returning the connection once it is held.
async fn raw_connect(s: &TestServer, polling: Polling, client: &str, id: &str) -> TcpStream {
    let batch = json!([connect_message(client, id)]).to_string();
    let head = match polling {
        Polling::Long => format!(
            "POST /cometd/connect HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{batch}",
            s.addr,
            batch.len()
        ),
        Polling::Callback => format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
            jsonp_path("cb", &batch),
            s.addr
        ),
    };
    let stream = s.raw_request(&head).await;
    s.wait_metric(metric(polling), 1).await;
    stream
}

fn metric(polling: Polling) -> &'static str {
    match polling {
        Polling::Long => LONGPOLL,
        Polling::Callback => JSONP,
    }
}

/// Faye 1.4.3 crashed the server process when a held JSONP connect was aborted by its client
/// and later answered ("write after end"). Here the client aborts a held connect, then comes
/// back: the server keeps serving, never answers the aborted connect, and the message
/// published in between is not lost to the dead request but reaches the new connect.
#[tokio::test]
async fn faye_1_4_3_aborted_held_connect_is_never_answered_and_the_server_keeps_serving() {
    let s = patient().await;
    for polling in [Polling::Long, Polling::Callback] {
        for abort in [Abort::HalfClose, Abort::Reset] {
            let what = format!("{polling:?} connect aborted by {abort:?}");
            let channel = format!("/crash/{polling:?}/{abort:?}");
            let client = handshake(&s).await;
            subscribe(&s, &client, &channel).await;
            let mut stream = raw_connect(&s, polling, &client, "aborted").await;
            match abort {
                Abort::HalfClose => within(&what, stream.shutdown()).await.unwrap(),
                Abort::Reset => stream.set_zero_linger().unwrap(),
            }
            let stream = match abort {
                Abort::HalfClose => Some(stream),
                Abort::Reset => {
                    drop(stream);
                    None
                }
            };
            // The server notices: the connect is no longer held.
            s.wait_metric(metric(polling), 0).await;
            if let Some(mut stream) = stream {
                let answer = read_to_close(&mut stream).await;
                assert!(
                    answer.is_empty(),
                    "{what}: the aborted connect was answered: {}",
                    String::from_utf8_lossy(&answer)
                );
            }

            // Published while no connect is held: kept for the session.
            let id = s.publish(&channel, "in between").await;
            // The same client connects again (Faye retries with its clientId).
            let replies = exchange(&s, json!([connect_message(&client, "again")])).await;
            assert_eq!(
                deliveries(&replies),
                [json!({"channel": channel, "id": id, "data": "in between"})],
                "{what}"
            );
            assert_successful(reply(&replies, "/meta/connect", "again"));

            // And a new session works end to end.
            let fresh = handshake(&s).await;
            subscribe(&s, &fresh, &channel).await;
            let held = exchange(&s, json!([connect_message(&fresh, "fresh")]));
            let publish = async {
                s.wait_metric(LONGPOLL, 1).await;
                s.publish(&channel, "later").await
            };
            let (replies, _) = tokio::join!(held, publish);
            assert_eq!(deliveries(&replies)[0]["data"], "later", "{what}");
            s.assert_still_serving().await;
        }
    }
}

// ---- WebSocket ----

async fn send(ws: &mut Ws, batch: Value) {
    within("websocket send", ws.send(Frame::text(batch.to_string())))
        .await
        .unwrap();
}

/// The next frame's messages.
async fn frame(ws: &mut Ws) -> Vec<Value> {
    ws_json(ws).await.as_array().expect("a JSON array").clone()
}

/// Handshakes and subscribes to `channel` over `ws`; returns the clientId.
async fn ws_session(ws: &mut Ws, channel: &str) -> String {
    let mut handshake = handshake_message();
    handshake["supportedConnectionTypes"] = json!(["websocket"]);
    send(ws, json!([handshake])).await;
    let replies = frame(ws).await;
    let hs = reply(&replies, "/meta/handshake", "h");
    assert_successful(hs);
    let client = hs["clientId"].as_str().unwrap().to_string();
    // The first connect is answered at once.
    send(ws, json!([ws_connect(&client, "first")])).await;
    assert_successful(reply(&frame(ws).await, "/meta/connect", "first"));
    send(ws, json!([subscribe_message(&client, channel)])).await;
    assert_successful(reply(&frame(ws).await, "/meta/subscribe", "s"));
    client
}

fn ws_connect(client: &str, id: &str) -> Value {
    let mut connect = connect_message(client, id);
    connect["connectionType"] = json!("websocket");
    connect
}

/// Sends a publish on `ws` and waits for its reply: everything sent before it was handled.
async fn ws_sync(ws: &mut Ws, client: &str, id: &str) {
    send(
        ws,
        json!([{"channel": "/ws/sync", "clientId": client, "data": id, "id": id}]),
    )
    .await;
    assert_successful(reply(&frame(ws).await, "/ws/sync", id));
}

#[tokio::test]
async fn websocket_end_to_end() {
    // Connects are held for the harness's 300 ms.
    let s = TestServer::start().await;
    let mut ws = s.ws("/cometd").await;
    let client = ws_session(&mut ws, "/ws/a").await;

    let sent = Instant::now();
    send(&mut ws, json!([ws_connect(&client, "c1")])).await;
    let id = s.publish("/ws/a", "pushed").await;
    // Pushed while the connect is held, in a frame of its own.
    assert_eq!(
        frame(&mut ws).await,
        [json!({"channel": "/ws/a", "id": id, "data": "pushed"})]
    );
    let id2 = s.publish("/ws/a", "again").await;
    assert_eq!(
        frame(&mut ws).await,
        [json!({"channel": "/ws/a", "id": id2, "data": "again"})]
    );
    // Then the held connect is answered after the timeout.
    let replies = frame(&mut ws).await;
    let held = sent.elapsed();
    assert_successful(reply(&replies, "/meta/connect", "c1"));
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        held >= Duration::from_millis(300),
        "the connect was answered after {held:?}, before its 300 ms timeout"
    );

    // A publish over the socket reaches a long-polling client of the same channel.
    let other = handshake(&s).await;
    subscribe(&s, &other, "/ws/b").await;
    send(
        &mut ws,
        json!([{"channel": "/ws/b", "clientId": client, "data": {"from": "ws"}, "id": "p"}]),
    )
    .await;
    assert_successful(reply(&frame(&mut ws).await, "/ws/b", "p"));
    let replies = exchange(&s, json!([connect_now(&other, "o")])).await;
    assert_eq!(deliveries(&replies)[0]["data"], json!({"from": "ws"}));

    // Disconnect: answered, the held connect ended, then the socket closes.
    send(&mut ws, json!([ws_connect(&client, "c2")])).await;
    send(&mut ws, json!([disconnect_message(&client)])).await;
    let replies = frame(&mut ws).await;
    assert_successful(reply(&replies, "/meta/disconnect", "d"));
    let ended = reply(&replies, "/meta/connect", "c2");
    assert!(
        ended["successful"] == false || ended["advice"]["reconnect"] == "none",
        "the connect held across a disconnect must not invite a retry: {ended}"
    );
    assert!(
        matches!(ws_next(&mut ws).await, Frame::Close(_)),
        "the socket closes after a disconnect"
    );
    let after = exchange(&s, json!([connect_now(&client, "gone")])).await;
    assert_eq!(
        reply(&after, "/meta/connect", "gone")["error"],
        "402::Unknown client"
    );
}

#[tokio::test]
async fn websocket_second_connect_answers_the_held_one_once() {
    let s = TestServer::start().await;
    let mut ws = s.ws("/cometd").await;
    let client = ws_session(&mut ws, "/ws/p").await;
    send(&mut ws, json!([ws_connect(&client, "c1")])).await;
    ws_sync(&mut ws, &client, "sync1").await;
    send(&mut ws, json!([ws_connect(&client, "c2")])).await;
    // The first connect is answered as the second arrives, the second after its timeout; no
    // connect is answered twice.
    let mut answered = Vec::new();
    while !answered.contains(&json!("c2")) {
        for message in frame(&mut ws).await {
            if message["channel"] == "/meta/connect" {
                assert_successful(&message);
                answered.push(message["id"].clone());
            }
        }
    }
    assert_eq!(answered, [json!("c1"), json!("c2")]);
    // Nothing more comes for either: the next frame answers the next request.
    ws_sync(&mut ws, &client, "sync2").await;
}

/// A connect held on a WebSocket keeps its session alive like a held long-poll does, even
/// when it is held longer than `maxInterval`.
#[tokio::test]
async fn websocket_held_connect_keeps_its_session() {
    let s = TestServer::with_bayeux(|http, _, bayeux| {
        http.hold_timeout = Duration::from_secs(30);
        bayeux.timeout = Duration::from_secs(30);
        bayeux.max_interval = Duration::from_millis(100);
    })
    .await;
    let mut ws = s.ws("/cometd").await;
    let socket = ws_session(&mut ws, "/keep/ws").await;
    send(&mut ws, json!([ws_connect(&socket, "w")])).await;
    ws_sync(&mut ws, &socket, "held").await;
    // The control: a held long-poll connect.
    let polling = handshake(&s).await;
    subscribe(&s, &polling, "/keep/lp").await;
    let held = exchange(&s, json!([connect_message(&polling, "lp")]));
    let later = async {
        s.wait_metric(LONGPOLL, 1).await;
        // Not synchronisation: the time under test. Two sweeps see both sessions idle for
        // longer than max_interval, were it not for their held connects.
        tokio::time::sleep(2 * SESSION_SWEEP_INTERVAL).await;
        let lp = s.publish("/keep/lp", "lp").await;
        let ws_id = s.publish("/keep/ws", "ws").await;
        (lp, ws_id)
    };
    let (replies, (lp, ws_id)) = tokio::join!(held, later);
    assert_eq!(
        deliveries(&replies),
        [json!({"channel": "/keep/lp", "id": lp, "data": "lp"})]
    );
    assert_eq!(
        frame(&mut ws).await,
        [json!({"channel": "/keep/ws", "id": ws_id, "data": "ws"})]
    );
}

#[tokio::test]
async fn websocket_malformed_batch_closes_the_socket() {
    let s = TestServer::start().await;
    let mut ws = s.ws("/cometd").await;
    within("send", ws.send(Frame::text("{not json")))
        .await
        .unwrap();
    match ws_next(&mut ws).await {
        Frame::Close(Some(close)) => assert_eq!(close.code, CloseCode::Invalid),
        other => panic!("expected a close frame, got {other:?}"),
    }
    s.assert_still_serving().await;
}

// ---- shutdown ----

#[tokio::test]
async fn shutdown_answers_held_connects() {
    let mut s = patient().await;
    let polling = handshake(&s).await;
    subscribe(&s, &polling, "/down/a").await;
    let mut ws = s.ws("/cometd").await;
    let socket = ws_session(&mut ws, "/down/b").await;
    send(&mut ws, json!([ws_connect(&socket, "w")])).await;
    ws_sync(&mut ws, &socket, "held").await;
    // A socket with no session yet: nothing of Bayeux wakes it, it waits for the shutdown
    // itself (and must not hold the drain).
    let mut bare = s.ws("/cometd").await;

    let held = post(
        &s,
        "/cometd",
        json!([connect_message(&polling, "lp")]).to_string(),
        None,
    );
    let cancel = async {
        s.wait_metric(LONGPOLL, 1).await;
        s.shutdown.cancel();
    };
    let (reply_lp, ()) = tokio::join!(held, cancel);
    let replies = messages(&reply_lp);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_successful(reply(&replies, "/meta/connect", "lp"));

    let replies = frame(&mut ws).await;
    assert_successful(reply(&replies, "/meta/connect", "w"));
    for socket in [&mut ws, &mut bare] {
        match ws_next(socket).await {
            Frame::Close(Some(close)) => assert_eq!(close.code, CloseCode::Away),
            other => panic!("expected Close 1001, got {other:?}"),
        }
    }
    let done = s.done.take().unwrap();
    within("run() returns after the drain", done).await.unwrap();
}

// ---- WebSocket with the ack extension ----

/// Handshakes (ack extension on), makes the first connect and subscribes to `channel` over
/// `ws`; returns the clientId and the first connect's acknowledged batch.
async fn ws_ack_session(ws: &mut Ws, channel: &str) -> (String, Value) {
    let mut handshake = handshake_message();
    handshake["supportedConnectionTypes"] = json!(["websocket"]);
    handshake["ext"] = json!({"ack": true});
    send(ws, json!([handshake])).await;
    let replies = frame(ws).await;
    let hs = reply(&replies, "/meta/handshake", "h");
    assert_successful(hs);
    assert_eq!(hs["ext"]["ack"], true, "{hs}");
    let client = hs["clientId"].as_str().unwrap().to_string();
    send(ws, json!([ws_connect(&client, "first")])).await;
    let first = frame(ws).await;
    let first = reply(&first, "/meta/connect", "first");
    assert_successful(first);
    let ack = first["ext"]["ack"].clone();
    assert!(ack.is_u64(), "{first}");
    send(ws, json!([subscribe_message(&client, channel)])).await;
    assert_successful(reply(&frame(ws).await, "/meta/subscribe", "s"));
    (client, ack)
}

fn ws_ack_connect(client: &str, id: &str, ack: &Value) -> Value {
    let mut connect = ws_connect(client, id);
    connect["ext"] = json!({ "ack": ack });
    connect
}

/// A client that comes back on a new socket with its clientId (the old socket never read
/// again, as when it died unnoticed) gets every message on the new one: what the old socket
/// was sent unacknowledged is resent, and the old socket takes nothing more from the session
/// (its held connect is answered acknowledging nothing). Before, the old socket's task went
/// on taking messages and writing them into the dead socket.
#[tokio::test]
async fn websocket_reconnect_on_a_new_socket_gets_everything_and_the_old_one_stops() {
    let s = patient().await;
    let mut old = s.ws("/cometd").await;
    let (client, ack) = ws_ack_session(&mut old, "/ws/re").await;
    send(&mut old, json!([ws_ack_connect(&client, "old", &ack)])).await;
    ws_sync(&mut old, &client, "old-sync").await;
    let first = s.publish("/ws/re", "0").await;
    assert_eq!(deliveries(&frame(&mut old).await)[0]["id"], first);
    // The old socket is not read again. The client comes back on a new one with the same
    // clientId and its last acknowledged batch, which did not cover `first`.
    let mut new = s.ws("/cometd").await;
    send(&mut new, json!([ws_ack_connect(&client, "new", &ack)])).await;
    // The connect's resend, in a frame of its own.
    let resent = frame(&mut new).await;
    assert_eq!(deliveries(&resent).len(), 1, "{resent:?}");
    assert_eq!(resent[0]["id"], first);
    ws_sync(&mut new, &client, "new-sync").await;
    let mut published = Vec::new();
    for i in 1..50 {
        published.push(s.publish("/ws/re", &i.to_string()).await);
    }
    let mut received = Vec::new();
    while received.len() < published.len() {
        for m in frame(&mut new).await {
            if m.get("successful").is_none() {
                received.push(m["id"].clone());
            }
        }
    }
    assert_eq!(received, published, "every message once, in order");
    // The old socket got its held connect answered, and nothing published after the new
    // connect began.
    let replies = frame(&mut old).await;
    let answered = reply(&replies, "/meta/connect", "old");
    assert_successful(answered);
    assert!(answered["ext"].get("ack").is_none(), "{answered}");
    assert!(deliveries(&replies).is_empty(), "{replies:?}");
}

/// With the ack extension, a WebSocket client that keeps up acknowledges as it goes: once
/// half the unacknowledged budget (1,024) was sent within one held connect (25 s), that
/// connect is answered so the client's next connect acknowledges them. Before, 3,000
/// messages in one hold cut the session off (the client had to handshake again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_with_ack_receives_more_than_the_unacked_budget_within_one_hold() {
    const MESSAGES: usize = 3_000;
    let s = TestServer::with_bayeux(|http, _, bayeux| {
        http.hold_timeout = Duration::from_secs(25);
        bayeux.timeout = Duration::from_secs(25);
    })
    .await;
    assert!(MESSAGES > 2 * halley_engine::bayeux::BayeuxConfig::default().max_unacked);
    let mut ws = s.ws("/cometd").await;
    let (client, mut ack) = ws_ack_session(&mut ws, "/ws/burst").await;
    send(&mut ws, json!([ws_ack_connect(&client, "c0", &ack)])).await;
    ws_sync(&mut ws, &client, "sync").await;
    let publisher = async {
        let mut ids = Vec::with_capacity(MESSAGES);
        for i in 0..MESSAGES {
            ids.push(s.publish("/ws/burst", &i.to_string()).await);
        }
        ids
    };
    let reader = async {
        let mut received = Vec::with_capacity(MESSAGES);
        let mut connects = 0;
        while received.len() < MESSAGES {
            for m in frame(&mut ws).await {
                if m.get("successful").is_none() {
                    received.push(m["id"].clone());
                    continue;
                }
                assert_eq!(m["channel"], "/meta/connect", "{m}");
                assert_successful(&m);
                ack = m["ext"]["ack"].clone();
                connects += 1;
                send(
                    &mut ws,
                    json!([ws_ack_connect(&client, &format!("c{connects}"), &ack)]),
                )
                .await;
            }
        }
        (received, connects)
    };
    let (published, (received, connects)) = tokio::join!(publisher, reader);
    assert_eq!(received, published, "every message once, in order");
    assert!(connects >= 2, "answered early: {connects} connects");
}

// ---- Faye's eventsource ----

/// Faye's `eventsource` connection type: the client opens an EventSource at
/// `/cometd/{clientId}` and sends everything else, its connects included, as long-polling
/// requests. Messages arrive on the stream as Bayeux arrays; a connect of this type is answered
/// at once (advice: the next one after the hold timeout) and does not take delivery over; a
/// long-polling connect does, and ends the stream.
#[tokio::test]
async fn eventsource_streams_messages_while_connects_keep_the_session() {
    let s = patient().await;
    let client = handshake(&s).await;
    let replies = s
        .bayeux_batch(&json!([subscribe_message(&client, "/es/a")]))
        .await;
    assert_successful(reply(&replies, "/meta/subscribe", "s"));

    // Unknown client (or none): refused, so an EventSource gives up and Faye falls back.
    let unknown = s
        .send(
            s.request("GET", "/cometd/0123456789abcdef")
                .header("accept", "text/event-stream")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    unknown.expect_error(404);

    let mut stream = s
        .stream_with(
            &format!("/cometd/{client}"),
            &[("accept", "text/event-stream")],
        )
        .await;
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    stream.until("retry: ").await;
    stream.until("\n\n").await;

    // Connects of this type are answered at once and leave the stream delivering.
    for id in ["c1", "c2"] {
        let mut connect = connect_message(&client, id);
        connect["connectionType"] = json!("eventsource");
        let replies = within("an eventsource connect", s.bayeux_batch(&json!([connect]))).await;
        let answer = reply(&replies, "/meta/connect", id);
        assert_successful(answer);
        assert_eq!(answer["advice"]["timeout"], 0, "{answer}");
        assert_eq!(answer["advice"]["interval"], 30_000, "{answer}");
        assert_eq!(deliveries(&replies), Vec::<Value>::new());
    }
    s.publish("/es/a", "one").await;
    s.publish("/es/a", "two").await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = stream.until("\n\n").await;
        if let Some(data) = event.trim_start_matches(":\n\n").strip_prefix("data: ") {
            let batch: Value = serde_json::from_str(data.trim_end()).unwrap();
            for m in batch.as_array().unwrap() {
                assert_eq!(m["channel"], "/es/a", "{m}");
                seen.push(m["data"].clone());
            }
        }
    }
    assert_eq!(seen, [json!("one"), json!("two")]);

    // A long-polling connect takes delivery over: the stream ends, the poll gets what follows.
    let poll = {
        let s = common::Client::new(s.addr);
        let client = client.clone();
        tokio::spawn(async move {
            s.bayeux_batch(&json!([connect_message(&client, "lp")]))
                .await
        })
    };
    assert_eq!(
        within("the stream to end", stream.rest())
            .await
            .trim_matches(|c| c == ':' || c == '\n'),
        ""
    );
    s.publish("/es/a", "three").await;
    let replies = within("the long-poll", poll).await.unwrap();
    let data: Vec<Value> = deliveries(&replies)
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(data, [json!("three")]);
}

// ---- form bodies: Faye's cross-origin-long-polling, XDomainRequest ----

/// Faye's cross-origin transport (and IE's XDomainRequest, which it uses where that is all
/// there is) posts `message=<batch>` as a form, with a `text/plain` content type or none, no
/// custom headers and no cookies; answered like a JSON batch. Anything else that is not JSON
/// is a 400 with a JSON error.
#[tokio::test]
async fn long_polling_takes_a_form_body_as_faye_and_xdomainrequest_send_it() {
    let s = patient().await;
    let form = |batch: Value| -> String {
        let encoded: String =
            form_urlencoded::byte_serialize(batch.to_string().as_bytes()).collect();
        format!("message={encoded}")
    };
    let send = |content_type: Option<&'static str>, body: String| {
        let mut request = s.request("POST", "/cometd");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        s.send(request.body(Full::new(Bytes::from(body))).unwrap())
    };
    let mut handshake = handshake_message();
    handshake["supportedConnectionTypes"] = json!(["cross-origin-long-polling"]);
    let replies = messages(&send(Some("text/plain;charset=UTF-8"), form(json!([handshake]))).await);
    let hs = reply(&replies, "/meta/handshake", "h");
    assert_successful(hs);
    let client = hs["clientId"].as_str().unwrap().to_string();
    // No content type at all (XDomainRequest), a subscribe and the first connect.
    let replies = messages(
        &send(
            None,
            form(json!([
                subscribe_message(&client, "/xdr/a"),
                connect_now(&client, "c0")
            ])),
        )
        .await,
    );
    assert_successful(reply(&replies, "/meta/subscribe", "s"));
    s.publish("/xdr/a", "hello").await;
    let mut connect = connect_message(&client, "c1");
    connect["connectionType"] = json!("cross-origin-long-polling");
    let replies = messages(
        &send(
            Some("application/x-www-form-urlencoded"),
            form(json!([connect])),
        )
        .await,
    );
    assert_successful(reply(&replies, "/meta/connect", "c1"));
    let data: Vec<Value> = deliveries(&replies)
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(data, [json!("hello")]);

    for body in ["message", "other=1", "message=%5Bnot%20json"] {
        let refused = send(Some("text/plain"), body.to_string()).await;
        refused.expect_error(400);
    }
}
