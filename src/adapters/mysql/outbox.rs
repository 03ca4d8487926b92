//! The MySQL store's outbox: the relay's claims (a transaction holding the rows it locked
//! until the round settles them), the floor that keeps claims off the index's delete-marked
//! entries, the marks of the fast path, failed publishes and retention.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use actors::model::{DLQ_OUTBOX, OutboxEvent, PublishFailure};
use actors::{Claim, OutboxStore, Settle, StoreError};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::mysql::{MySqlConnection, MySqlPool, MySqlRow};
use sqlx::{MySql, QueryBuilder, Row};

use super::{MysqlStore, begin, classify, push_ids};

/// Marks rows published by event id, for the fast path.
pub(super) struct Marks(pub(super) MySqlPool);

impl Marks {
    /// Runs `update` (an `UPDATE outbox … WHERE … AND event_id IN (`) over `event_ids`;
    /// returns the rows it changed.
    async fn by_event_ids(&self, update: &str, event_ids: &[String]) -> Result<u64, StoreError> {
        let mut q: QueryBuilder<'_, MySql> = QueryBuilder::new(update);
        let mut list = q.separated(", ");
        for id in event_ids {
            list.push_bind(id);
        }
        q.push(")");
        let done = q.build().execute(&self.0).await.map_err(classify)?;
        Ok(done.rows_affected())
    }
}

impl actors::OutboxMarks for Marks {
    fn mark_published<'a>(
        &'a self,
        event_ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.by_event_ids(
            "UPDATE outbox SET state = 'published', published_at = NOW(6), error_message = NULL \
             WHERE state = 'pending' AND event_id IN (",
            event_ids,
        )
        .boxed()
    }

    fn due_now<'a>(&'a self, event_ids: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.by_event_ids(
            "UPDATE outbox SET next_retry_at = NOW(6) \
             WHERE state = 'pending' AND next_retry_at > NOW(6) AND event_id IN (",
            event_ids,
        )
        .boxed()
    }
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
pub(super) struct ClaimFloor {
    id: AtomicI64,
    full_at: Mutex<Instant>,
}

impl ClaimFloor {
    pub(super) fn new() -> Self {
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

impl MysqlStore {
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
