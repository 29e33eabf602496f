use crate::access::{
    Action, Application, AskKind, Denied, Forwarded, Identity, Policy, Principal, Question, Stamp,
    Verdict, Vouched,
};
use crate::control::{Command, ConnectionInfo, ControlError, Report};
use crate::observe::{Event, Kind, Kinds, Observer};
use std::collections::BTreeMap;
use std::sync::Arc;

use halley_proto::{Channel, Message, MessageId, Meta, Pattern, Payload};

use std::time::Duration;

use serde_json::Value;

use std::collections::HashMap;

use serde_json::json;

use crate::presence::{self, Joined, Notice};
use crate::replay::{self, Replaying};
use crate::{Broker, BrokerError, EngineConfig, Hub, MemoryBroker, Replay, Stats, Subscription};

/// Why a publish or subscribe was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("channel {0} is reserved for the protocol")]
    Reserved(Channel),
    /// The data would pass for a presence notice, which only the server sends.
    #[error("data with a top-level \"presence\" key is reserved for the server's presence notices")]
    Forged,
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// This node keeps idempotency keys itself and has as many as allowed in their window.
    #[error(transparent)]
    KeysFull(#[from] crate::idempotency::Full),
    /// The channel's namespace allows this many subscribers, and it has them (on this node).
    #[error("channel {0} has its most subscribers ({1}); try again later")]
    Full(Channel, usize),
    /// The channel's namespace stamps messages with their sender, and the data is not an
    /// object ([`access::Stamp`](crate::access::Stamp)).
    #[error(transparent)]
    NotAnObject(#[from] crate::access::NotAnObject),
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// The result of a publish.
#[derive(Debug, Clone)]
pub struct Published {
    pub message: Arc<Message>,
    /// Subscribers on this node that the message was queued for.
    pub subscribers: usize,
}

/// Where a new subscription starts: from now, after a resume id, and with how many of each
/// channel's newest messages first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Start {
    /// The last id the client saw: it is owed everything after it still in history.
    pub resume: Option<MessageId>,
    /// Each exact channel's newest messages to deliver first (at most [`MAX_RECENT`]), as of
    /// the moment the subscription opens, atomically with the live flow: nothing between the
    /// two is missed or delivered twice. Wildcard patterns get none. Only the channels in
    /// `added` get them when it is not empty; with `resume`, only those (and only messages at
    /// or before the resume id): a client that adds a channel to a connection it resumes
    /// never had that channel's, and had the others'.
    pub recent: u16,
    /// The channels `recent` is for (the client's new ones); empty: all, unless resuming.
    pub added: Vec<Channel>,
}

impl Start {
    /// From now, or after `resume`.
    pub fn resume(resume: Option<MessageId>) -> Start {
        Start {
            resume,
            ..Start::default()
        }
    }
}

/// Most of a channel's newest messages a subscription may ask for first ([`Start::recent`]):
/// a chat room's screenful. The messages are read when the subscription opens and held with it
/// until delivered (16 channels × 100 at most per connection), so this bounds what one client
/// can make the server read and hold at once.
pub const MAX_RECENT: u16 = 100;

/// Reads of one channel's history for [`Start::recent`] before settling for what the last one
/// had: each is longer by what history gained past the subscription's position meanwhile.
const NEWEST_READS: usize = 4;

/// A row of the channel listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// A channel, or a wildcard pattern somebody subscribed to.
    pub name: String,
    pub subscribers: usize,
    pub last_id: Option<MessageId>,
}

pub(crate) struct Shared {
    pub(crate) hub: Hub,
    pub(crate) broker: Arc<dyn Broker>,
    stats: Arc<Stats>,
    /// The application, for namespaces that ask it ([`Engine::set_application`]).
    application: std::sync::OnceLock<Arc<dyn Application>>,
    /// Set once before serving ([`Engine::set_observer`]); nobody is told anything until then.
    observer: std::sync::OnceLock<Observing>,
    /// Which channels this node counts as occupied, for the observer.
    pub(crate) occupancy: crate::occupancy::Occupancy,
    /// Idempotency's window and bound ([`Engine::set_idempotency`]; the defaults until then).
    idempotency: std::sync::OnceLock<crate::idempotency::Idempotency>,
    /// Idempotency keys, when the broker keeps none.
    keys: crate::idempotency::LocalKeys,
}

