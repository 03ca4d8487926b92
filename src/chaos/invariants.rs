//! The chaos run's verdict: after the drain, what became of every request, checked against
//! the promises of DESIGN §12, into the report.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::mysql::MySqlPool;

use super::harness::{ChaosError, Options, setup};
use super::load::{Kind, Outcome, REQUEST_BUDGET, Sent};
use super::report::{FaultRecord, Report, RequestCounts, mttr};
use super::services::MailDev;

/// Accepted requests not yet settled: neither emailed nor dead-lettered.
pub(super) async fn unsettled(
    db: &MySqlPool,
    accepted: &[(String, String)],
) -> Result<usize, String> {
    let settled = settled(db).await?;
    Ok(accepted
        .iter()
        .filter(|(id, _)| !settled.contains_key(id))
        .count())
}

/// How each settled request ended, by id: "emailed", or "dlq: <error type>".
async fn settled(db: &MySqlPool) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    let emailed: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(request_id AS CHAR(36)) FROM sent_emails WHERE request_id IS NOT NULL",
    )
    .fetch_all(db)
    .await
    .map_err(|e| format!("reading sent_emails: {e}"))?;
    for id in emailed {
        out.insert(id, "emailed".to_string());
    }
    let dead: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT CAST(JSON_UNQUOTE(JSON_EXTRACT(payload, '$.request_id')) AS CHAR(64)), CAST(error_type AS CHAR(16)) FROM dead_letter_messages",
    )
    .fetch_all(db)
    .await
    .map_err(|e| format!("reading dead_letter_messages: {e}"))?;
    for (id, kind) in dead.into_iter().filter_map(|(id, kind)| Some((id?, kind))) {
        out.entry(id).or_insert(format!("dlq: {kind}"));
    }
    Ok(out)
}

/// The invariants, into the report.
pub(super) async fn check(
    options: &Options,
    sent: &[Sent],
    accepted: &[(String, String)],
    db: &MySqlPool,
    mail: &MailDev,
    faults: Vec<FaultRecord>,
    elapsed: Duration,
) -> Result<Report, ChaosError> {
    let settled = settled(db).await.map_err(ChaosError::Setup)?;
    let emails = mail
        .emails()
        .await
        .map_err(|e| setup("maildev's API")(e.to_string()))?;
    // Emails per recipient, with their Message-IDs.
    let mut by_recipient: HashMap<String, Vec<String>> = HashMap::new();
    for email in &emails {
        let id = email["messageId"].as_str().unwrap_or_default().to_string();
        if let Some(to) = email["to"].as_array() {
            for to in to {
                if let Some(address) = to["address"].as_str() {
                    by_recipient
                        .entry(address.to_lowercase())
                        .or_default()
                        .push(id.clone());
                }
            }
        }
    }
    let mut counts = RequestCounts::default();
    let mut violations = Vec::new();
    for s in sent {
        counts.sent += 1;
        match (&s.kind, &s.outcome) {
            (Kind::Bad(_), Outcome::Rejected(_)) => counts.rejected += 1,
            (Kind::Bad(what), other) => {
                counts.bad_input_not_rejected += 1;
                violations.push(format!("bad input {what} was answered {other:?}"));
            }
            (_, Outcome::Accepted(_)) => counts.accepted += 1,
            (_, Outcome::Rejected(status)) => {
                counts.rejected += 1;
                violations.push(format!("a valid request to {} got HTTP {status}", s.email));
            }
            (_, Outcome::Unanswered(why)) => {
                counts.unanswered += 1;
                violations.push(format!(
                    "no answer for {} within {} s: {why}",
                    s.email,
                    REQUEST_BUDGET.as_secs()
                ));
            }
        }
    }
    let mut lost = 0;
    let mut duplicates = 0;
    let mut smtp_window = 0;
    let mut dlq = 0;
    let mut emailed = 0;
    for (id, email) in accepted {
        let ids = by_recipient.get(email).cloned().unwrap_or_default();
        if ids.len() > 1 {
            let mut unique = ids.clone();
            unique.sort();
            unique.dedup();
            // The same Message-ID twice: the documented SMTP window (DESIGN §12.2).
            smtp_window += ids.len() - unique.len();
            duplicates += unique.len() - 1;
        }
        match settled.get(id).map(String::as_str) {
            Some("emailed") if !ids.is_empty() => emailed += 1,
            Some("emailed") => {
                lost += 1;
                violations.push(format!(
                    "request {id} is recorded as emailed but {email} got nothing"
                ));
            }
            Some(_) => dlq += 1,
            None => {
                lost += 1;
                violations.push(format!(
                    "request {id} ({email}) has neither an email nor a DLQ entry"
                ));
            }
        }
    }
    if duplicates > 0 {
        violations.push(format!(
            "{duplicates} duplicate emails with distinct Message-IDs"
        ));
    }
    let unpublished: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
            .fetch_one(db)
            .await
            .map_err(|e| setup("read the outbox")(e.to_string()))?;
    if unpublished > 0 {
        violations.push(format!("{unpublished} outbox rows never published"));
    }
    let unhealthy: Vec<String> = sqlx::query_scalar(
        "SELECT worker_name FROM worker_health_checks WHERE status <> 'healthy' OR last_heartbeat < NOW(6) - INTERVAL 15 SECOND",
    )
    .fetch_all(db)
    .await
    .map_err(|e| setup("read worker_health_checks")(e.to_string()))?;
    if !unhealthy.is_empty() {
        violations.push(format!("workers not healthy after the run: {unhealthy:?}"));
    }
    for f in &faults {
        if f.recovered_ms.is_none() {
            violations.push(format!(
                "fault {} ({}) did not heal",
                f.index, f.description
            ));
        }
    }
    Ok(Report {
        profile: options.profile.name,
        seed: options.seed,
        daemons: options.daemons,
        cluster: options.cluster,
        duration_s: elapsed.as_secs_f64(),
        requests: counts,
        emailed,
        dlq_entries: dlq,
        lost,
        duplicates,
        duplicates_smtp_window: smtp_window,
        unpublished_outbox: unpublished,
        unhealthy_workers: unhealthy,
        ok: violations.is_empty(),
        mttr: mttr(&faults),
        faults,
        violations,
    })
}
