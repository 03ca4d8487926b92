//! The DLQ API (seed §3.2): browse, count, reprocess and discard dead letters. Every route
//! needs the admin token.

use std::collections::BTreeMap;
use std::time::Duration;

use actors::fingerprint::is_fingerprint;
use actors::model::{
    AuditEntry, AuditQuery, DeadLetter, DlqActionResult, DlqGroup, DlqQuery, DlqStats, DlqStatus,
    ErrorClass, GroupQuery, GroupSort, LetterEdit, Reprocess, SUBJECT_EMAIL_SEND,
    SUBJECT_PRIMECHECK_REQUESTED,
};
use actors::{DlqStore, StoreError};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::session::Operator;

/// Most ids one reprocess or discard call takes.
pub const MAX_IDS: usize = 1000;

/// A dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// Its id.
    pub id: i64,
    /// The subject the message was sent on.
    pub original_subject: String,
    /// The message's event id.
    pub original_message_id: Option<String>,
    /// `dlq.primecheck`, `dlq.emailsend` or `dlq.outbox`.
    pub dlq_subject: String,
    /// The payload.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Why it was given up (the latest failure).
    pub error_message: String,
    /// `transient`, `permanent` or `poison`.
    pub error_type: String,
    /// Deliveries or publish attempts.
    pub retry_count: u32,
    /// When the original was published.
    pub original_created_at: DateTime<Utc>,
    /// When it was dead-lettered.
    pub dlq_created_at: DateTime<Utc>,
    /// When it was last reprocessed.
    pub last_retry_at: Option<DateTime<Utc>>,
    /// `pending`, `reprocessing`, `resolved` or `discarded`.
    pub status: String,
    /// When it was resolved or discarded.
    pub resolved_at: Option<DateTime<Utc>>,
    /// Who resolved or discarded it.
    pub resolved_by: Option<String>,
    /// The request it belongs to.
    pub request_id: Option<String>,
    /// Who last reprocessed or discarded it.
    pub operator: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// Reprocesses so far.
    pub reprocess_count: u32,
    /// Reprocesses by automatic rules so far.
    pub auto_retry_count: u32,
    /// Its error fingerprint: the group it belongs to (`GET /api/dlq/groups`).
    pub fingerprint: Option<String>,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(l: DeadLetter) -> Self {
        Self {
            id: l.id,
            original_subject: l.original_subject,
            original_message_id: l.original_message_id,
            dlq_subject: l.dlq_subject,
            payload: l.payload,
            error_message: l.error_message,
            error_type: l.error_type.as_str().into(),
            retry_count: l.retry_count,
            original_created_at: l.original_created_at,
            dlq_created_at: l.dlq_created_at,
            last_retry_at: l.last_retry_at,
            status: l.status.as_str().into(),
            resolved_at: l.resolved_at,
            resolved_by: l.resolved_by,
            request_id: l.request_id,
            operator: l.operator,
            reason: l.reason,
            reprocess_count: l.reprocess_count,
            auto_retry_count: l.auto_retry_count,
            fingerprint: l.fingerprint,
        }
    }
}

/// A page of dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    /// Newest first.
    pub items: Vec<DeadLetterView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Filters and paging of `GET /api/dlq/messages`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DlqListParams {
    /// Original subject (`primecheck.requested`, `email.send`) or DLQ subject (`dlq.*`).
    pub subject: Option<String>,
    /// `transient`, `permanent` or `poison`.
    pub error_type: Option<String>,
    /// `pending`, `reprocessing`, `resolved` or `discarded`.
    pub status: Option<String>,
    /// Dead-lettered at or after (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only dead letters whose error message contains this text (case-insensitive).
    pub q: Option<String>,
    /// Only dead letters of this group (its error fingerprint, 16 hex digits).
    pub fingerprint: Option<String>,
}

/// An id as a number or a string of digits (the seed sends strings).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageId {
    /// A number.
    Number(i64),
    /// A string of digits.
    Text(String),
}

