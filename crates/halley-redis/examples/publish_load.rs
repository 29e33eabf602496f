//! Publish cost for the Sentinel benchmark (`bench/sentinel_cost.py` drives it).
//!
//! `publish_load PORT CONNECTIONS SECONDS` publishes to `/bench/p<i>` on 127.0.0.1:PORT from
//! CONNECTIONS keep-alive connections, each one request after the other, for SECONDS (after
//! one second of warm-up), timing each from the request's first byte to the whole answer.
//! Prints one JSON line: `published` (200s), `refused` (anything else), `per_s`, `p50_us`,
//! `p99_us`, `max_us`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Warm-up before timing: connections made, scripts loaded, caches warm.
const WARM_UP: Duration = Duration::from_secs(1);

/// An answer larger than this is not a publish's (`{"id":…,"subscribers":…}`).
const MAX_ANSWER: usize = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, connections, seconds] = &args[..] else {
        eprintln!("usage: publish_load PORT CONNECTIONS SECONDS");
        std::process::exit(2);
    };
    let port: u16 = port.parse().expect("PORT");
    let connections: usize = connections.parse().expect("CONNECTIONS");
    let seconds: u64 = seconds.parse().expect("SECONDS");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let start = Instant::now() + WARM_UP;
        let end = start + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..connections)
            .map(|i| tokio::spawn(publisher(port, i, start, end)))
            .collect();
        let mut samples = Vec::new();
        let mut refused = 0u64;
        for task in tasks {
            let (s, r) = task.await.expect("publisher");
            samples.extend(s);
            refused += r;
        }
        samples.sort_unstable();
        let pct = |p: f64| {
            samples
                .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "{{\"connections\":{connections},\"seconds\":{seconds},\"published\":{},\"refused\":{refused},\"per_s\":{:.0},\"p50_us\":{},\"p99_us\":{},\"max_us\":{}}}",
            samples.len(),
            samples.len() as f64 / seconds as f64,
            pct(0.50),
            pct(0.99),
            samples.last().copied().unwrap_or(0),
        );
    });
}

/// One connection's loop: latencies (µs) of the 200s inside the timed window, and how many
/// answers were not 200.
async fn publisher(port: u16, index: usize, start: Instant, end: Instant) -> (Vec<u64>, u64) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut samples = Vec::new();
    let mut refused = 0;
    let mut buf = Vec::with_capacity(1024);
    let mut n = 0u64;
    loop {
        let now = Instant::now();
        if now >= end {
            return (samples, refused);
        }
        let body = format!("{{\"n\":{n}}}");
        n += 1;
        let request = format!(
            "POST /pub/bench/p{index} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let ok = read_answer(&mut stream, &mut buf).await;
        let took = now.elapsed();
        if now >= start {
            if ok {
                samples.push(took.as_micros() as u64);
            } else {
                refused += 1;
            }
        }
    }
}

/// Reads one answer (head and `Content-Length` body); true for a 200.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let want = at + 4 + length;
            while buf.len() < want {
                let n = stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "connection closed mid-answer");
                buf.extend_from_slice(&chunk[..n]);
            }
            return head.starts_with("http/1.1 200");
        }
        assert!(buf.len() < MAX_ANSWER, "answer head too large");
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}
