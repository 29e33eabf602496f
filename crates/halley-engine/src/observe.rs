//! Telling someone outside the engine what happens on channels: members joining and leaving,
//! channels getting their first subscriber and losing their last, clients publishing.
//!
//! An [`Observer`] is set once, before serving ([`crate::Engine::set_observer`]), with the
//! [`Kinds`] of events every channel reports by default; a namespace's `webhooks` overrides them
//! for its channels ([`crate::access::NamespaceConfig::webhooks`]). Inboxes report nothing
//! unless a namespace that covers them asks: every halley.js client has one, and their comings
//! and goings are noise to an application.
//!
//! The engine calls [`Observer::observe`] synchronously where the event happens, so it must
//! only hand the event on (enqueue it), never wait. Nothing on the delivery path calls it: a
//! message reaching its subscribers costs the same with an observer as without.
//!
//! What is promised, per kind:
//! - **presence**: [`Event::MemberJoined`] and [`Event::MemberLeft`] exactly when the engine
//!   publishes its join and leave notices on the channel (`crate::presence`): a member that
//!   reconnects within the grace period, or whose reconnect lands on another node, neither
//!   leaves nor joins.
//! - **occupancy**: [`Event::Occupied`] when an exact channel gets its first subscriber on this
//!   node and no other node has one (wildcard subscriptions do not occupy a channel);
//!   [`Event::Vacated`] once it has had no subscriber here for the presence grace period (so that
//!   long-poll gaps and reconnects do not flap) and no other node has one then. See
//!   `crate::occupancy` for what several nodes can and cannot promise.
//! - **publish**: [`Event::Published`] after a publish by anyone but the backend key succeeds
//!   (the application knows what it published itself); never for the server's own presence
//!   notices.

use std::sync::Arc;

use halley_proto::{Channel, Message};
use serde_json::Value;

/// One kind of event a channel can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Members joining and leaving ([`Event::MemberJoined`], [`Event::MemberLeft`]).
    Presence,
    /// A channel's first subscriber arriving, its last one leaving.
    Occupancy,
    /// Messages published by clients.
    Publish,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Presence, Kind::Occupancy, Kind::Publish];

    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Presence => "presence",
            Kind::Occupancy => "occupancy",
            Kind::Publish => "publish",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of [`Kind`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Kinds(u8);

/// A name that is not a [`Kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event kind {0:?} (presence, occupancy, publish)")]
pub struct UnknownKind(pub String);

impl Kinds {
    pub const NONE: Kinds = Kinds(0);

    /// What every channel reports unless configured otherwise: presence and occupancy.
    /// Publishes are reported only where asked, being as many as the messages.
    pub const DEFAULT: Kinds = Kinds(1 << Kind::Presence as u8 | 1 << Kind::Occupancy as u8);

    /// The kinds named (`"presence"`, `"occupancy"`, `"publish"`).
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Kinds, UnknownKind> {
        let mut kinds = Kinds::NONE;
        for name in names {
            let name = name.as_ref();
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| UnknownKind(name.to_owned()))?;
            kinds = kinds.with(kind);
        }
        Ok(kinds)
    }

    #[must_use]
    pub fn with(self, kind: Kind) -> Kinds {
        Kinds(self.0 | kind.bit())
    }

    pub fn contains(self, kind: Kind) -> bool {
        self.0 & kind.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The names, in [`Kind::ALL`] order.
    pub fn names(self) -> Vec<&'static str> {
        Kind::ALL
            .into_iter()
            .filter(|k| self.contains(*k))
            .map(Kind::name)
            .collect()
    }
}

/// Something that happened on a channel.
#[derive(Debug, Clone)]
pub enum Event {
    /// A member appeared (the engine's `join` notice).
    MemberJoined {
        channel: Channel,
        /// The id its client chose (never shown to other clients; the application may use it
        /// to pair a join with its leave).
        member: String,
        /// Its info: the token's `info` when its token has one, else what the client declared.
        info: Value,
    },
    /// A member left (the engine's `leave` notice).
    MemberLeft {
        channel: Channel,
        member: String,
        info: Value,
    },
    /// An exact channel got its first subscriber.
    Occupied { channel: Channel },
    /// An exact channel has had no subscriber for the grace period.
    Vacated { channel: Channel },
    /// A client published a message.
    Published {
        message: Arc<Message>,
        /// The publisher's token `sub`, when it presented a token that has one.
        user: Option<Box<str>>,
        /// The publisher's token `info` (compact JSON), when it has one.
        info: Option<Box<str>>,
    },
}

impl Event {
    pub fn channel(&self) -> &Channel {
        match self {
            Event::MemberJoined { channel, .. }
            | Event::MemberLeft { channel, .. }
            | Event::Occupied { channel }
            | Event::Vacated { channel } => channel,
            Event::Published { message, .. } => &message.channel,
        }
    }
}

/// Told what happens (see the module documentation for what, and when).
pub trait Observer: Send + Sync + 'static {
    /// Takes one event. Called synchronously where the event happens (a subscribe, the
    /// presence sweeper, a publish): it must not block or wait — enqueue, or drop and count.
    fn observe(&self, event: Event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print() {
        let check = |names: &[&str], expected: Result<Vec<&str>, &str>| {
            let got = Kinds::parse(names).map(Kinds::names).map_err(|e| e.0);
            assert_eq!(got, expected.map_err(str::to_owned), "{names:?}");
        };
        check(&[], Ok(vec![]));
        check(&["publish", "presence"], Ok(vec!["presence", "publish"]));
        check(&["occupancy", "occupancy"], Ok(vec!["occupancy"]));
        check(&["presence", "joins"], Err("joins"));
        assert_eq!(Kinds::DEFAULT.names(), ["presence", "occupancy"]);
    }
}
