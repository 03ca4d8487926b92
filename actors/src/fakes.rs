//! In-memory ports for the actors' unit tests: an outbox, a broker, a dead-letter queue,
//! the workers' records and an advisory feed. Each keeps what it was asked in plain fields
//! so a test can look; none is a backend (the daemon's integration tests use real ones).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::model::{
    AttemptLog, AuditEntry, AuditQuery, DeadLetter, DlqActionResult, DlqGroup, DlqQuery, DlqStats,
    DlqStatus, ErrorClass, GroupQuery, LetterEdit, LetterHistory, NewDeadLetter, OutboxEvent,
    PrimeResult, PublishFailure, Reprocess, SentEmail,
};
use crate::ports::{
    Advisory, AdvisoryFeed, Broker, BrokerError, Claim, Delivery, DlqStore, Message, OutboxStore,
    OutgoingMessage, Settle, StoreError, WorkerStore,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An outbox event `n` (row id `n`, event id `e<n>`) with `retry_count` failures of
/// `max_retries`.
pub(crate) fn event(n: i64, retry_count: u32, max_retries: u32) -> OutboxEvent {
    OutboxEvent {
        id: n,
        event_id: format!("e{n}"),
        subject: "primecheck.requested".into(),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
        request_id: Some(format!("r{n}")),
        traceparent: None,
        retry_count,
        max_retries,
        created_at: Utc::now(),
        dlq_id: None,
    }
}

/// What happened to the outbox's rows.
#[derive(Debug, Default)]
pub(crate) struct OutboxLog {
    /// Rows not yet published, by id.
    pub(crate) pending: BTreeMap<i64, OutboxEvent>,
    /// Rows claimed and not yet settled.
    pub(crate) claimed: HashSet<i64>,
    /// Rows marked published, in order.
    pub(crate) published: Vec<i64>,
    /// Failures recorded, in order.
    pub(crate) failures: Vec<PublishFailure>,
}

/// An outbox in memory: a claim takes due rows in id order; its settle marks and records.
#[derive(Debug, Default, Clone)]
pub(crate) struct MemoryOutbox(pub(crate) Arc<Mutex<OutboxLog>>);

impl MemoryOutbox {
    /// An outbox holding `events`.
    pub(crate) fn with(events: Vec<OutboxEvent>) -> Self {
        let outbox = Self::default();
        lock(&outbox.0).pending = events.into_iter().map(|e| (e.id, e)).collect();
        outbox
    }

    /// What happened so far.
    pub(crate) fn log(&self) -> std::sync::MutexGuard<'_, OutboxLog> {
        lock(&self.0)
    }
}

struct MemorySettle(Arc<Mutex<OutboxLog>>, Vec<i64>);

impl Settle for MemorySettle {
    fn settle<'a>(
        self: Box<Self>,
        published: &'a [i64],
        failures: &'a [PublishFailure],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut log = lock(&self.0);
        for id in &self.1 {
            log.claimed.remove(id);
        }
        for id in published {
            log.pending.remove(id);
            log.published.push(*id);
        }
        for f in failures {
            if f.next_retry_at.is_none() {
                log.pending.remove(&f.id);
            } else if let Some(e) = log.pending.get_mut(&f.id) {
                e.retry_count += u32::from(f.counted);
            }
            log.failures.push(f.clone());
        }
        async { Ok(()) }.boxed()
    }
}

impl OutboxStore for MemoryOutbox {
    fn claim(&self, limit: u32, _lease: Duration) -> BoxFuture<'_, Result<Claim, StoreError>> {
        let mut log = lock(&self.0);
        let taken: Vec<OutboxEvent> = log
            .pending
            .values()
            .filter(|e| !log.claimed.contains(&e.id))
            .take(limit as usize)
            .cloned()
            .collect();
        let ids: Vec<i64> = taken.iter().map(|e| e.id).collect();
        log.claimed.extend(&ids);
        let claim = if taken.is_empty() {
            Claim::empty()
        } else {
            Claim::new(taken, Box::new(MemorySettle(self.0.clone(), ids)))
        };
        async { Ok(claim) }.boxed()
    }

    fn prune_published(&self, _before: DateTime<Utc>) -> BoxFuture<'_, Result<u64, StoreError>> {
        async { Ok(0) }.boxed()
    }

    fn replay_since(&self, _since: DateTime<Utc>) -> BoxFuture<'_, Result<u64, StoreError>> {
        async { Ok(0) }.boxed()
    }
}

