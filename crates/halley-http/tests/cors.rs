//! The origin allowlist: CORS headers for allowed origins (the origin echoed, with credentials,
//! and `Vary: Origin`), 403 for others, preflights, and the same decision for WebSocket upgrades
//! and script/iframe-loaded transports (by `Referer`).

mod common;

use common::{Open, TestServer};
use http_body_util::Full;
use serde_json::Value;

const GOOD: &str = "http://good.example";
const EVIL: &str = "http://evil.example";

/// Request headers, as (name, value) pairs.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// (method, path, request headers, expectation)
type Case<'a> = (&'a str, &'a str, Headers<'a>, Expect<'a>);

async fn any_origin() -> TestServer {
    TestServer::start().await
}

async fn restricted() -> TestServer {
    TestServer::with(|http, _| http.allowed_origins = vec![GOOD.into()]).await
}

/// What a response must say about CORS.
#[derive(Debug, Clone, Copy)]
enum Expect<'a> {
    /// The status, and the `Access-Control-Allow-Origin` value (None: absent). An allowed
    /// origin is echoed with `Access-Control-Allow-Credentials: true`.
    Allowed(u16, Option<&'a str>),
    /// 403 with a JSON error.
    Refused,
}

/// Sends `method path` with `headers` and checks the status and CORS headers of the answer
/// (only the head is awaited, so this works for held and streaming responses too).
async fn check(
    s: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    expect: Expect<'_>,
) {
    let mut request = s.request(method, path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut open: Open = s.open(request.body(Full::default()).unwrap()).await;
    let what = format!("{method} {path} {headers:?}");
    match expect {
        Expect::Refused => {
            assert_eq!(open.status, 403, "{what}");
            let body: Value = serde_json::from_str(&open.rest().await).unwrap();
            assert!(body["error"].is_string(), "{what}: {body}");
            assert_eq!(open.header("access-control-allow-origin"), None, "{what}");
        }
        Expect::Allowed(status, acao) => {
            assert_eq!(open.status, status, "{what}");
            assert_eq!(open.header("access-control-allow-origin"), acao, "{what}");
            let vary_origin = open
                .headers
                .get_all("vary")
                .iter()
                .any(|v| v.to_str().unwrap().to_ascii_lowercase().contains("origin"));
            // Every answer depends on the request's Origin: a cache must not hand one origin's
            // answer (or a no-Origin one) to another.
            assert!(vary_origin, "{what}: Vary");
            let credentials = open.header("access-control-allow-credentials");
            assert_eq!(credentials, acao.map(|_| "true"), "{what}: credentials");
            assert_ne!(acao, Some("*"), "{what}: a wildcard refuses credentials");
            if acao.is_some() {
                let exposed = open.header("access-control-expose-headers").unwrap_or("");
                assert!(exposed.contains("X-Halley-Last-Id"), "{what}: {exposed}");
            }
        }
    }
}

/// (method, path, request headers)
type Owned = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

/// Requests on every transport (and Bayeux, and refusals), each from `origin`.
fn every_transport(origin: &'static str) -> Vec<Owned> {
    let from = vec![("origin", origin)];
    let sse = vec![("origin", origin), ("accept", "text/event-stream")];
    vec![
        ("GET", "/healthz", from.clone()),
        ("POST", "/pub/a", from.clone()),
        ("GET", "/sub/a", from.clone()),
        ("GET", "/sub/a?transport=sse", from.clone()),
        // What `new EventSource(url, {withCredentials: true})` sends.
        ("GET", "/sub/a", sse),
        ("GET", "/sub/a?transport=stream", from.clone()),
        ("GET", "/sub/a?transport=multipart", from.clone()),
        ("GET", "/sub/a?transport=jsonp&callback=f", from.clone()),
        ("GET", "/sub/a?transport=iframe&callback=f", from.clone()),
        ("GET", "/pull?name=n&channel=/a", from.clone()),
        ("GET", "/api/history?channel=/a", from.clone()),
        ("HEAD", "/sub/a?transport=sse", from.clone()),
        ("POST", "/cometd", from.clone()),
        ("GET", "/cometd?message=[]&jsonp=f", from),
    ]
}

#[tokio::test]
async fn any_origin_is_echoed_with_credentials_on_every_transport() {
    let s = any_origin().await;
    for (method, path, headers) in every_transport("http://x.example") {
        // A Bayeux POST without a body is a 400 with a JSON error; still readable by the page.
        let status = if path == "/cometd" { 400 } else { 200 };
        let expect = Expect::Allowed(status, Some("http://x.example"));
        check(&s, method, path, &headers, expect).await;
    }
    let from = [("origin", "http://x.example")];
    let cases: &[Case] = &[
        ("GET", "/healthz", &[], Expect::Allowed(200, None)),
        // Refusals carry CORS headers too, so that the page can read why.
        (
            "POST",
            "/pub/a/*",
            &from,
            Expect::Allowed(400, Some("http://x.example")),
        ),
        (
            "DELETE",
            "/pub/a",
            &from,
            Expect::Allowed(405, Some("http://x.example")),
        ),
        (
            "GET",
            "/sub/a?transport=jsonp&callback=f",
            &[],
            Expect::Allowed(200, None),
        ),
        (
            "GET",
            "/sub/a?transport=iframe&callback=f",
            &[],
            Expect::Allowed(200, None),
        ),
        (
            "OPTIONS",
            "/pub/a",
            &[
                ("origin", "http://x.example"),
                ("access-control-request-method", "POST"),
            ],
            Expect::Allowed(204, Some("http://x.example")),
        ),
        (
            "OPTIONS",
            "/cometd/handshake",
            &[
                ("origin", "http://x.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
            Expect::Allowed(204, Some("http://x.example")),
        ),
    ];
    for &(method, path, headers, expect) in cases {
        check(&s, method, path, headers, expect).await;
    }
}

#[tokio::test]
async fn a_restricted_allowlist_echoes_allowed_origins_and_refuses_others() {
    let s = restricted().await;
    let good = [("origin", GOOD)];
    let evil = [("origin", EVIL)];
    let cases: &[Case] = &[
        ("GET", "/healthz", &good, Expect::Allowed(200, Some(GOOD))),
        ("GET", "/healthz", &evil, Expect::Refused),
        ("GET", "/healthz", &[("origin", "null")], Expect::Refused),
        (
            "GET",
            "/healthz",
            &[("origin", "http://good.example.evil.example")],
            Expect::Refused,
        ),
        (
            "GET",
            "/healthz",
            &[("origin", "https://good.example")],
            Expect::Refused,
        ),
        ("GET", "/healthz", &[], Expect::Allowed(200, None)),
        ("POST", "/pub/a", &good, Expect::Allowed(200, Some(GOOD))),
        ("POST", "/pub/a", &evil, Expect::Refused),
        (
            "GET",
            "/sub/a?transport=sse",
            &good,
            Expect::Allowed(200, Some(GOOD)),
        ),
        ("GET", "/sub/a?transport=sse", &evil, Expect::Refused),
        ("GET", "/sub/a", &evil, Expect::Refused),
        ("POST", "/cometd", &evil, Expect::Refused),
    ];
    for &(method, path, headers, expect) in cases {
        check(&s, method, path, headers, expect).await;
    }
    for (method, path, headers) in every_transport(GOOD) {
        let status = if path == "/cometd" { 400 } else { 200 };
        check(
            &s,
            method,
            path,
            &headers,
            Expect::Allowed(status, Some(GOOD)),
        )
        .await;
    }
    // A page served by Halley itself (the chat demo) is same-origin.
    let same = format!("http://{}", s.addr);
    let expect = Expect::Allowed(200, Some(&same));
    check(&s, "GET", "/healthz", &[("origin", &same)], expect).await;
    // Only the allowed publishes went through (one above, one among every transport's).
    assert_eq!(s.metric("halley_messages_published_total").await, 2);
}

#[tokio::test]
async fn preflights_answer_for_allowed_origins_only() {
    let s = restricted().await;
    let preflight = |origin: &'static str| {
        [
            ("origin", origin),
            ("access-control-request-method", "POST"),
        ]
    };
    check(
        &s,
        "OPTIONS",
        "/pub/a",
        &preflight(GOOD),
        Expect::Allowed(204, Some(GOOD)),
    )
    .await;
    check(&s, "OPTIONS", "/pub/a", &preflight(EVIL), Expect::Refused).await;

    let mut request = s.request("OPTIONS", "/pub/a");
    for (name, value) in preflight(GOOD) {
        request = request.header(name, value);
    }
    let reply = s
        .send(
            request
                .header(
                    "access-control-request-headers",
                    "content-type, x-halley-key",
                )
                .body(Full::default())
                .unwrap(),
        )
        .await;
    // The route's own methods, from the route table.
    let methods = reply.header("access-control-allow-methods").unwrap();
    assert_eq!(methods, "GET, POST, PUT, OPTIONS");
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        Some("true")
    );
    let headers = reply
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(headers.contains("x-halley-key"), "{headers}");
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn websocket_upgrades_honour_the_allowlist() {
    let s = restricted().await;
    let refused = s.ws_with("/sub/a", &[("origin", EVIL)]).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
        }
        Err(other) => panic!("expected an HTTP 403, got {other}"),
        Ok(_) => panic!("a WebSocket from a disallowed origin was upgraded"),
    }
    assert_eq!(s.subscribers("/a").await, 0);
    s.ws_with("/sub/a", &[("origin", GOOD)]).await.unwrap();
    // Non-browser clients send no Origin.
    s.ws_with("/sub/a", &[]).await.unwrap();
}

