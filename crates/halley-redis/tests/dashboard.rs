//! The live dashboard on a cluster (issue 15): watching one node shows every node of the
//! cluster — each answers the stats request through Redis — with their own subscribers by
//! transport and messages, the cluster's totals, and the busiest channels counted over every
//! node; a node that stops is gone from the next samples; with Redis gone the snapshot says so.

mod common;

use common::{Node, Open, Redis};
use halley_engine::access::{AccessConfig, Policy};
use serde_json::Value;

const KEY: &str = "backend-key";

fn policy() -> Policy {
    Policy::new(AccessConfig {
        publish_key: Some(KEY.into()),
        ..AccessConfig::default()
    })
    .unwrap()
}

async fn snapshot(open: &mut Open) -> Value {
    loop {
        let block = open.until("\n\n").await;
        if let Some(data) = block.strip_prefix("event: stats\ndata: ") {
            return serde_json::from_str(data.trim_end()).expect("a JSON snapshot");
        }
    }
}

/// Snapshots until one satisfies `check` (a sample a second: at most 30 are read).
async fn until(open: &mut Open, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..30 {
        last = snapshot(open).await;
        if check(&last) {
            return last;
        }
    }
    panic!("no snapshot with {what}; last: {last:#}");
}

fn name(node: &Node) -> String {
    format!("{:x}", node.broker.node())
}

/// The entry of `node` in a snapshot's node list.
fn entry<'a>(snapshot: &'a Value, node: &str) -> Option<&'a Value> {
    snapshot["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)
}

/// Three nodes on `redis` with the test policy, and the first one's dashboard stream, open.
async fn three_nodes_watched_from_the_first(redis: &Redis) -> (Node, Node, Node, Open) {
    let a = Node::with_policy(redis, policy()).await;
    let b = Node::with_policy(redis, policy()).await;
    let c = Node::with_policy(redis, policy()).await;
    let dash = a
        .stream_with("/api/dashboard", &[("x-halley-key", KEY)])
        .await;
    assert_eq!(dash.status, 200);
    (a, b, c, dash)
}

#[tokio::test]
async fn one_node_shows_every_node_of_the_cluster() {
    let redis = Redis::start().await;
    let (a, b, c, mut dash) = three_nodes_watched_from_the_first(&redis).await;

    let _sse = b.sse("/dash/room", None).await;
    let _ws = c.ws("/sub/dash/room").await;
    let seen = until(&mut dash, "three nodes and their subscribers", |v| {
        v["cluster"]["nodes"] == 3
            && v["cluster"]["transports"]["sse"] == 1
            && v["cluster"]["transports"]["websocket"] == 1
            && v["channels"]["busiest"][0]["subscribers"] == 2
    })
    .await;
    assert_eq!(
        seen["node"],
        name(&a).as_str(),
        "the node watched names itself"
    );
    assert_eq!(seen["cluster"]["reached"], 3);
    assert_eq!(seen["errors"], serde_json::json!([]));
    let here = entry(&seen, &name(&a)).expect("this node listed");
    assert_eq!(here["here"], true);
    assert_eq!(here["subscriptions"], 0);
    let on_b = entry(&seen, &name(&b)).expect("node b listed");
    assert_eq!(on_b["here"], false);
    assert_eq!(on_b["transports"]["sse"], 1);
    assert_eq!(on_b["transports"]["websocket"], 0);
    assert_eq!(on_b["subscriptions"], 1);
    let on_c = entry(&seen, &name(&c)).expect("node c listed");
    assert_eq!(on_c["transports"]["websocket"], 1);
    assert_eq!(seen["channels"]["busiest"][0]["channel"], "/dash/room");

    // Three publishes on c: published counted where they were made, delivered where the
    // subscribers are; the cluster's totals add them up.
    let before = snapshot(&mut dash).await;
    let total = |v: &Value, what: &str| v["cluster"][what].as_u64().unwrap();
    let of =
        |v: &Value, node: &Node, what: &str| entry(v, &name(node)).unwrap()[what].as_u64().unwrap();
    for i in 0..3 {
        let reply = c
            .post(&format!("/pub/dash/room?key={KEY}"), &format!("m{i}"))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let after = until(&mut dash, "the publishes", |v| {
        total(v, "published") == total(&before, "published") + 3
            && total(v, "delivered") == total(&before, "delivered") + 6
    })
    .await;
    assert_eq!(
        of(&after, &c, "published"),
        of(&before, &c, "published") + 3
    );
    assert_eq!(
        of(&after, &b, "delivered"),
        of(&before, &b, "delivered") + 3
    );
    assert_eq!(
        of(&after, &c, "delivered"),
        of(&before, &c, "delivered") + 3
    );

    // A node that stops is not listed any more.
    let gone = name(&c);
    drop(c);
    until(&mut dash, "c gone", |v| {
        v["cluster"]["nodes"] == 2 && entry(v, &gone).is_none()
    })
    .await;

    // Redis gone: the broker is unhealthy, and the snapshot says what it could not read; the
    // stream goes on with this node's own numbers.
    let mut redis = redis;
    redis.kill();
    let down = until(&mut dash, "the broker down", |v| {
        v["healthy"] == false && v["errors"].as_array().is_some_and(|e| !e.is_empty())
    })
    .await;
    assert_eq!(down["cluster"]["nodes"], 1);
    assert_eq!(down["nodes"][0]["here"], true);
    assert_eq!(down["nodes"][0]["healthy"], false);
}

/// The busiest channels are ranked by traffic, counted where the subscribers are: the watched
/// node has none, the publishes go through it, and the node holding the channel's subscriber
/// reports the channel's rate in its stats answer.
#[tokio::test]
async fn the_busiest_channels_are_ranked_by_traffic_counted_on_every_node() {
    let redis = Redis::start().await;
    let (a, b, c, mut dash) = three_nodes_watched_from_the_first(&redis).await;
    let mut crowd = Vec::new();
    for _ in 0..3 {
        crowd.push(b.sse("/dash/crowd", None).await);
    }
    let _hot = c.sse("/dash/hot", None).await;
    until(&mut dash, "both channels' subscribers", |v| {
        v["cluster"]["subscriptions"] == 4
    })
    .await;
    let row = |v: &Value, channel: &str| {
        v["channels"]["busiest"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["channel"] == channel).cloned())
    };
    let mut last = Value::Null;
    for round in 0..30 {
        for i in 0..5 {
            let reply = a
                .post(
                    &format!("/pub/dash/hot?key={KEY}"),
                    &format!("m{round}.{i}"),
                )
                .await;
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
        last = snapshot(&mut dash).await;
        let busiest = &last["channels"]["busiest"];
        if busiest[0]["channel"] == "/dash/hot" && busiest[0]["rate"].as_f64().unwrap() > 0.0 {
            let crowd = row(&last, "/dash/crowd").expect("/dash/crowd listed");
            assert_eq!(crowd["rate"], 0.0, "{last:#}");
            assert_eq!(crowd["subscribers"], 3);
            assert_eq!(busiest[0]["subscribers"], 1);
            return;
        }
    }
    panic!("/dash/hot never topped the busiest channels with a rate: {last:#}");
}
