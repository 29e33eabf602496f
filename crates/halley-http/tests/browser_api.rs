//! What the browser client relies on (clients/js/PROTOCOL.md): one connection for many
//! channels, inboxes, presence, JSONP publishing and listings, and the static files.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn enc(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Reads NDJSON lines until a message or control object (skipping heartbeats).
async fn next_object(open: &mut Open) -> Value {
    loop {
        let line = open.line().await;
        if !line.is_empty() {
            return serde_json::from_str(&line).unwrap();
        }
    }
}

#[tokio::test]
async fn one_connection_many_channels_and_one_resume_id() {
    let s = TestServer::start().await;
    let mut open = s
        .stream("/sub?channel=/a&channel=/b/**&transport=stream&format=json")
        .await;
    assert_eq!(open.status, 200);
    let first = s.publish("/a", "1").await;
    s.publish("/x", "not subscribed").await;
    s.publish("/b/c/d", "2").await;
    assert_eq!(next_object(&mut open).await["data"], "1");
    let m = next_object(&mut open).await;
    assert_eq!(
        (m["channel"].as_str(), m["data"].as_str()),
        (Some("/b/c/d"), Some("2"))
    );
    s.publish("/a", "3").await;

    // A long-poll resumes the whole set from one id, in id order; the path may name the first.
    let reply = s
        .get(&format!("/sub/a?channel=/b/**&last_id={first}"))
        .await;
    let texts: Vec<_> = reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(texts, [json!("2"), json!("3")]);
    assert_eq!(reply.header("x-halley-gap"), None);

    // JSONP over several channels.
    let reply = s
        .get(&format!(
            "/sub?channel=/a&channel=/b/*&transport=jsonp&callback=cb&last_id={first}"
        ))
        .await;
    assert!(reply.body.starts_with("/**/cb([{"), "{}", reply.body);
    assert!(reply.body.contains("\"3\""), "{}", reply.body);
}

#[tokio::test]
async fn many_channels_over_websocket() {
    let s = TestServer::start().await;
    let mut ws = s.ws("/sub?channel=/room/a&channel=/room/b").await;
    s.wait_subscribers("/room/b", 1).await;
    s.publish("/room/b", "hello").await;
    let m = ws_json(&mut ws).await;
    assert_eq!(
        (m["channel"].as_str(), m["data"].as_str()),
        (Some("/room/b"), Some("hello"))
    );
}

#[tokio::test]
async fn bad_multi_channel_and_presence_requests() {
    let s = TestServer::start().await;
    let many: String = (0..17).map(|i| format!("channel=/c{i}&")).collect();
    s.get(&format!("/sub?{many}")).await.expect_error(400);
    s.get("/sub?channel=/a/**/b").await.expect_error(400);
    let cases = [
        "not json".to_string(),
        json!({"channel": "/a", "member": "short"}).to_string(),
        json!({"channel": "/a", "member": "has spaces in it"}).to_string(),
        json!({"channel": "/a/*", "member": "member-1234"}).to_string(),
        json!({"channel": "/a", "member": "member-1234", "info": "not an object"}).to_string(),
        json!({"channel": "/a", "member": "member-1234", "info": {"x": "y".repeat(600)}})
            .to_string(),
        json!({"channel": "/meta/connect", "member": "member-1234"}).to_string(),
    ];
    for p in cases {
        s.get(&format!("/sub?channel=/a&presence={}", enc(&p)))
            .await
            .expect_error(400);
    }
    s.assert_still_serving().await;
}

