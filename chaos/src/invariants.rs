//! The chaos run's verdict: after the drain, what became of every request, checked against
//! the promises of DESIGN §12, into the report.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sqlx::mysql::MySqlPool;

use super::load::{Kind, Outcome, REQUEST_BUDGET, Sent};
use super::options::{ChaosError, Options, setup};
use super::report::{FaultRecord, Report, RequestCounts, mttr};
use super::schedule::{Fault, Link};
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

/// What a request must end as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Expected {
    /// One email with this answer, and a `done` row.
    Answer {
        /// The number.
        number: String,
        /// Whether it is prime.
        prime: bool,
    },
    /// A dead letter of a permanent failure, and no email.
    PermanentFailure,
}

/// An accepted request.
#[derive(Debug, Clone)]
pub(super) struct Accepted {
    pub(super) id: String,
    pub(super) email: String,
    pub(super) expected: Expected,
}

/// An email the SMTP server received.
#[derive(Debug, Clone)]
pub(super) struct Received {
    /// Recipient, lower case.
    pub(super) to: String,
    pub(super) message_id: String,
    /// When the daemon composed it (Unix ms): maildev's `time` is the message's `Date`
    /// header, whole seconds, set as each send renders the email.
    pub(super) at_ms: i64,
    /// Subject and body.
    pub(super) text: String,
}

/// A `sent_emails` row.
#[derive(Debug, Clone)]
pub(super) struct Recorded {
    pub(super) message_id: String,
    /// When it was written (Unix ms).
    pub(super) at_ms: i64,
}

/// A dead letter of a request.
#[derive(Debug, Clone)]
pub(super) struct Letter {
    pub(super) error_type: String,
    pub(super) error: String,
}

/// A request's row in `prime_check_requests`.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) status: String,
    pub(super) is_prime: Option<bool>,
}

/// When a fault could have cut an email's record short, and how many sends it could catch.
#[derive(Debug, Clone)]
pub(super) struct Window {
    /// The fault's position in the schedule.
    pub(super) index: usize,
    /// From (Unix ms): a record still being written when the fault hit counts.
    pub(super) from_ms: i64,
    /// To (Unix ms): until the daemons were healthy again.
    pub(super) to_ms: i64,
    /// Most emails it can have caught between the SMTP server's acceptance and the record:
    /// the sends in flight in the daemons it hit.
    pub(super) in_flight: usize,
}

/// Everything the checker reads after the drain.
#[derive(Debug, Clone, Default)]
pub(super) struct Evidence {
    pub(super) accepted: Vec<Accepted>,
    pub(super) emails: Vec<Received>,
    /// By request id.
    pub(super) records: HashMap<String, Recorded>,
    /// By request id.
    pub(super) letters: HashMap<String, Vec<Letter>>,
    /// By request id.
    pub(super) rows: HashMap<String, Row>,
    /// The faults that can leave an email sent but not recorded.
    pub(super) windows: Vec<Window>,
}

/// What became of the accepted requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Verdict {
    /// Requests whose one email arrived with the right answer.
    pub(super) emailed: usize,
    /// Permanent failures dead-lettered as such.
    pub(super) dead_lettered: usize,
    /// Requests that did not end as they must: no email, or no dead letter.
    pub(super) lost: usize,
    /// Extra emails with a Message-ID of their own.
    pub(super) duplicates: usize,
    /// Repeats of a Message-ID that a fault explains (the documented window).
    pub(super) explained_repeats: usize,
    /// Repeats of a Message-ID that nothing explains: real duplicates.
    pub(super) unexplained_repeats: usize,
    /// Emails or rows with the wrong answer.
    pub(super) wrong_answers: usize,
    /// Requests emailed and dead-lettered both, or ended the other way than they must.
    pub(super) misrouted: usize,
    /// What broke a promise.
    pub(super) violations: Vec<String>,
}

/// How far before a fault a send may have been accepted and still not be recorded when it
/// hit: the record normally follows the acceptance within milliseconds.
const BEFORE_FAULT_MS: i64 = 1_000;
/// A copy composed more than this after its send was recorded was sent by a daemon that
/// could have known: the "already sent?" check failed.
const AFTER_RECORD_MS: i64 = 250;
/// An email's time is its `Date` header, in whole seconds (rounded down): the send happened
/// within this much after it.
const DATE_PRECISION_MS: i64 = 1_000;

