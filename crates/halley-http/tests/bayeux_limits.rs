//! Bayeux on `/cometd` against hostile and careless clients (issue 12): a handshake flood from
//! one address, a clientId used by someone without its browser's cookie, and a session's first
//! `/meta/connect`, on long-polling, callback-polling and WebSocket.
//!
//! Requests from another source address are sent from `127.0.0.2` (the loopback network is
//! all local on Linux), over sockets bound there before connecting.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{TestServer, Ws, metric_value, read_to_close, within, ws_json};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const LONGPOLL: &str = r#"halley_subscribers{transport="longpoll"}"#;
const JSONP: &str = r#"halley_subscribers{transport="jsonp"}"#;

const HERE: &str = "127.0.0.1";
const ELSEWHERE: &str = "127.0.0.2";

fn handshake_message(types: &[&str]) -> Value {
    json!({"channel": "/meta/handshake", "version": "1.0",
           "supportedConnectionTypes": types, "id": "h"})
}

fn connect_message(client: &str, kind: &str, id: &str) -> Value {
    json!({"channel": "/meta/connect", "clientId": client, "connectionType": kind, "id": id})
}

/// What came back from a long-polling request: its messages and the browser cookie it set.
struct Answer {
    messages: Vec<Value>,
    set_browser: Option<String>,
}

impl Answer {
    /// The one reply on `channel`.
    fn reply(&self, channel: &str) -> &Value {
        let found: Vec<&Value> = self
            .messages
            .iter()
            .filter(|m| m["channel"] == channel && m.get("successful").is_some())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one reply on {channel}: {:?}",
            self.messages
        );
        found[0]
    }

    fn client_id(&self) -> String {
        let hs = self.reply("/meta/handshake");
        assert_eq!(hs["successful"], true, "{hs}");
        hs["clientId"].as_str().unwrap().to_string()
    }
}

/// A connection to `s` from `source`.
async fn connect_from(s: &TestServer, source: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    within("connect", socket.connect(s.addr)).await.unwrap()
}

/// POSTs `batch` to `/cometd` from `source`, with the browser cookie if given.
async fn post_from(s: &TestServer, source: &str, browser: Option<&str>, batch: Value) -> Answer {
    let cookie = browser.map_or(String::new(), |b| format!("Cookie: BAYEUX_BROWSER={b}\r\n"));
    post_with(s, source, &cookie, batch).await
}

/// POSTs `batch` to `/cometd` from `source` with these extra header lines.
async fn post_with(s: &TestServer, source: &str, headers: &str, batch: Value) -> Answer {
    let body = batch.to_string();
    let head = format!(
        "POST /cometd HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        s.addr,
        body.len()
    );
    let text = exchange(s, source, &head).await;
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    let set_browser = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.eq_ignore_ascii_case("set-cookie"))
        .find_map(|(_, v)| v.trim().strip_prefix("BAYEUX_BROWSER="))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let messages = serde_json::from_str::<Value>(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        .as_array()
        .expect("a JSON array")
        .clone();
    Answer {
        messages,
        set_browser,
    }
}

async fn exchange(s: &TestServer, source: &str, request: &str) -> String {
    let mut stream = connect_from(s, source).await;
    within("write", stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    String::from_utf8(read_to_close(&mut stream).await).unwrap()
}

/// GETs `batch` the callback-polling way; the messages passed to the callback.
async fn jsonp(s: &TestServer, browser: Option<&str>, batch: Value) -> Vec<Value> {
    let encoded: String = form_urlencoded::byte_serialize(batch.to_string().as_bytes()).collect();
    let cookie = browser.map_or(String::new(), |b| format!("Cookie: BAYEUX_BROWSER={b}\r\n"));
    let request = format!(
        "GET /cometd?jsonp=cb&message={encoded} HTTP/1.1\r\nHost: {}\r\n{cookie}Connection: close\r\n\r\n",
        s.addr
    );
    let text = exchange(s, HERE, &request).await;
    let body = text.split_once("\r\n\r\n").expect("a response head").1;
    let call = body
        .strip_prefix("/**/cb(")
        .and_then(|b| b.strip_suffix(");"))
        .unwrap_or_else(|| panic!("not a call of cb: {text}"));
    serde_json::from_str::<Value>(call)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// A Bayeux WebSocket from `source`, upgraded with the browser cookie if given.
async fn ws_from(s: &TestServer, source: &str, browser: Option<&str>) -> Ws {
    ws_offered(s, source, browser).await.0
}

/// [`ws_from`], and the browser cookie its 101 answer set, if any.
async fn ws_offered(s: &TestServer, source: &str, browser: Option<&str>) -> (Ws, Option<String>) {
    let mut request = format!("ws://{}/cometd", s.addr)
        .into_client_request()
        .unwrap();
    if let Some(b) = browser {
        request
            .headers_mut()
            .insert("cookie", format!("BAYEUX_BROWSER={b}").parse().unwrap());
    }
    let stream = connect_from(s, source).await;
    let (ws, response) = within(
        "websocket handshake",
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .unwrap();
    let offered = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("BAYEUX_BROWSER="))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    (ws, offered)
}

/// Sends `batch` on `ws` and returns the messages of the next frame.
async fn ws_exchange(ws: &mut Ws, batch: Value) -> Vec<Value> {
    within("websocket send", ws.send(Frame::text(batch.to_string())))
        .await
        .unwrap();
    ws_json(ws).await.as_array().expect("a JSON array").clone()
}

fn only<'a>(messages: &'a [Value], channel: &str) -> &'a Value {
    let found: Vec<&Value> = messages
        .iter()
        .filter(|m| m["channel"] == channel && m.get("successful").is_some())
        .collect();
    assert_eq!(found.len(), 1, "one reply on {channel}: {messages:?}");
    found[0]
}

