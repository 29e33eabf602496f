//! The live dashboard's data: `GET /api/dashboard`, a stream of snapshots of the whole cluster
//! in Server-Sent Events framing (`event: stats`, one `data:` line of JSON per sample). The page
//! itself (`/dashboard`, `clients/js/dashboard/`) is an asset like the talk chat, the same for
//! everyone; what it shows comes only from here, for the backend key
//! (`halley_engine::access::Action::Control`, the policy's one decision; 401/403 otherwise).
//!
//! The page reads the stream with `fetch` so that the key travels in the `X-Halley-Key` header,
//! never in a URL that proxies and access logs keep (`EventSource` cannot send headers; `curl -N
//! -H 'X-Halley-Key: …'` can read it too).
//!
//! **Cost.** One sampler per server, started by the first watcher and gone a tick after the last
//! one left ([`Dashboard`]): nobody watching costs nothing but this struct. Every watcher gets
//! the same bytes (a `watch` channel keeps only the latest snapshot), so a watcher that stops
//! reading holds one snapshot, never a queue. A sample asks every node for its stats through the
//! control path ([`Command::Stats`]: a Redis round trip and the other nodes' answers, at most
//! the control timeout), lists channels and presence (`Engine::channels`, `Engine::presence`,
//! as `/api/channels` and `/api/presence` do), and keeps the previous sample of each node to
//! turn counters into rates.
//!
//! **The busiest channels** are ranked by traffic, then subscribers: each node's stats answer
//! names its busiest channels since it was last asked and the window (`NodeStats::traffic`,
//! counted per channel in the engine's registry, at most [`halley_engine::MAX_TRAFFIC_ROWS`]);
//! a channel's rate is the largest node's, since every node that has subscribers on a channel
//! receives all of its messages.
//!
//! Limits: [`SAMPLE_INTERVAL`], [`MAX_WATCHERS`], [`MAX_ROWS`], [`MAX_NODES_SHOWN`],
//! [`halley_engine::MAX_TRAFFIC_ROWS`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use halley_engine::access::Action;
use halley_engine::control::Command;
use halley_engine::{ChannelInfo, NodeStats};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::{Body, streaming};
use crate::error::ApiError;
use crate::metrics::Kind;
use crate::query::Query;
use crate::state::App;

/// How often the sampler takes a snapshot. A person watching a chart sees once a second as
/// live; each sample costs a control round trip to every node, so faster would load a cluster
/// for no one's benefit. A sample that takes longer (a node slow to answer) delays the next.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Most dashboards open at once on one node. A dashboard is an operator's tab; a handful is
/// plenty, and the bound keeps a leaked key from opening thousands. One more is refused (503).
pub const MAX_WATCHERS: usize = 8;

/// Rows of the busiest channels and of presence a snapshot carries. The page shows a top ten;
/// listings in full are `/api/channels` and `/api/presence`.
pub const MAX_ROWS: usize = 10;

/// Most nodes a snapshot describes one by one (the control path answers for at most 256).
/// The totals count every node that answered.
pub const MAX_NODES_SHOWN: usize = 64;

/// The dashboard's shared state, one per server ([`App::dashboard`]).
pub struct Dashboard {
    /// The latest snapshot, framed; every watcher holds a receiver.
    feed: watch::Sender<Option<Bytes>>,
    /// Whether a sampler task runs.
    sampling: AtomicBool,
}

impl Default for Dashboard {
    fn default() -> Dashboard {
        Dashboard {
            feed: watch::channel(None).0,
            sampling: AtomicBool::new(false),
        }
    }
}

impl Dashboard {
    /// Dashboards open on this node now (`/metrics`: `halley_dashboard_watchers`).
    pub fn watchers(&self) -> usize {
        self.feed.receiver_count()
    }

    /// Whether the sampler runs (`/metrics`: `halley_dashboard_sampling`): it stops within a
    /// [`SAMPLE_INTERVAL`] of the last watcher leaving.
    pub fn sampling(&self) -> bool {
        self.sampling.load(Ordering::Relaxed)
    }
}

