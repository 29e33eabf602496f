//! Whether one pattern covers another: every channel the inner one can match is matched by the
//! outer one. Namespaces (with a `{sub}` segment) and token claims (plain patterns) are outer
//! patterns; what a caller asks for (a channel, a subscription pattern) is the inner one.
//!
//! Purely structural: `/meta/**` and `/inbox/**` are not special here (`Pattern::matches` keeps
//! wildcards off them; this only says which namespace a name falls in).

use halley_proto::{Channel, ChannelError, Pattern};

/// How a pattern ends: exactly its segments, one more segment (`*`), or one or more (`**`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    None,
    One,
    Many,
}

/// One segment of an outer pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seg<'a> {
    Lit(&'a str),
    /// `{sub}`: the token's subject when one is bound, any one segment when not.
    Sub,
}

/// What the caller asks about: a channel or a pattern. Borrowed, so deciding allocates nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    Channel(&'a Channel),
    Pattern(&'a Pattern),
}

impl Target<'_> {
    /// The literal path (no trailing slash; `""` for `/*` and `/**`) and how it ends.
    fn shape(&self) -> (&str, Tail) {
        match self {
            Target::Channel(c) => (c.as_str(), Tail::None),
            Target::Pattern(p) => pattern_shape(p),
        }
    }
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Channel(c) => write!(f, "{c}"),
            Target::Pattern(p) => write!(f, "{p}"),
        }
    }
}

fn pattern_shape(p: &Pattern) -> (&str, Tail) {
    match p {
        Pattern::Exact(c) => (c.as_str(), Tail::None),
        Pattern::Children(prefix) => (prefix.trim_end_matches('/'), Tail::One),
        Pattern::Descendants(prefix) => (prefix.trim_end_matches('/'), Tail::Many),
    }
}

/// The segments of a path that starts with `/` (or is empty).
fn segments(path: &str) -> std::iter::Skip<std::str::Split<'_, char>> {
    path.split('/').skip(1)
}

/// A namespace's pattern, parsed once: `/user/{sub}/**` is `[Lit(user), Sub]` + `Many`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NsPattern {
    segs: Vec<NsSeg>,
    tail: Tail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NsSeg {
    Lit(Box<str>),
    Sub,
}

/// Why a namespace pattern was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NsPatternError {
    Channel(ChannelError),
    /// `{sub}` inside a segment (`/u-{sub}`), not a whole one.
    MisplacedSub,
}

/// A segment name that cannot occur in a real channel (braces are not allowed there), used to
/// validate a namespace pattern with the channel grammar.
const SUB: &str = "{sub}";

impl NsPattern {
    pub(crate) fn parse(text: &str) -> Result<NsPattern, NsPatternError> {
        // Validate everything but `{sub}` with the channel grammar, a placeholder standing in.
        let mut checked = String::with_capacity(text.len());
        for (i, seg) in text.split('/').enumerate() {
            if i > 0 {
                checked.push('/');
            }
            if seg == SUB {
                checked.push('x');
            } else if seg.contains('{') || seg.contains('}') {
                return Err(if seg.contains(SUB) {
                    NsPatternError::MisplacedSub
                } else {
                    NsPatternError::Channel(ChannelError::BadCharacter)
                });
            } else {
                checked.push_str(seg);
            }
        }
        let (path, tail) = match Pattern::parse(&checked).map_err(NsPatternError::Channel)? {
            Pattern::Exact(_) => (text, Tail::None),
            Pattern::Children(_) => (text.trim_end_matches("/*"), Tail::One),
            Pattern::Descendants(_) => (text.trim_end_matches("/**"), Tail::Many),
        };
        let segs = segments(path)
            .map(|s| {
                if s == SUB {
                    NsSeg::Sub
                } else {
                    NsSeg::Lit(s.into())
                }
            })
            .collect();
        Ok(NsPattern { segs, tail })
    }

    pub(crate) fn has_sub(&self) -> bool {
        self.segs.contains(&NsSeg::Sub)
    }

    /// Whether every channel `inner` can match is in this namespace, `{sub}` bound to `sub`
    /// (or any one segment when `None`).
    pub(crate) fn covers(&self, inner: Target<'_>, sub: Option<&str>) -> bool {
        let outer = self.segs.iter().map(|s| match s {
            NsSeg::Lit(l) => Seg::Lit(l),
            NsSeg::Sub => Seg::Sub,
        });
        let (path, tail) = inner.shape();
        covers_core(outer, self.tail, segments(path), tail, sub)
    }
}

/// Whether the plain pattern `outer` (a token claim) covers `inner`.
pub(crate) fn pattern_covers(outer: &Pattern, inner: Target<'_>) -> bool {
    let (opath, otail) = pattern_shape(outer);
    let (ipath, itail) = inner.shape();
    covers_core(
        segments(opath).map(Seg::Lit),
        otail,
        segments(ipath),
        itail,
        None,
    )
}

