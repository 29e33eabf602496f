//! Who is on a channel: members declared by their connections, with join/leave/update notices.
//!
//! A member is a client-chosen id plus an `info` object (the chat's name and colour). It is
//! present on a channel while at least one connection declaring it is open, and for a grace
//! period after the last one closed: a long-polling client has no connection between two polls
//! and a reconnecting one none for a moment, and neither should look like leaving and joining.
//!
//! Notices are published on the channel itself, so every subscriber (any transport, any
//! protocol) sees them in order with the messages, and they are in history for a resume:
//! `{"presence":"join","info":…}`, `{"presence":"leave","info":…}` and
//! `{"presence":"update","info":…,"was":…}` when a member comes back with different info.
//!
//! Bounds: a member exists only while a connection declares it or within the grace after, so
//! the table is bounded by open connections (each declares at most a handful, a limit the HTTP
//! layer sets) plus those that closed within the grace period.
//!
//! Across nodes: each node keeps the members connected to it; a broker that knows other nodes
//! (Redis) shares them ([`crate::Broker::remote_members`]). Listings are the union, and a member
//! that moves between nodes (a reconnect lands elsewhere) is not announced as leaving or joining
//! while another node still has it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use halley_proto::{Channel, Payload};
use serde_json::{Value, json};

use crate::Engine;
use crate::engine::Shared;
use crate::observe::{Event, Kind};

/// How long a member stays after its last connection closed, unless configured.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(crate) struct Presence {
    state: Mutex<State>,
    grace_ms: AtomicU64,
}

#[derive(Default)]
struct State {
    channels: HashMap<Channel, HashMap<String, Member>>,
    /// Join order, so that listings are stable.
    next_seq: u64,
    sweeper: bool,
}

struct Member {
    info: Value,
    connections: usize,
    /// When the last connection closed; `None` while connected.
    left_at: Option<Instant>,
    seq: u64,
}

/// A notice to publish once the lock is released.
pub(crate) struct Notice {
    pub channel: Channel,
    pub data: Payload,
}

impl Notice {
    pub(crate) fn new(channel: &Channel, data: Value) -> Notice {
        // A member's info is the client's JSON: nested too deep to be stored
        // (`halley_proto::MAX_DEPTH`), the notice still says who came or went, without it.
        let data = Payload::from_value(&data).unwrap_or_else(|error| {
            tracing::warn!(%channel, %error, "presence info left out of a notice");
            let kind = data.get("presence").cloned().unwrap_or(Value::Null);
            Payload::from_value(&json!({ "presence": kind, "info": null }))
                .unwrap_or_else(|_| Payload::string(""))
        });
        Notice {
            channel: channel.clone(),
            data,
        }
    }
}

impl Presence {
    pub(crate) fn new() -> Presence {
        let presence = Presence::default();
        presence.set_grace(DEFAULT_GRACE);
        presence
    }

