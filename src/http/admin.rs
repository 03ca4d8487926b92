//! The admin API: `GET /admin/actors` (the live supervision tree) and
//! `POST /admin/actors/{name}/restart`, behind a bearer token from `ADMIN_API_KEYS`; with
//! `PRIMED_FAULT_INJECTION=true` also `POST /admin/actors/{name}/kill` for chaos testing.
//!
//! Tokens are compared in constant time. With no `ADMIN_API_KEYS`, the daemon generates a
//! token once and keeps it in `<data dir>/admin-token` (mode 0600), so a fresh install has a
//! working but still private admin API.

use std::io::Write;
use std::path::{Path, PathBuf};

use axum::Json;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ractor::rpc::CallResult;
use supervision::{ChildKind, ChildStatus, SupervisorMsg, status};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::session::{Operator, csrf_ok};
use crate::config::Secret;

/// Rejects requests without a valid `Authorization: Bearer <token>` or a live session
/// cookie; a state-changing request with the cookie also needs the session's CSRF token.
/// Cookie requests carry their operator as a [`Operator`] extension.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if request.headers().get(header::AUTHORIZATION).is_none()
        && let Some(session) = state.sessions.from_headers(request.headers())
    {
        let safe = matches!(*request.method(), Method::GET | Method::HEAD);
        if !safe && !csrf_ok(&session, request.headers()) {
            tracing::warn!(target: "audit", operator = %session.operator, path = %request.uri().path(), "request refused: missing or wrong CSRF token");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf_failed",
                "send the session's CSRF token (GET /api/session) in X-CSRF-Token",
            ));
        }
        request.extensions_mut().insert(Operator(session.operator));
        return Ok(next.run(request).await);
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send an admin token as 'Authorization: Bearer <token>' (ADMIN_API_KEYS, or the admin-token file in the data directory)",
        ));
    };
    if Secret::any_matches(&state.admin_keys, presented) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin token is not valid",
        ))
    }
}

async fn tree(state: &AppState) -> Result<ChildStatus, ApiError> {
    let root = ractor::registry::where_is(&*state.root).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "tree_unavailable",
            "the supervision tree is not running (the daemon is starting or stopping)",
        )
    })?;
    status(&root.into(), state.status_timeout)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tree_unavailable",
                e.to_string(),
            )
        })
}

/// The live supervision tree.
#[utoipa::path(get, path = "/admin/actors", tag = "admin", security(("admin_token" = [])), responses(
    (status = 200, description = "The tree: every actor's kind, restart type, state, restart count, last failure and uptime"),
    (status = 401, description = "No or wrong token", body = ErrorBody),
    (status = 503, description = "The tree is not running", body = ErrorBody),
))]
pub async fn actors(State(state): State<AppState>) -> Result<Json<ChildStatus>, ApiError> {
    tree(&state).await.map(Json)
}

/// Restarts one actor (and, per its supervisor's strategy, the actors that depend on it).
#[utoipa::path(post, path = "/admin/actors/{name}/restart", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path, description = "The actor's name, as in GET /admin/actors")),
    responses(
        (status = 200, description = "Restarted"),
        (status = 202, description = "`http` only: the HTTP server restarts right after this answer (it would otherwise wait for its own answer to drain)"),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 404, description = "No such actor", body = ErrorBody),
        (status = 409, description = "The restart failed", body = ErrorBody),
))]
pub async fn restart(
    State(state): State<AppState>,
    operator: Option<axum::Extension<Operator>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    let operator = operator.map_or_else(|| "api-token".to_string(), |o| o.0.0.clone());
    let tree = tree(&state).await?;
    let Some(parent) = parent_of(&tree, &name) else {
        let (code, message) = if tree.name == name {
            (
                "cannot_restart_root",
                "the root supervisor cannot be restarted; restart the service instead".to_string(),
            )
        } else {
            (
                "unknown_actor",
                format!("no actor named {name:?}; GET /admin/actors lists them"),
            )
        };
        return Err(ApiError::new(StatusCode::NOT_FOUND, code, message));
    };
    let supervisor = ractor::registry::where_is(parent.as_str()).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "supervisor_unavailable",
            format!("supervisor {parent} is restarting; try again"),
        )
    })?;
    let supervisor: supervision::SupervisorRef = supervisor.into();
    if name == crate::tree::HTTP {
        // Stopping the server waits for the answers in flight, this one too: answer first,
        // then restart. Connections made meanwhile wait in the shared socket's backlog for
        // the next incarnation; none is refused.
        let timeout = state.status_timeout * 15;
        let (actor, supervisor_name) = (name.clone(), parent.clone());
        tokio::spawn(async move {
            // The server's drain waits for this answer, which is complete by then.
            match supervisor
                .call(
                    |reply| SupervisorMsg::RestartChild(actor.clone(), reply),
                    Some(timeout),
                )
                .await
            {
                Ok(CallResult::Success(Ok(()))) => {
                    tracing::info!(target: "audit", operator = %operator, action = "restart", actor = %actor, supervisor = %supervisor_name, "admin action");
                }
                other => {
                    let reason = match other {
                        Ok(CallResult::Success(Err(err))) => err.to_string(),
                        _ => "not confirmed in time".to_string(),
                    };
                    tracing::warn!(target: "audit", operator = %operator, action = "restart", actor = %actor, reason = %reason, "admin action failed; check GET /admin/actors");
                }
            }
        });
        return Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "restarting": name,
                "supervisor": parent,
                "message": "the HTTP server restarts after this answer; new connections wait for it, none is refused (GET /admin/actors shows its restart count)",
            })),
        )
            .into_response());
    }
    match supervisor
        .call(
            |reply| SupervisorMsg::RestartChild(name.clone(), reply),
            Some(state.status_timeout * 15),
        )
        .await
    {
        Ok(CallResult::Success(Ok(()))) => {
            tracing::info!(target: "audit", operator = %operator, action = "restart", actor = %name, supervisor = %parent, "admin action");
            Ok(Json(serde_json::json!({"restarted": name, "supervisor": parent})).into_response())
        }
        Ok(CallResult::Success(Err(err))) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "restart_failed",
            err.to_string(),
        )),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "restart_unconfirmed",
            format!(
                "supervisor {parent} did not confirm the restart in time; check GET /admin/actors"
            ),
        )),
    }
}

