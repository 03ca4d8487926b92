//! The MySQL / MariaDB store: requests, the outbox and dead letters.
//!
//! A claim is a READ COMMITTED transaction holding its rows with `SELECT … FOR UPDATE SKIP
//! LOCKED`: other relays skip them, and the round marks them in the same transaction, so
//! each event is written once. If the daemon dies mid-round the transaction rolls back and
//! the rows are claimed again (JetStream drops the duplicate publish). READ COMMITTED takes
//! no gap locks, so a held claim never blocks the API's inserts. Times come from the
//! database clock (`NOW(6)`), which all daemons share.

mod accept;
pub mod workers;

use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actors::model::{
    CreateOutcome, DLQ_OUTBOX, ListQuery, NewRequest, OutboxEvent, PrimeRequest, PublishFailure,
    RequestStatus, SUBJECT_PRIMECHECK_REQUESTED,
};
use actors::{Claim, OutboxStore, RequestStore, Settle, StoreError};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{MySql, QueryBuilder, Row};
use tokio::sync::oneshot;

use crate::config::Secret;
pub use accept::AcceptStats;
use accept::{AcceptQueue, Job, MAX_WRITERS};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/mysql");

/// Pool settings.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Most connections held.
    pub max_connections: u32,
    /// How long to wait for a connection (also the connect timeout).
    pub acquire_timeout: Duration,
    /// Failed publishes allowed per outbox event.
    pub outbox_max_retries: u32,
}

/// The store on MySQL or MariaDB.
#[derive(Clone, Debug)]
pub struct MysqlStore {
    pool: MySqlPool,
    outbox_max_retries: u32,
    floor: Arc<ClaimFloor>,
    accepts: Arc<AcceptQueue>,
    /// How long an accepted request waits in the queue for a writer (the pool's timeout).
    accept_wait: Duration,
    /// The workers' records, in groups.
    effects: Arc<workers::Effects>,
    /// Publishes new events right after their commit, when enabled
    /// ([`MysqlStore::publish_directly`]).
    direct: Direct,
}

/// The store's fast path to the broker, set once at start-up (see [`actors::direct`]).
pub(crate) type Direct = Arc<std::sync::OnceLock<actors::DirectPublisher>>;

/// How a batch of new events is written and handed on.
#[derive(Clone, Copy)]
pub(crate) enum Route<'a> {
    /// Not yet due (`GRACE`); published by the fast path after the commit.
    Direct(&'a actors::DirectPublisher),
    /// Due at once; the relay is woken after the commit (by the fast path's handle when
    /// there is one, else by the caller).
    Relay(Option<&'a actors::DirectPublisher>),
}

impl<'a> Route<'a> {
    /// The route for events written now.
    pub(crate) fn now(direct: &'a Direct) -> Self {
        match direct.get() {
            Some(d) if d.accepting() => Route::Direct(d),
            other => Route::Relay(other),
        }
    }

    /// The bound for `next_retry_at` (`NOW(6) + INTERVAL ? MICROSECOND`): the grace, or NULL.
    pub(crate) fn delay_us(self) -> Option<i64> {
        match self {
            Route::Direct(_) => Some(actors::direct::GRACE.as_micros() as i64),
            Route::Relay(_) => None,
        }
    }

    /// After the commit: hands the events on (built only when they go the fast path).
    pub(crate) fn committed(self, events: impl FnOnce() -> Vec<actors::OutgoingMessage>) {
        match self {
            Route::Direct(d) => d.publish(events()),
            Route::Relay(Some(d)) => d.wake_relay(),
            Route::Relay(None) => {}
        }
    }
}

/// Marks rows published by event id, for the fast path.
struct Marks(MySqlPool);

impl actors::OutboxMarks for Marks {
    fn mark_published<'a>(
        &'a self,
        event_ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let mut q: QueryBuilder<'_, MySql> = QueryBuilder::new(
                "UPDATE outbox SET state = 'published', published_at = NOW(6), error_message = NULL \
                 WHERE state = 'pending' AND event_id IN (",
            );
            let mut list = q.separated(", ");
            for id in event_ids {
                list.push_bind(id);
            }
            q.push(")");
            let done = q.build().execute(&self.0).await.map_err(classify)?;
            Ok(done.rows_affected())
        }
        .boxed()
    }
}

/// A new `primecheck.requested` event as the fast path publishes it.
fn requested_message(r: &NewRequest, payload: &str) -> actors::OutgoingMessage {
    actors::OutgoingMessage::first(
        r.event_id.clone(),
        SUBJECT_PRIMECHECK_REQUESTED,
        payload.as_bytes().to_vec(),
        r.request_id.clone(),
        r.traceparent.clone(),
    )
}

