//! [`Shared`]: the part of a SQL store that both backends run the same way — the
//! dead-letter queue, the workers' health rows, and the records the request and worker
//! ports read and write — generic over the [`Backend`].

use std::collections::BTreeMap;

use actors::fingerprint::{fingerprint, normalise};
use actors::model::{
    AttemptLog, AuditEntry, AuditQuery, CreateOutcome, DeadLetter, DlqActionResult, DlqGroup,
    DlqQuery, DlqStats, DlqStatus, GroupQuery, LetterEdit, LetterHistory, ListQuery, NewDeadLetter,
    NewRequest, PrimeRequest, Reprocess, dlq_subject,
};
use actors::{DlqStore, HealthStore, StoreError, WorkerHealth};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::Pool;

use super::dlq::Audit;
use super::rows::{health_rows, is_duplicate, json_payload, letter_history, refused};
use super::{Backend, Columns, Dialect, Done, Sql, dlq, records};

/// A request inserted, or found to exist already.
pub(crate) enum Inserted<DB: sqlx::Database> {
    /// Inserted in this transaction, to be continued.
    New(sqlx::Transaction<'static, DB>),
    /// Its idempotency key was taken: this request again, or a conflict.
    Existing(CreateOutcome),
}

/// A SQL store's pool, seen through what both backends share. Cheap to clone.
#[derive(Debug)]
pub struct Shared<DB: sqlx::Database> {
    pub(super) pool: Pool<DB>,
}

impl<DB: sqlx::Database> Clone for Shared<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
        }
    }
}

impl<DB: sqlx::Database> Shared<DB> {
    /// The shared part of the store on `pool`.
    pub(crate) fn new(pool: Pool<DB>) -> Self {
        Self { pool }
    }
}

