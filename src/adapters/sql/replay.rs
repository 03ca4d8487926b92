//! Safe replay jobs, for both stores: a job and its letters (snapshotted when it starts),
//! the lease that makes one daemon run it, each letter's replay (a reprocess, in one
//! transaction with the letter's item), the outcomes read back from the letters, and the
//! operators' pause, resume and cancel — each audited.

use std::time::Duration;

use actors::model::{
    NewReplay, ReplayCounts, ReplayJob, ReplayPace, ReplaySelection, ReplayState, Reprocess,
};
use actors::{ReplayControl, ReplayStore, StoreError};
use futures::FutureExt;
use futures::future::BoxFuture;

use super::dlq::{self, Audit};
use super::store::Shared;
use super::{Backend, Columns, Dialect, Sql};

/// `AND …` for each part of `selection`, on `dead_letter_messages`; only pending letters,
/// and poison ones only with `force`.
fn matching(q: &mut Sql, selection: &ReplaySelection, force: bool) {
    q.push(" WHERE status = 'pending'");
    if !force {
        q.push(" AND error_type <> 'poison'");
    }
    if !selection.ids.is_empty() {
        q.push(" AND id IN ").list(selection.ids.iter().copied());
        return;
    }
    if let Some(subject) = &selection.subject {
        q.push(" AND original_subject = ").bind(subject);
    }
    if let Some(t) = selection.error_type {
        q.push(" AND error_type = ").bind(t.as_str());
    }
    if let Some(fp) = &selection.fingerprint {
        q.push(" AND fingerprint = ").bind(fp);
    }
    if let Some(since) = selection.since {
        q.push(" AND dlq_created_at >= ").bind(since);
    }
    if let Some(until) = selection.until {
        q.push(" AND dlq_created_at < ").bind(until);
    }
}

fn count_matching(d: Dialect, selection: &ReplaySelection, force: bool) -> Sql {
    let mut q = Sql::new(d, "SELECT COUNT(*) AS n FROM dead_letter_messages");
    matching(&mut q, selection, force);
    q
}

fn ids_matching(d: Dialect, selection: &ReplaySelection, force: bool, limit: u32) -> Sql {
    let mut q = Sql::new(d, "SELECT id FROM dead_letter_messages");
    matching(&mut q, selection, force);
    q.push(" ORDER BY id LIMIT ").bind(limit);
    q
}

fn insert_job(d: Dialect, job: &NewReplay) -> Result<Sql, StoreError> {
    let selection = serde_json::to_string(&job.selection)
        .map_err(|e| StoreError::Rejected(format!("the selection cannot be written: {e}")))?;
    let pace = serde_json::to_string(&job.pace)
        .map_err(|e| StoreError::Rejected(format!("the pace cannot be written: {e}")))?;
    let mut q = Sql::new(
        d,
        "INSERT INTO dlq_replay_jobs (state, operator, reason, trigger_kind, selection, pace, \
         force_poison, total, created_at, updated_at) VALUES ('running', ",
    );
    q.bind(&job.operator)
        .push(", ")
        .bind(&job.reason)
        .push(", ")
        .bind(&job.trigger)
        .push(", ")
        .bind(selection)
        .push(", ")
        .bind(pace)
        .push(", ")
        .bind(i64::from(job.force))
        .push(", 0, ")
        .now()
        .push(", ")
        .now()
        .push(")");
    Ok(q)
}

fn snapshot(d: Dialect, id: i64, job: &NewReplay) -> Sql {
    let mut q = Sql::new(
        d,
        "INSERT INTO dlq_replay_items (job_id, dlq_id, state) SELECT ",
    );
    q.bind(id).push(", id, 'queued' FROM dead_letter_messages");
    matching(&mut q, &job.selection, job.force);
    q
}

fn set_total(d: Dialect, id: i64, total: u64) -> Sql {
    let mut q = Sql::new(d, "UPDATE dlq_replay_jobs SET total = ");
    q.bind(i64::try_from(total).unwrap_or(i64::MAX))
        .push(" WHERE id = ")
        .bind(id);
    q
}