/// The one comparison. A pattern is a run of fixed positions (its segments, then one
/// arbitrary position for `*` or `**`) and, for `**`, any number of arbitrary positions more.
/// `outer` covers `inner` when it accepts every length `inner` can have and, at each of its
/// fixed positions, accepts whatever `inner` can have there.
fn covers_core<'o, 'i>(
    outer: impl Iterator<Item = Seg<'o>> + Clone,
    outer_tail: Tail,
    inner: impl Iterator<Item = &'i str> + Clone,
    inner_tail: Tail,
    sub: Option<&str>,
) -> bool {
    let m = outer.clone().count() + usize::from(outer_tail != Tail::None);
    let inner_literals = inner.clone().count();
    let k = inner_literals + usize::from(inner_tail != Tail::None);
    let lengths_ok = match (inner_tail == Tail::Many, outer_tail == Tail::Many) {
        (true, outer_many) => outer_many && m <= k,
        (false, true) => m <= k,
        (false, false) => m == k,
    };
    if !lengths_ok {
        return false;
    }
    // Outer's own tail position (if any) accepts anything; check its literal segments against
    // inner's positions, which are literals and then (past `inner_literals`) arbitrary.
    let mut inner = inner.map(Some).chain(std::iter::repeat(None));
    outer.into_iter().all(|o| {
        let at = inner.next().flatten();
        match (o, sub) {
            (Seg::Lit(l), _) | (Seg::Sub, Some(l)) => at == Some(l),
            (Seg::Sub, None) => true,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    fn check(outer: &str, inner: &str, sub: Option<&str>, expected: bool) {
        let ns = NsPattern::parse(outer).unwrap();
        let inner_pattern = target(inner);
        assert_eq!(
            ns.covers(Target::Pattern(&inner_pattern), sub),
            expected,
            "{outer} covers {inner} (sub {sub:?})"
        );
        if let Ok(channel) = Channel::parse(inner) {
            assert_eq!(
                ns.covers(Target::Channel(&channel), sub),
                expected,
                "{outer} covers channel {inner}"
            );
        }
        if !outer.contains(SUB) {
            assert_eq!(
                pattern_covers(&target(outer), Target::Pattern(&inner_pattern)),
                expected,
                "claim {outer} covers {inner}"
            );
        }
    }

    #[test]
    fn covers_table() {
        let cases: &[(&str, &str, Option<&str>, bool)] = &[
            // exact outer
            ("/a", "/a", None, true),
            ("/a", "/b", None, false),
            ("/a", "/a/b", None, false),
            ("/a", "/a/*", None, false),
            ("/a/b", "/a", None, false),
            // children outer
            ("/a/*", "/a/b", None, true),
            ("/a/*", "/a", None, false),
            ("/a/*", "/a/b/c", None, false),
            ("/a/*", "/a/*", None, true),
            ("/a/*", "/a/**", None, false),
            ("/a/*", "/b/x", None, false),
            ("/*", "/x", None, true),
            ("/*", "/*", None, true),
            ("/*", "/**", None, false),
            // descendants outer
            ("/a/**", "/a/b", None, true),
            ("/a/**", "/a/b/c/d", None, true),
            ("/a/**", "/a", None, false),
            ("/a/**", "/ab/c", None, false),
            ("/a/**", "/a/*", None, true),
            ("/a/**", "/a/**", None, true),
            ("/a/**", "/a/b/**", None, true),
            ("/a/**", "/a/b/*", None, true),
            ("/a/**", "/**", None, false),
            ("/a/**", "/*", None, false),
            ("/a/b/**", "/a/**", None, false),
            ("/**", "/**", None, true),
            ("/**", "/x/y", None, true),
            ("/**", "/*", None, true),
            // {sub}, unbound: any one segment
            ("/user/{sub}/**", "/user/bob/inbox", None, true),
            ("/user/{sub}/**", "/user/bob/**", None, true),
            ("/user/{sub}/**", "/user/bob", None, false),
            ("/user/{sub}/**", "/user/*", None, false),
            ("/user/{sub}/**", "/user/**", None, false),
            ("/user/{sub}", "/user/*", None, true),
            ("/user/{sub}", "/user/bob", None, true),
            // {sub}, bound
            ("/user/{sub}/**", "/user/alice/inbox", Some("alice"), true),
            ("/user/{sub}/**", "/user/alice/**", Some("alice"), true),
            ("/user/{sub}/**", "/user/bob/inbox", Some("alice"), false),
            ("/user/{sub}/**", "/user/*", Some("alice"), false),
            ("/user/{sub}", "/user/*", Some("alice"), false),
            ("/user/{sub}", "/user/alice", Some("alice"), true),
            ("/{sub}/x/*", "/alice/x/y", Some("alice"), true),
            ("/{sub}/x/*", "/alice/y/y", Some("alice"), false),
        ];
        for &(outer, inner, sub, expected) in cases {
            check(outer, inner, sub, expected);
        }
    }

    #[test]
    fn namespace_patterns() {
        let check = |text: &str, expected: Result<(), NsPatternError>| {
            assert_eq!(NsPattern::parse(text).map(|_| ()), expected, "{text}");
        };
        use NsPatternError::*;
        check("/chat/**", Ok(()));
        check("/user/{sub}/**", Ok(()));
        check("/{sub}", Ok(()));
        check("/user/x{sub}/**", Err(MisplacedSub));
        check("/user/{sub}x", Err(MisplacedSub));
        check("/user/{subject}", Err(Channel(ChannelError::BadCharacter)));
        check("chat/**", Err(Channel(ChannelError::NoLeadingSlash)));
        check("/chat/**/x", Err(Channel(ChannelError::MisplacedWildcard)));
        check("", Err(Channel(ChannelError::Empty)));
        assert!(NsPattern::parse("/user/{sub}/**").unwrap().has_sub());
        assert!(!NsPattern::parse("/user/**").unwrap().has_sub());
    }
}
