//! The browser client and the talk chat (`clients/js`), compiled into the binary so that one file
//! is the whole server. `HttpConfig::assets_dir` serves them from disk instead, for editing them
//! without rebuilding.

use std::hash::{Hash, Hasher};

use bytes::Bytes;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderValue, IF_NONE_MATCH};
use hyper::{Request, Response, StatusCode};

use crate::body::{Body, empty, full};
use crate::state::App;

struct Asset {
    path: &'static str,
    /// Relative to `clients/js`.
    file: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:literal) => {
        Asset {
            path: $path,
            file: $file,
            content_type: $type,
            bytes: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../clients/js/",
                $file
            )),
        }
    };
}

static ASSETS: &[Asset] = &[
    asset!("/", "talk/index.html", "text/html; charset=utf-8"),
    asset!("/halley.js", "halley.js", "text/javascript; charset=utf-8"),
    asset!("/halley.d.ts", "halley.d.ts", "text/plain; charset=utf-8"),
    asset!(
        "/talk/talk.js",
        "talk/talk.js",
        "text/javascript; charset=utf-8"
    ),
    asset!("/talk/talk.css", "talk/talk.css", "text/css; charset=utf-8"),
    asset!("/event.html", "rupy/event.html", "text/html; charset=utf-8"),
    asset!(
        "/dashboard",
        "dashboard/index.html",
        "text/html; charset=utf-8"
    ),
    asset!(
        "/dashboard/dashboard.js",
        "dashboard/dashboard.js",
        "text/javascript; charset=utf-8"
    ),
    asset!(
        "/talk-widget.js",
        "talk-widget.js",
        "text/javascript; charset=utf-8"
    ),
];

/// Whether `path` is one of the assets (and which).
pub fn find(path: &str) -> Option<usize> {
    ASSETS.iter().position(|a| a.path == path)
}

pub fn serve<B>(app: &App, path: &str, request: &Request<B>) -> Response<Body> {
    let asset = &ASSETS[find(path).expect("routed only when found")];
    let bytes = match &app.config.assets_dir {
        Some(dir) => match std::fs::read(dir.join(asset.file)) {
            Ok(b) => Bytes::from(b),
            Err(error) => {
                tracing::warn!(%error, file = asset.file, "asset not readable; serving the built-in one");
                Bytes::from_static(asset.bytes)
            }
        },
        None => Bytes::from_static(asset.bytes),
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    let etag = format!("\"{:016x}\"", hasher.finish());
    let fresh = request
        .headers()
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        // Also for HEAD: hyper sends the head alone, with the GET's Content-Length.
        Response::new(full(bytes))
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // Revalidate every time (cheap with the ETag), so a new server version is picked up.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded() {
        for a in ASSETS {
            assert!(!a.bytes.is_empty(), "{}", a.file);
        }
    }
}
