//! Asking the application (`auth_url`): for channels whose namespace says `subscribe = "app"` or
//! `publish = "app"`, the policy does not decide by itself ([`super::Verdict::Ask`]); the
//! application behind Halley does, from what the caller presented to Halley — its cookies, its
//! `Authorization` header, its `Origin` ([`Forwarded`]).
//!
//! - [`Application`] is how the engine reaches the application; the HTTP layer implements it
//!   (a JSON POST to `auth_url`, bounded in concurrency and time) and sets it on the engine.
//! - [`AskCache`] keeps each answer — yes or no — per (credentials, action, channel) for the
//!   configured time, so that a client reconnecting every 25 s, or a tab opening ten channels,
//!   costs the application one question each, not one per request. Only answers are kept: an
//!   application that is down, slow or busy is asked again next time.
//!
//! Invariant: failing closed. An application that cannot be asked (not configured, down, slow,
//! busy, answering nonsense) is a refusal ([`super::Denied::Unavailable`], HTTP 503), never a
//! yes.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::Denied;

/// What a caller presented that the application may recognise it by. Kept by the connection's
/// principal only while the policy has namespaces that ask the application.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// The request's `Cookie` header.
    pub cookie: Option<Box<str>>,
    /// The request's `Authorization` header, whole (whatever scheme the application uses).
    pub authorization: Option<Box<str>>,
    /// The request's `Origin` header.
    pub origin: Option<Box<str>>,
    /// A `?token=` that Halley does not verify itself (no token key is configured), for
    /// clients that cannot send headers (EventSource, JSONP, iframes).
    pub token: Option<Box<str>>,
}

impl Forwarded {
    pub fn is_empty(&self) -> bool {
        self.cookie.is_none()
            && self.authorization.is_none()
            && self.origin.is_none()
            && self.token.is_none()
    }
}

/// What the application is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AskKind {
    /// Receive on a channel or pattern; also asked for presence on a channel and for reading
    /// its history or who is present (the same right: seeing the channel).
    Subscribe,
    Publish,
}

impl AskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AskKind::Subscribe => "subscribe",
            AskKind::Publish => "publish",
        }
    }
}

/// One question for the application.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    pub kind: AskKind,
    /// A channel, or a pattern (`/chat/**`) for a wildcard subscription.
    pub channel: &'a str,
    pub forwarded: &'a Forwarded,
    /// The subject of a token Halley verified, when the caller presented one.
    pub user: Option<&'a str>,
}

/// The application's yes, with what it vouches for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vouched {
    /// Who the caller is, as the application knows them: used for the control API (a user's
    /// connections) and shown in webhooks.
    pub user: Option<Box<str>>,
    /// Presence info the application vouches for (as a token's `info`), compact JSON: the
    /// caller's presence declarations on this connection take it, whatever the client claimed.
    /// Kept as text, as a principal keeps it (a `serde_json::Value` map cost ~0.5 KiB per kept
    /// answer, dhat).
    pub info: Option<Box<str>>,
    /// How long to keep this answer instead of the configured time.
    pub cache: Option<Duration>,
}

/// The application, as the engine reaches it.
#[async_trait]
pub trait Application: Send + Sync + 'static {
    /// Asks. `Ok` is a yes; `Err(Unauthenticated | Forbidden)` is the application's no (kept
    /// in the cache like a yes); `Err(Unavailable)` means it could not be asked (not kept).
    async fn authorize(&self, question: &Question<'_>) -> Result<Vouched, Denied>;
}

/// Most answers kept. An entry is ~100 bytes plus what the application vouches for; 100,000
/// covers every connection a node holds (one or two channels each) for a few megabytes. When
/// full, the oldest answer is forgotten first (it is asked again when needed), so the cache
/// never grows past this.
pub const MAX_CACHED_ANSWERS: usize = 100_000;

