//! rupy compatibility: `/push` publishes `{"name","message"}`, `/pull` streams the pushed text
//! one line per message but never the puller's own (the objects with `format=json`, a
//! sandboxed HTML page for a browser), and `Head: less` gets rupy's minimal head. rupy's own
//! ActionScript client (the seed's Comet Stream page) is replayed byte for byte.

mod common;

use std::time::{Duration, Instant};

use common::{Open, TestServer, read_to_close, read_until, within};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn push(s: &TestServer, query: &str) -> String {
    let reply = s.get(&format!("/push?{query}")).await;
    assert_eq!(reply.status, 200, "{query}: {}", reply.body);
    reply.json()["id"].as_str().unwrap().to_owned()
}

/// The line a `format=json` pull carries: `{"name":…,"message":…}` as compact JSON, name first.
fn object(name: &str, message: &str) -> String {
    format!(r#"{{"name":{},"message":{}}}"#, json!(name), json!(message))
}

/// The line a pull carries: the pushed text itself.
fn line(_name: &str, message: &str) -> String {
    message.to_owned()
}

#[tokio::test]
async fn pull_streams_the_pushed_text_but_never_your_own() {
    let s = TestServer::start().await;
    let mut alice = s.stream("/pull?name=alice").await;
    let mut bob = s.stream("/pull?name=bob").await;
    for open in [&alice, &bob] {
        assert_eq!(open.status, 200);
        assert_eq!(
            open.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(open.header("cache-control"), Some("no-cache"));
    }
    push(&s, "name=alice&message=hi").await;
    push(&s, "name=bob&message=yo").await;
    push(&s, "name=carol&message=end").await;
    assert_eq!(alice.line().await, line("bob", "yo"));
    assert_eq!(alice.line().await, line("carol", "end"));
    assert_eq!(bob.line().await, line("alice", "hi"));
    assert_eq!(bob.line().await, line("carol", "end"));
}

/// A name that is a prefix of another, or needs JSON escaping, must not confuse "own message".
#[tokio::test]
async fn own_messages_are_recognised_by_exact_name() {
    let s = TestServer::start().await;
    let mut al = s.stream("/pull?name=al").await;
    let mut quoted = s.stream("/pull?name=a%22b").await;
    push(&s, "name=alice&message=1").await;
    push(&s, "name=a%22b&message=2").await;
    push(&s, "name=al&message=3").await;
    assert_eq!(al.line().await, line("alice", "1"));
    assert_eq!(al.line().await, line("a\"b", "2"));
    assert_eq!(quoted.line().await, line("alice", "1"));
    assert_eq!(quoted.line().await, line("al", "3"));
}

#[tokio::test]
async fn push_by_form_post_and_to_another_channel() {
    let s = TestServer::start().await;
    let mut room = s.stream("/pull?name=bob&channel=/room/1").await;
    let mut talk = s.stream("/pull?name=bob").await;
    let reply = s
        .post(
            "/push?channel=/room/1",
            "application/x-www-form-urlencoded",
            "name=alice&message=hello+world%21",
        )
        .await;
    assert_eq!(reply.json()["channel"], "/room/1", "{}", reply.body);
    push(&s, "name=carol&message=on+talk").await;
    assert_eq!(room.line().await, line("alice", "hello world!"));
    assert_eq!(talk.line().await, line("carol", "on talk"));
}

#[tokio::test]
async fn format_json_pull_keeps_the_objects() {
    let s = TestServer::start().await;
    let mut bob = s.stream("/pull?name=bob&format=json").await;
    assert_eq!(
        bob.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    push(&s, "name=bob&message=mine").await;
    push(&s, "name=alice&message=a%0Ab").await;
    assert_eq!(bob.line().await, object("alice", "a\nb"));
}

/// One message, one line: a pushed text with a line break comes as a JSON string (the break
/// escaped); data that is not a push comes as every raw line stream gives it.
#[tokio::test]
async fn pull_text_keeps_one_message_per_line() {
    let s = TestServer::start().await;
    let mut bob = s.stream("/pull?name=bob").await;
    push(&s, "name=alice&message=two%0Alines").await;
    s.post("/pub/talk", "text/plain", "plain text").await;
    s.post("/pub/talk", "application/json", r#"{"n":1}"#).await;
    s.post(
        "/pub/talk",
        "application/json",
        r#"{"name":"talk","message":"from the chat","color":"f00"}"#,
    )
    .await;
    assert_eq!(bob.line().await, r#""two\nlines""#);
    assert_eq!(bob.line().await, "plain text");
    assert_eq!(bob.line().await, r#"{"n":1}"#);
    assert_eq!(bob.line().await, "from the chat");
}

#[tokio::test]
async fn pushes_reach_every_other_transport_as_objects() {
    let s = TestServer::start().await;
    let mut sub = s.stream("/sub/talk?transport=stream&format=json").await;
    let id = push(&s, "name=alice&message=%3Cb%3E").await;
    let message = sub.json_line().await;
    assert_eq!(
        message,
        json!({"channel": "/talk", "id": id, "data": {"name": "alice", "message": "<b>"}})
    );
}

#[tokio::test]
async fn bad_pushes_and_pulls_are_refused() {
    let s = TestServer::start().await;
    let long = "n".repeat(halley_http::MAX_NAME + 1);
    let cases = [
        "/push?message=m".to_owned(),
        "/push?name=&message=m".to_owned(),
        "/push?name=a".to_owned(),
        format!("/push?name={long}&message=m"),
        "/push?name=a&message=m&channel=/a/*".to_owned(),
        "/push?name=a&message=m&channel=/meta/x".to_owned(),
        "/pull".to_owned(),
        format!("/pull?name={long}"),
        "/pull?name=a&channel=nope".to_owned(),
        "/pull?name=a&last_id=bad".to_owned(),
        "/pull?name=a&format=xml".to_owned(),
    ];
    for path in cases {
        let reply = s.get(&path).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.body);
        reply.expect_error(400);
    }
    let reply = s.post("/pull?name=a", "text/plain", "").await;
    reply.expect_error(405);
    assert_eq!(s.metric("halley_messages_published_total").await, 0);
    s.assert_still_serving().await;
}

#[tokio::test]
async fn push_needs_the_publish_key_when_one_is_set() {
    let s = TestServer::with_key("k").await;
    s.get("/push?name=a&message=m").await.expect_error(401);
    s.get("/push?name=a&message=m&key=x")
        .await
        .expect_error(401);
    push(&s, "name=a&message=m&key=k").await;
    let reply = s
        .post(
            "/push",
            "application/x-www-form-urlencoded",
            "name=a&message=m&key=k",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn pull_resumes_from_last_id() {
    let s = TestServer::start().await;
    let first = push(&s, "name=alice&message=1").await;
    push(&s, "name=bob&message=2").await;
    push(&s, "name=alice&message=3").await;
    let mut open: Open = s.stream(&format!("/pull?name=bob&last_id={first}")).await;
    assert_eq!(open.line().await, line("alice", "3"));
}

/// What rupy sends for `Head: less` on a stream: the status line, the framing and the content
/// type, nothing else.
const MINIMAL_PULL_HEAD: &str =
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n";

/// The chunk that carries `line` (rupy frames each message as one chunk).
fn chunk(line: &str) -> String {
    format!("{:x}\r\n{line}\r\n", line.len())
}

#[tokio::test]
async fn head_less_pull_gets_rupys_minimal_head_and_chunks() {
    let s = TestServer::start().await;
    let mut raw = s
        .raw_request("GET /pull?name=bob HTTP/1.1\r\nHost: x\r\nHead: less\r\n\r\n")
        .await;
    // The head is sent once the pull is subscribed.
    let head = read_until(&mut raw, b"\r\n\r\n").await;
    assert_eq!(String::from_utf8(head).unwrap(), MINIMAL_PULL_HEAD);
    push(&s, "name=bob&message=mine").await;
    push(&s, "name=alice&message=hi").await;
    push(&s, "name=carol&message=%3Cb%3Eyo%3C%2Fb%3E").await;
    let expected = format!("{}{}", chunk("hi\n"), chunk("<b>yo</b>\n"));
    let got = read_until(&mut raw, expected.as_bytes()).await;
    assert_eq!(String::from_utf8(got).unwrap(), expected);
}

#[tokio::test]
async fn head_less_pull_with_bad_input_sends_a_json_error_under_a_minimal_head() {
    let s = TestServer::start().await;
    let mut raw = s
        .raw_request("GET /pull?channel=/talk HTTP/1.1\r\nHead: less\r\n\r\n")
        .await;
    let got = String::from_utf8(read_to_close(&mut raw).await).unwrap();
    let (head, body) = got.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{got:?}"));
    assert_eq!(
        head,
        format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nContent-Type: application/json",
            body.len()
        )
    );
    let error: Value = serde_json::from_str(body).unwrap();
    assert!(error["error"].as_str().unwrap().contains("name"), "{got:?}");
    s.assert_still_serving().await;
}

#[tokio::test]
async fn head_less_pull_ends_when_the_client_goes_away() {
    let s = TestServer::start().await;
    let raw = s
        .raw_request("GET /pull?name=bob&channel=/gone HTTP/1.1\r\nHead: less\r\n\r\n")
        .await;
    s.wait_subscribers("/gone", 1).await;
    drop(raw);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    for _ in 0..300 {
        tick.tick().await;
        if s.subscribers("/gone").await == 0 {
            assert_eq!(s.metric("halley_subscribers{transport=\"pull\"}").await, 0);
            return;
        }
    }
    panic!("the headless pull outlived its client");
}
