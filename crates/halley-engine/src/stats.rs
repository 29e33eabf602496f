use std::sync::atomic::{AtomicU64, Ordering};

/// Counters the engine keeps for `/metrics`. Relaxed atomics: they are statistics, not
/// synchronisation.
#[derive(Default, Debug)]
pub struct Stats {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    /// Deliveries written whole to the subscriber's socket by the delivering loop itself, its
    /// transport idle (`direct.rs`); the rest were queued for the transport to write.
    pub written_direct: AtomicU64,
    /// Messages discarded because their subscriber was cut off for lagging.
    pub dropped: AtomicU64,
    /// Subscribers cut off because their queue was full.
    pub lagged: AtomicU64,
    /// Resumes that could not be served without loss.
    pub gaps: AtomicU64,
    pub subscriptions: AtomicU64,
    /// Operations on the backing store (Redis) that failed: publishes and resumes refused as
    /// unavailable, lost connections, failed reconnects. Always 0 with the in-memory broker.
    pub broker_errors: AtomicU64,
    /// Questions put to the application (`auth-url`), answered from its cache, and those it
    /// could not answer (down, slow, busy: refused with 503).
    pub app_asked: AtomicU64,
    pub app_cached: AtomicU64,
    pub app_unavailable: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
