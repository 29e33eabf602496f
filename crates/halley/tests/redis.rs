//! The real `halley` binary with `--broker redis://…`: two processes on one redis-server (our
//! own, free port, no persistence) behave as one server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Generous bound on anything this test waits for; a hang fails instead of blocking CI.
const WAIT: Duration = Duration::from_secs(20);

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server(dir: &std::path::Path) -> (Proc, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server not found: install Debian's redis-server (scripts/test does)");
    let until = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), port)
}

/// Starts the binary and waits for its "serving" log line to learn the address.
fn halley(args: &[&str], env: &[(&str, &str)]) -> (Proc, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_halley"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .env("HALLEY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn halley");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listen=").nth(1) {
                let addr: SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(WAIT)
        .expect("halley did not report its address");
    (Proc(child), addr)
}

fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = stream.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

fn request(addr: SocketAddr, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream
}

#[test]
fn two_processes_on_one_redis_behave_as_one_server() {
    let dir = std::env::temp_dir().join(format!("halley-binary-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_redis, port) = redis_server(&dir);
    let url = format!("redis://127.0.0.1:{port}");
    // One configured by flag, one by environment.
    let (_a, a) = halley(&["--broker", &url], &[]);
    let (_b, b) = halley(&[], &[("HALLEY_BROKER", &url)]);

    let mut sse = request(
        b,
        "GET /sub/bin/x HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    );
    read_until(&mut sse, "retry:");
    let mut publish = request(
        a,
        "POST /pub/bin/x HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    let reply = read_until(&mut publish, "}");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let id = reply
        .split(r#""id":""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let event = read_until(&mut sse, "data: hello\n");
    assert!(event.contains(&format!("id: {id}\n")), "{event}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unknown_broker_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_halley"))
        .args(["serve", "--listen", "127.0.0.1:0", "--broker", "kafka://x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("unknown broker"), "{text}");
}
