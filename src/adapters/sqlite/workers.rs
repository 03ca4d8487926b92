//! The embedded store, as the consumers see it: their small writes grouped into shared
//! statements ([`Grouped`]: results with their email events, queue acknowledgements, sent
//! emails, "already sent?" reads) and the [`actors::WorkerStore`] port. The queue they pull
//! from is in `queue.rs`; the dead-letter queue and the health rows are shared with MySQL
//! (`sql::Shared`). There is no DLQ stream: dead letters live in their table only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actors::handlers::PRIMECHECK_CONSUMER;
use actors::model::{AttemptLog, NewDeadLetter, PrimeResult, SUBJECT_EMAIL_SEND, SentEmail};
use actors::{StoreError, WorkerStore};
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{EventRow, QueueWakes, SqliteStore, now, rejected, us, write_events};
use crate::adapters::group::Group;
use crate::adapters::sql::rows::is_duplicate;

/// The embedded mode's small writes that arrive together, grouped like MySQL's effects
/// (`group.rs`): a result is a transaction of four or five statements, a queue
/// acknowledgement a `DELETE`, a sent email an `INSERT`, an "already sent?" check a
/// `SELECT`, each statement a trip to SQLite's connection thread; under load those
/// trips, not the statements, were most of the daemon's CPU. Records that wait together go
/// in one statement; an idle store writes a lone record at once.
#[derive(Debug)]
pub(crate) struct Grouped {
    /// Prime-check results with their email events, `true` when recorded now.
    results: Arc<Group<PrimeResult, bool>>,
    /// Acknowledged (or terminated) queue rows, by id.
    pub(crate) acks: Arc<Group<i64, ()>>,
    /// Sent emails, `true` when recorded now.
    sent: Arc<Group<SentEmail, bool>>,
    /// Which events' emails were sent.
    sent_checks: Arc<Group<String, bool>>,
}

/// Most records in one grouped statement (well under SQLite's 32,766 parameters).
const GROUP_BATCH: usize = 256;

impl Grouped {
    pub(crate) fn new(pool: &SqlitePool, enqueue: Arc<AtomicBool>, wakes: Arc<QueueWakes>) -> Self {
        // One writer for writes (SQLite has one writer at a time), two for reads.
        Self {
            results: Group::on_pool(pool, 1, GROUP_BATCH, move |pool, batch| {
                let (enqueue, wakes) = (enqueue.clone(), wakes.clone());
                async move { write_results(&pool, &enqueue, &wakes, batch).await }
            }),
            acks: Group::on_pool(pool, 1, GROUP_BATCH, |pool, ids| async move {
                delete_queued(&pool, ids).await
            }),
            sent: Group::on_pool(pool, 1, GROUP_BATCH, |pool, batch| async move {
                insert_sent(&pool, batch).await
            }),
            sent_checks: Group::on_pool(pool, 2, GROUP_BATCH, |pool, ids| async move {
                were_sent(&pool, ids).await
            }),
        }
    }
}

/// One answer per record: the statement's outcome for each.
fn each<R: Clone>(n: usize, outcome: Result<R, sqlx::Error>) -> Vec<Result<R, StoreError>> {
    let outcome = outcome.map_err(rejected);
    (0..n).map(|_| outcome.clone()).collect()
}

async fn delete_queued(pool: &SqlitePool, ids: Vec<i64>) -> Vec<Result<(), StoreError>> {
    let mut q: QueryBuilder<'_, Sqlite> =
        QueryBuilder::new("DELETE FROM queue_messages WHERE id IN (");
    let mut list = q.separated(", ");
    for id in &ids {
        list.push_bind(id);
    }
    q.push(")");
    each(ids.len(), q.build().execute(pool).await.map(|_| ()))
}

