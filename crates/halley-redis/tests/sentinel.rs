//! Halley nodes on Redis Sentinel (issue 16): they find the master through the sentinels,
//! follow a failover by themselves, and never issue an id twice — and with `WAIT` (the
//! default with Sentinel), never lose a message they answered 200 for.
//!
//! Every test starts a master, two replicas and three sentinels of its own (quorum 2, a master
//! called down after 1 s) and kills the master with SIGKILL.

mod common;

use std::time::Duration;

use common::{Client, FAILOVER_WAIT, Ids, Node, Open, POLL, Sentinels, parse_id, within_for};
use halley_redis::EpochRule;

/// How long a subscriber's read may wait: a failover (and the nodes' reconnect) has nothing
/// to deliver for several seconds.
const READ_WAIT: Duration = Duration::from_secs(40);

/// A `format=json` stream subscriber of `/<path>` on a node, read with [`READ_WAIT`].
async fn subscribe(node: &Node, path: &str) -> Open {
    let client = Client {
        addr: node.addr,
        wait: READ_WAIT,
    };
    let open = client.stream_with(&format!("/sub{path}"), &[]).await;
    assert_eq!(open.status, 200, "GET /sub{path}");
    open
}

/// The next message of a json stream as (id, data); control objects (`gap`) are returned as
/// (`event:<name>`, "").
async fn next(open: &mut Open) -> (String, String) {
    let line = open.json_line().await;
    if let Some(event) = line["event"].as_str() {
        return (format!("event:{event}"), String::new());
    }
    (
        line["id"].as_str().expect("a message has an id").to_owned(),
        line["data"].as_str().expect("text data").to_owned(),
    )
}

