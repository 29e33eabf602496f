//! `/healthz`, `/metrics` (Prometheus text format) and `/api/channels`.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::body::RequestBody;
use halley_engine::Stats;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::body::{Body, full};
use crate::error::ApiError;
use crate::metrics::Kind;
use crate::query::Query;
use crate::state::App;
use halley_engine::access::Action;

fn json(body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub fn healthz(app: &App) -> Response<Body> {
    let healthy = app.engine.healthy();
    let mut response =
        json(serde_json::json!({ "status": if healthy { "ok" } else { "degraded" } }).to_string());
    if !healthy {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    response
}

/// The exposition format is a handful of `name value` lines; writing them directly from the
/// atomics the engine already keeps avoids a metrics registry and its locking on the hot path.
pub fn metrics(app: &App) -> Response<Body> {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, value: i64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    let m = &app.metrics;
    let s = app.engine.stats();
    let counter = |c: &std::sync::atomic::AtomicU64| Stats::get(c) as i64;
    metric(
        "halley_connections",
        "gauge",
        "Open TCP connections.",
        m.connections.load(Ordering::Relaxed),
    );
    metric(
        "halley_connections_accepted_total",
        "counter",
        "TCP connections accepted.",
        counter(&m.accepted),
    );
    metric(
        "halley_connections_rejected_total",
        "counter",
        "Connections refused at the connection cap.",
        counter(&m.rejected),
    );
    metric(
        "halley_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed.",
        counter(&m.tls_handshake_failures),
    );
    metric(
        "halley_bad_requests_total",
        "counter",
        "Requests refused with a 4xx.",
        counter(&m.bad_requests),
    );
    metric(
        "halley_subscriptions",
        "gauge",
        "Open engine subscriptions.",
        counter(&s.subscriptions),
    );
    metric(
        "halley_messages_published_total",
        "counter",
        "Messages published.",
        counter(&s.published),
    );
    metric(
        "halley_messages_delivered_total",
        "counter",
        "Messages queued for local subscribers.",
        counter(&s.delivered),
    );
    metric(
        "halley_messages_written_direct_total",
        "counter",
        "Deliveries written whole to an idle subscriber's socket by the delivering loop itself.",
        counter(&s.written_direct),
    );
    metric(
        "halley_messages_dropped_total",
        "counter",
        "Queued messages discarded when their subscriber was cut off.",
        counter(&s.dropped),
    );
    metric(
        "halley_subscribers_lagged_total",
        "counter",
        "Subscribers cut off for falling behind.",
        counter(&s.lagged),
    );
    metric(
        "halley_resume_gaps_total",
        "counter",
        "Resumes that history could not cover.",
        counter(&s.gaps),
    );
    metric(
        "halley_broker_errors_total",
        "counter",
        "Broker (Redis) operations that failed.",
        counter(&s.broker_errors),
    );
    metric(
        "halley_auth_questions_total",
        "counter",
        "Questions put to the application (auth-url).",
        counter(&s.app_asked),
    );
    metric(
        "halley_auth_cached_total",
        "counter",
        "Questions for the application answered from its kept answers.",
        counter(&s.app_cached),
    );
    metric(
        "halley_auth_unavailable_total",
        "counter",
        "Callers refused (503) because the application could not be asked.",
        counter(&s.app_unavailable),
    );
    let o = &m.outcalls;
    metric(
        "halley_webhook_events_sent_total",
        "counter",
        "Webhook events the application took.",
        counter(&o.webhook_sent),
    );
    metric(
        "halley_webhook_events_failed_total",
        "counter",
        "Webhook events refused by the application or failing every attempt.",
        counter(&o.webhook_failed),
    );
    metric(
        "halley_webhook_events_dropped_total",
        "counter",
        "Webhook events dropped because the queue was full.",
        counter(&o.webhook_dropped),
    );
    metric(
        "halley_webhook_retries_total",
        "counter",
        "Webhook requests sent again after a failure.",
        counter(&o.webhook_retries),
    );
    metric(
        "halley_webhook_queued",
        "gauge",
        "Webhook events waiting to be sent.",
        o.webhook_queued.load(Ordering::Relaxed),
    );
    metric(
        "halley_rpc_answered_total",
        "counter",
        "RPC calls the application answered.",
        counter(&o.rpc_answered),
    );
    metric(
        "halley_rpc_failed_total",
        "counter",
        "RPC calls the application refused, failed, or did not answer in time.",
        counter(&o.rpc_failed),
    );
    metric(
        "halley_rpc_busy_total",
        "counter",
        "RPC calls refused at the concurrency bound.",
        counter(&o.rpc_busy),
    );
    metric(
        "halley_dashboard_watchers",
        "gauge",
        "Live dashboards open on this node (/api/dashboard).",
        app.dashboard.watchers() as i64,
    );
    metric(
        "halley_dashboard_sampling",
        "gauge",
        "1 while the dashboard's sampler runs (somebody watches), else 0.",
        i64::from(app.dashboard.sampling()),
    );
    let b = app.bayeux.stats();
    metric(
        "halley_bayeux_sessions",
        "gauge",
        "Bayeux sessions (handshaken, not yet expired or disconnected).",
        app.bayeux.session_count() as i64,
    );
    metric(
        "halley_bayeux_handshakes_total",
        "counter",
        "Bayeux sessions opened.",
        counter(&b.handshakes),
    );
    out.push_str("# HELP halley_bayeux_handshakes_refused_total Bayeux handshakes refused: after the first of a batch, over the source's rate, at the session cap.\n# TYPE halley_bayeux_handshakes_refused_total counter\n");
    for (reason, c) in [
        ("batch", &b.refused_batch),
        ("rate", &b.refused_rate),
        ("sessions", &b.refused_full),
    ] {
        let _ = writeln!(
            out,
            "halley_bayeux_handshakes_refused_total{{reason=\"{reason}\"}} {}",
            counter(c)
        );
    }
    out.push_str("# HELP halley_subscribers Open subscribers by transport.\n# TYPE halley_subscribers gauge\n");
    for kind in Kind::ALL {
        let _ = writeln!(
            out,
            "halley_subscribers{{transport=\"{}\"}} {}",
            kind.name(),
            m.subscribers(kind)
        );
    }
    histogram(
        &mut out,
        "halley_delivery_latency_seconds",
        "From publish to the write of a live message, by transport.",
        Kind::ALL.iter().map(|kind| {
            (
                kind.name(),
                crate::metrics::LATENCY.snapshot(*kind as usize),
            )
        }),
    );
    histogram(
        &mut out,
        "halley_client_latency_seconds",
        "From publish to arrival as browsers measured it (halley.js's reports), by the client's transport.",
        crate::metrics::CLIENT_TRANSPORTS
            .iter()
            .enumerate()
            .map(|(i, name)| (*name, crate::metrics::CLIENT_LATENCY.snapshot(i))),
    );
    let mut response = Response::new(full(out));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

pub async fn channels<B: RequestBody>(
    app: &App,
    request: &Request<B>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    app.allow(request.headers(), &query, Action::ListChannels)
        .await?;
    let rows = app
        .engine
        .channels(query.get("prefix").unwrap_or(""))
        .await?;
    let rows: Vec<_> = rows
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "channel": r.name,
                "subscribers": r.subscribers,
                "last_id": r.last_id.map(|id| id.to_string()),
            })
        })
        .collect();
    Ok(json(serde_json::Value::Array(rows).to_string()))
}

/// One Prometheus histogram on [`crate::metrics::LATENCY_BUCKETS_US`], a series per
/// `transport`: cumulative `_bucket`s with `le` in seconds, `_sum` in seconds, `_count`.
fn histogram<const B: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (&'static str, ([u64; B], u64, u64))>,
) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} histogram\n");
    for (transport, (counts, sum_us, count)) in series {
        let mut cumulative = 0;
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            match crate::metrics::LATENCY_BUCKETS_US.get(i) {
                Some(le) => {
                    let le = *le as f64 / 1e6;
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{transport=\"{transport}\",le=\"{le}\"}} {cumulative}"
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{transport=\"{transport}\",le=\"+Inf\"}} {cumulative}"
                    );
                }
            }
        }
        let sum = sum_us as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{transport=\"{transport}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{transport=\"{transport}\"}} {count}");
    }
}
