//! `POST /api/latency`: halley.js's delivery-latency reports into
//! `halley_client_latency_seconds{transport}` in `/metrics` — counted, refused whole when bad,
//! judged by the access policy, rate-limited per source, and open to CORS like the other
//! `/api` endpoints. Its own test binary: the histogram is process-wide, so each test below
//! counts on a transport of its own.

mod common;

use common::{Client, Reply, TestServer, hs256, metric_value, now};
use halley_engine::access::{
    AccessConfig, NamespaceConfig, PublishRule, SubscribeRule, TokenConfig,
};
use halley_http::latency::{BURST_SECONDS, MAX_BODY, MAX_SAMPLES, REPORTS_PER_SECOND};
use http_body_util::Full;
use serde_json::json;

fn count(metrics: &str, transport: &str) -> i64 {
    metric_value(
        metrics,
        &format!("halley_client_latency_seconds_count{{transport=\"{transport}\"}}"),
    )
    .unwrap_or_else(|| panic!("no count for {transport}:\n{metrics}"))
}

fn bucket(metrics: &str, transport: &str, le: &str) -> i64 {
    metric_value(
        metrics,
        &format!("halley_client_latency_seconds_bucket{{transport=\"{transport}\",le=\"{le}\"}}"),
    )
    .unwrap_or_else(|| panic!("no bucket {le} for {transport}:\n{metrics}"))
}

