//! Shared state of the HTTP layer and request routing.

use std::future::Future;
use std::pin::Pin;
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

/// A handler's future, boxed: a held request (long-poll, Bayeux connect) lives in it, sized
/// for its own handler rather than the largest of all.
pub type Handling<'a> = Pin<Box<dyn Future<Output = Result<Response<Body>, ApiError>> + Send + 'a>>;

/// Answers one request. Routing is done before the returned future exists, so that the future
/// does not keep the request (which the handler has taken) for as long as a held request lasts:
/// an `async fn` keeps room for its arguments for its whole life (~0.25 KiB per level).
pub fn handle<'a, B: RequestBody>(
    app: &'a Arc<App>,
    request: Request<B>,
) -> impl Future<Output = Response<Body>> + Send + 'a {
    let (verdict, handling) = match app.origins.check(request.headers()) {
        Err(e) => (None, Err(e)),
        Ok(v) if request.method() == Method::OPTIONS => {
            let preflight = cors::preflight(request.headers(), &v);
            (
                None,
                Ok(Box::pin(std::future::ready(Ok(preflight))) as Handling<'a>),
            )
        }
        Ok(v) => (Some(v), Ok(route(app, request))),
    };
    async move {
        let handling = match handling {
            Ok(handling) => handling,
            Err(e) => return reject(app, e),
        };
        let mut response = match handling.await {
            Ok(r) => r,
            Err(e) => reject(app, e),
        };
        let Some(verdict) = verdict else {
            return response;
        };
        cors::decorate(&mut response, &verdict);
        response
            .headers_mut()
            .entry("x-content-type-options")
            .or_insert(HeaderValue::from_static("nosniff"));
        response
    }
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

/// Picks the handler; each is boxed (see [`Handling`]). Handlers that answer at once are
/// wrapped in a ready future.
fn route<'a, B: RequestBody>(app: &'a Arc<App>, request: Request<B>) -> Handling<'a> {
    fn now<'a>(result: Result<Response<Body>, ApiError>) -> Handling<'a> {
        Box::pin(std::future::ready(result))
    }
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    // The CometD client appends the message type (`/cometd/connect`) unless told not to.
    let cometd = &app.config.cometd_path;
    if path == *cometd
        || path
            .strip_prefix(cometd.as_str())
            .is_some_and(|r| r.starts_with('/'))
    {
        return cometd::handle(app, request);
    }
    // A segment boundary is required: `/publish/a` is not `/pub` + `lish/a`.
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .filter(|rest| rest.starts_with('/'))
            .map(str::to_owned)
    };
    if let Some(channel) = under("/pub") {
        return match method {
            Method::POST | Method::PUT => {
                Box::pin(async move { publish::publish(app, &channel, request).await })
            }
            Method::GET => {
                Box::pin(async move { publish::publish_jsonp(app, &channel, request).await })
            }
            _ => now(Err(ApiError::MethodNotAllowed)),
        };
    }
    if let Some(channel) = under("/sub") {
        return match method {
            Method::GET => Box::pin(transport::subscribe(app, Some(channel), request)),
            _ => now(Err(ApiError::MethodNotAllowed)),
        };
    }
    if let Some(address) = path.strip_prefix(halley_proto::inbox::PREFIX) {
        let address = address.to_owned();
        return match method {
            Method::GET | Method::POST => {
                Box::pin(async move { api::send(app, &address, request).await })
            }
            _ => now(Err(ApiError::MethodNotAllowed)),
        };
    }
    match (method, path.as_str()) {
        (Method::GET | Method::POST, "/api/inbox") => now(api::mint(app, &request)),
        (Method::GET, "/api/presence") => {
            Box::pin(async move { api::presence(app, &request).await })
        }
        (Method::GET, "/api/history") => Box::pin(async move { api::history(app, &request).await }),
        (Method::GET | Method::HEAD, _) if assets::find(&path).is_some() => {
            now(Ok(assets::serve(app, &path, &request)))
        }
        (Method::GET | Method::POST, "/push") => Box::pin(rupy::push(app, request)),
        (Method::GET, "/pull") => Box::pin(rupy::pull(app, request)),
        (Method::GET, "/sub") => Box::pin(transport::subscribe(app, None, request)),
        (Method::GET, "/healthz") => now(Ok(ops::healthz(app))),
        (Method::GET, "/metrics") => now(Ok(ops::metrics(app))),
        (Method::GET, "/api/channels") => {
            Box::pin(async move { ops::channels(app, &request).await })
        }
        (
            _,
            "/push" | "/pull" | "/sub" | "/healthz" | "/metrics" | "/api/channels" | "/api/inbox"
            | "/api/presence" | "/api/history",
        ) => now(Err(ApiError::MethodNotAllowed)),
        _ => now(Err(ApiError::NotFound)),
    }
}
