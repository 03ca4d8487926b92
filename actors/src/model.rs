//! The pipeline's data: requests, their results, and the events that move them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Subject of the event that asks for a primality check.
pub const SUBJECT_PRIMECHECK_REQUESTED: &str = "primecheck.requested";
/// Subject of the event that asks for the result email.
pub const SUBJECT_EMAIL_SEND: &str = "email.send";
/// DLQ subject for events the outbox relay could not publish.
pub const DLQ_OUTBOX: &str = "dlq.outbox";

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Accepted, not yet checked.
    Pending,
    /// Checked; the result is set.
    Done,
    /// Could not be checked (it is in the DLQ).
    Failed,
}

impl RequestStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Done => "done",
            RequestStatus::Failed => "failed",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(RequestStatus::Pending),
            "done" => Some(RequestStatus::Done),
            "failed" => Some(RequestStatus::Failed),
            _ => None,
        }
    }
}

/// A validated request about to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRequest {
    /// Its id (a UUIDv7, so ids sort by creation).
    pub id: String,
    /// The number, as decimal digits without leading zeros.
    pub number: String,
    /// Where the result goes.
    pub email: String,
    /// The client's `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
    /// Correlation id of the HTTP request.
    pub request_id: Option<String>,
    /// W3C trace context of the HTTP request.
    pub traceparent: Option<String>,
    /// The event id of its `primecheck.requested` outbox row.
    pub event_id: String,
}

/// A stored request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrimeRequest {
    /// Its id.
    pub id: String,
    /// The number.
    pub number: String,
    /// Where the result goes.
    pub email: String,
    /// Where it is.
    pub status: RequestStatus,
    /// The answer, once done.
    pub is_prime: Option<bool>,
    /// The smallest factor found, when composite.
    pub factor: Option<String>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When it was done or failed.
    pub completed_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
}

/// What storing a request did.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// Stored, with its outbox event.
    Created(PrimeRequest),
    /// The idempotency key was used before for the same request: the first one.
    Existing(PrimeRequest),
    /// The idempotency key was used before for a different request.
    KeyConflict(PrimeRequest),
}

/// The payload of `primecheck.requested`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimeCheckRequested {
    /// The request's id.
    pub request_id: String,
    /// The number.
    pub number: String,
    /// Where the result goes.
    pub email: String,
}

/// One page of requests, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    /// Only this status.
    pub status: Option<RequestStatus>,
    /// At most this many.
    pub limit: u32,
    /// Only requests older than this id (the previous page's last id).
    pub before: Option<String>,
}

/// An outbox row claimed for publishing.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// Row id.
    pub id: i64,
    /// Event id (the broker's dedupe key).
    pub event_id: String,
    /// Subject.
    pub subject: String,
    /// JSON payload.
    pub payload: Vec<u8>,
    /// Correlation id.
    pub request_id: Option<String>,
    /// Trace context.
    pub traceparent: Option<String>,
    /// Failed publish attempts so far.
    pub retry_count: u32,
    /// Failed attempts allowed before the event is dead-lettered.
    pub max_retries: u32,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// A failed publish to record.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishFailure {
    /// Row id.
    pub id: i64,
    /// What went wrong.
    pub error: String,
    /// When to try again; `None` moves the event to the dead-letter table.
    pub next_retry_at: Option<DateTime<Utc>>,
}