/// A broker in memory: keeps what it was sent; refuses the event ids in `refuse`, or
/// everything while `down` (and then says it is unavailable).
#[derive(Debug, Default)]
pub(crate) struct MemoryBroker {
    /// Messages taken, in order.
    pub(crate) sent: Mutex<Vec<OutgoingMessage>>,
    /// Event ids it refuses (the message's fault).
    pub(crate) refuse: Mutex<HashSet<String>>,
    /// Down: refuses everything, and says so.
    pub(crate) down: std::sync::atomic::AtomicBool,
}

impl MemoryBroker {
    /// The event ids taken, in order.
    pub(crate) fn sent_ids(&self) -> Vec<String> {
        lock(&self.sent)
            .iter()
            .map(|m| m.event_id.clone())
            .collect()
    }

    fn is_down(&self) -> bool {
        self.down.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Broker for MemoryBroker {
    fn publish_batch<'a>(
        &'a self,
        messages: &'a [OutgoingMessage],
    ) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        let refuse = lock(&self.refuse).clone();
        let results = messages
            .iter()
            .map(|m| {
                if self.is_down() {
                    Err(BrokerError("no responders".into()))
                } else if refuse.contains(&m.event_id) {
                    Err(BrokerError(format!("{} refused", m.event_id)))
                } else {
                    lock(&self.sent).push(m.clone());
                    Ok(())
                }
            })
            .collect();
        async { results }.boxed()
    }

    fn available(&self) -> BoxFuture<'_, bool> {
        let up = !self.is_down();
        async move { up }.boxed()
    }
}

/// A dead letter `id` on `subject` (its DLQ subject `dlq.<id>`), pending, with `error`.
pub(crate) fn letter(id: i64, class: ErrorClass, error: &str) -> DeadLetter {
    DeadLetter {
        id,
        original_subject: "email.send".into(),
        original_message_id: Some(format!("m{id}")),
        dlq_subject: "dlq.emailsend".into(),
        payload: serde_json::json!({ "id": id }),
        error_message: error.into(),
        error_type: class,
        retry_count: 3,
        original_created_at: Utc::now(),
        dlq_created_at: Utc::now(),
        last_retry_at: None,
        status: DlqStatus::Pending,
        resolved_at: None,
        resolved_by: None,
        request_id: None,
        operator: None,
        reason: None,
        reprocess_count: 0,
        auto_retry_count: 0,
        fingerprint: None,
    }
}

/// What was asked of the dead-letter queue.
#[derive(Debug, Default)]
pub(crate) struct DlqLog {
    /// The letters, with the version the stream last took (None: not streamed).
    pub(crate) letters: Vec<(DeadLetter, u32, Option<u32>)>,
    /// Reprocess requests, in order.
    pub(crate) reprocessed: Vec<Reprocess>,
}

/// A dead-letter queue in memory.
#[derive(Debug, Default)]
pub(crate) struct MemoryDlq(pub(crate) Mutex<DlqLog>);

impl MemoryDlq {
    /// A queue holding `letters` at version 0, none streamed yet.
    pub(crate) fn with(letters: Vec<DeadLetter>) -> Self {
        let dlq = Self::default();
        lock(&dlq.0).letters = letters.into_iter().map(|l| (l, 0, None)).collect();
        dlq
    }

    /// What happened so far.
    pub(crate) fn log(&self) -> std::sync::MutexGuard<'_, DlqLog> {
        lock(&self.0)
    }
}

