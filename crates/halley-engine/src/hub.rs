//! The local subscriber registry and the per-subscriber bounded queues.
//!
//! Invariant: no lock here is held across an `.await`, and locks are taken in one order only:
//! the user index (`control.rs`), then the registry, then a subscriber's queue (deliver takes
//! registry, then subscriber; nothing goes the other way), so there is no lock-order cycle. The
//! occupancy hook (an observer's channel occupied / vacated) is called from register and
//! unregister only, with no hub lock held; delivering never calls it.

use crate::access::{Denied, Identity, Lapse, Policy};
use crate::control::{Closing, Users};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use halley_proto::{Channel, Message, MessageId, Pattern};

use crate::Stats;
use crate::direct::Writes;
use crate::replay::{Refill, Replaying};

pub(crate) type Subscribers = HashMap<u64, Arc<Subscriber>>;

#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) exact: HashMap<Channel, Entry>,
    pub(crate) wildcard: HashMap<Pattern, Entry>,
}

/// One exact channel's or pattern's local subscribers, and how many messages were delivered to
/// it: the live dashboard's traffic ([`Hub::traffic`]). Two counters per channel, none per
/// subscriber; an entry lives while it has subscribers here, so a channel nobody here
/// subscribes to costs nothing (and is counted by the nodes where somebody does).
#[derive(Default)]
pub(crate) struct Entry {
    pub(crate) subscribers: Subscribers,
    /// Messages offered to this entry's subscribers since it was created (once per message,
    /// however many subscribers).
    messages: AtomicU64,
    /// `messages` as of the node's last traffic report.
    reported: AtomicU64,
}

pub(crate) struct HubShared {
    pub(crate) registry: RwLock<Registry>,
    /// Who is on which channel on this node (kept here so that a broker can share it).
    presence: crate::presence::Presence,
    next_id: AtomicU64,
    queue_capacity: usize,
    stats: Arc<Stats>,
    /// Told when an exact channel gets its first local subscriber or loses its last (see
    /// [`Hub::set_occupancy_hook`]). Called on register and unregister only, never on deliver.
    occupancy: std::sync::OnceLock<OccupancyHook>,
    /// Token holders' subscriptions by user, and the control API's notices waiting for their
    /// subscribers (`control.rs`). Anonymous subscribers are not in it.
    pub(crate) users: Mutex<Users>,
    /// The access policy, set once before serving (see [`Hub::set_policy`]): the hub judges
    /// lapsed credentials and applies revocations that other nodes send.
    policy: OnceLock<Policy>,
    policy_set: tokio::sync::Notify,
    /// What the embedder adds to this node's stats (see [`crate::Engine::set_gauges`]).
    gauges: OnceLock<crate::stats::Gauges>,
    /// When the node last reported its traffic ([`Hub::traffic`]); `None` before the first.
    traffic_at: Mutex<Option<std::time::Instant>>,
}

/// Called with a channel and `true` when it got its first local subscriber, `false` when it
/// lost its last. Called with no hub lock held; it must not block.
pub(crate) type OccupancyHook = Box<dyn Fn(&Channel, bool) + Send + Sync>;

/// This process's subscribers. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    pub(crate) shared: Arc<HubShared>,
}

pub(crate) struct Subscriber {
    pub(crate) state: Mutex<Queue>,
    pub(crate) signal: Signal,
}

/// Wakes the task waiting on a subscriber. A subscriber has one consumer at a time, so one
/// waker and a flag do what `tokio::sync::Notify` did without its waiter list and lock
/// (callgrind: ~1,000 of the ~3,300 instructions per delivery went to `Notify`). A signal
/// sent while nobody waits is kept, so a wake-up between a check and the wait is not lost.
/// When two tasks wait (a Bayeux connect replaced by the next one), the later one is woken.
#[derive(Default)]
pub(crate) struct Signal {
    pending: AtomicBool,
    /// The control API left a notice for this subscriber (`control.rs`). Here rather than in
    /// the queue, so that every `try_next` checks it without a lock; it fits in the padding
    /// after `pending`, so no subscriber is larger for it.
    pub(crate) notice: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    pub(crate) fn notify(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(crate) fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.pending.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.pending.swap(false, Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| self.poll_wait(cx)).await;
    }
}

#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) messages: VecDeque<Arc<Message>>,
    pub(crate) lagged: bool,
    /// Ended by the control API (disconnected, revoked): like `lagged`, the queue is freed and
    /// deliveries cut it off, but the reason is the application's (`control.rs`).
    pub(crate) closed: bool,
    /// The last message queued: a subscriber matched by several of its patterns is offered
    /// the same message once per pattern, one right after the other, and takes it once.
    last: Option<MessageId>,
    /// Who may write to the subscriber's socket now: its transport, or the delivering loop
    /// (`direct.rs`). In padding that was already there.
    pub(crate) writer: crate::direct::Writer,
    /// How many bytes of the first queued message the delivering loop wrote before the socket
    /// was full (`direct.rs`): the transport writes the rest. In padding too.
    pub(crate) written: u32,
    /// The transport's socket, when it lets the delivering loop write to it (`direct.rs`).
    pub(crate) sink: Option<Arc<dyn crate::direct::Sink>>,
}

