//! One cluster suite for every broker (issue 16): several Halley nodes on one broker behave as
//! one server, whichever broker it is. Each test below runs unchanged on one Redis
//! (`redis::…`), on Redis with Sentinel (`sentinel::…`: a master, two replicas, three
//! sentinels, `WAIT 1`) and on three clustered NATS servers (`nats::…`, the stream R3):
//! cross-node delivery on every transport, resume across nodes, history limits and gaps,
//! listing and presence, idempotency, the control API, and a broker outage survived.
//!
//! What only one broker has is tested in its own crate: Redis's log and `CLIENT KILL`
//! (`crates/halley-redis/tests/cluster.rs`), Sentinel's switchover and epoch rules
//! (`…/sentinel.rs`), NATS's stream deleted under the nodes and one server alone
//! (`crates/halley-nats/tests/cluster.rs`). The kill test is `tests/kill.rs`.

mod common;

use std::time::Duration;

use common::access::{KEY, chat_policy, chat_token};
use common::subscriber::{BAYEUX, Item, NATIVE, Subscriber};
use common::{
    BrokerKind, Client, Node, Sse, TestBroker, WAIT, eventually, parse_id, within, ws_json,
};
use futures_util::StreamExt;
use halley_engine::EngineConfig;
use halley_engine::access::{AccessConfig, NamespaceConfig, Policy};
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

every_broker!(
    publish_on_a_reaches_sse_on_b_and_websocket_wildcard_on_c,
    every_transport_on_b_gets_what_a_publishes,
    resume_on_c_with_ids_from_a_and_b,
    evicted_history_is_a_gap_on_exact_and_wildcard_resumes,
    max_channels_counts_every_nodes_channels,
    history_limits_per_channel_hold_across_nodes,
    expired_history_is_forgotten_and_resumes_from_before_get_a_gap,
    wildcard_resume_over_many_channels_delivers_everything_in_batches,
    resume_beyond_a_thousand_delivers_everything,
    history_gives_back_exactly_what_was_published,
    racing_publishes_to_one_channel_all_land_without_a_gap,
    recent_on_b_while_a_publishes_a_burst,
    message_type_and_ttl_across_nodes,
    idempotency_key_holds_across_nodes,
    bayeux_on_b_gets_what_a_publishes_and_publishes_to_sse_on_a,
    api_channels_sees_other_nodes_until_they_die,
    chat_members_are_cluster_wide_and_moving_between_nodes_is_silent,
    a_channel_is_occupied_and_vacated_once_for_the_cluster,
    the_control_api_on_one_node_disconnects_a_user_on_another,
    unsubscribing_on_one_node_takes_the_channel_off_on_another,
    a_revocation_reaches_every_node_also_one_that_starts_later,
    without_the_broker_the_call_says_the_other_nodes_were_not_reached,
    max_subscribers_is_a_cluster_wide_cap,
    a_broker_outage_is_503_then_delivery_resumes_by_itself,
);

/// `n` nodes on `broker`, each with its engine settings adjusted by `tweak`.
async fn nodes(broker: &TestBroker, n: usize, tweak: fn(&mut EngineConfig)) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Node::with(broker, tweak).await);
    }
    nodes
}

fn untweaked(_: &mut EngineConfig) {}

