//! [`Sentinels`]: a Redis master, its replicas and three Redis Sentinels of the test's own (free
//! ports on 127.0.0.1, temp dirs, no persistence, every process killed on drop), so that a test
//! can kill the master and watch the nodes follow the failover.

use std::time::Duration;

use crate::eventually;
use crate::redis::{MASTER_NAME, NODE_WAIT, Redis, Role, command_at};

/// Sentinels started: a failover needs a majority of them (quorum 2 of 3).
const SENTINELS: usize = 3;

/// How long a failover may take: the master is called down after `DOWN_AFTER` (1 s), then the
/// sentinels elect a leader (a round may fail on a split vote and is retried after
/// `FAILOVER_TIMEOUT`) and promote a replica.
pub const FAILOVER_WAIT: Duration = Duration::from_secs(30);

/// A master, its replicas and three sentinels (quorum 2).
pub struct Sentinels {
    /// Every data server started, the first one the initial master. Killed ones stay (down).
    pub servers: Vec<Redis>,
    sentinels: Vec<Redis>,
}

impl Sentinels {
    /// Starts a master, `replicas` replicas of it and three sentinels; returns once every
    /// replica is in sync and every sentinel knows the replicas and the other sentinels (so a
    /// failover can happen).
    pub async fn start(replicas: usize) -> Sentinels {
        let master = Redis::start().await;
        let port = master.port;
        let mut servers = vec![master];
        for _ in 0..replicas {
            servers.push(Redis::start_as(Role::ReplicaOf(port)).await);
        }
        let mut sentinels = Vec::new();
        for _ in 0..SENTINELS {
            sentinels.push(Redis::start_as(Role::Sentinel { master: port }).await);
        }
        let set = Sentinels { servers, sentinels };
        eventually(NODE_WAIT, "replicas in sync", || async {
            let info = command_at(port, &["INFO", "replication"]).await;
            (info.matches("state=online").count() == replicas).then_some(())
        })
        .await;
        for sentinel in &set.sentinels {
            eventually(
                NODE_WAIT * 3,
                "sentinels know the replicas and each other",
                || async {
                    let fields =
                        bulk(&sentinel.command(&["SENTINEL", "MASTER", MASTER_NAME]).await);
                    let field = |name: &str| {
                        fields
                            .iter()
                            .position(|f| f == name)
                            .and_then(|i| fields.get(i + 1))
                            .and_then(|v| v.parse::<usize>().ok())
                    };
                    (field("num-slaves") == Some(replicas)
                        && field("num-other-sentinels") == Some(SENTINELS - 1))
                    .then_some(())
                },
            )
            .await;
        }
        set
    }

    /// `redis+sentinel://` with every sentinel, for the master they watch.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The port of the server the sentinels call master now.
    pub async fn master_port(&self) -> Option<u16> {
        for sentinel in &self.sentinels {
            let reply = sentinel
                .command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
                .await;
            if let Some(port) = bulk(&reply).get(1).and_then(|p| p.parse().ok()) {
                return Some(port);
            }
        }
        None
    }

    /// The running server on `port`.
    pub fn server(&self, port: u16) -> &Redis {
        self.servers
            .iter()
            .find(|s| s.port == port && s.is_up())
            .unwrap_or_else(|| panic!("no running server on port {port}"))
    }

    /// The ports of the running servers the sentinels do not call master.
    pub async fn replicas(&self) -> Vec<u16> {
        let master = self.master_port().await;
        self.servers
            .iter()
            .filter(|s| s.is_up() && Some(s.port) != master)
            .map(|s| s.port)
            .collect()
    }

    /// Makes the replicas miss what the master writes from now on: pauses them (SIGSTOP),
    /// then has the master close its links to them, so nothing more reaches even their
    /// sockets (a paused replica still reads what its kernel buffered once resumed). What the
    /// master writes next is in its backlog only — gone with it if it dies. Returns the
    /// replicas' ports, for [`Sentinels::resume_replicas`].
    pub async fn partition_replicas(&self) -> Vec<u16> {
        let replicas = self.replicas().await;
        for port in &replicas {
            self.server(*port).pause();
        }
        let master = self
            .master_port()
            .await
            .expect("the sentinels name a master");
        let reply = command_at(master, &["CLIENT", "KILL", "TYPE", "replica"]).await;
        assert_eq!(
            reply,
            format!(":{}\r\n", replicas.len()),
            "the master's replica links closed"
        );
        replicas
    }

    /// Lets paused replicas run again.
    pub fn resume_replicas(&self, replicas: &[u16]) {
        for port in replicas {
            self.server(*port).resume();
        }
    }

    /// Kills the current master (SIGKILL, like a crash) and returns its port.
    pub async fn kill_master(&mut self) -> u16 {
        let port = self
            .master_port()
            .await
            .expect("the sentinels name a master");
        let server = self
            .servers
            .iter_mut()
            .find(|s| s.port == port)
            .expect("the master is one of ours");
        server.kill();
        port
    }

    /// Asks a sentinel for a graceful failover (`SENTINEL FAILOVER`: a replica is promoted and
    /// the master, alive, becomes its replica); returns the old master's port.
    pub async fn switchover(&self) -> u16 {
        let port = self
            .master_port()
            .await
            .expect("the sentinels name a master");
        let reply = self.sentinels[0]
            .command(&["SENTINEL", "FAILOVER", MASTER_NAME])
            .await;
        assert_eq!(reply, "+OK\r\n", "SENTINEL FAILOVER");
        port
    }

    /// Waits until the sentinels name another master than the one on `old`, and it says it is
    /// one; returns its port.
    pub async fn failed_over(&self, old: u16) -> u16 {
        eventually(FAILOVER_WAIT, "the sentinels promote a replica", || async {
            let port = self.master_port().await.filter(|p| *p != old)?;
            let info = command_at(port, &["INFO", "replication"]).await;
            info.contains("role:master").then_some(port)
        })
        .await
    }
}

/// The bulk strings of a RESP reply, flattened (enough for `SENTINEL`'s flat arrays).
fn bulk(reply: &str) -> Vec<String> {
    reply
        .split("\r\n")
        .filter(|line| !line.is_empty() && !line.starts_with(['*', '$', ':']))
        .map(str::to_owned)
        .collect()
}
