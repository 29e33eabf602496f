//! Presence: members declared by connections, the grace period, and the notices on the channel.

use std::time::Duration;

use halley_engine::{Engine, EngineConfig, Event, Subscription};
use halley_proto::{Channel, Pattern};
use serde_json::{Value, json};

fn ch(name: &str) -> Channel {
    Channel::parse(name).unwrap()
}

async fn next_json(s: &mut Subscription) -> Value {
    match tokio::time::timeout(Duration::from_secs(60), s.next()).await {
        Ok(Event::Message(m)) => serde_json::from_str(m.data.json()).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn setup() -> Engine {
    let e = Engine::in_memory(EngineConfig::default());
    e.set_presence_grace(Duration::from_secs(10));
    e
}

#[tokio::test(start_paused = true)]
async fn join_leave_after_grace_and_listing() {
    let e = setup();
    let mut watcher = e
        .subscribe(Pattern::parse("/talk/a").unwrap(), None)
        .await
        .unwrap();
    let alice = e
        .join(ch("/talk/a"), "m-alice", json!({"name": "alice"}))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut watcher).await,
        json!({"presence": "join", "info": {"name": "alice"}})
    );
    let bob = e
        .join(ch("/talk/a"), "m-bob", json!({"name": "bob"}))
        .await
        .unwrap();
    next_json(&mut watcher).await;
    assert_eq!(
        e.members(&ch("/talk/a")).await.unwrap(),
        [json!({"name": "alice"}), json!({"name": "bob"})]
    );
    let rooms = e.presence("/talk").await.unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].1.len(), 2);

    drop(bob);
    // Within the grace nothing is announced and bob is still listed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(watcher.try_next().is_none());
    assert_eq!(e.members(&ch("/talk/a")).await.unwrap().len(), 2);
    assert_eq!(
        next_json(&mut watcher).await,
        json!({"presence": "leave", "info": {"name": "bob"}})
    );
    assert_eq!(
        e.members(&ch("/talk/a")).await.unwrap(),
        [json!({"name": "alice"})]
    );
    drop(alice);
}

#[tokio::test(start_paused = true)]
async fn reconnect_within_grace_is_silent_and_new_info_is_an_update() {
    let e = setup();
    let mut watcher = e
        .subscribe(Pattern::parse("/talk/a").unwrap(), None)
        .await
        .unwrap();
    let first = e
        .join(ch("/talk/a"), "m1", json!({"name": "alice"}))
        .await
        .unwrap();
    next_json(&mut watcher).await;
    // A long-poll cycle: the connection closes, the next one declares the same member.
    drop(first);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = e
        .join(ch("/talk/a"), "m1", json!({"name": "alice"}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        watcher.try_next().is_none(),
        "no leave/join for a reconnect"
    );
    // Two tabs of one member: closing one keeps it present.
    let third = e
        .join(
            ch("/talk/a"),
            "m1",
            json!({"name": "alice", "color": "#ff0000"}),
        )
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut watcher).await,
        json!({"presence": "update", "info": {"name": "alice", "color": "#ff0000"}, "was": {"name": "alice"}})
    );
    drop(second);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(watcher.try_next().is_none());
    assert_eq!(e.members(&ch("/talk/a")).await.unwrap().len(), 1);
    drop(third);
    assert_eq!(next_json(&mut watcher).await["presence"], "leave");
    assert!(e.presence("/talk").await.unwrap().is_empty());
}

#[tokio::test]
async fn protocol_and_private_channels_refused() {
    let e = setup();
    let inbox = halley_proto::inbox::channel_for(&"a".repeat(32)).unwrap();
    for c in [ch("/meta/connect"), ch("/service/x"), inbox] {
        assert!(e.join(c, "m1", json!({})).await.is_err());
    }
}
