//! A bounded smoke run of the `halley-bench` binary against an in-process Halley: a few
//! subscribers of every kind Halley serves, a few messages, two worker processes. It checks
//! that the generator counts every delivery exactly once — not speed (benchmarks are run by
//! hand, see bench/README.md).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use halley_engine::{Engine, EngineConfig};
use halley_http::{HttpConfig, Server};
use serde_json::Value;

async fn start() -> SocketAddr {
    let http = HttpConfig {
        // Cannot fail: a literal address.
        listen: "127.0.0.1:0".parse().unwrap(),
        // Short holds, so that long-poll and Bayeux connects are answered empty and re-issued
        // during the run.
        hold_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    };
    let server = Server::bind(http, Engine::in_memory(EngineConfig::default()))
        .await
        .expect("bind a test server");
    let addr = server.local_addr();
    tokio::spawn(server.run());
    addr
}

fn bench(args: Vec<String>) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_halley-bench"))
        .args(&args)
        .output()
        .expect("run halley-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no JSON from {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).expect("valid JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_gets_every_message_once() {
    let addr = start().await.to_string();
    for kind in ["sse", "stream", "longpoll", "ws", "bayeux-lp", "bayeux-ws"] {
        let args = [
            "fanout",
            "--target",
            &addr,
            "--kind",
            kind,
            "-n",
            "6",
            "--procs",
            "2",
            "--messages",
            "4",
            "--interval-ms",
            "150",
            "--settle",
            "0.3",
            "--drain-timeout",
            "5",
            "--run-timeout",
            "30",
        ];
        let args = args.iter().map(|a| a.to_string()).collect();
        let result = tokio::task::spawn_blocking(move || bench(args))
            .await
            .unwrap();
        assert_eq!(result["connected"], 6, "{kind}: {result}");
        assert_eq!(result["published"], 4, "{kind}: {result}");
        assert_eq!(result["deliveries"], 24, "{kind}: {result}");
        assert_eq!(result["latency"]["count"], 24, "{kind}: {result}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_counts_publishes_and_deliveries() {
    let addr = start().await.to_string();
    let args = [
        "throughput",
        "--target",
        &addr,
        "--kind",
        "sse",
        "--channels",
        "3",
        "--subs",
        "2",
        "--publishers",
        "2",
        "--duration",
        "1",
        "--max-publishes",
        "60",
        "--settle",
        "0.3",
        "--drain-timeout",
        "5",
        "--run-timeout",
        "30",
    ];
    let args = args.iter().map(|a| a.to_string()).collect();
    let result = tokio::task::spawn_blocking(move || bench(args))
        .await
        .unwrap();
    assert_eq!(result["connected"], 6, "{result}");
    let published = result["published"].as_u64().unwrap();
    assert!(published > 0, "{result}");
    assert_eq!(
        result["deliveries"].as_u64().unwrap(),
        published * 2,
        "{result}"
    );
}
