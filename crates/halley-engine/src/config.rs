use std::sync::Arc;
use std::time::Duration;

use halley_proto::Channel;

/// [`EngineConfig::replay_batch`] unless configured.
pub const DEFAULT_REPLAY_BATCH: usize = 256;

/// The engine's budgets. Every field bounds memory; see each for what happens on overflow.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Messages kept per channel for resume. 1,000 covers a reconnect after a long network
    /// outage on a busy chat room while costing a few hundred KiB per busy channel. The oldest
    /// message is evicted on overflow; a client resuming from before it is told of a gap.
    pub history_size: usize,
    /// How long a message stays in history. Older ones are evicted the same way.
    pub history_ttl: Duration,
    /// Messages buffered per subscriber that has not yet taken them. 1,024 absorbs a burst on a
    /// busy channel while a client's socket drains. On overflow the subscriber is cut off (see
    /// the crate docs); it resumes from history on reconnect.
    pub queue_capacity: usize,
    /// Messages read from history at once for a resume. A resume delivers everything history
    /// still holds after its id, however much that is, but reads it in batches of this many
    /// as the subscriber takes them: a `/**` resume with a foreign id holds one batch (per
    /// pattern) at a time, never every history at once. 256 keeps that to a few KiB of
    /// pointers per resuming subscriber and a Redis resume to one round trip per 256 messages.
    pub replay_batch: usize,
    /// Most channels with history at once. Publishing to a new channel beyond it fails, so a
    /// client cannot grow the server by publishing to random names.
    pub max_channels: usize,
    /// Channels whose history is kept otherwise than `history_size` and `history_ttl` say
    /// (namespaces' `history-size` and `history-ttl`). Brokers ask [`EngineConfig::history`].
    pub history_rules: HistoryRules,
}

/// What a channel's history keeps: at most `size` messages, none older than `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    pub size: usize,
    pub ttl: Duration,
}

/// Per-channel exceptions to the engine's history limits: for a channel, the size and age its
/// rule sets (either may be left to the default). Cheap to clone.
#[derive(Clone, Default)]
pub struct HistoryRules {
    rule: Option<Arc<HistoryRule>>,
}

type HistoryRule = dyn Fn(&Channel) -> (Option<usize>, Option<Duration>) + Send + Sync;

impl HistoryRules {
    /// Rules given by `rule` (the binary builds it from the namespaces of the access policy).
    pub fn new(
        rule: impl Fn(&Channel) -> (Option<usize>, Option<Duration>) + Send + Sync + 'static,
    ) -> HistoryRules {
        HistoryRules {
            rule: Some(Arc::new(rule)),
        }
    }
}

impl std::fmt::Debug for HistoryRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.rule.is_some() {
            "HistoryRules(per channel)"
        } else {
            "HistoryRules(none)"
        })
    }
}

impl EngineConfig {
    /// The history limits of `channel`: its rule's where it has one, else the defaults.
    pub fn history(&self, channel: &Channel) -> HistoryLimits {
        let (size, ttl) = match &self.history_rules.rule {
            Some(rule) => rule(channel),
            None => (None, None),
        };
        HistoryLimits {
            size: size.unwrap_or(self.history_size),
            ttl: ttl.unwrap_or(self.history_ttl),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            history_size: 1000,
            history_ttl: Duration::from_secs(600),
            queue_capacity: 1024,
            replay_batch: DEFAULT_REPLAY_BATCH,
            max_channels: 100_000,
            history_rules: HistoryRules::default(),
        }
    }
}
