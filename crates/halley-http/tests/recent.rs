//! `?recent=N`: each channel's newest messages first, then the live flow, in one subscription —
//! on every `/sub` transport, rupy's `/pull` and Bayeux's three (`ext.recent`): exactly the
//! newest N when nothing races, and no gap and no duplicate between the two with publishes
//! racing the subscription's opening.

mod common;

use common::subscriber::{BAYEUX, Item, NATIVE, Subscriber};
use common::{Client, TestServer};
use serde_json::Value;

/// Data of messages published before the subscription opens.
const BEFORE: u32 = 20;
/// Published while (and after) it opens.
const BURST: u32 = 300;
const RECENT: u32 = 5;

async fn read_until(sub: &mut Subscriber, client: &Client, last: u32) -> Vec<u32> {
    let mut got = Vec::new();
    loop {
        match sub.next(client).await {
            Item::Message { data, .. } => {
                // A JSON string in message objects; SSE's data line is the text itself.
                let n: u32 = serde_json::from_str::<Value>(&data)
                    .ok()
                    .and_then(|v| match v {
                        Value::String(s) => s.parse().ok(),
                        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                        _ => None,
                    })
                    .unwrap_or_else(|| panic!("{:?}: unexpected data {data}", sub.kind));
                got.push(n);
                if n == last {
                    return got;
                }
            }
            Item::Gap => panic!("{:?}: a gap", sub.kind),
            Item::End(why) => panic!("{:?}: ended: {why}", sub.kind),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_then_live_with_a_racing_burst_on_every_transport() {
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    // Bayeux asks it in its subscribe's ext; rupy's pull, as every native transport, by query.
    for kind in NATIVE.into_iter().chain(BAYEUX) {
        let channel = format!("/recent/{kind:?}").to_lowercase();
        for i in 1..=BEFORE {
            s.publish(&channel, &i.to_string()).await;
        }
        // The burst starts first and goes on while the subscription opens.
        let publisher = {
            let (client, channel) = (client, channel.clone());
            tokio::spawn(async move {
                for i in BEFORE + 1..=BEFORE + BURST {
                    let path = format!("/pub{channel}");
                    let reply = client.post(&path, "text/plain", i.to_string()).await;
                    assert_eq!(reply.status, 200, "{}", reply.body);
                }
            })
        };
        let mut sub = Subscriber::new(kind, &channel, None);
        sub.params.push(format!("recent={RECENT}"));
        sub.subscribe_ext = Some(serde_json::json!({ "recent": RECENT }));
        let got = read_until(&mut sub, &client, BEFORE + BURST).await;
        publisher.await.unwrap();
        for pair in got.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "{kind:?}: {got:?}");
        }
        // The newest RECENT as of the moment it opened: at least the last RECENT of those
        // published before, and never the whole burst.
        let first = got[0];
        assert!(
            (BEFORE + 1 - RECENT..=BEFORE + BURST).contains(&first),
            "{kind:?}: starts at {first}"
        );
        assert!(got.len() >= RECENT as usize, "{kind:?}: {got:?}");
    }
}

/// The data of a long-poll answer's messages, as text.
fn datas(reply: &common::Reply) -> Vec<String> {
    let messages = reply.json();
    let messages = messages.as_array().expect("an array of messages");
    messages
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn recent_on_several_channels_and_added_on_a_resume() {
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    s.publish("/r/a", "a1").await;
    s.publish("/r/b", "b1").await;
    let a2 = s.publish("/r/a", "a2").await;
    s.publish("/r/b", "b2").await;
    // Newest one of each, in id order, as one long-poll answer.
    let reply = client
        .get("/sub/r/a?channel=/r/b&recent=1&transport=longpoll")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let data = datas(&reply);
    assert_eq!(data, ["a2", "b2"]);
    // The newest are marked as such in their objects; live messages are not.
    assert!(
        reply
            .json()
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["recent"] == true)
    );
    let live = client.get("/sub/r/a?recent=1&transport=longpoll").await;
    let position = live.header("x-halley-last-id").unwrap().to_owned();
    let a3 = s.publish("/r/a", "a3").await;
    let reply = client
        .get(&format!("/sub/r/a?last_id={position}&transport=longpoll"))
        .await;
    assert_eq!(reply.json()[0]["id"], a3.as_str());
    assert!(reply.json()[0].get("recent").is_none(), "{}", reply.body);
    // Only the channels named added=, when some are.
    let reply = client
        .get("/sub/r/a?channel=/r/b&recent=5&added=/r/b&transport=longpoll")
        .await;
    let data = datas(&reply);
    assert_eq!(data, ["b1", "b2"]);
    // A client that had /r/a up to a2 adds /r/b: /r/b's newest at or before a2, then what
    // came after a2 on both; nothing of /r/a again.
    let reply = client
        .get(&format!(
            "/sub/r/a?channel=/r/b&recent=5&added=/r/b&last_id={a2}&transport=longpoll"
        ))
        .await;
    let data = datas(&reply);
    assert_eq!(data, ["b1", "b2", "a3"]);
    // Without added=, a resume is a resume.
    let reply = client
        .get(&format!(
            "/sub/r/a?channel=/r/b&recent=5&last_id={a2}&transport=longpoll"
        ))
        .await;
    let data = datas(&reply);
    assert_eq!(data, ["b2", "a3"]);
    // Bad input is a 400 with a JSON error.
    for bad in [
        "/sub/r/a?recent=101",
        "/sub/r/a?recent=-1",
        "/sub/r/a?recent=x",
        "/sub/r/*?recent=3",
        "/sub/r/a?recent=3&added=/r/b",
    ] {
        let reply = client.get(bad).await;
        reply.expect_error(400);
    }
}

/// Bayeux: `ext.recent` on `/meta/subscribe`. A session already receiving another channel
/// adds one while a burst is published to it: its newest come first (marked), then the live
/// ones, one run with nothing missed or doubled; the other channel's flow is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bayeux_subscribe_with_ext_recent_while_a_burst_is_published() {
    use common::bayeux;
    use serde_json::json;
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    let id = common::bayeux_client(&client, json!({})).await;
    let connect =
        || json!([{"channel": "/meta/connect", "clientId": id, "connectionType": "long-polling"}]);
    bayeux(&client, connect()).await;
    let replies = bayeux(
        &client,
        json!([{"channel": "/meta/subscribe", "clientId": id, "subscription": "/bx/other"}]),
    )
    .await;
    assert_eq!(replies[0]["successful"], true, "{replies:?}");
    for i in 1..=BEFORE {
        s.publish("/bx/room", &i.to_string()).await;
        s.publish("/bx/other", "other").await;
    }
    let publisher = {
        tokio::spawn(async move {
            for i in BEFORE + 1..=BEFORE + BURST {
                for channel in ["/pub/bx/room", "/pub/bx/other"] {
                    let body = if channel.ends_with("room") {
                        i.to_string()
                    } else {
                        "other".into()
                    };
                    let reply = client.post(channel, "text/plain", body).await;
                    assert_eq!(reply.status, 200, "{}", reply.body);
                }
            }
        })
    };
    let replies = bayeux(
        &client,
        json!([{"channel": "/meta/subscribe", "clientId": id, "subscription": "/bx/room", "ext": {"recent": RECENT}}]),
    )
    .await;
    assert_eq!(replies[0]["successful"], true, "{replies:?}");
    let mut room: Vec<(u32, bool)> = Vec::new();
    let mut others = 0;
    while room.last().is_none_or(|(n, _)| *n < BEFORE + BURST) {
        for m in bayeux(&client, connect()).await {
            match m["channel"].as_str() {
                Some("/bx/room") => room.push((
                    m["data"].as_str().unwrap().parse().unwrap(),
                    m["recent"] == true,
                )),
                Some("/bx/other") => others += 1,
                _ => {}
            }
        }
    }
    publisher.await.unwrap();
    for pair in room.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "{room:?}");
        assert!(pair[0].1 || !pair[1].1, "the newest first: {room:?}");
    }
    assert_eq!(
        room.iter().filter(|(_, r)| *r).count(),
        RECENT as usize,
        "{room:?}"
    );
    assert!(room[0].0 >= BEFORE + 1 - RECENT, "{room:?}");
    // Every message of the other channel published after the first connect, once.
    let others_expected = BEFORE + BURST;
    while others < others_expected {
        let got = bayeux(&client, connect()).await;
        others += got.iter().filter(|m| m["channel"] == "/bx/other").count() as u32;
        assert!(
            got.iter().any(|m| m["channel"] == "/bx/other"),
            "other stalled at {others}"
        );
    }
    assert_eq!(others, others_expected);
    // A bad ext.recent is a refusal with a reason.
    let replies = bayeux(
        &client,
        json!([{"channel": "/meta/subscribe", "clientId": id, "subscription": "/bx/c", "ext": {"recent": 101}}]),
    )
    .await;
    assert_eq!(replies[0]["successful"], false, "{replies:?}");
}

/// With nothing racing: the first messages of a subscription with `recent=N` are exactly the
/// channel's newest N, on every transport (rupy's pull included), and the live flow follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_is_exactly_the_newest_n_on_every_transport() {
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    for kind in NATIVE.into_iter().chain(BAYEUX) {
        let channel = format!("/newest/{kind:?}").to_lowercase();
        for i in 1..=BEFORE {
            s.publish(&channel, &i.to_string()).await;
        }
        let mut sub = Subscriber::new(kind, &channel, None);
        sub.params.push(format!("recent={RECENT}"));
        sub.subscribe_ext = Some(serde_json::json!({ "recent": RECENT }));
        let recent = read_until(&mut sub, &client, BEFORE).await;
        let newest: Vec<u32> = (BEFORE + 1 - RECENT..=BEFORE).collect();
        assert_eq!(recent, newest, "{kind:?}");
        s.publish(&channel, &(BEFORE + 1).to_string()).await;
        let live = read_until(&mut sub, &client, BEFORE + 1).await;
        assert_eq!(live, vec![BEFORE + 1], "{kind:?}");
    }
}
