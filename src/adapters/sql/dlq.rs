//! The dead-letter queue's statements, for both stores: a dead letter written (or written
//! again when its reprocess failed), counted in the hourly statistics, listed and filtered,
//! reprocessed back through the outbox, discarded, resolved; and a dead letter read back.

use actors::StoreError;
use actors::fingerprint::fingerprint;
use actors::model::{
    AuditEntry, AuditQuery, DeadLetter, DlqActionResult, DlqBucket, DlqQuery, DlqStatus,
    ErrorClass, GroupQuery, GroupSort, NewDeadLetter, Reprocess, SUBJECT_PRIMECHECK_REQUESTED,
};
use chrono::{DateTime, Utc};

use super::rows::refused;
use super::{Arg, Columns, Dialect, Sql};

impl Dialect {
    /// Whether the store streams its dead letters (MySQL, to JetStream's DLQ stream, keeping
    /// `streamed_at` and `stream_version`); the embedded store's live in their table only.
    fn streams_dead_letters(self) -> bool {
        self == Dialect::Mysql
    }

    /// A column read as text (MySQL's `ENUM` and `JSON` columns are cast).
    pub(crate) fn text_of(self, column: &str) -> String {
        match self {
            Dialect::Mysql => format!("CAST({column} AS CHAR)"),
            Dialect::Sqlite => column.to_string(),
        }
    }

    /// The first and last instants a time column holds, where that range is narrower than
    /// anyone would ask for: MySQL's `TIMESTAMP`, 1970-01-01 00:00:01 to 2038-01-19 03:14:07
    /// UTC, where a bound outside the range matches nothing at all.
    fn instant_range(self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        match self {
            Dialect::Mysql => Some((
                DateTime::from_timestamp(1, 0).unwrap_or(DateTime::UNIX_EPOCH),
                DateTime::from_timestamp(i64::from(i32::MAX), 0)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
            )),
            Dialect::Sqlite => None,
        }
    }

    /// `ESCAPE` with a backslash, as each dialect writes it in a string literal.
    fn like_escape(self) -> &'static str {
        match self {
            Dialect::Mysql => " ESCAPE '\\\\'",
            Dialect::Sqlite => " ESCAPE '\\'",
        }
    }
}

/// `SELECT` of every column a [`DeadLetter`] is read from (see [`letter`]).
pub(crate) fn select(d: Dialect) -> Sql {
    Sql::new(
        d,
        &format!(
            "SELECT id, original_subject, original_message_id, dlq_subject, {} AS payload, \
             error_message, error_type, retry_count, original_created_at, dlq_created_at, \
             last_retry_at, status, resolved_at, resolved_by, request_id, operator, reason, \
             reprocess_count, auto_retry_count, stream_version, fingerprint \
             FROM dead_letter_messages",
            d.text_of("payload"),
        ),
    )
}

/// A dead letter read from a row of [`select`].
pub(crate) fn letter(row: &impl Columns) -> Result<DeadLetter, StoreError> {
    let payload = row.required_text("payload")?;
    let error_type = row.required_text("error_type")?;
    let status = row.required_text("status")?;
    Ok(DeadLetter {
        id: row.required_int("id")?,
        original_subject: row.required_text("original_subject")?,
        original_message_id: row.text("original_message_id")?,
        dlq_subject: row.required_text("dlq_subject")?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        error_message: row.required_text("error_message")?,
        error_type: ErrorClass::parse(&error_type)
            .ok_or_else(|| StoreError::Rejected(format!("unknown error type {error_type:?}")))?,
        retry_count: row.count("retry_count")?,
        original_created_at: row.time("original_created_at")?.unwrap_or_default(),
        dlq_created_at: row.time("dlq_created_at")?.unwrap_or_default(),
        last_retry_at: row.time("last_retry_at")?,
        status: DlqStatus::parse(&status)
            .ok_or_else(|| StoreError::Rejected(format!("unknown DLQ status {status:?}")))?,
        resolved_at: row.time("resolved_at")?,
        resolved_by: row.text("resolved_by")?,
        request_id: row.text("request_id")?,
        operator: row.text("operator")?,
        reason: row.text("reason")?,
        reprocess_count: row.count("reprocess_count")?,
        auto_retry_count: row.count("auto_retry_count")?,
        fingerprint: row.text("fingerprint")?,
    })
}

