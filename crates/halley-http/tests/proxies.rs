//! Streams through the reverse proxies the README gives recipes for, run from the system:
//! nginx (HTTP/1.0 to Halley, as it proxies by default, and HTTP/1.1 as the recipe says) and
//! haproxy (the recipe). An SSE stream (delimited by its connection's close on the lean path)
//! and a chunked NDJSON stream each pass every event, in order, and each proxy ends its client's
//! stream when Halley's drain ends it (the goodbye first).
//!
//! Needs nginx and haproxy (`scripts/test` installs both); without one its cases say so and
//! pass.

mod common;

use common::proxy::{Proxy, haproxy_installed};
use common::{TestServer, read_until};

const EVENTS: usize = 5;

/// Opens `path` through the proxy, publishes `EVENTS` messages to `channel` and reads them all
/// (in order); returns the connection.
async fn through(
    s: &TestServer,
    proxy: &Proxy,
    path: &str,
    channel: &str,
    accept: &str,
    subscribers: u64,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: proxied\r\nAccept: {accept}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_until(&mut stream, b"\r\n\r\n").await;
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    s.wait_subscribers(channel, subscribers).await;
    let mut ids = Vec::new();
    for i in 0..EVENTS {
        ids.push(s.publish(channel, &format!("through {i}")).await);
    }
    let last = format!("through {}", EVENTS - 1);
    let got = read_until(&mut stream, last.as_bytes()).await;
    let got = String::from_utf8_lossy(&got).into_owned();
    let mut at = 0;
    for i in 0..EVENTS {
        let text = format!("through {i}");
        let found = got[at..]
            .find(&text)
            .unwrap_or_else(|| panic!("{path}: {text} missing or out of order in {got:?}"));
        at += found + text.len();
    }
    assert_eq!(got.matches("through ").count(), EVENTS, "{path}: {got:?}");
    stream
}

/// Both streams through one proxy (`prefix` picks nginx's location), then Halley drains: each
/// client gets the goodbye and then the end of its response.
async fn both_streams(s: &TestServer, proxy: &Proxy, prefix: &str, tag: &str) {
    let sse_channel = format!("/proxied/{tag}/sse");
    let mut sse = through(
        s,
        proxy,
        &format!("{prefix}sub{sse_channel}"),
        &sse_channel,
        "text/event-stream",
        1,
    )
    .await;
    let ndjson_channel = format!("/proxied/{tag}/ndjson");
    let mut ndjson = through(
        s,
        proxy,
        &format!("{prefix}sub{ndjson_channel}?transport=stream&format=json"),
        &ndjson_channel,
        "*/*",
        1,
    )
    .await;
    s.shutdown.cancel();
    for (what, stream) in [("sse", &mut sse), ("ndjson", &mut ndjson)] {
        let rest = String::from_utf8_lossy(&response_end(stream).await).into_owned();
        assert!(rest.contains("reconnect"), "{tag} {what}: {rest:?}");
    }
}

/// Reads until the proxy ends the response: its last chunk (a proxy that keeps its client's
/// connection re-chunks the stream), or the close (one that passes a close-delimited body on
/// as it is).
async fn response_end(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    common::within("the proxied response's end", async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.ends_with(b"\r\n0\r\n\r\n") {
                return got;
            }
        }
    })
    .await
}

/// nginx as it proxies by default (HTTP/1.0 to Halley) and as the README's recipe says
/// (HTTP/1.1), each in front of a server of its own (the drain ends it).
#[tokio::test]
async fn streams_pass_nginx_speaking_http10_and_http11_upstream() {
    for (prefix, tag) in [("/", "nginx10"), ("/http11/", "nginx11")] {
        let s = TestServer::start().await;
        let nginx = Proxy::nginx(s.addr).await;
        both_streams(&s, &nginx, prefix, tag).await;
        let log = nginx.error_log();
        assert!(!log.contains("upstream prematurely closed"), "{tag}: {log}");
    }
}

#[tokio::test]
async fn streams_pass_haproxy() {
    if !haproxy_installed() {
        eprintln!("haproxy is not installed; skipped");
        return;
    }
    let s = TestServer::start().await;
    let haproxy = Proxy::haproxy(s.addr).await;
    both_streams(&s, &haproxy, "/", "haproxy").await;
}
