//! The embedded mode's consumers and dead-letter queue, on the same SQLite file.
//!
//! [`EmbeddedSource`] leases messages from `queue_messages` (a lease is the ack wait: an
//! unacknowledged message becomes visible again when it runs out), counts deliveries, and
//! deletes a message when it is acknowledged or terminated. A message that reached its
//! delivery budget without an acknowledgement is reported by [`EmbeddedAdvisories`], the
//! counterpart of JetStream's max-deliveries advisory. There is no DLQ stream: dead letters
//! live in their table only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actors::model::{
    AttemptLog, DeadLetter, DlqActionResult, DlqBucket, DlqQuery, DlqStats, DlqStatus, ErrorClass,
    NewDeadLetter, PrimeResult, Reprocess, SUBJECT_EMAIL_SEND, SUBJECT_PRIMECHECK_REQUESTED,
    SentEmail, dlq_subject,
};
use actors::workers::PRIMECHECK_CONSUMER;
use actors::{DlqStore, StoreError, WorkerStore};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::queue::QueueWakes;
use super::{EventRow, SqliteStore, from_micros, micros, now, rejected, write_events};
use crate::adapters::common::{health_rows, is_duplicate, json_payload, letter_history, refused};
use crate::adapters::group::Group;

pub(crate) fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

const SELECT_LETTER: &str = "SELECT id, original_subject, original_message_id, dlq_subject, payload, \
    error_message, error_type, retry_count, original_created_at, dlq_created_at, last_retry_at, status, \
    resolved_at, resolved_by, request_id, operator, reason, reprocess_count, auto_retry_count \
    FROM dead_letter_messages";

fn letter_from_row(row: &SqliteRow) -> Result<DeadLetter, StoreError> {
    let payload: String = row.try_get("payload").map_err(rejected)?;
    let error_type: String = row.try_get("error_type").map_err(rejected)?;
    let status: String = row.try_get("status").map_err(rejected)?;
    let count = |name: &str| -> Result<u32, StoreError> {
        let v: i64 = row.try_get(name).map_err(rejected)?;
        Ok(u32::try_from(v).unwrap_or(0))
    };
    let at = |name: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
        let v: Option<i64> = row.try_get(name).map_err(rejected)?;
        Ok(v.map(from_micros))
    };
    Ok(DeadLetter {
        id: row.try_get("id").map_err(rejected)?,
        original_subject: row.try_get("original_subject").map_err(rejected)?,
        original_message_id: row.try_get("original_message_id").map_err(rejected)?,
        dlq_subject: row.try_get("dlq_subject").map_err(rejected)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        error_message: row.try_get("error_message").map_err(rejected)?,
        error_type: ErrorClass::parse(&error_type)
            .ok_or_else(|| StoreError::Rejected(format!("unknown error type {error_type:?}")))?,
        retry_count: count("retry_count")?,
        original_created_at: at("original_created_at")?.unwrap_or_default(),
        dlq_created_at: at("dlq_created_at")?.unwrap_or_default(),
        last_retry_at: at("last_retry_at")?,
        status: DlqStatus::parse(&status)
            .ok_or_else(|| StoreError::Rejected(format!("unknown DLQ status {status:?}")))?,
        resolved_at: at("resolved_at")?,
        resolved_by: row.try_get("resolved_by").map_err(rejected)?,
        request_id: row.try_get("request_id").map_err(rejected)?,
        operator: row.try_get("operator").map_err(rejected)?,
        reason: row.try_get("reason").map_err(rejected)?,
        reprocess_count: count("reprocess_count")?,
        auto_retry_count: count("auto_retry_count")?,
    })
}