impl Queue {
    /// Frees what is queued (the subscriber was cut off or closed) and returns how many
    /// messages that was. A message the delivering loop began to write stays: its transport
    /// finishes it before its last words, so that they do not land in the middle of a frame.
    pub(crate) fn drop_all(&mut self) -> usize {
        let begun = (self.written > 0)
            .then(|| self.messages.pop_front())
            .flatten();
        let dropped = self.messages.len();
        self.messages = VecDeque::new();
        if let Some(message) = begun {
            self.messages.push_back(message);
        }
        dropped
    }
}

/// What offering a message to a subscriber did.
enum Pushed {
    Queued,
    /// The subscriber's transport is idle and lets the delivering loop write for it: the
    /// caller writes the message to this sink and then [`crate::direct::release`]s it.
    Direct(Arc<dyn crate::direct::Sink>),
    /// Already queued through another of the subscriber's patterns.
    Duplicate,
    CutOff,
}

/// What a subscription yields next.
#[derive(Debug)]
pub enum Event {
    Message(Arc<Message>),
    /// The subscriber fell more than the queue capacity behind and was cut off. The transport
    /// should end the response; the client resumes from its last id.
    Lagged,
    /// The application ended this subscription through the control API ([`crate::control`]):
    /// the transport says why in its own form and ends the response at once.
    Closed(Closing),
    /// The application took this pattern off the subscription (the control API); it is no
    /// longer in [`Subscription::patterns`]. The transport tells the client, and ends the
    /// response if no pattern is left.
    Unsubscribed(Pattern),
}

impl Hub {
    pub fn new(queue_capacity: usize, stats: Arc<Stats>) -> Hub {
        Hub {
            shared: Arc::new(HubShared {
                registry: RwLock::default(),
                presence: crate::presence::Presence::new(),
                next_id: AtomicU64::new(1),
                queue_capacity: queue_capacity.max(1),
                stats,
                occupancy: std::sync::OnceLock::new(),
                users: Mutex::default(),
                policy: OnceLock::new(),
                policy_set: tokio::sync::Notify::new(),
                gauges: OnceLock::new(),
                traffic_at: Mutex::new(None),
            }),
        }
    }

    /// Sets the occupancy hook, once; a second is ignored.
    pub(crate) fn set_occupancy_hook(&self, hook: OccupancyHook) {
        let _ = self.shared.occupancy.set(hook);
    }

    pub(crate) fn occupancy_changed(&self, channel: &Channel, occupied: bool) {
        if let Some(hook) = self.shared.occupancy.get() {
            hook(channel, occupied);
        }
    }

    /// Sets what the embedder adds to this node's stats, once; a second is refused and given
    /// back (see [`crate::Engine::set_gauges`]).
    pub fn set_gauges(&self, gauges: crate::stats::Gauges) -> Result<(), crate::stats::Gauges> {
        self.shared.gauges.set(gauges)
    }

    /// This node's stats: the engine's counters, its busiest channels since it was last asked
    /// ([`Hub::traffic`]) and the embedder's gauges.
    pub fn node_stats(&self) -> crate::stats::NodeStats {
        let mut stats = self.shared.stats.node();
        (stats.traffic, stats.traffic_ms) = self.traffic(std::time::Instant::now());
        if let Some(gauges) = self.shared.gauges.get() {
            gauges(&mut stats);
        }
        stats
    }

    /// The exact channels and patterns that were delivered the most messages here since the
    /// previous call (at most [`crate::stats::MAX_TRAFFIC_ROWS`], busiest first, none with
    /// nothing), and how long ago that call was in ms (0 for the first: nothing to compare
    /// with). Each call starts a new window, whoever asks: two dashboards sampling one node
    /// each get rates over shorter windows, still right. Inboxes are private and never listed.
    pub fn traffic(&self, now: std::time::Instant) -> (Vec<(String, u64)>, u64) {
        // Held for the whole pass so that two askers' windows do not overlap; taken before the
        // registry's lock, and nothing else takes it.
        let mut at = self
            .shared
            .traffic_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let window = at.map_or(0, |then| {
            now.saturating_duration_since(then).as_millis() as u64
        });
        *at = Some(now);
        let registry = self
            .shared
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let delta = |entry: &Entry| {
            let messages = entry.messages.load(Ordering::Relaxed);
            messages.saturating_sub(entry.reported.swap(messages, Ordering::Relaxed))
        };
        let private = |name: &str| name.starts_with(halley_proto::inbox::PREFIX);
        let mut busy: Vec<(u64, &dyn std::fmt::Display)> = Vec::new();
        for (channel, entry) in &registry.exact {
            let n = delta(entry);
            if n > 0 && !private(channel.as_str()) {
                busy.push((n, channel));
            }
        }
        for (pattern, entry) in &registry.wildcard {
            let n = delta(entry);
            if n > 0 {
                busy.push((n, pattern));
            }
        }
        let keep = crate::stats::MAX_TRAFFIC_ROWS;
        if busy.len() > keep {
            busy.select_nth_unstable_by(keep, |a, b| b.0.cmp(&a.0));
            busy.truncate(keep);
        }
        let mut rows: Vec<(String, u64)> = busy
            .into_iter()
            .map(|(n, name)| (name.to_string(), n))
            .collect();
        drop(registry);
        rows.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if window == 0 {
            rows.clear();
        }
        (rows, window)
    }