/// One dead letter by id; `lock` holds its row until the transaction ends (MySQL; a SQLite
/// write transaction holds the whole file already).
pub(crate) fn by_id(d: Dialect, id: i64, lock: bool) -> Sql {
    let mut q = select(d);
    q.push(" WHERE id = ").bind(id);
    if lock && d == Dialect::Mysql {
        q.push(" FOR UPDATE");
    }
    q
}

/// The listing of `query`, newest first; None when nothing can match.
pub(crate) fn list(d: Dialect, query: &DlqQuery) -> Option<Sql> {
    let mut q = select(d);
    q.push(" WHERE 1 = 1");
    if let Some(subject) = &query.subject {
        q.push(" AND (original_subject = ")
            .bind(subject)
            .push(" OR dlq_subject = ")
            .bind(subject)
            .push(")");
    }
    if let Some(t) = query.error_type {
        q.push(" AND error_type = ").bind(t.as_str());
    }
    if let Some(s) = query.status {
        q.push(" AND status = ").bind(s.as_str());
    }
    // A bound beyond either end of what the column holds filters nothing out (or, for
    // `since` past the end, everything).
    let (first, last) = d
        .instant_range()
        .unwrap_or((DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC));
    if let Some(since) = query.since {
        if since > last {
            return None;
        }
        if since > first {
            q.push(" AND dlq_created_at >= ").bind(since);
        }
    }
    if let Some(until) = query.until {
        if until <= first {
            return None;
        }
        if until <= last {
            q.push(" AND dlq_created_at < ").bind(until);
        }
    }
    if let Some(text) = query.search.as_deref().filter(|t| !t.is_empty()) {
        // LIKE metacharacters in the text match themselves.
        let escaped = text
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        q.push(" AND LOWER(error_message) LIKE ")
            .bind(format!("%{}%", escaped.to_lowercase()))
            .push(d.like_escape());
    }
    if let Some(fp) = &query.fingerprint {
        q.push(" AND fingerprint = ").bind(fp);
    }
    if let Some(before) = query.before_id {
        q.push(" AND id < ").bind(before);
    }
    q.push(" ORDER BY id DESC LIMIT ").bind(query.limit);
    Some(q)
}

/// Pending dead letters an automatic rule may reprocess: not poison, waited since `before`,
/// fewer than `max_auto` automatic retries, of `subjects` (all when empty), oldest first.
pub(crate) fn rule_candidates(
    d: Dialect,
    before: DateTime<Utc>,
    max_auto: u32,
    subjects: &[String],
    limit: u32,
) -> Sql {
    let mut q = select(d);
    q.push(
        " WHERE status = 'pending' AND error_type <> 'poison' \
         AND COALESCE(last_retry_at, dlq_created_at) <= ",
    )
    .bind(before)
    .push(" AND auto_retry_count < ")
    .bind(max_auto);
    if !subjects.is_empty() {
        q.push(" AND original_subject IN ").list(subjects);
    }
    q.push(" ORDER BY id LIMIT ").bind(limit);
    q
}

/// Dead letters counted by `column` (`status`, or `error_type`/`dlq_subject` of the pending
/// ones), as rows `k`, `n`.
pub(crate) fn counted_by(d: Dialect, column: &str, pending_only: bool) -> Sql {
    let filter = if pending_only {
        " WHERE status = 'pending'"
    } else {
        ""
    };
    Sql::new(
        d,
        &format!(
            "SELECT {} AS k, COUNT(*) AS n FROM dead_letter_messages{filter} GROUP BY {column}",
            d.text_of(column)
        ),
    )
}

