//! The application's control over its users' connections on this node: disconnect every
//! connection of a user, take a user off one channel or pattern, revoke a user's tokens and end
//! what they have open, list what they have open. [`Command`] says which; [`Hub::apply`] does
//! it here, and returns an [`Outcome`]. [`crate::Engine::control`] does it here *and* on every
//! other node, through [`crate::Broker::control`].
//!
//! **The user index.** A subscription admitted with a token that has a subject (`sub`) is
//! indexed under that user ([`crate::Subscription::admitted_as`]), with what a listing shows
//! (transport, since when) and what a revocation needs (the token's issue time); it leaves the
//! index when dropped, or when the control API ends it. Anonymous subscribers and the backend
//! key are never in it and cost nothing; a token holder costs one small entry here (measured
//! in bench/README.md). The index is bounded by the open subscriptions themselves. Which
//! channels a subscription holds is not copied into it: a listing reads the registry.
//!
//! **Ending at once.** Control never waits for a heartbeat. The hub leaves a notice for the
//! subscriber (the reason of a disconnect, the pattern it lost) and wakes its task through its
//! signal; the subscription's next [`crate::Event`] is [`Event::Closed`] or
//! [`Event::Unsubscribed`], before anything queued. A closed subscriber's queue is freed and
//! deliveries cut it off, as for a lagging one.
//!
//! **Stats.** [`Command::Stats`] concerns no user: each node answers with its
//! [`crate::NodeStats`] (the live dashboard's view of every node).
//!
//! Limits: [`MAX_REASON`] (bytes of a disconnect reason), [`MAX_LISTED`] (connections listed
//! per user per node), [`MAX_LISTED_CHANNELS`] (channels listed per connection).
//!
//! [`Event::Closed`]: crate::Event::Closed
//! [`Event::Unsubscribed`]: crate::Event::Unsubscribed

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use halley_proto::Pattern;
use serde::{Deserialize, Serialize};

use crate::access::{AccessError, Denied, Lapse};
use crate::hub::{Hub, Subscriber, remove_from};
use crate::{Event, Subscription};

pub mod wire;

/// Longest reason a disconnect may carry, in bytes. It is shown to the user ("banned for
/// spam") in every transport's notice; 256 bytes is a sentence, and keeps a notice small.
pub const MAX_REASON: usize = 256;

/// Most connections of one user listed per node. A person has a few (tabs, devices); a
/// listing of more would only be a large answer. Beyond it the listing is cut (its count
/// still says how many); disconnecting and revoking still reach every connection.
pub const MAX_LISTED: usize = 100;

/// Most channels listed per connection. A `/sub` connection has at most 16; a Bayeux session
/// may have more, and its listing is cut here, to keep an answer (which may travel between
/// nodes) small.
pub const MAX_LISTED_CHANNELS: usize = 64;

/// Why the application ended a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closing {
    /// Disconnected, with the application's reason if it gave one. Not a ban: the client may
    /// connect again (and is admitted again if its credential still holds).
    Disconnected(Option<Arc<str>>),
    /// The credential was revoked: reconnecting with it is refused. Shown as the same notice
    /// as a token that lapsed (`expired`, "token revoked"), so that a client fetches a new
    /// token, which the application may refuse to give.
    Revoked(Denied),
}

/// One thing the control API does to a user's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// End every connection of `user` now, with `reason` in the notice.
    Disconnect {
        user: String,
        reason: Option<String>,
    },
    /// Take `pattern` (compared as written: `/chat/**` is not `/chat/a`) off every
    /// subscription of `user`; a connection left with no channel ends.
    Unsubscribe { user: String, pattern: Pattern },
    /// Refuse `user`'s tokens issued before `before` (Unix seconds) from now on, and end the
    /// connections opened with one of them now.
    Revoke { user: String, before: u64 },
    /// List `user`'s connections.
    List { user: String },
    /// Say how this node is doing ([`Outcome::stats`]): the live dashboard's view of every
    /// node. Concerns no user.
    Stats,
}

impl Command {
    pub fn user(&self) -> &str {
        match self {
            Command::Disconnect { user, .. }
            | Command::Unsubscribe { user, .. }
            | Command::Revoke { user, .. }
            | Command::List { user } => user,
            Command::Stats => "",
        }
    }
}

/// One connection of a user, as listings show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The node that holds it ([`crate::Broker::node`]); absent on a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The subscription's number on its node.
    pub id: u64,
    /// How the client is connected (`sse`, `websocket`, `longpoll`, `bayeux`…).
    pub transport: String,
    /// The channels and patterns it is subscribed to, sorted.
    pub channels: Vec<String>,
    /// When it was admitted, Unix seconds.
    pub since: u64,
}

