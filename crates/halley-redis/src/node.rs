//! The broker's background work: the supervisor that owns the connections and runs the fan-out
//! reader, and the housekeeping task (presence, history sweep).
//!
//! Invariant: only the reader calls [`Hub::deliver`](halley_engine::Hub::deliver), one log
//! entry at a time, in log (= id) order, and it moves `Delivery::position` only *after* the
//! hub has the message — so a subscriber that registers and then reads the cursor misses
//! nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use halley_proto::{Channel, Message, MessageId, Pattern, Payload};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::EpochRule;
use crate::broker::{Live, Shared};
use crate::reply::{self, Entry};

/// First delay before reconnecting after Redis became unreachable. Short, because most
/// outages are a restart or a failover that is over in well under a second.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);

/// Longest delay between reconnect attempts (the delay doubles from [`RECONNECT_MIN`]). Five
/// seconds bounds how long a node stays degraded after Redis is back, while a node left alone
/// with a dead Redis makes one cheap attempt every few seconds.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Time allowed to open a connection to Redis; a failed attempt then backs off.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Time allowed for one command's reply. A Redis that answers nothing for this long counts as
/// unreachable (publish gets 503) rather than holding requests open.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one `XREAD` blocks waiting for new messages. Also how soon a node notices an epoch
/// change that happened without a disconnect (someone flushed Redis).
pub const READ_BLOCK: Duration = Duration::from_secs(1);

/// Most log entries taken per `XREAD`: under load the reader catches up in large steps
/// instead of one round trip per message; each step's messages are delivered one by one.
pub const READ_BATCH: usize = 512;

/// How long a publish waits for its own message to come back through the fan-out before it
/// answers with a local count of 0 (the message is in Redis by then and reaches other nodes).
pub const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

/// Most publishes waiting at once for their replicas' acknowledgement (`WAIT`); one more is
/// answered 503 at once. The acknowledger takes them in batches (one `WAIT` each), so the
/// queue only holds what arrives during one replica round trip.
pub const ACK_QUEUE: usize = 4096;

/// Most publishes one `WAIT` acknowledges: a batch is answered together once the replicas
/// have everything written before it.
pub const ACK_BATCH: usize = 1024;

/// Expired channels forgotten per sweep call; the sweep repeats while there are more, up to
/// [`SWEEP_ROUNDS`] calls per run, so that one run never blocks Redis for long.
const SWEEP_BATCH: usize = 500;
const SWEEP_ROUNDS: usize = 100;

/// Owns the connections: connects, runs the reader until the connection fails, backs off,
/// reconnects — until cancelled.
pub(crate) async fn supervise(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut backoff = RECONNECT_MIN;
    loop {
        let error = tokio::select! {
            _ = cancel.cancelled() => break,
            e = session(&shared, &mut backoff) => e,
        };
        disconnected(&shared);
        shared.error();
        tracing::warn!(%error, retry_in = ?backoff, "redis broker: connection lost or refused");
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
    disconnected(&shared);
}

fn disconnected(shared: &Shared) {
    // Publishes waiting for an acknowledgement of the lost master will not get one.
    if let Ok(mut queue) = shared.ack_queue.try_lock() {
        while let Ok(request) = queue.try_recv() {
            let _ = request.answer.send(false);
        }
    }
    *shared.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
    shared.healthy.send_replace(false);
}

/// Opens a connection named `halley-<node>-<role>`, so that `CLIENT LIST` shows whose it is.
async fn connect(
    shared: &Shared,
    client: &redis::Client,
    response: Duration,
    role: &str,
) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(format!("halley-{:x}-{role}", shared.node))
        .query_async::<()>(&mut conn)
        .await?;
    Ok(conn)
}

/// Creates the epoch if needed (or a new one if Redis went back in time behind `known`, the
/// last id this node delivered); returns (epoch, offset).
async fn ensure_epoch(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    master: &str,
    known: Option<MessageId>,
) -> redis::RedisResult<(u64, u64)> {
    let mut invocation = shared.scripts.ensure_epoch.prepare_invoke();
    invocation
        .arg(&shared.keys.prefix)
        .arg(format!("{:x}", rand::random::<u64>() | 1))
        .arg(master);
    if let Some(known) = known {
        invocation
            .arg(format!("{:x}", known.epoch))
            .arg(known.offset);
    }
    let (epoch, offset): (String, u64) = invocation.invoke_async(conn).await?;
    let epoch = u64::from_str_radix(&epoch, 16).map_err(|_| {
        redis::RedisError::from((redis::ErrorKind::Parse, "epoch is not hex", epoch))
    })?;
    Ok((epoch, offset))
}

