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
    /// The `sub` of the user token it came with; none: anonymous (or an admin or service).
    pub owner: Option<String>,
}

impl NewRequest {
    /// The JSON payload of its `primecheck.requested` event.
    pub fn event_payload(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&PrimeCheckRequested {
            request_id: self.id.clone(),
            number: self.number.clone(),
            email: self.email.clone(),
        })
    }
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
    /// The `sub` of the user token it came with, if any.
    pub owner: Option<String>,
}

impl PrimeRequest {
    /// `request` as just stored at `created_at`: pending, nothing known yet.
    pub fn pending(request: NewRequest, created_at: DateTime<Utc>) -> Self {
        Self {
            id: request.id,
            number: request.number,
            email: request.email,
            owner: request.owner,
            status: RequestStatus::Pending,
            is_prime: None,
            factor: None,
            created_at,
            completed_at: None,
            error: None,
        }
    }
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
    /// Only the requests of this user (a token's `sub`); none: everyone's (admin).
    pub owner: Option<String>,
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
    /// The dead letter this event reprocesses.
    pub dlq_id: Option<i64>,
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
    /// Whether it spends one of the event's retries (`false` while the broker itself is
    /// unavailable: an outage must not dead-letter what it could not publish).
    pub counted: bool,
}

/// DLQ subject for prime checks that gave up.
pub const DLQ_PRIMECHECK: &str = "dlq.primecheck";
/// DLQ subject for emails that gave up.
pub const DLQ_EMAILSEND: &str = "dlq.emailsend";

/// The DLQ subject for an original subject.
pub fn dlq_subject(original: &str) -> &'static str {
    match original {
        SUBJECT_PRIMECHECK_REQUESTED => DLQ_PRIMECHECK,
        SUBJECT_EMAIL_SEND => DLQ_EMAILSEND,
        _ => DLQ_OUTBOX,
    }
}

/// How a failure is treated (seed §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// May succeed later: retried with backoff, dead-lettered past the delivery budget.
    Transient,
    /// Will never succeed as is: dead-lettered at once.
    Permanent,
    /// Cannot even be decoded: dead-lettered at once, never retried automatically.
    Poison,
}

impl ErrorClass {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Poison => "poison",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "transient" => Some(ErrorClass::Transient),
            "permanent" => Some(ErrorClass::Permanent),
            "poison" => Some(ErrorClass::Poison),
            _ => None,
        }
    }
}

/// The payload of `email.send`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailSend {
    /// The request's id.
    pub request_id: String,
    /// The number.
    pub number: String,
    /// The recipient.
    pub email: String,
    /// The answer.
    pub is_prime: bool,
    /// A small factor, when one was found.
    pub factor: Option<String>,
    /// Decimal digits of the number.
    pub digits: usize,
}

/// A prime-check result to store with its `email.send` event, once per event.
#[derive(Debug, Clone, PartialEq)]
pub struct PrimeResult {
    /// The `primecheck.requested` event it answers.
    pub event_id: String,
    /// The email event to publish (a fresh id).
    pub email_event_id: String,
    /// The answer and the email's content.
    pub email: EmailSend,
    /// How long the test took.
    pub duration: std::time::Duration,
    /// Correlation id.
    pub request_id: Option<String>,
    /// Trace context.
    pub traceparent: Option<String>,
}

/// A sent email to record, once per event.
#[derive(Debug, Clone, PartialEq)]
pub struct SentEmail {
    /// The `email.send` event.
    pub event_id: String,
    /// The request it answers.
    pub request_id: String,
    /// The recipient.
    pub recipient: String,
    /// The `Message-ID` header sent.
    pub message_id: String,
}

/// What happened to one delivery attempt (a `message_processing_logs` row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    /// Being processed (written for attempts held while a dependency is down).
    Processing,
    /// Done.
    Success,
    /// Given up (dead-lettered).
    Failed,
    /// Will be retried.
    Retry,
}

impl AttemptStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Processing => "processing",
            AttemptStatus::Success => "success",
            AttemptStatus::Failed => "failed",
            AttemptStatus::Retry => "retry",
        }
    }
}

