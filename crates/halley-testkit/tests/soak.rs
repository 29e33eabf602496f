//! Soak (not in the suite: `scripts/soak` runs it against a release build). The `halley`
//! binary serves while, for `HALLEY_SOAK_MINUTES` (default 30), subscribers on every transport
//! and Bayeux's three connect, read, are cut and resume with their last id; churners open and
//! drop subscriptions to fresh channels; a publisher sends all along. The server's RSS and open
//! fds (from `/proc`) are sampled before, during and after: after the clients are gone they
//! must be back at their baseline, and its log must hold no ERROR and no panic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use halley_testkit::subscriber::{BAYEUX, Item, Kind, NATIVE, Subscriber};
use halley_testkit::{Client, Process, eventually, parse_id};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Subscribers per transport.
const PER_KIND: usize = 2;
/// Churners (open a subscription on a fresh channel, drop it).
const CHURNERS: usize = 4;
/// Messages published to fill history before the baseline (4 channels × 1,000 kept).
const WARM_UP: usize = 4_500;
/// The publisher's pause between messages during the run.
const PUBLISH_EVERY: Duration = Duration::from_millis(10);
/// How often RSS and fds are sampled during the run.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// A connection lives at most this long before it is cut.
const MAX_LIFE: Duration = Duration::from_secs(2);

