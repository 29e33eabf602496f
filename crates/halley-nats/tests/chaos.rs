//! One NATS server of three killed (and started again) in the middle of a publish loop, with
//! subscribers on three Halley nodes: no acknowledged message is lost or delivered twice, ids
//! keep growing, and a resume on any node afterwards gets them all again without a gap.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Nats, NatsNode, eventually, parse_id, ws_json};

/// Messages published in all; server 0 dies after a third and comes back after two thirds.
const MESSAGES: usize = 240;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_a_publish_loop_loses_no_acknowledged_message() {
    let mut nats = Nats::cluster().await;
    let nodes = [
        NatsNode::start(&nats).await,
        NatsNode::start(&nats).await,
        NatsNode::start(&nats).await,
    ];
    assert_eq!(
        nats.stream_replicas("HALLEY").await,
        3,
        "R3 on three servers"
    );
    let mut subscribers = Vec::new();
    for node in &nodes {
        subscribers.push(node.ws("/sub/chaos/**").await);
    }
    let mut acked: Vec<String> = Vec::new();
    let refused = std::cell::Cell::new(0);
    for i in 0..MESSAGES {
        if i == MESSAGES / 3 {
            nats.kill(0);
        }
        if i == 2 * MESSAGES / 3 {
            nats.restart(0).await;
        }
        let node = &nodes[i % nodes.len()];
        // A client retries a refused publish (503: not acknowledged) until it is accepted:
        // while the stream elects a new leader, and while the node reconnects.
        let id = eventually(Duration::from_secs(30), "a publish accepted", || async {
            let reply = node
                .post(&format!("/pub/chaos/{}", i % 5), &i.to_string())
                .await;
            match reply.status.as_u16() {
                200 => Some(reply.json()["id"].as_str().unwrap().to_owned()),
                503 => {
                    refused.set(refused.get() + 1);
                    None
                }
                other => panic!("publish {i}: {other} {}", reply.body),
            }
        })
        .await;
        acked.push(id);
    }
    let refused = refused.get();
    eprintln!("{} acknowledged, {refused} refused (503)", acked.len());
    let last = parse_id(acked.last().unwrap());
    for (n, ws) in subscribers.iter_mut().enumerate() {
        let mut seen = HashSet::new();
        let mut previous = (0, 0);
        loop {
            let frame = ws_json(ws).await;
            assert_ne!(
                frame["event"], "gap",
                "node {n}: a live subscriber got a gap"
            );
            let id = frame["id"].as_str().unwrap().to_owned();
            let parsed = parse_id(&id);
            assert!(parsed > previous, "node {n}: {id} after {previous:?}");
            previous = parsed;
            assert!(seen.insert(id), "node {n}: twice");
            if parsed >= last {
                break;
            }
        }
        let missing: Vec<&String> = acked.iter().filter(|id| !seen.contains(*id)).collect();
        assert!(
            missing.is_empty(),
            "node {n} missed acknowledged messages: {missing:?}"
        );
    }

    // Resumed on every node from the first acknowledged id, after the failover: everything
    // after it, in order, without a gap (history holds it all).
    for (n, node) in nodes.iter().enumerate() {
        let mut s = node
            .stream(
                &format!(
                    "/sub/chaos/**?transport=stream&format=json&last_id={}",
                    acked[0]
                ),
                &[],
            )
            .await;
        assert_eq!(s.header("x-halley-gap"), None, "node {n}");
        let mut seen = HashSet::new();
        let mut previous = parse_id(&acked[0]);
        while previous < last {
            let line = s.json_line().await;
            let id = line["id"].as_str().unwrap().to_owned();
            let parsed = parse_id(&id);
            assert!(parsed > previous, "node {n}: {id} after {previous:?}");
            previous = parsed;
            seen.insert(id);
        }
        let missing = acked[1..].iter().filter(|id| !seen.contains(*id)).count();
        assert_eq!(missing, 0, "node {n}: resumed without {missing} messages");
    }
}
