//! The one connect loop every Bayeux transport drives: a [`Link`] is a connection's (or one
//! request's) part in a session's delivery — the `/meta/connect` it holds, the messages it
//! delivers while its connect is the session's latest, and when that connect is answered.
//!
//! - Long-polling and callback-polling run one link per request ([`Bayeux::poll`]): the connect
//!   is answered with the first messages there are (or the unacknowledged ones to send again),
//!   at its timeout, when a newer connect takes over, or at shutdown.
//! - A WebSocket keeps one link for the socket: messages go out as they come, while the held
//!   connect is answered at its timeout, when the next connect arrives, when half the
//!   unacknowledged budget went out within it, or when the session ends.
//!
//! Messages are taken from the session and recorded as sent (ack extension) in one step that a
//! newer connect's resend is ordered with ([`Session::deliver`]), so what a preempted
//! connection took is sent again by the newer one, and a preempted connect's reply closes no
//! batch ([`Bayeux::preempted_reply`]).

use std::sync::Arc;
use std::time::Duration;

use halley_proto::Message;
use halley_proto::bayeux::BayeuxMessage;
use tokio::time::Instant;

use super::{Batch, Bayeux, Connect, ConnectGuard, Session};

/// Where a link writes: the transport's batch being built (a JSON array).
pub trait Outbox {
    /// A delivered message; `live` when it is written for the first time since it was
    /// published (not a `recent` subscribe's history, nor the ack extension's resend of a batch
    /// the client did not acknowledge): a transport counts its publish→write latency then, so
    /// a message counts at most once per session.
    fn data(&mut self, message: &Arc<Message>, live: bool);
    /// A reply (to a connect, here).
    fn reply(&mut self, reply: &BayeuxMessage);
}

/// What a [`Link`] waited for ([`Link::wait`]); hand it to [`Link::wake`].
pub enum Wake {
    Delivered(Batch),
    /// The held connect's timeout passed.
    Deadline,
    /// The server is shutting down ([`Bayeux::shutdown`]): the held connect is answered (the
    /// client reconnects, to this node or another).
    Shutdown,
}

/// A connect held on a link; its guard keeps the session from expiring meanwhile.
struct Held {
    connect: Connect,
    deadline: Instant,
    _guard: ConnectGuard,
}

/// A connection's part in Bayeux delivery (see the module).
pub struct Link {
    /// Delivers between connects (a WebSocket), rather than answering its connect with the
    /// first messages (a polling request).
    persistent: bool,
    /// The session this link delivers for, while `connect` is its latest connect.
    session: Option<Arc<Session>>,
    /// The number of the latest connect on this link (0: none yet, or a newer connect on
    /// another connection took the session over). The first one of a persistent link, and every
    /// polling one, sends every unacknowledged message again; later ones of a persistent link
    /// only the closed-but-unacknowledged batches.
    connect: u64,
    held: Option<Held>,
}

impl Link {
    /// A WebSocket's link.
    pub fn persistent() -> Link {
        Link {
            persistent: true,
            session: None,
            connect: 0,
            held: None,
        }
    }

    fn polling() -> Link {
        Link {
            persistent: false,
            ..Link::persistent()
        }
    }

    /// A connect is held: its reply is still to come.
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// A `/meta/connect` arrived on this link: answers the one it held, writes what is to be
    /// sent again, and holds this one — or, when its timeout is zero (a session's first connect,
    /// a browser's second session), and for a polling request that has messages to send
    /// already, answers it at once.
    pub fn connect(&mut self, bayeux: &Bayeux, connect: Connect, out: &mut impl Outbox) {
        if let Some(earlier) = self.held.take() {
            out.reply(&bayeux.connect_reply(&earlier.connect, false));
        }
        let session = connect.session.clone();
        let (guard, resend) =
            session.begin_connect(connect.ack, !self.persistent || self.connect == 0);
        for m in &resend {
            out.data(m, false);
        }
        self.connect = guard.connect;
        if self.persistent {
            self.session = Some(session);
            if connect.timeout.is_zero() {
                out.reply(&bayeux.connect_reply(&connect, false));
                return;
            }
        } else {
            let now = session.deliver_now(self.connect);
            if !resend.is_empty()
                || !now.messages.is_empty()
                || now.ended
                || now.preempted
                || connect.timeout.is_zero()
            {
                self.answer(bayeux, &connect, now, out);
                return;
            }
            self.session = Some(session);
        }
        self.held = Some(Held {
            deadline: Instant::now() + connect.timeout,
            connect,
            _guard: guard,
        });
    }

