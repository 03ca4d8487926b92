//! The MySQL store, as the consumers see it (the dead-letter queue and the health rows are
//! shared with SQLite: `sql::Shared`).
//!
//! Effects are recorded once per event: the event id goes into `processed_events` (or
//! `sent_emails`) in the same transaction as the effect, and a duplicate key means the
//! event was already handled.

use std::sync::Arc;

use actors::handlers::PRIMECHECK_CONSUMER;
use actors::model::{AttemptLog, NewDeadLetter, PrimeResult, SUBJECT_EMAIL_SEND, SentEmail};
use actors::{StoreError, WorkerStore};
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder, Row};

use super::{Direct, MysqlStore, Route, begin, classify, now_micros};
use crate::adapters::group::Group;
use crate::adapters::sql::rows::is_duplicate;

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

/// A group of the workers' records whose batches `write` writes on `pool`.
fn group<T, R, F, Fut>(pool: &MySqlPool, write: F) -> Arc<Group<T, R>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(MySqlPool, Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Vec<Result<R, StoreError>>> + Send + 'static,
{
    Group::on_pool(pool, EFFECT_WRITERS, EFFECT_BATCH, write)
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
    let sent = match crate::adapters::waiting(pool.acquire()).await {
        Ok(mut conn) => q.build().fetch_all(&mut *conn).await,
        Err(e) => Err(e),
    };
    let sent = match sent {
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
    let mut conn = crate::adapters::waiting(pool.acquire())
        .await
        .map_err(together)?;
    q.build().execute(&mut *conn).await.map_err(together)?;
    Ok(())
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
        async move { self.shared().processed(event_id, consumer).await }.boxed()
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
