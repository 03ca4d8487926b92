//! The embedded backends on one SQLite file: the store, and a durable queue table that
//! serves as the broker (DESIGN §6). Used when no MySQL or NATS is configured.
//!
//! SQLite has one writer at a time and no `SKIP LOCKED`; a claim is a single
//! `UPDATE … RETURNING` statement, which is atomic, so the same relay logic holds. Times are
//! integer microseconds (exact comparisons); they come from this process's clock, which is
//! the only writer.

pub mod queue;
pub mod workers;

pub use queue::{EmbeddedAdvisories, EmbeddedQueue, EmbeddedSource};

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actors::model::{
    CreateOutcome, DLQ_OUTBOX, ListQuery, NewRequest, OutboxEvent, PrimeRequest, PublishFailure,
    SUBJECT_PRIMECHECK_REQUESTED,
};
use actors::{Claim, OutboxStore, RequestStore, Settle, StoreError};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use tokio::sync::Notify;

use super::group::Group;
use super::sql::{Backend, Dialect, Driver, Inserted, Shared};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The SQLite file could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open the embedded database {path}: {reason}; check that PRIMED_DATA_DIR is writable"
)]
pub struct SqliteSetupError {
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// The embedded store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The queue's wakes, one per subject (shared with the [`EmbeddedQueue`] of this file).
    wakes: Arc<QueueWakes>,
    /// Set when this file's queue is the broker: a new event then goes into the queue in
    /// the transaction that writes it (see [`SqliteStore::enqueue_directly`]).
    enqueue: Arc<AtomicBool>,
    /// Small writes grouped into shared statements (acks, sent emails).
    grouped: Arc<workers::Grouped>,
    /// Accepted requests waiting together share a transaction.
    accepts: Arc<Group<NewRequest, CreateOutcome>>,
}

/// A new event, for its outbox row and (see [`SqliteStore::enqueue_directly`]) its queue row.
pub(crate) struct EventRow<'a> {
    pub event_id: &'a str,
    pub payload: &'a str,
    pub request_id: Option<&'a str>,
    pub traceparent: Option<&'a str>,
}

