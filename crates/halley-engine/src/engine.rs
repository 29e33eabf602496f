use std::collections::BTreeMap;
use std::sync::Arc;

use halley_proto::{Channel, Message, MessageId, Pattern, Payload};

use crate::{Broker, BrokerError, EngineConfig, Hub, MemoryBroker, Stats, Subscription};

/// Why a publish or subscribe was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("channel {0} is reserved for the protocol")]
    Reserved(Channel),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The result of a publish.
#[derive(Debug, Clone)]
pub struct Published {
    pub message: Arc<Message>,
    /// Subscribers on this node that the message was queued for.
    pub subscribers: usize,
}

/// A row of the channel listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// A channel, or a wildcard pattern somebody subscribed to.
    pub name: String,
    pub subscribers: usize,
    pub last_id: Option<MessageId>,
}

struct Shared {
    hub: Hub,
    broker: Arc<dyn Broker>,
    stats: Arc<Stats>,
}

/// The facade the transports use. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl Engine {
    /// A single-node engine with the in-memory broker.
    pub fn in_memory(config: EngineConfig) -> Engine {
        let stats = Arc::new(Stats::default());
        let hub = Hub::new(config.queue_capacity, stats.clone());
        let broker = MemoryBroker::spawn(hub.clone(), config);
        Engine::with_broker(hub, broker, stats)
    }

    /// An engine over any broker; the broker must deliver to `hub` (see [`Broker`]).
    pub fn with_broker(hub: Hub, broker: Arc<dyn Broker>, stats: Arc<Stats>) -> Engine {
        Engine {
            shared: Arc::new(Shared { hub, broker, stats }),
        }
    }

    /// A subscriber with no patterns yet, for protocols that subscribe piecemeal (Bayeux).
    pub fn subscriber(&self) -> Subscription {
        self.shared.hub.subscriber()
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    pub fn healthy(&self) -> bool {
        self.shared.broker.healthy()
    }

    /// Publishes `data` to `channel`. Protocol channels (`/meta/**`, `/service/**`) are not
    /// broadcast and are refused here.
    pub async fn publish(&self, channel: Channel, data: Payload) -> Result<Published, EngineError> {
        if channel.is_meta() || channel.is_service() {
            return Err(EngineError::Reserved(channel));
        }
        let (message, subscribers) = self.shared.broker.publish(channel, data).await?;
        Stats::add(&self.shared.stats.published, 1);
        Ok(Published {
            message,
            subscribers,
        })
    }

    /// Subscribes to `pattern`. With `resume`, the subscription first yields every message after
    /// that id still in history, then live messages, without duplicates; [`Subscription::gap`]
    /// says whether history could not cover it all.
    pub async fn subscribe(
        &self,
        pattern: Pattern,
        resume: Option<MessageId>,
    ) -> Result<Subscription, EngineError> {
        if let Some(c) = pattern.exact().filter(|c| c.is_meta() || c.is_service()) {
            return Err(EngineError::Reserved(c.clone()));
        }
        // Register before reading history or the cursor, so that nothing published in between
        // is missed; what is seen twice is dropped by id in the subscription.
        let mut sub = self.shared.hub.register(pattern.clone());
        match resume {
            Some(after) => {
                let replay = self.shared.broker.replay(&pattern, after).await?;
                if replay.gap {
                    Stats::add(&self.shared.stats.gaps, 1);
                }
                let floor = (!replay.gap).then_some(after);
                sub.set_resume(replay.messages, floor, replay.gap, Some(after));
            }
            None => {
                let cursor = self.shared.broker.cursor().await?;
                sub.set_resume(Vec::new(), None, false, Some(cursor));
            }
        }
        Ok(sub)
    }

    /// Channels with history or subscribers whose name starts with `prefix`, sorted by name.
    /// Subscriber counts are cluster-wide when the broker knows other nodes' counts.
    pub async fn channels(&self, prefix: &str) -> Result<Vec<ChannelInfo>, EngineError> {
        let mut rows: BTreeMap<String, ChannelInfo> = BTreeMap::new();
        for entry in self.shared.broker.channels(prefix).await? {
            let name = entry.channel.to_string();
            rows.insert(
                name.clone(),
                ChannelInfo {
                    name,
                    subscribers: 0,
                    last_id: entry.last_id,
                },
            );
        }
        let remote = self.shared.broker.remote_subscribers(prefix).await?;
        for (name, n) in self.shared.hub.counts(prefix).into_iter().chain(remote) {
            rows.entry(name.clone())
                .or_insert(ChannelInfo {
                    name,
                    subscribers: 0,
                    last_id: None,
                })
                .subscribers += n;
        }
        Ok(rows.into_values().collect())
    }
}
