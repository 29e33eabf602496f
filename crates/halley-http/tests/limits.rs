//! Bad input and budgets: refused subscribes, the slow-subscriber cut-off, the header-read
//! timeout (slowloris), the connection cap, and the request-head limit. After every refusal
//! the server keeps serving.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, read_to_close, read_until, within};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

#[tokio::test]
async fn bad_subscribes_are_refused_with_a_json_error() {
    let s = TestServer::start().await;
    // (path, status)
    let cases = [
        ("/sub/a?transport=xyz", 400),
        ("/sub/a?transport=websocket", 400),
        ("/sub/a?transport=jsonp", 400),
        ("/sub/a?transport=jsonp&callback=", 400),
        ("/sub/a?transport=jsonp&callback=alert(1)", 400),
        ("/sub/a?transport=jsonp&callback=1f", 400),
        ("/sub/a?transport=jsonp&callback=a%3Bb", 400),
        ("/sub/a?transport=iframe", 400),
        ("/sub/a?transport=iframe&callback=%3Cscript%3E", 400),
        (
            "/sub/a?transport=iframe&callback=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            400,
        ),
        ("/sub/a%20b?transport=sse", 400),
        ("/sub/a//b?transport=stream", 400),
        ("/sub/a/*/b", 400),
        ("/sub/a/***", 400),
        ("/sub", 400),
        ("/sub/", 400),
        ("/sub/meta/connect?transport=sse", 400),
        ("/sub/service/x", 400),
        ("/nope", 404),
    ];
    for (path, status) in cases {
        s.get(path).await.expect_error(status);
    }
    s.post("/sub/a", "text/plain", "x").await.expect_error(405);
    s.post("/healthz", "text/plain", "").await.expect_error(405);
    s.assert_still_serving().await;
    let refused = i64::try_from(cases.len()).unwrap() + 2;
    assert_eq!(s.metric("halley_bad_requests_total").await, refused);
    // Refused subscribes leave nothing subscribed behind.
    assert_eq!(s.metric("halley_subscriptions").await, 0);
}

/// `/pub` and `/sub` are matched as string prefixes rather than path segments, so a path that
/// merely starts with them is routed there and refused as a bad channel instead of not found.
#[tokio::test]
async fn regression_pub_sub_prefix_matches_without_segment_boundary() {
    let s = TestServer::start().await;
    s.get("/subscribe/a").await.expect_error(404);
    s.post("/publish/a", "text/plain", "x")
        .await
        .expect_error(404);
    s.post("/pubx", "text/plain", "x").await.expect_error(404);
}

