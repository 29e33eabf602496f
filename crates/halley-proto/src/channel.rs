//! Channel names and subscription patterns (DESIGN.md §2).

use std::fmt;

/// Longest channel name accepted, in bytes. Names are keys in maps, in Redis and in every
/// message on the wire; 255 bytes is Bayeux practice and far more than any real hierarchy needs.
pub const CHANNEL_MAX_LEN: usize = 255;

/// Why a channel name or pattern was refused. Cheap to build: this is a hot-path parse error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name must start with '/'")]
    NoLeadingSlash,
    #[error("channel name is longer than 255 bytes")]
    TooLong,
    #[error("channel name has an empty segment")]
    EmptySegment,
    #[error("channel name has a character outside A-Z a-z 0-9 - _ . ~ : @ !")]
    BadCharacter,
    #[error("wildcards (* and **) are only allowed as the last segment of a subscription")]
    MisplacedWildcard,
    #[error("cannot publish to a wildcard channel")]
    Wildcard,
}

fn segment_char_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':' | b'@' | b'!')
}

/// Validates the shape shared by channels and patterns; returns whether the last segment is a
/// wildcard (`Some(false)` for `*`, `Some(true)` for `**`).
fn check(name: &str) -> Result<Option<bool>, ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if !name.starts_with('/') {
        return Err(ChannelError::NoLeadingSlash);
    }
    if name.len() > CHANNEL_MAX_LEN {
        return Err(ChannelError::TooLong);
    }
    let mut segments = name[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "" => return Err(ChannelError::EmptySegment),
            "*" | "**" if last => return Ok(Some(seg == "**")),
            "*" | "**" => return Err(ChannelError::MisplacedWildcard),
            _ if seg.bytes().all(segment_char_ok) => {}
            _ if seg.contains('*') => return Err(ChannelError::MisplacedWildcard),
            _ => return Err(ChannelError::BadCharacter),
        }
    }
    Ok(None)
}

/// A concrete channel name: something a message can be published to.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(Box<str>);

impl Channel {
    pub fn parse(name: &str) -> Result<Channel, ChannelError> {
        match check(name)? {
            Some(_) => Err(ChannelError::Wildcard),
            None => Ok(Channel(name.into())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `/meta/**`: the Bayeux protocol's own channels, never routed like data.
    pub fn is_meta(&self) -> bool {
        self.0.starts_with("/meta/")
    }

    /// `/service/**`: request/response with the server, never broadcast.
    pub fn is_service(&self) -> bool {
        self.0.starts_with("/service/")
    }

    /// `/inbox/**`: a client's private address ([`crate::inbox`]). Only an exact subscription
    /// (checked against the secret by the server) receives it; no wildcard matches it.
    pub fn is_private(&self) -> bool {
        self.0.starts_with(crate::inbox::PREFIX)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Channel({})", self.0)
    }
}

/// What a subscriber asks for: an exact channel, `/a/*` (direct children of `/a`) or `/a/**`
/// (every descendant of `/a`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    Exact(Channel),
    /// The prefix includes its trailing slash: `/a/*` is stored as `/a/`.
    Children(Box<str>),
    Descendants(Box<str>),
}

impl Pattern {
    pub fn parse(name: &str) -> Result<Pattern, ChannelError> {
        match check(name)? {
            None => Ok(Pattern::Exact(Channel(name.into()))),
            Some(deep) => {
                let prefix = name.trim_end_matches('*');
                Ok(if deep {
                    Pattern::Descendants(prefix.into())
                } else {
                    Pattern::Children(prefix.into())
                })
            }
        }
    }

    pub fn is_wildcard(&self) -> bool {
        !matches!(self, Pattern::Exact(_))
    }

    /// The exact channel, when this pattern names one.
    pub fn exact(&self) -> Option<&Channel> {
        match self {
            Pattern::Exact(c) => Some(c),
            _ => None,
        }
    }

    /// Whether `channel` is matched. `/meta/**` channels are matched only exactly: a pattern
    /// `/meta/*` or `/**` never selects protocol traffic (the Faye CVE-2020-11020 family).
    pub fn matches(&self, channel: &Channel) -> bool {
        let name = channel.as_str();
        match self {
            Pattern::Exact(c) => c == channel,
            _ if channel.is_meta() || channel.is_private() => false,
            Pattern::Children(prefix) => name
                .strip_prefix(&**prefix)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/')),
            Pattern::Descendants(prefix) => name
                .strip_prefix(&**prefix)
                .is_some_and(|rest| !rest.is_empty()),
        }
    }

    /// The literal part before any wildcard; `/` for `/**`.
    pub fn prefix(&self) -> &str {
        match self {
            Pattern::Exact(c) => c.as_str(),
            Pattern::Children(p) | Pattern::Descendants(p) => p,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(c) => f.write_str(c.as_str()),
            Pattern::Children(p) => write!(f, "{p}*"),
            Pattern::Descendants(p) => write!(f, "{p}**"),
        }
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_channel(name: &str, expected: Result<(), ChannelError>) {
        assert_eq!(Channel::parse(name).map(|_| ()), expected, "{name:?}");
    }

    #[test]
    fn channel_names() {
        use ChannelError::*;
        check_channel("/a", Ok(()));
        check_channel("/chat/room-1_x.y~z:w@v!", Ok(()));
        check_channel("", Err(Empty));
        check_channel("a/b", Err(NoLeadingSlash));
        check_channel("/", Err(EmptySegment));
        check_channel("/a//b", Err(EmptySegment));
        check_channel("/a/", Err(EmptySegment));
        check_channel("/a b", Err(BadCharacter));
        check_channel("/é", Err(BadCharacter));
        check_channel("/a/*", Err(Wildcard));
        check_channel("/a/**", Err(Wildcard));
        check_channel("/*/b", Err(MisplacedWildcard));
        check_channel("/a*", Err(MisplacedWildcard));
        check_channel(&format!("/{}", "a".repeat(254)), Ok(()));
        check_channel(&format!("/{}", "a".repeat(255)), Err(TooLong));
    }

    fn check_match(pattern: &str, channel: &str, expected: bool) {
        let p = Pattern::parse(pattern).unwrap();
        let c = Channel::parse(channel).unwrap();
        assert_eq!(p.matches(&c), expected, "{pattern} ~ {channel}");
    }

    #[test]
    fn matching() {
        check_match("/a", "/a", true);
        check_match("/a", "/a/b", false);
        check_match("/a/*", "/a/b", true);
        check_match("/a/*", "/a/b/c", false);
        check_match("/a/*", "/a", false);
        check_match("/a/*", "/ab", false);
        check_match("/a/**", "/a/b/c", true);
        check_match("/a/**", "/a/b", true);
        check_match("/a/**", "/a", false);
        check_match("/a/**", "/ab/c", false);
        check_match("/**", "/x/y", true);
        check_match("/*", "/x", true);
        // Meta channels are never reached by wildcards, only exactly.
        check_match("/**", "/meta/connect", false);
        check_match("/meta/*", "/meta/subscribe", false);
        check_match("/meta/subscribe", "/meta/subscribe", true);
    }

    #[test]
    fn pattern_round_trip() {
        for p in ["/a", "/a/*", "/a/b/**", "/**"] {
            assert_eq!(Pattern::parse(p).unwrap().to_string(), p);
        }
        assert_eq!(Pattern::parse("/a/**").unwrap().prefix(), "/a/");
    }
}
