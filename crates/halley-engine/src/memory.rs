//! The in-memory broker: ids, history and fan-out for a single node.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use halley_proto::{Channel, Message, MessageId, Meta, Pattern, Payload};
use tokio::time::Instant;

use crate::{Broker, BrokerError, ChannelEntry, EngineConfig, Gather, Hub, Replay};

/// How often expired history is swept and empty channels forgotten, when nobody publishes to
/// them. Expiry on publish keeps busy channels tidy; this catches the quiet ones.
pub const HISTORY_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

struct History {
    messages: VecDeque<(Instant, Arc<Message>)>,
    /// How long this channel's messages stay (its namespace's `history-ttl`, or the default).
    ttl: Duration,
    /// Highest offset evicted from this channel; a resume from below it has a gap.
    evicted: u64,
    last: MessageId,
}

struct State {
    offset: u64,
    channels: HashMap<Channel, History>,
    /// Highest offset ever held by a channel that has since been forgotten entirely. A resume
    /// from below it may have missed that channel's messages, so it is reported as a gap.
    forgotten: u64,
}

/// Single-node broker: one lock orders every publish, which is what makes ids grow in the same
/// order messages reach subscribers (so a wildcard subscriber can resume from one id).
pub struct MemoryBroker {
    hub: Hub,
    epoch: u64,
    config: EngineConfig,
    state: Mutex<State>,
}

impl MemoryBroker {
    /// A broker with a fresh random epoch, so ids from a previous run are recognised as
    /// foreign. Starts the history sweeper when called inside a tokio runtime.
    pub fn spawn(hub: Hub, config: EngineConfig) -> Arc<MemoryBroker> {
        let broker = Arc::new(MemoryBroker {
            hub,
            // Never 0, so that "0-0" is never a valid current-epoch id by accident.
            epoch: rand::random::<u64>() | 1,
            config,
            state: Mutex::new(State {
                offset: 0,
                channels: HashMap::new(),
                forgotten: 0,
            }),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&broker)));
        }
        broker
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn expire(&self, state: &mut State, now: Instant) {
        let mut forgotten = state.forgotten;
        state.channels.retain(|_, history| {
            evict_old(history, now);
            let keep = !history.messages.is_empty();
            if !keep {
                forgotten = forgotten.max(history.last.offset);
            }
            keep
        });
        state.forgotten = forgotten;
    }
}

fn evict_old(history: &mut History, now: Instant) {
    while let Some((at, m)) = history.messages.front() {
        if now.duration_since(*at) < history.ttl {
            break;
        }
        history.evicted = m.id.offset;
        history.messages.pop_front();
    }
}

/// Now, in Unix milliseconds (messages' expiry is wall-clock: it travels between nodes).
fn unix_ms() -> u64 {
    unix_now_us() / 1000
}

/// Now, in Unix microseconds (when a message was published: a Redis node's is Redis's clock).
fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn sweep(broker: Weak<MemoryBroker>) {
    let mut tick = tokio::time::interval(HISTORY_SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let mut state = broker.state.lock().unwrap_or_else(|e| e.into_inner());
        broker.expire(&mut state, Instant::now());
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(
        &self,
        channel: Channel,
        data: Payload,
        meta: Option<Box<Meta>>,
    ) -> Result<(Arc<Message>, usize), BrokerError> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State {
            offset, channels, ..
        } = &mut *state;
        if !channels.contains_key(&channel) && channels.len() >= self.config.max_channels {
            return Err(BrokerError::TooManyChannels(self.config.max_channels));
        }
        *offset += 1;
        let id = MessageId::new(self.epoch, *offset);
        let message = Arc::new(
            Message::with_meta(channel.clone(), id, data, meta).published_at(unix_now_us()),
        );
        let limits = self.config.history(&channel);
        let history = channels.entry(channel).or_insert_with(|| History {
            messages: VecDeque::new(),
            ttl: limits.ttl,
            evicted: 0,
            last: id,
        });
        history.last = id;
        history.ttl = limits.ttl;
        history.messages.push_back((now, message.clone()));
        while history.messages.len() > limits.size {
            if let Some((_, m)) = history.messages.pop_front() {
                history.evicted = m.id.offset;
            }
        }
        evict_old(history, now);
        // Delivered under the lock: the next publish cannot overtake this one. The writes to
        // idle subscribers' sockets are done after it (`direct.rs` keeps their order), so that
        // publishes to other channels do not wait for them.
        let (count, writes) = self.hub.deliver_deferred(&message);
        drop(state);
        drop(writes);
        Ok((message, count))
    }

    async fn replay(
        &self,
        pattern: &Pattern,
        after: MessageId,
        limit: usize,
    ) -> Result<Replay, BrokerError> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut gap = after.epoch != self.epoch || after.offset > state.offset;
        let from = if after.epoch == self.epoch {
            after.offset.min(state.offset)
        } else {
            0
        };
        let mut batch = Gather::new(limit);
        let now_ms = unix_ms();
        let mut collect = |history: &History| {
            if history.evicted > from {
                gap = true;
            }
            if history.last.offset <= from {
                // Nothing new here: one comparison, not a search.
                return;
            }
            let start = history
                .messages
                .partition_point(|(_, m)| m.id.offset <= from);
            let end = history.messages.len().min(start + limit);
            // Cut at the limit: history holds more after the last message read.
            let cut = (end < history.messages.len()).then(|| history.messages[end - 1].1.id);
            // Past what the batch can still take, nothing is copied (a `/**` resume over many
            // channels copies about one batch, not one per channel).
            let bound = batch.bound();
            let read = history
                .messages
                .range(start..end)
                .take_while(|(_, m)| bound.is_none_or(|b| m.id <= b))
                .filter(|(_, m)| !m.expired(now_ms));
            batch.add(read.map(|(_, m)| m.clone()), cut);
        };
        match pattern.exact() {
            Some(channel) => {
                if let Some(history) = state.channels.get(channel) {
                    collect(history);
                }
            }
            None => {
                for (channel, history) in &state.channels {
                    if pattern.matches(channel) {
                        collect(history);
                    }
                }
            }
        }
        if state.forgotten > from && after.epoch == self.epoch {
            gap = true;
        }
        drop(state);
        Ok(batch.finish(gap))
    }

    async fn recent(
        &self,
        channel: &Channel,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, BrokerError> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(state
            .channels
            .get(channel)
            .map_or_else(Vec::new, |history| {
                // The newest `limit` that have not expired (a message's own TTL).
                let now_ms = unix_ms();
                let mut newest: Vec<Arc<Message>> = history
                    .messages
                    .iter()
                    .rev()
                    .filter(|(_, m)| !m.expired(now_ms))
                    .take(limit)
                    .map(|(_, m)| m.clone())
                    .collect();
                newest.reverse();
                newest
            }))
    }

    fn replay_batch(&self) -> usize {
        self.config.replay_batch
    }

    async fn cursor(&self) -> Result<MessageId, BrokerError> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(MessageId::new(self.epoch, state.offset))
    }

    async fn channels(&self, prefix: &str) -> Result<Vec<ChannelEntry>, BrokerError> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(state
            .channels
            .iter()
            .filter(|(c, _)| c.as_str().starts_with(prefix))
            .map(|(c, h)| ChannelEntry {
                channel: c.clone(),
                last_id: Some(h.last),
            })
            .collect())
    }
}