    /// Sets the access policy (see [`crate::Engine::set_policy`]); refused (and given back)
    /// when one is set already.
    pub fn set_policy(&self, policy: Policy) -> Result<(), Policy> {
        let set = self.shared.policy.set(policy);
        self.shared.policy_set.notify_waiters();
        set
    }

    /// The access policy if it was set (or settled as open), without settling it.
    pub(crate) fn policy_if_set(&self) -> Option<&Policy> {
        self.shared.policy.get()
    }

    /// The access policy: open unless [`Hub::set_policy`] was called first.
    pub fn policy(&self) -> &Policy {
        if let Some(policy) = self.shared.policy.get() {
            return policy;
        }
        let policy = self.shared.policy.get_or_init(Policy::open);
        self.shared.policy_set.notify_waiters();
        policy
    }

    /// Waits until the policy is settled (set, or taken as open by a first use), without
    /// settling it: a broker that starts before the server has set its policy waits here
    /// before it applies other nodes' revocations, which must reach the real policy.
    pub async fn settled_policy(&self) -> &Policy {
        loop {
            let notified = self.shared.policy_set.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(policy) = self.shared.policy.get() {
                return policy;
            }
            notified.await;
        }
    }

    pub(crate) fn presence(&self) -> &crate::presence::Presence {
        &self.shared.presence
    }

    /// Members on this node (connected, or within their grace period): for a broker to share
    /// with other nodes.
    pub fn local_members(&self) -> Vec<crate::Member> {
        self.shared
            .presence
            .all()
            .into_iter()
            .map(|(channel, member, info)| crate::Member {
                channel,
                member,
                info,
            })
            .collect()
    }

    /// Hands `message` to every local subscriber whose pattern matches; returns how many.
    /// Brokers call this in id order (see [`crate::Broker`]). Subscribers whose transport is
    /// idle get it written to their socket before this returns ([`Hub::deliver_deferred`]).
    pub fn deliver(&self, message: &Arc<Message>) -> usize {
        let (count, writes) = self.deliver_deferred(message);
        drop(writes);
        count
    }

    /// [`Hub::deliver`], leaving the writes to idle subscribers' sockets to the returned
    /// [`Writes`], which does them when dropped: a broker that must call this under its lock
    /// (so that the next message cannot overtake this one) drops the writes after releasing
    /// it. Each subscriber written to stays the delivering loop's until its write is done, and
    /// anything delivered to it meanwhile is queued behind, so the order holds whoever writes.
    pub fn deliver_deferred(&self, message: &Arc<Message>) -> (usize, Writes) {
        let registry = self
            .shared
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut count = 0;
        let mut cut_off = Vec::new();
        let mut direct = Vec::new();
        let exact_key = Pattern::Exact(message.channel.clone());
        let exact = registry
            .exact
            .get(&message.channel)
            .map(|s| (&exact_key, s));
        let wild = registry
            .wildcard
            .iter()
            .filter(|(p, _)| p.matches(&message.channel));
        for (pattern, entry) in exact.into_iter().chain(wild) {
            entry.messages.fetch_add(1, Ordering::Relaxed);
            for (id, sub) in &entry.subscribers {
                match self.push(sub, message) {
                    Pushed::Queued => count += 1,
                    Pushed::Direct(sink) => {
                        count += 1;
                        direct.push((sub.clone(), sink));
                    }
                    Pushed::Duplicate => {}
                    Pushed::CutOff => cut_off.push((pattern.clone(), *id)),
                }
            }
        }
        drop(registry);
        Stats::add(&self.shared.stats.delivered, count as u64);
        if !cut_off.is_empty() {
            // Lagging subscribers leave the registry now, so they cost no further work; their
            // Subscription handle still exists and reports Lagged.
            for (pattern, id) in cut_off {
                self.unregister(&pattern, id);
            }
        }
        let writes = Writes::new(self.shared.stats.clone(), message.clone(), direct);
        (count, writes)
    }

    /// Tells the local subscribers of `channel` (every local subscriber with `None`) that
    /// messages were lost before what comes next: a broker that finds a hole in what it is
    /// about to deliver (history evicted a message before this node read it) calls this
    /// first. Each is cut off as a full queue cuts it ([`Event::Lagged`]): its client resumes
    /// from the last id it got, which is before the hole, and the resume reports the gap.
    /// Returns how many were cut off.
    pub fn lost(&self, channel: Option<&Channel>) -> usize {
        let registry = self
            .shared
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut chosen = Vec::new();
        for (pattern, entry) in registry
            .exact
            .iter()
            .map(|(c, e)| (Pattern::Exact(c.clone()), e))
            .chain(registry.wildcard.iter().map(|(p, e)| (p.clone(), e)))
        {
            if channel.is_some_and(|c| !pattern.matches(c)) {
                continue;
            }
            for (id, sub) in &entry.subscribers {
                chosen.push((pattern.clone(), *id, sub.clone()));
            }
        }
        drop(registry);
        for (pattern, id, sub) in &chosen {
            self.cut_off(sub);
            self.unregister(pattern, *id);
        }
        chosen.len()
    }

