//! HTTP/1.1 connection handling around subscribers (which the server answers on its own lean
//! path rather than through hyper): keep-alive, `Connection: close`, HTTP/1.0, pipelining,
//! and unsubscribing when the client goes away. Raw TCP, to see the exact framing.

mod common;

use std::time::Duration;

use common::{TestServer, message_object, read_to_close, read_until};
use tokio::io::AsyncWriteExt;

/// Splits a raw response into (head, body) at the blank line.
fn split(response: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{text:?}"));
    (head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test]
async fn long_polls_reuse_a_keep_alive_connection() {
    let s = TestServer::start().await;
    let id = s.publish("/k/a", "one").await;
    let mut conn = s.raw().await;
    let poll = format!("GET /sub/k/a?last_id={} HTTP/1.1\r\nHost: x\r\n\r\n", id);
    // First poll: held until the hold timeout, answered with an empty batch.
    conn.write_all(poll.as_bytes()).await.unwrap();
    let (head, _) = split(&read_until(&mut conn, b"\r\n\r\n[]").await);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 2"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    // Second poll on the same connection gets what was published meanwhile.
    let two = s.publish("/k/a", "two").await;
    conn.write_all(poll.as_bytes()).await.unwrap();
    let expected = format!("[{}]", message_object("/k/a", &two, r#""two""#));
    let (head, body) = split(&read_until(&mut conn, expected.as_bytes()).await);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.ends_with(&expected), "{body}");
    // And a request that is not a subscription still works on it.
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let rest = String::from_utf8(read_to_close(&mut conn).await).unwrap();
    assert!(
        rest.starts_with("HTTP/1.1 200") && rest.ends_with(r#"{"status":"ok"}"#),
        "{rest}"
    );
}

#[tokio::test]
async fn connection_close_is_honoured_on_a_subscription() {
    let s = TestServer::start().await;
    let mut conn = s
        .raw_request("GET /sub/k/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let (head, body) = split(&read_to_close(&mut conn).await);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, "[]");
}

#[tokio::test]
async fn streams_are_chunked_for_http_1_1() {
    let s = TestServer::start().await;
    let mut conn = s
        .raw_request("GET /sub/k/s?transport=stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let head = read_until(&mut conn, b"\r\n\r\n").await;
    let (head, _) = split(&head);
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    s.publish("/k/s", "hello").await;
    read_until(&mut conn, b"6\r\nhello\n\r\n").await;
}

#[tokio::test]
async fn http_1_0_streams_are_close_delimited() {
    let s = TestServer::start().await;
    let mut conn = s
        .raw_request("GET /sub/k/old?transport=stream HTTP/1.0\r\n\r\n")
        .await;
    let head = read_until(&mut conn, b"\r\n\r\n").await;
    let (head, body) = split(&head);
    assert!(
        head.starts_with("http/1.1 200") || head.starts_with("http/1.0 200"),
        "{head}"
    );
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, "");
    s.publish("/k/old", "hello").await;
    s.publish("/k/old", "again").await;
    let got = read_until(&mut conn, b"again\n").await;
    assert_eq!(String::from_utf8(got).unwrap(), "hello\nagain\n");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let s = TestServer::start().await;
    let id = s.publish("/k/p", "x").await;
    let mut conn = s
        .raw_request(concat!(
            "GET /sub/k/p?last_id=0-0 HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ))
        .await;
    let got = String::from_utf8(read_to_close(&mut conn).await).unwrap();
    let first = got.find("HTTP/1.1 200").unwrap();
    let second = got.rfind("HTTP/1.1 200").unwrap();
    assert!(first < second, "two responses expected: {got}");
    assert!(got.ends_with(r#"{"status":"ok"}"#), "{got}");
    // `0-0` is from another epoch: a gap, with everything history holds.
    assert!(got[..second].contains(&id), "{got}");
}

/// Waits until `/api/channels` shows no subscriber left on `channel`.
async fn wait_unsubscribed(s: &TestServer, channel: &str) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..300 {
        tick.tick().await;
        if s.subscribers(channel).await == 0 {
            return;
        }
    }
    panic!("{channel} kept a subscriber after its client left");
}

#[tokio::test]
async fn clients_that_leave_are_unsubscribed() {
    let s = TestServer::with(|http, _| http.hold_timeout = Duration::from_secs(30)).await;
    // (channel, request): held long-polls and every kind of stream, on the lean path.
    let cases = [
        ("/u/lp", "GET /sub/u/lp HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "/u/jsonp",
            "GET /sub/u/jsonp?transport=jsonp&callback=f HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "/u/sse",
            "GET /sub/u/sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        ),
        (
            "/u/stream",
            "GET /sub/u/stream?transport=stream HTTP/1.0\r\n\r\n",
        ),
        (
            "/u/pull",
            "GET /pull?name=a&channel=/u/pull HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "/u/headless",
            "GET /pull?name=a&channel=/u/headless HTTP/1.1\r\nHead: less\r\n\r\n",
        ),
    ];
    for (channel, request) in cases {
        let conn = s.raw_request(request).await;
        s.wait_subscribers(channel, 1).await;
        drop(conn);
        wait_unsubscribed(&s, channel).await;
    }
    // A WebSocket client that disconnects without a Close frame.
    let ws = s.ws("/sub/u/ws").await;
    drop(ws);
    wait_unsubscribed(&s, "/u/ws").await;
    assert_eq!(s.metric("halley_subscriptions").await, 0);
}
