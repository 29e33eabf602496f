//! One Bayeux client's session: its subscriptions (one bounded queue), the held `/meta/connect`,
//! and the ack extension's unacknowledged batches.
//!
//! Invariant: at most one `/meta/connect` is held per session. A newer connect preempts the held
//! one, which is then answered at once (empty); it is never answered twice, and a connect whose
//! requester went away simply drops its future (guards restore the counters).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use halley_proto::{Message, Pattern};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::holds::{Holds, UNTIMED};
use super::{MAX_DELIVERY_BATCH, Outbox, Wake};
use crate::access::{Identity, Principal};
use crate::control::Closing;
use crate::{Event, Subscription};

/// The browser secret (the `BAYEUX_BROWSER` cookie over HTTP) a request came with, which a
/// session is bound to once its client has shown it sends it back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Browser<'a> {
    /// The transport has none (a client that keeps no cookies, a WebSocket upgraded without
    /// one, an embedder's own transport).
    #[default]
    Unknown,
    /// The request carried this one.
    Presented(&'a str),
    /// The request carried none; the transport sets this one on its answer (over HTTP when a
    /// handshake in it succeeds, on a WebSocket's 101). A session handshaken with it is bound
    /// once a request comes back with it; the connection it was offered on may go on without.
    Offered(&'a str),
}

impl<'a> Browser<'a> {
    /// The secret the request carried.
    pub fn presented(self) -> Option<&'a str> {
        match self {
            Browser::Presented(b) => Some(b),
            _ => None,
        }
    }
}

/// A connection that delivers while holding a connect (WebSocket) answers it once the
/// unacknowledged messages reach 1/this of the session's budget (`max_unacked`), so that a
/// client that keeps up acknowledges them with its next connect instead of reaching the budget
/// within one hold (25 s) and being cut off. A client that does not acknowledge is still cut
/// off at the budget.
pub const ACK_DUE_FRACTION: usize = 2;

/// What a wait for messages ended with.
#[derive(Debug, Default)]
pub struct Batch {
    pub messages: Vec<Arc<Message>>,
    /// How many of `messages`, from the first, came from history (a `recent` subscribe's
    /// newest messages) rather than live: the subscription hands out what it replays before
    /// anything queued ([`Subscription::try_next`]), and a batch is taken under its lock, so
    /// they are a prefix. A count rather than a flag per message: a batch is built for every
    /// delivery.
    pub replayed: usize,
    /// The session was cut off (queue or unacknowledged messages over budget) or closed (by
    /// the application too: [`Session::closing`] says why).
    pub ended: bool,
    /// A newer connect (on another socket or request) took over delivery: nothing was taken
    /// from the queue.
    pub preempted: bool,
}

struct Acks {
    /// Connects begun so far: the latest one's number says which connection delivers
    /// ([`Session::deliver`]). Kept under this lock so that taking messages for a connection
    /// and a newer connect's resend are ordered.
    connects: u64,
    /// The batch that messages sent now belong to; a connect reply closes it.
    open: u64,
    /// Sent but not yet acknowledged, oldest first, with their batch.
    unacked: VecDeque<(u64, Arc<Message>)>,
}

pub struct Session {
    id: String,
    /// Who opened the session (its handshake's credentials, or its transport's).
    principal: Principal,
    /// The browser secret the session is bound to (see [`Browser`]), if its handshake came
    /// with or was answered with one.
    browser: Option<Box<str>>,
    /// The client has shown it sends `browser` back: from now on only requests carrying it
    /// reach the session.
    bound: AtomicBool,
    /// A `/meta/connect` was seen: the first one is answered at once.
    connected: AtomicBool,
    ack_enabled: bool,
    /// The most unacknowledged messages kept for redelivery; more cuts the session off.
    unacked_limit: usize,
    sub: tokio::sync::Mutex<Subscription>,
    acks: Mutex<Acks>,
    last_active: Mutex<Instant>,
    /// Connects currently held; a session with one is never expired.
    held: AtomicUsize,
    /// Wakes the deliveries waiting for this session ([`Session::deliver`]) when a newer
    /// connect begins (the older one is preempted) or the session ends. One `Notify` for both:
    /// a waiting delivery then keeps one `Notified` (64 bytes) rather than two, in every held
    /// connect's future; woken, it checks both.
    changed: Notify,
    closed: AtomicBool,
    /// The earliest time (`Holds`' milliseconds) the held connects' timer holds an entry for
    /// this session at, `UNTIMED` if none ([`Holds::arm`]).
    pub(super) timed: AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({})", self.id)
    }
}

