//! The MySQL store, as the consumers and the dead-letter queue see it.
//!
//! Effects are recorded once per event: the event id goes into `processed_events` (or
//! `sent_emails`) in the same transaction as the effect, and a duplicate key means the
//! event was already handled.

use std::collections::BTreeMap;

use actors::model::{
    AttemptLog, DeadLetter, DlqActionResult, DlqBucket, DlqQuery, DlqStats, DlqStatus, ErrorClass,
    NewDeadLetter, PrimeResult, Reprocess, SUBJECT_EMAIL_SEND, SentEmail, dlq_subject,
};
use actors::workers::PRIMECHECK_CONSUMER;
use actors::{DlqStore, StoreError, WorkerStore};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::mysql::MySqlRow;
use std::sync::Arc;

use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder, Row};

use super::{Direct, MysqlStore, Route, begin, classify, now_micros};
use crate::adapters::common::{
    HealthRow, LogRow, health_rows, is_duplicate, json_payload, letter_history, refused,
};
use crate::adapters::group::Group;

const SELECT_LETTER: &str = "SELECT id, original_subject, original_message_id, dlq_subject, \
    CAST(payload AS CHAR) AS payload, error_message, error_type, retry_count, original_created_at, \
    dlq_created_at, last_retry_at, status, resolved_at, resolved_by, request_id, operator, reason, \
    reprocess_count, auto_retry_count, stream_version FROM dead_letter_messages";

fn letter_from_row(row: &MySqlRow) -> Result<DeadLetter, StoreError> {
    let payload: String = row.try_get("payload").map_err(classify)?;
    let error_type: String = row.try_get("error_type").map_err(classify)?;
    let status: String = row.try_get("status").map_err(classify)?;
    let count = |name: &str| -> Result<u32, StoreError> {
        let v: i32 = row.try_get(name).map_err(classify)?;
        Ok(v.max(0) as u32)
    };
    Ok(DeadLetter {
        id: row.try_get("id").map_err(classify)?,
        original_subject: row.try_get("original_subject").map_err(classify)?,
        original_message_id: row.try_get("original_message_id").map_err(classify)?,
        dlq_subject: row.try_get("dlq_subject").map_err(classify)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        error_message: row.try_get("error_message").map_err(classify)?,
        error_type: ErrorClass::parse(&error_type)
            .ok_or_else(|| StoreError::Rejected(format!("unknown error type {error_type:?}")))?,
        retry_count: count("retry_count")?,
        original_created_at: row.try_get("original_created_at").map_err(classify)?,
        dlq_created_at: row.try_get("dlq_created_at").map_err(classify)?,
        last_retry_at: row.try_get("last_retry_at").map_err(classify)?,
        status: DlqStatus::parse(&status)
            .ok_or_else(|| StoreError::Rejected(format!("unknown DLQ status {status:?}")))?,
        resolved_at: row.try_get("resolved_at").map_err(classify)?,
        resolved_by: row.try_get("resolved_by").map_err(classify)?,
        request_id: row.try_get("request_id").map_err(classify)?,
        operator: row.try_get("operator").map_err(classify)?,
        reason: row.try_get("reason").map_err(classify)?,
        reprocess_count: count("reprocess_count")?,
        auto_retry_count: count("auto_retry_count")?,
    })
}

async fn count_statistic(
    conn: &mut MySqlConnection,
    subject: &str,
    class: ErrorClass,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO dlq_statistics (date_hour, subject, error_type, count) \
         VALUES (DATE_FORMAT(UTC_TIMESTAMP(), '%Y-%m-%d %H:00:00'), ?, ?, 1) \
         ON DUPLICATE KEY UPDATE count = count + 1",
    )
    .bind(subject)
    .bind(class.as_str())
    .execute(conn)
    .await
    .map_err(classify)?;
    Ok(())
}

/// Most records in one batch of the workers' group commit.
const EFFECT_BATCH: usize = 64;

/// Most batches of one kind in flight at once.
const EFFECT_WRITERS: usize = 2;

