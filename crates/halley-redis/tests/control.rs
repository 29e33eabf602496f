//! The control API across nodes on one real Redis (issue 11): the application calls one node
//! and a user connected to another is disconnected, listed, unsubscribed or revoked there; a
//! revocation also holds on a node that starts afterwards; with Redis gone the call says the
//! other nodes were not reached.

mod common;

use std::time::Duration;

use common::{Node, Redis, Sse, within, ws_json};
use futures_util::StreamExt;
use halley_engine::access::{
    AccessConfig, MintClaims, NamespaceConfig, Policy, PublishRule, SubscribeRule, TokenConfig,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

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

async fn control(node: &Node, path: &str, body: Value) -> (u16, Value) {
    let reply = node
        .post(&format!("{path}?key={KEY}"), &body.to_string())
        .await;
    (reply.status.as_u16(), reply.json())
}

async fn listing(node: &Node, user: &str) -> Value {
    let reply = node
        .get(&format!("/api/control/user?user={user}&key={KEY}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
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

fn hex(node: &Node) -> String {
    format!("{:x}", node.broker.node())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_on_one_node_disconnects_a_user_on_another() {
    let redis = Redis::start().await;
    let a = Node::with_policy(&redis, policy()).await;
    let b = Node::with_policy(&redis, policy()).await;
    let alice = token("alice");
    let mut on_b = sse(&b, "/sub/chat/a?transport=sse", &alice).await;
    let mut ws = b.ws(&format!("/sub/chat/a?token={alice}")).await;
    let mut bob = sse(&b, "/sub/chat/a?transport=sse", &token("bob")).await;

    // Listed from A: both connections, on B.
    let listed = listing(&a, "alice").await;
    assert_eq!(listed["count"], 2, "{listed}");
    assert_eq!(listed["nodes"], json!({"others": 1, "answered": 1}));
    let rows: Vec<(Value, Value, Value)> = listed["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["node"].clone(),
                c["transport"].clone(),
                c["channels"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (json!(hex(&b)), json!("sse"), json!(["/chat/a"])),
            (json!(hex(&b)), json!("websocket"), json!(["/chat/a"])),
        ]
    );

    // Disconnected from A: B ends both at once, each with its notice.
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
        serde_json::from_str::<Value>(&event.data).unwrap(),
        json!({"event": "disconnected", "reason": "bye"})
    );
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"event": "disconnected", "reason": "bye"})
    );
    match within("the close", ws.next()).await {
        Some(Ok(Frame::Close(Some(close)))) => {
            assert_eq!(close.code, CloseCode::Policy);
            assert_eq!(close.reason, "bye");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    assert_eq!(listing(&a, "alice").await["count"], 0);
    // Bob, on the same node, carries on.
    a.post(&format!("/pub/chat/a?key={KEY}"), "for bob").await;
    assert_eq!(bob.next().await.data, "for bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_on_one_node_takes_the_channel_off_on_another() {
    let redis = Redis::start().await;
    let a = Node::with_policy(&redis, policy()).await;
    let b = Node::with_policy(&redis, policy()).await;
    let alice = token("alice");
    let mut on_b = sse(
        &b,
        "/sub?channel=/chat/a&channel=/chat/b&transport=sse&format=json",
        &alice,
    )
    .await;
    let (status, reply) = control(
        &a,
        "/api/control/unsubscribe",
        json!({"user": "alice", "channel": "/chat/a"}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["unsubscribed"], 1, "{reply}");
    let event = on_b.next().await;
    assert_eq!(event.event.as_deref(), Some("unsubscribed"));
    assert!(event.data.contains(r#""channel":"/chat/a""#), "{event:?}");
    a.post(&format!("/pub/chat/a?key={KEY}"), "gone").await;
    a.post(&format!("/pub/chat/b?key={KEY}"), "kept").await;
    let next = on_b.next().await;
    assert!(next.data.contains(r#""data":"kept""#), "{next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_every_node_also_one_that_starts_later() {
    let redis = Redis::start().await;
    let a = Node::with_policy(&redis, policy()).await;
    let b = Node::with_policy(&redis, policy()).await;
    let alice = token("alice");
    let mut on_b = sse(&b, "/sub/chat/a?transport=sse", &alice).await;

    let (status, reply) = control(&a, "/api/control/revoke", json!({"user": "alice"})).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["disconnected"], 1, "{reply}");
    let event = on_b.next().await;
    assert_eq!(event.event.as_deref(), Some("expired"));
    assert!(event.data.contains("token revoked"), "{event:?}");
    // Refused on both nodes from now on, and on a node that joins afterwards.
    let c = Node::with_policy(&redis, policy()).await;
    for node in [&a, &b, &c] {
        let refused = node.get(&format!("/sub/chat/a?token={alice}")).await;
        assert_eq!(refused.status, 401, "{}", refused.body);
        assert!(refused.body.contains("revoked"), "{}", refused.body);
    }
    // Bob was not revoked.
    let bob = token("bob");
    let _fine = sse(&c, "/sub/chat/a?transport=sse", &bob).await;
}

/// A node whose control channel was cut resubscribes, and a revocation made meanwhile still
/// reaches it: it was sent if the node was back in time, and kept in Redis for it if not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_while_a_node_was_away_reaches_it_when_it_comes_back() {
    let redis = Redis::start().await;
    let a = Node::with_policy(&redis, policy()).await;
    let b = Node::with_policy(&redis, policy()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_call_says_the_other_nodes_were_not_reached() {
    let mut redis = Redis::start().await;
    let a = Node::with_policy(&redis, policy()).await;
    let alice = token("alice");
    let mut here = sse(&a, "/sub/chat/a?transport=sse", &alice).await;
    redis.kill();
    let (status, reply) = control(&a, "/api/control/disconnect", json!({"user": "alice"})).await;
    assert_eq!(status, 503, "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.contains("applied on this node only (count here: 1)"),
        "{error}"
    );
    // This node did its part all the same.
    assert_eq!(here.next().await.event.as_deref(), Some("disconnected"));
}

/// A namespace's `max-subscribers` counts every node's subscribers: with two on node A and
/// one on node B, a fourth is refused on B once A's count has reached Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_subscribers_is_a_cluster_wide_cap() {
    let redis = Redis::start().await;
    let capped = || {
        let mut room = NamespaceConfig::new("/room/**");
        room.max_subscribers = Some(3);
        Policy::new(AccessConfig {
            publish_key: Some(KEY.into()),
            namespaces: vec![room],
            ..AccessConfig::default()
        })
        .unwrap()
    };
    let a = Node::with_policy(&redis, capped()).await;
    let b = Node::with_policy(&redis, capped()).await;
    let _a1 = a.stream("/sub/room/x?transport=stream", &[]).await;
    let _a2 = a.stream("/sub/room/x?transport=stream", &[]).await;
    let _b1 = b.stream("/sub/room/x?transport=stream", &[]).await;
    // B sees A's two once A's presence update (every 100 ms in these tests) is in Redis.
    common::eventually(common::WAIT, "B counts A's subscribers", || async {
        let rows = b
            .get("/api/channels?prefix=/room/&key=backend-key")
            .await
            .json();
        (rows[0]["subscribers"] == 3).then_some(())
    })
    .await;
    let refused = b.get("/sub/room/x?transport=longpoll").await;
    assert_eq!(refused.status.as_u16(), 503, "{}", refused.body);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("most subscribers")
    );
    // Another channel of the namespace has its own count.
    let other = b.stream("/sub/room/y?transport=stream", &[]).await;
    assert_eq!(other.status.as_u16(), 200);
}