impl<DB> Shared<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    const D: Dialect = DB::DIALECT;

    pub(super) async fn execute(
        &self,
        conn: &mut DB::Connection,
        q: &Sql,
    ) -> Result<Done, StoreError> {
        let done = q.query::<DB>().execute(conn).await.map_err(DB::error)?;
        Ok(Done {
            rows: DB::rows_affected(&done),
            last_id: DB::last_insert_id(&done),
        })
    }

    pub(super) async fn fetch_all(&self, q: &Sql) -> Result<Vec<DB::Row>, StoreError> {
        let mut conn = crate::adapters::waiting(self.pool.acquire())
            .await
            .map_err(DB::error)?;
        q.query::<DB>()
            .fetch_all(&mut *conn)
            .await
            .map_err(DB::error)
    }

    pub(super) async fn run(&self, q: &Sql) -> Result<Done, StoreError> {
        let mut conn = crate::adapters::waiting(self.pool.acquire())
            .await
            .map_err(DB::error)?;
        self.execute(&mut conn, q).await
    }

    pub(super) async fn letters(&self, q: &Sql) -> Result<Vec<DeadLetter>, StoreError> {
        self.fetch_all(q).await?.iter().map(dlq::letter).collect()
    }

    /// One request by id.
    pub(crate) async fn request(&self, id: &str) -> Result<Option<PrimeRequest>, StoreError> {
        let rows = self.fetch_all(&records::request_by_id(Self::D, id)).await?;
        rows.first().map(records::request).transpose()
    }

    /// Inserts request `req`, accepted at `created_at`, in `tx`. When its idempotency key is
    /// taken the transaction is rolled back (its connection given back before the first
    /// request is looked up: holding it while asking the pool for another can exhaust the
    /// pool under a burst of repeats), and the answer says what the request is.
    pub(crate) async fn insert_request(
        &self,
        mut tx: sqlx::Transaction<'static, DB>,
        req: &NewRequest,
        created_at: DateTime<Utc>,
    ) -> Result<Inserted<DB>, StoreError> {
        let inserted = records::insert_request(Self::D, req, created_at)
            .query::<DB>()
            .execute(&mut *tx)
            .await;
        match inserted {
            Ok(_) => Ok(Inserted::New(tx)),
            Err(err) => {
                let _ = tx.rollback().await;
                match (&req.idempotency_key, is_duplicate(&err)) {
                    (Some(key), true) => Ok(Inserted::Existing(self.existing(key, req).await?)),
                    _ => Err(DB::error(err)),
                }
            }
        }
    }

    /// What a request with idempotency key `key` is, given the one stored under it.
    pub(crate) async fn existing(
        &self,
        key: &str,
        req: &NewRequest,
    ) -> Result<CreateOutcome, StoreError> {
        let rows = self
            .fetch_all(&records::request_by_key(Self::D, key))
            .await?;
        let Some(row) = rows.first() else {
            return Err(StoreError::Unavailable(
                "the request with this idempotency key disappeared; try again".into(),
            ));
        };
        Ok(records::existing(records::request(row)?, req))
    }

    /// The requests `query` selects, newest first.
    pub(crate) async fn requests(
        &self,
        query: &ListQuery,
    ) -> Result<Vec<PrimeRequest>, StoreError> {
        let rows = self.fetch_all(&records::requests(Self::D, query)).await?;
        rows.iter().map(records::request).collect()
    }

    /// Whether `consumer` has processed event `event_id`.
    pub(crate) async fn processed(
        &self,
        event_id: &str,
        consumer: &str,
    ) -> Result<bool, StoreError> {
        let rows = self
            .fetch_all(&records::processed(Self::D, event_id, consumer))
            .await?;
        Ok(!rows.is_empty())
    }

    /// Writes the attempt logs in one statement.
    pub(crate) async fn log_attempts(&self, logs: &[AttemptLog]) -> Result<(), StoreError> {
        if !logs.is_empty() {
            self.run(&records::log_attempts(Self::D, logs)).await?;
        }
        Ok(())
    }

    /// A dead letter written (or, for a failed reprocess, written again), counted in the
    /// hourly statistics, its request failed; None when one for the message is still open.
    pub(crate) async fn dead_letter(&self, l: NewDeadLetter) -> Result<Option<i64>, StoreError> {
        let payload = json_payload(&l.payload);
        let subject = dlq_subject(&l.original_subject);
        let mut tx = DB::begin(&self.pool).await?;
        let id = match l.dlq_id {
            Some(dlq_id) => {
                let done = self
                    .execute(&mut tx, &dlq::failed_again(Self::D, &l, dlq_id))
                    .await?;
                (done.rows > 0).then_some(dlq_id)
            }
            None => {
                let done = self
                    .execute(&mut tx, &dlq::insert(Self::D, &l, subject, &payload))
                    .await?;
                (done.rows > 0).then_some(done.last_id)
            }
        };
        if id.is_some() {
            self.execute(
                &mut tx,
                &dlq::count_statistic(Self::D, subject, l.error_type),
            )
            .await?;
            if let Some(q) = dlq::request_failed(Self::D, &l) {
                self.execute(&mut tx, &q).await?;
            }
        }
        tx.commit().await.map_err(DB::error)?;
        Ok(id)
    }

    /// A reprocessed dead letter's message went through.
    pub(crate) async fn resolve_dead_letter(&self, dlq_id: i64) -> Result<(), StoreError> {
        self.run(&dlq::resolve(Self::D, dlq_id)).await.map(drop)
    }

    /// One more crash caused by the message `event_id`; how many so far.
    pub(crate) async fn record_crash(
        &self,
        event_id: &str,
        error: &str,
    ) -> Result<u32, StoreError> {
        let mut tx = DB::begin(&self.pool).await?;
        self.execute(&mut tx, &records::crash(Self::D, event_id, error))
            .await?;
        let row = records::crashes(Self::D, event_id)
            .query::<DB>()
            .fetch_optional(&mut *tx)
            .await
            .map_err(DB::error)?;
        tx.commit().await.map_err(DB::error)?;
        match row {
            Some(row) => row.count("crashes"),
            None => Ok(1),
        }
    }

    /// The crashes caused by the message `event_id` and the last one's message.
    pub(crate) async fn crashes(
        &self,
        event_id: &str,
    ) -> Result<Option<(u32, String)>, StoreError> {
        let rows = self.fetch_all(&records::crashes(Self::D, event_id)).await?;
        rows.first()
            .map(|row| {
                Ok((
                    row.count("crashes")?,
                    row.text("last_error")?.unwrap_or_default(),
                ))
            })
            .transpose()
    }

    async fn reprocess_one(&self, id: i64, r: &Reprocess) -> Result<DlqActionResult, StoreError> {
        let mut tx = DB::begin(&self.pool).await?;
        let result = self.reprocess_in(&mut tx, id, r).await?;
        if result.ok {
            tx.commit().await.map_err(DB::error)?;
        }
        Ok(result)
    }

    /// The statements of a reprocess of `id` (with its audit entry), in the transaction
    /// `tx`, which the caller commits when the result is ok.
    pub(super) async fn reprocess_in(
        &self,
        tx: &mut DB::Connection,
        id: i64,
        r: &Reprocess,
    ) -> Result<DlqActionResult, StoreError> {
        let tx = &mut *tx;
        let row = dlq::by_id(Self::D, id, true)
            .query::<DB>()
            .fetch_optional(&mut *tx)
            .await
            .map_err(DB::error)?;
        let letter = match row.as_ref().map(dlq::letter).transpose()? {
            None => return Ok(dlq::not_found(id)),
            Some(letter) => letter,
        };
        if let Some(refusal) = dlq::refuse_reprocess(&letter, r.force) {
            return Ok(refusal);
        }
        let event_id = uuid::Uuid::now_v7().to_string();
        for q in dlq::reprocess(Self::D, &letter, r, &event_id) {
            self.execute(tx, &q).await?;
        }
        let audit = Audit {
            operator: &r.operator,
            action: if r.automatic {
                "auto_reprocess"
            } else {
                "reprocess"
            },
            dlq_id: Some(id),
            fingerprint: letter.fingerprint.as_deref(),
            reason: r.reason.as_deref(),
            detail: serde_json::json!({
                "event_id": event_id,
                "status_before": letter.status.as_str(),
                "delay_ms": u64::try_from(r.delay.as_millis()).unwrap_or(u64::MAX),
                "force": r.force,
            }),
        };
        self.execute(tx, &dlq::audit(Self::D, &audit)).await?;
        Ok(dlq::reprocessed(id, event_id))
    }

    async fn discard_one(
        &self,
        id: i64,
        operator: &str,
        reason: Option<&str>,
    ) -> Result<DlqActionResult, StoreError> {
        let mut tx = DB::begin(&self.pool).await?;
        let done = self
            .execute(&mut tx, &dlq::discard(Self::D, id, operator, reason))
            .await?;
        if done.rows == 0 {
            drop(tx);
            return Ok(dlq::not_discarded(id, DlqStore::get(self, id).await?));
        }
        let audit = Audit {
            operator,
            action: "discard",
            dlq_id: Some(id),
            fingerprint: None,
            reason,
            detail: serde_json::json!({}),
        };
        self.execute(&mut tx, &dlq::audit(Self::D, &audit)).await?;
        tx.commit().await.map_err(DB::error)?;
        Ok(dlq::done(id))
    }

    /// Gives dead letters written before fingerprints theirs, a batch at a time.
    async fn backfill_fingerprints(&self) -> Result<(), StoreError> {
        loop {
            let letters = self.letters(&dlq::unfingerprinted(Self::D, 500)).await?;
            if letters.is_empty() {
                return Ok(());
            }
            for l in &letters {
                let fp = fingerprint(&l.original_subject, l.error_type, &l.error_message);
                self.run(&dlq::set_fingerprint(Self::D, l.id, &fp)).await?;
            }
        }
    }

    async fn edit_letter(&self, edit: &LetterEdit) -> Result<DlqActionResult, StoreError> {
        let mut tx = DB::begin(&self.pool).await?;
        let row = dlq::by_id(Self::D, edit.id, true)
            .query::<DB>()
            .fetch_optional(&mut *tx)
            .await
            .map_err(DB::error)?;
        let mut letter = match row.as_ref().map(dlq::letter).transpose()? {
            None => return Ok(dlq::not_found(edit.id)),
            Some(letter) => letter,
        };
        if letter.status != DlqStatus::Pending {
            return Ok(refused(
                edit.id,
                &format!(
                    "it is {}; only a pending dead letter can be edited",
                    letter.status.as_str()
                ),
            ));
        }
        if letter.payload != edit.before {
            return Ok(refused(
                edit.id,
                "its payload changed since this edit was prepared; look at it again",
            ));
        }
        letter.payload = edit.after.clone();
        self.execute(&mut tx, &dlq::set_payload(Self::D, edit.id, &edit.after))
            .await?;
        if let Some(q) = dlq::request_edited(Self::D, &letter) {
            self.execute(&mut tx, &q).await?;
        }
        let event_id = uuid::Uuid::now_v7().to_string();
        let replay = Reprocess {
            ids: vec![edit.id],
            delay: std::time::Duration::ZERO,
            force: false,
            operator: edit.operator.clone(),
            reason: edit.reason.clone(),
            automatic: false,
        };
        for q in dlq::reprocess(Self::D, &letter, &replay, &event_id) {
            self.execute(&mut tx, &q).await?;
        }
        let audit = Audit {
            operator: &edit.operator,
            action: "edit",
            dlq_id: Some(edit.id),
            fingerprint: letter.fingerprint.as_deref(),
            reason: edit.reason.as_deref(),
            detail: serde_json::json!({
                "before": edit.before,
                "after": edit.after,
                "event_id": event_id,
            }),
        };
        self.execute(&mut tx, &dlq::audit(Self::D, &audit)).await?;
        tx.commit().await.map_err(DB::error)?;
        Ok(dlq::reprocessed(edit.id, event_id))
    }
}

