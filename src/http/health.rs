//! `GET /ready` and `GET /health` (the response format of seed `001`: overall `ok` or
//! `degraded`, a timestamp, the version, and per check `ok`/`error` with its response time).
//!
//! `/health` checks everything: the supervision tree, the database, NATS, Redis, the SMTP
//! server and the rate limiter; it is 503 when anything is not `ok`. `/ready` is what a load
//! balancer or a Kubernetes readiness probe asks: 200 only when the tree is up and the
//! dependencies a request needs (the store and the broker) answer; Redis and SMTP have
//! fallbacks (in-process limits, held mail), so they do not make the daemon unready.

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

/// How long one dependency check may take in `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// A dependency `/health` checks: a name and a quick probe (a query, a round trip).
#[derive(Clone)]
pub struct Dependency {
    name: &'static str,
    required: bool,
    check: Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
}

impl Dependency {
    /// A named probe of a dependency requests need (`/ready` fails without it).
    pub fn new(
        name: &'static str,
        check: impl Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            required: true,
            check: Arc::new(check),
        }
    }

    /// A named probe of a dependency the daemon can do without for a while (it shows in
    /// `/health`, not in `/ready`).
    pub fn optional(
        name: &'static str,
        check: impl Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            required: false,
            ..Self::new(name, check)
        }
    }

    async fn probe(&self, timeout: Duration) -> (&'static str, Value) {
        let t0 = Instant::now();
        let result = tokio::time::timeout(timeout, (self.check)()).await;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let value = match result {
            Ok(Ok(())) => json!({"status": "ok", "response_time_ms": ms}),
            Ok(Err(error)) => json!({"status": "error", "response_time_ms": ms, "error": error}),
            Err(_) => {
                json!({"status": "error", "response_time_ms": ms, "error": format!("no answer within {timeout:?}")})
            }
        };
        (self.name, value)
    }
}

fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// 200 when the tree is up and the store and broker answer; 503 while starting, stopping,
/// or cut off from them.
#[utoipa::path(get, path = "/ready", tag = "operations", responses(
    (status = 200, description = "Ready to serve"),
    (status = 503, description = "Starting, stopping, or the store or broker does not answer"),
))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    if !state.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": "starting or stopping"})),
        );
    }
    let checks = join_all(
        state
            .dependencies
            .iter()
            .filter(|d| d.required)
            .map(|d| d.probe(READY_TIMEOUT)),
    )
    .await;
    let failing: Map<String, Value> = checks
        .into_iter()
        .filter(|(_, v)| v["status"] != "ok")
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    if failing.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "not_ready", "reason": "a dependency does not answer", "checks": failing}),
            ),
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
                "status": if unhealthy.is_empty() { "ok" } else { "error" },
                "response_time_ms": ms,
                "unhealthy": unhealthy,
            })
        }
        Err(e) => json!({"status": "error", "response_time_ms": ms, "error": e}),
    }
}

/// Per-dependency status and response time; 503 when anything is not `ok`.
#[utoipa::path(get, path = "/health", tag = "operations", responses(
    (status = 200, description = "Every dependency is up"),
    (status = 503, description = "Something is down or degraded (e.g. the rate limiter runs on its in-process fallback), or the daemon is starting or stopping"),
))]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let (tree, deps) = tokio::join!(
        tree_check(&state),
        join_all(state.dependencies.iter().map(|d| d.probe(CHECK_TIMEOUT)))
    );
    let mut checks = Map::new();
    checks.insert("supervision_tree".into(), tree);
    for (name, value) in deps {
        checks.insert(name.into(), value);
    }
    if let Some(limiter) = &state.limiter {
        checks.insert("rate_limiter".into(), limiter.health());
    }
    let all_ok = checks.values().all(|c| c["status"] == "ok");
    let ready = state.is_ready();
    let (code, overall) = if all_ok && ready {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "degraded")
    };
    (
        code,
        Json(json!({
            "status": overall,
            "ready": ready,
            "timestamp": timestamp(),
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