async fn report(s: &Client, channel: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = s
        .request("POST", &format!("/api/latency?channel={channel}"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    s.send(request.body(Full::new(body.to_owned().into())).unwrap())
        .await
}

#[tokio::test]
async fn a_report_is_counted_in_the_client_histogram_and_cors_allows_it() {
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    let before = count(&client.get("/metrics").await.body, "sse");
    assert_eq!(before, 0);
    let origin = [("origin", "http://page.example")];
    // 0.05 ms, 3 ms and 20 s: the first bucket, le 5 ms, and +Inf.
    let reply = report(
        &client,
        "/lat/a",
        r#"{"transport":"sse","ms":[0.05,3,20000]}"#,
        &origin,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json(), json!({ "recorded": 3 }));
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("http://page.example")
    );
    let metrics = client.get("/metrics").await.body;
    assert!(metrics.contains("# TYPE halley_client_latency_seconds histogram"));
    assert_eq!(count(&metrics, "sse"), 3);
    assert_eq!(bucket(&metrics, "sse", "0.0001"), 1);
    assert_eq!(bucket(&metrics, "sse", "0.005"), 2);
    assert_eq!(bucket(&metrics, "sse", "10"), 2);
    assert_eq!(bucket(&metrics, "sse", "+Inf"), 3);
    assert!(
        metrics.contains("halley_client_latency_seconds_sum{transport=\"sse\"} 20.00305\n"),
        "{metrics}"
    );
    // Every one of halley.js's transports has its series, and only those.
    for transport in ["websocket", "sse", "stream", "longpoll", "jsonp", "poll"] {
        count(&metrics, transport);
    }
    assert!(!metrics.contains("halley_client_latency_seconds_count{transport=\"gif\"}"));
    // A browser's preflight for the JSON POST is answered like any /api endpoint's.
    let preflight = client
        .send(
            client
                .request("OPTIONS", "/api/latency?channel=/lat/a")
                .header("origin", "http://page.example")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert!(preflight.status.is_success(), "{preflight:?}");
    assert!(
        preflight
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("POST")),
        "{preflight:?}"
    );
}

#[tokio::test]
async fn bad_reports_are_refused_whole_with_a_json_error() {
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    let many = vec!["1"; MAX_SAMPLES + 1].join(",");
    let too_many = format!(r#"{{"transport":"websocket","ms":[{many}]}}"#);
    let padded = format!(
        r#"{{"transport":"websocket","ms":[1{}]}}"#,
        " ".repeat(MAX_BODY)
    );
    let cases: Vec<(&str, String, u16)> = vec![
        ("/lat/b", r#"{"transport":"pigeon","ms":[1]}"#.into(), 400),
        ("/lat/b", too_many, 400),
        ("/lat/b", r#"{"transport":"websocket","ms":[]}"#.into(), 400),
        (
            "/lat/b",
            r#"{"transport":"websocket","ms":[1,-5]}"#.into(),
            400,
        ),
        (
            "/lat/b",
            r#"{"transport":"websocket","ms":[1,NaN]}"#.into(),
            400,
        ),
        (
            "/lat/b",
            r#"{"transport":"websocket","ms":[1,1e300]}"#.into(),
            400,
        ),
        (
            "/lat/b",
            r#"{"transport":"websocket","ms":[1,"2"]}"#.into(),
            400,
        ),
        ("/lat/b", r#"{"transport":"websocket","ms":1}"#.into(), 400),
        (
            "/lat/b",
            r#"{"transport":"websocket","ms":[1],"x":1}"#.into(),
            400,
        ),
        ("/lat/b", "not json".into(), 400),
        ("/lat/b", padded, 413),
        (
            "/lat/b&extra=1",
            r#"{"transport":"websocket","ms":[1]}"#.into(),
            400,
        ),
        (
            "bad channel",
            r#"{"transport":"websocket","ms":[1]}"#.into(),
            400,
        ),
    ];
    for (channel, body, status) in &cases {
        let reply = report(&client, &channel.replace(' ', "%20"), body, &[]).await;
        reply.expect_error(*status);
    }
    // No channel at all.
    client
        .post(
            "/api/latency",
            "application/json",
            r#"{"transport":"websocket","ms":[1]}"#,
        )
        .await
        .expect_error(400);
    // Only POST.
    let get = client.get("/api/latency?channel=/lat/b").await;
    assert_eq!(get.status, 405);
    assert_eq!(count(&client.get("/metrics").await.body, "websocket"), 0);
}

#[tokio::test]
async fn the_caller_must_be_allowed_to_subscribe_to_the_channel() {
    const SECRET: &str = "test-secret-of-32-bytes-or-more!";
    let s = TestServer::with_access(AccessConfig {
        publish_key: Some("backend-key".into()),
        tokens: TokenConfig {
            hs256_secret: Some(SECRET.into()),
            ..TokenConfig::default()
        },
        namespaces: vec![NamespaceConfig {
            subscribe: SubscribeRule::Token,
            publish: PublishRule::Claim,
            ..NamespaceConfig::new("/chat/**")
        }],
        app: None,
    })
    .await;
    let client = Client::new(s.addr);
    let body = r#"{"transport":"stream","ms":[5]}"#;
    report(&client, "/chat/a", body, &[])
        .await
        .expect_error(401);
    let token = hs256(&json!({ "sub": "alice", "exp": now() + 3600 }), SECRET);
    let bearer = format!("Bearer {token}");
    let with_token = [("authorization", bearer.as_str())];
    // A namespace nobody may subscribe to is refused even with a token.
    report(&client, "/locked/a", body, &with_token)
        .await
        .expect_error(403);
    let reply = report(&client, "/chat/a", body, &with_token).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(count(&client.get("/metrics").await.body, "stream"), 1);
}

#[tokio::test]
async fn one_source_cannot_flood_the_histogram() {
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    let burst = (REPORTS_PER_SECOND * BURST_SECONDS) as usize;
    let body = r#"{"transport":"longpoll","ms":[1]}"#;
    let started = std::time::Instant::now();
    let mut accepted = 0;
    let refused = loop {
        let reply = report(&client, "/lat/c", body, &[]).await;
        if reply.status != 200 {
            break reply;
        }
        accepted += 1;
        assert!(accepted <= 4 * burst, "never refused");
    };
    refused.expect_error(429);
    let retry: u64 = refused
        .header("retry-after")
        .expect("a Retry-After on the 429")
        .parse()
        .expect("whole seconds");
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    // The burst, and what refilled while the requests were made.
    let refilled = started.elapsed().as_secs() as usize * REPORTS_PER_SECOND as usize + 1;
    assert!(
        accepted >= burst && accepted <= burst + refilled,
        "{accepted} accepted, burst {burst}"
    );
    assert_eq!(
        count(&client.get("/metrics").await.body, "longpoll"),
        accepted as i64
    );
}
