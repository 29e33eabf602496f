//! The origin allowlist: CORS for XHR/fetch, and the same decision for JSONP, iframe and
//! WebSocket, which browsers do not police themselves.
//!
//! An allowed origin is always echoed with `Access-Control-Allow-Credentials: true` and
//! `Vary: Origin`, with an allowlist and with the default "any origin" alike: the official
//! CometD client and `EventSource(url, {withCredentials: true})` send credentials, and a
//! wildcard `*` would make browsers refuse those answers (the CometD client then falls back to
//! callback-polling, a script tag that carries the cookies anyway). "Any origin" therefore
//! means any page may act with its visitor's cookies — which JSONP, iframe and WebSocket allow
//! under it regardless of CORS; where cookies authorize (`auth-url` forwards them to the
//! application), `allowed-origins` is what locks all of them down (README, "Browsers on other
//! origins").

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::body::{Body, empty};
use crate::error::ApiError;
use crate::state::App;

/// Response headers a cross-origin script may read (the resume position, the gap flag, what
/// the control API did to a held poll, and how long a draining server asks long-pollers to
/// wait).
const EXPOSE: &str = "X-Halley-Last-Id, X-Halley-Gap, X-Halley-Unsubscribed, \
                      X-Halley-Disconnected, X-Halley-Expired, Retry-After, \
                      Idempotent-Replayed";

#[derive(Clone, Debug)]
pub struct Origins {
    /// `None`: any origin.
    allowed: Option<Vec<String>>,
}

/// The outcome of checking a request's origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No `Origin` header: not a cross-origin browser request (or one browsers do not label).
    NoOrigin,
    /// Allowed; the value to echo in `Access-Control-Allow-Origin`.
    Allowed(HeaderValue),
}

impl Origins {
    pub fn new(list: &[String]) -> Origins {
        let any = list.is_empty() || list.iter().any(|o| o == "*");
        Origins {
            allowed: (!any).then(|| {
                list.iter()
                    .map(|o| o.trim_end_matches('/').to_string())
                    .collect()
            }),
        }
    }

    pub fn is_any(&self) -> bool {
        self.allowed.is_none()
    }

    fn allows(&self, origin: &str, headers: &HeaderMap) -> bool {
        match &self.allowed {
            None => true,
            Some(list) => list.iter().any(|o| o == origin) || same_origin(origin, headers),
        }
    }

    /// Checks the `Origin` header; a disallowed origin is refused outright (403), so that a
    /// foreign page cannot even trigger a publish with a simple cross-origin POST.
    pub fn check(&self, headers: &HeaderMap) -> Result<Verdict, ApiError> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(Verdict::NoOrigin);
        };
        let text = origin.to_str().map_err(|_| ApiError::Forbidden)?;
        if !self.allows(text, headers) {
            return Err(ApiError::Forbidden);
        }
        Ok(Verdict::Allowed(origin.clone()))
    }

    /// JSONP and iframe requests are loaded by `<script>`/`<iframe>` tags, which send no
    /// `Origin`; the page's origin comes from `Referer`. With a restricted allowlist a request
    /// whose page cannot be identified is refused.
    pub fn check_embedding(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.is_any() || headers.contains_key(header::ORIGIN) {
            return Ok(());
        }
        let referer = headers.get(header::REFERER).and_then(|r| r.to_str().ok());
        match referer.and_then(origin_of) {
            Some(origin) if self.allows(origin, headers) => Ok(()),
            _ => Err(ApiError::Forbidden),
        }
    }
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> Option<&str> {
    let after_scheme = url.find("://")? + 3;
    let end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    Some(&url[..end])
}

/// A page served by Halley itself (the chat demo) is always allowed.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    matches!((host, origin_host), (Some(h), Some(o)) if h.eq_ignore_ascii_case(o))
}

/// Adds the CORS response headers for an allowed cross-origin request, and `Vary: Origin` to
/// every response: the answer depends on the request's `Origin`, so that a cache must not hand
/// one origin's answer (or a no-`Origin` one) to another.
pub fn decorate(response: &mut Response<Body>, verdict: &Verdict) {
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Verdict::Allowed(origin) = verdict {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE),
        );
    }
}

/// The answer to a preflight (`OPTIONS` with `Access-Control-Request-Method`), and to any
/// `OPTIONS`: the methods of the path's route (all of Halley's for a path no route has).
pub fn preflight<B>(app: &App, request: &Request<B>, verdict: &Verdict) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let methods = crate::routes::allow(request.uri().path(), &app.config.cometd_path)
        .map(|allow| allow.header())
        .and_then(|methods| HeaderValue::from_str(&methods).ok())
        .unwrap_or(HeaderValue::from_static("GET, HEAD, POST, PUT, OPTIONS"));
    let request = request.headers();
    let headers = response.headers_mut();
    // A plain OPTIONS (no CORS) asks the same question; `Allow` is its answer.
    headers.insert(header::ALLOW, methods.clone());
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
    let requested = request
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_static(
                "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-Halley-Key",
            )
        });
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    decorate(&mut response, verdict);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(list: &[&str], origin: Option<&str>, host: &str, expected: Result<&str, ()>) {
        let origins = Origins::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        let got = match origins.check(&headers) {
            Ok(Verdict::NoOrigin) => Ok("-"),
            Ok(Verdict::Allowed(v)) => Ok(if v == origin.unwrap() { "echo" } else { "?" }),
            Err(_) => Err(()),
        };
        assert_eq!(got, expected, "{list:?} {origin:?}");
    }

    #[test]
    fn origin_verdicts() {
        check(&[], Some("http://a.example"), "h:1", Ok("echo"));
        check(&["*"], Some("null"), "h:1", Ok("echo"));
        check(&["*"], None, "h:1", Ok("-"));
        check(
            &["http://a.example"],
            Some("http://a.example"),
            "h:1",
            Ok("echo"),
        );
        check(
            &["http://a.example/"],
            Some("http://a.example"),
            "h:1",
            Ok("echo"),
        );
        check(
            &["http://a.example"],
            Some("http://b.example"),
            "h:1",
            Err(()),
        );
        check(&["http://a.example"], Some("http://h:1"), "h:1", Ok("echo"));
        check(&["http://a.example"], Some("null"), "h:1", Err(()));
    }

    #[test]
    fn referer_origins() {
        assert_eq!(
            origin_of("http://a.example:8080/page?x=1"),
            Some("http://a.example:8080")
        );
        assert_eq!(origin_of("https://a.example"), Some("https://a.example"));
        assert_eq!(origin_of("nonsense"), None);
    }
}
