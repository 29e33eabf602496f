//! WebSocket conformance on every route that upgrades (native `/sub`, Bayeux `/cometd`): the
//! close handshake both ways, refusals with the close code RFC 6455 names (1009, 1007, 1002),
//! subprotocol negotiation, and a subscriber that never reads. Clients: tokio-tungstenite,
//! and raw TCP where a frame must be malformed on purpose.

mod common;

use std::time::Duration;

use common::{TestServer, Ws, read_to_close, within, ws_json};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const WEBSOCKETS: &str = r#"halley_subscribers{transport="websocket"}"#;

/// The routes that upgrade to a WebSocket.
const ROUTES: [&str; 2] = ["/sub/ws/close", "/cometd"];

/// Reads past pings and pongs to the client's view of the close: the server's close frame
/// (if any), then the end of the stream, which tungstenite reports only once the server has
/// closed TCP (before it, the read would wait: `within` fails the test).
async fn close_seen(ws: &mut Ws) -> Option<CloseFrame> {
    let mut close = None;
    for _ in 0..16 {
        match within("websocket read until closed", ws.next()).await {
            Some(Ok(Frame::Close(frame))) => close = frame,
            Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => {}
            Some(Ok(other)) => panic!("expected a close, got {other:?}"),
            Some(Err(e)) => panic!("the close was not clean: {e}"),
            None => return close,
        }
    }
    panic!("no end of stream after 16 frames");
}

#[tokio::test]
async fn a_clients_close_is_answered_and_the_server_closes_tcp() {
    let s = TestServer::start().await;
    for route in ROUTES {
        let mut ws = s.ws(route).await;
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        };
        within("close", ws.close(Some(bye))).await.unwrap();
        let answer = close_seen(&mut ws).await.expect("an answering close frame");
        assert_eq!(answer.code, CloseCode::Normal, "{route}");
    }
    s.wait_metric(WEBSOCKETS, 0).await;
    s.assert_still_serving().await;
}

#[tokio::test]
async fn a_close_with_another_code_is_echoed() {
    let s = TestServer::start().await;
    for route in ROUTES {
        let mut ws = s.ws(route).await;
        let bye = CloseFrame {
            code: CloseCode::Away,
            reason: "".into(),
        };
        within("close", ws.close(Some(bye))).await.unwrap();
        let answer = close_seen(&mut ws).await.expect("an answering close frame");
        assert_eq!(answer.code, CloseCode::Away, "{route}");
    }
}

#[tokio::test]
async fn a_server_close_is_completed_cleanly_by_the_client() {
    // The server closes first (it is shutting down): 1001, then TCP ends once the client has
    // answered, without an error on the client's side.
    let mut s = TestServer::start().await;
    let mut sockets = Vec::new();
    for route in ROUTES {
        sockets.push((route, s.ws(route).await));
    }
    s.wait_metric(WEBSOCKETS, 2).await;
    s.shutdown.cancel();
    for (route, ws) in &mut sockets {
        let close = close_seen(ws).await.expect("a close frame");
        assert_eq!(close.code, CloseCode::Away, "{route}");
    }
    within("drain", s.done.take().unwrap()).await.unwrap();
}

#[tokio::test]
async fn a_message_over_the_body_limit_is_refused_with_1009() {
    let s = TestServer::with(|http, _| http.body_limit = 1024).await;
    for route in ROUTES {
        let mut ws = s.ws(route).await;
        within("send", ws.send(Frame::text("x".repeat(1025))))
            .await
            .unwrap();
        let close = close_seen(&mut ws).await.expect("a close frame");
        assert_eq!(close.code, CloseCode::Size, "{route}: {close:?}");
    }
    s.wait_metric(WEBSOCKETS, 0).await;
    s.assert_still_serving().await;
}

#[tokio::test]
async fn binary_frames_on_sub_are_refused_with_1003() {
    let s = TestServer::start().await;
    let mut ws = s.ws("/sub/ws/binary").await;
    within("send", ws.send(Frame::binary(vec![1, 2, 3])))
        .await
        .unwrap();
    let close = close_seen(&mut ws).await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Unsupported);
}

