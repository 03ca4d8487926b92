//! Prometheus metrics, served at `GET /metrics`.
//!
//! Every instrument is made through the OpenTelemetry metrics API
//! ([`actors::instruments`]) and read into one process-wide Prometheus registry
//! ([`actors::metrics::registry`], where the pipeline's own instruments are too, with the
//! `process_*` collector) by opentelemetry-prometheus. The instruments are named exactly as
//! the seeds name them (§4.4.1, §5.2): the exporter adds no suffix, unit, scope label or
//! `target_info`.

use std::sync::LazyLock;

use actors::instruments::{
    CounterVec, DEFAULT_BUCKETS, Gauge, GaugeVec, Histogram, HistogramVec, UpDown,
};
use prometheus::{Encoder, TextEncoder};

/// A gauge family of whole numbers.
type IntGaugeVec = GaugeVec<i64>;
/// A gauge of a whole number.
type IntGauge = Gauge<i64>;
/// A counter family.
type IntCounterVec = CounterVec;

/// The daemon's instruments.
pub struct Metrics {
    /// `http_requests_total{method,endpoint,status}`: endpoint is the route template (the
    /// label seed 001 names).
    pub http_requests: IntCounterVec,
    /// `http_request_duration_seconds{method,endpoint}`.
    pub http_request_duration: HistogramVec,
    /// `http_connections_open`: client connections the server holds.
    pub http_connections_open: UpDown,
    /// `http_connections_closed_total{reason}`: connections the server ended itself:
    /// `refused` (over `PRIMED_HTTP_MAX_CONNECTIONS`), `header_timeout`, `idle_timeout`.
    pub http_connections_closed: IntCounterVec,
    /// `auth_failures_total{result}`: requests whose credentials were `refused` (401), or
    /// `limited` (429: their address failed too often).
    pub auth_failures: IntCounterVec,
    /// `actor_up{actor}`: 1 while the actor runs.
    pub actor_up: IntGaugeVec,
    /// `actor_restarts_total{actor}`.
    pub actor_restarts: IntCounterVec,
    /// `worker_heartbeat_age_seconds{worker}`: since the pulling worker last made progress.
    pub worker_heartbeat_age: GaugeVec<f64>,
    /// `outbox_pending`: outbox events not yet published.
    pub outbox_pending: IntGauge,
    /// `outbox_relay_lag_seconds`: age of the oldest due, unpublished event.
    pub outbox_relay_lag: Gauge<f64>,
    /// `dlq_message_count{status}`: dead letters by status.
    pub dlq_message_count: IntGaugeVec,
    /// `message_queue_length{queue_name}`: messages waiting for a consumer.
    pub message_queue_length: IntGaugeVec,
    /// `nats_consumer_pending_messages{stream,consumer}`.
    pub nats_consumer_pending: IntGaugeVec,
    /// `database_connections{state}`: `active`, `idle`.
    pub database_connections: IntGaugeVec,
    /// `redis_connected_clients`.
    pub redis_connected_clients: IntGauge,
    /// `database_query_duration_seconds{query_type}`: store calls by port method.
    pub database_query_duration: HistogramVec,
    /// `accept_transaction_requests`: requests stored per transaction of accepted requests
    /// (MySQL's group commit; 1 when the daemon is idle).
    pub accept_transaction_requests: Histogram,
    /// `metrics_collection_errors_total{source}`: gauges that could not be read.
    pub collection_errors: IntCounterVec,
    /// `build_info{version}`: always 1.
    pub build_info: GaugeVec<f64>,
    /// `rate_limit_hits_total{endpoint,result,policy}`: decisions; result is `allowed`,
    /// `limited`, `bypass` (policy = the bypass kind), `unavailable` (fail-closed while Redis
    /// is down) or `rejected` (invalid credentials).
    pub rate_limit_hits: IntCounterVec,
    /// `rate_limit_check_duration_seconds{endpoint}`: time to decide.
    pub rate_limit_check_duration: HistogramVec,
    /// `rate_limit_fallback_active`: 1 while Redis is configured but unreachable and the
    /// in-process fallback decides.
    pub rate_limit_fallback_active: IntGauge,
    /// `rate_limit_backend_switches_total{to}`: switches to `fallback` and back to `redis`.
    pub rate_limit_backend_switches: IntCounterVec,
}