#[tokio::test]
async fn longest_valid_callback_is_accepted() {
    let s = TestServer::start().await;
    let name = format!("a{}", "$_.9".repeat(15))
        .chars()
        .take(64)
        .collect::<String>();
    let reply = s
        .get(&format!("/sub/a?transport=jsonp&callback={name}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.starts_with(&format!("/**/{name}(")),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_off() {
    let s = TestServer::with(|_, engine| engine.queue_capacity = 8).await;
    // A small receive buffer keeps the kernel from absorbing megabytes before the queue fills.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut slow = within("connect", socket.connect(s.addr)).await.unwrap();
    slow.write_all(b"GET /sub/slow?transport=stream&format=json HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    s.wait_subscribers("/slow", 1).await;

    let payload = "x".repeat(4096);
    let mut cut_off_at = None;
    for i in 0..4000 {
        let reply = s.post("/pub/slow", "text/plain", payload.clone()).await;
        let subscribers = reply.json()["subscribers"].as_u64().unwrap();
        if subscribers == 0 {
            cut_off_at = Some(i);
            break;
        }
    }
    let cut_off_at = cut_off_at.expect("the subscriber was never cut off");
    assert!(cut_off_at >= 8, "cut off after only {cut_off_at} messages");
    assert_eq!(s.metric("halley_subscribers_lagged_total").await, 1);
    assert!(s.metric("halley_messages_dropped_total").await > 0);
    assert_eq!(s.subscribers("/slow").await, 0);
    // Publishing is unaffected.
    let reply = s.post("/pub/slow", "text/plain", payload).await;
    assert_eq!(reply.json()["subscribers"], 0);

    // When the client reads again, it finds the stream ended with a `lagged` event.
    let tail = read_until(&mut slow, b"0\r\n\r\n").await;
    let tail = String::from_utf8_lossy(&tail);
    let lagged = tail
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in the tail"));
    let lagged: Value = serde_json::from_str(lagged).unwrap();
    assert_eq!(lagged["event"], "lagged", "{lagged}");
    s.assert_still_serving().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let s = TestServer::with(|http, _| http.header_timeout = Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut slow = s.raw_request("GET /sub/a HTTP/1.1\r\n").await;
    let mut idle = s.raw().await;
    // Meanwhile the server serves others.
    s.assert_still_serving().await;
    for stream in [&mut slow, &mut idle] {
        let got = read_to_close(stream).await;
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    s.assert_still_serving().await;
}

#[tokio::test]
async fn a_keep_alive_client_that_stalls_mid_headers_is_disconnected() {
    let s = TestServer::with(|http, _| http.header_timeout = Duration::from_millis(300)).await;
    let mut stream = s
        .raw_request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    read_until(&mut stream, b"{\"status\":\"ok\"}").await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut stream).await;
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    s.assert_still_serving().await;
}

#[tokio::test]
async fn connections_over_the_cap_get_503() {
    let s = TestServer::with(|http, _| {
        http.max_connections = 2;
        http.heartbeat_interval = Duration::from_millis(50);
    })
    .await;
    let first = s.stream("/sub/cap?transport=sse").await;
    let second = s.stream("/sub/cap?transport=sse").await;
    let mut third = s.raw().await;
    let got = String::from_utf8(read_to_close(&mut third).await).unwrap();
    assert!(got.starts_with("HTTP/1.1 503"), "{got:?}");
    let body = got.split_once("\r\n\r\n").unwrap().1;
    let error: Value = serde_json::from_str(body).unwrap();
    assert!(error["error"].is_string(), "{body}");

    // Once a subscriber leaves, its slot is free again.
    drop((first, second));
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..300 {
        tick.tick().await;
        let mut probe = s
            .raw_request("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let got = read_to_close(&mut probe).await;
        if got.starts_with(b"HTTP/1.1 200") {
            assert!(s.metric("halley_connections_rejected_total").await >= 1);
            return;
        }
    }
    panic!("connection slots were never freed");
}

/// A request head of `size` bytes (request line, padding header, blank line).
fn head_of(size: usize, path: &str) -> String {
    let start = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Pad: ");
    let end = "\r\n\r\n";
    format!("{start}{}{end}", "p".repeat(size - start.len() - end.len()))
}

#[tokio::test]
async fn request_heads_over_16_kib_get_431() {
    let s = TestServer::start().await;
    let max = halley_http::MAX_HEAD;
    // (head size, status)
    for (size, status) in [
        (1000, "200"),
        (max - 100, "200"),
        (max + 1, "431"),
        (4 * max, "431"),
    ] {
        let mut stream = s.raw().await;
        // The server may answer and close before reading everything: ignore write errors.
        let _ = stream.write_all(head_of(size, "/healthz").as_bytes()).await;
        let got = String::from_utf8_lossy(&read_until(&mut stream, b"\r\n").await).into_owned();
        assert!(
            got.starts_with(&format!("HTTP/1.1 {status}")),
            "{size} bytes: {got:?}"
        );
    }
    s.assert_still_serving().await;
}

/// Only the first request head on a connection goes through the server's own 16 KiB check;
/// later heads on a keep-alive connection are read by hyper with its default limit (~400 KiB).
#[tokio::test]
async fn regression_second_keep_alive_head_skips_the_16_kib_limit() {
    let s = TestServer::start().await;
    let mut stream = s
        .raw_request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    read_until(&mut stream, b"{\"status\":\"ok\"}").await;
    let _ = stream
        .write_all(head_of(4 * halley_http::MAX_HEAD, "/healthz").as_bytes())
        .await;
    let got = read_until(&mut stream, b"\r\n").await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 431"), "{got:?}");
}

/// Requests that are not HTTP at all are refused by the HTTP parser itself (so without the
/// JSON error body of application-level refusals).
#[tokio::test]
async fn malformed_request_lines_get_400_and_do_not_stop_the_server() {
    let s = TestServer::start().await;
    for head in [
        "POST /pub/a b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "GARBAGE\r\n\r\n",
        "GET /healthz HTTP/9.9\r\n\r\n",
        "GET /sub/a b?transport=sse HTTP/1.1\r\n\r\n",
    ] {
        let mut stream = s.raw_request(head).await;
        let got = String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned();
        assert!(got.starts_with("HTTP/1.1 400"), "{head:?}: {got:?}");
    }
    s.assert_still_serving().await;
}

#[tokio::test]
async fn a_websocket_that_stops_reading_is_cut_off() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as Frame;

    let s = TestServer::with(|_, engine| engine.queue_capacity = 8).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let stream = within("connect", socket.connect(s.addr)).await.unwrap();
    let url = format!("ws://{}/sub/slow", s.addr);
    let (mut ws, _) = within("handshake", tokio_tungstenite::client_async(url, stream))
        .await
        .unwrap();
    let payload = "x".repeat(4096);
    let mut cut_off = false;
    for _ in 0..4000 {
        let reply = s.post("/pub/slow", "text/plain", payload.clone()).await;
        if reply.json()["subscribers"] == 0 {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "the WebSocket subscriber was never cut off");
    assert_eq!(s.metric("halley_subscribers_lagged_total").await, 1);
    assert!(s.metric("halley_messages_dropped_total").await > 0);

    // Reading again, the client finds a `lagged` notice and a Close (1013: try again later).
    let mut last_text = None;
    loop {
        match within("websocket frame", ws.next()).await {
            Some(Ok(Frame::Text(text))) => last_text = Some(text.to_string()),
            Some(Ok(Frame::Close(close))) => {
                let close = close.expect("a close code");
                assert_eq!(u16::from(close.code), 1013, "{close:?}");
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("the WebSocket ended without a Close frame: {other:?}"),
        }
    }
    let notice: Value = serde_json::from_str(&last_text.unwrap()).unwrap();
    assert_eq!(notice["event"], "lagged", "{notice}");
    s.assert_still_serving().await;
}

#[tokio::test]
async fn websocket_frames_over_the_body_limit_or_binary_end_the_connection() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Frame;

    let s = TestServer::with(|http, _| http.body_limit = 64).await;
    // (frame, close code if the server sends one)
    let cases = [
        (Frame::text("x".repeat(65)), None),
        (Frame::binary(b"bin".to_vec()), Some(1003)),
    ];
    for (frame, code) in cases {
        let mut ws = s.ws("/sub/big").await;
        within("send", ws.send(frame.clone())).await.unwrap();
        match within("websocket end", ws.next()).await {
            Some(Ok(Frame::Close(close))) => {
                if let Some(code) = code {
                    assert_eq!(u16::from(close.unwrap().code), code, "{frame:?}");
                }
            }
            None | Some(Err(_)) => assert!(code.is_none(), "{frame:?}: no Close frame"),
            Some(Ok(other)) => panic!("{frame:?}: expected the end, got {other:?}"),
        }
    }
    assert_eq!(s.metric("halley_messages_published_total").await, 0);
    s.assert_still_serving().await;
}
