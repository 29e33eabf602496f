//! Shared state of the HTTP layer and request routing.

use std::sync::Arc;

use crate::body::RequestBody;
use halley_engine::Engine;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::body::Body;
use crate::cors::{self, Origins};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::{HttpConfig, api, assets, cometd, ops, publish, rupy, transport};

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
}

impl App {
    /// Checks the publish key, when one is configured.
    pub fn authorize_publish(
        &self,
        headers: &hyper::HeaderMap,
        query: &crate::query::Query,
    ) -> Result<(), ApiError> {
        let Some(key) = &self.config.publish_key else {
            return Ok(());
        };
        let given = headers
            .get("x-halley-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| query.get("key"));
        match given {
            Some(g) if g == key => Ok(()),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

pub async fn handle<B: RequestBody>(app: Arc<App>, request: Request<B>) -> Response<Body> {
    let verdict = match app.origins.check(request.headers()) {
        Ok(v) => v,
        Err(e) => return reject(&app, e),
    };
    if request.method() == Method::OPTIONS {
        return cors::preflight(request.headers(), &verdict);
    }
    let mut response = match route(&app, request).await {
        Ok(r) => r,
        Err(e) => reject(&app, e),
    };
    cors::decorate(&mut response, &verdict);
    response
        .headers_mut()
        .entry("x-content-type-options")
        .or_insert(HeaderValue::from_static("nosniff"));
    response
}

fn reject(app: &App, error: ApiError) -> Response<Body> {
    if error.status().is_client_error() {
        app.metrics
            .bad_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    tracing::debug!(%error, "request refused");
    error.into_response()
}

/// Each handler is boxed: a held request (long-poll, Bayeux connect) lives in this future, and
/// unboxed it would be sized for the largest handler of all (4 KiB), not its own.
async fn route<B: RequestBody>(
    app: &Arc<App>,
    request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    // The CometD client appends the message type (`/cometd/connect`) unless told not to.
    let cometd = &app.config.cometd_path;
    if path == *cometd
        || path
            .strip_prefix(cometd.as_str())
            .is_some_and(|r| r.starts_with('/'))
    {
        return Box::pin(cometd::handle(app, request)).await;
    }
    // A segment boundary is required: `/publish/a` is not `/pub` + `lish/a`.
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .filter(|rest| rest.starts_with('/'))
    };
    if let Some(channel) = under("/pub") {
        return match method {
            Method::POST | Method::PUT => Box::pin(publish::publish(app, channel, request)).await,
            Method::GET => Box::pin(publish::publish_jsonp(app, channel, request)).await,
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    if let Some(channel) = under("/sub") {
        return match method {
            Method::GET => Box::pin(transport::subscribe(app, Some(channel), request)).await,
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    if let Some(address) = path.strip_prefix(halley_proto::inbox::PREFIX) {
        return match method {
            Method::GET | Method::POST => Box::pin(api::send(app, address, request)).await,
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    match (method, path.as_str()) {
        (Method::GET | Method::POST, "/api/inbox") => api::mint(app, &request),
        (Method::GET, "/api/presence") => Box::pin(api::presence(app, &request)).await,
        (Method::GET, "/api/history") => Box::pin(api::history(app, &request)).await,
        (Method::GET | Method::HEAD, _) if assets::find(&path).is_some() => {
            Ok(assets::serve(app, &path, &request))
        }
        (Method::GET | Method::POST, "/push") => Box::pin(rupy::push(app, request)).await,
        (Method::GET, "/pull") => Box::pin(rupy::pull(app, request)).await,
        (Method::GET, "/sub") => Box::pin(transport::subscribe(app, None, request)).await,
        (Method::GET, "/healthz") => Ok(ops::healthz(app)),
        (Method::GET, "/metrics") => Ok(ops::metrics(app)),
        (Method::GET, "/api/channels") => Box::pin(ops::channels(app, &request)).await,
        (
            _,
            "/push" | "/pull" | "/sub" | "/healthz" | "/metrics" | "/api/channels" | "/api/inbox"
            | "/api/presence" | "/api/history",
        ) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    }
}
