//! The live dashboard's data over real HTTP (`GET /api/dashboard`): refused without the backend
//! key (the policy's `Action::Control`), bad input a 400; its numbers are the server's — open
//! subscribers by transport, subscriptions, publishes and deliveries (totals and per second),
//! gaps, the busiest channels, presence; at most `MAX_WATCHERS` watch at once, and the sampler
//! runs only while somebody does; a drain ends the stream.

mod common;

use common::{Open, Reply, TestServer, foreign_epoch};
use halley_http::dashboard::MAX_WATCHERS;
use serde_json::Value;

const KEY: &str = "dashboard-key";

async fn watch(s: &TestServer) -> Open {
    let open = s
        .stream_with("/api/dashboard", &[("x-halley-key", KEY)])
        .await;
    assert_eq!(open.status, 200);
    assert_eq!(
        open.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    open
}

/// The next snapshot of the stream.
async fn snapshot(open: &mut Open) -> Value {
    loop {
        let block = open.until("\n\n").await;
        if let Some(data) = block.strip_prefix("event: stats\ndata: ") {
            return serde_json::from_str(data.trim_end()).expect("a JSON snapshot");
        }
        assert!(block.starts_with(':'), "unexpected block {block:?}");
    }
}

/// Snapshots until one satisfies `check` (a sample a second: at most 20 are read).
async fn until(open: &mut Open, what: &str, mut check: impl FnMut(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..20 {
        last = snapshot(open).await;
        if check(&last) {
            return last;
        }
    }
    panic!("no snapshot with {what}; last: {last:#}");
}

fn refused(reply: &Reply, status: u16, reason: &str) {
    reply.expect_error(status);
    let error = reply.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains(reason), "{error:?} should say {reason:?}");
}

#[tokio::test]
async fn refused_without_the_backend_key_and_bad_input_is_a_400() {
    let s = TestServer::with_key(KEY).await;
    refused(&s.get("/api/dashboard").await, 401, "needs the publish key");
    let wrong = s
        .send(
            s.request("GET", "/api/dashboard")
                .header("x-halley-key", "not-it")
                .body(Default::default())
                .unwrap(),
        )
        .await;
    refused(&wrong, 401, "wrong key");
    refused(&s.get("/api/dashboard?key=not-it").await, 401, "wrong key");
    // The policy is asked before the parameters are looked at.
    refused(
        &s.get("/api/dashboard?interval=5").await,
        401,
        "publish key",
    );
    let bad = s
        .send(
            s.request("GET", "/api/dashboard?interval=5")
                .header("x-halley-key", KEY)
                .body(Default::default())
                .unwrap(),
        )
        .await;
    refused(&bad, 400, "unknown parameter");
    let post = s.post("/api/dashboard", "text/plain", "x").await;
    post.expect_error(405);
    // The page itself is the same for everyone: it holds no data.
    let page = s.get("/dashboard").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body.contains("api/dashboard") || page.body.contains("dashboard.js"));
    assert_eq!(s.get("/dashboard/dashboard.js").await.status, 200);

    // With no key configured there is no backend, and so no dashboard (as the control API).
    let open = TestServer::start().await;
    let reply = open
        .send(
            open.request("GET", "/api/dashboard")
                .header("x-halley-key", KEY)
                .body(Default::default())
                .unwrap(),
        )
        .await;
    refused(&reply, 403, "--publish-key");
}

/// The row of `channel` among a snapshot's busiest channels.
fn busiest<'a>(snapshot: &'a Value, channel: &str) -> &'a Value {
    snapshot["channels"]["busiest"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["channel"] == channel))
        .unwrap_or_else(|| panic!("{channel} not among the busiest: {snapshot:#}"))
}

