//! `halley_delivery_latency_seconds` in `/metrics`: publish→write latency by transport, for
//! live messages only. Its own test binary: the histogram is process-wide.

mod common;

use common::{Client, TestServer, metric_value, ws_json};

fn count(metrics: &str, transport: &str) -> i64 {
    metric_value(
        metrics,
        &format!("halley_delivery_latency_seconds_count{{transport=\"{transport}\"}}"),
    )
    .unwrap_or_else(|| panic!("no count for {transport}:\n{metrics}"))
}

#[tokio::test]
async fn live_writes_are_counted_per_transport_and_replays_are_not() {
    let s = TestServer::start().await;
    let client = Client::new(s.addr);
    let mut sse = s.sse("/lat/a", None).await;
    let mut stream = s.stream("/sub/lat/a?transport=stream&format=json").await;
    let mut ws = s.ws("/sub/lat/a").await;
    s.wait_subscribers("/lat/a", 3).await;
    let poll = tokio::spawn(async move { client.get("/sub/lat/a?transport=longpoll").await });
    s.wait_subscribers("/lat/a", 4).await;
    let id = s.publish("/lat/a", "one").await;
    assert_eq!(sse.next().await.data, "one");
    assert_eq!(stream.json_line().await["data"], "one");
    assert_eq!(ws_json(&mut ws).await["data"], "one");
    assert_eq!(poll.await.unwrap().json()[0]["data"], "one");
    let metrics = client.get("/metrics").await.body;
    for transport in ["sse", "stream", "websocket", "longpoll"] {
        assert_eq!(count(&metrics, transport), 1, "{transport}");
        // Cumulative buckets ending in +Inf at the count; a sum.
        let inf = metric_value(
            &metrics,
            &format!(
                "halley_delivery_latency_seconds_bucket{{transport=\"{transport}\",le=\"+Inf\"}}"
            ),
        );
        assert_eq!(inf, Some(1), "{transport}");
        assert!(metrics.contains(&format!(
            "halley_delivery_latency_seconds_sum{{transport=\"{transport}\"}} "
        )));
    }
    assert!(metrics.contains("# TYPE halley_delivery_latency_seconds histogram"));
    // A resume's replay and recent's newest are history, not a publish's latency.
    s.publish("/lat/a", "two").await;
    let metrics = client.get("/metrics").await.body;
    let before = count(&metrics, "longpoll");
    let replayed = client
        .get(&format!("/sub/lat/a?transport=longpoll&last_id={id}"))
        .await;
    assert_eq!(replayed.json()[0]["data"], "two");
    let recent = client.get("/sub/lat/a?transport=longpoll&recent=2").await;
    assert_eq!(recent.json().as_array().unwrap().len(), 2);
    let metrics = client.get("/metrics").await.body;
    assert_eq!(count(&metrics, "longpoll"), before);
}
