//! Bayeux request bodies (halley-proto bayeux.rs `parse_batch`): long-polling POST bodies,
//! callback-polling `message=` parameters and WebSocket text frames.
//!
//! Invariants: a batch holds at most `MAX_BATCH_MESSAGES`; every message encodes to JSON
//! that parses back to one message with the same fields; replies and errors encode to JSON.
#![no_main]

use halley_proto::bayeux::{BayeuxError, BayeuxMessage, MAX_BATCH_MESSAGES, parse_batch};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = parse_batch(data) else {
        return;
    };
    assert!(batch.len() <= MAX_BATCH_MESSAGES);
    for message in &batch {
        let json = message.to_json();
        let again = parse_batch(json.as_bytes()).expect("an encoded message parses");
        assert_eq!(again.len(), 1);
        let again = &again[0];
        assert_eq!(again.channel, message.channel);
        assert_eq!(again.id, message.id);
        assert_eq!(again.client_id, message.client_id);
        assert_eq!(again.subscription, message.subscription);
        assert_eq!(again.ext, message.ext);
        assert_eq!(
            again.data.as_ref().map(|d| d.get()),
            message.data.as_ref().map(|d| d.get())
        );
        assert_eq!(again.to_json(), json);
        assert_eq!(message.is_meta(), message.channel.starts_with("/meta/"));
        for name in message.subscriptions() {
            let in_subscription = match &message.subscription {
                Some(Value::String(s)) => s == name,
                Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(name)),
                _ => false,
            };
            assert!(in_subscription);
        }
        let error = BayeuxMessage::error(
            message,
            BayeuxError::BadRequest(message.channel.clone(), "fuzz".into()),
        );
        let reply: Value = serde_json::from_str(&error.to_json()).expect("a reply is JSON");
        assert_eq!(reply["successful"], false);
        assert!(reply["error"].as_str().unwrap().starts_with("400:"));
    }
});
