//! The control API across nodes ([`halley_engine::control`]): each node listens on a Redis
//! pub/sub channel for the commands of the others, applies them to its own hub, and answers
//! on the asking node's own channel; revocations are also kept in a hash, which a node reads
//! whenever it (re)subscribes, so that one that starts or comes back later honours them.
//!
//! | key | type | what |
//! |---|---|---|
//! | `control` | pub/sub channel | commands: `{"rid","from","op","user",…}` |
//! | `control:<node>` | pub/sub channel | answers to that node: `{"rid","outcome":{…}}` |
//! | `revoked` | hash | user → the latest `before` (Unix seconds) revoked for them; at most `MAX_REVOCATIONS` users |
//!
//! Why pub/sub here, when messages travel by a stream: a command is about the connections open
//! *now*. A node that is away when a disconnect is sent has no connection to end once it is
//! back (its clients were cut off with it, and reconnect elsewhere or later, as new
//! connections); replaying old disconnects would only end connections made after them. A
//! revocation is different — it must hold for tokens presented later — so it is written to
//! the hash before it is published, and every node reads the hash when it subscribes.
//!
//! A stats request (`"op":"stats"`, the dashboard's) travels the same way and concerns no user
//! (`"user":""`); each node answers with its numbers in the outcome's `stats`.
//!
//! Why answers: the asking node reports what every node did (counts, listings). It knows how
//! many nodes received the command (`PUBLISH`'s answer) and waits for that many answers, for
//! at most [`CONTROL_TIMEOUT`]; a node that does not answer in time is reported as such.
//!
//! The revocation hash is bounded like each node's table (`MAX_REVOCATIONS`: a new user
//! beyond it is refused), and is not pruned: a token without `exp` never expires, so no
//! revocation can be known to be moot. An operator lifts one by deleting its field.
//!
//! Limits: [`CONTROL_TIMEOUT`], [`MAX_IN_FLIGHT`], [`MAX_NODES`], [`PING_INTERVAL`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use halley_engine::BrokerError;
use halley_engine::access::MAX_REVOCATIONS;
use halley_engine::control::{Command, Outcome, Remote, wire};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::broker::Shared;
use crate::{COMMAND_TIMEOUT, CONNECT_TIMEOUT, RECONNECT_MAX, RECONNECT_MIN};

/// How long a control request waits for the other nodes' answers. A node applies a command in
/// microseconds; two seconds covers a busy node and a round trip to Redis, and bounds how
/// long the application's call can take when a node is gone without having unsubscribed yet.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// Most control requests of this node waiting for answers at once; one more is refused (503).
/// The control API is the application's backend, which has no reason to have many at once.
pub const MAX_IN_FLIGHT: usize = 64;

/// Most answers one request takes; more would be a cluster far beyond what one Redis serves.
/// Answers beyond it are dropped (and those nodes reported as not having answered).
pub const MAX_NODES: usize = 256;

/// How often the subscribed connection is pinged: a Redis gone without a FIN is noticed
/// within this (plus [`COMMAND_TIMEOUT`]), then the node resubscribes and rereads the
/// revocations.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Revocation entries read per `HSCAN` page when (re)subscribing.
const SCAN_PAGE: usize = 1000;

/// This node's side of the control channel.
pub(crate) struct State {
    /// Subscribed (and the revocations read): this node hears commands, and answers to its
    /// own reach it.
    pub up: watch::Sender<bool>,
    next_request: AtomicU64,
    /// Requests of this node waiting for answers, by request id.
    waiting: Mutex<HashMap<u64, mpsc::Sender<Outcome>>>,
}

impl Default for State {
    fn default() -> State {
        State {
            up: watch::Sender::new(false),
            next_request: AtomicU64::new(0),
            waiting: Mutex::default(),
        }
    }
}

/// Adds `before` for `user` to the revocation hash, keeping the later of the two, unless the
/// hash is full (then -1). KEYS[1] the hash; ARGV: user, before, the most users.
const REVOKE_SCRIPT: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
elseif tonumber(current) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
";

