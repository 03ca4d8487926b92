//! Group commit for the workers' effects.
//!
//! A worker records each effect (a prime check's result with its email event, a sent email)
//! before it acknowledges the message, and every record used to be a commit of its own: about
//! 1.45 durable commits (fsyncs) per request under load, most of MariaDB's CPU. Here records
//! of one kind that arrive together share one: each waits in a queue, and a writer takes all
//! that are waiting (up to a batch) into one statement or transaction. An idle store writes a
//! lone record at once, so a record waits at most for the commit in progress; the caller is
//! answered, and acknowledges its message, only after the commit that holds its record.
//!
//! The batch writer answers each record on its own: a write that one record spoils (a
//! duplicate key, when the event was already handled) is written again record by record,
//! so each gets the answer it would have had alone.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use actors::StoreError;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

/// Writes a batch: one result per record, in order.
pub(crate) type WriteBatch<T, R> =
    Arc<dyn Fn(Vec<T>) -> BoxFuture<'static, Vec<Result<R, StoreError>>> + Send + Sync>;

type Reply<R> = oneshot::Sender<Result<R, StoreError>>;

impl<T, R> std::fmt::Debug for Group<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("max_writers", &self.max_writers)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

/// Records waiting for a writer, and the writers at work.
pub(crate) struct Group<T, R> {
    state: Mutex<State<T, R>>,
    max_writers: usize,
    max_batch: usize,
    write: WriteBatch<T, R>,
}

struct State<T, R> {
    queue: VecDeque<(T, Reply<R>)>,
    writers: usize,
}

impl<T: Send + 'static, R: Send + 'static> Group<T, R> {
    /// At most `max_writers` batches in flight, each of at most `max_batch` records.
    pub(crate) fn new(max_writers: usize, max_batch: usize, write: WriteBatch<T, R>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                writers: 0,
            }),
            max_writers: max_writers.max(1),
            max_batch: max_batch.max(1),
            write,
        })
    }

    /// A group whose batches `write` writes on (a clone of) `pool`.
    pub(crate) fn on_pool<DB, F, Fut>(
        pool: &sqlx::Pool<DB>,
        max_writers: usize,
        max_batch: usize,
        write: F,
    ) -> Arc<Self>
    where
        DB: sqlx::Database,
        F: Fn(sqlx::Pool<DB>, Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<Result<R, StoreError>>> + Send + 'static,
    {
        let pool = pool.clone();
        Self::new(
            max_writers,
            max_batch,
            Arc::new(move |batch| Box::pin(write(pool.clone(), batch))),
        )
    }

    /// Writes `record` with whatever else is waiting; resolves once its batch is written.
    pub(crate) async fn submit(self: &Arc<Self>, record: T) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.queue.push_back((record, reply));
            let start = state.writers < self.max_writers;
            if start {
                state.writers += 1;
            }
            start
        };
        if start {
            let writer = Writer(self.clone(), false);
            tokio::spawn(writer.run());
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the batch writer stopped before it wrote this record".into(),
            ))
        })
    }

    /// Batches written so far are not counted; for tests: records waiting now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queue
            .len()
    }
}

/// A writer task; gives its slot back when it ends, even by a panic.
struct Writer<T, R>(Arc<Group<T, R>>, bool);