/// `POST /api/dlq/reprocess` (seed §3.3.2).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReprocessBody {
    /// Dead letters to republish (at most 1000).
    pub message_ids: Vec<MessageId>,
    /// Publish after this delay, e.g. `"30s"` or `"5m"` (default: now).
    pub override_delay: Option<String>,
    /// Also republish letters that are not `pending`, and poison ones.
    #[serde(default)]
    pub force: bool,
    /// Who asks (recorded; becomes `resolved_by` when the message succeeds).
    pub operator: String,
    /// Why.
    pub reason: Option<String>,
}

/// One processing attempt of a dead letter's message (`message_processing_logs`).
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryView {
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

/// A dead letter with its message's processing history and trace.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterDetail {
    /// The dead letter.
    #[serde(flatten)]
    pub letter: DeadLetterView,
    /// Its message's processing attempts, oldest first.
    pub history: Vec<HistoryView>,
    /// The W3C trace id of its request, while its outbox event is retained.
    pub trace_id: Option<String>,
    /// What operators did to it, newest first (at most 50).
    pub audit: Vec<AuditView>,
}

/// `DELETE /api/dlq/discard`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscardBody {
    /// Dead letters to give up (at most 1000).
    pub message_ids: Vec<MessageId>,
    /// Who decides.
    pub operator: String,
    /// Why.
    pub reason: Option<String>,
}

/// What happened to one dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionResult {
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

impl From<DlqActionResult> for ActionResult {
    fn from(r: DlqActionResult) -> Self {
        Self {
            id: r.id,
            ok: r.ok,
            error: r.error,
            event_id: r.event_id,
        }
    }
}

/// The outcome of a reprocess or discard.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionSummary {
    /// How many were acted on.
    pub succeeded: usize,
    /// How many were not.
    pub failed: usize,
    /// Per id.
    pub results: Vec<ActionResult>,
}

/// Counts by status, type, subject and hour.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsView {
    /// All dead letters per status.
    pub by_status: BTreeMap<String, u64>,
    /// Pending dead letters per error type.
    pub by_error_type: BTreeMap<String, u64>,
    /// Pending dead letters per DLQ subject.
    pub by_subject: BTreeMap<String, u64>,
    /// Dead letters per hour, subject and type.
    pub hourly: Vec<HourlyCount>,
}

/// One hour's count.
#[derive(Debug, Serialize, ToSchema)]
pub struct HourlyCount {
    /// The hour.
    pub hour: DateTime<Utc>,
    /// DLQ subject.
    pub subject: String,
    /// Error type.
    pub error_type: String,
    /// Dead letters.
    pub count: u64,
}

impl From<DlqStats> for StatsView {
    fn from(s: DlqStats) -> Self {
        Self {
            by_status: s.by_status,
            by_error_type: s.by_error_type,
            by_subject: s.by_subject,
            hourly: s
                .hourly
                .into_iter()
                .map(|b| HourlyCount {
                    hour: b.hour,
                    subject: b.subject,
                    error_type: b.error_type.as_str().into(),
                    count: b.count,
                })
                .collect(),
        }
    }
}

/// `GET /api/dlq/stats` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsParams {
    /// Hours of history, 1 to 720 (default 24).
    pub hours: Option<u32>,
}

fn dlq(state: &AppState) -> Result<&dyn DlqStore, ApiError> {
    state.dlq.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "dlq_unavailable",
            "this daemon has no dead-letter queue: it needs the MySQL store (set MYSQL_HOST or DATABASE_URL)",
        )
    })
}

pub(super) fn store_error(err: StoreError) -> ApiError {
    match err {
        StoreError::Unavailable(reason) => {
            tracing::warn!(error = %reason, "DLQ store unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the database is unavailable; nothing was changed, try again shortly",
            )
            .retry_after(5)
        }
        StoreError::Rejected(reason) => {
            tracing::error!(error = %reason, "DLQ store refused an operation");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the DLQ operation failed; check the daemon's log",
            )
        }
    }
}

pub(super) fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

