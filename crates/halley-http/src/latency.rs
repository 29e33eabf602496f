//! `POST /api/latency?channel=…`: what browsers saw. halley.js times its own publishes from the
//! call to the message's arrival on its subscription (its `latency` event) and, when asked to
//! (`latencyReport`), sends batches of those figures here; they go into
//! `halley_client_latency_seconds{transport}` in `/metrics` (`metrics::CLIENT_LATENCY`),
//! beside the server's own publish→write histogram.
//!
//! The body is `{"transport": "sse", "ms": [12.5, 30]}`: one of halley.js's transports
//! (`metrics::CLIENT_TRANSPORTS`) and 1 to [`MAX_SAMPLES`] figures in milliseconds,
//! each finite and from 0 to [`MAX_SAMPLE_MS`]. Anything else is refused whole (400, 413 for a
//! body over [`MAX_BODY`]); nothing of a refused report is counted.
//!
//! The report is about one channel, and the caller must be allowed to subscribe to it
//! (`Action::Subscribe`, the policy's one decision): the figures are deliveries the caller
//! received there. On an open server anyone may report.
//!
//! Limits: a source (an IPv4 address or IPv6 /64, behind trusted proxies the client's) may
//! send [`REPORTS_PER_SECOND`] a second with bursts of [`BURST_SECONDS`] of them (429 beyond),
//! in a table of at most [`MAX_SOURCES`] sources; so one client cannot flood the histogram,
//! and the cost of a report is bounded by [`MAX_BODY`] and [`MAX_SAMPLES`].

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use halley_engine::access::Action;
use halley_engine::sources::Sources;
use halley_proto::{Channel, Pattern};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response};
use serde_json::Value;

use crate::body::{Body, RequestBody, full};
use crate::error::ApiError;
use crate::metrics::{CLIENT_LATENCY, CLIENT_TRANSPORTS};
use crate::publish::read_body_within;
use crate::query::Query;
use crate::server::Peer;
use crate::state::App;

/// Most figures in one report: halley.js sends at most this many (it remembers no more
/// between reports). A batch, not a log.
pub const MAX_SAMPLES: usize = 64;

/// Largest figure taken, in milliseconds. The histogram's last bound is 10 s; a figure beyond a
/// minute is a client that was asleep or offline, not a delivery.
pub const MAX_SAMPLE_MS: f64 = 60_000.0;

/// Largest report body: 64 figures of a dozen characters and the transport fit in a quarter
/// of it.
pub const MAX_BODY: usize = 4096;

/// Reports a second per source once its burst is spent. halley.js sends one every
/// `latencyReport` seconds (10 by default), so one a second leaves room for a few clients
/// behind one address.
pub const REPORTS_PER_SECOND: u32 = 1;

/// Seconds of reports a source may send at once: its bucket holds
/// `REPORTS_PER_SECOND × BURST_SECONDS`, for an office behind one NAT.
pub const BURST_SECONDS: u32 = 30;

/// Most sources whose report counts are kept (~50 bytes each); an entry leaves once its bucket
/// has refilled. With the table full of sources still refilling, a new source is refused (429).
pub const MAX_SOURCES: usize = 10_000;

/// The per-source report buckets (`App::latency`).
pub struct Reports {
    sources: Mutex<Sources>,
}

impl Default for Reports {
    fn default() -> Reports {
        Reports {
            sources: Mutex::new(Sources::bounded(
                REPORTS_PER_SECOND,
                BURST_SECONDS,
                MAX_SOURCES,
            )),
        }
    }
}