/// One connected life: returns only with the error that ended it.
async fn session(shared: &Shared, backoff: &mut Duration) -> redis::RedisError {
    match run_session(shared, backoff).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

async fn run_session(shared: &Shared, backoff: &mut Duration) -> redis::RedisResult<Never> {
    // With Sentinel, whoever is master now; with one address, that address.
    let client = shared.target.master().await?;
    *shared.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
    let mut commands = connect(shared, &client, COMMAND_TIMEOUT, "commands").await?;
    // The reader's own connection: a blocked XREAD would stall every request multiplexed
    // behind it.
    let mut reader = connect(shared, &client, READ_BLOCK + COMMAND_TIMEOUT, "fanout").await?;
    let master: Arc<str> = match shared.config.epoch {
        EpochRule::Master => run_id(&mut commands).await?.into(),
        EpochRule::Offset => "".into(),
    };
    let known = shared
        .delivery
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .position;
    let (epoch, offset) = ensure_epoch(shared, &mut commands, &master, known).await?;
    let mut position = match known {
        // Same epoch: continue after the last message delivered; the log still holds what
        // was published while we were away.
        Some(p) if p.epoch == epoch => p,
        // A new epoch (Redis lost its data, went back in time, or another server is
        // master): first what this server has of the old epoch after our position (a
        // promoted replica has what reached it, which is everything acknowledged by it), then
        // the new epoch from its start, so that local subscribers get what other nodes
        // published since.
        Some(p) => {
            finish_epoch(shared, &mut reader, p).await?;
            MessageId::new(epoch, 0)
        }
        // First connection: only what is published from now on.
        None => MessageId::new(epoch, offset),
    };
    set_position(shared, position);
    let generation = shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
    *shared.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(Live {
        conn: commands.clone(),
        master: master.clone(),
        generation,
    });
    shared.healthy.send_replace(true);
    *backoff = RECONNECT_MIN;
    tracing::info!(epoch = %format!("{epoch:x}"), %position, master = %master, "redis broker: connected");
    let read = async {
        loop {
            let reply: redis::Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_BATCH)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(shared.keys.log(position.epoch))
                .arg(format!("0-{}", position.offset))
                .query_async(&mut reader)
                .await?;
            let entries = reply::read_reply(reply).map_err(malformed)?;
            if entries.is_empty() {
                // Nothing new: check that the epoch is still ours (Redis flushed without a
                // disconnect would otherwise leave us waiting on a dead log).
                let (epoch, _) =
                    ensure_epoch(shared, &mut commands, &master, Some(position)).await?;
                if epoch != position.epoch {
                    tracing::warn!(epoch = %format!("{epoch:x}"), "redis broker: new epoch");
                    finish_epoch(shared, &mut reader, position).await?;
                    position = MessageId::new(epoch, 0);
                    set_position(shared, position);
                }
                continue;
            }
            for entry in entries {
                if entry.offset != position.offset + 1 {
                    // The log was trimmed past us (we were away or slow for longer than it
                    // covers): fill the hole from the channels' histories, in order.
                    position = repair(shared, &mut commands, position, entry.offset).await;
                }
                position = MessageId::new(position.epoch, entry.offset);
                deliver(shared, position, &entry);
            }
        }
    };
    tokio::select! {
        e = read => e,
        e = acknowledge(shared, &client, generation) => e,
        _ = shared.demoted.notified() => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "the server is no longer the master (READONLY)",
        ))),
    }
}

/// The server's `run_id` (`INFO server`): one per process, so a promoted replica or a
/// restarted server has another one.
async fn run_id(conn: &mut MultiplexedConnection) -> redis::RedisResult<String> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Parse, "INFO server has no run_id"))
        })
}

/// Delivers what the log of `from`'s epoch still holds after it, before the reader moves to a
/// new epoch: nobody appends to that log any more (every publish script begins the new epoch
/// first), so reading it to its end is complete. A hole in it (trimmed) is logged and
/// counted; its messages are in the old epoch's histories, where a resume finds none (another
/// epoch: a gap).
async fn finish_epoch(
    shared: &Shared,
    reader: &mut MultiplexedConnection,
    from: MessageId,
) -> redis::RedisResult<()> {
    let mut position = from;
    loop {
        let reply: redis::Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_BATCH)
            .arg("STREAMS")
            .arg(shared.keys.log(position.epoch))
            .arg(format!("0-{}", position.offset))
            .query_async(reader)
            .await?;
        let entries = reply::read_reply(reply).map_err(malformed)?;
        if entries.is_empty() {
            return Ok(());
        }
        for entry in entries {
            if entry.offset != position.offset + 1 {
                tracing::error!(
                    from = position.offset + 1,
                    to = entry.offset - 1,
                    "redis broker: the old epoch's log was trimmed; messages were missed"
                );
                shared.error();
            }
            position = MessageId::new(position.epoch, entry.offset);
            deliver(shared, position, &entry);
        }
    }
}

