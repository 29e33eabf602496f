//! Scale-out on NATS: [`Nats`], one or three `nats-server -js` processes of the test's own
//! (free ports, a cluster block, their own temp store dirs, killed on drop). [`crate::Node`]
//! runs a Halley server on them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use serde_json::Value;

use crate::POLL;
use crate::redis::{NODE_WAIT, free_port};

/// One nats-server of a [`Nats`] cluster.
struct Server1 {
    child: Option<Child>,
    port: u16,
    cluster_port: u16,
    name: String,
    dir: PathBuf,
}

/// `nats-server -js` processes of this test's own: one alone, or a cluster of three.
pub struct Nats {
    servers: Vec<Server1>,
    dir: PathBuf,
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nats {
    /// One server with JetStream, ready.
    pub async fn single() -> Nats {
        Nats::start(1, true).await
    }

    /// Three clustered servers with JetStream, ready (a meta leader is elected).
    pub async fn cluster() -> Nats {
        Nats::start(3, true).await
    }

    /// Three clustered servers just spawned: not waited for, so that nodes meet the cluster
    /// while it forms (and a port taken meanwhile is not noticed).
    pub async fn cluster_starting() -> Nats {
        Nats::start(3, false).await
    }

    async fn start(n: usize, ready: bool) -> Nats {
        let dir = std::env::temp_dir().join(format!(
            "halley-nats-test-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // Another process may take a port between our probe and the server binding it; then
        // that server exits, and the whole set starts again on other ports.
        for _ in 0..5 {
            let mut ports = std::collections::HashSet::new();
            while ports.len() < 2 * n {
                ports.insert(free_port());
            }
            let mut ports = ports.into_iter();
            let servers = (0..n)
                .map(|i| Server1 {
                    child: None,
                    port: ports.next().unwrap(),
                    cluster_port: ports.next().unwrap(),
                    name: format!("n{i}"),
                    dir: dir.join(format!("n{i}")),
                })
                .collect();
            let mut nats = Nats {
                servers,
                dir: dir.clone(),
            };
            for i in 0..n {
                nats.spawn(i);
            }
            if !ready || nats.wait_ready().await {
                return nats;
            }
            // Dropping the set kills its servers and removes the dir: made again for the next.
            drop(nats);
            std::fs::create_dir_all(&dir).unwrap();
        }
        panic!("could not start nats-server");
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.cluster_port))
            .collect();
        let clustered = self.servers.len() > 1;
        let s = &mut self.servers[i];
        let mut command = Command::new("nats-server");
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &s.port.to_string()])
            .args(["--server_name", &s.name])
            .arg("-sd")
            .arg(&s.dir);
        if clustered {
            command
                .args(["--cluster_name", "halley-test"])
                .args(["--cluster", &format!("nats://127.0.0.1:{}", s.cluster_port)])
                .args(["--routes", &routes.join(",")]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server not found: install Debian's nats-server (scripts/test does)");
        s.child = Some(child);
    }

    /// Waits until JetStream answers through every running server (with a cluster: a meta
    /// leader is elected); false if a server exited (its port was taken).
    async fn wait_ready(&mut self) -> bool {
        let until = tokio::time::Instant::now() + 3 * NODE_WAIT;
        for i in 0..self.servers.len() {
            if self.servers[i].child.is_none() {
                continue;
            }
            let port = self.servers[i].port;
            loop {
                assert!(
                    tokio::time::Instant::now() < until,
                    "nats-server on port {port} did not get JetStream ready"
                );
                if let Some(Ok(Some(status))) = self.servers[i].child.as_mut().map(|c| c.try_wait())
                {
                    // Most likely another process took one of its ports first.
                    eprintln!("nats-server on port {port} exited: {status}");
                    return false;
                }
                if js_ready(port).await {
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
        }
        true
    }

    /// `nats://127.0.0.1:p1,127.0.0.1:p2,…`: every server.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("nats://{}", hosts.join(","))
    }

    /// The address of server `i` alone.
    pub fn url_of(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].port)
    }

    /// How many servers there are.
    pub fn servers(&self) -> usize {
        self.servers.len()
    }

    /// Whether server `i` runs.
    pub fn is_up(&self, i: usize) -> bool {
        self.servers[i].child.is_some()
    }