fn select_jobs(d: Dialect) -> Sql {
    Sql::new(
        d,
        "SELECT id, state, operator, reason, trigger_kind, selection, pace, force_poison, total, \
         owner, stop_reason, created_at, finished_at FROM dlq_replay_jobs",
    )
}

fn job_by_id(d: Dialect, id: i64, lock: bool) -> Sql {
    let mut q = select_jobs(d);
    q.push(" WHERE id = ").bind(id);
    if lock && d == Dialect::Mysql {
        q.push(" FOR UPDATE");
    }
    q
}

fn job(row: &impl Columns) -> Result<ReplayJob, StoreError> {
    let state = row.required_text("state")?;
    let pace: ReplayPace = serde_json::from_str(&row.required_text("pace")?)
        .map_err(|e| StoreError::Rejected(format!("a replay job's pace is unreadable: {e}")))?;
    let selection = row.required_text("selection")?;
    Ok(ReplayJob {
        id: row.required_int("id")?,
        state: ReplayState::parse(&state)
            .ok_or_else(|| StoreError::Rejected(format!("unknown replay state {state:?}")))?,
        operator: row.required_text("operator")?,
        reason: row.text("reason")?,
        trigger: row.required_text("trigger_kind")?,
        selection: serde_json::from_str(&selection).unwrap_or(serde_json::Value::String(selection)),
        pace,
        force: row.int("force_poison")?.unwrap_or(0) != 0,
        total: u64::try_from(row.required_int("total")?).unwrap_or(0),
        counts: ReplayCounts::default(),
        stop_reason: row.text("stop_reason")?,
        owner: row.text("owner")?,
        created_at: row.time("created_at")?.unwrap_or_default(),
        finished_at: row.time("finished_at")?,
    })
}

fn counts_of(d: Dialect, id: i64) -> Sql {
    let mut q = Sql::new(
        d,
        "SELECT state AS k, COUNT(*) AS n FROM dlq_replay_items WHERE job_id = ",
    );
    q.bind(id).push(" GROUP BY state");
    q
}

/// The letters in flight of job `id` whose dead letter is now `status` become `to`.
fn settle(d: Dialect, id: i64, status: &str, to: &str) -> Sql {
    let mut q = Sql::new(d, "UPDATE dlq_replay_items SET state = ");
    q.bind(to)
        .push(" WHERE job_id = ")
        .bind(id)
        .push(
            " AND state = 'sent' AND EXISTS (SELECT 1 FROM dead_letter_messages d \
             WHERE d.id = dlq_replay_items.dlq_id AND d.status = ",
        )
        .bind(status)
        .push(")");
    q
}

fn claim(d: Dialect, owner: &str, lease: Duration) -> Sql {
    let lease_us = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 4);
    let mut q = Sql::new(d, "UPDATE dlq_replay_jobs SET owner = ");
    q.bind(owner).push(", lease_until = ");
    match d {
        Dialect::Mysql => q
            .push("NOW(6) + INTERVAL ")
            .bind(lease_us)
            .push(" MICROSECOND"),
        Dialect::Sqlite => {
            q.bind(chrono::Utc::now() + chrono::Duration::microseconds(lease_us.min(i64::MAX / 4)))
        }
    };
    q.push(" WHERE state = 'running' AND (owner IS NULL OR owner = ")
        .bind(owner)
        .push(" OR lease_until IS NULL OR lease_until < ")
        .now()
        .push(")");
    q
}

fn owned(d: Dialect, owner: &str) -> Sql {
    let mut q = select_jobs(d);
    q.push(" WHERE state = 'running' AND owner = ")
        .bind(owner)
        .push(" ORDER BY id");
    q
}

fn queued(d: Dialect, id: i64, n: u32) -> Sql {
    let mut q = Sql::new(
        d,
        "SELECT dlq_id FROM dlq_replay_items WHERE state = 'queued' AND job_id = ",
    );
    q.bind(id).push(" ORDER BY dlq_id LIMIT ").bind(n);
    q
}