/// The verdict on `e` (pure: the unit tests craft evidence to break each promise).
pub(super) fn judge(e: &Evidence) -> Verdict {
    let mut v = Verdict::default();
    let mut by_recipient: HashMap<&str, Vec<&Received>> = HashMap::new();
    for email in &e.emails {
        by_recipient
            .entry(email.to.as_str())
            .or_default()
            .push(email);
    }
    let mut caught: BTreeMap<usize, usize> = BTreeMap::new();
    for r in &e.accepted {
        let mut copies = by_recipient
            .get(r.email.to_lowercase().as_str())
            .cloned()
            .unwrap_or_default();
        copies.sort_by_key(|c| c.at_ms);
        let letters = e.letters.get(&r.id).map(Vec::as_slice).unwrap_or_default();
        // Copies grouped by Message-ID, in order of first arrival.
        let mut groups: Vec<(&str, Vec<&Received>)> = Vec::new();
        for c in &copies {
            match groups.iter_mut().find(|(id, _)| *id == c.message_id) {
                Some((_, g)) => g.push(c),
                None => groups.push((c.message_id.as_str(), vec![c])),
            }
        }
        if groups.len() > 1 {
            v.duplicates += groups.len() - 1;
            v.violations.push(format!(
                "request {} ({}) got {} emails with different Message-IDs",
                r.id,
                r.email,
                groups.len()
            ));
        }
        for (message_id, group) in &groups {
            let first = group[0].at_ms;
            for copy in &group[1..] {
                let record = e
                    .records
                    .get(&r.id)
                    .filter(|rec| rec.message_id == *message_id);
                if let Some(rec) = record.filter(|rec| copy.at_ms > rec.at_ms + AFTER_RECORD_MS) {
                    v.unexplained_repeats += 1;
                    v.violations.push(format!(
                        "request {}: a copy of {message_id} was sent {} ms after its send was recorded (the \"already sent?\" check did not stop it)",
                        r.id,
                        copy.at_ms - rec.at_ms
                    ));
                    continue;
                }
                // The first copy was sent within [first, first + DATE_PRECISION_MS).
                match e.windows.iter().find(|w| {
                    w.from_ms - BEFORE_FAULT_MS < first + DATE_PRECISION_MS && first <= w.to_ms
                }) {
                    Some(w) => {
                        v.explained_repeats += 1;
                        *caught.entry(w.index).or_default() += 1;
                    }
                    None => {
                        v.unexplained_repeats += 1;
                        v.violations.push(format!(
                            "request {}: {message_id} was sent again with no fault that could have cut its record short (first copy at {first} ms)",
                            r.id
                        ));
                    }
                }
            }
        }
        match &r.expected {
            Expected::Answer { number, prime } => {
                if let Some(l) = letters.first() {
                    v.misrouted += 1;
                    v.violations.push(format!(
                        "valid request {} ({}) was dead-lettered ({}: {})",
                        r.id, r.email, l.error_type, l.error
                    ));
                }
                let Some(first) = copies.first() else {
                    v.lost += 1;
                    v.violations
                        .push(format!("request {} ({}) got no email", r.id, r.email));
                    continue;
                };
                let answer = if *prime { "is prime" } else { "is not prime" };
                let row = e.rows.get(&r.id);
                let row_right =
                    row.is_some_and(|row| row.status == "done" && row.is_prime == Some(*prime));
                if !first.text.contains(&format!("{number} {answer}.")) {
                    v.wrong_answers += 1;
                    v.violations.push(format!(
                        "request {} ({number}): the email does not say it {answer}",
                        r.id
                    ));
                } else if !row_right {
                    v.wrong_answers += 1;
                    v.violations.push(format!(
                        "request {} ({number}) {answer}, but its row is {:?}",
                        r.id,
                        row.map(|row| (row.status.as_str(), row.is_prime))
                    ));
                } else if letters.is_empty() {
                    v.emailed += 1;
                }
            }
            Expected::PermanentFailure => {
                if !copies.is_empty() {
                    v.misrouted += 1;
                    v.violations.push(format!(
                        "request {} ({}) must fail permanently but was emailed",
                        r.id, r.email
                    ));
                }
                match letters.iter().find(|l| l.error_type == "permanent") {
                    Some(_) if copies.is_empty() => v.dead_lettered += 1,
                    Some(_) => {}
                    None if letters.is_empty() => {
                        v.lost += 1;
                        v.violations.push(format!(
                            "request {} ({}) must fail permanently but has no dead letter",
                            r.id, r.email
                        ));
                    }
                    None => {
                        v.misrouted += 1;
                        v.violations.push(format!(
                            "request {} was dead-lettered as {} ({}), not as a permanent failure",
                            r.id, letters[0].error_type, letters[0].error
                        ));
                    }
                }
            }
        }
    }
    for w in &e.windows {
        let n = caught.get(&w.index).copied().unwrap_or(0);
        if n > w.in_flight {
            v.violations.push(format!(
                "fault {}: {n} repeated emails, more than the {} sends that can be in flight when it hit",
                w.index, w.in_flight
            ));
        }
    }
    v
}

