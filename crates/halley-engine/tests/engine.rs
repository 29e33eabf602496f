//! Behaviour of the engine with the in-memory broker: delivery, wildcards, resume, gaps, lag.

use std::time::Duration;

use halley_engine::{Engine, EngineConfig, EngineError, Event, Subscription};
use halley_proto::{Channel, MessageId, Pattern, Payload};

fn engine(config: EngineConfig) -> Engine {
    Engine::in_memory(config)
}

fn ch(name: &str) -> Channel {
    Channel::parse(name).unwrap()
}

async fn publish(e: &Engine, channel: &str, text: &str) -> MessageId {
    e.publish(ch(channel), Payload::string(text))
        .await
        .unwrap()
        .message
        .id
}

async fn sub(e: &Engine, pattern: &str, resume: Option<MessageId>) -> Subscription {
    e.subscribe(Pattern::parse(pattern).unwrap(), resume)
        .await
        .unwrap()
}

/// Everything available now, as text.
fn drain(s: &mut Subscription) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(event) = s.try_next() {
        match event {
            Event::Message(m) => out.push(m.text().to_string()),
            Event::Lagged => {
                out.push("LAGGED".into());
                break;
            }
            other => panic!("no control API here: {other:?}"),
        }
    }
    out
}

#[tokio::test]
async fn exact_and_wildcard_delivery() {
    let e = engine(EngineConfig::default());
    let mut exact = sub(&e, "/chat/a", None).await;
    let mut children = sub(&e, "/chat/*", None).await;
    let mut deep = sub(&e, "/**", None).await;
    publish(&e, "/chat/a", "1").await;
    publish(&e, "/chat/a/b", "2").await;
    let published = e.publish(ch("/other"), Payload::string("3")).await.unwrap();
    assert_eq!(published.subscribers, 1);
    assert_eq!(drain(&mut exact), ["1"]);
    assert_eq!(drain(&mut children), ["1"]);
    assert_eq!(drain(&mut deep), ["1", "2", "3"]);
}

#[tokio::test]
async fn resume_replays_in_order_without_duplicates() {
    let e = engine(EngineConfig::default());
    let first = publish(&e, "/a", "1").await;
    publish(&e, "/b", "x").await;
    publish(&e, "/a", "2").await;
    let mut s = sub(&e, "/a", Some(first)).await;
    assert!(!s.gap());
    publish(&e, "/a", "3").await;
    assert_eq!(drain(&mut s), ["2", "3"]);
}

#[tokio::test]
async fn wildcard_resume_spans_channels() {
    let e = engine(EngineConfig::default());
    let start = publish(&e, "/r/a", "0").await;
    publish(&e, "/r/a", "1").await;
    publish(&e, "/r/b", "2").await;
    publish(&e, "/s", "no").await;
    publish(&e, "/r/a", "3").await;
    let mut s = sub(&e, "/r/*", Some(start)).await;
    assert!(!s.gap());
    assert_eq!(drain(&mut s), ["1", "2", "3"]);
}

#[tokio::test]
async fn gap_when_history_evicted() {
    let e = engine(EngineConfig {
        history_size: 2,
        ..EngineConfig::default()
    });
    let first = publish(&e, "/a", "1").await;
    for text in ["2", "3", "4"] {
        publish(&e, "/a", text).await;
    }
    let mut s = sub(&e, "/a", Some(first)).await;
    assert!(s.gap());
    assert_eq!(drain(&mut s), ["3", "4"]);
    assert_eq!(halley_engine::Stats::get(&e.stats().gaps), 1);
}

#[tokio::test]
async fn gap_for_foreign_epoch_and_future_ids() {
    let e = engine(EngineConfig::default());
    let id = publish(&e, "/a", "1").await;
    let foreign = MessageId::new(id.epoch ^ 2, id.offset);
    let mut s = sub(&e, "/a", Some(foreign)).await;
    assert!(s.gap(), "an id from another epoch is a gap");
    assert_eq!(
        drain(&mut s),
        ["1"],
        "what history holds is still delivered"
    );
    let future = MessageId::new(id.epoch, id.offset + 100);
    assert!(sub(&e, "/a", Some(future)).await.gap());
    assert!(!sub(&e, "/a", Some(id)).await.gap());
}