/// The hourly statistics from the hour that holds `since` on.
pub(crate) fn hourly(d: Dialect, since: DateTime<Utc>) -> Sql {
    let mut q = Sql::new(
        d,
        &format!(
            "SELECT date_hour, subject, {} AS error_type, count FROM dlq_statistics \
             WHERE date_hour >= ",
            d.text_of("error_type")
        ),
    );
    q.bind(hour_of(since))
        .push(" ORDER BY date_hour, subject, error_type");
    q
}

fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    let us = at.timestamp_micros();
    DateTime::from_timestamp_micros(us - us.rem_euclid(3_600_000_000)).unwrap_or(at)
}

/// One more dead letter of `class` on `subject` in this hour's statistics.
pub(crate) fn count_statistic(d: Dialect, subject: &str, class: ErrorClass) -> Sql {
    let mut q = Sql::new(
        d,
        "INSERT INTO dlq_statistics (date_hour, subject, error_type, count, created_at) VALUES (",
    );
    q.bind(hour_of(Utc::now()))
        .push(", ")
        .bind(subject)
        .push(", ")
        .bind(class.as_str())
        .push(", 1, ")
        .now()
        .push(")");
    q.push(match d {
        Dialect::Mysql => " ON DUPLICATE KEY UPDATE count = count + 1",
        Dialect::Sqlite => {
            " ON CONFLICT (date_hour, subject, error_type) DO UPDATE SET count = count + 1"
        }
    });
    q
}

/// A new dead letter, unless one for the same message is still open (pending or
/// reprocessing). `payload` is the JSON stored (see `rows::json_payload`). A store that
/// streams dead letters (MySQL, to JetStream's DLQ stream) leaves it unstreamed.
pub(crate) fn insert(d: Dialect, l: &NewDeadLetter, dlq_subject: &str, payload: &str) -> Sql {
    let mut q = Sql::new(
        d,
        "INSERT INTO dead_letter_messages (original_subject, original_message_id, dlq_subject, \
         payload, error_message, error_type, retry_count, original_created_at, dlq_created_at, \
         request_id, fingerprint, streamed_at) SELECT ",
    );
    q.bind(&l.original_subject)
        .push(", ")
        .bind(&l.original_message_id)
        .push(", ")
        .bind(dlq_subject)
        .push(", ")
        .bind(payload)
        .push(", ")
        .bind(&l.error)
        .push(", ")
        .bind(l.error_type.as_str())
        .push(", ")
        .bind(l.retry_count)
        .push(", ")
        .bind(l.original_created_at)
        .push(", ")
        .now()
        .push(", ")
        .bind(&l.request_id)
        .push(", ")
        .bind(fingerprint(&l.original_subject, l.error_type, &l.error))
        .push(", ");
    if d.streams_dead_letters() {
        q.push("NULL");
    } else {
        q.now();
    }
    if d == Dialect::Mysql {
        q.push(" FROM DUAL");
    }
    q.push(" WHERE ")
        .bind(&l.original_message_id)
        .push(
            " IS NULL OR NOT EXISTS (SELECT 1 FROM dead_letter_messages \
             WHERE original_message_id = ",
        )
        .bind(&l.original_message_id)
        .push(" AND status IN ('pending', 'reprocessing'))");
    q
}

/// A reprocessed dead letter `dlq_id` failed again: back to pending with the new error, to be
/// streamed again as a new message.
pub(crate) fn failed_again(d: Dialect, l: &NewDeadLetter, dlq_id: i64) -> Sql {
    let mut q = Sql::new(
        d,
        "UPDATE dead_letter_messages SET status = 'pending', error_message = ",
    );
    q.bind(&l.error)
        .push(", error_type = ")
        .bind(l.error_type.as_str())
        .push(", fingerprint = ")
        .bind(fingerprint(&l.original_subject, l.error_type, &l.error))
        .push(", retry_count = retry_count + ")
        .bind(l.retry_count)
        .push(if d.streams_dead_letters() {
            ", streamed_at = NULL, stream_version = stream_version + 1, updated_at = "
        } else {
            ", updated_at = "
        })
        .now()
        .push(" WHERE id = ")
        .bind(dlq_id)
        .push(" AND status IN ('reprocessing', 'pending')");
    q
}

