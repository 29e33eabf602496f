//! Client-to-application calls (`rpc_url`): what a client sends to `/service/**` over Bayeux
//! (CometD's `remoteCall`) or to `POST /rpc/{method}` is forwarded to the application with
//! the caller's identity, and the application's answer goes back to that client only.
//!
//! The policy decides a call as a client publish to `/service/{method}` (the same decision
//! for both ways in). Halley POSTs to `rpc_url`
//!
//! ```json
//! {"method":"users/find","channel":"/service/users/find","data":…,"user":"alice","info":{…},"client":"…"}
//! ```
//!
//! (`user` and `info` from the caller's token, `null` without; `client` the Bayeux clientId,
//! `null` over HTTP), signed like webhooks when `rpc-secret` is set. The application answers
//! 2xx `{"data": …}` (the caller gets the `data`), or a 4xx, optionally `{"error": "…"}`,
//! which the caller gets as it is (a refusal). Anything else is a failure of the application.
//!
//! | outcome | `POST /rpc/…` | Bayeux reply |
//! |---|---|---|
//! | answered | 200, the `data` as the body | `successful: true`, `data` |
//! | refused by the application (4xx) | that status, `{"error": …}` | `successful: false`, `4xx:/service/…:…` |
//! | the application failed (5xx, not JSON, answer over 64 KiB) | 502 | `502:…` |
//! | unreachable, or [`RpcConfig::concurrency`] calls already in flight | 503 | `503:…` |
//! | no answer within [`RpcConfig::timeout`] | 504 | `504:…` |
//!
//! Bounds: calls in flight server-wide ([`RpcConfig::concurrency`]; one more is refused at
//! once, never queued), per Bayeux WebSocket ([`MAX_CALLS_PER_CONNECTION`]), the request body
//! (the body limit), the answer ([`crate::outbound::MAX_ANSWER`]) and its time.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use halley_engine::access::{Action, Via};
use halley_engine::bayeux::{ServiceCall, ServiceError, Services, Session};
use halley_proto::{Channel, Payload};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use crate::body::{Body, RequestBody, full};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::outbound::{Endpoint, Outbound, OutboundError};
use crate::publish::read_body;
use crate::query::Query;
use crate::state::App;

/// How long the application has to answer a call by default. A call is a person waiting on a
/// click; beyond a few seconds they would rather be told it failed.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls in flight at once by default, server-wide. Each holds a connection to the application
/// ([`crate::outbound::MAX_IDLE_CONNECTIONS`] are kept for reuse); one more is refused at once
/// with 503, so a slow application costs callers an error, not a queue.
pub const DEFAULT_RPC_CONCURRENCY: usize = 64;

/// Calls in flight at once on one Bayeux WebSocket: its deliveries go on while they run, and
/// one client cannot take the server-wide bound alone. One more is answered at once with
/// `503`. (Long-polling answers a request's calls one after the other, and a native call is
/// one request.)
pub const MAX_CALLS_PER_CONNECTION: usize = 8;

/// Where and how calls go.
#[derive(Clone)]
pub struct RpcConfig {
    pub url: Endpoint,
    /// When set, each call is signed like a webhook (`X-Halley-Signature`), so that the
    /// application can tell Halley's calls (and the identities in them) from anyone else's.
    pub secret: Option<String>,
    /// Time allowed for the application's answer ([`DEFAULT_RPC_TIMEOUT`]).
    pub timeout: Duration,
    /// Calls in flight at most ([`DEFAULT_RPC_CONCURRENCY`]).
    pub concurrency: usize,
}

impl RpcConfig {
    pub fn new(url: Endpoint) -> RpcConfig {
        RpcConfig {
            url,
            secret: None,
            timeout: DEFAULT_RPC_TIMEOUT,
            concurrency: DEFAULT_RPC_CONCURRENCY,
        }
    }
}

impl std::fmt::Debug for RpcConfig {
    // The secret is not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcConfig")
            .field("url", &self.url)
            .field("signed", &self.secret.is_some())
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

/// Why a call has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    #[error("too many calls to the application in flight ({0}); retry later")]
    Busy(usize),
    #[error("the application is unreachable: {0}")]
    Down(Box<str>),
    #[error("the application did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the application failed: {0}")]
    Failed(Box<str>),
    /// The application answered with this 4xx and this reason. (Texts here are `Box<str>`:
    /// an `ApiError` is part of every request's future, and `String`s made it 8 bytes larger.)
    #[error("{1}")]
    Refused(StatusCode, Box<str>),
}

