//! Store ports: what the API and the outbox relay need from the database.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::model::{
    AttemptLog, AuditEntry, AuditQuery, CreateOutcome, DeadLetter, DlqActionResult, DlqGroup,
    DlqQuery, DlqStats, GroupQuery, LetterEdit, ListQuery, NewDeadLetter, NewReplay, NewRequest,
    OutboxEvent, PrimeRequest, PrimeResult, PublishFailure, ReplayCounts, ReplayJob,
    ReplaySelection, ReplayState, Reprocess, SentEmail,
};

/// A store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or timed out, or the transaction lost a deadlock:
    /// trying again later can succeed.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database refused the operation (a bug, a schema mismatch, or an injected fault).
    #[error("the database refused the operation: {0}")]
    Rejected(String),
}

/// Requests and their outbox events.
pub trait RequestStore: Send + Sync + 'static {
    /// Stores a request and its `primecheck.requested` outbox event in one transaction,
    /// honouring the idempotency key.
    fn create(&self, request: NewRequest) -> BoxFuture<'_, Result<CreateOutcome, StoreError>>;

    /// One request.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<PrimeRequest>, StoreError>>;

    /// A page of requests, newest first.
    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<PrimeRequest>, StoreError>>;
}

/// Settles one claim: records which events were published and which failed.
pub trait Settle: Send {
    /// Marks `published` as published and records `failures` (a retry time, or a move to the
    /// dead-letter table), releasing the claim.
    fn settle<'a>(
        self: Box<Self>,
        published: &'a [i64],
        failures: &'a [PublishFailure],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Events claimed for one relay round. Dropping it unsettled releases the events (a
/// database transaction rolls back, or a lease runs out) so that a later round publishes
/// them again; the broker drops the duplicate.
pub struct Claim {
    /// The claimed events, in id order.
    pub events: Vec<OutboxEvent>,
    settle: Option<Box<dyn Settle>>,
}

impl Claim {
    /// A claim of `events`, settled by `settle`.
    pub fn new(events: Vec<OutboxEvent>, settle: Box<dyn Settle>) -> Self {
        Self {
            events,
            settle: Some(settle),
        }
    }

    /// Nothing was due.
    pub fn empty() -> Self {
        Self {
            events: Vec::new(),
            settle: None,
        }
    }

    /// Records the round's outcome and releases the claim.
    pub async fn settle(
        mut self,
        published: &[i64],
        failures: &[PublishFailure],
    ) -> Result<(), StoreError> {
        match self.settle.take() {
            Some(settle) => settle.settle(published, failures).await,
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("events", &self.events.len())
            .finish()
    }
}

/// The outbox, as the relay sees it.
pub trait OutboxStore: Send + Sync + 'static {
    /// Claims up to `limit` due events (unpublished, not dead, retry time reached, not
    /// claimed by another relay) in id order. How the claim keeps other relays off is the
    /// adapter's business: a held `SKIP LOCKED` transaction, or a lease of `lease`.
    fn claim(&self, limit: u32, lease: Duration) -> BoxFuture<'_, Result<Claim, StoreError>>;

    /// Deletes published events older than `before`; returns how many.
    fn prune_published(&self, before: DateTime<Utc>) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Makes events published since `since` due again (after a broker lost messages it had
    /// acknowledged from then on; when they were created does not matter: a backlog's old
    /// events are published late); returns how many.
    fn replay_since(&self, since: DateTime<Utc>) -> BoxFuture<'_, Result<u64, StoreError>>;
}

/// What the consumers need: effects recorded once per event, attempt logs, dead letters.
pub trait WorkerStore: Send + Sync + 'static {
    /// Stores a prime-check result and its `email.send` outbox event in one transaction,
    /// once per event: returns `false` (and changes nothing) when the event was already
    /// processed.
    fn record_result(&self, result: PrimeResult) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Whether an event's effect is already recorded by `consumer`.
    fn processed<'a>(
        &'a self,
        event_id: &'a str,
        consumer: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Whether the email of an `email.send` event was sent.
    fn email_sent<'a>(&'a self, event_id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Records a sent email (once per event): returns `false` when it was already recorded.
    fn record_email(&self, sent: SentEmail) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Appends `message_processing_logs` rows.
    fn log_attempts<'a>(&'a self, logs: &'a [AttemptLog]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Stores a dead letter, counts it in `dlq_statistics` and marks its request failed.
    /// A reprocess that failed again (`dlq_id` set) updates its row back to `pending`. A
    /// message already dead-lettered and still pending is not stored twice. Returns the row
    /// id, or `None` when it was a duplicate.
    fn dead_letter(&self, letter: NewDeadLetter) -> BoxFuture<'_, Result<Option<i64>, StoreError>>;