    /// Wakes every subscriber's waiting task without giving it a message: the server's
    /// heartbeat and shutdown reach streams this way, so that a stream waits on one thing
    /// (its subscriber's signal) rather than registering with three per message.
    pub fn wake_all(&self) {
        let registry = self
            .shared
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner());
        for entry in registry.exact.values().chain(registry.wildcard.values()) {
            for sub in entry.subscribers.values() {
                sub.signal.notify();
            }
        }
    }

    /// Cuts a subscriber off as a full queue does: its queue is freed and its next event is
    /// [`Event::Lagged`] (a replay that lost the history it was reading).
    pub(crate) fn cut_off(&self, sub: &Subscriber) {
        let mut queue = sub.state.lock().unwrap_or_else(|e| e.into_inner());
        if queue.lagged || queue.closed {
            return;
        }
        let dropped = queue.drop_all() as u64;
        queue.lagged = true;
        drop(queue);
        Stats::add(&self.shared.stats.dropped, dropped);
        Stats::add(&self.shared.stats.lagged, 1);
        sub.signal.notify();
    }

    /// Queues one message, or takes the subscriber's socket to write it there when its
    /// transport is idle and lets the delivering loop write (`direct.rs`).
    fn push(&self, sub: &Subscriber, message: &Arc<Message>) -> Pushed {
        let mut queue = sub.state.lock().unwrap_or_else(|e| e.into_inner());
        if queue.lagged || queue.closed {
            return Pushed::CutOff;
        }
        // Offered once per matching pattern, one right after the other; and, for a
        // subscription that resumed, the live copy of what its replay gave (`arm` sets `last`
        // to what the transport handed out, since a delivery that writes itself does not go
        // through `try_next`'s check).
        if let Some(last) = queue.last
            && last.epoch == message.id.epoch
            && message.id <= last
        {
            return Pushed::Duplicate;
        }
        if queue.writer == crate::direct::Writer::Armed
            && queue.messages.is_empty()
            && let Some(sink) = queue.sink.clone()
        {
            queue.writer = crate::direct::Writer::Direct;
            queue.last = Some(message.id);
            return Pushed::Direct(sink);
        }
        if queue.messages.len() >= self.shared.queue_capacity {
            let dropped = queue.drop_all() as u64 + 1;
            queue.lagged = true;
            drop(queue);
            Stats::add(&self.shared.stats.dropped, dropped);
            Stats::add(&self.shared.stats.lagged, 1);
            sub.signal.notify();
            return Pushed::CutOff;
        }
        queue.messages.push_back(message.clone());
        queue.last = Some(message.id);
        // While the delivering loop writes for this subscriber its transport may not, so it
        // is not woken: the loop wakes it when it is done, seeing this queued.
        let wake = !queue.writer.delivering();
        drop(queue);
        if wake {
            sub.signal.notify();
        }
        Pushed::Queued
    }

    /// A subscriber with no patterns yet (a Bayeux session adds and removes them).
    pub(crate) fn subscriber(&self) -> Subscription {
        Stats::add(&self.shared.stats.subscriptions, 1);
        Subscription {
            hub: self.clone(),
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            patterns: Vec::new(),
            sub: Arc::new(Subscriber {
                state: Mutex::default(),
                signal: Signal::default(),
            }),
            replay: None,
            floor: None,
            gap: false,
            indexed: false,
            live: false,
            position: None,
            extras: None,
        }
    }

    fn insert(&self, pattern: &Pattern, id: u64, sub: &Arc<Subscriber>) {
        let mut registry = self
            .shared
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let first = match pattern {
            Pattern::Exact(c) => {
                let entry = registry.exact.entry(c.clone()).or_default();
                entry.subscribers.insert(id, sub.clone());
                // Emptied maps are removed (`remove_from`), so one entry is a first subscriber.
                entry.subscribers.len() == 1
            }
            _ => {
                let entry = registry.wildcard.entry(pattern.clone()).or_default();
                entry.subscribers.insert(id, sub.clone());
                false
            }
        };
        drop(registry);
        if first && let Pattern::Exact(c) = pattern {
            self.occupancy_changed(c, true);
        }
    }

    pub(crate) fn unregister(&self, pattern: &Pattern, id: u64) {
        let mut registry = self
            .shared
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match pattern {
            Pattern::Exact(c) => {
                let emptied = remove_from(&mut registry.exact, c, id) == Some(true);
                drop(registry);
                if emptied {
                    self.occupancy_changed(c, false);
                }
            }
            p => {
                remove_from(&mut registry.wildcard, p, id);
            }
        }
    }

    /// Subscriber counts per subscribed name (exact channels and wildcard patterns).
    pub fn counts(&self, prefix: &str) -> Vec<(String, usize)> {
        let registry = self
            .shared
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let exact = registry
            .exact
            .iter()
            .map(|(c, e)| (c.to_string(), e.subscribers.len()));
        let wild = registry
            .wildcard
            .iter()
            .map(|(p, e)| (p.to_string(), e.subscribers.len()));
        exact
            .chain(wild)
            .filter(|(name, n)| *n > 0 && name.starts_with(prefix))
            .collect()
    }

    /// Local subscribers of exactly this channel.
    pub fn subscribers(&self, channel: &Channel) -> usize {
        let registry = self
            .shared
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner());
        registry
            .exact
            .get(channel)
            .map_or(0, |e| e.subscribers.len())
    }
}

