//! The HTTP surface: health and readiness, the admin API, and (later) the public API.
//!
//! [`router`] builds the whole app from an [`AppState`], so handler tests call it with
//! `oneshot` without a socket; [`server::HttpServer`] is the supervised actor that serves it.

pub mod admin;
pub mod error;
pub mod health;
pub mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};

use crate::config::Secret;

/// What handlers share: readiness, the admin tokens and how to find the tree.
#[derive(Clone)]
pub struct AppState {
    ready: Arc<AtomicBool>,
    admin_keys: Arc<Vec<Secret>>,
    /// Registered name of the root supervisor.
    pub root: Arc<str>,
    /// When the process started.
    pub started: Instant,
    /// How long a status query may take.
    pub status_timeout: Duration,
    /// Whether `POST /admin/actors/{name}/kill` is enabled.
    pub fault_injection: bool,
}

impl AppState {
    /// A state that is not ready yet.
    pub fn new(root: &str, admin_keys: Vec<Secret>) -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            admin_keys: Arc::new(admin_keys),
            root: root.into(),
            started: Instant::now(),
            status_timeout: Duration::from_secs(2),
            fault_injection: false,
        }
    }

    /// Enables or disables the fault-injection endpoint.
    pub fn with_fault_injection(mut self, enabled: bool) -> Self {
        self.fault_injection = enabled;
        self
    }

    /// Marks the daemon ready (tree up) or not (starting, stopping).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// The whole HTTP app.
pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/admin/actors", get(admin::actors))
        .route("/admin/actors/{name}/restart", post(admin::restart))
        .route("/admin/actors/{name}/kill", post(admin::kill))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_token,
        ));
    Router::new()
        .route("/ready", get(health::ready))
        .route("/health", get(health::health))
        .merge(admin)
        .fallback(error::not_found)
        .with_state(state)
}