impl DlqStore for MemoryDlq {
    fn unstreamed(&self, limit: u32) -> BoxFuture<'_, Result<Vec<(DeadLetter, u32)>, StoreError>> {
        let rows = lock(&self.0)
            .letters
            .iter()
            .filter(|(_, v, s)| *s != Some(*v))
            .take(limit as usize)
            .map(|(l, v, _)| (l.clone(), *v))
            .collect();
        async { Ok(rows) }.boxed()
    }

    fn mark_streamed<'a>(
        &'a self,
        rows: &'a [(i64, u32)],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut log = lock(&self.0);
        for (id, version) in rows {
            for (l, v, s) in log.letters.iter_mut() {
                if l.id == *id && v == version {
                    *s = Some(*version);
                }
            }
        }
        async { Ok(()) }.boxed()
    }

    fn list(&self, query: DlqQuery) -> BoxFuture<'_, Result<Vec<DeadLetter>, StoreError>> {
        let rows = lock(&self.0)
            .letters
            .iter()
            .rev()
            .take(query.limit as usize)
            .map(|(l, _, _)| l.clone())
            .collect();
        async { Ok(rows) }.boxed()
    }

    fn get(&self, id: i64) -> BoxFuture<'_, Result<Option<DeadLetter>, StoreError>> {
        let row = lock(&self.0)
            .letters
            .iter()
            .find(|(l, _, _)| l.id == id)
            .map(|(l, _, _)| l.clone());
        async { Ok(row) }.boxed()
    }

    fn stats(&self, _since: DateTime<Utc>) -> BoxFuture<'_, Result<DlqStats, StoreError>> {
        async { Ok(DlqStats::default()) }.boxed()
    }

    fn reprocess(
        &self,
        request: Reprocess,
    ) -> BoxFuture<'_, Result<Vec<DlqActionResult>, StoreError>> {
        let results = request
            .ids
            .iter()
            .map(|&id| DlqActionResult {
                id,
                ok: true,
                error: None,
                event_id: Some(format!("re-{id}")),
            })
            .collect();
        lock(&self.0).reprocessed.push(request);
        async { Ok(results) }.boxed()
    }

    fn discard<'a>(
        &'a self,
        _ids: &'a [i64],
        _operator: &'a str,
        _reason: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<DlqActionResult>, StoreError>> {
        async { Ok(Vec::new()) }.boxed()
    }

    fn history<'a>(
        &'a self,
        _message_id: &'a str,
    ) -> BoxFuture<'a, Result<LetterHistory, StoreError>> {
        async {
            Ok(LetterHistory {
                attempts: Vec::new(),
                traceparent: None,
            })
        }
        .boxed()
    }

    fn has_dead_letter<'a>(&'a self, event_id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let found = lock(&self.0)
            .letters
            .iter()
            .any(|(l, _, _)| l.original_message_id.as_deref() == Some(event_id));
        async move { Ok(found) }.boxed()
    }

    fn groups(&self, _query: GroupQuery) -> BoxFuture<'_, Result<Vec<DlqGroup>, StoreError>> {
        async { Ok(Vec::new()) }.boxed()
    }

    fn discard_group<'a>(
        &'a self,
        _fingerprint: &'a str,
        _operator: &'a str,
        _reason: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        async { Ok(0) }.boxed()
    }

    fn audit(&self, _query: AuditQuery) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        async { Ok(Vec::new()) }.boxed()
    }

    fn edit(&self, edit: LetterEdit) -> BoxFuture<'_, Result<DlqActionResult, StoreError>> {
        async move {
            Ok(DlqActionResult {
                id: edit.id,
                ok: true,
                error: None,
                event_id: Some(format!("edit-{}", edit.id)),
            })
        }
        .boxed()
    }

    /// Every pending letter (the rules' own filters are the retry timer's to apply).
    fn rule_candidates<'a>(
        &'a self,
        _before: DateTime<Utc>,
        _max_auto: u32,
        _subjects: &'a [String],
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>> {
        let rows = lock(&self.0)
            .letters
            .iter()
            .filter(|(l, _, _)| l.status == DlqStatus::Pending)
            .take(limit as usize)
            .map(|(l, _, _)| l.clone())
            .collect();
        async { Ok(rows) }.boxed()
    }
}

/// The workers' records in memory: which events were processed or emailed, and the dead
/// letters written.
#[derive(Debug, Default)]
pub(crate) struct MemoryWorkers {
    /// `(event id, consumer)` pairs processed.
    pub(crate) processed: Mutex<HashSet<(String, String)>>,
    /// Event ids whose email was sent.
    pub(crate) emailed: Mutex<HashSet<String>>,
    /// Dead letters written, in order.
    pub(crate) dead_letters: Mutex<Vec<NewDeadLetter>>,
    /// Crashes per event id, with the last one's message.
    pub(crate) crashes: Mutex<std::collections::HashMap<String, (u32, String)>>,
}