/// Removes subscriber `id` from `key`'s subscribers: `None` if it was not there, else whether
/// that emptied `key` (its last subscriber left; the entry is removed).
pub(crate) fn remove_from<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Entry>,
    key: &K,
    id: u64,
) -> Option<bool> {
    let subscribers = &mut map.get_mut(key)?.subscribers;
    subscribers.remove(&id)?;
    let emptied = subscribers.is_empty();
    if emptied {
        map.remove(key);
    }
    Some(emptied)
}

/// One subscriber's handle: one queue, fed by one or more patterns. Dropping it unsubscribes.
pub struct Subscription {
    pub(crate) hub: Hub,
    pub(crate) id: u64,
    pub(crate) patterns: Vec<Pattern>,
    pub(crate) sub: Arc<Subscriber>,
    /// History owed on resume, delivered before anything queued: a batch at a time
    /// ([`crate::replay`]), boxed since most subscriptions never have one.
    replay: Option<Box<Replaying>>,
    /// Highest id already handed out. Queued messages at or below it are duplicates: of the
    /// replay (published between registering and reading history), or of a message matched by
    /// two of this subscriber's patterns. Ids reach a hub in increasing order, so one
    /// comparison finds them.
    floor: Option<MessageId>,
    gap: bool,
    /// In the hub's user index (the control API): it leaves it when dropped. A `bool` beside
    /// `gap` fits in padding that was already there.
    indexed: bool,
    /// The last message handed out came from the live queue, not history (a replay or a
    /// channel's newest): what a publish→write latency counts. In the same padding.
    live: bool,
    position: Option<MessageId>,
    /// What only some subscriptions carry (presence, a credential that can lapse), in one box:
    /// a subscription is moved into several futures of an idle subscriber, so each word here
    /// is paid several times — a bare `Vec` measured +0.16 KiB per idle WebSocket subscriber,
    /// one more boxed field +0.10 (halley-bench hold, 10,000).
    extras: Option<Box<Extras>>,
}

#[derive(Default)]
struct Extras {
    /// Presence declared by the connection this subscription serves; it ends with it.
    kept: Vec<crate::PresenceGuard>,
    /// What can make the credential this subscription was admitted with lapse (a token's
    /// expiry, its subject); the hub's policy judges it. Not the identity itself: its claims
    /// are needed only at admission (keeping it cost +0.35 KiB per idle SSE subscriber with a
    /// token, halley-bench hold). A subject also puts the subscription in the hub's user
    /// index, which it leaves when dropped.
    admitted: Option<Lapse>,
    /// What the transport serving this subscription keeps for its whole life but needs only
    /// now and then ([`Subscription::attach`]).
    attached: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// Channels whose newest messages were put first ([`Subscription::put_first`]): their
    /// live copies at or below the newest of them are dropped as they come out of the queue.
    skip: Vec<(Channel, MessageId)>,
}

impl Subscription {
    /// Records who this subscription was admitted for, so that [`Subscription::lapsed`] can
    /// end it when their token expires or is revoked, and — for a token with a subject — so
    /// that the control API can reach it ([`crate::control`]); `transport` is how the client
    /// is connected, for listings (`"sse"`, `"bayeux"`…). Credentials that cannot lapse (none,
    /// the backend key) are not kept and cost nothing.
    pub fn admitted_as(&mut self, who: &Identity, transport: &'static str) {
        let Some(mut lapse) = Lapse::from_identity(who) else {
            // A user the application vouched for (auth-url) has nothing that lapses, but the
            // control API must reach them all the same.
            self.reachable_as(who, transport);
            return;
        };
        if who.user.is_some() {
            // The index's copy of the name, shared: one per user, not one per connection.
            lapse.user = self.index(who, transport, false);
        }
        self.extras.get_or_insert_default().admitted = Some(lapse);
    }

    /// Puts this subscription in the user index only, so that the control API reaches it,
    /// without keeping what could make its credential lapse: for what checks the credential
    /// again by itself — a long-poll (each poll is admitted anew) and a Bayeux session (each
    /// connect checks the session's principal). Costs less than [`Subscription::admitted_as`].
    pub fn reachable_as(&mut self, who: &Identity, transport: &'static str) {
        // A user is a token's subject or whom the application vouched for: either way the
        // control API reaches them.
        if who.user.is_some() {
            self.index(who, transport, true);
        }
    }

    fn index(&mut self, who: &Identity, transport: &'static str, by_id: bool) -> Option<Arc<str>> {
        let user = who.user.as_deref()?;
        self.indexed = true;
        let shared = self
            .hub
            .index(user, self.id, &self.sub, transport, who.issued_at, by_id);
        Some(shared)
    }

    /// The subject this subscription keeps for its lapse, if any.
    fn user(&self) -> Option<&Arc<str>> {
        self.extras.as_deref()?.admitted.as_ref()?.user.as_ref()
    }

    /// Whether the credential this subscription was admitted with no longer holds (expired,
    /// revoked), and why. Transports ask at heartbeat ticks, so a lapse ends an open
    /// connection within one heartbeat interval, with a notice in the transport's form. (A
    /// revocation through the control API ends it at once: [`Event::Closed`].)
    pub fn lapsed(&self) -> Option<Denied> {
        let lapse = self.extras.as_deref()?.admitted.as_ref()?;
        self.hub.policy().check_lapse(lapse).err()
    }

    /// Keeps `guard` (a member's presence) for as long as this subscription lives.
    pub fn keep(&mut self, guard: crate::PresenceGuard) {
        self.extras.get_or_insert_default().kept.push(guard);
    }

