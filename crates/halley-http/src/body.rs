//! Response bodies: whole (`full`) or streamed from a subscription.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn streaming(stream: impl Stream<Item = Bytes> + Send + 'static) -> Body {
    use futures_util::StreamExt;
    StreamBody::new(stream.map(|b| Ok::<_, Infallible>(Frame::data(b)))).boxed_unsync()
}

/// Any request body the handlers accept: hyper's `Incoming` on the hyper path, an empty body on
/// the lean path (`server.rs`). `Sync` so that a handler may keep `&Request` across an await in
/// a future that must be `Send` (see `app::Handling`).
pub trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Sync
    + 'static
{
}

impl<T> RequestBody for T where
    T: hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Sync
        + 'static
{
}