/// A raw WebSocket on `path`: the handshake's answer has been read.
async fn raw_ws(s: &TestServer, path: &str) -> TcpStream {
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut stream = s.raw_request(&head).await;
    let answer = common::read_until(&mut stream, b"\r\n\r\n").await;
    assert!(
        answer.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    stream
}

/// A frame as a client sends it: `first` is FIN, RSV and opcode; masked with a zero key
/// (valid masking that leaves the payload as it is) unless `masked` is false.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask | n as u8),
        n => {
            out.push(mask | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&[0, 0, 0, 0]);
    }
    out.extend_from_slice(payload);
    out
}

/// The close code of the first close frame in what the server sent before it closed TCP.
fn close_code(bytes: &[u8]) -> Option<u16> {
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let (len, header) = match bytes[at + 1] & 0x7f {
            126 => (
                u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                4,
            ),
            127 => return None,
            n => (n as usize, 2),
        };
        let payload = bytes.get(at + header..at + header + len)?;
        if opcode == 0x8 {
            return payload
                .get(..2)
                .map(|code| u16::from_be_bytes([code[0], code[1]]));
        }
        at += header + len;
    }
    None
}

#[tokio::test]
async fn protocol_violations_are_refused_with_a_close_code() {
    let s = TestServer::start().await;
    let check = async |name: &str, bytes: Vec<u8>, expected: u16| {
        for route in ROUTES {
            let mut stream = raw_ws(&s, route).await;
            within("write", stream.write_all(&bytes)).await.unwrap();
            let got = read_to_close(&mut stream).await;
            assert_eq!(
                close_code(&got),
                Some(expected),
                "{name} on {route}: the server sent {got:?} before closing"
            );
        }
    };
    check(
        "text that is not UTF-8",
        frame(0x81, b"\xff\xfe", true),
        1007,
    )
    .await;
    check(
        "text not UTF-8 across fragments",
        [frame(0x01, b"ok\xf0\x9f", true), frame(0x80, b"\xff", true)].concat(),
        1007,
    )
    .await;
    check("an unmasked frame", frame(0x81, b"hi", false), 1002).await;
    check("RSV1 set", frame(0xc1, b"hi", true), 1002).await;
    check("RSV3 set", frame(0x91, b"hi", true), 1002).await;
    check("a ping of 126 bytes", frame(0x89, &[0; 126], true), 1002).await;
    check("a fragmented ping", frame(0x09, b"p", true), 1002).await;
    check("reserved data opcode 3", frame(0x83, b"", true), 1002).await;
    check("reserved control opcode 11", frame(0x8b, b"", true), 1002).await;
    check(
        "a continuation with nothing to continue",
        frame(0x80, b"x", true),
        1002,
    )
    .await;
    check(
        "a close with code 1005",
        frame(0x88, &1005u16.to_be_bytes(), true),
        1002,
    )
    .await;
    s.assert_still_serving().await;
}