#[tokio::test]
async fn counts_transports_messages_gaps_channels_and_presence() {
    let s = TestServer::with_key(KEY).await;
    let mut dash = watch(&s).await;
    let first = snapshot(&mut dash).await;
    assert_eq!(first["interval_ms"], 1000);
    assert_eq!(first["healthy"], true);
    assert_eq!(first["node"], Value::Null, "a single node has no name");
    assert_eq!(first["cluster"]["nodes"], 1);
    assert_eq!(first["nodes"][0]["here"], true);
    // The first sample has nothing to make a rate from.
    assert_eq!(first["nodes"][0]["rates"], Value::Null);

    let _a1 = s.sse("/dash/a", None).await;
    let _a2 = s.sse("/dash/a", None).await;
    let _ws = s.ws("/sub/dash/a").await;
    let member =
        serde_json::json!({"channel": "/dash/b", "member": "member-0001", "info": {"name": "ann"}});
    let member: String = form_urlencoded::byte_serialize(member.to_string().as_bytes()).collect();
    let b = s
        .stream(&format!("/sub/dash/b?transport=stream&presence={member}"))
        .await;
    assert_eq!(b.status, 200);
    let seen = until(&mut dash, "four subscribers", |v| {
        let t = &v["cluster"]["transports"];
        t["sse"] == 2
            && t["websocket"] == 1
            && t["stream"] == 1
            && v["cluster"]["subscriptions"] == 4
    })
    .await;
    // Both listed (in which order depends on traffic: ann's join notice is a message on
    // /dash/b; see the test below for the ranking).
    assert_eq!(busiest(&seen, "/dash/a")["subscribers"], 3);
    assert_eq!(busiest(&seen, "/dash/b")["subscribers"], 1);
    // The transports of this node are the cluster's on a single node.
    assert_eq!(
        seen["nodes"][0]["transports"],
        seen["cluster"]["transports"]
    );
    let seen = until(&mut dash, "ann present", |v| v["presence"]["members"] == 1).await;
    assert_eq!(seen["presence"]["busiest"][0]["channel"], "/dash/b");
    assert_eq!(seen["presence"]["busiest"][0]["members"], 1);

    // Five publishes on /dash/a reach its three subscribers: 5 more published, 15 more
    // delivered, and some sample saw deliveries per second above zero.
    let before = snapshot(&mut dash).await;
    let count = |v: &Value, what: &str| v["cluster"][what].as_u64().unwrap();
    let mut last_id = String::new();
    for i in 0..5 {
        last_id = s.publish("/dash/a", &format!("m{i}")).await;
    }
    let mut fast = false;
    let after = until(&mut dash, "the five publishes", |v| {
        fast |= v["cluster"]["rates"]["delivered"].as_f64().unwrap() > 0.0;
        count(v, "published") == count(&before, "published") + 5
            && count(v, "delivered") == count(&before, "delivered") + 15
    })
    .await;
    // The rate is seen in the same sample as the totals, or the next.
    if !fast {
        let next = snapshot(&mut dash).await;
        assert!(
            next["cluster"]["rates"]["delivered"].as_f64().unwrap() > 0.0,
            "{after:#}\n{next:#}"
        );
    }
    assert_eq!(busiest(&after, "/dash/a")["last_id"], last_id.as_str());
    assert_eq!(count(&after, "lagged"), 0);

    // A resume from another epoch is a gap, and is counted.
    assert_eq!(count(&after, "gaps"), 0);
    let _gap = s.sse("/dash/a", Some(&foreign_epoch(&last_id))).await;
    until(&mut dash, "a gap", |v| count(v, "gaps") == 1).await;
    drop(b);
}

/// The busiest channels are ranked by traffic (messages a second over the last sample), then by
/// subscribers: a channel published to tops one with more subscribers and none.
#[tokio::test]
async fn the_busiest_channels_are_ranked_by_traffic_then_subscribers() {
    let s = TestServer::with_key(KEY).await;
    let mut dash = watch(&s).await;
    let _crowd = [
        s.sse("/dash/crowd", None).await,
        s.sse("/dash/crowd", None).await,
    ];
    let _hot = s.sse("/dash/hot", None).await;
    let seen = until(&mut dash, "three subscribers", |v| {
        v["cluster"]["subscriptions"] == 3
    })
    .await;
    let busiest = &seen["channels"]["busiest"];
    assert_eq!(busiest[0]["channel"], "/dash/crowd");
    assert_eq!(busiest[0]["rate"], 0.0);
    assert_eq!(busiest[1]["channel"], "/dash/hot");
    let mut last = Value::Null;
    for round in 0..30 {
        for i in 0..5 {
            s.publish("/dash/hot", &format!("m{round}.{i}")).await;
        }
        last = snapshot(&mut dash).await;
        let busiest = &last["channels"]["busiest"];
        if busiest[0]["channel"] == "/dash/hot" && busiest[0]["rate"].as_f64().unwrap() > 0.0 {
            assert_eq!(busiest[1]["channel"], "/dash/crowd", "{last:#}");
            assert_eq!(busiest[1]["rate"], 0.0);
            assert_eq!(busiest[1]["subscribers"], 2);
            return;
        }
    }
    panic!("/dash/hot never topped the busiest channels with a rate: {last:#}");
}

#[tokio::test]
async fn at_most_max_watchers_and_the_sampler_runs_only_while_watched() {
    let s = TestServer::with_key(KEY).await;
    assert_eq!(s.metric("halley_dashboard_sampling").await, 0);
    let mut watchers = Vec::new();
    for _ in 0..MAX_WATCHERS {
        let mut open = watch(&s).await;
        snapshot(&mut open).await;
        watchers.push(open);
    }
    assert_eq!(
        s.metric("halley_dashboard_watchers").await,
        MAX_WATCHERS as i64
    );
    assert_eq!(s.metric("halley_dashboard_sampling").await, 1);
    let one_more = s
        .send(
            s.request("GET", "/api/dashboard")
                .header("x-halley-key", KEY)
                .body(Default::default())
                .unwrap(),
        )
        .await;
    refused(&one_more, 503, "dashboards are open");

    // Every watcher gets the same samples.
    let (a, b) = (
        snapshot(&mut watchers[0]).await,
        snapshot(&mut watchers[1]).await,
    );
    assert!(a["time"].as_u64().is_some() && b["time"].as_u64().is_some());

    // Nobody watching: the sampler stops.
    watchers.clear();
    s.wait_metric("halley_dashboard_watchers", 0).await;
    s.wait_metric("halley_dashboard_sampling", 0).await;
    // And starts again for the next.
    let mut again = watch(&s).await;
    snapshot(&mut again).await;
    assert_eq!(s.metric("halley_dashboard_sampling").await, 1);

    // A drain ends the stream.
    s.shutdown.cancel();
    again.rest().await;
}
