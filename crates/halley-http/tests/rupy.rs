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
const MINIMAL_PULL_HEAD: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n";

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
    let (head, body) = got
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{got:?}"));
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

/// The host rupy's ActionScript client names (it connects wherever the test says).
const AS_HOST: &str = "talk.rupy.se";

/// What rupy's ActionScript `stream` client shows for one read of its pull socket: the read
/// split on CRLF, and every odd element (the data of a chunk that starts the read).
fn as_pull_data(message: &str) -> String {
    let array: Vec<&str> = message.split("\r\n").collect();
    let mut shown = String::new();
    let mut i = 1;
    while i < array.len() {
        shown.push_str(array[i]);
        i += 2;
    }
    shown
}

/// Reads one answer of a push under rupy's minimal head: the head, then `Content-Length`
/// bytes. Returns the head and the body.
async fn minimal_answer(push: &mut TcpStream) -> (String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = within("a push answer", push.read(&mut buf)).await.unwrap();
        assert!(
            n > 0,
            "push connection closed after {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap_or_else(|| panic!("no Content-Length in {head:?}"))
                .parse()
                .unwrap();
            if body.len() >= length {
                assert_eq!(body.len(), length, "more than one answer: {text:?}");
                return (head.to_owned(), body.to_owned());
            }
        }
    }
}

/// rupy's ActionScript `stream` class (the seed's Comet Stream page), replayed byte for byte
/// over raw sockets: its pull with `Head: less`, parsed as it parses (split on CRLF, odd
/// elements); its 120 pushes on one connection with no Content-Length, `Head: less` on the
/// first only, each sent when the previous answer has arrived; and its "avg. packet latency"
/// computed as it does (printed: a figure for the README, not a limit). One departure in
/// timing, none in bytes: the first push waits for the pull's head (which Halley sends once
/// the pull is subscribed), where the client sends it once the push socket connects, and
/// would lose message 1 to a server slower to subscribe.
#[tokio::test]
async fn actionscript_stream_client_replayed_byte_for_byte() {
    const LENGTH: u32 = 120;
    // No heartbeat in the run: the client would show it as an empty line.
    let s = TestServer::with(|http, _| http.heartbeat_interval = Duration::from_secs(600)).await;
    // pull_connect
    let mut pull = TcpStream::connect(s.addr).await.unwrap();
    let start = Instant::now();
    let request = format!("GET /pull?name=one HTTP/1.1\r\nHost: {AS_HOST}\r\nHead: less\r\n\r\n");
    pull.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = within("the pull's head", pull.read(&mut buf))
        .await
        .unwrap();
    let head = String::from_utf8(buf[..n].to_vec()).unwrap();
    assert_eq!(head, MINIMAL_PULL_HEAD);
    // What the client shows for that read: the framing header (index 1 of any head).
    let mut output = as_pull_data(&head);
    assert_eq!(output, "Transfer-Encoding: chunked");
    // The rest of the pull, read as the client reads it, until the last message shows.
    let last = format!("{LENGTH}\n");
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while !output.ends_with(&last) {
            let n = within("the pulled messages", pull.read(&mut buf))
                .await
                .unwrap();
            assert!(n > 0, "the pull closed; shown so far: {output:?}");
            output.push_str(&as_pull_data(&String::from_utf8_lossy(&buf[..n])));
        }
        output
    });
    // push_connect, then tick / push_data until `id` passes `length`.
    let mut push = TcpStream::connect(s.addr).await.unwrap();
    let mut id = 1;
    let mut first = true;
    loop {
        // tick
        let mut bytes = String::new();
        bytes.push_str("POST /push HTTP/1.1\r\n");
        bytes.push_str(&format!("Host: {AS_HOST}\r\n"));
        if first {
            bytes.push_str("Head: less\r\n");
            first = false;
        }
        bytes.push_str("\r\n");
        bytes.push_str(&format!("name=two&message={id}"));
        id += 1;
        push.write_all(bytes.as_bytes()).await.unwrap();
        // push_data: the answer, rupy's minimal head on every push of the connection.
        let (head, body) = minimal_answer(&mut push).await;
        assert_eq!(
            head,
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/json",
                body.len()
            )
        );
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["channel"], "/talk", "{body}");
        if id > LENGTH {
            break;
        }
    }
    let elapsed = start.elapsed();
    let latency = elapsed.as_millis() / u128::from(LENGTH);
    println!("avg. packet latency {latency} ms.");
    // The client's whole milliseconds say 0 on loopback; the same figure finer, for the README.
    println!(
        "(that is {} µs per push and pulled message)",
        elapsed.as_micros() / u128::from(LENGTH)
    );
    let shown = reader.await.unwrap();
    let expected: String = std::iter::once("Transfer-Encoding: chunked".to_owned())
        .chain((1..=LENGTH).map(|i| format!("{i}\n")))
        .collect();
    assert_eq!(shown, expected);
    assert_eq!(s.metric("halley_messages_published_total").await, 120);
}