/// One `message_processing_logs` row.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptLog {
    /// The event id.
    pub message_id: String,
    /// Its subject.
    pub subject: String,
    /// The outcome.
    pub status: AttemptStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// How long the attempt took.
    pub processing_time: std::time::Duration,
}

/// A message given up on, to store in `dead_letter_messages`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    /// The subject it was sent on.
    pub original_subject: String,
    /// Its event id, when known.
    pub original_message_id: Option<String>,
    /// The payload as received (not valid JSON for poison messages: it is then wrapped).
    pub payload: Vec<u8>,
    /// Why it was given up.
    pub error: String,
    /// Its class.
    pub error_type: ErrorClass,
    /// Deliveries so far.
    pub retry_count: u32,
    /// When it was first published.
    pub original_created_at: DateTime<Utc>,
    /// The request it belongs to, when known.
    pub request_id: Option<String>,
    /// Set when this was a reprocess of an existing dead letter: that row is updated
    /// (back to `pending` with the new error) instead of a new one being added.
    pub dlq_id: Option<i64>,
}

/// Status of a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DlqStatus {
    /// Waiting for an operator or a rule.
    Pending,
    /// Republished; waiting for the outcome.
    Reprocessing,
    /// The reprocessed message succeeded.
    Resolved,
    /// An operator gave up on it.
    Discarded,
}

impl DlqStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            DlqStatus::Pending => "pending",
            DlqStatus::Reprocessing => "reprocessing",
            DlqStatus::Resolved => "resolved",
            DlqStatus::Discarded => "discarded",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DlqStatus::Pending),
            "reprocessing" => Some(DlqStatus::Reprocessing),
            "resolved" => Some(DlqStatus::Resolved),
            "discarded" => Some(DlqStatus::Discarded),
            _ => None,
        }
    }
}

/// A stored dead letter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Row id.
    pub id: i64,
    /// The subject it was sent on.
    pub original_subject: String,
    /// Its event id.
    pub original_message_id: Option<String>,
    /// `dlq.primecheck`, `dlq.emailsend` or `dlq.outbox`.
    pub dlq_subject: String,
    /// The payload (JSON).
    pub payload: serde_json::Value,
    /// Why it was given up (the latest failure).
    pub error_message: String,
    /// Its class.
    pub error_type: ErrorClass,
    /// Deliveries or publish attempts.
    pub retry_count: u32,
    /// When the original was published.
    pub original_created_at: DateTime<Utc>,
    /// When it was dead-lettered.
    pub dlq_created_at: DateTime<Utc>,
    /// When it was last reprocessed.
    pub last_retry_at: Option<DateTime<Utc>>,
    /// Where it is.
    pub status: DlqStatus,
    /// When it was resolved or discarded.
    pub resolved_at: Option<DateTime<Utc>>,
    /// Who resolved (asked for the successful reprocess) or discarded it.
    pub resolved_by: Option<String>,
    /// The request it belongs to.
    pub request_id: Option<String>,
    /// Who last asked for a reprocess or discard.
    pub operator: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// Reprocesses so far (manual and automatic).
    pub reprocess_count: u32,
    /// Reprocesses by rules so far.
    pub auto_retry_count: u32,
    /// Its error fingerprint (see [`crate::fingerprint`]); None until first computed for a
    /// row written before fingerprints.
    pub fingerprint: Option<String>,
}

/// Filters for listing dead letters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DlqQuery {
    /// Only this original subject (or DLQ subject, `dlq.*`).
    pub subject: Option<String>,
    /// Only this class.
    pub error_type: Option<ErrorClass>,
    /// Only this status.
    pub status: Option<DlqStatus>,
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    pub until: Option<DateTime<Utc>>,
    /// At most this many.
    pub limit: u32,
    /// Only ids below this one (the previous page's last id).
    pub before_id: Option<i64>,
    /// Only those whose error message contains this text (case-insensitive).
    pub search: Option<String>,
    /// Only those of this error fingerprint (group).
    pub fingerprint: Option<String>,
}