impl RpcError {
    pub fn status(&self) -> StatusCode {
        match self {
            RpcError::Busy(_) | RpcError::Down(_) => StatusCode::SERVICE_UNAVAILABLE,
            RpcError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            RpcError::Failed(_) => StatusCode::BAD_GATEWAY,
            RpcError::Refused(status, _) => *status,
        }
    }
}

impl From<RpcError> for ServiceError {
    fn from(e: RpcError) -> ServiceError {
        ServiceError {
            code: e.status().as_u16(),
            message: e.to_string(),
        }
    }
}

/// Who is calling, as the application is told.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    /// The token's `sub`.
    pub user: Option<&'a str>,
    /// The token's `info`, compact JSON.
    pub info: Option<&'a str>,
    /// The Bayeux clientId.
    pub client: Option<&'a str>,
}

/// The calls to `rpc_url`. Cheap to clone; also Bayeux's [`Services`].
#[derive(Clone)]
pub struct Rpc {
    shared: Arc<Shared>,
}

struct Shared {
    config: RpcConfig,
    outbound: Outbound,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Rpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shared.config.fmt(f)
    }
}

/// What is POSTed to the application.
#[derive(Serialize)]
struct CallBody<'a> {
    method: &'a str,
    channel: &'a str,
    data: &'a RawValue,
    user: Option<&'a str>,
    info: Option<&'a RawValue>,
    client: Option<&'a str>,
}

/// What the application answers.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<String>,
}

impl Rpc {
    pub fn new(config: RpcConfig, outbound: Outbound, metrics: Arc<Metrics>) -> Rpc {
        Rpc {
            shared: Arc::new(Shared {
                permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
                config,
                outbound,
                metrics,
            }),
        }
    }

    /// Starts a call of `channel` (a `/service/…` channel the policy allowed) with `data`
    /// (JSON text). Refused at once when the concurrency bound is reached; the call itself owns
    /// all it needs and ends within the timeout.
    pub fn start(
        &self,
        channel: &Channel,
        data: &str,
        caller: Caller<'_>,
    ) -> Result<impl Future<Output = Result<Box<RawValue>, RpcError>> + Send + 'static, RpcError>
    {
        let shared = self.shared.clone();
        let counters = &shared.metrics.outcalls;
        let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
            counters.rpc_busy.fetch_add(1, Ordering::Relaxed);
            return Err(RpcError::Busy(shared.config.concurrency));
        };
        let invalid = |what: &str| RpcError::Failed(format!("{what} is not JSON").into());
        let body = CallBody {
            method: channel
                .as_str()
                .strip_prefix("/service/")
                .unwrap_or(channel.as_str()),
            channel: channel.as_str(),
            data: serde_json::from_str(data).map_err(|_| invalid("the call's data"))?,
            user: caller.user,
            info: caller
                .info
                .map(serde_json::from_str)
                .transpose()
                .map_err(|_| invalid("the caller's info"))?,
            client: caller.client,
        };
        // Strings, options and raw JSON always serialise.
        let body = Bytes::from(serde_json::to_vec(&body).expect("a call serialises"));
        let headers: Vec<_> = shared
            .config
            .secret
            .as_deref()
            .map(|secret| crate::hooks::signature_header(secret, &body))
            .into_iter()
            .collect();
        Ok(async move {
            let _permit = permit;
            let answer = shared
                .outbound
                .post_json(&shared.config.url, &headers, body, shared.config.timeout)
                .await;
            let result = judge(answer);
            let counters = &shared.metrics.outcalls;
            match &result {
                Ok(_) => counters.rpc_answered.fetch_add(1, Ordering::Relaxed),
                Err(_) => counters.rpc_failed.fetch_add(1, Ordering::Relaxed),
            };
            if let Err(error) = &result {
                tracing::debug!(%error, "rpc call without an answer");
            }
            result
        })
    }
}