/// The request a dead-lettered prime check was for fails with `error` (unless it is done).
/// None when the dead letter is not a prime check of a request.
pub(crate) fn request_failed(d: Dialect, l: &NewDeadLetter) -> Option<Sql> {
    let request_id = l.request_id.as_ref()?;
    if l.original_subject != SUBJECT_PRIMECHECK_REQUESTED {
        return None;
    }
    let mut q = Sql::new(
        d,
        "UPDATE prime_check_requests SET status = 'failed', error = ",
    );
    q.bind(&l.error)
        .push(", completed_at = ")
        .now()
        .push(" WHERE id = ")
        .bind(request_id)
        .push(" AND status <> 'done'");
    Some(q)
}

/// Dead letters the DLQ stream has yet to receive, oldest first; None when the store does
/// not stream them.
pub(crate) fn unstreamed(d: Dialect, limit: u32) -> Option<Sql> {
    if !d.streams_dead_letters() {
        return None;
    }
    let mut q = select(d);
    q.push(" WHERE streamed_at IS NULL ORDER BY id LIMIT ")
        .bind(limit);
    Some(q)
}

/// Dead letter `id` reached the DLQ stream as its `version`th message (a later failure
/// makes a new version, streamed again).
pub(crate) fn streamed(d: Dialect, id: i64, version: u32) -> Sql {
    let mut q = Sql::new(d, "UPDATE dead_letter_messages SET streamed_at = ");
    q.now()
        .push(" WHERE id = ")
        .bind(id)
        .push(" AND stream_version = ")
        .bind(version);
    q
}

/// A dead letter of the message `event_id`, of any status (rows `id`).
pub(crate) fn of_message(d: Dialect, event_id: &str) -> Sql {
    let mut q = Sql::new(
        d,
        "SELECT id FROM dead_letter_messages WHERE original_message_id = ",
    );
    q.bind(event_id).push(" LIMIT 1");
    q
}

/// Dead letters written before fingerprints, to be given theirs.
pub(crate) fn unfingerprinted(d: Dialect, limit: u32) -> Sql {
    let mut q = select(d);
    q.push(" WHERE fingerprint IS NULL ORDER BY id LIMIT ")
        .bind(limit);
    q
}

/// Dead letter `id` is of the group `fp`.
pub(crate) fn set_fingerprint(d: Dialect, id: i64, fp: &str) -> Sql {
    let mut q = Sql::new(d, "UPDATE dead_letter_messages SET fingerprint = ");
    q.bind(fp).push(" WHERE id = ").bind(id);
    q
}

/// The groups of `query`: rows `fingerprint`, `n`, `first_seen`, `last_seen`, `example_id`.
pub(crate) fn groups(d: Dialect, query: &GroupQuery) -> Sql {
    let mut q = Sql::new(
        d,
        "SELECT fingerprint, COUNT(*) AS n, MIN(dlq_created_at) AS first_seen, \
         MAX(dlq_created_at) AS last_seen, MAX(id) AS example_id FROM dead_letter_messages \
         WHERE fingerprint IS NOT NULL",
    );
    if let Some(status) = query.status {
        q.push(" AND status = ").bind(status.as_str());
    }
    q.push(" GROUP BY fingerprint ORDER BY ");
    q.push(match query.sort {
        GroupSort::Count => "n DESC, last_seen DESC",
        GroupSort::Recent => "last_seen DESC, n DESC",
    });
    q.push(" LIMIT ").bind(query.limit);
    q
}

/// The dead letters `ids` (the groups' examples).
pub(crate) fn by_ids(d: Dialect, ids: &[i64]) -> Sql {
    let mut q = select(d);
    q.push(" WHERE id IN ").list(ids.iter().copied());
    q
}

/// Discards every open letter of the group `fp`.
pub(crate) fn discard_group(d: Dialect, fp: &str, operator: &str, reason: Option<&str>) -> Sql {
    let mut q = Sql::new(
        d,
        "UPDATE dead_letter_messages SET status = 'discarded', resolved_at = ",
    );
    q.now()
        .push(", updated_at = ")
        .now()
        .push(", resolved_by = ")
        .bind(operator)
        .push(", operator = ")
        .bind(operator)
        .push(", reason = ")
        .bind(reason)
        .push(" WHERE fingerprint = ")
        .bind(fp)
        .push(" AND status IN ('pending', 'reprocessing')");
    q
}