    /// Keeps `value` with this subscription for as long as it lives: what a transport needs
    /// only now and then (a WebSocket's stamp for the frames it publishes) goes in the
    /// subscription's one optional box rather than in every idle connection's task (a
    /// 16-byte field there measured +0.13 KiB per idle WebSocket subscriber). A second value
    /// replaces the first.
    pub fn attach<T: std::any::Any + Send + Sync>(&mut self, value: T) {
        self.extras.get_or_insert_default().attached = Some(Box::new(value));
    }

    /// Puts each channel's `messages` (its newest, oldest first, read after the channel was
    /// added) ahead of everything queued, merged in id order and marked as recent, and drops
    /// their live copies: what is queued on a channel at or below the newest of its own. For
    /// a subscription that takes channels on while it runs (a Bayeux session): its floor is
    /// the other channels' position, so these go past it, once each.
    pub(crate) fn put_first(&mut self, channels: Vec<(Channel, Vec<Arc<Message>>)>) {
        let mut marked = Vec::new();
        for (channel, messages) in channels {
            let Some(newest) = messages.last().map(|m| m.id) else {
                continue;
            };
            self.extras
                .get_or_insert_default()
                .skip
                .push((channel, newest));
            marked.extend(messages.iter().map(|m| Arc::new(m.as_recent())));
        }
        if marked.is_empty() {
            return;
        }
        marked.sort_unstable_by_key(|m| m.id);
        match self.replay.as_deref_mut() {
            Some(replaying) => replaying.put_first(marked),
            None => self.replay = Some(Replaying::of(marked)),
        }
        // A connection waiting on this subscription has something to take.
        self.sub.signal.notify();
    }

    /// Whether `message`, coming out of the live queue, is a copy of one put first.
    fn put_first_already(&mut self, message: &Message) -> bool {
        let Some(extras) = self.extras.as_deref_mut() else {
            return false;
        };
        if extras.skip.is_empty() {
            return false;
        }
        let id = message.id;
        let seen = extras
            .skip
            .iter()
            .any(|(c, upto)| *c == message.channel && upto.epoch == id.epoch && id <= *upto);
        // The queue is in id order: once past an entry's newest, its copies are all gone.
        extras
            .skip
            .retain(|(_, upto)| upto.epoch == id.epoch && id < *upto);
        seen
    }

    /// What [`Subscription::attach`] kept, if it is a `T`.
    pub fn attached<T: std::any::Any>(&self) -> Option<&T> {
        self.extras.as_deref()?.attached.as_deref()?.downcast_ref()
    }