/// The caller's answer from the application's.
fn judge(
    answer: Result<crate::outbound::Answer, OutboundError>,
) -> Result<Box<RawValue>, RpcError> {
    let answer = match answer {
        Ok(answer) => answer,
        Err(OutboundError::Timeout(t)) => return Err(RpcError::Timeout(t)),
        Err(OutboundError::Unreachable(why)) => return Err(RpcError::Down(why.into())),
        Err(e @ OutboundError::TooLarge) => return Err(RpcError::Failed(e.to_string().into())),
    };
    let status = answer.status;
    if status.is_success() && answer.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RawValue::from_string("null".into()).expect("null is JSON"));
    }
    let parsed = serde_json::from_slice::<Answer<'_>>(&answer.body);
    if status.is_success() {
        let parsed = parsed.map_err(|_| {
            RpcError::Failed("its answer is not a JSON object ({\"data\": …})".into())
        })?;
        let data = parsed.data.map_or("null", RawValue::get);
        // Text that just parsed as JSON.
        return Ok(RawValue::from_string(data.to_owned()).expect("parsed JSON"));
    }
    if status.is_client_error() {
        let reason = parsed
            .ok()
            .and_then(|a| a.error)
            .unwrap_or_else(|| format!("the application refused the call (HTTP {status})"));
        return Err(RpcError::Refused(status, reason.into()));
    }
    Err(RpcError::Failed(format!("HTTP {status}").into()))
}

impl Services for Rpc {
    fn call(&self, session: &Session, channel: &Channel, data: &Payload) -> Option<ServiceCall> {
        let who = session.principal();
        let caller = Caller {
            user: who.user.as_deref(),
            info: who.info.as_deref(),
            client: Some(session.id()),
        };
        Some(match self.start(channel, data.json(), caller) {
            Ok(call) => Box::pin(async move { call.await.map_err(ServiceError::from) }),
            Err(e) => Box::pin(std::future::ready(Err(e.into()))),
        })
    }
}

/// `POST /rpc/{method}`: the body (JSON; empty is `null`) is the call's data; the answer is
/// the application's `data`.
pub async fn call<B: RequestBody>(
    app: &Arc<App>,
    method: &str,
    request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let channel = Channel::parse(&format!("/service{method}"))?;
    let who = app
        .allow(
            request.headers(),
            &query,
            Action::Publish(&channel, Via::Client),
        )
        .await?;
    let rpc = app
        .rpc
        .as_ref()
        .ok_or(ApiError::NotConfigured("RPC needs rpc-url"))?;
    let body = read_body(app, request).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the body must be JSON (UTF-8)".into()))?;
    let data = match text.trim() {
        "" => "null",
        json => {
            serde_json::from_str::<&RawValue>(json)
                .map_err(|e| ApiError::BadRequest(format!("the body must be JSON: {e}")))?;
            json
        }
    };
    let call = rpc.start(
        &channel,
        data,
        Caller {
            user: who.user.as_deref(),
            info: who.info.as_deref(),
            client: None,
        },
    )?;
    drop(who);
    let data = call.await?;
    let mut response = Response::new(full(Bytes::from(String::from(Box::<str>::from(data)))));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::Answer as Raw;

    fn check(status: u16, body: &str, expected: Result<&str, (u16, &str)>) {
        let answer = Ok(Raw {
            status: StatusCode::from_u16(status).unwrap(),
            body: Bytes::from(body.to_owned()),
        });
        let got = judge(answer)
            .map(|data| data.get().to_owned())
            .map_err(|e| (e.status().as_u16(), e.to_string()));
        let expected = expected
            .map(str::to_owned)
            .map_err(|(s, m)| (s, m.to_owned()));
        assert_eq!(got, expected, "{status} {body}");
    }

    #[test]
    fn answers_become_data_or_errors() {
        check(200, r#"{"data":{"n":1}}"#, Ok(r#"{"n":1}"#));
        check(204, "", Ok("null"));
        check(200, r#"{"other":1}"#, Ok("null"));
        check(
            200,
            "not json",
            Err((
                502,
                "the application failed: its answer is not a JSON object ({\"data\": …})",
            )),
        );
        check(403, r#"{"error":"not yours"}"#, Err((403, "not yours")));
        check(
            404,
            "",
            Err((404, "the application refused the call (HTTP 404 Not Found)")),
        );
        check(
            500,
            r#"{"data":1}"#,
            Err((
                502,
                "the application failed: HTTP 500 Internal Server Error",
            )),
        );
        assert_eq!(
            judge(Err(OutboundError::Timeout(Duration::from_secs(5))))
                .unwrap_err()
                .status(),
            504
        );
        assert_eq!(
            judge(Err(OutboundError::Unreachable("refused".into())))
                .unwrap_err()
                .status(),
            503
        );
    }
}