impl<T: Send + 'static, R: Send + 'static> Writer<T, R> {
    async fn run(mut self) {
        loop {
            let batch: Vec<(T, Reply<R>)> = {
                let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
                if state.queue.is_empty() {
                    // Under the lock: a record queued after this sees the slot free.
                    state.writers -= 1;
                    self.1 = true;
                    return;
                }
                let n = state.queue.len().min(self.0.max_batch);
                state.queue.drain(..n).collect()
            };
            let (records, replies): (Vec<T>, Vec<Reply<R>>) = batch.into_iter().unzip();
            let results = (self.0.write)(records).await;
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
    }
}

impl<T, R> Drop for Writer<T, R> {
    fn drop(&mut self) {
        if !self.1 {
            let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.writers -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;
    use tokio::sync::Notify;

    use super::*;

    /// A writer that waits for `gate` before each batch and notes the batch sizes.
    fn gated(gate: Arc<Notify>, sizes: Arc<Mutex<Vec<usize>>>) -> WriteBatch<u32, u32> {
        Arc::new(move |records: Vec<u32>| {
            let (gate, sizes) = (gate.clone(), sizes.clone());
            async move {
                gate.notified().await;
                sizes.lock().unwrap().push(records.len());
                records
                    .into_iter()
                    .map(|r| {
                        if r == 13 {
                            Err(StoreError::Rejected("13".into()))
                        } else {
                            Ok(r * 2)
                        }
                    })
                    .collect()
            }
            .boxed()
        })
    }

    #[tokio::test]
    async fn records_that_wait_share_a_batch_and_each_gets_its_own_answer() {
        let gate = Arc::new(Notify::new());
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let group = Group::new(1, 100, gated(gate.clone(), sizes.clone()));
        let first = tokio::spawn({
            let g = group.clone();
            async move { g.submit(1).await }
        });
        // The first is taken by the writer alone; the next ten wait behind its commit.
        tokio::task::yield_now().await;
        while group.waiting() > 0 {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (2..=11)
            .chain([13])
            .map(|i| {
                let g = group.clone();
                tokio::spawn(async move { g.submit(i).await })
            })
            .collect();
        while group.waiting() < 11 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), 2);
        gate.notify_one();
        let answers: Vec<_> = futures::future::join_all(rest).await;
        let answers: Vec<_> = answers.into_iter().map(|a| a.unwrap()).collect();
        for (i, a) in (2..=11).zip(&answers) {
            assert_eq!(a.as_ref().unwrap(), &(i * 2));
        }
        assert!(answers[10].is_err(), "13 fails alone");
        assert_eq!(*sizes.lock().unwrap(), vec![1, 11]);
    }

    #[tokio::test]
    async fn batches_are_capped_and_writers_are_limited() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (f, m, s) = (in_flight.clone(), most.clone(), sizes.clone());
        let group: Arc<Group<u32, u32>> = Group::new(
            2,
            5,
            Arc::new(move |records: Vec<u32>| {
                let (f, m, s) = (f.clone(), m.clone(), s.clone());
                async move {
                    let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    s.lock().unwrap().push(records.len());
                    tokio::task::yield_now().await;
                    f.fetch_sub(1, Ordering::SeqCst);
                    records.into_iter().map(Ok).collect()
                }
                .boxed()
            }),
        );
        let all: Vec<_> = (0..40)
            .map(|i| {
                let g = group.clone();
                tokio::spawn(async move { g.submit(i).await })
            })
            .collect();
        for (i, a) in futures::future::join_all(all).await.into_iter().enumerate() {
            assert_eq!(a.unwrap().unwrap(), i as u32);
        }
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert!(sizes.lock().unwrap().iter().all(|&n| n <= 5));
        assert_eq!(sizes.lock().unwrap().iter().sum::<usize>(), 40);
    }

    #[tokio::test]
    async fn a_writer_that_panics_fails_its_batch_and_gives_its_slot_back() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let group: Arc<Group<u32, u32>> = Group::new(
            1,
            10,
            Arc::new(move |records: Vec<u32>| {
                let c = c.clone();
                async move {
                    if c.fetch_add(1, Ordering::SeqCst) == 0 {
                        panic!("injected");
                    }
                    records.into_iter().map(Ok).collect()
                }
                .boxed()
            }),
        );
        assert!(
            group.submit(1).await.is_err(),
            "the panicked batch is an error"
        );
        assert_eq!(group.submit(2).await.unwrap(), 2, "a new writer starts");
    }
}
