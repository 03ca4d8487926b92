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
//! already taken, an injected fault) fails the whole batch before its commit. Then the batch
//! is written again in halves, and a failing half in halves again, down to requests written
//! on their own, which get the answer they would have had alone: one such request among n
//! costs about 2·log2(n) transactions, not n.
//! A batch whose commit failed is not written again: the commit may have been applied, and a
//! second write would fail on the ids it already holds; its requests get the error, as a
//! single request whose commit failed does. With no connection at all, each gets the error
//! at once instead of waiting out the pool's timeout a second time.
//!
//! A request waits in the queue at most the pool's timeout: then, if no writer has taken it,
//! it is withdrawn and answered as a request that got no connection (nothing stored). A
//! request whose client went away before a writer took it is not written.

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
    /// Tells the job apart in the queue (see [`AcceptQueue::withdraw`]).
    pub(crate) ticket: u64,
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
    rewrites: AtomicU64,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    writers: usize,
    next_ticket: u64,
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
    /// Transactions (or lone writes) that parts of failed batches took when written again.
    pub rewrites: u64,
    /// Requests waiting for a writer now.
    pub queued: u64,
}

impl AcceptQueue {
    /// A queue with at most `writers` writers (at least one).
    pub(crate) fn new(writers: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            writers: writers.max(1),
            transactions: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            rewrites: AtomicU64::new(0),
        }
    }

    /// Queues a request. Returns its ticket, and true when the caller must start a writer
    /// (fewer than the most are at work; the count already includes the new one).
    pub(crate) fn push(
        &self,
        request: NewRequest,
        reply: oneshot::Sender<Result<CreateOutcome, StoreError>>,
    ) -> (u64, bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let ticket = state.next_ticket;
        state.next_ticket = ticket.wrapping_add(1);
        state.jobs.push_back(Job {
            ticket,
            request,
            reply,
        });
        if state.writers < self.writers {
            state.writers += 1;
            (ticket, true)
        } else {
            (ticket, false)
        }
    }

    /// Takes a job back out of the queue, so that it is never written. False when a writer
    /// has taken it already (its answer is on the way).
    pub(crate) fn withdraw(&self, ticket: u64) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.jobs.iter().position(|job| job.ticket == ticket) {
            Some(at) => state.jobs.remove(at).is_some(),
            None => false,
        }
    }

    /// The next batch for a writer holding `slot`; none when the queue is empty, and then the
    /// writer has stopped (the slot is given back under the same lock a push looks at, so no
    /// job is left without a writer).
    pub(crate) fn take(&self, slot: &mut WriterSlot<'_>) -> Option<Vec<Job>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = Vec::new();
        while batch.is_empty() {
            if state.jobs.is_empty() {
                state.writers -= 1;
                slot.held = false;
                return None;
            }
            let n = state.jobs.len().min(MAX_BATCH);
            // A request whose client went away before its write began is not stored, as a
            // dropped transaction was not before requests shared them.
            batch.extend(state.jobs.drain(..n).filter(|job| !job.reply.is_closed()));
        }
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
            rewrites: self.rewrites.load(Ordering::Relaxed),
            queued: self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .jobs
                .len() as u64,
        }
    }

    /// Counts a part of a failed batch written again.
    pub(crate) fn count_rewrite(&self) {
        self.rewrites.fetch_add(1, Ordering::Relaxed);
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

    type Answer = oneshot::Receiver<Result<CreateOutcome, StoreError>>;

    /// Queues a request; its ticket, whether a writer must start, and where its answer comes.
    fn push(queue: &AcceptQueue) -> (u64, bool, Answer) {
        let (reply, rx) = oneshot::channel();
        let request = NewRequest {
            id: "id".into(),
            number: "7".into(),
            email: "a@b.co".into(),
            idempotency_key: None,
            request_id: None,
            traceparent: None,
            event_id: "e".into(),
            owner: None,
        };
        let (ticket, start) = queue.push(request, reply);
        (ticket, start, rx)
    }

    #[test]
    fn pushes_start_writers_up_to_the_most_then_queue() {
        let queue = AcceptQueue::new(2);
        let pushed: Vec<_> = (0..5).map(|_| push(&queue)).collect();
        let starts: Vec<bool> = pushed.iter().map(|p| p.1).collect();
        assert_eq!(starts, [true, true, false, false, false]);
        let mut a = queue.slot();
        assert_eq!(queue.take(&mut a).map(|b| b.len()), Some(5));
        assert!(queue.take(&mut a).is_none());
        // One writer stopped: the next push starts one again.
        assert!(push(&queue).1);
    }

    #[test]
    fn a_batch_holds_at_most_max_batch_jobs() {
        let queue = AcceptQueue::new(1);
        let _answers: Vec<_> = (0..MAX_BATCH + 3).map(|_| push(&queue)).collect();
        let mut slot = queue.slot();
        assert_eq!(queue.take(&mut slot).map(|b| b.len()), Some(MAX_BATCH));
        assert_eq!(queue.take(&mut slot).map(|b| b.len()), Some(3));
        assert_eq!(
            queue.stats(),
            AcceptStats {
                transactions: 2,
                requests: MAX_BATCH as u64 + 3,
                rewrites: 0,
                queued: 0,
            }
        );
    }

    #[test]
    fn a_writer_that_stops_early_gives_its_slot_back() {
        let queue = AcceptQueue::new(1);
        let first = push(&queue);
        assert!(first.1);
        {
            let mut slot = queue.slot();
            let _batch = queue.take(&mut slot);
            // Dropped while held, as by a panic mid-write.
        }
        assert!(push(&queue).1, "a new writer is started");
    }

    #[test]
    fn a_withdrawn_job_is_never_taken_and_a_taken_one_cannot_be_withdrawn() {
        let queue = AcceptQueue::new(1);
        let (a, _, _answer_a) = push(&queue);
        let (b, _, _answer_b) = push(&queue);
        assert!(queue.withdraw(b));
        assert!(!queue.withdraw(b), "only once");
        let mut slot = queue.slot();
        let batch = queue.take(&mut slot).unwrap();
        assert_eq!(batch.iter().map(|j| j.ticket).collect::<Vec<_>>(), [a]);
        assert!(!queue.withdraw(a), "a writer has it");
    }

    #[test]
    fn jobs_whose_client_went_away_are_not_written() {
        let queue = AcceptQueue::new(1);
        let (gone, _, answer) = push(&queue);
        drop(answer);
        let (kept, _, _answer) = push(&queue);
        let mut slot = queue.slot();
        let batch = queue.take(&mut slot).unwrap();
        assert_eq!(batch.iter().map(|j| j.ticket).collect::<Vec<_>>(), [kept]);
        assert_ne!(gone, kept);
        // Only gone clients left: the writer stops.
        let (_, _, answer) = push(&queue);
        drop(answer);
        assert!(queue.take(&mut slot).is_none());
    }
}
