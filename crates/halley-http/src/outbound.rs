//! Calls from Halley to the application behind it: asking it who may subscribe (`auth_url`),
//! telling it what happened (webhooks), forwarding what a client asks of it (`rpc_url`).
//!
//! [`Outbound`] is one pooled HTTP/1.1 client (hyper's) for all of them; each caller bounds its
//! own concurrency and passes its own timeout. [`Endpoint`] is an application URL, checked when
//! the configuration is read so that a typo stops startup rather than the first subscribe.
//!
//! Only `http://` is spoken: the application is expected on the same host or a private network
//! (as a reverse proxy's upstream is). An `https://` URL is refused at startup with that reason.
//!
//! Invariant: nothing here waits without a deadline, and nothing reads more than
//! [`MAX_ANSWER`] bytes of an answer.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest answer read from the application, in bytes. An authorisation answer or an RPC result
/// is a small JSON object; 64 KiB (the default request body limit) leaves room for an RPC that
/// returns a page of data. A larger answer is an error ([`OutboundError::TooLarge`]), never
/// buffered.
pub const MAX_ANSWER: usize = 64 * 1024;

/// Time allowed to open a TCP connection to the application, whatever the caller's deadline:
/// an application that does not accept within a second is down for our purposes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Idle connections kept open to the application. Enough for the concurrency the callers allow
/// (auth, webhooks and RPC each bound theirs), so that a busy server reuses connections instead
/// of opening one per call.
pub const MAX_IDLE_CONNECTIONS: usize = 64;

/// How long an idle pooled connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An application URL: `http://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    uri: Uri,
}

/// Why an application URL is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("{0:?} is not a URL: {1}")]
    Malformed(String, String),
    #[error(
        "{0:?}: only http:// is supported (run the application on this host or a private network)"
    )]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Endpoint, EndpointError> {
        let uri: Uri = text.parse().map_err(|e: hyper::http::uri::InvalidUri| {
            EndpointError::Malformed(text.to_owned(), e.to_string())
        })?;
        if uri.scheme_str() != Some("http") {
            return Err(EndpointError::Scheme(text.to_owned()));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(EndpointError::NoHost(text.to_owned()));
        }
        Ok(Endpoint { uri })
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.uri.fmt(f)
    }
}

/// What the application answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Why a call to the application did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    #[error("the application did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the application is unreachable: {0}")]
    Unreachable(String),
    #[error("the application's answer is larger than {MAX_ANSWER} bytes")]
    TooLarge,
}

/// The pooled client. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Outbound {
    client: Client<HttpConnector, Full<Bytes>>,
    user_agent: HeaderValue,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

impl Default for Outbound {
    fn default() -> Outbound {
        Outbound::new()
    }
}

impl Outbound {
    pub fn new() -> Outbound {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(connector);
        Outbound {
            client,
            user_agent: HeaderValue::from_static(concat!("halley/", env!("CARGO_PKG_VERSION"))),
        }
    }

    /// POSTs `body` (JSON) to `endpoint` with `headers` added, and reads the answer — all of it
    /// within `timeout`. Any status is an answer; judging it is the caller's.
    pub async fn post_json(
        &self,
        endpoint: &Endpoint,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, OutboundError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(endpoint.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, body.len())
            .header(USER_AGENT, self.user_agent.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        // The URI was checked by `Endpoint::parse` and the headers are typed: building cannot
        // fail.
        let request = request
            .body(Full::new(body))
            .expect("a checked URI and typed headers");
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| OutboundError::Unreachable(error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        OutboundError::TooLarge
                    } else {
                        OutboundError::Unreachable(e.to_string())
                    }
                })?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| OutboundError::Timeout(timeout))?
    }
}

/// An error with its causes, which hyper keeps in the chain ("client error (Connect)" alone says
/// little).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_when_configured() {
        assert!(Endpoint::parse("http://127.0.0.1:9000/auth").is_ok());
        assert!(Endpoint::parse("http://app.internal/hooks?x=1").is_ok());
        assert!(matches!(
            Endpoint::parse("https://app.example/auth"),
            Err(EndpointError::Scheme(_))
        ));
        assert!(matches!(
            Endpoint::parse("/auth"),
            Err(EndpointError::Scheme(_))
        ));
        assert!(matches!(
            Endpoint::parse("http:// bad"),
            Err(EndpointError::Malformed(..))
        ));
    }

    /// A one-connection HTTP server answering each request with `answer` after `delay`.
    async fn serve_once(answer: &'static str, delay: Duration) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = socket.read(&mut buf).await;
            tokio::time::sleep(delay).await;
            let _ = socket.write_all(answer.as_bytes()).await;
        });
        format!("http://{addr}/hook")
    }

    #[tokio::test]
    async fn answers_and_failures() {
        let outbound = Outbound::new();
        let ok = serve_once(
            "HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
            Duration::ZERO,
        )
        .await;
        let answer = outbound
            .post_json(
                &Endpoint::parse(&ok).unwrap(),
                &[],
                Bytes::from_static(b"{}"),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(&answer.body[..], b"{\"ok\":true}");

        // Nothing listens on a port just freed.
        let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let down = format!("http://{}/hook", free.local_addr().unwrap());
        drop(free);
        let error = outbound
            .post_json(
                &Endpoint::parse(&down).unwrap(),
                &[],
                Bytes::new(),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(matches!(error, OutboundError::Unreachable(_)), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_application_times_out() {
        let slow = serve_once(
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            Duration::from_secs(60),
        )
        .await;
        let error = Outbound::new()
            .post_json(
                &Endpoint::parse(&slow).unwrap(),
                &[],
                Bytes::new(),
                Duration::from_secs(2),
            )
            .await
            .unwrap_err();
        assert_eq!(error, OutboundError::Timeout(Duration::from_secs(2)));
    }

    #[tokio::test]
    async fn a_large_answer_is_refused() {
        let big: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}",
                MAX_ANSWER + 1,
                "x".repeat(MAX_ANSWER + 1)
            )
            .into_boxed_str(),
        );
        let url = serve_once(big, Duration::ZERO).await;
        let error = Outbound::new()
            .post_json(
                &Endpoint::parse(&url).unwrap(),
                &[],
                Bytes::new(),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert_eq!(error, OutboundError::TooLarge);
    }
}
