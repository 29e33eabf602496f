//! Connection counters by transport, for `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Every way a subscriber can be connected; `/metrics` reports each. Bayeux's connection types
/// count as the transport they ride on: `long-polling` as [`Kind::LongPoll`],
/// `callback-polling` as [`Kind::Jsonp`], `websocket` as [`Kind::WebSocket`], Faye's
/// `eventsource` as [`Kind::Sse`]; rupy's `/pull` is [`Kind::Pull`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    LongPoll,
    Jsonp,
    Stream,
    Iframe,
    Multipart,
    Sse,
    WebSocket,
    Pull,
    /// Opera's original event-source (`application/x-dom-event-stream`).
    DomEvents,
    /// Client pull (`transport=refresh`): answered at once, never open, so always 0.
    Refresh,
    Gif,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::LongPoll,
        Kind::Jsonp,
        Kind::Stream,
        Kind::Iframe,
        Kind::Multipart,
        Kind::Sse,
        Kind::WebSocket,
        Kind::Pull,
        Kind::DomEvents,
        Kind::Refresh,
        Kind::Gif,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::LongPoll => "longpoll",
            Kind::Jsonp => "jsonp",
            Kind::Stream => "stream",
            Kind::Iframe => "iframe",
            Kind::Multipart => "multipart",
            Kind::Sse => "sse",
            Kind::WebSocket => "websocket",
            Kind::Pull => "pull",
            Kind::DomEvents => "dom-events",
            Kind::Refresh => "refresh",
            Kind::Gif => "gif",
        }
    }
}

#[derive(Default, Debug)]
pub struct Metrics {
    /// Open TCP connections.
    pub connections: AtomicI64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections refused with 503 because the connection cap was reached.
    pub rejected: AtomicU64,
    /// Requests answered with a 4xx because of bad input.
    pub bad_requests: AtomicU64,
    /// TLS handshakes that failed (a client that does not trust the certificate, speaks no
    /// TLS, or offers nothing in common); handshakes that timed out are not counted.
    pub tls_handshake_failures: AtomicU64,
    subscribers: [AtomicI64; Kind::ALL.len()],
    /// Webhooks and RPC: what the calls to the application did.
    pub outcalls: Outcalls,
}

/// What the calls to the application did (`hooks`, `rpc`).
#[derive(Default, Debug)]
pub struct Outcalls {
    /// Webhook events the application took (a 2xx answer to their batch).
    pub webhook_sent: AtomicU64,
    /// Webhook events given up on: their batch was refused (not 2xx, not retried) or failed
    /// every attempt.
    pub webhook_failed: AtomicU64,
    /// Webhook events dropped because the queue was full (events or bytes).
    pub webhook_dropped: AtomicU64,
    /// Webhook requests sent again after a failure.
    pub webhook_retries: AtomicU64,
    /// Webhook events waiting in the queue or being sent.
    pub webhook_queued: AtomicI64,
    /// RPC calls the application answered (2xx).
    pub rpc_answered: AtomicU64,
    /// RPC calls that got no answer: the application refused (4xx), failed (5xx, a bad
    /// answer), was unreachable or too slow.
    pub rpc_failed: AtomicU64,
    /// RPC calls refused at once because the concurrency bound was reached.
    pub rpc_busy: AtomicU64,
}

impl Metrics {
    pub fn subscribers(&self, kind: Kind) -> i64 {
        self.subscribers[kind as usize].load(Ordering::Relaxed)
    }
}

/// Counts one open subscriber of a transport for as long as it lives.
pub struct Open {
    metrics: Arc<Metrics>,
    kind: Kind,
}