/// `POST /api/latency`: see the module docs.
pub async fn report<B: RequestBody>(
    app: &Arc<App>,
    request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    if let Some(name) = query
        .names()
        .find(|n| !matches!(*n, "channel" | "key" | "token"))
    {
        return Err(ApiError::BadRequest(format!(
            "unknown parameter {name:?}: /api/latency takes channel"
        )));
    }
    let channel = query
        .get("channel")
        .ok_or_else(|| ApiError::BadRequest("/api/latency needs ?channel=".into()))?;
    let channel = Channel::parse(channel)?;
    // Counted before the policy is asked, so that a flood costs no call to the application.
    // A request without a peer address (none on this path today) shares the unspecified one.
    let source = Peer::client(&request, &app.config.trusted_proxies)
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let taken = app
        .latency
        .sources
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(source, tokio::time::Instant::now());
    if let Err(wait) = taken {
        let mut refused = ApiError::TooManyRequests(format!(
            "too many latency reports from this address; again in {} ms",
            wait.as_millis().max(1)
        ))
        .into_response();
        // RFC 9110 §10.2.3: whole seconds, rounded up.
        let seconds = wait.as_millis().div_ceil(1000).max(1);
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            refused.headers_mut().insert(RETRY_AFTER, value);
        }
        return Ok(refused);
    }
    app.allow(
        request.headers(),
        &query,
        Action::Subscribe(&Pattern::Exact(channel)),
    )
    .await?;
    let body = read_body_within(request, MAX_BODY).await?;
    let (transport, samples) = parse(&body)?;
    for ms in &samples {
        CLIENT_LATENCY.observe(transport, (ms * 1000.0).round() as u64);
    }
    let answer = serde_json::json!({ "recorded": samples.len() }).to_string();
    let mut response = Response::new(full(Bytes::from(answer)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// A report's transport (its index in [`CLIENT_TRANSPORTS`]) and figures, or why not.
fn parse(body: &[u8]) -> Result<(usize, Vec<f64>), ApiError> {
    let bad = |why: String| ApiError::BadRequest(why);
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body must be JSON: {e}")))?;
    let Value::Object(report) = value else {
        return Err(bad(r#"the body must be {"transport": …, "ms": […]}"#.into()));
    };
    if let Some(key) = report
        .keys()
        .find(|k| !matches!(k.as_str(), "transport" | "ms"))
    {
        return Err(bad(format!(
            "unknown field {key:?}: a report has transport and ms"
        )));
    }
    let transport = report
        .get("transport")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("transport must be a string".into()))?;
    let transport = CLIENT_TRANSPORTS
        .iter()
        .position(|t| *t == transport)
        .ok_or_else(|| {
            bad(format!(
                "unknown transport {transport:?}: one of {}",
                CLIENT_TRANSPORTS.join(", ")
            ))
        })?;
    let ms = report
        .get("ms")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("ms must be an array of milliseconds".into()))?;
    if ms.is_empty() || ms.len() > MAX_SAMPLES {
        return Err(bad(format!(
            "ms must hold 1 to {MAX_SAMPLES} figures, not {}",
            ms.len()
        )));
    }
    let samples = ms
        .iter()
        .map(|v| match v.as_f64() {
            Some(x) if x.is_finite() && (0.0..=MAX_SAMPLE_MS).contains(&x) => Ok(x),
            _ => Err(bad(format!(
                "every figure in ms must be a number of milliseconds from 0 to {MAX_SAMPLE_MS}, not {v}"
            ))),
        })
        .collect::<Result<Vec<f64>, ApiError>>()?;
    Ok((transport, samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expected: Result<(usize, Vec<f64>), &str>) {
        match (parse(body.as_bytes()), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{body}"),
            (Err(e), Err(part)) => assert!(e.to_string().contains(part), "{body}: {e}"),
            (got, want) => panic!("{body}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn reports() {
        check(
            r#"{"transport":"sse","ms":[1.5,0,60000]}"#,
            Ok((1, vec![1.5, 0.0, 60000.0])),
        );
        check(r#"{"ms":[3],"transport":"poll"}"#, Ok((5, vec![3.0])));
        check(
            r#"{"transport":"carrier-pigeon","ms":[1]}"#,
            Err("unknown transport"),
        );
        check(r#"{"transport":"gif","ms":[1]}"#, Err("unknown transport"));
        check(r#"{"transport":"sse","ms":[]}"#, Err("1 to 64"));
        let many = vec!["1"; 65].join(",");
        check(
            &format!(r#"{{"transport":"sse","ms":[{many}]}}"#),
            Err("1 to 64"),
        );
        check(r#"{"transport":"sse","ms":[-1]}"#, Err("from 0 to"));
        check(r#"{"transport":"sse","ms":[60000.5]}"#, Err("from 0 to"));
        check(r#"{"transport":"sse","ms":[1e400]}"#, Err("JSON"));
        check(r#"{"transport":"sse","ms":[NaN]}"#, Err("JSON"));
        check(r#"{"transport":"sse","ms":["1"]}"#, Err("from 0 to"));
        check(
            r#"{"transport":"sse","ms":[1],"channel":"/a"}"#,
            Err("unknown field"),
        );
        check(r#"{"transport":5,"ms":[1]}"#, Err("transport must be"));
        check(r#"[1]"#, Err("the body must be"));
        check("", Err("JSON"));
    }
}
