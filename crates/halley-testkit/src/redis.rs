//! Scale-out: [`Redis`], a `redis-server` of the test's own (free port, no persistence, temp
//! dir, killed on drop), and what a [`crate::Node`]
//! on it is configured with.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use halley_redis::RedisConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{POLL, within_for};

/// How long a step against a node or Redis may take: longer than a single server's
/// [`crate::WAIT`], as a message crosses Redis and the nodes share two cores with it.
pub const NODE_WAIT: Duration = Duration::from_secs(10);

/// A redis-server of this test's own.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    role: Role,
}

/// What a [`Redis`] process is: a master, a replica of the server on a port, or a sentinel
/// watching the master on a port (see [`crate::Sentinels`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Role {
    Master,
    ReplicaOf(u16),
    Sentinel { master: u16 },
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Redis {
    /// Starts redis-server on a free port without persistence and waits until it answers.
    pub async fn start() -> Redis {
        Redis::start_as(Role::Master).await
    }

    pub(crate) async fn start_as(role: Role) -> Redis {
        let dir = std::env::temp_dir().join(format!(
            "halley-redis-test-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // Another process may take the port between our probe and redis binding it; then
        // redis exits and we try another port.
        let mut redis = Redis {
            child: None,
            port: 0,
            dir,
            role,
        };
        for _ in 0..10 {
            redis.port = free_port();
            if redis.spawn().await {
                return redis;
            }
        }
        panic!("could not start redis-server");
    }

    async fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        if let Role::Sentinel { master } = self.role {
            // A sentinel rewrites its file (what it learns of replicas and other sentinels).
            let conf = self.dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} {}\n\
                     sentinel failover-timeout {MASTER_NAME} {}\n\
                     sentinel parallel-syncs {MASTER_NAME} 2\n",
                    self.port,
                    self.dir.display(),
                    DOWN_AFTER.as_millis(),
                    FAILOVER_TIMEOUT.as_millis(),
                ),
            )
            .unwrap();
            command.arg(&conf).arg("--sentinel");
        } else {
            command
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                // A replica's first sync starts at once, not after the default 5 s wait for
                // more replicas.
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(&self.dir);
            if let Role::ReplicaOf(master) = self.role {
                command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
            }
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: install Debian's redis-server (scripts/test does)");
        self.child = Some(child);
        let until = tokio::time::Instant::now() + NODE_WAIT;
        while tokio::time::Instant::now() < until {
            if let Some(Ok(Some(_exited))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if self.ping().await {
                return true;
            }
            tokio::time::sleep(POLL).await;
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    async fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
            Ok(Ok(_)) if &buf == b"+PONG\r\n"
        )
    }

    /// Sends one command (RESP array of bulk strings) and returns the raw reply.
    pub async fn command(&self, args: &[&str]) -> String {
        command_at(self.port, args).await
    }

    /// Stops the process (SIGSTOP): it keeps its connections but answers nothing — a replica
    /// so paused falls behind its master.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Whether the process is running (not killed).
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }
}

/// Sends one command to the server on `port` and returns the raw reply.
pub(crate) async fn command_at(port: u16, args: &[&str]) -> String {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let mut s = within_for(
        NODE_WAIT,
        "redis connect",
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    within_for(NODE_WAIT, "redis reply", s.read_to_string(&mut reply))
        .await
        .unwrap();
    reply
}

impl Redis {
    /// Closes the Redis connections of one node (as a network blip would), leaving the rest.
    pub async fn disconnect(&self, node: u64) {
        let list = self.command(&["CLIENT", "LIST"]).await;
        let name = format!("name=halley-{node:x}-");
        let ids: Vec<&str> = list
            .lines()
            .filter(|line| line.contains(&name))
            .filter_map(|line| line.strip_prefix("id=")?.split(' ').next())
            .collect();
        assert!(!ids.is_empty(), "no connections of node {node:x} in {list}");
        for id in ids {
            self.command(&["CLIENT", "KILL", "ID", id]).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills redis-server (SIGKILL, like a crash; there is no persistence to lose anyway).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn start_again(&mut self) {
        assert!(self.spawn().await, "redis-server did not restart");
    }
}

/// The master's name the sentinels of [`crate::Sentinels`] watch.
pub const MASTER_NAME: &str = "halley";

/// How long a sentinel waits for an unanswering master before it calls it down: short, so
/// that a failover test takes seconds.
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);

/// Sentinel's `failover-timeout`: how soon a failed failover is tried again (and how long
/// replicas are given to follow the new master).
pub const FAILOVER_TIMEOUT: Duration = Duration::from_millis(3000);

/// A port nobody listens on now (another process may take it before the caller binds it).
pub(crate) fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// The broker settings of the tests: presence refreshed every 100 ms, expiring after 1 s.
pub fn redis_config(url: &str) -> RedisConfig {
    let mut config = RedisConfig::new(url);
    config.presence_interval = Duration::from_millis(100);
    config.presence_ttl = Duration::from_secs(1);
    config.sweep_interval = Duration::from_secs(1);
    config
}