async fn count_statistic(
    conn: &mut SqliteConnection,
    subject: &str,
    class: ErrorClass,
) -> Result<(), StoreError> {
    let now = now();
    sqlx::query(
        "INSERT INTO dlq_statistics (date_hour, subject, error_type, count, created_at) VALUES (?, ?, ?, 1, ?) \
         ON CONFLICT (date_hour, subject, error_type) DO UPDATE SET count = count + 1",
    )
    .bind(now - now.rem_euclid(3_600_000_000))
    .bind(subject)
    .bind(class.as_str())
    .bind(now)
    .execute(conn)
    .await
    .map_err(rejected)?;
    Ok(())
}

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
        fn group<T, R, F, Fut>(pool: &SqlitePool, writers: usize, write: F) -> Arc<Group<T, R>>
        where
            T: Send + 'static,
            R: Send + 'static,
            F: Fn(SqlitePool, Vec<T>) -> Fut + Send + Sync + 'static,
            Fut: std::future::Future<Output = Vec<Result<R, StoreError>>> + Send + 'static,
        {
            let pool = pool.clone();
            Group::new(
                writers,
                GROUP_BATCH,
                Arc::new(move |batch| write(pool.clone(), batch).boxed()),
            )
        }
        // One writer for writes (SQLite has one writer at a time), two for reads.
        Self {
            results: group(pool, 1, move |pool, batch| {
                let (enqueue, wakes) = (enqueue.clone(), wakes.clone());
                async move { write_results(&pool, &enqueue, &wakes, batch).await }
            }),
            acks: group(pool, 1, |pool, ids| async move {
                delete_queued(&pool, ids).await
            }),
            sent: group(pool, 1, |pool, batch| async move {
                insert_sent(&pool, batch).await
            }),
            sent_checks: group(
                pool,
                2,
                |pool, ids| async move { were_sent(&pool, ids).await },
            ),
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

impl SqliteStore {
    async fn dead_letter_inner(&self, l: NewDeadLetter) -> Result<Option<i64>, StoreError> {
        let payload = json_payload(&l.payload);
        let dlq = dlq_subject(&l.original_subject);
        let now = now();
        let mut tx = self.pool().begin().await.map_err(rejected)?;
        let id = if let Some(dlq_id) = l.dlq_id {
            let updated = sqlx::query(
                "UPDATE dead_letter_messages SET status = 'pending', error_message = ?, error_type = ?, \
                 retry_count = retry_count + ?, updated_at = ? WHERE id = ? AND status IN ('reprocessing', 'pending')",
            )
            .bind(&l.error)
            .bind(l.error_type.as_str())
            .bind(l.retry_count)
            .bind(now)
            .bind(dlq_id)
            .execute(&mut *tx)
            .await
            .map_err(rejected)?;
            (updated.rows_affected() > 0).then_some(dlq_id)
        } else {
            let inserted = sqlx::query(
                "INSERT INTO dead_letter_messages (original_subject, original_message_id, dlq_subject, payload, \
                   error_message, error_type, retry_count, original_created_at, dlq_created_at, request_id, streamed_at) \
                 SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE ? IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM dead_letter_messages WHERE original_message_id = ? \
                   AND status IN ('pending', 'reprocessing'))",
            )
            .bind(&l.original_subject)
            .bind(&l.original_message_id)
            .bind(dlq)
            .bind(&payload)
            .bind(&l.error)
            .bind(l.error_type.as_str())
            .bind(l.retry_count)
            .bind(micros(l.original_created_at))
            .bind(now)
            .bind(&l.request_id)
            .bind(now)
            .bind(&l.original_message_id)
            .bind(&l.original_message_id)
            .execute(&mut *tx)
            .await
            .map_err(rejected)?;
            (inserted.rows_affected() > 0).then(|| inserted.last_insert_rowid())
        };
        if id.is_some() {
            count_statistic(&mut tx, dlq, l.error_type).await?;
            if let Some(request_id) = &l.request_id
                && l.original_subject == SUBJECT_PRIMECHECK_REQUESTED
            {
                sqlx::query(
                    "UPDATE prime_check_requests SET status = 'failed', error = ?, completed_at = ? \
                     WHERE id = ? AND status <> 'done'",
                )
                .bind(&l.error)
                .bind(now)
                .bind(request_id)
                .execute(&mut *tx)
                .await
                .map_err(rejected)?;
            }
        }
        tx.commit().await.map_err(rejected)?;
        Ok(id)
    }

    async fn reprocess_inner(&self, r: Reprocess) -> Result<Vec<DlqActionResult>, StoreError> {
        let mut out = Vec::with_capacity(r.ids.len());
        for &id in &r.ids {
            let now = now();
            let mut tx = self.pool().begin().await.map_err(rejected)?;
            let row = sqlx::query(&format!("{SELECT_LETTER} WHERE id = ?"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(rejected)?;
            let Some(row) = row else {
                out.push(refused(id, "no such dead letter"));
                continue;
            };
            let letter = letter_from_row(&row)?;
            if letter.status != DlqStatus::Pending && !r.force {
                out.push(refused(
                    id,
                    &format!(
                        "it is {} (use force to reprocess anyway)",
                        letter.status.as_str()
                    ),
                ));
                continue;
            }
            if letter.error_type == ErrorClass::Poison && !r.force {
                out.push(refused(
                    id,
                    "it is poison (it cannot be decoded); use force to republish it anyway",
                ));
                continue;
            }
            let event_id = uuid::Uuid::now_v7().to_string();
            sqlx::query(
                "INSERT INTO outbox (event_id, subject, payload, request_id, max_retries, created_at, next_retry_at, dlq_id) \
                 VALUES (?, ?, ?, ?, 3, ?, ?, ?)",
            )
            .bind(&event_id)
            .bind(&letter.original_subject)
            .bind(letter.payload.to_string())
            .bind(&letter.request_id)
            .bind(now)
            .bind(now + us(r.delay))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(rejected)?;
            sqlx::query(
                "UPDATE dead_letter_messages SET status = 'reprocessing', last_retry_at = ?, \
                 reprocess_count = reprocess_count + 1, auto_retry_count = auto_retry_count + ?, \
                 operator = ?, reason = ?, resolved_at = NULL, resolved_by = NULL, updated_at = ? WHERE id = ?",
            )
            .bind(now)
            .bind(i64::from(r.automatic))
            .bind(&r.operator)
            .bind(&r.reason)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(rejected)?;
            if let Some(request_id) = &letter.request_id
                && letter.original_subject == SUBJECT_PRIMECHECK_REQUESTED
            {
                sqlx::query(
                    "UPDATE prime_check_requests SET status = 'pending', error = NULL, completed_at = NULL \
                     WHERE id = ? AND status = 'failed'",
                )
                .bind(request_id)
                .execute(&mut *tx)
                .await
                .map_err(rejected)?;
            }
            tx.commit().await.map_err(rejected)?;
            out.push(DlqActionResult {
                id,
                ok: true,
                error: None,
                event_id: Some(event_id),
            });
        }
        Ok(out)
    }
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
        async move {
            let row =
                sqlx::query("SELECT 1 FROM processed_events WHERE event_id = ? AND consumer = ?")
                    .bind(event_id)
                    .bind(consumer)
                    .fetch_optional(self.pool())
                    .await
                    .map_err(rejected)?;
            Ok(row.is_some())
        }
        .boxed()
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
        async move {
            if logs.is_empty() {
                return Ok(());
            }
            let now = now();
            let mut q: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
                "INSERT INTO message_processing_logs (message_id, subject, status, error_message, processing_time_ms, created_at) ",
            );
            q.push_values(logs, |mut b, log| {
                b.push_bind(&log.message_id)
                    .push_bind(&log.subject)
                    .push_bind(log.status.as_str())
                    .push_bind(&log.error)
                    .push_bind(i64::try_from(log.processing_time.as_millis()).unwrap_or(i64::MAX))
                    .push_bind(now);
            });
            q.build().execute(self.pool()).await.map_err(rejected)?;
            Ok(())
        }
        .boxed()
    }

    fn dead_letter(&self, letter: NewDeadLetter) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
        self.dead_letter_inner(letter).boxed()
    }

    fn resolve_dead_letter(&self, dlq_id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let now = now();
            sqlx::query(
                "UPDATE dead_letter_messages SET status = 'resolved', resolved_at = ?, updated_at = ?, \
                 resolved_by = COALESCE(operator, 'reprocess') WHERE id = ? AND status = 'reprocessing'",
            )
            .bind(now)
            .bind(now)
            .bind(dlq_id)
            .execute(self.pool())
            .await
            .map_err(rejected)?;
            Ok(())
        }
        .boxed()
    }
}

