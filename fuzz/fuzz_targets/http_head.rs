//! The lean HTTP path (halley-http server.rs): the request head reader (`read_head`, fed in
//! chunks as a socket would) and the request classification (`classify`) that decides what is
//! served without hyper.
//!
//! Input: a byte seeding the read sizes, a flags byte (bits 0, 2 and 3 all set: the peer keeps
//! sending filler past the head limit, one input in eight as it is slow; bit 1: a small body
//! limit), then the bytes the peer sends.
//! Invariants: the reader returns a complete head exactly when the bytes read hold its end
//! (and only what was read), refuses past `MAX_HEAD`, and reports a peer that left; a request
//! served on the lean path is one the route table gives to a lean handler, with a body within
//! the limit and a consistent length.
#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use halley_http::MAX_HEAD;
use halley_http::fuzzing::{Classified, HeadRead, classify, read_head};
use halley_http::routes::{self, Handler};
use hyper::Method;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

const COMETD: &str = "/cometd";

/// A peer: sends `bytes` in chunks of pseudo-random sizes, then closes.
struct Peer<'a> {
    bytes: &'a [u8],
    sent: usize,
    seed: u32,
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.seed = self.seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let chunk = 1 + (self.seed >> 16) as usize % 600;
        let n = chunk.min(buf.remaining()).min(self.bytes.len() - self.sent);
        buf.put_slice(&self.bytes[self.sent..self.sent + n]);
        self.sent += n;
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

/// An empty line: CRLF CRLF, or a bare LF where either ends (as httparse and hyper read it).
fn has_end(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

fuzz_target!(|data: &[u8]| {
    let [seed, flags, sent @ ..] = data else {
        return;
    };
    let body_limit = if flags & 2 != 0 { 100 } else { 65_536 };
    let mut stream = sent.to_vec();
    if flags & 0b1101 == 0b1101 {
        stream.resize(MAX_HEAD + 1000, b'x');
    }
    let mut peer = Peer {
        bytes: &stream,
        sent: 0,
        seed: u32::from(*seed),
    };
    let read = runtime().block_on(read_head(&mut peer, Duration::from_secs(10)));
    let read_so_far = &stream[..peer.sent];
    match read {
        HeadRead::Complete(head) => {
            assert_eq!(head, read_so_far);
            assert!(has_end(&head));
            check_classify(&head, body_limit);
        }
        HeadRead::TooLarge => {
            assert!(peer.sent >= MAX_HEAD);
            assert!(!has_end(read_so_far));
        }
        HeadRead::Gone => {
            assert_eq!(peer.sent, stream.len());
            assert!(!has_end(&stream));
        }
    }
    // Classification on its own, whatever the reader would have made of these bytes.
    check_classify(sent, body_limit);
});

fn check_classify(head: &[u8], body_limit: usize) {
    match classify(head, COMETD, body_limit) {
        Classified::Hyper => {}
        Classified::Http2 => assert!(head.starts_with(b"PRI * HTTP/2.0\r\n")),
        Classified::Refuse { status, error } => {
            assert!(matches!(status, 400 | 431 | 501 | 505), "{status} {error}");
            assert!(!error.is_empty());
        }
        Classified::HeadlessPull(query) => {
            assert!(head.starts_with(b"GET /pull"));
            assert!(!query.contains([' ', '\r', '\n']));
        }
        Classified::RupyPush {
            method,
            uri,
            head_less: _,
            head_len,
            length,
        } => {
            // Only rupy's push, and a body never past its declared length.
            assert!(method == Method::GET || method == Method::POST, "{method}");
            assert!(uri.starts_with("/push"), "{uri}");
            assert!(head_len <= head.len());
            if let Some(length) = length {
                assert!(head.len() - head_len <= length);
            } else {
                assert_eq!(method, Method::POST);
            }
        }
        Classified::Lean {
            method,
            uri,
            keep_alive: _,
            http10,
            head_len,
            more,
        } => {
            assert!(head_len <= head.len());
            assert!(head[..head_len].ends_with(b"\n"));
            let extra = head.len() - head_len;
            // Empty lines before the request line are skipped (RFC 9112 §2.2), as httparse does.
            let request_line = head
                .split(|&b| b == b'\n')
                .find(|l| !l.trim_ascii().is_empty())
                .unwrap();
            assert_eq!(http10, request_line.trim_ascii_end().ends_with(b"HTTP/1.0"));
            let route = uri.split_once('?').map_or(uri.as_str(), |(r, _)| r);
            let handler = routes::resolve(&method, route, COMETD)
                .expect("a lean request resolves")
                .handler;
            match method {
                Method::GET => {
                    assert!(matches!(handler, Handler::Subscribe | Handler::Pull));
                    assert_eq!((extra, more), (0, 0), "a GET has no body");
                }
                Method::POST => {
                    assert_eq!(handler, Handler::Bayeux);
                    assert!(extra + more <= body_limit);
                }
                other => panic!("lean {other}"),
            }
        }
    }
}
