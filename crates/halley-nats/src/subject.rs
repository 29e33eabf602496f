//! Channel names ⇄ NATS subjects.
//!
//! A Halley channel `/a/b.c` is the subject `<prefix>.a.b%2Ec`: each segment becomes one
//! token, and every byte outside `[A-Za-z0-9_-]` is written `%XX` (upper-case hex). Channel
//! segments never contain `%` (halley-proto allows `A-Z a-z 0-9 - _ . ~ : @ !`), so the escape
//! is reversible and two channels never share a subject; the tokens never contain `.`, `*`,
//! `>` or white space, so no channel is read by NATS as a wildcard. Patterns map onto NATS
//! wildcards with the same meaning: `/a/*` (direct children) is `<prefix>.a.*`, `/a/**` (every
//! descendant, at least one segment deeper) is `<prefix>.a.>`.

use halley_proto::{Channel, Pattern};

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn push_token(out: &mut String, segment: &str) {
    for b in segment.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The subject of `channel` under `prefix` (a subject without a trailing dot, e.g. `halley`).
pub fn channel(prefix: &str, channel: &Channel) -> String {
    literal(prefix, channel.as_str())
}

/// The subject of a channel name's segments (the name starts with `/`).
fn literal(prefix: &str, name: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + name.len() + 8);
    out.push_str(prefix);
    for segment in name.trim_start_matches('/').split('/') {
        out.push('.');
        push_token(&mut out, segment);
    }
    out
}

/// The subject filter selecting exactly the channels `pattern` can match. Protocol channels
/// (`/meta/**`, private ones) are left out by the caller with [`Pattern::matches`].
pub fn pattern(prefix: &str, pattern: &Pattern) -> String {
    match pattern {
        Pattern::Exact(c) => channel(prefix, c),
        Pattern::Children(p) | Pattern::Descendants(p) => {
            let parent = p.trim_end_matches('/');
            let mut out = if parent.is_empty() {
                prefix.to_owned()
            } else {
                literal(prefix, parent)
            };
            out.push_str(if matches!(pattern, Pattern::Children(_)) {
                ".*"
            } else {
                ".>"
            });
            out
        }
    }
}

/// The subject filter covering every channel whose name starts with `prefix_text` (a listing
/// prefix, not necessarily ending at a segment boundary): the subjects under its last complete
/// segment. The caller still checks `starts_with`.
pub fn listing(prefix: &str, prefix_text: &str) -> String {
    match prefix_text.rfind('/') {
        Some(end) if end > 0 => format!("{}.>", literal(prefix, &prefix_text[..end])),
        _ => format!("{prefix}.>"),
    }
}

/// The channel a subject names, when it is one of ours and well-formed.
pub fn parse(prefix: &str, subject: &str) -> Option<Channel> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let mut name = String::with_capacity(rest.len() + 1);
    for token in rest.split('.') {
        name.push('/');
        let bytes = token.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' => {
                    let hex = token.get(i + 1..i + 3)?;
                    let b = u8::from_str_radix(hex, 16).ok()?;
                    // Only what `push_token` escapes, in its spelling: one subject, one name.
                    if plain(b) || hex.bytes().any(|h| h.is_ascii_lowercase()) {
                        return None;
                    }
                    name.push(b as char);
                    i += 3;
                }
                b if plain(b) => {
                    name.push(b as char);
                    i += 1;
                }
                _ => return None,
            }
        }
    }
    Channel::parse(&name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, subject: &str) {
        let c = Channel::parse(name).unwrap();
        assert_eq!(channel("halley", &c), subject, "{name}");
        assert_eq!(parse("halley", subject), Some(c), "{subject}");
    }

    #[test]
    fn channels_round_trip() {
        check("/a", "halley.a");
        check("/a/b/c", "halley.a.b.c");
        check("/a.b/c", "halley.a%2Eb.c");
        check("/x~y:z@w!v", "halley.x%7Ey%3Az%40w%21v");
        check("/Up_and-down/9", "halley.Up_and-down.9");
    }

    #[test]
    fn no_two_channels_share_a_subject() {
        // Every name of up to three segments drawn from characters that need escaping and
        // ones that do not: the subjects are all different and all parse back.
        let pieces = ["a", ".", "%2E", "a.b", "~", "-", "_", "A", "a:b", "!@"];
        let mut seen = std::collections::HashMap::new();
        for x in pieces {
            for y in pieces {
                for name in [
                    format!("/{x}"),
                    format!("/{x}/{y}"),
                    format!("/{x}/{y}/{x}"),
                ] {
                    let Ok(c) = Channel::parse(&name) else {
                        continue;
                    };
                    let s = channel("halley", &c);
                    assert!(
                        !s[7..].contains(['*', '>', ' ']) && !s.contains(".."),
                        "{s}"
                    );
                    assert_eq!(parse("halley", &s).as_ref(), Some(&c));
                    if let Some(other) = seen.insert(s.clone(), name.clone()) {
                        assert_eq!(other, name, "{name} and {other} share {s}");
                    }
                }
            }
        }
    }

    #[test]
    fn foreign_subjects_are_not_channels() {
        for subject in [
            "other.a",
            "halley",
            "halley.",
            "halley.a..b",
            "halley.a%2e",
            "halley.a%41",
            "halley.a%2",
            "halley.a b",
            "halleyx.a",
        ] {
            assert_eq!(parse("halley", subject), None, "{subject}");
        }
    }

    #[test]
    fn patterns_map_to_wildcards() {
        let check = |p: &str, expected: &str| {
            assert_eq!(pattern("halley", &Pattern::parse(p).unwrap()), expected);
        };
        check("/a/b", "halley.a.b");
        check("/a/*", "halley.a.*");
        check("/a/**", "halley.a.>");
        check("/a.b/**", "halley.a%2Eb.>");
        check("/*", "halley.*");
        check("/**", "halley.>");
    }

    #[test]
    fn listing_prefixes_cover_their_channels() {
        let check = |p: &str, expected: &str| assert_eq!(listing("halley", p), expected);
        check("", "halley.>");
        check("/", "halley.>");
        check("/chat", "halley.>");
        check("/chat/", "halley.chat.>");
        check("/chat/ro", "halley.chat.>");
        check("/a.b/c/", "halley.a%2Eb.c.>");
    }
}
