//! `halley-bench`: a load generator for Comet servers — Halley, Nchan, any Bayeux server (Faye,
//! CometD), Centrifuge/Centrifugo, Pushpin and socket.io — so that one tool measures all of
//! them by the same rules.
//!
//! Scenarios ([`Scenario`]):
//! - `hold`: N idle subscribers; connect rate and, with `--pid`, server RSS per subscriber.
//! - `fanout`: N subscribers on one channel, M publishes spaced by `--interval-ms`;
//!   per-delivery latency percentiles and deliveries/s.
//! - `throughput`: C channels × S subscribers, publishers at full speed for `--duration`;
//!   publishes/s, deliveries/s, latency under load, server CPU seconds per million deliveries.
//!
//! The subscribers run in `--procs` worker processes (this binary re-executed with the hidden
//! `worker` subcommand, see [`worker`]), because one process may hold at most 20,000 files on
//! the benchmark machine; the parent publishes, reads `/proc/PID` of the server, and merges the
//! workers' latency histograms. Every payload carries its send time (`"ts"`, nanoseconds of
//! CLOCK_REALTIME, which all processes share), and a subscriber counts each `"ts":` it reads as
//! one delivery, whatever the framing.
//!
//! Why raw sockets and not an HTTP client: a subscriber here is one `TcpStream`, one read
//! buffer and a few bytes of parser state ([`wire`]), so 10,000 of them cost the generator
//! a few tens of MiB and little CPU — the generator shares two cores with the server it
//! measures, and every cycle it spends is taken from the server. A full HTTP client per
//! connection would cost several times that and add its own buffering to the latencies.
//! The parsing is exactly what these responses need: an httparse response head, chunked
//! decoding, WebSocket frames, and a search for one marker.
//!
//! Every run is bounded: connects time out (`--connect-timeout`), the wait for deliveries
//! times out (`--drain-timeout`), and each worker exits by itself after `--run-timeout`.

mod floor;
mod publish;
mod sub;
mod wire;
mod worker;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::publish::{PublishTo, Publisher};
use crate::sub::{Kind, Target, new_histogram};
use crate::worker::{WorkerResult, WorkerSpec, decode_histogram};

#[derive(Parser)]
#[command(
    name = "halley-bench",
    version,
    about = "Load generator for Halley, Nchan, Bayeux, Centrifuge, Pushpin and socket.io servers"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N idle subscribers: connect rate, server RSS per subscriber.
    Hold {
        #[command(flatten)]
        common: Common,
        /// Keep the subscribers connected this long after RSS is read (seconds).
        #[arg(long, default_value_t = 0)]
        hold_secs: u64,
    },
    /// N subscribers on one channel, M publishes: delivery latency and rate.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        publish: PublishArgs,
        /// Number of publishes.
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Pause between publishes (milliseconds).
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
    },
    /// C channels × S subscribers, publishers at full speed for a while.
    Throughput {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        publish: PublishArgs,
        /// Publishing time (seconds).
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Concurrent publisher connections (one publish in flight each).
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        /// Stop publishing after this many publishes in all, even before --duration.
        #[arg(long, default_value_t = 10_000_000)]
        max_publishes: u64,
        /// Publishes per second in all, spread evenly over the publishers (each keeps its own
        /// schedule, so a slow answer delays only its own next publishes); 0: each publishes
        /// again as soon as it is answered. A fixed rate compares servers' latency at the same
        /// load, where flat out the faster server is also the more loaded one.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// A minimal broadcast server to measure the others against (see `floor.rs`): GET is an
    /// SSE subscriber, POST is written to every subscriber, one write each, one thread.
    Floor {
        #[arg(long, default_value = "127.0.0.1:8050")]
        listen: SocketAddr,
    },
    /// Internal: one worker process (spawned by the others).
    #[command(hide = true)]
    Worker { spec: String },
}