    pub(crate) fn set_grace(&self, grace: Duration) {
        self.grace_ms
            .store(grace.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    pub(crate) fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a connection for `member`; says what changed and whether the sweeper still has to
    /// be started.
    pub(crate) fn join(&self, channel: &Channel, member: &str, info: &Value) -> (Joined, bool) {
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        let start_sweeper = !std::mem::replace(&mut state.sweeper, true);
        let members = state.channels.entry(channel.clone()).or_default();
        let joined = match members.get_mut(member) {
            None => {
                members.insert(
                    member.to_string(),
                    Member {
                        info: info.clone(),
                        connections: 1,
                        left_at: None,
                        seq,
                    },
                );
                Joined::New
            }
            Some(m) => {
                m.connections += 1;
                m.left_at = None;
                if m.info == *info {
                    Joined::Same
                } else {
                    Joined::Changed(std::mem::replace(&mut m.info, info.clone()))
                }
            }
        };
        (joined, start_sweeper)
    }

    pub(crate) fn leave(&self, channel: &Channel, member: &str) {
        let mut state = self.lock();
        if let Some(m) = state
            .channels
            .get_mut(channel)
            .and_then(|members| members.get_mut(member))
        {
            m.connections = m.connections.saturating_sub(1);
            if m.connections == 0 {
                m.left_at = Some(Instant::now());
            }
        }
    }

    /// Removes members whose grace ran out; returns them (channel, member, info).
    fn sweep(&self, now: Instant) -> Vec<(Channel, String, Value)> {
        let grace = self.grace();
        let mut gone = Vec::new();
        let mut state = self.lock();
        state.channels.retain(|channel, members| {
            members.retain(|id, m| {
                let expired = m.left_at.is_some_and(|t| now.duration_since(t) >= grace);
                if expired {
                    gone.push((channel.clone(), id.clone(), std::mem::take(&mut m.info)));
                }
                !expired
            });
            !members.is_empty()
        });
        gone
    }

    /// Every member this node has (connected or within its grace), for brokers to share.
    pub(crate) fn all(&self) -> Vec<(Channel, String, Value)> {
        let state = self.lock();
        let mut rows: Vec<_> = state
            .channels
            .iter()
            .flat_map(|(c, members)| {
                members
                    .iter()
                    .map(|(id, m)| (c.clone(), id.clone(), m.info.clone()))
            })
            .collect();
        rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        rows
    }

    /// Channels whose name starts with `prefix` that have members here, with the members
    /// (id, info) in join order.
    pub(crate) fn channels(&self, prefix: &str) -> BTreeMap<Channel, Vec<(String, Value)>> {
        let state = self.lock();
        state
            .channels
            .iter()
            .filter(|(c, m)| c.as_str().starts_with(prefix) && !m.is_empty())
            .map(|(c, members)| {
                let mut list: Vec<_> = members.iter().collect();
                list.sort_by_key(|(_, m)| m.seq);
                let list = list
                    .into_iter()
                    .map(|(id, m)| (id.clone(), m.info.clone()))
                    .collect();
                (c.clone(), list)
            })
            .collect()
    }
}

/// What a join changed locally.
pub(crate) enum Joined {
    /// The member was not here.
    New,
    /// Another connection of a member already here, with the same info.
    Same,
    /// … with new info; this was the old.
    Changed(Value),
}

/// Announces leaves as graces run out, for as long as the engine exists. Started by the first
/// join; ticks at a quarter of the grace, so a leave is announced within 1¼ graces.
pub(crate) fn spawn_sweeper(shared: Weak<Shared>) {
    tokio::spawn(async move {
        loop {
            let Some(grace) = shared.upgrade().map(|s| s.hub.presence().grace()) else {
                return;
            };
            tokio::time::sleep((grace / 4).max(Duration::from_millis(10))).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let gone = shared.hub.presence().sweep(Instant::now());
            if gone.is_empty() {
                continue;
            }
            let engine = Engine::from_shared(shared);
            let elsewhere = engine.remote_members(&gone).await;
            for (channel, member, info) in gone {
                // A member that moved to another node has not left.
                let key = (channel.clone(), member);
                if elsewhere.contains_key(&key) {
                    continue;
                }
                let notice = Notice::new(&channel, json!({"presence": "leave", "info": info}));
                if let Some(observer) = engine.observer_for(&channel, Kind::Presence) {
                    observer.observe(Event::MemberLeft {
                        channel: key.0,
                        member: key.1,
                        info,
                    });
                }
                publish_notice(&engine, notice).await;
            }
        }
    });
}

pub(crate) async fn publish_notice(engine: &Engine, notice: Notice) {
    if let Err(error) = engine.publish_trusted(notice.channel, notice.data).await {
        tracing::warn!(%error, "presence notice not published");
    }
}

/// Whether published data would pass for a notice: a JSON object with a top-level `presence`
/// key, by its decoded name (`"\u0070resence"` is the same key to every reader). The text is
/// searched first, so the common case costs no parse ([`Payload::has_key`]).
pub(crate) fn looks_like_notice(data: &Payload) -> bool {
    data.has_key("presence")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_cannot_be_forged() {
        let forged = |json: &str| looks_like_notice(&Payload::from_json(json.as_bytes()).unwrap());
        assert!(forged(r#"{"presence":"join","info":{"name":"admin"}}"#));
        assert!(forged(r#"{"a":1,"presence":null}"#));
        assert!(!forged(r#"{"text":"\"presence\" is a word"}"#));
        assert!(!forged(r#"{"nested":{"presence":"join"}}"#));
        assert!(!forged(r#""presence""#));
        assert!(!forged(r#"["presence"]"#));
        // Issue 12: the key is judged decoded, however it is escaped.
        assert!(forged(
            r#"{"\u0070resence":"join","info":{"name":"admin"}}"#
        ));
        assert!(forged(r#"{"a":"\n","pres\u0065nce":"leave"}"#));
        assert!(forged(
            r#"{"\u0070\u0072\u0065\u0073\u0065\u006e\u0063\u0065":1}"#
        ));
        assert!(!forged(r#"{"\u0070resenc":1,"x":{"\u0070resence":1}}"#));
    }
}
