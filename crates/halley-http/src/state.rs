//! What every handler reaches: [`App`], the server's shared state, and the one way a handler
//! asks the access policy ([`App::admit`], [`App::decide`]). Handlers import this module, never
//! the router.

use std::sync::Arc;

use halley_engine::Engine;
use halley_engine::access::{Action, Credentials, Identity, Policy, Principal};
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
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
    /// Per browser (`BAYEUX_BROWSER` cookie): the session holding connects and how many, for
    /// `multiple-clients` advice.
    pub browsers: std::sync::Mutex<std::collections::HashMap<String, (String, usize)>>,
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
}

/// The credentials an HTTP request carries: the backend key in `X-Halley-Key` or `?key=`, a
/// token in `Authorization: Bearer` or `?token=` (for what cannot send headers: EventSource,
/// JSONP, iframes, multipart, the script tag).
pub fn credentials<'a>(headers: &'a HeaderMap, query: &'a Query) -> Credentials<'a> {
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

    /// May `who` do `action`? Every entry point asks this; no handler decides on its own.
    pub fn decide(&self, who: &Identity, action: Action<'_>) -> Result<(), ApiError> {
        Ok(self.policy().decide(who, action)?)
    }

    /// [`App::admit`] then [`App::decide`], for a request that does one thing.
    pub fn allow(
        &self,
        headers: &HeaderMap,
        query: &Query,
        action: Action<'_>,
    ) -> Result<Principal, ApiError> {
        let who = self.admit(headers, query)?;
        self.decide(&who, action)?;
        Ok(who)
    }
}