/// Answers publishes waiting for replicas (`RedisConfig::wait_replicas`), a batch at a time:
/// on a connection of its own, a write (`INCR ack`) then `WAIT`. `WAIT` counts the replicas
/// that have this connection's last write, hence everything any connection wrote before it:
/// every publish of the batch. Publishes written in another session (to another master) are
/// answered no. Never returns while nothing fails.
async fn acknowledge(
    shared: &Shared,
    client: &redis::Client,
    generation: u64,
) -> redis::RedisResult<Never> {
    let replicas = shared.config.wait_replicas;
    if replicas == 0 {
        return std::future::pending().await;
    }
    let timeout = shared.config.wait_timeout;
    let mut conn = connect(shared, client, timeout + COMMAND_TIMEOUT, "ack").await?;
    let mut queue = shared.ack_queue.lock().await;
    let key = format!("{}ack", shared.keys.prefix);
    let mut batch = Vec::with_capacity(ACK_BATCH);
    loop {
        let Some(first) = queue.recv().await else {
            return std::future::pending().await;
        };
        batch.push(first);
        while batch.len() < ACK_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let (_, acked): (u64, usize) = redis::pipe()
            .cmd("INCR")
            .arg(&key)
            .cmd("WAIT")
            .arg(replicas)
            .arg(timeout.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await?;
        for request in batch.drain(..) {
            let _ = request
                .answer
                .send(request.generation == generation && acked >= replicas);
        }
    }
}

/// Delivers what the fan-out log no longer holds between `position` and `next` from the
/// channels' histories, read in batches (`replay_batch`). Returns the new position.
///
/// What history cannot supply either (evicted by the channels' limits, expired, or unreadable
/// because Redis failed mid-repair) would be a silent hole for this node's subscribers: before
/// anything past such a hole reaches them, every one of them is cut off ([`Hub::lost`]), so
/// that each resumes from the last id it got and its resume reports the gap if its channels
/// lost anything.
///
/// [`Hub::lost`]: halley_engine::Hub::lost
async fn repair(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    position: MessageId,
    next: u64,
) -> MessageId {
    let missing = next.saturating_sub(position.offset + 1);
    let everything = Pattern::parse("/**").expect("/** is a valid pattern");
    let batch = shared.engine.replay_batch.max(1);
    let mut delivered = 0;
    let mut last = position;
    let mut from = position;
    let mut cut_off = None;
    let mut complete = false;
    // Each batch moves `from` on by at least one entry of the hole, so this many suffice.
    for _ in 0..=missing / batch as u64 + 1 {
        let replay = match shared.replay(conn, &everything, from, batch).await {
            Ok(replay) => replay,
            Err(error) => {
                tracing::warn!(%error, "redis broker: reading history to fill the log's hole failed");
                break;
            }
        };
        if replay.gap && cut_off.is_none() {
            cut_off = Some(shared.hub.lost(None));
        }
        for message in replay.messages.iter().filter(|m| m.id.offset < next) {
            shared.hub.deliver(message);
            set_position(shared, message.id);
            last = message.id;
            delivered += 1;
        }
        match replay.more {
            Some(more) if more.offset + 1 < next => from = more,
            _ => {
                complete = true;
                break;
            }
        }
    }
    if !complete && cut_off.is_none() {
        cut_off = Some(shared.hub.lost(None));
    }
    if let Some(cut) = cut_off {
        tracing::error!(
            from = position.offset + 1,
            to = next - 1,
            recovered = delivered,
            subscribers_cut_off = cut,
            "redis broker: fell behind the fan-out log, and history lacks some of it or could \
             not be read; subscribers resume and are told of any gap"
        );
        shared.error();
    } else {
        tracing::warn!(
            from = position.offset + 1,
            to = next - 1,
            recovered = delivered,
            "redis broker: fell behind the fan-out log; recovered from history"
        );
    }
    last
}

fn malformed(e: reply::Malformed) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Parse, "malformed reply", e.to_string()))
}

fn set_position(shared: &Shared, position: MessageId) {
    shared
        .delivery
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .position = Some(position);
}