impl Session {
    pub(crate) fn new(
        id: String,
        sub: Subscription,
        ack_enabled: bool,
        unacked_limit: usize,
        principal: Principal,
        browser: Browser<'_>,
    ) -> Session {
        let (browser, bound) = match browser {
            Browser::Unknown => (None, false),
            Browser::Presented(b) => (Some(b.into()), true),
            Browser::Offered(b) => (Some(b.into()), false),
        };
        Session {
            id,
            principal,
            browser,
            bound: AtomicBool::new(bound),
            connected: AtomicBool::new(false),
            ack_enabled,
            unacked_limit,
            sub: tokio::sync::Mutex::new(sub),
            acks: Mutex::new(Acks {
                connects: 0,
                open: 1,
                unacked: VecDeque::new(),
            }),
            last_active: Mutex::new(Instant::now()),
            held: AtomicUsize::new(0),
            changed: Notify::new(),
            closed: AtomicBool::new(false),
            timed: AtomicU64::new(UNTIMED),
        }
    }

    /// A session of no engine's (unit tests of what only needs its wake-ups).
    #[cfg(test)]
    pub(super) fn for_tests() -> Session {
        let engine = crate::Engine::in_memory(crate::EngineConfig::default());
        let anonymous = engine.policy().anonymous();
        Session::new(
            "test".into(),
            engine.subscriber(),
            false,
            1,
            anonymous,
            Browser::Unknown,
        )
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Who opened the session; every subscribe and publish of it is decided for them.
    pub fn principal(&self) -> &Identity {
        &self.principal
    }

    /// Whether a request that came with `browser` may act for this session. A session not
    /// bound to a browser admits anyone with its clientId (clients that keep no cookies); one
    /// whose client sent its browser secret back admits only requests carrying that secret.
    pub(crate) fn admits(&self, browser: Browser<'_>) -> bool {
        let Some(own) = self.browser.as_deref() else {
            return true;
        };
        match browser {
            Browser::Presented(b) if b == own => {
                self.bound.store(true, Ordering::Release);
                true
            }
            // The connection the secret was offered on (a WebSocket whose 101 set it) is the
            // client's own, but proves nothing about its cookies: it binds nothing.
            Browser::Offered(b) if b == own => true,
            _ => !self.bound.load(Ordering::Acquire),
        }
    }

    /// True for the session's first `/meta/connect` only.
    pub(crate) fn first_connect(&self) -> bool {
        !self.connected.swap(true, Ordering::AcqRel)
    }

    pub fn ack_enabled(&self) -> bool {
        self.ack_enabled
    }

    /// Why the application ended this session (the control API), if it did.
    pub fn closing(&self) -> Option<Closing> {
        self.sub.try_lock().ok()?.closing()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Wakes this session's deliveries: the server is shutting down, or the timer's entry at
    /// `at` fired ([`Holds`]). Each checks for itself what concerns it.
    pub(super) fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// The timer's entry at `at` fired: no longer the session's earliest (unless a newer one
    /// is), and its deliveries are woken — after that, so that a delivery that found the entry
    /// there and armed nothing is woken and arms its own deadline again.
    pub(super) fn timer_fired(&self, at: u64) {
        let _ = self
            .timed
            .compare_exchange(at, UNTIMED, Ordering::AcqRel, Ordering::Acquire);
        self.wake();
    }

    pub(crate) fn touch(&self) {
        *self.last_active.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Idle: no connect held and none seen for longer than `max_interval`.
    pub(crate) fn expired(&self, now: Instant, max_interval: std::time::Duration) -> bool {
        self.held.load(Ordering::Acquire) == 0
            && now.duration_since(*self.last_active.lock().unwrap_or_else(|e| e.into_inner()))
                > max_interval
    }

    /// Adds `patterns`; refused (nothing added) when the session would hold more than `max`.
    /// Adds `patterns`; with `recent`, each newly added exact channel's newest messages come
    /// first ([`Subscription::put_first`]). They are read after the channel is added and under
    /// the subscription's lock, so no delivery takes a live copy before they are in place.
    pub(crate) async fn subscribe(
        &self,
        patterns: Vec<Pattern>,
        max: usize,
        recent: Option<(&crate::Engine, usize)>,
    ) -> Result<(), usize> {
        let mut sub = self.sub.lock().await;
        let new = patterns
            .iter()
            .filter(|p| !sub.patterns().contains(p))
            .count();
        if sub.patterns().len() + new > max {
            return Err(max);
        }
        let mut added = Vec::new();
        for p in patterns {
            if let (true, Some(channel)) = (sub.add(p.clone()), p.exact()) {
                added.push(channel.clone());
            }
        }
        if let Some((engine, limit)) = recent {
            let mut first = Vec::new();
            for channel in added {
                match engine.recent(&channel, limit).await {
                    Ok(messages) if !messages.is_empty() => first.push((channel, messages)),
                    Ok(_) | Err(crate::EngineError::Reserved(_)) => {}
                    // The subscription stands; only its context could not be read.
                    Err(error) => tracing::warn!(%error, %channel, "bayeux: recent messages"),
                }
            }
            sub.put_first(first);
        }
        Ok(())
    }

    pub(crate) async fn unsubscribe(&self, patterns: &[Pattern]) {
        let mut sub = self.sub.lock().await;
        for p in patterns {
            sub.remove(p);
        }
    }

    /// Starts a connect: answers any connect still held, applies the client's ack (dropping what
    /// it confirmed) and returns the unacknowledged messages to send again before anything new.
    /// `fresh` means a new request or connection, over which nothing of the current batch has
    /// been sent yet.
    /// The guard's `connect` numbers it among the session's connects, for [`Session::deliver`].
    pub fn begin_connect(
        self: &Arc<Self>,
        ack: Option<u64>,
        fresh: bool,
    ) -> (ConnectGuard, Vec<Arc<Message>>) {
        self.held.fetch_add(1, Ordering::AcqRel);
        self.touch();
        let mut resend = Vec::new();
        let connect;
        {
            let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
            acks.connects += 1;
            connect = acks.connects;
        }
        // After the number moved on: a delivery waiting for an older connect wakes and sees it.
        self.changed.notify_waiters();
        if self.ack_enabled {
            let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(confirmed) = ack {
                while acks.unacked.front().is_some_and(|(b, _)| *b <= confirmed) {
                    acks.unacked.pop_front();
                }
            }
            let open = acks.open;
            resend.extend(
                acks.unacked
                    .iter()
                    .filter(|(b, _)| fresh || *b < open)
                    .map(|(_, m)| m.clone()),
            );
        }
        (
            ConnectGuard {
                session: self.clone(),
                connect,
            },
            resend,
        )
    }

    /// What the connection of connect number `connect` may deliver now, without waiting (see
    /// [`Session::deliver`]); an empty batch when the subscription is busy (a subscribe on
    /// another request) or holds nothing.
    pub fn deliver_now(&self, connect: u64) -> Batch {
        match self.sub.try_lock() {
            Ok(mut sub) => self.take(&mut sub, connect).unwrap_or_default(),
            Err(_) => Batch::default(),
        }
    }

    /// The delivery of the connection whose connect is number `connect` (a WebSocket, or one
    /// held long-polling request): waits for messages (or the session's end) while `connect`
    /// is the session's latest connect, takes them and records them as sent for the ack
    /// extension in one step that a newer connect's resend is ordered with: what a preempted
    /// connection took is in the newer connect's resend, and once a newer connect began nothing
    /// more is taken (`preempted`). `ended` also when the session holds more unacknowledged
    /// messages than allowed (the batch is still sent). At most [`MAX_DELIVERY_BATCH`]
    /// messages. Cancel-safe.
    ///
    /// With nothing to deliver, it also ends once the server is shutting down
    /// ([`Wake::Shutdown`]) or, with a `deadline` (the connection holds a connect), once that
    /// passed ([`Wake::Deadline`]). Both come through the session's one `Notify`, as everything
    /// else does ([`Holds`]): the future keeps no timer and no shutdown wait of its own.
    ///
    /// Not an `async fn` (which clippy prefers): one keeps its arguments twice (as arguments
    /// and as locals) in every held connect's future.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn deliver<'a>(
        self: &'a Arc<Self>,
        connect: u64,
        holds: &'a Holds,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Wake> + 'a {
        async move {
            // Made before anything is checked, and again before each check after it fired:
            // `notify_waiters` reaches every `Notified` made before it, so neither a preemption,
            // the session's end, the deadline's wake-up nor the shutdown is missed.
            let mut changed = std::pin::pin!(self.changed.notified());
            loop {
                if self.is_closed() {
                    return Wake::Delivered(Batch {
                        ended: true,
                        ..Batch::default()
                    });
                }
                let waiter = {
                    // The lock is rarely contended (a publish or subscribe of the session's own):
                    // its wait is boxed, so that it does not size every held connect's future
                    // (the lock's future is 64 bytes more than the wait below).
                    let mut sub = match self.sub.try_lock() {
                        Ok(sub) => sub,
                        Err(_) => tokio::select! {
                            sub = Box::pin(self.sub.lock()) => sub,
                            _ = &mut changed => {
                                changed.set(self.changed.notified());
                                continue;
                            }
                        },
                    };
                    // Preempted (a newer connect) is answered here, under the lock.
                    if let Some(batch) = self.take(&mut sub, connect) {
                        return Wake::Delivered(batch);
                    }
                    // Nothing to deliver: the server may be shutting down, a held connect may
                    // be over.
                    if holds.draining() {
                        return Wake::Shutdown;
                    }
                    if let Some(deadline) = deadline {
                        if Instant::now() >= deadline {
                            return Wake::Deadline;
                        }
                        holds.arm(self, deadline);
                    }
                    sub.waiter()
                };
                // Preemption and the end first: a preempted connection must not wait on the
                // subscriber again, as that would take the wake-up from the connect that replaced
                // it (the subscriber wakes one waiter, the latest).
                tokio::select! {
                    biased;
                    _ = &mut changed => {
                        // Everything is checked again above.
                        changed.set(self.changed.notified());
                    }
                    _ = waiter.wait() => {}
                }
            }
        }
    }

    /// Under the subscription's lock: `preempted` when `connect` is no longer the latest, else
    /// what is queued, recorded as sent in the open batch; `None` when there is nothing.
    fn take(&self, sub: &mut Subscription, connect: u64) -> Option<Batch> {
        let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        if acks.connects != connect {
            return Some(Batch {
                preempted: true,
                ..Batch::default()
            });
        }
        let mut batch = drain(sub);
        if batch.messages.is_empty() && !batch.ended {
            return None;
        }
        if self.ack_enabled {
            let open = acks.open;
            acks.unacked
                .extend(batch.messages.iter().map(|m| (open, m.clone())));
            batch.ended |= acks.unacked.len() > self.unacked_limit;
        }
        Some(batch)
    }

    /// Whether the unacknowledged messages reached [`ACK_DUE_FRACTION`] of the budget: a
    /// connection that holds a connect while delivering answers it now, so that the client's
    /// next connect acknowledges them before the budget cuts the session off.
    pub fn ack_due(&self) -> bool {
        self.ack_enabled
            && self
                .acks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unacked
                .len()
                >= (self.unacked_limit / ACK_DUE_FRACTION).max(1)
    }

    /// Closes the open batch for a connect reply; its number goes in the reply's `ext.ack`.
    pub fn close_batch(&self) -> Option<u64> {
        if !self.ack_enabled {
            return None;
        }
        let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        let batch = acks.open;
        acks.open += 1;
        Some(batch)
    }
}

impl Batch {
    /// Writes the messages, each said live or not ([`Outbox::data`]).
    pub fn write(&self, out: &mut impl Outbox) {
        for (i, m) in self.messages.iter().enumerate() {
            out.data(m, i >= self.replayed);
        }
    }
}

/// What is queued, up to [`MAX_DELIVERY_BATCH`] messages, or up to the subscription's end.
fn drain(sub: &mut Subscription) -> Batch {
    let mut batch = Batch::default();
    let mut event = sub.try_next();
    while let Some(e) = event {
        match e {
            Event::Message(m) => {
                if !sub.last_was_live() {
                    debug_assert_eq!(batch.replayed, batch.messages.len(), "replayed after live");
                    batch.replayed += 1;
                }
                batch.messages.push(m);
            }
            Event::Lagged => {
                batch.ended = true;
                break;
            }
            // The reason stays with the subscription: `Session::closing` (not in every batch,
            // which a held connect keeps across its wait).
            Event::Closed(_) => {
                batch.ended = true;
                break;
            }
            // The session's subscription lost a pattern (the control API); Bayeux has no
            // message for that, the client just stops receiving it.
            Event::Unsubscribed(_) => {}
        }
        if batch.messages.len() >= MAX_DELIVERY_BATCH {
            break;
        }
        event = sub.try_next();
    }
    batch
}

/// A connect in progress; while it lives the session does not expire. Dropping it (answered,
/// preempted, or its requester gone) releases the hold, so an abandoned connect can never keep
/// a session alive or be answered later.
pub struct ConnectGuard {
    session: Arc<Session>,
    /// This connect's number among the session's connects (for [`Session::deliver`]).
    pub connect: u64,
}

impl Drop for ConnectGuard {
    fn drop(&mut self) {
        self.session.touch();
        self.session.held.fetch_sub(1, Ordering::AcqRel);
    }
}