#[tokio::test(start_paused = true)]
async fn gap_when_history_expired() {
    let e = engine(EngineConfig {
        history_ttl: Duration::from_secs(60),
        ..EngineConfig::default()
    });
    let first = publish(&e, "/a", "1").await;
    publish(&e, "/a", "2").await;
    tokio::time::advance(Duration::from_secs(61)).await;
    publish(&e, "/a", "3").await;
    let mut s = sub(&e, "/a", Some(first)).await;
    assert!(s.gap());
    assert_eq!(drain(&mut s), ["3"]);
}

#[tokio::test]
async fn stalled_subscriber_is_cut_off_at_queue_capacity() {
    let e = engine(EngineConfig {
        queue_capacity: 4,
        ..EngineConfig::default()
    });
    let mut slow = sub(&e, "/a", None).await;
    let mut fine = sub(&e, "/a", None).await;
    for i in 0..4 {
        publish(&e, "/a", &i.to_string()).await;
    }
    assert_eq!(drain(&mut fine), ["0", "1", "2", "3"]);
    let p = e.publish(ch("/a"), Payload::string("4")).await.unwrap();
    assert_eq!(p.subscribers, 1, "the lagging subscriber no longer counts");
    assert_eq!(drain(&mut slow), ["LAGGED"]);
    assert_eq!(drain(&mut fine), ["4"]);
    assert_eq!(halley_engine::Stats::get(&e.stats().dropped), 5);
    // Once cut off it is out of the hub: later publishes do not touch it.
    publish(&e, "/a", "5").await;
    assert_eq!(drain(&mut slow), ["LAGGED"]);
}

#[tokio::test]
async fn next_waits_for_a_message() {
    let e = engine(EngineConfig::default());
    let mut s = sub(&e, "/a", None).await;
    let e2 = e.clone();
    let publisher = tokio::spawn(async move { publish(&e2, "/a", "hi").await });
    match s.next().await {
        Event::Message(m) => assert_eq!(m.text(), "hi"),
        other => panic!("{other:?}"),
    }
    publisher.await.unwrap();
}

#[tokio::test]
async fn reserved_channels_refused() {
    let e = engine(EngineConfig::default());
    for name in ["/meta/connect", "/service/echo"] {
        let err = e.publish(ch(name), Payload::string("x")).await.unwrap_err();
        assert!(matches!(err, EngineError::Reserved(_)), "{name}");
    }
    let err = e
        .subscribe(Pattern::parse("/meta/subscribe").unwrap(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Reserved(_)));
}

#[tokio::test]
async fn too_many_channels_refused() {
    let e = engine(EngineConfig {
        max_channels: 2,
        ..EngineConfig::default()
    });
    publish(&e, "/a", "1").await;
    publish(&e, "/b", "1").await;
    publish(&e, "/a", "2").await;
    assert!(e.publish(ch("/c"), Payload::string("x")).await.is_err());
}

#[tokio::test]
async fn listing_merges_history_and_subscribers() {
    let e = engine(EngineConfig::default());
    let _s1 = sub(&e, "/room/a", None).await;
    let _s2 = sub(&e, "/room/a", None).await;
    let _s3 = sub(&e, "/room/**", None).await;
    let id = publish(&e, "/room/b", "x").await;
    let rows = e.channels("/room/").await.unwrap();
    let got: Vec<_> = rows
        .iter()
        .map(|r| (r.name.as_str(), r.subscribers, r.last_id))
        .collect();
    assert_eq!(
        got,
        [
            ("/room/**", 1, None),
            ("/room/a", 2, None),
            ("/room/b", 0, Some(id))
        ]
    );
    drop(_s1);
    drop(_s2);
    assert_eq!(e.channels("/room/a").await.unwrap().len(), 0);
}