#[tokio::test]
async fn script_and_iframe_transports_are_judged_by_referer() {
    let s = restricted().await;
    let from_good = [("referer", "http://good.example/page?x=1")];
    let from_evil = [("referer", "http://evil.example/page")];
    let lookalike = [("referer", "http://good.example.evil.example/")];
    let jsonp = "/sub/a?transport=jsonp&callback=f";
    let iframe = "/sub/a?transport=iframe&callback=f";
    let cases: &[(&str, Headers, Expect)] = &[
        (jsonp, &from_good, Expect::Allowed(200, None)),
        (jsonp, &from_evil, Expect::Refused),
        (jsonp, &lookalike, Expect::Refused),
        (jsonp, &[], Expect::Refused),
        (jsonp, &[("origin", GOOD)], Expect::Allowed(200, Some(GOOD))),
        (iframe, &from_good, Expect::Allowed(200, None)),
        (iframe, &from_evil, Expect::Refused),
        (iframe, &[], Expect::Refused),
        // Other transports are fetched by script, which sends Origin when cross-origin.
        ("/sub/a?transport=stream", &[], Expect::Allowed(200, None)),
    ];
    for &(path, headers, expect) in cases {
        check(&s, "GET", path, headers, expect).await;
    }
    s.assert_still_serving().await;
}

