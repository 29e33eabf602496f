//! The kill test, on every broker that replicates (issue 16): with subscribers on three Halley
//! nodes and two publishers going round the nodes, the server a replicated broker must survive
//! losing — the Redis master under Sentinel (`WAIT 1`), the NATS server leading Halley's
//! stream (R3) — is killed with SIGKILL in the middle of the loop, and started again once the
//! publishers are done (a NATS server with an empty store: see the ignored test). Then:
//!
//! - no acknowledged message is lost: every subscriber on every node gets every message
//!   answered 200;
//! - no id is issued twice: an id seen anywhere (answers, subscribers, resumes) always carries
//!   the same message, and ids grow within an epoch on every subscriber;
//! - every hole is announced: a live subscriber is told nothing but messages, and a resume
//!   from before the kill either gets everything after its id, or an explicit gap and then
//!   everything of the epoch after it.
//!
//! One Redis has nothing to fail over to; its outage is in `tests/cluster.rs`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{BrokerKind, Client, Ids, Node, Open, POLL, TestBroker, parse_id, within_for};
use tokio::sync::Mutex;

replicated_brokers!(the_server_killed_in_a_publish_loop_loses_no_acknowledged_message);

async fn the_server_killed_in_a_publish_loop_loses_no_acknowledged_message(kind: BrokerKind) {
    kill_test(kind, false).await
}

/// The same with the killed NATS server started again on the store it had. Ignored: with
/// nats-server 2.9.10 it fails — in 10 of 11 runs here, a resume or a live subscriber was served
/// a message the cluster refused (503) at the sequence of one it acknowledged, i.e. an id with
/// two messages. Halley cannot tell them apart; the README says to bring a crashed server
/// back with an empty store. `cargo test -p halley-testkit --test kill -- --ignored` runs it
/// (for a newer nats-server on the PATH).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "nats-server 2.9.10 serves uncommitted messages after such a restart"]
async fn a_nats_server_restarted_on_its_old_store_keeps_ids_unique() {
    kill_test(BrokerKind::Nats, true).await
}

/// Messages each publisher gets acknowledged before the kill, and after it.
const BEFORE: usize = 100;
const AFTER: usize = 100;
const PUBLISHERS: usize = 2;
/// How long a read or a publish may wait: a failover has nothing to deliver for seconds.
const READ_WAIT: Duration = Duration::from_secs(40);

/// A `format=json` stream subscriber of `path` on a node, read with [`READ_WAIT`].
async fn subscribe(node: &Node, path: &str) -> Open {
    let client = Client {
        addr: node.addr,
        wait: READ_WAIT,
    };
    let mut open = client.stream_with(&format!("/sub{path}"), &[]).await;
    if open.status != 200 {
        let body = open.rest().await;
        panic!("GET /sub{path}: {} {body}", open.status);
    }
    open
}

/// The next message of a json stream as (id, data); a control object (`gap`) comes back as
/// (`event:<name>`, "").
async fn next(open: &mut Open) -> (String, String) {
    let line = within_for(READ_WAIT, "the next message", open.json_line()).await;
    if let Some(event) = line["event"].as_str() {
        return (format!("event:{event}"), String::new());
    }
    (
        line["id"].as_str().expect("a message has an id").to_owned(),
        line["data"].as_str().expect("text data").to_owned(),
    )
}