/// Whether `fault` can leave an email accepted by the SMTP server but not recorded, and in
/// how many daemons (`None`: it cannot; NATS and Redis faults lose acknowledgements or
/// limits, never a record, so a redelivery finds the record and sends nothing).
fn cuts_records(fault: &Fault, daemons: usize) -> Option<usize> {
    match fault {
        Fault::KillDaemon { .. } | Fault::PauseDaemon { .. } => Some(1),
        Fault::CrashActor { actor, .. } if actor.starts_with("email-worker") => Some(1),
        Fault::RestartMariadb | Fault::KillDbConnections => Some(daemons),
        Fault::LinkLatency { link, .. }
        | Fault::LinkBandwidth { link, .. }
        | Fault::LinkPartition { link, .. }
        | Fault::LinkReset { link }
            if matches!(link, Link::Database | Link::Smtp) =>
        {
            Some(daemons)
        }
        _ => None,
    }
}

/// The faults' windows, in Unix ms, from the run's records.
pub(super) fn windows(
    faults: &[FaultRecord],
    load_started_ms: i64,
    daemons: usize,
    sends_per_daemon: usize,
    recovery_timeout: Duration,
) -> Vec<Window> {
    faults
        .iter()
        .filter_map(|f| {
            let hit = cuts_records(&f.fault, daemons)?;
            let from_ms = load_started_ms + i64::try_from(f.at_ms).unwrap_or(i64::MAX / 4);
            let healed = f
                .recovered_ms
                .unwrap_or(recovery_timeout.as_secs_f64() * 1000.0);
            let to_ms =
                from_ms + i64::try_from(f.held_ms).unwrap_or(i64::MAX / 4) + healed.ceil() as i64;
            Some(Window {
                index: f.index,
                from_ms,
                to_ms,
                in_flight: hit * sends_per_daemon,
            })
        })
        .collect()
}

