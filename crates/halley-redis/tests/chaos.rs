//! Chaos, bounded: three nodes, clients that keep hopping to a random node (and transport)
//! with their last id while messages flow from random nodes. Every client must end with every
//! message, in order, without duplicates or gaps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Node, Open, Redis, Sse, Ws, within_for, ws_json};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;
use tokio::sync::mpsc;

const NODES: usize = 3;
const CLIENTS: usize = 6;
const MESSAGES: usize = 300;
/// Bound on the whole run; a lost message shows up as a client that never finishes.
const DEADLINE: Duration = Duration::from_secs(90);

/// One connection of a client, on one of three transports.
enum Conn {
    Stream(Open),
    Ws(Box<Ws>),
    Sse(Sse),
}

/// A message or control event as (id, data, event).
type Item = (Option<String>, Option<String>, Option<String>);

impl Conn {
    async fn open(node: &Node, kind: usize, last_id: Option<&str>) -> Conn {
        let resume = last_id.map(|id| format!("last_id={id}"));
        match kind {
            0 => {
                let mut query = vec!["transport=stream".to_owned(), "format=json".to_owned()];
                query.extend(resume);
                let path = format!("/sub/chaos/**?{}", query.join("&"));
                Conn::Stream(node.stream(&path, &[]).await)
            }
            1 => {
                let path = match resume {
                    Some(r) => format!("/sub/chaos/**?{r}"),
                    None => "/sub/chaos/**".to_owned(),
                };
                Conn::Ws(Box::new(node.ws(&path).await))
            }
            _ => Conn::Sse(node.sse("/chaos/**", last_id).await),
        }
    }

    async fn next(&mut self) -> Item {
        let object = |v: Value| -> Item {
            let s = |k: &str| v[k].as_str().map(str::to_owned);
            (s("id"), s("data"), s("event"))
        };
        match self {
            Conn::Stream(open) => object(open.json_line().await),
            Conn::Ws(ws) => object(ws_json(ws).await),
            Conn::Sse(sse) => {
                let e = sse.next().await;
                (e.id, Some(e.data), e.event)
            }
        }
    }
}

/// Receives until it has `MESSAGES`, hopping after a random number of messages.
async fn client(
    nodes: Arc<Vec<Node>>,
    seed: u64,
    ready: mpsc::Sender<()>,
) -> Vec<(String, String)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut got: Vec<(String, String)> = Vec::new();
    let mut conn = Conn::open(&nodes[rng.random_range(0..NODES)], 0, None).await;
    ready.send(()).await.unwrap();
    let mut hops = 0;
    loop {
        let stay = rng.random_range(1..=25);
        for _ in 0..stay {
            let (id, data, event) = conn.next().await;
            assert_eq!(
                event,
                None,
                "client {seed}: control event after {} messages",
                got.len()
            );
            got.push((id.expect("message id"), data.expect("message data")));
            if got.len() == MESSAGES {
                return got;
            }
        }
        hops += 1;
        drop(conn);
        let node = &nodes[rng.random_range(0..NODES)];
        let last = got.last().map(|(id, _)| id.as_str());
        conn = Conn::open(node, hops % 3, last).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hopping_between_nodes_get_every_message_once_in_order() {
    let seed: u64 = rand::random();
    println!("chaos seed {seed}");
    let redis = Redis::start().await;
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(Node::start(&redis).await);
    }
    let nodes = Arc::new(nodes);

    let (ready_tx, mut ready_rx) = mpsc::channel(CLIENTS);
    let clients: Vec<_> = (0..CLIENTS as u64)
        .map(|i| tokio::spawn(client(nodes.clone(), seed ^ i, ready_tx.clone())))
        .collect();
    for _ in 0..CLIENTS {
        within_for(DEADLINE, "clients connect", ready_rx.recv()).await;
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let mut published = Vec::new();
    let run = async {
        for i in 0..MESSAGES {
            let node = &nodes[rng.random_range(0..NODES)];
            let id = node
                .publish_id(&format!("/chaos/{}", i % 4), &i.to_string())
                .await;
            published.push((id, i.to_string()));
        }
        let mut results = Vec::new();
        for c in clients {
            results.push(c.await.expect("client panicked"));
        }
        results
    };
    let results = within_for(DEADLINE, "chaos run", run).await;
    for (i, got) in results.iter().enumerate() {
        assert_eq!(got, &published, "client {i} (seed {seed})");
    }
}
