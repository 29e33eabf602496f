//! Redis replies (halley-redis reply.rs) from the bytes on the wire: the redis crate's RESP
//! parser, then every decoder Halley reads replies with, then a log entry as the node's
//! delivery decodes it (channel `c`, data `d`).
//!
//! Invariants: no decoder panics on a reply of the wrong shape; what decodes is consistent
//! (a stream offset is the number after `0-`, pairs are whole pairs, a delivered message's
//! data is compact JSON).
#![no_main]

use halley_proto::{Channel, Message, MessageId, Payload};
use halley_redis::fuzzing as reply;
use libfuzzer_sys::fuzz_target;
use redis::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok(offset) = reply::offset_of(data) {
        let digits = data
            .strip_prefix(b"0-")
            .expect("a stream id starts with 0-");
        assert!(
            !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
            "an offset is ASCII digits only"
        );
        assert_eq!(
            std::str::from_utf8(digits).unwrap().parse::<u64>(),
            Ok(offset)
        );
    }
    let Ok(value) = redis::parse_redis_value(data) else {
        return;
    };
    let _ = reply::bytes(value.clone());
    let _ = reply::optional_text(value.clone());
    if let Ok(n) = reply::number(value.clone())
        && let Value::Int(i) = value
    {
        assert_eq!(i as u64, n);
    }
    if let Ok(items) = reply::array(value.clone()) {
        if let Ok(pairs) = reply::pairs(value.clone()) {
            assert_eq!(pairs.len(), items.len() / 2);
        }
        if let Ok(pairs) = reply::text_pairs(value.clone()) {
            assert_eq!(pairs.len(), items.len() / 2);
        }
    }
    for entries in [reply::entries(value.clone()), reply::read_reply(value)] {
        for entry in entries.into_iter().flatten() {
            let id = MessageId::new(1, entry.offset);
            let decoded = (|| {
                let channel = Channel::parse(std::str::from_utf8(entry.field("c")?).ok()?).ok()?;
                let data = Payload::from_json(entry.field("d")?).ok()?;
                Some(Message::new(channel, id, data))
            })();
            if let Some(message) = decoded {
                assert!(!message.data.json().contains('\n'));
                let _ = message.json_object();
            }
            let _ = entry.number("t");
        }
    }
});