/// Largest `user` plus `info` (as JSON) the application may vouch for in one answer, in bytes.
/// A name, a colour and an avatar URL take a few hundred; 1 KiB keeps the cache
/// ([`MAX_CACHED_ANSWERS`] of them) within ~100 MiB even if every answer used it all. A larger
/// answer is not understood: the caller is refused as if the application were unavailable.
pub const MAX_VOUCHED: usize = 1024;

/// Longest time an application may ask its answer to be kept (`"cache"` in its answer). An
/// hour: a revoked session should not stay admitted for longer than that by a cached yes.
pub const MAX_CACHE_TIME: Duration = Duration::from_secs(3600);

type Key = [u8; 32];

struct Entry {
    /// Unix seconds.
    expires: u64,
    answer: Result<Vouched, Denied>,
}

/// Answers per (credentials, action, channel), bounded by [`MAX_CACHED_ANSWERS`].
pub struct AskCache {
    ttl: Duration,
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    entries: HashMap<Key, Entry>,
    /// Insertion order, for forgetting the oldest when full. A key answered again is pushed
    /// again; stale positions are skipped when popped.
    order: VecDeque<(Key, u64)>,
}

impl AskCache {
    /// A cache keeping answers for `ttl` (zero: nothing is kept, every request asks).
    pub fn new(ttl: Duration) -> AskCache {
        AskCache {
            ttl,
            state: Mutex::default(),
        }
    }