/// The kill test; the killed server is started again with the store it had when
/// `keep_store` (NATS), else empty.
async fn kill_test(kind: BrokerKind, keep_store: bool) {
    let mut broker = TestBroker::start(kind).await;
    let nodes = Arc::new(vec![
        Node::start(&broker).await,
        Node::start(&broker).await,
        Node::start(&broker).await,
    ]);
    let ids = Arc::new(Ids::default());
    let mut subscribers = Vec::new();
    for node in nodes.iter() {
        subscribers.push(subscribe(node, "/k/**?transport=stream&format=json").await);
    }
    // Publishers go round the nodes, each with its own numbered messages ("p:n" → id); a 503
    // is not an acknowledgement, and the publisher goes on with its next message.
    let acknowledged = Arc::new(Mutex::new(BTreeMap::<String, String>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (nodes, acknowledged, refused, killed, ids, count) = (
                nodes.clone(),
                acknowledged.clone(),
                refused.clone(),
                killed.clone(),
                ids.clone(),
                count_tx.clone(),
            );
            tokio::spawn(async move {
                let mut after = 0;
                let mut n = 0;
                while after < AFTER {
                    let node = &nodes[(n + p) % nodes.len()];
                    let data = format!("{p}:{n}");
                    let reply = node.post(&format!("/pub/k/{}", n % 3), &data).await;
                    match reply.status.as_u16() {
                        200 => {
                            let id = reply.json()["id"].as_str().unwrap().to_owned();
                            ids.saw(&id, &data, "publisher");
                            acknowledged.lock().await.insert(data, id);
                            if killed.load(Ordering::Acquire) {
                                after += 1;
                            }
                            count.send_modify(|c| *c += 1);
                        }
                        503 => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            // A publisher's retry pace, not a synchronisation.
                            tokio::time::sleep(POLL).await;
                        }
                        other => panic!("publish: {other} {}", reply.body),
                    }
                    n += 1;
                }
            })
        })
        .collect();
    drop(count_tx);
    within_for(
        Duration::from_secs(60),
        "the first messages acknowledged",
        count.wait_for(|c| *c >= BEFORE * PUBLISHERS),
    )
    .await
    .unwrap();
    let victim = broker.kill_one().await;
    killed.store(true, Ordering::Release);
    for p in publishers {
        within_for(Duration::from_secs(90), "publishers done", p)
            .await
            .unwrap();
    }
    // The killed server comes back (NATS: it catches up from the others; Sentinel: the old
    // master, empty, is made a replica) before the end marker and the resumes.
    if keep_store {
        broker.revive_with_store().await;
    } else {
        broker.revive().await;
    }
    // An end marker, so that each subscriber knows when it has everything.
    let end = within_for(READ_WAIT, "the end marker accepted", async {
        loop {
            let reply = nodes[0].post("/pub/k/end", "end").await;
            if reply.status == 200 {
                break reply.json()["id"].as_str().unwrap().to_owned();
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    let acknowledged = acknowledged.lock().await.clone();
    println!(
        "{kind:?}: killed {victim}; {} acknowledged, {} refused (503)",
        acknowledged.len(),
        refused.load(Ordering::Relaxed)
    );

    // Every live subscriber: every acknowledged message, ids growing within an epoch, no id
    // twice, nothing but messages.
    for (i, sub) in subscribers.iter_mut().enumerate() {
        let mut got: HashMap<String, String> = HashMap::new();
        let mut last: Option<(u64, u64)> = None;
        loop {
            let (id, data) = next(sub).await;
            assert!(
                !id.starts_with("event:"),
                "subscriber {i}: a live subscriber is told nothing but messages: {id}"
            );
            ids.saw(&id, &data, &format!("subscriber {i}"));
            let parsed = parse_id(&id);
            if let Some(l) = last
                && l.0 == parsed.0
            {
                assert!(parsed.1 > l.1, "subscriber {i}: {id} after {l:?}");
            }
            last = Some(parsed);
            if id == end {
                break;
            }
            assert!(
                got.insert(data.clone(), id).is_none(),
                "subscriber {i} got {data} twice"
            );
        }
        let lost: Vec<_> = acknowledged
            .iter()
            .filter(|(data, id)| got.get(*data) != Some(id))
            .collect();
        assert!(
            lost.is_empty(),
            "subscriber {i} misses acknowledged messages: {lost:?}"
        );
        // Beyond them: refused publishes that still got through (a 503 says "maybe").
        println!(
            "{kind:?}: subscriber {i}: {} acknowledged + {} refused-but-delivered",
            acknowledged.len(),
            got.len() - acknowledged.len()
        );
    }

    // A resume on every node from publisher 0's first message, long before the kill: either
    // no gap and every acknowledged message after it, or a gap and every acknowledged message
    // of the epoch it continues in.
    let first = acknowledged["0:0"].clone();
    let end_epoch = parse_id(&end).0;
    for (n, node) in nodes.iter().enumerate() {
        let (gap, got, tries) = resume(node, &first, &end, &ids, n).await;
        let owed = acknowledged.iter().filter(|(_, id)| {
            parse_id(id) > parse_id(&first) && (!gap || parse_id(id).0 == end_epoch)
        });
        let missing: Vec<_> = owed
            .filter(|(data, id)| got.get(*data) != Some(id))
            .collect();
        assert!(
            missing.is_empty(),
            "node {n}: a resume (gap: {gap}) misses {missing:?}"
        );
        println!(
            "{kind:?}: resume on node {n}: gap {gap}, {} messages, {tries} tries",
            got.len()
        );
    }
}

/// Resumes `/k/**` on `node` from `first` up to the message `end`, as a client would: a 503
/// (the broker still settling: a NATS cluster electing its leaders) is tried again, and a
/// stream that ends early is resumed from the last id it gave. Returns whether a gap was
/// announced (header and event agreeing), what it got (data → id), and how many requests it
/// took.
async fn resume(
    node: &Node,
    first: &str,
    end: &str,
    ids: &Ids,
    n: usize,
) -> (bool, HashMap<String, String>, usize) {
    let client = Client {
        addr: node.addr,
        wait: READ_WAIT,
    };
    let mut got = HashMap::new();
    let mut position = first.to_owned();
    let mut gap = false;
    let mut tries = 0;
    within_for(READ_WAIT, "a whole resume", async {
        loop {
            tries += 1;
            let path = format!("/sub/k/**?transport=stream&format=json&last_id={position}");
            let mut open = client.stream_with(&path, &[]).await;
            if open.status == 503 {
                tokio::time::sleep(POLL * 5).await;
                continue;
            }
            assert_eq!(open.status, 200, "node {n}: GET {path}");
            let header = open.header("x-halley-gap") == Some("true");
            gap |= header;
            let mut told = false;
            while let Some(line) = next_line(&mut open).await {
                if line.is_empty() {
                    continue;
                }
                let line: serde_json::Value = serde_json::from_str(&line).unwrap();
                if line["event"] == "gap" {
                    told = true;
                    continue;
                }
                let (Some(id), Some(data)) = (line["id"].as_str(), line["data"].as_str()) else {
                    // The server's farewell before it ends the stream.
                    continue;
                };
                ids.saw(id, data, &format!("a resume on node {n}"));
                if id == end {
                    assert_eq!(header, told, "node {n}: the header and the event agree");
                    return;
                }
                got.insert(data.to_owned(), id.to_owned());
                position = id.to_owned();
            }
            assert_eq!(header, told, "node {n}: the header and the event agree");
        }
    })
    .await;
    (gap, got, tries)
}

/// The next line of a stream (without its `\n`), or `None` once the stream ended.
async fn next_line(open: &mut Open) -> Option<String> {
    loop {
        if let Some(mut line) = open.take_until("\n") {
            line.pop();
            return Some(line);
        }
        if !matches!(open.try_fill().await, Ok(true)) {
            return None;
        }
    }
}
