//! The DLQ API (seed §3.2): browse, count, reprocess and discard dead letters. Every route
//! needs the admin token.

use std::collections::BTreeMap;
use std::time::Duration;

use actors::model::{
    DeadLetter, DlqActionResult, DlqQuery, DlqStats, DlqStatus, ErrorClass, Reprocess,
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
}

/// An id as a number or a string of digits (the seed sends strings).
#[derive(Debug, Deserialize, ToSchema)]
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

fn store_error(err: StoreError) -> ApiError {
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

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn ids(input: Vec<MessageId>) -> Result<Vec<i64>, ApiError> {
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
    let error_type = match p.error_type.as_deref() {
        None | Some("") => None,
        Some(t) => Some(ErrorClass::parse(t).ok_or_else(|| {
            bad(
                "invalid_error_type",
                "error_type must be transient, permanent or poison",
            )
        })?),
    };
    let status = match p.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(DlqStatus::parse(s).ok_or_else(|| {
            bad(
                "invalid_status",
                "status must be pending, reprocessing, resolved or discarded",
            )
        })?),
    };
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(bad("invalid_limit", "limit must be between 1 and 500"));
    }
    let before_id = match p.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            bad(
                "invalid_cursor",
                "cursor must be the next_cursor of a previous page",
            )
        })?),
    };
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
            Ok(Json(DeadLetterDetail {
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
