//! The broker's background work: the supervisor that connects, makes sure the stream exists,
//! and runs the fan-out.
//!
//! Invariant: only the fan-out calls [`Hub::deliver`](halley_engine::Hub::deliver), one stream
//! message at a time, in sequence (= id) order, and it moves `Delivery::position` only *after*
//! the hub has the message — so a subscriber that registers and then reads the cursor misses
//! nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
use futures_util::StreamExt;
use halley_proto::MessageId;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Link, ORIGIN, PREV, Raw, Shared};
use crate::{CONNECT_TIMEOUT, REQUEST_TIMEOUT};

/// First delay before trying again after NATS became unreachable. Short, because most
/// outages are one server restarting while the client moves to another.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);

/// Longest delay between attempts (the delay doubles from [`RECONNECT_MIN`]).
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Longest delay before the fan-out is started again while the client is connected (the
/// stream is electing a leader, or a request timed out): each try is a request or two, and
/// every second a node waits beyond the election is a second more of `503`s on it (the
/// failover bench saw 5.3–14.2 s with [`RECONNECT_MAX`] here).
pub const SESSION_RETRY_MAX: Duration = Duration::from_secs(1);

/// How far apart an empty stream's creation time is read until two reads agree (see
/// `session`), at most [`EPOCH_READS`] times more.
pub const EPOCH_SETTLE: Duration = Duration::from_millis(200);

/// See [`EPOCH_SETTLE`].
pub const EPOCH_READS: usize = 5;

/// How often the fan-out checks that the stream is the one it reads (not deleted and created
/// again: a new epoch), that the client is connected, and how many channels there are.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Connects once (the client then reconnects by itself), then runs sessions until cancelled.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    servers: Vec<async_nats::ServerAddr>,
    cancel: CancellationToken,
) {
    // The first connection is this loop's; once connected, the client reconnects by itself
    // (to any server it knows) and the sessions below follow its state.
    let mut backoff = RECONNECT_MIN;
    let client = loop {
        let connect = async_nats::ConnectOptions::new()
            .name(format!("halley-{:x}", shared.node))
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                (RECONNECT_MIN * 2u32.saturating_pow(attempts.min(16) as u32)).min(RECONNECT_MAX)
            })
            .connect(servers.clone());
        let error = tokio::select! {
            _ = cancel.cancelled() => return,
            c = connect => match c {
                Ok(client) => break client,
                Err(e) => e,
            },
        };
        shared.error();
        tracing::warn!(%error, retry_in = ?backoff, "nats broker: cannot connect");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    };
    backoff = RECONNECT_MIN;
    loop {
        let error = tokio::select! {
            _ = cancel.cancelled() => break,
            e = session(&shared, &client, &mut backoff) => e,
        };
        disconnected(&shared);
        shared.error();
        tracing::warn!(%error, retry_in = ?backoff, "nats broker: fan-out stopped");
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(SESSION_RETRY_MAX);
    }
    disconnected(&shared);
    drop(client);
}

fn disconnected(shared: &Shared) {
    *shared.link.lock().unwrap_or_else(|e| e.into_inner()) = None;
    shared.healthy.send_replace(false);
}

/// Creates the stream with [`replicas`] copies.
async fn create_stream(
    shared: &Shared,
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
) -> Result<async_nats::jetstream::stream::Stream, String> {
    let replicas = replicas(shared, client);
    match js.create_stream(stream_config(shared, replicas)).await {
        Ok(stream) => {
            tracing::info!(stream = %shared.config.stream, replicas, "nats broker: created the stream");
            Ok(stream)
        }
        Err(e) => Err(format!("creating the stream with {replicas} replicas: {e}")),
    }
}

/// Copies of the streams Halley creates (its own and the buckets'): the configured number, or
/// 3 on a server that is part of a cluster and 1 on one alone. Never fewer because a cluster
/// cannot place three right now (it is still forming, or a server is down): that stream would
/// keep one copy for good, and the loss of its server would stop the cluster; creating it
/// fails instead, and is tried again.
pub(crate) fn replicas(shared: &Shared, client: &async_nats::Client) -> usize {
    shared.config.replicas.unwrap_or_else(|| {
        if client.server_info().cluster.is_some_and(|c| !c.is_empty()) {
            3
        } else {
            1
        }
    })
}