fn take_item(d: Dialect, id: i64, dlq_id: i64) -> Sql {
    let mut q = Sql::new(d, "UPDATE dlq_replay_items SET state = 'sent', sent_at = ");
    q.now()
        .push(" WHERE job_id = ")
        .bind(id)
        .push(" AND dlq_id = ")
        .bind(dlq_id)
        .push(" AND state = 'queued'");
    q
}

fn item_done(d: Dialect, id: i64, dlq_id: i64, state: &str, event_id: Option<&str>) -> Sql {
    let mut q = Sql::new(d, "UPDATE dlq_replay_items SET state = ");
    q.bind(state)
        .push(", event_id = ")
        .bind(event_id)
        .push(" WHERE job_id = ")
        .bind(id)
        .push(" AND dlq_id = ")
        .bind(dlq_id);
    q
}

fn set_state(d: Dialect, id: i64, to: ReplayState, reason: Option<&str>) -> Sql {
    let mut q = Sql::new(d, "UPDATE dlq_replay_jobs SET state = ");
    q.bind(to.as_str()).push(", updated_at = ").now();
    if to.ended() {
        q.push(", finished_at = ").now();
    }
    if let Some(reason) = reason {
        q.push(", stop_reason = ").bind(reason);
    }
    q.push(" WHERE id = ").bind(id);
    q
}

/// What an operator may do to a job in `state`, as `to`; None when allowed.
fn refuse(state: ReplayState, to: ReplayState) -> Option<String> {
    let allowed = match to {
        ReplayState::Paused => state == ReplayState::Running,
        ReplayState::Running => state == ReplayState::Paused,
        ReplayState::Cancelled => matches!(state, ReplayState::Running | ReplayState::Paused),
        ReplayState::Done | ReplayState::Aborted => false,
    };
    (!allowed).then(|| {
        format!(
            "the job is {}; it can be {}",
            state.as_str(),
            match state {
                ReplayState::Running => "paused or cancelled",
                ReplayState::Paused => "resumed or cancelled",
                _ => "left as it is (it has ended)",
            }
        )
    })
}

impl<DB> Shared<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    async fn counts(&self, id: i64) -> Result<ReplayCounts, StoreError> {
        let mut counts = ReplayCounts::default();
        for row in self.fetch_all(&counts_of(DB::DIALECT, id)).await? {
            let (state, n) = dlq::counted(&row)?;
            match state.as_str() {
                "queued" => counts.queued = n,
                "sent" => counts.in_flight = n,
                "succeeded" => counts.succeeded = n,
                "failed" => counts.failed = n,
                _ => counts.skipped += n,
            }
        }
        Ok(counts)
    }

    async fn jobs(&self, q: &Sql) -> Result<Vec<ReplayJob>, StoreError> {
        let rows = self.fetch_all(q).await?;
        let mut jobs = rows.iter().map(job).collect::<Result<Vec<_>, _>>()?;
        for j in &mut jobs {
            j.counts = self.counts(j.id).await?;
        }
        Ok(jobs)
    }

    async fn one_job(&self, id: i64) -> Result<Option<ReplayJob>, StoreError> {
        Ok(self.jobs(&job_by_id(DB::DIALECT, id, false)).await?.pop())
    }
}