    /// The first pattern (the only one, except for Bayeux sessions).
    pub fn pattern(&self) -> &Pattern {
        &self.patterns[0]
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Adds a pattern; false if it was already there.
    pub fn add(&mut self, pattern: Pattern) -> bool {
        // A pattern the control API took off, but whose notice was not read yet, is gone
        // already: settle that first, or adding it back would be taken for a no-op.
        if self.sub.signal.notice.load(Ordering::Acquire) {
            self.settle();
        }
        if self.patterns.contains(&pattern) {
            return false;
        }
        self.hub.insert(&pattern, self.id, &self.sub);
        // Most subscriptions hold one pattern for their whole life: room for exactly one
        // (`push` would make room for four, 72 bytes per idle subscriber never used).
        if self.patterns.capacity() == 0 {
            self.patterns.reserve_exact(1);
        }
        self.patterns.push(pattern);
        true
    }

    /// Removes a pattern; false if it was not there.
    pub fn remove(&mut self, pattern: &Pattern) -> bool {
        let Some(i) = self.patterns.iter().position(|p| p == pattern) else {
            return false;
        };
        self.patterns.swap_remove(i);
        self.hub.unregister(pattern, self.id);
        true
    }

    /// Whether the message [`Subscription::try_next`] handed out last came live (not from
    /// history): a transport counts its publish→write latency only then.
    pub fn last_was_live(&self) -> bool {
        self.live
    }

    /// Why the application ended this subscription (the control API), if it did.
    pub fn closing(&self) -> Option<crate::control::Closing> {
        let closed = self
            .sub
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed;
        closed.then(|| self.hub.closing(self.id))
    }

    /// Whether this subscriber was cut off for lagging.
    pub fn lagged(&self) -> bool {
        self.sub
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lagged
    }

    /// True when the resume could not be served without loss (DESIGN.md §2).
    pub fn gap(&self) -> bool {
        self.gap
    }

    /// A position the client can resume from if it receives nothing: the broker's cursor at
    /// subscribe time, or the id it resumed from.
    pub fn position(&self) -> Option<MessageId> {
        self.position
    }

    pub(crate) fn set_resume(
        &mut self,
        replay: Option<Box<Replaying>>,
        floor: Option<MessageId>,
        gap: bool,
        position: Option<MessageId>,
    ) {
        // The higher of the two: a replay may end below a floor given with it (the newest
        // messages of a channel, older than the position the live flow starts after).
        self.floor = match (replay.as_ref().and_then(|r| r.last()), floor) {
            (Some(last), Some(floor)) if last.epoch == floor.epoch => Some(last.max(floor)),
            (last, floor) => last.or(floor),
        };
        self.replay = replay;
        self.gap = gap;
        self.position = position;
    }

    /// The next message of the replay: `Ok(None)` when it is over, `Err(())` while its next
    /// batch is being read.
    fn next_replayed(&mut self) -> Result<Option<Arc<Message>>, ()> {
        let Some(replaying) = self.replay.as_deref_mut() else {
            return Ok(None);
        };
        // Bounded: each refill that is `Ready` took a batch that moved the replay on.
        loop {
            if let Some(m) = replaying.pop() {
                return Ok(Some(m));
            }
            let ended = {
                let queue = self.sub.state.lock().unwrap_or_else(|e| e.into_inner());
                queue.lagged || queue.closed
            };
            if ended {
                // Cut off or closed meanwhile: nothing more is read for it.
                break;
            }
            match replaying.refill(&self.patterns, &self.sub) {
                Refill::Ready => continue,
                Refill::Waiting => return Err(()),
                Refill::Done => break,
                Refill::Lost => {
                    self.hub.cut_off(&self.sub);
                    break;
                }
            }
        }
        self.replay = None;
        Ok(None)
    }

    /// Whether a resume's replay is still going: a message may be owed that `try_next` does
    /// not have yet (its batch is being read from history).
    pub fn replaying(&self) -> bool {
        self.replay.is_some()
    }

    /// The slot through which this subscription's transport lends its socket to the hub
    /// (`direct.rs`).
    pub fn sink_slot(&self) -> crate::direct::SinkSlot {
        crate::direct::SinkSlot(self.sub.clone())
    }

    /// Lets the delivering loop write the next message to this subscription's socket itself
    /// (`direct.rs`), if the transport lent it one and has nothing left to take: no replay
    /// owed, nothing queued, no notice. The transport calls this when it is about to wait with
    /// everything written, and takes the socket back ([`crate::direct::SinkSlot::poll_take`])
    /// before it writes again. True when armed.
    pub fn arm(&self) -> bool {
        if self.replay.is_some() || self.sub.signal.notice.load(Ordering::Acquire) {
            return false;
        }
        let mut queue = self.sub.state.lock().unwrap_or_else(|e| e.into_inner());
        let free = queue.sink.is_some()
            && queue.writer == crate::direct::Writer::Task
            && queue.messages.is_empty()
            && !queue.lagged
            && !queue.closed;
        if free {
            queue.writer = crate::direct::Writer::Armed;
            // A delivery that writes itself skips what the transport handed out already (the
            // live copies of a replay), as `try_next` does.
            if let Some(floor) = self.floor
                && queue
                    .last
                    .is_none_or(|last| last.epoch != floor.epoch || last < floor)
            {
                queue.last = Some(floor);
            }
        }
        free
    }

    /// Something to wait on for this subscription's next message without holding the
    /// subscription itself (so that patterns can be added meanwhile).
    pub fn waiter(&self) -> Waiter {
        Waiter(self.sub.clone())
    }

    /// The next message, without waiting. Notices of the control API come first, before any
    /// message already queued or owed.
    pub fn try_next(&mut self) -> Option<Event> {
        if self.sub.signal.notice.load(Ordering::Acquire)
            && let Some(event) = self.take_notice()
        {
            return Some(event);
        }
        if self.replay.is_some() {
            match self.next_replayed() {
                Ok(Some(m)) => {
                    // Never lowered: a floor above the replay (see `set_resume`) stays. Nor
                    // raised by a channel's newest put first (`put_first`): other channels'
                    // messages below them may still be queued.
                    if !m.is_recent()
                        && self.floor.is_none_or(|f| f.epoch != m.id.epoch || f < m.id)
                    {
                        self.floor = Some(m.id);
                    }
                    self.live = false;
                    return Some(Event::Message(m));
                }
                Ok(None) => {}
                Err(()) => return None,
            }
        }
        loop {
            let mut queue = self.sub.state.lock().unwrap_or_else(|e| e.into_inner());
            if queue.lagged {
                return Some(Event::Lagged);
            }
            if queue.closed {
                drop(queue);
                return Some(Event::Closed(self.hub.closing(self.id)));
            }
            let message = queue.messages.pop_front()?;
            drop(queue);
            if self.extras.is_some() && self.put_first_already(&message) {
                continue;
            }
            match self.floor {
                Some(floor) if message.id.epoch == floor.epoch && message.id <= floor => continue,
                _ => {
                    self.floor = Some(message.id);
                    self.live = true;
                    return Some(Event::Message(message));
                }
            }
        }
    }

    /// Resolves when a message may be waiting, or [`Hub::wake_all`] was called, since the
    /// last time this resolved. Cancel-safe.
    pub async fn signalled(&self) {
        self.sub.signal.wait().await;
    }

    /// [`Subscription::signalled`] for hand-written futures and streams.
    pub fn poll_signalled(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.sub.signal.poll_wait(cx)
    }

    /// The next message, waiting for one. Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Event {
        loop {
            if let Some(event) = self.try_next() {
                return event;
            }
            // A signal sent when nobody waits is kept, so a message queued between try_next
            // and here still wakes us.
            self.sub.signal.wait().await;
        }
    }
}

/// Resolves when a message may be waiting for a subscription (see [`Subscription::waiter`]).
pub struct Waiter(Arc<Subscriber>);