#[tokio::test]
async fn inboxes_reach_only_their_owner() {
    let s = TestServer::start().await;
    let minted = s.post("/api/inbox", "text/plain", "").await.json();
    let secret = minted["secret"].as_str().unwrap().to_string();
    let channel = minted["channel"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 32);
    assert!(channel.starts_with("/inbox/") && !channel.contains(&secret));
    assert_eq!(minted["path"], channel.as_str());
    let other = s.post("/api/inbox", "text/plain", "").await.json();
    assert_ne!(other["secret"], minted["secret"]);

    // Without the secret, or with another inbox's, subscribing is refused.
    s.get(&format!("/sub{channel}")).await.expect_error(403);
    let wrong = other["secret"].as_str().unwrap();
    s.get(&format!("/sub?channel={channel}&inbox={wrong}"))
        .await
        .expect_error(403);

    let mut owner = s
        .stream(&format!(
            "/sub?channel={channel}&inbox={secret}&transport=stream&format=json"
        ))
        .await;
    assert_eq!(owner.status, 200);
    let mut everything = s.stream("/sub/**?transport=stream&format=json").await;

    let sent = s.post(&channel, "text/plain", "a text").await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    s.post(&channel, "application/json", r#"{"n":1}"#).await;
    s.post(
        &channel,
        "application/x-www-form-urlencoded",
        "message=a+form",
    )
    .await;
    let jsonp = s
        .get(&format!("{channel}?message=by%20script&callback=cb"))
        .await;
    assert!(jsonp.body.starts_with("/**/cb({"), "{}", jsonp.body);
    assert_eq!(
        jsonp.header("content-type"),
        Some("application/javascript; charset=utf-8")
    );
    for expected in [
        json!("a text"),
        json!({"n": 1}),
        json!("a form"),
        json!("by script"),
    ] {
        let m = next_object(&mut owner).await;
        assert_eq!(m["channel"], channel.as_str());
        assert_eq!(m["data"], expected);
    }
    // `/**` saw none of it: the first thing it gets is an ordinary message published after.
    s.publish("/public", "after").await;
    assert_eq!(next_object(&mut everything).await["channel"], "/public");
    // Nor does the channel listing show inboxes.
    let listing = s.get("/api/channels").await.json();
    assert!(!listing.to_string().contains("/inbox/"), "{listing}");

    s.get(&channel).await.expect_error(405);
    s.get("/inbox/abc?message=x&callback=cb")
        .await
        .expect_error(404);
    s.get("/api/inbox").await.expect_error(405);
    let by_script = s.get("/api/inbox?callback=got").await;
    assert!(
        by_script.body.starts_with("/**/got({\""),
        "{}",
        by_script.body
    );
}

fn declare(channel: &str, member: &str, name: &str) -> String {
    enc(&json!({"channel": channel, "member": member, "info": {"name": name}}).to_string())
}

#[tokio::test]
async fn presence_members_listing_and_notices() {
    let s = TestServer::with_presence_grace(Duration::from_millis(200)).await;
    let mut watcher = s.stream("/sub/talk/a?transport=stream&format=json").await;
    let alice = s
        .stream(&format!(
            "/sub/talk/a?transport=stream&format=json&presence={}",
            declare("/talk/a", "member-alice", "alice")
        ))
        .await;
    assert_eq!(
        next_object(&mut watcher).await["data"],
        json!({"presence": "join", "info": {"name": "alice"}})
    );
    let bob = s
        .ws(&format!(
            "/sub?channel=/talk/b&presence={}&presence={}",
            declare("/talk/b", "member-bob01", "bob"),
            declare("/talk/a", "member-bob01", "bob")
        ))
        .await;
    assert_eq!(
        next_object(&mut watcher).await["data"],
        json!({"presence": "join", "info": {"name": "bob"}})
    );
    let members = s.get("/api/presence?channel=/talk/a").await.json();
    assert_eq!(
        members,
        json!({"channel": "/talk/a", "members": [{"name": "alice"}, {"name": "bob"}]})
    );
    let rooms = s.get("/api/presence?prefix=/talk").await.json();
    assert_eq!(rooms["channels"][0]["channel"], "/talk/a");
    assert_eq!(rooms["channels"][0]["count"], 2);
    assert_eq!(rooms["channels"][1]["channel"], "/talk/b");
    assert_eq!(rooms["channels"][1]["count"], 1);
    // Nobody else can say who joined: a notice-shaped publish is refused, on every path.
    let forged = r#"{"presence":"join","info":{"name":"admin"}}"#;
    s.post("/pub/talk/a", "application/json", forged)
        .await
        .expect_error(400);
    s.get(&format!("/pub/talk/a?callback=cb&data={}", enc(forged)))
        .await
        .expect_error(400);
    let script = s.get("/api/presence?prefix=/talk&callback=rooms").await;
    assert!(
        script.body.starts_with("/**/rooms({\"channels\""),
        "{}",
        script.body
    );

    // Leaving: after the grace, a leave notice and the listing shrinks.
    drop(alice);
    assert_eq!(
        next_object(&mut watcher).await["data"],
        json!({"presence": "leave", "info": {"name": "alice"}})
    );
    drop(bob);
    assert_eq!(next_object(&mut watcher).await["data"]["presence"], "leave");
    let rooms = s.get("/api/presence?prefix=/talk").await.json();
    assert_eq!(rooms, json!({"channels": []}));
}

#[tokio::test]
async fn long_polling_members_do_not_flap() {
    let s = TestServer::with_presence_grace(Duration::from_secs(30)).await;
    let mut watcher = s.stream("/sub/talk/c?transport=stream&format=json").await;
    let poll = format!(
        "/sub/talk/c?presence={}",
        declare("/talk/c", "member-carol", "carol")
    );
    // The first poll announces carol and gets the notice itself.
    let first = s.get(&poll).await;
    assert_eq!(first.status, 200);
    assert_eq!(next_object(&mut watcher).await["data"]["presence"], "join");
    // Further polls (the hold timeout is short here) announce nothing.
    for _ in 0..3 {
        s.get(&poll).await;
    }
    s.publish("/talk/c", "next").await;
    assert_eq!(next_object(&mut watcher).await["data"], "next");
    // With a new colour: one update notice.
    let recoloured = format!(
        "/sub/talk/c?presence={}",
        enc(&json!({"channel": "/talk/c", "member": "member-carol", "info": {"name": "carol", "color": "#ff0000"}}).to_string())
    );
    s.get(&recoloured).await;
    assert_eq!(
        next_object(&mut watcher).await["data"],
        json!({"presence": "update", "info": {"name": "carol", "color": "#ff0000"}, "was": {"name": "carol"}})
    );
}

#[tokio::test]
async fn publishing_by_script_needs_a_callback() {
    let s = TestServer::start().await;
    let mut open = s.stream("/sub/a?transport=stream&format=json").await;
    let reply = s
        .get(&format!("/pub/a?callback=done&data={}", enc(r#"{"n":2}"#)))
        .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.body.starts_with("/**/done({\"channel\":\"/a\""),
        "{}",
        reply.body
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(next_object(&mut open).await["data"], json!({"n": 2}));
    s.get("/pub/a?data=1").await.expect_error(405);
    s.get("/pub/a?callback=done&data=not%20json")
        .await
        .expect_error(400);
    s.get("/pub/a?callback=done").await.expect_error(400);
    s.get("/pub/a?callback=alert(1)&data=1")
        .await
        .expect_error(400);
    s.get("/pub/a/*?callback=done&data=1")
        .await
        .expect_error(400);
}

#[tokio::test]
async fn static_files_with_revalidation() {
    let s = TestServer::start().await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/halley.js", "text/javascript; charset=utf-8"),
        ("/halley.d.ts", "text/plain; charset=utf-8"),
        ("/talk/talk.js", "text/javascript; charset=utf-8"),
        ("/talk/talk.css", "text/css; charset=utf-8"),
        ("/talk-widget.js", "text/javascript; charset=utf-8"),
    ] {
        let reply = s.get(path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("content-type"), Some(content_type), "{path}");
        assert!(!reply.body.is_empty());
        let etag = reply.header("etag").expect("etag").to_string();
        let again = s
            .send(
                s.request("GET", path)
                    .header("if-none-match", &etag)
                    .body(Default::default())
                    .unwrap(),
            )
            .await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty());
    }
    let cross = s
        .send(
            s.request("GET", "/halley.js")
                .header("origin", "http://elsewhere.example")
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(
        cross.header("access-control-allow-origin"),
        Some("http://elsewhere.example")
    );
    s.get("/talk/nope.js").await.expect_error(404);
}

#[tokio::test]
async fn streams_can_say_where_they_start() {
    let s = TestServer::start().await;
    let before = s.publish("/p/a", "before").await;

    // SSE: an event `position` whose id is the position (EventSource resends it as
    // Last-Event-ID), after the usual retry advice; the header carries it too.
    let mut sse = s
        .stream("/sub/p/a?transport=sse&format=json&position=1")
        .await;
    assert_eq!(sse.header("x-halley-last-id"), Some(before.as_str()));
    sse.expect("retry: 2000\n\n").await;
    sse.expect(&format!(
        "event: position\nid: {before}\ndata: {{\"event\":\"position\",\"last_id\":\"{before}\"}}\n\n"
    ))
    .await;

    // NDJSON: after the opening blank line.
    let mut ndjson = s
        .stream("/sub/p/a?transport=stream&format=json&position=1")
        .await;
    assert_eq!(
        ndjson.json_line().await,
        json!({"event": "position", "last_id": before})
    );

    // WebSocket: the first frame.
    let mut ws = s.ws("/sub?channel=/p/a&channel=/p/b&position=1").await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"event": "position", "last_id": before})
    );

    // Cut before any message: resuming from the position loses nothing published since.
    drop((sse, ndjson, ws));
    s.publish("/p/a", "while away").await;
    let reply = s.get(&format!("/sub/p/a?last_id={before}")).await;
    assert_eq!(reply.json()[0]["data"], "while away");

    // Without position=1 nothing changes in-band.
    let mut plain = s.stream("/sub/p/a?transport=stream&format=json").await;
    s.publish("/p/a", "next").await;
    assert_eq!(plain.json_line().await["data"], "next");
}