/// Publishes `data` until it is answered 200 (then its id) — 503 only meanwhile, never
/// anything else.
async fn publish_until_accepted(node: &Node, channel: &str, data: &str) -> (String, usize) {
    within_for(FAILOVER_WAIT, "a publish accepted again", async {
        let mut refused = 0;
        loop {
            let reply = node.post(&format!("/pub{channel}"), data).await;
            match reply.status.as_u16() {
                200 => return (reply.json()["id"].as_str().unwrap().to_owned(), refused),
                503 => refused += 1,
                other => panic!("publish during a failover: {other} {}", reply.body),
            }
            // A publisher's retry pace, not a synchronisation.
            tokio::time::sleep(POLL * 5).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_failover_and_a_resume_from_before_it_gets_a_gap_not_a_reused_id() {
    let mut set = Sentinels::start(2).await;
    let a = Node::on_sentinels(&set, |_| {}).await;
    let b = Node::on_sentinels(&set, |_| {}).await;
    let ids = Ids::default();
    let mut live = subscribe(&b, "/f/**?transport=stream&format=json").await;

    // Through the sentinels, across nodes.
    let mut acknowledged = Vec::new();
    for n in 0..5 {
        let data = format!("before {n}");
        let id = a.publish_id("/f/x", &data).await;
        ids.saw(&id, &data, "publisher");
        acknowledged.push((id, data));
    }
    let (before, _) = acknowledged[2].clone();

    let old = set.kill_master().await;
    // Each publish is answered 503 until the nodes are on the new master, never 200 for a
    // message that is not kept.
    let (id, refused) = publish_until_accepted(&a, "/f/x", "after 0").await;
    ids.saw(&id, "after 0", "publisher");
    acknowledged.push((id, "after 0".into()));
    println!("sentinel: {refused} publishes refused (503) during the failover");
    let new = set.failed_over(old).await;
    assert_ne!(new, old);
    for n in 1..5 {
        let data = format!("after {n}");
        let id = b.publish_id("/f/y", &data).await;
        ids.saw(&id, &data, "publisher");
        acknowledged.push((id, data));
    }
    let (e_before, _) = parse_id(&acknowledged[0].0);
    let (e_after, _) = parse_id(&acknowledged[5].0);
    assert_ne!(e_before, e_after, "another master, another epoch");

    // The live subscriber on B got every acknowledged message, in order, nothing twice.
    for (id, data) in &acknowledged {
        let (got_id, got) = next(&mut live).await;
        ids.saw(&got_id, &got, "the live subscriber");
        assert_eq!((&got_id, &got), (id, data), "the live subscriber on B");
    }

    // A client resuming with an id from before the failover is told of a gap: the new epoch
    // cannot know what the old master issued after what reached its replica.
    for node in [&a, &b] {
        let mut resumed = subscribe(
            node,
            &format!("/f/**?transport=stream&format=json&last_id={before}"),
        )
        .await;
        assert_eq!(resumed.header("x-halley-gap"), Some("true"));
        let (event, _) = next(&mut resumed).await;
        assert_eq!(event, "event:gap");
        // Then the new epoch from its start: exactly what was acknowledged after the failover.
        for (id, data) in &acknowledged[5..] {
            let (got_id, got) = next(&mut resumed).await;
            ids.saw(&got_id, &got, "a resume");
            assert_eq!((&got_id, &got), (id, data));
        }
    }
    // Resuming with the newest id continues without a gap.
    let newest = &acknowledged.last().unwrap().0;
    let resumed = subscribe(
        &a,
        &format!("/f/**?transport=stream&format=json&last_id={newest}"),
    )
    .await;
    assert_eq!(resumed.header("x-halley-gap"), None);
}

/// Without the epoch rule (`epoch=offset`, plain Redis's), the nodes still follow the
/// failover; this test pins that they do, so that the bench's comparison is of working
/// setups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offset_rule_follows_a_failover_too() {
    let mut set = Sentinels::start(1).await;
    let a = Node::on_sentinels(&set, |c| {
        c.epoch = EpochRule::Offset;
        c.wait_replicas = 0;
    })
    .await;
    let mut live = subscribe(&a, "/o/x?transport=stream&format=json").await;
    let first = a.publish_id("/o/x", "1").await;
    let old = set.kill_master().await;
    let (second, _) = publish_until_accepted(&a, "/o/x", "2").await;
    set.failed_over(old).await;
    assert_ne!(first, second);
    assert_eq!(next(&mut live).await, (first, "1".to_owned()));
    assert_eq!(next(&mut live).await, (second, "2".to_owned()));
}

/// The case both mechanisms exist for: the replicas miss the master's last writes (cut off),
/// then the master dies and one of them is promoted. The publish they missed was answered
/// 503 (no replica acknowledged it), even though subscribers saw it; the new master issues
/// none of the ids the old one issued after what reached it (a new epoch), so no id ever
/// names two messages, and a resume from it is told of a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_replicas_that_missed_writes_never_reissues_their_ids() {
    let mut set = Sentinels::start(2).await;
    let a = Node::on_sentinels(&set, |_| {}).await;
    let b = Node::on_sentinels(&set, |_| {}).await;
    let ids = Ids::default();
    let mut live = subscribe(&b, "/m/**?transport=stream&format=json").await;
    let kept = a.publish_id("/m/x", "kept").await;
    ids.saw(&kept, "kept", "publisher");
    assert_eq!(next(&mut live).await, (kept.clone(), "kept".to_owned()));

    let replicas = set.partition_replicas().await;
    assert_eq!(replicas.len(), 2);
    // Written to the master only: not acknowledged by a replica, so not "published" (503),
    // though the master delivers it.
    let reply = a.post("/pub/m/x", "missed").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    let (missed, data) = next(&mut live).await;
    assert_eq!(data, "missed");
    ids.saw(&missed, "missed", "the live subscriber");
    let old = set.kill_master().await;
    set.resume_replicas(&replicas);
    let (after, _) = publish_until_accepted(&a, "/m/x", "after").await;
    ids.saw(&after, "after", "publisher");
    set.failed_over(old).await;
    assert_ne!(parse_id(&after).0, parse_id(&missed).0, "a new epoch");
    let (id, data) = next(&mut live).await;
    ids.saw(&id, &data, "the live subscriber");
    assert_eq!((id, data), (after.clone(), "after".to_owned()));
    for n in 0..20 {
        let data = format!("more {n}");
        let id = b.publish_id("/m/y", &data).await;
        ids.saw(&id, &data, "publisher");
        assert_ne!(id, missed);
    }
    let resumed = subscribe(
        &a,
        &format!("/m/**?transport=stream&format=json&last_id={missed}"),
    )
    .await;
    assert_eq!(resumed.header("x-halley-gap"), Some("true"));
}

/// Why the epoch follows the master: the old master issued an id its replicas never got,
/// every node that saw it is gone, and a node that starts after the failover publishes. Under
/// the offset rule it issues the lost id again, for another message (no node remembers a
/// higher offset); under the master rule the new master is in a new epoch. `WAIT` is off
/// here, so the lost publish was answered 200: this is what the epoch alone promises (no id
/// twice), not what WAIT adds (nothing answered 200 lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_a_failover_lost_are_issued_again_under_the_offset_rule_only() {
    for rule in [EpochRule::Offset, EpochRule::Master] {
        let mut set = Sentinels::start(2).await;
        let tweak = |c: &mut halley_redis::RedisConfig| {
            c.epoch = rule;
            c.wait_replicas = 0;
        };
        let mut a = Node::on_sentinels(&set, tweak).await;
        a.publish_id("/l/x", "kept").await;
        let replicas = set.partition_replicas().await;
        let lost = a.publish_id("/l/x", "lost").await;
        a.kill().await;
        let old = set.kill_master().await;
        set.resume_replicas(&replicas);
        set.failed_over(old).await;
        let c = Node::on_sentinels(&set, tweak).await;
        let next = c.publish_id("/l/x", "next").await;
        match rule {
            EpochRule::Offset => assert_eq!(next, lost, "the offset rule issues {lost} again"),
            EpochRule::Master => {
                assert_ne!(parse_id(&next).0, parse_id(&lost).0, "a new epoch")
            }
        }
    }
}

/// A switchover (`SENTINEL FAILOVER`: the master, alive, becomes a replica of a promoted one).
/// The old master keeps answering until Sentinel reconfigures it, seconds later; the nodes move
/// as soon as the sentinels announce the new master (`+switch-master`), write there in a new
/// epoch, and a subscriber gets every message once. (Writes the old master took in between are
/// the README's "Limits".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_moves_the_nodes_on_the_sentinels_word() {
    let set = Sentinels::start(2).await;
    let a = Node::on_sentinels(&set, |_| {}).await;
    let b = Node::on_sentinels(&set, |_| {}).await;
    let ids = Ids::default();
    let mut live = subscribe(&b, "/w/**?transport=stream&format=json").await;
    let before = a.publish_id("/w/x", "before").await;
    ids.saw(&before, "before", "publisher");
    let old = set.switchover().await;
    let new = set.failed_over(old).await;
    // Publish until a message lands on the new master: in a new epoch (another server), the
    // one the new master holds.
    let old_epoch = parse_id(&before).0;
    let mut acknowledged = vec![(before, "before".to_owned())];
    within_for(FAILOVER_WAIT, "a publish on the new master", async {
        for n in 0.. {
            let data = format!("after {n}");
            let reply = a.post("/pub/w/x", &data).await;
            if reply.status == 503 {
                tokio::time::sleep(POLL).await;
                continue;
            }
            assert_eq!(reply.status, 200, "{}", reply.body);
            let id = reply.json()["id"].as_str().unwrap().to_owned();
            ids.saw(&id, &data, "publisher");
            acknowledged.push((id.clone(), data));
            let seq = set
                .server(new)
                .command(&["HGET", "halley:seq", "epoch"])
                .await;
            let epoch = parse_id(&id).0;
            if epoch != old_epoch && seq.contains(&format!("{epoch:x}")) {
                return;
            }
        }
    })
    .await;
    // The nodes moved on the sentinels' word: the old master has not been told yet.
    let role = set.server(old).command(&["ROLE"]).await;
    assert!(
        role.contains("master"),
        "the old master was reconfigured before the nodes moved: {role}"
    );
    let moved = acknowledged.len();
    for n in 0..5 {
        let data = format!("settled {n}");
        let id = a.publish_id("/w/x", &data).await;
        ids.saw(&id, &data, "publisher");
        acknowledged.push((id, data));
    }
    // The live subscriber: everything it was sent was answered 200 or is one of the writes the
    // old master took before the nodes moved; every message after the move arrives, once, in
    // order.
    let mut got = Vec::new();
    while got.last().map(|(_, d): &(String, String)| d.as_str()) != Some("settled 4") {
        let (id, data) = next(&mut live).await;
        ids.saw(&id, &data, "the live subscriber");
        got.push((id, data));
    }
    let tail = &got[got.len() - (acknowledged.len() - moved + 1)..];
    assert_eq!(tail, &acknowledged[moved - 1..]);
    println!(
        "sentinel: switchover: {} publishes answered 200 before the nodes moved",
        moved - 2
    );
}
