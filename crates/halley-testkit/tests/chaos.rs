//! Chaos, bounded: publishers send numbered messages while a subscriber on every transport —
//! SSE, chunked stream, forever-iframe, multipart, long-poll, JSONP, WebSocket, rupy pull, and
//! Bayeux over long-polling, callback-polling and WebSocket (ack extension on) — is cut at
//! random moments and comes back with its last id (Bayeux: its session and acknowledged batch).
//! A WebSocket reader that is slower than the publishers is never cut: it keeps up or is told
//! `lagged` and resumes.
//!
//! Every subscriber must end with every message: none lost, none duplicated, none out of
//! order; a message may be missing only after the server announced a gap (a `gap` event or
//! header; for Bayeux, which has no gap, a session it had to handshake again). Run on one
//! node (memory broker) and on three nodes, one of which is killed mid-run (its subscribers
//! move to another node with their last id), on every broker: one Redis, Sentinel, NATS.
//!
//! `HALLEY_CHAOS_MESSAGES` sets how many messages (default [`DEFAULT_MESSAGES`], what debug
//! builds on two shared cores get through in well under a minute); `scripts/chaos` runs
//! 100,000 in a release build and keeps the figures in `bench/results/`.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::subscriber::{Item, Kind, NATIVE, Subscriber};
use common::{BrokerKind, Client, Node, TestBroker, TestServer, parse_id, within_for};
use futures_util::FutureExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::watch;

/// Messages per run unless `HALLEY_CHAOS_MESSAGES` says otherwise.
const DEFAULT_MESSAGES: usize = 2_000;
/// Publishers, each sending its own numbered sequence (`"<publisher>:<n>"`).
const PUBLISHERS: usize = 2;
/// The channels messages go to (`/chaos/0` … ); every subscriber takes `/chaos/**`.
const CHANNELS: usize = 4;
const PATTERN: &str = "/chaos/**";
/// A connection lives this long at most before it is cut (uniformly at random below).
const MAX_LIFE: Duration = Duration::from_millis(400);
/// A connection is also cut after a random number of new messages (not counting those sent
/// again), at most this part of the run's (1/8), so that every subscriber is cut several times
/// however fast the run goes.
const MAX_LIFE_PART: u64 = 8;
/// The slow reader's pause per message.
const SLOW: Duration = Duration::from_millis(2);
/// How long one request may take under this load before the test fails.
const STEP: Duration = Duration::from_secs(20);