/// Kills one actor as a crash would (an abnormal exit its supervisor reacts to). Only with
/// `PRIMED_FAULT_INJECTION=true`; meant for chaos tests and drills.
#[utoipa::path(post, path = "/admin/actors/{name}/kill", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path, description = "The actor's name, as in GET /admin/actors")),
    responses(
        (status = 200, description = "Killed; its supervisor restarts it. `restarted_in_ms`: how long until the new incarnation was registered (null if not within 2 s)"),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 404, description = "Fault injection is disabled", body = ErrorBody),
        (status = 409, description = "The actor is not running", body = ErrorBody),
))]
pub async fn kill(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.fault_injection {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "fault_injection_disabled",
            "killing actors is disabled; set PRIMED_FAULT_INJECTION=true to enable it (test systems only)",
        ));
    }
    let Some(actor) = ractor::registry::where_is(name.as_str()) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "actor_not_running",
            format!(
                "no running actor named {name:?} (it may be restarting); GET /admin/actors lists them"
            ),
        ));
    };
    tracing::warn!(actor = %name, "actor killed through the fault-injection endpoint");
    let old = actor.get_id();
    let killed_at = std::time::Instant::now();
    actor.kill();
    // Measure how long its supervisor takes to have a new incarnation registered (the
    // chaos harness reports it as the actor's time to recover).
    let deadline = killed_at + std::time::Duration::from_secs(2);
    let restarted_in = loop {
        match ractor::registry::where_is(name.clone()) {
            Some(cell) if cell.get_id() != old => break Some(killed_at.elapsed()),
            _ if std::time::Instant::now() > deadline => break None,
            _ => tokio::task::yield_now().await,
        }
    };
    Ok(Json(serde_json::json!({
        "killed": name,
        "restarted_in_ms": restarted_in.map(|d| d.as_secs_f64() * 1000.0),
    })))
}

/// The name of the supervisor that has a child called `name`.
fn parent_of(node: &ChildStatus, name: &str) -> Option<String> {
    let children = node.children.as_ref()?;
    if children.iter().any(|c| c.name == name) {
        return Some(node.name.clone());
    }
    children
        .iter()
        .filter(|c| c.kind == ChildKind::Supervisor)
        .find_map(|c| parent_of(c, name))
}