/// The workers' records, written in groups ([`Group`]).
pub(crate) struct Effects {
    /// Prime-check results with their `email.send` events.
    results: Arc<Group<PrimeResult, bool>>,
    /// Sent emails.
    sent: Arc<Group<SentEmail, bool>>,
    /// Whether emails were sent (reads, grouped the same way: one query for many).
    sent_checks: Arc<Group<String, bool>>,
}

impl std::fmt::Debug for Effects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Effects").finish_non_exhaustive()
    }
}

impl Effects {
    pub(crate) fn new(pool: &MySqlPool, direct: &Direct) -> Self {
        let direct = direct.clone();
        Self {
            results: group(pool, move |pool, batch| {
                let direct = direct.clone();
                async move { write_results(&pool, &direct, batch).await }
            }),
            sent: group(
                pool,
                |pool, batch| async move { write_sent(&pool, batch).await },
            ),
            sent_checks: group(
                pool,
                |pool, batch| async move { were_sent(&pool, batch).await },
            ),
        }
    }
}

/// A group whose batches `write` writes on `pool`.
fn group<T, R, F, Fut>(pool: &MySqlPool, write: F) -> Arc<Group<T, R>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(MySqlPool, Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Vec<Result<R, StoreError>>> + Send + 'static,
{
    let pool = pool.clone();
    Group::new(
        EFFECT_WRITERS,
        EFFECT_BATCH,
        Arc::new(move |batch| write(pool.clone(), batch).boxed()),
    )
}

/// Which of these events' emails were recorded as sent: one query.
async fn were_sent(pool: &MySqlPool, event_ids: Vec<String>) -> Vec<Result<bool, StoreError>> {
    let mut q: QueryBuilder<'_, MySql> =
        QueryBuilder::new("SELECT event_id FROM sent_emails WHERE event_id IN (");
    let mut list = q.separated(", ");
    for id in &event_ids {
        list.push_bind(id);
    }
    q.push(")");
    let sent = match q.build().fetch_all(pool).await {
        Ok(rows) => rows
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<std::collections::HashSet<String>, _>>(),
        Err(e) => Err(e),
    };
    match sent {
        Ok(sent) => event_ids.iter().map(|id| Ok(sent.contains(id))).collect(),
        Err(e) => {
            let e = classify(e);
            event_ids.iter().map(|_| Err(e.clone())).collect()
        }
    }
}

/// Writes a batch's records together; when one of them was already recorded (nothing was
/// written), writes each on its own, so that each gets the answer it would have had alone:
/// `true` when it was recorded now, `false` when it had been before.
async fn write_batch<C, T, W>(
    pool: &MySqlPool,
    context: &C,
    batch: &[T],
    together: W,
) -> Vec<Result<bool, StoreError>>
where
    W: AsyncFn(&MySqlPool, &C, &[T]) -> Result<(), Together>,
{
    let answer = |written: Result<(), Together>| match written {
        Ok(()) => Ok(true),
        Err(Together::Duplicate) => Ok(false),
        Err(Together::Failed(e)) => Err(e),
    };
    match together(pool, context, batch).await {
        Err(Together::Duplicate) if batch.len() > 1 => {
            let mut answers = Vec::with_capacity(batch.len());
            for record in batch {
                answers.push(answer(
                    together(pool, context, std::slice::from_ref(record)).await,
                ));
            }
            answers
        }
        written => {
            let written = answer(written);
            batch.iter().map(|_| written.clone()).collect()
        }
    }
}

/// Why a batch was not written together.
enum Together {
    /// A record's event was already recorded (nothing of the batch was written).
    Duplicate,
    /// Anything else: every record of the batch gets this error.
    Failed(StoreError),
}

fn together(e: sqlx::Error) -> Together {
    if is_duplicate(&e) {
        Together::Duplicate
    } else {
        Together::Failed(classify(e))
    }
}

async fn write_results(
    pool: &MySqlPool,
    direct: &Direct,
    batch: Vec<PrimeResult>,
) -> Vec<Result<bool, StoreError>> {
    write_batch(pool, direct, &batch, results_together).await
}

async fn write_sent(pool: &MySqlPool, batch: Vec<SentEmail>) -> Vec<Result<bool, StoreError>> {
    write_batch(pool, &(), &batch, sent_together).await
}

/// Results in one transaction: their `processed_events` rows, the requests' updates and
/// the `email.send` events (published after the commit when the fast path takes them).
async fn results_together(
    pool: &MySqlPool,
    direct: &Direct,
    batch: &[PrimeResult],
) -> Result<(), Together> {
    let payloads = batch
        .iter()
        .map(|r| serde_json::to_string(&r.email))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Together::Failed(StoreError::Rejected(e.to_string())))?;
    let failed = |e| Together::Failed(classify(e));
    let route = Route::now(direct);
    let mut tx = begin(pool).await.map_err(failed)?;
    let written = async {
        let mut q: QueryBuilder<'_, MySql> =
            QueryBuilder::new("INSERT INTO processed_events (event_id, consumer) ");
        q.push_values(batch, |mut b, r| {
            b.push_bind(&r.event_id).push_bind(PRIMECHECK_CONSUMER);
        });
        q.build().execute(&mut *tx).await.map_err(together)?;
        update_requests(&mut tx, batch).await.map_err(failed)?;
        let created_at = now_micros();
        let mut q: QueryBuilder<'_, MySql> = QueryBuilder::new(
            "INSERT INTO outbox (event_id, subject, payload, request_id, traceparent, created_at, next_retry_at) ",
        );
        q.push_values(batch.iter().zip(&payloads), |mut b, (r, payload)| {
            b.push_bind(&r.email_event_id)
                .push_bind(SUBJECT_EMAIL_SEND)
                .push_bind(payload)
                .push_bind(&r.request_id)
                .push_bind(&r.traceparent)
                .push_bind(created_at)
                .push("NOW(6) + INTERVAL ")
                .push_bind_unseparated(route.delay_us())
                .push_unseparated(" MICROSECOND");
        });
        q.build().execute(&mut *tx).await.map_err(failed)?;
        Ok(())
    }
    .await;
    match written {
        Ok(()) => {
            tx.commit().await.map_err(failed)?;
            route.committed(|| {
                batch
                    .iter()
                    .zip(payloads)
                    .map(|(r, payload)| {
                        actors::OutgoingMessage::first(
                            r.email_event_id.clone(),
                            SUBJECT_EMAIL_SEND,
                            payload.into_bytes(),
                            r.request_id.clone(),
                            r.traceparent.clone(),
                        )
                    })
                    .collect()
            });
            Ok(())
        }
        Err(e) => {
            // At once, so that no lock (a duplicate key takes one) outlives the batch while
            // its records are written again one by one.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// Marks the batch's requests done in one statement (a `CASE` per column, by id).
async fn update_requests(
    conn: &mut MySqlConnection,
    batch: &[PrimeResult],
) -> Result<(), sqlx::Error> {
    let mut q: QueryBuilder<'_, MySql> = QueryBuilder::new(
        "UPDATE prime_check_requests SET status = 'done', error = NULL, completed_at = NOW(6)",
    );
    let column = |q: &mut QueryBuilder<'_, MySql>,
                  name: &str,
                  value: &dyn Fn(&mut QueryBuilder<'_, MySql>, &PrimeResult)| {
        q.push(format_args!(", {name} = CASE id"));
        for r in batch {
            q.push(" WHEN ")
                .push_bind(r.email.request_id.clone())
                .push(" THEN ");
            value(q, r);
        }
        q.push(" END");
    };
    column(&mut q, "is_prime", &|q, r| {
        q.push_bind(r.email.is_prime);
    });
    column(&mut q, "factor", &|q, r| {
        q.push_bind(r.email.factor.clone());
    });
    column(&mut q, "digits", &|q, r| {
        q.push_bind(r.email.digits as i64);
    });
    column(&mut q, "duration_us", &|q, r| {
        q.push_bind(i64::try_from(r.duration.as_micros()).unwrap_or(i64::MAX));
    });
    q.push(" WHERE id IN (");
    let mut ids = q.separated(", ");
    for r in batch {
        ids.push_bind(r.email.request_id.clone());
    }
    q.push(")");
    q.build().execute(conn).await?;
    Ok(())
}

/// Sent emails in one multi-row insert (one commit).
async fn sent_together(pool: &MySqlPool, _: &(), batch: &[SentEmail]) -> Result<(), Together> {
    let mut q: QueryBuilder<'_, MySql> =
        QueryBuilder::new("INSERT INTO sent_emails (event_id, request_id, recipient, message_id) ");
    q.push_values(batch, |mut b, s| {
        b.push_bind(&s.event_id)
            .push_bind(&s.request_id)
            .push_bind(&s.recipient)
            .push_bind(&s.message_id);
    });
    q.build().execute(pool).await.map_err(together)?;
    Ok(())
}

impl MysqlStore {
    async fn dead_letter_inner(&self, l: NewDeadLetter) -> Result<Option<i64>, StoreError> {
        let payload = json_payload(&l.payload);
        let dlq = dlq_subject(&l.original_subject);
        let mut tx = begin(self.pool()).await.map_err(classify)?;
        let id = if let Some(dlq_id) = l.dlq_id {
            // A reprocess failed again: back to pending with the new error.
            let updated = sqlx::query(
                "UPDATE dead_letter_messages SET status = 'pending', error_message = ?, error_type = ?, \
                 retry_count = retry_count + ?, streamed_at = NULL, stream_version = stream_version + 1 \
                 WHERE id = ? AND status IN ('reprocessing', 'pending')",
            )
            .bind(&l.error)
            .bind(l.error_type.as_str())
            .bind(l.retry_count)
            .bind(dlq_id)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
            (updated.rows_affected() > 0).then_some(dlq_id)
        } else {
            // Not twice for the same message while one is still open.
            let inserted = sqlx::query(
                "INSERT INTO dead_letter_messages (original_subject, original_message_id, dlq_subject, \
                   payload, error_message, error_type, retry_count, original_created_at, request_id) \
                 SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? FROM DUAL WHERE ? IS NULL OR NOT EXISTS ( \
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
            .bind(l.original_created_at)
            .bind(&l.request_id)
            .bind(&l.original_message_id)
            .bind(&l.original_message_id)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
            (inserted.rows_affected() > 0).then(|| inserted.last_insert_id() as i64)
        };
        if id.is_some() {
            count_statistic(&mut tx, dlq, l.error_type).await?;
            if let (Some(request_id), true) = (
                &l.request_id,
                l.original_subject == actors::model::SUBJECT_PRIMECHECK_REQUESTED,
            ) {
                sqlx::query(
                    "UPDATE prime_check_requests SET status = 'failed', error = ?, completed_at = NOW(6) \
                     WHERE id = ? AND status <> 'done'",
                )
                .bind(&l.error)
                .bind(request_id)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            }
        }
        tx.commit().await.map_err(classify)?;
        Ok(id)
    }

    async fn reprocess_inner(&self, r: Reprocess) -> Result<Vec<DlqActionResult>, StoreError> {
        let mut out = Vec::with_capacity(r.ids.len());
        let delay_us = i64::try_from(r.delay.as_micros()).unwrap_or(i64::MAX / 2);
        for &id in &r.ids {
            let mut tx = begin(self.pool()).await.map_err(classify)?;
            let row = sqlx::query(&format!("{SELECT_LETTER} WHERE id = ? FOR UPDATE"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?;
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
                "INSERT INTO outbox (event_id, subject, payload, request_id, created_at, next_retry_at, dlq_id) \
                 VALUES (?, ?, ?, ?, NOW(6), NOW(6) + INTERVAL ? MICROSECOND, ?)",
            )
            .bind(&event_id)
            .bind(&letter.original_subject)
            .bind(letter.payload.to_string())
            .bind(&letter.request_id)
            .bind(delay_us)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
            sqlx::query(
                "UPDATE dead_letter_messages SET status = 'reprocessing', last_retry_at = NOW(6), \
                 reprocess_count = reprocess_count + 1, auto_retry_count = auto_retry_count + ?, \
                 operator = ?, reason = ?, resolved_at = NULL, resolved_by = NULL WHERE id = ?",
            )
            .bind(i32::from(r.automatic))
            .bind(&r.operator)
            .bind(&r.reason)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
            if let Some(request_id) = &letter.request_id
                && letter.original_subject == actors::model::SUBJECT_PRIMECHECK_REQUESTED
            {
                sqlx::query(
                    "UPDATE prime_check_requests SET status = 'pending', error = NULL, completed_at = NULL \
                     WHERE id = ? AND status = 'failed'",
                )
                .bind(request_id)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            }
            tx.commit().await.map_err(classify)?;
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

impl WorkerStore for MysqlStore {
    fn record_result(&self, result: PrimeResult) -> BoxFuture<'_, Result<bool, StoreError>> {
        async move { self.effects().results.submit(result).await }.boxed()
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
                    .map_err(classify)?;
            Ok(row.is_some())
        }
        .boxed()
    }

    fn email_sent<'a>(&'a self, event_id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            self.effects()
                .sent_checks
                .submit(event_id.to_string())
                .await
        }
        .boxed()
    }

    fn record_email(&self, sent: SentEmail) -> BoxFuture<'_, Result<bool, StoreError>> {
        async move { self.effects().sent.submit(sent).await }.boxed()
    }

    fn log_attempts<'a>(&'a self, logs: &'a [AttemptLog]) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            if logs.is_empty() {
                return Ok(());
            }
            let mut q: QueryBuilder<'_, MySql> = QueryBuilder::new(
                "INSERT INTO message_processing_logs (message_id, subject, status, error_message, processing_time_ms) ",
            );
            q.push_values(logs, |mut b, log| {
                b.push_bind(&log.message_id)
                    .push_bind(&log.subject)
                    .push_bind(log.status.as_str())
                    .push_bind(&log.error)
                    .push_bind(i64::try_from(log.processing_time.as_millis()).unwrap_or(i64::MAX));
            });
            q.build().execute(self.pool()).await.map_err(classify)?;
            Ok(())
        }
        .boxed()
    }

    fn dead_letter(&self, letter: NewDeadLetter) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
        self.dead_letter_inner(letter).boxed()
    }

    fn resolve_dead_letter(&self, dlq_id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            sqlx::query(
                "UPDATE dead_letter_messages SET status = 'resolved', resolved_at = NOW(6), \
                 resolved_by = COALESCE(operator, 'reprocess') WHERE id = ? AND status = 'reprocessing'",
            )
            .bind(dlq_id)
            .execute(self.pool())
            .await
            .map_err(classify)?;
            Ok(())
        }
        .boxed()
    }
}