/// Writes new events of `subject` in the transaction on `conn`: their outbox rows and, with
/// `enqueue`, their queue rows too (`ON CONFLICT (event_id) DO NOTHING`, as a publish does)
/// with the outbox rows written already published.
pub(crate) async fn write_events(
    conn: &mut sqlx::SqliteConnection,
    subject: &str,
    events: &[EventRow<'_>],
    max_retries: u32,
    enqueue: bool,
    now: i64,
) -> Result<(), sqlx::Error> {
    let mut q: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
        "INSERT INTO outbox (event_id, subject, payload, request_id, traceparent, max_retries, created_at, state, published_at) ",
    );
    q.push_values(events, |mut b, e| {
        b.push_bind(e.event_id)
            .push_bind(subject)
            .push_bind(e.payload)
            .push_bind(e.request_id)
            .push_bind(e.traceparent)
            .push_bind(max_retries)
            .push_bind(now)
            .push_bind(if enqueue { "published" } else { "pending" })
            .push_bind(enqueue.then_some(now));
    });
    q.build().execute(&mut *conn).await?;
    if enqueue {
        let mut q: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
            "INSERT INTO queue_messages (event_id, subject, payload, request_id, traceparent, visible_at, created_at) ",
        );
        q.push_values(events, |mut b, e| {
            b.push_bind(e.event_id)
                .push_bind(subject)
                .push_bind(e.payload)
                .push_bind(e.request_id)
                .push_bind(e.traceparent)
                .push_bind(now)
                .push_bind(now);
        });
        q.push(" ON CONFLICT (event_id) DO NOTHING");
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Wakes the workers pulling one subject of the embedded queue after a publish: only
/// those, so that a publish on one subject costs the other subject's workers no claim.
#[derive(Debug, Default)]
pub(crate) struct QueueWakes(Mutex<HashMap<String, Arc<Notify>>>);

impl QueueWakes {
    /// The wake of `subject`'s pullers.
    pub(crate) fn of(&self, subject: &str) -> Arc<Notify> {
        let mut wakes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        wakes.entry(subject.to_string()).or_default().clone()
    }

    /// Wakes every puller of `subject`.
    pub(crate) fn wake(&self, subject: &str) {
        self.of(subject).notify_waiters();
    }
}

pub(crate) fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

pub(crate) fn now() -> i64 {
    micros(Utc::now())
}

pub(crate) fn rejected(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(err.to_string())
        }
        // SQLITE_BUSY / SQLITE_LOCKED: another writer held the file past the busy timeout.
        sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("5") | Some("6") | Some("517")) =>
        {
            StoreError::Unavailable(err.to_string())
        }
        _ => StoreError::Rejected(err.to_string()),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `path` and applies the migrations.
    pub async fn open(path: &Path, outbox_max_retries: u32) -> Result<Self, SqliteSetupError> {
        let setup_error = |e: &dyn std::fmt::Display| SqliteSetupError {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        // Created here, readable by this user only, so that SQLite's journal files (which
        // take the database's mode) are private too.
        {
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(setup_error(&e)),
            }
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        // One connection: SQLite has one writer at a time, and a second connection that
        // finds the write lock taken waits in SQLite's busy handler, which sleeps (1, 2, 5,
        // … 100 ms) instead of queueing; the pool's waiters queue in order. The busy timeout
        // stays for other processes on the file (the `primed dlq` CLI).
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| setup_error(&e))?;
        MIGRATOR.run(&pool).await.map_err(|e| setup_error(&e))?;
        let enqueue: Arc<AtomicBool> = Arc::default();
        let wakes: Arc<QueueWakes> = Arc::default();
        let writer = AcceptWriter {
            pool: pool.clone(),
            outbox_max_retries,
            enqueue: enqueue.clone(),
            wakes: wakes.clone(),
        };
        // One writer: SQLite has one at a time.
        let accepts = Group::new(
            1,
            ACCEPT_BATCH,
            Arc::new(move |batch| {
                let writer = writer.clone();
                async move { writer.batch(batch).await }.boxed()
            }),
        );
        Ok(Self {
            accepts,
            grouped: Arc::new(workers::Grouped::new(&pool, enqueue.clone(), wakes.clone())),
            wakes,
            enqueue,
            pool,
        })
    }

    /// With `on`, a new event (a request's, a result's) goes into this file's queue in the
    /// transaction that writes it, and its outbox row is written already published: the
    /// queue is in the same file, so the commit that stores the event also publishes it,
    /// atomically, without a relay round. Only when this file's queue is the broker (the
    /// embedded mode, `PRIMED_OUTBOX_DIRECT`); applies to every clone of the store.
    pub fn enqueue_directly(&self, on: bool) {
        self.enqueue.store(on, Ordering::Relaxed);
    }

    /// The grouped writes.
    pub(crate) fn grouped(&self) -> &workers::Grouped {
        &self.grouped
    }

    /// The pool (the embedded queue shares it).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The dead-letter queue, the health rows and the records both stores share.
    pub fn shared(&self) -> Shared<Sqlite> {
        Shared::new(self.pool.clone())
    }

    /// Answers a trivial query (for `/health`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(rejected)?;
        Ok(())
    }
}

impl AcceptWriter {
    async fn one(&self, req: NewRequest) -> Result<CreateOutcome, StoreError> {
        let created_at = Utc::now();
        let created_us = micros(created_at);
        let payload = req
            .event_payload()
            .map_err(|e| StoreError::Rejected(e.to_string()))?;
        let tx = self.pool.begin().await.map_err(rejected)?;
        let shared = Shared::<Sqlite>::new(self.pool.clone());
        let mut tx = match shared.insert_request(tx, &req, created_at).await? {
            Inserted::New(tx) => tx,
            Inserted::Existing(outcome) => return Ok(outcome),
        };
        let enqueue = self.enqueue.load(Ordering::Relaxed);
        let event = EventRow {
            event_id: &req.event_id,
            payload: &payload,
            request_id: req.request_id.as_deref(),
            traceparent: req.traceparent.as_deref(),
        };
        let queued = write_events(
            &mut tx,
            SUBJECT_PRIMECHECK_REQUESTED,
            &[event],
            self.outbox_max_retries,
            enqueue,
            created_us,
        )
        .await;
        if let Err(err) = queued {
            let _ = tx.rollback().await;
            return Err(rejected(err));
        }
        tx.commit().await.map_err(rejected)?;
        if enqueue {
            self.wakes.wake(SUBJECT_PRIMECHECK_REQUESTED);
        }
        Ok(CreateOutcome::Created(PrimeRequest::pending(
            req,
            from_micros(created_us),
        )))
    }

