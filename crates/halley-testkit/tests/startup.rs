//! Nodes started at the same moment as their NATS cluster (ignored: about a minute; run with
//! `cargo test -p halley-testkit --test startup -- --ignored`). Without the epoch being read
//! until it settles (`halley_nats::node::EPOCH_SETTLE`), 2 of 10 rounds had one node on an
//! epoch of its own (the answering server's copy time), which it then took for a new stream
//! and delivered again.

use std::time::Duration;

use halley_testkit::{Nats, Node, NodeBroker};

const ROUNDS: usize = 10;

fn epoch(node: &Node) -> Option<u64> {
    match &node.broker {
        NodeBroker::Nats(b) => b.epoch(),
        NodeBroker::Redis(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about a minute: ten clusters formed with nodes"]
async fn nodes_started_with_their_cluster_agree_on_one_epoch() {
    let mut split = Vec::new();
    for round in 0..ROUNDS {
        let nats = Nats::cluster_starting().await;
        let (a, b, c) = tokio::join!(Node::start(&nats), Node::start(&nats), Node::start(&nats));
        let nodes = [&a, &b, &c];
        let first: Vec<_> = nodes.iter().map(|n| epoch(n)).collect();
        for i in 0..30 {
            a.publish_id("/start/x", &i.to_string()).await;
        }
        // The nodes check the stream's epoch every second (`CHECK_INTERVAL`): a node on
        // another epoch than the stream's would have moved by now.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let later: Vec<_> = nodes.iter().map(|n| epoch(n)).collect();
        if first != later || later.iter().any(|e| *e != later[0]) {
            split.push(format!(
                "round {round}: at start {first:?}, 3 s later {later:?}"
            ));
        }
    }
    assert!(split.is_empty(), "{split:#?}");
}