/// Reads the evidence: the requests sent, what the SMTP server received, and the rows.
async fn gather(
    sent: &[Sent],
    db: &MySqlPool,
    mail: &MailDev,
    windows: Vec<Window>,
) -> Result<Evidence, ChaosError> {
    let read = |what: &'static str| move |e: sqlx::Error| setup(what)(e.to_string());
    let accepted = sent
        .iter()
        .filter_map(|s| {
            let Outcome::Accepted(id) = &s.outcome else {
                return None;
            };
            let expected = match s.kind {
                Kind::Permanent => Expected::PermanentFailure,
                Kind::Bad(_) => return None,
                Kind::Valid | Kind::Probe => Expected::Answer {
                    number: s.number.clone(),
                    prime: s
                        .number
                        .parse::<actors::primality::UBig>()
                        .is_ok_and(|n| actors::primality::is_prime_big(&n)),
                },
            };
            Some(Accepted {
                id: id.clone(),
                email: s.email.clone(),
                expected,
            })
        })
        .collect();
    let mut emails = Vec::new();
    for email in mail
        .emails()
        .await
        .map_err(|e| setup("maildev's API")(e.to_string()))?
    {
        let message_id = email["messageId"].as_str().unwrap_or_default().to_string();
        let at_ms = email["time"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(0, |t| t.timestamp_millis());
        let text = format!(
            "{}\n{}",
            email["subject"].as_str().unwrap_or_default(),
            email["text"].as_str().unwrap_or_default()
        );
        for to in email["to"].as_array().into_iter().flatten() {
            if let Some(address) = to["address"].as_str() {
                emails.push(Received {
                    to: address.to_lowercase(),
                    message_id: message_id.clone(),
                    at_ms,
                    text: text.clone(),
                });
            }
        }
    }
    let records: Vec<(Option<String>, String, i64)> = sqlx::query_as(
        "SELECT CAST(request_id AS CHAR(36)), message_id, CAST(UNIX_TIMESTAMP(sent_at) * 1000 AS SIGNED) FROM sent_emails",
    )
    .fetch_all(db)
    .await
    .map_err(read("read sent_emails"))?;
    let letters: Vec<(Option<String>, String, String)> = sqlx::query_as(
        "SELECT CAST(JSON_UNQUOTE(JSON_EXTRACT(payload, '$.request_id')) AS CHAR(64)), CAST(error_type AS CHAR(16)), error_message FROM dead_letter_messages",
    )
    .fetch_all(db)
    .await
    .map_err(read("read dead_letter_messages"))?;
    let rows: Vec<(String, String, Option<bool>)> = sqlx::query_as(
        "SELECT CAST(id AS CHAR(36)), CAST(status AS CHAR(16)), is_prime FROM prime_check_requests",
    )
    .fetch_all(db)
    .await
    .map_err(read("read prime_check_requests"))?;
    let mut evidence = Evidence {
        accepted,
        emails,
        windows,
        ..Evidence::default()
    };
    for (id, message_id, at_ms) in records {
        if let Some(id) = id {
            evidence.records.insert(id, Recorded { message_id, at_ms });
        }
    }
    for (id, error_type, error) in letters {
        if let Some(id) = id {
            evidence
                .letters
                .entry(id)
                .or_default()
                .push(Letter { error_type, error });
        }
    }
    for (id, status, is_prime) in rows {
        evidence.rows.insert(id, Row { status, is_prime });
    }
    Ok(evidence)
}

/// Where the checker's numbers come from besides the database and the mail.
pub(super) struct RunFacts {
    /// When the load started (Unix ms): fault times are counted from it.
    pub(super) load_started_ms: i64,
    /// SMTP sends each daemon has in flight at most.
    pub(super) sends_per_daemon: usize,
    /// How long a fault may take to heal.
    pub(super) recovery_timeout: Duration,
}

/// The invariants, into the report.
#[allow(clippy::too_many_arguments)]
/// A `worker_health_checks` row the run's end does not accept: not healthy, or silent for
/// 15 s.
pub(super) const UNHEALTHY: &str =
    "status <> 'healthy' OR last_heartbeat < NOW(6) - INTERVAL 15 SECOND";

pub(super) async fn check(
    options: &Options,
    facts: &RunFacts,
    sent: &[Sent],
    db: &MySqlPool,
    mail: &MailDev,
    faults: Vec<FaultRecord>,
    elapsed: Duration,
) -> Result<Report, ChaosError> {
    let windows = windows(
        &faults,
        facts.load_started_ms,
        options.daemons,
        facts.sends_per_daemon,
        facts.recovery_timeout,
    );
    let evidence = gather(sent, db, mail, windows).await?;
    let verdict = judge(&evidence);
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
    violations.extend(verdict.violations.iter().cloned());
    let unpublished: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
            .fetch_one(db)
            .await
            .map_err(|e| setup("read the outbox")(e.to_string()))?;
    if unpublished > 0 {
        violations.push(format!("{unpublished} outbox rows never published"));
    }
    let unhealthy: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT worker_name FROM worker_health_checks WHERE {UNHEALTHY}"
    ))
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
        violations.extend(f.node_loss.as_ref().and_then(|l| l.violation(f.index)));
    }
    Ok(Report {
        profile: options.profile.name,
        seed: options.seed,
        daemons: options.daemons,
        cluster: options.cluster,
        duration_s: elapsed.as_secs_f64(),
        requests: counts,
        emailed: verdict.emailed,
        dlq_entries: verdict.dead_lettered,
        lost: verdict.lost,
        duplicates: verdict.duplicates + verdict.unexplained_repeats,
        duplicates_smtp_window: verdict.explained_repeats,
        wrong_answers: verdict.wrong_answers,
        misrouted: verdict.misrouted,
        unpublished_outbox: unpublished,
        unhealthy_workers: unhealthy,
        ok: violations.is_empty(),
        mttr: mttr(&faults),
        faults,
        violations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn valid(id: &str, number: &str, prime: bool) -> Accepted {
        Accepted {
            id: id.into(),
            email: format!("{id}@chaos.test"),
            expected: Expected::Answer {
                number: number.into(),
                prime,
            },
        }
    }

    fn permanent(id: &str) -> Accepted {
        Accepted {
            id: id.into(),
            email: format!("{id}@chaos.test"),
            expected: Expected::PermanentFailure,
        }
    }

    fn email(to: &str, message_id: &str, at_ms: i64, text: &str) -> Received {
        Received {
            to: format!("{to}@chaos.test"),
            message_id: message_id.into(),
            at_ms,
            text: text.into(),
        }
    }

    fn done(prime: bool) -> Row {
        Row {
            status: "done".into(),
            is_prime: Some(prime),
        }
    }

    /// Two valid requests (one prime) and a permanent failure, each ended as it must.
    fn good() -> Evidence {
        let mut e = Evidence {
            accepted: vec![
                valid("a", "97", true),
                valid("b", "91", false),
                permanent("p"),
            ],
            emails: vec![
                email("a", "<ea@x>", T0, "The number 97 is prime."),
                email("b", "<eb@x>", T0 + 10, "The number 91 is not prime."),
            ],
            ..Evidence::default()
        };
        for (id, m, at) in [("a", "<ea@x>", T0 + 2), ("b", "<eb@x>", T0 + 12)] {
            e.records.insert(
                id.into(),
                Recorded {
                    message_id: m.into(),
                    at_ms: at,
                },
            );
        }
        e.rows.insert("a".into(), done(true));
        e.rows.insert("b".into(), done(false));
        e.rows.insert(
            "p".into(),
            Row {
                status: "failed".into(),
                is_prime: None,
            },
        );
        e.letters.insert(
            "p".into(),
            vec![Letter {
                error_type: "permanent".into(),
                error: "time limit exceeded".into(),
            }],
        );
        e
    }

    fn kill_window(index: usize, from_ms: i64, in_flight: usize) -> Window {
        Window {
            index,
            from_ms,
            to_ms: from_ms + 2_000,
            in_flight,
        }
    }

    #[test]
    fn requests_that_ended_as_they_must_pass() {
        let v = judge(&good());
        assert_eq!(v.violations, Vec::<String>::new());
        assert_eq!((v.emailed, v.dead_lettered, v.lost), (2, 1, 0));
    }

    #[test]
    fn a_lost_request_is_reported() {
        let mut e = good();
        e.emails.retain(|m| m.to != "b@chaos.test");
        let v = judge(&e);
        assert_eq!(v.lost, 1);
        assert!(
            v.violations[0].contains("got no email"),
            "{:?}",
            v.violations
        );

        let mut e = good();
        e.letters.clear();
        let v = judge(&e);
        assert_eq!(v.lost, 1, "a permanent failure without its dead letter");
    }

    #[test]
    fn a_duplicate_with_a_new_message_id_is_reported() {
        let mut e = good();
        e.emails.push(email(
            "a",
            "<other@x>",
            T0 + 5_000,
            "The number 97 is prime.",
        ));
        e.windows.push(kill_window(1, T0 + 4_000, 8));
        let v = judge(&e);
        assert_eq!(v.duplicates, 1, "a fault never explains a new Message-ID");
        assert!(v.violations[0].contains("different Message-IDs"));
    }

    #[test]
    fn a_repeat_is_explained_only_by_a_fault_that_could_cut_its_record_short() {
        // The first copy was accepted just before a daemon died; the redelivery sent it
        // again and recorded it.
        let mut e = good();
        e.emails
            .push(email("a", "<ea@x>", T0 + 3_500, "The number 97 is prime."));
        e.records.get_mut("a").unwrap().at_ms = T0 + 3_502;
        e.windows.push(kill_window(1, T0 + 300, 8));
        let v = judge(&e);
        assert_eq!(v.violations, Vec::<String>::new());
        assert_eq!((v.explained_repeats, v.unexplained_repeats), (1, 0));

        // No fault near the first copy: a real duplicate.
        e.windows = vec![kill_window(1, T0 + 60_000, 8)];
        let v = judge(&e);
        assert_eq!(v.unexplained_repeats, 1);
        assert!(v.violations[0].contains("no fault"), "{:?}", v.violations);
    }

    #[test]
    fn a_copy_sent_after_its_record_existed_is_a_real_duplicate() {
        // The record was written at once; a second daemon sent it again seconds later: the
        // "already sent?" check failed, whatever fault was going on.
        let mut e = good();
        e.emails
            .push(email("a", "<ea@x>", T0 + 4_000, "The number 97 is prime."));
        e.windows.push(kill_window(1, T0, 8));
        let v = judge(&e);
        assert_eq!(v.unexplained_repeats, 1);
        assert!(v.violations[0].contains("after its send was recorded"));
    }

    #[test]
    fn more_repeats_than_sends_in_flight_break_the_bound() {
        let mut e = Evidence::default();
        for i in 0..3 {
            let id = format!("r{i}");
            e.accepted.push(valid(&id, "97", true));
            e.rows.insert(id.clone(), done(true));
            let m = format!("<{id}@x>");
            e.emails
                .push(email(&id, &m, T0 + i, "The number 97 is prime."));
            e.emails
                .push(email(&id, &m, T0 + 3_000 + i, "The number 97 is prime."));
            e.records.insert(
                id,
                Recorded {
                    message_id: m,
                    at_ms: T0 + 3_010,
                },
            );
        }
        e.windows.push(kill_window(7, T0, 2));
        let v = judge(&e);
        assert_eq!(v.explained_repeats, 3);
        assert!(
            v.violations
                .iter()
                .any(|m| m.contains("fault 7: 3 repeated emails, more than the 2")),
            "{:?}",
            v.violations
        );
    }

    #[test]
    fn a_wrong_answer_in_the_email_or_the_row_is_reported() {
        let mut e = good();
        e.emails[0].text = "The number 97 is not prime.".into();
        let v = judge(&e);
        assert_eq!(v.wrong_answers, 1);
        assert!(v.violations[0].contains("does not say it is prime"));

        let mut e = good();
        e.rows.insert("a".into(), done(false));
        let v = judge(&e);
        assert_eq!(v.wrong_answers, 1);

        let mut e = good();
        e.rows.remove("b");
        assert_eq!(judge(&e).wrong_answers, 1, "no row at all");
    }

    #[test]
    fn a_request_both_emailed_and_dead_lettered_is_reported() {
        let mut e = good();
        e.letters.insert(
            "a".into(),
            vec![Letter {
                error_type: "transient".into(),
                error: "SMTP down".into(),
            }],
        );
        let v = judge(&e);
        assert_eq!(v.misrouted, 1);
        assert_eq!(v.emailed, 1, "b only");
        assert!(v.violations[0].contains("was dead-lettered"));

        // A valid request that only ended in the DLQ is not "settled": its user got nothing.
        e.emails.retain(|m| m.to != "a@chaos.test");
        let v = judge(&e);
        assert_eq!((v.misrouted, v.lost), (1, 1));
    }

    #[test]
    fn a_permanent_failure_must_be_dead_lettered_as_one_and_never_emailed() {
        let mut e = good();
        e.emails
            .push(email("p", "<ep@x>", T0, "The number 2…1 is prime."));
        let v = judge(&e);
        assert_eq!(v.misrouted, 1);

        let mut e = good();
        e.letters.get_mut("p").unwrap()[0].error_type = "transient".into();
        let v = judge(&e);
        assert_eq!(v.misrouted, 1);
        assert!(v.violations[0].contains("not as a permanent failure"));
    }

    #[test]
    fn only_faults_that_can_cut_a_record_short_open_a_window() {
        let record = |fault: Fault| FaultRecord {
            index: 1,
            class: fault.class(),
            description: String::new(),
            fault,
            at_ms: 1_000,
            held_ms: 500,
            recovered_ms: Some(250.0),
            recovered_from_injection_ms: Some(750.0),
            failed_attempts: 0,
            node_loss: None,
        };
        let w = windows(
            &[
                record(Fault::KillDaemon { daemon: 0 }),
                record(Fault::RestartMariadb),
                record(Fault::RestartNats {
                    node: 0,
                    leader: false,
                    hold: Duration::from_millis(500),
                }),
                record(Fault::StopRedis {
                    hold: Duration::from_millis(500),
                }),
                record(Fault::LinkReset { link: Link::Nats }),
                record(Fault::LinkReset { link: Link::Smtp }),
                record(Fault::CrashActor {
                    daemon: 0,
                    actor: "heartbeat",
                }),
            ],
            T0,
            3,
            8,
            Duration::from_secs(60),
        );
        assert_eq!(
            w.iter().map(|w| w.in_flight).collect::<Vec<_>>(),
            [8, 24, 24],
            "a daemon's sends, every daemon's for the database and SMTP"
        );
        assert_eq!((w[0].from_ms, w[0].to_ms), (T0 + 1_000, T0 + 1_750));
    }
}