#[derive(Args, Clone)]
struct Common {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8000")]
    target: SocketAddr,
    /// Subscriber kind.
    #[arg(long, value_enum, default_value = "sse")]
    kind: Kind,
    /// Number of subscribers (fanout, hold); throughput uses --channels × --subs.
    #[arg(long, short, default_value_t = 1000)]
    n: usize,
    /// Channels (throughput; subscriber i is on channel i mod channels).
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Subscribers per channel (throughput).
    #[arg(long, default_value_t = 10)]
    subs: usize,
    /// Worker processes for the subscribers (each may hold < 20,000 files here).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Server process(es) to watch: RSS from /proc/PID/status, CPU from /proc/PID/stat
    /// (summed when given several times, e.g. nginx workers).
    #[arg(long)]
    pid: Vec<u32>,
    /// Channel name prefix: channel i is PREFIX/i (Nchan id: PREFIX-i without slashes).
    #[arg(long, default_value = "/bench")]
    prefix: String,
    /// Bayeux endpoint path (Halley /cometd, Faye e.g. /faye).
    #[arg(long, default_value = "/cometd")]
    cometd_path: String,
    /// Nchan subscriber location.
    #[arg(long, default_value = "/sub")]
    nchan_sub: String,
    /// Nchan publisher location.
    #[arg(long, default_value = "/pub")]
    nchan_pub: String,
    /// Publish to this address instead of --target (Pushpin takes publishes on its own port,
    /// 5561 by default).
    #[arg(long)]
    publish_target: Option<SocketAddr>,
    /// Connect timeout per connection (milliseconds).
    #[arg(long, default_value_t = 10_000)]
    connect_timeout: u64,
    /// Connection attempts in flight per worker.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Time allowed for all subscribers to connect (seconds).
    #[arg(long, default_value_t = 120)]
    ready_timeout: u64,
    /// Wait after the last subscriber connected before reading RSS or publishing (seconds).
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Time allowed after the last publish for deliveries to arrive (seconds).
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Workers exit by themselves after this long, whatever happens (seconds).
    #[arg(long, default_value_t = 600)]
    run_timeout: u64,
    /// Free-form label copied into the JSON result (e.g. "halley", "nchan").
    #[arg(long, default_value = "")]
    label: String,
    /// Append the JSON result line to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// An extra request header for every request (`Authorization: Bearer …`); repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// A file of header lines, one per subscriber in turn (subscriber i sends line i mod N):
    /// e.g. `Authorization: Bearer …` with a different user's token on each line.
    #[arg(long)]
    header_file: Option<std::path::PathBuf>,
}

#[derive(Args, Clone)]
struct PublishArgs {
    /// Where to publish; default from --kind (Halley for native kinds, Nchan for nchan-sse,
    /// Bayeux for bayeux-*/faye).
    #[arg(long, value_enum)]
    publish_to: Option<PublishTo>,
    /// Payload size in bytes (at least 35: {"ts":…,"pad":""}).
    #[arg(long, default_value_t = 64)]
    size: usize,
}

impl Common {
    fn target(&self) -> Target {
        Target {
            addr: self.target,
            prefix: self.prefix.trim_end_matches('/').to_string(),
            cometd_path: self.cometd_path.clone(),
            nchan_sub: self.nchan_sub.clone(),
            nchan_pub: self.nchan_pub.clone(),
            publish_addr: self.publish_target,
            connect_timeout_ms: self.connect_timeout,
            headers: self.headers.clone(),
            header_file: self.header_file.clone(),
            per_subscriber: Vec::new(),
        }
    }
}

fn default_publish(kind: Kind) -> PublishTo {
    match kind {
        Kind::NchanSse => PublishTo::Nchan,
        Kind::BayeuxLp | Kind::BayeuxWs | Kind::Faye => PublishTo::Bayeux,
        Kind::CentrifugeSse | Kind::CentrifugeWs => PublishTo::Centrifugo,
        Kind::PushpinSse => PublishTo::Pushpin,
        Kind::SocketioWs => PublishTo::Socketio,
        Kind::Sse | Kind::Stream | Kind::Gif | Kind::Longpoll | Kind::Ws => PublishTo::Halley,
    }
}

