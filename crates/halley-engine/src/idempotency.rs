//! Idempotent publishes: a publish sent again with the same `Idempotency-Key` (a client that
//! retried because the answer was lost) gets the first one's answer and is not delivered twice.
//!
//! A key is claimed before the publish (`Claim::Fresh`: go on), and settled after it with the
//! answer to give again (or released when the publish failed, so that a retry publishes). A
//! key is scoped to its publisher (the backend, a token's subject, or anonymous) and remembers
//! a fingerprint of what was published — the channels and the data — so that the same key
//! reused for something else is refused rather than answered with another publish's answer.
//! Keys live for a window ([`Idempotency::window`]) from the moment they are settled.
//!
//! With a broker shared by several nodes ([`crate::Broker::claim_key`]) the key is claimed
//! there, so a retry that lands on another node is recognised too; otherwise this node keeps
//! them, in a table bounded by [`Idempotency::max_keys`].

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The longest key accepted, in bytes (of visible ASCII). Clients send a UUID (36).
pub const MAX_KEY_LEN: usize = 255;

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody had it: publish, then settle.
    Fresh,
    /// A publish with this key and the same fingerprint was answered this: answer it again.
    Done(String),
    /// A publish with this key is under way (a retry racing the original).
    Pending,
    /// The key was used for another publish (other channels or data).
    Mismatch,
}

/// What a shared broker answers for [`crate::Broker::claim_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// The broker keeps no keys: the engine keeps them on this node.
    Unsupported,
    /// The key was free and now holds the value given.
    Claimed,
    /// The key holds this value (someone else's claim or answer).
    Held(String),
}

/// The window and the table's bound (configurable: `--idempotency-window`,
/// `--idempotency-keys`).
#[derive(Debug, Clone, Copy)]
pub struct Idempotency {
    /// How long a settled key is remembered. Five minutes covers a client's retries with
    /// backoff after a lost answer; a retry later than this publishes again.
    pub window: Duration,
    /// Most keys this node keeps at once when the broker keeps none (each ~200 bytes). When
    /// it is full of keys still in their window, keyed publishes are refused (503) rather than
    /// forgetting a key early and delivering a retry twice.
    pub max_keys: usize,
}

impl Default for Idempotency {
    fn default() -> Idempotency {
        Idempotency {
            window: Duration::from_secs(300),
            max_keys: 100_000,
        }
    }
}

/// The scoped name of a key and the fingerprint of a publish, as stored.
#[derive(Debug, Clone)]
pub struct Keyed {
    /// Hex of SHA-256 over the publisher's scope and the client's key.
    pub name: String,
    /// Hex of the first 16 bytes of SHA-256 over the channels and the data.
    pub fingerprint: String,
}