fn messages() -> usize {
    std::env::var("HALLEY_CHAOS_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MESSAGES)
}

/// What publishers published: data → id (rupy's pull reads data only and resumes by id).
#[derive(Default)]
struct Published {
    ids: Mutex<HashMap<String, String>>,
    count: watch::Sender<usize>,
}

impl Published {
    fn record(&self, data: String, id: String) {
        self.ids.lock().unwrap().insert(data, id);
        self.count.send_modify(|c| *c += 1);
    }

    /// The id of the message with `data`, once its publisher learnt it.
    async fn id_of(&self, data: &str) -> String {
        let mut count = self.count.subscribe();
        within_for(STEP, "the id of a pulled message", async {
            loop {
                if let Some(id) = self.ids.lock().unwrap().get(data) {
                    return id.clone();
                }
                count.changed().await.unwrap();
            }
        })
        .await
    }
}

/// The nodes, as clients, and which of them are up.
struct Targets {
    clients: Vec<Client>,
    up: Vec<AtomicBool>,
}

impl Targets {
    fn new(addrs: Vec<std::net::SocketAddr>) -> Targets {
        Targets {
            up: addrs.iter().map(|_| AtomicBool::new(true)).collect(),
            clients: addrs
                .into_iter()
                .map(|addr| Client { addr, wait: STEP })
                .collect(),
        }
    }

    fn is_up(&self, node: usize) -> bool {
        self.up[node].load(Ordering::Acquire)
    }

    fn pick(&self, rng: &mut StdRng) -> usize {
        let up: Vec<usize> = (0..self.clients.len()).filter(|&n| self.is_up(n)).collect();
        up[rng.random_range(0..up.len())]
    }
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct Report {
    kind: Option<Kind>,
    slow: bool,
    messages: u64,
    cuts: u64,
    ends: u64,
    lagged: u64,
    gaps: u64,
    /// Messages missing after an announced gap.
    lost_announced: u64,
    /// Bayeux: unacknowledged messages sent again after a cut (the ack extension's promise).
    redelivered: u64,
    /// Why the server ended connections (the first few).
    why: Vec<String>,
}

/// The order check: per publisher, each number follows the last unless a gap was announced
/// in between; across publishers, ids strictly grow.
struct Check {
    per: u64,
    /// Per publisher: the last number seen, and the gap count when it was seen.
    last: Vec<Option<(u64, u64)>>,
    last_id: Option<(u64, u64)>,
    report: Report,
}

impl Check {
    fn done(&self) -> bool {
        self.last
            .iter()
            .all(|l| l.is_some_and(|(n, _)| n >= self.per))
    }

    fn message(&mut self, sub: &Subscriber, id: Option<&str>, data: &str) -> Result<(), String> {
        let (p, n) = data
            .split_once(':')
            .and_then(|(p, n)| {
                // End markers are `<publisher>:<per>.<k>` (unique, so rupy's pull can resume
                // from one).
                let n = n.split('.').next()?;
                Some((p.parse::<usize>().ok()?, n.parse::<u64>().ok()?))
            })
            .ok_or_else(|| format!("not a chaos message: {data:?}"))?;
        if let Some(id) = id {
            let id = parse_id(id);
            if self.last_id.is_some_and(|last| id <= last) {
                // The ack extension sends again what was not acknowledged; never what was.
                if sub.kind.is_bayeux() && sub.confirmed.is_none_or(|c| id > c) {
                    self.report.redelivered += 1;
                    return Ok(());
                }
                return Err(format!(
                    "{data} (id {id:?}) after id {:?}: duplicated or out of order",
                    self.last_id
                ));
            }
            self.last_id = Some(id);
        }
        let expected = self.last[p].map_or(0, |(n, _)| n + 1);
        if n >= self.per && expected > self.per {
            // A later end marker of a publisher already finished.
            return Ok(());
        }
        if n < expected {
            return Err(format!(
                "{data} after {}:{}: duplicated or out of order",
                p,
                expected - 1
            ));
        }
        if n > expected {
            let gap_since = self.last[p].map_or(0, |(_, g)| g) < self.report.gaps;
            if !gap_since {
                return Err(format!(
                    "{} messages of publisher {p} lost before {data} without a gap",
                    n - expected
                ));
            }
            self.report.lost_announced += n - expected;
        }
        self.last[p] = Some((n, self.report.gaps));
        if n < self.per {
            self.report.messages += 1;
        }
        Ok(())
    }
}

/// Runs a subscriber until it has every publisher's last message (or end marker).
/// What every subscriber of one run shares.
struct Run {
    targets: Arc<Targets>,
    published: Arc<Published>,
    /// The id every subscriber starts after.
    start: String,
    /// Messages per publisher.
    per: u64,
    ready: tokio::sync::mpsc::Sender<()>,
}

async fn subscriber(kind: Kind, slow: bool, run: Arc<Run>, seed: u64) -> Result<Report, String> {
    let Run {
        targets,
        published,
        start,
        per,
        ready,
    } = &*run;
    let (targets, per) = (targets.clone(), *per);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sub = Subscriber::new(kind, PATTERN, Some(start.clone()));
    let mut check = Check {
        per,
        last: vec![None; PUBLISHERS],
        last_id: None,
        report: Report {
            kind: Some(kind),
            slow,
            ..Report::default()
        },
    };
    let mut node = targets.pick(&mut rng);
    sub.connect(&targets.clients[node]).await;
    ready.send(()).await.unwrap();
    let mut last_data: Option<String> = None;
    while !check.done() {
        // A Bayeux connection lives longer: over WebSocket its messages are acknowledged only
        // by a connect reply (every hold timeout, or once half the unacknowledged budget is
        // out), so one always cut sooner would pile up unacknowledged messages until the
        // server cuts the session off.
        let max = if kind.is_bayeux() {
            MAX_LIFE * 4
        } else {
            MAX_LIFE
        };
        let life = max.mul_f64(rng.random_range(0.05..1.0));
        let cut_after = rng.random_range(1..=(per * PUBLISHERS as u64 / MAX_LIFE_PART).max(1));
        let mut moved = false;
        let mut since_connect = 0u64;
        let mut new_since_connect = 0u64;
        let cut = tokio::time::sleep(life);
        tokio::pin!(cut);
        loop {
            if !targets.is_up(node) {
                moved = true;
                break;
            }
            let client = targets.clients[node];
            let item = tokio::select! {
                item = guarded(&targets, node, sub.next(&client), Item::End("the node went away".into())) => item,
                _ = &mut cut, if !slow => break,
            };
            match item {
                Item::Message { id, data } => {
                    let before = check.last_id;
                    let redelivered = check.report.redelivered;
                    if let Err(e) = check.message(&sub, id.as_deref(), &data) {
                        let known = published.ids.lock().unwrap().clone();
                        let mut near: Vec<(String, String)> = known
                            .into_iter()
                            .filter(|(_, i)| {
                                let i = parse_id(i);
                                before.is_none_or(|b| i > b)
                                    && id.as_deref().is_none_or(|id| i < parse_id(id))
                            })
                            .collect();
                        near.sort();
                        return Err(format!(
                            "{kind:?}{} on node {node} (connection {}, {} since it opened): {e}; \
                             previous id {before:?}, this id {id:?}; published between: {near:?}; \
                             its last steps: {:#?}",
                            if slow { " (slow)" } else { "" },
                            sub.connects,
                            since_connect,
                            sub.trace,
                        ));
                    }
                    since_connect += 1;
                    new_since_connect += u64::from(check.report.redelivered == redelivered);
                    last_data = Some(data);
                    if check.done() || (!slow && new_since_connect >= cut_after) {
                        break;
                    }
                    if slow {
                        tokio::time::sleep(SLOW).await;
                    }
                }
                Item::Gap => check.report.gaps += 1,
                Item::End(why) => {
                    check.report.ends += 1;
                    if check.report.why.len() < 3 {
                        check.report.why.push(why.clone());
                    }
                    if why == "lagged" {
                        check.report.lagged += 1;
                    }
                    moved = true;
                    break;
                }
            }
        }
        if check.done() {
            break;
        }
        if !moved {
            check.report.cuts += 1;
        }
        sub.cut();
        // A Bayeux session lives on its node: its client comes back there (as a sticky load
        // balancer sends it) unless the node is gone.
        if !kind.is_bayeux() || !targets.is_up(node) {
            node = targets.pick(&mut rng);
        }
        if kind == Kind::Pull
            && let Some(data) = &last_data
        {
            sub.last_id = Some(published.id_of(data).await);
        }
        let client = targets.clients[node];
        guarded(&targets, node, sub.connect(&client), ()).await;
    }
    Ok(check.report)
}

/// Runs a request of the kit (which panics on a failed request); a failure because the node
/// went away is an ordinary end of the connection, anything else is the test's failure.
async fn guarded<T>(targets: &Targets, node: usize, step: impl Future<Output = T>, gone: T) -> T {
    match std::panic::AssertUnwindSafe(step).catch_unwind().await {
        Ok(value) => value,
        Err(_) if !targets.is_up(node) => gone,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The whole run against `targets`; `kill` (when given) is called once half the messages
/// are out, and must mark the node down before it stops it.
async fn run<K, KF>(kinds: &[Kind], targets: Arc<Targets>, publish_on: Vec<usize>, kill: Option<K>)
where
    K: FnOnce() -> KF,
    KF: Future<Output = ()>,
{
    let total = messages();
    let per = (total / PUBLISHERS) as u64;
    let seed: u64 = std::env::var("HALLEY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("chaos: {total} messages, seed {seed} (HALLEY_CHAOS_SEED={seed} repeats it)");
    let published = Arc::new(Published::default());
    let first = targets.clients[publish_on[0]];
    let start = first
        .post("/pub/chaos/start", "text/plain", "start")
        .await
        .expect_published("/chaos/start");

    let kinds: Vec<(Kind, bool)> = kinds
        .iter()
        .map(|k| (*k, false))
        .chain([(Kind::WebSocket, true)])
        .collect();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(kinds.len());
    let shared = Arc::new(Run {
        targets: targets.clone(),
        published: published.clone(),
        start,
        per,
        ready: ready_tx,
    });
    let subscribers: Vec<_> = kinds
        .iter()
        .enumerate()
        .map(|(i, (kind, slow))| {
            tokio::spawn(subscriber(
                *kind,
                *slow,
                shared.clone(),
                seed ^ (i as u64 + 1),
            ))
        })
        .collect();
    for _ in 0..kinds.len() {
        within_for(STEP, "subscribers connect", ready_rx.recv()).await;
    }

    let deadline = Duration::from_secs(60) + Duration::from_millis(5) * total as u32;
    let began = Instant::now();
    let (half_tx, half_rx) = tokio::sync::oneshot::channel::<()>();
    let mut half_tx = Some(half_tx);
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let targets = targets.clone();
            let published = published.clone();
            let on = publish_on.clone();
            let half = if p == 0 { half_tx.take() } else { None };
            tokio::spawn(async move {
                let mut half = half;
                let mut rng = StdRng::seed_from_u64(seed ^ (p as u64) << 32);
                for n in 0..per {
                    let client = targets.clients[on[rng.random_range(0..on.len())]];
                    let channel = format!("/chaos/{}", (n as usize + p) % CHANNELS);
                    let data = format!("{p}:{n}");
                    let id = client
                        .post(&format!("/pub{channel}"), "text/plain", data.clone())
                        .await
                        .expect_published(&channel);
                    published.record(data, id);
                    if n == per / 2
                        && let Some(half) = half.take()
                    {
                        let _ = half.send(());
                    }
                }
            })
        })
        .collect();
    // End markers, until every subscriber is done: a subscriber whose last messages were
    // lost after a gap still learns that the run is over.
    let (stop_tx, stop_rx) = watch::channel(false);
    let marker = {
        let targets = targets.clone();
        let published = published.clone();
        let on = publish_on.clone();
        tokio::spawn(async move {
            for p in &publishers_done(publishers).await {
                p.as_ref().expect("publisher panicked");
            }
            let published_in = began.elapsed();
            let mut stop = stop_rx;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut k = 0;
            while !*stop.borrow() {
                k += 1;
                for p in 0..PUBLISHERS {
                    let client = targets.clients[on[0]];
                    let channel = format!("/chaos/{p}");
                    let data = format!("{p}:{per}.{k}");
                    let id = client
                        .post(&format!("/pub{channel}"), "text/plain", data.clone())
                        .await
                        .expect_published(&channel);
                    published.record(data, id);
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => {}
                }
            }
            published_in
        })
    };
    if let Some(kill) = kill {
        within_for(deadline, "half the messages out", half_rx)
            .await
            .unwrap();
        kill().await;
    }
    let mut reports = Vec::new();
    for s in subscribers {
        let report = within_for(deadline, "every subscriber has every message", s)
            .await
            .expect("subscriber panicked");
        reports.push(report.unwrap_or_else(|e| panic!("seed {seed}: {e}")));
    }
    stop_tx.send(true).unwrap();
    let published_in = within_for(STEP, "end markers stop", marker).await.unwrap();
    let took = began.elapsed();
    println!(
        "chaos: {total} messages published in {:.1} s ({:.0}/s), all subscribers done in {:.1} s",
        published_in.as_secs_f64(),
        total as f64 / published_in.as_secs_f64(),
        took.as_secs_f64()
    );
    println!(
        "chaos: {:<24} {:>8} {:>6} {:>6} {:>6} {:>5} {:>8} {:>11}",
        "subscriber", "messages", "cuts", "ends", "lagged", "gaps", "lost*", "redelivered"
    );
    for r in &reports {
        println!(
            "chaos: {:<24} {:>8} {:>6} {:>6} {:>6} {:>5} {:>8} {:>11}",
            format!(
                "{:?}{}",
                r.kind.unwrap(),
                if r.slow { " (slow)" } else { "" }
            ),
            r.messages,
            r.cuts,
            r.ends,
            r.lagged,
            r.gaps,
            r.lost_announced,
            r.redelivered
        );
    }
    for r in reports.iter().filter(|r| !r.why.is_empty()) {
        println!(
            "chaos: {:?}{} ended by the server: {:?}",
            r.kind.unwrap(),
            if r.slow { " (slow)" } else { "" },
            r.why
        );
    }
    println!(
        "chaos: lost* = missing after an announced gap; 0 lost otherwise, 0 duplicated, 0 reordered"
    );
    // Every subscriber was cut or ended at least once, or the test proved nothing about
    // resuming (the slow reader is never cut: it keeps up or is told it lagged).
    for r in &reports {
        assert!(
            r.slow || r.cuts + r.ends > 0,
            "{:?} was never cut: raise HALLEY_CHAOS_MESSAGES",
            r.kind
        );
    }
}

async fn publishers_done(
    publishers: Vec<tokio::task::JoinHandle<()>>,
) -> Vec<Result<(), tokio::task::JoinError>> {
    let mut results = Vec::new();
    for p in publishers {
        results.push(p.await);
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_resumes_without_loss_on_one_node() {
    let server = TestServer::with(|http, _| http.hold_timeout = Duration::from_millis(500)).await;
    let targets = Arc::new(Targets::new(vec![server.addr]));
    let no_kill: Option<fn() -> std::future::Ready<()>> = None;
    run(&tested(), targets, vec![0], no_kill).await;
}

/// The transports the suite runs: the eight native ones and Bayeux's three.
fn tested() -> Vec<Kind> {
    NATIVE
        .iter()
        .copied()
        .chain([
            Kind::BayeuxLongPolling,
            Kind::BayeuxCallbackPolling,
            Kind::BayeuxWebSocket,
        ])
        .collect()
}

/// A Bayeux WebSocket client that comes back on a new socket with its clientId (the old one
/// dead, unknown to the server) loses nothing: once the new socket's connect began, the old
/// socket's task takes nothing more from the session's queue, and what it took unacknowledged
/// is resent on the new socket (found by this test: seed 8808696315723488189 missed one).
/// Bayeux WebSocket alone (the suite runs it among the others): one session whose socket is
/// cut again and again while messages flow, each new socket resending what the old one sent
/// unacknowledged. The regression test at unit size is `cometd.rs`
/// `websocket_reconnect_on_a_new_socket_gets_everything_and_the_old_one_stops`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bayeux_websocket_reconnect_loses_nothing() {
    let server = TestServer::with(|http, _| http.hold_timeout = Duration::from_millis(500)).await;
    let targets = Arc::new(Targets::new(vec![server.addr]));
    let no_kill: Option<fn() -> std::future::Ready<()>> = None;
    run(&[Kind::BayeuxWebSocket], targets, vec![0], no_kill).await;
}

every_broker!(every_transport_resumes_without_loss_on_three_nodes_one_killed);

/// Bayeux sessions live on their node: the killed node's Bayeux client handshakes again on
/// another (an announced loss); every other subscriber moves with its last id and loses
/// nothing. On every broker (`redis::…`, `sentinel::…`, `nats::…`). This test found a wildcard
/// resume on a Redis node missing one message without a gap (see `RedisBroker::replay`, now
/// bounded by the offset it started from).
async fn every_transport_resumes_without_loss_on_three_nodes_one_killed(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(&broker).await);
    }
    let targets = Arc::new(Targets::new(nodes.iter().map(|n| n.addr).collect()));
    let mut doomed = nodes.remove(0);
    let marked = targets.clone();
    // Publishers use the nodes that stay up: a publish whose answer a dying node never sent
    // would be retried and published twice, which is the publisher's problem, not delivery's.
    run(
        &tested(),
        targets,
        vec![1, 2],
        Some(|| async move {
            marked.up[0].store(false, Ordering::Release);
            doomed.kill().await;
        }),
    )
    .await;
}
