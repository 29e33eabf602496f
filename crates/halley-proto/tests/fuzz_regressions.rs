//! Inputs the fuzz targets in `fuzz/` found (docs/fuzzing.md), each kept as a named test of the
//! invariant it broke. The same inputs are seeds in `fuzz/seeds/<target>/`.

use halley_proto::{Channel, Message, MessageId, Payload};

/// The invariant `fuzz/fuzz_targets/publish_body.rs` checks of every accepted body: the stored
/// JSON parses back with any reader, its text form can be read, and the message object every
/// transport writes is JSON.
fn assert_storable(body: &[u8]) {
    let Ok(payload) = Payload::from_json(body) else {
        return;
    };
    serde_json::from_str::<serde_json::Value>(payload.json()).expect("stored data parses");
    let _ = payload.text();
    let message = Message::new(Channel::parse("/a").unwrap(), MessageId::new(1, 1), payload);
    serde_json::from_slice::<serde_json::Value>(message.json_object())
        .expect("the message object parses");
}

/// publish_body, seed `lone-surrogate`: a JSON string holding a lone low surrogate escape was
/// accepted as data; reading it back (`Payload::text`, `/api/history`) panicked (issue 12 §6).
#[test]
fn publish_body_lone_surrogate() {
    assert_storable(br#""lii\ude00""#);
}

/// bayeux_batch, seed `numeric-id-beyond-u64`: a message id sent as a number beyond 2^64 (a
/// float to serde_json) came back in the reply as a different number (one unit in the last
/// place off), so the client could not match the reply to its request.
#[test]
fn bayeux_batch_numeric_id_echoed_as_sent() {
    use halley_proto::bayeux::{BayeuxMessage, parse_batch};
    let body = br#"{"cl":"","id":2222222444444442222223}"#;
    let message = &parse_batch(body).unwrap()[0];
    let reply = BayeuxMessage::reply_to(message, true);
    let echoed = &parse_batch(reply.to_json().as_bytes()).unwrap()[0];
    assert_eq!(echoed.id, message.id);
    assert_eq!(echoed.to_json(), reply.to_json());
}

/// publish_body, seed `number-beyond-f64`: `9e1001` is valid JSON (RFC 8259 leaves number
/// range to implementations) that serde_json cannot read into a `Value`. Halley keeps it
/// verbatim and never reads data into a `Value`; the target checked too much and now checks
/// validity. Pinned here: accepted, kept as sent, and the message object is valid JSON.
#[test]
fn publish_body_number_beyond_f64_kept_verbatim() {
    use serde_json::value::RawValue;
    let payload = Payload::from_json(b"9e1001").unwrap();
    assert_eq!(payload.json(), "9e1001");
    let message = Message::new(Channel::parse("/a").unwrap(), MessageId::new(1, 1), payload);
    let object = std::str::from_utf8(message.json_object()).unwrap();
    serde_json::from_str::<&RawValue>(object).expect("the message object is JSON");
}
