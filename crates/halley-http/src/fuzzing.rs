//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden, and free to change with
//! them). Each wraps a private parser of untrusted bytes without changing it.

use std::time::Duration;

use hyper::Method;
use tokio::io::AsyncRead;

use crate::server::{self, Head, Route};

pub use crate::query::{Query, valid_callback};

/// What the lean head reader returned.
#[derive(Debug)]
pub enum HeadRead {
    Gone,
    TooLarge,
    Complete(Vec<u8>),
}

/// The server's request head reader over any byte source.
pub async fn read_head(reader: &mut (impl AsyncRead + Unpin), timeout: Duration) -> HeadRead {
    match server::read_head(reader, timeout).await {
        Head::Gone => HeadRead::Gone,
        Head::TooLarge => HeadRead::TooLarge,
        Head::Complete(buf) => HeadRead::Complete(buf.to_vec()),
    }
}

/// How the server routes a request head.
#[derive(Debug)]
pub enum Classified {
    /// Refused before anything is served: the status and the JSON error's text.
    Refuse {
        status: u16,
        error: String,
    },
    Http2,
    HeadlessPull(String),
    /// A rupy push served on the lean path; `length` is `None` for rupy's unframed body.
    RupyPush {
        method: Method,
        uri: String,
        head_less: bool,
        head_len: usize,
        length: Option<usize>,
    },
    Lean {
        method: Method,
        uri: String,
        keep_alive: bool,
        http10: bool,
        head_len: usize,
        more: usize,
    },
    Hyper,
}

/// The server's request classification.
pub fn classify(head: &[u8], cometd_path: &str, body_limit: usize) -> Classified {
    match server::classify(head, cometd_path, body_limit) {
        Route::Refuse(refusal) => Classified::Refuse {
            status: refusal.status,
            error: refusal.error,
        },
        Route::Http2 => Classified::Http2,
        Route::HeadlessPull(query) => Classified::HeadlessPull(query),
        Route::RupyPush(push) => Classified::RupyPush {
            method: push.request.method().clone(),
            uri: push.request.uri().to_string(),
            head_less: push.head_less,
            head_len: push.head_len,
            length: push.length,
        },
        Route::Lean {
            request,
            keep_alive,
            http10,
            head_len,
            more,
        } => Classified::Lean {
            method: request.method().clone(),
            uri: request.uri().to_string(),
            keep_alive,
            http10,
            head_len,
            more,
        },
        Route::Hyper => Classified::Hyper,
    }
}