impl DlqStore for MysqlStore {
    fn unstreamed(&self, limit: u32) -> BoxFuture<'_, Result<Vec<(DeadLetter, u32)>, StoreError>> {
        async move {
            let rows = sqlx::query(&format!(
                "{SELECT_LETTER} WHERE streamed_at IS NULL ORDER BY id LIMIT ?"
            ))
            .bind(limit)
            .fetch_all(self.pool())
            .await
            .map_err(classify)?;
            rows.iter()
                .map(|row| {
                    let version: i32 = row.try_get("stream_version").map_err(classify)?;
                    Ok((letter_from_row(row)?, version.max(0) as u32))
                })
                .collect()
        }
        .boxed()
    }

    fn mark_streamed<'a>(
        &'a self,
        rows: &'a [(i64, u32)],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            for (id, version) in rows {
                sqlx::query(
                    "UPDATE dead_letter_messages SET streamed_at = NOW(6) WHERE id = ? AND stream_version = ?",
                )
                .bind(id)
                .bind(version)
                .execute(self.pool())
                .await
                .map_err(classify)?;
            }
            Ok(())
        }
        .boxed()
    }

    fn list(&self, query: DlqQuery) -> BoxFuture<'_, Result<Vec<DeadLetter>, StoreError>> {
        async move {
            let mut q: QueryBuilder<'_, MySql> = QueryBuilder::new(SELECT_LETTER);
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
            // TIMESTAMP holds 1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC, and a bound
            // outside that range matches nothing at all: a bound beyond either end filters
            // nothing out (or, for `since` past the end, everything).
            let (first, last) = timestamp_range();
            if let Some(since) = query.since {
                if since > last {
                    return Ok(Vec::new());
                }
                if since > first {
                    q.push(" AND dlq_created_at >= ").push_bind(since);
                }
            }
            if let Some(until) = query.until {
                if until <= first {
                    return Ok(Vec::new());
                }
                if until <= last {
                    q.push(" AND dlq_created_at < ").push_bind(until);
                }
            }
            if let Some(text) = query.search.as_deref().filter(|t| !t.is_empty()) {
                // LIKE metacharacters in the text match themselves.
                let escaped = text
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                q.push(" AND LOWER(error_message) LIKE ")
                    .push_bind(format!("%{}%", escaped.to_lowercase()))
                    .push(" ESCAPE '\\\\'");
            }
            if let Some(before) = query.before_id {
                q.push(" AND id < ").push_bind(before);
            }
            q.push(" ORDER BY id DESC LIMIT ").push_bind(query.limit);
            let rows = q.build().fetch_all(self.pool()).await.map_err(classify)?;
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
                .map_err(classify)?;
            row.as_ref().map(letter_from_row).transpose()
        }
        .boxed()
    }

    fn stats(&self, since: DateTime<Utc>) -> BoxFuture<'_, Result<DlqStats, StoreError>> {
        async move {
            let mut stats = DlqStats::default();
            let grouped = |column: &'static str, pending_only: bool| {
                let filter = if pending_only { " WHERE status = 'pending'" } else { "" };
                format!(
                    "SELECT CAST({column} AS CHAR) AS k, COUNT(*) AS n FROM dead_letter_messages{filter} GROUP BY {column}"
                )
            };
            for (column, pending_only, target) in [
                ("status", false, &mut stats.by_status),
                ("error_type", true, &mut stats.by_error_type),
                ("dlq_subject", true, &mut stats.by_subject),
            ] {
                let rows = sqlx::query(&grouped(column, pending_only))
                    .fetch_all(self.pool())
                    .await
                    .map_err(classify)?;
                let mut map = BTreeMap::new();
                for row in rows {
                    let k: String = row.try_get("k").map_err(classify)?;
                    let n: i64 = row.try_get("n").map_err(classify)?;
                    map.insert(k, n.max(0) as u64);
                }
                *target = map;
            }
            let rows = sqlx::query(
                "SELECT date_hour, subject, CAST(error_type AS CHAR) AS error_type, count FROM dlq_statistics \
                 WHERE date_hour >= ? ORDER BY date_hour, subject, error_type",
            )
            .bind(since)
            .fetch_all(self.pool())
            .await
            .map_err(classify)?;
            for row in rows {
                let t: String = row.try_get("error_type").map_err(classify)?;
                let n: i32 = row.try_get("count").map_err(classify)?;
                stats.hourly.push(DlqBucket {
                    hour: row.try_get("date_hour").map_err(classify)?,
                    subject: row.try_get("subject").map_err(classify)?,
                    error_type: ErrorClass::parse(&t)
                        .ok_or_else(|| StoreError::Rejected(format!("unknown error type {t:?}")))?,
                    count: n.max(0) as u64,
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
                let done = sqlx::query(
                    "UPDATE dead_letter_messages SET status = 'discarded', resolved_at = NOW(6), \
                     resolved_by = ?, operator = ?, reason = ? WHERE id = ? AND status IN ('pending', 'reprocessing')",
                )
                .bind(operator)
                .bind(operator)
                .bind(reason)
                .bind(id)
                .execute(self.pool())
                .await
                .map_err(classify)?;
                if done.rows_affected() > 0 {
                    out.push(DlqActionResult { id, ok: true, error: None, event_id: None });
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
            let rows: Vec<LogRow> = sqlx::query_as(
                "SELECT subject, CAST(status AS CHAR), error_message, CAST(processing_time_ms AS SIGNED), created_at \
                 FROM message_processing_logs WHERE message_id = ? ORDER BY id LIMIT 200",
            )
            .bind(message_id)
            .fetch_all(self.pool())
            .await
            .map_err(classify)?;
            let traceparent = sqlx::query_scalar("SELECT traceparent FROM outbox WHERE event_id = ?")
                .bind(message_id)
                .fetch_optional(self.pool())
                .await
                .map_err(classify)?;
            Ok(letter_history(rows, traceparent))
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
            let mut q: QueryBuilder<'_, MySql> = QueryBuilder::new(SELECT_LETTER);
            q.push(" WHERE status = 'pending' AND error_type <> 'poison' AND COALESCE(last_retry_at, dlq_created_at) <= ")
                .push_bind(before)
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
            let rows = q.build().fetch_all(self.pool()).await.map_err(classify)?;
            rows.iter().map(letter_from_row).collect()
        }
        .boxed()
    }
}

impl actors::HealthStore for MysqlStore {
    fn upsert_health<'a>(
        &'a self,
        rows: &'a [actors::WorkerHealth],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            if rows.is_empty() {
                return Ok(());
            }
            let mut q = QueryBuilder::<MySql>::new(
                "INSERT INTO worker_health_checks (worker_name, status, last_heartbeat, error_message, metadata) ",
            );
            q.push_values(rows, |mut b, r| {
                b.push_bind(&r.worker_name)
                    .push_bind(if r.healthy { "healthy" } else { "unhealthy" })
                    .push_bind(r.last_heartbeat)
                    .push_bind(r.error_message.as_deref())
                    .push_bind(r.metadata.to_string());
            });
            q.push(
                " ON DUPLICATE KEY UPDATE status = VALUES(status), last_heartbeat = VALUES(last_heartbeat), error_message = VALUES(error_message), metadata = VALUES(metadata)",
            );
            q.build()
                .execute(self.pool())
                .await
                .map_err(classify)?;
            Ok(())
        }
        .boxed()
    }

    fn list_health(&self) -> BoxFuture<'_, Result<Vec<actors::WorkerHealth>, StoreError>> {
        async move {
            let rows: Vec<HealthRow> = sqlx::query_as(
                "SELECT worker_name, CAST(status AS CHAR), last_heartbeat, error_message, CAST(metadata AS CHAR) \
                 FROM worker_health_checks ORDER BY worker_name LIMIT 5000",
            )
            .fetch_all(self.pool())
            .await
            .map_err(classify)?;
            Ok(health_rows(rows))
        }
        .boxed()
    }
}