#[tokio::test]
async fn overlapping_patterns_deliver_once() {
    let e = engine(EngineConfig::default());
    let mut s = sub(&e, "/a/*", None).await;
    assert!(s.add(Pattern::parse("/a/b").unwrap()));
    assert!(
        !s.add(Pattern::parse("/a/b").unwrap()),
        "adding twice is a no-op"
    );
    assert!(s.add(Pattern::parse("/**").unwrap()));
    publish(&e, "/a/b", "1").await;
    publish(&e, "/c", "2").await;
    assert_eq!(drain(&mut s), ["1", "2"]);
    assert!(s.remove(&Pattern::parse("/**").unwrap()));
    assert!(!s.remove(&Pattern::parse("/**").unwrap()));
    publish(&e, "/c", "3").await;
    publish(&e, "/a/x", "4").await;
    assert_eq!(drain(&mut s), ["4"]);
}

#[tokio::test]
async fn one_subscription_many_patterns_resumes_in_id_order() {
    let e = engine(EngineConfig::default());
    let start = publish(&e, "/x", "0").await;
    publish(&e, "/a", "1").await;
    publish(&e, "/b/c", "2").await;
    publish(&e, "/other", "skip").await;
    publish(&e, "/a", "3").await;
    let patterns = ["/a", "/b/**", "/**"]
        .iter()
        .map(|p| Pattern::parse(p).unwrap())
        .collect();
    // Overlapping patterns: each message once, in id order.
    let mut s = e.subscribe_many(patterns, Some(start)).await.unwrap();
    assert!(!s.gap());
    assert_eq!(drain(&mut s), ["1", "2", "skip", "3"]);
    publish(&e, "/a", "4").await;
    assert_eq!(drain(&mut s), ["4"]);

    let two = vec![
        Pattern::parse("/a").unwrap(),
        Pattern::parse("/b/*").unwrap(),
    ];
    let mut s = e.subscribe_many(two, Some(start)).await.unwrap();
    assert_eq!(drain(&mut s), ["1", "2", "3", "4"]);
}

#[tokio::test]
async fn wildcards_never_see_inboxes() {
    let e = engine(EngineConfig::default());
    let inbox = halley_proto::inbox::channel_for(&"b".repeat(32)).unwrap();
    let mut all = sub(&e, "/**", None).await;
    let mut own = sub(&e, inbox.as_str(), None).await;
    e.publish(inbox.clone(), Payload::string("secret"))
        .await
        .unwrap();
    assert_eq!(drain(&mut own), ["secret"]);
    assert!(drain(&mut all).is_empty());
    let mut late = sub(&e, "/**", Some(MessageId::new(0, 0))).await;
    assert!(drain(&mut late).iter().all(|m| m != "secret"));
}

/// Namespaces' `history-size` and `history-ttl`: each channel keeps what its rule says, the
/// others the defaults.
#[tokio::test(start_paused = true)]
async fn history_limits_per_channel() {
    let e = engine(EngineConfig {
        history_size: 3,
        history_ttl: Duration::from_secs(600),
        history_rules: halley_engine::HistoryRules::new(|channel| {
            match channel.as_str().split('/').nth(1) {
                Some("short") => (Some(1), None),
                Some("brief") => (None, Some(Duration::from_secs(5))),
                _ => (None, None),
            }
        }),
        ..EngineConfig::default()
    });
    let mut first = Vec::new();
    for channel in ["/short/a", "/brief/a", "/plain/a"] {
        first.push(publish(&e, channel, "1").await);
        for text in ["2", "3"] {
            publish(&e, channel, text).await;
        }
    }
    let kept = |channel: &'static str, from| {
        let e = e.clone();
        async move {
            let mut s = sub(&e, channel, Some(from)).await;
            (s.gap(), drain(&mut s))
        }
    };
    assert_eq!(kept("/short/a", first[0]).await, (true, vec!["3".into()]));
    assert_eq!(
        kept("/brief/a", first[1]).await,
        (false, vec!["2".into(), "3".into()])
    );
    assert_eq!(
        kept("/plain/a", first[2]).await,
        (false, vec!["2".into(), "3".into()])
    );
    // Six seconds on: the brief channel's messages are gone, the others' are not.
    tokio::time::advance(Duration::from_secs(6)).await;
    publish(&e, "/brief/a", "4").await;
    publish(&e, "/plain/a", "4").await;
    assert_eq!(kept("/brief/a", first[1]).await, (true, vec!["4".into()]));
    assert_eq!(
        kept("/plain/a", first[2]).await,
        (false, vec!["2".into(), "3".into(), "4".into()])
    );
}

