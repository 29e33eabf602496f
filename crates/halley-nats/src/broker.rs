//! [`NatsBroker`]: the [`Broker`] trait on JetStream. Requests (publish, replay, listings) use
//! the shared client; the fan-out runs in `node`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use halley_engine::{Broker, BrokerError, ChannelEntry, EngineConfig, Hub, Member, Replay, Stats};
use halley_proto::{Channel, Message, MessageId, Meta, Pattern, Payload};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::{ECHO_TIMEOUT, NatsConfig, PUBLISH_ATTEMPTS, REQUEST_TIMEOUT, subject};

pub(crate) const PREV: &str = "Halley-Prev";
pub(crate) const ORIGIN: &str = "Halley-Origin";
pub(crate) const PUBLISHED_US: &str = "Halley-Us";
pub(crate) const KIND: &str = "Halley-Type";
pub(crate) const EXPIRES: &str = "Halley-Expires";

/// Channels whose last sequence a node remembers (from its fan-out and its publishes), so that
/// a publish knows the sequence to expect without asking. Past this many the memory is
/// cleared and refills; a channel it does not know costs one read of its last message.
pub const LAST_SEQUENCES: usize = 100_000;

/// Publishes of one node to channels in the same stripe (by hash) go one at a time, from
/// reading the channel's last sequence to the acknowledgement: concurrent publishes to one
/// channel from one node would otherwise all expect the same last sequence, and all but one
/// retry. 64 stripes let publishes to different channels overlap.
const PUBLISH_STRIPES: usize = 64;

/// How long a replay waits before asking again when the stream's leader has not stored yet
/// what this node already delivered (see `Shared::leader_info`).
const LEADER_BEHIND_STEP: Duration = Duration::from_millis(5);

/// Last messages read at once when a listing needs channels' last ids this node does not
/// remember.
const LOOKUPS_IN_FLIGHT: usize = 16;

/// What the connected session provides: the JetStream context, the stream, its epoch.
#[derive(Clone)]
pub(crate) struct Link {
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub stream: Stream,
    pub epoch: u64,
}

/// What the fan-out has delivered to the hub, and who is waiting for it.
#[derive(Default)]
pub(crate) struct Delivery {
    /// The last id handed to the hub (or where the fan-out started): a valid cursor.
    pub position: Option<MessageId>,
    /// Publishes of this node waiting for their message to come back, by local number.
    pub waiters: HashMap<u64, oneshot::Sender<usize>>,
    /// Last stream sequence seen per channel (at most [`LAST_SEQUENCES`]).
    pub last: HashMap<Channel, u64>,
}

impl Delivery {
    pub fn remember(&mut self, channel: &Channel, seq: u64) {
        if self.last.len() >= LAST_SEQUENCES && !self.last.contains_key(channel) {
            self.last.clear();
        }
        let entry = self.last.entry(channel.clone()).or_default();
        *entry = (*entry).max(seq);
    }
}

pub(crate) struct Shared {
    pub hub: Hub,
    pub stats: Arc<Stats>,
    pub engine: EngineConfig,
    pub config: NatsConfig,
    /// This node's random id: marks the messages it published.
    pub node: u64,
    /// Present while connected and the stream is known. Cloned per request, never held
    /// across an await.
    pub link: Mutex<Option<Link>>,
    /// True while connected; also what `connected()` waits on.
    pub healthy: watch::Sender<bool>,
    pub delivery: Mutex<Delivery>,
    pub next_seq: AtomicU64,
    /// Subjects in the stream, as of the last check (for `max_channels`).
    pub subjects: AtomicU64,
    /// Bumped on every session start, so that presence is written again into a cluster that
    /// may have lost it.
    pub generation: AtomicU64,
    /// The other nodes' presence (`presence.rs`).
    pub others: Mutex<crate::presence::Others>,
    /// The idempotency keys' bucket, once found (`keys.rs`).
    pub keys: Mutex<Option<async_nats::jetstream::kv::Store>>,
    /// See [`PUBLISH_STRIPES`].
    pub stripes: Vec<tokio::sync::Mutex<()>>,
    /// True once this node listens to the control subject and read the kept revocations.
    pub control_up: watch::Sender<bool>,
}