    /// Writes the requests waiting together in one transaction; when a statement fails
    /// (an idempotency key already taken, a fault), writes each on its own, so that each
    /// gets the answer it would have had alone.
    async fn batch(&self, mut batch: Vec<NewRequest>) -> Vec<Result<CreateOutcome, StoreError>> {
        if batch.len() == 1
            && let Some(req) = batch.pop()
        {
            return vec![self.one(req).await];
        }
        match self.together(&batch).await {
            Ok(created_us) => {
                if self.enqueue.load(Ordering::Relaxed) {
                    self.wakes.wake(SUBJECT_PRIMECHECK_REQUESTED);
                }
                batch
                    .into_iter()
                    .map(|req| {
                        Ok(CreateOutcome::Created(PrimeRequest::pending(
                            req,
                            from_micros(created_us),
                        )))
                    })
                    .collect()
            }
            Err(Together::Failed(e)) => batch.iter().map(|_| Err(e.clone())).collect(),
            Err(Together::OneByOne) => {
                let mut answers = Vec::with_capacity(batch.len());
                for req in batch {
                    answers.push(self.one(req).await);
                }
                answers
            }
        }
    }

    /// One transaction for the batch: its requests, their outbox rows and (when the store
    /// queues its events) their queue rows. Returns their `created_at`.
    async fn together(&self, batch: &[NewRequest]) -> Result<i64, Together> {
        let Ok(payloads) = batch
            .iter()
            .map(NewRequest::event_payload)
            .collect::<Result<Vec<_>, _>>()
        else {
            return Err(Together::OneByOne);
        };
        let created_us = now();
        let enqueue = self.enqueue.load(Ordering::Relaxed);
        // No connection: every request gets that answer; writing each alone would wait as
        // long again.
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| Together::Failed(rejected(e)))?;
        let written: Result<(), sqlx::Error> = async {
            let mut q: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
                "INSERT INTO prime_check_requests (id, number, email, idempotency_key, request_id, created_at, owner) ",
            );
            q.push_values(batch, |mut b, req| {
                b.push_bind(&req.id)
                    .push_bind(&req.number)
                    .push_bind(&req.email)
                    .push_bind(&req.idempotency_key)
                    .push_bind(&req.request_id)
                    .push_bind(created_us)
                    .push_bind(&req.owner);
            });
            q.build().execute(&mut *tx).await?;
            let events: Vec<EventRow<'_>> = batch
                .iter()
                .zip(&payloads)
                .map(|(req, payload)| EventRow {
                    event_id: &req.event_id,
                    payload,
                    request_id: req.request_id.as_deref(),
                    traceparent: req.traceparent.as_deref(),
                })
                .collect();
            write_events(
                &mut tx,
                SUBJECT_PRIMECHECK_REQUESTED,
                &events,
                self.outbox_max_retries,
                enqueue,
                created_us,
            )
            .await?;
            Ok(())
        }
        .await;
        match written {
            Ok(()) => tx
                .commit()
                .await
                .map(|()| created_us)
                .map_err(|e| Together::Failed(rejected(e))),
            Err(_) => {
                let _ = tx.rollback().await;
                Err(Together::OneByOne)
            }
        }
    }
}

/// Most accepted requests in one transaction.
const ACCEPT_BATCH: usize = 100;

/// Why a batch of requests was not written together.
enum Together {
    /// A statement failed: nothing was written; each request is written on its own.
    OneByOne,
    /// No connection, or the commit failed: every request gets this error.
    Failed(StoreError),
}

/// Writes accepted requests (the group's writer; holds no reference to the store).
#[derive(Clone, Debug)]
struct AcceptWriter {
    pool: SqlitePool,
    outbox_max_retries: u32,
    enqueue: Arc<AtomicBool>,
    wakes: Arc<QueueWakes>,
}