/// Issue 12 item 9: a resume delivers everything history holds, however much, but holds one
/// batch (`replay_batch`) at a time: what is at hand without waiting is at most one batch,
/// the next is read once it is taken.
#[tokio::test]
async fn replay_reads_history_a_batch_at_a_time() {
    let e = engine(EngineConfig {
        history_size: 5_000,
        replay_batch: 10,
        ..EngineConfig::default()
    });
    let start = publish(&e, "/b", "m0").await;
    for i in 1..=2_500 {
        publish(&e, "/b", &format!("m{i}")).await;
    }
    let mut s = sub(&e, "/b", Some(start)).await;
    assert!(!s.gap());
    let first = drain(&mut s);
    assert_eq!(first, (1..=10).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert!(s.replaying());
    let mut rest = Vec::new();
    while rest.len() < 2_490 {
        match tokio::time::timeout(Duration::from_secs(5), s.next()).await {
            Ok(Event::Message(m)) => rest.push(m.text().to_string()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        rest,
        (11..=2_500).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    publish(&e, "/b", "live").await;
    assert_eq!(drain(&mut s), ["live"]);
    assert!(!s.replaying());
}

/// History that goes while a replay is reading it (evicted past the replay's position) cannot
/// be delivered: the subscriber is cut off as a lagging one is, and its resume from the last
/// id it got reports the gap.
#[tokio::test]
async fn history_lost_mid_replay_cuts_the_subscriber_off() {
    let e = engine(EngineConfig {
        history_size: 30,
        replay_batch: 10,
        ..EngineConfig::default()
    });
    let mut ids = Vec::new();
    for i in 1..=30 {
        ids.push(publish(&e, "/l", &format!("m{i}")).await);
    }
    let mut s = sub(&e, "/l", Some(ids[0])).await;
    assert!(!s.gap());
    assert_eq!(drain(&mut s).len(), 10);
    for i in 31..=60 {
        publish(&e, "/l", &format!("m{i}")).await;
    }
    let event = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
    assert!(matches!(event, Ok(Event::Lagged)), "{event:?}");
    let again = sub(&e, "/l", Some(ids[10])).await;
    assert!(again.gap());
}

/// A wildcard resume over many channels, in small batches: every message once, in id order
/// (each batch takes only what precedes the earliest point any channel's read was cut at).
#[tokio::test]
async fn wildcard_replay_over_many_channels_in_small_batches() {
    let e = engine(EngineConfig {
        replay_batch: 5,
        ..EngineConfig::default()
    });
    let start = publish(&e, "/m/start", "s").await;
    let mut expected = Vec::new();
    for round in 0..10 {
        for c in 0..50 {
            let text = format!("{c}.{round}");
            publish(&e, &format!("/m/{c}"), &text).await;
            expected.push(text);
        }
    }
    let mut s = sub(&e, "/m/**", Some(start)).await;
    assert!(!s.gap());
    let mut got = Vec::new();
    while got.len() < expected.len() {
        match tokio::time::timeout(Duration::from_secs(5), s.next()).await {
            Ok(Event::Message(m)) => got.push(m.text().to_string()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, expected);
}

fn recent_start(n: u16, resume: Option<MessageId>) -> halley_engine::Start {
    halley_engine::Start {
        resume,
        recent: n,
        added: Vec::new(),
    }
}

async fn sub_from(e: &Engine, patterns: &[&str], start: halley_engine::Start) -> Subscription {
    let patterns = patterns
        .iter()
        .map(|p| Pattern::parse(p).unwrap())
        .collect();
    e.subscribe_from(patterns, start).await.unwrap()
}

#[tokio::test]
async fn recent_gives_each_channels_newest_then_live() {
    let e = engine(EngineConfig::default());
    for i in 1..=5 {
        publish(&e, "/a", &format!("a{i}")).await;
        if i <= 3 {
            publish(&e, "/b", &format!("b{i}")).await;
        }
    }
    publish(&e, "/c", "not subscribed").await;
    let mut s = sub_from(&e, &["/a", "/b"], recent_start(2, None)).await;
    assert!(!s.gap());
    publish(&e, "/b", "b4").await;
    publish(&e, "/a", "a6").await;
    // Newest two of each, merged in id order (b2 was published before a3), then live.
    assert_eq!(drain(&mut s), ["b2", "b3", "a4", "a5", "b4", "a6"]);
    // More than history holds is all of it; a wildcard pattern gets none.
    let mut all = sub_from(&e, &["/b"], recent_start(100, None)).await;
    assert_eq!(drain(&mut all), ["b1", "b2", "b3", "b4"]);
    let mut wild = sub_from(&e, &["/*"], recent_start(100, None)).await;
    publish(&e, "/a", "a7").await;
    assert_eq!(drain(&mut wild), ["a7"]);
}

#[tokio::test]
async fn recent_with_a_resume_adds_only_what_is_at_or_before_it() {
    let e = engine(EngineConfig::default());
    publish(&e, "/b", "b1").await;
    publish(&e, "/a", "a1").await;
    let seen = publish(&e, "/a", "a2").await;
    publish(&e, "/b", "b2").await;
    publish(&e, "/a", "a3").await;
    // A client that had /a up to a2 adds /b: /b's newest at or before a2, then everything
    // after a2 on both, each once and in id order; nothing of /a it had.
    let added = halley_engine::Start {
        added: vec![ch("/b")],
        ..recent_start(5, Some(seen))
    };
    let mut s = sub_from(&e, &["/a", "/b"], added.clone()).await;
    assert_eq!(drain(&mut s), ["b1", "b2", "a3"]);
    // Without channels named as added, a resume is a resume: nothing older comes again.
    let mut s = sub_from(&e, &["/a", "/b"], recent_start(5, Some(seen))).await;
    assert_eq!(drain(&mut s), ["b2", "a3"]);
    // Nothing after the resume id: the newest come alone, and live follows.
    let last = publish(&e, "/a", "a4").await;
    let start = halley_engine::Start {
        resume: Some(last),
        ..added
    };
    let mut s = sub_from(&e, &["/b"], halley_engine::Start { recent: 1, ..start }).await;
    publish(&e, "/b", "b3").await;
    assert_eq!(drain(&mut s), ["b2", "b3"]);
}

/// Publishes race the subscription's opening: whatever moment the position is read at, what
/// comes is one run of consecutive messages ending with the last published — nothing missed
/// between the newest and the live flow, nothing twice — starting `recent` back on each
/// channel. Two channels, published alternately, so that one channel's history is read while
/// the other moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_racing_publishes_has_no_gap_and_no_duplicate() {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    const N: u16 = 3;
    const PER_ROUND: u32 = 400;
    for round in 0..40u32 {
        let e = engine(EngineConfig::default());
        let count = std::sync::Arc::new(AtomicU32::new(0));
        let publisher = {
            let (e, count) = (e.clone(), count.clone());
            tokio::spawn(async move {
                for i in 1..=PER_ROUND {
                    let channel = if i % 2 == 1 { "/race/a" } else { "/race/b" };
                    publish(&e, channel, &i.to_string()).await;
                    count.store(i, SeqCst);
                    if i % (round % 7 + 1) == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        for _ in 0..round % 13 {
            tokio::task::yield_now().await;
        }
        let before = count.load(SeqCst);
        let mut s = sub_from(&e, &["/race/a", "/race/b"], recent_start(N, None)).await;
        let after = count.load(SeqCst);
        publisher.await.unwrap();
        let got: Vec<u32> = drain(&mut s).iter().map(|t| t.parse().unwrap()).collect();
        let first = *got.first().expect("something delivered");
        for pair in got.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "round {round}: {got:?}");
        }
        assert_eq!(*got.last().unwrap(), PER_ROUND, "round {round}");
        // Published alternately, each channel's newest N are the newest 2N of all. The count
        // is stored after each publish returns: one may be in flight.
        let back = 2 * u32::from(N);
        let lowest = (before + 1).saturating_sub(back).max(1);
        let highest = (after + 2).saturating_sub(back).max(1);
        assert!(
            (lowest..=highest).contains(&first),
            "round {round}: starts at {first}, published {before}..{after} around the subscribe"
        );
    }
}