fn assert_unknown_client(reply: &Value, what: &str) {
    assert_eq!(reply["successful"], false, "{what}: {reply}");
    assert_eq!(reply["error"], "402::Unknown client", "{what}: {reply}");
    assert_eq!(reply["advice"]["reconnect"], "handshake", "{what}: {reply}");
}

// ---- handshake budgets ----

/// Regression (issue 12): one client created 100,000 sessions in under a second (batches of
/// handshakes) and locked every new client out with `503::too many sessions`. A batch now opens
/// one session; an address gets `--handshake-rate` a second in bursts of ten seconds' worth,
/// on every transport, and is told when to try again; another address still handshakes.
#[tokio::test]
async fn handshake_flood_from_one_source_is_refused_and_another_source_still_handshakes() {
    let s = TestServer::with_bayeux(|_, _, bayeux| bayeux.handshake_rate = 1).await;
    // One handshake per batch: the rest of a batch of them is refused.
    let batch = (0..5)
        .map(|_| handshake_message(&["long-polling"]))
        .collect();
    let answer = post_from(&s, HERE, None, Value::Array(batch)).await;
    let outcomes: Vec<&Value> = answer.messages.iter().map(|m| &m["error"]).collect();
    assert_eq!(
        outcomes,
        [&Value::Null]
            .into_iter()
            .chain([&json!("400::one handshake per batch"); 4])
            .collect::<Vec<_>>(),
        "{:?}",
        answer.messages
    );
    assert_eq!(answer.messages[0]["successful"], true);

    // The flood: one handshake per request, until refused (a burst of 10 at 1 a second).
    let mut accepted = 1;
    let refused = loop {
        let answer = post_from(
            &s,
            HERE,
            None,
            json!([handshake_message(&["long-polling"])]),
        )
        .await;
        let hs = answer.reply("/meta/handshake").clone();
        if hs["successful"] == false {
            break hs;
        }
        accepted += 1;
        assert!(accepted <= 10, "more than a burst of handshakes accepted");
    };
    assert_eq!(accepted, 10, "the burst is ten seconds of handshakes");
    assert_eq!(
        refused["error"],
        "429::too many handshakes from this address"
    );
    assert_eq!(refused["clientId"], Value::Null);
    assert_eq!(refused["advice"]["reconnect"], "handshake", "{refused}");
    let interval = refused["advice"]["interval"].as_u64().unwrap();
    assert!(
        (1..=1000).contains(&interval),
        "advice.interval says when the next one may come: {refused}"
    );
    // The same address over WebSocket is the same source.
    let mut ws = ws_from(&s, HERE, None).await;
    let replies = ws_exchange(&mut ws, json!([handshake_message(&["websocket"])])).await;
    assert_eq!(
        only(&replies, "/meta/handshake")["error"],
        "429::too many handshakes from this address"
    );

    // Another address is not locked out, on any transport.
    let other = post_from(
        &s,
        ELSEWHERE,
        None,
        json!([handshake_message(&["long-polling"])]),
    )
    .await;
    other.client_id();
    let mut ws = ws_from(&s, ELSEWHERE, None).await;
    let replies = ws_exchange(&mut ws, json!([handshake_message(&["websocket"])])).await;
    assert_eq!(
        only(&replies, "/meta/handshake")["successful"],
        true,
        "{replies:?}"
    );
    // What an operator sees of it.
    let metrics = s.get("/metrics").await.body;
    for (sample, value) in [
        ("halley_bayeux_handshakes_total", 12),
        ("halley_bayeux_sessions", 12),
        (
            "halley_bayeux_handshakes_refused_total{reason=\"batch\"}",
            4,
        ),
        ("halley_bayeux_handshakes_refused_total{reason=\"rate\"}", 2),
        (
            "halley_bayeux_handshakes_refused_total{reason=\"sessions\"}",
            0,
        ),
    ] {
        assert_eq!(metric_value(&metrics, sample), Some(value), "{sample}");
    }
    s.assert_still_serving().await;
}