/// Hands one log entry to the hub, then records the position and answers the publish that
/// waits for it, if it is ours.
fn deliver(shared: &Shared, id: MessageId, entry: &Entry) {
    let decoded = (|| {
        let channel = Channel::parse(std::str::from_utf8(entry.field("c")?).ok()?).ok()?;
        let data = Payload::from_json(entry.field("d")?).ok()?;
        let meta = crate::broker::meta_of(entry);
        let published_us = entry.number("u").unwrap_or(0);
        Some(Arc::new(
            Message::with_meta(channel, id, data, meta).published_at(published_us),
        ))
    })();
    let count = match &decoded {
        Some(message) => shared.hub.deliver(message),
        None => {
            tracing::error!(%id, "redis broker: undecodable log entry skipped");
            shared.error();
            0
        }
    };
    let mine = entry
        .field("o")
        .and_then(|o| std::str::from_utf8(o).ok())
        .and_then(|o| o.split_once(':'))
        .filter(|(node, _)| u64::from_str_radix(node, 16).ok() == Some(shared.node))
        .and_then(|(_, seq)| seq.parse::<u64>().ok());
    let mut delivery = shared.delivery.lock().unwrap_or_else(|e| e.into_inner());
    delivery.position = Some(id);
    if let Some(waiter) = mine.and_then(|seq| delivery.waiters.remove(&seq)) {
        let _ = waiter.send(count);
    }
}

/// Presence and sweep, on their own clocks, through the command connection. Failures are
/// counted and retried next tick; reconnecting is the supervisor's job.
pub(crate) async fn housekeeping(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut presence_tick = tokio::time::interval(shared.config.presence_interval);
    let mut sweep_tick = tokio::time::interval(shared.config.sweep_interval);
    presence_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What was last written, and in which connection generation.
    let mut written: Option<Written> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = presence_tick.tick() => {
                let Some(mut conn) = shared.current() else {
                    continue;
                };
                if let Err(e) = presence(&shared, &mut conn, &mut written).await {
                    shared.error();
                    tracing::debug!(error = %e, "redis broker: presence update failed");
                }
            }
            _ = sweep_tick.tick() => {
                let Some(mut conn) = shared.current() else {
                    continue;
                };
                if let Err(e) = sweep(&shared, &mut conn).await {
                    shared.error();
                    tracing::debug!(error = %e, "redis broker: history sweep failed");
                }
            }
        }
    }
}

/// What [`presence`] last wrote: connection generation, subscriber counts, members.
type Written = (u64, Vec<(String, usize)>, Vec<halley_engine::Member>);

/// Writes this node's counts and members when they changed (or after a reconnect), else
/// refreshes their TTL.
async fn presence(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    written: &mut Option<Written>,
) -> redis::RedisResult<()> {
    let generation = shared.generation.load(Ordering::Relaxed);
    let mut counts = shared.hub.counts("");
    counts.sort_unstable();
    let members = shared.hub.local_members();
    let node = format!("{:x}", shared.node);
    let key = shared.keys.presence(shared.node);
    let members_key = shared.keys.members(&node);
    let ttl = shared.config.presence_ttl.as_millis().max(1) as u64;
    let unchanged = written
        .as_ref()
        .is_some_and(|(g, c, m)| *g == generation && *c == counts && *m == members);
    let mut pipe = redis::pipe();
    if unchanged {
        pipe.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
        pipe.cmd("PEXPIRE").arg(&members_key).arg(ttl).ignore();
    } else {
        pipe.atomic().cmd("DEL").arg(&key).ignore();
        pipe.cmd("DEL").arg(&members_key).ignore();
        if !counts.is_empty() {
            pipe.cmd("HSET").arg(&key);
            for (name, n) in &counts {
                pipe.arg(name).arg(*n);
            }
            pipe.ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
        }
        if !members.is_empty() {
            pipe.cmd("HSET").arg(&members_key);
            for m in &members {
                pipe.arg(format!("{}\n{}", m.channel, m.member))
                    .arg(m.info.to_string());
            }
            pipe.ignore();
            pipe.cmd("PEXPIRE").arg(&members_key).arg(ttl).ignore();
        }
    }
    if !counts.is_empty() || !members.is_empty() {
        // Every tick: a node with members but no subscribers (all in their grace period) is
        // pruned from the set by readers that see no counts, and must come back.
        pipe.cmd("SADD").arg(&shared.keys.nodes).arg(&node).ignore();
    }
    pipe.query_async::<()>(conn).await?;
    *written = Some((generation, counts, members));
    Ok(())
}

async fn sweep(shared: &Shared, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
    for _ in 0..SWEEP_ROUNDS {
        let forgotten: usize = shared
            .scripts
            .sweep
            .arg(&shared.keys.prefix)
            .arg(SWEEP_BATCH)
            .invoke_async(conn)
            .await?;
        if forgotten < SWEEP_BATCH {
            break;
        }
    }
    Ok(())
}
