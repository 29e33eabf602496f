//! What only NATS has (issue 16): Halley's stream deleted under the nodes (a new epoch), and
//! one server alone (R1) going away and coming back with its store. Everything else several
//! nodes on NATS do is the broker-generic suite, `crates/halley-testkit/tests/cluster.rs`
//! (and the kill test, `…/kill.rs`), run there on Redis, Sentinel and NATS alike.

mod common;

use std::time::Duration;

use common::{Nats, Node, WAIT, eventually, parse_id};
use hyper::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_created_again_is_a_new_epoch_and_old_ids_get_a_gap() {
    let nats = Nats::cluster().await;
    let a = Node::start(&nats).await;
    let b = Node::start(&nats).await;
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
    let a = Node::start(&nats).await;
    let b = Node::start(&nats).await;
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
