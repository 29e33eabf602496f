//! A worker process: opens its share of the subscribers and reports on stdout.
//!
//! Protocol with the parent (one line each): the worker prints `P <connected> <failed>
//! <dropped> <deliveries>` every [`TICK`], `READY` once every subscriber connected or failed,
//! and `RESULT <json>` when it reads `STOP` on stdin (or its deadline passes), then exits.
//! Latencies travel as an hdrhistogram V2 serialization in base64, so merging is exact.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Semaphore;

use crate::sub::{self, Kind, Stats, Target};

/// How often a worker reports progress.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub kind: Kind,
    pub target: Target,
    /// Global index of this worker's first subscriber (source address and channel).
    pub first: usize,
    pub count: usize,
    pub channels: usize,
    /// Connection attempts in flight at once.
    pub concurrency: usize,
    /// The worker reports and exits by itself after this long.
    pub deadline_secs: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub connected: u64,
    pub failed: u64,
    pub dropped: u64,
    pub deliveries: u64,
    pub last_recv_ns: u64,
    pub first_error: Option<String>,
    /// Latency histogram (µs), V2 serialization, base64.
    pub latency: String,
}

pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Serializing into a Vec cannot fail for I/O reasons; an error would be a library bug.
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .expect("histogram serializes");
    STANDARD.encode(bytes)
}

pub fn decode_histogram(text: &str) -> Option<Histogram<u64>> {
    let bytes = STANDARD.decode(text).ok()?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).ok()
}

pub async fn run(mut spec: WorkerSpec) {
    let stats = Arc::new(Stats::new());
    if let Err(e) = spec.target.load() {
        stats.error(format!("--header-file: {e}"));
    }
    let spec = Arc::new(spec);
    let gate = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    for i in 0..spec.count {
        let (stats, spec, gate) = (stats.clone(), spec.clone(), gate.clone());
        tokio::spawn(async move {
            let index = spec.first + i;
            // The permit bounds connection attempts in flight; the subscriber gives it back
            // once it is ready or failed, not when its connection ends.
            let Ok(permit) = gate.acquire_owned().await else {
                return;
            };
            sub::run(
                spec.kind,
                &spec.target,
                index,
                index % spec.channels,
                &stats,
                permit,
            )
            .await;
        });
    }
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let deadline = tokio::time::sleep(Duration::from_secs(spec.deadline_secs));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(TICK);
    let mut announced = false;
    loop {
        tokio::select! {
            line = stdin.next_line() => match line {
                Ok(Some(l)) if l.trim() == "STOP" => break,
                Ok(Some(_)) => {}
                _ => break,
            },
            () = &mut deadline => break,
            _ = tick.tick() => {
                let connected = stats.connected.load(Ordering::Relaxed);
                let failed = stats.failed.load(Ordering::Relaxed);
                println!(
                    "P {connected} {failed} {} {}",
                    stats.dropped.load(Ordering::Relaxed),
                    stats.deliveries.load(Ordering::Relaxed)
                );
                if !announced && connected + failed >= spec.count as u64 {
                    announced = true;
                    println!("READY");
                }
            }
        }
    }
    let result = WorkerResult {
        connected: stats.connected.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        dropped: stats.dropped.load(Ordering::Relaxed),
        deliveries: stats.deliveries.load(Ordering::Relaxed),
        last_recv_ns: stats.last_recv_ns.load(Ordering::Relaxed),
        first_error: stats
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        latency: encode_histogram(&stats.latency.lock().unwrap_or_else(|e| e.into_inner())),
    };
    // serde_json cannot fail on this plain struct.
    println!(
        "RESULT {}",
        serde_json::to_string(&result).expect("result serializes")
    );
    // Exit at once: the subscriber tasks hold their connections until the process ends.
    std::process::exit(0);
}
