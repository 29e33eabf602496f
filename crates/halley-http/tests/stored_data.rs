//! What is stored is what every reader can give back (issue 12): data nested too deep or with a
//! lone surrogate escape is refused at publish on every way in, a notice-shaped publish is
//! refused however its key is escaped, every reader of history gives back the publisher's exact
//! text (member order, escapes), and what goes inside a script is escaped for it.

mod common;

use common::wire::{CALLBACK, STREAMING, Transport};
use common::*;
use futures_util::SinkExt;
use halley_proto::MAX_DEPTH;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

fn enc(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// A storable body: exactly as deep as allowed, with a surrogate pair and keys out of order.
fn deepest(tag: &str) -> String {
    format!(
        r#"{{"z":"{tag}","a":"\ud83d\ude00","deep":{}}}"#,
        nested(MAX_DEPTH - 1)
    )
}

/// Every way a client publishes one JSON body to `channel` (a `/sub` WebSocket, which
/// publishes its frames, is opened per call): the refusal's error text, or `None` if it was
/// published.
async fn publish_everywhere(s: &TestServer, channel: &str, body: &str) -> Vec<Option<String>> {
    let mut outcomes = Vec::new();
    // POST /pub
    let reply = s
        .post(
            &format!("/pub{channel}"),
            "application/json",
            body.to_owned(),
        )
        .await;
    outcomes.push(refusal(&reply));
    // JSONP GET
    let reply = s
        .get(&format!("/pub{channel}?callback=cb&data={}", enc(body)))
        .await;
    outcomes.push(refusal(&reply));
    // A WebSocket frame: refused frames are answered with an error object; a published one
    // comes back to the publisher as a message.
    let mut ws = s.ws(&format!("/sub{channel}")).await;
    within("ws send", ws.send(Frame::text(body.to_owned())))
        .await
        .unwrap();
    let answer = ws_json(&mut ws).await;
    outcomes.push(match answer["event"].as_str() {
        Some("error") => Some(answer["error"].as_str().unwrap().to_owned()),
        _ => {
            assert_eq!(answer["channel"], channel, "{answer}");
            None
        }
    });
    drop(ws);
    // Bayeux (long-polling)
    let client = bayeux_client(s, Value::Null).await;
    let batch =
        format!(r#"[{{"channel":"{channel}","clientId":"{client}","id":"p","data":{body}}}]"#);
    let reply = s.post("/cometd", "application/json", batch).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let replies: Value = reply.json();
    let publish = replies
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "p")
        .unwrap_or_else(|| panic!("no publish reply: {replies}"));
    outcomes.push(match publish["successful"].as_bool() {
        Some(true) => None,
        _ => Some(publish["error"].as_str().unwrap_or("?").to_owned()),
    });
    outcomes
}

/// The error text of a JSON refusal (400), or `None` for a publish.
fn refusal(reply: &Reply) -> Option<String> {
    if reply.status == 200 {
        return None;
    }
    reply.expect_error(400);
    Some(reply.json()["error"].as_str().unwrap().to_owned())
}

/// Issue 12 item 6: `/api/history` panicked on data nested ≥ 127 deep or holding `"\ud800"`,
/// which every way in accepted. Now such data is refused at publish with a clear 400 (or the
/// protocol's error) on every way in, data at the limit is stored, and every reader of history
/// gives it back.
#[tokio::test]
async fn unstorable_data_is_refused_everywhere_and_history_stays_readable() {
    let s = TestServer::start().await;
    let before = s.publish("/h/a", "first").await;
    let refused = [
        (nested(MAX_DEPTH + 1), "too deeply nested"),
        (nested(127), "too deeply nested"),
        (format!(r#"{{"x":{}}}"#, nested(200)), "too deeply nested"),
        (r#"{"s":"\ud800"}"#.to_owned(), "lone surrogate"),
        (r#""\udc00\ud800""#.to_owned(), "lone surrogate"),
        (r#"["a\ud83d"]"#.to_owned(), "lone surrogate"),
    ];
    for (body, why) in &refused {
        for (way, outcome) in publish_everywhere(&s, "/h/a", body)
            .await
            .iter()
            .enumerate()
        {
            let error = outcome
                .as_deref()
                .unwrap_or_else(|| panic!("way {way} published {body:.40}"));
            assert!(error.contains(why), "way {way}: {error}");
        }
        // An inbox too.
        let minted = s.post("/api/inbox", "text/plain", "").await.json();
        let inbox = minted["channel"].as_str().unwrap();
        s.post(inbox, "application/json", body.clone())
            .await
            .expect_error(400);
        s.get(&format!("{inbox}?callback=cb&data={}", enc(body)))
            .await
            .expect_error(400);
    }
    let history = s.get("/api/history?channel=/h/a").await;
    assert_eq!(history.status, 200);
    assert_eq!(history.json()["messages"].as_array().unwrap().len(), 1);

    // At the limit: stored, and given back exactly by history, replay and JSONP history.
    let mut expected = vec![message_object("/h/a", &before, r#""first""#)];
    for tag in ["pub", "jsonp", "ws", "bayeux"] {
        let outcomes = publish_everywhere(&s, "/h/a", &deepest(tag)).await;
        assert_eq!(outcomes, vec![None; 4], "{tag}");
    }
    let history = s.get("/api/history?channel=/h/a&limit=100").await;
    assert_eq!(history.status, 200, "{}", history.body);
    let messages = history.json()["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 17, "{}", history.body);
    for m in &messages[1..] {
        let id = m["id"].as_str().unwrap();
        let tag = m["data"]["z"].as_str().unwrap();
        expected.push(message_object("/h/a", id, &deepest(tag)));
    }
    assert_eq!(
        history.body,
        format!(
            r#"{{"channel":"/h/a","messages":[{}]}}"#,
            expected.join(",")
        )
    );
    let jsonp = s
        .get("/api/history?channel=/h/a&limit=100&callback=h")
        .await;
    assert_eq!(jsonp.status, 200);
    assert_eq!(jsonp.body, format!("/**/h({});", history.body));

    // Replayed on subscribe, on a stream and a long-poll: the same bytes.
    let mut stream = s
        .stream(&format!(
            "/sub/h/a?transport=stream&format=json&last_id={before}"
        ))
        .await;
    stream.expect("\n").await;
    for object in &expected[1..] {
        stream.expect(&format!("{object}\n")).await;
    }
    let poll = s.get(&format!("/sub/h/a?last_id={before}")).await;
    assert_eq!(poll.body, format!("[{}]", expected[1..].join(",")));
    s.assert_still_serving().await;
}

/// Issue 12 item 7: `{"\u0070resence":…}` passed the forgery check (it searched the bytes for
/// `"presence"`) on every way in. The decoded key is judged now.
#[tokio::test]
async fn escaped_presence_keys_are_refused_everywhere() {
    let s = TestServer::start().await;
    let forgeries = [
        r#"{"\u0070resence":"join","info":{"name":"admin"}}"#,
        r#"{"text":"hi","pr\u0065sence":"leave","info":{"name":"bob"}}"#,
        r#"{"\u0070\u0072\u0065\u0073\u0065\u006e\u0063\u0065":"update","info":{}}"#,
    ];
    for forged in forgeries {
        for (way, outcome) in publish_everywhere(&s, "/talk/f", forged)
            .await
            .iter()
            .enumerate()
        {
            let error = outcome
                .as_deref()
                .unwrap_or_else(|| panic!("way {way} published {forged}"));
            assert!(error.contains("presence"), "way {way}: {error}");
        }
        let minted = s.post("/api/inbox", "text/plain", "").await.json();
        let inbox = minted["channel"].as_str().unwrap();
        s.post(inbox, "application/json", forged.to_owned())
            .await
            .expect_error(400);
        s.get(&format!("{inbox}?callback=cb&data={}", enc(forged)))
            .await
            .expect_error(400);
    }
    let history = s.get("/api/history?channel=/talk/f").await.json();
    assert_eq!(history["messages"], json!([]));
    // Not a top-level key: published as usual.
    s.publish_json("/talk/f", r#"{"x":{"\u0070resence":1}}"#)
        .await;
}

/// Issue 12 item 10: JSON object members came back sorted (history re-parsed the stored
/// text). Every transport gives back the publisher's exact text: member order, escapes, number
/// spelling.
#[tokio::test]
async fn members_keep_the_publishers_order_on_every_transport() {
    let s = TestServer::start().await;
    let data = r#"{"zeta":1,"alpha":{"y":2.50,"b":[{"d":1,"c":"\u0041"}]},"mid":null}"#;
    let before = s.publish("/o/a", "before").await;
    let client = bayeux_client(&s, Value::Null).await;
    bayeux(
        &s,
        json!([{"channel": "/meta/subscribe", "clientId": client, "subscription": "/o/a"}]),
    )
    .await;
    let mut streams = Vec::new();
    for t in STREAMING {
        let open = s.stream_with(&t.url("/o/a", &[]), t.headers()).await;
        streams.push((t, open));
    }
    let mut ws = s.ws("/sub/o/a").await;
    let id = s.publish_json("/o/a", data).await;
    let object = message_object("/o/a", &id, data);
    for (t, mut open) in streams {
        open.expect(&t.preamble()).await;
        open.expect(&t.frame("/o/a", &id, data)).await;
    }
    match ws_next(&mut ws).await {
        Frame::Text(text) => assert_eq!(text.as_str(), object),
        other => panic!("{other:?}"),
    }
    let poll = s.get(&format!("/sub/o/a?last_id={before}")).await;
    assert_eq!(poll.body, format!("[{object}]"));
    let jsonp = s
        .get(&format!(
            "/sub/o/a?transport=jsonp&callback=cb&last_id={before}"
        ))
        .await;
    assert!(
        jsonp.body.starts_with(&format!("/**/cb([{object}],")),
        "{}",
        jsonp.body
    );
    let history = s.get("/api/history?channel=/o/a").await;
    let first = message_object("/o/a", &before, r#""before""#);
    assert_eq!(
        history.body,
        format!(r#"{{"channel":"/o/a","messages":[{first},{object}]}}"#)
    );
    // Bayeux delivers the data as published too (queued for the session until it connects).
    let connect =
        json!([{"channel": "/meta/connect", "clientId": client, "connectionType": "long-polling"}])
            .to_string();
    let wanted = format!(r#""data":{data}"#);
    let mut delivered = false;
    for _ in 0..3 {
        let reply = s.post("/cometd", "application/json", connect.clone()).await;
        if reply.body.contains(&wanted) {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "no Bayeux delivery of {wanted}");
}

/// Issue 12 item 10: U+2028 and U+2029 went raw into the forever-iframe's inline script and
/// into JSONP, where JavaScript before ES2019 reads them as line breaks inside a string
/// literal (a syntax error that loses the message). They are escaped there, as `<` is.
#[tokio::test]
async fn line_separators_are_escaped_inside_scripts() {
    let s = TestServer::start().await;
    let text = "a\u{2028}b\u{2029}c</script><!--d";
    let mut iframe = s.stream(&Transport::Iframe.url("/ls/a", &[])).await;
    iframe.expect(&Transport::Iframe.preamble()).await;
    let first = s.publish("/ls/a", text).await;
    let script = iframe.until(")</script>\n").await;
    assert_eq!(
        script,
        format!(
            r#"<script>parent.{CALLBACK}({{"channel":"/ls/a","id":"{first}","data":"a\u2028b\u2029c\u003c/script>\u003c!--d"}})</script>
"#
        )
    );
    // The JSON inside is the same message.
    let inner = &script[format!("<script>parent.{CALLBACK}(").len()..script.len() - 11];
    let message: Value = serde_json::from_str(inner).unwrap();
    assert_eq!(message["data"], text);

    // JSONP: the long-poll answer, a publish's answer and history's.
    let before = s.publish("/ls/b", "x").await;
    let published = s
        .get(&format!(
            "/pub/ls/b?callback=cb&data={}",
            enc(&json!(text).to_string())
        ))
        .await;
    assert_eq!(published.status, 200);
    let poll = s
        .get(&format!(
            "/sub/ls/b?transport=jsonp&callback=cb&last_id={before}"
        ))
        .await;
    let history = s.get("/api/history?channel=/ls/b&callback=cb").await;
    for body in [&poll.body, &history.body] {
        assert!(
            !body.contains(['\u{2028}', '\u{2029}']),
            "raw line separator in {body:?}"
        );
        assert!(
            body.contains(r#""a\u2028b\u2029c\u003c/script>\u003c!--d""#),
            "{body}"
        );
        let args = body
            .strip_prefix("/**/cb(")
            .and_then(|b| b.strip_suffix(");"))
            .unwrap();
        // The arguments are JSON: `[...],{...}` for a poll, one object for history.
        let parsed: Value = serde_json::from_str(&format!("[{args}]")).unwrap();
        assert!(parsed.to_string().contains(r"c</script>"), "{parsed}");
    }
    // Where no script is involved, the text stays as JSON allows it (raw).
    let plain = s.get("/api/history?channel=/ls/b").await;
    assert!(plain.body.contains('\u{2028}'), "{}", plain.body);
}
