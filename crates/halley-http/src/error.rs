//! The one place where errors become HTTP responses.

use bytes::Bytes;
use halley_engine::access::Denied;
use halley_engine::{BrokerError, EngineError};
use halley_proto::{ChannelError, PayloadError};
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue};

use crate::body::{Body, full};

/// A request that cannot be served, with the status it earns.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("bad channel: {0}")]
    Channel(#[from] ChannelError),
    #[error("bad body: {0}")]
    Payload(#[from] PayloadError),
    /// The access policy said no: 401 without a (valid) credential, 403 with one that does
    /// not allow this.
    #[error("{0}")]
    Denied(#[from] Denied),
    #[error("origin not allowed")]
    Forbidden,
    /// A private channel (an inbox) asked for without its secret.
    #[error("{0}")]
    NotYours(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Unavailable(String),
    /// A source over its rate (latency reports): 429.
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Reserved(String),
    /// A publish with the same `Idempotency-Key` is under way.
    #[error("{0}")]
    Conflict(String),
    /// An `Idempotency-Key` reused for another publish.
    #[error("{0}")]
    Unprocessable(String),
    /// An endpoint whose configuration is missing (`/rpc` without `rpc-url`): 501.
    #[error("{0}")]
    NotConfigured(&'static str),
    /// A call to the application that got no answer: its own status (4xx refused, 502, 503,
    /// 504).
    #[error(transparent)]
    Rpc(#[from] crate::rpc::RpcError),
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::Reserved(_) | EngineError::Forged => ApiError::Reserved(e.to_string()),
            EngineError::Broker(BrokerError::TooManyChannels(_)) => {
                ApiError::Unavailable(e.to_string())
            }
            EngineError::Broker(b) => ApiError::Unavailable(b.to_string()),
            EngineError::Full(..) | EngineError::KeysFull(_) => {
                ApiError::Unavailable(e.to_string())
            }
            EngineError::NotAnObject(_) => ApiError::BadRequest(e.to_string()),
            // The revocation table is full: a limit of the server's, not the caller's fault.
            EngineError::Control(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Channel(_) | ApiError::Payload(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Reserved(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Denied(Denied::Unauthenticated(_)) => StatusCode::UNAUTHORIZED,
            ApiError::Denied(Denied::Forbidden(_)) => StatusCode::FORBIDDEN,
            ApiError::Denied(Denied::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Forbidden | ApiError::NotYours(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotConfigured(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Rpc(e) => e.status(),
        }
    }

    pub fn into_response(self) -> hyper::Response<Body> {
        let body = serde_json::json!({ "error": self.to_string() }).to_string();
        let mut response = hyper::Response::new(full(Bytes::from(body)));
        *response.status_mut() = self.status();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

#[cfg(test)]
mod tests {
    /// An `ApiError` is part of every request's future (a held long-poll's included): it must
    /// not grow unnoticed.
    #[test]
    fn an_api_error_stays_small() {
        assert!(std::mem::size_of::<super::ApiError>() <= 32);
    }
}
