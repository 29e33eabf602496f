//! [`TestServer`]: one in-process Halley server (memory broker) on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use halley_engine::access::{AccessConfig, Policy};
use halley_engine::bayeux::{Bayeux, BayeuxConfig, NoServices, PolicyOnly};
use halley_engine::{Engine, EngineConfig};
use halley_http::{HttpConfig, Server};
use http_body_util::Full;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Client, Reply};

/// The test defaults: an ephemeral port, connects held 300 ms, a 3 s drain.
fn test_http() -> HttpConfig {
    HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        hold_timeout: Duration::from_millis(300),
        drain_timeout: Duration::from_secs(3),
        ..HttpConfig::default()
    }
}

/// A running server; dropping it starts the graceful drain. It derefs to its [`Client`].
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    /// The task running `Server::run`; it completes once the drain is over.
    pub done: Option<JoinHandle<()>>,
    /// The configured publish key, which [`TestServer::publish`] sends.
    pub key: Option<String>,
    /// The TLS listener's address, when the server has one ([`TestServer::with_tls`]).
    pub tls_addr: Option<SocketAddr>,
    /// Its certificate, to reload.
    pub tls: Option<halley_http::Tls>,
    client: Client,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Deref for TestServer {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl TestServer {
    /// A server with test-sized timeouts (hold 300 ms) and otherwise default budgets.
    pub async fn start() -> TestServer {
        TestServer::with(|_, _| {}).await
    }

    /// A server whose configuration `tweak` adjusts after the test defaults are applied.
    pub async fn with(tweak: impl FnOnce(&mut HttpConfig, &mut EngineConfig)) -> TestServer {
        let mut http = test_http();
        let mut engine = EngineConfig::default();
        tweak(&mut http, &mut engine);
        let server = Server::bind(http, Engine::in_memory(engine)).await.unwrap();
        TestServer::launch(server, None)
    }

    /// A server with only a publish key configured (every publish needs it).
    pub async fn with_key(key: &str) -> TestServer {
        TestServer::with_access(AccessConfig {
            publish_key: Some(key.into()),
            ..AccessConfig::default()
        })
        .await
    }

    /// A server whose engine asks the policy built from `access`.
    pub async fn with_access(access: AccessConfig) -> TestServer {
        let key = access.publish_key.clone();
        let policy = Policy::new(access).expect("a valid access configuration");
        TestServer::with_policy(policy, key, |_| {}).await
    }

    /// A server whose engine asks `policy` (a clone of which the test may keep, to revoke);
    /// `key` is the backend key [`TestServer::publish`] sends.
    pub async fn with_policy(
        policy: Policy,
        key: Option<String>,
        tweak: impl FnOnce(&mut HttpConfig),
    ) -> TestServer {
        let mut http = test_http();
        tweak(&mut http);
        let engine = Engine::in_memory(EngineConfig::default());
        assert!(engine.set_policy(policy).is_ok());
        let server = Server::bind(http, engine).await.unwrap();
        TestServer::launch(server, key)
    }

    /// A server on `engine` (the test set its policy, grace…), with `key` the backend key
    /// [`TestServer::publish`] sends and `tweak` applied to the test defaults.
    pub async fn with_engine(
        engine: Engine,
        key: Option<String>,
        tweak: impl FnOnce(&mut HttpConfig),
    ) -> TestServer {
        let mut http = test_http();
        tweak(&mut http);
        let server = Server::bind(http, engine).await.unwrap();
        TestServer::launch(server, key)
    }

    /// A server whose members stay present for `grace` after their last connection closed.
    pub async fn with_presence_grace(grace: std::time::Duration) -> TestServer {
        let http = test_http();
        let engine = Engine::in_memory(EngineConfig::default());
        engine.set_presence_grace(grace);
        let server = Server::bind(http, engine).await.unwrap();
        TestServer::launch(server, None)
    }

    /// A server with its own Bayeux configuration. `tweak` gets the test defaults, with the
    /// Bayeux connect timeout equal to the hold timeout as [`Server::bind`] sets it; a tweak
    /// that changes one should change the other.
    pub async fn with_bayeux(
        tweak: impl FnOnce(&mut HttpConfig, &mut EngineConfig, &mut BayeuxConfig),
    ) -> TestServer {
        let mut http = test_http();
        let mut engine = EngineConfig::default();
        let mut bayeux = BayeuxConfig {
            timeout: http.hold_timeout,
            ..BayeuxConfig::default()
        };
        tweak(&mut http, &mut engine, &mut bayeux);
        let engine = Engine::in_memory(engine);
        let bayeux = Bayeux::spawn(
            engine.clone(),
            bayeux,
            Arc::new(PolicyOnly),
            Arc::new(NoServices),
        );
        let server = Server::bind_with(http, engine, bayeux).await.unwrap();
        TestServer::launch(server, None)
    }

    /// A server with a TLS listener too (on `127.0.0.1:0`), presenting the certificate
    /// installed at `ca`'s paths ([`crate::tls::TestCa::install`]).
    pub async fn with_tls(ca: &crate::tls::TestCa) -> TestServer {
        let (cert, key) = ca.paths();
        TestServer::with(|http, _| {
            http.tls = Some(halley_http::TlsConfig {
                listen: Some("127.0.0.1:0".parse().unwrap()),
                cert,
                key,
            });
        })
        .await
    }

    fn launch(server: Server, key: Option<String>) -> TestServer {
        let addr = server.local_addr();
        let tls_addr = server.tls_addr();
        let tls = server.tls();
        let shutdown = server.shutdown_token();
        let done = Some(tokio::spawn(server.run()));
        TestServer {
            addr,
            shutdown,
            done,
            key,
            tls_addr,
            tls,
            client: Client::new(addr),
        }
    }

    /// Publishes a text body to `channel` (with the publish key, if one is configured) and
    /// returns the new message's id.
    pub async fn publish(&self, channel: &str, text: &str) -> String {
        self.publish_as(channel, "text/plain", text).await
    }

    /// Publishes a JSON body to `channel` and returns the new message's id.
    pub async fn publish_json(&self, channel: &str, json: &str) -> String {
        self.publish_as(channel, "application/json", json).await
    }

    async fn publish_as(&self, channel: &str, content_type: &str, body: &str) -> String {
        let mut request = self
            .request("POST", &format!("/pub{channel}"))
            .header("content-type", content_type);
        if let Some(key) = &self.key {
            request = request.header("x-halley-key", key);
        }
        let reply = self
            .send(
                request
                    .body(Full::new(Bytes::from(body.to_owned())))
                    .unwrap(),
            )
            .await;
        reply.expect_published(channel)
    }

    /// A request that is refused must leave the server serving: checks a publish still works.
    pub async fn assert_still_serving(&self) {
        let reply = self.get("/healthz").await;
        assert_eq!(reply.status, 200, "server stopped serving: {}", reply.body);
        self.publish("/still/serving", "yes").await;
    }
}

/// POSTs a Bayeux batch to `/cometd` (long-polling) and returns the replies.
pub async fn bayeux(s: &Client, batch: Value) -> Vec<Value> {
    let reply: Reply = s
        .post("/cometd", "application/json", batch.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}

/// The reply to a long-polling Bayeux handshake with `ext`.
pub async fn bayeux_handshake(s: &Client, ext: Value) -> Value {
    let replies = bayeux(
        s,
        serde_json::json!([{"channel": "/meta/handshake", "version": "1.0",
                "supportedConnectionTypes": ["long-polling"], "id": "h", "ext": ext}]),
    )
    .await;
    replies[0].clone()
}

/// A long-polling Bayeux session opened with `ext`: its clientId.
pub async fn bayeux_client(s: &Client, ext: Value) -> String {
    let reply = bayeux_handshake(s, ext).await;
    assert_eq!(reply["successful"], true, "{reply}");
    reply["clientId"].as_str().unwrap().to_string()
}
