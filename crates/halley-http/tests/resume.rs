//! Resume with `?last_id=` (and `Last-Event-ID`) on every transport: everything after the id
//! that history still holds, in order, without duplicates, then live messages; and the gap
//! signal when history cannot cover the resume (evicted, or another epoch).

mod common;

use std::time::Duration;

use common::wire::{STREAMING, Transport};
use common::{TestServer, foreign_epoch, message_object, parse_id, ws_json};
use serde_json::{Value, json};

/// Publishes `n` text messages `m1..mn` on `channel`, interleaved with messages on another
/// channel (so that ids on `channel` are not consecutive); returns their ids.
async fn seed(s: &TestServer, channel: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 1..=n {
        ids.push(s.publish(channel, &format!("m{i}")).await);
        s.publish("/noise", "noise").await;
    }
    ids
}

fn data(i: usize) -> String {
    format!(r#""m{i}""#)
}

/// Resumes `transport` on `channel` after `after` and checks it first replays exactly
/// `replayed` (1-based indexes into `ids`), with the gap signal iff `gap`, then delivers a live
/// message.
async fn check_resume(
    s: &TestServer,
    transport: Transport,
    channel: &str,
    ids: &[String],
    after: &str,
    replayed: &[usize],
    gap: bool,
) {
    let last_id = format!("last_id={after}");
    let url = transport.url(channel, &[&last_id]);
    let mut open = s.stream_with(&url, transport.headers()).await;
    assert_eq!(open.status, 200, "{url}");
    let gap_header = if gap { Some("true") } else { None };
    assert_eq!(open.header("x-halley-gap"), gap_header, "{url}");
    open.expect(&transport.preamble()).await;
    if gap && transport.has_control() {
        let control = transport.read_control(&mut open).await;
        assert_eq!(control["event"], "gap", "{url}: {control}");
    }
    for &i in replayed {
        open.expect(&transport.frame(channel, &ids[i - 1], &data(i)))
            .await;
    }
    let live = s.publish(channel, "live").await;
    open.expect(&transport.frame(channel, &live, r#""live""#))
        .await;
}

#[tokio::test]
async fn every_streaming_transport_resumes_in_order_without_duplicates() {
    let s = TestServer::start().await;
    for (n, transport) in STREAMING.into_iter().enumerate() {
        let channel = format!("/r/{n}");
        let ids = seed(&s, &channel, 3).await;
        check_resume(&s, transport, &channel, &ids, &ids[0], &[2, 3], false).await;
        // Resuming from the newest id replays nothing and waits for live messages.
        let channel = format!("/r/{n}/tip");
        let ids = seed(&s, &channel, 3).await;
        check_resume(&s, transport, &channel, &ids, &ids[2], &[], false).await;
    }
}

#[tokio::test]
async fn wildcard_subscribers_resume_across_channels_from_one_id() {
    let s = TestServer::start().await;
    let a = s.publish("/wr/a", "a1").await;
    let b = s.publish("/wr/b", "b1").await;
    let c = s.publish("/wr/a/deep", "c1").await;
    let d = s.publish("/wr/b", "b2").await;
    let mut open = s
        .stream(&format!(
            "/sub/wr/*?transport=stream&format=json&last_id={a}"
        ))
        .await;
    open.expect("\n").await;
    open.expect(&format!("{}\n", message_object("/wr/b", &b, r#""b1""#)))
        .await;
    open.expect(&format!("{}\n", message_object("/wr/b", &d, r#""b2""#)))
        .await;
    assert!(
        parse_id(&c).1 > parse_id(&b).1,
        "c is skipped by the pattern, not by order"
    );
}

#[tokio::test]
async fn sse_last_event_id_header_wins_over_the_query() {
    let s = TestServer::start().await;
    let ids = seed(&s, "/r/sse", 3).await;
    let url = format!("/sub/r/sse?transport=sse&last_id={}", ids[0]);
    let mut open = s.stream_with(&url, &[("last-event-id", &ids[1])]).await;
    open.expect("retry: 2000\n\n").await;
    open.expect(&Transport::Sse.frame("/r/sse", &ids[2], &data(3)))
        .await;
    let live = s.publish("/r/sse", "live").await;
    open.expect(&Transport::Sse.frame("/r/sse", &live, r#""live""#))
        .await;
}

#[tokio::test]
async fn longpoll_resumes_with_everything_queued_then_holds_for_live() {
    let s = TestServer::with(|http, _| http.hold_timeout = Duration::from_secs(10)).await;
    let ids = seed(&s, "/r/lp", 3).await;
    let reply = s.get(&format!("/sub/r/lp?last_id={}", ids[0])).await;
    let expected: Vec<String> = (2..=3)
        .map(|i| message_object("/r/lp", &ids[i - 1], &data(i)))
        .collect();
    assert_eq!(reply.body, format!("[{}]", expected.join(",")));
    assert_eq!(reply.header("x-halley-last-id"), Some(ids[2].as_str()));
    assert_eq!(reply.header("x-halley-gap"), None);

    // The next poll from the returned position is held until something new arrives.
    let next = format!("/sub/r/lp?last_id={}", ids[2]);
    let publisher = async {
        s.wait_subscribers("/r/lp", 1).await;
        s.publish("/r/lp", "live").await
    };
    let (reply, live) = tokio::join!(s.get(&next), publisher);
    assert_eq!(
        reply.body,
        format!("[{}]", message_object("/r/lp", &live, r#""live""#))
    );
    assert_eq!(reply.header("x-halley-last-id"), Some(live.as_str()));
}

#[tokio::test]
async fn jsonp_resumes_with_everything_queued() {
    let s = TestServer::start().await;
    let ids = seed(&s, "/r/jp", 3).await;
    let reply = s
        .get(&format!(
            "/sub/r/jp?transport=jsonp&callback=f&last_id={}",
            ids[0]
        ))
        .await;
    let expected = format!(
        r#"/**/f([{},{}],"#,
        message_object("/r/jp", &ids[1], &data(2)),
        message_object("/r/jp", &ids[2], &data(3))
    );
    assert!(reply.body.starts_with(&expected), "{}", reply.body);
    let meta: Value =
        serde_json::from_str(reply.body[expected.len()..].strip_suffix(");").unwrap()).unwrap();
    assert_eq!(meta, json!({"last_id": ids[2], "gap": false}));
}

#[tokio::test]
async fn websocket_resumes_in_order_without_duplicates() {
    let s = TestServer::start().await;
    let ids = seed(&s, "/r/ws", 3).await;
    let mut ws = s.ws(&format!("/sub/r/ws?last_id={}", ids[0])).await;
    for i in [2, 3] {
        assert_eq!(
            ws_json(&mut ws).await,
            json!({"channel": "/r/ws", "id": ids[i - 1], "data": format!("m{i}")})
        );
    }
    let live = s.publish("/r/ws", "live").await;
    assert_eq!(ws_json(&mut ws).await["id"], live.as_str());
}

#[tokio::test]
async fn malformed_resume_ids_are_refused_on_every_transport() {
    let s = TestServer::start().await;
    let mut urls: Vec<String> = Vec::new();
    for bad in ["nope", "12", "-1", "zz-1", "1-x", "1-2-3"] {
        let param = format!("last_id={bad}");
        urls.extend(STREAMING.iter().map(|t| t.url("/r/bad", &[&param])));
        urls.push(format!("/sub/r/bad?{param}"));
        urls.push(format!("/sub/r/bad?transport=jsonp&callback=f&{param}"));
    }
    for url in urls {
        let reply = s.get(&url).await;
        reply.expect_error(400);
    }
    let reply = s
        .send(
            s.request("GET", "/sub/r/bad")
                .header("accept", "text/event-stream")
                .header("last-event-id", "garbage")
                .body(Default::default())
                .unwrap(),
        )
        .await;
    reply.expect_error(400);
    let ws = s.ws_with("/sub/r/bad?last_id=nope", &[]).await;
    assert!(
        ws.is_err(),
        "a WebSocket with a malformed id must not be upgraded"
    );
    s.assert_still_serving().await;
}

/// History holds 2 messages per channel; the resume is from `m1` of `m1..m4`, so `m2` is lost.
async fn evicted_server() -> TestServer {
    TestServer::with(|_, engine| engine.history_size = 2).await
}

#[tokio::test]
async fn every_streaming_transport_signals_a_gap_after_eviction() {
    let s = evicted_server().await;
    for (n, transport) in STREAMING.into_iter().enumerate() {
        let channel = format!("/g/{n}");
        let ids = seed(&s, &channel, 4).await;
        check_resume(&s, transport, &channel, &ids, &ids[0], &[3, 4], true).await;
    }
}

#[tokio::test]
async fn every_streaming_transport_signals_a_gap_for_another_epoch() {
    let s = TestServer::start().await;
    for (n, transport) in STREAMING.into_iter().enumerate() {
        let channel = format!("/e/{n}");
        let ids = seed(&s, &channel, 2).await;
        // Everything history holds is delivered, and the client is told it may have missed more.
        check_resume(
            &s,
            transport,
            &channel,
            &ids,
            &foreign_epoch(&ids[0]),
            &[1, 2],
            true,
        )
        .await;
    }
}

#[tokio::test]
async fn longpoll_and_jsonp_signal_a_gap() {
    let s = evicted_server().await;
    let ids = seed(&s, "/g/lp", 4).await;
    let retained = format!(
        "[{},{}]",
        message_object("/g/lp", &ids[2], &data(3)),
        message_object("/g/lp", &ids[3], &data(4))
    );
    for after in [ids[0].clone(), foreign_epoch(&ids[3])] {
        let reply = s.get(&format!("/sub/g/lp?last_id={after}")).await;
        assert_eq!(reply.header("x-halley-gap"), Some("true"), "{after}");
        assert_eq!(reply.body, retained, "{after}");

        let reply = s
            .get(&format!(
                "/sub/g/lp?transport=jsonp&callback=f&last_id={after}"
            ))
            .await;
        assert_eq!(reply.header("x-halley-gap"), Some("true"), "{after}");
        let meta = reply
            .body
            .strip_prefix(&format!("/**/f({retained},"))
            .and_then(|rest| rest.strip_suffix(");"))
            .unwrap_or_else(|| panic!("{after}: {}", reply.body));
        let meta: Value = serde_json::from_str(meta).unwrap();
        assert_eq!(meta, json!({"last_id": ids[3], "gap": true}), "{after}");
    }
}

#[tokio::test]
async fn websocket_signals_a_gap_first() {
    let s = evicted_server().await;
    let ids = seed(&s, "/g/ws", 4).await;
    let mut ws = s.ws(&format!("/sub/g/ws?last_id={}", ids[0])).await;
    let gap = ws_json(&mut ws).await;
    assert_eq!(gap["event"], "gap", "{gap}");
    for i in [3, 4] {
        assert_eq!(ws_json(&mut ws).await["id"], ids[i - 1].as_str());
    }
}

#[tokio::test]
async fn gaps_are_counted_in_metrics() {
    let s = evicted_server().await;
    let ids = seed(&s, "/g/m", 4).await;
    assert_eq!(s.metric("halley_resume_gaps_total").await, 0);
    s.get(&format!("/sub/g/m?last_id={}", ids[2])).await;
    assert_eq!(s.metric("halley_resume_gaps_total").await, 0);
    s.get(&format!("/sub/g/m?last_id={}", ids[0])).await;
    assert_eq!(s.metric("halley_resume_gaps_total").await, 1);
}

/// Subscribers resuming while publishes are in flight (the register-then-replay race) must
/// still see every message exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_racing_publishes_loses_and_duplicates_nothing() {
    const N: usize = 200;
    let s = TestServer::start().await;
    let start = s.publish("/race", "m0").await;
    let url = format!("/sub/race?transport=stream&format=json&last_id={start}");
    let publisher = async {
        for i in 1..=N {
            s.publish("/race", &format!("m{i}")).await;
        }
    };
    let subscribers = async {
        let mut opened = Vec::new();
        for _ in 0..6 {
            opened.push(s.stream(&url).await);
        }
        opened
    };
    let ((), opened) = tokio::join!(publisher, subscribers);
    for mut open in opened {
        let mut seen = Vec::new();
        while seen.len() < N {
            let line = open.line().await;
            if line.is_empty() {
                continue; // the stream's opening blank line, or a heartbeat
            }
            let message: Value = serde_json::from_str(&line).unwrap();
            seen.push(message["data"].as_str().unwrap().to_owned());
        }
        let expected: Vec<String> = (1..=N).map(|i| format!("m{i}")).collect();
        assert_eq!(seen, expected);
    }
}

/// One long-poll answer carries at most `MAX_BATCH` messages; the rest come on the next poll
/// from the returned position, with nothing lost or repeated.
#[tokio::test]
async fn a_far_behind_longpoll_gets_the_rest_on_its_next_poll() {
    let total = halley_http::MAX_BATCH + 50;
    let s = TestServer::with(|_, engine| {
        engine.history_size = 2 * total;
        engine.replay_batch = 64;
    })
    .await;
    let start = s.publish("/far", "m0").await;
    for i in 1..=total {
        s.publish("/far", &format!("m{i}")).await;
    }
    let mut after = start;
    let mut seen = Vec::new();
    for expected_len in [halley_http::MAX_BATCH, 50] {
        let reply = s.get(&format!("/sub/far?last_id={after}")).await;
        assert_eq!(reply.header("x-halley-gap"), None);
        let batch = reply.json();
        let batch = batch.as_array().unwrap();
        assert_eq!(batch.len(), expected_len);
        after = reply.header("x-halley-last-id").unwrap().to_owned();
        assert_eq!(batch.last().unwrap()["id"], after.as_str());
        seen.extend(batch.iter().map(|m| m["data"].as_str().unwrap().to_owned()));
    }
    let expected: Vec<String> = (1..=total).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected);
}

/// Regression: a stream writes at most 64 queued messages per chunk; the 65th was popped from
/// the queue and dropped when a chunk filled up, so any burst of more than 64 lost one.
#[tokio::test]
async fn regression_a_burst_longer_than_one_chunk_loses_nothing() {
    let s = TestServer::start().await;
    for (n, transport) in STREAMING.into_iter().enumerate() {
        let channel = format!("/burst/{n}");
        let ids = seed(&s, &channel, 150).await;
        let replayed: Vec<usize> = (2..=150).collect();
        check_resume(&s, transport, &channel, &ids, &ids[0], &replayed, false).await;
    }
}

/// A server whose history keeps 10,000 messages per channel, reading resumes `batch` at a time,
/// with `n` messages `m1..mn` published on `channel` (straight into the engine: fast); returns
/// their ids.
async fn deep_history(
    batch: usize,
    channel: &str,
    n: usize,
) -> (TestServer, halley_engine::Engine, Vec<String>) {
    let engine = halley_engine::Engine::in_memory(halley_engine::EngineConfig {
        history_size: 10_000,
        replay_batch: batch,
        ..halley_engine::EngineConfig::default()
    });
    let s = TestServer::with_engine(engine.clone(), None, |_| {}).await;
    let mut ids = Vec::new();
    for i in 1..=n {
        ids.push(engine_publish(&engine, channel, &format!("m{i}")).await);
    }
    (s, engine, ids)
}

async fn engine_publish(engine: &halley_engine::Engine, channel: &str, text: &str) -> String {
    let channel = halley_proto::Channel::parse(channel).unwrap();
    let published = engine
        .publish(channel, halley_proto::Payload::string(text))
        .await
        .unwrap();
    published.message.id.to_string()
}

/// Issue 12 item 9: with `--history-size 10000`, resuming 1,500 messages back reported a gap
/// and delivered only the newest 1,000 (a fixed replay limit). Now everything history holds is
/// delivered, read a batch at a time (`replay_batch`, default 256), in order, then live
/// messages without a duplicate at the seam — here over SSE (with `Last-Event-ID`), a JSON
/// stream and a WebSocket, with a message published while the replay is under way.
#[tokio::test]
async fn resume_beyond_a_thousand_delivers_everything_history_holds() {
    let (s, engine, ids) = deep_history(halley_engine::DEFAULT_REPLAY_BATCH, "/far/a", 1_600).await;
    let after = &ids[99];
    let mut sse = s
        .stream_with("/sub/far/a?transport=sse", &[("last-event-id", after)])
        .await;
    let mut json = s
        .stream(&format!(
            "/sub/far/a?transport=stream&format=json&last_id={after}"
        ))
        .await;
    let mut ws = s.ws(&format!("/sub/far/a?last_id={after}")).await;
    for open in [&sse, &json] {
        assert_eq!(open.header("x-halley-gap"), None);
    }
    // Published once every subscription exists: live for them, and in history too.
    let during = engine_publish(&engine, "/far/a", "during").await;
    sse.expect("retry: 2000\n\n").await;
    json.expect("\n").await;
    let expected: Vec<(String, String)> = (101..=1_600)
        .map(|i| (ids[i - 1].clone(), format!("m{i}")))
        .chain([(during, "during".to_owned())])
        .collect();
    for (id, text) in &expected {
        sse.expect(&format!("id: {id}\ndata: {text}\n\n")).await;
        let line = json.json_line().await;
        assert_eq!(
            (line["id"].as_str(), line["data"].as_str()),
            (Some(&**id), Some(&**text))
        );
        let frame = ws_json(&mut ws).await;
        assert_eq!(
            (frame["id"].as_str(), frame["data"].as_str()),
            (Some(&**id), Some(&**text))
        );
    }
    // The seam: the next live message comes next, once.
    let live = engine_publish(&engine, "/far/a", "live").await;
    sse.expect(&format!("id: {live}\ndata: live\n\n")).await;
    assert_eq!(json.json_line().await["id"], live.as_str());
    assert_eq!(ws_json(&mut ws).await["id"], live.as_str());
    assert_eq!(s.metric("halley_resume_gaps_total").await, 0);
}

/// Issue 12 item 9 on long-polling (and JSONP): a resume 1,500 back is answered in full over
/// successive polls — each answer as large as a poll answer may be (`MAX_BATCH`), not cut at a
/// history batch — with no gap.
#[tokio::test]
async fn longpoll_resume_beyond_a_thousand_gets_everything_over_its_polls() {
    let (s, _engine, ids) =
        deep_history(halley_engine::DEFAULT_REPLAY_BATCH, "/far/p", 1_600).await;
    for jsonp in [false, true] {
        let mut after = ids[99].clone();
        let mut seen = Vec::new();
        for expected_len in [halley_http::MAX_BATCH, 500] {
            let url = match jsonp {
                false => format!("/sub/far/p?last_id={after}"),
                true => format!("/sub/far/p?transport=jsonp&callback=f&last_id={after}"),
            };
            let reply = s.get(&url).await;
            assert_eq!(reply.header("x-halley-gap"), None);
            let body = match jsonp {
                false => reply.body.clone(),
                true => {
                    let args = reply.body.strip_prefix("/**/f(").unwrap();
                    args[..args.rfind(",{").unwrap()].to_owned()
                }
            };
            let batch: Vec<Value> = serde_json::from_str(&body).unwrap();
            assert_eq!(batch.len(), expected_len, "jsonp {jsonp}");
            after = reply.header("x-halley-last-id").unwrap().to_owned();
            seen.extend(batch.iter().map(|m| m["data"].as_str().unwrap().to_owned()));
        }
        let expected: Vec<String> = (101..=1_600).map(|i| format!("m{i}")).collect();
        assert_eq!(seen, expected, "jsonp {jsonp}");
    }
}

/// Many small batches, two overlapping patterns on one connection (each message matched by
/// both), interleaved channels: every message once, in id order.
#[tokio::test]
async fn batched_replay_of_overlapping_patterns_has_no_duplicates() {
    let engine = halley_engine::Engine::in_memory(halley_engine::EngineConfig {
        replay_batch: 7,
        ..halley_engine::EngineConfig::default()
    });
    let s = TestServer::with_engine(engine.clone(), None, |_| {}).await;
    let start = engine_publish(&engine, "/ov/start", "0").await;
    let mut ids = Vec::new();
    for i in 0..100 {
        let channel = if i % 3 == 0 { "/ov/a" } else { "/ov/b/c" };
        ids.push(engine_publish(&engine, channel, &format!("m{i}")).await);
    }
    let mut open = s
        .stream(&format!(
            "/sub?channel=/ov/a&channel=/ov/**&transport=stream&format=json&last_id={start}"
        ))
        .await;
    assert_eq!(open.header("x-halley-gap"), None);
    for id in &ids {
        assert_eq!(open.json_line().await["id"], id.as_str());
    }
    let live = engine_publish(&engine, "/ov/a", "live").await;
    assert_eq!(open.json_line().await["id"], live.as_str());
}

/// Issue 12 item 10: the SSE `gap` event had no `id:`, so an EventSource that reconnected
/// before the next message sent the id that had the gap again, and was told of the same gap
/// on every reconnect. The gap event now carries the position after the gap; resuming from it
/// (as EventSource does, with `Last-Event-ID`) has no gap and loses nothing.
#[tokio::test]
async fn an_sse_gap_event_has_an_id_to_resume_from() {
    let s = evicted_server().await;
    // Another epoch, nothing to replay: the gap is all the stream says before going quiet.
    let old = foreign_epoch(&s.publish("/sg/other", "x").await);
    let mut first = s
        .stream_with("/sub/sg/a?transport=sse", &[("last-event-id", &old)])
        .await;
    assert_eq!(first.header("x-halley-gap"), Some("true"));
    first.expect("retry: 2000\n\n").await;
    let gap = Transport::Sse.read_control(&mut first).await;
    let position = gap["_id_line"]
        .as_str()
        .expect("the gap event has an id")
        .to_owned();
    assert_eq!(gap["last_id"], position.as_str());
    drop(first);
    // Meanwhile, two messages.
    let m1 = s.publish("/sg/a", "m1").await;
    let m2 = s.publish("/sg/a", "m2").await;
    // The reconnect, as EventSource makes it: no gap, both messages, in order.
    let mut again = s
        .stream_with("/sub/sg/a?transport=sse", &[("last-event-id", &position)])
        .await;
    assert_eq!(again.header("x-halley-gap"), None);
    again.expect("retry: 2000\n\n").await;
    again
        .expect(&format!("id: {m1}\ndata: m1\n\nid: {m2}\ndata: m2\n\n"))
        .await;

    // After an eviction, the id is the position before what is replayed.
    let ids = seed(&s, "/sg/b", 4).await;
    let mut open = s
        .stream_with("/sub/sg/b?transport=sse", &[("last-event-id", &ids[0])])
        .await;
    open.expect("retry: 2000\n\n").await;
    let gap = Transport::Sse.read_control(&mut open).await;
    let position = gap["_id_line"].as_str().unwrap().to_owned();
    let (epoch, offset) = parse_id(&ids[2]);
    assert_eq!(parse_id(&position), (epoch, offset - 1));
    let reply = s.get(&format!("/sub/sg/b?last_id={position}")).await;
    assert_eq!(reply.header("x-halley-gap"), None);
    assert_eq!(
        reply.body,
        format!(
            "[{},{}]",
            message_object("/sg/b", &ids[2], &data(3)),
            message_object("/sg/b", &ids[3], &data(4))
        )
    );
}