    /// Makes this link the one that delivers `session`'s messages, with no connect of its own:
    /// a stream of them (Faye's `eventsource`), whose client connects over other requests
    /// without taking delivery over. Writes what was sent before and not acknowledged. The
    /// guard keeps the session from expiring while the stream is open; a newer connect that
    /// does take over (the client moved to another connection type) ends it.
    pub fn stream(&mut self, session: Arc<Session>, out: &mut impl Outbox) -> ConnectGuard {
        let (guard, resend) = session.begin_connect(None, true);
        for m in &resend {
            out.data(m, false);
        }
        self.connect = guard.connect;
        self.session = Some(session);
        guard
    }

    /// Still delivering a session's messages (not preempted, the session not ended).
    pub fn delivering(&self) -> bool {
        self.session.is_some()
    }

    /// Waits for what this link acts on next: messages to deliver (while its connect is the
    /// session's latest), the held connect's timeout, or the server's shutdown (while it
    /// delivers: a link without a session is pending until it has one, so a transport that
    /// must end at shutdown waits for that itself meanwhile). Cancel-safe: a transport waits for it
    /// alongside its own events.
    ///
    /// The timeout and the shutdown come from `bayeux` through the session's wake-up
    /// ([`Session::deliver`]): the future keeps no timer of its own.
    ///
    /// Not an `async fn`: its future is the session's delivery itself, not one that keeps
    /// this link's fields beside it.
    pub fn wait<'a>(&'a self, bayeux: &'a Bayeux) -> impl Future<Output = Wake> + Send + 'a {
        use futures_util::future::Either;
        let deadline = self.held.as_ref().map(|h| h.deadline);
        let holds = &*bayeux.shared.holds;
        match (&self.session, deadline) {
            (Some(session), deadline) => {
                Either::Left(session.deliver(self.connect, holds, deadline))
            }
            // Not reached: a connect is held only with its session (`connect` sets both, and
            // every way out takes both). Kept correct all the same, boxed.
            (None, Some(deadline)) => Either::Right(Either::Left(Box::pin(async move {
                tokio::time::sleep_until(deadline).await;
                Wake::Deadline
            }))),
            (None, None) => Either::Right(Either::Right(std::future::pending())),
        }
    }

    /// Acts on what [`Link::wait`] returned: writes the messages and, when it is due, the held
    /// connect's reply.
    pub fn wake(&mut self, bayeux: &Bayeux, wake: Wake, out: &mut impl Outbox) {
        match wake {
            // Delivering ends with it: the connection goes (a WebSocket says goodbye, a stream
            // ends), and its client reconnects, to this node or another.
            Wake::Shutdown => {
                self.release(bayeux, false, out);
                self.session = None;
                self.connect = 0;
            }
            Wake::Deadline => {
                if !self.persistent {
                    self.session = None;
                }
                if let Some(held) = self.held.take() {
                    out.reply(&bayeux.connect_reply(&held.connect, false));
                }
            }
            Wake::Delivered(batch) if !self.persistent => {
                self.session = None;
                if let Some(held) = self.held.take() {
                    self.answer(bayeux, &held.connect, batch, out);
                }
            }
            Wake::Delivered(batch) if batch.preempted => {
                // The client connected on another connection (this one is likely dead): that
                // one delivers now, and resends what this one sent unacknowledged. A connect
                // held here is answered acknowledging nothing.
                self.session = None;
                self.connect = 0;
                if let Some(held) = self.held.take() {
                    out.reply(&bayeux.preempted_reply(&held.connect));
                }
            }
            Wake::Delivered(batch) => {
                let Some(session) = self.session.clone() else {
                    return;
                };
                batch.write(out);
                if batch.ended || session.is_closed() {
                    if let Some(held) = self.held.take() {
                        out.reply(&bayeux.connect_reply(&held.connect, true));
                    } else if session.closing().is_some() {
                        // Ended by the application between connects: the next connect on this
                        // link learns it (its session is gone: handshake again).
                        bayeux.forget(session.id());
                    }
                    self.session = None;
                    self.connect = 0;
                } else if session.ack_due()
                    && let Some(held) = self.held.take()
                {
                    // Half the unacknowledged budget sent within one hold: the held connect is
                    // answered now, so that the client's next connect acknowledges them.
                    out.reply(&bayeux.connect_reply(&held.connect, false));
                }
            }
        }
    }

    /// Answers the held connect now: the session goes on (shutdown: the client reconnects
    /// elsewhere), or it ended (`ended`: a disconnect).
    pub fn release(&mut self, bayeux: &Bayeux, ended: bool, out: &mut impl Outbox) {
        if !self.persistent {
            self.session = None;
        }
        if let Some(held) = self.held.take() {
            out.reply(&bayeux.connect_reply(&held.connect, ended));
        }
    }

