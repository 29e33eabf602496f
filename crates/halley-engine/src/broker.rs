use std::sync::Arc;

use async_trait::async_trait;
use halley_proto::{Channel, Message, MessageId, Meta, Pattern, Payload};

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

/// One batch of the messages owed to a resuming subscriber ([`Broker::replay`]).
#[derive(Debug, Default)]
pub struct Replay {
    /// In id order, oldest first: at most the number asked for.
    pub messages: Vec<Arc<Message>>,
    /// True when history could not cover everything after the id asked from: it was evicted,
    /// lost with a restart (another epoch) or the id is not one this broker issued.
    pub gap: bool,
    /// Where to ask again from, when history may hold more than this batch (it was cut at the
    /// number asked for); `None` when this batch reaches the end of history. Past the last
    /// message of the batch, or past entries a broker skipped (expired, undecodable).
    pub more: Option<MessageId>,
}

/// Puts one batch of a replay together from several histories read separately (a broker's
/// channels, or the engine's patterns): each read is oldest first and may have been cut at
/// the batch size, so only what lies before the earliest cut is complete. Holds at most about
/// twice the batch at a time however many reads are added.
#[derive(Debug)]
pub struct Gather {
    limit: usize,
    messages: Vec<Arc<Message>>,
    /// The earliest point where a read was cut: nothing after it is known to be complete.
    cut: Option<MessageId>,
}

impl Gather {
    /// A batch of at most `limit` (at least 1) messages.
    pub fn new(limit: usize) -> Gather {
        Gather {
            limit: limit.max(1),
            messages: Vec::new(),
            cut: None,
        }
    }

    /// Adds one read: messages after the cursor, in id order; `cut` is where that read
    /// stopped if it may have left more behind.
    pub fn add(
        &mut self,
        messages: impl IntoIterator<Item = Arc<Message>>,
        cut: Option<MessageId>,
    ) {
        self.messages.extend(messages);
        if let Some(cut) = cut {
            self.cut = Some(self.cut.map_or(cut, |c| c.min(cut)));
        }
        if self.messages.len() > 2 * self.limit {
            self.trim();
        }
    }

    /// The last id that can still make this batch, once that is known: a reader need not
    /// take anything after it (it will be read again from the next batch's start).
    pub fn bound(&self) -> Option<MessageId> {
        self.cut
    }

    fn trim(&mut self) {
        self.messages.sort_unstable_by_key(|m| m.id);
        // Two patterns of one subscriber can match the same message.
        self.messages.dedup_by_key(|m| m.id);
        if let Some(cut) = self.cut {
            let complete = self.messages.partition_point(|m| m.id <= cut);
            self.messages.truncate(complete);
        }
        if self.messages.len() > self.limit {
            self.messages.truncate(self.limit);
            self.cut = self.messages.last().map(|m| m.id);
        }
    }

    /// The batch: the oldest messages that are complete, and where to go on from.
    pub fn finish(mut self, gap: bool) -> Replay {
        self.trim();
        Replay {
            messages: self.messages,
            gap,
            more: self.cut,
        }
    }
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
    /// `meta` (its type, its expiry) travels and is stored with it; history reads leave out
    /// what has expired ([`Message::expired`]).
    async fn publish(
        &self,
        channel: Channel,
        data: Payload,
        meta: Option<Box<Meta>>,
    ) -> Result<(Arc<Message>, usize), BrokerError>;

    /// What history holds after `after` on channels matching `pattern`, oldest first: at most
    /// `limit` messages, the oldest ones, and where to ask again from if there is more
    /// ([`Replay::more`]). A resume reads everything history holds this way, one bounded batch
    /// at a time ([`EngineConfig::replay_batch`](crate::EngineConfig::replay_batch)).
    async fn replay(
        &self,
        pattern: &Pattern,
        after: MessageId,
        limit: usize,
    ) -> Result<Replay, BrokerError>;

    /// How many messages a resume reads at once ([`Broker::replay`]'s `limit`).
    fn replay_batch(&self) -> usize {
        crate::DEFAULT_REPLAY_BATCH
    }

    /// The newest `limit` messages of `channel` still in history, oldest first.
    async fn recent(
        &self,
        channel: &Channel,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, BrokerError>;

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

    /// Claims the idempotency key `name` for every node ([`crate::idempotency`]): stores
    /// `value` if the key is free (for `window`, so that an abandoned claim ends), else says
    /// what it holds. A broker no other node shares keeps no keys (the engine does).
    async fn claim_key(
        &self,
        name: &str,
        value: &str,
        window: std::time::Duration,
    ) -> Result<crate::idempotency::KeyClaim, BrokerError> {
        let _ = (name, value, window);
        Ok(crate::idempotency::KeyClaim::Unsupported)
    }

    /// Settles a key this node claimed: `value` for `window`, or (`None`) frees it. False
    /// when the broker keeps no keys.
    async fn settle_key(
        &self,
        name: &str,
        value: Option<&str>,
        window: std::time::Duration,
    ) -> Result<bool, BrokerError> {
        let _ = (name, value, window);
        Ok(false)
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