fn commands_key(shared: &Shared) -> String {
    format!("{}control", shared.keys.prefix)
}

fn answers_key(shared: &Shared, node: &str) -> String {
    format!("{}control:{node}", shared.keys.prefix)
}

fn revoked_key(shared: &Shared) -> String {
    format!("{}revoked", shared.keys.prefix)
}

fn node_name(node: u64) -> String {
    format!("{node:x}")
}

/// Removes a request's waiter however the request ends.
struct Waiting<'a> {
    state: &'a State,
    rid: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.state
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.rid);
    }
}

/// Sends `command` to every other node and collects their answers ([`Broker::control`]).
///
/// [`Broker::control`]: halley_engine::Broker::control
pub(crate) async fn request(shared: &Shared, command: &Command) -> Result<Remote, BrokerError> {
    let state = &shared.control;
    let mut conn = shared.connection()?;
    let rid = state.next_request.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(MAX_NODES);
    {
        let mut waiting = state.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.len() >= MAX_IN_FLIGHT {
            return Err(BrokerError::Unavailable(format!(
                "more than {MAX_IN_FLIGHT} control requests in flight"
            )));
        }
        waiting.insert(rid, tx);
    }
    let _waiting = Waiting { state, rid };
    if let Command::Revoke { user, before } = command {
        // Kept before it is sent: a node that does not hear it reads it when it subscribes.
        let script = redis::Script::new(REVOKE_SCRIPT);
        let stored: i64 = script
            .key(revoked_key(shared))
            .arg(user)
            .arg(*before)
            .arg(MAX_REVOCATIONS)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| shared.unavailable(e))?;
        if stored < 0 {
            return Err(BrokerError::Unavailable(format!(
                "the cluster's revocation table is full ({MAX_REVOCATIONS} users)"
            )));
        }
    }
    // Whether this node hears the channel (and so its answers) as it sends.
    let listening = *state.up.borrow();
    let message = wire::encode_command(rid, &node_name(shared.node), command);
    let receivers: usize = redis::cmd("PUBLISH")
        .arg(commands_key(shared))
        .arg(message)
        .query_async(&mut conn)
        .await
        .map_err(|e| shared.unavailable(e))?;
    if !listening {
        // The others got the command; their answers cannot reach us until we resubscribe.
        tracing::warn!(
            nodes = receivers,
            "control: sent while not subscribed; no answers"
        );
        return Ok(Remote {
            nodes: receivers,
            answers: Vec::new(),
        });
    }
    // This node is among the receivers, and ignores its own commands.
    let nodes = receivers.saturating_sub(1);
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + CONTROL_TIMEOUT;
    while answers.len() < nodes {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(outcome)) => answers.push(outcome),
            _ => break,
        }
    }
    if answers.len() < nodes {
        tracing::warn!(
            nodes,
            answered = answers.len(),
            "control: not every node answered in time"
        );
    }
    Ok(Remote { nodes, answers })
}

/// The node's listener: subscribes to the control channels (once the server's policy is set,
/// since revocations go to it), reads the kept revocations, applies other nodes' commands,
/// and resubscribes with backoff when the connection fails — until cancelled.
pub(crate) async fn listen(shared: Arc<Shared>, cancel: CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = shared.hub.settled_policy() => {}
    }
    let mut backoff = RECONNECT_MIN;
    loop {
        let error = tokio::select! {
            _ = cancel.cancelled() => break,
            e = subscribed(&shared, &mut backoff) => e,
        };
        shared.control.up.send_replace(false);
        if error.detail() == Some(FOLLOW) {
            // Not a failure: the broker is on a new connection, maybe to a new master.
            continue;
        }
        shared.error();
        tracing::warn!(%error, retry_in = ?backoff, "redis broker: control channel lost");
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
    shared.control.up.send_replace(false);
}

/// Why a subscription ends when the broker's session changed (see `run`).
const FOLLOW: &str = "the broker reconnected";

fn failed(what: &'static str, detail: impl std::fmt::Display) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, what, detail.to_string()))
}