impl Shared {
    pub fn error(&self) {
        self.stats.broker_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the failure and turns it into the error publishers and resumers see.
    pub fn unavailable(&self, e: impl std::fmt::Display) -> BrokerError {
        self.error();
        BrokerError::Unavailable(e.to_string())
    }

    /// The session's link while the client is connected.
    pub fn connected(&self) -> Option<Link> {
        let link = self
            .link
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        (link.client.connection_state() == async_nats::connection::State::Connected).then_some(link)
    }

    pub fn link(&self) -> Result<Link, BrokerError> {
        self.connected()
            .ok_or_else(|| self.unavailable("not connected to NATS"))
    }

    fn delivery(&self) -> std::sync::MutexGuard<'_, Delivery> {
        self.delivery.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stream's state from its leader, once the leader holds everything this node's
    /// fan-out delivered (the fan-out may read from a replica that stored a message before the
    /// leader did). A replay or a `recent` read bounded by the leader's last sequence would
    /// otherwise leave out a message this node delivered before the subscriber registered: it
    /// would reach that subscriber neither from history nor live. Waits at most
    /// [`REQUEST_TIMEOUT`], asking again [`LEADER_BEHIND_STEP`] apart.
    async fn leader_info(
        &self,
        link: &Link,
    ) -> Result<async_nats::jetstream::stream::Info, BrokerError> {
        // Read once: what was delivered before the caller's subscriber registered is at or
        // before it; what the fan-out delivers meanwhile reaches that subscriber live.
        let position = self.delivery().position;
        let asked = tokio::time::Instant::now();
        loop {
            let info = link
                .stream
                .get_info()
                .await
                .map_err(|e| self.unavailable(e))?;
            let delivered = position
                .filter(|p| p.epoch == epoch_of(&info))
                .map_or(0, |p| p.offset);
            if delivered <= info.state.last_sequence {
                return Ok(info);
            }
            if asked.elapsed() >= REQUEST_TIMEOUT {
                return Err(self.unavailable(format!(
                    "the stream's leader holds up to {}, behind this node's {delivered}",
                    info.state.last_sequence
                )));
            }
            tracing::debug!(
                last = info.state.last_sequence,
                delivered,
                "nats broker: the stream's leader is behind this node's fan-out"
            );
            tokio::time::sleep(LEADER_BEHIND_STEP).await;
        }
    }

    /// The sequence of `subject`'s last message, 0 when it has none.
    async fn last_of(&self, link: &Link, subject: &str) -> Result<u64, BrokerError> {
        match link.stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(self.unavailable(e)),
        }
    }
}

/// One stored message as read back, before it is decoded.
pub(crate) struct Raw {
    pub seq: u64,
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
    /// When the stream stored it (Unix ms, the server's clock).
    pub stored_ms: u64,
}

pub(crate) fn header_number(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().parse().ok()
}

/// A stored message's type and expiry, when it has either.
fn meta_of(headers: Option<&HeaderMap>) -> Option<Box<Meta>> {
    let kind = headers
        .and_then(|h| h.get(KIND))
        .map(|k| k.as_str())
        .filter(|k| halley_proto::valid_type(k));
    let expires_ms = header_number(headers, EXPIRES);
    (kind.is_some() || expires_ms.is_some()).then(|| {
        Box::new(Meta {
            kind: kind.map(Into::into),
            expires_ms,
        })
    })
}

