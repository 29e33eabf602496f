//! The observer: what the engine tells it (presence, occupancy, publishes), when, and for
//! which channels. Time is paused: the grace periods pass without waiting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use halley_engine::access::{AccessConfig, Identity, NamespaceConfig, Policy, PublishRule};
use halley_engine::observe::{Event, Kind, Kinds, Observer};
use halley_engine::{Engine, EngineConfig};
use halley_proto::{Channel, Pattern, Payload};
use serde_json::json;

const GRACE: Duration = Duration::from_secs(10);

/// Every event, summarised as one line.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
}

impl Observer for Recorder {
    fn observe(&self, event: Event) {
        let line = match event {
            Event::MemberJoined {
                channel,
                member,
                info,
            } => format!("joined {channel} {member} {info}"),
            Event::MemberLeft {
                channel,
                member,
                info,
            } => format!("left {channel} {member} {info}"),
            Event::Occupied { channel } => format!("occupied {channel}"),
            Event::Vacated { channel } => format!("vacated {channel}"),
            Event::Published {
                message,
                user,
                info,
            } => format!(
                "published {} {} user={user:?} info={info:?}",
                message.channel,
                message.data.json()
            ),
        };
        self.events.lock().unwrap().push(line);
    }
}

impl Recorder {
    /// The events told since the last call.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

fn ch(name: &str) -> Channel {
    Channel::parse(name).unwrap()
}

fn pattern(name: &str) -> Pattern {
    Pattern::parse(name).unwrap()
}

/// An engine telling a recorder the default kinds (presence, occupancy), under `policy`.
fn observed(policy: Policy) -> (Engine, Arc<Recorder>) {
    let engine = Engine::in_memory(EngineConfig::default());
    engine.set_presence_grace(GRACE);
    assert!(engine.set_policy(policy).is_ok());
    let recorder = Arc::new(Recorder::default());
    assert!(
        engine
            .set_observer(recorder.clone(), Kinds::DEFAULT)
            .is_ok()
    );
    (engine, recorder)
}

#[tokio::test(start_paused = true)]
async fn a_channel_is_occupied_once_and_vacated_a_grace_after_its_last_subscriber() {
    let (e, events) = observed(Policy::open());
    let first = e.subscribe(pattern("/room/a"), None).await.unwrap();
    assert_eq!(events.take(), ["occupied /room/a"]);
    let second = e.subscribe(pattern("/room/a"), None).await.unwrap();
    // Wildcards occupy no channel.
    let wild = e.subscribe(pattern("/room/**"), None).await.unwrap();
    assert!(events.take().is_empty());
    drop(first);
    drop(second);
    drop(wild);
    tokio::time::sleep(GRACE / 2).await;
    assert!(events.take().is_empty(), "vacated before the grace");
    // Back within the grace (a long-poll's next poll, a reconnect): nothing happened.
    let back = e.subscribe(pattern("/room/a"), None).await.unwrap();
    drop(back);
    tokio::time::sleep(GRACE / 2).await;
    assert!(
        events.take().is_empty(),
        "the grace restarts when it empties again"
    );
    tokio::time::sleep(GRACE).await;
    assert_eq!(events.take(), ["vacated /room/a"]);
    let _again = e.subscribe(pattern("/room/a"), None).await.unwrap();
    assert_eq!(events.take(), ["occupied /room/a"]);
}

#[tokio::test(start_paused = true)]
async fn joins_and_leaves_are_told_where_the_notices_are_published() {
    let (e, events) = observed(Policy::open());
    let info = json!({"name": "alice"});
    let tab1 = e
        .join(ch("/talk/a"), "m-alice-1", info.clone())
        .await
        .unwrap();
    assert_eq!(
        events.take(),
        [r#"joined /talk/a m-alice-1 {"name":"alice"}"#]
    );
    // Her second connection is no join; her first closing is no leave.
    let tab2 = e
        .join(ch("/talk/a"), "m-alice-1", info.clone())
        .await
        .unwrap();
    drop(tab1);
    assert!(events.take().is_empty());
    drop(tab2);
    tokio::time::sleep(GRACE / 2).await;
    assert!(events.take().is_empty(), "left before the grace");
    tokio::time::sleep(GRACE).await;
    assert_eq!(
        events.take(),
        [r#"left /talk/a m-alice-1 {"name":"alice"}"#]
    );
}

#[tokio::test(start_paused = true)]
async fn namespaces_choose_the_events_and_inboxes_tell_nothing_by_default() {
    let ns = |channels: &str, webhooks: Option<&[&str]>| NamespaceConfig {
        publish: PublishRule::Anyone,
        webhooks: webhooks.map(|names| Kinds::parse(names).unwrap()),
        ..NamespaceConfig::new(channels)
    };
    let policy = Policy::new(AccessConfig {
        namespaces: vec![
            ns("/chat/**", Some(&["publish"])),
            ns("/news/**", None),
            ns("/quiet/**", Some(&[])),
            ns("/inbox/**", None),
        ],
        ..AccessConfig::default()
    })
    .unwrap();
    let (e, events) = observed(policy);
    let alice = Identity {
        token: true,
        user: Some("alice".into()),
        info: Some(r#"{"name":"Alice"}"#.into()),
        ..Identity::default()
    };
    let backend = Identity {
        backend: true,
        ..Identity::default()
    };
    let data = || Payload::from_json(br#"{"text":"hi"}"#).unwrap();

    // /chat/** asks for publishes only: no occupancy, no presence.
    let _sub = e.subscribe(pattern("/chat/a"), None).await.unwrap();
    let _member = e.join(ch("/chat/a"), "m-alice-1", json!({})).await.unwrap();
    e.publish_as(&alice, ch("/chat/a"), data()).await.unwrap();
    e.publish_as(&Identity::default(), ch("/chat/a"), data())
        .await
        .unwrap();
    // The application's own publishes are not told back to it.
    e.publish_as(&backend, ch("/chat/a"), data()).await.unwrap();
    assert_eq!(
        events.take(),
        [
            r#"published /chat/a {"text":"hi"} user=Some("alice") info=Some("{\"name\":\"Alice\"}")"#,
            r#"published /chat/a {"text":"hi"} user=None info=None"#,
        ]
    );

    // /news/** says nothing: the defaults (presence, occupancy), not publishes.
    let _sub = e.subscribe(pattern("/news/a"), None).await.unwrap();
    e.publish_as(&alice, ch("/news/a"), data()).await.unwrap();
    assert_eq!(events.take(), ["occupied /news/a"]);

    // /quiet/** asks for nothing.
    let _sub = e.subscribe(pattern("/quiet/a"), None).await.unwrap();
    e.publish_as(&alice, ch("/quiet/a"), data()).await.unwrap();
    assert!(events.take().is_empty());

    // An inbox tells nothing unless its namespace names events.
    let inbox = halley_proto::inbox::channel_for(&halley_proto::inbox::secret_from(7)).unwrap();
    let _sub = e.subscribe(Pattern::Exact(inbox), None).await.unwrap();
    assert!(events.take().is_empty());
}

#[tokio::test]
async fn the_observer_is_set_once() {
    let e = Engine::in_memory(EngineConfig::default());
    assert!(
        e.set_observer(Arc::new(Recorder::default()), Kinds::DEFAULT)
            .is_ok()
    );
    assert!(
        e.set_observer(
            Arc::new(Recorder::default()),
            Kinds::NONE.with(Kind::Publish)
        )
        .is_err()
    );
}