/// Inserts the batch's sent emails; an event already recorded (before, or earlier in the
/// batch) is answered `false`.
async fn insert_sent(pool: &SqlitePool, batch: Vec<SentEmail>) -> Vec<Result<bool, StoreError>> {
    let now = now();
    let mut q: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
        "INSERT INTO sent_emails (event_id, request_id, recipient, message_id, sent_at) ",
    );
    q.push_values(&batch, |mut b, sent| {
        b.push_bind(&sent.event_id)
            .push_bind(&sent.request_id)
            .push_bind(&sent.recipient)
            .push_bind(&sent.message_id)
            .push_bind(now);
    });
    q.push(" ON CONFLICT DO NOTHING RETURNING event_id");
    match event_ids(q, pool).await {
        Ok(mut inserted) => batch
            .iter()
            // `remove`: a second record of one event in the batch was not the one inserted.
            .map(|sent| Ok(inserted.remove(&sent.event_id)))
            .collect(),
        Err(e) => each(batch.len(), Err(e)),
    }
}

/// The event ids (first column) of the rows `q` returns.
async fn event_ids(
    mut q: QueryBuilder<'_, Sqlite>,
    pool: &SqlitePool,
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    q.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect()
}

async fn were_sent(pool: &SqlitePool, ids: Vec<String>) -> Vec<Result<bool, StoreError>> {
    let mut q: QueryBuilder<'_, Sqlite> =
        QueryBuilder::new("SELECT event_id FROM sent_emails WHERE event_id IN (");
    let mut list = q.separated(", ");
    for id in &ids {
        list.push_bind(id);
    }
    q.push(")");
    match event_ids(q, pool).await {
        Ok(sent) => ids.iter().map(|id| Ok(sent.contains(id))).collect(),
        Err(e) => each(ids.len(), Err(e)),
    }
}

/// Writes a batch of results in one transaction: their `processed_events` rows, the
/// requests' updates (one `UPDATE … FROM (VALUES …)`), the `email.send` outbox rows and,
/// when the store queues its events, their queue rows. When one of them was already
/// recorded nothing is written and each is written again on its own, so that each gets the
/// answer it would have had alone: `true` when recorded now, `false` when before.
async fn write_results(
    pool: &SqlitePool,
    enqueue: &AtomicBool,
    wakes: &QueueWakes,
    batch: Vec<PrimeResult>,
) -> Vec<Result<bool, StoreError>> {
    let enqueue = enqueue.load(Ordering::Relaxed);
    let answer = |written: Result<(), Together>| match written {
        Ok(()) => Ok(true),
        Err(Together::Duplicate) => Ok(false),
        Err(Together::Failed(e)) => Err(e),
    };
    let answers = match results_together(pool, enqueue, &batch).await {
        Err(Together::Duplicate) if batch.len() > 1 => {
            let mut answers = Vec::with_capacity(batch.len());
            for result in &batch {
                answers.push(answer(
                    results_together(pool, enqueue, std::slice::from_ref(result)).await,
                ));
            }
            answers
        }
        written => {
            let written = answer(written);
            batch.iter().map(|_| written.clone()).collect()
        }
    };
    if enqueue && answers.iter().any(|a| matches!(a, Ok(true))) {
        wakes.wake(SUBJECT_EMAIL_SEND);
    }
    answers
}

/// Why a batch of results was not written together.
enum Together {
    /// One of them was already recorded (nothing was written).
    Duplicate,
    /// Anything else: every result of the batch gets this error.
    Failed(StoreError),
}

