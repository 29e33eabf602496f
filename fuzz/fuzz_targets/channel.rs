//! Channel names and subscription patterns (halley-proto channel.rs) and inbox secrets.
//!
//! Input: `name` or `pattern\nchannel`. Invariants: what parses prints back to the same text,
//! a channel is its own exact pattern, a channel and a pattern refuse a name for the same
//! reason (but a wildcard), and `Pattern::matches` agrees with a segment-wise reading of
//! DESIGN.md §2.
#![no_main]

use halley_proto::{CHANNEL_MAX_LEN, Channel, ChannelError, Pattern, inbox};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, second) = text.split_once('\n').unwrap_or((text, text));
    let pattern = check_name(first);
    let _ = check_name(second);
    if let (Some(pattern), Ok(channel)) = (pattern, Channel::parse(second)) {
        assert_eq!(
            pattern.matches(&channel),
            reference_match(first, second),
            "{first:?} ~ {second:?}"
        );
    }
    if let Some(inbox) = inbox::channel_for(first) {
        assert!(inbox.is_private());
        assert_eq!(Channel::parse(inbox.as_str()).as_ref(), Ok(&inbox));
        assert!(!Pattern::parse("/**").unwrap().matches(&inbox));
    }
});

/// Parses `name` both ways and checks what the two agree on; the pattern when it is one.
fn check_name(name: &str) -> Option<Pattern> {
    let channel = Channel::parse(name);
    let pattern = Pattern::parse(name);
    match (&channel, &pattern) {
        (Ok(c), Ok(p)) => {
            assert_eq!(c.as_str(), name);
            assert_eq!(c.to_string(), name);
            assert_eq!(p.exact(), Some(c));
            assert!(p.matches(c), "a channel is its own exact pattern");
            assert_eq!(c.is_meta(), name.starts_with("/meta/"));
            assert_eq!(c.is_service(), name.starts_with("/service/"));
            assert_eq!(c.is_private(), name.starts_with(inbox::PREFIX));
        }
        (Err(ChannelError::Wildcard), Ok(p)) => {
            assert!(p.is_wildcard(), "{name:?}");
            assert!(name.ends_with("/*") || name.ends_with("/**"));
        }
        (Err(ce), Err(pe)) => assert_eq!(ce, pe, "{name:?}"),
        _ => panic!("{name:?}: channel {channel:?} but pattern {pattern:?}"),
    }
    let p = pattern.ok()?;
    assert!(name.len() <= CHANNEL_MAX_LEN);
    assert_eq!(p.to_string(), name);
    assert_eq!(Pattern::parse(&p.to_string()).as_ref(), Ok(&p));
    assert!(name.starts_with(p.prefix()));
    assert!(
        name[1..]
            .split('/')
            .all(|s| !s.is_empty() && (s == "*" || s == "**" || !s.contains('*')))
    );
    Some(p)
}

/// Pattern matching read from DESIGN.md §2, segment by segment.
fn reference_match(pattern: &str, channel: &str) -> bool {
    let p: Vec<&str> = pattern[1..].split('/').collect();
    let c: Vec<&str> = channel[1..].split('/').collect();
    let (last, literal) = p.split_last().unwrap();
    let wildcard = matches!(*last, "*" | "**");
    if !wildcard {
        return p == c;
    }
    // Protocol and private channels are only ever matched exactly.
    if channel.starts_with("/meta/") || channel.starts_with("/inbox/") {
        return false;
    }
    let under = c.len() > literal.len() && c[..literal.len()] == *literal;
    match *last {
        "*" => under && c.len() == literal.len() + 1,
        _ => under,
    }
}