/// A push with no Content-Length and no `Head: less`: the form that follows the head is read,
/// each answer has the whole head, and the connection serves the next push (and then anything
/// else).
#[tokio::test]
async fn push_without_content_length_reads_the_form_that_follows() {
    let s = TestServer::start().await;
    let mut bob = s.stream("/pull?name=bob").await;
    let mut raw = s.raw().await;
    for (i, form) in ["name=a&message=one", "name=a&message=two+%26+three"]
        .iter()
        .enumerate()
    {
        let bytes = format!("POST /push HTTP/1.1\r\nHost: x\r\n\r\n{form}");
        raw.write_all(bytes.as_bytes()).await.unwrap();
        let got = read_until(&mut raw, b"}").await;
        let got = String::from_utf8(got).unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{i}: {got:?}");
        assert!(got.to_ascii_lowercase().contains("\r\ndate: "), "{got:?}");
    }
    assert_eq!(bob.line().await, "one");
    assert_eq!(bob.line().await, "two & three");
    // The message in the query string needs no body: answered at once, the HTTP way.
    raw.write_all(b"POST /push?name=a&message=four HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut raw, b"}").await;
    assert_eq!(bob.line().await, "four");
    // And the connection goes on with something else.
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let rest = String::from_utf8(read_to_close(&mut raw).await).unwrap();
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest:?}");
}

/// A `Head: less` push answers every push of its connection with rupy's minimal head, even
/// one with a Content-Length and one by GET.
#[tokio::test]
async fn head_less_stays_for_the_pushes_of_its_connection() {
    let s = TestServer::start().await;
    let mut raw = s.raw().await;
    raw.write_all(b"GET /push?name=a&message=1 HTTP/1.1\r\nHost: x\r\nHead: less\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = minimal_answer(&mut raw).await;
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\nContent-Length: "),
        "{head:?}"
    );
    raw.write_all(
        b"POST /push HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 17\r\n\r\nname=a&message=22",
    )
    .await
    .unwrap();
    let (head, body) = minimal_answer(&mut raw).await;
    assert_eq!(
        head,
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/json",
            body.len()
        )
    );
    // A refusal of the handler's keeps the connection, under the same head.
    raw.write_all(b"GET /push?name=a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = minimal_answer(&mut raw).await;
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head:?}");
    assert!(body.contains("message is required"), "{body}");
    assert_eq!(s.metric("halley_messages_published_total").await, 2);
}

/// An unframed push is bounded: a form over the body limit is refused (413), one that never
/// comes is refused at the header timeout (408), and a malformed one is a 400; each a JSON
/// error.
#[tokio::test]
async fn unframed_pushes_are_bounded() {
    let s = TestServer::with(|http, _| {
        http.header_timeout = Duration::from_millis(300);
        http.body_limit = 1024;
    })
    .await;
    let mut big = s.raw().await;
    let form = format!("name=a&message={}", "x".repeat(2048));
    big.write_all(format!("POST /push HTTP/1.1\r\nHost: x\r\nHead: less\r\n\r\n{form}").as_bytes())
        .await
        .unwrap();
    let got = String::from_utf8(read_to_close(&mut big).await).unwrap();
    assert!(
        got.starts_with("HTTP/1.1 413 Payload Too Large\r\nContent-Length: "),
        "{got:?}"
    );
    assert!(
        got.ends_with(r#"{"error":"body larger than 1024 bytes"}"#),
        "{got:?}"
    );

    let mut silent = s
        .raw_request("POST /push HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let got = String::from_utf8(read_to_close(&mut silent).await).unwrap();
    assert!(
        got.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{got:?}"
    );
    let body = got.split_once("\r\n\r\n").unwrap().1;
    let error: Value = serde_json::from_str(body).unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("no form body"),
        "{body}"
    );

    let mut bad = s
        .raw_request("POST /push HTTP/1.1\r\nHost: x\r\nHead: less\r\n\r\nname=a")
        .await;
    let (head, body) = minimal_answer(&mut bad).await;
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head:?}");
    assert!(body.contains("message is required"), "{body}");
    assert_eq!(s.metric("halley_messages_published_total").await, 0);
    s.assert_still_serving().await;
}

