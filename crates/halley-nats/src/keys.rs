//! Idempotency keys shared by every node: a key-value bucket, `<stream>_KEYS`.
//!
//! A key's entry is `<until ms> <value>`: a claim is a key-value `create` (set if absent, as
//! Redis's `SET NX`), and an entry past its `until` counts as free and is taken over with an
//! update at its revision (so two nodes cannot both take it). The bucket's `max_age`
//! ([`NatsConfig::key_max_age`](crate::NatsConfig::key_max_age)) removes entries from the
//! server; windows longer than it are cut to it. Expiry is judged by the claiming node's clock.

use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Operation, UpdateErrorKind};
use halley_engine::BrokerError;
use halley_engine::idempotency::KeyClaim;

use crate::broker::Shared;

/// A key name as a key-value key: hex, as names may hold characters keys may not.
fn key(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn encode(until_ms: u64, value: &str) -> bytes::Bytes {
    bytes::Bytes::from(format!("{until_ms} {value}"))
}

fn decode(entry: &[u8]) -> Option<(u64, String)> {
    let text = std::str::from_utf8(entry).ok()?;
    let (until, value) = text.split_once(' ')?;
    Some((until.parse().ok()?, value.to_owned()))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn store(shared: &Shared) -> Result<async_nats::jetstream::kv::Store, BrokerError> {
    let cached = shared
        .keys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(store) = cached {
        return Ok(store);
    }
    let store = crate::presence::bucket(shared, "KEYS", shared.config.key_max_age)
        .await
        .map_err(|e| shared.unavailable(e))?;
    *shared.keys.lock().unwrap_or_else(|e| e.into_inner()) = Some(store.clone());
    Ok(store)
}

pub(crate) async fn claim(
    shared: &Shared,
    name: &str,
    value: &str,
    window: Duration,
) -> Result<KeyClaim, BrokerError> {
    let store = store(shared).await?;
    let key = key(name);
    let now = now_ms();
    let entry = encode(now + window.as_millis() as u64, value);
    // Twice at most: a key that was taken over or removed between two steps is tried again.
    for _ in 0..2 {
        match store.create(&key, entry.clone()).await {
            Ok(_) => return Ok(KeyClaim::Claimed),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(shared.unavailable(e)),
        }
        let held = store.entry(&key).await.map_err(|e| shared.unavailable(e))?;
        let Some(held) = held.filter(|h| h.operation == Operation::Put) else {
            continue;
        };
        match decode(&held.value) {
            Some((until, value)) if until > now => return Ok(KeyClaim::Held(value)),
            // Past its window (or not ours to read): free, taken over at its revision.
            _ => match store.update(&key, entry.clone(), held.revision).await {
                Ok(_) => return Ok(KeyClaim::Claimed),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(shared.unavailable(e)),
            },
        }
    }
    Err(shared.unavailable("an idempotency key came and went twice"))
}

pub(crate) async fn settle(
    shared: &Shared,
    name: &str,
    value: Option<&str>,
    window: Duration,
) -> Result<bool, BrokerError> {
    let store = store(shared).await?;
    let key = key(name);
    match value {
        Some(value) => store
            .put(&key, encode(now_ms() + window.as_millis() as u64, value))
            .await
            .map(|_| ())
            .map_err(|e| shared.unavailable(e))?,
        None => store
            .delete(&key)
            .await
            .map_err(|e| shared.unavailable(e))?,
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_keys() {
        assert_eq!(decode(&encode(17, "a b")), Some((17, "a b".to_owned())));
        assert_eq!(decode(b"x y"), None);
        assert_eq!(key("k:1/é"), "6b3a312fc3a9");
    }
}
