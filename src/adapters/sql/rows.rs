//! Small helpers on what the SQL stores read: duplicate keys, payloads, health rows, histories.

use actors::model::DlqActionResult;

/// A unique-key violation: the row (an event id, an email record) exists already.
pub(crate) fn is_duplicate(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// The JSON stored for a dead letter's payload: the payload itself when it is JSON, else a
/// wrapper with its text (poison messages).
pub(crate) fn json_payload(payload: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(_) => String::from_utf8_lossy(payload).into_owned(),
        Err(_) => {
            serde_json::json!({ "undecodable": String::from_utf8_lossy(payload) }).to_string()
        }
    }
}

/// A DLQ action that was not carried out, and why.
pub(crate) fn refused(id: i64, why: &str) -> DlqActionResult {
    DlqActionResult {
        id,
        ok: false,
        error: Some(why.to_string()),
        event_id: None,
    }
}

/// A `worker_health_checks` row as read: name, status, last heartbeat, error, metadata.
pub(crate) type HealthRow = (
    String,
    String,
    chrono::DateTime<chrono::Utc>,
    Option<String>,
    Option<String>,
);

/// The rows of `worker_health_checks`, as the port describes them.
pub(crate) fn health_rows(rows: Vec<HealthRow>) -> Vec<actors::WorkerHealth> {
    rows.into_iter()
        .map(
            |(worker_name, status, last_heartbeat, error_message, metadata)| actors::WorkerHealth {
                worker_name,
                healthy: status == "healthy",
                last_heartbeat,
                error_message,
                metadata: metadata
                    .and_then(|m| serde_json::from_str(&m).ok())
                    .unwrap_or(serde_json::Value::Null),
            },
        )
        .collect()
}

/// A `message_processing_logs` row as read: subject, status, error, time taken, when.
pub(crate) type LogRow = (
    String,
    String,
    Option<String>,
    Option<i64>,
    chrono::DateTime<chrono::Utc>,
);

/// A dead letter's history from its log rows and its outbox row's trace context.
pub(crate) fn letter_history(
    rows: Vec<LogRow>,
    traceparent: Option<Option<String>>,
) -> actors::model::LetterHistory {
    actors::model::LetterHistory {
        attempts: rows
            .into_iter()
            .map(|(subject, status, error_message, processing_time_ms, at)| {
                actors::model::HistoryEntry {
                    subject,
                    status,
                    error_message,
                    processing_time_ms,
                    at,
                }
            })
            .collect(),
        traceparent: traceparent.flatten(),
    }
}
