//! The MySQL store's dead-letter queue: dead letters with their hourly statistics, their
//! listing and filters, reprocessing (back through the outbox) and discarding.

use std::collections::BTreeMap;

use actors::model::{
    DeadLetter, DlqActionResult, DlqBucket, DlqQuery, DlqStats, DlqStatus, ErrorClass,
    NewDeadLetter, Reprocess, dlq_subject,
};
use actors::{DlqStore, StoreError};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlConnection, QueryBuilder, Row};

use super::{MysqlStore, begin, classify};
use crate::adapters::common::{LogRow, json_payload, letter_history, refused};

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

impl MysqlStore {
    pub(super) async fn dead_letter_inner(
        &self,
        l: NewDeadLetter,
    ) -> Result<Option<i64>, StoreError> {
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

/// The first and last instants a MySQL `TIMESTAMP` column holds.
fn timestamp_range() -> (DateTime<Utc>, DateTime<Utc>) {
    (
        DateTime::from_timestamp(1, 0).unwrap_or(DateTime::UNIX_EPOCH),
        DateTime::from_timestamp(i64::from(i32::MAX), 0).unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}