/// How groups of dead letters are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GroupSort {
    /// The largest first.
    #[default]
    Count,
    /// The most recently dead-lettered first.
    Recent,
}

/// Which groups to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupQuery {
    /// Only letters of this status (None: every status).
    pub status: Option<DlqStatus>,
    /// The order.
    pub sort: GroupSort,
    /// At most this many groups.
    pub limit: u32,
}

/// Dead letters that failed the same way: one error fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DlqGroup {
    /// The fingerprint.
    pub fingerprint: String,
    /// Its subject (part of the fingerprint).
    pub original_subject: String,
    /// Its error type (part of the fingerprint).
    pub error_type: ErrorClass,
    /// Its error message with the values replaced by placeholders.
    pub signature: String,
    /// Letters in the group (of the status asked for).
    pub count: u64,
    /// When the first was dead-lettered.
    pub first_seen: DateTime<Utc>,
    /// When the last was dead-lettered.
    pub last_seen: DateTime<Utc>,
    /// The newest letter's id.
    pub example_id: i64,
    /// The newest letter's error message.
    pub example_error: String,
}

/// One operator action on the DLQ, as the audit trail keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Row id.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub operator: String,
    /// `reprocess`, `discard`, `discard_group`, `edit`.
    pub action: String,
    /// The dead letter acted on.
    pub dlq_id: Option<i64>,
    /// The group acted on.
    pub fingerprint: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// What changed (JSON).
    pub detail: serde_json::Value,
}

/// Which audit entries to list (newest first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    /// Only those about this dead letter.
    pub dlq_id: Option<i64>,
    /// Only ids below this one (the previous page's last id).
    pub before_id: Option<i64>,
    /// At most this many.
    pub limit: u32,
}

/// An operator's edit of a dead letter's payload, to be replayed as one message.
#[derive(Debug, Clone, PartialEq)]
pub struct LetterEdit {
    /// The dead letter.
    pub id: i64,
    /// The payload it had when the edit was made (the edit is refused if it changed since).
    pub before: serde_json::Value,
    /// The payload to replay.
    pub after: serde_json::Value,
    /// Who edits.
    pub operator: String,
    /// Why.
    pub reason: Option<String>,
}

/// One `dlq_statistics` bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DlqBucket {
    /// The hour.
    pub hour: DateTime<Utc>,
    /// DLQ subject.
    pub subject: String,
    /// Class.
    pub error_type: ErrorClass,
    /// Dead letters in that hour.
    pub count: u64,
}

/// Current dead letters by status, class and subject, plus hourly history.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DlqStats {
    /// Rows per status.
    pub by_status: std::collections::BTreeMap<String, u64>,
    /// Pending rows per class.
    pub by_error_type: std::collections::BTreeMap<String, u64>,
    /// Pending rows per DLQ subject.
    pub by_subject: std::collections::BTreeMap<String, u64>,
    /// Dead letters per hour, subject and class (from `dlq_statistics`).
    pub hourly: Vec<DlqBucket>,
}

/// A reprocess request.
#[derive(Debug, Clone, PartialEq)]
pub struct Reprocess {
    /// Dead letters to republish.
    pub ids: Vec<i64>,
    /// Publish after this delay.
    pub delay: std::time::Duration,
    /// Also republish rows that are not `pending` (reprocessing, resolved, discarded).
    pub force: bool,
    /// Who asks.
    pub operator: String,
    /// Why.
    pub reason: Option<String>,
    /// Asked by an automatic rule (counts against the rule's budget).
    pub automatic: bool,
}

/// What a reprocess or discard did to one dead letter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DlqActionResult {
    /// The dead letter.
    pub id: i64,
    /// Whether it was acted on.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The new event id (reprocess).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// One `message_processing_logs` row of a dead letter's message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// The subject it was handled on.
    pub subject: String,
    /// `processing`, `success`, `failed` or `retry`.
    pub status: String,
    /// What went wrong.
    pub error_message: Option<String>,
    /// How long the attempt took.
    pub processing_time_ms: Option<i64>,
    /// When.
    pub at: DateTime<Utc>,
}