/// How often a claim looks at every pending row, even while a backlog is being worked off
/// above the floor, after sweeping stray rows into the index range it reads.
const FULL_CLAIM_EVERY: Duration = Duration::from_secs(1);

/// Where the relay's next claim starts looking.
///
/// Publishing a row moves its `idx_state_published_id` entry from `pending` to `published`, and
/// InnoDB leaves the old entry behind, delete-marked, until its purge thread gets to it. A
/// claim that starts at the lowest pending id walks every such entry first; working off a
/// backlog, the relay's own recent marks are thousands of them, and the claim cost more
/// database time than the mark (39 µs of MariaDB CPU per event, 25 µs with the floor). So
/// while claims come back full, the next one starts above the highest id claimed so far.
/// A row below the floor is not forgotten: the floor drops to zero as soon as a claim comes
/// back short (the relay has caught up), and at least every `FULL_CLAIM_EVERY` a claim looks
/// everywhere, so a row committed late with a low id, or one whose retry came due, waits at
/// most that long under a sustained backlog.
///
/// The same timer runs the sweep: a pending row must carry the epoch in `published_at` to
/// be in the range the claim reads (`idx_state_published_id`); the sweep gives it to any
/// that lacks it (a NULL written by hand, a state reset without the `replay` command).
#[derive(Debug)]
struct ClaimFloor {
    id: AtomicI64,
    full_at: Mutex<Instant>,
}

impl ClaimFloor {
    fn new() -> Self {
        Self {
            id: AtomicI64::new(0),
            full_at: Mutex::new(Instant::now()),
        }
    }

    /// The id the next claim starts above (0: everywhere), and whether to sweep first.
    fn next(&self) -> (i64, bool) {
        let mut full_at = self.full_at.lock().unwrap_or_else(PoisonError::into_inner);
        if full_at.elapsed() >= FULL_CLAIM_EVERY {
            *full_at = Instant::now();
            return (0, true);
        }
        (self.id.load(Ordering::Relaxed), false)
    }

    /// Moves the floor after a claim of `limit` rows that returned `claimed` rows, the
    /// highest id last.
    fn record(&self, limit: u32, claimed: &[OutboxEvent]) {
        match claimed.last() {
            Some(highest) if claimed.len() >= limit as usize => {
                self.id.fetch_max(highest.id, Ordering::Relaxed);
            }
            _ => self.id.store(0, Ordering::Relaxed),
        }
    }
}

/// Could not connect or migrate.
#[derive(Debug, thiserror::Error)]
pub enum MysqlSetupError {
    /// The URL is not a valid MySQL URL.
    #[error("the MySQL URL is not valid: {0}")]
    Url(String),
    /// Cannot reach the server.
    #[error(
        "cannot connect to MySQL: {0}; is it running and are MYSQL_HOST/MYSQL_PORT/MYSQL_USER/MYSQL_PASSWORD right?"
    )]
    Connect(String),
    /// The migrations failed.
    #[error("cannot apply the MySQL migrations: {0}")]
    Migrate(String),
}

/// A pooled connection returned (and so pinged by sqlx) less than this long ago is used
/// without another ping, unless a connection was lost lately ([`suspect`]).
const FRESH_CONNECTION: Duration = Duration::from_secs(1);

/// How long after a lost connection every pooled connection is pinged before use.
const SUSPECT_FOR: Duration = Duration::from_secs(5);

/// Until when (unix ms) connections are pinged before every use: the server killed or lost
/// one lately, and the others it held are likely gone too.
static SUSPECT_UNTIL_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

fn suspect() -> bool {
    Utc::now().timestamp_millis() < SUSPECT_UNTIL_MS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The connection the error came on is gone (killed, timed out, the server restarted).
fn connection_lost(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| matches!(e.number(), 1927 | 2006 | 2013 | 1053)),
        _ => false,
    }
}

