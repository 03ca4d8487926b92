//! `GET /ready` and `GET /health`.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;
use supervision::status;

use super::AppState;

/// 200 once the tree is up, 503 while starting or stopping.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready"})),
        )
    }
}

/// Per-dependency status and response time; 503 when anything is down.
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let t0 = Instant::now();
    let tree = match ractor::registry::where_is(&*state.root) {
        Some(root) => status(&root.into(), state.status_timeout)
            .await
            .map_err(|e| e.to_string()),
        None => Err(format!("root supervisor {:?} is not running", state.root)),
    };
    let elapsed_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let tree_check = match &tree {
        Ok(t) => {
            let unhealthy = t.unhealthy();
            json!({
                "status": if unhealthy.is_empty() { "up" } else { "down" },
                "response_time_ms": elapsed_ms,
                "unhealthy": unhealthy,
            })
        }
        Err(e) => json!({"status": "down", "response_time_ms": elapsed_ms, "error": e}),
    };
    let healthy = tree_check["status"] == "up" && state.is_ready();
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let overall = match (healthy, state.is_ready()) {
        (true, _) => "healthy",
        (false, false) => "not_ready",
        (false, true) => "degraded",
    };
    (
        code,
        Json(json!({
            "status": overall,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": state.started.elapsed().as_secs_f64(),
            "checks": { "supervision_tree": tree_check },
        })),
    )
}
