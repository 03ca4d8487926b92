//! The requests as the API lists them, and the workers' small records: events processed,
//! attempt logs, health rows. Written once for both stores.

use actors::model::{
    AttemptLog, CreateOutcome, ListQuery, NewRequest, PrimeRequest, RequestStatus,
};
use actors::{StoreError, WorkerHealth};

use chrono::{DateTime, Utc};

use super::{Arg, Columns, Dialect, Sql};

impl Dialect {
    /// `INSERT …`'s tail that updates `columns` of the row whose unique `key` exists already.
    fn upsert(self, key: &str, columns: &[&str]) -> String {
        match self {
            Dialect::Mysql => format!(
                " ON DUPLICATE KEY UPDATE {}",
                columns
                    .iter()
                    .map(|c| format!("{c} = VALUES({c})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Dialect::Sqlite => format!(
                " ON CONFLICT ({key}) DO UPDATE SET {}",
                columns
                    .iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// `SELECT` of every column a [`PrimeRequest`] is read from (see [`request`]).
pub(crate) fn select_requests(d: Dialect) -> Sql {
    Sql::new(
        d,
        "SELECT id, number, email, status, is_prime, factor, error, created_at, completed_at, owner \
         FROM prime_check_requests",
    )
}

/// A request read from a row of [`select_requests`].
pub(crate) fn request(row: &impl Columns) -> Result<PrimeRequest, StoreError> {
    let status = row.required_text("status")?;
    Ok(PrimeRequest {
        id: row.required_text("id")?,
        number: row.required_text("number")?,
        email: row.required_text("email")?,
        status: RequestStatus::parse(&status)
            .ok_or_else(|| StoreError::Rejected(format!("unknown request status {status:?}")))?,
        is_prime: row.int("is_prime")?.map(|v| v != 0),
        factor: row.text("factor")?,
        error: row.text("error")?,
        created_at: row.time("created_at")?.unwrap_or_default(),
        completed_at: row.time("completed_at")?,
        owner: row.text("owner")?,
    })
}

/// One request by id.
pub(crate) fn request_by_id(d: Dialect, id: &str) -> Sql {
    let mut q = select_requests(d);
    q.push(" WHERE id = ").bind(id);
    q
}

/// A new request, accepted at `created_at`.
pub(crate) fn insert_request(d: Dialect, req: &NewRequest, created_at: DateTime<Utc>) -> Sql {
    let mut q = Sql::new(
        d,
        "INSERT INTO prime_check_requests \
         (id, number, email, idempotency_key, request_id, created_at, owner) VALUES ",
    );
    q.list([
        Arg::from(&req.id),
        Arg::from(&req.number),
        Arg::from(&req.email),
        Arg::from(&req.idempotency_key),
        Arg::from(&req.request_id),
        Arg::from(created_at),
        Arg::from(&req.owner),
    ]);
    q
}

/// The request stored under an idempotency key.
pub(crate) fn request_by_key(d: Dialect, key: &str) -> Sql {
    let mut q = select_requests(d);
    q.push(" WHERE idempotency_key = ").bind(key);
    q
}

/// The outcome of `req` when `first` was stored under the same idempotency key: the same
/// request again, or a different one reusing the key.
pub(crate) fn existing(first: PrimeRequest, req: &NewRequest) -> CreateOutcome {
    if first.number == req.number && first.email == req.email {
        CreateOutcome::Existing(first)
    } else {
        CreateOutcome::KeyConflict(first)
    }
}

/// The listing of `query`, newest first.
pub(crate) fn requests(d: Dialect, query: &ListQuery) -> Sql {
    let mut q = select_requests(d);
    q.push(" WHERE 1 = 1");
    if let Some(status) = query.status {
        q.push(" AND status = ").bind(status.as_str());
    }
    if let Some(before) = &query.before {
        q.push(" AND id < ").bind(before);
    }
    if let Some(owner) = &query.owner {
        q.push(" AND owner = ").bind(owner);
    }
    q.push(" ORDER BY id DESC LIMIT ").bind(query.limit);
    q
}

/// A row when `consumer` has processed event `event_id`.
pub(crate) fn processed(d: Dialect, event_id: &str, consumer: &str) -> Sql {
    let mut q = Sql::new(d, "SELECT 1 FROM processed_events WHERE event_id = ");
    q.bind(event_id).push(" AND consumer = ").bind(consumer);
    q
}

/// The attempt logs, in one statement (`logs` is not empty).
pub(crate) fn log_attempts(d: Dialect, logs: &[AttemptLog]) -> Sql {
    let mut q = Sql::new(
        d,
        "INSERT INTO message_processing_logs \
         (message_id, subject, status, error_message, processing_time_ms, created_at) VALUES ",
    );
    for (i, log) in logs.iter().enumerate() {
        q.push(if i == 0 { "(" } else { ", (" })
            .bind(&log.message_id)
            .push(", ")
            .bind(&log.subject)
            .push(", ")
            .bind(log.status.as_str())
            .push(", ")
            .bind(&log.error)
            .push(", ")
            .bind(i64::try_from(log.processing_time.as_millis()).unwrap_or(i64::MAX))
            .push(", ")
            .now()
            .push(")");
    }
    q
}

/// This daemon's workers' health rows, written or replaced (`rows` is not empty).
pub(crate) fn upsert_health(d: Dialect, rows: &[WorkerHealth]) -> Sql {
    let mut q = Sql::new(
        d,
        "INSERT INTO worker_health_checks \
         (worker_name, status, last_heartbeat, error_message, metadata, created_at, updated_at) VALUES ",
    );
    for (i, r) in rows.iter().enumerate() {
        q.push(if i == 0 { "(" } else { ", (" })
            .bind(&r.worker_name)
            .push(", ")
            .bind(if r.healthy { "healthy" } else { "unhealthy" })
            .push(", ")
            .bind(r.last_heartbeat)
            .push(", ")
            .bind(r.error_message.as_deref())
            .push(", ")
            .bind(r.metadata.to_string())
            .push(", ")
            .now()
            .push(", ")
            .now()
            .push(")");
    }
    q.push(&d.upsert(
        "worker_name",
        &[
            "status",
            "last_heartbeat",
            "error_message",
            "metadata",
            "updated_at",
        ],
    ));
    q
}

/// Every worker's health row (see [`health`]).
pub(crate) fn list_health(d: Dialect) -> Sql {
    Sql::new(
        d,
        &format!(
            "SELECT worker_name, {} AS status, last_heartbeat, error_message, {} AS metadata \
             FROM worker_health_checks ORDER BY worker_name LIMIT 5000",
            d.text_of("status"),
            d.text_of("metadata"),
        ),
    )
}

/// A health row of [`list_health`].
pub(crate) fn health(row: &impl Columns) -> Result<super::rows::HealthRow, StoreError> {
    Ok((
        row.required_text("worker_name")?,
        row.required_text("status")?,
        row.time("last_heartbeat")?.unwrap_or_default(),
        row.text("error_message")?,
        row.text("metadata")?,
    ))
}

/// One more crash caused by the message `event_id`, with its message.
pub(crate) fn crash(d: Dialect, event_id: &str, error: &str) -> Sql {
    let mut q = Sql::new(
        d,
        "INSERT INTO message_crashes (event_id, crashes, last_error, updated_at) VALUES (",
    );
    q.bind(event_id)
        .push(", 1, ")
        .bind(error)
        .push(", ")
        .now()
        .push(")");
    q.push(match d {
        Dialect::Mysql => {
            " ON DUPLICATE KEY UPDATE crashes = crashes + 1, last_error = VALUES(last_error), \
             updated_at = VALUES(updated_at)"
        }
        Dialect::Sqlite => {
            " ON CONFLICT (event_id) DO UPDATE SET crashes = crashes + 1, \
             last_error = excluded.last_error, updated_at = excluded.updated_at"
        }
    });
    q
}

/// The crashes caused by the message `event_id`, as a row `crashes`, `last_error`.
pub(crate) fn crashes(d: Dialect, event_id: &str) -> Sql {
    let mut q = Sql::new(
        d,
        "SELECT crashes, last_error FROM message_crashes WHERE event_id = ",
    );
    q.bind(event_id);
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upsert_replaces_the_columns_in_each_dialect() {
        assert_eq!(
            Dialect::Mysql.upsert("k", &["a", "b"]),
            " ON DUPLICATE KEY UPDATE a = VALUES(a), b = VALUES(b)"
        );
        assert_eq!(
            Dialect::Sqlite.upsert("k", &["a", "b"]),
            " ON CONFLICT (k) DO UPDATE SET a = excluded.a, b = excluded.b"
        );
    }
}
