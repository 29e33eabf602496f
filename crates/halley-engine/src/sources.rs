//! How fast each source may do something: a token bucket per peer address, in a bounded table.
//! Bayeux handshakes ([`crate::bayeux`]) and the HTTP layer's latency reports use it.
//!
//! One client handshaking in a loop would otherwise fill the session table (`max_sessions`)
//! within a second and lock every new client out until those sessions expire. A source gets
//! `rate` handshakes a second, with bursts of up to [`BURST_SECONDS`] of them, so that a whole
//! office behind one NAT reconnecting after an outage is slowed, not refused for long.
//!
//! Invariant: the table never holds more than its bound ([`MAX_HANDSHAKE_SOURCES`] for
//! handshakes). A bucket that has refilled says nothing a missing entry would not, so the
//! sweeper drops those ([`Sources::prune`]), and so does a new source that finds the table
//! full; one that finds it full of sources still refilling is refused like one over its rate.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use tokio::time::Instant;

/// Seconds of handshakes a source may spend at once: its bucket holds `rate × BURST_SECONDS`.
/// Ten seconds lets a page reload storm from one address through at once and a client retrying
/// with a backoff get in, while a flood is cut to `rate` a second after its first burst.
pub const BURST_SECONDS: u32 = 10;

/// Most sources whose handshake counts are kept. Each costs ~50 bytes; an entry leaves once
/// its bucket is full again (within [`BURST_SECONDS`] of its last handshake). With the table
/// full, a handshake from a source not in it is refused (`429`) until entries refill: reached
/// only by as many addresses handshaking within seconds, which could fill the session table
/// anyway.
pub const MAX_HANDSHAKE_SOURCES: usize = 100_000;

/// A source's key: its IPv4 address, or the /64 network of its IPv6 address (one host is
/// commonly given a whole /64, so per-address buckets would not bound it).
fn key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        v4 => v4,
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    /// Handshakes left at `at`.
    tokens: f64,
    at: Instant,
}

/// The buckets of recent sources.
pub struct Sources {
    /// Takes a second per source; 0 means unlimited (and the table stays empty).
    rate: u32,
    /// Seconds of takes a bucket holds.
    burst_seconds: u32,
    /// Most sources kept.
    max: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl Sources {
    /// Handshakes: `rate` a second, [`BURST_SECONDS`] of them at once, at most
    /// [`MAX_HANDSHAKE_SOURCES`] sources.
    pub(crate) fn new(rate: u32) -> Sources {
        Sources::bounded(rate, BURST_SECONDS, MAX_HANDSHAKE_SOURCES)
    }

    /// `rate` takes a second per source, `rate × burst_seconds` at once, at most `max`
    /// sources kept.
    pub fn bounded(rate: u32, burst_seconds: u32, max: usize) -> Sources {
        Sources {
            rate,
            burst_seconds,
            max,
            buckets: HashMap::new(),
        }
    }

    fn capacity(&self) -> f64 {
        f64::from(self.rate) * f64::from(self.burst_seconds)
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * f64::from(self.rate)).min(self.capacity())
    }

    /// Takes one for `peer`, or says how long until it may try again.
    pub fn take(&mut self, peer: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.rate == 0 {
            return Ok(());
        }
        let per_token = Duration::from_secs_f64(1.0 / f64::from(self.rate));
        let key = key(peer);
        if self.buckets.len() >= self.max && !self.buckets.contains_key(&key) {
            // Full: what has refilled makes room (linear, and only when full).
            self.prune(now);
        }
        let tokens = match self.buckets.get(&key) {
            Some(&bucket) => self.refilled(bucket, now),
            None if self.buckets.len() >= self.max => return Err(per_token),
            None => self.capacity(),
        };
        if tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - tokens) / f64::from(self.rate));
            return Err(wait.max(Duration::from_millis(1)));
        }
        self.buckets.insert(
            key,
            Bucket {
                tokens: tokens - 1.0,
                at: now,
            },
        );
        Ok(())
    }

    /// Forgets the sources whose buckets are full again.
    pub fn prune(&mut self, now: Instant) {
        let capacity = self.capacity();
        let rate = f64::from(self.rate);
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < capacity
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut sources = Sources::new(2);
        for n in 0..20 {
            assert_eq!(sources.take(ip("10.0.0.1"), start), Ok(()), "handshake {n}");
        }
        let wait = sources.take(ip("10.0.0.1"), start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another source is not held up by the first.
        assert_eq!(sources.take(ip("10.0.0.2"), start), Ok(()));
        // Half a second later, one more.
        let later = start + Duration::from_millis(500);
        assert_eq!(sources.take(ip("10.0.0.1"), later), Ok(()));
        assert!(sources.take(ip("10.0.0.1"), later).is_err());
    }

    #[test]
    fn ipv6_sources_are_their_64_network_and_mapped_ipv4_is_ipv4() {
        let now = Instant::now();
        let mut sources = Sources::new(1);
        for n in 0..10 {
            let address = ip(&format!("2001:db8:1:2::{n:x}"));
            assert_eq!(sources.take(address, now), Ok(()), "{address}");
        }
        assert!(sources.take(ip("2001:db8:1:2:ffff::1"), now).is_err());
        assert_eq!(sources.take(ip("2001:db8:1:3::1"), now), Ok(()));
        for _ in 0..10 {
            sources.take(ip("192.0.2.7"), now).unwrap();
        }
        assert!(sources.take(ip("::ffff:192.0.2.7"), now).is_err());
    }

    #[test]
    fn a_full_table_makes_room_from_refilled_buckets_and_refuses_otherwise() {
        let now = Instant::now();
        let mut sources = Sources::bounded(1, 2, 2);
        sources.take(ip("10.0.0.1"), now).unwrap();
        sources.take(ip("10.0.0.2"), now).unwrap();
        assert!(sources.take(ip("10.0.0.3"), now).is_err(), "full");
        assert_eq!(sources.len(), 2);
        // Two seconds on, both have refilled: room for a newcomer.
        let later = now + Duration::from_secs(2);
        assert_eq!(sources.take(ip("10.0.0.3"), later), Ok(()));
        assert_eq!(sources.len(), 1);
    }

    #[test]
    fn refilled_sources_are_forgotten_and_zero_is_unlimited() {
        let now = Instant::now();
        let mut sources = Sources::new(1);
        sources.take(ip("10.0.0.1"), now).unwrap();
        sources.prune(now);
        assert_eq!(sources.len(), 1);
        sources.prune(now + Duration::from_secs(1));
        assert_eq!(sources.len(), 0);
        let mut unlimited = Sources::new(0);
        for _ in 0..1000 {
            unlimited.take(ip("10.0.0.1"), now).unwrap();
        }
        assert_eq!(unlimited.len(), 0);
    }
}
