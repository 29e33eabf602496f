//! `halley_delivery_latency_seconds` in `/metrics`: publish→write latency by transport, for
//! live messages only — on every transport that delivers: `/sub`'s, Bayeux's (counted as the
//! transport they ride on, as in `halley_subscribers`: long-polling as `longpoll`,
//! callback-polling as `jsonp`, WebSocket as `websocket`, Faye's eventsource as `sse`) and
//! rupy's pull (`pull`). Its own test binary: the histogram is process-wide.

mod common;

use common::subscriber::{Item, Kind, Subscriber};
use common::{Client, TestServer, bayeux, bayeux_client, metric_value, read_until, ws_json};
use serde_json::{Value, json};

/// The histogram is one for the process and the tests run at once: each holds this, and
/// compares counts before and after what it does.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn count(metrics: &str, transport: &str) -> i64 {
    metric_value(
        metrics,
        &format!("halley_delivery_latency_seconds_count{{transport=\"{transport}\"}}"),
    )
    .unwrap_or_else(|| panic!("no count for {transport}:\n{metrics}"))
}

async fn count_of(client: &Client, transport: &str) -> i64 {
    count(&client.get("/metrics").await.body, transport)
}

/// The next message a testkit subscriber reads: its data.
async fn next_data(sub: &mut Subscriber, client: &Client) -> String {
    match sub.next(client).await {
        Item::Message { data, .. } => data,
        other => panic!(
            "{:?}: expected a message, got {other:?}\n{:?}",
            sub.kind, sub.trace
        ),
    }
}

#[tokio::test]
async fn live_writes_are_counted_per_transport_and_replays_are_not() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    let before = client.get("/metrics").await.body;
    let mut sse = s.sse("/lat/a", None).await;
    let mut stream = s.stream("/sub/lat/a?transport=stream&format=json").await;
    let mut ws = s.ws("/sub/lat/a").await;
    s.wait_subscribers("/lat/a", 3).await;
    let poll = tokio::spawn(async move { client.get("/sub/lat/a?transport=longpoll").await });
    s.wait_subscribers("/lat/a", 4).await;
    let id = s.publish("/lat/a", "one").await;
    assert_eq!(sse.next().await.data, "one");
    assert_eq!(stream.json_line().await["data"], "one");
    assert_eq!(ws_json(&mut ws).await["data"], "one");
    assert_eq!(poll.await.unwrap().json()[0]["data"], "one");
    let client = Client::new(s.addr);
    let metrics = client.get("/metrics").await.body;
    for transport in ["sse", "stream", "websocket", "longpoll"] {
        assert_eq!(
            count(&metrics, transport),
            count(&before, transport) + 1,
            "{transport}"
        );
        // Cumulative buckets ending in +Inf at the count; a sum.
        let inf = metric_value(
            &metrics,
            &format!(
                "halley_delivery_latency_seconds_bucket{{transport=\"{transport}\",le=\"+Inf\"}}"
            ),
        );
        assert_eq!(inf, Some(count(&metrics, transport)), "{transport}");
        assert!(metrics.contains(&format!(
            "halley_delivery_latency_seconds_sum{{transport=\"{transport}\"}} "
        )));
    }
    assert!(metrics.contains("# TYPE halley_delivery_latency_seconds histogram"));
    // A resume's replay and recent's newest are history, not a publish's latency.
    s.publish("/lat/a", "two").await;
    let before = count_of(&client, "longpoll").await;
    let replayed = client
        .get(&format!("/sub/lat/a?transport=longpoll&last_id={id}"))
        .await;
    assert_eq!(replayed.json()[0]["data"], "two");
    let recent = client.get("/sub/lat/a?transport=longpoll&recent=2").await;
    assert_eq!(recent.json().as_array().unwrap().len(), 2);
    assert_eq!(count_of(&client, "longpoll").await, before);
}