/// What the HTTP layer adds to this node's stats when any node asks for them (the engine's
/// gauges): open connections, and subscribers by transport (Bayeux sessions as `bayeux`).
/// Holds the server weakly: the engine outlives nothing through it.
pub fn install(app: &Arc<App>) {
    let weak = Arc::downgrade(app);
    let gauges = Box::new(move |stats: &mut NodeStats| {
        let Some(app) = weak.upgrade() else {
            return;
        };
        let m = &app.metrics;
        stats.connections = m.connections.load(Ordering::Relaxed).max(0) as u64;
        let mut transports: Vec<(String, u64)> = Kind::ALL
            .iter()
            .filter(|k| **k != Kind::Refresh)
            .map(|k| (k.name().to_owned(), m.subscribers(*k).max(0) as u64))
            .collect();
        transports.push(("bayeux".to_owned(), app.bayeux.session_count() as u64));
        transports.sort();
        stats.transports = transports;
    });
    if app.engine.set_gauges(gauges).is_err() {
        tracing::debug!("dashboard: the engine has gauges already; nodes show its own");
    }
}

/// `GET /api/dashboard`: the snapshot stream (see the module docs).
pub async fn stream<B>(app: &Arc<App>, request: &Request<B>) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    app.allow(request.headers(), &query, Action::Control)
        .await?;
    if let Some(name) = query.names().find(|n| *n != "key") {
        return Err(ApiError::BadRequest(format!(
            "unknown parameter {name:?}: /api/dashboard takes none"
        )));
    }
    let dashboard = &app.dashboard;
    // Counted by the receivers themselves, so a watcher is counted exactly as long as it can
    // be sent to. Two arriving at once may both pass at MAX_WATCHERS - 1: bounded all the same.
    if dashboard.feed.receiver_count() >= MAX_WATCHERS {
        return Err(ApiError::Unavailable(format!(
            "{MAX_WATCHERS} dashboards are open on this node already"
        )));
    }
    let mut feed = dashboard.feed.subscribe();
    // The latest snapshot (if a sampler runs) goes out at once; then each new one.
    feed.mark_changed();
    start(app);
    let shutdown = app.shutdown.clone();
    let opening = Bytes::from_static(b": halley dashboard\n\n");
    let body = futures_util::stream::unfold(
        (Some(opening), feed, shutdown),
        |(opening, mut feed, shutdown)| async move {
            if let Some(opening) = opening {
                return Some((opening, (None, feed, shutdown)));
            }
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    changed = feed.changed() => changed.ok()?,
                }
                let latest = feed.borrow_and_update().clone();
                if let Some(frame) = latest {
                    return Some((frame, (None, feed, shutdown)));
                }
            }
        },
    );
    let mut response = Response::new(streaming(body));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    crate::transport::held_headers(headers, false);
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Starts the sampler unless one runs.
fn start(app: &Arc<App>) {
    if app.dashboard.sampling.swap(true, Ordering::SeqCst) {
        return;
    }
    let app_ = app.clone();
    app.tracker.spawn(async move {
        sample(&app_).await;
    });
}

/// Takes a snapshot every [`SAMPLE_INTERVAL`] for as long as somebody watches.
async fn sample(app: &Arc<App>) {
    let dashboard = &app.dashboard;
    let mut rates = Rates::default();
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = app.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if dashboard.feed.receiver_count() == 0 {
            // Nobody watches: stop. A watcher that subscribed meanwhile either sees the flag
            // down and starts a sampler of its own, or is seen here and this one goes on.
            dashboard.sampling.store(false, Ordering::SeqCst);
            if dashboard.feed.receiver_count() == 0
                || dashboard.sampling.swap(true, Ordering::SeqCst)
            {
                return;
            }
        }
        let snapshot = snapshot(app, &mut rates).await;
        let mut frame = String::with_capacity(snapshot.len() + 24);
        let _ = write!(frame, "event: stats\ndata: {snapshot}\n\n");
        dashboard.feed.send_replace(Some(Bytes::from(frame)));
    }
    dashboard.sampling.store(false, Ordering::SeqCst);
}

