//! Resume: everything history holds after a client's id, read one bounded batch at a time as
//! the subscriber takes it.
//!
//! The first batch is read when the subscription opens (it says whether there is a gap, which
//! a transport announces before anything else). The next is read only when the subscriber has
//! taken the last one, by a task of its own, so a subscription's `try_next` stays synchronous
//! for every transport: while a batch is on its way it has nothing to give and its signal wakes
//! the transport when the batch is in. A resuming subscriber thus holds at most one batch of
//! history ([`crate::EngineConfig::replay_batch`]) however far back it resumes, besides its
//! live queue (bounded as always), which it reads once history is exhausted, skipping by id
//! what the replay already gave.
//!
//! History that goes while a replay reads it (evicted past the replay's position by new
//! messages or age), or a broker that fails mid-replay, ends the subscription as a lagging one
//! is ended ([`crate::Event::Lagged`]): the client resumes from the last id it got and is told
//! of the gap then, at the start of a response, where every transport can say it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use halley_proto::{Message, MessageId, Pattern};

use crate::hub::Subscriber;
use crate::{Broker, BrokerError, Gather, Replay};

/// One batch of what `patterns` are owed after `after`, merged in id order, each message once.
pub(crate) async fn batch(
    broker: &dyn Broker,
    patterns: &[Pattern],
    after: MessageId,
    limit: usize,
) -> Result<Replay, BrokerError> {
    if let [pattern] = patterns {
        return broker.replay(pattern, after, limit).await;
    }
    let mut gather = Gather::new(limit);
    let mut gap = false;
    for pattern in patterns {
        let replay = broker.replay(pattern, after, limit).await?;
        gap |= replay.gap;
        gather.add(replay.messages, replay.more);
    }
    Ok(gather.finish(gap))
}

type Slot = Arc<Mutex<Option<Result<Replay, BrokerError>>>>;

/// A subscription's replay in progress: the batch being taken, and how to read the next.
pub(crate) struct Replaying {
    batch: VecDeque<Arc<Message>>,
    rest: Option<Rest>,
}

struct Rest {
    broker: Arc<dyn Broker>,
    /// Where the next batch starts.
    from: MessageId,
    limit: usize,
    /// The batch being read, once its task has put it there.
    fetching: Option<Slot>,
}

/// What [`Replaying::refill`] found.
pub(crate) enum Refill {
    /// A batch is in (it may be empty: ask again).
    Ready,
    /// A batch is on its way; the subscriber's signal says when it is in.
    Waiting,
    /// History is exhausted: live messages follow.
    Done,
    /// History went before it could be read (or the broker failed): the subscriber must be
    /// cut off and resume.
    Lost,
}

impl Replaying {
    /// The replay whose first batch is `first`; `None` when there is nothing to replay.
    pub(crate) fn new(
        first: Replay,
        broker: &Arc<dyn Broker>,
        limit: usize,
    ) -> Option<Box<Replaying>> {
        let rest = first.more.map(|from| Rest {
            broker: broker.clone(),
            from,
            limit,
            fetching: None,
        });
        (!first.messages.is_empty() || rest.is_some()).then(|| {
            Box::new(Replaying {
                batch: first.messages.into(),
                rest,
            })
        })
    }

    /// A replay of `messages` alone (oldest first), nothing to read after them.
    pub(crate) fn of(messages: Vec<Arc<Message>>) -> Box<Replaying> {
        Box::new(Replaying {
            batch: messages.into(),
            rest: None,
        })
    }

    /// The last message of the batch in hand.
    pub(crate) fn last(&self) -> Option<MessageId> {
        self.batch.back().map(|m| m.id)
    }

    /// Puts `messages` (oldest first) ahead of the batch in hand.
    pub(crate) fn put_first(&mut self, messages: Vec<Arc<Message>>) {
        for m in messages.into_iter().rev() {
            self.batch.push_front(m);
        }
    }

    pub(crate) fn pop(&mut self) -> Option<Arc<Message>> {
        self.batch.pop_front()
    }

    /// Takes the next batch if it is in, or starts reading it (waking `subscriber` when it is
    /// in). `patterns` are the subscription's at this moment: a pattern the control API took
    /// off is not replayed further.
    pub(crate) fn refill(&mut self, patterns: &[Pattern], subscriber: &Arc<Subscriber>) -> Refill {
        let Some(rest) = &mut self.rest else {
            return Refill::Done;
        };
        if let Some(slot) = &rest.fetching {
            let fetched = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            return match fetched {
                None => Refill::Waiting,
                Some(Ok(replay)) if !replay.gap => {
                    self.batch = replay.messages.into();
                    match replay.more {
                        Some(from) => {
                            rest.from = from;
                            rest.fetching = None;
                        }
                        None => self.rest = None,
                    }
                    Refill::Ready
                }
                Some(Ok(_)) => Refill::Lost,
                Some(Err(error)) => {
                    tracing::warn!(%error, "resume: reading history failed mid-replay");
                    Refill::Lost
                }
            };
        }
        if patterns.is_empty() {
            return Refill::Done;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Refill::Lost;
        };
        let slot = Slot::default();
        rest.fetching = Some(slot.clone());
        let (broker, patterns, from, limit) = (
            rest.broker.clone(),
            patterns.to_vec(),
            rest.from,
            rest.limit,
        );
        let subscriber = subscriber.clone();
        runtime.spawn(async move {
            let replay = batch(&*broker, &patterns, from, limit).await;
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(replay);
            subscriber.signal.notify();
        });
        Refill::Waiting
    }
}