fn note(err: &sqlx::Error) {
    if connection_lost(err) {
        let until = Utc::now().timestamp_millis()
            + i64::try_from(SUSPECT_FOR.as_millis()).unwrap_or(i64::MAX / 4);
        SUSPECT_UNTIL_MS.fetch_max(until, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Begins a transaction on a live connection. A pooled connection used within
/// [`FRESH_CONNECTION`] is not pinged; if the server dropped it meanwhile, its `BEGIN` —
/// the first thing sent, so nothing was written — fails, and the transaction begins again
/// on another, pinged first (as every connection is for [`SUSPECT_FOR`] after a loss).
pub(crate) async fn begin(
    pool: &MySqlPool,
) -> Result<sqlx::Transaction<'static, MySql>, sqlx::Error> {
    match pool.begin().await {
        Err(err) if connection_lost(&err) => {
            note(&err);
            pool.begin().await
        }
        other => other,
    }
}

impl MysqlStore {
    /// Connects (lazily: connections are made as needed and re-made after they break).
    pub fn connect(url: &Secret, settings: PoolSettings) -> Result<Self, MysqlSetupError> {
        let options = MySqlConnectOptions::from_str(url.expose())
            .map_err(|e| MysqlSetupError::Url(redact(&e.to_string(), url)))?
            .timezone(Some(String::from("+00:00")))
            .charset("utf8mb4");
        let pool = MySqlPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            // A connection killed by the server is noticed and replaced before use. sqlx
            // pings every connection as it returns to the pool; one taken again within
            // FRESH_CONNECTION of that is not pinged a second time (a round trip per use).
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= FRESH_CONNECTION || suspect() {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            // Held claims must not take gap locks (they would block inserts).
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .execute(conn)
                        .await
                        .map(|_| ())
                })
            })
            .connect_lazy_with(options);
        let direct = Direct::default();
        Ok(Self {
            outbox_max_retries: settings.outbox_max_retries,
            floor: Arc::new(ClaimFloor::new()),
            // Half the pool at most, so that accepting never starves the relay and workers.
            accepts: Arc::new(AcceptQueue::new(
                MAX_WRITERS.min(settings.max_connections as usize / 2),
            )),
            accept_wait: settings.acquire_timeout,
            effects: Arc::new(workers::Effects::new(&pool, &direct)),
            direct,
            pool,
        })
    }

    /// Publishes new events (accepted requests', results' emails) right after their commit
    /// on `broker`, leaving the relay (woken through `wake`) what this does not finish; what
    /// it publishes counts in the relay's `relay_stats`. See [`actors::direct`]. Once per
    /// store; a second call changes nothing.
    pub fn publish_directly(
        &self,
        broker: Arc<dyn actors::Broker>,
        wake: actors::RelayWake,
        relay_stats: Arc<actors::WorkerStats>,
    ) {
        if self.direct.get().is_some() {
            return;
        }
        let publisher = actors::DirectPublisher::start(
            broker,
            Arc::new(Marks(self.pool.clone())),
            wake.clone(),
            relay_stats,
        );
        if self.direct.set(publisher).is_ok() {
            wake.set_direct(true);
        }
    }

    /// Applies the pending migrations. Daemons starting together take turns: sqlx's own
    /// lock (`GET_LOCK(name, -1)`) does not wait on MariaDB, where a negative timeout is not
    /// "forever", so two first starts raced on the migrations table. This holds a lock of
    /// our own, with a bounded wait, on the connection that migrates.
    pub async fn migrate(&self) -> Result<(), MysqlSetupError> {
        let connect = |e: sqlx::Error| MysqlSetupError::Connect(e.to_string());
        let mut conn = self.pool.acquire().await.map_err(connect)?;
        let got: Option<i64> =
            sqlx::query_scalar("SELECT GET_LOCK(CONCAT('primed_migrate_', DATABASE()), 120)")
                .fetch_one(&mut *conn)
                .await
                .map_err(connect)?;
        if got != Some(1) {
            return Err(MysqlSetupError::Migrate(
                "another process held the migration lock for 120 s; is a migration stuck? Check SHOW PROCESSLIST".into(),
            ));
        }
        let result = MIGRATOR.run(&mut *conn).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_),
            ) => MysqlSetupError::Connect(e.to_string()),
            other => MysqlSetupError::Migrate(other.to_string()),
        });
        let _ = sqlx::query("SELECT RELEASE_LOCK(CONCAT('primed_migrate_', DATABASE()))")
            .execute(&mut *conn)
            .await;
        result
    }

    /// Answers a trivial query (for `/health`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let select = || sqlx::query("SELECT 1").execute(&self.pool);
        match select().await {
            // A connection the server dropped since its last use: ask again on a live one.
            Err(err) if connection_lost(&err) => {
                note(&err);
                select().await.map_err(classify)?;
            }
            other => {
                other.map_err(classify)?;
            }
        }
        Ok(())
    }

    /// The pool, for tests and tools.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The workers' grouped records.
    pub(crate) fn effects(&self) -> &workers::Effects {
        &self.effects
    }

    /// How many transactions stored how many accepted requests (see [`accept`]).
    pub fn accept_stats(&self) -> AcceptStats {
        self.accepts.stats()
    }

    /// Stores a request: queued, and written by a writer with the requests queued beside it.
    async fn create_grouped(&self, request: NewRequest) -> Result<CreateOutcome, StoreError> {
        let (reply, mut answer) = oneshot::channel();
        let (ticket, start_writer) = self.accepts.push(request, reply);
        if start_writer {
            // Its own task: a client that goes away must not stop the writes of others.
            let store = self.clone();
            tokio::spawn(async move { store.write_accepts().await });
        }
        let stopped = |_| {
            Err(StoreError::Unavailable(
                "the request was not stored: its writer stopped (is the daemon shutting down?); try again".into(),
            ))
        };
        match tokio::time::timeout(self.accept_wait, &mut answer).await {
            Ok(outcome) => outcome.unwrap_or_else(stopped),
            // Every writer is stuck (a stalled database): give up as a lone request gives up
            // on the pool, if no writer has taken it yet; then nothing was stored.
            Err(_) if self.accepts.withdraw(ticket) => Err(StoreError::Unavailable(format!(
                "the database took no new request for {} s (every writer is busy or stuck); nothing was stored, try again",
                self.accept_wait.as_secs_f64()
            ))),
            // A writer has it: its transaction decides, and the answer says how it went.
            Err(_) => answer.await.unwrap_or_else(stopped),
        }
    }

    /// A writer: writes queued batches until the queue is empty.
    async fn write_accepts(self) {
        let mut slot = self.accepts.slot();
        while let Some(batch) = self.accepts.take(&mut slot) {
            self.write_group(batch, false).await;
        }
    }

    /// Writes `batch` in one transaction and answers each of its requests. When a statement
    /// fails (an idempotency key already taken, the same new key twice, a fault), nothing was
    /// stored and the batch is written again in halves, down to requests written alone (which
    /// get exactly the answer they would have had alone). One bad request among n so costs
    /// about 2·log2(n) transactions, not n: a client retrying with its idempotency key does
    /// not turn the batch it lands in into a hundred single transactions. `again` marks a
    /// part of a failed batch (counted in [`AcceptStats::rewrites`]).
    fn write_group(&self, mut batch: Vec<Job>, again: bool) -> BoxFuture<'_, ()> {
        async move {
            if again {
                self.accepts.count_rewrite();
            }
            if batch.len() <= 1 {
                // (Empty when every client of a batch went away before it was taken.)
                if let Some(job) = batch.pop() {
                    let outcome = self.create_one(job.request).await;
                    let _ = job.reply.send(outcome);
                }
                return;
            }
            match self.insert_batch(&batch).await {
                Ok(created_at) => {
                    for job in batch {
                        let _ = job.reply.send(Ok(created(job.request, created_at)));
                    }
                }
                Err(BatchFailed::BeforeCommit) => {
                    let second = batch.split_off(batch.len() / 2);
                    futures::join!(
                        self.write_group(batch, true),
                        self.write_group(second, true)
                    );
                }
                Err(BatchFailed::NoConnection(err) | BatchFailed::Commit(err)) => {
                    for job in batch {
                        let _ = job.reply.send(Err(err.clone()));
                    }
                }
            }
        }
        .boxed()
    }

    /// Writes a batch's requests and outbox events in one transaction.
    async fn insert_batch(&self, batch: &[Job]) -> Result<DateTime<Utc>, BatchFailed> {
        let created_at = now_micros();
        let unavailable = |e| BatchFailed::NoConnection(classify(e));
        let payloads = batch
            .iter()
            .map(|job| job.request.event_payload())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| BatchFailed::BeforeCommit)?;
        let route = Route::now(&self.direct);
        let mut tx = begin(&self.pool).await.map_err(unavailable)?;
        let mut requests: QueryBuilder<'_, MySql> = QueryBuilder::new(
            "INSERT INTO prime_check_requests (id, number, email, idempotency_key, request_id, created_at, owner) ",
        );
        requests.push_values(batch, |mut row, job| {
            let r = &job.request;
            row.push_bind(&r.id)
                .push_bind(&r.number)
                .push_bind(&r.email)
                .push_bind(&r.idempotency_key)
                .push_bind(&r.request_id)
                .push_bind(created_at)
                .push_bind(&r.owner);
        });
        let mut events: QueryBuilder<'_, MySql> = QueryBuilder::new(
            "INSERT INTO outbox (event_id, subject, payload, request_id, traceparent, max_retries, created_at, next_retry_at) ",
        );
        events.push_values(batch.iter().zip(&payloads), |mut row, (job, payload)| {
            let r = &job.request;
            row.push_bind(&r.event_id)
                .push_bind(SUBJECT_PRIMECHECK_REQUESTED)
                .push_bind(payload)
                .push_bind(&r.request_id)
                .push_bind(&r.traceparent)
                .push_bind(self.outbox_max_retries)
                .push_bind(created_at)
                .push("NOW(6) + INTERVAL ")
                .push_bind_unseparated(route.delay_us())
                .push_unseparated(" MICROSECOND");
        });
        let written = match requests.build().execute(&mut *tx).await {
            Ok(_) => events.build().execute(&mut *tx).await.map(|_| ()),
            Err(err) => Err(err),
        };
        if written.is_err() {
            // Explicitly, so that no lock outlives the batch while its requests are retried.
            let _ = tx.rollback().await;
            return Err(BatchFailed::BeforeCommit);
        }
        tx.commit()
            .await
            .map_err(|e| BatchFailed::Commit(classify(e)))?;
        route.committed(|| {
            batch
                .iter()
                .zip(&payloads)
                .map(|(job, payload)| requested_message(&job.request, payload))
                .collect()
        });
        Ok(created_at)
    }

    async fn create_one(&self, req: NewRequest) -> Result<CreateOutcome, StoreError> {
        let created_at = now_micros();
        let payload = req
            .event_payload()
            .map_err(|e| StoreError::Rejected(e.to_string()))?;
        let mut tx = begin(&self.pool).await.map_err(classify)?;
        let inserted = sqlx::query(
            "INSERT INTO prime_check_requests (id, number, email, idempotency_key, request_id, created_at, owner) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&req.id)
        .bind(&req.number)
        .bind(&req.email)
        .bind(&req.idempotency_key)
        .bind(&req.request_id)
        .bind(created_at)
        .bind(&req.owner)
        .execute(&mut *tx)
        .await;
        if let Err(err) = inserted {
            let duplicate = matches!(&err, sqlx::Error::Database(db) if db.is_unique_violation());
            // Roll back and give the connection back before looking up the first request:
            // holding it while asking the pool for another can exhaust the pool under a
            // burst of repeats.
            let _ = tx.rollback().await;
            return match (&req.idempotency_key, duplicate) {
                (Some(key), true) => self.existing(key, &req).await,
                _ => Err(classify(err)),
            };
        }
        let route = Route::now(&self.direct);
        let outboxed = sqlx::query(
            "INSERT INTO outbox (event_id, subject, payload, request_id, traceparent, max_retries, created_at, next_retry_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, NOW(6) + INTERVAL ? MICROSECOND)",
        )
        .bind(&req.event_id)
        .bind(SUBJECT_PRIMECHECK_REQUESTED)
        .bind(&payload)
        .bind(&req.request_id)
        .bind(&req.traceparent)
        .bind(self.outbox_max_retries)
        .bind(created_at)
        .bind(route.delay_us())
        .execute(&mut *tx)
        .await;
        if let Err(err) = outboxed {
            // Explicitly, so that no lock outlives the failed request.
            let _ = tx.rollback().await;
            return Err(classify(err));
        }
        tx.commit().await.map_err(classify)?;
        route.committed(|| vec![requested_message(&req, &payload)]);
        Ok(created(req, created_at))
    }

    async fn existing(&self, key: &str, req: &NewRequest) -> Result<CreateOutcome, StoreError> {
        let row = sqlx::query(&format!("{SELECT_REQUEST} WHERE idempotency_key = ?"))
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        let Some(row) = row else {
            return Err(StoreError::Unavailable(
                "the request with this idempotency key disappeared; try again".into(),
            ));
        };
        let first = request_from_row(&row)?;
        if first.number == req.number && first.email == req.email {
            Ok(CreateOutcome::Existing(first))
        } else {
            Ok(CreateOutcome::KeyConflict(first))
        }
    }

    async fn claim_inner(&self, limit: u32) -> Result<Claim, StoreError> {
        let (floor, sweep) = self.floor.next();
        if sweep {
            // On its own, not in the claim's transaction: two relays sweeping the same row
            // must not hold each other up for a whole round.
            sqlx::query(SWEEP_SQL)
                .execute(&self.pool)
                .await
                .map_err(classify)?;
        }
        let mut tx = begin(&self.pool).await.map_err(classify)?;
        let sql = if floor > 0 {
            CLAIM_ABOVE_FLOOR_SQL
        } else {
            CLAIM_SQL
        };
        let rows = sqlx::query(sql)
            .bind(floor)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
        if rows.is_empty() {
            self.floor.record(limit, &[]);
            tx.rollback().await.map_err(classify)?;
            return Ok(Claim::empty());
        }
        let events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.floor.record(limit, &events);
        Ok(Claim::new(events, Box::new(HeldClaim { tx })))
    }
}