/// The outbox backlog and the age of the oldest due pending row (the relay's lag), by the
/// state index: the count reads only the index's `pending` prefix, and the lag the first due
/// row of the claim's range, the one the relay publishes next. Read as one aggregate over
/// the pending rows it scanned the whole table (1 s per collection with a backlog of a
/// million rows; 0.16 s this way, nearly all of it the count).
pub const OUTBOX_GAUGES_SQL: &str = "SELECT \
       (SELECT COUNT(*) FROM outbox WHERE state = 'pending') AS pending, \
       COALESCE((SELECT TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)) \
                 FROM outbox FORCE INDEX (idx_state_published_id) \
                 WHERE state = 'pending' AND published_at = '1970-01-01 00:00:01' \
                   AND (next_retry_at IS NULL OR next_retry_at <= NOW(6)) \
                 ORDER BY id LIMIT 1), 0) AS lag_us";

impl actors::GaugeSource for MysqlStore {
    fn gauges(&self) -> BoxFuture<'_, Result<actors::StoreGauges, StoreError>> {
        async move {
            let row = sqlx::query(OUTBOX_GAUGES_SQL)
                .fetch_one(self.pool())
                .await
                .map_err(classify)?;
            let pending: i64 = row.try_get("pending").map_err(classify)?;
            let lag_us: i64 = row.try_get("lag_us").map_err(classify)?;
            let dead_letters: Vec<(String, i64)> = sqlx::query_as(
                "SELECT CAST(status AS CHAR), COUNT(*) FROM dead_letter_messages GROUP BY status",
            )
            .fetch_all(self.pool())
            .await
            .map_err(classify)?;
            let size = i64::from(self.pool().size());
            let idle = self.pool().num_idle() as i64;
            Ok(actors::StoreGauges {
                outbox_pending: pending,
                outbox_lag_seconds: lag_us.max(0) as f64 / 1e6,
                dead_letters,
                queue: Vec::new(),
                connections_active: (size - idle).max(0),
                connections_idle: idle,
            })
        }
        .boxed()
    }
}

/// The first and last instants a MySQL `TIMESTAMP` column holds.
fn timestamp_range() -> (DateTime<Utc>, DateTime<Utc>) {
    (
        DateTime::from_timestamp(1, 0).unwrap_or(DateTime::UNIX_EPOCH),
        DateTime::from_timestamp(i64::from(i32::MAX), 0).unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}
