//! Load generator for the Redis scale-out benchmark (`bench/redis_broadcast.py` drives it).
//!
//! `broadcast subscribe PORT N SOURCE COUNT OUT [WAIT_S]` holds N SSE subscribers of
//! `/bench/all` on 127.0.0.1:PORT (from source address SOURCE, so that several generators do
//! not share one ephemeral port range), prints `ready N` once every response head has arrived,
//! then records for each received message its delivery latency (now minus the publish time in
//! the data, in µs) until every subscriber has COUNT messages or WAIT_S seconds (default 180)
//! have passed since it connected, and writes the latencies to OUT, one per line.
//!
//! `broadcast publish PORT COUNT INTERVAL_MS` publishes COUNT messages whose data is the wall
//! clock in µs, one every INTERVAL_MS.
//!
//! One process holds at most ~19,900 sockets here (the fd limit), hence one generator per node.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// Connections being opened at once: more only overflows the listen backlog.
const CONNECT_CONCURRENCY: usize = 256;
/// How long a subscriber waits, from its connection, for all messages before giving up,
/// unless told otherwise.
const RECEIVE_DEADLINE: Duration = Duration::from_secs(180);
/// Read buffer per subscriber: a response head and a few events. Small, because a run of
/// `bench/million` holds a million of them (~20,000 per process).
const CHUNK: usize = 1024;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("subscribe") if args.len() == 6 || args.len() == 7 => runtime.block_on(subscribe(
            args[1].parse().expect("port"),
            args[2].parse().expect("n"),
            args[3].parse().expect("source address"),
            args[4].parse().expect("count"),
            args[5].clone(),
            args.get(6).map_or(RECEIVE_DEADLINE, |s| {
                Duration::from_secs(s.parse().expect("wait seconds"))
            }),
        )),
        Some("publish") if args.len() == 4 => runtime.block_on(publish(
            args[1].parse().expect("port"),
            args[2].parse().expect("count"),
            args[3].parse().expect("interval"),
        )),
        _ => {
            eprintln!(
                "usage: broadcast subscribe PORT N SOURCE COUNT OUT [WAIT_S] | publish PORT COUNT INTERVAL_MS"
            );
            std::process::exit(2);
        }
    }
}

/// First local port a generator binds on its own source address: subscriber `k` takes
/// `FIRST_PORT + k`, so that the kernel never searches for a free one. Letting it choose (port 0)
/// after `bind` scans the address's ports on every connect: at ~400,000 connections across 52
/// generators that scan took 94% of both cores (`bench/million`, 2026-12-03) and connects all
/// but stopped.
const FIRST_PORT: u16 = 20_000;

async fn connect(port: u16, source: std::net::IpAddr, k: usize) -> TcpStream {
    let local = u16::try_from(k)
        .ok()
        .and_then(|k| FIRST_PORT.checked_add(k))
        .unwrap_or(0);
    let socket = TcpSocket::new_v4().expect("socket");
    // The previous run's connections linger in TIME_WAIT on the same source address; without
    // this, binding runs out of ports.
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    if socket
        .bind(std::net::SocketAddr::new(source, local))
        .is_err()
    {
        // Taken (by another process on this address): let the kernel choose.
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(std::net::SocketAddr::new(source, 0))
            .expect("bind source");
        return socket
            .connect(([127, 0, 0, 1], port).into())
            .await
            .expect("connect");
    }
    socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect")
}

async fn subscribe(
    port: u16,
    n: usize,
    source: std::net::IpAddr,
    count: usize,
    out: String,
    wait: Duration,
) {
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let ready = Arc::new(AtomicUsize::new(0));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n.max(1));
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        let gate = gate.clone();
        let ready = ready.clone();
        let ready_tx = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("gate");
            let mut stream = connect(port, source, k).await;
            stream
                .write_all(
                    b"GET /sub/bench/all HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n",
                )
                .await
                .expect("request");
            let mut buf = Vec::with_capacity(256);
            let mut chunk = [0u8; CHUNK];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let k = stream.read(&mut chunk).await.expect("read head");
                assert!(k > 0, "closed before the response head");
                buf.extend_from_slice(&chunk[..k]);
            }
            assert!(buf.starts_with(b"HTTP/1.1 200"), "subscribe refused");
            drop(permit);
            ready.fetch_add(1, Ordering::Relaxed);
            let _ = ready_tx.send(()).await;
            drop(ready_tx);
            buf.clear();
            buf.shrink_to_fit();
            let mut latencies = Vec::with_capacity(count);
            let deadline = tokio::time::Instant::now() + wait;
            while latencies.len() < count {
                let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
                let k = match read {
                    Ok(Ok(k)) if k > 0 => k,
                    _ => break,
                };
                buf.extend_from_slice(&chunk[..k]);
                let now = now_us();
                // Every event's data is one line of digits; chunk framing never splits an event.
                let mut start = 0;
                while let Some(at) = find(&buf[start..], b"data: ") {
                    let from = start + at + 6;
                    let Some(len) = buf[from..].iter().position(|&b| b == b'\n') else {
                        break;
                    };
                    if let Some(sent) = std::str::from_utf8(&buf[from..from + len])
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        latencies.push(now.saturating_sub(sent));
                    }
                    start = from + len;
                }
                buf.drain(..start);
            }
            // Kept open until every subscriber is done: closing here would have the nodes
            // handle disconnects while they are still writing the broadcast to the others.
            (latencies, stream)
        }));
    }
    drop(ready_tx);
    for _ in 0..n {
        ready_rx.recv().await.expect("subscriber failed");
    }
    println!("ready {}", ready.load(Ordering::Relaxed));
    let mut all = Vec::with_capacity(n * count);
    let mut open = Vec::with_capacity(n);
    for task in tasks {
        let (latencies, stream) = task.await.expect("subscriber panicked");
        all.extend(latencies);
        open.push(stream);
    }
    let text: String = all.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&out, text).expect("write results");
    println!("done {}", all.len());
    drop(open);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn publish(port: u16, count: usize, interval_ms: u64) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    let mut chunk = [0u8; 4096];
    for _ in 0..count {
        tick.tick().await;
        let body = now_us().to_string();
        let request = format!(
            "POST /pub/bench/all HTTP/1.1\r\nHost: bench\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("publish");
        let mut reply = Vec::new();
        // The reply is small: a head and a JSON object ending in '}'.
        while !reply.ends_with(b"}") {
            let k = stream.read(&mut chunk).await.expect("publish reply");
            assert!(k > 0, "publisher connection closed");
            reply.extend_from_slice(&chunk[..k]);
        }
        assert!(reply.starts_with(b"HTTP/1.1 200"), "publish refused");
    }
    println!("published {count}");
}