/// The rows of one claim, locked by an open transaction until the round settles them.
struct HeldClaim {
    tx: sqlx::Transaction<'static, MySql>,
}

impl Settle for HeldClaim {
    fn settle<'a>(
        self: Box<Self>,
        published: &'a [i64],
        failures: &'a [PublishFailure],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let mut tx = self.tx;
            if !published.is_empty() {
                let mut q: QueryBuilder<'_, MySql> = QueryBuilder::new(
                    "UPDATE outbox SET state = 'published', published_at = NOW(6), error_message = NULL \
                     WHERE ",
                );
                push_id_set(&mut q, published);
                q.build().execute(&mut *tx).await.map_err(classify)?;
            }
            record_failures(&mut tx, failures).await?;
            tx.commit().await.map_err(classify)
        }
        .boxed()
    }
}

/// Records failed publishes: a retry time, or a move to the dead-letter table (with its
/// hourly statistics).
async fn record_failures(
    conn: &mut MySqlConnection,
    failures: &[PublishFailure],
) -> Result<(), StoreError> {
    for failure in failures {
        match failure.next_retry_at {
            Some(at) => {
                sqlx::query(
                    "UPDATE outbox SET retry_count = retry_count + ?, next_retry_at = ?, \
                         error_message = ?, last_error_at = NOW(6), claimed_until = NULL \
                         WHERE id = ? AND state = 'pending'",
                )
                .bind(i32::from(failure.counted))
                .bind(at)
                .bind(&failure.error)
                .bind(failure.id)
                .execute(&mut *conn)
                .await
                .map_err(classify)?;
            }
            None => {
                let moved = sqlx::query(
                    "UPDATE outbox SET state = 'dead', retry_count = retry_count + 1, \
                         error_message = ?, last_error_at = NOW(6), claimed_until = NULL \
                         WHERE id = ? AND state = 'pending'",
                )
                .bind(&failure.error)
                .bind(failure.id)
                .execute(&mut *conn)
                .await
                .map_err(classify)?;
                if moved.rows_affected() == 0 {
                    continue;
                }
                sqlx::query(
                        "INSERT INTO dead_letter_messages \
                           (original_subject, original_message_id, dlq_subject, payload, error_message, \
                            error_type, retry_count, original_created_at, last_retry_at, request_id) \
                         SELECT subject, event_id, ?, payload, ?, 'transient', retry_count, created_at, NOW(6), \
                                JSON_UNQUOTE(JSON_EXTRACT(payload, '$.request_id')) \
                         FROM outbox WHERE id = ?",
                    )
                    .bind(DLQ_OUTBOX)
                    .bind(&failure.error)
                    .bind(failure.id)
                    .execute(&mut *conn)
                    .await
                    .map_err(classify)?;
                // A request whose event never reached the broker has failed.
                sqlx::query(
                    "UPDATE prime_check_requests SET status = 'failed', completed_at = NOW(6), \
                       error = CONCAT('its event could not be published: ', ?) \
                     WHERE status = 'pending' AND id = ( \
                       SELECT JSON_UNQUOTE(JSON_EXTRACT(payload, '$.request_id')) FROM outbox \
                       WHERE id = ? AND subject = 'primecheck.requested')",
                )
                .bind(&failure.error)
                .bind(failure.id)
                .execute(&mut *conn)
                .await
                .map_err(classify)?;
                sqlx::query(
                        "INSERT INTO dlq_statistics (date_hour, subject, error_type, count) \
                         VALUES (DATE_FORMAT(UTC_TIMESTAMP(), '%Y-%m-%d %H:00:00'), ?, 'transient', 1) \
                         ON DUPLICATE KEY UPDATE count = count + 1",
                    )
                    .bind(DLQ_OUTBOX)
                    .execute(&mut *conn)
                    .await
                    .map_err(classify)?;
            }
        }
    }
    Ok(())
}