/// A browser's pull (it accepts `text/html`) is a live HTML page: the messages as they were
/// pushed, so `hello<br>` formats, after the padding old browsers wait for, in a sandbox that
/// runs no script and fetches nothing.
#[tokio::test]
async fn browser_pull_is_a_sandboxed_html_page() {
    let s = TestServer::start().await;
    let accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let mut one = s.stream_with("/pull?name=one", &[("accept", accept)]).await;
    assert_eq!(one.header("content-type"), Some("text/html; charset=utf-8"));
    let policy = one.header("content-security-policy").unwrap();
    assert!(policy.starts_with("sandbox;"), "{policy}");
    assert!(!policy.contains("allow-scripts"), "{policy}");
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert_eq!(one.header("x-content-type-options"), Some("nosniff"));
    push(&s, "name=two&message=hello%3Cbr%3E").await;
    let page = one.until("hello<br>\n").await;
    assert!(page.starts_with("<!DOCTYPE html><html>"), "{page:?}");
    let padding = page.find("hello").unwrap();
    assert!(
        padding >= 1024,
        "only {padding} bytes before the first message"
    );
    // A program that asks for nothing in particular gets the text.
    let plain = s.stream("/pull?name=three").await;
    assert_eq!(
        plain.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(plain.header("content-security-policy"), None);
    // And HEAD says what GET would.
    let reply = s
        .send(
            s.request("HEAD", "/pull?name=one")
                .header("accept", accept)
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(reply.header("content-security-policy").is_some());
}

/// nginx in front of rupy's `Head: less` pull reads Halley's minimal head as the valid
/// HTTP/1.1 head it is (it logged "upstream sent no valid HTTP/1.0 header" for the headless
/// stream before) and passes the messages on, whichever HTTP version it speaks upstream.
#[tokio::test]
async fn head_less_pull_through_nginx() {
    let s = TestServer::with(|http, _| http.heartbeat_interval = Duration::from_secs(600)).await;
    let nginx = common::proxy::Proxy::nginx(s.addr).await;
    for (i, path) in ["/pull", "/http11/pull"].into_iter().enumerate() {
        let channel = format!("/nginx/{i}");
        let mut raw = TcpStream::connect(nginx.addr).await.unwrap();
        let request = format!(
            "GET {path}?name=one&channel={channel} HTTP/1.1\r\nHost: {AS_HOST}\r\nHead: less\r\n\r\n"
        );
        raw.write_all(request.as_bytes()).await.unwrap();
        let head = String::from_utf8(read_until(&mut raw, b"\r\n\r\n").await).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {head:?}");
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("\r\ncontent-type: text/plain; charset=utf-8\r\n"),
            "{path}: {head:?}"
        );
        assert!(
            lower.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{path}: {head:?}"
        );
        s.wait_subscribers(&channel, 1).await;
        push(
            &s,
            &format!("name=two&message=through+nginx&channel={channel}"),
        )
        .await;
        let got = String::from_utf8(read_until(&mut raw, b"through nginx\n").await).unwrap();
        // nginx read Halley's chunk framing and frames the line again: one chunk, no doubling.
        assert_eq!(got, chunk("through nginx\n"), "{path}");
    }
    let log = nginx.error_log();
    assert!(!log.contains("upstream sent"), "{log}");
}

/// An EventSource's pull (it accepts `text/event-stream`, or `format=sse`): the pushed text as
/// `data:` lines, never your own; and rupy's event-stream demo page is served at `/event.html`.
#[tokio::test]
async fn event_source_pull_gets_the_text_as_server_sent_events() {
    let s = TestServer::start().await;
    let mut one = s
        .stream_with("/pull?name=one", &[("accept", "text/event-stream")])
        .await;
    assert_eq!(one.header("content-type"), Some("text/event-stream"));
    push(&s, "name=one&message=mine").await;
    push(&s, "name=two&message=hello%3Cbr%3E").await;
    push(&s, "name=two&message=a%0Ab").await;
    assert_eq!(one.until("\n\n").await, "data: hello<br>\n\n");
    assert_eq!(one.until("\n\n").await, "data: \"a\\nb\"\n\n");
    let page = s.get("/event.html").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("new EventSource("), "{}", page.body);
}
