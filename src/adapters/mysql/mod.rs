//! The MySQL / MariaDB store: requests, the outbox and dead letters.
//!
//! A claim is a READ COMMITTED transaction holding its rows with `SELECT … FOR UPDATE SKIP
//! LOCKED`: other relays skip them, and the round marks them in the same transaction, so
//! each event is written once. If the daemon dies mid-round the transaction rolls back and
//! the rows are claimed again (JetStream drops the duplicate publish). READ COMMITTED takes
//! no gap locks, so a held claim never blocks the API's inserts. Times come from the
//! database clock (`NOW(6)`), which all daemons share.

mod accept;
mod outbox;

pub use outbox::{CLAIM_ABOVE_FLOOR_SQL, CLAIM_SQL};
use outbox::{ClaimFloor, Marks};
pub mod workers;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use actors::model::{
    CreateOutcome, ListQuery, NewRequest, PrimeRequest, SUBJECT_PRIMECHECK_REQUESTED,
};
use actors::{RequestStore, StoreError};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlQueryResult, MySqlRow};
use sqlx::{MySql, QueryBuilder, Row};
use tokio::sync::oneshot;

use crate::adapters::sql::{Backend, Dialect, Driver, Inserted, Shared};
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
    match crate::adapters::waiting(pool.begin()).await {
        Err(err) if connection_lost(&err) => {
            note(&err);
            crate::adapters::waiting(pool.begin()).await
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

    /// What its fast path has done so far (None until [`MysqlStore::publish_directly`]).
    pub fn direct_stats(&self) -> Option<&actors::direct::DirectStats> {
        self.direct.get().map(actors::DirectPublisher::stats)
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

    /// The dead-letter queue, the health rows and the records both stores share.
    pub fn shared(&self) -> Shared<MySql> {
        Shared::new(self.pool.clone())
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
        let tx = begin(&self.pool).await.map_err(classify)?;
        let mut tx = match self.shared().insert_request(tx, &req, created_at).await? {
            Inserted::New(tx) => tx,
            Inserted::Existing(outcome) => return Ok(outcome),
        };
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
        async move { self.shared().request(id).await }.boxed()
    }

    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<PrimeRequest>, StoreError>> {
        async move { self.shared().requests(&query).await }.boxed()
    }
}

impl Driver for MySql {
    type Time = Option<DateTime<Utc>>;

    fn store_time(at: Option<DateTime<Utc>>) -> Self::Time {
        at
    }

    fn read_time(row: &MySqlRow, name: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        row.try_get(name)
    }

    fn error(err: sqlx::Error) -> StoreError {
        classify(err)
    }
}

impl Backend for MySql {
    const DIALECT: Dialect = Dialect::Mysql;

    fn last_insert_id(done: &MySqlQueryResult) -> i64 {
        i64::try_from(done.last_insert_id()).unwrap_or(i64::MAX)
    }

    fn rows_affected(done: &MySqlQueryResult) -> u64 {
        done.rows_affected()
    }

    fn begin(
        pool: &MySqlPool,
    ) -> BoxFuture<'_, Result<sqlx::Transaction<'static, MySql>, StoreError>> {
        async move { begin(pool).await.map_err(classify) }.boxed()
    }
}
