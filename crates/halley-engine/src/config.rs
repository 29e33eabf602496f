use std::time::Duration;

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
    /// Most messages one resume may replay. Protects the server from a `/**` resume with a
    /// foreign id replaying every history at once; a longer replay is truncated to the newest
    /// messages and reported as a gap.
    pub replay_limit: usize,
    /// Most channels with history at once. Publishing to a new channel beyond it fails, so a
    /// client cannot grow the server by publishing to random names.
    pub max_channels: usize,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            history_size: 1000,
            history_ttl: Duration::from_secs(600),
            queue_capacity: 1024,
            replay_limit: 1000,
            max_channels: 100_000,
        }
    }
}