/// The relay's claim through `$index`: due pending rows above the floor, oldest first,
/// skipping rows another relay holds.
macro_rules! claim_sql {
    ($index:literal) => {
        concat!(
            "SELECT id, event_id, subject, payload, request_id, traceparent, \
                    retry_count, max_retries, created_at, dlq_id \
             FROM outbox FORCE INDEX (",
            $index,
            ") WHERE state = 'pending' AND published_at = '1970-01-01 00:00:01' AND id > ? \
               AND (next_retry_at IS NULL OR next_retry_at <= NOW(6)) \
             ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED"
        )
    };
}

/// The claim that looks at every pending row (floor 0), through the state index.
///
/// The index is forced: for `ORDER BY id LIMIT n` the optimizer prefers walking the primary
/// key, which reads every published row still retained (150,000 rows, 80–130 ms per claim,
/// where the index takes 2 ms) before it finds the pending ones. A pending row's
/// `published_at` is the epoch, so the claim reads one prefix of the index, in id order.
pub const CLAIM_SQL: &str = claim_sql!("idx_state_published_id");

/// The claim above a floor (a backlog being worked off), along the primary key: the rows
/// above the highest id claimed are the newest, nearly all pending, so it reads and locks
/// them where they are, without a lookup from the index entry to the row and a lock on each
/// (20–22 µs of MariaDB CPU per claimed and marked event instead of 25, mariadb-client loop,
/// BENCHMARKS.md). It steps over rows other relays published above this one's floor.
pub const CLAIM_ABOVE_FLOOR_SQL: &str = claim_sql!("PRIMARY");