    /// The key of a question: a digest, so that an entry's size does not depend on how large
    /// the caller's cookies are, and no credential is kept in the clear.
    pub fn key(question: &Question<'_>) -> Key {
        let mut hash = Sha256::new();
        let field = |hash: &mut Sha256, value: Option<&str>| match value {
            // Length-prefixed so that no two different inputs run together into the same bytes.
            Some(v) => {
                hash.update([1]);
                hash.update((v.len() as u64).to_le_bytes());
                hash.update(v.as_bytes());
            }
            None => hash.update([0]),
        };
        field(&mut hash, Some(question.kind.as_str()));
        field(&mut hash, Some(question.channel));
        field(&mut hash, question.user);
        let f = question.forwarded;
        field(&mut hash, f.cookie.as_deref());
        field(&mut hash, f.authorization.as_deref());
        field(&mut hash, f.origin.as_deref());
        field(&mut hash, f.token.as_deref());
        hash.finalize().into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer kept for `key`, if it has not expired at `now` (Unix seconds).
    pub fn get(&self, key: &Key, now: u64) -> Option<Result<Vouched, Denied>> {
        let state = self.lock();
        state
            .entries
            .get(key)
            .filter(|e| e.expires > now)
            .map(|e| e.answer.clone())
    }

    /// Keeps an answer of the application (not an `Unavailable`) from `now`.
    pub fn put(&self, key: Key, answer: &Result<Vouched, Denied>, now: u64) {
        if matches!(answer, Err(Denied::Unavailable(_))) {
            return;
        }
        let ttl = match answer {
            Ok(Vouched {
                cache: Some(asked), ..
            }) => (*asked).min(MAX_CACHE_TIME),
            _ => self.ttl,
        };
        if ttl.is_zero() {
            return;
        }
        let expires = now.saturating_add(ttl.as_secs().max(1));
        let mut state = self.lock();
        let CacheState { entries, order } = &mut *state;
        while entries.len() >= MAX_CACHED_ANSWERS && !entries.contains_key(&key) {
            let Some((old, at)) = order.pop_front() else {
                // Every position was dropped as stale: forget any one answer instead.
                if let Some(any) = entries.keys().next().copied() {
                    entries.remove(&any);
                }
                continue;
            };
            // Only the position that matches the entry's current expiry removes it.
            if entries.get(&old).is_some_and(|e| e.expires == at) {
                entries.remove(&old);
            }
        }
        entries.insert(
            key,
            Entry {
                expires,
                answer: answer.clone(),
            },
        );
        order.push_back((key, expires));
        // Positions of keys answered again pile up behind their newer ones; drop the stale ones
        // at the front so that `order` stays within a small multiple of `entries`.
        while order.len() > 2 * MAX_CACHED_ANSWERS.max(entries.len()) {
            order.pop_front();
        }
    }

    /// Forgets answers that have expired by `now`.
    pub fn prune(&self, now: u64) {
        let mut state = self.lock();
        state.entries.retain(|_, e| e.expires > now);
        state.order.retain(|(_, at)| *at > now);
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn question<'a>(channel: &'a str, forwarded: &'a Forwarded) -> Question<'a> {
        Question {
            kind: AskKind::Subscribe,
            channel,
            forwarded,
            user: None,
        }
    }

    #[test]
    fn keys_separate_credentials_channels_and_actions() {
        let alice = Forwarded {
            cookie: Some("session=alice".into()),
            ..Forwarded::default()
        };
        let bob = Forwarded {
            cookie: Some("session=bob".into()),
            ..Forwarded::default()
        };
        let a = AskCache::key(&question("/chat/a", &alice));
        assert_eq!(a, AskCache::key(&question("/chat/a", &alice)));
        assert_ne!(a, AskCache::key(&question("/chat/a", &bob)));
        assert_ne!(a, AskCache::key(&question("/chat/b", &alice)));
        let publish = Question {
            kind: AskKind::Publish,
            ..question("/chat/a", &alice)
        };
        assert_ne!(a, AskCache::key(&publish));
        // The same bytes split differently between fields are different credentials.
        let split = Forwarded {
            cookie: Some("session=".into()),
            authorization: Some("alice".into()),
            ..Forwarded::default()
        };
        assert_ne!(a, AskCache::key(&question("/chat/a", &split)));
    }

    #[test]
    fn answers_expire_and_failures_are_not_kept() {
        let cache = AskCache::new(Duration::from_secs(30));
        let f = Forwarded::default();
        let yes = AskCache::key(&question("/a", &f));
        let no = AskCache::key(&question("/b", &f));
        let down = AskCache::key(&question("/c", &f));
        cache.put(yes, &Ok(Vouched::default()), 1000);
        cache.put(no, &Err(Denied::Forbidden(Cow::Borrowed("no"))), 1000);
        cache.put(down, &Err(Denied::Unavailable(Cow::Borrowed("down"))), 1000);
        assert_eq!(cache.get(&yes, 1029), Some(Ok(Vouched::default())));
        assert!(matches!(
            cache.get(&no, 1029),
            Some(Err(Denied::Forbidden(_)))
        ));
        assert_eq!(cache.get(&down, 1000), None);
        assert_eq!(cache.get(&yes, 1030), None);
        // The application may ask for a shorter (or longer, up to the cap) time.
        let short = AskCache::key(&question("/d", &f));
        let vouched = Vouched {
            cache: Some(Duration::from_secs(5)),
            ..Vouched::default()
        };
        cache.put(short, &Ok(vouched), 1000);
        assert!(cache.get(&short, 1004).is_some());
        assert!(cache.get(&short, 1005).is_none());
        cache.prune(1030);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let cache = AskCache::new(Duration::ZERO);
        let f = Forwarded::default();
        let key = AskCache::key(&question("/a", &f));
        cache.put(key, &Ok(Vouched::default()), 1000);
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = AskCache::new(Duration::from_secs(30));
        let f = Forwarded::default();
        let channels: Vec<String> = (0..MAX_CACHED_ANSWERS + 10)
            .map(|i| format!("/c/{i}"))
            .collect();
        for c in &channels {
            cache.put(
                AskCache::key(&question(c, &f)),
                &Ok(Vouched::default()),
                1000,
            );
        }
        assert_eq!(cache.len(), MAX_CACHED_ANSWERS);
        // The oldest went first.
        assert!(
            cache
                .get(&AskCache::key(&question("/c/0", &f)), 1000)
                .is_none()
        );
        let newest = channels.last().unwrap();
        assert!(
            cache
                .get(&AskCache::key(&question(newest, &f)), 1000)
                .is_some()
        );
    }
}