fn main() {
    let cli = Cli::parse();
    if let Scenario::Floor { listen } = cli.scenario {
        if let Err(e) = floor::run(listen) {
            fail(&format!("floor server: {e}"));
        }
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("cannot start the runtime: {e}")));
    runtime.block_on(async move {
        match cli.scenario {
            Scenario::Worker { spec } => {
                let spec: WorkerSpec = serde_json::from_str(&spec)
                    .unwrap_or_else(|e| fail(&format!("bad worker spec: {e}")));
                worker::run(spec).await;
            }
            Scenario::Hold { common, hold_secs } => hold(common, hold_secs).await,
            Scenario::Fanout {
                common,
                publish,
                messages,
                interval_ms,
            } => fanout(common, publish, messages, interval_ms).await,
            Scenario::Throughput {
                common,
                publish,
                duration,
                publishers,
                max_publishes,
                rate,
            } => throughput(common, publish, duration, publishers, max_publishes, rate).await,
            Scenario::Floor { .. } => unreachable!("handled before the runtime starts"),
        }
    });
}

fn fail(message: &str) -> ! {
    eprintln!("halley-bench: {message}");
    std::process::exit(2);
}

/// The server's resident memory (KiB), summed over `pids`.
fn rss_kib(pids: &[u32]) -> Option<u64> {
    pids.iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// The server's user + system CPU time (seconds), summed over `pids`. Linux reports it in
/// USER_HZ ticks, which are 1/100 s on every architecture this runs on.
/// The server's CPU time so far, in seconds: (user, kernel), summed over `pids`. On loopback
/// the kernel half includes receive work done for the clients in the sender's context.
fn cpu_secs(pids: &[u32]) -> Option<(f64, f64)> {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the parenthesised command name; utime and stime are fields 14, 15.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some((utime as f64 / 100.0, stime as f64 / 100.0))
        })
        .try_fold((0.0, 0.0), |(u, k), one: Option<(f64, f64)>| {
            one.map(|(du, dk)| (u + du, k + dk))
        })
}

/// CPU seconds between two [`cpu_secs`] readings: (total, kernel).
fn cpu_used(before: Option<(f64, f64)>, after: Option<(f64, f64)>) -> Option<(f64, f64)> {
    before
        .zip(after)
        .map(|((u0, k0), (u1, k1))| (u1 - u0 + k1 - k0, k1 - k0))
}

/// The worker processes and what they last reported.
struct Workers {
    stdins: Vec<ChildStdin>,
    children: Vec<Child>,
    events: mpsc::UnboundedReceiver<(usize, String)>,
    progress: Vec<[u64; 4]>,
    ready: Vec<bool>,
    results: HashMap<usize, WorkerResult>,
}