/// The observer and the kinds of events channels report unless their namespace says.
struct Observing {
    observer: Arc<dyn Observer>,
    defaults: Kinds,
}

/// A member's presence on a channel, held by the connection that declared it.
pub struct PresenceGuard {
    shared: Arc<Shared>,
    channel: Channel,
    member: String,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.shared
            .hub
            .presence()
            .leave(&self.channel, &self.member);
    }
}

/// The facade the transports use. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl Engine {
    /// A single-node engine with the in-memory broker.
    pub fn in_memory(config: EngineConfig) -> Engine {
        let stats = Arc::new(Stats::default());
        let hub = Hub::new(config.queue_capacity, stats.clone());
        let broker = MemoryBroker::spawn(hub.clone(), config);
        Engine::with_broker(hub, broker, stats)
    }

    /// An engine over any broker; the broker must deliver to `hub` (see [`Broker`]).
    pub fn with_broker(hub: Hub, broker: Arc<dyn Broker>, stats: Arc<Stats>) -> Engine {
        Engine {
            shared: Arc::new(Shared {
                hub,
                broker,
                stats,
                application: std::sync::OnceLock::new(),
                observer: std::sync::OnceLock::new(),
                occupancy: crate::occupancy::Occupancy::default(),
                idempotency: std::sync::OnceLock::new(),
                keys: crate::idempotency::LocalKeys::default(),
            }),
        }
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Engine {
        Engine { shared }
    }

    /// Wakes every local subscriber's waiting task without a message (see [`Hub::wake_all`]):
    /// how a server's heartbeat tick and shutdown reach its streams.
    pub fn wake_subscribers(&self) {
        self.shared.hub.wake_all();
    }

    /// The access policy every entry point asks ([`crate::access`]). Set once, before serving;
    /// a second call is refused (the policy a connection was admitted under must not change
    /// under it) and returns the policy given back.
    pub fn set_policy(&self, policy: Policy) -> Result<(), Policy> {
        self.shared.hub.set_policy(policy)
    }

    /// Who is told what happens on channels ([`crate::observe`]), and the kinds of events a
    /// channel reports when its namespace does not say (`webhooks`). Set once, before serving,
    /// like the policy; a second call is refused and returns the observer given back.
    pub fn set_observer(
        &self,
        observer: Arc<dyn Observer>,
        defaults: Kinds,
    ) -> Result<(), Arc<dyn Observer>> {
        self.shared
            .observer
            .set(Observing { observer, defaults })
            .map_err(|o| o.observer)?;
        // The hub tells us when an exact channel gains its first local subscriber or loses
        // its last; nothing on its delivery path changes.
        let weak = Arc::downgrade(&self.shared);
        self.shared
            .hub
            .set_occupancy_hook(Box::new(move |channel, occupied| {
                if let Some(shared) = weak.upgrade() {
                    crate::occupancy::changed(&shared, channel, occupied);
                }
            }));
        Ok(())
    }

    /// The observer, when `channel` reports events of `kind`: its namespace's `webhooks` when
    /// it sets them, else the defaults — but for inboxes, which report only where a namespace
    /// asks.
    pub(crate) fn observer_for(&self, channel: &Channel, kind: Kind) -> Option<&dyn Observer> {
        let observing = self.shared.observer.get()?;
        // Not `policy()`: asking must not fix the policy to the open one before it is set.
        let policy = self.shared.hub.policy_if_set();
        let kinds = match policy.and_then(|p| p.namespace(channel)?.webhooks) {
            Some(kinds) => kinds,
            None if channel.is_private() => Kinds::NONE,
            None => observing.defaults,
        };
        kinds.contains(kind).then_some(&*observing.observer)
    }

    /// Whether `channel` reports events of `kind` to an observer: for a connection that must
    /// decide, when it opens, whether to keep what an event would need (its publisher).
    pub fn observes(&self, channel: &Channel, kind: Kind) -> bool {
        self.observer_for(channel, kind).is_some()
    }

    /// Whether other nodes share the broker (their subscribers and members count too).
    pub(crate) fn clustered(&self) -> bool {
        self.shared.broker.clustered()
    }

    /// Whether another node has a subscriber of exactly `channel`. Best effort: when the broker
    /// cannot answer, none.
    pub(crate) async fn subscribed_elsewhere(&self, channel: &Channel) -> bool {
        match self
            .shared
            .broker
            .remote_subscribers(channel.as_str())
            .await
        {
            Ok(counts) => counts
                .iter()
                .any(|(name, n)| *n > 0 && name == channel.as_str()),
            Err(error) => {
                tracing::debug!(%error, "occupancy: other nodes not asked");
                false
            }
        }
    }

    /// Refuses a subscription to a channel whose namespace's `max_subscribers` it already has,
    /// counting this node's subscribers and other nodes' (as their last presence update, at
    /// most a second old, says). Checked when subscribing, not held as a reservation:
    /// subscribers arriving at the same instant (on one node, or on several within a second)
    /// may pass it together by a few. Wildcard patterns are not counted (they belong to no one
    /// channel).
    pub async fn check_capacity(&self, patterns: &[Pattern]) -> Result<(), EngineError> {
        let capped = self.capped_here(patterns)?;
        if capped.is_empty() {
            return Ok(());
        }
        self.capped_elsewhere(capped).await
    }

    /// This node's part of [`Engine::check_capacity`], without waiting: refuses a channel this
    /// node alone has filled, and returns the capped channels that other nodes' subscribers
    /// may fill (channel, most, this node's count) — none on a single node.
    fn capped_here(
        &self,
        patterns: &[Pattern],
    ) -> Result<Vec<(Channel, usize, usize)>, EngineError> {
        let policy = self.policy();
        let mut capped = Vec::new();
        if policy.is_open() {
            return Ok(capped);
        }
        for channel in patterns.iter().filter_map(Pattern::exact) {
            let Some(max) = policy.namespace(channel).and_then(|ns| ns.max_subscribers) else {
                continue;
            };
            let count = self.shared.hub.subscribers(channel);
            if count >= max {
                return Err(EngineError::Full(channel.clone(), max));
            }
            if self.clustered() {
                capped.push((channel.clone(), max, count));
            }
        }
        Ok(capped)
    }

    /// The other nodes' part of [`Engine::check_capacity`].
    async fn capped_elsewhere(
        &self,
        capped: Vec<(Channel, usize, usize)>,
    ) -> Result<(), EngineError> {
        for (channel, max, here) in capped {
            let elsewhere = self
                .shared
                .broker
                .remote_subscribers(channel.as_str())
                .await?
                .into_iter()
                .find(|(name, _)| name == channel.as_str())
                .map_or(0, |(_, n)| n);
            if here + elsewhere >= max {
                return Err(EngineError::Full(channel, max));
            }
        }
        Ok(())
    }

    /// The access policy: open unless [`Engine::set_policy`] was called.
    pub fn policy(&self) -> &Policy {
        self.shared.hub.policy()
    }

    /// Ends every connection of `user` on this node now, each with a `disconnected` notice
    /// carrying `reason`; returns how many. Not a ban: the client may come back.
    pub fn disconnect_user(&self, user: &str, reason: Option<&str>) -> usize {
        let command = Command::Disconnect {
            user: user.to_owned(),
            reason: reason.map(str::to_owned),
        };
        self.apply_here(&command).map_or(0, |o| o.count)
    }

    /// Takes `pattern` off every subscription of `user` on this node (a connection left with
    /// no channel ends); returns how many subscriptions had it.
    pub fn unsubscribe_user(&self, user: &str, pattern: &Pattern) -> usize {
        let command = Command::Unsubscribe {
            user: user.to_owned(),
            pattern: pattern.clone(),
        };
        self.apply_here(&command).map_or(0, |o| o.count)
    }

    /// Refuses `user`'s tokens issued before `before` (Unix seconds) and ends, on this node,
    /// the connections opened with one of them; returns how many ended.
    pub fn revoke_user(&self, user: &str, before: u64) -> Result<usize, EngineError> {
        let command = Command::Revoke {
            user: user.to_owned(),
            before,
        };
        Ok(self.apply_here(&command)?.count)
    }

    /// `user`'s connections on this node ([`crate::control::MAX_LISTED`] at most).
    pub fn user_connections(&self, user: &str) -> Vec<ConnectionInfo> {
        let command = Command::List {
            user: user.to_owned(),
        };
        self.apply_here(&command)
            .map(|o| o.connections)
            .unwrap_or_default()
    }

    fn apply_here(&self, command: &Command) -> Result<crate::control::Outcome, EngineError> {
        let mut outcome = self.shared.hub.apply(command)?;
        let node = self.shared.broker.node();
        for c in &mut outcome.connections {
            c.node.clone_from(&node);
        }
        outcome.node = node;
        Ok(outcome)
    }

    /// Runs `command` here and on every other node (the control API; [`crate::control`]).
    /// This node's part is done first, whatever happens to the rest: when the broker cannot
    /// reach the other nodes, the report says so ([`Report::unreachable`]) after this node has
    /// done its share. An error is a command this node could not apply (the revocation table
    /// is full).
    pub async fn control(&self, command: Command) -> Result<Report, EngineError> {
        let here = self.apply_here(&command)?;
        let (remote, unreachable) = match self.shared.broker.control(&command).await {
            Ok(remote) => (remote, None),
            Err(e) => (Default::default(), Some(e)),
        };
        Ok(Report {
            here,
            remote,
            unreachable,
        })
    }

    /// How the engine asks the application, for namespaces whose rules are `app`. Set once,
    /// before serving; a second call is refused and returns what was given.
    pub fn set_application(
        &self,
        application: Arc<dyn Application>,
    ) -> Result<(), Arc<dyn Application>> {
        self.shared.application.set(application)
    }

    /// The one decision, asking the application where the policy says it decides: may `who` do
    /// `action`? On yes, returns who the caller is from now on — `who` itself, or, when the
    /// application vouched for a user or presence info, `who` with those.
    ///
    /// Answers are kept per (credentials, action, channel) for the configured time; an
    /// application that cannot be asked is a refusal (`Unavailable`), never a yes.
    pub async fn authorize(
        &self,
        who: &Principal,
        action: Action<'_>,
    ) -> Result<Principal, Denied> {
        match self.policy().judge(who, action)? {
            Verdict::Allow => Ok(who.clone()),
            Verdict::Ask(kind, channel) => Ok(crate::access::vouched(
                who,
                self.ask(who, kind, &channel).await?,
            )),
        }
    }

    /// Asks the application about `who` doing `kind` on `channel` (through its cache); its yes
    /// comes with what it vouches for.
    pub async fn ask(
        &self,
        who: &Identity,
        kind: AskKind,
        channel: &str,
    ) -> Result<Vouched, Denied> {
        let none = Forwarded::default();
        let question = Question {
            kind,
            channel,
            forwarded: who.forwarded.as_deref().unwrap_or(&none),
            user: who.user.as_deref(),
        };
        let policy = self.policy();
        let stats = &self.shared.stats;
        match policy.cached_answer(&question) {
            Some(answer) => {
                Stats::add(&stats.app_cached, 1);
                answer
            }
            None => {
                let Some(application) = self.shared.application.get() else {
                    Stats::add(&stats.app_unavailable, 1);
                    return Err(Denied::Unavailable(
                        "the application that decides this is not configured".into(),
                    ));
                };
                Stats::add(&stats.app_asked, 1);
                let answer = application.authorize(&question).await;
                if matches!(answer, Err(Denied::Unavailable(_))) {
                    Stats::add(&stats.app_unavailable, 1);
                }
                policy.remember_answer(&question, &answer);
                answer
            }
        }
    }

    /// How long a member stays present after its last connection closed (see [`crate::presence`]).
    pub fn set_presence_grace(&self, grace: Duration) {
        self.shared.hub.presence().set_grace(grace);
    }

    /// Declares `member` present on `channel` with `info` for as long as the guard lives (plus
    /// the grace period). A new member is announced with a join notice on the channel; one that
    /// comes back with different info with an update notice.
    pub async fn join(
        &self,
        channel: Channel,
        member: &str,
        info: Value,
    ) -> Result<PresenceGuard, EngineError> {
        if channel.is_meta() || channel.is_service() || channel.is_private() {
            return Err(EngineError::Reserved(channel));
        }
        let (joined, start_sweeper) = self.shared.hub.presence().join(&channel, member, &info);
        if start_sweeper {
            presence::spawn_sweeper(Arc::downgrade(&self.shared));
        }
        let guard = PresenceGuard {
            shared: self.shared.clone(),
            channel: channel.clone(),
            member: member.to_string(),
        };
        let mut new_member = false;
        let notice = match joined {
            Joined::Same => None,
            Joined::Changed(was) => Some(json!({"presence": "update", "info": info, "was": was})),
            Joined::New => {
                // New here; maybe not new to the cluster (a reconnect that landed on this node).
                let key = (channel.clone(), member.to_string());
                let elsewhere = self
                    .remote_members(std::slice::from_ref(&(
                        channel.clone(),
                        key.1.clone(),
                        Value::Null,
                    )))
                    .await;
                match elsewhere.get(&key) {
                    None => {
                        new_member = true;
                        Some(json!({"presence": "join", "info": info}))
                    }
                    Some(was) if *was == info => None,
                    Some(was) => Some(json!({"presence": "update", "info": info, "was": was})),
                }
            }
        };
        if new_member && let Some(observer) = self.observer_for(&channel, Kind::Presence) {
            observer.observe(Event::MemberJoined {
                channel: channel.clone(),
                member: member.to_owned(),
                info,
            });
        }
        if let Some(data) = notice {
            presence::publish_notice(self, Notice::new(&channel, data)).await;
        }
        Ok(guard)
    }

    /// What other nodes know of the given (channel, member) pairs: their info where present.
    /// Best effort: when the broker cannot answer, nobody is known elsewhere.
    pub(crate) async fn remote_members(
        &self,
        wanted: &[(Channel, String, Value)],
    ) -> HashMap<(Channel, String), Value> {
        let mut found = HashMap::new();
        let mut prefixes: Vec<&str> = wanted.iter().map(|(c, _, _)| c.as_str()).collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        for prefix in prefixes {
            match self.shared.broker.remote_members(prefix).await {
                Ok(members) => {
                    for m in members {
                        if wanted
                            .iter()
                            .any(|(c, id, _)| *c == m.channel && *id == m.member)
                        {
                            found.insert((m.channel, m.member), m.info);
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "presence: other nodes not asked"),
            }
        }
        found
    }

    /// The members present on `channel` (their info): this node's in join order, then other
    /// nodes' (cluster-wide when the broker knows other nodes).
    pub async fn members(&self, channel: &Channel) -> Result<Vec<Value>, EngineError> {
        Ok(self
            .presence(channel.as_str())
            .await?
            .into_iter()
            .find(|(c, _)| c == channel)
            .map(|(_, members)| members)
            .unwrap_or_default())
    }

    /// Channels starting with `prefix` that have members anywhere, with their members, by name.
    /// A member connected to several nodes is listed once.
    pub async fn presence(&self, prefix: &str) -> Result<Vec<(Channel, Vec<Value>)>, EngineError> {
        let mut rows = self.shared.hub.presence().channels(prefix);
        let mut remote = self.shared.broker.remote_members(prefix).await?;
        remote.sort_by(|a, b| (&a.channel, &a.member).cmp(&(&b.channel, &b.member)));
        for m in remote {
            let list = rows.entry(m.channel).or_default();
            if !list.iter().any(|(id, _)| *id == m.member) {
                list.push((m.member, m.info));
            }
        }
        Ok(rows
            .into_iter()
            .map(|(c, list)| (c, list.into_iter().map(|(_, info)| info).collect()))
            .collect())
    }

    /// A subscriber with no patterns yet, for protocols that subscribe piecemeal (Bayeux).
    pub fn subscriber(&self) -> Subscription {
        self.shared.hub.subscriber()
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Sets what the embedder adds to this node's stats when they are asked for
    /// ([`crate::control::Command::Stats`], here or from another node): the HTTP layer's open
    /// connections and subscribers by transport. Set once, before serving; a second call is
    /// refused and returns what was given.
    pub fn set_gauges(&self, gauges: crate::stats::Gauges) -> Result<(), crate::stats::Gauges> {
        self.shared.hub.set_gauges(gauges)
    }

    /// This node's stats ([`crate::Hub::node_stats`]).
    pub fn node_stats(&self) -> crate::stats::NodeStats {
        self.shared.hub.node_stats()
    }

    pub fn healthy(&self) -> bool {
        self.shared.broker.healthy()
    }

    /// Publishes `data` to `channel`. Protocol channels (`/meta/**`, `/service/**`) are not
    /// broadcast and are refused here.
    ///
    /// An object with a top-level `presence` key is refused: it would pass for one of the
    /// server's presence notices ([`crate::presence`]).
    ///
    /// The data goes out as it is: a client's publish goes through [`Engine::publish_as`]
    /// instead, which stamps it where its namespace says so.
    pub async fn publish(&self, channel: Channel, data: Payload) -> Result<Published, EngineError> {
        if presence::looks_like_notice(&data) {
            return Err(EngineError::Forged);
        }
        self.publish_trusted(channel, data).await
    }

    /// Publishes `data` from `who`, whom the policy already allowed to: where the channel's
    /// namespace stamps messages (`stamp = true`), `who`'s identity is written into the data's
    /// `"from"` first ([`Policy::stamp`]); the observer is told of it ([`Event::Published`])
    /// when the channel reports publishes and `who` is not the backend (the application knows
    /// what it published itself). Every publish a client makes goes through here, or through
    /// [`Engine::publish_stamped`] for a connection that took its stamp when it opened.
    pub async fn publish_as(
        &self,
        who: &Identity,
        channel: Channel,
        data: Payload,
    ) -> Result<Published, EngineError> {
        self.publish_as_with(who, channel, data, None).await
    }

    /// [`Engine::publish_as`] with what the publisher said besides the data (a type, an
    /// expiry: [`Meta`]).
    pub async fn publish_as_with(
        &self,
        who: &Identity,
        channel: Channel,
        data: Payload,
        meta: Option<Box<Meta>>,
    ) -> Result<Published, EngineError> {
        let stamp = self.policy().stamp(who, &channel);
        let data = match &stamp {
            Some(stamp) => stamp.apply(&channel, &data)?,
            None => data,
        };
        if presence::looks_like_notice(&data) {
            return Err(EngineError::Forged);
        }
        let published = self.publish_with(channel, data, meta).await?;
        if !who.backend {
            self.observe_publish(&published, who.user.clone(), who.info.clone());
        }
        Ok(published)
    }

    /// Tells the observer of a client's publish (user and info: its publisher's), when the
    /// channel reports publishes. For a connection that publishes with
    /// [`Engine::publish_stamped`] and kept what the event needs when it opened.
    pub fn observe_publish(
        &self,
        published: &Published,
        user: Option<Box<str>>,
        info: Option<Box<str>>,
    ) {
        if let Some(observer) = self.observer_for(&published.message.channel, Kind::Publish) {
            observer.observe(Event::Published {
                message: published.message.clone(),
                user,
                info,
            });
        }
    }

    /// Sets how long idempotency keys are kept and how many this node keeps (once, before
    /// serving; later calls are ignored).
    pub fn set_idempotency(&self, limits: crate::idempotency::Idempotency) {
        let _ = self.shared.idempotency.set(limits);
    }

    fn idempotency(&self) -> crate::idempotency::Idempotency {
        self.shared.idempotency.get().copied().unwrap_or_default()
    }

    /// Claims an idempotency key before a publish ([`crate::idempotency`]): on every node
    /// where the broker keeps keys, else on this one.
    pub async fn claim_key(
        &self,
        keyed: &crate::idempotency::Keyed,
    ) -> Result<crate::idempotency::Claim, EngineError> {
        use crate::idempotency::{Claim, KeyClaim};
        let limits = self.idempotency();
        let pending = keyed.pending();
        let claim = match self
            .shared
            .broker
            .claim_key(&keyed.name, &pending, limits.window)
            .await?
        {
            KeyClaim::Unsupported => self.shared.keys.claim(keyed, limits)?,
            claim => claim,
        };
        Ok(match claim {
            KeyClaim::Claimed | KeyClaim::Unsupported => Claim::Fresh,
            KeyClaim::Held(value) => keyed.judge(&value),
        })
    }

    /// Settles a key claimed with [`Engine::claim_key`]: the answer to give a retry, or (`None`:
    /// the publish failed) frees it so that a retry publishes.
    pub async fn settle_key(&self, keyed: &crate::idempotency::Keyed, answer: Option<&str>) {
        let limits = self.idempotency();
        let value = answer.map(|a| keyed.done(a));
        match self
            .shared
            .broker
            .settle_key(&keyed.name, value.as_deref(), limits.window)
            .await
        {
            Ok(true) => {}
            Ok(false) => self.shared.keys.settle(keyed, value, limits),
            // The claim ends with its window; a retry meanwhile is told it is in progress.
            Err(error) => tracing::warn!(%error, "idempotency: settling a key failed"),
        }
    }

    /// [`Engine::publish`] with `stamp` (from [`Policy::stamp`]) written into the data first.
    pub async fn publish_stamped(
        &self,
        channel: Channel,
        data: Payload,
        stamp: Option<&Stamp>,
    ) -> Result<Published, EngineError> {
        let data = match stamp {
            Some(stamp) => stamp.apply(&channel, &data)?,
            None => data,
        };
        self.publish(channel, data).await
    }

    /// [`Engine::publish`] for what the server itself says (presence notices).
    pub(crate) async fn publish_trusted(
        &self,
        channel: Channel,
        data: Payload,
    ) -> Result<Published, EngineError> {
        self.publish_with(channel, data, None).await
    }

    async fn publish_with(
        &self,
        channel: Channel,
        data: Payload,
        meta: Option<Box<Meta>>,
    ) -> Result<Published, EngineError> {
        if channel.is_meta() || channel.is_service() {
            return Err(EngineError::Reserved(channel));
        }
        let (message, subscribers) = self.shared.broker.publish(channel, data, meta).await?;
        Stats::add(&self.shared.stats.published, 1);
        Ok(Published {
            message,
            subscribers,
        })
    }

    /// Subscribes to `pattern`. With `resume`, the subscription first yields every message after
    /// that id still in history, then live messages, without duplicates; [`Subscription::gap`]
    /// says whether history could not cover it all.
    pub async fn subscribe(
        &self,
        pattern: Pattern,
        resume: Option<MessageId>,
    ) -> Result<Subscription, EngineError> {
        self.subscribe_many(vec![pattern], resume).await
    }

    /// Subscribes one queue to several patterns at once (a browser's one connection for all its
    /// channels). Ids are ordered across channels, so one `resume` id serves them all: the
    /// replay is every pattern's history after it, merged in id order, each message once.
    ///
    /// # Panics
    /// If `patterns` is empty.
    pub async fn subscribe_many(
        &self,
        patterns: Vec<Pattern>,
        resume: Option<MessageId>,
    ) -> Result<Subscription, EngineError> {
        self.subscribe_from(patterns, Start::resume(resume)).await
    }

    /// [`Engine::subscribe_many`] from `start`: a resume id, each channel's newest messages
    /// first, or both.
    ///
    /// # Panics
    /// If `patterns` is empty.
    pub async fn subscribe_from(
        &self,
        patterns: Vec<Pattern>,
        start: Start,
    ) -> Result<Subscription, EngineError> {
        let recent = usize::from(start.recent.min(MAX_RECENT));
        assert!(!patterns.is_empty(), "subscribe to at least one pattern");
        for pattern in &patterns {
            if let Some(c) = pattern.exact().filter(|c| c.is_meta() || c.is_service()) {
                return Err(EngineError::Reserved(c.clone()));
            }
        }
        // Other nodes are asked in a future of its own, which only subscriptions to capped
        // channels on a cluster have: a held long-poll is sized by every state of this
        // function, and an inline remote check cost +0.04 KiB per idle long-poller.
        let capped = self.capped_here(&patterns)?;
        if !capped.is_empty() {
            Box::pin(self.capped_elsewhere(capped)).await?;
        }
        // Register before reading history or the cursor, so that nothing published in between
        // is missed; what is seen twice is dropped by id in the subscription.
        let mut sub = self.shared.hub.subscriber();
        for pattern in &patterns {
            sub.add(pattern.clone());
        }
        match start.resume {
            Some(after) => {
                let broker = &self.shared.broker;
                let limit = broker.replay_batch();
                let mut first = replay::batch(&**broker, &patterns, after, limit).await?;
                let gap = first.gap;
                // A resume owes what came after its id; the newest messages asked for besides
                // are those of the channels the client adds to its connection at or before it,
                // oldest first, ahead of the replay. After a gap the id is no position to
                // compare with, and the replay already starts at the oldest history holds.
                if recent > 0 && !gap && !start.added.is_empty() {
                    let mut older = self.newest(&patterns, &start.added, recent, after).await?;
                    if !older.is_empty() {
                        older.append(&mut first.messages);
                        first.messages = older;
                    }
                }
                // After a gap the id handed in is no position to come back to (another epoch,
                // or older than history): the client resumes from just before what is
                // replayed, or from now when nothing is.
                let position = if gap {
                    Stats::add(&self.shared.stats.gaps, 1);
                    match first.messages.first() {
                        Some(m) => Some(MessageId::new(m.id.epoch, m.id.offset.saturating_sub(1))),
                        None => Some(broker.cursor().await?),
                    }
                } else {
                    Some(after)
                };
                let floor = (!gap).then_some(after);
                let replaying = Replaying::new(first, broker, limit);
                sub.set_resume(replaying, floor, gap, position);
            }
            None if recent > 0 => {
                // The position is read after registering and the newest messages after that:
                // what is at or before the position comes from history, what is after it
                // reaches the queue live (ids grow in the order messages reach the hub), and
                // the floor drops the live copies of the former.
                let broker = &self.shared.broker;
                let cursor = broker.cursor().await?;
                let newest = self.newest(&patterns, &start.added, recent, cursor).await?;
                let first = Replay {
                    messages: newest,
                    gap: false,
                    more: None,
                };
                let replaying = Replaying::new(first, broker, broker.replay_batch());
                sub.set_resume(replaying, Some(cursor), false, Some(cursor));
            }
            None => {
                let cursor = self.shared.broker.cursor().await?;
                sub.set_resume(None, None, false, Some(cursor));
            }
        }
        Ok(sub)
    }

    /// The newest `limit` messages of each exact channel among `patterns` (those in `only`,
    /// unless it is empty) at or before `upto` (same epoch), merged oldest first, each once.
    async fn newest(
        &self,
        patterns: &[Pattern],
        only: &[Channel],
        limit: usize,
        upto: MessageId,
    ) -> Result<Vec<Arc<Message>>, EngineError> {
        let mut out: Vec<Arc<Message>> = Vec::new();
        let chosen = patterns
            .iter()
            .filter_map(Pattern::exact)
            .filter(|c| only.is_empty() || only.contains(c));
        for channel in chosen {
            // History may have moved past the position since it was read (on a cluster, what
            // other nodes published and this one has not received yet): what is after it comes
            // live, and the read is made again that much longer, so that the newest `limit` at
            // or before the position are all there. Bounded: a channel published to faster than
            // history can be read gets what the last read had.
            let mut want = limit;
            let mut kept = Vec::new();
            for _ in 0..NEWEST_READS {
                let read = self.shared.broker.recent(channel, want).await?;
                let whole = read.len() < want;
                let read_len = read.len();
                kept = read
                    .into_iter()
                    .filter(|m| m.id.epoch == upto.epoch && m.id <= upto)
                    .collect::<Vec<_>>();
                if kept.len() >= limit || whole {
                    break;
                }
                want = limit + (read_len - kept.len()) * 2;
            }
            let skip = kept.len().saturating_sub(limit);
            out.extend(kept.into_iter().skip(skip).map(|m| Arc::new(m.as_recent())));
        }
        out.sort_unstable_by_key(|m| m.id);
        out.dedup_by_key(|m| m.id);
        Ok(out)
    }

    /// The newest `limit` messages of `channel` still in history, oldest first: context for
    /// somebody who just arrived (a chat room's last lines), who has no id to resume from.
    pub async fn recent(
        &self,
        channel: &Channel,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, EngineError> {
        if channel.is_meta() || channel.is_service() || channel.is_private() {
            return Err(EngineError::Reserved(channel.clone()));
        }
        Ok(self.shared.broker.recent(channel, limit).await?)
    }

    /// Channels with history or subscribers whose name starts with `prefix`, sorted by name.
    /// Subscriber counts are cluster-wide when the broker knows other nodes' counts.
    pub async fn channels(&self, prefix: &str) -> Result<Vec<ChannelInfo>, EngineError> {
        let mut rows: BTreeMap<String, ChannelInfo> = BTreeMap::new();
        // Inboxes are private: listing them would hand out their addresses.
        let private = |name: &str| name.starts_with(halley_proto::inbox::PREFIX);
        for entry in self.shared.broker.channels(prefix).await? {
            let name = entry.channel.to_string();
            if private(&name) {
                continue;
            }
            rows.insert(
                name.clone(),
                ChannelInfo {
                    name,
                    subscribers: 0,
                    last_id: entry.last_id,
                },
            );
        }
        let remote = self.shared.broker.remote_subscribers(prefix).await?;
        let counts = self.shared.hub.counts(prefix).into_iter().chain(remote);
        for (name, n) in counts.filter(|(name, _)| !private(name)) {
            rows.entry(name.clone())
                .or_insert(ChannelInfo {
                    name,
                    subscribers: 0,
                    last_id: None,
                })
                .subscribers += n;
        }
        Ok(rows.into_values().collect())
    }
}