/// Reads the admin token kept in `data_dir`, creating it (mode 0600) if there is none.
pub fn load_or_create_token(data_dir: &Path) -> std::io::Result<(Secret, PathBuf)> {
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(token) if token.trim().len() >= 16 => return Ok((Secret::new(token.trim()), path)),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?
    };
    writeln!(file, "{token}")?;
    Ok((Secret::new(token), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_created_once_private_and_then_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (first, path) = load_or_create_token(dir.path()).unwrap();
        assert_eq!(first.expose().len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (second, _) = load_or_create_token(dir.path()).unwrap();
        assert_eq!(first, second);
    }
}

/// One row of `worker_health_checks`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct WorkerHealthView {
    /// `<instance>/<actor>`.
    pub worker_name: String,
    /// `healthy` or `unhealthy`.
    pub status: &'static str,
    /// Its last sign of life.
    pub last_heartbeat: chrono::DateTime<chrono::Utc>,
    /// Why it is unhealthy.
    pub error_message: Option<String>,
    /// Restarts, counts, host, pid, version.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

/// Every daemon's `worker_health_checks` rows.
#[utoipa::path(get, path = "/admin/workers", tag = "admin", security(("admin_token" = [])), responses(
    (status = 200, description = "One row per actor and daemon", body = [WorkerHealthView]),
    (status = 401, description = "No or wrong token", body = ErrorBody),
    (status = 503, description = "The database does not answer", body = ErrorBody),
))]
pub async fn workers(
    State(state): State<AppState>,
) -> Result<Json<Vec<WorkerHealthView>>, ApiError> {
    let store = state.health_store.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "health_unavailable",
            "this daemon has no store to read worker_health_checks from",
        )
    })?;
    let rows = store.list_health().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("cannot read worker_health_checks: {e}"),
        )
    })?;
    Ok(Json(
        rows.into_iter()
            .map(|r| WorkerHealthView {
                worker_name: r.worker_name,
                status: if r.healthy { "healthy" } else { "unhealthy" },
                last_heartbeat: r.last_heartbeat,
                error_message: r.error_message,
                metadata: r.metadata,
            })
            .collect(),
    ))
}

fn consumers_view(state: &AppState) -> serde_json::Value {
    serde_json::Value::Array(
        state
            .controls
            .consumers
            .iter()
            .map(|(name, pause, workers)| {
                serde_json::json!({
                    "name": name,
                    "paused": pause.requested(),
                    "workers": workers,
                    "workers_resting": pause.resting(),
                })
            })
            .collect(),
    )
}

/// Consumers (paused or not), the SMTP circuit breaker and the rate limiter's backend.
#[utoipa::path(get, path = "/admin/status", tag = "admin", security(("admin_token" = [])), responses(
    (status = 200, description = "`consumers` (each: `paused`, `workers`, and `workers_resting`: how many have stopped pulling for the pause), `smtp_breaker`, `rate_limiter`"),
    (status = 401, description = "No or wrong token", body = ErrorBody),
))]
pub async fn status_view(State(state): State<AppState>) -> Json<serde_json::Value> {
    let breaker = state.controls.smtp_breaker.as_ref().map(|b| {
        let name = match b.state() {
            actors::breaker::BreakerState::Closed => "closed",
            actors::breaker::BreakerState::Open => "open",
            actors::breaker::BreakerState::HalfOpen => "half_open",
        };
        serde_json::json!({
            "state": name,
            "retry_in_ms": b.blocked_for().map(|d| d.as_millis() as u64),
        })
    });
    Json(serde_json::json!({
        "consumers": consumers_view(&state),
        "smtp_breaker": breaker,
        "rate_limiter": state.limiter.as_ref().map(|l| l.health()),
    }))
}

async fn set_paused(
    state: &AppState,
    operator: Option<axum::Extension<Operator>>,
    name: &str,
    paused: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some((_, pause, _)) = state.controls.consumers.iter().find(|(n, ..)| *n == name) else {
        let known: Vec<&str> = state.controls.consumers.iter().map(|(n, ..)| *n).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_consumer",
            format!("no consumer named {name:?}; this daemon has {known:?}"),
        ));
    };
    pause.set(paused);
    let operator = operator.map_or_else(|| "api-token".to_string(), |o| o.0.0.clone());
    let action = if paused { "pause" } else { "resume" };
    tracing::info!(target: "audit", operator = %operator, action, consumer = name, "admin action");
    Ok(Json(
        serde_json::json!({"consumer": name, "paused": paused}),
    ))
}

/// Stops a consumer's workers from pulling (in this daemon). It takes effect as their open
/// pulls end (within a second); messages already in hand are finished.
#[utoipa::path(post, path = "/admin/consumers/{name}/pause", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path, description = "`primecheck` or `email`")),
    responses(
        (status = 200, description = "Paused"),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 404, description = "No such consumer", body = ErrorBody),
))]
pub async fn pause(
    State(state): State<AppState>,
    operator: Option<axum::Extension<Operator>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_paused(&state, operator, &name, true).await
}

/// Lets a paused consumer's workers pull again.
#[utoipa::path(post, path = "/admin/consumers/{name}/resume", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path, description = "`primecheck` or `email`")),
    responses(
        (status = 200, description = "Resumed"),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 404, description = "No such consumer", body = ErrorBody),
))]
pub async fn resume(
    State(state): State<AppState>,
    operator: Option<axum::Extension<Operator>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_paused(&state, operator, &name, false).await
}
