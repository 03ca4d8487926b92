//! Safe replay jobs over the API (issue 20 §1): start one over a selection of dead letters
//! (or see what it would take, `dry_run`), follow its progress, pause, resume or cancel it.
//! The [`actors::replay::Replayer`] of the daemon holding a job's lease runs it.

use actors::model::{NewReplay, ReplayJob, ReplayPace, ReplaySelection, ReplayState};
use actors::{ReplayControl, ReplayStore};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::dlq::{MessageId, acting, bad, error_class, ids, optional_group, store_error};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::session::Operator;

/// How many ids a dry run lists.
const PREVIEW_IDS: u32 = 100;

/// `POST /api/dlq/replays`: what to replay and how.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// These dead letters (the filters are then ignored; at most 1000).
    #[serde(default)]
    pub ids: Vec<MessageId>,
    /// Only this original subject (`primecheck.requested`, `email.send`).
    pub subject: Option<String>,
    /// Only this error type: `transient`, `permanent` or `poison`.
    pub error_type: Option<String>,
    /// Only this group (error fingerprint).
    pub fingerprint: Option<String>,
    /// Dead-lettered at or after (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Letters sent first; the rest waits for their outcomes (default 5).
    pub canary: Option<u32>,
    /// Each later step sends this many times the previous one (default 5: 5 → 25 → 125 …).
    pub ramp: Option<u32>,
    /// At most this many letters a second (default 10).
    pub rate_per_second: Option<f64>,
    /// Stop when more than this share of the outcomes are failures (default 0.5).
    pub max_failure_ratio: Option<f64>,
    /// Also replay `poison` letters (quarantined or undecodable).
    #[serde(default)]
    pub force: bool,
    /// Only say what would be replayed.
    #[serde(default)]
    pub dry_run: bool,
    /// Who asks.
    pub operator: String,
    /// Why.
    pub reason: Option<String>,
}

/// What a dry run would replay.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayPreview {
    /// Always true.
    pub dry_run: bool,
    /// Pending letters the selection matches now.
    pub letters: u64,
    /// The first of them (at most 100), oldest first.
    pub ids: Vec<i64>,
}

/// A replay job and its progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayView {
    /// Its id.
    pub id: i64,
    /// `running`, `paused`, `done`, `aborted` (stopped by itself) or `cancelled`.
    pub state: String,
    /// Who started it (`auto:smtp-healed` when the SMTP breaker's healing did).
    pub operator: String,
    /// Why.
    pub reason: Option<String>,
    /// `operator` or `smtp_healed`.
    pub trigger: String,
    /// What it replays.
    #[schema(value_type = Object)]
    pub selection: serde_json::Value,
    /// The canary's size.
    pub canary: u32,
    /// The ramp factor.
    pub ramp: u32,
    /// The rate cap, letters a second.
    pub rate_per_second: f64,
    /// The failure share that stops it.
    pub max_failure_ratio: f64,
    /// Poison letters included.
    pub force: bool,
    /// Letters it took when it started.
    pub total: u64,
    /// Not sent yet.
    pub queued: u64,
    /// Sent, outcome not known yet.
    pub in_flight: u64,
    /// Went through.
    pub succeeded: u64,
    /// Dead-lettered again.
    pub failed: u64,
    /// No longer pending when their turn came.
    pub skipped: u64,
    /// Letters whose outcome is known (succeeded, failed, skipped).
    pub done: u64,
    /// Letters still to send or to hear from.
    pub left: u64,
    /// `done / total`, 0 to 1.
    pub progress: f64,
    /// Letters sent a second so far.
    pub rate: f64,
    /// Seconds until the rest is sent at the rate so far (null before anything is sent or
    /// once the job ended).
    pub eta_seconds: Option<f64>,
    /// Why it stopped (aborted or cancelled).
    pub stop_reason: Option<String>,
    /// The daemon running it.
    pub owner: Option<String>,
    /// When it started.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<ReplayJob> for ReplayView {
    fn from(j: ReplayJob) -> Self {
        let c = j.counts;
        let done = c.succeeded + c.failed + c.skipped;
        let left = c.queued + c.in_flight;
        let until = j.finished_at.unwrap_or_else(Utc::now);
        let elapsed = (until - j.created_at).num_milliseconds().max(1) as f64 / 1000.0;
        let rate = c.dispatched() as f64 / elapsed;
        let eta_seconds = (!j.state.ended() && rate > 0.0 && c.dispatched() > 0)
            .then(|| c.queued as f64 / rate.min(j.pace.rate_per_second));
        Self {
            id: j.id,
            state: j.state.as_str().into(),
            operator: j.operator,
            reason: j.reason,
            trigger: j.trigger,
            selection: j.selection,
            canary: j.pace.canary,
            ramp: j.pace.ramp,
            rate_per_second: j.pace.rate_per_second,
            max_failure_ratio: j.pace.max_failure_ratio,
            force: j.force,
            total: j.total,
            queued: c.queued,
            in_flight: c.in_flight,
            succeeded: c.succeeded,
            failed: c.failed,
            skipped: c.skipped,
            done,
            left,
            progress: if j.total == 0 {
                1.0
            } else {
                done as f64 / j.total as f64
            },
            rate,
            eta_seconds,
            stop_reason: j.stop_reason,
            owner: j.owner,
            created_at: j.created_at,
            finished_at: j.finished_at,
        }
    }
}

