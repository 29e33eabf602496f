//! Every transport of `GET /sub/{channel}` delivers, in its own wire format, with the headers
//! that keep proxies from buffering it; heartbeats; wildcards; WebSocket publishing.

mod common;

use std::time::Duration;

use common::wire::{STREAMING, Transport};
use common::{TestServer, Ws, message_object, within, ws_json, ws_next};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

/// Messages every transport must carry intact: a string, JSON with a `<` (which the iframe must
/// escape), and a multi-line string (which line transports must keep on one line).
const DATA: [&str; 3] = [r#""hello""#, r#"{"k":[1,"</script>"]}"#, r#""one\ntwo""#];

/// Opens `transport` on a fresh channel, publishes [`DATA`], and checks the exact bytes.
async fn check_delivers(s: &TestServer, transport: Transport, channel: &str) {
    let mut open = s
        .stream_with(&transport.url(channel, &[]), transport.headers())
        .await;
    assert_eq!(open.status, 200, "{transport:?}");
    assert_eq!(
        open.header("content-type"),
        Some(transport.content_type()),
        "{transport:?}"
    );
    assert_eq!(
        open.header("cache-control"),
        Some("no-cache"),
        "{transport:?}"
    );
    assert_eq!(
        open.header("x-accel-buffering"),
        Some("no"),
        "{transport:?}"
    );
    assert_eq!(open.header("x-halley-gap"), None, "{transport:?}");
    open.expect(&transport.preamble()).await;
    for data in DATA {
        let id = s.publish_json(channel, data).await;
        open.expect(&transport.frame(channel, &id, data)).await;
    }
}

#[tokio::test]
async fn every_streaming_transport_delivers_in_its_wire_format() {
    let s = TestServer::start().await;
    for (i, transport) in STREAMING.into_iter().enumerate() {
        check_delivers(&s, transport, &format!("/t/{i}")).await;
    }
}

// Older browsers render nothing of a forever-iframe until they have about 1 KiB.
const _: () = assert!(halley_http::IFRAME_PADDING >= 1024);

#[tokio::test]
async fn iframe_preamble_pads_at_least_one_kib() {
    let s = TestServer::start().await;
    let mut open = s.stream(&Transport::Iframe.url("/t/pad", &[])).await;
    let head = open.until("-->\n").await;
    assert!(head.len() >= 1024, "preamble is only {} bytes", head.len());
    assert!(head.starts_with("<!DOCTYPE html>"), "{head:?}");
}

#[tokio::test]
async fn query_transport_wins_over_accept_header() {
    let s = TestServer::start().await;
    let mut open = s
        .stream_with(
            "/sub/t/q?transport=stream",
            &[("accept", "text/event-stream")],
        )
        .await;
    assert_eq!(
        open.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let id = s.publish("/t/q", "plain").await;
    assert!(!id.is_empty());
    open.expect("plain\n").await;
}

/// Opera 9's `<event-source>` ("Going Live with Comet": `Content-Type:
/// application/x-dom-event-stream`, `Event: server-time`, `data: …`): asked for by its Accept
/// header (or `transport=dom-events`), each message an `Event: message` block with its data,
/// control notices under their own event names.
#[tokio::test]
async fn opera_event_source_gets_the_dom_event_stream() {
    let s = TestServer::start().await;
    let mut open = s
        .stream_with(
            "/sub/t/opera",
            &[("accept", "application/x-dom-event-stream")],
        )
        .await;
    assert_eq!(
        open.header("content-type"),
        Some("application/x-dom-event-stream")
    );
    let id = s.publish("/t/opera", "the time on the server").await;
    open.expect(&format!(
        "Event: message\nid: {id}\ndata: the time on the server\n\n"
    ))
    .await;
    assert_eq!(
        s.subscribers("/t/opera").await,
        1,
        "one subscriber, counted as dom-events"
    );
    assert_eq!(
        s.metric(r#"halley_subscribers{transport="dom-events"}"#)
            .await,
        1
    );
    let mut by_query = s.stream("/sub/t/opera2?transport=dom-events").await;
    assert_eq!(
        by_query.header("content-type"),
        Some("application/x-dom-event-stream")
    );
    s.publish("/t/opera2", "two\nlines").await;
    by_query.until("Event: message\n").await;
    let block = by_query.until("\n\n").await;
    assert!(block.ends_with("data: two\ndata: lines\n\n"), "{block:?}");
}

/// Client pull (`transport=refresh`): a page of the channel's newest messages, escaped, with a
/// `Refresh` header that reloads it with the newest id shown, after which newer ones are marked.
#[tokio::test]
async fn refresh_pages_reload_themselves_at_the_next_position() {
    let s = TestServer::start().await;
    s.publish("/t/pull", "first").await;
    s.publish("/t/pull", "<b>second</b> & more").await;
    let third = s.publish("/t/pull", "third").await;
    let page = s.get("/sub/t/pull?transport=refresh&lines=2&every=7").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
    let next = format!("/sub/t/pull?transport=refresh&lines=2&every=7&last_id={third}");
    assert_eq!(
        page.header("refresh"),
        Some(format!("7; url={next}").as_str())
    );
    assert!(
        !page.body.contains("first"),
        "two lines only: {}",
        page.body
    );
    assert!(
        page.body
            .contains("<li>&lt;b&gt;second&lt;/b&gt; &amp; more</li>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("<li>third</li>"), "{}", page.body);

    s.publish("/t/pull", "fourth").await;
    let later = s.get(&next).await;
    assert!(later.body.contains("<li>third</li>"), "{}", later.body);
    assert!(
        later.body.contains("<li class=\"new\">fourth</li>"),
        "{}",
        later.body
    );

    for bad in [
        "/sub/t/*?transport=refresh",
        "/sub/t/pull?transport=refresh&lines=0",
        "/sub/t/pull?transport=refresh&every=0",
        "/sub/t/pull?transport=refresh&lines=101",
    ] {
        s.get(bad).await.expect_error(400);
    }
}

/// Interval polling, the last resort behind a proxy that cuts every held request: `wait=0`
/// answers at once with what there is (the resume's messages, or none and the position), and
/// `wait=N` holds at most N seconds.
#[tokio::test]
async fn a_poll_that_may_not_wait_is_answered_at_once() {
    let s =
        TestServer::with(|http, _| http.hold_timeout = std::time::Duration::from_secs(600)).await;
    let empty = common::within("an unheld poll", s.get("/sub/t/interval?wait=0")).await;
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert_eq!(empty.json(), serde_json::json!([]));
    let position = empty.header("x-halley-last-id").unwrap().to_string();
    s.publish("/t/interval", "one").await;
    s.publish("/t/interval", "two").await;
    let missed = common::within(
        "an unheld poll resuming",
        s.get(&format!("/sub/t/interval?wait=0&last_id={position}")),
    )
    .await;
    let data: Vec<serde_json::Value> = missed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(data, ["one", "two"]);
    let jsonp = common::within(
        "an unheld JSONP poll",
        s.get("/sub/t/interval?transport=jsonp&callback=cb&wait=0"),
    )
    .await;
    assert!(jsonp.body.starts_with("/**/cb([],"), "{}", jsonp.body);
    s.get("/sub/t/interval?wait=soon").await.expect_error(400);
}

/// Live images (the webcam of the founding documents): a body published as an image keeps its
/// type and bytes. Multipart sends it as a part of its own type (what an `<img>` plays); JSON
/// transports and history carry it as base64 with a marker; resume works as for any message.
#[tokio::test]
async fn binary_bodies_travel_as_bytes_on_multipart_and_as_base64_in_json() {
    let s = TestServer::start().await;
    let mut parts = s.stream("/sub/cam/live?transport=multipart").await;
    let image: &[u8] = b"\x89PNG\r\n\x1a\n\0\xff--halley\r\nnot a boundary";
    let reply = s
        .send(
            s.request("POST", "/pub/cam/live")
                .header("content-type", "image/png")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(image)))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let head = parts.until("\r\n\r\n").await;
    assert_eq!(head, "--halley\r\nContent-Type: image/png\r\n\r\n");
    // The bytes, then the next part opened at once with the same type (a browser shows a part
    // only once the next one's headers came).
    let reopened = b"\r\n--halley\r\nContent-Type: image/png\r\n\r\n";
    while parts.buf.len() < parts.seen + image.len() + reopened.len() {
        assert!(parts.try_fill().await.unwrap(), "the part's bytes");
    }
    assert_eq!(&parts.buf[parts.seen..parts.seen + image.len()], image);
    assert_eq!(
        &parts.buf[parts.seen + image.len()..][..reopened.len()],
        reopened
    );
    parts.seen += image.len() + reopened.len();

    // JSON transports and history: base64 with its type.
    let history = s.get("/api/history?channel=/cam/live").await.json();
    let data = &history["messages"][0]["data"];
    assert_eq!(data["type"], "image/png", "{history}");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data["$binary"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, image);
    // Resume on multipart gives the bytes again.
    let mut resumed = s
        .stream(&format!(
            "/sub/cam/live?transport=multipart&last_id={}",
            foreign_or_before(&id)
        ))
        .await;
    let head = resumed.until("\r\n\r\n").await;
    assert!(head.contains("Content-Type: image/png"), "{head}");
    // A JSON body that merely looks like one, with a type that is not binary, stays JSON.
    s.post(
        "/pub/cam/live",
        "application/json",
        r#"{"$binary":"PHNjcmlwdD4=","type":"text/html"}"#,
    )
    .await;
    // The open part is closed with the same image again, then the JSON part follows.
    while parts.buf.len() < parts.seen + image.len() + 2 {
        assert!(parts.try_fill().await.unwrap(), "the open part closed");
    }
    assert_eq!(&parts.buf[parts.seen..parts.seen + image.len()], image);
    parts.seen += image.len() + 2;
    let json_part = parts.until("}\r\n").await;
    assert!(
        json_part.starts_with("--halley\r\nContent-Type: application/json\r\n\r\n"),
        "{json_part:?}"
    );
    // Other types stay text.
    let text = s
        .send(
            s.request("POST", "/pub/cam/text")
                .header("content-type", "text/csv")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"a,b")))
                .unwrap(),
        )
        .await;
    assert_eq!(text.status, 200);
    let history = s.get("/api/history?channel=/cam/text").await.json();
    assert_eq!(history["messages"][0]["data"], "a,b");
}

/// Over a native WebSocket a binary body is its message object (base64 with its type, and the
/// channel and id a client resumes with), or — asked for with `binary=frames` — a binary frame
/// of its bytes; other messages stay text frames either way.
#[tokio::test]
async fn websocket_binary_frames_carry_binary_bodies_when_asked() {
    let s = TestServer::start().await;
    let mut plain = s.ws("/sub/cam/ws").await;
    let mut frames = s.ws("/sub/cam/ws?binary=frames").await;
    s.wait_subscribers("/cam/ws", 2).await;
    let image: &[u8] = b"\x89PNG\r\n\x1a\n\0\xff";
    let reply = s
        .send(
            s.request("POST", "/pub/cam/ws")
                .header("content-type", "image/png")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(image)))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    s.publish("/cam/ws", "and text").await;
    match common::ws_next(&mut frames).await {
        Frame::Binary(bytes) => assert_eq!(&bytes[..], image),
        other => panic!("expected a binary frame, got {other:?}"),
    }
    match common::ws_next(&mut frames).await {
        Frame::Text(text) => assert!(text.contains("and text"), "{text}"),
        other => panic!("expected a text frame, got {other:?}"),
    }
    let object = common::ws_json(&mut plain).await;
    assert_eq!(object["data"]["type"], "image/png", "{object}");
    assert_eq!(object["channel"], "/cam/ws");
}