pub(super) fn ids(input: Vec<MessageId>) -> Result<Vec<i64>, ApiError> {
    if input.is_empty() {
        return Err(bad(
            "invalid_ids",
            "message_ids must name at least one dead letter",
        ));
    }
    if input.len() > MAX_IDS {
        return Err(bad(
            "invalid_ids",
            format!("message_ids takes at most {MAX_IDS} ids per call; send several calls"),
        ));
    }
    let mut out = Vec::with_capacity(input.len());
    for id in input {
        let n = match id {
            MessageId::Number(n) => Some(n),
            MessageId::Text(s) => s.trim().parse().ok(),
        };
        match n {
            Some(n) if n > 0 => {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
            _ => {
                return Err(bad(
                    "invalid_ids",
                    "message_ids must be positive dead-letter ids",
                ));
            }
        }
    }
    Ok(out)
}

fn operator(s: &str) -> Result<String, ApiError> {
    let s = s.trim();
    if s.is_empty() || s.len() > 255 {
        return Err(bad(
            "invalid_operator",
            "operator must name who asks (1 to 255 characters)",
        ));
    }
    Ok(s.to_string())
}

fn summary(results: Vec<DlqActionResult>) -> ActionSummary {
    let succeeded = results.iter().filter(|r| r.ok).count();
    ActionSummary {
        succeeded,
        failed: results.len() - succeeded,
        results: results.into_iter().map(ActionResult::from).collect(),
    }
}

/// Dead letters, newest first, filtered and paged.
#[utoipa::path(get, path = "/api/dlq/messages", tag = "dlq", params(DlqListParams),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = DeadLetterList),
        (status = 400, description = "A bad filter, limit or cursor", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<DlqListParams>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let error_type = error_class(p.error_type.as_deref())?;
    let status = match p.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(DlqStatus::parse(s).ok_or_else(|| {
            bad(
                "invalid_status",
                "status must be pending, reprocessing, resolved or discarded",
            )
        })?),
    };
    let (limit, before_id) = page(p.limit, p.cursor.as_deref())?;
    let fingerprint = optional_group(p.fingerprint.as_deref())?;
    let items = dlq(&state)?
        .list(DlqQuery {
            subject: p.subject.filter(|s| !s.is_empty()),
            error_type,
            status,
            since: p.since,
            until: p.until,
            limit,
            before_id,
            search: p.q.filter(|q| !q.trim().is_empty()),
            fingerprint,
        })
        .await
        .map_err(store_error)?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|l| l.id.to_string()))
        .flatten();
    Ok(Json(DeadLetterList {
        items: items.into_iter().map(DeadLetterView::from).collect(),
        next_cursor,
    }))
}

/// One dead letter.
#[utoipa::path(get, path = "/api/dlq/messages/{id}", tag = "dlq",
    params(("id" = i64, Path, description = "Dead-letter id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = DeadLetterDetail),
        (status = 400, description = "Not an id", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 404, description = "No such dead letter", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeadLetterDetail>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| bad("invalid_id", "the id must be a dead-letter id (a number)"))?;
    let store = dlq(&state)?;
    match store.get(id).await.map_err(store_error)? {
        Some(letter) => {
            let history = match &letter.original_message_id {
                Some(event_id) => store.history(event_id).await.map_err(store_error)?,
                None => Default::default(),
            };
            let trace_id = history
                .traceparent
                .as_deref()
                .and_then(actors::trace::parse)
                .map(|c| c.trace_id().to_string());
            let audit = store
                .audit(AuditQuery {
                    dlq_id: Some(id),
                    before_id: None,
                    limit: 50,
                })
                .await
                .map_err(store_error)?;
            Ok(Json(DeadLetterDetail {
                audit: audit.into_iter().map(AuditView::from).collect(),
                letter: letter.into(),
                history: history
                    .attempts
                    .into_iter()
                    .map(|a| HistoryView {
                        subject: a.subject,
                        status: a.status,
                        error_message: a.error_message,
                        processing_time_ms: a.processing_time_ms,
                        at: a.at,
                    })
                    .collect(),
                trace_id,
            }))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "dead_letter_not_found",
            format!("no dead letter with id {id}"),
        )),
    }
}

