//! Channel occupancy for the observer: [`Event::Occupied`] when an exact channel gets its first
//! subscriber, [`Event::Vacated`] when it has had none for a while.
//!
//! The hub says when a channel gains its first local subscriber or loses its last
//! ([`crate::Hub`]'s occupancy hook, on register and unregister — never on deliver). This
//! module remembers which channels this node counts as occupied, and since when one has been
//! empty here:
//! - first local subscriber, channel not counted: it is counted, and announced occupied unless
//!   another node has a subscriber of it;
//! - first local subscriber, channel counted (back within the grace): nothing to tell;
//! - last local subscriber gone: the channel is marked empty since now. The sweeper (ticking at
//!   a quarter of the grace) forgets a channel empty for the presence grace period
//!   ([`crate::Engine::set_presence_grace`]) and announces it vacated unless another node has a
//!   subscriber of it then. Long-poll clients leave a channel empty between two polls, and a
//!   reconnect takes a moment: neither is a vacancy.
//!
//! So on one node, occupied and vacated alternate for each channel, a vacated comes at least a
//! grace period after the last subscriber left, and one left within a grace of a new one is
//! not told at all.
//!
//! Across nodes (a clustered broker), other nodes' subscriber counts are those they write every
//! second (`Broker::remote_subscribers`), so what is promised is weaker:
//! - a channel whose first subscribers arrive on two nodes within about a second may be
//!   announced occupied twice (treat occupied and vacated as state, not as toggles);
//! - a channel is announced vacated by the node whose subscribers left last, once the grace
//!   has passed and no other node reports one; if two nodes' last subscribers leave within a
//!   second of each other, both may announce it;
//! - a channel whose last subscribers were on a node that died is not announced vacated.
//!
//! Bounds: the table holds channels with local subscribers, plus those emptied within the
//! grace period, so it is bounded as the hub's registry is.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use halley_proto::Channel;
use tokio::time::Instant;

use crate::Engine;
use crate::engine::Shared;
use crate::observe::{Event, Kind};

#[derive(Default)]
pub(crate) struct Occupancy {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Channels this node counts as occupied; `Some(t)` when it has had no local subscriber
    /// since `t`.
    channels: HashMap<Channel, Option<Instant>>,
    sweeper: bool,
}

impl Occupancy {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the channels empty here for `grace` or longer and still empty, and returns them.
    fn sweep(&self, hub: &crate::Hub, now: Instant, grace: Duration) -> Vec<Channel> {
        let mut gone = Vec::new();
        let mut state = self.lock();
        state.channels.retain(|channel, since| {
            let Some(t) = *since else { return true };
            if now.duration_since(t) < grace {
                return true;
            }
            // The hub's lock is taken under this one, never the other way round (the hub
            // calls `changed` with no lock held).
            if hub.subscribers(channel) > 0 {
                *since = None;
                return true;
            }
            gone.push(channel.clone());
            false
        });
        gone
    }
}

/// What the hub's hook does: `occupied` is true for a channel's first local subscriber, false
/// when its last one left.
pub(crate) fn changed(shared: &Arc<Shared>, channel: &Channel, occupied: bool) {
    let engine = Engine::from_shared(shared.clone());
    if engine.observer_for(channel, Kind::Occupancy).is_none() {
        return;
    }
    let mut state = shared.occupancy.lock();
    if occupied {
        match state.channels.entry(channel.clone()) {
            // Back within the grace period: it never stopped being occupied.
            Entry::Occupied(mut entry) => {
                entry.insert(None);
            }
            Entry::Vacant(entry) => {
                entry.insert(None);
                drop(state);
                announce_occupied(engine, channel.clone());
            }
        }
    } else if let Some(since) = state.channels.get_mut(channel) {
        *since = Some(Instant::now());
        if !std::mem::replace(&mut state.sweeper, true) {
            drop(state);
            spawn_sweeper(Arc::downgrade(shared));
        }
    }
}

/// Tells the observer `channel` is occupied — at once on a single node, so that it comes
/// before anything else the same subscriber causes (its presence), and after asking the other
/// nodes on a cluster.
fn announce_occupied(engine: Engine, channel: Channel) {
    if !engine.clustered() {
        if let Some(observer) = engine.observer_for(&channel, Kind::Occupancy) {
            observer.observe(Event::Occupied { channel });
        }
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        if engine.subscribed_elsewhere(&channel).await {
            return;
        }
        if let Some(observer) = engine.observer_for(&channel, Kind::Occupancy) {
            observer.observe(Event::Occupied { channel });
        }
    });
}

/// Announces vacated channels as their grace runs out, for as long as the engine exists.
/// Started by the first channel emptied; ticks at a quarter of the grace, so a vacancy is told
/// within 1¼ graces.
fn spawn_sweeper(shared: Weak<Shared>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        loop {
            let Some(grace) = shared.upgrade().map(|s| s.hub.presence().grace()) else {
                return;
            };
            tokio::time::sleep((grace / 4).max(Duration::from_millis(10))).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let gone = shared.occupancy.sweep(&shared.hub, Instant::now(), grace);
            if gone.is_empty() {
                continue;
            }
            let engine = Engine::from_shared(shared);
            for channel in gone {
                if engine.clustered() && engine.subscribed_elsewhere(&channel).await {
                    continue;
                }
                if let Some(observer) = engine.observer_for(&channel, Kind::Occupancy) {
                    observer.observe(Event::Vacated { channel });
                }
            }
        }
    });
}