/// What an operator did, for the audit trail.
pub(crate) struct Audit<'a> {
    /// Who.
    pub operator: &'a str,
    /// What (`reprocess`, `discard`, `discard_group`, `edit`).
    pub action: &'a str,
    /// To which letter.
    pub dlq_id: Option<i64>,
    /// To which group.
    pub fingerprint: Option<&'a str>,
    /// Why.
    pub reason: Option<&'a str>,
    /// What changed.
    pub detail: serde_json::Value,
}

/// An entry of the audit trail.
pub(crate) fn audit(d: Dialect, a: &Audit<'_>) -> Sql {
    let mut q = Sql::new(
        d,
        "INSERT INTO dlq_audit (at, operator, action, dlq_id, fingerprint, reason, detail) VALUES (",
    );
    q.now()
        .push(", ")
        .bind(a.operator)
        .push(", ")
        .bind(a.action)
        .push(", ")
        .bind(Arg::Int(a.dlq_id))
        .push(", ")
        .bind(a.fingerprint)
        .push(", ")
        .bind(a.reason)
        .push(", ")
        .bind(a.detail.to_string())
        .push(")");
    q
}

/// The audit trail of `query`, newest first.
pub(crate) fn audit_list(d: Dialect, query: &AuditQuery) -> Sql {
    let mut q = Sql::new(
        d,
        "SELECT id, at, operator, action, dlq_id, fingerprint, reason, detail FROM dlq_audit \
         WHERE 1 = 1",
    );
    if let Some(id) = query.dlq_id {
        q.push(" AND dlq_id = ").bind(id);
    }
    if let Some(before) = query.before_id {
        q.push(" AND id < ").bind(before);
    }
    q.push(" ORDER BY id DESC LIMIT ").bind(query.limit);
    q
}

/// A row of [`audit_list`].
pub(crate) fn audit_entry(row: &impl Columns) -> Result<AuditEntry, StoreError> {
    let detail = row.text("detail")?.unwrap_or_default();
    Ok(AuditEntry {
        id: row.required_int("id")?,
        at: row.time("at")?.unwrap_or_default(),
        operator: row.required_text("operator")?,
        action: row.required_text("action")?,
        dlq_id: row.int("dlq_id")?,
        fingerprint: row.text("fingerprint")?,
        reason: row.text("reason")?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
    })
}

/// An edited letter's new payload (and its group, which the payload is not part of).
pub(crate) fn set_payload(d: Dialect, id: i64, payload: &serde_json::Value) -> Sql {
    let mut q = Sql::new(d, "UPDATE dead_letter_messages SET payload = ");
    q.bind(payload.to_string())
        .push(", updated_at = ")
        .now()
        .push(" WHERE id = ")
        .bind(id);
    q
}

/// The request of an edited prime check takes the edited number and address.
pub(crate) fn request_edited(d: Dialect, letter: &DeadLetter) -> Option<Sql> {
    let request_id = letter.request_id.as_ref()?;
    if letter.original_subject != SUBJECT_PRIMECHECK_REQUESTED {
        return None;
    }
    let number = letter.payload.get("number")?.as_str()?;
    let email = letter.payload.get("email")?.as_str()?;
    let mut q = Sql::new(d, "UPDATE prime_check_requests SET number = ");
    q.bind(number)
        .push(", email = ")
        .bind(email)
        .push(" WHERE id = ")
        .bind(request_id);
    Some(q)
}

/// A row of [`counted_by`]: the value and its count.
pub(crate) fn counted(row: &impl Columns) -> Result<(String, u64), StoreError> {
    Ok((
        row.required_text("k")?,
        u64::try_from(row.required_int("n")?).unwrap_or(0),
    ))
}

