//! `halley-bench floor`: the least a Comet server can do per broadcast on this machine, to
//! compare real servers with. Every `GET` becomes an SSE subscriber (any path); every `POST`
//! body is written as one `data:` event to every subscriber, one `write` per subscriber from a
//! single thread, in a loop, before the publish is answered. No channels, ids, queues,
//! heartbeats or timeouts — so it is a measuring stick, not a server.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The largest request head or body read; the benchmark's are a few hundred bytes.
const MAX_REQUEST: usize = 64 * 1024;

type Subscribers = Arc<Mutex<Vec<std::net::TcpStream>>>;

pub fn run(listen: SocketAddr) -> io::Result<()> {
    // One thread: the floor of a single-threaded event loop.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        eprintln!("floor server on {listen}");
        let subscribers: Subscribers = Arc::new(Mutex::new(Vec::new()));
        loop {
            let (stream, _) = listener.accept().await?;
            let subscribers = subscribers.clone();
            tokio::spawn(async move {
                let _ = serve(stream, subscribers).await;
            });
        }
    })
}

async fn serve(mut stream: TcpStream, subscribers: Subscribers) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > MAX_REQUEST {
                return Err(io::Error::other("request head too large"));
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        if head.starts_with("get ") {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n")
                .await?;
            let stream = stream.into_std()?;
            subscribers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(stream);
            return Ok(());
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if length > MAX_REQUEST {
            return Err(io::Error::other("body too large"));
        }
        while buf.len() < head_end + length {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let mut frame = Vec::with_capacity(length + 8);
        frame.extend_from_slice(b"data: ");
        frame.extend_from_slice(&buf[head_end..head_end + length]);
        frame.extend_from_slice(b"\n\n");
        buf.drain(..head_end + length);
        let delivered = broadcast(&subscribers, &frame);
        let body = format!("{{\"subscribers\":{delivered}}}");
        stream
            .write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                    .as_bytes(),
            )
            .await?;
    }
}

/// Writes `frame` to every subscriber; one that cannot take it whole is dropped.
fn broadcast(subscribers: &Subscribers, frame: &[u8]) -> usize {
    let mut subs = subscribers.lock().unwrap_or_else(|e| e.into_inner());
    subs.retain_mut(|s| matches!(s.write(frame), Ok(n) if n == frame.len()));
    subs.len()
}
