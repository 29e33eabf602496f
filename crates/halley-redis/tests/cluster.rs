//! What only Redis has, on a real Redis (issue 5): its log, read again by a node that was cut
//! off, or trimmed past what the node missed; and Redis going back in time. Everything else
//! several nodes on Redis do — fan-out on every transport, resume anywhere, history limits and
//! gaps, presence, idempotency, the control API, an outage — is the broker-generic suite,
//! `crates/halley-testkit/tests/cluster.rs`, run there on Redis, Sentinel and NATS alike.

mod common;

use common::{Node, Redis, WAIT, eventually, parse_id, ws_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_catches_up_from_the_log() {
    let redis = Redis::start().await;
    let a = Node::start(&redis).await;
    let b = Node::start(&redis).await;
    // WebSocket: the streaming HTTP transports drop the 65th message of a burst (a bug in
    // halley-http's coalescing, reported), and this test makes exactly such a burst.
    let mut ws = b.ws("/sub/blip/**").await;
    let mut published = vec![a.publish_id("/blip/x", "0").await];

    redis.disconnect(b.broker.node()).await;
    eventually(WAIT, "B notices", || async {
        (!b.engine.healthy()).then_some(())
    })
    .await;
    // While B is away (its first reconnect waits 100 ms), A goes on publishing.
    let mut while_away = 0;
    while !b.engine.healthy() && published.len() < 1000 {
        let n = published.len().to_string();
        published.push(a.publish_id(&format!("/blip/{}", n.len()), &n).await);
        while_away += 1;
    }
    assert!(
        while_away > 0,
        "nothing was published while B was disconnected"
    );
    eventually(WAIT, "B reconnects", || async {
        b.engine.healthy().then_some(())
    })
    .await;
    published.push(a.publish_id("/blip/x", "last").await);

    for (i, id) in published.iter().enumerate() {
        let frame = ws_json(&mut ws).await;
        assert_eq!(
            frame["id"].as_str(),
            Some(&**id),
            "message {i} of {}",
            published.len()
        );
    }

    assert!(b.broker_errors() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_back_in_time_starts_a_new_epoch() {
    let redis = Redis::start().await;
    let a = Node::start(&redis).await;
    a.publish_id("/t/x", "1").await;
    let old = a.publish_id("/t/x", "2").await;
    // What a failover to a replica that lacks the last writes looks like.
    redis.command(&["HSET", "halley:seq", "offset", "1"]).await;
    redis.disconnect(a.broker.node()).await;
    let new = eventually(WAIT, "publishing again", || async {
        let reply = a.post("/pub/t/x", "3").await;
        (reply.status == 200).then(|| reply.json()["id"].as_str().unwrap().to_owned())
    })
    .await;
    assert_ne!(
        parse_id(&new).0,
        parse_id(&old).0,
        "offsets would repeat: new epoch"
    );
    let s = a
        .stream(
            &format!("/sub/t/x?transport=stream&format=json&last_id={old}"),
            &[],
        )
        .await;
    assert_eq!(s.header("x-halley-gap"), Some("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_fell_behind_the_trimmed_log_recovers_from_history() {
    let redis = Redis::start().await;
    // Let Redis trim the log finely, and keep it tiny.
    redis
        .command(&["CONFIG", "SET", "stream-node-max-entries", "2"])
        .await;
    let short = |c: &mut halley_redis::RedisConfig| c.log_len = 4;
    let a = Node::with_configs(&redis, |_| {}, short).await;
    let b = Node::with_configs(&redis, |_| {}, short).await;
    let mut ws = b.ws("/sub/gone/**").await;
    let first = a.publish_id("/gone/x", "0").await;
    let mut published = vec![first.clone()];
    assert_eq!(ws_json(&mut ws).await["id"].as_str(), Some(&*first));

    redis.disconnect(b.broker.node()).await;
    eventually(WAIT, "B notices", || async {
        (!b.engine.healthy()).then_some(())
    })
    .await;
    while !b.engine.healthy() && published.len() < 500 {
        let n = published.len();
        published.push(
            a.publish_id(&format!("/gone/{}", n % 7), &n.to_string())
                .await,
        );
    }
    let (epoch, offset) = parse_id(&first);
    let oldest = redis
        .command(&[
            "XRANGE",
            &format!("halley:log:{epoch:x}"),
            "-",
            "+",
            "COUNT",
            "1",
        ])
        .await;
    let oldest = oldest
        .split("0-")
        .nth(1)
        .unwrap()
        .split('\r')
        .next()
        .unwrap();
    assert!(
        oldest.parse::<u64>().unwrap() > offset + 1,
        "the log still holds everything B missed; nothing to recover ({} published)",
        published.len()
    );
    eventually(WAIT, "B reconnects", || async {
        b.engine.healthy().then_some(())
    })
    .await;
    published.push(a.publish_id("/gone/x", "last").await);
    for (i, id) in published.iter().enumerate().skip(1) {
        let frame = ws_json(&mut ws).await;
        assert_eq!(
            frame["id"].as_str(),
            Some(&**id),
            "message {i} of {}",
            published.len()
        );
    }
}

/// As above, but the channels' histories keep only 2 messages each, so history cannot fill the
/// hole either: B's subscriber is cut off (`lagged`) before anything past the hole reaches it,
/// and resuming from the last id it got tells it of the gap, then gives what history kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_fell_behind_the_log_and_history_cuts_its_subscribers_off_with_a_gap() {
    let redis = Redis::start().await;
    redis
        .command(&["CONFIG", "SET", "stream-node-max-entries", "2"])
        .await;
    let short = |c: &mut halley_redis::RedisConfig| c.log_len = 4;
    let keep_two = |e: &mut halley_engine::EngineConfig| e.history_size = 2;
    let a = Node::with_configs(&redis, keep_two, short).await;
    let b = Node::with_configs(&redis, keep_two, short).await;
    let mut ws = b.ws("/sub/gone/**").await;
    let first = a.publish_id("/gone/x", "0").await;
    assert_eq!(ws_json(&mut ws).await["id"].as_str(), Some(&*first));

    redis.disconnect(b.broker.node()).await;
    eventually(WAIT, "B notices", || async {
        (!b.engine.healthy()).then_some(())
    })
    .await;
    let mut published = 1;
    while !b.engine.healthy() && published < 500 {
        a.publish_id(&format!("/gone/{}", published % 7), &published.to_string())
            .await;
        published += 1;
    }
    assert!(
        published > 20,
        "too little published while B was away ({published}) for the log and history to lose any"
    );
    eventually(WAIT, "B reconnects", || async {
        b.engine.healthy().then_some(())
    })
    .await;
    let last = a.publish_id("/gone/x", "last").await;

    // Nothing past the hole: the next frame is the notice.
    let notice = ws_json(&mut ws).await;
    assert_eq!(notice["event"], "lagged", "{notice}");
    assert!(b.broker_errors() > 0);

    let mut ws = b.ws(&format!("/sub/gone/**?last_id={first}")).await;
    assert_eq!(ws_json(&mut ws).await["event"], "gap");
    let mut previous = parse_id(&first);
    loop {
        let frame = ws_json(&mut ws).await;
        let id = frame["id"].as_str().expect("a message after the gap");
        assert!(parse_id(id) > previous, "{id} after {previous:?}");
        previous = parse_id(id);
        if id == last {
            break;
        }
    }
}