/// Gives a pending row without the epoch in `published_at` the epoch, so the claim sees it.
const SWEEP_SQL: &str = "UPDATE outbox SET published_at = DEFAULT \
                             WHERE state = 'pending' \
                               AND (published_at IS NULL OR published_at > '1970-01-01 00:00:01')";

const SELECT_REQUEST: &str = "SELECT id, number, email, status, is_prime, factor, error, created_at, completed_at, owner \
                              FROM prime_check_requests";

/// `id BETWEEN first AND last` when `ids` is a run of consecutive ids (a claim working off a
/// backlog usually is, and every id in the range is then one of `ids`), else `id IN (…)`:
/// MariaDB builds a range for each listed id, a few percent of a relay round's database time.
fn push_id_set(q: &mut QueryBuilder<'_, MySql>, ids: &[i64]) {
    let consecutive = ids.windows(2).all(|w| w[0].checked_add(1) == Some(w[1]));
    match (ids.first(), ids.last()) {
        (Some(&first), Some(&last)) if consecutive => {
            q.push("id BETWEEN ")
                .push_bind(first)
                .push(" AND ")
                .push_bind(last);
        }
        _ => {
            q.push("id IN (");
            push_ids(q, ids.iter().copied());
        }
    }
}

pub(crate) fn push_ids(q: &mut QueryBuilder<'_, MySql>, ids: impl Iterator<Item = i64>) {
    let mut sep = q.separated(", ");
    for id in ids {
        sep.push_bind(id);
    }
    sep.push_unseparated(")");
}