impl<DB> DlqStore for Shared<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    fn unstreamed(&self, limit: u32) -> BoxFuture<'_, Result<Vec<(DeadLetter, u32)>, StoreError>> {
        async move {
            let Some(q) = dlq::unstreamed(Self::D, limit) else {
                return Ok(Vec::new());
            };
            let rows = self.fetch_all(&q).await?;
            rows.iter()
                .map(|row| Ok((dlq::letter(row)?, row.count("stream_version")?)))
                .collect()
        }
        .boxed()
    }

    fn mark_streamed<'a>(
        &'a self,
        rows: &'a [(i64, u32)],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            for &(id, version) in rows {
                self.run(&dlq::streamed(Self::D, id, version)).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn list(&self, query: DlqQuery) -> BoxFuture<'_, Result<Vec<DeadLetter>, StoreError>> {
        async move {
            if query.fingerprint.is_some() {
                self.backfill_fingerprints().await?;
            }
            match dlq::list(Self::D, &query) {
                Some(q) => self.letters(&q).await,
                None => Ok(Vec::new()),
            }
        }
        .boxed()
    }

    fn get(&self, id: i64) -> BoxFuture<'_, Result<Option<DeadLetter>, StoreError>> {
        async move { Ok(self.letters(&dlq::by_id(Self::D, id, false)).await?.pop()) }.boxed()
    }

    fn stats(&self, since: DateTime<Utc>) -> BoxFuture<'_, Result<DlqStats, StoreError>> {
        async move {
            let mut stats = DlqStats::default();
            for (column, pending_only, target) in [
                ("status", false, &mut stats.by_status),
                ("error_type", true, &mut stats.by_error_type),
                ("dlq_subject", true, &mut stats.by_subject),
            ] {
                let rows = self
                    .fetch_all(&dlq::counted_by(Self::D, column, pending_only))
                    .await?;
                *target = rows
                    .iter()
                    .map(dlq::counted)
                    .collect::<Result<BTreeMap<_, _>, _>>()?;
            }
            let rows = self.fetch_all(&dlq::hourly(Self::D, since)).await?;
            stats.hourly = rows.iter().map(dlq::bucket).collect::<Result<_, _>>()?;
            Ok(stats)
        }
        .boxed()
    }

    fn reprocess(
        &self,
        request: Reprocess,
    ) -> BoxFuture<'_, Result<Vec<DlqActionResult>, StoreError>> {
        async move {
            let mut out = Vec::with_capacity(request.ids.len());
            for &id in &request.ids {
                out.push(self.reprocess_one(id, &request).await?);
            }
            Ok(out)
        }
        .boxed()
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
                out.push(self.discard_one(id, operator, reason).await?);
            }
            Ok(out)
        }
        .boxed()
    }

    fn history<'a>(
        &'a self,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<LetterHistory, StoreError>> {
        async move {
            let rows = self.fetch_all(&dlq::attempts(Self::D, message_id)).await?;
            let attempts = rows.iter().map(dlq::attempt).collect::<Result<_, _>>()?;
            let rows = self
                .fetch_all(&dlq::traceparent(Self::D, message_id))
                .await?;
            let traceparent = rows
                .first()
                .map(|row| row.text("traceparent"))
                .transpose()?;
            Ok(letter_history(attempts, traceparent))
        }
        .boxed()
    }

    fn has_dead_letter<'a>(&'a self, event_id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let rows = self.fetch_all(&dlq::of_message(Self::D, event_id)).await?;
            Ok(!rows.is_empty())
        }
        .boxed()
    }

    fn groups(&self, query: GroupQuery) -> BoxFuture<'_, Result<Vec<DlqGroup>, StoreError>> {
        async move {
            self.backfill_fingerprints().await?;
            let rows = self.fetch_all(&dlq::groups(Self::D, &query)).await?;
            let mut groups = Vec::with_capacity(rows.len());
            let mut examples = Vec::with_capacity(rows.len());
            for row in &rows {
                examples.push(row.required_int("example_id")?);
                groups.push((
                    row.required_text("fingerprint")?,
                    u64::try_from(row.required_int("n")?).unwrap_or(0),
                    row.time("first_seen")?.unwrap_or_default(),
                    row.time("last_seen")?.unwrap_or_default(),
                    row.required_int("example_id")?,
                ));
            }
            if examples.is_empty() {
                return Ok(Vec::new());
            }
            let letters = self.letters(&dlq::by_ids(Self::D, &examples)).await?;
            Ok(groups
                .into_iter()
                .filter_map(|(fp, count, first_seen, last_seen, example_id)| {
                    let example = letters.iter().find(|l| l.id == example_id)?;
                    Some(DlqGroup {
                        fingerprint: fp,
                        original_subject: example.original_subject.clone(),
                        error_type: example.error_type,
                        signature: normalise(&example.error_message),
                        count,
                        first_seen,
                        last_seen,
                        example_id,
                        example_error: example.error_message.clone(),
                    })
                })
                .collect())
        }
        .boxed()
    }

    fn discard_group<'a>(
        &'a self,
        fingerprint: &'a str,
        operator: &'a str,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            self.backfill_fingerprints().await?;
            let mut tx = DB::begin(&self.pool).await?;
            let done = self
                .execute(
                    &mut tx,
                    &dlq::discard_group(Self::D, fingerprint, operator, reason),
                )
                .await?;
            if done.rows > 0 {
                let audit = Audit {
                    operator,
                    action: "discard_group",
                    dlq_id: None,
                    fingerprint: Some(fingerprint),
                    reason,
                    detail: serde_json::json!({ "discarded": done.rows }),
                };
                self.execute(&mut tx, &dlq::audit(Self::D, &audit)).await?;
            }
            tx.commit().await.map_err(DB::error)?;
            Ok(done.rows)
        }
        .boxed()
    }

    fn audit(&self, query: AuditQuery) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        async move {
            let rows = self.fetch_all(&dlq::audit_list(Self::D, &query)).await?;
            rows.iter().map(dlq::audit_entry).collect()
        }
        .boxed()
    }

    fn edit(&self, edit: LetterEdit) -> BoxFuture<'_, Result<DlqActionResult, StoreError>> {
        async move { self.edit_letter(&edit).await }.boxed()
    }

    fn rule_candidates<'a>(
        &'a self,
        before: DateTime<Utc>,
        max_auto: u32,
        subjects: &'a [String],
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>> {
        async move {
            self.letters(&dlq::rule_candidates(
                Self::D,
                before,
                max_auto,
                subjects,
                limit,
            ))
            .await
        }
        .boxed()
    }
}

impl<DB> HealthStore for Shared<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    fn upsert_health<'a>(
        &'a self,
        rows: &'a [WorkerHealth],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            if !rows.is_empty() {
                self.run(&records::upsert_health(Self::D, rows)).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn list_health(&self) -> BoxFuture<'_, Result<Vec<WorkerHealth>, StoreError>> {
        async move {
            let rows = self.fetch_all(&records::list_health(Self::D)).await?;
            Ok(health_rows(
                rows.iter().map(records::health).collect::<Result<_, _>>()?,
            ))
        }
        .boxed()
    }
}