/// Each node's previous sample, to turn counters into rates.
#[derive(Default)]
struct Rates {
    previous: HashMap<String, (Instant, NodeStats)>,
}

impl Rates {
    /// Per-second rates of `stats` since this node's previous sample (`null` for the first).
    fn of(&mut self, node: &str, now: Instant, stats: &NodeStats) -> Value {
        let rates = match self.previous.get(node) {
            Some((then, before)) if now > *then => {
                let seconds = (now - *then).as_secs_f64();
                let rate = |now: u64, then: u64| {
                    // Counters restart with their node: a drop is a new node, not a rate.
                    let per_second = now.saturating_sub(then) as f64 / seconds;
                    (per_second * 10.0).round() / 10.0
                };
                json!({
                    "published": rate(stats.published, before.published),
                    "delivered": rate(stats.delivered, before.delivered),
                    "lagged": rate(stats.lagged, before.lagged),
                    "gaps": rate(stats.gaps, before.gaps),
                })
            }
            _ => Value::Null,
        };
        self.previous.insert(node.to_owned(), (now, stats.clone()));
        rates
    }

    /// Forgets the nodes not seen in the latest sample (gone, or not answering).
    fn keep(&mut self, seen: &[String]) {
        self.previous.retain(|node, _| seen.contains(node));
    }
}

