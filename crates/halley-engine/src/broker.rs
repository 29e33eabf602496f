use std::sync::Arc;

use async_trait::async_trait;
use halley_proto::{Channel, Message, MessageId, Pattern, Payload};

use crate::control::{Command, Remote};

/// A broker could not do its job; the message (or the resume) did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The backing store cannot be reached. Publishing must fail rather than pretend.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("too many channels (limit {0})")]
    TooManyChannels(usize),
}

/// Messages owed to a resuming subscriber.
#[derive(Debug, Default)]
pub struct Replay {
    /// In id order, at most the replay limit.
    pub messages: Vec<Arc<Message>>,
    /// True when history could not cover everything after the id: it was evicted, truncated,
    /// lost with a restart (another epoch) or the id is not one this broker issued.
    pub gap: bool,
}

/// A channel with history, for listings.
#[derive(Debug, Clone)]
pub struct ChannelEntry {
    pub channel: Channel,
    pub last_id: Option<MessageId>,
}

/// A member present on a channel (see [`crate::presence`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub channel: Channel,
    /// The id its client chose; never shown to other clients.
    pub member: String,
    pub info: serde_json::Value,
}

/// Where messages get their ids and history lives, and how they reach every node's [`Hub`].
///
/// Contract: `publish` assigns an id greater than every id issued before it in this epoch
/// (across all channels), stores the message in history, and makes sure every node's hub —
/// this one's included — receives it via [`Hub::deliver`] in id order. Returning `Ok` means
/// the message was accepted; a broker that cannot guarantee that returns an error instead.
///
/// [`Hub`]: crate::Hub
/// [`Hub::deliver`]: crate::Hub::deliver
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes and returns the message with its id and how many local subscribers got it.
    async fn publish(
        &self,
        channel: Channel,
        data: Payload,
    ) -> Result<(Arc<Message>, usize), BrokerError>;

    /// Everything after `after` on channels matching `pattern`, oldest first.
    async fn replay(&self, pattern: &Pattern, after: MessageId) -> Result<Replay, BrokerError>;

    /// The position now: a subscriber that resumes from it is owed only later messages.
    async fn cursor(&self) -> Result<MessageId, BrokerError>;

    /// Channels with history whose name starts with `prefix`.
    async fn channels(&self, prefix: &str) -> Result<Vec<ChannelEntry>, BrokerError>;

    /// Subscriber counts on *other* nodes, by subscribed name (a channel or a wildcard pattern)
    /// starting with `prefix`, for listings. The engine adds this node's own counts. A
    /// single-node broker has no other nodes.
    async fn remote_subscribers(&self, prefix: &str) -> Result<Vec<(String, usize)>, BrokerError> {
        let _ = prefix;
        Ok(Vec::new())
    }

    /// Members present on *other* nodes on channels starting with `prefix`. The engine adds
    /// this node's own. A single-node broker has no other nodes.
    async fn remote_members(&self, prefix: &str) -> Result<Vec<Member>, BrokerError> {
        let _ = prefix;
        Ok(Vec::new())
    }

    /// Whether other nodes share this broker, so that their subscribers and members count
    /// too (the engine then asks [`Broker::remote_subscribers`] before announcing a channel
    /// occupied or vacated). A single-node broker has none.
    fn clustered(&self) -> bool {
        false
    }

    /// Runs a control command ([`crate::control`]) on every *other* node and returns what
    /// each did; the engine applies it here itself. Revocations must also reach nodes that
    /// start (or reconnect) later: a broker keeps them. A single-node broker has no other
    /// nodes.
    async fn control(&self, command: &Command) -> Result<Remote, BrokerError> {
        let _ = command;
        Ok(Remote::default())
    }

    /// This node's name among the others (listings say where a connection is); `None` on a
    /// single node.
    fn node(&self) -> Option<String> {
        None
    }

    /// Whether the backing store is reachable (for `/healthz`).
    fn healthy(&self) -> bool {
        true
    }
}
