//! Webhooks: telling the application (`webhook_url`) what happened — members joining and
//! leaving, channels occupied and vacated, clients publishing where a namespace asks.
//!
//! [`Webhooks`] is the engine's [`Observer`]: `observe` puts the event in a bounded queue and
//! returns (never waiting, so a publish or a subscribe is never slowed by the application).
//! One task drains the queue in order: up to [`MAX_BATCH_EVENTS`] events per POST, body
//!
//! ```json
//! {"time_ms":1764547200000,"events":[{"name":"channel_occupied","channel":"/chat/a","time_ms":1764547199990}]}
//! ```
//!
//! signed with `X-Halley-Signature: sha256=<hex of HMAC-SHA256(secret, body)>`. A batch is
//! sent again, after an exponential backoff with jitter, when the application answers 5xx or
//! 429, times out or cannot be reached, up to `attempts` in all; any other non-2xx answer is a
//! refusal and is not retried. The next batch waits for the current one, so the application
//! receives events in the order they happened (per node), each batch once when it answers.
//!
//! What can be lost, and where it is counted (`/metrics`): events that find the queue full
//! ([`WebhookConfig::queue_size`] events, or [`MAX_QUEUE_BYTES`]) are dropped
//! (`halley_webhook_events_dropped_total`); a batch refused or failing every attempt is given
//! up (`halley_webhook_events_failed_total`). On shutdown what is queued is sent once, without
//! retries, within the drain timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use halley_engine::observe::{Event, Kinds, Observer};
use hmac::{KeyInit, Mac};
use hyper::StatusCode;
use hyper::header::{HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::outbound::{Endpoint, Outbound, OutboundError};

/// Events queued by default. Joins, leaves and occupancy changes come in bursts (a server
/// restart reconnects everyone); 10,000 is a few minutes of an application that is down for
/// a busy chat server, at ~0.3 KiB per event. Beyond it events are dropped and counted.
pub const DEFAULT_QUEUE_SIZE: usize = 10_000;

/// Most bytes of events queued (channels, infos, published data), whatever their number:
/// publish events carry their message, up to the body limit each, and 10,000 of those would be
/// 640 MiB. Beyond it events are dropped and counted.
pub const MAX_QUEUE_BYTES: usize = 32 * 1024 * 1024;

/// Most events in one POST: few requests under load, a body the application parses at once.
pub const MAX_BATCH_EVENTS: usize = 100;

/// How long one POST may take by default; then it counts as failed and is retried.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Attempts per batch by default, the first included. With the backoff below, a batch is
/// given up after ~7.5 s of waits plus the attempts' own time: an application restarting
/// loses nothing, one that is down for longer does not hold the queue for ever.
pub const DEFAULT_ATTEMPTS: u32 = 5;

/// Most attempts configurable: with the backoff cap, 10 is several minutes for one batch.
pub const MAX_ATTEMPTS: u32 = 10;

/// The wait before the first retry; it doubles for each next one, up to [`MAX_BACKOFF`], each
/// wait drawn between its half and its whole so that nodes do not retry in step.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-halley-signature";

/// Where and how to tell the application.
#[derive(Clone)]
pub struct WebhookConfig {
    pub url: Endpoint,
    /// The HMAC-SHA256 key of [`SIGNATURE_HEADER`]; the application checks it.
    pub secret: String,
    /// The kinds of events every channel reports unless its namespace says (`webhooks`).
    pub events: Kinds,
    /// Events queued at most ([`DEFAULT_QUEUE_SIZE`]).
    pub queue_size: usize,
    /// Time allowed for one POST ([`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// Attempts per batch, the first included ([`DEFAULT_ATTEMPTS`]).
    pub attempts: u32,
    /// The first retry's wait ([`FIRST_BACKOFF`]); tests shorten it.
    pub backoff: Duration,
}

impl WebhookConfig {
    /// Webhooks to `url` signed with `secret`, with the defaults.
    pub fn new(url: Endpoint, secret: impl Into<String>) -> WebhookConfig {
        WebhookConfig {
            url,
            secret: secret.into(),
            events: Kinds::DEFAULT,
            queue_size: DEFAULT_QUEUE_SIZE,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            backoff: FIRST_BACKOFF,
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    // The secret is not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("events", &self.events.names())
            .field("queue_size", &self.queue_size)
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` keyed with `secret`, as sent in
/// [`SIGNATURE_HEADER`] (webhooks, and RPC calls when `rpc-secret` is set).
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * digest.len());
    out.push_str("sha256=");
    for byte in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    out
}

/// The signature as a header, for [`Outbound::post_json`].
pub(crate) fn signature_header(secret: &str, body: &[u8]) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(SIGNATURE_HEADER),
        // `sha256=` and hex digits: always a valid header value.
        HeaderValue::from_str(&signature(secret, body)).expect("hex is a header value"),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An event waiting to be sent.
struct Queued {
    event: Event,
    time_ms: u64,
    /// What it counts against [`MAX_QUEUE_BYTES`].
    size: usize,
}

struct Shared {
    metrics: Arc<Metrics>,
    queued_bytes: AtomicUsize,
    /// Whether events are being dropped now: logged once when it starts, not per event.
    dropping: AtomicBool,
}

/// The engine's observer: queues events for the sending task. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    tx: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Starts the sending task on `tracker` (so that a drain waits for the last batch) and
    /// returns the observer to give the engine.
    pub fn spawn(
        config: WebhookConfig,
        outbound: Outbound,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Webhooks {
        let (tx, rx) = mpsc::channel(config.queue_size.max(1));
        let shared = Arc::new(Shared {
            metrics,
            queued_bytes: AtomicUsize::new(0),
            dropping: AtomicBool::new(false),
        });
        let sender = Sender {
            config,
            outbound,
            shared: shared.clone(),
            shutdown,
        };
        tracker.spawn(sender.run(rx));
        Webhooks { tx, shared }
    }

    fn drop_event(&self) {
        self.shared
            .metrics
            .outcalls
            .webhook_dropped
            .fetch_add(1, Ordering::Relaxed);
        if !self.shared.dropping.swap(true, Ordering::Relaxed) {
            tracing::warn!("webhook queue full: dropping events (counted in /metrics)");
        }
    }
}

/// Roughly what an event holds, in bytes.
fn size_of(event: &Event) -> usize {
    const OVERHEAD: usize = 96;
    OVERHEAD
        + event.channel().as_str().len()
        + match event {
            Event::MemberJoined { member, info, .. } | Event::MemberLeft { member, info, .. } => {
                member.len() + info.to_string().len()
            }
            Event::Occupied { .. } | Event::Vacated { .. } => 0,
            Event::Published {
                message,
                user,
                info,
            } => {
                message.data.json().len()
                    + user.as_deref().map_or(0, str::len)
                    + info.as_deref().map_or(0, str::len)
            }
        }
}

impl Observer for Webhooks {
    fn observe(&self, event: Event) {
        let size = size_of(&event);
        let bytes = &self.shared.queued_bytes;
        if bytes.fetch_add(size, Ordering::Relaxed) + size > MAX_QUEUE_BYTES {
            bytes.fetch_sub(size, Ordering::Relaxed);
            return self.drop_event();
        }
        let queued = Queued {
            event,
            time_ms: now_ms(),
            size,
        };
        match self.tx.try_send(queued) {
            Ok(()) => {
                self.shared
                    .metrics
                    .outcalls
                    .webhook_queued
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.dropping.store(false, Ordering::Relaxed);
            }
            Err(_) => {
                bytes.fetch_sub(size, Ordering::Relaxed);
                self.drop_event();
            }
        }
    }
}

/// The sending task's state.
struct Sender {
    config: WebhookConfig,
    outbound: Outbound,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Queued>) {
        let mut batch = Vec::with_capacity(MAX_BATCH_EVENTS);
        loop {
            if self.shutdown.is_cancelled() {
                // Draining: what is queued now, then stop.
                while batch.len() < MAX_BATCH_EVENTS
                    && let Ok(queued) = rx.try_recv()
                {
                    batch.push(queued);
                }
            } else {
                tokio::select! {
                    // Cancel-safe: nothing is lost when shutdown wins.
                    _ = rx.recv_many(&mut batch, MAX_BATCH_EVENTS) => {}
                    _ = self.shutdown.cancelled() => continue,
                }
            }
            if batch.is_empty() {
                return;
            }
            self.deliver(&batch).await;
            let bytes: usize = batch.iter().map(|q| q.size).sum();
            self.shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.shared
                .metrics
                .outcalls
                .webhook_queued
                .fetch_sub(batch.len() as i64, Ordering::Relaxed);
            batch.clear();
        }
    }

    /// Sends one batch until the application takes it, refuses it, or every attempt failed.
    async fn deliver(&self, batch: &[Queued]) {
        let body = encode(batch, now_ms());
        let headers = [signature_header(&self.config.secret, &body)];
        let count = batch.len() as u64;
        let counters = &self.shared.metrics.outcalls;
        let attempts = self.config.attempts.max(1);
        for attempt in 1..=attempts {
            if attempt > 1 {
                counters.webhook_retries.fetch_add(1, Ordering::Relaxed);
            }
            let answer = self
                .outbound
                .post_json(
                    &self.config.url,
                    &headers,
                    body.clone(),
                    self.config.timeout,
                )
                .await;
            let failure = match answer {
                Ok(answer) if answer.status.is_success() => None,
                // The application took the batch; only its answer was too long to read.
                Err(OutboundError::TooLarge) => None,
                Ok(answer)
                    if answer.status.is_server_error()
                        || answer.status == StatusCode::TOO_MANY_REQUESTS =>
                {
                    Some(format!("HTTP {}", answer.status))
                }
                Ok(answer) => {
                    counters.webhook_failed.fetch_add(count, Ordering::Relaxed);
                    tracing::warn!(status = %answer.status, events = count, "webhook refused by the application; not retried");
                    return;
                }
                Err(error) => Some(error.to_string()),
            };
            let Some(failure) = failure else {
                counters.webhook_sent.fetch_add(count, Ordering::Relaxed);
                return;
            };
            if attempt == attempts || self.shutdown.is_cancelled() {
                counters.webhook_failed.fetch_add(count, Ordering::Relaxed);
                tracing::warn!(%failure, attempts = attempt, events = count, "webhook batch given up");
                return;
            }
            tracing::debug!(%failure, attempt, "webhook failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(self.backoff(attempt)) => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
    }

    /// The wait after failed attempt number `attempt` (1-based).
    fn backoff(&self, attempt: u32) -> Duration {
        let full = self
            .config
            .backoff
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(MAX_BACKOFF);
        full / 2 + full.mul_f64(rand::random::<f64>() / 2.0)
    }
}

/// One event as sent.
#[derive(Serialize)]
struct Wire<'a> {
    name: &'static str,
    channel: &'a str,
    time_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    member: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<Info<'a>>,
}

/// Presence info is a value; a token's info is kept as its JSON text.
#[derive(Serialize)]
#[serde(untagged)]
enum Info<'a> {
    Value(&'a Value),
    Raw(&'a RawValue),
}

/// JSON text the engine already checked, as a raw value (`null` should it not parse).
fn raw(json: &str) -> &RawValue {
    serde_json::from_str(json).unwrap_or_else(|_| {
        // "null" is JSON.
        serde_json::from_str("null").expect("null is JSON")
    })
}

/// The request body for `batch`, sent at `time_ms`.
fn encode(batch: &[Queued], time_ms: u64) -> Bytes {
    #[derive(Serialize)]
    struct Body<'a> {
        time_ms: u64,
        events: Vec<Wire<'a>>,
    }
    let events = batch
        .iter()
        .map(|q| {
            let mut wire = Wire {
                name: "",
                channel: q.event.channel().as_str(),
                time_ms: q.time_ms,
                member: None,
                id: None,
                data: None,
                user: None,
                info: None,
            };
            match &q.event {
                Event::MemberJoined { member, info, .. }
                | Event::MemberLeft { member, info, .. } => {
                    wire.name = if matches!(q.event, Event::MemberJoined { .. }) {
                        "member_added"
                    } else {
                        "member_removed"
                    };
                    wire.member = Some(member);
                    wire.info = Some(Info::Value(info));
                }
                Event::Occupied { .. } => wire.name = "channel_occupied",
                Event::Vacated { .. } => wire.name = "channel_vacated",
                Event::Published {
                    message,
                    user,
                    info,
                } => {
                    wire.name = "client_publish";
                    wire.id = Some(message.id.to_string());
                    wire.data = Some(raw(message.data.json()));
                    wire.user = user.as_deref();
                    wire.info = info.as_deref().map(|i| Info::Raw(raw(i)));
                }
            }
            wire
        })
        .collect();
    // Serialising strings, numbers and raw JSON cannot fail.
    let body = serde_json::to_vec(&Body { time_ms, events }).expect("events serialise");
    Bytes::from(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hex_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn events_are_encoded_with_their_names() {
        let channel = halley_proto::Channel::parse("/chat/a").unwrap();
        let q = |event| Queued {
            event,
            time_ms: 7,
            size: 0,
        };
        let batch = [
            q(Event::Occupied {
                channel: channel.clone(),
            }),
            q(Event::MemberJoined {
                channel: channel.clone(),
                member: "m-1".into(),
                info: serde_json::json!({"name": "alice"}),
            }),
            q(Event::Vacated { channel }),
        ];
        let body: Value = serde_json::from_slice(&encode(&batch, 9)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"time_ms": 9, "events": [
                {"name": "channel_occupied", "channel": "/chat/a", "time_ms": 7},
                {"name": "member_added", "channel": "/chat/a", "time_ms": 7, "member": "m-1", "info": {"name": "alice"}},
                {"name": "channel_vacated", "channel": "/chat/a", "time_ms": 7},
            ]})
        );
    }
}
