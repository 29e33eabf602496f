//! A delivery writes a message to an idle SSE or NDJSON subscriber's socket itself (the
//! engine's `direct` module): what a subscriber receives must be exactly what its transport
//! would have written — every message, in order, never a frame cut by another — whether the
//! socket takes the write whole, in part, or not at all.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::wire::Transport;
use common::{Open, TestServer, within};
use http_body_util::Full;

const WRITTEN_DIRECT: &str = "halley_messages_written_direct_total";

#[tokio::test]
async fn a_broadcast_to_idle_streams_is_written_by_the_delivering_loop() {
    let s = TestServer::start().await;
    let sse = Transport::Sse;
    let ndjson = Transport::StreamJson;
    let mut streams = Vec::new();
    for transport in [sse, sse, sse, ndjson, ndjson] {
        let mut open = s
            .stream_with(&transport.url("/d/idle", &[]), transport.headers())
            .await;
        open.expect(&transport.preamble()).await;
        streams.push((transport, open));
    }
    let before = s.metric(WRITTEN_DIRECT).await;
    for i in 0..10 {
        let data = format!(r#"{{"n":{i},"text":"line one\nline two"}}"#);
        let id = s.publish_json("/d/idle", &data).await;
        for (transport, open) in &mut streams {
            open.expect(&transport.frame("/d/idle", &id, &data)).await;
        }
    }
    // Each subscriber was idle when each message came (the previous one had been read), so
    // deliveries wrote to them directly — all of them but for a subscriber that had not armed
    // again yet when the next publish came: never none.
    let written = s.metric(WRITTEN_DIRECT).await - before;
    assert!(
        written > 0 && written <= 50,
        "{written} of 50 deliveries written directly"
    );
}

/// Opens an SSE subscriber whose socket takes little: a receive buffer of 4 KiB that nobody
/// reads until told, so that the server's writes fill it and block.
async fn small_window_sse(s: &TestServer, channel: &str) -> Open {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = within("connect", socket.connect(s.addr)).await.unwrap();
    let request = s
        .request("GET", &format!("/sub{channel}"))
        .header("accept", "text/event-stream")
        .body(Full::<Bytes>::default())
        .unwrap();
    let open = s.open_on(stream, request).await;
    assert_eq!(open.status, 200);
    open
}

#[tokio::test]
async fn a_full_socket_gets_the_rest_of_each_frame_before_anything_else() {
    // Heartbeats every 20 ms, so that they come while frames are half written.
    let s = TestServer::with(|http, _| http.heartbeat_interval = Duration::from_millis(20)).await;
    let mut open = small_window_sse(&s, "/d/full").await;
    open.until("\n\n").await;
    let before = s.metric(WRITTEN_DIRECT).await;
    // 400 messages of ~20 KiB: ~8 MiB, more than the two sockets' buffers hold (the sending one
    // grows to 4 MiB by default, `tcp_wmem`) while the
    // subscriber does not read, so that deliveries find the socket full or take part of it.
    let mut sent = Vec::new();
    for i in 0..400 {
        let filler = format!("{i:03}").repeat(6_000);
        let data = format!(r#"{{"n":{i},"filler":"{filler}"}}"#);
        let id = s.publish_json("/d/full", &data).await;
        sent.push((id, data));
    }
    let written = s.metric(WRITTEN_DIRECT).await - before;
    assert!(written < 400, "every write fit: the socket never filled");
    eprintln!("{written} of 400 written whole by deliveries");
    // Now read: every frame whole and in order, heartbeats only between frames.
    for (id, data) in &sent {
        loop {
            let event = open.until("\n\n").await;
            if event == ":\n\n" {
                continue;
            }
            assert_eq!(
                event,
                format!("id: {id}\ndata: {data}\n\n"),
                "frame of {id}"
            );
            break;
        }
    }
}

#[tokio::test]
async fn a_subscriber_closed_mid_broadcast_leaves_the_others_whole() {
    let s = TestServer::start().await;
    let mut keep = s
        .stream_with("/sub/d/close", &[("accept", "text/event-stream")])
        .await;
    keep.until("\n\n").await;
    let mut gone = s
        .stream_with("/sub/d/close", &[("accept", "text/event-stream")])
        .await;
    gone.until("\n\n").await;
    s.wait_subscribers("/d/close", 2).await;
    drop(gone);
    for i in 0..20 {
        let data = format!(r#"{{"n":{i}}}"#);
        let id = s.publish_json("/d/close", &data).await;
        keep.expect(&format!("id: {id}\ndata: {data}\n\n")).await;
    }
    // The closed subscriber's socket is let go of: it leaves the channel.
    common::eventually(common::WAIT, "the closed subscriber leaves", || async {
        (s.subscribers("/d/close").await == 1).then_some(())
    })
    .await;
}

/// HTTP/1.0 has no chunks: what a delivery writes itself is the bare frame, as the stream's
/// own writes are.
#[tokio::test]
async fn http_1_0_sse_gets_bare_frames_from_deliveries() {
    let s = TestServer::start().await;
    let mut conn = s
        .raw_request("GET /sub/d/old HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n")
        .await;
    let got = common::read_until(&mut conn, b"\r\n\r\n").await;
    let got = String::from_utf8(got).unwrap();
    let (head, preamble) = got.split_once("\r\n\r\n").unwrap();
    assert!(!head.to_lowercase().contains("transfer-encoding"), "{head}");
    // The stream's own first write, `retry:`, may have come with the head.
    if !preamble.ends_with("\n\n") {
        common::read_until(&mut conn, b"\n\n").await;
    }
    let before = s.metric(WRITTEN_DIRECT).await;
    for word in ["one", "two", "three"] {
        let id = s.publish("/d/old", word).await;
        let frame = format!("id: {id}\ndata: {word}\n\n");
        let got = common::read_until(&mut conn, frame.as_bytes()).await;
        assert_eq!(String::from_utf8(got).unwrap(), frame);
    }
    assert!(s.metric(WRITTEN_DIRECT).await > before);
}

/// A native WebSocket lends its socket too: the frames deliveries write themselves are whole
/// text frames to a client nobody here wrote (tungstenite), in order, also when the socket
/// fills and the rest of a frame is the socket's own task's to write, with heartbeat pings in
/// between.
#[tokio::test]
async fn websocket_frames_written_by_deliveries_are_whole_and_in_order() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as Frame;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let s = TestServer::with(|http, _| http.heartbeat_interval = Duration::from_millis(20)).await;
    // Idle: each message written by the delivery.
    let mut idle = s.ws("/sub/d/ws").await;
    s.wait_subscribers("/d/ws", 1).await;
    let before = s.metric(WRITTEN_DIRECT).await;
    for i in 0..10 {
        let data = format!(r#"{{"n":{i}}}"#);
        let id = s.publish_json("/d/ws", &data).await;
        loop {
            match common::ws_next(&mut idle).await {
                Frame::Text(text) => {
                    let object: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(object["id"], id.as_str(), "{text}");
                    assert_eq!(object["data"]["n"], i, "{text}");
                    break;
                }
                Frame::Ping(_) | Frame::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(s.metric(WRITTEN_DIRECT).await > before);

    // Full: a small receive window nobody reads while ~8 MiB is published.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = within("connect", socket.connect(s.addr)).await.unwrap();
    let request = format!("ws://{}/sub/d/wsfull", s.addr)
        .into_client_request()
        .unwrap();
    let (mut full, _) = within(
        "handshake",
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .unwrap();
    s.wait_subscribers("/d/wsfull", 1).await;
    let mut sent = Vec::new();
    for i in 0..400 {
        let filler = format!("{i:03}").repeat(6_000);
        let data = format!(r#"{{"n":{i},"filler":"{filler}"}}"#);
        sent.push(s.publish_json("/d/wsfull", &data).await);
    }
    for (i, id) in sent.iter().enumerate() {
        loop {
            let frame = within("the next frame", full.next())
                .await
                .unwrap()
                .unwrap();
            match frame {
                Frame::Text(text) => {
                    let object: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(object["id"], id.as_str());
                    assert_eq!(object["data"]["n"], i);
                    break;
                }
                Frame::Ping(_) | Frame::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