/// What one node did for a [`Command`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The node ([`crate::Broker::node`]); absent on a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Connections disconnected, unsubscribed, or ended by the revocation; for a listing,
    /// how many the user has (also beyond [`MAX_LISTED`]).
    pub count: usize,
    /// A listing's connections, at most [`MAX_LISTED`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<ConnectionInfo>,
    /// The node's stats, answering [`Command::Stats`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<crate::stats::NodeStats>,
    /// Why the node could not apply the command (its revocation table is full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a command could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// What the other nodes did ([`crate::Broker::control`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remote {
    /// Other nodes the command reached.
    pub nodes: usize,
    /// Their answers, as they came in (fewer than `nodes` when some did not answer in time).
    pub answers: Vec<Outcome>,
}

/// A command's outcome here and on the other nodes ([`crate::Engine::control`]).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub here: Outcome,
    pub remote: Remote,
    /// Why the other nodes could not be reached (Redis is away), if they could not.
    pub unreachable: Option<crate::BrokerError>,
}

impl Report {
    /// The count over every node that answered.
    pub fn count(&self) -> usize {
        self.here.count + self.remote.answers.iter().map(|o| o.count).sum::<usize>()
    }

    /// Every node's listed connections, this node's first.
    pub fn connections(&self) -> impl Iterator<Item = &ConnectionInfo> {
        std::iter::once(&self.here)
            .chain(&self.remote.answers)
            .flat_map(|o| &o.connections)
    }
}

/// The hub's user index and the notices waiting for subscribers (see the module docs).
#[derive(Default)]
pub(crate) struct Users {
    by_user: HashMap<Arc<str>, Conns>,
    /// The transports' names, so that each entry keeps a byte for its own (see [`MAX_NAMES`]).
    transports: Vec<&'static str>,
    /// The user of each subscription that keeps no copy of it ([`Subscription::reachable_as`]),
    /// so that it can leave the index when dropped.
    by_id: HashMap<u64, Arc<str>>,
    pending: HashMap<u64, Pending>,
}

/// One indexed subscription, 32 bytes (every token holder pays for one): times are Unix
/// seconds in a `u32` (until 2106), the transport a byte.
struct Conn {
    id: u64,
    sub: Arc<Subscriber>,
    since: u32,
    /// The token's `iat`, 0 when it had none: for the policy, a token without `iat` is
    /// revoked by any revocation, and one issued at 0 by any that is later — the same.
    issued_at: u32,
    /// Index into [`Users::transports`].
    transport: u8,
}

/// Most distinct transport names kept; they are the HTTP layer's few constants. A name beyond
/// would be listed as `"other"` (nothing breaks).
const MAX_NAMES: usize = 255;

/// A user's subscriptions. Most users have one, kept in the index's own entry rather than in
/// an allocation of its own (~0.02 KiB less per token holder, halley-bench hold).
enum Conns {
    One(Conn),
    Many(Vec<Conn>),
}

impl Conns {
    fn as_slice(&self) -> &[Conn] {
        match self {
            Conns::One(c) => std::slice::from_ref(c),
            Conns::Many(v) => v,
        }
    }

    fn push(&mut self, conn: Conn) {
        match self {
            Conns::Many(v) => v.push(conn),
            Conns::One(_) => {
                let Conns::One(first) = std::mem::replace(self, Conns::Many(Vec::new())) else {
                    unreachable!("matched One above");
                };
                *self = Conns::Many(vec![first, conn]);
            }
        }
    }

    /// Keeps the subscriptions for which `keep` is true; true when none is left.
    fn retain(&mut self, mut keep: impl FnMut(&Conn) -> bool) -> bool {
        match self {
            Conns::One(c) => !keep(c),
            Conns::Many(v) => {
                v.retain(|c| keep(c));
                v.is_empty()
            }
        }
    }
}

impl Users {
    fn transport_code(&mut self, name: &'static str) -> u8 {
        if let Some(i) = self.transports.iter().position(|t| *t == name) {
            return i as u8;
        }
        if self.transports.len() < MAX_NAMES {
            self.transports.push(name);
            return (self.transports.len() - 1) as u8;
        }
        u8::MAX
    }

    fn transport_name(&self, code: u8) -> &'static str {
        self.transports
            .get(usize::from(code))
            .copied()
            .unwrap_or("other")
    }
}

/// Notices for one subscriber, taken by its next `try_next`.
#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    /// What each token holder's entry costs: one `Conn` in the index's own bucket.
    #[test]
    fn a_users_entry_is_small() {
        assert_eq!(std::mem::size_of::<super::Conn>(), 32);
        assert_eq!(std::mem::size_of::<super::Conns>(), 32);
    }
}