impl Workers {
    fn spawn(common: &Common, total: usize, channels: usize) -> Workers {
        let exe = std::env::current_exe().unwrap_or_else(|e| fail(&format!("current_exe: {e}")));
        let procs = common.procs.clamp(1, total.max(1));
        let (tx, events) = mpsc::unbounded_channel();
        let (mut stdins, mut children) = (Vec::new(), Vec::new());
        let mut first = 0;
        for w in 0..procs {
            let count = total / procs + usize::from(w < total % procs);
            let spec = WorkerSpec {
                kind: common.kind,
                target: common.target(),
                first,
                count,
                channels: channels.max(1),
                concurrency: common.concurrency,
                deadline_secs: common.run_timeout,
            };
            first += count;
            let mut child = Command::new(&exe)
                .arg("worker")
                // serde_json cannot fail on this plain struct.
                .arg(serde_json::to_string(&spec).expect("spec serializes"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| fail(&format!("cannot start a worker: {e}")));
            stdins.push(child.stdin.take().expect("stdin is piped"));
            let stdout = child.stdout.take().expect("stdout is piped");
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if tx.send((w, line)).is_err() {
                        break;
                    }
                }
                let _ = tx.send((w, "EXIT".into()));
            });
            children.push(child);
        }
        Workers {
            stdins,
            children,
            events,
            progress: vec![[0; 4]; procs],
            ready: vec![false; procs],
            results: HashMap::new(),
        }
    }

    fn sum(&self, field: usize) -> u64 {
        self.progress.iter().map(|p| p[field]).sum()
    }

    fn connected(&self) -> u64 {
        self.sum(0)
    }

    fn deliveries(&self) -> u64 {
        self.sum(3)
    }

    /// Handles one line from a worker; false once no worker can report any more.
    async fn step(&mut self, until: Instant) -> bool {
        let Ok(Some((w, line))) = tokio::time::timeout_at(until.into(), self.events.recv()).await
        else {
            return false;
        };
        if let Some(rest) = line.strip_prefix("P ") {
            let v: Vec<u64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
            if v.len() == 4 {
                self.progress[w] = [v[0], v[1], v[2], v[3]];
            }
        } else if line == "READY" {
            self.ready[w] = true;
        } else if let Some(json) = line.strip_prefix("RESULT ") {
            if let Ok(result) = serde_json::from_str(json) {
                self.results.insert(w, result);
            }
        } else if line == "EXIT" {
            self.ready[w] = true;
        }
        true
    }

    /// Handles worker lines until `until`, so that their pipes never fill up while the
    /// parent waits; sleeps instead once no worker can report any more.
    async fn idle(&mut self, until: Instant) {
        while Instant::now() < until {
            if !self.step(until).await {
                tokio::time::sleep_until(until.into()).await;
            }
        }
    }

    async fn wait_ready(&mut self, total: usize, timeout: Duration) -> bool {
        let bar = bar(total as u64, "connect");
        let until = Instant::now() + timeout;
        while !self.ready.iter().all(|r| *r) {
            if !self.step(until).await {
                break;
            }
            bar.set_position(self.connected() + self.sum(1));
        }
        bar.finish_and_clear();
        self.ready.iter().all(|r| *r)
    }

    async fn wait_deliveries(&mut self, expected: u64, until: Instant) {
        let bar = bar(expected, "deliver");
        while self.deliveries() < expected {
            if !self.step(until).await {
                break;
            }
            bar.set_position(self.deliveries());
        }
        bar.finish_and_clear();
    }

    /// Asks every worker for its result and waits (bounded) for all of them.
    async fn finish(mut self) -> Vec<WorkerResult> {
        for stdin in &mut self.stdins {
            let _ = stdin.write_all(b"STOP\n").await;
            let _ = stdin.flush().await;
        }
        let until = Instant::now() + Duration::from_secs(30);
        while self.results.len() < self.children.len() {
            if !self.step(until).await {
                break;
            }
        }
        for child in &mut self.children {
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
        let mut results: Vec<_> = self.results.into_iter().collect();
        results.sort_by_key(|(w, _)| *w);
        results.into_iter().map(|(_, r)| r).collect()
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} {{per_sec}} {{elapsed}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// What every scenario reports about its subscribers.
struct Merged {
    connected: u64,
    failed: u64,
    dropped: u64,
    deliveries: u64,
    last_recv_ns: u64,
    latency: Histogram<u64>,
    first_error: Option<String>,
}

fn merge(results: &[WorkerResult]) -> Merged {
    let mut latency = new_histogram();
    for r in results {
        if let Some(h) = decode_histogram(&r.latency) {
            let _ = latency.add(&h);
        }
    }
    Merged {
        connected: results.iter().map(|r| r.connected).sum(),
        failed: results.iter().map(|r| r.failed).sum(),
        dropped: results.iter().map(|r| r.dropped).sum(),
        deliveries: results.iter().map(|r| r.deliveries).sum(),
        last_recv_ns: results.iter().map(|r| r.last_recv_ns).max().unwrap_or(0),
        latency,
        first_error: results.iter().find_map(|r| r.first_error.clone()),
    }
}

fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p90_ms": ms(h.value_at_quantile(0.9)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
        "mean_ms": h.mean() / 1000.0,
        // The CDF at 1% steps, for plots.
        "cdf_ms": (1..=100).map(|p| ms(h.value_at_quantile(p as f64 / 100.0))).collect::<Vec<_>>(),
    })
}

