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
//! Scope: presence is kept per node. With several nodes on Redis, each node lists and announces
//! the members connected to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use halley_proto::{Channel, Payload};
use serde_json::{Value, json};

use crate::Engine;
use crate::engine::Shared;

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
    fn new(channel: &Channel, data: Value) -> Notice {
        Notice {
            channel: channel.clone(),
            // Serialised from a Value: always valid JSON.
            data: Payload::from_json(data.to_string().as_bytes()).expect("notice is JSON"),
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

    /// Counts a connection for `member`; returns the notice to publish (if any) and whether the
    /// sweeper still has to be started.
    pub(crate) fn join(
        &self,
        channel: &Channel,
        member: &str,
        info: Value,
    ) -> (Option<Notice>, bool) {
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        let start_sweeper = !std::mem::replace(&mut state.sweeper, true);
        let members = state.channels.entry(channel.clone()).or_default();
        let notice = match members.get_mut(member) {
            None => {
                let notice = Notice::new(channel, json!({"presence": "join", "info": info}));
                members.insert(
                    member.to_string(),
                    Member {
                        info,
                        connections: 1,
                        left_at: None,
                        seq,
                    },
                );
                Some(notice)
            }
            Some(m) => {
                m.connections += 1;
                m.left_at = None;
                (m.info != info).then(|| {
                    let was = std::mem::replace(&mut m.info, info.clone());
                    Notice::new(
                        channel,
                        json!({"presence": "update", "info": info, "was": was}),
                    )
                })
            }
        };
        (notice, start_sweeper)
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

    /// Removes members whose grace ran out; returns their leave notices.
    fn sweep(&self, now: Instant) -> Vec<Notice> {
        let grace = self.grace();
        let mut notices = Vec::new();
        let mut state = self.lock();
        state.channels.retain(|channel, members| {
            members.retain(|_, m| {
                let gone = m.left_at.is_some_and(|t| now.duration_since(t) >= grace);
                if gone {
                    let info = std::mem::take(&mut m.info);
                    notices.push(Notice::new(
                        channel,
                        json!({"presence": "leave", "info": info}),
                    ));
                }
                !gone
            });
            !members.is_empty()
        });
        notices
    }

    /// The members of `channel`, in join order.
    pub(crate) fn members(&self, channel: &Channel) -> Vec<Value> {
        let state = self.lock();
        state
            .channels
            .get(channel)
            .map(sorted_infos)
            .unwrap_or_default()
    }

    /// Channels whose name starts with `prefix` and that have members, sorted by name.
    pub(crate) fn channels(&self, prefix: &str) -> Vec<(Channel, Vec<Value>)> {
        let state = self.lock();
        let mut rows: Vec<_> = state
            .channels
            .iter()
            .filter(|(c, m)| c.as_str().starts_with(prefix) && !m.is_empty())
            .map(|(c, m)| (c.clone(), sorted_infos(m)))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }
}

fn sorted_infos(members: &HashMap<String, Member>) -> Vec<Value> {
    let mut list: Vec<_> = members.values().collect();
    list.sort_by_key(|m| m.seq);
    list.into_iter().map(|m| m.info.clone()).collect()
}

/// Announces leaves as graces run out, for as long as the engine exists. Started by the first
/// join; ticks at a quarter of the grace, so a leave is announced within 1¼ graces.
pub(crate) fn spawn_sweeper(shared: Weak<Shared>) {
    tokio::spawn(async move {
        loop {
            let Some(grace) = shared.upgrade().map(|s| s.presence.grace()) else {
                return;
            };
            tokio::time::sleep((grace / 4).max(Duration::from_millis(10))).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let notices = shared.presence.sweep(Instant::now());
            let engine = Engine::from_shared(shared);
            for notice in notices {
                publish_notice(&engine, notice).await;
            }
        }
    });
}

pub(crate) async fn publish_notice(engine: &Engine, notice: Notice) {
    if let Err(error) = engine.publish(notice.channel, notice.data).await {
        tracing::warn!(%error, "presence notice not published");
    }
}