fn build() -> Metrics {
    let http_connections_closed = IntCounterVec::new(
        "http_connections_closed_total",
        "HTTP connections the server ended itself, by reason (refused over the cap, header_timeout, idle_timeout)",
        &["reason"],
    );
    for reason in ["refused", "header_timeout", "idle_timeout"] {
        http_connections_closed
            .with_label_values(&[reason])
            .inc_by(0);
    }
    let auth_failures = IntCounterVec::new(
        "auth_failures_total",
        "Requests with credentials that were refused (401) or, after too many failures from their address, limited (429)",
        &["result"],
    );
    for result in ["refused", "limited"] {
        auth_failures.with_label_values(&[result]).inc_by(0);
    }
    let collection_errors = IntCounterVec::new(
        "metrics_collection_errors_total",
        "Gauges that could not be read, by source",
        &["source"],
    );
    // Series that alerts and dashboards query exist from the start, at 0, rather than
    // appearing with their first event.
    for source in ["database", "nats", "redis", "timeout"] {
        collection_errors.with_label_values(&[source]).inc_by(0);
    }
    let build_info =
        GaugeVec::new_f64("build_info", "The daemon's version; always 1", &["version"]);
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1.0);
    let rate_limit_backend_switches = IntCounterVec::new(
        "rate_limit_backend_switches_total",
        "Switches of the rate limiter between Redis and the in-process fallback",
        &["to"],
    );
    for to in ["fallback", "redis"] {
        rate_limit_backend_switches
            .with_label_values(&[to])
            .inc_by(0);
    }
    match crate::process_metrics::ProcessCollector::new() {
        Ok(process) => {
            if let Err(e) = actors::metrics::registry().register(Box::new(process)) {
                tracing::warn!(error = %e, "cannot serve the process_* metrics");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot serve the process_* metrics"),
    }
    Metrics {
        http_requests: IntCounterVec::new(
            "http_requests_total",
            "HTTP requests by method, endpoint (route template) and status",
            &["method", "endpoint", "status"],
        ),
        http_request_duration: HistogramVec::new(
            "http_request_duration_seconds",
            "HTTP request duration",
            &["method", "endpoint"],
            &[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        ),
        http_connections_open: UpDown::new(
            "http_connections_open",
            "HTTP client connections the server holds",
        ),
        http_connections_closed,
        auth_failures,
        actor_up: IntGaugeVec::new("actor_up", "1 while the supervised actor runs", &["actor"]),
        actor_restarts: IntCounterVec::new(
            "actor_restarts_total",
            "Restarts of supervised actors",
            &["actor"],
        ),
        worker_heartbeat_age: GaugeVec::new_f64(
            "worker_heartbeat_age_seconds",
            "Seconds since the pulling worker last made progress",
            &["worker"],
        ),
        outbox_pending: IntGauge::new("outbox_pending", "Outbox events not yet published"),
        outbox_relay_lag: Gauge::new_f64(
            "outbox_relay_lag_seconds",
            "Age of the oldest due outbox event not yet published",
        ),
        dlq_message_count: IntGaugeVec::new(
            "dlq_message_count",
            "Dead letters by status",
            &["status"],
        ),
        message_queue_length: IntGaugeVec::new(
            "message_queue_length",
            "Current message queue length",
            &["queue_name"],
        ),
        nats_consumer_pending: IntGaugeVec::new(
            "nats_consumer_pending_messages",
            "NATS consumer pending messages",
            &["stream", "consumer"],
        ),
        database_connections: IntGaugeVec::new(
            "database_connections",
            "Current database connections",
            &["state"],
        ),
        redis_connected_clients: IntGauge::new(
            "redis_connected_clients",
            "Redis connected clients",
        ),
        database_query_duration: HistogramVec::new(
            "database_query_duration_seconds",
            "Database query duration",
            &["query_type"],
            &DEFAULT_BUCKETS,
        ),
        accept_transaction_requests: Histogram::new(
            "accept_transaction_requests",
            "Accepted requests stored per database transaction",
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0],
        ),
        collection_errors,
        build_info,
        rate_limit_hits: IntCounterVec::new(
            "rate_limit_hits_total",
            "Rate limit decisions by endpoint, result and policy",
            &["endpoint", "result", "policy"],
        ),
        rate_limit_check_duration: HistogramVec::new(
            "rate_limit_check_duration_seconds",
            "Time to take a rate limit decision",
            &["endpoint"],
            &[
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            ],
        ),
        rate_limit_fallback_active: IntGauge::new(
            "rate_limit_fallback_active",
            "1 while Redis does not answer and the in-process fallback limits requests",
        ),
        rate_limit_backend_switches,
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(build);

/// The process-wide instruments.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The registry in the Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    // Encoding into a Vec fails only on invalid metric families, which `build` prevents.
    // Make sure the daemon's and the pipeline's instruments exist before the first scrape.
    let _ = (metrics(), actors::metrics::pipeline());
    let _ = TextEncoder::new().encode(&actors::metrics::registry().gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// The `method` label of a request: one of the standard methods, or `other`. A client chooses
/// the method's text, so using it verbatim would let anyone add label values (series) without
/// bound.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Counts and times every HTTP request by its route template, inside a span that continues
/// the caller's W3C trace (`traceparent`) or starts one (a `layer` on the router).
pub async fn http_layer(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let t0 = std::time::Instant::now();
    let method = method_label(request.method()).to_string();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let span = tracing::info_span!(
        "http",
        otel.name = %format!("{method} {route}"),
        method = %method,
        route = %route,
        request_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let parent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    actors::trace::attach(&span, parent);
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let user_agent = request
        .headers()
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(200).collect::<String>());
    let response = next.run(request).instrument(span.clone()).await;
    // The access log (seed 002 §5.2.1), without bodies: probes and scrapes at debug.
    let status = response.status().as_u16();
    let duration_ms = t0.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if matches!(route.as_str(), "/metrics" | "/health" | "/ready") {
            tracing::debug!(status, duration_ms, ip = peer.as_deref(), "http request");
        } else {
            tracing::info!(
                status,
                duration_ms,
                ip = peer.as_deref(),
                user_agent = user_agent.as_deref(),
                "http request"
            );
        }
    });
    let m = metrics();
    m.http_requests
        .with_label_values(&[method.as_str(), route.as_str(), response.status().as_str()])
        .inc();
    m.http_request_duration
        .with_label_values(&[method.as_str(), route.as_str()])
        .observe(t0.elapsed().as_secs_f64());
    response
}

/// The heartbeat sink that turns the tree into `actor_up` and `actor_restarts_total`, and
/// the workers' progress into `worker_heartbeat_age_seconds`.
pub struct ActorMetricsSink {
    seen: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    liveness: actors::Liveness,
}

impl ActorMetricsSink {
    /// A sink reading the workers' progress from `liveness`.
    pub fn new(liveness: actors::Liveness) -> Self {
        Self {
            seen: Default::default(),
            liveness,
        }
    }

    fn walk(
        &self,
        node: &supervision::ChildStatus,
        seen: &mut std::collections::HashMap<String, u32>,
    ) {
        let m = metrics();
        let up = i64::from(node.state == supervision::ChildState::Running);
        m.actor_up.with_label_values(&[node.name.as_str()]).set(up);
        // Counts restart from zero when a supervisor restarts its children: then the new
        // count is all new restarts.
        let before = seen
            .insert(node.name.clone(), node.restart_count)
            .unwrap_or(0);
        let new = if node.restart_count >= before {
            node.restart_count - before
        } else {
            node.restart_count
        };
        let restarts = m.actor_restarts.with_label_values(&[node.name.as_str()]);
        restarts.inc_by(u64::from(new));
        for child in node.children.iter().flatten() {
            self.walk(child, seen);
        }
    }
}

impl actors::HealthSink for ActorMetricsSink {
    fn name(&self) -> &str {
        "metrics"
    }

    fn record<'a>(
        &'a self,
        report: &'a actors::HealthReport,
    ) -> futures::future::BoxFuture<'a, Result<(), actors::HealthSinkError>> {
        Box::pin(async move {
            if let Some(tree) = &report.tree
                && let Ok(mut seen) = self.seen.lock()
            {
                self.walk(tree, &mut seen);
            }
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            for name in self.liveness.names() {
                if let Some(stats) = self.liveness.get(&name) {
                    let age = now_ms.saturating_sub(stats.snapshot().last_active_ms);
                    metrics()
                        .worker_heartbeat_age
                        .with_label_values(&[name.as_str()])
                        .set(age as f64 / 1000.0);
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_seed_names() {
        let m = metrics();
        m.rate_limit_hits
            .with_label_values(&["prime-check", "allowed", "per-ip"])
            .inc();
        m.rate_limit_check_duration
            .with_label_values(&["prime-check"])
            .observe(0.0001);
        let text = render();
        assert!(text.contains(
            r#"rate_limit_hits_total{endpoint="prime-check",policy="per-ip",result="allowed"}"#
        ));
        assert!(
            text.contains(r#"rate_limit_check_duration_seconds_bucket{endpoint="prime-check""#)
        );
        assert!(text.contains("rate_limit_fallback_active 0"));
    }
}