#[tokio::test]
async fn after_a_gap_the_position_is_one_to_come_back_to() {
    let s = TestServer::start().await;
    let foreign = foreign_epoch(&s.publish("/g/other", "x").await);
    // Nothing to replay on /g/a: the answer's position is now, in this epoch, not the
    // foreign id (which would report the same gap on every later poll).
    let first = s.get(&format!("/sub/g/a?last_id={foreign}")).await;
    assert_eq!(first.header("x-halley-gap"), Some("true"));
    let position = first.header("x-halley-last-id").unwrap().to_string();
    assert_ne!(position, foreign);
    s.publish("/g/a", "after").await;
    let second = s.get(&format!("/sub/g/a?last_id={position}")).await;
    assert_eq!(second.header("x-halley-gap"), None);
    assert_eq!(second.json()[0]["data"], "after");

    // With history to replay, a stream announces the position just before the replay.
    let mut open = s
        .stream(&format!(
            "/sub/g/a?transport=stream&format=json&position=1&last_id={foreign}"
        ))
        .await;
    assert_eq!(open.json_line().await["event"], "gap");
    let announced = open.json_line().await;
    assert_eq!(announced["event"], "position");
    assert_eq!(
        open.json_line().await["data"],
        "after",
        "the replay follows"
    );
    let again = s
        .get(&format!(
            "/sub/g/a?last_id={}",
            announced["last_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(again.header("x-halley-gap"), None);
    assert_eq!(
        again.json()[0]["data"],
        "after",
        "nothing skipped from there"
    );
}

#[tokio::test]
async fn recent_history_for_somebody_who_just_arrived() {
    let s = TestServer::start().await;
    for i in 1..=25 {
        s.publish("/h/a", &format!("a{i}")).await;
        s.publish("/h/b", &format!("b{i}")).await;
    }
    let data = |reply: &Reply| -> Vec<String> {
        reply.json()["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["data"].as_str().unwrap().to_string())
            .collect()
    };
    let default = s.get("/api/history?channel=/h/a").await;
    let expected: Vec<String> = (6..=25).map(|i| format!("a{i}")).collect();
    assert_eq!(data(&default), expected, "the newest 20, oldest first");
    assert_eq!(default.json()["channel"], "/h/a");
    assert_eq!(
        data(&s.get("/api/history?channel=/h/b&limit=2").await),
        ["b24", "b25"]
    );
    // Each comes with its id: a client can resume from the newest.
    let newest = default.json()["messages"][19]["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.publish("/h/a", "a26").await;
    assert_eq!(
        s.get(&format!("/sub/h/a?last_id={newest}")).await.json()[0]["data"],
        "a26"
    );
    let script = s
        .get("/api/history?channel=/h/a&limit=1&callback=got")
        .await;
    assert!(
        script.body.starts_with("/**/got({\"channel\":\"/h/a\""),
        "{}",
        script.body
    );
    assert_eq!(
        s.get("/api/history?channel=/nothing/here").await.json()["messages"],
        json!([])
    );

    for bad in [
        "",
        "?channel=/h/*",
        "?channel=/h/a&limit=0",
        "?channel=/h/a&limit=101",
        "?channel=/h/a&limit=x",
        "?channel=/meta/connect",
    ] {
        s.get(&format!("/api/history{bad}")).await.expect_error(400);
    }
    let inbox = s.post("/api/inbox", "text/plain", "").await.json();
    s.get(&format!(
        "/api/history?channel={}",
        inbox["channel"].as_str().unwrap()
    ))
    .await
    .expect_error(403);
}
