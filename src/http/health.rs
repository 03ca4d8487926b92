//! `GET /ready` and `GET /health`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use futures::future::{BoxFuture, join_all};
use serde_json::{Map, Value, json};
use supervision::status;

use super::AppState;

/// How long one dependency check may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A dependency `/health` checks: a name and a quick probe (a query, a round trip).
#[derive(Clone)]
pub struct Dependency {
    name: &'static str,
    check: Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
}

impl Dependency {
    /// A named probe.
    pub fn new(
        name: &'static str,
        check: impl Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            check: Arc::new(check),
        }
    }

    async fn probe(&self) -> (&'static str, Value) {
        let t0 = Instant::now();
        let result = tokio::time::timeout(CHECK_TIMEOUT, (self.check)()).await;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let value = match result {
            Ok(Ok(())) => json!({"status": "up", "response_time_ms": ms}),
            Ok(Err(error)) => json!({"status": "down", "response_time_ms": ms, "error": error}),
            Err(_) => {
                json!({"status": "down", "response_time_ms": ms, "error": format!("no answer within {CHECK_TIMEOUT:?}")})
            }
        };
        (self.name, value)
    }
}

/// 200 once the tree is up, 503 while starting or stopping.
#[utoipa::path(get, path = "/ready", tag = "operations", responses(
    (status = 200, description = "Ready to serve"),
    (status = 503, description = "Starting or stopping"),
))]
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

async fn tree_check(state: &AppState) -> Value {
    let t0 = Instant::now();
    let tree = match ractor::registry::where_is(&*state.root) {
        Some(root) => status(&root.into(), state.status_timeout)
            .await
            .map_err(|e| e.to_string()),
        None => Err(format!("root supervisor {:?} is not running", state.root)),
    };
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    match tree {
        Ok(t) => {
            let unhealthy = t.unhealthy();
            json!({
                "status": if unhealthy.is_empty() { "up" } else { "down" },
                "response_time_ms": ms,
                "unhealthy": unhealthy,
            })
        }
        Err(e) => json!({"status": "down", "response_time_ms": ms, "error": e}),
    }
}

/// Per-dependency status and response time; 503 when anything is down.
#[utoipa::path(get, path = "/health", tag = "operations", responses(
    (status = 200, description = "Every dependency is up"),
    (status = 503, description = "Something is down or degraded (e.g. the rate limiter runs on its in-process fallback), or the daemon is starting or stopping"),
))]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let (tree, deps) = tokio::join!(
        tree_check(&state),
        join_all(state.dependencies.iter().map(Dependency::probe))
    );
    let mut checks = Map::new();
    checks.insert("supervision_tree".into(), tree);
    for (name, value) in deps {
        checks.insert(name.into(), value);
    }
    if let Some(limiter) = &state.limiter {
        checks.insert("rate_limiter".into(), limiter.health());
    }
    let all_up = checks.values().all(|c| c["status"] == "up");
    let ready = state.is_ready();
    let (code, overall) = match (all_up, ready) {
        (true, true) => (StatusCode::OK, "healthy"),
        (_, false) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
        (false, true) => (StatusCode::SERVICE_UNAVAILABLE, "degraded"),
    };
    (
        code,
        Json(json!({
            "status": overall,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": state.started.elapsed().as_secs_f64(),
            "checks": checks,
        })),
    )
}

/// The Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text exposition format", content_type = "text/plain"),
))]
pub async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
}