/// One snapshot, as compact JSON (no newline: one `data:` line).
async fn snapshot(app: &App, rates: &mut Rates) -> String {
    let now = Instant::now();
    let mut errors: Vec<String> = Vec::new();
    let healthy = app.engine.healthy();
    // This node first (`here`), then the others as they answered.
    let mut nodes: Vec<(Option<String>, bool, NodeStats)> = Vec::new();
    let mut reached = 0;
    match app.engine.control(Command::Stats).await {
        Ok(report) => {
            let here = report.here.stats.unwrap_or_else(|| app.engine.node_stats());
            nodes.push((report.here.node, true, here));
            reached = report.remote.nodes;
            for answer in report.remote.answers {
                if let Some(stats) = answer.stats {
                    nodes.push((answer.node, false, stats));
                }
            }
            if let Some(e) = report.unreachable {
                errors.push(format!("other nodes not reached: {e}"));
            }
        }
        Err(e) => {
            // Not for a stats request (only a revocation can fail here); handled all the same.
            errors.push(format!("stats: {e}"));
            nodes.push((None, true, app.engine.node_stats()));
        }
    }
    let mut totals = NodeStats::default();
    let mut transports: Vec<(String, u64)> = Vec::new();
    let mut listed = Vec::new();
    let mut seen = Vec::new();
    // Messages a second per channel over each node's last window. Not summed: every node
    // receives every message of a channel it has subscribers for (`NodeStats::traffic`), so
    // each that counts one counts all of it; the largest is the latest whole window.
    let mut traffic: HashMap<&str, f64> = HashMap::new();
    let (mut published, mut delivered, mut lagged, mut gaps) = (0.0, 0.0, 0.0, 0.0);
    for (name, here, stats) in &nodes {
        let key = name.clone().unwrap_or_default();
        let rate = rates.of(&key, now, stats);
        seen.push(key);
        let r = |field: &str| rate[field].as_f64().unwrap_or(0.0);
        published += r("published");
        delivered += r("delivered");
        lagged += r("lagged");
        gaps += r("gaps");
        add(&mut totals, stats);
        if stats.traffic_ms > 0 {
            let seconds = stats.traffic_ms as f64 / 1000.0;
            for (channel, messages) in &stats.traffic {
                let rate = traffic.entry(channel.as_str()).or_insert(0.0);
                *rate = rate.max(*messages as f64 / seconds);
            }
        }
        for (transport, n) in &stats.transports {
            match transports.iter_mut().find(|(t, _)| t == transport) {
                Some((_, total)) => *total += n,
                None => transports.push((transport.clone(), *n)),
            }
        }
        if listed.len() < MAX_NODES_SHOWN {
            listed.push(json!({
                "node": name,
                "here": here,
                // Another node that answered is up; its broker spoke to ours through Redis.
                "healthy": if *here { healthy } else { true },
                "connections": stats.connections,
                "subscriptions": stats.subscriptions,
                "transports": object(&stats.transports),
                "published": stats.published,
                "delivered": stats.delivered,
                "dropped": stats.dropped,
                "lagged": stats.lagged,
                "gaps": stats.gaps,
                "broker_errors": stats.broker_errors,
                "rates": rate,
            }));
        }
    }
    rates.keep(&seen);
    transports.sort();
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let (channels, channel_count) = match app.engine.channels("").await {
        Ok(rows) => {
            let count = rows.len();
            // Busiest by traffic (messages a second), then by subscribers. Only channels the
            // listing has: a node's traffic names nothing `/api/channels` would not.
            let mut rows: Vec<_> = rows
                .into_iter()
                .map(|r| {
                    (
                        round(traffic.get(r.name.as_str()).copied().unwrap_or(0.0)),
                        r,
                    )
                })
                .collect();
            let order = |(ra, a): &(f64, ChannelInfo), (rb, b): &(f64, ChannelInfo)| {
                rb.total_cmp(ra)
                    .then(b.subscribers.cmp(&a.subscribers))
                    .then(a.name.cmp(&b.name))
            };
            // The top rows only: a selection (linear in the channels), then a sort of those;
            // sorting every channel for ten rows is not needed.
            if rows.len() > MAX_ROWS {
                rows.select_nth_unstable_by(MAX_ROWS, order);
                rows.truncate(MAX_ROWS);
            }
            rows.sort_by(order);
            let rows: Vec<Value> = rows
                .into_iter()
                .map(|(rate, r)| {
                    json!({
                        "channel": r.name,
                        "rate": rate,
                        "subscribers": r.subscribers,
                        "last_id": r.last_id.map(|id| id.to_string()),
                    })
                })
                .collect();
            (rows, count)
        }
        Err(e) => {
            errors.push(format!("channels: {e}"));
            (Vec::new(), 0)
        }
    };
    let (presence, present_channels, members) = match app.engine.presence("").await {
        Ok(mut rows) => {
            let count = rows.len();
            let members: usize = rows.iter().map(|(_, m)| m.len()).sum();
            rows.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
            rows.truncate(MAX_ROWS);
            let rows: Vec<Value> = rows
                .into_iter()
                .map(|(c, m)| json!({ "channel": c.as_str(), "members": m.len() }))
                .collect();
            (rows, count, members)
        }
        Err(e) => {
            errors.push(format!("presence: {e}"));
            (Vec::new(), 0, 0)
        }
    };
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json!({
        "time": time,
        "interval_ms": SAMPLE_INTERVAL.as_millis() as u64,
        "node": nodes.first().and_then(|(name, _, _)| name.clone()),
        "healthy": healthy,
        "errors": errors,
        "cluster": {
            // Nodes that answered (this one included), and those the stats request reached.
            "nodes": nodes.len(),
            "reached": reached + 1,
            "connections": totals.connections,
            "subscriptions": totals.subscriptions,
            "transports": object(&transports),
            "published": totals.published,
            "delivered": totals.delivered,
            "dropped": totals.dropped,
            "lagged": totals.lagged,
            "gaps": totals.gaps,
            "broker_errors": totals.broker_errors,
            "rates": {
                "published": round(published),
                "delivered": round(delivered),
                "lagged": round(lagged),
                "gaps": round(gaps),
            },
        },
        "nodes": listed,
        "channels": { "count": channel_count, "busiest": channels },
        "presence": { "channels": present_channels, "members": members, "busiest": presence },
    })
    .to_string()
}

fn add(totals: &mut NodeStats, stats: &NodeStats) {
    totals.connections += stats.connections;
    totals.subscriptions += stats.subscriptions;
    totals.published += stats.published;
    totals.delivered += stats.delivered;
    totals.dropped += stats.dropped;
    totals.lagged += stats.lagged;
    totals.gaps += stats.gaps;
    totals.broker_errors += stats.broker_errors;
}

fn object(pairs: &[(String, u64)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(*v)))
            .collect::<Map<_, _>>(),
    )
}
