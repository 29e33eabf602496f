//! What every handler reaches: [`App`], the server's shared state, and the one way a handler
//! asks the access policy ([`App::admit`], [`App::authorize`]). Handlers import this module, never
//! the router.

use std::sync::Arc;

use halley_engine::Engine;
use halley_engine::access::{Action, Credentials, Identity, Policy, Principal, Verdict};
use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, COOKIE, ORIGIN};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::HttpConfig;
use crate::cors::Origins;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::query::Query;

/// What every request handler can reach.
pub struct App {
    pub engine: Engine,
    pub bayeux: halley_engine::bayeux::Bayeux,
    pub config: HttpConfig,
    pub origins: Origins,
    pub metrics: Arc<Metrics>,
    /// Ticks every heartbeat interval; every open stream watches it (one timer for all).
    pub heartbeat: watch::Receiver<()>,
    /// Cancelled when the server starts draining: held responses end with reconnect advice.
    pub shutdown: CancellationToken,
    /// Tasks that outlive their HTTP connection (upgraded WebSockets) and the connections
    /// themselves, so that a drain can wait for them.
    pub tracker: tokio_util::task::TaskTracker,
    /// Calls to the application's `rpc_url`, when configured (`POST /rpc/…`; Bayeux's
    /// `/service/**` through the same bound when the server built its Bayeux).
    pub rpc: Option<crate::rpc::Rpc>,
    /// The live dashboard's sampler and its watchers (`/api/dashboard`).
    pub dashboard: crate::dashboard::Dashboard,
    /// The certificate TLS presents, when configured: on the one port (a connection that opens
    /// with a TLS handshake) and on the TLS-only listener.
    pub tls: Option<crate::tls::Tls>,
    /// Latency reports' per-source buckets (`POST /api/latency`).
    pub latency: crate::latency::Reports,
}

/// The credentials an HTTP request carries: the backend key in `X-Halley-Key` or `?key=`, a
/// token in `Authorization: Bearer` or `?token=` (for what cannot send headers: EventSource,
/// JSONP, iframes, multipart, the script tag); and what the application may recognise the
/// caller by (`Cookie`, `Authorization`, `Origin`), which the policy keeps only when a
/// namespace asks the application.
pub fn credentials<'a>(headers: &'a HeaderMap, query: &'a Query) -> Credentials<'a> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let key = headers
        .get("x-halley-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| query.get("key"));
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    Credentials {
        key,
        token: bearer.or_else(|| query.get("token")),
        cookie: header(COOKIE),
        authorization: header(AUTHORIZATION),
        origin: header(ORIGIN),
    }
}

impl App {
    pub fn policy(&self) -> &Policy {
        self.engine.policy()
    }

    /// Who sent this request. A bad credential is refused here (401), before anything else is
    /// looked at; no credential is the anonymous caller.
    pub fn admit(&self, headers: &HeaderMap, query: &Query) -> Result<Principal, ApiError> {
        Ok(self.policy().authenticate(credentials(headers, query))?)
    }

    /// What the policy alone says of `who` doing `action`: yes, no, or ask the application
    /// ([`App::authorize`] does). For entry points that decide before any future exists.
    pub fn judge(&self, who: &Identity, action: Action<'_>) -> Result<Verdict, ApiError> {
        Ok(self.policy().judge(who, action)?)
    }

    /// May `who` do `action`? Every entry point asks this (or [`App::judge`], then this for
    /// what the application decides); no handler decides on its own. On yes, who the caller
    /// is from now on (with what the application vouched for, if it was asked).
    pub async fn authorize(
        &self,
        who: &Principal,
        action: Action<'_>,
    ) -> Result<Principal, ApiError> {
        Ok(self.engine.authorize(who, action).await?)
    }

    /// [`App::admit`] then [`App::authorize`], for a request that does one thing.
    pub async fn allow(
        &self,
        headers: &HeaderMap,
        query: &Query,
        action: Action<'_>,
    ) -> Result<Principal, ApiError> {
        let who = self.admit(headers, query)?;
        self.authorize(&who, action).await
    }
}