/// Opens a WebSocket on `path` offering `protocols`; the selected subprotocol, if any.
async fn offer(s: &TestServer, path: &str, protocols: &str) -> Option<String> {
    let mut request = format!("ws://{}{path}", s.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    let stream = s.raw().await;
    // tungstenite itself refuses an answer that selects a protocol not offered.
    let (mut ws, response) = within(
        "websocket handshake",
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .unwrap_or_else(|e| panic!("{path} offering {protocols}: {e}"));
    let _ = within("close", ws.close(None)).await;
    response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_spoken_subprotocol_is_selected() {
    let s = TestServer::start().await;
    assert_eq!(
        offer(&s, "/sub/p/a", "halley.v1").await.as_deref(),
        Some("halley.v1")
    );
    assert_eq!(
        offer(&s, "/sub/p/a", "chat, halley.v1").await.as_deref(),
        Some("halley.v1")
    );
    assert_eq!(
        offer(&s, "/cometd", "bayeux").await.as_deref(),
        Some("bayeux")
    );
    assert_eq!(
        offer(&s, "/cometd", "chat, cometd").await.as_deref(),
        Some("cometd")
    );
}

#[tokio::test]
async fn with_a_subprotocol_frames_flow_as_without() {
    let s = TestServer::start().await;
    let mut request = format!("ws://{}/sub/p/flow", s.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "halley.v1".parse().unwrap());
    let (mut ws, _) = within(
        "handshake",
        tokio_tungstenite::client_async(request, s.raw().await),
    )
    .await
    .unwrap();
    s.wait_subscribers("/p/flow", 1).await;
    let id = s.publish("/p/flow", "hello").await;
    let message = ws_json(&mut ws).await;
    assert_eq!(message["id"], id);
    assert_eq!(message["data"], "hello");
}

#[tokio::test]
async fn an_unspoken_subprotocol_is_refused_with_400_naming_what_is_spoken() {
    let s = TestServer::start().await;
    for (path, speaks) in [("/sub/p/b", "halley.v1"), ("/cometd", "bayeux")] {
        let reply = s
            .send(
                s.request("GET", path)
                    .header("upgrade", "websocket")
                    .header("connection", "Upgrade")
                    .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                    .header("sec-websocket-version", "13")
                    .header("sec-websocket-protocol", "chat, superchat")
                    .body(Default::default())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.body);
        let error = reply.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(speaks), "{path}: {error}");
    }
    assert_eq!(s.subscribers("/p/b").await, 0);
    s.assert_still_serving().await;
}

/// A connected socket whose receive buffer is small, so that a client that does not read
/// stops taking bytes soon.
async fn small_buffered(s: &TestServer) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    within("connect", socket.connect(s.addr)).await.unwrap()
}

#[tokio::test]
async fn a_websocket_subscriber_that_never_reads_is_disconnected() {
    let s = TestServer::with(|http, engine| {
        http.write_stall_timeout = Duration::from_millis(300);
        http.body_limit = 1024 * 1024;
        engine.queue_capacity = 8;
    })
    .await;
    let request = format!("ws://{}/sub/deaf", s.addr)
        .into_client_request()
        .unwrap();
    let (mut deaf, _) = within(
        "handshake",
        tokio_tungstenite::client_async(request, small_buffered(&s).await),
    )
    .await
    .unwrap();
    s.wait_subscribers("/deaf", 1).await;
    s.wait_metric(WEBSOCKETS, 1).await;

    // Publish until the server stops counting the deaf subscriber: its writes block, its
    // queue overflows, and the blocked write ends the connection after the stall timeout.
    let payload = "x".repeat(256 * 1024);
    let mut cut_off = false;
    for _ in 0..200 {
        let reply = s.post("/pub/deaf", "text/plain", payload.clone()).await;
        if reply.json()["subscribers"] == 0 {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "the deaf subscriber was never cut off");
    // The connection itself ends (not only the subscription): the task is gone ...
    s.wait_metric(WEBSOCKETS, 0).await;
    // ... and the client, reading at last, finds the stream ended (whatever it had received).
    let raw = deaf.get_mut();
    let mut scratch = vec![0u8; 64 * 1024];
    for _ in 0..10_000 {
        match within("read to the end", raw.read(&mut scratch)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    s.assert_still_serving().await;
}

#[tokio::test]
async fn a_bayeux_websocket_that_never_reads_is_disconnected() {
    let s = TestServer::with(|http, _| {
        http.write_stall_timeout = Duration::from_millis(300);
        http.body_limit = 1024 * 1024;
    })
    .await;
    let request = format!("ws://{}/cometd", s.addr)
        .into_client_request()
        .unwrap();
    let (mut ws, _) = within(
        "handshake",
        tokio_tungstenite::client_async(request, small_buffered(&s).await),
    )
    .await
    .unwrap();
    let send = async |ws: &mut Ws, batch: Value| {
        within("send", ws.send(Frame::text(batch.to_string())))
            .await
            .unwrap()
    };
    send(
        &mut ws,
        json!([{"channel": "/meta/handshake", "version": "1.0", "id": "h",
                "supportedConnectionTypes": ["websocket"]}]),
    )
    .await;
    let client = ws_json(&mut ws).await[0]["clientId"]
        .as_str()
        .unwrap()
        .to_owned();
    send(
        &mut ws,
        json!([{"channel": "/meta/subscribe", "clientId": client, "subscription": "/deaf/b", "id": "s"},
               {"channel": "/meta/connect", "clientId": client, "connectionType": "websocket", "id": "c"}]),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await[0]["successful"], true);
    s.wait_metric(WEBSOCKETS, 1).await;
    // From here on the client reads nothing.
    let payload = "x".repeat(256 * 1024);
    let mut gone = false;
    for _ in 0..200 {
        s.post("/pub/deaf/b", "text/plain", payload.clone()).await;
        if s.metric(WEBSOCKETS).await == 0 {
            gone = true;
            break;
        }
    }
    if !gone {
        s.wait_metric(WEBSOCKETS, 0).await;
    }
    s.assert_still_serving().await;
}