/// The message a stored entry holds, or `None` when it is not one of ours.
pub(crate) fn decode(prefix: &str, epoch: u64, raw: &Raw) -> Option<Message> {
    let channel = subject::parse(prefix, &raw.subject)?;
    let data = Payload::from_json(&raw.payload).ok()?;
    let headers = raw.headers.as_ref();
    Some(
        Message::with_meta(
            channel,
            MessageId::new(epoch, raw.seq),
            data,
            meta_of(headers),
        )
        .published_at(header_number(headers, PUBLISHED_US).unwrap_or(0)),
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn epoch_of(info: &async_nats::jetstream::stream::Info) -> u64 {
    info.created.unix_timestamp_nanos().max(1) as u64
}

/// Reads the messages of `filter` from sequence `start` on with an ordered consumer: at most
/// `max`, none past `bound`. Also says whether it stopped at `max` (more may follow).
pub(crate) async fn read(
    link: &Link,
    filter: String,
    start: u64,
    max: usize,
    bound: u64,
) -> Result<(Vec<Raw>, bool), String> {
    let mut out = Vec::new();
    if max == 0 {
        return Ok((out, false));
    }
    let consumer = link
        .stream
        .create_consumer(OrderedConfig {
            deliver_subject: link.client.new_inbox(),
            filter_subject: filter.clone(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let pending = consumer.cached_info().num_pending as usize;
    if pending > 0 {
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let mut received = 0;
        while received < pending {
            if out.len() == max {
                return Ok((out, true));
            }
            let message = match tokio::time::timeout(REQUEST_TIMEOUT, messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(None) => return Err("history read ended early".into()),
                Err(_) => return Err("history read timed out".into()),
            };
            received += 1;
            let info = message.info().map_err(|e| e.to_string())?;
            if info.stream_sequence > bound {
                return Ok((out, false));
            }
            if info.stream_sequence < start {
                // A consumer asked to start past its server's last message starts right after
                // that (nats-server's choice): a replica behind the leader hands over what the
                // caller already has (the chaos test got a message twice this way).
                continue;
            }
            let raw = Raw {
                seq: info.stream_sequence,
                stored_ms: (info.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64,
                subject: message.subject.to_string(),
                headers: message.headers.clone(),
                payload: message.payload.clone(),
            };
            out.push(raw);
        }
    }
    if bound == u64::MAX {
        return Ok((out, false));
    }
    // The consumer is served by one of the stream's servers, which may lag its leader (a
    // replica catching up): what the leader holds up to `bound` beyond what it read would
    // reach this subscriber neither from history nor live (the node delivered it before the
    // subscriber registered). The leader is asked for the rest, a message at a time: one
    // request when the consumer's server was current, as it nearly always is.
    let mut next = out.last().map_or(start.max(1), |r: &Raw| r.seq + 1);
    let from_consumer = out.len();
    while next <= bound {
        if out.len() == max {
            return Ok((out, true));
        }
        let message = match link
            .stream
            .get_first_raw_message_by_subject(&filter, next)
            .await
        {
            Ok(m) => m,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(e.to_string()),
        };
        if message.sequence > bound {
            break;
        }
        next = message.sequence + 1;
        out.push(Raw {
            seq: message.sequence,
            stored_ms: (message.time.unix_timestamp_nanos() / 1_000_000).max(0) as u64,
            subject: message.subject.to_string(),
            headers: Some(message.headers),
            payload: message.payload,
        });
    }
    tracing::debug!(%filter, start, bound, pending, from_consumer, from_leader = out.len() - from_consumer, "nats broker: history read");
    Ok((out, false))
}

/// The NATS broker. Dropping it (or [`NatsBroker::shutdown`]) stops its background task.
pub struct NatsBroker {
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Removes a publish's waiter however the publish ends (error, timeout, or its caller gave up).
struct WaiterGuard<'a> {
    shared: &'a Shared,
    seq: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.shared.delivery().waiters.remove(&self.seq);
    }
}

impl NatsBroker {
    /// Starts the broker: its supervisor connects in the background (see
    /// [`NatsBroker::connected`]) and delivers every message to `hub`. Fails only on a
    /// malformed address. Must be called inside a tokio runtime.
    pub fn spawn(
        config: NatsConfig,
        engine: EngineConfig,
        hub: Hub,
        stats: Arc<Stats>,
    ) -> Result<Arc<NatsBroker>, BrokerError> {
        let servers = config.servers()?;
        let shared = Arc::new(Shared {
            hub,
            stats,
            engine,
            config,
            node: rand::random::<u64>() | 1,
            link: Mutex::new(None),
            healthy: watch::Sender::new(false),
            delivery: Mutex::new(Delivery::default()),
            next_seq: AtomicU64::new(1),
            subjects: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            others: Mutex::new(Default::default()),
            keys: Mutex::new(None),
            stripes: (0..PUBLISH_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            control_up: watch::Sender::new(false),
        });
        let cancel = CancellationToken::new();
        tokio::spawn(crate::node::supervise(
            shared.clone(),
            servers,
            cancel.clone(),
        ));
        tokio::spawn(crate::presence::run(shared.clone(), cancel.clone()));
        tokio::spawn(crate::control::listen(shared.clone(), cancel.clone()));
        Ok(Arc::new(NatsBroker { shared, cancel }))
    }

    /// Waits up to `within` for the connection and the stream; true once both are there.
    pub async fn connected(&self, within: Duration) -> bool {
        let mut rx = self.shared.healthy.subscribe();
        tokio::time::timeout(within, rx.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits up to `within` until this node listens to the control API's subject and has read
    /// the kept revocations (it starts once the engine's policy is set).
    pub async fn control_ready(&self, within: Duration) -> bool {
        let mut rx = self.shared.control_up.subscribe();
        tokio::time::timeout(within, rx.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops the background task and drops the connection, as a crash would.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// This node's id.
    pub fn node(&self) -> u64 {
        self.shared.node
    }

    /// The epoch ids are issued in now (the stream's creation time), once connected.
    pub fn epoch(&self) -> Option<u64> {
        self.shared
            .link
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|l| l.epoch)
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn publish(
        &self,
        channel: Channel,
        data: Payload,
        meta: Option<Box<Meta>>,
    ) -> Result<(Arc<Message>, usize), BrokerError> {
        let s = &self.shared;
        let link = s.link()?;
        let subject = subject::channel(&s.config.subject_prefix, &channel);
        let known = s.delivery().last.get(&channel).copied();
        if known.is_none()
            && s.subjects.load(Ordering::Relaxed) >= s.engine.max_channels as u64
            && s.last_of(&link, &subject).await? == 0
        {
            return Err(BrokerError::TooManyChannels(s.engine.max_channels));
        }
        let local = s.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        s.delivery().waiters.insert(local, tx);
        let _guard = WaiterGuard {
            shared: s,
            seq: local,
        };
        let stripe = {
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            BuildHasherDefault::<DefaultHasher>::default().hash_one(&channel) as usize
                % PUBLISH_STRIPES
        };
        let turn = s.stripes[stripe].lock().await;
        // Every sequence the stream gives this publish is past what was delivered before it
        // began — unless the stream was created again and this node has not noticed yet.
        let before = s.delivery().position;
        let payload = Bytes::copy_from_slice(data.json().as_bytes());
        let published_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        // Read under the stripe: the previous publish of this node to the channel is in.
        let cached = s.delivery().last.get(&channel).copied();
        let mut prev = match cached {
            Some(seq) => seq,
            None => s.last_of(&link, &subject).await?,
        };
        let mut seq = None;
        for _ in 0..PUBLISH_ATTEMPTS {
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                prev.to_string().as_str(),
            );
            headers.insert(PREV, prev.to_string().as_str());
            headers.insert(ORIGIN, format!("{:x}:{local}", s.node).as_str());
            headers.insert(PUBLISHED_US, published_us.to_string().as_str());
            if let Some(kind) = meta.as_deref().and_then(|m| m.kind.as_deref()) {
                headers.insert(KIND, kind);
            }
            if let Some(x) = meta.as_deref().and_then(|m| m.expires_ms) {
                headers.insert(EXPIRES, x.to_string().as_str());
            }
            let ack = match link
                .js
                .publish_with_headers(subject.clone(), headers, payload.clone())
                .await
            {
                Ok(future) => future.await,
                Err(e) => Err(e),
            };
            match ack {
                Ok(ack) => {
                    seq = Some(ack.sequence);
                    break;
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    prev = s.last_of(&link, &subject).await?;
                }
                Err(e) => return Err(s.unavailable(e)),
            }
        }
        let Some(seq) = seq else {
            return Err(s.unavailable(format!(
                "{PUBLISH_ATTEMPTS} concurrent publishes to {channel} raced this one"
            )));
        };
        if before.is_some_and(|b| b.epoch == link.epoch && seq <= b.offset) {
            // Stored in a new stream whose epoch this node does not know yet: no id to give.
            return Err(s.unavailable("the stream was created again; retry"));
        }
        s.delivery().remember(&channel, seq);
        drop(turn);
        let id = MessageId::new(link.epoch, seq);
        let limits = s.engine.history(&channel);
        if limits.size < self.max_history() {
            // The stream keeps `max_history` per subject; this namespace keeps fewer. The
            // message is stored: a failed trim only keeps more than asked (counted).
            if let Err(e) = link
                .stream
                .purge()
                .filter(subject)
                .keep(limits.size as u64)
                .await
            {
                s.error();
                tracing::warn!(%id, error = %e, "nats broker: trimming a channel's history failed");
            }
        }
        // Waiting for our own copy gives a real local count and keeps one publisher's
        // messages in order for local subscribers; if it does not come (the fan-out is
        // reconnecting), the other nodes still deliver it.
        let subscribers = match tokio::time::timeout(ECHO_TIMEOUT, rx).await {
            Ok(Ok(n)) => n,
            _ => {
                tracing::warn!(%id, "published, but this node's fan-out did not echo it in time");
                0
            }
        };
        Ok((
            Arc::new(Message::with_meta(channel, id, data, meta).published_at(published_us)),
            subscribers,
        ))
    }

    async fn replay(
        &self,
        pattern: &Pattern,
        after: MessageId,
        limit: usize,
    ) -> Result<Replay, BrokerError> {
        let s = &self.shared;
        let link = s.link()?;
        let info = s.leader_info(&link).await?;
        let epoch = epoch_of(&info);
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let same_epoch = after.epoch == epoch;
        let mut gap = !same_epoch || after.offset > last;
        let from = if same_epoch {
            after.offset.min(last)
        } else {
            0
        };
        if from >= last {
            tracing::debug!(%pattern, %after, first, last, gap, position = ?s.delivery().position, "nats broker: replay, nothing to read");
            return Ok(Replay {
                messages: Vec::new(),
                gap,
                more: None,
            });
        }
        let limit = limit.max(1);
        let prefix = &s.config.subject_prefix;
        // Nothing past `last`: what comes later reaches the subscriber live (it registered
        // before its replay began).
        let (raws, cut) = read(
            &link,
            subject::pattern(prefix, pattern),
            from + 1,
            limit,
            last,
        )
        .await
        .map_err(|e| s.unavailable(e))?;
        let now = now_ms();
        let mut seen: HashSet<Channel> = HashSet::new();
        let mut messages = Vec::with_capacity(raws.len());
        for raw in &raws {
            let Some(message) = decode(prefix, epoch, raw) else {
                tracing::warn!(seq = raw.seq, subject = %raw.subject, "nats broker: undecodable history entry skipped");
                gap = true;
                continue;
            };
            if !pattern.matches(&message.channel) {
                continue;
            }
            if !seen.contains(&message.channel) {
                // The oldest message of its channel after `from`: was one between removed?
                if header_number(raw.headers.as_ref(), PREV).unwrap_or(u64::MAX) > from {
                    gap = true;
                }
                seen.insert(message.channel.clone());
            }
            let ttl = s.engine.history(&message.channel).ttl.as_millis() as u64;
            if raw.stored_ms < now.saturating_sub(ttl) {
                gap = true;
                continue;
            }
            if message.expired(now) {
                continue;
            }
            messages.push(Arc::new(message));
        }
        // Age removes from the head of the whole stream: a channel with nothing left after
        // `from` may have lost what it had (see the crate doc, "Ages").
        if from + 1 < first && (pattern.is_wildcard() || seen.is_empty()) {
            gap = true;
        }
        let more = if cut {
            raws.last().map(|r| MessageId::new(epoch, r.seq))
        } else {
            None
        };
        tracing::debug!(%pattern, %after, first, last, read = raws.len(), kept = messages.len(), gap, ?more, position = ?s.delivery().position, "nats broker: replay");
        Ok(Replay {
            messages,
            gap,
            more,
        })
    }

    fn replay_batch(&self) -> usize {
        self.shared.engine.replay_batch
    }

    async fn recent(
        &self,
        channel: &Channel,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, BrokerError> {
        let s = &self.shared;
        let link = s.link()?;
        let prefix = &s.config.subject_prefix;
        // All of the subject up to the leader's last message, to keep the newest: the stream
        // holds at most its `max_msgs_per_subject` of it (`max_history` when Halley created
        // the stream).
        let info = s.leader_info(&link).await?;
        let (raws, _) = read(
            &link,
            subject::channel(prefix, channel),
            1,
            usize::MAX,
            info.state.last_sequence,
        )
        .await
        .map_err(|e| s.unavailable(e))?;
        let now = now_ms();
        let ttl = s.engine.history(channel).ttl.as_millis() as u64;
        let mut out: Vec<Arc<Message>> = raws
            .iter()
            .filter(|raw| raw.stored_ms >= now.saturating_sub(ttl))
            .filter_map(|raw| decode(prefix, link.epoch, raw))
            .filter(|m| !m.expired(now))
            .map(Arc::new)
            .collect();
        let keep = out.len().saturating_sub(limit);
        out.drain(..keep);
        Ok(out)
    }

    async fn cursor(&self) -> Result<MessageId, BrokerError> {
        let s = &self.shared;
        if let Some(position) = s.delivery().position {
            return Ok(position);
        }
        let link = s.link()?;
        let info = link.stream.get_info().await.map_err(|e| s.unavailable(e))?;
        Ok(MessageId::new(epoch_of(&info), info.state.last_sequence))
    }

    async fn channels(&self, prefix: &str) -> Result<Vec<ChannelEntry>, BrokerError> {
        let s = &self.shared;
        let link = s.link()?;
        let subject_prefix = &s.config.subject_prefix;
        let mut subjects = link
            .stream
            .info_with_subjects(subject::listing(subject_prefix, prefix))
            .await
            .map_err(|e| s.unavailable(e))?;
        let mut names = Vec::new();
        while let Some(entry) = subjects.next().await {
            let (subject, _count) = entry.map_err(|e| s.unavailable(e))?;
            if let Some(channel) = subject::parse(subject_prefix, &subject)
                && channel.as_str().starts_with(prefix)
            {
                names.push((channel, subject));
            }
            if names.len() > s.engine.max_channels {
                break;
            }
        }
        let known: Vec<Option<u64>> = {
            let delivery = s.delivery();
            names
                .iter()
                .map(|(c, _)| delivery.last.get(c).copied())
                .collect()
        };
        let link = &link;
        let lookups: Vec<(String, Option<u64>)> = names
            .iter()
            .map(|(_, subject)| subject.clone())
            .zip(known)
            .collect();
        let lasts: Vec<Option<u64>> = futures_util::stream::iter(lookups)
            .map(|(subject, known)| async move {
                match known {
                    Some(seq) => Some(seq),
                    None => s.last_of(link, &subject).await.ok().filter(|seq| *seq > 0),
                }
            })
            .buffered(LOOKUPS_IN_FLIGHT)
            .collect()
            .await;
        Ok(names
            .into_iter()
            .zip(lasts)
            .map(|((channel, _), last)| ChannelEntry {
                channel,
                last_id: last.map(|seq| MessageId::new(link.epoch, seq)),
            })
            .collect())
    }

    async fn remote_subscribers(&self, prefix: &str) -> Result<Vec<(String, usize)>, BrokerError> {
        let s = &self.shared;
        s.link()?;
        let others = s.others.lock().unwrap_or_else(|e| e.into_inner());
        Ok(others.subscribers(prefix, s.config.presence_ttl))
    }

    async fn remote_members(&self, prefix: &str) -> Result<Vec<Member>, BrokerError> {
        let s = &self.shared;
        s.link()?;
        let others = s.others.lock().unwrap_or_else(|e| e.into_inner());
        Ok(others.members(prefix, s.config.presence_ttl))
    }

    fn clustered(&self) -> bool {
        true
    }

    async fn control(
        &self,
        command: &halley_engine::control::Command,
    ) -> Result<halley_engine::control::Remote, BrokerError> {
        crate::control::request(&self.shared, command).await
    }

    /// A key-value `create` in `<stream>_KEYS` (see `keys.rs`).
    async fn claim_key(
        &self,
        name: &str,
        value: &str,
        window: Duration,
    ) -> Result<halley_engine::idempotency::KeyClaim, BrokerError> {
        crate::keys::claim(&self.shared, name, value, window).await
    }

    async fn settle_key(
        &self,
        name: &str,
        value: Option<&str>,
        window: Duration,
    ) -> Result<bool, BrokerError> {
        crate::keys::settle(&self.shared, name, value, window).await
    }

    fn node(&self) -> Option<String> {
        Some(format!("{:x}", self.shared.node))
    }

    fn healthy(&self) -> bool {
        *self.shared.healthy.borrow() && self.shared.connected().is_some()
    }
}

impl NatsBroker {
    /// Messages the stream keeps per channel.
    fn max_history(&self) -> usize {
        max_history(&self.shared)
    }
}

pub(crate) fn max_history(shared: &Shared) -> usize {
    shared
        .config
        .max_history
        .unwrap_or(shared.engine.history_size)
        .max(1)
}