async fn publish_on_a_reaches_sse_on_b_and_websocket_wildcard_on_c(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let [a, b, c] = <[Node; 3]>::try_from(nodes(&broker, 3, untweaked).await)
        .ok()
        .unwrap();
    let mut sse = b.sse("/room/x", None).await;
    let mut ws = c.ws("/sub/room/**").await;

    let first = a.publish("/room/x", "hello").await;
    assert_eq!(first["subscribers"], 0, "A has no subscriber of its own");
    // A name NATS could not take as a subject token as it is ('.').
    let second = b.publish("/room/y.z", "elsewhere").await;
    assert_eq!(
        second["subscribers"], 0,
        "B's subscriber is of /room/x only"
    );
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
    for node in [&a, &b, &c] {
        let listed = node.get("/api/channels?prefix=/room/").await.json();
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
}

/// A subscriber of every transport on B — the eight of the native API (SSE, chunked stream,
/// forever-iframe, multipart, long-poll, JSONP, WebSocket, rupy's pull) and Bayeux's three —
/// gets what is published on A, in order (from an id of A's); then each is cut and resumes on C with its last id
/// (Bayeux: its session moves nowhere, so it comes back to B) and gets what was published
/// meanwhile, nothing lost or doubled.
async fn every_transport_on_b_gets_what_a_publishes(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let [a, b, c] = <[Node; 3]>::try_from(nodes(&broker, 3, untweaked).await)
        .ok()
        .unwrap();
    let on = |node: &Node| Client {
        addr: node.addr,
        wait: WAIT,
    };
    // Every subscriber starts from this id: a poller is subscribed only while it polls.
    let start = a.publish_id("/every/start", "start").await;
    let mut subscribers = Vec::new();
    for kind in NATIVE.iter().chain(BAYEUX.iter()) {
        let mut s = Subscriber::new(*kind, "/every/**", Some(start.clone()));
        s.connect(&on(&b)).await;
        subscribers.push(s);
    }
    let mut published = Vec::new();
    for i in 0..3 {
        let data = format!("first {i}");
        published.push((a.publish_id(&format!("/every/{i}"), &data).await, data));
    }
    for s in &mut subscribers {
        for (id, data) in &published {
            let item = s.next(&on(&b)).await;
            expect_message(s, item, id, data);
        }
    }
    // Cut, three more published, resumed on C (a Bayeux session stays on B: it reconnects
    // there, with its acknowledged batch).
    for s in &mut subscribers {
        s.cut();
    }
    let mut later = Vec::new();
    for i in 0..3 {
        let data = format!("later {i}");
        later.push((a.publish_id(&format!("/every/{i}"), &data).await, data));
    }
    for s in &mut subscribers {
        let node = if s.kind.is_bayeux() { &b } else { &c };
        for (id, data) in &later {
            let mut item = s.next(&on(node)).await;
            // Bayeux's ack extension sends a batch again when its acknowledgement (the next
            // connect) never came: at least once, as a CometD client dedupes by id.
            while s.kind.is_bayeux()
                && matches!(&item, Item::Message { id: Some(got), .. }
                    if published.iter().any(|(seen, _)| seen == got))
            {
                item = s.next(&on(node)).await;
            }
            expect_message(s, item, id, data);
        }
    }
}

/// `item` is the message `id` (or, where the wire has no ids, its `data`: then the
/// subscriber resumes from `id`, as rupy's client maps what it pulled to its position).
fn expect_message(s: &mut Subscriber, item: Item, id: &str, data: &str) {
    match item {
        Item::Message {
            id: got,
            data: got_data,
        } => {
            if s.kind.has_ids() {
                assert_eq!(got.as_deref(), Some(id), "{:?}", s.kind);
            } else {
                s.last_id = Some(id.to_owned());
            }
            assert_eq!(got_data, data, "{:?}", s.kind);
        }
        other => panic!("{:?}: expected {id} {data:?}, got {other:?}", s.kind),
    }
}

async fn resume_on_c_with_ids_from_a_and_b(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let [a, b, c] = <[Node; 3]>::try_from(nodes(&broker, 3, untweaked).await)
        .ok()
        .unwrap();
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

async fn evicted_history_is_a_gap_on_exact_and_wildcard_resumes(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let [a, b] = <[Node; 2]>::try_from(nodes(&broker, 2, |e| e.history_size = 2).await)
        .ok()
        .unwrap();
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
    for pattern in ["/h/a", "/h/**"] {
        let s = a
            .stream(
                &format!("/sub{pattern}?transport=stream&format=json&last_id={id3}"),
                &[],
            )
            .await;
        assert_eq!(s.header("x-halley-gap"), None, "{pattern}");
    }

    // Every node lists every channel with history.
    let listed = b.get("/api/channels?prefix=/h/").await.json();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["channel"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["/h/a", "/h/b"]);
}

/// `max_channels` counts the broker's channels, whichever node created them: past it, a
/// publish to a new channel is refused (a node may read the count a moment late: each try is
/// another new channel), an existing channel still takes messages.
async fn max_channels_counts_every_nodes_channels(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let [a, b] = <[Node; 2]>::try_from(nodes(&broker, 2, |e| e.max_channels = 2).await)
        .ok()
        .unwrap();
    a.publish_id("/m/a", "x").await;
    b.publish_id("/m/b", "x").await;
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

/// Namespaces' `history-size` and `history-ttl` hold across nodes: each channel's history is
/// trimmed and aged by its own rule, whichever node publishes; `recent` reads the newest.
async fn history_limits_per_channel_hold_across_nodes(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let tweak = |e: &mut EngineConfig| {
        e.history_size = 3;
        e.history_rules =
            halley_engine::HistoryRules::new(|channel| match channel.as_str().split('/').nth(1) {
                Some("short") => (Some(1), None),
                Some("brief") => (None, Some(Duration::from_secs(1))),
                _ => (None, None),
            });
    };
    let [a, b] = <[Node; 2]>::try_from(nodes(&broker, 2, tweak).await)
        .ok()
        .unwrap();
    let mut first = Vec::new();
    for channel in ["/short/a", "/plain/a"] {
        first.push(a.publish_id(channel, "1").await);
        b.publish_id(channel, "2").await;
        a.publish_id(channel, "3").await;
        b.publish_id(channel, "4").await;
    }
    assert_eq!(history(&b, "/short/a").await, ["4"]);
    assert_eq!(history(&b, "/plain/a").await, ["2", "3", "4"]);
    let mut s = b
        .stream(
            &format!(
                "/sub/short/a?transport=stream&format=json&last_id={}",
                first[0]
            ),
            &[],
        )
        .await;
    assert_eq!(s.header("x-halley-gap"), Some("true"));
    assert_eq!(s.json_line().await["event"], "gap");
    assert_eq!(s.json_line().await["data"].as_str(), Some("4"));

    // The newest 2 asked for are the newest 2, oldest first.
    let mut s = a
        .stream("/sub/plain/a?transport=stream&format=json&recent=2", &[])
        .await;
    assert_eq!(s.json_line().await["data"].as_str(), Some("3"));
    assert_eq!(s.json_line().await["data"].as_str(), Some("4"));

    // A one-second history: gone once it has aged, while the default channel keeps its own.
    let brief = a.publish_id("/brief/a", "1").await;
    eventually(WAIT, "the brief channel's history aged out", || async {
        history(&b, "/brief/a").await.is_empty().then_some(())
    })
    .await;
    assert_eq!(history(&a, "/plain/a").await, ["2", "3", "4"]);
    let s = a
        .stream(
            &format!("/sub/brief/a?transport=stream&format=json&last_id={brief}"),
            &[],
        )
        .await;
    assert_eq!(
        s.header("x-halley-gap"),
        None,
        "nothing was missed after it"
    );
}

/// The data of the messages `/api/history` holds for `channel` on `node`, oldest first.
async fn history(node: &Node, channel: &str) -> Vec<String> {
    let reply = node
        .get(&format!("/api/history?channel={channel}&limit=10"))
        .await;
    assert_eq!(reply.status, 200, "history of {channel}: {}", reply.body);
    reply.json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_owned())
        .collect()
}

async fn expired_history_is_forgotten_and_resumes_from_before_get_a_gap(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let tweak = |e: &mut EngineConfig| e.history_ttl = Duration::from_secs(1);
    let [a, b] = <[Node; 2]>::try_from(nodes(&broker, 2, tweak).await)
        .ok()
        .unwrap();
    let id0 = a.publish_id("/e/a", "0").await;
    b.publish_id("/e/b", "1").await;
    eventually(WAIT, "expired history forgotten", || async {
        (history(&b, "/e/a").await.is_empty() && history(&a, "/e/b").await.is_empty()).then_some(())
    })
    .await;
    let id2 = a.publish_id("/e/c", "2").await;
    let mut s = b
        .stream(
            &format!("/sub/e/**?transport=stream&format=json&last_id={id0}"),
            &[],
        )
        .await;
    assert_eq!(s.header("x-halley-gap"), Some("true"));
    assert_eq!(s.json_line().await["event"], "gap");
    assert_eq!(s.json_line().await["id"].as_str(), Some(&*id2));
}

/// A wildcard resume over many channels reads them a small batch at a time (`replay_batch`
/// 5 here) and delivers everything, in id order, with no gap.
async fn wildcard_resume_over_many_channels_delivers_everything_in_batches(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let [a, b] = <[Node; 2]>::try_from(nodes(&broker, 2, |e| e.replay_batch = 5).await)
        .ok()
        .unwrap();
    let first = a.publish_id("/w/start", "0").await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let node = if i % 2 == 0 { &a } else { &b };
        ids.push(
            node.publish_id(&format!("/w/{}", i % 20), &i.to_string())
                .await,
        );
    }
    let mut s = b
        .stream(
            &format!(
                "/sub?channel=/w/**&channel=/w/3&transport=stream&format=json&last_id={first}"
            ),
            &[],
        )
        .await;
    assert_eq!(s.header("x-halley-gap"), None);
    for id in &ids {
        assert_eq!(s.json_line().await["id"].as_str(), Some(&**id));
    }
    let live = a.publish_id("/w/3", "live").await;
    assert_eq!(s.json_line().await["id"].as_str(), Some(&*live));
}

async fn engine_publish(node: &Node, channel: &str, text: &str) -> String {
    let channel = halley_proto::Channel::parse(channel).unwrap();
    let published = node
        .engine
        .publish(channel, halley_proto::Payload::string(text))
        .await
        .unwrap();
    published.message.id.to_string()
}

/// With a history of 10,000, a resume 1,500 back on another node gets all 1,500 (SSE and
/// long-poll), no gap, then live messages without a duplicate.
async fn resume_beyond_a_thousand_delivers_everything(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let [a, b] = <[Node; 2]>::try_from(nodes(&broker, 2, |e| e.history_size = 10_000).await)
        .ok()
        .unwrap();
    let mut ids = Vec::new();
    for i in 1..=1_600 {
        ids.push(engine_publish(&a, "/far", &format!("m{i}")).await);
    }
    let after = &ids[99];
    let mut sse = b.sse("/far", Some(after)).await;
    assert_eq!(sse.open.header("x-halley-gap"), None);
    let during = a.publish_id("/far", "during").await;
    for i in 101..=1_600 {
        let event = sse.next().await;
        assert_eq!(
            (event.id.as_deref(), event.data.as_str()),
            (Some(&*ids[i - 1]), &*format!("m{i}"))
        );
    }
    let event = sse.next().await;
    assert_eq!(
        (event.id.as_deref(), event.data.as_str()),
        (Some(&*during), "during")
    );
    let live = a.publish_id("/far", "live").await;
    assert_eq!(sse.next().await.id.as_deref(), Some(&*live));

    let mut from = after.clone();
    let mut seen = Vec::new();
    for expected in [1_000, 502] {
        let reply = b.get(&format!("/sub/far?last_id={from}")).await;
        assert_eq!(reply.header("x-halley-gap"), None);
        let batch = reply.json();
        let batch = batch.as_array().unwrap();
        assert_eq!(batch.len(), expected);
        from = reply.header("x-halley-last-id").unwrap().to_owned();
        seen.extend(batch.iter().map(|m| m["data"].as_str().unwrap().to_owned()));
    }
    let wanted: Vec<String> = (101..=1_600)
        .map(|i| format!("m{i}"))
        .chain(["during".into(), "live".into()])
        .collect();
    assert_eq!(seen, wanted);
}

/// What cannot be stored is refused at publish; what is stored (as deep as allowed, a
/// surrogate pair, members in the publisher's order) is given back byte for byte by another
/// node's `/api/history` and resume.
async fn history_gives_back_exactly_what_was_published(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let [a, b] = <[Node; 2]>::try_from(nodes(&broker, 2, untweaked).await)
        .ok()
        .unwrap();
    let depth = halley_proto::MAX_DEPTH;
    let too_deep = format!("{}{}", "[".repeat(depth + 1), "]".repeat(depth + 1));
    for body in [
        too_deep.as_str(),
        r#"{"s":"\ud800"}"#,
        r#"{"\u0070resence":"join"}"#,
    ] {
        let reply = a
            .send(
                a.request("POST", "/pub/st")
                    .header("content-type", "application/json")
                    .body(body.to_owned().into())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    }
    let before = a.publish_id("/st", "before").await;
    let data = format!(
        r#"{{"z":1,"a":"\ud83d\ude00\u2028","deep":{}{}}}"#,
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    );
    let reply = a
        .send(
            a.request("POST", "/pub/st")
                .header("content-type", "application/json")
                .body(data.clone().into())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    let object = format!(r#"{{"channel":"/st","id":"{id}","data":{data}}}"#);
    let history = b.get("/api/history?channel=/st").await;
    assert_eq!(
        history.body,
        format!(
            r#"{{"channel":"/st","messages":[{{"channel":"/st","id":"{before}","data":"before"}},{object}]}}"#
        )
    );
    let poll = b.get(&format!("/sub/st?last_id={before}")).await;
    assert_eq!(poll.body, format!("[{object}]"));
}

/// Publishes racing on one channel from two nodes: all succeed, and a resume from before
/// them gets every one without a gap.
async fn racing_publishes_to_one_channel_all_land_without_a_gap(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let [a, b] = <[Node; 2]>::try_from(nodes(&broker, 2, untweaked).await)
        .ok()
        .unwrap();
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

/// `recent=N` on a node that did not publish, while another node publishes a burst: the newest
/// from the broker's history, then the live flow, one run with nothing missed or doubled at
/// the seam.
async fn recent_on_b_while_a_publishes_a_burst(kind: BrokerKind) {
    const BEFORE: u32 = 10;
    const BURST: u32 = 200;
    let broker = TestBroker::start(kind).await;
    let [a, b] = <[Node; 2]>::try_from(nodes(&broker, 2, untweaked).await)
        .ok()
        .unwrap();
    for i in 1..=BEFORE {
        a.publish_id("/recent/x", &i.to_string()).await;
    }
    let publisher = {
        let client = Client::new(a.addr);
        tokio::spawn(async move {
            for i in BEFORE + 1..=BEFORE + BURST {
                let reply = client
                    .post("/pub/recent/x", "text/plain", i.to_string())
                    .await;
                assert_eq!(reply.status, 200, "{}", reply.body);
            }
        })
    };
    let mut open = b
        .stream("/sub/recent/x?transport=stream&format=json&recent=4", &[])
        .await;
    let mut got: Vec<(u32, bool)> = Vec::new();
    while got.last().is_none_or(|(n, _)| *n < BEFORE + BURST) {
        let m = open.json_line().await;
        if m.get("event").is_some() {
            continue;
        }
        let n: u32 = m["data"].as_str().unwrap().parse().unwrap();
        got.push((n, m["recent"] == true));
    }
    publisher.await.unwrap();
    for pair in got.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "{got:?}");
        // The newest come first, all of them before the first live one.
        assert!(pair[0].1 || !pair[1].1, "{got:?}");
    }
    // The newest 4 at B's position: what B had received when it subscribed (on NATS it may
    // not have A's last acknowledged message yet; that one then comes live, right after).
    assert_eq!(got.iter().filter(|(_, r)| *r).count(), 4, "{got:?}");
}

/// A message's type and time to live travel through the broker: SSE on another node gets the
/// `event:` name, history there says `"type"`, and the short-lived message leaves history
/// (for a resume, without a gap) when it expires.
async fn message_type_and_ttl_across_nodes(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let [a, b] = <[Node; 2]>::try_from(nodes(&broker, 2, untweaked).await)
        .ok()
        .unwrap();
    let mut sse = b.sse("/typed/x", None).await;
    let first = a.publish_id("/typed/x", "first").await;
    for path in ["/pub/typed/x?type=tick", "/pub/typed/x?type=gone&ttl=1"] {
        let reply = a.post(path, "1").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    assert_eq!(sse.next().await.event, None);
    assert_eq!(sse.next().await.event.as_deref(), Some("tick"));
    assert_eq!(sse.next().await.event.as_deref(), Some("gone"));
    let history = b.get("/api/history?channel=/typed/x").await.json();
    assert_eq!(history["messages"][1]["type"], "tick");
    eventually(WAIT, "the ttl=1 message to leave history", || async {
        let reply = b
            .get(&format!("/sub/typed/x?transport=longpoll&last_id={first}"))
            .await;
        let messages = reply.json();
        (reply.header("x-halley-gap").is_none()
            && messages
                .as_array()
                .is_some_and(|m| m.len() == 1 && m[0]["type"] == "tick"))
        .then_some(())
    })
    .await;
}

/// An idempotent publish retried on another node (its answer lost, the client's retry landed
/// elsewhere): one message, the first answer again; the same key with other data refused
/// there too; racing retries on both nodes publish once.
async fn idempotency_key_holds_across_nodes(kind: BrokerKind) {
    use bytes::Bytes;
    use http_body_util::Full;
    let broker = TestBroker::start(kind).await;
    let [a, b] = <[Node; 2]>::try_from(nodes(&broker, 2, untweaked).await)
        .ok()
        .unwrap();
    let post = |node: &Node, key: &'static str, body: &'static str| {
        let client = Client::new(node.addr);
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

async fn bayeux_on_b_gets_what_a_publishes_and_publishes_to_sse_on_a(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let [a, b] = <[Node; 2]>::try_from(nodes(&broker, 2, untweaked).await)
        .ok()
        .unwrap();
    let handshake = b
        .bayeux(json!([{
            "channel": "/meta/handshake", "version": "1.0", "id": "h",
            "supportedConnectionTypes": ["long-polling"],
        }]))
        .await;
    assert_eq!(handshake[0]["successful"], true, "{handshake:?}");
    let client = handshake[0]["clientId"].as_str().unwrap().to_owned();
    let replies = b
        .bayeux(json!([
            {"channel": "/meta/subscribe", "clientId": client, "subscription": "/bx/*", "id": "s"},
            {"channel": "/meta/connect", "clientId": client, "connectionType": "long-polling",
             "advice": {"timeout": 0}, "id": "c0"},
        ]))
        .await;
    assert!(
        replies.iter().all(|r| r["successful"] == true),
        "{replies:?}"
    );

    // Published on A (native /pub), delivered to B's Bayeux session.
    let id = a.publish_id("/bx/room", "hello").await;
    let replies = b
        .bayeux(json!([{"channel": "/meta/connect", "clientId": client,
                        "connectionType": "long-polling", "id": "c1"}]))
        .await;
    assert_eq!(
        replies[0],
        json!({"channel": "/bx/room", "id": id, "data": "hello"}),
        "{replies:?}"
    );

    // Published with Bayeux on B, delivered to an SSE subscriber on A.
    let mut sse = a.sse("/bx/room", None).await;
    let replies = b
        .bayeux(json!([{"channel": "/bx/room", "clientId": client, "data": {"n": 1}, "id": "p"}]))
        .await;
    assert!(
        replies
            .iter()
            .any(|r| r["id"] == "p" && r["successful"] == true),
        "{replies:?}"
    );
    assert_eq!(sse.next().await.data, r#"{"n":1}"#);
}

async fn api_channels_sees_other_nodes_until_they_die(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let [a, mut b] = <[Node; 2]>::try_from(nodes(&broker, 2, untweaked).await)
        .ok()
        .unwrap();
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

fn declare(channel: &str, member: &str, name: &str) -> String {
    let text = json!({"channel": channel, "member": member, "info": {"name": name}}).to_string();
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn chat_members_are_cluster_wide_and_moving_between_nodes_is_silent(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let [a, b, c] = <[Node; 3]>::try_from(nodes(&broker, 3, untweaked).await)
        .ok()
        .unwrap();
    // Longer than a few presence intervals (100 ms here), so that another node has written
    // a moved member before this one's grace runs out.
    for node in [&a, &b, &c] {
        node.engine.set_presence_grace(Duration::from_secs(2));
    }
    let mut watcher = c
        .stream("/sub/talk/r?transport=stream&format=json", &[])
        .await;
    let mut fence_watcher = c
        .stream("/sub/talk/fence?transport=stream&format=json", &[])
        .await;
    let stream = |channel: &str, presence: String| {
        format!("/sub{channel}?transport=stream&format=json&presence={presence}")
    };
    let on_a = a
        .stream(
            &stream("/talk/r", declare("/talk/r", "member-alice", "alice")),
            &[],
        )
        .await;
    let bob = b
        .stream(
            &stream("/talk/r", declare("/talk/r", "member-bob00", "bob")),
            &[],
        )
        .await;
    let mut notices = Vec::new();
    for _ in 0..2 {
        notices.push(watcher.json_line().await["data"].clone());
    }
    assert!(
        notices.contains(&json!({"presence": "join", "info": {"name": "alice"}})),
        "{notices:?}"
    );
    assert!(
        notices.contains(&json!({"presence": "join", "info": {"name": "bob"}})),
        "{notices:?}"
    );

    // Every node lists both, whichever node they are connected to.
    for node in [&a, &b, &c] {
        eventually(WAIT, "members listed cluster-wide", || async {
            let listing = node.get("/api/presence?prefix=/talk/r").await.json();
            (listing["channels"][0]["count"] == 2).then_some(())
        })
        .await;
    }

    // A member of A's own on another channel: its leave, announced when A's grace runs out,
    // tells that A's sweep has also dealt with alice (who left A before it).
    let fence = a
        .stream(
            &stream("/talk/fence", declare("/talk/fence", "member-fence", "f")),
            &[],
        )
        .await;
    assert_eq!(
        fence_watcher.json_line().await["data"],
        json!({"presence": "join", "info": {"name": "f"}})
    );

    // alice's connection moves from A to B (a reconnect through a load balancer): no leave,
    // no join, anywhere.
    let on_b = b
        .stream(
            &stream("/talk/r", declare("/talk/r", "member-alice", "alice")),
            &[],
        )
        .await;
    a.wait_subscribers("/talk/r", 4).await;
    drop(on_a);
    // A has seen alice go (its own count is at once) before the fence goes.
    a.wait_subscribers("/talk/r", 3).await;
    drop(fence);
    assert_eq!(
        fence_watcher.json_line().await["data"],
        json!({"presence": "leave", "info": {"name": "f"}})
    );
    a.publish("/talk/r", "marker").await;
    assert_eq!(
        watcher.json_line().await["data"],
        "marker",
        "no leave or join for a move"
    );
    let listing = c.get("/api/presence?channel=/talk/r").await.json();
    assert_eq!(listing["members"].as_array().unwrap().len(), 2, "{listing}");

    // Leaving for good is announced once, by the node it left from.
    drop(on_b);
    assert_eq!(
        watcher.json_line().await["data"],
        json!({"presence": "leave", "info": {"name": "alice"}})
    );
    a.publish("/talk/r", "end").await;
    assert_eq!(
        watcher.json_line().await["data"],
        "end",
        "one leave, no more"
    );
    // Somebody arriving on any node gets the room's recent lines from the shared history.
    let recent = b.get("/api/history?channel=/talk/r&limit=2").await.json();
    let lines: Vec<_> = recent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(lines[1], json!("end"), "{recent}");
    // Other nodes see it within a presence interval.
    eventually(WAIT, "alice gone from A's listing", || async {
        let listing = a.get("/api/presence?channel=/talk/r").await.json();
        (listing["members"] == json!([{"name": "bob"}])).then_some(())
    })
    .await;
    drop(bob);
}

/// Every event an engine's observer is told, as `"<kind> <channel>"`.
#[derive(Default)]
struct Told(std::sync::Mutex<Vec<String>>);

impl halley_engine::observe::Observer for Told {
    fn observe(&self, event: halley_engine::observe::Event) {
        use halley_engine::observe::Event;
        let kind = match &event {
            Event::Occupied { .. } => "occupied",
            Event::Vacated { .. } => "vacated",
            _ => return,
        };
        self.0
            .lock()
            .unwrap()
            .push(format!("{kind} {}", event.channel()));
    }
}

impl Told {
    fn has(&self, line: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l == line)
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

async fn a_channel_is_occupied_and_vacated_once_for_the_cluster(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let [a, b] = <[Node; 2]>::try_from(nodes(&broker, 2, untweaked).await)
        .ok()
        .unwrap();
    let (on_a, on_b) = (
        std::sync::Arc::new(Told::default()),
        std::sync::Arc::new(Told::default()),
    );
    for (node, told) in [(&a, &on_a), (&b, &on_b)] {
        // Several presence intervals (100 ms here): the other node's counts are written by then.
        node.engine.set_presence_grace(Duration::from_secs(1));
        let observer: std::sync::Arc<dyn halley_engine::observe::Observer> = told.clone();
        assert!(
            node.engine
                .set_observer(observer, halley_engine::observe::Kinds::DEFAULT)
                .is_ok()
        );
    }
    let first = a.sse("/occ/x", None).await;
    eventually(WAIT, "A tells /occ/x occupied", || async {
        on_a.has("occupied /occ/x").then_some(())
    })
    .await;
    // B knows A's subscriber before its own arrives: it tells nothing.
    b.wait_subscribers("/occ/x", 1).await;
    let second = b.sse("/occ/x", None).await;
    a.wait_subscribers("/occ/x", 2).await;

    // A's subscriber leaves while B's stays: A tells nothing. A channel of A's own, left at the
    // same moment, shows when A's grace has run out (the same sweep decides both).
    let fence = a.sse("/occ/fence", None).await;
    eventually(WAIT, "A tells /occ/fence occupied", || async {
        on_a.has("occupied /occ/fence").then_some(())
    })
    .await;
    drop(first);
    drop(fence);
    eventually(WAIT, "A tells /occ/fence vacated", || async {
        on_a.has("vacated /occ/fence").then_some(())
    })
    .await;
    // B's leaves last, a second after A's was decided: B tells it vacated.
    drop(second);
    eventually(WAIT, "B tells /occ/x vacated", || async {
        on_b.has("vacated /occ/x").then_some(())
    })
    .await;
    assert_eq!(
        on_a.all(),
        [
            "occupied /occ/x",
            "occupied /occ/fence",
            "vacated /occ/fence"
        ]
    );
    assert_eq!(on_b.all(), ["vacated /occ/x"]);
}

fn token(user: &str) -> String {
    chat_token(&chat_policy(), user)
}

async fn control(node: &Node, path: &str, body: Value) -> (u16, Value) {
    let reply = node
        .post(&format!("{path}?key={KEY}"), &body.to_string())
        .await;
    (reply.status.as_u16(), reply.json())
}

async fn listing(node: &Node, user: &str) -> Value {
    let reply = node
        .get(&format!("/api/control/user?user={user}&key={KEY}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// An SSE subscriber with `token` (the stream is open once this returns).
async fn sse(node: &Node, path: &str, token: &str) -> Sse {
    let mut open = node
        .stream(
            &format!("{path}&token={token}"),
            &[("accept", "text/event-stream")],
        )
        .await;
    open.until("retry: ").await;
    open.until("\n\n").await;
    Sse { open }
}

/// Two nodes asking `chat_policy()`, once each counts the other among the nodes a control call
/// reaches (it learns of it from the other's presence writes).
async fn policed(broker: &TestBroker) -> (Node, Node) {
    let (a, b) = (
        Node::with_policy(broker, chat_policy()).await,
        Node::with_policy(broker, chat_policy()).await,
    );
    for node in [&a, &b] {
        eventually(WAIT, "the other node known", || async {
            (listing(node, "nobody").await["nodes"]["others"] == 1).then_some(())
        })
        .await;
    }
    (a, b)
}

async fn the_control_api_on_one_node_disconnects_a_user_on_another(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let (a, b) = policed(&broker).await;
    let alice = token("alice");
    let mut on_b = sse(&b, "/sub/chat/a?transport=sse", &alice).await;
    let mut ws = b.ws(&format!("/sub/chat/a?token={alice}")).await;
    let mut bob = sse(&b, "/sub/chat/a?transport=sse", &token("bob")).await;

    // Listed from A: both connections, on B.
    let listed = listing(&a, "alice").await;
    assert_eq!(listed["count"], 2, "{listed}");
    assert_eq!(listed["nodes"], json!({"others": 1, "answered": 1}));
    let b_hex = format!("{:x}", b.broker.node());
    let rows: Vec<(Value, Value, Value)> = listed["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["node"].clone(),
                c["transport"].clone(),
                c["channels"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (json!(b_hex), json!("sse"), json!(["/chat/a"])),
            (json!(b_hex), json!("websocket"), json!(["/chat/a"])),
        ]
    );

    // Disconnected from A: B ends both at once, each with its notice.
    let (status, reply) = control(
        &a,
        "/api/control/disconnect",
        json!({"user": "alice", "reason": "bye"}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply,
        json!({"user": "alice", "disconnected": 2, "nodes": {"others": 1, "answered": 1}})
    );
    let event = on_b.next().await;
    assert_eq!(event.event.as_deref(), Some("disconnected"));
    assert_eq!(
        serde_json::from_str::<Value>(&event.data).unwrap(),
        json!({"event": "disconnected", "reason": "bye"})
    );
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"event": "disconnected", "reason": "bye"})
    );
    match within("the close", ws.next()).await {
        Some(Ok(Frame::Close(Some(close)))) => {
            assert_eq!(close.code, CloseCode::Policy);
            assert_eq!(close.reason, "bye");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    assert_eq!(listing(&a, "alice").await["count"], 0);
    // Bob, on the same node, carries on.
    a.post(&format!("/pub/chat/a?key={KEY}"), "for bob").await;
    assert_eq!(bob.next().await.data, "for bob");
}

async fn unsubscribing_on_one_node_takes_the_channel_off_on_another(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let (a, b) = policed(&broker).await;
    let alice = token("alice");
    let mut on_b = sse(
        &b,
        "/sub?channel=/chat/a&channel=/chat/b&transport=sse&format=json",
        &alice,
    )
    .await;
    let (status, reply) = control(
        &a,
        "/api/control/unsubscribe",
        json!({"user": "alice", "channel": "/chat/a"}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["unsubscribed"], 1, "{reply}");
    let event = on_b.next().await;
    assert_eq!(event.event.as_deref(), Some("unsubscribed"));
    assert!(event.data.contains(r#""channel":"/chat/a""#), "{event:?}");
    a.post(&format!("/pub/chat/a?key={KEY}"), "gone").await;
    a.post(&format!("/pub/chat/b?key={KEY}"), "kept").await;
    let next = on_b.next().await;
    assert!(next.data.contains(r#""data":"kept""#), "{next:?}");
}

async fn a_revocation_reaches_every_node_also_one_that_starts_later(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let (a, b) = policed(&broker).await;
    let alice = token("alice");
    let mut on_b = sse(&b, "/sub/chat/a?transport=sse", &alice).await;

    let (status, reply) = control(&a, "/api/control/revoke", json!({"user": "alice"})).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["disconnected"], 1, "{reply}");
    let event = on_b.next().await;
    assert_eq!(event.event.as_deref(), Some("expired"));
    assert!(event.data.contains("token revoked"), "{event:?}");
    // Refused on both nodes from now on, and on a node that joins afterwards.
    let c = Node::with_policy(&broker, chat_policy()).await;
    for node in [&a, &b, &c] {
        let refused = node.get(&format!("/sub/chat/a?token={alice}")).await;
        assert_eq!(refused.status, 401, "{}", refused.body);
        assert!(refused.body.contains("revoked"), "{}", refused.body);
    }
    // Bob was not revoked.
    let _fine = sse(&c, "/sub/chat/a?transport=sse", &token("bob")).await;
}

/// With the broker gone, a control call says the other nodes were not reached, and this
/// node did its part all the same.
async fn without_the_broker_the_call_says_the_other_nodes_were_not_reached(kind: BrokerKind) {
    let mut broker = TestBroker::start(kind).await;
    let a = Node::with_policy(&broker, chat_policy()).await;
    let alice = token("alice");
    let mut here = sse(&a, "/sub/chat/a?transport=sse", &alice).await;
    broker.kill_all();
    let (status, reply) = control(&a, "/api/control/disconnect", json!({"user": "alice"})).await;
    assert_eq!(status, 503, "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.contains("applied on this node only (count here: 1)"),
        "{error}"
    );
    // This node did its part all the same.
    assert_eq!(here.next().await.event.as_deref(), Some("disconnected"));
}

/// A namespace's `max-subscribers` counts every node's subscribers: with two on node A and
/// one on node B, a fourth is refused on B once A's count has reached the broker.
async fn max_subscribers_is_a_cluster_wide_cap(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let capped = || {
        let mut room = NamespaceConfig::new("/room/**");
        room.max_subscribers = Some(3);
        Policy::new(AccessConfig {
            publish_key: Some(KEY.into()),
            namespaces: vec![room],
            ..AccessConfig::default()
        })
        .unwrap()
    };
    let a = Node::with_policy(&broker, capped()).await;
    let b = Node::with_policy(&broker, capped()).await;
    let _a1 = a.stream("/sub/room/x?transport=stream", &[]).await;
    let _a2 = a.stream("/sub/room/x?transport=stream", &[]).await;
    let _b1 = b.stream("/sub/room/x?transport=stream", &[]).await;
    // B sees A's two once A's presence update (every 100 ms in these tests) is in the broker.
    eventually(WAIT, "B counts A's subscribers", || async {
        let rows = b
            .get("/api/channels?prefix=/room/&key=backend-key")
            .await
            .json();
        (rows[0]["subscribers"] == 3).then_some(())
    })
    .await;
    let refused = b.get("/sub/room/x?transport=longpoll").await;
    assert_eq!(refused.status.as_u16(), 503, "{}", refused.body);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("most subscribers")
    );
    // Another channel of the namespace has its own count.
    let other = b.stream("/sub/room/y?transport=stream", &[]).await;
    assert_eq!(other.status.as_u16(), 200);
}

/// Every server of the broker killed, then started again: publishes are refused with a 503
/// (never a 2xx for a message that goes nowhere), `/healthz` says degraded, and both nodes
/// come back by themselves; the subscriber held through it gets what is published after.
/// An id from before resumes without a gap where the broker kept its store (NATS), and with
/// an explicit gap where it came back empty (Redis, Sentinel without persistence).
async fn a_broker_outage_is_503_then_delivery_resumes_by_itself(kind: BrokerKind) {
    let mut broker = TestBroker::start(kind).await;
    let [a, b] = <[Node; 2]>::try_from(nodes(&broker, 2, untweaked).await)
        .ok()
        .unwrap();
    let mut sse = b.sse("/o/x", None).await;
    let old = a.publish_id("/o/x", "before").await;
    assert_eq!(sse.next().await.id.as_deref(), Some(&*old));
    assert_eq!(a.broker_errors(), 0);

    broker.kill_all();
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
    assert_eq!(a.get("/healthz").await.json()["status"], "degraded");
    assert!(a.broker_errors() > 0);

    broker.restart_all().await;
    for node in [&a, &b] {
        eventually(Duration::from_secs(40), "healthz ok again", || async {
            (node.health().await == StatusCode::OK).then_some(())
        })
        .await;
    }
    // A publish may still meet a broker settling (a Sentinel failover after the restart).
    let new = eventually(Duration::from_secs(40), "a publish accepted", || async {
        let reply = a.post("/pub/o/x", "after").await;
        (reply.status == 200).then(|| reply.json()["id"].as_str().unwrap().to_owned())
    })
    .await;
    // The subscriber held through the outage gets it on the same stream (after whatever of
    // the refused "during" publishes the broker may have kept: a 503 says "maybe").
    loop {
        let event = sse.next().await;
        if event.data == "during" {
            continue;
        }
        assert_eq!(
            (event.id.as_deref(), event.data.as_str()),
            (Some(&*new), "after")
        );
        break;
    }
    let kept = parse_id(&new).0 == parse_id(&old).0;
    assert_eq!(
        kept,
        kind == BrokerKind::Nats,
        "only NATS keeps its store (and epoch) through a restart: {old} then {new}"
    );
    let mut s = b
        .stream(
            &format!("/sub/o/x?transport=stream&format=json&last_id={old}"),
            &[],
        )
        .await;
    if kept {
        assert_eq!(s.header("x-halley-gap"), None);
    } else {
        assert_eq!(s.header("x-halley-gap"), Some("true"));
        assert_eq!(s.json_line().await["event"], "gap");
    }
    loop {
        let line = s.json_line().await;
        if line["data"] == "during" {
            continue;
        }
        assert_eq!(line["id"].as_str(), Some(&*new), "{line}");
        break;
    }
}