/// Replay jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayList {
    /// The jobs.
    pub jobs: Vec<ReplayView>,
}

/// `GET /api/dlq/replays` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReplayListParams {
    /// At most this many, 1 to 200 (default 20).
    pub limit: Option<u32>,
}

/// `POST /api/dlq/replays/{id}/pause|resume|cancel`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayControlBody {
    /// Who asks.
    pub operator: String,
    /// Why.
    pub reason: Option<String>,
}

fn replays(state: &AppState) -> Result<&dyn ReplayStore, ApiError> {
    state.replays.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "replays_unavailable",
            "this daemon keeps no replay jobs: it needs a store with a dead-letter queue",
        )
    })
}

fn between(value: f64, low: f64, high: f64) -> bool {
    value.is_finite() && value >= low && value <= high
}

/// The pace of `body`, its defaults filled in, or why not.
fn pace(body: &ReplayBody) -> Result<ReplayPace, ApiError> {
    let pace = ReplayPace {
        canary: body.canary.unwrap_or(5),
        ramp: body.ramp.unwrap_or(5),
        rate_per_second: body.rate_per_second.unwrap_or(10.0),
        max_failure_ratio: body.max_failure_ratio.unwrap_or(0.5),
    };
    if !(1..=1000).contains(&pace.canary) {
        return Err(bad("invalid_canary", "canary must be between 1 and 1000"));
    }
    if !(2..=100).contains(&pace.ramp) {
        return Err(bad("invalid_ramp", "ramp must be between 2 and 100"));
    }
    if !between(pace.rate_per_second, 0.1, 10_000.0) {
        return Err(bad(
            "invalid_rate",
            "rate_per_second must be between 0.1 and 10000",
        ));
    }
    if !between(pace.max_failure_ratio, 0.0, 1.0) {
        return Err(bad(
            "invalid_max_failure_ratio",
            "max_failure_ratio must be between 0 and 1 (0.5: stop when more than half fail)",
        ));
    }
    Ok(pace)
}

/// The selection of `body`, or why not.
fn selection(body: &ReplayBody) -> Result<ReplaySelection, ApiError> {
    let ids = if body.ids.is_empty() {
        Vec::new()
    } else {
        ids(body.ids.clone())?
    };
    let error_type = error_class(body.error_type.as_deref())?;
    let fingerprint = optional_group(body.fingerprint.as_deref())?;
    if let (Some(since), Some(until)) = (body.since, body.until)
        && since >= until
    {
        return Err(bad("invalid_time_range", "since must be before until"));
    }
    Ok(ReplaySelection {
        ids,
        subject: body
            .subject
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from),
        error_type,
        fingerprint,
        since: body.since,
        until: body.until,
    })
}

/// Starts a safe replay job (or, with `dry_run`, says what it would replay).
#[utoipa::path(post, path = "/api/dlq/replays", tag = "dlq", request_body = ReplayBody,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Started", body = ReplayView),
        (status = 200, description = "Dry run: what it would replay", body = ReplayPreview),
        (status = 400, description = "A bad selection, pace or operator", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 422, description = "No pending letter matches, or unknown fields", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn start(
    State(state): State<AppState>,
    session: Option<axum::Extension<Operator>>,
    ApiJson(body): ApiJson<ReplayBody>,
) -> Result<Response, ApiError> {
    let operator = acting(session, &body.operator)?;
    let selection = selection(&body)?;
    let pace = pace(&body)?;
    let store = replays(&state)?;
    let (letters, preview) = store
        .preview_replay(selection.clone(), body.force, PREVIEW_IDS)
        .await
        .map_err(store_error)?;
    if body.dry_run {
        return Ok(Json(ReplayPreview {
            dry_run: true,
            letters,
            ids: preview,
        })
        .into_response());
    }
    if letters == 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "nothing_to_replay",
            "no pending dead letter matches this selection (poison ones need force)",
        ));
    }
    let job = store
        .start_replay(NewReplay {
            selection,
            pace,
            force: body.force,
            operator: operator.clone(),
            reason: body.reason.clone(),
            trigger: "operator".into(),
        })
        .await
        .map_err(store_error)?;
    tracing::info!(target: "audit", operator = %operator, action = "dlq_replay_start", job = job.id, letters = job.total, reason = body.reason.as_deref(), "admin action");
    Ok((StatusCode::CREATED, Json(ReplayView::from(job))).into_response())
}