/// A row of [`hourly`].
pub(crate) fn bucket(row: &impl Columns) -> Result<DlqBucket, StoreError> {
    let t = row.required_text("error_type")?;
    Ok(DlqBucket {
        hour: row.time("date_hour")?.unwrap_or_default(),
        subject: row.required_text("subject")?,
        error_type: ErrorClass::parse(&t)
            .ok_or_else(|| StoreError::Rejected(format!("unknown error type {t:?}")))?,
        count: u64::try_from(row.required_int("count")?).unwrap_or(0),
    })
}

/// Dead letter `id` was acted on.
pub(crate) fn done(id: i64) -> DlqActionResult {
    DlqActionResult {
        id,
        ok: true,
        error: None,
        event_id: None,
    }
}

/// Dead letter `id` was reprocessed as event `event_id`.
pub(crate) fn reprocessed(id: i64, event_id: String) -> DlqActionResult {
    DlqActionResult {
        event_id: Some(event_id),
        ..done(id)
    }
}

/// There is no dead letter `id`.
pub(crate) fn not_found(id: i64) -> DlqActionResult {
    refused(id, "no such dead letter")
}

/// Why `letter` may not be reprocessed as asked; None when it may.
pub(crate) fn refuse_reprocess(letter: &DeadLetter, force: bool) -> Option<DlqActionResult> {
    if force {
        return None;
    }
    if letter.status != DlqStatus::Pending {
        return Some(refused(
            letter.id,
            &format!(
                "it is {} (use force to reprocess anyway)",
                letter.status.as_str()
            ),
        ));
    }
    (letter.error_type == ErrorClass::Poison).then(|| {
        refused(
            letter.id,
            "it is poison (it cannot be decoded, or it crashed its workers); fix the cause, then use force to republish it",
        )
    })
}

/// The statements that reprocess `letter` as event `event_id`, in one transaction: its
/// message back in the outbox (published after `r.delay`), the letter marked reprocessing,
/// and its request (if a failed prime check) pending again.
pub(crate) fn reprocess(
    d: Dialect,
    letter: &DeadLetter,
    r: &Reprocess,
    event_id: &str,
) -> Vec<Sql> {
    let mut out = Vec::with_capacity(3);
    let mut q = Sql::new(
        d,
        "INSERT INTO outbox (event_id, subject, payload, request_id, created_at, next_retry_at, dlq_id) VALUES (",
    );
    q.bind(event_id)
        .push(", ")
        .bind(&letter.original_subject)
        .push(", ")
        .bind(letter.payload.to_string())
        .push(", ")
        .bind(&letter.request_id)
        .push(", ")
        .now()
        .push(", ");
    let delay_us = i64::try_from(r.delay.as_micros()).unwrap_or(i64::MAX / 4);
    match d {
        Dialect::Mysql => q
            .push("NOW(6) + INTERVAL ")
            .bind(delay_us)
            .push(" MICROSECOND"),
        Dialect::Sqlite => {
            let at = Utc::now() + chrono::Duration::microseconds(delay_us.min(i64::MAX / 4));
            q.bind(at)
        }
    };
    q.push(", ").bind(letter.id).push(")");
    out.push(q);

    let mut q = Sql::new(
        d,
        "UPDATE dead_letter_messages SET status = 'reprocessing', last_retry_at = ",
    );
    q.now()
        .push(", reprocess_count = reprocess_count + 1, auto_retry_count = auto_retry_count + ")
        .bind(i64::from(r.automatic))
        .push(", operator = ")
        .bind(&r.operator)
        .push(", reason = ")
        .bind(&r.reason)
        .push(", resolved_at = NULL, resolved_by = NULL, updated_at = ")
        .now()
        .push(" WHERE id = ")
        .bind(letter.id);
    out.push(q);

    if let Some(request_id) = &letter.request_id
        && letter.original_subject == SUBJECT_PRIMECHECK_REQUESTED
    {
        let mut q = Sql::new(
            d,
            "UPDATE prime_check_requests SET status = 'pending', error = NULL, completed_at = NULL \
             WHERE id = ",
        );
        q.bind(request_id).push(" AND status = 'failed'");
        out.push(q);
    }
    out
}

