//! Connection counters by transport, for `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Every way a subscriber can be connected; `/metrics` reports each.
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
