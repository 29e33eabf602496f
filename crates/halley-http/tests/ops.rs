//! Operations endpoints: `/healthz`, `/metrics` (Prometheus text) and `/api/channels`.

mod common;

use std::time::Duration;

use common::{TestServer, metric_value};
use serde_json::{Value, json};

#[tokio::test]
async fn healthz_says_ok() {
    let s = TestServer::start().await;
    let reply = s.get("/healthz").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json(), json!({"status": "ok"}));
    s.post("/healthz", "text/plain", "").await.expect_error(405);
}

#[tokio::test]
async fn metrics_is_well_formed_prometheus_text() {
    let s = TestServer::start().await;
    let reply = s.get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let mut typed = Vec::new();
    let mut histograms = Vec::new();
    for line in reply.body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                kind == "gauge" || kind == "counter" || kind == "histogram",
                "{line}"
            );
            typed.push(name.to_owned());
            if kind == "histogram" {
                histograms.push(name.to_owned());
            }
        } else if !line.starts_with("# HELP ") {
            let (sample, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            let name = sample.split('{').next().unwrap();
            // A histogram's samples are its name with _bucket (an `le` label), _sum, _count.
            let histogram = histograms.iter().find(|h| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(h.as_str()))
            });
            match histogram {
                Some(_) if name.ends_with("_bucket") => {
                    assert!(sample.contains("le=\""), "{line:?}");
                    value.parse::<u64>().unwrap_or_else(|_| panic!("{line:?}"));
                }
                Some(_) if name.ends_with("_sum") => {
                    value.parse::<f64>().unwrap_or_else(|_| panic!("{line:?}"));
                }
                _ => {
                    assert!(
                        histogram.is_some() || typed.iter().any(|t| t == name),
                        "{name} has no # TYPE before it"
                    );
                    value.parse::<i64>().unwrap_or_else(|_| panic!("{line:?}"));
                }
            }
        }
    }
    assert!(histograms.contains(&"halley_delivery_latency_seconds".to_owned()));
    for name in [
        "halley_connections",
        "halley_messages_published_total",
        "halley_messages_dropped_total",
        "halley_subscribers_lagged_total",
        "halley_resume_gaps_total",
        "halley_bad_requests_total",
    ] {
        assert!(metric_value(&reply.body, name).is_some(), "{name} missing");
    }
    // The request being answered is an open connection.
    assert!(metric_value(&reply.body, "halley_connections").unwrap() >= 1);
}

#[tokio::test]
async fn message_counters_follow_publishes() {
    let s = TestServer::start().await;
    let _one = s.stream("/sub/m/a?transport=sse").await;
    let _two = s.stream("/sub/m/*?transport=stream").await;
    s.publish("/m/a", "x").await;
    s.publish("/m/b", "y").await;
    s.get("/nope").await;
    assert_eq!(s.metric("halley_messages_published_total").await, 2);
    assert_eq!(s.metric("halley_messages_delivered_total").await, 3);
    assert_eq!(s.metric("halley_subscriptions").await, 2);
    assert_eq!(s.metric("halley_bad_requests_total").await, 1);
}

/// Polls `sample` until it equals `expected` (the server notices a departed client
/// asynchronously).
async fn wait_metric(s: &TestServer, sample: &str, expected: i64) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut got = 0;
    for _ in 0..300 {
        tick.tick().await;
        got = s.metric(sample).await;
        if got == expected {
            return;
        }
    }
    panic!("{sample} stayed {got}, expected {expected}");
}

fn gauge(transport: &str) -> String {
    format!("halley_subscribers{{transport=\"{transport}\"}}")
}

#[tokio::test]
async fn subscriber_gauges_count_open_subscribers_by_transport() {
    let s = TestServer::start().await;
    // (gauge label, subscribe path)
    let streaming = [
        ("sse", "/sub/g/a?transport=sse"),
        ("stream", "/sub/g/a?transport=stream"),
        ("iframe", "/sub/g/a?transport=iframe&callback=f"),
        ("multipart", "/sub/g/a?transport=multipart"),
        ("gif", "/sub/g/a?transport=gif"),
        ("pull", "/pull?name=n&channel=/g/a"),
    ];
    for (label, path) in streaming {
        let open = s.stream(path).await;
        assert_eq!(s.metric(&gauge(label)).await, 1, "{path}");
        drop(open);
        wait_metric(&s, &gauge(label), 0).await;
    }
    let ws = s.ws("/sub/g/a").await;
    assert_eq!(s.metric(&gauge("websocket")).await, 1);
    drop(ws);
    wait_metric(&s, &gauge("websocket"), 0).await;

    for (label, path) in [
        ("longpoll", "/sub/g/lp"),
        ("jsonp", "/sub/g/lp?transport=jsonp&callback=f"),
    ] {
        let check = async {
            s.wait_subscribers("/g/lp", 1).await;
            assert_eq!(s.metric(&gauge(label)).await, 1, "{path}");
        };
        tokio::join!(s.get(path), check);
        assert_eq!(s.metric(&gauge(label)).await, 0, "{path}");
    }
    assert_eq!(s.metric("halley_subscriptions").await, 0);
}

#[tokio::test]
async fn channels_lists_channels_with_subscribers_and_last_ids() {
    let s = TestServer::start().await;
    let a = s.publish("/room/a", "1").await;
    let a2 = s.publish("/room/a", "2").await;
    let _sub_a = s.stream("/sub/room/a?transport=sse").await;
    let _sub_b1 = s.stream("/sub/room/b?transport=sse").await;
    let _sub_b2 = s.ws("/sub/room/b").await;
    let _wild = s.stream("/sub/room/**?transport=stream").await;
    s.publish("/roomy", "not in the prefix").await;
    s.publish("/other", "x").await;
    assert_ne!(a, a2);

    let reply = s.get("/api/channels?prefix=/room/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.json(),
        json!([
            {"channel": "/room/**", "subscribers": 1, "last_id": null},
            {"channel": "/room/a", "subscribers": 1, "last_id": a2},
            {"channel": "/room/b", "subscribers": 2, "last_id": null},
        ])
    );

    let all = s.get("/api/channels").await.json();
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["channel"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"/other") && names.contains(&"/roomy"),
        "{all}"
    );
    let empty = s.get("/api/channels?prefix=/nothing").await.json();
    assert_eq!(empty, Value::Array(Vec::new()));
}