impl<DB> ReplayStore for Shared<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    fn start_replay(&self, new: NewReplay) -> BoxFuture<'_, Result<ReplayJob, StoreError>> {
        async move {
            let d = DB::DIALECT;
            let mut tx = DB::begin(&self.pool).await?;
            let id = self.execute(&mut tx, &insert_job(d, &new)?).await?.last_id;
            let total = self.execute(&mut tx, &snapshot(d, id, &new)).await?.rows;
            self.execute(&mut tx, &set_total(d, id, total)).await?;
            let audit = Audit {
                operator: &new.operator,
                action: "replay_start",
                dlq_id: None,
                fingerprint: new.selection.fingerprint.as_deref(),
                reason: new.reason.as_deref(),
                detail: serde_json::json!({
                    "job": id, "letters": total, "trigger": new.trigger,
                    "selection": new.selection, "pace": new.pace, "force": new.force,
                }),
            };
            self.execute(&mut tx, &dlq::audit(d, &audit)).await?;
            tx.commit().await.map_err(DB::error)?;
            self.one_job(id).await?.ok_or_else(|| {
                StoreError::Rejected(format!("replay job {id} vanished after it was written"))
            })
        }
        .boxed()
    }

    fn preview_replay(
        &self,
        selection: ReplaySelection,
        force: bool,
        limit: u32,
    ) -> BoxFuture<'_, Result<(u64, Vec<i64>), StoreError>> {
        async move {
            let d = DB::DIALECT;
            let rows = self
                .fetch_all(&count_matching(d, &selection, force))
                .await?;
            let n = match rows.first() {
                Some(row) => u64::try_from(row.required_int("n")?).unwrap_or(0),
                None => 0,
            };
            let ids = self
                .fetch_all(&ids_matching(d, &selection, force, limit))
                .await?
                .iter()
                .map(|row| row.required_int("id"))
                .collect::<Result<_, _>>()?;
            Ok((n, ids))
        }
        .boxed()
    }

    fn replays(&self, limit: u32) -> BoxFuture<'_, Result<Vec<ReplayJob>, StoreError>> {
        async move {
            let mut q = select_jobs(DB::DIALECT);
            q.push(" ORDER BY id DESC LIMIT ").bind(limit);
            self.jobs(&q).await
        }
        .boxed()
    }

    fn replay(&self, id: i64) -> BoxFuture<'_, Result<Option<ReplayJob>, StoreError>> {
        async move { self.one_job(id).await }.boxed()
    }

    fn control_replay<'a>(
        &'a self,
        id: i64,
        to: ReplayState,
        operator: &'a str,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ReplayControl, StoreError>> {
        async move {
            let d = DB::DIALECT;
            let mut tx = DB::begin(&self.pool).await?;
            let row = job_by_id(d, id, true)
                .query::<DB>()
                .fetch_optional(&mut *tx)
                .await
                .map_err(DB::error)?;
            let Some(current) = row.as_ref().map(job).transpose()? else {
                return Ok(ReplayControl::NotFound);
            };
            if let Some(why) = refuse(current.state, to) {
                return Ok(ReplayControl::Refused(why));
            }
            let stop = (to == ReplayState::Cancelled).then(|| {
                format!(
                    "cancelled by {operator}{}",
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                )
            });
            self.execute(&mut tx, &set_state(d, id, to, stop.as_deref()))
                .await?;
            let action = match to {
                ReplayState::Paused => "replay_pause",
                ReplayState::Running => "replay_resume",
                _ => "replay_cancel",
            };
            let audit = Audit {
                operator,
                action,
                dlq_id: None,
                fingerprint: None,
                reason,
                detail: serde_json::json!({ "job": id, "from": current.state.as_str() }),
            };
            self.execute(&mut tx, &dlq::audit(d, &audit)).await?;
            tx.commit().await.map_err(DB::error)?;
            match self.one_job(id).await? {
                Some(job) => Ok(ReplayControl::Changed(Box::new(job))),
                None => Ok(ReplayControl::NotFound),
            }
        }
        .boxed()
    }

    fn claim_replays<'a>(
        &'a self,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<ReplayJob>, StoreError>> {
        async move {
            let d = DB::DIALECT;
            // Most ticks find no job: a read, instead of an UPDATE four times a second.
            let any = Sql::new(
                d,
                "SELECT id FROM dlq_replay_jobs WHERE state = 'running' LIMIT 1",
            );
            if self.fetch_all(&any).await?.is_empty() {
                return Ok(Vec::new());
            }
            self.run(&claim(d, owner, lease)).await?;
            let rows = self.fetch_all(&owned(d, owner)).await?;
            rows.iter().map(job).collect()
        }
        .boxed()
    }

    fn settle_replay(&self, id: i64) -> BoxFuture<'_, Result<ReplayCounts, StoreError>> {
        async move {
            let d = DB::DIALECT;
            for (status, to) in [
                ("resolved", "succeeded"),
                ("pending", "failed"),
                ("discarded", "skipped"),
            ] {
                self.run(&settle(d, id, status, to)).await?;
            }
            self.counts(id).await
        }
        .boxed()
    }

    fn queued_replay(&self, id: i64, n: u32) -> BoxFuture<'_, Result<Vec<i64>, StoreError>> {
        async move {
            self.fetch_all(&queued(DB::DIALECT, id, n))
                .await?
                .iter()
                .map(|row| row.required_int("dlq_id"))
                .collect()
        }
        .boxed()
    }

    fn send_replay<'a>(
        &'a self,
        job: &'a ReplayJob,
        dlq_id: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let d = DB::DIALECT;
            let mut tx = DB::begin(&self.pool).await?;
            if self
                .execute(&mut tx, &take_item(d, job.id, dlq_id))
                .await?
                .rows
                == 0
            {
                // Taken already (by the daemon that held the lease before).
                return Ok(false);
            }
            let request = Reprocess {
                ids: vec![dlq_id],
                delay: Duration::ZERO,
                force: job.force,
                operator: job.operator.clone(),
                reason: Some(format!(
                    "replay job {}{}",
                    job.id,
                    job.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )),
                automatic: false,
            };
            let result = self.reprocess_in(&mut tx, dlq_id, &request).await?;
            let sent = result.ok;
            let (state, event_id) = if sent {
                ("sent", result.event_id.as_deref())
            } else {
                ("skipped", None)
            };
            self.execute(&mut tx, &item_done(d, job.id, dlq_id, state, event_id))
                .await?;
            tx.commit().await.map_err(DB::error)?;
            Ok(sent)
        }
        .boxed()
    }

    fn end_replay<'a>(
        &'a self,
        id: i64,
        state: ReplayState,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let d = DB::DIALECT;
            let counts = self.counts(id).await?;
            let mut tx = DB::begin(&self.pool).await?;
            let mut q = set_state(d, id, state, reason);
            q.push(" AND state = 'running'");
            if self.execute(&mut tx, &q).await?.rows > 0 {
                let audit = Audit {
                    operator: "replay-job",
                    action: if state == ReplayState::Aborted {
                        "replay_abort"
                    } else {
                        "replay_done"
                    },
                    dlq_id: None,
                    fingerprint: None,
                    reason,
                    detail: serde_json::json!({ "job": id, "counts": counts }),
                };
                self.execute(&mut tx, &dlq::audit(d, &audit)).await?;
            }
            tx.commit().await.map_err(DB::error)?;
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_pause_running_jobs_resume_paused_ones_and_cancel_either() {
        use ReplayState::*;
        assert_eq!(refuse(Running, Paused), None);
        assert_eq!(refuse(Paused, Running), None);
        assert_eq!(refuse(Running, Cancelled), None);
        assert_eq!(refuse(Paused, Cancelled), None);
        assert!(
            refuse(Running, Running)
                .unwrap()
                .contains("paused or cancelled")
        );
        assert!(refuse(Done, Cancelled).unwrap().contains("it has ended"));
        assert!(refuse(Aborted, Running).is_some());
    }

    #[test]
    fn a_selection_of_ids_ignores_the_filters_and_poison_needs_force() {
        let sel = ReplaySelection {
            ids: vec![3, 4],
            subject: Some("email.send".into()),
            ..ReplaySelection::default()
        };
        let q = count_matching(Dialect::Sqlite, &sel, false);
        assert!(q.text().contains("id IN (?, ?)"), "{}", q.text());
        assert!(!q.text().contains("original_subject"), "{}", q.text());
        assert!(q.text().contains("error_type <> 'poison'"));
        let forced = count_matching(Dialect::Sqlite, &sel, true);
        assert!(!forced.text().contains("poison"));
    }
}