/// The stream's configuration when this node creates it.
fn stream_config(shared: &Shared, replicas: usize) -> Config {
    let c = &shared.config;
    Config {
        name: c.stream.clone(),
        subjects: vec![format!("{}.>", c.subject_prefix)],
        max_messages_per_subject: broker::max_history(shared) as i64,
        max_age: c.max_age.unwrap_or(shared.engine.history_ttl),
        max_bytes: c.max_bytes,
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// One connected life: returns only with the error that ended it.
async fn session(shared: &Shared, client: &async_nats::Client, backoff: &mut Duration) -> String {
    if client.connection_state() != async_nats::connection::State::Connected {
        return "not connected to NATS".into();
    }
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(REQUEST_TIMEOUT);
    let mut stream = match js.get_stream(&shared.config.stream).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            match create_stream(shared, client, &js).await {
                Ok(stream) => stream,
                // Another node created it meanwhile.
                Err(error) => match js.get_stream(&shared.config.stream).await {
                    Ok(stream) => stream,
                    Err(e) => return format!("{error}; {e}"),
                },
            }
        }
        Err(e) => return format!("reading the stream: {e}"),
    };
    let mut info = match stream.info().await {
        Ok(info) => info.clone(),
        Err(e) => return format!("reading the stream: {e}"),
    };
    // A stream that has just been created may answer, for a moment, with the time its
    // answering server made its copy rather than the cluster's creation time, which it takes
    // a moment later (nodes started together with their cluster: 2 of 10 rounds saw one node
    // on another epoch, which it then took for a new stream and delivered again). So an empty
    // stream's epoch is read until two reads [`EPOCH_SETTLE`] apart agree.
    if info.state.last_sequence == 0 {
        for _ in 0..EPOCH_READS {
            tokio::time::sleep(EPOCH_SETTLE).await;
            let again = match stream.info().await {
                Ok(info) => info.clone(),
                Err(e) => return format!("reading the stream: {e}"),
            };
            let settled = broker::epoch_of(&again) == broker::epoch_of(&info);
            info = again;
            if settled {
                break;
            }
        }
    }
    let epoch = broker::epoch_of(&info);
    let known = shared
        .delivery
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .position;
    let position = match known {
        // Same stream: continue after the last message delivered.
        Some(p) if p.epoch == epoch => p,
        // A new stream: deliver it from its start, so that local subscribers get what other
        // nodes published since.
        Some(_) => MessageId::new(epoch, 0),
        // First connection: only what is published from now on.
        None => MessageId::new(epoch, info.state.last_sequence),
    };
    {
        let mut delivery = shared.delivery.lock().unwrap_or_else(|e| e.into_inner());
        if known.is_some_and(|k| k.epoch != epoch) {
            // Sequences of another stream: a publish would expect them in vain.
            delivery.last.clear();
        }
        delivery.position = Some(position);
    }
    shared
        .subjects
        .store(info.state.subjects_count, Ordering::Relaxed);
    let link = Link {
        client: client.clone(),
        js,
        stream: stream.clone(),
        epoch,
    };
    let consumer = match stream
        .create_consumer(OrderedConfig {
            deliver_subject: client.new_inbox(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: position.offset + 1,
            },
            ..Default::default()
        })
        .await
    {
        Ok(c) => c,
        Err(e) => return format!("starting the fan-out: {e}"),
    };
    let mut messages = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => return format!("starting the fan-out: {e}"),
    };
    *shared.link.lock().unwrap_or_else(|e| e.into_inner()) = Some(link);
    shared.generation.fetch_add(1, Ordering::Relaxed);
    shared.healthy.send_replace(true);
    *backoff = RECONNECT_MIN;
    tracing::info!(epoch = %format!("{epoch:x}"), %position, "nats broker: connected");
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await;
    let mut position = position;
    loop {
        tokio::select! {
            next = messages.next() => {
                let message = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return format!("fan-out: {e}"),
                    None => return "fan-out ended".into(),
                };
                let info = match message.info() {
                    Ok(info) => info,
                    Err(e) => return format!("fan-out: {e}"),
                };
                let raw = Raw {
                    seq: info.stream_sequence,
                    stored_ms: 0,
                    subject: message.subject.to_string(),
                    headers: message.headers.clone(),
                    payload: message.payload.clone(),
                };
                if raw.seq <= position.offset {
                    continue;
                }
                position = MessageId::new(epoch, raw.seq);
                deliver(shared, position, &raw);
            }
            _ = check.tick() => {
                if client.connection_state() != async_nats::connection::State::Connected {
                    return "disconnected from NATS".into();
                }
                match stream.get_info().await {
                    Ok(info) if broker::epoch_of(&info) == epoch => {
                        shared.subjects.store(info.state.subjects_count, Ordering::Relaxed);
                    }
                    Ok(_) => return "the stream was created again: new epoch".into(),
                    Err(e) => return format!("checking the stream: {e}"),
                }
            }
        }
    }
}

/// Hands one stream message to the hub, then records the position and answers the publish
/// that waits for it, if it is ours.
fn deliver(shared: &Shared, id: MessageId, raw: &Raw) {
    let decoded = broker::decode(&shared.config.subject_prefix, id.epoch, raw).map(Arc::new);
    let headers = raw.headers.as_ref();
    let prev = broker::header_number(headers, PREV);
    let before = shared
        .delivery
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .position;
    if let (Some(prev), Some(before)) = (prev, before)
        && before.epoch == id.epoch
        && prev > before.offset
    {
        // The channel's previous message came after what this node delivered last, yet was
        // not delivered: history evicted it before the fan-out read it. The channel's
        // subscribers here are cut off before this message reaches them, so that they resume
        // from before the hole and are told of the gap.
        let cut = shared.hub.lost(decoded.as_ref().map(|m| &m.channel));
        tracing::error!(%id, missed = prev, subscribers_cut_off = cut, "nats broker: a message was evicted before this node delivered it");
        shared.error();
    }
    let count = match &decoded {
        Some(message) => shared.hub.deliver(message),
        None => {
            tracing::error!(%id, subject = %raw.subject, "nats broker: undecodable message skipped");
            shared.error();
            0
        }
    };
    let mine = headers
        .and_then(|h| h.get(ORIGIN))
        .and_then(|o| o.as_str().split_once(':'))
        .filter(|(node, _)| u64::from_str_radix(node, 16).ok() == Some(shared.node))
        .and_then(|(_, seq)| seq.parse::<u64>().ok());
    let mut delivery = shared.delivery.lock().unwrap_or_else(|e| e.into_inner());
    delivery.position = Some(id);
    if let Some(message) = &decoded {
        delivery.remember(&message.channel, id.offset);
    }
    if let Some(waiter) = mine.and_then(|seq| delivery.waiters.remove(&seq)) {
        let _ = waiter.send(count);
    }
}