impl WorkerStore for MemoryWorkers {
    fn record_result(&self, _result: PrimeResult) -> BoxFuture<'_, Result<bool, StoreError>> {
        async { Ok(true) }.boxed()
    }

    fn processed<'a>(
        &'a self,
        event_id: &'a str,
        consumer: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let done = lock(&self.processed).contains(&(event_id.into(), consumer.into()));
        async move { Ok(done) }.boxed()
    }

    fn email_sent<'a>(&'a self, event_id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let done = lock(&self.emailed).contains(event_id);
        async move { Ok(done) }.boxed()
    }

    fn record_email(&self, sent: SentEmail) -> BoxFuture<'_, Result<bool, StoreError>> {
        let new = lock(&self.emailed).insert(sent.event_id);
        async move { Ok(new) }.boxed()
    }

    fn log_attempts<'a>(
        &'a self,
        _logs: &'a [AttemptLog],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }

    fn dead_letter(&self, letter: NewDeadLetter) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
        let mut letters = lock(&self.dead_letters);
        letters.push(letter);
        let id = letters.len() as i64;
        async move { Ok(Some(id)) }.boxed()
    }

    fn resolve_dead_letter(&self, _dlq_id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }

    fn record_crash<'a>(
        &'a self,
        event_id: &'a str,
        error: &'a str,
    ) -> BoxFuture<'a, Result<u32, StoreError>> {
        let mut crashes = lock(&self.crashes);
        let entry = crashes.entry(event_id.to_string()).or_default();
        entry.0 += 1;
        entry.1 = error.to_string();
        let n = entry.0;
        async move { Ok(n) }.boxed()
    }

    fn crashes<'a>(
        &'a self,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<(u32, String)>, StoreError>> {
        let found = lock(&self.crashes).get(event_id).cloned();
        async move { Ok(found) }.boxed()
    }
}

/// A delivery that counts its acknowledgements.
#[derive(Debug)]
pub(crate) struct CountedDelivery {
    message: Message,
    /// Acks so far.
    pub(crate) acks: Arc<std::sync::atomic::AtomicU32>,
}

impl CountedDelivery {
    /// A delivery of a message on `subject`, with its ack counter.
    pub(crate) fn new(subject: &str) -> (Self, Arc<std::sync::atomic::AtomicU32>) {
        let acks = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let message = Message {
            event_id: String::new(),
            subject: subject.into(),
            payload: Vec::new(),
            delivery: 1,
            stream_seq: 1,
            published_at: Utc::now(),
            request_id: None,
            traceparent: None,
            dlq_id: None,
        };
        (
            Self {
                message,
                acks: acks.clone(),
            },
            acks,
        )
    }
}

impl Delivery for CountedDelivery {
    fn message(&self) -> &Message {
        &self.message
    }
    fn ack(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async { Ok(()) }.boxed()
    }
    fn nak(&self, _delay: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        async { Ok(()) }.boxed()
    }
    fn term(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        async { Ok(()) }.boxed()
    }
    fn progress(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        async { Ok(()) }.boxed()
    }
}

/// Advisories handed out once each.
#[derive(Default)]
pub(crate) struct MemoryAdvisories(pub(crate) Mutex<Vec<Advisory>>);

impl AdvisoryFeed for MemoryAdvisories {
    fn poll(
        &self,
        max: usize,
        _wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Advisory>, BrokerError>> {
        let mut queue = lock(&self.0);
        let n = queue.len().min(max);
        let batch: Vec<Advisory> = queue.drain(..n).collect();
        async { Ok(batch) }.boxed()
    }

    fn unsettled<'a>(
        &'a self,
        _settled: &'a std::collections::HashMap<String, u64>,
        _max: usize,
    ) -> BoxFuture<'a, Result<Vec<crate::ports::Unsettled>, BrokerError>> {
        async { Ok(Vec::new()) }.boxed()
    }
}