    /// A polling connect's answer: the messages taken for it, then its reply.
    fn answer(&mut self, bayeux: &Bayeux, connect: &Connect, batch: Batch, out: &mut impl Outbox) {
        if batch.preempted {
            out.reply(&bayeux.preempted_reply(connect));
            return;
        }
        batch.write(out);
        out.reply(&bayeux.connect_reply(connect, batch.ended));
    }
}

/// Collects what a link writes, for [`Bayeux::hold`].
#[derive(Default)]
struct Collected {
    messages: Vec<Arc<Message>>,
    reply: Option<BayeuxMessage>,
}

impl Outbox for Collected {
    fn data(&mut self, message: &Arc<Message>, _live: bool) {
        self.messages.push(message.clone());
    }

    fn reply(&mut self, reply: &BayeuxMessage) {
        self.reply = Some(reply.clone());
    }
}

impl Connect {
    /// When `shared`, this connect is another session's of a browser whose connects one session
    /// holds: it is answered at once with `advice.multiple-clients`.
    fn answered_at_once(mut self, shared: bool) -> Connect {
        if shared {
            self.multiple_clients = true;
            self.timeout = Duration::ZERO;
        }
        self
    }
}

impl Bayeux {
    /// Long-polling and callback-polling: holds the connect until there are messages, a newer
    /// connect takes over, its timeout or the server's shutdown ([`Bayeux::shutdown`]), writing
    /// the messages and then the connect's reply to `out`.
    ///
    /// `browser` is the request's browser secret (the `BAYEUX_BROWSER` cookie): one session per
    /// browser may hold a connect (browsers allow a handful of connections per host, shared by
    /// every tab). Another session of the same browser (a second tab) is answered at once with
    /// `advice.multiple-clients` and [`BayeuxConfig::multiple_clients_interval`], and polls.
    pub fn poll<'a, O: Outbox>(
        &'a self,
        connect: Connect,
        browser: Option<&str>,
        out: &'a mut O,
    ) -> impl Future<Output = ()> + 'a {
        // The connect is taken before the future exists (its answer, when it is answered at
        // once, is written now): a held request's future keeps the link, not the connect and
        // the parameters an `async fn` would keep room for twice.
        let slot = browser.map(|b| BrowserSlot::take(self, b, connect.session.id()));
        let mut link = Link::polling();
        let shared = matches!(slot, Some(None));
        link.connect(self, connect.answered_at_once(shared), out);
        async move {
            // A polling link answers its connect at its first wake: one wait at most.
            if link.holding() {
                let wake = link.wait(self).await;
                link.wake(self, wake, out);
            }
            drop(slot);
        }
    }

    /// [`Bayeux::poll`] for a request without a browser secret, returning the messages and
    /// the connect's reply; `hold` false answers at once.
    pub async fn hold(
        &self,
        mut connect: Connect,
        hold: bool,
    ) -> (Vec<Arc<Message>>, BayeuxMessage) {
        if !hold {
            connect.timeout = Duration::ZERO;
        }
        let mut out = Collected::default();
        // Never sent: every way out of a poll answers its connect.
        let unanswered = self.preempted_reply(&connect);
        self.poll(connect, None, &mut out).await;
        (out.messages, out.reply.unwrap_or(unanswered))
    }
}

/// The one session of a browser allowed to hold a connect; released on drop. A session may
/// hold it again (its newer connect preempts its own older one); another session of the same
/// browser is refused, which is what `multiple-clients` advice is for.
struct BrowserSlot<'a> {
    bayeux: &'a Bayeux,
    browser: String,
}

impl<'a> BrowserSlot<'a> {
    fn take(bayeux: &'a Bayeux, browser: &str, session: &str) -> Option<BrowserSlot<'a>> {
        let mut browsers = bayeux.browsers();
        let (holder, holds) = browsers
            .entry(browser.to_string())
            .or_insert_with(|| (session.to_string(), 0));
        if holder != session {
            return None;
        }
        *holds += 1;
        Some(BrowserSlot {
            bayeux,
            browser: browser.to_string(),
        })
    }
}

impl Drop for BrowserSlot<'_> {
    fn drop(&mut self) {
        let mut browsers = self.bayeux.browsers();
        if let Some((_, holds)) = browsers.get_mut(&self.browser) {
            *holds -= 1;
            if *holds == 0 {
                browsers.remove(&self.browser);
            }
        }
    }
}
