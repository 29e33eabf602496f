//! The control API on one node: disconnecting, unsubscribing, revoking and listing a user's
//! subscriptions, through the engine with the in-memory broker. Identities are built directly
//! (what `Policy::authenticate` returns for a token), so no JWT is needed here; the HTTP tests
//! do the same over real connections with real tokens.
//!
//! The clock is paused: "at once" is checked as "with no virtual time elapsed", since the
//! runtime only moves a paused clock when every task is idle.

use std::sync::Arc;
use std::time::Duration;

use halley_engine::access::{AccessConfig, Denied, Identity, Policy, Principal};
use halley_engine::bayeux::{Bayeux, BayeuxConfig, Handled, NoServices, PolicyOnly};
use halley_engine::control::{Closing, Command};
use halley_engine::{Engine, EngineConfig, Event, Subscription};
use halley_proto::bayeux::parse_batch;
use halley_proto::{Channel, Pattern, Payload};
use serde_json::{Value, json};
use tokio::time::Instant;

const NOW: u64 = 1_800_000_000;

/// An engine whose policy reads a fixed clock (so listings' `since` is known).
fn engine() -> Engine {
    let engine = Engine::in_memory(EngineConfig::default());
    let policy = Policy::with_clock(AccessConfig::default(), || NOW).unwrap();
    assert!(engine.set_policy(policy).is_ok());
    engine
}

/// What `Policy::authenticate` makes of a token with this subject and issue time.
fn holder(user: &str, issued_at: u64) -> Principal {
    Arc::new(Identity {
        token: true,
        user: Some(user.into()),
        issued_at: Some(issued_at),
        expires: Some(NOW + 3600),
        ..Identity::default()
    })
}

fn p(pattern: &str) -> Pattern {
    Pattern::parse(pattern).unwrap()
}

async fn open(
    e: &Engine,
    patterns: &[&str],
    who: &Identity,
    transport: &'static str,
) -> Subscription {
    let mut sub = e
        .subscribe_many(patterns.iter().map(|x| p(x)).collect(), None)
        .await
        .unwrap();
    sub.admitted_as(who, transport);
    sub
}

async fn publish(e: &Engine, channel: &str, text: &str) -> usize {
    e.publish(Channel::parse(channel).unwrap(), Payload::string(text))
        .await
        .unwrap()
        .subscribers
}

