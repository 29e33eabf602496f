//! [`Process`]: the `halley` binary as a node (its own process, its own log), for tests and
//! scripts that need a real process — to kill it, or to read its memory and fds in `/proc`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::Client;
use crate::redis::NODE_WAIT;

/// Log lines kept per process (the newest), for a failing test to show.
const KEPT_LINES: usize = 200;

/// The `halley` binary next to the running test binary (`target/<profile>/halley`), or
/// `$HALLEY_BIN`. Build it first: `cargo build -p halley` (scripts do).
pub fn halley_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HALLEY_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> → target/<profile>/halley
    let profile = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile.join("halley");
    assert!(
        path.exists(),
        "{} not found: build it first (cargo build -p halley), or set HALLEY_BIN",
        path.display()
    );
    path
}

/// What a process wrote to its log.
#[derive(Default)]
struct Log {
    lines: VecDeque<String>,
    /// Lines at level ERROR, or a panic.
    errors: Vec<String>,
}

/// A running `halley serve` (killed on drop). It derefs to its [`Client`].
pub struct Process {
    pub addr: SocketAddr,
    /// The TLS listener's address, when it was started with one (`--tls-listen`).
    pub tls: Option<SocketAddr>,
    child: Child,
    log: Arc<Mutex<Log>>,
    client: Client,
}

impl Deref for Process {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Process {
    /// Starts `halley serve --listen 127.0.0.1:0 <args>` and returns once it logged its address.
    pub async fn start(args: &[&str]) -> Process {
        let mut child = Command::new(halley_binary())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("HALLEY_LOG", "info")
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn halley");
        let log = Arc::new(Mutex::new(Log::default()));
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let kept = log.clone();
        tokio::spawn(async move {
            let (mut stdout, mut stderr) = (Some(stdout), Some(stderr));
            while stdout.is_some() || stderr.is_some() {
                let line = tokio::select! {
                    line = async { stdout.as_mut().unwrap().next_line().await }, if stdout.is_some() => {
                        line.unwrap_or(None).or_else(|| { stdout = None; None })
                    }
                    line = async { stderr.as_mut().unwrap().next_line().await }, if stderr.is_some() => {
                        line.unwrap_or(None).or_else(|| { stderr = None; None })
                    }
                };
                let Some(line) = line else { continue };
                if let Some(rest) = line.split("listen=").nth(1)
                    && let Some(addr) = rest.split_whitespace().next()
                    && let (Some(tx), Ok(addr)) = (tx.take(), addr.parse::<SocketAddr>())
                {
                    // The same line names the TLS listener, when there is one.
                    let tls = line
                        .split(" tls=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|a| a.parse::<SocketAddr>().ok());
                    let _ = tx.send((addr, tls));
                }
                let mut log = kept.lock().unwrap();
                if line.contains("ERROR") || line.contains("panicked") {
                    log.errors.push(line.clone());
                }
                if log.lines.len() == KEPT_LINES {
                    log.lines.pop_front();
                }
                log.lines.push_back(line);
            }
        });
        let (addr, tls) = match tokio::time::timeout(NODE_WAIT, rx).await {
            Ok(Ok(addrs)) => addrs,
            _ => panic!(
                "halley did not report its address; its log:\n{}",
                log.lock()
                    .unwrap()
                    .lines
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        };
        Process {
            addr,
            tls,
            child,
            log,
            client: Client {
                addr,
                wait: NODE_WAIT,
            },
        }
    }

    /// The process id (for `/proc/<pid>/…`).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills it at once (SIGKILL, a crash) and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Lines it logged at level ERROR, and panics.
    pub fn errors(&self) -> Vec<String> {
        self.log.lock().unwrap().errors.clone()
    }

    /// Waits (at most `WAIT`) until it logged a line containing `needle` (among the newest
    /// lines kept); returns that line.
    pub async fn wait_log(&self, needle: &str) -> String {
        crate::eventually(
            crate::WAIT,
            &format!("halley to log {needle:?}"),
            || async { self.recent_log().into_iter().find(|l| l.contains(needle)) },
        )
        .await
    }

    /// Sends it a signal by name (`HUP`, `TERM`) with kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("the process is running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// The newest lines of its log.
    pub fn recent_log(&self) -> Vec<String> {
        self.log.lock().unwrap().lines.iter().cloned().collect()
    }
}
