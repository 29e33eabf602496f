//! Several Halley nodes on a real three-server NATS cluster behave as one server (issue 16):
//! fan-out across nodes, resume anywhere, gaps where history lost something, and outages.

mod common;

use std::time::Duration;

use common::{Nats, NatsNode, WAIT, eventually, parse_id, ws_json};
use hyper::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_a_reaches_sse_on_b_and_websocket_wildcard_on_c() {
    let nats = Nats::cluster().await;
    let (a, b, c) = (
        NatsNode::start(&nats).await,
        NatsNode::start(&nats).await,
        NatsNode::start(&nats).await,
    );
    let mut sse = b.sse("/room/x", None).await;
    let mut ws = c.ws("/sub/room/**").await;

    let first = a.publish("/room/x", "hello").await;
    assert_eq!(first["subscribers"], 0, "A has no subscriber of its own");
    let second = b.publish("/room/y.z", "elsewhere").await;
    assert_eq!(second["subscribers"], 0);
    let third = b.publish("/room/x", "from b").await;
    assert_eq!(third["subscribers"], 1, "the count is of this node's");
    let fourth = c.publish("/room/x", "from c").await;
    assert_eq!(fourth["subscribers"], 1);

    let ids: Vec<&str> = [&first, &second, &third, &fourth]
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let offsets: Vec<(u64, u64)> = ids.iter().map(|id| parse_id(id)).collect();
    assert!(
        offsets
            .windows(2)
            .all(|w| w[0].0 == w[1].0 && w[0].1 < w[1].1),
        "ids from different nodes share one epoch and grow: {ids:?}"
    );
    for (id, data) in [(ids[0], "hello"), (ids[2], "from b"), (ids[3], "from c")] {
        let event = sse.next().await;
        assert_eq!(event.id.as_deref(), Some(id));
        assert_eq!(event.data, data);
    }
    for (id, channel, data) in [
        (ids[0], "/room/x", "hello"),
        (ids[1], "/room/y.z", "elsewhere"),
        (ids[2], "/room/x", "from b"),
        (ids[3], "/room/x", "from c"),
    ] {
        let frame = ws_json(&mut ws).await;
        assert_eq!(frame["id"], id);
        assert_eq!(frame["channel"], channel);
        assert_eq!(frame["data"], data);
    }

    // Every node lists every channel with history, with its last id.
    let listed = c.get("/api/channels?prefix=/room/").await.json();
    let rows: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["channel"].as_str().unwrap(),
                row["last_id"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(rows.contains(&("/room/x", ids[3])), "{listed}");
    assert!(rows.contains(&("/room/y.z", ids[1])), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_c_with_ids_from_a_and_b() {
    let nats = Nats::cluster().await;
    let (a, b, c) = (
        NatsNode::start(&nats).await,
        NatsNode::start(&nats).await,
        NatsNode::start(&nats).await,
    );
    let id1 = a.publish_id("/r/a", "1").await;
    let id2 = b.publish_id("/r/b", "2").await;
    let id3 = a.publish_id("/r/a", "3").await;
    let id4 = c.publish_id("/r/b", "4").await;

    // One channel, resumed on another node than the one that issued the id.
    let path = format!("/sub/r/a?transport=stream&format=json&last_id={id1}");
    let mut exact = c.stream(&path, &[]).await;
    assert_eq!(exact.header("x-halley-gap"), None);
    let m = exact.json_line().await;
    assert_eq!(
        (m["id"].as_str(), m["data"].as_str()),
        (Some(&*id3), Some("3"))
    );

    // A wildcard resumes from a single id across channels, in id order.
    let mut ws = c.ws(&format!("/sub/r/**?last_id={id1}")).await;
    for (id, data) in [(&id2, "2"), (&id3, "3"), (&id4, "4")] {
        let frame = ws_json(&mut ws).await;
        assert_eq!(
            (frame["id"].as_str(), frame["data"].as_str()),
            (Some(&**id), Some(data))
        );
    }

    // SSE's own resume header, on a third node, then the live flow without a seam.
    let mut sse = b.sse("/r/**", Some(&id3)).await;
    let event = sse.next().await;
    assert_eq!(
        (event.id.as_deref(), event.data.as_str()),
        (Some(&*id4), "4")
    );
    let id5 = a.publish_id("/r/a", "5").await;
    let event = sse.next().await;
    assert_eq!(
        (event.id.as_deref(), event.data.as_str()),
        (Some(&*id5), "5")
    );
    assert_eq!(exact.json_line().await["id"].as_str(), Some(&*id5));
    assert_eq!(ws_json(&mut ws).await["id"].as_str(), Some(&*id5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_history_is_a_gap_on_exact_and_wildcard_resumes() {
    let nats = Nats::cluster().await;
    let tweak = |e: &mut halley_engine::EngineConfig| e.history_size = 2;
    let a = NatsNode::with(&nats.url(), tweak, |_| {}).await;
    let b = NatsNode::with(&nats.url(), tweak, |_| {}).await;
    let first = a.publish_id("/h/a", "1").await;
    let other = b.publish_id("/h/b", "b").await;
    b.publish_id("/h/a", "2").await;
    let id3 = a.publish_id("/h/a", "3").await;
    let id4 = b.publish_id("/h/a", "4").await;

    // History keeps the last 2: resuming from the first is owed 2, 3, 4 but gets 3, 4 + gap.
    let mut s = b
        .stream(
            &format!("/sub/h/a?transport=stream&format=json&last_id={first}"),
            &[],
        )
        .await;
    assert_eq!(s.header("x-halley-gap"), Some("true"));
    assert_eq!(s.json_line().await["event"], "gap");
    assert_eq!(s.json_line().await["id"].as_str(), Some(&*id3));
    assert_eq!(s.json_line().await["id"].as_str(), Some(&*id4));

    // The same through a wildcard, with the other channel's message in its place.
    let mut ws = a.ws(&format!("/sub/h/*?last_id={first}")).await;
    assert_eq!(ws_json(&mut ws).await["event"], "gap");
    for id in [&other, &id3, &id4] {
        assert_eq!(ws_json(&mut ws).await["id"].as_str(), Some(&**id));
    }

    // From within history: no gap, on either kind of resume.
    let s = a
        .stream(
            &format!("/sub/h/a?transport=stream&format=json&last_id={id3}"),
            &[],
        )
        .await;
    assert_eq!(s.header("x-halley-gap"), None);
    let s = a
        .stream(
            &format!("/sub/h/**?transport=stream&format=json&last_id={id3}"),
            &[],
        )
        .await;
    assert_eq!(s.header("x-halley-gap"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_created_again_is_a_new_epoch_and_old_ids_get_a_gap() {
    let nats = Nats::cluster().await;
    let a = NatsNode::start(&nats).await;
    let b = NatsNode::start(&nats).await;
    let mut sse = b.sse("/e/x", None).await;
    let old = a.publish_id("/e/x", "before").await;
    assert_eq!(sse.next().await.id.as_deref(), Some(&*old));

    nats.delete_stream("HALLEY").await;
    // The nodes notice, create it again, and issue ids of a new epoch.
    let new = eventually(
        Duration::from_secs(30),
        "a publish in a new epoch",
        || async {
            let reply = a.post("/pub/e/x", "after").await;
            let id =
                (reply.status == 200).then(|| reply.json()["id"].as_str().unwrap().to_owned())?;
            (parse_id(&id).0 != parse_id(&old).0).then_some(id)
        },
    )
    .await;
    // The subscriber held through it gets the new stream's messages (the first tries, made
    // before the nodes noticed, may have been stored in the new stream too).
    let event = sse.next().await;
    assert_eq!(event.data, "after");
    assert_eq!(parse_id(event.id.as_deref().unwrap()).0, parse_id(&new).0);

    let mut s = b
        .stream(
            &format!("/sub/e/x?transport=stream&format=json&last_id={old}"),
            &[],
        )
        .await;
    assert_eq!(s.header("x-halley-gap"), Some("true"));
    assert_eq!(s.json_line().await["event"], "gap");
    assert_eq!(s.json_line().await["data"].as_str(), Some("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_is_503_then_delivery_resumes_by_itself() {
    let mut nats = Nats::single().await;
    let a = NatsNode::start(&nats).await;
    let b = NatsNode::start(&nats).await;
    assert_eq!(nats.stream_replicas("HALLEY").await, 1, "R1 on one server");
    let mut sse = b.sse("/o/x", None).await;
    let old = a.publish_id("/o/x", "before").await;
    assert_eq!(sse.next().await.id.as_deref(), Some(&*old));
    assert_eq!(a.broker_errors(), 0);

    nats.kill_all();
    // Never a 2xx for a message that goes nowhere.
    let refused = eventually(WAIT, "a refused publish", || async {
        let reply = a.post("/pub/o/x", "during").await;
        (reply.status != 200).then_some(reply)
    })
    .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.json()["error"].is_string());
    for node in [&a, &b] {
        eventually(WAIT, "healthz degraded", || async {
            (node.health().await == StatusCode::SERVICE_UNAVAILABLE).then_some(())
        })
        .await;
    }
    assert!(a.broker_errors() > 0);

    // The server comes back with its store: same stream, same epoch; both nodes reconnect
    // by themselves.
    nats.restart_all().await;
    for node in [&a, &b] {
        eventually(Duration::from_secs(30), "healthz ok again", || async {
            (node.health().await == StatusCode::OK).then_some(())
        })
        .await;
    }
    let new = a.publish_id("/o/x", "after").await;
    assert_eq!(parse_id(&new).0, parse_id(&old).0, "the stream survived");
    let event = sse.next().await;
    assert_eq!(
        (event.id.as_deref(), event.data.as_str()),
        (Some(&*new), "after")
    );
    let s = b
        .stream(
            &format!("/sub/o/x?transport=stream&format=json&last_id={old}"),
            &[],
        )
        .await;
    assert_eq!(s.header("x-halley-gap"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_keeping_fewer_is_trimmed_and_recent_reads_the_newest() {
    let nats = Nats::cluster().await;
    let tweak = |e: &mut halley_engine::EngineConfig| {
        e.history_size = 3;
        e.history_rules = halley_engine::HistoryRules::new(|c| {
            if c.as_str().starts_with("/small/") {
                (Some(1), None)
            } else {
                (None, None)
            }
        });
    };
    let a = NatsNode::with(&nats.url(), tweak, |_| {}).await;
    let b = NatsNode::with(&nats.url(), tweak, |_| {}).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(a.publish_id("/small/x", &format!("s{i}")).await);
        b.publish_id("/big/x", &format!("b{i}")).await;
    }
    // /small keeps 1: a resume from the first is a gap, then the last.
    let mut s = b
        .stream(
            &format!(
                "/sub/small/x?transport=stream&format=json&last_id={}",
                ids[0]
            ),
            &[],
        )
        .await;
    assert_eq!(s.header("x-halley-gap"), Some("true"));
    assert_eq!(s.json_line().await["event"], "gap");
    assert_eq!(s.json_line().await["id"].as_str(), Some(&*ids[3]));

    // /big keeps 3: the newest 2 asked for are the newest 2, oldest first.
    let mut s = a
        .stream("/sub/big/x?transport=stream&format=json&recent=2", &[])
        .await;
    assert_eq!(s.json_line().await["data"].as_str(), Some("b2"));
    assert_eq!(s.json_line().await["data"].as_str(), Some("b3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_channels_sees_other_nodes_until_they_die() {
    let nats = Nats::cluster().await;
    let a = NatsNode::start(&nats).await;
    let mut b = NatsNode::start(&nats).await;
    let _own = a.sse("/p/x", None).await;
    let _s1 = b.sse("/p/x", None).await;
    let _s2 = b.sse("/p/x", None).await;
    let _w = b.ws("/sub/p/**").await;

    a.wait_subscribers("/p/x", 3).await;
    a.wait_subscribers("/p/**", 1).await;
    b.wait_subscribers("/p/x", 3).await;

    // B dies without a word: its presence stays until its TTL runs out, then goes.
    b.broker.shutdown();
    a.wait_subscribers("/p/x", 1).await;
    a.wait_subscribers("/p/**", 0).await;
    b.kill().await;
}

/// An idempotent publish retried on another node (its answer lost, the client's retry landed
/// elsewhere): one message, the first answer again; the same key with other data refused
/// there too; racing retries on both nodes publish once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_holds_across_nodes() {
    use bytes::Bytes;
    use http_body_util::Full;
    let nats = Nats::cluster().await;
    let (a, b) = (NatsNode::start(&nats).await, NatsNode::start(&nats).await);
    let post = |node: &NatsNode, key: &'static str, body: &'static str| {
        let client = common::Client::new(node.addr);
        async move {
            let request = client
                .request("POST", "/pub/idem/x")
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap();
            client.send(request).await
        }
    };
    let mut sse = b.sse("/idem/x", None).await;
    let first = post(&a, "k-cluster", "1").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let retry = post(&b, "k-cluster", "1").await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.body);
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    let other = post(&b, "k-cluster", "2").await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.body
    );
    let (x, y) = tokio::join!(post(&a, "k-race", "3"), post(&b, "k-race", "3"));
    let ids: std::collections::BTreeSet<String> = [x, y]
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let last = post(&a, "k-last", "4").await;
    assert_eq!(last.status, StatusCode::OK);
    for expected in ["1", "3", "4"] {
        assert_eq!(sse.next().await.data, expected);
    }
}

/// Publishes racing on one channel from two nodes (each one's expected previous message is
/// taken by another and retried): all succeed, and the channel's chain has no hole, so a
/// resume from before them gets every one without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publishes_to_one_channel_all_land_without_a_gap() {
    let nats = Nats::cluster().await;
    let (a, b) = (NatsNode::start(&nats).await, NatsNode::start(&nats).await);
    let start = a.publish_id("/race/x", "start").await;
    let publishes = (0..24).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        async move { node.publish_id("/race/x", &i.to_string()).await }
    });
    let mut ids = futures_util::future::join_all(publishes).await;
    ids.sort_by_key(|id| parse_id(id));
    let mut s = b
        .stream(
            &format!("/sub/race/x?transport=stream&format=json&last_id={start}"),
            &[],
        )
        .await;
    assert_eq!(s.header("x-halley-gap"), None);
    for id in &ids {
        assert_eq!(s.json_line().await["id"].as_str(), Some(&**id));
    }
}

/// `max_channels` counts the stream's channels, whichever node created them: past it, a
/// publish to a new channel is refused (once the node has read the count), an existing
/// channel still takes messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_channels_counts_every_nodes_channels() {
    let nats = Nats::cluster().await;
    let tweak = |e: &mut halley_engine::EngineConfig| e.max_channels = 2;
    let a = NatsNode::with(&nats.url(), tweak, |_| {}).await;
    let b = NatsNode::with(&nats.url(), tweak, |_| {}).await;
    a.publish_id("/m/a", "x").await;
    b.publish_id("/m/b", "x").await;
    // Each try is another new channel: one accepted before the node read the count (within
    // CHECK_INTERVAL) is a channel more, as the limit is approximate that long.
    let tries = std::cell::Cell::new(0);
    let refused = eventually(WAIT, "a refused new channel", || async {
        tries.set(tries.get() + 1);
        let reply = a.post(&format!("/pub/m/new{}", tries.get()), "x").await;
        (reply.status != 200).then_some(reply)
    })
    .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.json()["error"].is_string());
    a.publish_id("/m/b", "an existing channel is fine").await;
}
