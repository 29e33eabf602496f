//! `POST`/`PUT /pub/{channel}`: bodies become message data, the answer names the message, bad
//! requests get a JSON error (and the server keeps serving), the publish key is enforced.

mod common;

use bytes::Bytes;
use common::{TestServer, message_object, parse_id, read_to_close, read_until};
use http_body_util::Full;
use serde_json::Value;

const LIMIT: usize = 64;

/// Request headers, as (name, value) pairs.
type Headers<'a> = &'a [(&'a str, &'a str)];

async fn server() -> TestServer {
    TestServer::with(|http, _| http.body_limit = LIMIT).await
}

/// Sends `method path` with `headers` and `body`; asserts the status (and for a refusal, the
/// JSON error body); then asserts the server still serves.
async fn check(
    s: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    status: u16,
) -> Value {
    let mut request = s.request(method, path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let reply = s
        .send(
            request
                .body(Full::new(Bytes::copy_from_slice(body)))
                .unwrap(),
        )
        .await;
    if status == 200 {
        assert_eq!(reply.status, 200, "{method} {path}: {}", reply.body);
        assert_eq!(reply.header("content-type"), Some("application/json"));
    } else {
        reply.expect_error(status);
    }
    s.assert_still_serving().await;
    reply.json()
}

#[tokio::test]
async fn bodies_become_message_data() {
    let s = TestServer::start().await;
    let mut sub = s.stream("/sub/p/a?transport=stream&format=json").await;
    assert_eq!(sub.line().await, "", "NDJSON opens with a blank line");
    // (method, content type, body, the message's data as compact JSON)
    let cases: &[(&str, Option<&str>, &str, &str)] = &[
        ("POST", Some("text/plain"), "hello", r#""hello""#),
        ("POST", None, "no type", r#""no type""#),
        (
            "PUT",
            Some("text/plain; charset=utf-8"),
            "héllo \"q\"",
            r#""héllo \"q\"""#,
        ),
        ("POST", Some("text/plain"), r#"{"a":1}"#, r#""{\"a\":1}""#),
        ("POST", Some("text/plain"), "", r#""""#),
        ("POST", Some("text/plain"), "two\nlines", r#""two\nlines""#),
        (
            "POST",
            Some("application/json"),
            r#" { "a" : [1, 2] } "#,
            r#"{"a":[1,2]}"#,
        ),
        (
            "PUT",
            Some("application/json; charset=utf-8"),
            r#""s""#,
            r#""s""#,
        ),
        ("POST", Some("Application/JSON"), "null", "null"),
        (
            "POST",
            Some("application/vnd.x+json"),
            "[1, true]",
            "[1,true]",
        ),
        (
            "POST",
            Some("application/json"),
            "12345678901234567890.50",
            "12345678901234567890.50",
        ),
    ];
    for &(method, content_type, body, data) in cases {
        let mut request = s.request(method, "/pub/p/a");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let reply = s
            .send(request.body(Full::new(Bytes::from(body))).unwrap())
            .await;
        let id = reply.expect_published("/p/a");
        assert_eq!(reply.json()["subscribers"], 1, "{body:?}");
        assert_eq!(
            sub.line().await,
            message_object("/p/a", &id, data),
            "{body:?}"
        );
    }
}

#[tokio::test]
async fn bad_publishes_are_refused_with_a_json_error() {
    let s = server().await;
    let text = [("content-type", "text/plain")];
    let json = [("content-type", "application/json")];
    let over = vec![b'x'; LIMIT + 1];
    // (method, path, headers, body, status)
    let cases: &[(&str, &str, Headers, &[u8], u16)] = &[
        ("POST", "/pub/a/*", &text, b"x", 400),
        ("POST", "/pub/a/**", &text, b"x", 400),
        ("POST", "/pub/a%20b", &text, b"x", 400),
        ("POST", "/pub/a//b", &text, b"x", 400),
        ("POST", "/pub/a/", &text, b"x", 400),
        ("POST", "/pub/", &text, b"x", 400),
        ("POST", "/pub", &text, b"x", 404),
        ("POST", "/pub/a?b", &text, b"x", 200),
        ("POST", "/pub/meta/x", &text, b"x", 400),
        ("POST", "/pub/meta/subscribe", &json, b"{}", 400),
        ("PUT", "/pub/service/x", &text, b"x", 400),
        ("POST", "/pub/a", &json, b"{", 400),
        ("POST", "/pub/a", &json, b"", 400),
        ("POST", "/pub/a", &json, b"1 2", 400),
        ("POST", "/pub/a", &json, b"\xff", 400),
        ("POST", "/pub/a", &text, b"\xff\xfe", 400),
        ("POST", "/pub/a", &[], b"\xc3", 400),
        ("POST", "/pub/a", &text, &over, 413),
        ("POST", "/pub/a", &text, &over[..LIMIT], 200),
        ("GET", "/pub/x", &[], b"", 405),
        ("DELETE", "/pub/x", &[], b"", 405),
        ("PATCH", "/pub/x", &text, b"x", 405),
    ];
    for &(method, path, headers, body, status) in cases {
        check(&s, method, path, headers, body, status).await;
    }
    let long = format!("/pub/{}", "a".repeat(255));
    check(&s, "POST", &long, &text, b"x", 400).await;
    check(&s, "POST", &long[..255 + 4], &text, b"x", 200).await;
}

/// A chunked body has no `Content-Length` to refuse early: the limit applies while reading.
#[tokio::test]
async fn body_limit_applies_to_chunked_bodies() {
    let s = server().await;
    let chunked = |size: usize| {
        let half = "y".repeat(size / 2);
        let rest = "y".repeat(size - size / 2);
        format!(
            "POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{half}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
            half.len(),
            rest.len()
        )
    };
    for (size, status) in [(LIMIT, "200"), (LIMIT + 1, "413"), (10 * LIMIT, "413")] {
        let mut stream = s.raw_request(&chunked(size)).await;
        let got = String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned();
        assert!(
            got.starts_with(&format!("HTTP/1.1 {status}")),
            "{size}: {got:?}"
        );
        if status != "200" {
            let body = got.split_once("\r\n\r\n").unwrap().1;
            let error: Value = serde_json::from_str(body).unwrap();
            assert!(error["error"].is_string(), "{body}");
        }
    }
    s.assert_still_serving().await;
}

/// A declared `Content-Length` over the limit is refused before the body is read: the answer
/// comes although the client never sends the body.
#[tokio::test]
async fn oversized_declared_bodies_are_refused_without_reading_them() {
    let s = server().await;
    let mut stream = s
        .raw_request("POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .await;
    let got = read_until(&mut stream, b"}").await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 413"), "{got:?}");
    s.assert_still_serving().await;
}

#[tokio::test]
async fn publish_key_is_required_when_set() {
    let s = TestServer::with_key("k").await;
    let text = ("content-type", "text/plain");
    // (method, path, headers, status)
    let cases: &[(&str, &str, Headers, u16)] = &[
        ("POST", "/pub/a", &[text], 401),
        ("POST", "/pub/a", &[text, ("x-halley-key", "nope")], 401),
        ("POST", "/pub/a", &[text, ("x-halley-key", "")], 401),
        ("POST", "/pub/a?key=nope", &[text], 401),
        ("POST", "/pub/a?key=", &[text], 401),
        ("POST", "/pub/a", &[text, ("x-halley-key", "k")], 200),
        ("PUT", "/pub/a", &[text, ("x-halley-key", "k")], 200),
        ("POST", "/pub/a?key=k", &[text], 200),
        ("POST", "/pub/a?x=1&key=k", &[text], 200),
    ];
    for &(method, path, headers, status) in cases {
        check(&s, method, path, headers, b"x", status).await;
    }
    // A key does not make a bad request good, nor a good key a refused channel.
    check(&s, "POST", "/pub/a/*?key=k", &[text], b"x", 400).await;
}

#[tokio::test]
async fn ids_are_opaque_and_grow_across_channels() {
    let s = TestServer::start().await;
    let mut last: Option<(u64, u64)> = None;
    for channel in ["/x/1", "/x/2", "/x/1", "/y", "/x/2/deep"] {
        let id = s.publish(channel, "m").await;
        let (epoch, offset) = parse_id(&id);
        if let Some((last_epoch, last_offset)) = last {
            assert_eq!(epoch, last_epoch, "one epoch per server life");
            assert!(offset > last_offset, "{id} after offset {last_offset}");
        }
        last = Some((epoch, offset));
    }
}

#[tokio::test]
async fn subscribers_counts_the_local_subscribers_it_was_queued_for() {
    let s = TestServer::start().await;
    let count = |reply: Value| reply["subscribers"].as_u64().unwrap();
    let publish = |channel: &'static str| {
        let s = &s;
        async move {
            count(
                s.post(&format!("/pub{channel}"), "text/plain", "x")
                    .await
                    .json(),
            )
        }
    };
    assert_eq!(publish("/c/a").await, 0);
    let _exact = s.stream("/sub/c/a?transport=sse").await;
    let _one = s.stream("/sub/c/*?transport=stream").await;
    let _any = s.ws("/sub/c/**").await;
    let _other = s.stream("/sub/c/b?transport=sse").await;
    assert_eq!(publish("/c/a").await, 3);
    assert_eq!(publish("/c/a/deep").await, 1);
    assert_eq!(publish("/d").await, 0);
}

async fn post_keyed(s: &TestServer, path: &str, key: Option<&str>, body: &str) -> common::Reply {
    let mut request = s
        .request("POST", path)
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    s.send(
        request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await
}

/// One `POST /pub` to several channels: each gets the message with its own id, every channel
/// decided before anything is published.
#[tokio::test]
async fn one_publish_to_several_channels() {
    let s = TestServer::start().await;
    let mut a = s.sse("/multi/a", None).await;
    let mut b = s.sse("/multi/b", None).await;
    let reply = post_keyed(
        &s,
        "/pub/multi/a?channel=/multi/b&channel=/multi/a",
        None,
        "7",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let published = reply.json()["published"].as_array().unwrap().clone();
    assert_eq!(
        published.len(),
        2,
        "a channel named twice is published once"
    );
    assert_eq!(published[0]["channel"], "/multi/a");
    assert_eq!(published[1]["channel"], "/multi/b");
    let (ea, eb) = (a.next().await, b.next().await);
    assert_eq!((ea.data.as_str(), eb.data.as_str()), ("7", "7"));
    assert_eq!(ea.id.as_deref(), published[0]["id"].as_str());
    assert_eq!(eb.id.as_deref(), published[1]["id"].as_str());
    // Refused on one channel (reserved, malformed, too many): published on none.
    for bad in [
        "/pub/multi/a?channel=/meta/x".to_owned(),
        "/pub/multi/a?channel=/a/*".to_owned(),
        format!(
            "/pub/multi/a?{}",
            (0..16)
                .map(|i| format!("channel=/m/{i}"))
                .collect::<Vec<_>>()
                .join("&")
        ),
    ] {
        let reply = post_keyed(&s, &bad, None, "8").await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert!(reply.json()["error"].is_string());
    }
    let history = s.get("/api/history?channel=/multi/a").await.json();
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
}

/// `Idempotency-Key`: a retry gets the first answer and is not delivered again; the key is
/// the publisher's, bound to what was published, and checked.
#[tokio::test]
async fn idempotency_key_publishes_once() {
    let s = TestServer::start().await;
    let mut sub = s.sse("/idem", None).await;
    let first = post_keyed(&s, "/pub/idem", Some("k-1"), r#"{"n":1}"#).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = post_keyed(&s, "/pub/idem", Some("k-1"), r#"{"n":1}"#).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, first.body, "the first answer, again");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // The same key for other data or another channel: refused, nothing published.
    let other = post_keyed(&s, "/pub/idem", Some("k-1"), r#"{"n":2}"#).await;
    assert_eq!(other.status, 422, "{}", other.body);
    let other = post_keyed(&s, "/pub/idem2", Some("k-1"), r#"{"n":1}"#).await;
    assert_eq!(other.status, 422, "{}", other.body);
    // Another key publishes; the subscriber saw n=1 once, then n=3.
    let third = post_keyed(&s, "/pub/idem", Some("k-2"), r#"{"n":3}"#).await;
    assert_eq!(third.status, 200);
    assert_eq!(sub.next().await.data, r#"{"n":1}"#);
    assert_eq!(sub.next().await.data, r#"{"n":3}"#);
    // Malformed keys.
    for bad in ["", "a b", &"k".repeat(256)] {
        let reply = post_keyed(&s, "/pub/idem", Some(bad), "1").await;
        assert_eq!(reply.status, 400, "{bad:?}: {}", reply.body);
    }
    // A refused publish does not take the key: after the refusal the same key publishes.
    let refused = post_keyed(&s, "/pub/idem", Some("k-3"), "not json").await;
    assert_eq!(refused.status, 400);
    let ok = post_keyed(&s, "/pub/idem", Some("k-3"), "4").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.header("idempotent-replayed"), None);
}

/// Retries racing the original: exactly one is published; the others get its answer or are
/// told it is under way (409), never a second message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_retries_publish_once() {
    let s = TestServer::start().await;
    for round in 0..20 {
        let key = format!("race-{round}");
        let mut tries = Vec::new();
        for _ in 0..8 {
            let client = common::Client::new(s.addr);
            let key = key.clone();
            tries.push(tokio::spawn(async move {
                let request = client
                    .request("POST", "/pub/race")
                    .header("content-type", "application/json")
                    .header("idempotency-key", key)
                    .body(Full::new(Bytes::from_static(b"1")))
                    .unwrap();
                client.send(request).await
            }));
        }
        let mut ids = std::collections::BTreeSet::new();
        for t in tries {
            let reply = t.await.unwrap();
            match reply.status.as_u16() {
                200 => {
                    ids.insert(reply.json()["id"].as_str().unwrap().to_owned());
                }
                409 => assert!(reply.json()["error"].is_string()),
                other => panic!("{other}: {}", reply.body),
            }
        }
        assert_eq!(ids.len(), 1, "round {round}: {ids:?}");
    }
    let history = s.get("/api/history?channel=/race&limit=100").await.json();
    assert_eq!(history["messages"].as_array().unwrap().len(), 20);
}

/// `type=`: SSE's `event:` name and `"type"` in message objects, kept in history; `ttl=`: the
/// message leaves history (resume, recent, /api/history) when it expires, without a gap, while
/// live subscribers got it.
#[tokio::test]
async fn message_type_and_time_to_live() {
    let s = TestServer::start().await;
    let mut sse = s.sse("/typed", None).await;
    let before = s.publish("/typed", "first").await;
    let reply = post_keyed(&s, "/pub/typed?type=price.update", None, "10").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = post_keyed(&s, "/pub/typed?ttl=1&type=flash", None, "11").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    s.publish("/typed", "last").await;
    assert_eq!(sse.next().await.event, None);
    let typed = sse.next().await;
    assert_eq!(
        (typed.event.as_deref(), typed.data.as_str()),
        (Some("price.update"), "10")
    );
    let flash = sse.next().await;
    assert_eq!(
        (flash.event.as_deref(), flash.data.as_str()),
        (Some("flash"), "11")
    );
    // In history with its type, until the short-lived one expires: then without it, and a
    // resume from before it has no gap.
    let history = s.get("/api/history?channel=/typed").await.json();
    let kinds: Vec<&Value> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["type"])
        .collect();
    assert_eq!(
        kinds,
        [
            &Value::Null,
            &Value::from("price.update"),
            &Value::from("flash"),
            &Value::Null
        ]
    );
    common::eventually(
        std::time::Duration::from_secs(10),
        "the ttl=1 message to expire",
        || async {
            let history = s.get("/api/history?channel=/typed").await.json();
            (history["messages"].as_array().unwrap().len() == 3).then_some(())
        },
    )
    .await;
    let reply = s
        .get(&format!("/sub/typed?transport=longpoll&last_id={before}"))
        .await;
    assert_eq!(reply.header("x-halley-gap"), None);
    let data: Vec<String> = reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].to_string())
        .collect();
    assert_eq!(data, ["10", r#""last""#]);
    let recent = s.get("/sub/typed?transport=longpoll&recent=2").await.json();
    assert_eq!(recent[0]["type"], "price.update");
    // Bad values are a 400 with a JSON error.
    for bad in ["type=a%20b", "type=", "ttl=0", "ttl=x", "ttl=31536001"] {
        let reply = post_keyed(&s, &format!("/pub/typed?{bad}"), None, "1").await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert!(reply.json()["error"].is_string());
    }
}
