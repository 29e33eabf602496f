//! Query strings, form bodies and JSONP callback names (halley-http query.rs).
//!
//! Input: `query\0form body`. Invariants: a name's value is the first of its values, every
//! decoded pair can be looked up, and a callback that passes is a dotted JavaScript
//! identifier of at most 64 bytes.
#![no_main]

use halley_http::fuzzing::{Query, valid_callback};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (query, form) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    // A query comes from a URI, which is text.
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let mut parsed = Query::parse(Some(query));
    parsed.extend_form(form);
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .chain(form_urlencoded::parse(form))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    for (name, _) in pairs.iter().take(32) {
        let first = pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        assert_eq!(parsed.get(name), first, "{name:?}");
        let all: Vec<&str> = parsed.get_all(name).collect();
        assert_eq!(all.first().copied(), first);
        assert_eq!(all.len(), pairs.iter().filter(|(k, _)| k == name).count());
    }
    match parsed.callback() {
        Ok(Some(cb)) => {
            assert!(valid_callback(cb));
            assert_eq!(parsed.get("callback"), Some(cb));
        }
        Ok(None) => assert_eq!(parsed.get("callback"), None),
        Err(_) => assert!(!valid_callback(parsed.get("callback").unwrap())),
    }
    for candidate in [query, parsed.get("jsonp").unwrap_or("")] {
        if valid_callback(candidate) {
            let bytes = candidate.as_bytes();
            assert!((1..=64).contains(&bytes.len()), "{candidate:?}");
            assert!(!bytes[0].is_ascii_digit() && bytes[0] != b'.');
            assert!(
                bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"_$.".contains(b))
            );
        }
    }
});
