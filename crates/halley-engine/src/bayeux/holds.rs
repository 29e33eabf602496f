//! The held connects' one timer, and the server's shutdown as they see it.
//!
//! A held `/meta/connect` waits on its session's one `Notify` (`Session::deliver`) for
//! everything: messages, a newer connect, the session's end — and its own deadline and the
//! server's shutdown, which come from here. No held connect keeps a timer of its own (a tokio
//! `Sleep` is 112 bytes, in every idle Bayeux client's future): the Bayeux server keeps the
//! deadlines in one heap, and its sweeper task sleeps until the earliest and wakes that
//! session. A woken delivery checks its deadline against the clock, so a wake-up for an older
//! connect of the session is harmless.
//!
//! Invariant: a session is in the heap at most once per distinct deadline it armed earlier than
//! every entry it already has (`Session::timed`): a long-polling client whose connects are
//! answered early, one after another, adds one entry per hold, not one per connect. An entry
//! that fires finds the session's latest connect not due yet, and that connect's delivery arms
//! its deadline again.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Session;

/// `Session::timed` when the timer holds no entry for the session.
pub(super) const UNTIMED: u64 = u64::MAX;

pub(crate) struct Holds {
    /// Deadlines are kept as whole milliseconds after this, rounded up: a session is woken at
    /// its deadline or within a millisecond after it, never before.
    epoch: Instant,
    due: Mutex<BinaryHeap<Due>>,
    /// Wakes the timer (`super::sweep`) when a deadline earlier than every other is added.
    pub(super) earlier: Notify,
    /// Set once, by [`super::Bayeux::shutdown`]: every held connect is answered.
    draining: AtomicBool,
}

/// A session to wake at `at` (milliseconds after the epoch). The heap is a max-heap: ordered
/// backwards, so that the earliest is on top.
struct Due {
    at: u64,
    session: Weak<Session>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Due) -> bool {
        self.at == other.at
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Due) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

impl Holds {
    pub(super) fn new() -> Holds {
        Holds {
            epoch: Instant::now(),
            due: Mutex::default(),
            earlier: Notify::new(),
            draining: AtomicBool::new(false),
        }
    }

    fn due(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Due>> {
        self.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Milliseconds from the epoch to `deadline`, rounded up.
    fn millis(&self, deadline: Instant) -> u64 {
        let after = deadline.saturating_duration_since(self.epoch);
        u64::try_from(after.as_nanos().div_ceil(1_000_000)).unwrap_or(UNTIMED - 1)
    }

    fn instant(&self, at: u64) -> Instant {
        self.epoch + Duration::from_millis(at)
    }

    /// The server is shutting down (see [`super::Bayeux::shutdown`]).
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub(super) fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Wakes `session` at `deadline`, unless the timer already holds an entry for it at that
    /// time or earlier (that one fires first, and the delivery it wakes arms this again).
    pub(crate) fn arm(&self, session: &Arc<Session>, deadline: Instant) {
        let at = self.millis(deadline);
        if session.timed.fetch_min(at, Ordering::AcqRel) <= at {
            return;
        }
        let earliest = {
            let mut due = self.due();
            let earliest = due.peek().is_none_or(|d| at < d.at);
            due.push(Due {
                at,
                session: Arc::downgrade(session),
            });
            earliest
        };
        if earliest {
            self.earlier.notify_one();
        }
    }

    /// Wakes every session whose entry is due; returns when the next one is.
    pub(super) fn fire(&self) -> Option<Instant> {
        let now = self.millis(Instant::now());
        let mut fired = Vec::new();
        let next = {
            let mut due = self.due();
            while due.peek().is_some_and(|d| d.at <= now) {
                fired.extend(due.pop());
            }
            due.peek().map(|d| d.at)
        };
        for d in fired {
            if let Some(session) = d.session.upgrade() {
                session.timer_fired(d.at);
            }
        }
        next.map(|at| self.instant(at))
    }

    /// Entries in the heap (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.due().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_to_the_next_millisecond() {
        let holds = Holds::new();
        let check = |after: Duration, expected: u64| {
            let at = holds.millis(holds.epoch + after);
            assert_eq!(at, expected, "{after:?}");
            assert!(holds.instant(at) >= holds.epoch + after);
        };
        check(Duration::ZERO, 0);
        check(Duration::from_nanos(1), 1);
        check(Duration::from_millis(300), 300);
        check(Duration::from_micros(300_001), 301);
        // Before the epoch: due at once.
        assert_eq!(holds.millis(holds.epoch - Duration::from_millis(5)), 0);
    }

    #[test]
    fn the_heap_gives_the_earliest_first() {
        let mut heap = BinaryHeap::new();
        for at in [30, 10, 20] {
            heap.push(Due {
                at,
                session: Weak::new(),
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|d| d.at)).collect();
        assert_eq!(order, [10, 20, 30]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_is_armed_once_per_earlier_deadline() {
        let holds = Holds::new();
        let session = Arc::new(Session::for_tests());
        let now = Instant::now();
        holds.arm(&session, now + Duration::from_secs(25));
        // Later deadlines (the next connects of a client answered early) add nothing.
        holds.arm(&session, now + Duration::from_secs(26));
        holds.arm(&session, now + Duration::from_secs(27));
        assert_eq!(holds.len(), 1);
        // An earlier one (a client asking for a shorter timeout) does.
        holds.arm(&session, now + Duration::from_secs(1));
        assert_eq!(holds.len(), 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(holds.fire(), Some(now + Duration::from_secs(25)));
        assert_eq!(holds.len(), 1);
        // Fired: the session has an entry (at 25 s) but none it counts as its earliest, so
        // the delivery that wakes arms its own again.
        holds.arm(&session, now + Duration::from_secs(27));
        assert_eq!(holds.len(), 2);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(holds.fire(), None);
        assert_eq!(holds.len(), 0);
    }
}