/// `message_processing_logs` as stored here (micros for the time).
type SqliteLogRow = (String, String, Option<String>, Option<i64>, i64);

impl DlqStore for SqliteStore {
    fn unstreamed(&self, _limit: u32) -> BoxFuture<'_, Result<Vec<(DeadLetter, u32)>, StoreError>> {
        // The embedded mode has no DLQ stream: rows are the dead-letter queue.
        async { Ok(Vec::new()) }.boxed()
    }

    fn mark_streamed<'a>(
        &'a self,
        _rows: &'a [(i64, u32)],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }

    fn list(&self, query: DlqQuery) -> BoxFuture<'_, Result<Vec<DeadLetter>, StoreError>> {
        async move {
            let mut q: QueryBuilder<'_, Sqlite> = QueryBuilder::new(SELECT_LETTER);
            q.push(" WHERE 1 = 1");
            if let Some(subject) = &query.subject {
                q.push(" AND (original_subject = ")
                    .push_bind(subject.clone())
                    .push(" OR dlq_subject = ")
                    .push_bind(subject.clone())
                    .push(")");
            }
            if let Some(t) = query.error_type {
                q.push(" AND error_type = ").push_bind(t.as_str());
            }
            if let Some(s) = query.status {
                q.push(" AND status = ").push_bind(s.as_str());
            }
            if let Some(since) = query.since {
                q.push(" AND dlq_created_at >= ").push_bind(micros(since));
            }
            if let Some(until) = query.until {
                q.push(" AND dlq_created_at < ").push_bind(micros(until));
            }
            if let Some(text) = query.search.as_deref().filter(|t| !t.is_empty()) {
                // LIKE metacharacters in the text match themselves.
                let escaped = text
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                q.push(" AND LOWER(error_message) LIKE ")
                    .push_bind(format!("%{}%", escaped.to_lowercase()))
                    .push(" ESCAPE '\\'");
            }
            if let Some(before) = query.before_id {
                q.push(" AND id < ").push_bind(before);
            }
            q.push(" ORDER BY id DESC LIMIT ").push_bind(query.limit);
            let rows = q.build().fetch_all(self.pool()).await.map_err(rejected)?;
            rows.iter().map(letter_from_row).collect()
        }
        .boxed()
    }

    fn get(&self, id: i64) -> BoxFuture<'_, Result<Option<DeadLetter>, StoreError>> {
        async move {
            let row = sqlx::query(&format!("{SELECT_LETTER} WHERE id = ?"))
                .bind(id)
                .fetch_optional(self.pool())
                .await
                .map_err(rejected)?;
            row.as_ref().map(letter_from_row).transpose()
        }
        .boxed()
    }

    fn stats(&self, since: DateTime<Utc>) -> BoxFuture<'_, Result<DlqStats, StoreError>> {
        async move {
            let mut stats = DlqStats::default();
            for (column, pending_only, target) in [
                ("status", false, &mut stats.by_status),
                ("error_type", true, &mut stats.by_error_type),
                ("dlq_subject", true, &mut stats.by_subject),
            ] {
                let filter = if pending_only {
                    " WHERE status = 'pending'"
                } else {
                    ""
                };
                let rows = sqlx::query(&format!(
                    "SELECT {column} AS k, COUNT(*) AS n FROM dead_letter_messages{filter} GROUP BY {column}"
                ))
                .fetch_all(self.pool())
                .await
                .map_err(rejected)?;
                let mut map = BTreeMap::new();
                for row in rows {
                    let k: String = row.try_get("k").map_err(rejected)?;
                    let n: i64 = row.try_get("n").map_err(rejected)?;
                    map.insert(k, u64::try_from(n).unwrap_or(0));
                }
                *target = map;
            }
            let rows = sqlx::query(
                "SELECT date_hour, subject, error_type, count FROM dlq_statistics WHERE date_hour >= ? \
                 ORDER BY date_hour, subject, error_type",
            )
            .bind(micros(since) - micros(since).rem_euclid(3_600_000_000))
            .fetch_all(self.pool())
            .await
            .map_err(rejected)?;
            for row in rows {
                let t: String = row.try_get("error_type").map_err(rejected)?;
                let n: i64 = row.try_get("count").map_err(rejected)?;
                stats.hourly.push(DlqBucket {
                    hour: from_micros(row.try_get("date_hour").map_err(rejected)?),
                    subject: row.try_get("subject").map_err(rejected)?,
                    error_type: ErrorClass::parse(&t)
                        .ok_or_else(|| StoreError::Rejected(format!("unknown error type {t:?}")))?,
                    count: u64::try_from(n).unwrap_or(0),
                });
            }
            Ok(stats)
        }
        .boxed()
    }

    fn reprocess(
        &self,
        request: Reprocess,
    ) -> BoxFuture<'_, Result<Vec<DlqActionResult>, StoreError>> {
        self.reprocess_inner(request).boxed()
    }

    fn discard<'a>(
        &'a self,
        ids: &'a [i64],
        operator: &'a str,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<DlqActionResult>, StoreError>> {
        async move {
            let mut out = Vec::with_capacity(ids.len());
            for &id in ids {
                let now = now();
                let done = sqlx::query(
                    "UPDATE dead_letter_messages SET status = 'discarded', resolved_at = ?, updated_at = ?, \
                     resolved_by = ?, operator = ?, reason = ? WHERE id = ? AND status IN ('pending', 'reprocessing')",
                )
                .bind(now)
                .bind(now)
                .bind(operator)
                .bind(operator)
                .bind(reason)
                .bind(id)
                .execute(self.pool())
                .await
                .map_err(rejected)?;
                if done.rows_affected() > 0 {
                    out.push(DlqActionResult {
                        id,
                        ok: true,
                        error: None,
                        event_id: None,
                    });
                } else {
                    let why = match DlqStore::get(self, id).await? {
                        None => "no such dead letter".to_string(),
                        Some(l) => format!("it is already {}", l.status.as_str()),
                    };
                    out.push(refused(id, &why));
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn history<'a>(
        &'a self,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<actors::model::LetterHistory, StoreError>> {
        async move {
            let rows: Vec<SqliteLogRow> = sqlx::query_as(
                "SELECT subject, status, error_message, processing_time_ms, created_at \
                 FROM message_processing_logs WHERE message_id = ? ORDER BY id LIMIT 200",
            )
            .bind(message_id)
            .fetch_all(self.pool())
            .await
            .map_err(rejected)?;
            let traceparent =
                sqlx::query_scalar("SELECT traceparent FROM outbox WHERE event_id = ?")
                    .bind(message_id)
                    .fetch_optional(self.pool())
                    .await
                    .map_err(rejected)?;
            Ok(letter_history(
                rows.into_iter()
                    .map(|(s, st, e, ms, at)| (s, st, e, ms, from_micros(at)))
                    .collect(),
                traceparent,
            ))
        }
        .boxed()
    }

    fn rule_candidates<'a>(
        &'a self,
        before: DateTime<Utc>,
        max_auto: u32,
        subjects: &'a [String],
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>> {
        async move {
            let mut q: QueryBuilder<'_, Sqlite> = QueryBuilder::new(SELECT_LETTER);
            q.push(" WHERE status = 'pending' AND error_type <> 'poison' AND COALESCE(last_retry_at, dlq_created_at) <= ")
                .push_bind(micros(before))
                .push(" AND auto_retry_count < ")
                .push_bind(max_auto);
            if !subjects.is_empty() {
                q.push(" AND original_subject IN (");
                let mut sep = q.separated(", ");
                for s in subjects {
                    sep.push_bind(s.clone());
                }
                sep.push_unseparated(")");
            }
            q.push(" ORDER BY id LIMIT ").push_bind(limit);
            let rows = q.build().fetch_all(self.pool()).await.map_err(rejected)?;
            rows.iter().map(letter_from_row).collect()
        }
        .boxed()
    }
}

/// `worker_health_checks` as stored here (micros for the time).
type SqliteHealthRow = (String, String, i64, Option<String>, Option<String>);

impl actors::HealthStore for SqliteStore {
    fn upsert_health<'a>(
        &'a self,
        rows: &'a [actors::WorkerHealth],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            if rows.is_empty() {
                return Ok(());
            }
            let at = now();
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO worker_health_checks (worker_name, status, last_heartbeat, error_message, metadata, created_at, updated_at) ",
            );
            q.push_values(rows, |mut b, r| {
                b.push_bind(&r.worker_name)
                    .push_bind(if r.healthy { "healthy" } else { "unhealthy" })
                    .push_bind(micros(r.last_heartbeat))
                    .push_bind(r.error_message.as_deref())
                    .push_bind(r.metadata.to_string())
                    .push_bind(at)
                    .push_bind(at);
            });
            q.push(
                " ON CONFLICT (worker_name) DO UPDATE SET status = excluded.status, last_heartbeat = excluded.last_heartbeat, error_message = excluded.error_message, metadata = excluded.metadata, updated_at = excluded.updated_at",
            );
            q.build()
                .execute(self.pool())
                .await
                .map_err(rejected)?;
            Ok(())
        }
        .boxed()
    }

    fn list_health(&self) -> BoxFuture<'_, Result<Vec<actors::WorkerHealth>, StoreError>> {
        async move {
            let rows: Vec<SqliteHealthRow> = sqlx::query_as(
                "SELECT worker_name, status, last_heartbeat, error_message, metadata \
                 FROM worker_health_checks ORDER BY worker_name LIMIT 5000",
            )
            .fetch_all(self.pool())
            .await
            .map_err(rejected)?;
            Ok(health_rows(
                rows.into_iter()
                    .map(|(n, s, at, e, m)| (n, s, from_micros(at), e, m))
                    .collect(),
            ))
        }
        .boxed()
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