/// The events available now, as text.
fn drain(s: &mut Subscription) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(event) = s.try_next() {
        out.push(match event {
            Event::Message(m) => m.text().to_string(),
            Event::Lagged => "LAGGED".into(),
            Event::Closed(Closing::Disconnected(reason)) => {
                format!("DISCONNECTED {}", reason.as_deref().unwrap_or("-"))
            }
            Event::Closed(Closing::Revoked(denied)) => format!("REVOKED {denied}"),
            Event::Unsubscribed(pattern) => format!("UNSUBSCRIBED {pattern}"),
        });
        if out
            .last()
            .is_some_and(|e| e.starts_with("DISCONNECTED") || e.starts_with("REVOKED"))
        {
            break;
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn disconnect_ends_every_subscription_of_the_user_and_no_other() {
    let e = engine();
    let alice = holder("alice", NOW);
    let mut one = open(&e, &["/chat/a"], &alice, "sse").await;
    let mut two = open(&e, &["/chat/**"], &alice, "websocket").await;
    let mut bob = open(&e, &["/chat/a"], &holder("bob", NOW), "sse").await;
    let anonymous = Policy::open().anonymous();
    let mut stranger = open(&e, &["/chat/a"], &anonymous, "sse").await;
    publish(&e, "/chat/a", "queued").await;

    assert_eq!(e.disconnect_user("alice", Some("banned for spam")), 2);
    // The notice comes before what was queued (which is dropped with the queue).
    assert_eq!(drain(&mut one), ["DISCONNECTED banned for spam"]);
    assert_eq!(drain(&mut two), ["DISCONNECTED banned for spam"]);
    // Asked again, a closed subscription says the same.
    assert_eq!(drain(&mut one), ["DISCONNECTED banned for spam"]);
    assert_eq!(drain(&mut bob), ["queued"]);
    assert_eq!(drain(&mut stranger), ["queued"]);
    // Deliveries no longer reach alice's; nobody else noticed.
    assert_eq!(publish(&e, "/chat/a", "after").await, 2);
    assert_eq!(drain(&mut bob), ["after"]);
    assert!(e.user_connections("alice").is_empty());
    assert_eq!(e.disconnect_user("alice", None), 0, "nothing left to end");
    assert_eq!(e.user_connections("bob").len(), 1);
    // Dropping leaves the index, and a user with nothing open has no entry.
    drop(bob);
    assert!(e.user_connections("bob").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_waiting_subscriber_is_woken_at_once() {
    let e = engine();
    let mut sub = open(&e, &["/chat/a"], &holder("alice", NOW), "sse").await;
    let waiting = tokio::spawn(async move { sub.next().await });
    tokio::task::yield_now().await;
    let start = Instant::now();
    assert_eq!(e.disconnect_user("alice", None), 1);
    let event = tokio::time::timeout(Duration::from_secs(3600), waiting)
        .await
        .expect("woken")
        .unwrap();
    assert!(
        matches!(event, Event::Closed(Closing::Disconnected(None))),
        "{event:?}"
    );
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "not at a heartbeat: at once"
    );
}

#[tokio::test(start_paused = true)]
async fn unsubscribe_takes_one_channel_off_and_the_last_one_empties_the_subscription() {
    let e = engine();
    let alice = holder("alice", NOW);
    let mut sub = open(&e, &["/chat/a", "/chat/b"], &alice, "stream").await;
    let mut wild = open(&e, &["/chat/**"], &alice, "longpoll").await;

    // Patterns are compared as written: /chat/a is not /chat/**.
    assert_eq!(e.unsubscribe_user("alice", &p("/chat/a")), 1);
    assert_eq!(e.unsubscribe_user("alice", &p("/chat/a")), 0, "already off");
    assert_eq!(e.unsubscribe_user("nobody", &p("/chat/a")), 0);
    publish(&e, "/chat/a", "to a").await;
    publish(&e, "/chat/b", "to b").await;
    assert_eq!(drain(&mut sub), ["UNSUBSCRIBED /chat/a", "to b"]);
    assert_eq!(sub.patterns(), [p("/chat/b")]);
    assert_eq!(drain(&mut wild), ["to a", "to b"]);

    assert_eq!(e.unsubscribe_user("alice", &p("/chat/b")), 1);
    assert_eq!(drain(&mut sub), ["UNSUBSCRIBED /chat/b"]);
    assert!(sub.patterns().is_empty(), "the transport ends it now");
    assert_eq!(
        publish(&e, "/chat/b", "nobody here").await,
        1,
        "only the wildcard"
    );
}

#[tokio::test(start_paused = true)]
async fn revoke_ends_what_older_tokens_opened_and_refuses_them_from_now_on() {
    let e = engine();
    let old = holder("alice", NOW - 100);
    let fresh = holder("alice", NOW + 5);
    let mut before = open(&e, &["/chat/a"], &old, "sse").await;
    let mut after = open(&e, &["/chat/a"], &fresh, "sse").await;

    assert_eq!(e.revoke_user("alice", NOW).unwrap(), 1);
    assert_eq!(drain(&mut before), ["REVOKED token revoked"]);
    assert!(drain(&mut after).is_empty(), "a token issued after stays");
    assert_eq!(
        e.policy().check_open(&old),
        Err(Denied::Unauthenticated("token revoked".into()))
    );
    assert_eq!(e.policy().check_open(&fresh), Ok(()));
    let listed = e.user_connections("alice");
    assert_eq!(listed.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn listing_shows_transport_channels_and_since() {
    let e = engine();
    let alice = holder("alice", NOW);
    let _one = open(&e, &["/chat/b", "/chat/a"], &alice, "sse").await;
    let _two = open(&e, &["/news/**"], &alice, "websocket").await;
    // A token without a subject, or no token, is never listed.
    let nameless = Arc::new(Identity {
        token: true,
        expires: Some(NOW + 60),
        ..Identity::default()
    });
    let _three = open(&e, &["/chat/a"], &nameless, "sse").await;
    let listed = e.user_connections("alice");
    let view: Vec<(String, Vec<String>, u64)> = listed
        .iter()
        .map(|c| (c.transport.clone(), c.channels.clone(), c.since))
        .collect();
    assert_eq!(
        view,
        [
            ("sse".into(), vec!["/chat/a".into(), "/chat/b".into()], NOW),
            ("websocket".into(), vec!["/news/**".into()], NOW),
        ]
    );
    assert!(listed[0].id < listed[1].id);
    assert_eq!(listed[0].node, None, "one node: no node names");
    // The cluster-wide form: this node only, with the memory broker.
    let report = e
        .control(Command::List {
            user: "alice".into(),
        })
        .await
        .unwrap();
    assert_eq!(report.count(), 2);
    assert_eq!(report.remote.nodes, 0);
    assert!(report.unreachable.is_none());
}

// ---- Bayeux sessions ----

fn bayeux(e: &Engine) -> Bayeux {
    Bayeux::spawn(
        e.clone(),
        BayeuxConfig::default(),
        Arc::new(PolicyOnly),
        Arc::new(NoServices),
    )
}

async fn send(b: &Bayeux, message: Value, who: &Principal) -> Handled {
    let mut batch = parse_batch(message.to_string().as_bytes()).unwrap();
    b.handle_from(batch.remove(0), who).await
}

async fn reply(b: &Bayeux, message: Value, who: &Principal) -> Value {
    match send(b, message, who).await {
        Handled::Reply(r) => serde_json::from_str(&r.to_json()).unwrap(),
        Handled::Connect(_) => panic!("held"),
        Handled::Call(_) => panic!("a service call"),
    }
}

async fn session(b: &Bayeux, who: &Principal, subscriptions: &[&str]) -> String {
    let hs = reply(
        b,
        json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"]}),
        who,
    )
    .await;
    let client = hs["clientId"].as_str().unwrap().to_string();
    for s in subscriptions {
        let r = reply(
            b,
            json!({"channel": "/meta/subscribe", "clientId": client, "subscription": s}),
            who,
        )
        .await;
        assert_eq!(r["successful"], true, "{r}");
    }
    // Past its first connect (answered at once), so that its next one is held.
    let Handled::Connect(first) = send(b, connect(&client), who).await else {
        panic!("the first connect was refused");
    };
    let (_, r) = b.hold(first, true).await;
    assert_eq!(r.successful, Some(true), "{}", r.to_json());
    client
}

fn connect(client: &str) -> Value {
    json!({"channel": "/meta/connect", "clientId": client, "connectionType": "long-polling"})
}

#[tokio::test(start_paused = true)]
async fn a_disconnected_bayeux_session_is_told_to_handshake_at_once() {
    let e = engine();
    let b = bayeux(&e);
    let alice = holder("alice", NOW);
    let client = session(&b, &alice, &["/chat/a"]).await;
    let listed = e.user_connections("alice");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].transport, "bayeux");
    assert_eq!(listed[0].channels, ["/chat/a"]);

    let Handled::Connect(held) = send(&b, connect(&client), &alice).await else {
        panic!("not held");
    };
    let b2 = b.clone();
    let holding = tokio::spawn(async move { b2.hold(held, true).await });
    tokio::task::yield_now().await;
    let start = Instant::now();
    assert_eq!(e.disconnect_user("alice", Some("see you")), 1);
    let (messages, reply) = holding.await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "answered at once");
    assert!(messages.is_empty());
    let reply: Value = serde_json::from_str(&reply.to_json()).unwrap();
    assert_eq!(reply["successful"], false, "{reply}");
    assert_eq!(reply["error"], "402::disconnected see you", "{reply}");
    assert_eq!(reply["advice"]["reconnect"], "handshake", "{reply}");
    // The session is gone; the client may handshake again (a disconnect is not a ban).
    let again = reply_of_connect(&b, &client, &alice).await;
    assert_eq!(again["error"], "402::Unknown client", "{again}");
    let _back = session(&b, &alice, &["/chat/a"]).await;
}

async fn reply_of_connect(b: &Bayeux, client: &str, who: &Principal) -> Value {
    match send(b, connect(client), who).await {
        Handled::Reply(r) => serde_json::from_str(&r.to_json()).unwrap(),
        Handled::Connect(c) => {
            let (_, r) = b.hold(c, false).await;
            serde_json::from_str(&r.to_json()).unwrap()
        }
        Handled::Call(_) => panic!("a service call"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_revoked_bayeux_session_is_refused_401_between_connects() {
    let e = engine();
    let b = bayeux(&e);
    let alice = holder("alice", NOW - 10);
    let client = session(&b, &alice, &["/chat/a"]).await;
    assert_eq!(e.revoke_user("alice", NOW).unwrap(), 1);
    let reply = reply_of_connect(&b, &client, &alice).await;
    assert_eq!(reply["error"], "401::token revoked", "{reply}");
    assert_eq!(reply["advice"]["reconnect"], "handshake", "{reply}");
}

#[tokio::test(start_paused = true)]
async fn an_unsubscribed_bayeux_session_stays_and_may_subscribe_again() {
    let e = engine();
    let b = bayeux(&e);
    let alice = holder("alice", NOW);
    let client = session(&b, &alice, &["/chat/a", "/chat/b"]).await;
    assert_eq!(e.unsubscribe_user("alice", &p("/chat/a")), 1);
    publish(&e, "/chat/a", "not for alice").await;
    publish(&e, "/chat/b", "for alice").await;
    let Handled::Connect(c) = send(&b, connect(&client), &alice).await else {
        panic!("not held");
    };
    let (messages, answer) = b.hold(c, false).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].text(), "for alice");
    assert!(answer.successful == Some(true), "{}", answer.to_json());
    assert_eq!(e.user_connections("alice")[0].channels, ["/chat/b"]);
    // Taken off while the session had not read the notice yet: subscribing again works.
    assert_eq!(e.unsubscribe_user("alice", &p("/chat/b")), 1);
    let r = reply(
        &b,
        json!({"channel": "/meta/subscribe", "clientId": client, "subscription": "/chat/b"}),
        &alice,
    )
    .await;
    assert_eq!(r["successful"], true, "{r}");
    assert_eq!(e.user_connections("alice")[0].channels, ["/chat/b"]);
    assert_eq!(publish(&e, "/chat/b", "again").await, 1);
}
