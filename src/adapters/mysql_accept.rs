//! Group commit of accepted requests.
//!
//! Every accepted request is stored with its outbox event in one transaction, and the
//! answer (202) is sent only after that transaction committed. Requests that arrive while
//! the database is busy share one: they wait in a queue, and a writer takes up to
//! [`MAX_BATCH`] of them into one transaction of two multi-row inserts. At most
//! `writers` transactions are open at a time; an idle store writes a lone request at once,
//! as before. A commit, and the four round trips around it, then serves many requests, which
//! leaves the database's CPU to the requests themselves.
//!
//! A batch is all or nothing, so a row one request could not store (an idempotency key
//! already taken, an injected fault) fails the whole batch before its commit. Then each of
//! its requests is written again on its own, and gets the answer it would have had alone.
//! A batch whose commit failed is not written again: the commit may have been applied, and a
//! second write would fail on the ids it already holds; its requests get the error, as a
//! single request whose commit failed does. With no connection at all, each gets the error
//! at once instead of waiting out the pool's timeout a second time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use actors::StoreError;
use actors::model::{CreateOutcome, NewRequest};
use tokio::sync::oneshot;

/// Most requests in one transaction.
pub(crate) const MAX_BATCH: usize = 100;

/// Most transactions of accepted requests open at a time, before the pool size caps it.
pub(crate) const MAX_WRITERS: usize = 4;

/// A request waiting for a writer, and where its answer goes.
pub(crate) struct Job {
    pub(crate) request: NewRequest,
    pub(crate) reply: oneshot::Sender<Result<CreateOutcome, StoreError>>,
}

/// Requests waiting to be written, and how many writers are at work.
#[derive(Debug)]
pub(crate) struct AcceptQueue {
    state: Mutex<State>,
    writers: usize,
    transactions: AtomicU64,
    requests: AtomicU64,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    writers: usize,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("jobs", &self.jobs.len())
            .field("writers", &self.writers)
            .finish()
    }
}

/// How many transactions wrote how many accepted requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptStats {
    /// Transactions the writers committed or tried.
    pub transactions: u64,
    /// Requests they carried.
    pub requests: u64,
}

impl AcceptQueue {
    /// A queue with at most `writers` writers (at least one).
    pub(crate) fn new(writers: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            writers: writers.max(1),
            transactions: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    /// Queues a job. True when the caller must start a writer (fewer than the most are at
    /// work; the count already includes the new one).
    pub(crate) fn push(&self, job: Job) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.jobs.push_back(job);
        if state.writers < self.writers {
            state.writers += 1;
            true
        } else {
            false
        }
    }

    /// The next batch for a writer holding `slot`; none when the queue is empty, and then the
    /// writer has stopped (the slot is given back under the same lock a push looks at, so no
    /// job is left without a writer).
    pub(crate) fn take(&self, slot: &mut WriterSlot<'_>) -> Option<Vec<Job>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.jobs.is_empty() {
            state.writers -= 1;
            slot.held = false;
            return None;
        }
        let n = state.jobs.len().min(MAX_BATCH);
        let batch: Vec<Job> = state.jobs.drain(..n).collect();
        drop(state);
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        crate::metrics::metrics()
            .accept_transaction_requests
            .observe(batch.len() as f64);
        Some(batch)
    }

    /// A writer's claim on its slot, given back when it stops, also by a panic.
    pub(crate) fn slot(&self) -> WriterSlot<'_> {
        WriterSlot {
            queue: self,
            held: true,
        }
    }

    /// Transactions and requests written so far.
    pub(crate) fn stats(&self) -> AcceptStats {
        AcceptStats {
            transactions: self.transactions.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }
}

/// One writer's place among `AcceptQueue::writers`.
pub(crate) struct WriterSlot<'a> {
    queue: &'a AcceptQueue,
    held: bool,
}

impl Drop for WriterSlot<'_> {
    fn drop(&mut self) {
        if self.held {
            // The writer stopped early (a panic, or its runtime shut down): the next push
            // starts another one for whatever is queued.
            let mut state = self
                .queue
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.writers -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> (Job, oneshot::Receiver<Result<CreateOutcome, StoreError>>) {
        let (reply, rx) = oneshot::channel();
        let request = NewRequest {
            id: "id".into(),
            number: "7".into(),
            email: "a@b.co".into(),
            idempotency_key: None,
            request_id: None,
            traceparent: None,
            event_id: "e".into(),
        };
        (Job { request, reply }, rx)
    }

    #[test]
    fn pushes_start_writers_up_to_the_most_then_queue() {
        let queue = AcceptQueue::new(2);
        let starts: Vec<bool> = (0..5).map(|_| queue.push(job().0)).collect();
        assert_eq!(starts, [true, true, false, false, false]);
        let mut a = queue.slot();
        assert_eq!(queue.take(&mut a).map(|b| b.len()), Some(5));
        assert!(queue.take(&mut a).is_none());
        // One writer stopped: the next push starts one again.
        assert!(queue.push(job().0));
    }

    #[test]
    fn a_batch_holds_at_most_max_batch_jobs() {
        let queue = AcceptQueue::new(1);
        for _ in 0..MAX_BATCH + 3 {
            queue.push(job().0);
        }
        let mut slot = queue.slot();
        assert_eq!(queue.take(&mut slot).map(|b| b.len()), Some(MAX_BATCH));
        assert_eq!(queue.take(&mut slot).map(|b| b.len()), Some(3));
        assert_eq!(
            queue.stats(),
            AcceptStats {
                transactions: 2,
                requests: MAX_BATCH as u64 + 3
            }
        );
    }

    #[test]
    fn a_writer_that_stops_early_gives_its_slot_back() {
        let queue = AcceptQueue::new(1);
        assert!(queue.push(job().0));
        {
            let mut slot = queue.slot();
            let _batch = queue.take(&mut slot);
            // Dropped while held, as by a panic mid-write.
        }
        assert!(queue.push(job().0), "a new writer is started");
    }
}
