//! The HTTP surface: the public API, health and readiness, the admin API, and the OpenAPI
//! document generated from the same route registrations (so the two cannot drift).
//!
//! [`router`] builds the whole app from an [`AppState`], so handler tests call it with
//! `oneshot` without a socket; [`server::HttpServer`] is the supervised actor that serves it.

pub mod admin;
pub mod api;
pub mod auth_guard;
pub mod dlq;
pub mod error;
pub mod extract;
pub mod health;
pub mod ratelimit;
pub mod replay;
pub mod server;
pub mod session;
pub mod ui;
pub mod validate;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actors::{DlqStore, RelayWake, RequestStore};
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Secret;
use crate::ratelimit::RateLimiter;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What handlers share: readiness, the admin tokens, the stores, and how to find the tree.
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
    /// Where requests are stored.
    pub requests: Option<Arc<dyn RequestStore>>,
    /// Wakes the outbox relay after a request is stored.
    pub relay_wake: Option<RelayWake>,
    /// Most digits a number may have.
    pub max_digits: usize,
    /// Dependencies `/health` checks (shared: the state is cloned for every request).
    pub dependencies: Arc<Vec<health::Dependency>>,
    /// The dead-letter queue.
    pub dlq: Option<Arc<dyn DlqStore>>,
    /// Safe replay jobs, with the DLQ.
    pub replays: Option<Arc<dyn actors::ReplayStore>>,
    /// The rate limiter of the public API; none: unlimited.
    pub limiter: Option<Arc<RateLimiter>>,
    /// Operators logged in to the web pages.
    pub sessions: session::Sessions,
    /// What the admin API can pause and show.
    pub controls: Controls,
    /// `worker_health_checks`, for the admin page.
    pub health_store: Option<Arc<dyn actors::HealthStore>>,
    /// Timeouts and the connection cap of the server.
    pub limits: crate::config::HttpLimits,
    /// The HS256 secret of user tokens (who owns which request); none: no user tokens.
    pub jwt_secret: Option<Secret>,
    /// Failed authentications per client address.
    pub auth_failures: Arc<auth_guard::AuthFailures>,
}