/// IE8/9's `XDomainRequest` (how the talk chat of the founding documents reached another
/// origin): GET or POST only, a `text/plain` body or none with no Content-Type, no custom
/// headers, no cookies, no preflight — and the answer is dropped unless it carries
/// `Access-Control-Allow-Origin` for the page. Publishing (the body is text) and a native
/// long-poll both work in that shape.
#[tokio::test]
async fn xdomainrequest_shaped_requests_publish_and_long_poll() {
    let s = any_origin().await;
    let origin = "http://old-ie.example";
    let xdr = |method: &str, path: &str, body: &'static str| {
        s.request(method, path)
            .header("origin", origin)
            .body(Full::new(bytes::Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    // The long-poll waits; the publish (no Content-Type at all) completes it.
    let poll = {
        let request = xdr("GET", "/sub/xdr/room?transport=longpoll", "");
        let client = common::Client::new(s.addr);
        tokio::spawn(async move { client.send(request).await })
    };
    s.wait_subscribers("/xdr/room", 1).await;
    let published = s.send(xdr("POST", "/pub/xdr/room", "hello from XDR")).await;
    assert_eq!(published.status, 200, "{}", published.body);
    assert_eq!(
        published.header("access-control-allow-origin"),
        Some(origin)
    );
    let answer = common::within("the long-poll", poll).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("access-control-allow-origin"), Some(origin));
    let messages = answer.json();
    assert_eq!(messages[0]["data"], "hello from XDR", "{messages}");
}