fn base_json(scenario: &str, common: &Common, merged: &Merged) -> serde_json::Value {
    json!({
        "scenario": scenario,
        "label": common.label,
        "kind": common.kind,
        "target": common.target.to_string(),
        "procs": common.procs,
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "connected": merged.connected,
        "failed": merged.failed,
        "dropped": merged.dropped,
        "first_error": merged.first_error,
    })
}

/// The human summary goes to stderr and the JSON line to stdout, so that scripts can read
/// stdout as JSON.
fn emit(common: &Common, summary: &str, result: serde_json::Value) {
    eprintln!("{summary}");
    let line = result.to_string();
    println!("{line}");
    if let Some(path) = &common.json {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            eprintln!("halley-bench: cannot write {}: {e}", path.display());
        }
    }
}

fn errors_line(m: &Merged) -> String {
    match (&m.first_error, m.failed + m.dropped) {
        (Some(e), n) if n > 0 => format!(
            "\n  {} failed, {} dropped; first error: {e}",
            m.failed, m.dropped
        ),
        _ => String::new(),
    }
}

/// Connects `n` subscribers; returns the workers, the seconds it took and the RSS before.
async fn connect_all(common: &Common, n: usize, channels: usize) -> (Workers, f64, Option<u64>) {
    let rss_before = rss_kib(&common.pid);
    let start = Instant::now();
    let mut workers = Workers::spawn(common, n, channels);
    if !workers
        .wait_ready(n, Duration::from_secs(common.ready_timeout))
        .await
    {
        eprintln!(
            "halley-bench: only {} of {n} subscribers connected within {} s",
            workers.connected(),
            common.ready_timeout
        );
    }
    let secs = start.elapsed().as_secs_f64();
    workers
        .idle(Instant::now() + Duration::from_secs_f64(common.settle.max(0.0)))
        .await;
    (workers, secs, rss_before)
}

fn per_subscriber(before: Option<u64>, after: Option<u64>, connected: u64) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if connected > 0 => Some((a as f64 - b as f64) / connected as f64),
        _ => None,
    }
}

async fn hold(common: Common, hold_secs: u64) {
    let n = common.n;
    let (mut workers, secs, rss_before) = connect_all(&common, n, 1).await;
    let rss_after = rss_kib(&common.pid);
    workers
        .idle(Instant::now() + Duration::from_secs(hold_secs))
        .await;
    let merged = merge(&workers.finish().await);
    let per_sub = per_subscriber(rss_before, rss_after, merged.connected);
    let rate = merged.connected as f64 / secs;
    let mut result = base_json("hold", &common, &merged);
    result["n"] = json!(n);
    result["connect_secs"] = json!(secs);
    result["connect_rate"] = json!(rate);
    result["rss_before_kib"] = json!(rss_before);
    result["rss_after_kib"] = json!(rss_after);
    result["kib_per_subscriber"] = json!(per_sub);
    let summary = format!(
        "hold {:?} {}: {}/{n} connected in {secs:.1} s ({rate:.0}/s); server RSS {} → {} KiB, {} KiB per subscriber{}",
        common.kind,
        common.target,
        merged.connected,
        rss_before.map_or("?".into(), |v| v.to_string()),
        rss_after.map_or("?".into(), |v| v.to_string()),
        per_sub.map_or("?".into(), |v| format!("{v:.2}")),
        errors_line(&merged),
    );
    emit(&common, &summary, result);
}

