//! A store decorator that times every call into `database_query_duration_seconds`, labelled
//! by the port method (`query_type`), for whichever backend it wraps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::model::{
    AttemptLog, AuditEntry, AuditQuery, CreateOutcome, DeadLetter, DlqActionResult, DlqGroup,
    DlqQuery, DlqStats, GroupQuery, LetterEdit, ListQuery, NewDeadLetter, NewRequest, PrimeRequest,
    PrimeResult, Reprocess, SentEmail,
};
use actors::{Claim, DlqStore, OutboxStore, RequestStore, StoreError, WorkerStore};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;

/// Times the calls of `S`.
pub struct Timed<S>(pub Arc<S>);

impl<S> Clone for Timed<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

fn timed<'a, T: Send + 'a>(query_type: &'static str, call: BoxFuture<'a, T>) -> BoxFuture<'a, T> {
    async move {
        let t0 = Instant::now();
        let out = call.await;
        crate::metrics::metrics()
            .database_query_duration
            .with_label_values(&[query_type])
            .observe(t0.elapsed().as_secs_f64());
        out
    }
    .boxed()
}

impl<S: RequestStore> RequestStore for Timed<S> {
    fn create(&self, request: NewRequest) -> BoxFuture<'_, Result<CreateOutcome, StoreError>> {
        timed("create_request", self.0.create(request))
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<PrimeRequest>, StoreError>> {
        timed("get_request", self.0.get(id))
    }

    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<PrimeRequest>, StoreError>> {
        timed("list_requests", RequestStore::list(&*self.0, query))
    }
}

impl<S: OutboxStore> OutboxStore for Timed<S> {
    fn claim(&self, limit: u32, lease: Duration) -> BoxFuture<'_, Result<Claim, StoreError>> {
        timed("claim_outbox", self.0.claim(limit, lease))
    }

    fn prune_published(&self, before: DateTime<Utc>) -> BoxFuture<'_, Result<u64, StoreError>> {
        timed("prune_outbox", self.0.prune_published(before))
    }

    fn replay_since(&self, since: DateTime<Utc>) -> BoxFuture<'_, Result<u64, StoreError>> {
        timed("replay_outbox", self.0.replay_since(since))
    }
}

impl<S: WorkerStore> WorkerStore for Timed<S> {
    fn record_result(&self, result: PrimeResult) -> BoxFuture<'_, Result<bool, StoreError>> {
        timed("record_result", self.0.record_result(result))
    }

    fn processed<'a>(
        &'a self,
        event_id: &'a str,
        consumer: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        timed("processed", self.0.processed(event_id, consumer))
    }

    fn email_sent<'a>(&'a self, event_id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        timed("email_sent", self.0.email_sent(event_id))
    }

    fn record_email(&self, sent: SentEmail) -> BoxFuture<'_, Result<bool, StoreError>> {
        timed("record_email", self.0.record_email(sent))
    }

    fn log_attempts<'a>(&'a self, logs: &'a [AttemptLog]) -> BoxFuture<'a, Result<(), StoreError>> {
        timed("log_attempts", self.0.log_attempts(logs))
    }

    fn dead_letter(&self, letter: NewDeadLetter) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
        timed("dead_letter", self.0.dead_letter(letter))
    }

    fn resolve_dead_letter(&self, dlq_id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        timed("resolve_dead_letter", self.0.resolve_dead_letter(dlq_id))
    }

    fn record_crash<'a>(
        &'a self,
        event_id: &'a str,
        error: &'a str,
    ) -> BoxFuture<'a, Result<u32, StoreError>> {
        timed("record_crash", self.0.record_crash(event_id, error))
    }

    fn crashes<'a>(
        &'a self,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<(u32, String)>, StoreError>> {
        timed("crashes", self.0.crashes(event_id))
    }
}

impl<S: DlqStore> DlqStore for Timed<S> {
    fn unstreamed(&self, limit: u32) -> BoxFuture<'_, Result<Vec<(DeadLetter, u32)>, StoreError>> {
        timed("dlq_unstreamed", self.0.unstreamed(limit))
    }

    fn mark_streamed<'a>(
        &'a self,
        rows: &'a [(i64, u32)],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        timed("dlq_mark_streamed", self.0.mark_streamed(rows))
    }

    fn list(&self, query: DlqQuery) -> BoxFuture<'_, Result<Vec<DeadLetter>, StoreError>> {
        timed("dlq_list", DlqStore::list(&*self.0, query))
    }

    fn get(&self, id: i64) -> BoxFuture<'_, Result<Option<DeadLetter>, StoreError>> {
        timed("dlq_get", DlqStore::get(&*self.0, id))
    }

    fn stats(&self, since: DateTime<Utc>) -> BoxFuture<'_, Result<DlqStats, StoreError>> {
        timed("dlq_stats", self.0.stats(since))
    }

    fn reprocess(
        &self,
        request: Reprocess,
    ) -> BoxFuture<'_, Result<Vec<DlqActionResult>, StoreError>> {
        timed("dlq_reprocess", self.0.reprocess(request))
    }

    fn discard<'a>(
        &'a self,
        ids: &'a [i64],
        operator: &'a str,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<DlqActionResult>, StoreError>> {
        timed("dlq_discard", self.0.discard(ids, operator, reason))
    }

    fn history<'a>(
        &'a self,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<actors::model::LetterHistory, StoreError>> {
        timed("dlq_history", self.0.history(message_id))
    }

    fn has_dead_letter<'a>(&'a self, event_id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        timed("dlq_has_dead_letter", self.0.has_dead_letter(event_id))
    }

    fn groups(&self, query: GroupQuery) -> BoxFuture<'_, Result<Vec<DlqGroup>, StoreError>> {
        timed("dlq_groups", self.0.groups(query))
    }

    fn discard_group<'a>(
        &'a self,
        fingerprint: &'a str,
        operator: &'a str,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        timed(
            "dlq_discard_group",
            self.0.discard_group(fingerprint, operator, reason),
        )
    }

    fn audit(&self, query: AuditQuery) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        timed("dlq_audit", self.0.audit(query))
    }

    fn edit(&self, edit: LetterEdit) -> BoxFuture<'_, Result<DlqActionResult, StoreError>> {
        timed("dlq_edit", self.0.edit(edit))
    }

    fn rule_candidates<'a>(
        &'a self,
        before: DateTime<Utc>,
        max_auto: u32,
        subjects: &'a [String],
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>> {
        timed(
            "dlq_rule_candidates",
            self.0.rule_candidates(before, max_auto, subjects, limit),
        )
    }
}