pub(crate) fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

fn request_from_row(row: &MySqlRow) -> Result<PrimeRequest, StoreError> {
    let status: String = row.try_get("status").map_err(classify)?;
    Ok(PrimeRequest {
        id: row.try_get("id").map_err(classify)?,
        number: row.try_get("number").map_err(classify)?,
        email: row.try_get("email").map_err(classify)?,
        status: RequestStatus::parse(&status)
            .ok_or_else(|| StoreError::Rejected(format!("unknown request status {status:?}")))?,
        is_prime: row.try_get("is_prime").map_err(classify)?,
        factor: row.try_get("factor").map_err(classify)?,
        error: row.try_get("error").map_err(classify)?,
        created_at: row.try_get("created_at").map_err(classify)?,
        completed_at: row.try_get("completed_at").map_err(classify)?,
        owner: row.try_get("owner").map_err(classify)?,
    })
}

fn event_from_row(row: &MySqlRow) -> Result<OutboxEvent, StoreError> {
    // By position, in the order of `claim_sql!`: a claim decodes thousands of rows, and a
    // lookup by name hashes every column name of every row. The payload comes as the stored
    // bytes, not through a CAST in the database (a quarter of the claim's cost there). It is
    // read unchecked because its column type differs: LONGTEXT on MariaDB, JSON on MySQL 8,
    // which sqlx matches with no Rust type; both servers send it as text.
    let retry_count: i32 = row.try_get(6).map_err(classify)?;
    let max_retries: i32 = row.try_get(7).map_err(classify)?;
    Ok(OutboxEvent {
        id: row.try_get(0).map_err(classify)?,
        event_id: row.try_get(1).map_err(classify)?,
        subject: row.try_get(2).map_err(classify)?,
        payload: row.try_get_unchecked(3).map_err(classify)?,
        request_id: row.try_get(4).map_err(classify)?,
        traceparent: row.try_get(5).map_err(classify)?,
        retry_count: retry_count.max(0) as u32,
        max_retries: max_retries.max(0) as u32,
        created_at: row.try_get(8).map_err(classify)?,
        dlq_id: row.try_get(9).map_err(classify)?,
    })
}