impl SqliteStore {
    async fn mark_published(&self, ids: &[i64]) -> Result<(), StoreError> {
        let mut q: QueryBuilder<'_, Sqlite> =
            QueryBuilder::new("UPDATE outbox SET state = 'published', published_at = ");
        q.push_bind(now());
        q.push(", claimed_until = NULL, error_message = NULL WHERE state = 'pending' AND id IN (");
        push_ids(&mut q, ids.iter().copied());
        q.build().execute(&self.pool).await.map_err(rejected)?;
        Ok(())
    }

    async fn mark_failed_inner(&self, failures: &[PublishFailure]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(rejected)?;
        let now = now();
        for failure in failures {
            match failure.next_retry_at {
                Some(at) => {
                    sqlx::query(
                        "UPDATE outbox SET retry_count = retry_count + ?, next_retry_at = ?, error_message = ?, \
                         last_error_at = ?, claimed_until = NULL WHERE id = ? AND state = 'pending'",
                    )
                    .bind(i32::from(failure.counted))
                    .bind(micros(at))
                    .bind(&failure.error)
                    .bind(now)
                    .bind(failure.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(rejected)?;
                }
                None => {
                    let moved = sqlx::query(
                        "UPDATE outbox SET state = 'dead', retry_count = retry_count + 1, error_message = ?, \
                         last_error_at = ?, claimed_until = NULL WHERE id = ? AND state = 'pending'",
                    )
                    .bind(&failure.error)
                    .bind(now)
                    .bind(failure.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(rejected)?;
                    if moved.rows_affected() == 0 {
                        continue;
                    }
                    sqlx::query(
                        "INSERT INTO dead_letter_messages (original_subject, original_message_id, dlq_subject, payload, \
                         error_message, error_type, retry_count, original_created_at, dlq_created_at, last_retry_at, \
                         request_id, streamed_at) \
                         SELECT subject, event_id, ?, payload, ?, 'transient', retry_count, created_at, ?, ?, \
                                json_extract(payload, '$.request_id'), created_at \
                         FROM outbox WHERE id = ?",
                    )
                    .bind(DLQ_OUTBOX)
                    .bind(&failure.error)
                    .bind(now)
                    .bind(now)
                    .bind(failure.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(rejected)?;
                    // A request whose event never reached the queue has failed.
                    sqlx::query(
                        "UPDATE prime_check_requests SET status = 'failed', completed_at = ?, \
                           error = 'its event could not be published: ' || ? \
                         WHERE status = 'pending' AND id = ( \
                           SELECT json_extract(payload, '$.request_id') FROM outbox \
                           WHERE id = ? AND subject = 'primecheck.requested')",
                    )
                    .bind(now)
                    .bind(&failure.error)
                    .bind(failure.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(rejected)?;
                    let hour = now - now.rem_euclid(3_600_000_000);
                    sqlx::query(
                        "INSERT INTO dlq_statistics (date_hour, subject, error_type, count, created_at) \
                         VALUES (?, ?, 'transient', 1, ?) \
                         ON CONFLICT (date_hour, subject, error_type) DO UPDATE SET count = count + 1",
                    )
                    .bind(hour)
                    .bind(DLQ_OUTBOX)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(rejected)?;
                }
            }
        }
        tx.commit().await.map_err(rejected)
    }
}

/// A claim on SQLite: the rows are leased (`claimed_until`), since the single writer cannot
/// stay locked while the embedded queue writes to the same file.
struct LeasedClaim {
    store: SqliteStore,
}

impl Settle for LeasedClaim {
    fn settle<'a>(
        self: Box<Self>,
        published: &'a [i64],
        failures: &'a [PublishFailure],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            if !published.is_empty() {
                self.store.mark_published(published).await?;
            }
            if !failures.is_empty() {
                self.store.mark_failed_inner(failures).await?;
            }
            Ok(())
        }
        .boxed()
    }
}

fn push_ids(q: &mut QueryBuilder<'_, Sqlite>, ids: impl Iterator<Item = i64>) {
    let mut sep = q.separated(", ");
    for id in ids {
        sep.push_bind(id);
    }
    sep.push_unseparated(")");
}

impl RequestStore for SqliteStore {
    fn create(&self, request: NewRequest) -> BoxFuture<'_, Result<CreateOutcome, StoreError>> {
        self.accepts.submit(request).boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<PrimeRequest>, StoreError>> {
        async move { self.shared().request(id).await }.boxed()
    }

    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<PrimeRequest>, StoreError>> {
        async move { self.shared().requests(&query).await }.boxed()
    }
}

impl Driver for Sqlite {
    type Time = Option<i64>;