#[derive(Default)]
struct Pending {
    /// Patterns taken off, oldest first. At most the subscription's patterns: each removal
    /// takes one out of the registry, where it must have been.
    unsubscribed: VecDeque<Pattern>,
    closed: Option<Closing>,
}

fn seconds(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

impl Hub {
    fn users(&self) -> MutexGuard<'_, Users> {
        self.shared.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts subscription `id` in `user`'s entry of the index (and in `by_id` when it keeps no
    /// copy of the name); returns the index's copy of the name, for the subscription to share.
    pub(crate) fn index(
        &self,
        user: &str,
        id: u64,
        sub: &Arc<Subscriber>,
        transport: &'static str,
        issued_at: Option<u64>,
        by_id: bool,
    ) -> Arc<str> {
        let since = seconds(self.policy().now());
        let mut users = self.users();
        let conn = Conn {
            id,
            sub: sub.clone(),
            since,
            issued_at: issued_at.map_or(0, seconds),
            transport: users.transport_code(transport),
        };
        let name = match users.by_user.get_key_value(user) {
            Some((name, _)) => name.clone(),
            None => Arc::from(user),
        };
        match users.by_user.get_mut(user) {
            Some(conns) => conns.push(conn),
            None => {
                users.by_user.insert(name.clone(), Conns::One(conn));
            }
        }
        if by_id {
            users.by_id.insert(id, name.clone());
        }
        name
    }

    /// Takes subscription `id` out of the index (`user`: the name it kept, if it kept one),
    /// with any notice left for it.
    pub(crate) fn forget(&self, user: Option<&str>, id: u64) {
        let mut users = self.users();
        let held = users.by_id.remove(&id);
        if let Some(user) = user.or(held.as_deref())
            && let Some(conns) = users.by_user.get_mut(user)
            && conns.retain(|c| c.id != id)
        {
            users.by_user.remove(user);
        }
        users.pending.remove(&id);
    }

    /// Why subscription `id` was closed (a disconnect without a reason if the notice is gone).
    pub(crate) fn closing(&self, id: u64) -> Closing {
        self.users()
            .pending
            .get(&id)
            .and_then(|p| p.closed.clone())
            .unwrap_or(Closing::Disconnected(None))
    }

    /// Applies `command` to this node's subscribers. Brokers call it for commands from other
    /// nodes; a revocation reaches the policy, so a broker waits for [`Hub::settled_policy`]
    /// before it applies one.
    pub fn apply(&self, command: &Command) -> Result<Outcome, ControlError> {
        let count = match command {
            Command::Disconnect { user, reason } => {
                let reason: Option<Arc<str>> = reason.as_deref().map(Arc::from);
                self.close_user(user, |_| Some(Closing::Disconnected(reason.clone())))
            }
            Command::Unsubscribe { user, pattern } => self.unsubscribe_user(user, pattern),
            Command::Revoke { user, before } => {
                let policy = self.policy();
                policy.revoke(user, *before)?;
                let shared: Arc<str> = Arc::from(user.as_str());
                self.close_user(user, |conn| {
                    let lapse = Lapse {
                        expires: None,
                        issued_at: (conn.issued_at != 0).then_some(u64::from(conn.issued_at)),
                        user: Some(shared.clone()),
                    };
                    policy.check_lapse(&lapse).err().map(Closing::Revoked)
                })
            }
            Command::Stats => {
                return Ok(Outcome {
                    count: 1,
                    stats: Some(self.node_stats()),
                    ..Outcome::default()
                });
            }
            Command::List { user } => {
                let (count, connections) = self.connections(user);
                return Ok(Outcome {
                    count,
                    connections,
                    ..Outcome::default()
                });
            }
        };
        Ok(Outcome {
            count,
            ..Outcome::default()
        })
    }

    /// Ends each of `user`'s subscriptions for which `decide` gives a reason; returns how many.
    fn close_user(&self, user: &str, decide: impl Fn(&Conn) -> Option<Closing>) -> usize {
        let mut users = self.users();
        let Some(conns) = users.by_user.get_mut(user) else {
            return 0;
        };
        let mut ended = Vec::new();
        let none_left = conns.retain(|conn| match decide(conn) {
            Some(closing) => {
                ended.push((conn.id, conn.sub.clone(), closing));
                false
            }
            None => true,
        });
        if none_left {
            users.by_user.remove(user);
        }
        for (id, _, closing) in &ended {
            users.pending.entry(*id).or_default().closed = Some(closing.clone());
        }
        drop(users);
        // The reason is in place before the subscriber can see that it is closed.
        for (_, sub, _) in &ended {
            let mut queue = sub.state.lock().unwrap_or_else(|e| e.into_inner());
            queue.closed = true;
            queue.drop_all();
            drop(queue);
            sub.signal.notice.store(true, Ordering::Release);
            sub.signal.notify();
        }
        ended.len()
    }

    /// Takes `pattern` off each of `user`'s subscriptions that has it; returns how many.
    fn unsubscribe_user(&self, user: &str, pattern: &Pattern) -> usize {
        let mut users = self.users();
        let Some(conns) = users.by_user.get(user) else {
            return 0;
        };
        let mut removed: Vec<(u64, Arc<Subscriber>)> = Vec::new();
        // Whether taking them off left the channel with no subscriber here (for the observer).
        let mut emptied = false;
        {
            let mut registry = self
                .shared
                .registry
                .write()
                .unwrap_or_else(|e| e.into_inner());
            for conn in conns.as_slice() {
                let was = match pattern {
                    Pattern::Exact(c) => remove_from(&mut registry.exact, c, conn.id),
                    p => remove_from(&mut registry.wildcard, p, conn.id),
                };
                if let Some(last) = was {
                    emptied |= last;
                    removed.push((conn.id, conn.sub.clone()));
                }
            }
        }
        for (id, _) in &removed {
            let pending = users.pending.entry(*id).or_default();
            pending.unsubscribed.push_back(pattern.clone());
        }
        drop(users);
        if emptied && let Pattern::Exact(channel) = pattern {
            self.occupancy_changed(channel, false);
        }
        for (_, sub) in &removed {
            sub.signal.notice.store(true, Ordering::Release);
            sub.signal.notify();
        }
        removed.len()
    }

    /// How many subscriptions `user` has here, and the first [`MAX_LISTED`] of them.
    fn connections(&self, user: &str) -> (usize, Vec<ConnectionInfo>) {
        let users = self.users();
        let Some(conns) = users.by_user.get(user) else {
            return (0, Vec::new());
        };
        let count = conns.as_slice().len();
        let mut listed: Vec<ConnectionInfo> = conns
            .as_slice()
            .iter()
            .take(MAX_LISTED)
            .map(|c| ConnectionInfo {
                node: None,
                id: c.id,
                transport: users.transport_name(c.transport).to_owned(),
                channels: Vec::new(),
                since: u64::from(c.since),
            })
            .collect();
        drop(users);
        // One pass over the registry for all of them: the index keeps no copy of patterns.
        let registry = self
            .shared
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut note = |subscribers: &crate::hub::Subscribers, name: &dyn Fn() -> String| {
            for info in &mut listed {
                if info.channels.len() < MAX_LISTED_CHANNELS && subscribers.contains_key(&info.id) {
                    info.channels.push(name());
                }
            }
        };
        for (channel, entry) in &registry.exact {
            note(&entry.subscribers, &|| channel.to_string());
        }
        for (pattern, entry) in &registry.wildcard {
            note(&entry.subscribers, &|| pattern.to_string());
        }
        drop(registry);
        for info in &mut listed {
            info.channels.sort_unstable();
        }
        listed.sort_unstable_by_key(|c| c.id);
        (count, listed)
    }
}

impl Subscription {
    /// The next notice the control API left for this subscription: patterns taken off first
    /// (each also leaves [`Subscription::patterns`]), then the end.
    pub(crate) fn take_notice(&mut self) -> Option<Event> {
        self.sub.signal.notice.store(false, Ordering::Release);
        let mut users = self.hub.users();
        let pending = users.pending.get_mut(&self.id)?;
        if let Some(pattern) = pending.unsubscribed.pop_front() {
            let more = !pending.unsubscribed.is_empty() || pending.closed.is_some();
            if !more {
                users.pending.remove(&self.id);
            }
            drop(users);
            if more {
                self.sub.signal.notice.store(true, Ordering::Release);
            }
            // The hub took it out of the registry already.
            self.patterns.retain(|p| *p != pattern);
            return Some(Event::Unsubscribed(pattern));
        }
        // The reason stays: a closed subscription says why again if asked again.
        pending.closed.clone().map(Event::Closed)
    }

    /// Applies the patterns the control API took off, without reporting them (a Bayeux
    /// session about to subscribe again).
    pub(crate) fn settle(&mut self) {
        let mut users = self.hub.users();
        let Some(pending) = users.pending.get_mut(&self.id) else {
            return;
        };
        let gone: Vec<Pattern> = pending.unsubscribed.drain(..).collect();
        if pending.closed.is_none() {
            users.pending.remove(&self.id);
            self.sub.signal.notice.store(false, Ordering::Release);
        }
        drop(users);
        self.patterns.retain(|p| !gone.contains(p));
    }
}
