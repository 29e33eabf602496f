//! The control API across nodes on one real Redis (issue 11), where only Redis can show it: a
//! node whose control channel was cut (`CLIENT KILL`) still gets a revocation made meanwhile.
//! The rest of the control API across nodes is the broker-generic suite,
//! `crates/halley-testkit/tests/cluster.rs`.

mod common;

use common::access::{KEY, chat_policy, chat_token};
use common::{Node, Redis, Sse};
use serde_json::{Value, json};

fn token(user: &str) -> String {
    chat_token(&chat_policy(), user)
}

async fn control(node: &Node, path: &str, body: Value) -> (u16, Value) {
    let reply = node
        .post(&format!("{path}?key={KEY}"), &body.to_string())
        .await;
    (reply.status.as_u16(), reply.json())
}

/// An SSE subscriber with `token` (the stream is open once this returns).
async fn sse(node: &Node, path: &str, token: &str) -> Sse {
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

/// A node whose control channel was cut resubscribes, and a revocation made meanwhile still
/// reaches it: it was sent if the node was back in time, and kept in Redis for it if not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_while_a_node_was_away_reaches_it_when_it_comes_back() {
    let redis = Redis::start().await;
    let a = Node::with_policy(&redis, chat_policy()).await;
    let b = Node::with_policy(&redis, chat_policy()).await;
    let alice = token("alice");
    let mut on_b = sse(&b, "/sub/chat/a?transport=sse", &alice).await;
    redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    let (status, reply) = control(&a, "/api/control/revoke", json!({"user": "alice"})).await;
    assert_eq!(status, 200, "{reply}");
    let event = on_b.next().await;
    assert_eq!(event.event.as_deref(), Some("expired"), "{event:?}");
    assert!(
        a.broker.control_ready(common::WAIT).await && b.broker.control_ready(common::WAIT).await,
        "the control channel came back"
    );
    // And the channel works again for what is not kept: a disconnect.
    let _back = sse(&b, "/sub/chat/a?transport=sse", &token("carol")).await;
    let (_, reply) = control(&a, "/api/control/disconnect", json!({"user": "carol"})).await;
    assert_eq!(reply["disconnected"], 1, "{reply}");
}