/// Replay jobs, newest first.
#[utoipa::path(get, path = "/api/dlq/replays", tag = "dlq", params(ReplayListParams),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = ReplayList),
        (status = 400, description = "A bad limit", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<ReplayListParams>,
) -> Result<Json<ReplayList>, ApiError> {
    let limit = p.limit.unwrap_or(20);
    if !(1..=200).contains(&limit) {
        return Err(bad("invalid_limit", "limit must be between 1 and 200"));
    }
    let jobs = replays(&state)?.replays(limit).await.map_err(store_error)?;
    Ok(Json(ReplayList {
        jobs: jobs.into_iter().map(ReplayView::from).collect(),
    }))
}

fn job_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| bad("invalid_id", "the id must be a replay job's id (a number)"))
}

fn not_found(id: i64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "replay_not_found",
        format!("no replay job with id {id}"),
    )
}

/// One replay job and its progress.
#[utoipa::path(get, path = "/api/dlq/replays/{id}", tag = "dlq",
    params(("id" = i64, Path, description = "Replay job id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = ReplayView),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ReplayView>, ApiError> {
    let id = job_id(&id)?;
    match replays(&state)?.replay(id).await.map_err(store_error)? {
        Some(job) => Ok(Json(job.into())),
        None => Err(not_found(id)),
    }
}

async fn control(
    state: &AppState,
    session: Option<axum::Extension<Operator>>,
    id: &str,
    body: &ReplayControlBody,
    to: ReplayState,
) -> Result<Json<ReplayView>, ApiError> {
    let id = job_id(id)?;
    let operator = acting(session, &body.operator)?;
    let outcome = replays(state)?
        .control_replay(id, to, &operator, body.reason.as_deref())
        .await
        .map_err(store_error)?;
    match outcome {
        ReplayControl::NotFound => Err(not_found(id)),
        ReplayControl::Refused(why) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "replay_state_conflict",
            format!("replay job {id}: {why}"),
        )),
        ReplayControl::Changed(job) => {
            if to == ReplayState::Cancelled {
                actors::metrics::pipeline()
                    .replay_jobs_ended
                    .with_label_values(&["cancelled"])
                    .inc();
            }
            tracing::info!(target: "audit", operator = %operator, action = "dlq_replay_control", job = id, state = to.as_str(), reason = body.reason.as_deref(), "admin action");
            Ok(Json((*job).into()))
        }
    }
}

/// Pauses a running replay job (the letters in flight still settle).
#[utoipa::path(post, path = "/api/dlq/replays/{id}/pause", tag = "dlq",
    params(("id" = i64, Path, description = "Replay job id")),
    request_body = ReplayControlBody, security(("admin_token" = [])),
    responses(
        (status = 200, body = ReplayView),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "Not running", body = ErrorBody),
    ))]
pub async fn pause(
    State(state): State<AppState>,
    session: Option<axum::Extension<Operator>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ReplayControlBody>,
) -> Result<Json<ReplayView>, ApiError> {
    control(&state, session, &id, &body, ReplayState::Paused).await
}

/// Resumes a paused replay job.
#[utoipa::path(post, path = "/api/dlq/replays/{id}/resume", tag = "dlq",
    params(("id" = i64, Path, description = "Replay job id")),
    request_body = ReplayControlBody, security(("admin_token" = [])),
    responses(
        (status = 200, body = ReplayView),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "Not paused", body = ErrorBody),
    ))]
pub async fn resume(
    State(state): State<AppState>,
    session: Option<axum::Extension<Operator>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ReplayControlBody>,
) -> Result<Json<ReplayView>, ApiError> {
    control(&state, session, &id, &body, ReplayState::Running).await
}

/// Cancels a running or paused replay job: nothing more is sent (what is in flight still
/// settles; the letters not sent stay pending).
#[utoipa::path(post, path = "/api/dlq/replays/{id}/cancel", tag = "dlq",
    params(("id" = i64, Path, description = "Replay job id")),
    request_body = ReplayControlBody, security(("admin_token" = [])),
    responses(
        (status = 200, body = ReplayView),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "Already ended", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    session: Option<axum::Extension<Operator>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ReplayControlBody>,
) -> Result<Json<ReplayView>, ApiError> {
    control(&state, session, &id, &body, ReplayState::Cancelled).await
}
