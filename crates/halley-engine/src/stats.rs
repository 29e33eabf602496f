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

/// What a node says of itself when asked ([`crate::control::Command::Stats`], for the live
/// dashboard): the engine's counters, and the gauges its embedder adds
/// ([`crate::Engine::set_gauges`]: the HTTP layer's open connections and subscribers by
/// transport). Counters are totals since the node started; whoever samples them makes rates.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NodeStats {
    /// Open client connections (the embedder's gauge).
    pub connections: u64,
    /// Open subscribers by transport name (the embedder's gauge), sorted by name.
    pub transports: Vec<(String, u64)>,
    pub subscriptions: u64,
    pub published: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub lagged: u64,
    pub gaps: u64,
    pub broker_errors: u64,
    /// The exact channels and patterns delivered the most messages on this node since it was
    /// last asked (busiest first, at most [`MAX_TRAFFIC_ROWS`]): name and messages
    /// ([`crate::Hub::traffic`]). Every node receives every message of a channel it has
    /// subscribers for, so nodes are not summed: each one's count is the channel's.
    pub traffic: Vec<(String, u64)>,
    /// The window `traffic` was counted over, in ms (0 when this node had not been asked
    /// before: no rate yet).
    pub traffic_ms: u64,
}

/// Most channels a node lists in its [`NodeStats::traffic`]: the dashboard shows ten, and a
/// few more let the busiest of several nodes still make the list. Bounds what every stats
/// answer carries, whatever the number of channels.
pub const MAX_TRAFFIC_ROWS: usize = 16;

/// Fills in what the embedder knows of this node ([`crate::Engine::set_gauges`]). Called for
/// each stats request (a dashboard's sample, or another node's), with no lock held; it must
/// only read counters.
pub type Gauges = Box<dyn Fn(&mut NodeStats) + Send + Sync>;

impl Stats {
    /// The engine's counters as a [`NodeStats`] (gauges left empty).
    pub fn node(&self) -> NodeStats {
        NodeStats {
            subscriptions: Stats::get(&self.subscriptions),
            published: Stats::get(&self.published),
            delivered: Stats::get(&self.delivered),
            dropped: Stats::get(&self.dropped),
            lagged: Stats::get(&self.lagged),
            gaps: Stats::get(&self.gaps),
            broker_errors: Stats::get(&self.broker_errors),
            ..NodeStats::default()
        }
    }
}