    /// A reprocessed message succeeded: its dead letter is resolved.
    fn resolve_dead_letter(&self, dlq_id: i64) -> BoxFuture<'_, Result<(), StoreError>>;

    /// One more crash of a worker holding the message `event_id` (a panic in its handler,
    /// or the worker killed while holding it), with what it said; the crashes it has caused
    /// so far, this one included.
    fn record_crash<'a>(
        &'a self,
        event_id: &'a str,
        error: &'a str,
    ) -> BoxFuture<'a, Result<u32, StoreError>>;

    /// The crashes the message `event_id` has caused so far and the last one's message.
    fn crashes<'a>(
        &'a self,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<(u32, String)>, StoreError>>;
}

/// The dead-letter queue, as its actor, the API and the rules see it.
pub trait DlqStore: Send + Sync + 'static {
    /// Dead letters not yet copied to the DLQ stream (oldest first), with their version.
    fn unstreamed(&self, limit: u32) -> BoxFuture<'_, Result<Vec<(DeadLetter, u32)>, StoreError>>;

    /// Marks dead letters (at these versions) as copied to the DLQ stream.
    fn mark_streamed<'a>(&'a self, rows: &'a [(i64, u32)])
    -> BoxFuture<'a, Result<(), StoreError>>;

    /// A page of dead letters, newest first.
    fn list(&self, query: DlqQuery) -> BoxFuture<'_, Result<Vec<DeadLetter>, StoreError>>;

    /// One dead letter.
    fn get(&self, id: i64) -> BoxFuture<'_, Result<Option<DeadLetter>, StoreError>>;

    /// Counts.
    fn stats(&self, since: DateTime<Utc>) -> BoxFuture<'_, Result<DlqStats, StoreError>>;

    /// Republishes dead letters to their original subjects (through the outbox, as new
    /// events), marking them `reprocessing`.
    fn reprocess(
        &self,
        request: Reprocess,
    ) -> BoxFuture<'_, Result<Vec<DlqActionResult>, StoreError>>;

    /// Marks dead letters `discarded`.
    fn discard<'a>(
        &'a self,
        ids: &'a [i64],
        operator: &'a str,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<DlqActionResult>, StoreError>>;

    /// The processing attempts and trace context of the message `message_id` (an event id).
    fn history<'a>(
        &'a self,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<crate::model::LetterHistory, StoreError>>;

    /// Whether the message `event_id` has a dead letter (of any status).
    fn has_dead_letter<'a>(&'a self, event_id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Dead letters grouped by error fingerprint.
    fn groups(&self, query: GroupQuery) -> BoxFuture<'_, Result<Vec<DlqGroup>, StoreError>>;

    /// Discards every open (pending or reprocessing) letter of the group `fingerprint`;
    /// how many it closed.
    fn discard_group<'a>(
        &'a self,
        fingerprint: &'a str,
        operator: &'a str,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// The audit trail of operator actions, newest first.
    fn audit(&self, query: AuditQuery) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>>;

    /// Stores an edited payload and replays it as one message (through the outbox), in one
    /// transaction with its audit entry; refused unless the letter is pending and its
    /// payload is still `edit.before`.
    fn edit(&self, edit: LetterEdit) -> BoxFuture<'_, Result<DlqActionResult, StoreError>>;

    /// Pending dead letters dead-lettered before `before`, retried automatically fewer than
    /// `max_auto` times, on these original subjects (all when empty), oldest first.
    fn rule_candidates<'a>(
        &'a self,
        before: DateTime<Utc>,
        max_auto: u32,
        subjects: &'a [String],
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>>;
}

/// What an operator's pause, resume or cancel of a replay job did.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayControl {
    /// No such job.
    NotFound,
    /// Not in a state that allows it (why).
    Refused(String),
    /// Done: the job as it is now.
    Changed(Box<ReplayJob>),
}

