//! Graceful drain: cancelling the shutdown token ends every held response with reconnect
//! advice, closes WebSockets with 1001, stops accepting, and `run()` returns promptly.

mod common;

use std::time::Duration;

use common::wire::{STREAMING, Transport};
use common::{Open, TestServer, read_to_close, read_until, within};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Frame;

/// Long enough that nothing ends by itself during the test: every ending is the drain's.
async fn server() -> TestServer {
    TestServer::with(|http, _| {
        http.hold_timeout = Duration::from_secs(30);
        http.drain_timeout = Duration::from_secs(4);
    })
    .await
}

/// Waits for `run()` to return; it must do so well before the drain timeout, since every
/// connection in these tests ends as soon as it is told to.
async fn assert_run_returns_promptly(s: &mut TestServer) {
    let done = s.done.take().unwrap();
    tokio::time::timeout(Duration::from_secs(2), done)
        .await
        .expect("run() did not return before the drain timeout")
        .unwrap();
    let refused = TcpStream::connect(s.addr).await;
    assert!(
        refused.is_err(),
        "the listener is still accepting after run() returned"
    );
}

/// Checks the farewell of a streaming `transport`: a `reconnect` control event with the retry
/// advice (where the framing has control events), then the end of the body.
async fn check_farewell(transport: Transport, open: &mut Open) {
    if transport.has_control() {
        let control = transport.read_control(open).await;
        assert_eq!(control["event"], "reconnect", "{transport:?}: {control}");
        assert_eq!(control["retry"], 2000, "{transport:?}: {control}");
        if matches!(
            transport,
            Transport::Sse | Transport::SseAccept | Transport::SseJson
        ) {
            assert_eq!(control["_retry_line"], "2000", "{transport:?}: {control}");
        }
    }
    let rest = open.rest().await;
    let expected = if transport == Transport::Multipart {
        "--halley--\r\n"
    } else {
        ""
    };
    assert_eq!(rest, expected, "{transport:?}: after the farewell");
}

#[tokio::test]
async fn shutdown_ends_every_held_response_with_reconnect_advice() {
    let mut s = server().await;
    let mut streams = Vec::new();
    for (i, transport) in STREAMING.into_iter().enumerate() {
        let mut open = s
            .stream_with(&transport.url(&format!("/d/{i}"), &[]), transport.headers())
            .await;
        open.expect(&transport.preamble()).await;
        streams.push((transport, open));
    }
    let mut ws = s.ws("/sub/d/ws").await;
    let mut headless = s
        .raw_request("GET /pull?name=a&channel=/d/pull HTTP/1.1\r\nHead: less\r\n\r\n")
        .await;
    s.wait_subscribers("/d/pull", 1).await;

    let cancel = async {
        s.wait_subscribers("/d/lp", 1).await;
        s.wait_subscribers("/d/jsonp", 1).await;
        s.shutdown.cancel();
    };
    let (poll, jsonp, ()) = tokio::join!(
        s.get("/sub/d/lp"),
        s.get("/sub/d/jsonp?transport=jsonp&callback=f"),
        cancel
    );

    assert_eq!(poll.status, 200);
    assert_eq!(poll.body, "[]");
    assert_eq!(poll.header("retry-after"), Some("2"));
    assert!(poll.header("x-halley-last-id").is_some());
    assert_eq!(jsonp.status, 200);
    assert!(jsonp.body.starts_with("/**/f([],"), "{}", jsonp.body);
    assert_eq!(jsonp.header("retry-after"), Some("2"));

    for (transport, open) in &mut streams {
        check_farewell(*transport, open).await;
    }
    match common::ws_next(&mut ws).await {
        Frame::Close(Some(close)) => assert_eq!(u16::from(close.code), 1001, "{close:?}"),
        other => panic!("expected a Close frame, got {other:?}"),
    }
    // rupy's minimal head, then the end of its chunked body.
    assert_eq!(
        String::from_utf8(read_to_close(&mut headless).await).unwrap(),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n0\r\n\r\n"
    );
    assert_run_returns_promptly(&mut s).await;
}

#[tokio::test]
async fn shutdown_with_nothing_open_returns_at_once() {
    let mut s = server().await;
    s.assert_still_serving().await;
    s.shutdown.cancel();
    assert_run_returns_promptly(&mut s).await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_by_the_drain() {
    let mut s = server().await;
    // An idle connection that hyper serves (after a publish)...
    let mut hyper_idle = s
        .raw_request("POST /pub/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        .await;
    read_until(&mut hyper_idle, b"}").await;
    s.shutdown.cancel();
    assert!(
        within("idle close", read_to_close(&mut hyper_idle))
            .await
            .is_empty()
    );
    assert_run_returns_promptly(&mut s).await;
}

/// Subscriber requests are served on the server's own lean HTTP path; between requests a
/// keep-alive connection waits for the next head there, without watching the shutdown token.
#[tokio::test]
async fn regression_idle_lean_keep_alive_connection_holds_the_drain() {
    let mut s = TestServer::with(|http, _| {
        http.hold_timeout = Duration::from_millis(100);
        http.drain_timeout = Duration::from_secs(4);
    })
    .await;
    // A long-poll that has been answered, on a connection kept alive for the next poll.
    let mut lean_idle = s
        .raw_request("GET /sub/k HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    read_until(&mut lean_idle, b"[]").await;
    s.shutdown.cancel();
    assert_run_returns_promptly(&mut s).await;
}

/// Same root cause as above, before the first request: `read_head()` ignores the shutdown.
#[tokio::test]
async fn regression_connection_without_a_head_holds_the_drain() {
    let mut s = TestServer::with(|http, _| {
        http.drain_timeout = Duration::from_secs(4);
        http.header_timeout = Duration::from_secs(10);
    })
    .await;
    let _silent = s.raw().await;
    s.assert_still_serving().await;
    s.shutdown.cancel();
    assert_run_returns_promptly(&mut s).await;
}