/// Each of Bayeux's connection types counts a live message once, in the label of the
/// transport it rides on.
#[tokio::test]
async fn bayeux_live_messages_are_counted_in_their_transports_label() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    for (kind, transport) in [
        (Kind::BayeuxLongPolling, "longpoll"),
        (Kind::BayeuxCallbackPolling, "jsonp"),
        (Kind::BayeuxWebSocket, "websocket"),
    ] {
        let channel = format!("/lat/bayeux/{transport}");
        let mut sub = Subscriber::new(kind, &channel, None);
        // Handshaken and subscribed (the subscribe's reply came): a publish now is queued.
        sub.connect(&client).await;
        let before = count_of(&client, transport).await;
        s.publish(&channel, "one").await;
        assert_eq!(next_data(&mut sub, &client).await, "one", "{kind:?}");
        assert_eq!(
            count_of(&client, transport).await,
            before + 1,
            "{kind:?} as {transport}"
        );
    }
}

/// The ack extension's resend of a batch the client did not acknowledge was counted when it
/// first went out; a new socket's resend is not counted again.
#[tokio::test]
async fn bayeux_websocket_resend_is_not_counted_again() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    let mut sub = Subscriber::new(Kind::BayeuxWebSocket, "/lat/resend", None);
    sub.connect(&client).await;
    s.publish("/lat/resend", "one").await;
    assert_eq!(next_data(&mut sub, &client).await, "one");
    let counted = count_of(&client, "websocket").await;
    // Cut while the connect that would close its batch is held: the next socket's connect
    // acknowledges only the batch before, and the server sends "one" again.
    sub.cut();
    assert_eq!(next_data(&mut sub, &client).await, "one");
    assert_eq!(sub.connects, 2);
    assert_eq!(count_of(&client, "websocket").await, counted);
    // What is published now is live again.
    s.publish("/lat/resend", "two").await;
    assert_eq!(next_data(&mut sub, &client).await, "two");
    assert_eq!(count_of(&client, "websocket").await, counted + 1);
}

/// Bayeux long-polling: `ext.recent`'s history is not counted, the live message is, and the
/// resend of its unacknowledged batch is not.
#[tokio::test]
async fn bayeux_recent_and_ack_resend_are_not_counted() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    s.publish("/lat/ack", "old").await;
    let id = bayeux_client(&client, json!({"ack": true})).await;
    let replies = bayeux(
        &client,
        json!([{"channel": "/meta/subscribe", "clientId": id, "subscription": "/lat/ack",
                "ext": {"recent": 1}}]),
    )
    .await;
    assert_eq!(replies[0]["successful"], true, "{replies:?}");
    s.publish("/lat/ack", "new").await;
    let before = count_of(&client, "longpoll").await;
    let connect = |ack: Option<u64>| {
        let mut connect = json!({"channel": "/meta/connect", "clientId": id,
                                 "connectionType": "long-polling"});
        if let Some(ack) = ack {
            connect["ext"] = json!({ "ack": ack });
        }
        json!([connect])
    };
    let data = |replies: &[Value]| -> Vec<String> {
        replies
            .iter()
            .filter(|r| r["channel"] == "/lat/ack")
            .map(|r| r["data"].as_str().unwrap().to_owned())
            .collect()
    };
    // The session's first connect is answered at once, with what is queued.
    let first = bayeux(&client, connect(None)).await;
    assert_eq!(data(&first), ["old", "new"], "{first:?}");
    assert_eq!(count_of(&client, "longpoll").await, before + 1);
    // Its answer was lost: the next connect acknowledges nothing, and both come again.
    let again = bayeux(&client, connect(None)).await;
    assert_eq!(data(&again), ["old", "new"], "{again:?}");
    assert_eq!(count_of(&client, "longpoll").await, before + 1);
}