/// Maps a driver error to the port's error: connection trouble, timeouts, deadlocks and
/// lock-wait timeouts can succeed later; anything else is refused.
pub(crate) fn classify(err: sqlx::Error) -> StoreError {
    note(&err);
    match &err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(err.to_string()),
        sqlx::Error::Database(db) => {
            // 1205 lock wait timeout, 1213 deadlock, 1927/2006/2013 connection lost,
            // 1040 too many connections, 1053 server shutdown.
            let transient = db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|e| {
                    matches!(e.number(), 1205 | 1213 | 1927 | 2006 | 2013 | 1040 | 1053)
                });
            if transient {
                StoreError::Unavailable(err.to_string())
            } else {
                StoreError::Rejected(err.to_string())
            }
        }
        _ => StoreError::Rejected(err.to_string()),
    }
}

/// The answer for a request just stored.
fn created(req: NewRequest, created_at: DateTime<Utc>) -> CreateOutcome {
    CreateOutcome::Created(PrimeRequest::pending(req, created_at))
}

/// Why a batch of accepted requests was not stored.
enum BatchFailed {
    /// No connection (the pool timed out, the database is down): nothing was stored, and
    /// writing each request on its own would only wait as long again.
    NoConnection(StoreError),
    /// A statement failed: nothing was stored, and the batch may be written again in parts.
    BeforeCommit,
    /// The commit failed: the batch may or may not be stored.
    Commit(StoreError),
}

fn redact(message: &str, url: &Secret) -> String {
    message.replace(url.expose(), "<DATABASE_URL>")
}

impl RequestStore for MysqlStore {
    fn create(&self, request: NewRequest) -> BoxFuture<'_, Result<CreateOutcome, StoreError>> {
        self.create_grouped(request).boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<PrimeRequest>, StoreError>> {
        async move {
            let row = sqlx::query(&format!("{SELECT_REQUEST} WHERE id = ?"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(classify)?;
            row.as_ref().map(request_from_row).transpose()
        }
        .boxed()
    }

    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<PrimeRequest>, StoreError>> {
        async move {
            let mut q: QueryBuilder<'_, MySql> = QueryBuilder::new(SELECT_REQUEST);
            q.push(" WHERE 1 = 1");
            if let Some(status) = query.status {
                q.push(" AND status = ").push_bind(status.as_str());
            }
            if let Some(before) = &query.before {
                q.push(" AND id < ").push_bind(before.clone());
            }
            if let Some(owner) = &query.owner {
                q.push(" AND owner = ").push_bind(owner.clone());
            }
            q.push(" ORDER BY id DESC LIMIT ").push_bind(query.limit);
            let rows = q.build().fetch_all(&self.pool).await.map_err(classify)?;
            rows.iter().map(request_from_row).collect()
        }
        .boxed()
    }
}

impl OutboxStore for MysqlStore {
    fn claim(&self, limit: u32, _lease: Duration) -> BoxFuture<'_, Result<Claim, StoreError>> {
        // The open transaction is the claim; no lease is written.
        self.claim_inner(limit).boxed()
    }

    fn prune_published(&self, before: DateTime<Utc>) -> BoxFuture<'_, Result<u64, StoreError>> {
        async move {
            let mut total = 0;
            loop {
                let done = sqlx::query(
                    "DELETE FROM outbox WHERE state = 'published' AND published_at < ? ORDER BY published_at LIMIT 5000",
                )
                .bind(before)
                .execute(&self.pool)
                .await
                .map_err(classify)?
                .rows_affected();
                total += done;
                if done < 5000 {
                    return Ok(total);
                }
            }
        }
        .boxed()
    }

    fn replay_since(&self, since: DateTime<Utc>) -> BoxFuture<'_, Result<u64, StoreError>> {
        async move {
            let done = sqlx::query(
                "UPDATE outbox SET state = 'pending', published_at = DEFAULT, next_retry_at = NULL, \
                 claimed_until = NULL WHERE state = 'published' AND published_at >= ?",
            )
            .bind(since)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
            Ok(done.rows_affected())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(ids: &[i64]) -> String {
        let mut q: QueryBuilder<'_, MySql> = QueryBuilder::new("");
        push_id_set(&mut q, ids);
        q.sql().to_string()
    }

    #[test]
    fn a_run_of_consecutive_ids_is_marked_as_a_range() {
        assert_eq!(condition(&[7, 8, 9, 10]), "id BETWEEN ? AND ?");
        assert_eq!(condition(&[7]), "id BETWEEN ? AND ?");
    }

    #[test]
    fn ids_with_a_gap_are_listed() {
        // A row between them (another relay's, or not committed yet) must not be marked.
        assert_eq!(condition(&[7, 8, 10]), "id IN (?, ?, ?)");
        assert_eq!(condition(&[10, 9, 8]), "id IN (?, ?, ?)");
        assert_eq!(condition(&[7, 7]), "id IN (?, ?)");
    }
}
