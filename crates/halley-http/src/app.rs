//! Request routing: CORS once, then the handler the route table names.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::body::RequestBody;
use hyper::header::{ALLOW, CONNECTION, HOST, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};

use crate::body::Body;
use crate::cors;
use crate::error::ApiError;
use crate::routes::{self, Handler};
use crate::state::App;
use crate::{api, assets, cometd, control, dashboard, latency, ops, publish, rpc, rupy, transport};

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
    // RFC 9112 §3.2: a server must refuse an HTTP/1.1 request without `Host`. A connection's
    // first head is checked in `server.rs`; this catches later ones, which hyper parsed.
    let hostless = request.version() == Version::HTTP_11 && !request.headers().contains_key(HOST);
    let checked = match app.origins.check(request.headers()) {
        _ if hostless => Err(ApiError::BadRequest(
            "an HTTP/1.1 request must carry a Host header".into(),
        )),
        checked => checked,
    };
    let (verdict, handling, allow) = match checked {
        Err(e) => (None, Err(e), None),
        Ok(v) if request.method() == Method::OPTIONS => {
            let preflight = cors::preflight(app, &request, &v);
            (
                None,
                Ok(Box::pin(std::future::ready(Ok(preflight))) as Handling<'a>),
                None,
            )
        }
        Ok(v) => {
            let (handling, allow) = route(app, request);
            (Some(v), Ok(handling), allow)
        }
    };
    async move {
        let handling = match handling {
            Ok(handling) => handling,
            Err(e) => {
                let mut response = reject(app, e);
                if hostless {
                    // Whatever follows on this connection is not to be trusted either.
                    response
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                return response;
            }
        };
        let mut response = match handling.await {
            Ok(r) => r,
            Err(e) => reject(app, e),
        };
        if let Some(allow) = allow.filter(|_| response.status() == StatusCode::METHOD_NOT_ALLOWED) {
            // Every 405 says what the route takes (RFC 9110 §15.5.6); the value is built from
            // the route table, and only for a 405.
            if let Ok(value) = HeaderValue::from_str(&allow.header()) {
                response.headers_mut().insert(ALLOW, value);
            }
        }
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

/// Picks the handler from the route table ([`crate::routes`]); each is boxed (see
/// [`Handling`]). Handlers that answer at once are wrapped in a ready future. Also returns the
/// methods of the route, for a 405's `Allow` (a handler answers 405 itself for some requests,
/// e.g. a JSONP publish without a callback).
fn route<'a, B: RequestBody>(
    app: &'a Arc<App>,
    request: Request<B>,
) -> (Handling<'a>, Option<routes::Allow>) {
    fn now<'a>(result: Result<Response<Body>, ApiError>) -> Handling<'a> {
        Box::pin(std::future::ready(result))
    }
    let path = request.uri().path();
    #[cfg(feature = "autobahn")]
    if path == transport::AUTOBAHN_ECHO && request.method() == Method::GET {
        return (Box::pin(transport::echo(app, request)), None);
    }
    let (endpoint, allow) =
        routes::resolve_allowing(request.method(), path, &app.config.cometd_path);
    let endpoint = match endpoint {
        Ok(endpoint) => endpoint,
        Err(e) => return (now(Err(e)), allow),
    };
    let rest = endpoint.rest.map(str::to_owned);
    let rest = || rest.unwrap_or_default();
    let handling = match endpoint.handler {
        Handler::Bayeux => cometd::handle(app, request),
        Handler::Publish => {
            let channel = rest();
            Box::pin(async move { publish::publish(app, &channel, request).await })
        }
        Handler::PublishJsonp => {
            let channel = rest();
            Box::pin(async move { publish::publish_jsonp(app, &channel, request).await })
        }
        Handler::Subscribe => transport::subscribe(app, endpoint.rest.map(str::to_owned), request),
        Handler::InboxSend => {
            let address = rest();
            Box::pin(async move { api::send(app, &address, request).await })
        }
        Handler::InboxMint => now(api::mint(app, &request)),
        Handler::Presence => Box::pin(async move { api::presence(app, &request).await }),
        Handler::History => Box::pin(async move { api::history(app, &request).await }),
        Handler::Channels => Box::pin(async move { ops::channels(app, &request).await }),
        Handler::Latency => Box::pin(latency::report(app, request)),
        Handler::Rpc => {
            let method = rest();
            Box::pin(async move { rpc::call(app, &method, request).await })
        }
        Handler::Push => Box::pin(rupy::push(app, request)),
        Handler::Pull => Box::pin(rupy::pull(app, request)),
        Handler::ControlDisconnect => Box::pin(control::disconnect(app, request)),
        Handler::ControlUnsubscribe => Box::pin(control::unsubscribe(app, request)),
        Handler::ControlRevoke => Box::pin(control::revoke(app, request)),
        Handler::ControlUser => Box::pin(async move { control::user_info(app, &request).await }),
        Handler::Dashboard => Box::pin(async move { dashboard::stream(app, &request).await }),
        Handler::Healthz => now(Ok(ops::healthz(app))),
        Handler::Metrics => now(Ok(ops::metrics(app))),
        Handler::Asset => {
            let path = path.to_owned();
            now(Ok(assets::serve(app, &path, &request)))
        }
    };
    (handling, allow)
}
