//! The real `halley` binary: it starts from flags, serves, and drains on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Generous bound on anything this test waits for; a hang fails instead of blocking CI.
const WAIT: Duration = Duration::from_secs(20);

struct Halley {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Halley {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on a free port and waits for its "serving" log line to learn the address.
fn start(extra: &[&str]) -> Halley {
    let mut child = Command::new(env!("CARGO_BIN_EXE_halley"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
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
    Halley { child, addr }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// Reads until `needle` has been seen; returns everything read.
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

#[test]
fn help_explains_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_halley"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--config",
        "--hold-timeout",
        "--publish-key",
        "--allowed-origins",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help");
    }
    assert!(text.contains("HALLEY_LISTEN"), "env vars are listed");
}

#[test]
fn sigterm_drains_held_streams_and_exits_cleanly() {
    let mut halley = start(&["--drain-timeout", "5"]);
    let mut sse = connect(halley.addr);
    sse.write_all(b"GET /sub/t HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    read_until(&mut sse, "retry:");
    let status = Command::new("kill")
        .args(["-TERM", &halley.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest = read_until(&mut sse, "event: reconnect");
    assert!(rest.contains(r#""event":"reconnect""#), "{rest}");
    // The chunked body ends, then the connection closes.
    let mut tail = Vec::new();
    let _ = sse.read_to_end(&mut tail);
    let (tx, rx) = mpsc::channel();
    let mut child = std::mem::replace(&mut halley.child, Command::new("true").spawn().unwrap());
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let exit = rx
        .recv_timeout(WAIT)
        .expect("halley did not exit after SIGTERM");
    assert!(exit.unwrap().success());
}

#[test]
fn environment_and_flags_configure_the_server() {
    // A publish key from the environment is enforced.
    let mut child = Command::new(env!("CARGO_BIN_EXE_halley"))
        .args(["--listen", "127.0.0.1:0"])
        .env("HALLEY_PUBLISH_KEY", "sekrit")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut halley = Halley {
        child,
        addr: "127.0.0.1:1".parse().unwrap(),
    };
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("listen="))
        .expect("serving line");
    halley.addr = line
        .split("listen=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let publish = |key: &str| {
        let mut s = connect(halley.addr);
        let req = format!(
            "POST /pub/k{key} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(publish("").starts_with("HTTP/1.1 401"));
    assert!(publish("?key=sekrit").starts_with("HTTP/1.1 200"));
}