/// Republishes dead letters to their original subjects (as new events, through the
/// outbox); each becomes `reprocessing`, then `resolved` when it succeeds or `pending`
/// again with the new error.
#[utoipa::path(post, path = "/api/dlq/reprocess", tag = "dlq", request_body = ReprocessBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Per-id outcome", body = ActionSummary),
        (status = 400, description = "Bad ids, delay or operator", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 422, description = "Missing or unknown fields", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn reprocess(
    State(state): State<AppState>,
    session: Option<axum::Extension<Operator>>,
    ApiJson(body): ApiJson<ReprocessBody>,
) -> Result<Json<ActionSummary>, ApiError> {
    let ids = ids(body.message_ids)?;
    // A logged-in operator acts under the session's name, whatever the body says.
    let operator = match session {
        Some(s) => s.0.0.clone(),
        None => operator(&body.operator)?,
    };
    let audit_ids = format!("{ids:?}");
    let delay = match body.override_delay.as_deref().map(str::trim) {
        None | Some("") => Duration::ZERO,
        Some(d) => humantime::parse_duration(d)
            .ok()
            .filter(|d| *d <= Duration::from_secs(7 * 24 * 3600))
            .ok_or_else(|| {
                bad(
                    "invalid_delay",
                    "override_delay must be a duration up to 7 days, e.g. \"30s\" or \"5m\"",
                )
            })?,
    };
    let results = dlq(&state)?
        .reprocess(Reprocess {
            ids,
            delay,
            force: body.force,
            operator: operator.clone(),
            reason: body.reason,
            automatic: false,
        })
        .await
        .map_err(store_error)?;
    let out = summary(results);
    tracing::info!(target: "audit", operator = %operator, action = "dlq_reprocess", ids = %audit_ids, delay_ms = delay.as_millis() as u64, succeeded = out.succeeded, failed = out.failed, "admin action");
    if out.succeeded > 0
        && let Some(wake) = &state.relay_wake
    {
        wake.wake();
    }
    Ok(Json(out))
}

/// Marks dead letters `discarded` (they stay for the record).
#[utoipa::path(delete, path = "/api/dlq/discard", tag = "dlq", request_body = DiscardBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Per-id outcome", body = ActionSummary),
        (status = 400, description = "Bad ids or operator", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 422, description = "Missing or unknown fields", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn discard(
    State(state): State<AppState>,
    session: Option<axum::Extension<Operator>>,
    ApiJson(body): ApiJson<DiscardBody>,
) -> Result<Json<ActionSummary>, ApiError> {
    let ids = ids(body.message_ids)?;
    let operator = match session {
        Some(s) => s.0.0.clone(),
        None => operator(&body.operator)?,
    };
    let results = dlq(&state)?
        .discard(&ids, &operator, body.reason.as_deref())
        .await
        .map_err(store_error)?;
    let out = summary(results);
    tracing::info!(target: "audit", operator = %operator, action = "dlq_discard", ids = ?ids, reason = body.reason.as_deref(), succeeded = out.succeeded, failed = out.failed, "admin action");
    Ok(Json(out))
}

/// Counts by status, error type, subject and hour.
#[utoipa::path(get, path = "/api/dlq/stats", tag = "dlq", params(StatsParams),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = StatsView),
        (status = 400, description = "Bad hours", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn stats(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<StatsParams>,
) -> Result<Json<StatsView>, ApiError> {
    let hours = p.hours.unwrap_or(24);
    if !(1..=720).contains(&hours) {
        return Err(bad("invalid_hours", "hours must be between 1 and 720"));
    }
    let since = Utc::now() - chrono::Duration::hours(i64::from(hours));
    let stats = dlq(&state)?.stats(since).await.map_err(store_error)?;
    Ok(Json(stats.into()))
}

/// An optional `error_type` filter, or a clear 400.
pub(super) fn error_class(text: Option<&str>) -> Result<Option<ErrorClass>, ApiError> {
    match text.map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => ErrorClass::parse(t).map(Some).ok_or_else(|| {
            bad(
                "invalid_error_type",
                "error_type must be transient, permanent or poison",
            )
        }),
    }
}

/// A page's size (default 50, 1 to 500) and the id its cursor says to start below, or a
/// clear 400.
fn page(limit: Option<u32>, cursor: Option<&str>) -> Result<(u32, Option<i64>), ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(bad("invalid_limit", "limit must be between 1 and 500"));
    }
    let before_id = match cursor {
        None | Some("") => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            bad(
                "invalid_cursor",
                "cursor must be the next_cursor of a previous page",
            )
        })?),
    };
    Ok((limit, before_id))
}

