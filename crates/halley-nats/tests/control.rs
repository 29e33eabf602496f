//! The control API across nodes on a real NATS cluster: the application calls one node and a
//! user connected to another is listed and disconnected there; a revocation also holds on a
//! node that starts afterwards.

mod common;

use std::time::Duration;

use common::{Nats, NatsNode, Sse, WAIT, eventually, within, ws_json};
use futures_util::StreamExt;
use halley_engine::access::{
    AccessConfig, MintClaims, NamespaceConfig, Policy, PublishRule, SubscribeRule, TokenConfig,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

const KEY: &str = "backend-key";
const SECRET: &str = "test-secret-of-32-bytes-or-more!";

/// Every node's policy: `/chat/**` needs a token; the backend key is `KEY`.
fn policy() -> Policy {
    let mut chat = NamespaceConfig::new("/chat/**");
    chat.subscribe = SubscribeRule::Token;
    chat.publish = PublishRule::Backend;
    Policy::new(AccessConfig {
        publish_key: Some(KEY.into()),
        tokens: TokenConfig {
            hs256_secret: Some(SECRET.into()),
            ..TokenConfig::default()
        },
        namespaces: vec![chat],
        app: None,
    })
    .unwrap()
}

fn token(user: &str) -> String {
    policy()
        .mint(&MintClaims {
            sub: Some(user.into()),
            channels: vec!["/chat/**".into()],
            ttl: Some(Duration::from_secs(3600)),
            ..MintClaims::default()
        })
        .unwrap()
}

async fn control(node: &NatsNode, path: &str, body: Value) -> (u16, Value) {
    let reply = node
        .post(&format!("{path}?key={KEY}"), &body.to_string())
        .await;
    (reply.status.as_u16(), reply.json())
}

async fn listing(node: &NatsNode, user: &str) -> Value {
    let reply = node
        .get(&format!("/api/control/user?user={user}&key={KEY}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// Waits until `node` knows `n` other nodes (their presence), as a listing reports them.
async fn wait_for_others(node: &NatsNode, n: u64) {
    eventually(WAIT, "the other nodes' presence", || async {
        (listing(node, "nobody").await["nodes"]["others"] == n).then_some(())
    })
    .await;
}

/// An SSE subscriber with `token` (the stream is open once this returns).
async fn sse(node: &NatsNode, path: &str, token: &str) -> Sse {
    let mut open = node
        .stream(
            &format!("{path}&token={token}"),
            &[("accept", "text/event-stream")],
        )
        .await;
    open.until("retry: ").await;
    open.until("\n\n").await;
    Sse { open }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_on_one_node_disconnects_a_user_on_another() {
    let nats = Nats::cluster().await;
    let a = NatsNode::with_policy(&nats, policy()).await;
    let b = NatsNode::with_policy(&nats, policy()).await;
    let alice = token("alice");
    let mut on_b = sse(&b, "/sub/chat/a?transport=sse", &alice).await;
    let mut ws = b.ws(&format!("/sub/chat/a?token={alice}")).await;
    let mut bob = sse(&b, "/sub/chat/a?transport=sse", &token("bob")).await;
    wait_for_others(&a, 1).await;

    let listed = listing(&a, "alice").await;
    assert_eq!(listed["count"], 2, "{listed}");
    assert_eq!(listed["nodes"], json!({"others": 1, "answered": 1}));
    let b_name = format!("{:x}", b.broker.node());
    for c in listed["connections"].as_array().unwrap() {
        assert_eq!(c["node"], json!(b_name), "{listed}");
    }

    let (status, reply) = control(
        &a,
        "/api/control/disconnect",
        json!({"user": "alice", "reason": "bye"}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply,
        json!({"user": "alice", "disconnected": 2, "nodes": {"others": 1, "answered": 1}})
    );
    let event = on_b.next().await;
    assert_eq!(event.event.as_deref(), Some("disconnected"));
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"event": "disconnected", "reason": "bye"})
    );
    assert!(matches!(
        within("the close", ws.next()).await,
        Some(Ok(Frame::Close(Some(_))))
    ));
    assert_eq!(listing(&a, "alice").await["count"], 0);
    // Bob, on the same node, carries on.
    a.post(&format!("/pub/chat/a?key={KEY}"), "for bob").await;
    assert_eq!(bob.next().await.data, "for bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_every_node_also_one_that_starts_later() {
    let nats = Nats::cluster().await;
    let a = NatsNode::with_policy(&nats, policy()).await;
    let b = NatsNode::with_policy(&nats, policy()).await;
    let alice = token("alice");
    let mut on_b = sse(&b, "/sub/chat/a?transport=sse", &alice).await;
    wait_for_others(&a, 1).await;

    let (status, reply) = control(&a, "/api/control/revoke", json!({"user": "alice"})).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["disconnected"], 1, "{reply}");
    let event = on_b.next().await;
    assert_eq!(event.event.as_deref(), Some("expired"));
    // Refused on both nodes from now on, and on a node that joins afterwards.
    let c = NatsNode::with_policy(&nats, policy()).await;
    for node in [&a, &b, &c] {
        let refused = node.get(&format!("/sub/chat/a?token={alice}")).await;
        assert_eq!(refused.status, 401, "{}", refused.body);
        assert!(refused.body.contains("revoked"), "{}", refused.body);
    }
}
