//! Writing a broadcast from the delivering loop: a subscriber whose transport is idle gets
//! the message written to its socket by whoever delivers it, without waking its task.
//!
//! Waking each subscriber's task for each message, which then encodes and writes, costs a
//! wake-up, a poll and the scheduler's queues per delivery; for a broadcast to thousands of idle
//! subscribers that is most of the server's user-space work, and it spreads the writes of one
//! message over the scheduler's order rather than the subscribers'. So a transport whose frames
//! are the same for every subscriber (SSE, NDJSON) hands the hub its socket as a [`Sink`], and
//! *arms* it whenever it has nothing left to write and waits ([`crate::Subscription::arm`]):
//! the next message is then written by the delivering loop itself, one non-blocking write per
//! socket, in the order the hub holds them.
//!
//! **Invariant:** one writer at a time. [`Writer`] says whose the socket is, under the
//! subscriber's queue lock: the transport's (`Task`), free for the delivering loop (`Armed`),
//! or taken by a delivery that is writing (`Direct`). A delivery that finds it taken queues
//! its message behind, as it would for a busy transport, and the writing delivery wakes the
//! transport when it is done; the transport takes the socket back ([`SinkSlot::poll_take`])
//! before it writes anything itself (a heartbeat, a goodbye). So the order of messages, the
//! queue bound, `lagged`, heartbeats and goodbyes are what they were.
//!
//! **Invariant:** nothing is lost when a socket is full. A write that the socket takes only
//! part of leaves the message first in the queue with how much was written; the transport
//! writes the rest before anything else ([`SinkSlot::poll_take`]). A write that it does not
//! take at all leaves the message queued as if it had never been offered.

use std::sync::Arc;
use std::task::{Context, Poll};

use halley_proto::Message;

use crate::hub::Subscriber;

/// Whose a subscriber's socket is (see the module's invariant).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    /// The transport's: it writes, the delivering loop queues.
    #[default]
    Task,
    /// Free: the transport waits with nothing to write; a delivery may take it.
    Armed,
    /// A delivery took it and is writing.
    Direct,
    /// A delivery took it, and the transport wants it back (it was woken meanwhile).
    DirectWanted,
}

impl Writer {
    /// Whether a delivery is writing to the socket now.
    pub(crate) fn delivering(self) -> bool {
        matches!(self, Writer::Direct | Writer::DirectWanted)
    }
}

/// How much of the messages offered a [`Sink`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    All,
    /// The socket took this many bytes of the messages' frames, one after the other, and no
    /// more.
    Part(usize),
    /// The socket took nothing (full, or failed: the transport finds out when it writes).
    Nothing,
}

/// A transport's socket, as a delivery writes to it: messages' frames in the transport's
/// format, without blocking. Implemented by the HTTP layer.
pub trait Sink: Send + Sync {
    /// Writes the messages' frames, one after the other, in one non-blocking write.
    fn offer(&self, messages: &[Arc<Message>]) -> Offered;
    /// How many bytes a message's frame takes on this socket.
    fn frame_len(&self, message: &Message) -> usize;
}

/// The transport's side of a subscriber's socket ([`crate::Subscription::sink_slot`]): where
/// it lends the socket to the hub and takes it back.
#[derive(Clone)]
pub struct SinkSlot(pub(crate) Arc<Subscriber>);