/// The process's resident set (KiB) and open fds.
fn sample(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

#[derive(Default)]
struct Counts {
    messages: AtomicU64,
    cuts: AtomicU64,
    ends: AtomicU64,
    gaps: AtomicU64,
    churned: AtomicU64,
    published: AtomicU64,
}

async fn subscriber(kind: Kind, client: Client, until: Instant, seed: u64, counts: Arc<Counts>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sub = Subscriber::new(kind, "/soak/**", None);
    let mut last: Option<(u64, u64)> = None;
    sub.connect(&client).await;
    while Instant::now() < until {
        let life = MAX_LIFE.mul_f64(rng.random_range(0.05..1.0));
        let cut = tokio::time::sleep(life);
        tokio::pin!(cut);
        loop {
            let item = tokio::select! {
                item = sub.next(&client) => item,
                _ = &mut cut => { counts.cuts.fetch_add(1, Ordering::Relaxed); break }
            };
            match item {
                Item::Message { id, .. } => {
                    if let Some(id) = id.as_deref().map(parse_id) {
                        let again = last.is_some_and(|l| id <= l);
                        let acked = sub.confirmed.is_some_and(|c| id <= c);
                        assert!(
                            !again || (kind.is_bayeux() && !acked),
                            "{kind:?}: {id:?} after {last:?}"
                        );
                        last = last.max(Some(id));
                    }
                    counts.messages.fetch_add(1, Ordering::Relaxed);
                }
                Item::Gap => {
                    counts.gaps.fetch_add(1, Ordering::Relaxed);
                }
                Item::End(_) => {
                    counts.ends.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        sub.cut();
    }
}

async fn churner(client: Client, until: Instant, seed: u64, counts: Arc<Counts>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let kinds: Vec<Kind> = NATIVE.iter().chain(BAYEUX.iter()).copied().collect();
    while Instant::now() < until {
        let kind = kinds[rng.random_range(0..kinds.len())];
        let channel = format!("/soak/tmp/{:x}", rng.random::<u32>());
        let mut sub = Subscriber::new(kind, &channel, None);
        sub.connect(&client).await;
        // A moment's read (a poll is sent, a stream's first bytes come), then gone.
        let _ = tokio::time::timeout(Duration::from_millis(50), sub.next(&client)).await;
        sub.cut();
        counts.churned.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of minutes: scripts/soak runs it"]
async fn soak_returns_to_baseline() {
    let minutes: f64 = std::env::var("HALLEY_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30.0);
    let server = Process::start(&["--hold-timeout", "1", "--session-timeout", "5"]).await;
    let pid = server.pid().unwrap();
    let client = Client {
        addr: server.addr,
        wait: Duration::from_secs(30),
    };
    let publish = move |n: usize| async move {
        let channel = format!("/soak/{}", n % 4);
        client
            .post(&format!("/pub{channel}"), "text/plain", n.to_string())
            .await
            .expect_published(&channel);
    };
    let (rss, fds) = sample(pid);
    println!("soak: started: rss {rss} KiB, fds {fds}");
    for n in 0..WARM_UP {
        publish(n).await;
    }
    // Warm-up round: every transport once, so lazily built state exists before the baseline.
    let counts = Arc::new(Counts::default());
    let warm = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for (i, kind) in NATIVE.iter().chain(BAYEUX.iter()).enumerate() {
        tasks.push(tokio::spawn(subscriber(
            *kind,
            client,
            warm,
            i as u64,
            counts.clone(),
        )));
    }
    for t in tasks {
        t.await.unwrap();
    }
    settle(&client).await;
    let (base_rss, base_fds) = sample(pid);
    println!("soak: baseline (history full, clients gone): rss {base_rss} KiB, fds {base_fds}");

    let began = Instant::now();
    let until = began + Duration::from_secs_f64(minutes * 60.0);
    let counts = Arc::new(Counts::default());
    let mut tasks = Vec::new();
    let mut seed = 100;
    for kind in NATIVE.iter().chain(BAYEUX.iter()) {
        for _ in 0..PER_KIND {
            seed += 1;
            tasks.push(tokio::spawn(subscriber(
                *kind,
                client,
                until,
                seed,
                counts.clone(),
            )));
        }
    }
    for _ in 0..CHURNERS {
        seed += 1;
        tasks.push(tokio::spawn(churner(client, until, seed, counts.clone())));
    }
    let publisher = {
        let counts = counts.clone();
        tokio::spawn(async move {
            let mut n = WARM_UP;
            while Instant::now() < until {
                publish(n).await;
                n += 1;
                counts.published.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(PUBLISH_EVERY).await;
            }
        })
    };
    let (mut peak_rss, mut peak_fds) = (base_rss, base_fds);
    while Instant::now() < until {
        tokio::time::sleep(SAMPLE_EVERY.min(until.saturating_duration_since(Instant::now()))).await;
        let (rss, fds) = sample(pid);
        peak_rss = peak_rss.max(rss);
        peak_fds = peak_fds.max(fds);
        println!(
            "soak: {:>5.0} s: rss {rss} KiB, fds {fds}; published {}, delivered {}, cuts {}, ends {}, gaps {}, churned {}",
            began.elapsed().as_secs_f64(),
            counts.published.load(Ordering::Relaxed),
            counts.messages.load(Ordering::Relaxed),
            counts.cuts.load(Ordering::Relaxed),
            counts.ends.load(Ordering::Relaxed),
            counts.gaps.load(Ordering::Relaxed),
            counts.churned.load(Ordering::Relaxed),
        );
    }
    // Workers stop at `until` (each finishes its connection's read first, bounded by MAX_LIFE
    // and the client's wait).
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a worker stopped")
            .unwrap();
    }
    publisher.await.unwrap();
    settle(&client).await;
    let (rss, fds) = sample(pid);
    println!(
        "soak: after {minutes} min: rss {rss} KiB (baseline {base_rss}, peak {peak_rss}), fds {fds} (baseline {base_fds}, peak {peak_fds})"
    );
    let errors = server.errors();
    println!("soak: ERROR or panic lines in the log: {}", errors.len());
    assert!(errors.is_empty(), "the log has errors: {errors:#?}");
    assert!(
        fds <= base_fds,
        "open fds did not return to the baseline: {fds} > {base_fds}"
    );
    // The allocator keeps some freed memory; a leak grows with the run, this does not.
    let allowed = base_rss + base_rss / 4 + 4096;
    assert!(
        rss <= allowed,
        "RSS did not return to the baseline: {rss} KiB > {allowed} KiB (baseline {base_rss})"
    );
}

/// Waits until the server holds no connection but the one asking and no subscription (Bayeux
/// sessions expire after `--session-timeout`).
async fn settle(client: &Client) {
    eventually(
        Duration::from_secs(60),
        "connections and subscriptions gone",
        || async {
            let connections = client.metric("halley_connections").await;
            let subscriptions = client.metric("halley_subscriptions").await;
            (connections <= 1 && subscriptions == 0).then_some(())
        },
    )
    .await;
}