async fn results_together(
    pool: &SqlitePool,
    enqueue: bool,
    batch: &[PrimeResult],
) -> Result<(), Together> {
    let failed = |e| Together::Failed(rejected(e));
    let payloads = batch
        .iter()
        .map(|r| serde_json::to_string(&r.email))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Together::Failed(StoreError::Rejected(e.to_string())))?;
    let now = now();
    let mut tx = pool.begin().await.map_err(failed)?;
    let mut q: QueryBuilder<'_, Sqlite> =
        QueryBuilder::new("INSERT INTO processed_events (event_id, consumer, processed_at) ");
    q.push_values(batch, |mut b, r| {
        b.push_bind(&r.event_id)
            .push_bind(PRIMECHECK_CONSUMER)
            .push_bind(now);
    });
    match q.build().execute(&mut *tx).await {
        Ok(_) => {}
        Err(e) if is_duplicate(&e) => {
            let _ = tx.rollback().await;
            return Err(Together::Duplicate);
        }
        Err(e) => return Err(failed(e)),
    }
    let mut q: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
        "UPDATE prime_check_requests SET status = 'done', is_prime = v.column2, factor = v.column3, \
         error = NULL, digits = v.column4, duration_us = v.column5, completed_at = ",
    );
    q.push_bind(now).push(" FROM (");
    q.push_values(batch, |mut b, r| {
        b.push_bind(&r.email.request_id)
            .push_bind(r.email.is_prime)
            .push_bind(&r.email.factor)
            .push_bind(r.email.digits as i64)
            .push_bind(us(r.duration));
    });
    q.push(") AS v WHERE prime_check_requests.id = v.column1");
    q.build().execute(&mut *tx).await.map_err(failed)?;
    let events: Vec<EventRow<'_>> = batch
        .iter()
        .zip(&payloads)
        .map(|(r, payload)| EventRow {
            event_id: &r.email_event_id,
            payload,
            request_id: r.request_id.as_deref(),
            traceparent: r.traceparent.as_deref(),
        })
        .collect();
    write_events(&mut tx, SUBJECT_EMAIL_SEND, &events, 3, enqueue, now)
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(failed)
}

impl WorkerStore for SqliteStore {
    fn record_result(&self, result: PrimeResult) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.grouped().results.submit(result).boxed()
    }

    fn processed<'a>(
        &'a self,
        event_id: &'a str,
        consumer: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move { self.shared().processed(event_id, consumer).await }.boxed()
    }

    fn email_sent<'a>(&'a self, event_id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.grouped()
            .sent_checks
            .submit(event_id.to_string())
            .boxed()
    }

    fn record_email(&self, sent: SentEmail) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.grouped().sent.submit(sent).boxed()
    }

    fn log_attempts<'a>(&'a self, logs: &'a [AttemptLog]) -> BoxFuture<'a, Result<(), StoreError>> {
        async move { self.shared().log_attempts(logs).await }.boxed()
    }

    fn dead_letter(&self, letter: NewDeadLetter) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
        async move { self.shared().dead_letter(letter).await }.boxed()
    }

    fn resolve_dead_letter(&self, dlq_id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        async move { self.shared().resolve_dead_letter(dlq_id).await }.boxed()
    }

    fn record_crash<'a>(
        &'a self,
        event_id: &'a str,
        error: &'a str,
    ) -> BoxFuture<'a, Result<u32, StoreError>> {
        async move { self.shared().record_crash(event_id, error).await }.boxed()
    }

    fn crashes<'a>(
        &'a self,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<(u32, String)>, StoreError>> {
        async move { self.shared().crashes(event_id).await }.boxed()
    }
}

impl actors::GaugeSource for SqliteStore {
    fn gauges(&self) -> BoxFuture<'_, Result<actors::StoreGauges, StoreError>> {
        async move {
            let at = now();
            let (pending, oldest): (i64, Option<i64>) = sqlx::query_as(
                "SELECT COUNT(*), MIN(CASE WHEN next_retry_at IS NULL OR next_retry_at <= ? THEN created_at END) \
                 FROM outbox WHERE state = 'pending'",
            )
            .bind(at)
            .fetch_one(self.pool())
            .await
            .map_err(rejected)?;
            let dead_letters: Vec<(String, i64)> =
                sqlx::query_as("SELECT status, COUNT(*) FROM dead_letter_messages GROUP BY status")
                    .fetch_all(self.pool())
                    .await
                    .map_err(rejected)?;
            let queue: Vec<(String, i64)> =
                sqlx::query_as("SELECT subject, COUNT(*) FROM queue_messages GROUP BY subject")
                    .fetch_all(self.pool())
                    .await
                    .map_err(rejected)?;
            let size = i64::from(self.pool().size());
            let idle = self.pool().num_idle() as i64;
            Ok(actors::StoreGauges {
                outbox_pending: pending,
                outbox_lag_seconds: oldest.map_or(0.0, |c| (at - c).max(0) as f64 / 1e6),
                dead_letters,
                queue,
                connections_active: (size - idle).max(0),
                connections_idle: idle,
            })
        }
        .boxed()
    }
}