/// `transport=stream&binary=raw`: the bytes of binary bodies one after another and nothing
/// else (no line ends, heartbeats or other messages) — a sound stream to a player.
#[tokio::test]
async fn a_raw_stream_is_the_binary_bodies_bytes_and_nothing_else() {
    let s = TestServer::with(|http, _| http.heartbeat_interval = Duration::from_millis(50)).await;
    let mut raw = s.stream("/sub/radio?transport=stream&binary=raw").await;
    assert_eq!(raw.header("content-type"), Some("application/octet-stream"));
    let publish = |bytes: &'static [u8]| {
        s.send(
            s.request("POST", "/pub/radio")
                .header("content-type", "audio/ogg")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(bytes)))
                .unwrap(),
        )
    };
    assert_eq!(publish(b"OggS\0\x01").await.status, 200);
    s.publish("/radio", "a text message is left out").await;
    // Heartbeat ticks pass meanwhile and add nothing.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(publish(b"OggS\0\x02").await.status, 200);
    while raw.buf.len() < 12 {
        assert!(raw.try_fill().await.unwrap(), "the bytes");
    }
    assert_eq!(&raw.buf[..], b"OggS\0\x01OggS\0\x02");
}

/// The id just before `id` (same epoch, one less), to resume from.
fn foreign_or_before(id: &str) -> String {
    let (epoch, offset) = id.split_once('-').unwrap();
    format!("{epoch}-{}", offset.parse::<u64>().unwrap() - 1)
}