/// One subscribed life: returns only with the error that ended it.
async fn subscribed(shared: &Shared, backoff: &mut Duration) -> redis::RedisError {
    match run(shared, backoff).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

async fn run(shared: &Shared, backoff: &mut Duration) -> redis::RedisResult<Never> {
    // The master of the broker's current session: with Sentinel, the one it found last.
    let generation = shared.generation.load(Ordering::Relaxed);
    let client = shared
        .client()
        .ok_or_else(|| failed("connect", "no master found yet"))?;
    let mut health = shared.healthy.subscribe();
    let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| failed("connect", "timed out"))??;
    let own = answers_key(shared, &node_name(shared.node));
    tokio::time::timeout(
        COMMAND_TIMEOUT,
        pubsub.subscribe(&[commands_key(shared), own.clone()]),
    )
    .await
    .map_err(|_| failed("subscribe", "timed out"))??;
    // Subscribed first, then the hash: a revocation is written before it is published, so
    // one made meanwhile is in the hash, or comes as a command, or both.
    load_revocations(shared).await?;
    shared.control.up.send_replace(true);
    *backoff = RECONNECT_MIN;
    tracing::debug!("redis broker: control channel subscribed");
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return Err(failed("control channel", "closed"));
                };
                let payload = message.get_payload_bytes();
                if message.get_channel_name() == own {
                    answered(shared, payload);
                } else {
                    command(shared, payload).await;
                }
            }
            // The broker reconnected, maybe to another master (a failover): follow it, since
            // commands are published there.
            changed = health.changed() => {
                if changed.is_err() || shared.generation.load(Ordering::Relaxed) != generation {
                    return Err(failed("control channel", FOLLOW));
                }
            }
            _ = ping.tick() => {
                tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>())
                    .await
                    .map_err(|_| failed("ping", "timed out"))??;
            }
        }
    }
}

/// Applies every revocation kept in Redis (with their connections ended, if any are open).
async fn load_revocations(shared: &Shared) -> redis::RedisResult<()> {
    let mut conn = shared.connection().map_err(|e| failed("revocations", e))?;
    let mut cursor = 0u64;
    // Bounded: the hash holds at most MAX_REVOCATIONS fields.
    for _ in 0..=(MAX_REVOCATIONS / SCAN_PAGE + 10) {
        let (next, page): (u64, Vec<(String, u64)>) = redis::cmd("HSCAN")
            .arg(revoked_key(shared))
            .arg(cursor)
            .arg("COUNT")
            .arg(SCAN_PAGE)
            .query_async(&mut conn)
            .await?;
        for (user, before) in page {
            wire::apply(&shared.hub, &Command::Revoke { user, before });
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(())
}

/// Another node's command: applied here, answered to that node.
async fn command(shared: &Shared, payload: &[u8]) {
    let Some((rid, from, command)) = wire::decode_command(payload) else {
        tracing::warn!("control: undecodable command skipped");
        shared.error();
        return;
    };
    let me = node_name(shared.node);
    if from == me {
        return;
    }
    let answer = wire::answer(&shared.hub, rid, &me, &command);
    let Ok(mut conn) = shared.connection() else {
        return;
    };
    let sent: redis::RedisResult<()> = redis::cmd("PUBLISH")
        .arg(answers_key(shared, &from))
        .arg(answer)
        .query_async(&mut conn)
        .await;
    if let Err(e) = sent {
        shared.error();
        tracing::debug!(error = %e, "control: answer not sent");
    }
}

/// An answer to one of this node's requests: to its waiter, if it still waits.
fn answered(shared: &Shared, payload: &[u8]) {
    let Some((rid, outcome)) = wire::decode_answer(payload) else {
        tracing::warn!("control: undecodable answer skipped");
        shared.error();
        return;
    };
    let waiting = shared
        .control
        .waiting
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = waiting.get(&rid) {
        // Full only beyond MAX_NODES answers.
        let _ = tx.try_send(outcome);
    }
}