/// An optional group filter, or a clear 400.
pub(super) fn optional_group(text: Option<&str>) -> Result<Option<String>, ApiError> {
    match text.map(str::trim) {
        None | Some("") => Ok(None),
        Some(f) => group_key(f).map(Some),
    }
}

/// A group's fingerprint from a path or a query, or a clear 400.
pub(super) fn group_key(text: &str) -> Result<String, ApiError> {
    if is_fingerprint(text) {
        Ok(text.to_string())
    } else {
        Err(bad(
            "invalid_fingerprint",
            "a group is named by its fingerprint: 16 hex digits, as GET /api/dlq/groups lists them",
        ))
    }
}

/// The operator an action is recorded under: a logged-in operator's session name,
/// whatever the body says, else the body's `operator`.
pub(super) fn acting(
    session: Option<axum::Extension<Operator>>,
    given: &str,
) -> Result<String, ApiError> {
    match session {
        Some(s) => Ok(s.0.0.clone()),
        None => operator(given),
    }
}

/// Dead letters that failed the same way: one error fingerprint.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    /// The fingerprint (subject + error type + normalised message), 16 hex digits.
    pub fingerprint: String,
    /// The subject its letters were sent on.
    pub original_subject: String,
    /// `transient`, `permanent` or `poison`.
    pub error_type: String,
    /// The error message with numbers, ids, addresses, hosts and quoted values replaced by
    /// placeholders.
    pub signature: String,
    /// Dead letters in the group (of the status asked for).
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

impl From<DlqGroup> for GroupView {
    fn from(g: DlqGroup) -> Self {
        Self {
            fingerprint: g.fingerprint,
            original_subject: g.original_subject,
            error_type: g.error_type.as_str().into(),
            signature: g.signature,
            count: g.count,
            first_seen: g.first_seen,
            last_seen: g.last_seen,
            example_id: g.example_id,
            example_error: g.example_error,
        }
    }
}

/// The groups.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    /// Sorted as asked.
    pub groups: Vec<GroupView>,
}

/// `GET /api/dlq/groups` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GroupParams {
    /// Count letters of this status: `pending` (default), `reprocessing`, `resolved`,
    /// `discarded`, or `all`.
    pub status: Option<String>,
    /// `count` (the largest first, default) or `recent` (the most recently dead-lettered
    /// first).
    pub sort: Option<String>,
    /// At most this many groups, 1 to 500 (default 100).
    pub limit: Option<u32>,
}

/// Dead letters grouped by error fingerprint.
#[utoipa::path(get, path = "/api/dlq/groups", tag = "dlq", params(GroupParams),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = GroupList),
        (status = 400, description = "A bad status, sort or limit", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn groups(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<GroupParams>,
) -> Result<Json<GroupList>, ApiError> {
    let status = match p.status.as_deref().map(str::trim) {
        None | Some("") | Some("pending") => Some(DlqStatus::Pending),
        Some("all") => None,
        Some(s) => Some(DlqStatus::parse(s).ok_or_else(|| {
            bad(
                "invalid_status",
                "status must be pending, reprocessing, resolved, discarded or all",
            )
        })?),
    };
    let sort = match p.sort.as_deref().map(str::trim) {
        None | Some("") | Some("count") => GroupSort::Count,
        Some("recent") => GroupSort::Recent,
        Some(_) => return Err(bad("invalid_sort", "sort must be count or recent")),
    };
    let limit = p.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(bad("invalid_limit", "limit must be between 1 and 500"));
    }
    let groups = dlq(&state)?
        .groups(GroupQuery {
            status,
            sort,
            limit,
        })
        .await
        .map_err(store_error)?;
    Ok(Json(GroupList {
        groups: groups.into_iter().map(GroupView::from).collect(),
    }))
}