/// Faye's eventsource: a Bayeux session's messages on an event stream, counted as `sse`.
#[tokio::test]
async fn bayeux_eventsource_counts_as_sse() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    let id = bayeux_client(&client, json!({})).await;
    let replies = bayeux(
        &client,
        json!([{"channel": "/meta/subscribe", "clientId": id, "subscription": "/lat/es"}]),
    )
    .await;
    assert_eq!(replies[0]["successful"], true, "{replies:?}");
    // Returns once the head arrived: the stream delivers the session's messages.
    let mut events = client
        .stream_with(&format!("/cometd/{id}"), &[("accept", "text/event-stream")])
        .await;
    assert_eq!(events.status, 200);
    let before = count_of(&client, "sse").await;
    s.publish("/lat/es", "one").await;
    // After the stream's `retry:` (and any heartbeat).
    let event = loop {
        let event = events.until("\n\n").await;
        if event.starts_with("data:") {
            break event;
        }
    };
    assert!(event.contains(r#""data":"one""#), "{event:?}");
    assert_eq!(count_of(&client, "sse").await, before + 1);
}

async fn push(client: &Client, query: &str) -> String {
    let reply = client.get(&format!("/push?{query}")).await;
    assert_eq!(reply.status, 200, "{query}: {}", reply.body);
    reply.json()["id"].as_str().unwrap().to_owned()
}

/// rupy's pull counts what it writes live: not its client's own pushes (never written), not
/// what a resume replays.
#[tokio::test]
async fn rupy_pull_counts_what_it_writes_live() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    let mut sub = Subscriber::new(Kind::Pull, "/lat/pull", None);
    sub.connect(&client).await;
    let mut me = client.stream("/pull?name=me&channel=/lat/pull").await;
    let before = count_of(&client, "pull").await;
    let mine = push(&client, "name=me&channel=/lat/pull&message=mine").await;
    push(&client, "name=other&channel=/lat/pull&message=theirs").await;
    assert_eq!(next_data(&mut sub, &client).await, "mine");
    assert_eq!(next_data(&mut sub, &client).await, "theirs");
    // Read after "mine" was passed over.
    assert_eq!(me.line().await, "theirs");
    assert_eq!(count_of(&client, "pull").await, before + 3);
    // A resume from "mine": "theirs" is replayed, not counted.
    let mut resumed = client
        .stream(&format!(
            "/pull?name=again&channel=/lat/pull&last_id={mine}"
        ))
        .await;
    assert_eq!(resumed.line().await, "theirs");
    assert_eq!(count_of(&client, "pull").await, before + 3);
}

/// rupy's `Head: less` pull, written by the lean path's own writer, counts as `pull` too.
#[tokio::test]
async fn head_less_pull_counts_as_pull() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    let mut raw = client
        .raw_request(
            "GET /pull?name=bob&channel=/lat/less HTTP/1.1\r\nHost: x\r\nHead: less\r\n\r\n",
        )
        .await;
    // The minimal head is written once the pull is subscribed.
    read_until(&mut raw, b"\r\n\r\n").await;
    let before = count_of(&client, "pull").await;
    push(&client, "name=bob&channel=/lat/less&message=mine").await;
    push(&client, "name=alice&channel=/lat/less&message=hi").await;
    // One chunk per message: rupy's framing.
    read_until(&mut raw, b"3\r\nhi\n\r\n").await;
    assert_eq!(count_of(&client, "pull").await, before + 1);
}

/// `transport=stream&binary=raw` writes binary bodies only: a text message it passes over is
/// not counted, the bytes it writes are (once).
#[tokio::test]
async fn a_raw_binary_stream_counts_only_what_it_writes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    let mut raw = client
        .raw_request("GET /sub/lat/raw?transport=stream&binary=raw HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    read_until(&mut raw, b"\r\n\r\n").await;
    s.wait_subscribers("/lat/raw", 1).await;
    let before = count_of(&client, "stream").await;
    s.publish("/lat/raw", "text, passed over").await;
    let reply = client
        .post("/pub/lat/raw", "application/octet-stream", "BYTES-1")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let got = read_until(&mut raw, b"BYTES-1").await;
    assert!(
        !String::from_utf8_lossy(&got).contains("passed over"),
        "{got:?}"
    );
    assert_eq!(count_of(&client, "stream").await, before + 1);
}