    /// Kills server `i` (SIGKILL, like a crash; its store dir stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts server `i` again on its ports and store, and waits until JetStream is ready.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        assert!(self.wait_ready().await, "nats-server {i} did not restart");
    }

    /// Starts server `i` again on its ports with an empty store (its old one removed), as a
    /// replacement machine would join: it catches up from the stream's leader.
    pub async fn restart_empty(&mut self, i: usize) {
        assert!(self.servers[i].child.is_none(), "server {i} is running");
        let _ = std::fs::remove_dir_all(&self.servers[i].dir);
        self.restart(i).await;
    }

    /// Kills every server, keeping their stores.
    pub fn kill_all(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }

    /// Starts every killed server again and waits until JetStream is ready.
    pub async fn restart_all(&mut self) {
        for i in 0..self.servers.len() {
            if self.servers[i].child.is_none() {
                self.spawn(i);
            }
        }
        assert!(self.wait_ready().await, "nats-servers did not restart");
    }

    /// Deletes Halley's stream (as a cluster that lost its storage would have it).
    pub async fn delete_stream(&self, name: &str) {
        let client = async_nats::connect(self.url_of(self.running()))
            .await
            .unwrap();
        async_nats::jetstream::new(client)
            .delete_stream(name)
            .await
            .unwrap();
    }

    /// The replicas of stream `name` (its configuration, as the server reports it).
    pub async fn stream_replicas(&self, name: &str) -> u64 {
        let client = async_nats::connect(self.url_of(self.running()))
            .await
            .unwrap();
        let reply = client
            .request(format!("$JS.API.STREAM.INFO.{name}"), Bytes::new())
            .await
            .unwrap();
        let info: Value = serde_json::from_slice(&reply.payload).unwrap();
        info["config"]["num_replicas"].as_u64().unwrap_or(0)
    }

    /// Which server (its index) leads stream `name` now.
    pub async fn stream_leader(&self, name: &str) -> usize {
        let client = async_nats::connect(self.url_of(self.running()))
            .await
            .unwrap();
        let leader = crate::eventually(NODE_WAIT, "the stream to have a leader", || async {
            let reply = client
                .request(format!("$JS.API.STREAM.INFO.{name}"), Bytes::new())
                .await
                .ok()?;
            let info: Value = serde_json::from_slice(&reply.payload).ok()?;
            info["cluster"]["leader"].as_str().map(str::to_owned)
        })
        .await;
        self.servers
            .iter()
            .position(|s| s.name == leader)
            .unwrap_or_else(|| panic!("the leader {leader} is not one of ours"))
    }

    /// Waits until stream `name` has a leader and every replica says it is current (caught
    /// up with the leader), as `nats stream info` shows it.
    pub async fn wait_current(&self, name: &str) {
        let client = async_nats::connect(self.url_of(self.running()))
            .await
            .unwrap();
        crate::eventually(3 * NODE_WAIT, "every replica current", || async {
            let reply = client
                .request(format!("$JS.API.STREAM.INFO.{name}"), Bytes::new())
                .await
                .ok()?;
            let info: Value = serde_json::from_slice(&reply.payload).ok()?;
            let cluster = &info["cluster"];
            cluster["leader"].as_str()?;
            let replicas = cluster["replicas"].as_array()?;
            (replicas.len() + 1 == self.servers.len()
                && replicas
                    .iter()
                    .all(|r| r["current"] == true && r["offline"] != true))
            .then_some(())
        })
        .await;
    }

    fn running(&self) -> usize {
        self.servers.iter().position(|s| s.child.is_some()).unwrap()
    }
}

/// Whether JetStream answers an account request through the server on `port`.
async fn js_ready(port: u16) -> bool {
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(std::time::Duration::from_millis(500))
        .connect(format!("nats://127.0.0.1:{port}"));
    let Ok(Ok(client)) = tokio::time::timeout(std::time::Duration::from_secs(1), connect).await
    else {
        return false;
    };
    // The raw request: async-nats's account type does not read a 2.9 server's answer.
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        client.request("$JS.API.INFO", Bytes::new()),
    )
    .await;
    let Ok(Ok(reply)) = reply else {
        return false;
    };
    serde_json::from_slice::<Value>(&reply.payload)
        .is_ok_and(|v| v.get("error").is_none() && v.get("memory").is_some())
}
