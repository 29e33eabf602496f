//! HTTP/1.1 as clients and RFC 9110/9112 expect it: `HEAD` wherever a safe `GET` is (streams
//! answer the head and end), `Allow` on every 405, `Host` required in HTTP/1.1, one response
//! version for HTTP/1.0 clients on every endpoint, HTTP/2 prior knowledge answered in HTTP/2,
//! and a JSON error with `connection: close` for every malformed head.
//!
//! Malformed heads go over raw TCP (no HTTP client sends them); curl checks what users run.

mod common;

use common::{TestServer, WAIT, read_to_close, read_until, within};
use halley_http::routes::{self, ROUTES};
use http_body_util::Full;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A whole response read off a raw connection: status line, headers, body.
struct Raw {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn parse(bytes: &[u8]) -> Raw {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(bytes)));
        let head = std::str::from_utf8(&bytes[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap().to_string();
        let headers = lines
            .map(|l| {
                let (name, value) = l.split_once(':').unwrap();
                (name.to_ascii_lowercase(), value.trim().to_string())
            })
            .collect();
        Raw {
            status_line,
            headers,
            body: bytes[end + 4..].to_vec(),
        }
    }

    fn status(&self) -> u16 {
        self.status_line.split(' ').nth(1).unwrap().parse().unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` on a fresh connection and reads until the server closes it.
async fn exchange(s: &TestServer, head: &[u8]) -> Raw {
    let mut stream = s.raw().await;
    within("raw write", stream.write_all(head)).await.unwrap();
    Raw::parse(&read_to_close(&mut stream).await)
}

/// `head` is refused with `status`, a JSON error and `connection: close` (the connection is
/// closed: [`exchange`] reads to its end), and the server goes on serving.
async fn refused(head: &[u8], status: u16) -> String {
    let s = TestServer::start().await;
    let raw = exchange(&s, head).await;
    let what = String::from_utf8_lossy(&head[..head.len().min(200)]).into_owned();
    assert_eq!(raw.status(), status, "{what}: {}", raw.status_line);
    assert_eq!(
        raw.header("content-type"),
        Some("application/json"),
        "{what}"
    );
    assert_eq!(raw.header("connection"), Some("close"), "{what}");
    let body: Value = serde_json::from_slice(&raw.body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {:?}", raw.body));
    let error = body["error"].as_str().expect("an error text").to_string();
    s.assert_still_serving().await;
    error
}

/// A malformed head after a well-formed request on the same keep-alive connection is refused
/// the same way where the lean path serves the connection (held requests: here a Bayeux
/// long-polling handshake, answered at once).
#[tokio::test]
async fn a_malformed_later_head_gets_400_json() {
    let s = TestServer::start().await;
    let handshake = r#"[{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"]}]"#;
    let first = format!(
        "POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{handshake}",
        handshake.len()
    );
    for second in [
        "GET /healthz HTTP/1.1\r\nHost: x\r\nBroken\r\n\r\n",
        "POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ] {
        let first = first.as_str();
        // One after the other: a request sent before the answer to the one before it
        // (pipelining) is left to hyper.
        let mut stream = s.raw_request(first).await;
        read_until(&mut stream, b"}]").await;
        within("raw write", stream.write_all(second.as_bytes()))
            .await
            .unwrap();
        let refused = Raw::parse(&read_to_close(&mut stream).await);
        assert_eq!(refused.status(), 400, "{second:?}");
        assert_eq!(refused.header("connection"), Some("close"), "{second:?}");
        let body: Value = serde_json::from_slice(&refused.body).unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn a_bad_request_line_gets_400_json() {
    refused(b"GET\r\n\r\n", 400).await;
    refused(b"GET /healthz HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400).await;
    let error = refused(b"GET /healthz HTTP/3.0\r\nHost: x\r\n\r\n", 400).await;
    assert!(error.contains("HTTP/1.1"), "{error}");
}

#[tokio::test]
async fn a_header_without_colon_gets_400_json() {
    refused(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn a_nul_in_the_head_gets_400_json() {
    refused(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
        400,
    )
    .await;
    refused(b"GET /heal\0thz HTTP/1.1\r\nHost: x\r\n\r\n", 400).await;
}

#[tokio::test]
async fn an_obs_fold_gets_400_json() {
    refused(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  folded\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn a_bad_content_length_gets_400_json() {
    for length in ["x", "-1", "+1", "1 2", "", "99999999999999999999999"] {
        let head = format!("POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n");
        let error = refused(head.as_bytes(), 400).await;
        assert!(error.contains("Content-Length"), "{length:?}: {error}");
    }
}

#[tokio::test]
async fn a_duplicate_content_length_gets_400_json() {
    let two =
        b"POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
    refused(two, 400).await;
    refused(
        b"POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab",
        400,
    )
    .await;
    // The same length twice says one thing (RFC 9110 §8.6); it is served.
    let s = TestServer::start().await;
    let same = b"POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\nConnection: close\r\n\r\na";
    let served = exchange(&s, same).await;
    assert_eq!(served.status(), 200);
    assert!(served.header("date").is_some(), "every answer is dated");
}

#[tokio::test]
async fn transfer_encoding_gzip_gets_400_json() {
    let gzip = b"POST /pub/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n";
    refused(gzip, 400).await;
    // chunked last, but a coding Halley does not decode before it: 501.
    let both =
        b"POST /pub/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
    refused(both, 501).await;
    // Both framings at once is how one request smuggles another past a proxy.
    let smuggle = b"POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    refused(smuggle, 400).await;
    let http10 = b"POST /pub/a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    refused(http10, 400).await;
}

#[tokio::test]
async fn too_many_headers_get_431_json() {
    let many: String = (0..=halley_http::MAX_HEADERS)
        .map(|i| format!("X-{i}: y\r\n"))
        .collect();
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    refused(head.as_bytes(), 431).await;
}

#[tokio::test]
async fn a_head_too_large_gets_431_json() {
    let big = "a".repeat(halley_http::MAX_HEAD);
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    refused(head.as_bytes(), 431).await;
}

#[tokio::test]
async fn an_http11_request_without_host_gets_400_json() {
    let error = refused(b"GET /healthz HTTP/1.1\r\n\r\n", 400).await;
    assert!(error.contains("Host"), "{error}");
    refused(b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400).await;
    // Also on a later request of a keep-alive connection (parsed by hyper, checked by the
    // router): refused, and the connection closed.
    let s = TestServer::start().await;
    let mut stream = s.raw().await;
    let two = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n";
    within("raw write", stream.write_all(two)).await.unwrap();
    let bytes = read_to_close(&mut stream).await;
    let text = String::from_utf8_lossy(&bytes);
    let second = text.match_indices("HTTP/1.1 ").nth(1).unwrap().0;
    let second = Raw::parse(&bytes[second..]);
    assert_eq!(second.status(), 400, "{text}");
    assert_eq!(second.header("connection"), Some("close"), "{text}");
    let body: Value = serde_json::from_slice(&second.body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("Host"), "{body}");
    // HTTP/1.0 has no Host requirement.
    let raw = exchange(&s, b"GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(raw.status(), 200);
}

#[tokio::test]
async fn http10_clients_get_http10_from_every_endpoint() {
    let s = TestServer::start().await;
    let handshake = r#"[{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"]}]"#;
    // (what, request): hyper-served, lean-path (streams, long-poll, Bayeux, rupy) and refused.
    let cases = [
        ("ops", "GET /healthz HTTP/1.0\r\n\r\n".to_string()),
        ("head", "HEAD /metrics HTTP/1.0\r\n\r\n".to_string()),
        ("not found", "GET /nothing HTTP/1.0\r\n\r\n".to_string()),
        (
            "publish",
            "POST /pub/v HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi".to_string(),
        ),
        ("long-poll", "GET /sub/v HTTP/1.0\r\n\r\n".to_string()),
        (
            "stream",
            "GET /sub/v?transport=stream HTTP/1.0\r\n\r\n".to_string(),
        ),
        (
            "sse",
            "GET /sub/v HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n".to_string(),
        ),
        (
            "rupy pull",
            "GET /pull?name=n&channel=/v HTTP/1.0\r\n\r\n".to_string(),
        ),
        (
            "bayeux",
            format!(
                "POST /cometd HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{handshake}",
                handshake.len()
            ),
        ),
        (
            "refused",
            "POST /pub/v HTTP/1.0\r\nContent-Length: x\r\n\r\n".to_string(),
        ),
    ];
    for (what, request) in cases {
        let mut stream = s.raw_request(&request).await;
        let got = read_until(&mut stream, b"\r\n").await;
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.0 "), "{what}: {got:?}");
    }
}

/// Every method a route does not take gets 405 with the `Allow` the route table gives, and
/// `OPTIONS` gets the same list.
#[tokio::test]
async fn every_405_carries_allow_from_the_route_table() {
    let s = TestServer::start().await;
    for route in ROUTES {
        let path = route.example.split('?').next().unwrap();
        let allow = routes::allow(path, "/cometd").unwrap().header();
        assert!(allow.ends_with("OPTIONS"), "{allow}");
        let request = s.request("DELETE", route.example).body(Full::default());
        let reply = s.send(request.unwrap()).await;
        reply.expect_error(405);
        assert_eq!(reply.header("allow"), Some(allow.as_str()), "{route:?}");
    }
    // OPTIONS asks the same question of any path.
    for route in ROUTES {
        let path = route.example.split('?').next().unwrap();
        let allow = routes::allow(path, "/cometd").unwrap().header();
        let request = s.request("OPTIONS", route.example).body(Full::default());
        let reply = s.send(request.unwrap()).await;
        assert_eq!(reply.status, 204, "{route:?}");
        assert_eq!(reply.header("allow"), Some(allow.as_str()), "{route:?}");
    }
    // A 405 decided by the handler (a JSONP publish without its callback) says the same.
    let reply = s.get("/pub/a").await;
    reply.expect_error(405);
    assert_eq!(reply.header("allow"), Some("GET, POST, PUT, OPTIONS"));
    let reply = s.get("/api/inbox").await;
    reply.expect_error(405);
    assert_eq!(reply.header("allow"), Some("GET, HEAD, POST, OPTIONS"));
}

/// `HEAD` on every endpoint with a safe `GET`: the head, no body, and for streams and held
/// polls an immediate end.
#[tokio::test]
async fn head_works_wherever_a_safe_get_does() {
    let s = TestServer::start().await;
    // (path, content type the GET would have)
    let cases = [
        ("/healthz", "application/json"),
        ("/metrics", "text/plain"),
        ("/api/history?channel=/h", "application/json"),
        ("/api/presence?channel=/h", "application/json"),
        ("/api/channels", "application/json"),
        ("/halley.js", "text/javascript"),
        ("/sub/h", "application/json"),
        ("/sub/h?transport=sse", "text/event-stream"),
        ("/sub/h?transport=stream", "text/plain"),
        (
            "/sub/h?transport=stream&format=json",
            "application/x-ndjson",
        ),
        ("/sub/h?transport=multipart", "multipart/x-mixed-replace"),
        ("/sub/h?transport=iframe&callback=f", "text/html"),
        (
            "/sub/h?transport=jsonp&callback=f",
            "application/javascript",
        ),
        ("/pull?name=n&channel=/h", "text/plain"),
    ];
    for (path, content_type) in cases {
        let head = format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let raw = exchange(&s, head.as_bytes()).await;
        assert_eq!(raw.status(), 200, "{path}: {}", raw.status_line);
        let got = raw.header("content-type").unwrap_or("");
        assert!(got.starts_with(content_type), "{path}: {got}");
        assert!(raw.body.is_empty(), "{path}: {:?}", raw.body);
        // A whole body's length is the GET's; a stream's is not claimed.
        let length = raw.header("content-length");
        if path.starts_with("/sub") || path.starts_with("/pull") {
            assert_eq!(length, None, "{path}");
        } else {
            assert_ne!(length, Some("0"), "{path}");
        }
    }
    // The checks of the GET still apply.
    let raw = exchange(
        &s,
        b"HEAD /sub/a?transport=jsonp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status(), 400);
    let raw = exchange(
        &s,
        b"HEAD /sub/a/* HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status(), 200, "a pattern subscribes");
    let raw = exchange(
        &s,
        b"HEAD /sub/a//b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status(), 400);
}

/// A `HEAD` on a stream must not subscribe (no presence, no webhooks, no held slot): the
/// connection stays open after the answer and the channel has no subscriber.
#[tokio::test]
async fn head_on_a_stream_answers_without_subscribing() {
    let s = TestServer::start().await;
    let mut stream = s
        .raw_request("HEAD /sub/quiet?transport=sse HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let head = read_until(&mut stream, b"\r\n\r\n").await;
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    assert_eq!(s.subscribers("/quiet").await, 0);
    // The same keep-alive connection serves the next request: the HEAD ended.
    within(
        "raw write",
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await
    .unwrap();
    read_until(&mut stream, b"{\"status\":\"ok\"}").await;
}

/// `HEAD` never runs a `GET` that changes something: 405, with an `Allow` without `HEAD`.
#[tokio::test]
async fn head_on_a_get_that_acts_is_405() {
    let s = TestServer::start().await;
    for path in [
        "/pub/a?data=1&callback=f",
        "/cometd?message=[]&jsonp=f",
        "/push?name=n&message=m",
        "/inbox/0123456789abcdef0123456789abcdef?message=m&callback=f",
    ] {
        let reply = s
            .send(s.request("HEAD", path).body(Full::default()).unwrap())
            .await;
        assert_eq!(reply.status, 405, "{path}");
        let allow = reply.header("allow").unwrap();
        assert!(
            allow.contains("GET") && !allow.contains("HEAD"),
            "{path}: {allow}"
        );
    }
    assert_eq!(s.metric("halley_messages_published_total").await, 0);
}

/// The HTTP/2 connection preface (what `curl --http2-prior-knowledge` and h2load send first)
/// is answered in HTTP/2: the server's preface, a SETTINGS frame announcing
/// `MAX_CONCURRENT_STREAMS` (h2c is served; tests/tls.rs drives it with curl).
#[tokio::test]
async fn http2_prior_knowledge_gets_the_servers_settings() {
    let s = TestServer::start().await;
    let mut stream = s.raw().await;
    // The preface, then an empty SETTINGS frame, as a client sends them.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    within("raw write", stream.write_all(&hello)).await.unwrap();
    // Frames: 3 bytes length, type, flags, 4 bytes stream id, payload.
    let mut head = [0u8; 9];
    within("server preface", stream.read_exact(&mut head))
        .await
        .unwrap();
    assert_eq!(head[3], 0x4, "SETTINGS first: {head:?}");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    within("settings", stream.read_exact(&mut payload))
        .await
        .unwrap();
    // Each setting: a 16-bit identifier and a 32-bit value; 0x3 is MAX_CONCURRENT_STREAMS.
    let streams = payload
        .chunks(6)
        .find(|c| c[..2] == [0, 3])
        .map(|c| u32::from_be_bytes(c[2..6].try_into().unwrap()));
    assert_eq!(streams, Some(halley_http::MAX_H2_STREAMS));
    drop(stream);
    s.assert_still_serving().await;
}

/// Runs curl (bounded by `--max-time`); `None` when it is not installed.
async fn curl(args: &[&str]) -> Option<std::process::Output> {
    let mut command = std::process::Command::new("curl");
    command
        .args(["--max-time", &WAIT.as_secs().to_string()])
        .args(args);
    let run = tokio::task::spawn_blocking(move || command.output());
    within("curl", run).await.unwrap().ok()
}

/// `curl -I` (an uptime checker's request) on a stream returns at once.
#[tokio::test]
async fn curl_head_on_a_stream_returns() {
    let s = TestServer::start().await;
    let url = format!("http://{}/sub/c?transport=sse", s.addr);
    let Some(out) = curl(&["-sS", "-I", &url]).await else {
        eprintln!("curl is not installed; skipped");
        return;
    };
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    assert!(said.contains("text/event-stream"), "{said}");
}

/// An HTTP/1.1 event stream on the lean path is delimited by its connection's close (RFC 9112
/// §6.3, the last rule): no `Transfer-Encoding`, `connection: close`, events on the wire as
/// they are with no chunk framing; a drain ends it with its goodbye and then the close. The
/// chunked stream (`transport=stream`) stays chunked.
#[tokio::test]
async fn an_event_stream_is_delimited_by_the_close_and_a_chunked_stream_is_chunked() {
    let s = TestServer::start().await;
    let mut sse = s
        .raw_request("GET /sub/frame/sse HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\n")
        .await;
    let head = Raw::parse(&read_until(&mut sse, b"\r\n\r\n").await);
    assert_eq!(head.status(), 200, "{}", head.status_line);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("transfer-encoding"), None);
    assert_eq!(head.header("content-length"), None);
    assert_eq!(head.header("connection"), Some("close"));
    let mut ndjson = s
        .raw_request("GET /sub/frame/sse?transport=stream&format=json HTTP/1.1\r\nHost: h\r\n\r\n")
        .await;
    let chunked = Raw::parse(&read_until(&mut ndjson, b"\r\n\r\n").await);
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
    s.wait_subscribers("/frame/sse", 2).await;

    let id = s.publish("/frame/sse", "unframed").await;
    let event = format!("id: {id}\ndata: unframed\n\n");
    let body = read_until(&mut sse, event.as_bytes()).await;
    let body = String::from_utf8_lossy(&body);
    // Everything before the event is SSE too (the retry advice, comments): no chunk-size line.
    for line in body.lines().filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with("retry:")
                || line.starts_with(':')
                || line.starts_with("id:")
                || line.starts_with("data:")
                || line.starts_with("event:"),
            "not an SSE line: {line:?} in {body:?}"
        );
    }
    let line = read_until(&mut ndjson, b"unframed").await;
    let line = String::from_utf8_lossy(&line);
    assert!(
        line.split("\r\n")
            .any(|l| !l.is_empty() && u64::from_str_radix(l, 16).is_ok()),
        "no chunk-size line before the NDJSON object: {line:?}"
    );

    s.shutdown.cancel();
    let rest = read_to_close(&mut sse).await;
    let rest = String::from_utf8_lossy(&rest);
    // The goodbye (reconnect advice), then the close: no last chunk.
    assert!(
        rest.contains("retry: 2000\n") && rest.contains("reconnect"),
        "{rest:?}"
    );
    assert!(!rest.contains("0\r\n\r\n"), "{rest:?}");
}
