//! Message ids (halley-proto id.rs): `<epoch hex>-<offset decimal>`, from clients
//! (`Last-Event-ID`, `?since=`, Bayeux `ext`) and from Redis.
//!
//! Invariants: a parsed id prints as its canonical spelling and parses back to itself; every
//! (epoch, offset) pair round-trips; `push_to` writes what `Display` does.
#![no_main]

use halley_proto::MessageId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 16 {
        let epoch = u64::from_le_bytes(data[..8].try_into().unwrap());
        let offset = u64::from_le_bytes(data[8..16].try_into().unwrap());
        round_trip(MessageId::new(epoch, offset));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = text.parse::<MessageId>() {
        round_trip(id);
        // The same id, only spelled differently (case, leading zeros).
        let (epoch, offset) = text.split_once('-').unwrap();
        assert_eq!(u64::from_str_radix(epoch, 16), Ok(id.epoch));
        assert_eq!(offset.parse::<u64>(), Ok(id.offset));
        assert!(!epoch.starts_with('+') && !offset.starts_with('+'));
    }
});

fn round_trip(id: MessageId) {
    let text = id.to_string();
    assert_eq!(text, format!("{:x}-{}", id.epoch, id.offset));
    let mut pushed = String::from("<");
    id.push_to(&mut pushed);
    assert_eq!(&pushed[1..], text);
    assert_eq!(text.parse::<MessageId>(), Ok(id));
}