/// Behind a reverse proxy every client has the proxy's address, so one handshake budget for
/// all of them. With `--trusted-proxies`, a request from a trusted proxy counts as from the
/// nearest address in `X-Forwarded-For` that is not one; what a client wrote left of that is
/// not believed, and from a peer that is not trusted the header is ignored.
#[tokio::test]
async fn behind_a_trusted_proxy_the_handshake_rate_is_per_forwarded_client() {
    let s = TestServer::with_bayeux(|http, _, bayeux| {
        bayeux.handshake_rate = 1;
        http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let handshake = |source: &'static str, forwarded: String| {
        let s = &s;
        async move {
            let header = format!("X-Forwarded-For: {forwarded}\r\n");
            let answer = post_with(
                s,
                source,
                &header,
                json!([handshake_message(&["long-polling"])]),
            )
            .await;
            answer.reply("/meta/handshake")["error"].clone()
        }
    };
    let refused = json!("429::too many handshakes from this address");
    // One client behind the proxy spends its burst (ten seconds' worth at one a second).
    for _ in 0..10 {
        assert_eq!(handshake(HERE, "203.0.113.7".into()).await, Value::Null);
    }
    assert_eq!(handshake(HERE, "203.0.113.7".into()).await, refused);
    // Another client behind the same proxy is not locked out.
    assert_eq!(handshake(HERE, "198.51.100.9".into()).await, Value::Null);
    // A client that writes its own X-Forwarded-For is counted by the address the proxy saw.
    assert_eq!(
        handshake(HERE, "192.0.2.1, 203.0.113.7".into()).await,
        refused
    );
    // A chain of trusted proxies is walked through.
    assert_eq!(
        handshake(HERE, "203.0.113.7, 127.0.0.1".into()).await,
        refused
    );
    // From a peer that is not a trusted proxy the header means nothing: its own budget.
    for i in 0..10 {
        assert_eq!(
            handshake(ELSEWHERE, format!("198.51.100.{i}")).await,
            Value::Null
        );
    }
    assert_eq!(handshake(ELSEWHERE, "198.51.100.200".into()).await, refused);
    s.assert_still_serving().await;
}

// ---- session binding ----

/// Regression (issue 12): the clientId alone let a request without the session's
/// `BAYEUX_BROWSER` cookie receive its messages, subscribe it and disconnect it. Once the
/// client has sent back the cookie its handshake was answered with, a request for the session
/// without it (or with another), on any transport, is answered as for an unknown client, and
/// the session goes on for its browser.
#[tokio::test]
async fn a_session_is_bound_to_the_browser_cookie_it_sends_back() {
    let s = TestServer::start().await;
    let hs = post_from(
        &s,
        HERE,
        None,
        json!([handshake_message(&["long-polling"])]),
    )
    .await;
    let client = hs.client_id();
    let browser = hs
        .set_browser
        .clone()
        .expect("the handshake sets BAYEUX_BROWSER");
    // The cookie comes back with the first connect: the session is bound.
    let first = post_from(
        &s,
        HERE,
        Some(&browser),
        json!([
            {"channel": "/meta/subscribe", "clientId": client, "subscription": "/bound/a", "id": "s"},
            connect_message(&client, "long-polling", "c1"),
        ]),
    )
    .await;
    assert_eq!(first.reply("/meta/subscribe")["successful"], true);
    assert_eq!(first.reply("/meta/connect")["successful"], true);

    let stranger_requests = [
        connect_message(&client, "long-polling", "x"),
        json!({"channel": "/meta/subscribe", "clientId": client, "subscription": "/bound/b", "id": "x"}),
        json!({"channel": "/meta/unsubscribe", "clientId": client, "subscription": "/bound/a", "id": "x"}),
        json!({"channel": "/bound/a", "clientId": client, "data": "forged", "id": "x"}),
        json!({"channel": "/meta/disconnect", "clientId": client, "id": "x"}),
    ];
    for request in &stranger_requests {
        let channel = request["channel"].as_str().unwrap();
        for (source, cookie) in [
            (HERE, None),
            (ELSEWHERE, None),
            (ELSEWHERE, Some("0123abcd")),
        ] {
            let what = format!("{request} from {source} with {cookie:?}");
            let answer = post_from(&s, source, cookie, json!([request])).await;
            assert_unknown_client(answer.reply(channel), &what);
        }
        let replies = jsonp(&s, None, json!([request])).await;
        assert_unknown_client(
            only(&replies, channel),
            &format!("{request} by callback-polling"),
        );
        let mut ws = ws_from(&s, ELSEWHERE, None).await;
        let replies = ws_exchange(&mut ws, json!([request])).await;
        assert_unknown_client(
            only(&replies, channel),
            &format!("{request} on a WebSocket"),
        );
    }

    // The session's own browser still has it, with its subscription, on every transport.
    let id = s.publish("/bound/a", "still yours").await;
    let answer = post_from(
        &s,
        HERE,
        Some(&browser),
        json!([connect_message(&client, "long-polling", "c2")]),
    )
    .await;
    assert_eq!(
        answer.messages[0],
        json!({"channel": "/bound/a", "id": id, "data": "still yours"})
    );
    let replies = jsonp(
        &s,
        Some(&browser),
        json!([{"channel": "/bound/a", "clientId": client, "data": "mine", "id": "p"}]),
    )
    .await;
    assert_eq!(
        only(&replies, "/bound/a")["successful"],
        true,
        "{replies:?}"
    );
    let mut ws = ws_from(&s, HERE, Some(&browser)).await;
    let replies = ws_exchange(
        &mut ws,
        json!([{"channel": "/meta/disconnect", "clientId": client, "id": "d"}]),
    )
    .await;
    assert_eq!(only(&replies, "/meta/disconnect")["successful"], true);
}

/// A session handshaken on a WebSocket upgraded with the browser cookie is bound to it: the
/// same browser may go on over long-polling (CometD falls back) or a new socket, a request
/// without the cookie may not. A client that never sends cookies (some non-browser clients)
/// binds nothing and keeps working as before, also from a new socket with its clientId (how
/// CometD's WebSocket transport reconnects).
#[tokio::test]
async fn websocket_sessions_are_bound_to_the_upgrade_cookie_and_cookieless_clients_still_work() {
    let s = TestServer::start().await;
    let browser = "f00dfeedf00dfeedf00dfeedf00dfeed";
    let mut ws = ws_from(&s, HERE, Some(browser)).await;
    let replies = ws_exchange(&mut ws, json!([handshake_message(&["websocket"])])).await;
    let client = only(&replies, "/meta/handshake")["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = post_from(
        &s,
        HERE,
        None,
        json!([connect_message(&client, "long-polling", "x")]),
    )
    .await;
    assert_unknown_client(
        answer.reply("/meta/connect"),
        "long-polling without the cookie",
    );
    let answer = post_from(
        &s,
        HERE,
        Some(browser),
        json!([connect_message(&client, "long-polling", "c")]),
    )
    .await;
    assert_eq!(answer.reply("/meta/connect")["successful"], true);

    // An upgrade without the cookie is answered with one (as a browser's first visit is); a
    // client that never sends it back binds nothing and keeps working from a new socket.
    let (mut ws, offered) = ws_offered(&s, HERE, None).await;
    let offered = offered.expect("an upgrade without the cookie is answered with one");
    let replies = ws_exchange(&mut ws, json!([handshake_message(&["websocket"])])).await;
    let free = only(&replies, "/meta/handshake")["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut again = ws_from(&s, ELSEWHERE, None).await;
    let replies = ws_exchange(
        &mut again,
        json!([connect_message(&free, "websocket", "c")]),
    )
    .await;
    assert_eq!(
        only(&replies, "/meta/connect")["successful"],
        true,
        "{replies:?}"
    );
    // A browser's next socket carries the offered cookie: from then on the session is bound,
    // and the socket it was offered on may still use it.
    let (mut next, set) = ws_offered(&s, HERE, Some(&offered)).await;
    assert_eq!(set, None, "an upgrade with the cookie is not given another");
    let replies = ws_exchange(&mut next, json!([connect_message(&free, "websocket", "n")])).await;
    assert_eq!(
        only(&replies, "/meta/connect")["successful"],
        true,
        "{replies:?}"
    );
    let replies = ws_exchange(
        &mut again,
        json!([connect_message(&free, "websocket", "x")]),
    )
    .await;
    assert_unknown_client(
        only(&replies, "/meta/connect"),
        "a socket without the cookie",
    );
    let replies = ws_exchange(
        &mut ws,
        json!([{"channel": "/meta/subscribe", "clientId": free, "subscription": "/ws/own", "id": "s"}]),
    )
    .await;
    assert_eq!(
        only(&replies, "/meta/subscribe")["successful"],
        true,
        "{replies:?}"
    );
}

// ---- the first connect ----

/// Regression (issue 12): aiocometd's `open()` took 25 s, because a session's first
/// `/meta/connect` without advice was held for the whole timeout. It is answered at once (the
/// connects here are held 30 s, longer than a test step may take); the next one is held.
#[tokio::test]
async fn the_first_connect_is_answered_at_once_on_every_bayeux_transport() {
    let s = TestServer::with_bayeux(|http, _, bayeux| {
        http.hold_timeout = Duration::from_secs(30);
        bayeux.timeout = Duration::from_secs(30);
    })
    .await;
    // Long-polling.
    let client = post_from(
        &s,
        HERE,
        None,
        json!([handshake_message(&["long-polling"])]),
    )
    .await
    .client_id();
    let first = post_from(
        &s,
        HERE,
        None,
        json!([
            {"channel": "/meta/subscribe", "clientId": client, "subscription": "/first/lp"},
            connect_message(&client, "long-polling", "1"),
        ]),
    )
    .await;
    assert_eq!(first.reply("/meta/connect")["successful"], true);
    let second = post_from(
        &s,
        HERE,
        None,
        json!([connect_message(&client, "long-polling", "2")]),
    );
    let publish = async {
        s.wait_metric(LONGPOLL, 1).await;
        s.publish("/first/lp", "held").await
    };
    let (second, _) = tokio::join!(second, publish);
    assert_eq!(
        second.messages[0]["data"], "held",
        "the second connect was held"
    );

    // Callback-polling.
    let replies = jsonp(&s, None, json!([handshake_message(&["callback-polling"])])).await;
    let client = only(&replies, "/meta/handshake")["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    let replies = jsonp(
        &s,
        None,
        json!([
            {"channel": "/meta/subscribe", "clientId": client, "subscription": "/first/cp"},
            connect_message(&client, "callback-polling", "1"),
        ]),
    )
    .await;
    assert_eq!(only(&replies, "/meta/connect")["successful"], true);
    let second = jsonp(
        &s,
        None,
        json!([connect_message(&client, "callback-polling", "2")]),
    );
    let publish = async {
        s.wait_metric(JSONP, 1).await;
        s.publish("/first/cp", "held").await
    };
    let (second, _) = tokio::join!(second, publish);
    assert_eq!(second[0]["data"], "held", "the second connect was held");

    // WebSocket.
    let mut ws = ws_from(&s, HERE, None).await;
    let replies = ws_exchange(&mut ws, json!([handshake_message(&["websocket"])])).await;
    let client = only(&replies, "/meta/handshake")["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    let replies = ws_exchange(
        &mut ws,
        json!([
            {"channel": "/meta/subscribe", "clientId": client, "subscription": "/first/ws", "id": "s"},
            connect_message(&client, "websocket", "1"),
        ]),
    )
    .await;
    assert_eq!(only(&replies, "/meta/subscribe")["successful"], true);
    assert_eq!(
        only(&replies, "/meta/connect")["successful"],
        true,
        "{replies:?}"
    );
    // The second is held: a publish meanwhile comes in a frame of its own, not with a reply.
    let replies = ws_exchange(
        &mut ws,
        json!([
            connect_message(&client, "websocket", "2"),
            {"channel": "/first/ws", "clientId": client, "data": "pushed", "id": "p"},
        ]),
    )
    .await;
    assert_eq!(
        replies.len(),
        1,
        "only the publish is answered: {replies:?}"
    );
    assert_eq!(only(&replies, "/first/ws")["successful"], true);
    let pushed = ws_json(&mut ws).await;
    assert_eq!(pushed[0]["data"], "pushed", "{pushed}");
}