/// `POST /api/dlq/groups/{fingerprint}/discard`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupDiscardBody {
    /// Who decides.
    pub operator: String,
    /// Why.
    pub reason: Option<String>,
}

/// What a group discard did.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupDiscarded {
    /// The group.
    pub fingerprint: String,
    /// Open (pending or reprocessing) letters it closed.
    pub discarded: u64,
}

/// Discards every open letter of a group at once (they stay for the record).
#[utoipa::path(post, path = "/api/dlq/groups/{fingerprint}/discard", tag = "dlq",
    params(("fingerprint" = String, Path, description = "The group's fingerprint")),
    request_body = GroupDiscardBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, body = GroupDiscarded),
        (status = 400, description = "Not a fingerprint, or a bad operator", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 422, description = "Missing or unknown fields", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn discard_group(
    State(state): State<AppState>,
    session: Option<axum::Extension<Operator>>,
    ApiPath(fingerprint): ApiPath<String>,
    ApiJson(body): ApiJson<GroupDiscardBody>,
) -> Result<Json<GroupDiscarded>, ApiError> {
    let fingerprint = group_key(&fingerprint)?;
    let operator = acting(session, &body.operator)?;
    let discarded = dlq(&state)?
        .discard_group(&fingerprint, &operator, body.reason.as_deref())
        .await
        .map_err(store_error)?;
    tracing::info!(target: "audit", operator = %operator, action = "dlq_discard_group", fingerprint = %fingerprint, reason = body.reason.as_deref(), discarded, "admin action");
    Ok(Json(GroupDiscarded {
        fingerprint,
        discarded,
    }))
}

/// One operator action on the DLQ.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    /// Its id.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub operator: String,
    /// `reprocess`, `auto_reprocess`, `discard`, `discard_group` or `edit`.
    pub action: String,
    /// The dead letter acted on.
    pub dlq_id: Option<i64>,
    /// The group acted on.
    pub fingerprint: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// What changed: for an edit the payload `before` and `after`, for a reprocess the new
    /// `event_id`, for a group discard how many were `discarded`.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl From<AuditEntry> for AuditView {
    fn from(a: AuditEntry) -> Self {
        Self {
            id: a.id,
            at: a.at,
            operator: a.operator,
            action: a.action,
            dlq_id: a.dlq_id,
            fingerprint: a.fingerprint,
            reason: a.reason,
            detail: a.detail,
        }
    }
}