async fn fanout(common: Common, publish: PublishArgs, messages: usize, interval_ms: u64) {
    let n = common.n;
    let (mut workers, secs, rss_before) = connect_all(&common, n, 1).await;
    let rss_after = rss_kib(&common.pid);
    let cpu_before = cpu_secs(&common.pid);
    let to = publish.publish_to.unwrap_or(default_publish(common.kind));
    // The publisher's source address lies past every subscriber's.
    let mut publisher = Publisher::new(to, common.target(), n + 1, publish.size);
    let first_publish_ns = wire::now_ns();
    let (mut published, mut publish_errors, mut first_publish_error) = (0u64, 0u64, None);
    let mut next = Instant::now();
    for _ in 0..messages {
        match tokio::time::timeout(Duration::from_secs(30), publisher.publish(0)).await {
            Ok(Ok(())) => published += 1,
            Ok(Err(e)) => {
                publish_errors += 1;
                first_publish_error.get_or_insert(e.to_string());
            }
            Err(_) => {
                publish_errors += 1;
                first_publish_error.get_or_insert("publish timed out".into());
            }
        }
        next += Duration::from_millis(interval_ms);
        workers.idle(next).await;
    }
    let expected = published * workers.connected();
    workers
        .wait_deliveries(
            expected,
            Instant::now() + Duration::from_secs(common.drain_timeout),
        )
        .await;
    let cpu_after = cpu_secs(&common.pid);
    let merged = merge(&workers.finish().await);
    let span = (merged.last_recv_ns.saturating_sub(first_publish_ns)) as f64 / 1e9;
    let rate = if span > 0.0 {
        merged.deliveries as f64 / span
    } else {
        0.0
    };
    let used = cpu_used(cpu_before, cpu_after);
    let cpu = used.map(|(total, _)| total);
    let mut result = base_json("fanout", &common, &merged);
    result["n"] = json!(n);
    result["publish_to"] = json!(to);
    result["size"] = json!(publish.size);
    result["messages"] = json!(messages);
    result["interval_ms"] = json!(interval_ms);
    result["published"] = json!(published);
    result["publish_errors"] = json!(publish_errors);
    result["first_publish_error"] = json!(first_publish_error);
    result["connect_secs"] = json!(secs);
    result["rss_before_kib"] = json!(rss_before);
    result["rss_after_kib"] = json!(rss_after);
    result["kib_per_subscriber"] = json!(per_subscriber(rss_before, rss_after, merged.connected));
    result["expected"] = json!(expected);
    result["deliveries"] = json!(merged.deliveries);
    result["deliveries_per_sec"] = json!(rate);
    result["server_cpu_secs"] = json!(cpu);
    result["server_kernel_secs"] = json!(used.map(|(_, kernel)| kernel));
    result["latency"] = latency_json(&merged.latency);
    let h = &merged.latency;
    let summary = format!(
        "fanout {:?} {} → {to:?}: {} subscribers, {published}/{messages} published, {}/{expected} delivered ({rate:.0}/s)\n  latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}{}",
        common.kind,
        common.target,
        merged.connected,
        merged.deliveries,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        first_publish_error.map_or(String::new(), |e| format!(
            "\n  {publish_errors} publish errors; first: {e}"
        )),
        errors_line(&merged),
    );
    emit(&common, &summary, result);
}