    fn store_time(at: Option<DateTime<Utc>>) -> Self::Time {
        at.map(micros)
    }

    fn read_time(row: &SqliteRow, name: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(row.try_get::<Option<i64>, _>(name)?.map(from_micros))
    }

    fn error(err: sqlx::Error) -> StoreError {
        rejected(err)
    }
}

impl Backend for Sqlite {
    const DIALECT: Dialect = Dialect::Sqlite;

    fn last_insert_id(done: &SqliteQueryResult) -> i64 {
        done.last_insert_rowid()
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn begin(
        pool: &SqlitePool,
    ) -> BoxFuture<'_, Result<sqlx::Transaction<'static, Sqlite>, StoreError>> {
        async move {
            crate::adapters::waiting(pool.begin())
                .await
                .map_err(rejected)
        }
        .boxed()
    }
}

impl OutboxStore for SqliteStore {
    fn claim(&self, limit: u32, lease: Duration) -> BoxFuture<'_, Result<Claim, StoreError>> {
        async move {
            let now = now();
            let until = now + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2);
            // One statement: atomic, so two relays never claim the same row.
            let rows = sqlx::query(
                "UPDATE outbox SET claimed_until = ? WHERE id IN ( \
                   SELECT id FROM outbox WHERE state = 'pending' \
                     AND (next_retry_at IS NULL OR next_retry_at <= ?) \
                     AND (claimed_until IS NULL OR claimed_until < ?) \
                   ORDER BY id LIMIT ?) \
                 RETURNING id, event_id, subject, payload, request_id, traceparent, retry_count, max_retries, created_at, dlq_id",
            )
            .bind(until)
            .bind(now)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(rejected)?;
            let mut events = rows
                .iter()
                .map(|row| {
                    let payload: String = row.try_get("payload").map_err(rejected)?;
                    let retry_count: i64 = row.try_get("retry_count").map_err(rejected)?;
                    let max_retries: i64 = row.try_get("max_retries").map_err(rejected)?;
                    Ok(OutboxEvent {
                        id: row.try_get("id").map_err(rejected)?,
                        event_id: row.try_get("event_id").map_err(rejected)?,
                        subject: row.try_get("subject").map_err(rejected)?,
                        payload: payload.into_bytes(),
                        request_id: row.try_get("request_id").map_err(rejected)?,
                        traceparent: row.try_get("traceparent").map_err(rejected)?,
                        retry_count: u32::try_from(retry_count).unwrap_or(0),
                        max_retries: u32::try_from(max_retries).unwrap_or(0),
                        created_at: from_micros(row.try_get("created_at").map_err(rejected)?),
                        dlq_id: row.try_get("dlq_id").map_err(rejected)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            // RETURNING does not promise an order.
            events.sort_by_key(|e| e.id);
            if events.is_empty() {
                return Ok(Claim::empty());
            }
            Ok(Claim::new(events, Box::new(LeasedClaim { store: self.clone() })))
        }
        .boxed()
    }

    fn prune_published(&self, before: DateTime<Utc>) -> BoxFuture<'_, Result<u64, StoreError>> {
        async move {
            let done =
                sqlx::query("DELETE FROM outbox WHERE state = 'published' AND published_at < ?")
                    .bind(micros(before))
                    .execute(&self.pool)
                    .await
                    .map_err(rejected)?;
            Ok(done.rows_affected())
        }
        .boxed()
    }

    fn replay_since(&self, since: DateTime<Utc>) -> BoxFuture<'_, Result<u64, StoreError>> {
        async move {
            let done = sqlx::query(
                "UPDATE outbox SET state = 'pending', published_at = NULL, next_retry_at = NULL, claimed_until = NULL \
                 WHERE state = 'published' AND published_at >= ?",
            )
            .bind(micros(since))
            .execute(&self.pool)
            .await
            .map_err(rejected)?;
            Ok(done.rows_affected())
        }
        .boxed()
    }
}
