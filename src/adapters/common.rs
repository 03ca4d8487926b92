//! Helpers the SQL adapters share.

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