/// Discards dead letter `id` if it is still open.
pub(crate) fn discard(d: Dialect, id: i64, operator: &str, reason: Option<&str>) -> Sql {
    let mut q = Sql::new(
        d,
        "UPDATE dead_letter_messages SET status = 'discarded', resolved_at = ",
    );
    q.now()
        .push(", updated_at = ")
        .now()
        .push(", resolved_by = ")
        .bind(operator)
        .push(", operator = ")
        .bind(operator)
        .push(", reason = ")
        .bind(reason)
        .push(" WHERE id = ")
        .bind(id)
        .push(" AND status IN ('pending', 'reprocessing')");
    q
}

/// What a discard of `id` that changed no row says: why it did not.
pub(crate) fn not_discarded(id: i64, found: Option<DeadLetter>) -> DlqActionResult {
    match found {
        None => not_found(id),
        Some(l) => refused(id, &format!("it is already {}", l.status.as_str())),
    }
}

/// A reprocessed dead letter's message went through: resolved.
pub(crate) fn resolve(d: Dialect, dlq_id: i64) -> Sql {
    let mut q = Sql::new(
        d,
        "UPDATE dead_letter_messages SET status = 'resolved', resolved_at = ",
    );
    q.now()
        .push(", updated_at = ")
        .now()
        .push(", resolved_by = COALESCE(operator, 'reprocess') WHERE id = ")
        .bind(dlq_id)
        .push(" AND status = 'reprocessing'");
    q
}

/// A message's attempt log rows (subject, status, error, time taken, when), oldest first.
pub(crate) fn attempts(d: Dialect, message_id: &str) -> Sql {
    let mut q = Sql::new(
        d,
        &format!(
            "SELECT subject, {} AS status, error_message, {} AS processing_time_ms, created_at \
             FROM message_processing_logs WHERE message_id = ",
            d.text_of("status"),
            match d {
                Dialect::Mysql => "CAST(processing_time_ms AS SIGNED)",
                Dialect::Sqlite => "processing_time_ms",
            }
        ),
    );
    q.bind(message_id).push(" ORDER BY id LIMIT 200");
    q
}

/// A log row of [`attempts`].
pub(crate) fn attempt(row: &impl Columns) -> Result<super::rows::LogRow, StoreError> {
    Ok((
        row.required_text("subject")?,
        row.required_text("status")?,
        row.text("error_message")?,
        row.int("processing_time_ms")?,
        row.time("created_at")?.unwrap_or_default(),
    ))
}

/// The trace context of the outbox event `message_id`, as a row `traceparent`.
pub(crate) fn traceparent(d: Dialect, message_id: &str) -> Sql {
    let mut q = Sql::new(d, "SELECT traceparent FROM outbox WHERE event_id = ");
    q.bind(message_id);
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::sql::Arg;

    #[test]
    fn a_time_bound_beyond_mysqls_timestamp_filters_nothing_or_everything() {
        let far = DateTime::from_timestamp(i64::from(i32::MAX) + 10, 0).unwrap();
        let query = DlqQuery {
            since: Some(far),
            limit: 10,
            ..DlqQuery::default()
        };
        assert!(list(Dialect::Mysql, &query).is_none());
        let sqlite = list(Dialect::Sqlite, &query).unwrap();
        assert!(sqlite.text().contains("dlq_created_at >= ?"));
        let until = DlqQuery {
            until: Some(far),
            limit: 10,
            ..DlqQuery::default()
        };
        assert!(
            !list(Dialect::Mysql, &until)
                .unwrap()
                .text()
                .contains("dlq_created_at <")
        );
    }

    #[test]
    fn the_hourly_statistics_start_at_the_hour_that_holds_since() {
        let since = DateTime::parse_from_rfc3339("2026-12-02T13:45:10Z")
            .unwrap()
            .to_utc();
        let q = hourly(Dialect::Sqlite, since);
        let hour = DateTime::parse_from_rfc3339("2026-12-02T13:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(q.args(), &[Arg::Time(Some(hour))]);
    }
}