/// Safe replay jobs: started and controlled by operators (or by the SMTP breaker's
/// healing), run by the [`crate::replay::Replayer`] of the daemon that holds a job's lease.
pub trait ReplayStore: Send + Sync + 'static {
    /// Starts a job over the pending letters `job.selection` matches (snapshotted now), with
    /// its audit entry.
    fn start_replay(&self, job: NewReplay) -> BoxFuture<'_, Result<ReplayJob, StoreError>>;

    /// How many pending letters `selection` matches, and the first `limit` ids (oldest
    /// first): what a job would replay.
    fn preview_replay(
        &self,
        selection: ReplaySelection,
        force: bool,
        limit: u32,
    ) -> BoxFuture<'_, Result<(u64, Vec<i64>), StoreError>>;

    /// The newest jobs first.
    fn replays(&self, limit: u32) -> BoxFuture<'_, Result<Vec<ReplayJob>, StoreError>>;

    /// One job.
    fn replay(&self, id: i64) -> BoxFuture<'_, Result<Option<ReplayJob>, StoreError>>;

    /// Pauses (`Paused`), resumes (`Running`) or cancels (`Cancelled`) a job, audited.
    fn control_replay<'a>(
        &'a self,
        id: i64,
        to: ReplayState,
        operator: &'a str,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ReplayControl, StoreError>>;

    /// The running jobs `owner` may run now (their lease free, lapsed or its own), their
    /// leases taken or renewed for `lease`.
    fn claim_replays<'a>(
        &'a self,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<ReplayJob>, StoreError>>;

    /// Records the outcomes of the job's letters in flight (resolved: succeeded; pending
    /// again: failed; discarded: skipped) and counts its letters by state.
    fn settle_replay(&self, id: i64) -> BoxFuture<'_, Result<ReplayCounts, StoreError>>;

    /// Up to `n` of the job's queued letters, oldest first.
    fn queued_replay(&self, id: i64, n: u32) -> BoxFuture<'_, Result<Vec<i64>, StoreError>>;

    /// Replays one queued letter of `job` (a reprocess through the outbox, in one
    /// transaction with the item's state); false when it was skipped (no longer pending).
    fn send_replay<'a>(
        &'a self,
        job: &'a ReplayJob,
        dlq_id: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Ends a running job (done, or aborted with its reason), audited.
    fn end_replay<'a>(
        &'a self,
        id: i64,
        state: ReplayState,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// What the metrics gauges read from the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreGauges {
    /// Outbox events not yet published.
    pub outbox_pending: i64,
    /// Age in seconds of the oldest due, unpublished event (0 when none).
    pub outbox_lag_seconds: f64,
    /// Dead letters by status.
    pub dead_letters: Vec<(String, i64)>,
    /// Messages waiting in the embedded queue, by subject (empty with JetStream).
    pub queue: Vec<(String, i64)>,
    /// Pool connections in use.
    pub connections_active: i64,
    /// Pool connections idle.
    pub connections_idle: i64,
}

/// Reads [`StoreGauges`].
pub trait GaugeSource: Send + Sync + 'static {
    /// The counts now.
    fn gauges(&self) -> BoxFuture<'_, Result<StoreGauges, StoreError>>;
}

/// Marks outbox rows published by event id (the fast path's bookkeeping).
pub trait OutboxMarks: Send + Sync + 'static {
    /// Marks the still-pending rows of these events published; returns how many it marked.
    fn mark_published<'a>(
        &'a self,
        event_ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Makes the still-pending rows of these events due at once: their publish on the fast
    /// path failed, so a relay (woken after this) publishes them now rather than when their
    /// grace ends. Returns how many it changed.
    fn due_now<'a>(&'a self, event_ids: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>>;
}

/// What the retention actor prunes: each a table, or the part of one, that only grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retained {
    /// `message_processing_logs`, by `created_at`.
    ProcessingLogs,
    /// `processed_events` (the consumers' record of applied events), by `processed_at`.
    ProcessedEvents,
    /// `message_crashes` (crashes per message), by `updated_at`.
    MessageCrashes,
    /// `sent_emails`, by `sent_at`.
    SentEmails,
    /// Resolved and discarded rows of `dead_letter_messages`, by `resolved_at`.
    DeadLetters,
    /// `dlq_statistics`, by `date_hour`.
    DlqStatistics,
    /// `worker_health_checks` rows of daemons gone (no heartbeat), by `last_heartbeat`.
    HealthRows,
}

impl Retained {
    /// Every kind, in the order a round prunes them.
    pub const ALL: [Retained; 7] = [
        Retained::ProcessingLogs,
        Retained::ProcessedEvents,
        Retained::MessageCrashes,
        Retained::SentEmails,
        Retained::DeadLetters,
        Retained::DlqStatistics,
        Retained::HealthRows,
    ];

    /// The table it prunes (the `table` label of `retention_pruned_rows_total`).
    pub fn table(self) -> &'static str {
        match self {
            Retained::ProcessingLogs => "message_processing_logs",
            Retained::ProcessedEvents => "processed_events",
            Retained::MessageCrashes => "message_crashes",
            Retained::SentEmails => "sent_emails",
            Retained::DeadLetters => "dead_letter_messages",
            Retained::DlqStatistics => "dlq_statistics",
            Retained::HealthRows => "worker_health_checks",
        }
    }
}

/// Deletes rows past their retention.
pub trait RetentionStore: Send + Sync + 'static {
    /// Deletes at most `limit` rows of `what` older than `before`, oldest first, in one
    /// short statement; returns how many it deleted (fewer than `limit`: nothing older is
    /// left).
    fn prune(
        &self,
        what: Retained,
        before: DateTime<Utc>,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;
}
