//! Publish bodies of every content type, as `/pub`, `/api/publish`, `/push` and JSONP `GET`s
//! decode them (halley-http publish.rs, api.rs, rupy.rs over halley-proto `Payload`), then the
//! encodings every transport writes of the message (halley-proto message.rs).
//!
//! Input: one byte choosing how the body arrives, then the body. Invariants: a payload is
//! compact JSON that parses to itself again; text keeps its exact characters; every encoding
//! of the message is well formed (one JSON object; SSE lines; one line for line transports);
//! a stamp (`with_key`) gives an object whose last member is the stamp.
#![no_main]

use halley_http::fuzzing::Query;
use halley_proto::{Channel, Message, MessageId, Payload};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

/// The message object every transport writes.
#[derive(serde::Deserialize)]
struct Object<'a> {
    channel: &'a str,
    id: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, body)) = data.split_first() else {
        return;
    };
    let payload = match how % 4 {
        // Content-Type: application/json (or +json).
        0 => Payload::from_json(body).ok(),
        // Any other type: UTF-8 text, which becomes a JSON string.
        1 => {
            let payload = Payload::from_text(body).ok();
            if let Some(p) = &payload {
                assert_eq!(p.text().as_bytes(), body);
            }
            payload
        }
        // application/x-www-form-urlencoded: the `message` field, as text.
        2 => {
            let mut query = Query::parse(None);
            query.extend_form(body);
            query.get("message").map(Payload::string)
        }
        // A JSONP GET: `?data=<JSON>` in the query string.
        _ => {
            let Ok(query) = std::str::from_utf8(body) else {
                return;
            };
            let query = Query::parse(Some(query));
            query
                .get("data")
                .and_then(|d| Payload::from_json(d.as_bytes()).ok())
        }
    };
    if let Some(payload) = payload {
        check(&payload);
    }
});

fn check(payload: &Payload) {
    let json = payload.json();
    // Valid JSON; not necessarily a `serde_json::Value`: numbers beyond f64's range (`9e1001`)
    // are valid JSON that Halley keeps verbatim, and serde_json refuses them.
    let raw: &RawValue = serde_json::from_str(json).expect("a payload is JSON");
    assert_eq!(raw.get(), json);
    assert_eq!(Payload::from_json(json.as_bytes()).as_ref(), Ok(payload));
    assert!(!json.contains(['\n', '\r']), "compact JSON is one line");
    let message = Message::new(
        Channel::parse("/fuzz/a").unwrap(),
        MessageId::new(0xabc, 7),
        payload.clone(),
    );
    let object: Object = serde_json::from_slice(message.json_object()).expect("object is JSON");
    assert_eq!((object.channel, object.id), ("/fuzz/a", "abc-7"));
    assert_eq!(object.data.get(), json);
    let text = message.text();
    assert!(!message.line().contains(['\n', '\r']));
    let frame = std::str::from_utf8(message.sse_frame()).unwrap();
    assert!(frame.starts_with("id: abc-7\n") && frame.ends_with("\n\n"));
    let lines: Vec<&str> = frame[..frame.len() - 2]
        .split('\n')
        .skip(1)
        .map(|l| l.strip_prefix("data: ").expect("an SSE data line"))
        .collect();
    assert!(lines.iter().all(|l| !l.contains('\r')));
    assert_eq!(
        lines.join("\n"),
        text.replace("\r\n", "\n").replace('\r', "\n")
    );
    let stamp = Payload::from_json(br#"{"user":"fuzz"}"#).unwrap();
    let stamped = payload.with_key("from", &stamp);
    assert_eq!(stamped.is_some(), json.starts_with('{'));
    if let Some(stamped) = stamped {
        assert_eq!(
            Payload::from_json(stamped.json().as_bytes()).as_ref(),
            Ok(&stamped)
        );
        assert!(
            stamped.json().ends_with(r#","from":{"user":"fuzz"}}"#)
                || stamped.json() == r#"{"from":{"user":"fuzz"}}"#
        );
    }
}