impl SinkSlot {
    /// Lends the socket to the hub for good; the subscription arms it when idle.
    pub fn attach(&self, sink: Arc<dyn Sink>) {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner()).sink = Some(sink);
    }

    /// Takes the socket back from the hub for good (a connection that is closing): no
    /// delivery takes it from then on. Call it once [`SinkSlot::poll_take`] is ready.
    pub fn detach(&self) {
        let mut queue = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        if !queue.writer.delivering() {
            queue.sink = None;
        }
    }

    /// Takes the socket back before the transport writes: ready once no delivery writes to
    /// it, with the message a delivery began and could not finish (and how many bytes of it
    /// are written) — the transport writes the rest of it first. Registers for the
    /// subscription's signal while a delivery writes, which wakes it when done.
    pub fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<(Arc<Message>, u32)>> {
        loop {
            {
                let mut queue = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
                if !queue.writer.delivering() {
                    queue.writer = Writer::Task;
                    if queue.written == 0 {
                        return Poll::Ready(None);
                    }
                    let written = std::mem::take(&mut queue.written);
                    return Poll::Ready(queue.messages.pop_front().map(|m| (m, written)));
                }
                queue.writer = Writer::DirectWanted;
            }
            // The delivery notifies when it is done; a signal that was already pending is taken
            // here, and everything it could mean is checked again by the transport afterwards.
            if self.0.signal.poll_wait(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// The writes a delivery owes to idle subscribers' sockets ([`Hub::deliver_deferred`]).
///
/// Done when this is dropped: at once when they are few and the runtime has nothing waiting
/// beyond its workers' own queues (its global queue is empty); otherwise by a task of their
/// own that first lets whatever else is ready on its worker run (`yield_now`). When the server
/// is busy (work queued behind this delivery), further messages for the same subscribers queue
/// meanwhile and go out in the same write: one `writev` carries up to [`COALESCE`] messages to
/// a socket, as a transport's own write would, so that a saturated server makes fewer writes
/// than deliveries rather than one each. Measured (`halley-bench throughput`, 100 channels ×
/// 10 SSE): always deferring doubled the median latency at 4 publishes in flight (0.40 against
/// 0.17-0.19 ms); always writing at once cost 1.8× the CPU per delivery at 1,024 in flight. A
/// large broadcast is always deferred, and split over the runtime's worker threads.
pub struct Writes {
    stats: Arc<crate::Stats>,
    message: Arc<Message>,
    to: Vec<(Arc<Subscriber>, Arc<dyn Sink>)>,
}

/// Fewest writes in one part of a large broadcast (written on a blocking thread): below this
/// handing a part over costs more than the writes it takes (a write is ~5 µs on loopback).
const SPREAD_MIN: usize = 256;

/// Most messages one write to a socket carries (as many as a stream's own write coalesces).
pub const COALESCE: usize = 64;

impl Writes {
    pub(crate) fn new(
        stats: Arc<crate::Stats>,
        message: Arc<Message>,
        to: Vec<(Arc<Subscriber>, Arc<dyn Sink>)>,
    ) -> Writes {
        Writes { stats, message, to }
    }

    /// How many sockets these writes go to.
    pub fn len(&self) -> usize {
        self.to.len()
    }

    pub fn is_empty(&self) -> bool {
        self.to.is_empty()
    }

    fn write(&mut self) {
        let to = std::mem::take(&mut self.to);
        let mut whole = 0;
        let mut batch = Vec::with_capacity(1);
        for (sub, sink) in to {
            batch.push(self.message.clone());
            {
                // What was delivered to this subscriber since it was taken goes in the same
                // write; its transport was not woken for it.
                let mut queue = sub.state.lock().unwrap_or_else(|e| e.into_inner());
                if !queue.lagged && !queue.closed {
                    let more = queue.messages.len().min(COALESCE - 1);
                    batch.extend(queue.messages.drain(..more));
                }
            }
            let offered = sink.offer(&batch);
            whole += match offered {
                Offered::All => batch.len() as u64,
                _ => 0,
            };
            release(&sub, &*sink, &batch, offered);
            batch.clear();
        }
        if whole > 0 {
            crate::Stats::add(&self.stats.written_direct, whole);
        }
    }

    /// Writes a large broadcast on the runtime's blocking threads, in one part per worker
    /// thread of at least [`SPREAD_MIN`] writes each. Each subscriber is this delivery's until
    /// written, so the parts may be written in any order, on any thread. Not on the workers: a
    /// task spawned from a worker waits in its LIFO slot, which no other worker steals, so the
    /// parts ran one after the other on one thread (measured: two parts of 9,500 writes, ~85 ms
    /// each, always on the same thread), and they would hold the worker from every other
    /// connection meanwhile.
    fn spread(mut self, runtime: &tokio::runtime::Handle) {
        let parts = runtime
            .metrics()
            .num_workers()
            .min(self.to.len() / SPREAD_MIN)
            .max(1);
        let each = self.to.len().div_ceil(parts);
        while !self.to.is_empty() {
            let rest = self.to.split_off(self.to.len().saturating_sub(each));
            let mut part = Writes::new(self.stats.clone(), self.message.clone(), rest);
            runtime.spawn_blocking(move || part.write());
        }
    }
}

impl Drop for Writes {
    fn drop(&mut self) {
        if self.to.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Outside a runtime (a test, an embedder's thread): written here and now.
            return self.write();
        };
        if self.to.len() < 2 * SPREAD_MIN && runtime.metrics().global_queue_depth() == 0 {
            // Nothing is waiting beyond the workers' own queues: written here and now.
            return self.write();
        }
        let writes = Writes::new(
            self.stats.clone(),
            self.message.clone(),
            std::mem::take(&mut self.to),
        );
        if writes.to.len() >= 2 * SPREAD_MIN {
            return writes.spread(&runtime);
        }
        let mut writes = writes;
        runtime.spawn(async move {
            tokio::task::yield_now().await;
            writes.write();
        });
    }
}

/// Gives a subscriber's socket back after a delivery wrote `batch` to it: armed again when
/// the transport still has nothing to do, else the transport's, woken to write what came
/// meanwhile (or what of `batch` the socket did not take, which goes first).
fn release(sub: &Subscriber, sink: &dyn Sink, batch: &[Arc<Message>], offered: Offered) {
    let mut queue = sub.state.lock().unwrap_or_else(|e| e.into_inner());
    let wanted = queue.writer == Writer::DirectWanted;
    let idle = !wanted
        && offered == Offered::All
        && queue.messages.is_empty()
        && !queue.lagged
        && !queue.closed
        && !sub.signal.notice.load(std::sync::atomic::Ordering::Acquire);
    if idle {
        queue.writer = Writer::Armed;
        return;
    }
    queue.writer = Writer::Task;
    let (skip, written) = match offered {
        Offered::All => (batch.len(), 0),
        Offered::Nothing => (0, 0),
        Offered::Part(mut bytes) => {
            // Whole frames written, then how much of the next.
            let mut skip = 0;
            while skip < batch.len() && bytes >= sink.frame_len(&batch[skip]) {
                bytes -= sink.frame_len(&batch[skip]);
                skip += 1;
            }
            (skip, bytes)
        }
    };
    let unwritten = &batch[skip..];
    if !unwritten.is_empty() {
        if written > 0 {
            // Begun: its transport finishes it first, whatever else happened meanwhile.
            queue.messages.push_front(unwritten[0].clone());
            for m in unwritten[1..].iter().rev() {
                if !queue.lagged && !queue.closed {
                    queue.messages.insert(1, m.clone());
                }
            }
            // A frame is far below 4 GiB (the body limit).
            queue.written = u32::try_from(written).unwrap_or(u32::MAX);
        } else if !queue.lagged && !queue.closed {
            // Queued again, first, as if never offered: this may put the queue past its
            // bound by what this write took from it, which the next delivery settles as usual.
            for m in unwritten.iter().rev() {
                queue.messages.push_front(m.clone());
            }
        }
    }
    drop(queue);
    sub.signal.notify();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Engine, Event};
    use halley_proto::{Channel, Pattern, Payload};
    use std::sync::Mutex;

    /// A socket that takes everything and remembers which messages it was offered.
    #[derive(Default)]
    struct Taken(Mutex<Vec<u64>>);

    impl Sink for Taken {
        fn offer(&self, messages: &[Arc<Message>]) -> Offered {
            let mut taken = self.0.lock().unwrap();
            taken.extend(messages.iter().map(|m| m.id.offset));
            Offered::All
        }

        fn frame_len(&self, _: &Message) -> usize {
            1
        }
    }

    fn data(n: u64) -> Payload {
        Payload::from_json(n.to_string().as_bytes()).unwrap()
    }

    /// Regression (the Redis chaos test, SSE): a resumed subscription that had replayed a
    /// message from history and then armed was written the live copy of that message again,
    /// out of order, because a delivery that writes itself skipped `try_next`'s check.
    #[tokio::test]
    async fn a_delivery_that_writes_itself_skips_what_the_replay_gave() {
        let stats = Arc::new(crate::Stats::default());
        let hub = crate::Hub::new(16, stats.clone());
        let broker = crate::MemoryBroker::spawn(hub.clone(), Default::default());
        let engine = Engine::with_broker(hub.clone(), broker, stats);
        let channel = Channel::parse("/a").unwrap();
        let mut ids = Vec::new();
        for n in 1..=3 {
            ids.push(
                engine
                    .publish(channel.clone(), data(n))
                    .await
                    .unwrap()
                    .message
                    .id,
            );
        }
        let mut sub = engine
            .subscribe(Pattern::parse("/a").unwrap(), Some(ids[0]))
            .await
            .unwrap();
        let taken = Arc::new(Taken::default());
        sub.sink_slot().attach(taken.clone());
        for want in &ids[1..] {
            match sub.try_next() {
                Some(Event::Message(m)) => assert_eq!(m.id, *want),
                other => panic!("expected {want:?}, got {other:?}"),
            }
        }
        assert!(sub.try_next().is_none());
        assert!(sub.arm());
        // The live copy of the last replayed message, as a broker that delivers after the
        // replay read history would hand it over; then a new one.
        let replayed = Arc::new(Message::new(channel.clone(), ids[2], data(3)));
        let next = Arc::new(Message::new(
            channel.clone(),
            halley_proto::MessageId::new(ids[2].epoch, ids[2].offset + 1),
            data(4),
        ));
        // Outside a runtime's worker the writes are done when dropped, here and now.
        std::thread::spawn(move || {
            hub.deliver(&replayed);
            hub.deliver(&next);
        })
        .join()
        .unwrap();
        assert_eq!(*taken.0.lock().unwrap(), vec![ids[2].offset + 1]);
        assert!(sub.try_next().is_none());
    }
}