async fn throughput(
    common: Common,
    publish: PublishArgs,
    duration: u64,
    publishers: usize,
    max_publishes: u64,
    rate: f64,
) {
    let channels = common.channels.max(1);
    let n = channels * common.subs;
    let (mut workers, _, rss_before) = connect_all(&common, n, channels).await;
    let to = publish.publish_to.unwrap_or(default_publish(common.kind));
    let cpu_before = cpu_secs(&common.pid);
    let deliveries_before = workers.deliveries();
    let start = Instant::now();
    let stop_at = start + Duration::from_secs(duration);
    let per_publisher = max_publishes / publishers.max(1) as u64;
    let mut tasks = Vec::new();
    for p in 0..publishers.max(1) {
        let mut publisher = Publisher::new(to, common.target(), n + 1 + p, publish.size);
        let publishers = publishers.max(1);
        // This publisher's share of --rate; its first publish is offset by its place among
        // the others, so that together they publish evenly rather than in bursts.
        let interval = (rate > 0.0).then(|| Duration::from_secs_f64(publishers as f64 / rate));
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
            let mut k = 0usize;
            while Instant::now() < stop_at && ok + errors < per_publisher {
                if let Some(interval) = interval {
                    let due = start + interval.mul_f64(k as f64 + p as f64 / publishers as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let channel = (k * publishers + p) % channels;
                k += 1;
                match tokio::time::timeout(Duration::from_secs(10), publisher.publish(channel))
                    .await
                {
                    Ok(Ok(())) => ok += 1,
                    Ok(Err(e)) => {
                        errors += 1;
                        first_error.get_or_insert(e.to_string());
                    }
                    Err(_) => errors += 1,
                }
            }
            (ok, errors, first_error)
        }));
    }
    while tasks.iter().any(|t| !t.is_finished()) {
        workers
            .idle(Instant::now() + Duration::from_millis(100))
            .await;
    }
    let publish_secs = start.elapsed().as_secs_f64();
    let (mut published, mut publish_errors, mut first_publish_error) = (0u64, 0u64, None);
    for t in tasks {
        if let Ok((ok, errors, first)) = t.await {
            published += ok;
            publish_errors += errors;
            first_publish_error = first_publish_error.or(first);
        }
    }
    let expected = deliveries_before + published * common.subs as u64;
    workers
        .wait_deliveries(
            expected,
            Instant::now() + Duration::from_secs(common.drain_timeout),
        )
        .await;
    let cpu_after = cpu_secs(&common.pid);
    let rss_after = rss_kib(&common.pid);
    let elapsed = start.elapsed().as_secs_f64();
    let merged = merge(&workers.finish().await);
    let delivered = merged.deliveries - deliveries_before;
    let span = (merged.last_recv_ns as f64 / 1e9)
        - (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
            - elapsed);
    let span = if span > 0.0 { span } else { elapsed };
    let used = cpu_used(cpu_before, cpu_after);
    let cpu = used.map(|(total, _)| total);
    let cpu_per_million = cpu
        .filter(|_| delivered > 0)
        .map(|c| c / delivered as f64 * 1e6);
    let mut result = base_json("throughput", &common, &merged);
    result["channels"] = json!(channels);
    result["subs"] = json!(common.subs);
    result["publish_to"] = json!(to);
    result["publishers"] = json!(publishers);
    result["rate"] = json!(rate);
    result["size"] = json!(publish.size);
    result["published"] = json!(published);
    result["publish_errors"] = json!(publish_errors);
    result["first_publish_error"] = json!(first_publish_error);
    result["publish_secs"] = json!(publish_secs);
    result["publishes_per_sec"] = json!(published as f64 / publish_secs);
    result["expected"] = json!(expected - deliveries_before);
    result["deliveries"] = json!(delivered);
    result["deliveries_per_sec"] = json!(delivered as f64 / span);
    result["rss_before_kib"] = json!(rss_before);
    result["rss_after_kib"] = json!(rss_after);
    result["server_cpu_secs"] = json!(cpu);
    result["server_kernel_secs"] = json!(used.map(|(_, kernel)| kernel));
    result["server_cpu_secs_per_million_deliveries"] = json!(cpu_per_million);
    result["latency"] = latency_json(&merged.latency);
    let h = &merged.latency;
    let summary = format!(
        "throughput {:?} {} → {to:?}: {channels} channels × {} subscribers, {published} published ({:.0}/s), {delivered}/{} delivered ({:.0}/s)\n  latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; server CPU {} s per million deliveries{}{}",
        common.kind,
        common.target,
        common.subs,
        published as f64 / publish_secs,
        expected - deliveries_before,
        delivered as f64 / span,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        cpu_per_million.map_or("?".into(), |v| format!("{v:.2}")),
        first_publish_error.map_or(String::new(), |e| format!(
            "\n  {publish_errors} publish errors; first: {e}"
        )),
        errors_line(&merged),
    );
    emit(&common, &summary, result);
}