/// Switches and states the admin API exposes.
#[derive(Clone, Default)]
pub struct Controls {
    /// Each consumer's pause and its number of workers, by name (`primecheck`, `email`).
    pub consumers: Vec<(&'static str, Arc<actors::worker::Pause>, u32)>,
    /// The email workers' SMTP circuit breaker.
    pub smtp_breaker: Option<Arc<actors::breaker::CircuitBreaker>>,
}

impl AppState {
    /// A state that is not ready yet, with no store.
    pub fn new(root: &str, admin_keys: Vec<Secret>) -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            admin_keys: Arc::new(admin_keys),
            root: root.into(),
            started: Instant::now(),
            status_timeout: Duration::from_secs(2),
            fault_injection: false,
            requests: None,
            relay_wake: None,
            max_digits: 1000,
            dependencies: Arc::new(Vec::new()),
            dlq: None,
            replays: None,
            limiter: None,
            sessions: session::Sessions::default(),
            controls: Controls::default(),
            health_store: None,
            limits: crate::config::HttpLimits::default(),
            jwt_secret: None,
            auth_failures: Arc::new(auth_guard::AuthFailures::new(10)),
        }
    }

    /// Refuses (429) an address's credentials after `per_minute` failed authentications a
    /// minute.
    pub fn with_auth_failure_limit(mut self, per_minute: u32) -> Self {
        self.auth_failures = Arc::new(auth_guard::AuthFailures::new(per_minute));
        self
    }

    /// Accepts user tokens signed with `secret`.
    pub fn with_jwt_secret(mut self, secret: Option<Secret>) -> Self {
        self.jwt_secret = secret;
        self
    }

    /// Serves with these timeouts and connection cap.
    pub fn with_limits(mut self, limits: crate::config::HttpLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Exposes the consumers' pause switches and the breaker to the admin API.
    pub fn with_controls(mut self, controls: Controls) -> Self {
        self.controls = controls;
        self
    }

    /// Reads `worker_health_checks` from `store` for the admin API.
    pub fn with_health_store(mut self, store: Arc<dyn actors::HealthStore>) -> Self {
        self.health_store = Some(store);
        self
    }

    /// Limits the public API with `limiter`.
    pub fn with_limiter(mut self, limiter: Arc<RateLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// The admin tokens.
    pub fn admin_keys(&self) -> &[Secret] {
        &self.admin_keys
    }

    /// Enables or disables the fault-injection endpoint.
    pub fn with_fault_injection(mut self, enabled: bool) -> Self {
        self.fault_injection = enabled;
        self
    }

    /// Serves the public API from `store`, waking `wake` after each stored request.
    pub fn with_requests(
        mut self,
        store: Arc<dyn RequestStore>,
        wake: Option<RelayWake>,
        max_digits: usize,
    ) -> Self {
        self.requests = Some(store);
        self.relay_wake = wake;
        self.max_digits = max_digits;
        self
    }

    /// Serves the replay jobs of the DLQ API from `store`.
    pub fn with_replays(mut self, store: Arc<dyn actors::ReplayStore>) -> Self {
        self.replays = Some(store);
        self
    }

    /// Serves the DLQ API from `store`.
    pub fn with_dlq(mut self, store: Arc<dyn DlqStore>) -> Self {
        self.dlq = Some(store);
        self
    }

    /// Adds a dependency for `/health` to check.
    pub fn with_dependency(mut self, dependency: health::Dependency) -> Self {
        Arc::make_mut(&mut self.dependencies).push(dependency);
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

#[derive(OpenApi)]
#[openapi(
    info(
        title = "primed",
        description = "Prime-number checking with a reliable, supervised pipeline. Errors are JSON `{\"error\": code, \"message\": text}`. Limits: a request body is at most 1 MiB (413, refused before it is read when declared larger); headers must arrive within PRIMED_HTTP_HEADER_TIMEOUT_SECONDS (10 s) and a body within PRIMED_HTTP_BODY_TIMEOUT_SECONDS (30 s, else 408 `body_timeout`); a connection idle for PRIMED_HTTP_IDLE_TIMEOUT_SECONDS (60 s) is closed; over PRIMED_HTTP_MAX_CONNECTIONS (1024) connections are answered 503 `too_many_connections`; after PRIMED_AUTH_FAILURES_PER_MINUTE (10) failed authentications a minute, an address's credentials are answered 429 `too_many_failed_authentications`. Visibility: the list shows a user token's own requests, everything to an admin token, nothing without a token; one request read by id masks its address unless the caller owns it or is an admin."
    ),
    tags(
        (name = "prime-check", description = "Submit numbers and read results"),
        (name = "operations", description = "Health and readiness"),
        (name = "admin", description = "Supervision tree (bearer token)"),
        (name = "dlq", description = "Dead-letter queue: browse, count, group by error fingerprint, reprocess, edit and replay, discard, audit trail (bearer token)"),
    ),
    modifiers(&AdminToken)
)]
struct ApiDoc;

struct AdminToken;

impl utoipa::Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

fn documented(state: &AppState) -> OpenApiRouter<AppState> {
    let admin = OpenApiRouter::new()
        .routes(routes!(admin::actors))
        .routes(routes!(admin::restart))
        .routes(routes!(admin::kill))
        .routes(routes!(admin::workers))
        .routes(routes!(admin::status_view))
        .routes(routes!(admin::pause))
        .routes(routes!(admin::resume))
        .routes(routes!(dlq::list))
        .routes(routes!(dlq::get_one))
        .routes(routes!(dlq::reprocess))
        .routes(routes!(dlq::discard))
        .routes(routes!(dlq::stats))
        .routes(routes!(dlq::groups))
        .routes(routes!(dlq::discard_group))
        .routes(routes!(dlq::audit))
        .routes(routes!(dlq::edit))
        .routes(routes!(replay::start, replay::list))
        .routes(routes!(replay::get_one))
        .routes(routes!(replay::pause))
        .routes(routes!(replay::resume))
        .routes(routes!(replay::cancel))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_token,
        ));
    let public = OpenApiRouter::new()
        .routes(routes!(api::create))
        .routes(routes!(api::get_one))
        .routes(routes!(api::list))
        .route_layer(axum::middleware::from_fn_with_state(
            state.limiter.clone(),
            ratelimit::limit,
        ));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(public)
        .routes(routes!(health::ready))
        .routes(routes!(health::health))
        .routes(routes!(health::metrics))
        .routes(routes!(session::login))
        .routes(routes!(session::logout))
        .routes(routes!(session::current))
        .merge(admin)
}

/// The OpenAPI document of [`router`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented(&AppState::new("openapi", Vec::new())).into_openapi()
}

/// The whole HTTP app.
pub fn router(state: AppState) -> Router {
    let (router, doc) = documented(&state).split_for_parts();
    let doc = Arc::new(doc);
    router
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .route("/", get(ui::index))
        .route("/login", get(ui::login_page))
        .route("/dlq/dashboard", get(ui::dlq_dashboard))
        .route("/admin", get(ui::admin_page))
        .route("/assets/admin.js", get(ui::admin_js))
        .route("/assets/common.js", get(ui::common_js))
        .route("/assets/login.js", get(ui::login_js))
        .route("/assets/dlq.js", get(ui::dlq_js))
        .route("/assets/check.js", get(ui::check_js))
        .route("/assets/style.css", get(ui::style_css))
        .fallback(error::not_found)
        // Small states: these two run on every request.
        .layer(axum::middleware::from_fn_with_state(
            state.limits.body_timeout,
            server::bounded_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            auth_guard::Guard::of(&state),
            auth_guard::guard,
        ))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn(crate::metrics::http_layer))
        .layer(axum::middleware::from_fn(ui::security_headers))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