impl Keyed {
    /// `scope` names the publisher (its kind and subject); `channels` and `data` are what is
    /// published.
    pub fn new<'a>(
        scope: &str,
        key: &str,
        channels: impl Iterator<Item = &'a str>,
        data: &str,
    ) -> Keyed {
        let mut name = Sha256::new();
        name.update(scope.as_bytes());
        name.update([0]);
        name.update(key.as_bytes());
        let mut print = Sha256::new();
        for c in channels {
            print.update(c.as_bytes());
            print.update([0]);
        }
        print.update(data.as_bytes());
        Keyed {
            name: hex(&name.finalize()),
            fingerprint: hex(&print.finalize()[..16]),
        }
    }

    /// The value of a claim in progress.
    pub fn pending(&self) -> String {
        format!("P{}", self.fingerprint)
    }

    /// The value of a settled key: the fingerprint and the answer.
    pub fn done(&self, answer: &str) -> String {
        format!("D{}{answer}", self.fingerprint)
    }

    /// What a stored value means for this publish.
    pub fn judge(&self, stored: &str) -> Claim {
        let (kind, rest) = stored.split_at(stored.len().min(1));
        let Some(answer) = rest.strip_prefix(self.fingerprint.as_str()) else {
            return Claim::Mismatch;
        };
        match kind {
            "D" => Claim::Done(answer.to_owned()),
            "P" => Claim::Pending,
            _ => Claim::Mismatch,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `key` may be used: 1 to [`MAX_KEY_LEN`] bytes of visible ASCII.
pub fn valid_key(key: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// This node's keys, for a broker that keeps none.
#[derive(Debug, Default)]
pub(crate) struct LocalKeys {
    state: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    values: HashMap<String, (String, Option<Instant>)>,
    /// Settled keys by when they leave; pending ones are not here (they are settled or
    /// released by the publish that claimed them).
    expiry: VecDeque<(Instant, String)>,
}

/// The table is full of keys still in their window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many idempotency keys in their window on this node ({0}); retry later")]
pub struct Full(pub usize);

impl LocalKeys {
    pub(crate) fn claim(&self, keyed: &Keyed, limits: Idempotency) -> Result<KeyClaim, Full> {
        let now = Instant::now();
        let mut table = self.state.lock().unwrap_or_else(|e| e.into_inner());
        table.expire(now);
        if let Some((value, _)) = table.values.get(&keyed.name) {
            return Ok(KeyClaim::Held(value.clone()));
        }
        if table.values.len() >= limits.max_keys {
            return Err(Full(limits.max_keys));
        }
        table
            .values
            .insert(keyed.name.clone(), (keyed.pending(), None));
        Ok(KeyClaim::Claimed)
    }

    /// Settles a claimed key with `value`, or releases it (`None`).
    pub(crate) fn settle(&self, keyed: &Keyed, value: Option<String>, limits: Idempotency) {
        let now = Instant::now();
        let mut table = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match value {
            Some(value) => {
                let until = now + limits.window;
                table
                    .values
                    .insert(keyed.name.clone(), (value, Some(until)));
                table.expiry.push_back((until, keyed.name.clone()));
            }
            None => {
                table.values.remove(&keyed.name);
            }
        }
        table.expire(now);
    }
}

impl Table {
    fn expire(&mut self, now: Instant) {
        while let Some((until, _)) = self.expiry.front() {
            if *until > now {
                break;
            }
            let (until, name) = self.expiry.pop_front().expect("front checked");
            // Only if it is still this settlement (not released and claimed again since).
            if self
                .values
                .get(&name)
                .is_some_and(|(_, u)| *u == Some(until))
            {
                self.values.remove(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(key: &str, data: &str) -> Keyed {
        Keyed::new("b", key, ["/a", "/b"].into_iter(), data)
    }

    #[test]
    fn claims_settles_and_judges() {
        let limits = Idempotency {
            window: Duration::from_secs(60),
            max_keys: 2,
        };
        let keys = LocalKeys::default();
        let k = keyed("k1", "1");
        assert_eq!(keys.claim(&k, limits), Ok(KeyClaim::Claimed));
        // A retry while the first is under way, and then after it answered.
        let Ok(KeyClaim::Held(v)) = keys.claim(&k, limits) else {
            panic!()
        };
        assert_eq!(k.judge(&v), Claim::Pending);
        keys.settle(&k, Some(k.done(r#"{"id":"x"}"#)), limits);
        let Ok(KeyClaim::Held(v)) = keys.claim(&k, limits) else {
            panic!()
        };
        assert_eq!(k.judge(&v), Claim::Done(r#"{"id":"x"}"#.into()));
        // The same key with other data is another publish.
        assert_eq!(keyed("k1", "2").judge(&v), Claim::Mismatch);
        // Scoped: another publisher's same key is another key.
        let other = Keyed::new("u:bob", "k1", ["/a", "/b"].into_iter(), "1");
        assert_ne!(other.name, k.name);
        // Released keys are free again; the bound refuses rather than forgets.
        let k2 = keyed("k2", "1");
        assert_eq!(keys.claim(&k2, limits), Ok(KeyClaim::Claimed));
        assert_eq!(keys.claim(&keyed("k3", "1"), limits), Err(Full(2)));
        keys.settle(&k2, None, limits);
        assert_eq!(keys.claim(&keyed("k3", "1"), limits), Ok(KeyClaim::Claimed));
    }

    #[test]
    fn settled_keys_leave_after_the_window() {
        let limits = Idempotency {
            window: Duration::ZERO,
            max_keys: 10,
        };
        let keys = LocalKeys::default();
        let k = keyed("k", "1");
        assert_eq!(keys.claim(&k, limits), Ok(KeyClaim::Claimed));
        keys.settle(&k, Some(k.done("{}")), limits);
        assert_eq!(keys.claim(&k, limits), Ok(KeyClaim::Claimed));
    }

    #[test]
    fn keys_are_visible_ascii_up_to_255_bytes() {
        assert!(valid_key("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(valid_key(&"k".repeat(255)));
        for bad in ["", " ", "a b", "é", "a\n", &"k".repeat(256)] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }
}
