//! Inputs the fuzz targets in `fuzz/` found (docs/fuzzing.md), each kept as a named test. The
//! same inputs are seeds in `fuzz/seeds/<target>/`.

use halley_http::fuzzing::{Classified, classify};

/// http_head, seed `empty-lines-first`: empty lines before the request line are skipped
/// (RFC 9112 §2.2), so this is a lean HTTP/1.0 subscriber `GET` (the target had taken the
/// first, empty, line for the request line).
#[test]
fn http_head_empty_line_before_request_line() {
    match classify(b"\nGET /sub/b HTTP/1.0\n\r\n", "/cometd", 65_536) {
        Classified::Lean {
            method,
            uri,
            http10,
            more,
            ..
        } => {
            assert_eq!((method.as_str(), uri.as_str()), ("GET", "/sub/b"));
            assert!(http10);
            assert_eq!(more, 0);
        }
        other => panic!("{other:?}"),
    }
}