/// What is known of a dead letter's message beyond its row.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LetterHistory {
    /// Its processing attempts, oldest first.
    pub attempts: Vec<HistoryEntry>,
    /// The W3C trace context of its outbox event, while the event is retained.
    pub traceparent: Option<String>,
}

/// Which dead letters a replay job takes: the pending ones among `ids`, or matching every
/// filter given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplaySelection {
    /// These dead letters (the filters are then ignored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<i64>,
    /// Original subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Error type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<ErrorClass>,
    /// Group (error fingerprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Dead-lettered at or after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

/// How a replay job proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReplayPace {
    /// Letters sent first, whose outcomes are awaited before anything else is sent.
    pub canary: u32,
    /// Each later step sends this many times the previous one (1 → 5 → 25 …).
    pub ramp: u32,
    /// At most this many letters a second.
    pub rate_per_second: f64,
    /// The job stops by itself when more than this share of the outcomes so far are
    /// failures (once at least a canary's worth of outcomes is in).
    pub max_failure_ratio: f64,
}

/// A replay job to start.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReplay {
    /// What to replay.
    pub selection: ReplaySelection,
    /// How.
    pub pace: ReplayPace,
    /// Also replay `poison` letters (quarantined or undecodable).
    pub force: bool,
    /// Who asks (an operator, or `auto:smtp-healed`).
    pub operator: String,
    /// Why.
    pub reason: Option<String>,
    /// `operator` or `smtp_healed`.
    pub trigger: String,
}

/// Where a replay job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayState {
    /// Sending (or waiting for outcomes).
    Running,
    /// Paused by an operator.
    Paused,
    /// Every letter replayed and its outcome known.
    Done,
    /// Stopped by itself: too many failures.
    Aborted,
    /// Cancelled by an operator.
    Cancelled,
}

impl ReplayState {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayState::Running => "running",
            ReplayState::Paused => "paused",
            ReplayState::Done => "done",
            ReplayState::Aborted => "aborted",
            ReplayState::Cancelled => "cancelled",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(ReplayState::Running),
            "paused" => Some(ReplayState::Paused),
            "done" => Some(ReplayState::Done),
            "aborted" => Some(ReplayState::Aborted),
            "cancelled" => Some(ReplayState::Cancelled),
            _ => None,
        }
    }

    /// Whether the job has ended (done, aborted or cancelled).
    pub fn ended(self) -> bool {
        matches!(
            self,
            ReplayState::Done | ReplayState::Aborted | ReplayState::Cancelled
        )
    }
}

/// A job's letters by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReplayCounts {
    /// Not sent yet.
    pub queued: u64,
    /// Sent, outcome not known yet.
    pub in_flight: u64,
    /// Went through.
    pub succeeded: u64,
    /// Dead-lettered again.
    pub failed: u64,
    /// No longer pending when their turn came (resolved or discarded meanwhile).
    pub skipped: u64,
}

impl ReplayCounts {
    /// Letters sent or skipped so far.
    pub fn dispatched(&self) -> u64 {
        self.in_flight + self.succeeded + self.failed + self.skipped
    }
}

/// A replay job as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayJob {
    /// Its id.
    pub id: i64,
    /// Where it is.
    pub state: ReplayState,
    /// Who started it.
    pub operator: String,
    /// Why.
    pub reason: Option<String>,
    /// `operator` or `smtp_healed`.
    pub trigger: String,
    /// What it replays.
    pub selection: serde_json::Value,
    /// How.
    pub pace: ReplayPace,
    /// Poison letters included.
    pub force: bool,
    /// Letters it took.
    pub total: u64,
    /// Its letters by state.
    pub counts: ReplayCounts,
    /// Why it stopped (aborted or cancelled).
    pub stop_reason: Option<String>,
    /// The daemon running it.
    pub owner: Option<String>,
    /// When it started.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}