impl Open {
    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn new(metrics: &Arc<Metrics>, kind: Kind) -> Open {
        metrics.subscribers[kind as usize].fetch_add(1, Ordering::Relaxed);
        Open {
            metrics: metrics.clone(),
            kind,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.subscribers[self.kind as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Publish→write latency by transport: from the moment a message was published (its broker's
/// clock: this process's, or Redis's `TIME` on a cluster) to the moment a transport hands its
/// frame to the socket, for messages delivered live, once per subscriber (a replay's,
/// `recent`'s and a Bayeux ack resend's are not counted). `/metrics` shows it as a Prometheus histogram per transport
/// (`halley_delivery_latency_seconds`). Process-wide, so that a socket lent to the hub for
/// direct writes carries no reference to it (each word of an idle connection counts).
pub static LATENCY: Latency = Histogram::new();

/// What browsers saw: the end-to-end latency of their own publishes that halley.js measured and
/// reported (`POST /api/latency`, `crate::latency`), by the client's transport
/// ([`CLIENT_TRANSPORTS`]). `/metrics`: `halley_client_latency_seconds`.
pub static CLIENT_LATENCY: ClientLatency = Histogram::new();

/// halley.js's transports (its `TRANSPORTS`), the labels of [`CLIENT_LATENCY`]. `poll` is its
/// interval polling.
pub const CLIENT_TRANSPORTS: [&str; 6] =
    ["websocket", "sse", "stream", "longpoll", "jsonp", "poll"];

/// Upper bounds of the histogram's buckets, in microseconds (the last bucket is everything
/// above: `+Inf`). From a tenth of a millisecond (a quiet server's single write) to ten
/// seconds (a subscriber's socket that could not take a broadcast for that long).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Shards of the counters: writes on different threads (a broadcast spread over the workers)
/// increment different cache lines. Each thread keeps to one.
const SHARDS: usize = 4;

const BUCKETS: usize = LATENCY_BUCKETS_US.len() + 1;

/// The server's latency histogram, one series per [`Kind`].
pub type Latency = Histogram<{ Kind::ALL.len() }>;

/// The browsers' latency histogram, one series per [`CLIENT_TRANSPORTS`] entry.
pub type ClientLatency = Histogram<{ CLIENT_TRANSPORTS.len() }>;

/// `N` latency histograms (one per label value) on [`LATENCY_BUCKETS_US`], sharded.
pub struct Histogram<const N: usize> {
    shards: [Shard<N>; SHARDS],
}

/// One shard: per label, the buckets, the sum (µs) and the count.
#[repr(align(128))]
struct Shard<const N: usize> {
    counts: [[AtomicU64; BUCKETS]; N],
    sums_us: [AtomicU64; N],
}

impl<const N: usize> Shard<N> {
    const fn new() -> Shard<N> {
        Shard {
            counts: [const { [const { AtomicU64::new(0) }; BUCKETS] }; N],
            sums_us: [const { AtomicU64::new(0) }; N],
        }
    }
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Histogram<N> {
        Histogram::new()
    }
}

impl<const N: usize> std::fmt::Debug for Histogram<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Histogram")
    }
}

/// Now, Unix microseconds.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl<const N: usize> Histogram<N> {
    pub const fn new() -> Histogram<N> {
        Histogram {
            shards: [const { Shard::new() }; SHARDS],
        }
    }

    /// Counts one observation of `took_us` µs for label `label` (< `N`).
    pub fn observe(&self, label: usize, took_us: u64) {
        let bucket = LATENCY_BUCKETS_US.partition_point(|&le| le < took_us);
        let shard = &self.shards[shard()];
        shard.counts[label][bucket].fetch_add(1, Ordering::Relaxed);
        shard.sums_us[label].fetch_add(took_us, Ordering::Relaxed);
    }

    /// Per bucket (not cumulative), the sum in µs and the count, for `label`, over all shards.
    pub fn snapshot(&self, label: usize) -> ([u64; BUCKETS], u64, u64) {
        let mut counts = [0u64; BUCKETS];
        let mut sum = 0;
        for shard in &self.shards {
            for (i, c) in shard.counts[label].iter().enumerate() {
                counts[i] += c.load(Ordering::Relaxed);
            }
            sum += shard.sums_us[label].load(Ordering::Relaxed);
        }
        let count = counts.iter().sum();
        (counts, sum, count)
    }
}

impl Latency {
    /// Counts one message of `kind` written at `now_us` (Unix µs), published at
    /// `published_us` (when known). A clock that went back counts as 0.
    pub fn record(&self, kind: Kind, published_us: Option<u64>, now_us: u64) {
        let Some(published) = published_us else {
            return;
        };
        self.observe(kind as usize, now_us.saturating_sub(published));
    }
}

/// This thread's shard: threads take them in turn.
fn shard() -> usize {
    use std::cell::Cell;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) as usize % SHARDS);
        }
        s.get()
    })
}

#[cfg(test)]
mod latency_tests {
    use super::*;

    #[test]
    fn buckets_sums_and_counts() {
        let l = Latency::new();
        l.record(Kind::Sse, Some(1_000), 1_050); // 50 µs: the first bucket
        l.record(Kind::Sse, Some(1_000), 1_000 + 100); // on a bound: that bucket
        l.record(Kind::Sse, Some(1_000), 1_000 + 3_000); // 3 ms: le 5 ms
        l.record(Kind::Sse, Some(5_000), 1_000); // a clock that went back: 0
        l.record(Kind::Sse, None, 1_000); // unknown: not counted
        l.record(Kind::Sse, Some(0), 20_000_000); // above every bound: +Inf
        let (counts, sum, count) = l.snapshot(Kind::Sse as usize);
        assert_eq!(count, 5);
        assert_eq!(counts[0], 3);
        assert_eq!(counts[5], 1);
        assert_eq!(counts[BUCKETS - 1], 1);
        assert_eq!(sum, 50 + 100 + 3_000 + 20_000_000);
        assert_eq!(l.snapshot(Kind::WebSocket as usize).2, 0);
    }
}