/// A page of the audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    /// Newest first.
    pub items: Vec<AuditView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /api/dlq/audit` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only actions on this dead letter.
    pub dlq_id: Option<i64>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The audit trail: who did what to which dead letters, when and why.
#[utoipa::path(get, path = "/api/dlq/audit", tag = "dlq", params(AuditParams),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = AuditList),
        (status = 400, description = "A bad limit or cursor", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn audit(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> Result<Json<AuditList>, ApiError> {
    let (limit, before_id) = page(p.limit, p.cursor.as_deref())?;
    let items = dlq(&state)?
        .audit(AuditQuery {
            dlq_id: p.dlq_id,
            before_id,
            limit,
        })
        .await
        .map_err(store_error)?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|a| a.id.to_string()))
        .flatten();
    Ok(Json(AuditList {
        items: items.into_iter().map(AuditView::from).collect(),
        next_cursor,
    }))
}

/// `POST /api/dlq/messages/{id}/edit`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditBody {
    /// Payload fields to change and their new values, e.g. `{"email": "bob@example.com"}`:
    /// `number` and `email` of a prime check, `email` of a result email.
    pub set: BTreeMap<String, String>,
    /// Show the change without storing or sending it.
    #[serde(default)]
    pub dry_run: bool,
    /// Who edits.
    pub operator: String,
    /// Why.
    pub reason: Option<String>,
}

/// One changed field.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldChange {
    /// The field.
    pub field: String,
    /// Its value before.
    #[schema(value_type = Object)]
    pub before: serde_json::Value,
    /// Its value after.
    #[schema(value_type = Object)]
    pub after: serde_json::Value,
}

/// What an edit changes, and (unless a dry run) the event it was replayed as.
#[derive(Debug, Serialize, ToSchema)]
pub struct EditOutcome {
    /// The dead letter.
    pub id: i64,
    /// True: nothing was stored or sent.
    pub dry_run: bool,
    /// The changed fields.
    pub diff: Vec<FieldChange>,
    /// The payload before.
    #[schema(value_type = Object)]
    pub before: serde_json::Value,
    /// The payload after.
    #[schema(value_type = Object)]
    pub after: serde_json::Value,
    /// The event the edited message was replayed as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// The fields an operator may edit in a payload of `subject`.
fn editable(subject: &str) -> &'static [&'static str] {
    match subject {
        SUBJECT_PRIMECHECK_REQUESTED => &["number", "email"],
        SUBJECT_EMAIL_SEND => &["email"],
        _ => &[],
    }
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

/// `letter`'s payload with `set` applied, each value validated as the public API validates
/// it; or why not.
fn edited(
    letter: &DeadLetter,
    set: &BTreeMap<String, String>,
    max_digits: usize,
) -> Result<(serde_json::Value, Vec<FieldChange>), ApiError> {
    if set.is_empty() {
        return Err(bad(
            "empty_edit",
            "set names no field; give the fields to change, e.g. {\"email\": \"bob@example.com\"}",
        ));
    }
    let serde_json::Value::Object(fields) = &letter.payload else {
        return Err(unprocessable(
            "payload_not_editable",
            "this dead letter's payload is not a JSON object (a poison message); replay it with force or discard it",
        ));
    };
    let allowed = editable(&letter.original_subject);
    let mut after = fields.clone();
    let mut diff = Vec::new();
    for (field, value) in set {
        if !fields.contains_key(field) {
            let known: Vec<&str> = fields.keys().map(String::as_str).collect();
            return Err(unprocessable(
                "unknown_field",
                format!(
                    "{field:?} is not a field of this dead letter's payload (it has: {})",
                    known.join(", ")
                ),
            ));
        }
        if !allowed.contains(&field.as_str()) {
            return Err(unprocessable(
                "field_not_editable",
                format!(
                    "{field:?} cannot be edited in a {} message (editable: {})",
                    letter.original_subject,
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ),
            ));
        }
        let value = match field.as_str() {
            "number" => crate::http::api::checked_number(value, max_digits)?,
            _ => crate::http::api::checked_email(value)?,
        };
        let new = serde_json::Value::String(value);
        let old = fields.get(field).cloned().unwrap_or_default();
        if old != new {
            diff.push(FieldChange {
                field: field.clone(),
                before: old,
                after: new.clone(),
            });
        }
        after.insert(field.clone(), new);
    }
    if diff.is_empty() {
        return Err(unprocessable(
            "edit_changes_nothing",
            "the new values are the ones the payload has; nothing to replay",
        ));
    }
    Ok((serde_json::Value::Object(after), diff))
}

/// Edits a pending dead letter's payload and replays it as one message. The edit is
/// validated as `POST /prime-check` validates a request, answered with its diff, stored
/// (before and after) in the audit trail; `dry_run` shows the diff without storing or
/// sending anything.
#[utoipa::path(post, path = "/api/dlq/messages/{id}/edit", tag = "dlq",
    params(("id" = i64, Path, description = "Dead-letter id")),
    request_body = EditBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, body = EditOutcome),
        (status = 400, description = "Not an id, an empty edit or a bad operator", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 404, description = "No such dead letter", body = ErrorBody),
        (status = 409, description = "The letter is not pending (resolved, discarded or being reprocessed), or changed meanwhile", body = ErrorBody),
        (status = 422, description = "A field that is not in the payload or not editable, a value the public API would refuse, or an edit that changes nothing", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn edit(
    State(state): State<AppState>,
    session: Option<axum::Extension<Operator>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<EditBody>,
) -> Result<Json<EditOutcome>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| bad("invalid_id", "the id must be a dead-letter id (a number)"))?;
    let operator = acting(session, &body.operator)?;
    let store = dlq(&state)?;
    let letter = store.get(id).await.map_err(store_error)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "dead_letter_not_found",
            format!("no dead letter with id {id}"),
        )
    })?;
    if letter.status != DlqStatus::Pending {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "dead_letter_not_editable",
            format!(
                "dead letter {id} is {}; only a pending dead letter can be edited",
                letter.status.as_str()
            ),
        ));
    }
    let (after, diff) = edited(&letter, &body.set, state.max_digits)?;
    let before = letter.payload.clone();
    if body.dry_run {
        return Ok(Json(EditOutcome {
            id,
            dry_run: true,
            diff,
            before,
            after,
            event_id: None,
        }));
    }
    let result = store
        .edit(LetterEdit {
            id,
            before: before.clone(),
            after: after.clone(),
            operator: operator.clone(),
            reason: body.reason.clone(),
        })
        .await
        .map_err(store_error)?;
    if !result.ok {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "dead_letter_not_editable",
            format!(
                "dead letter {id} was not edited: {}",
                result.error.unwrap_or_default()
            ),
        ));
    }
    let fields: Vec<&str> = diff.iter().map(|c| c.field.as_str()).collect();
    tracing::info!(target: "audit", operator = %operator, action = "dlq_edit", id, fields = ?fields, reason = body.reason.as_deref(), "admin action");
    if let Some(wake) = &state.relay_wake {
        wake.wake();
    }
    Ok(Json(EditOutcome {
        id,
        dry_run: false,
        diff,
        before,
        after,
        event_id: result.event_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(subject: &str, payload: serde_json::Value) -> DeadLetter {
        DeadLetter {
            id: 7,
            original_subject: subject.into(),
            original_message_id: None,
            dlq_subject: "dlq.emailsend".into(),
            payload,
            error_message: "550 no such user".into(),
            error_type: ErrorClass::Permanent,
            retry_count: 1,
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

    fn set(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn code(result: Result<(serde_json::Value, Vec<FieldChange>), ApiError>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn an_edit_is_validated_as_the_public_api_validates_and_shown_as_a_diff() {
        let l = letter(
            SUBJECT_EMAIL_SEND,
            serde_json::json!({"request_id": "r", "number": "97", "email": "bob@exmaple.com", "is_prime": true}),
        );
        let (after, diff) = edited(&l, &set(&[("email", "bob@Example.com")]), 20).unwrap();
        assert_eq!(
            after["email"], "bob@example.com",
            "normalised as the API does"
        );
        assert_eq!(after["number"], "97");
        assert_eq!(diff.len(), 1);
        assert_eq!(diff[0].field, "email");
        assert_eq!(diff[0].before, "bob@exmaple.com");

        assert_eq!(
            code(edited(&l, &set(&[("email", "not an address")]), 20)),
            "invalid_email"
        );
        assert_eq!(
            code(edited(&l, &set(&[("colour", "red")]), 20)),
            "unknown_field"
        );
        assert_eq!(
            code(edited(&l, &set(&[("number", "98")]), 20)),
            "field_not_editable"
        );
        assert_eq!(
            code(edited(&l, &set(&[("request_id", "x")]), 20)),
            "field_not_editable"
        );
        assert_eq!(code(edited(&l, &set(&[]), 20)), "empty_edit");
        assert_eq!(
            code(edited(&l, &set(&[("email", "bob@exmaple.com")]), 20)),
            "edit_changes_nothing"
        );
    }

    #[test]
    fn a_prime_checks_number_is_editable_within_the_apis_limit() {
        let l = letter(
            SUBJECT_PRIMECHECK_REQUESTED,
            serde_json::json!({"request_id": "r", "number": "97", "email": "a@example.com"}),
        );
        assert_eq!(code(edited(&l, &set(&[("number", "0101")]), 20)), "ok");
        assert_eq!(
            code(edited(&l, &set(&[("number", "12345")]), 4)),
            "number_too_long"
        );
        assert_eq!(
            code(edited(&l, &set(&[("number", "-3")]), 20)),
            "invalid_number"
        );
        let poison = letter(SUBJECT_PRIMECHECK_REQUESTED, serde_json::json!("not json"));
        assert_eq!(
            code(edited(&poison, &set(&[("number", "3")]), 20)),
            "payload_not_editable"
        );
    }
}