#[tokio::test]
async fn longpoll_answers_with_the_message_that_arrives() {
    let s = TestServer::with(|http, _| http.hold_timeout = Duration::from_secs(10)).await;
    for (i, path) in ["/sub/lp/0", "/sub/lp/1?transport=longpoll"]
        .into_iter()
        .enumerate()
    {
        let channel = format!("/lp/{i}");
        let publisher = async {
            s.wait_subscribers(&channel, 1).await;
            s.publish_json(&channel, r#"{"n":1}"#).await
        };
        let (reply, id) = tokio::join!(s.get(path), publisher);
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{path}"
        );
        assert_eq!(reply.header("cache-control"), Some("no-cache"), "{path}");
        assert_eq!(reply.header("x-accel-buffering"), Some("no"), "{path}");
        assert_eq!(
            reply.header("x-halley-last-id"),
            Some(id.as_str()),
            "{path}"
        );
        assert_eq!(
            reply.body,
            format!("[{}]", message_object(&channel, &id, r#"{"n":1}"#))
        );
    }
}

#[tokio::test]
async fn longpoll_times_out_with_an_empty_batch_and_a_resume_position() {
    let s = TestServer::start().await;
    // The position is global: the last id published anywhere before the poll.
    let before = s.publish("/elsewhere", "x").await;
    let reply = s.get("/sub/lp/idle").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "[]");
    assert_eq!(reply.header("x-halley-last-id"), Some(before.as_str()));
    // Resuming from that position gets what was published after it, and only that.
    let after = s.publish("/lp/idle", "y").await;
    let reply = s.get(&format!("/sub/lp/idle?last_id={before}")).await;
    assert_eq!(
        reply.body,
        format!("[{}]", message_object("/lp/idle", &after, r#""y""#))
    );
    assert_eq!(reply.header("x-halley-last-id"), Some(after.as_str()));
}

/// Splits `/**/f(<messages>,<meta>);` into its two arguments.
fn jsonp_args(body: &str) -> (Value, Value) {
    let inner = body
        .strip_prefix("/**/f(")
        .and_then(|b| b.strip_suffix(");"))
        .unwrap_or_else(|| panic!("not a JSONP call: {body:?}"));
    let args: Vec<Value> = serde_json::from_str(&format!("[{inner}]")).unwrap();
    assert_eq!(args.len(), 2, "{body:?}");
    (args[0].clone(), args[1].clone())
}

#[tokio::test]
async fn jsonp_wraps_the_batch_in_the_callback() {
    let s = TestServer::with(|http, _| http.hold_timeout = Duration::from_secs(10)).await;
    let publisher = async {
        s.wait_subscribers("/jp/a", 1).await;
        s.publish("/jp/a", "hi").await
    };
    let (reply, id) = tokio::join!(s.get("/sub/jp/a?transport=jsonp&callback=f"), publisher);
    assert_eq!(reply.status, 200);
    let content_type = reply.header("content-type").unwrap();
    assert!(
        content_type.starts_with("application/javascript"),
        "{content_type}"
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(reply.header("x-accel-buffering"), Some("no"));
    let (messages, meta) = jsonp_args(&reply.body);
    assert_eq!(
        messages,
        json!([{"channel": "/jp/a", "id": id, "data": "hi"}])
    );
    assert_eq!(meta, json!({"last_id": id, "gap": false}));
}

#[tokio::test]
async fn jsonp_times_out_with_an_empty_call() {
    let s = TestServer::start().await;
    let reply = s.get("/sub/jp/idle?transport=jsonp&callback=f").await;
    assert_eq!(reply.status, 200);
    let (messages, meta) = jsonp_args(&reply.body);
    assert_eq!(messages, json!([]));
    assert_eq!(meta["gap"], false);
    assert!(meta["last_id"].is_string(), "{meta}");
}

#[tokio::test]
async fn websocket_sends_one_text_frame_per_message() {
    let s = TestServer::start().await;
    let mut ws = s.ws("/sub/w/a").await;
    for data in DATA {
        let id = s.publish_json("/w/a", data).await;
        match ws_next(&mut ws).await {
            Frame::Text(text) => assert_eq!(text.as_str(), message_object("/w/a", &id, data)),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn send_text(ws: &mut Ws, text: &str) {
    within("websocket send", ws.send(Frame::text(text)))
        .await
        .unwrap();
}

#[tokio::test]
async fn websocket_frames_are_published_to_an_exact_channel() {
    let s = TestServer::start().await;
    let mut ws = s.ws("/sub/w/chat").await;
    let mut other = s.stream("/sub/w/chat?transport=stream&format=json").await;
    // (frame sent, data published): valid JSON stays JSON, anything else becomes a string.
    let cases = [
        (r#"{"x": [1, 2]}"#, json!({"x": [1, 2]})),
        ("not json {", json!("not json {")),
    ];
    for (sent, data) in cases {
        send_text(&mut ws, sent).await;
        let own = ws_json(&mut ws).await;
        assert_eq!(own["channel"], "/w/chat", "{own}");
        assert_eq!(own["data"], data, "{own}");
        let seen = other.json_line().await;
        assert_eq!(seen, own, "another subscriber gets the same message");
    }
}

#[tokio::test]
async fn websocket_frames_on_a_wildcard_subscription_are_refused() {
    let s = TestServer::start().await;
    let mut ws = s.ws("/sub/w/*").await;
    send_text(&mut ws, r#"{"x":1}"#).await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["event"], "error", "{reply}");
    assert_eq!(s.metric("halley_messages_published_total").await, 0);
    // The subscription still works.
    let id = s.publish("/w/x", "still here").await;
    assert_eq!(ws_json(&mut ws).await["id"], id.as_str());
}

#[tokio::test]
async fn websocket_publishing_needs_the_publish_key_when_one_is_set() {
    let s = TestServer::with_key("k").await;
    let mut without = s.ws("/sub/w/k").await;
    send_text(&mut without, "no key").await;
    assert_eq!(ws_json(&mut without).await["event"], "error");
    // A wrong key is a bad credential: the upgrade itself is refused.
    match s.ws_with("/sub/w/k?key=nope", &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("a wrong key was let in: {:?}", other.map(|_| ())),
    }
    assert_eq!(s.metric("halley_messages_published_total").await, 0);

    let mut with = s.ws("/sub/w/k?key=k").await;
    send_text(&mut with, "with key").await;
    let own = ws_json(&mut with).await;
    assert_eq!(own["data"], "with key", "{own}");
    // Every subscriber of the channel gets it, including the ones that may not publish.
    assert_eq!(ws_json(&mut without).await, own);
}

#[tokio::test]
async fn idle_streams_get_heartbeats() {
    let s = TestServer::with(|http, _| http.heartbeat_interval = Duration::from_millis(50)).await;
    for (i, transport) in STREAMING.into_iter().enumerate() {
        let mut open = s
            .stream_with(
                &transport.url(&format!("/hb/{i}"), &[]),
                transport.headers(),
            )
            .await;
        open.expect(&transport.preamble()).await;
        open.expect(&transport.heartbeat()).await;
        open.expect(&transport.heartbeat()).await;
    }
    let mut ws = s.ws("/sub/hb/ws").await;
    use futures_util::StreamExt;
    let frame = within("websocket ping", ws.next()).await.unwrap().unwrap();
    assert!(
        matches!(frame, Frame::Ping(_)),
        "expected a ping, got {frame:?}"
    );
}

/// Subscribes to `pattern`, publishes to each of `channels` in order, and checks which of them
/// the subscriber saw (in order), using a final marker on `marker` (a channel the pattern
/// matches) to know it saw everything.
async fn check_wildcard(
    s: &TestServer,
    pattern: &str,
    marker: &str,
    channels: &[&str],
    expected: &[&str],
) {
    let mut open = s
        .stream(&format!("/sub{pattern}?transport=stream&format=json"))
        .await;
    for channel in channels {
        s.publish(channel, channel).await;
    }
    s.publish(marker, "end").await;
    let mut seen = Vec::new();
    loop {
        let message = open.json_line().await;
        if message["data"] == "end" {
            break;
        }
        seen.push(message["channel"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, expected, "{pattern}");
}

#[tokio::test]
async fn wildcards_match_one_segment_or_any_depth() {
    let s = TestServer::start().await;
    let published = [
        "/chat/a/b",
        "/chat/a",
        "/chatter/x",
        "/other/a",
        "/chat/b/c/d",
    ];
    let all = ["/chat/a/b", "/chat/a", "/chat/b/c/d"];
    check_wildcard(&s, "/chat/*", "/chat/end", &published, &["/chat/a"]).await;
    check_wildcard(&s, "/chat/**", "/chat/end", &published, &all).await;
    check_wildcard(&s, "/chat/a/*", "/chat/a/end", &published, &["/chat/a/b"]).await;
    check_wildcard(&s, "/chat/a", "/chat/a", &published, &["/chat/a"]).await;
}

#[tokio::test]
async fn websocket_wildcard_subscription_gets_matching_channels() {
    let s = TestServer::start().await;
    let mut ws = s.ws("/sub/room/**").await;
    s.publish("/lobby", "no").await;
    let deep = s.publish("/room/1/a", "deep").await;
    let frame = ws_json(&mut ws).await;
    assert_eq!(
        frame,
        json!({"channel": "/room/1/a", "id": deep, "data": "deep"})
    );
}

/// The data of each event in an SSE stream, parsed as the EventSource spec says: lines end
/// with CRLF, LF or a lone CR; `data:` lines are joined with LF.
fn sse_data(stream: &str) -> Vec<String> {
    let normalised = stream.replace("\r\n", "\n").replace('\r', "\n");
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    for line in normalised.split('\n') {
        if line.is_empty() {
            events.extend(data.take());
        } else if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            data = Some(match data.take() {
                Some(d) => format!("{d}\n{value}"),
                None => value.to_owned(),
            });
        }
    }
    events
}

/// Publishes each text and checks what a spec-compliant EventSource makes of its event.
async fn check_sse_data(cases: &[(&str, &str)]) {
    let s = TestServer::start().await;
    let mut open = s.stream("/sub/t/lines?transport=sse").await;
    open.expect("retry: 2000\n\n").await;
    for &(text, expected) in cases {
        s.publish("/t/lines", text).await;
        let event = open.until("\n\n").await;
        assert_eq!(
            sse_data(&event),
            [expected],
            "{text:?} was sent as {event:?}"
        );
    }
}

#[tokio::test]
async fn sse_data_survives_line_breaks() {
    // (published text, what an EventSource must deliver: line breaks become LF)
    check_sse_data(&[
        ("one\ntwo", "one\ntwo"),
        ("one\r\ntwo", "one\ntwo"),
        ("trailing\n", "trailing\n"),
        ("\n\nblank lines", "\n\nblank lines"),
    ])
    .await;
}

/// A lone CR ends a line in SSE, so `data: lone\rcr` reaches the page as "lone" and the rest
/// is parsed as a field named "cr" (and dropped).
#[tokio::test]
async fn regression_sse_lone_carriage_return_truncates_data() {
    check_sse_data(&[("lone\rcr", "lone\ncr")]).await;
}