impl Waiter {
    /// Cancel-safe; a message queued before this is awaited still wakes it (the signal is
    /// kept until taken). Only the latest task to wait on a subscriber is woken.
    pub async fn wait(&self) {
        self.0.signal.wait().await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The socket goes with its transport, not with the last handle on this subscriber.
        self.sub
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sink = None;
        for pattern in &self.patterns {
            self.hub.unregister(pattern, self.id);
        }
        if self.indexed {
            self.hub.forget(self.user().map(|u| &**u), self.id);
        }
        self.hub
            .shared
            .stats
            .subscriptions
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Subscription({:?} #{})", self.patterns, self.id)
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;

    /// Every subscriber pays for these, also anonymous ones: the control API's flags live in
    /// padding that was there before them (a `Subscriber` was 104 bytes, its `Arc` 120), and so
    /// do the direct writer's state and offset (`direct.rs`); its socket, 16 bytes, does not.
    #[test]
    fn an_idle_subscriber_is_no_larger_for_the_control_api() {
        assert_eq!(std::mem::size_of::<Queue>(), 80);
        assert_eq!(std::mem::size_of::<Signal>(), 32);
        assert_eq!(std::mem::size_of::<Subscriber>(), 120);
        // 144 until a resume's replay became one optional box instead of a `VecDeque`.
        assert_eq!(std::mem::size_of::<Subscription>(), 120);
    }

    fn deliver(hub: &Hub, channel: &str, n: u64) {
        for _ in 0..n {
            let message = Message::new(
                Channel::parse(channel).unwrap(),
                MessageId::new(1, 1),
                halley_proto::Payload::from_json(b"1").unwrap(),
            );
            hub.deliver(&Arc::new(message));
        }
    }

    /// A broker that found a hole on `/a/x` cuts off the subscribers that would have had the
    /// lost message — the exact one and the wildcard — before anything after the hole reaches
    /// them; `/b` is untouched, and `None` cuts off everyone left.
    #[test]
    fn lost_cuts_off_the_subscribers_of_the_channel_before_the_next_message() {
        let hub = Hub::new(16, Arc::new(Stats::default()));
        let mut subs: Vec<Subscription> = ["/a/x", "/a/**", "/b"]
            .iter()
            .map(|p| {
                let mut sub = hub.subscriber();
                sub.add(Pattern::parse(p).unwrap());
                sub
            })
            .collect();
        let x = Channel::parse("/a/x").unwrap();
        assert_eq!(hub.lost(Some(&x)), 2);
        deliver(&hub, "/a/x", 1);
        deliver(&hub, "/b", 1);
        assert!(matches!(subs[0].try_next(), Some(Event::Lagged)));
        assert!(matches!(subs[1].try_next(), Some(Event::Lagged)));
        assert!(matches!(subs[2].try_next(), Some(Event::Message(_))));
        assert_eq!(hub.subscribers(&x), 0, "cut off: no longer registered");
        assert_eq!(hub.lost(None), 1);
        assert!(matches!(subs[2].try_next(), Some(Event::Lagged)));
    }

    #[test]
    fn traffic_is_messages_per_entry_since_the_last_ask_busiest_first_bounded_inboxes_left_out() {
        let hub = Hub::new(1_000_000, Arc::new(Stats::default()));
        let inbox = format!(
            "{}0123456789abcdef0123456789abcdef",
            halley_proto::inbox::PREFIX
        );
        let mut subs = Vec::new();
        for name in ["/a", "/b", "/c/**", "/quiet", inbox.as_str()] {
            let mut sub = hub.subscriber();
            sub.add(Pattern::parse(name).unwrap());
            // Two subscribers of /a: still counted once per message.
            if name == "/a" {
                let mut again = hub.subscriber();
                again.add(Pattern::parse(name).unwrap());
                subs.push(again);
            }
            subs.push(sub);
        }
        let t0 = std::time::Instant::now();
        deliver(&hub, "/a", 2);
        // The first ask has nothing to compare with; it opens the window.
        assert_eq!(hub.traffic(t0), (vec![], 0));
        deliver(&hub, "/a", 3);
        deliver(&hub, "/b", 1);
        deliver(&hub, "/c/d", 4);
        deliver(&hub, &inbox, 9);
        deliver(&hub, "/nobody", 9);
        let t1 = t0 + std::time::Duration::from_millis(500);
        let (rows, window) = hub.traffic(t1);
        assert_eq!(window, 500);
        let want = [("/c/**", 4), ("/a", 3), ("/b", 1)];
        assert_eq!(rows, want.map(|(c, n)| (c.to_owned(), n)).to_vec());
        // A new window: nothing since.
        assert_eq!(
            hub.traffic(t1 + std::time::Duration::from_secs(1)),
            (vec![], 1000)
        );
        // Bounded, the busiest kept.
        for i in 0..(crate::stats::MAX_TRAFFIC_ROWS as u64 + 8) {
            let mut sub = hub.subscriber();
            sub.add(Pattern::parse(&format!("/many/{i}")).unwrap());
            subs.push(sub);
            deliver(&hub, &format!("/many/{i}"), i + 1);
        }
        let (rows, _) = hub.traffic(t1 + std::time::Duration::from_secs(2));
        assert_eq!(rows.len(), crate::stats::MAX_TRAFFIC_ROWS);
        assert_eq!(rows[0], ("/many/23".to_owned(), 24));
        assert_eq!(rows.last().unwrap().1, 9);
    }
}
