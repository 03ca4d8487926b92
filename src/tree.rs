//! The supervision tree that runs, declared in one place.
//!
//! ```text
//! primed (one_for_one, 10 restarts / 60 s, backoff 10 ms → 5 s)
//! ├── heartbeat           permanent  tree liveness → systemd watchdog, worker_health_checks, actor metrics
//! ├── metrics-collector   permanent  gauges: outbox backlog and lag, DLQ, queues, pools, Redis
//! ├── retention           permanent  deletes rows past their retention, in small batches
//! ├── rate-limit-monitor  permanent  Redis probes while the limiter is on its fallback; bucket sweeps
//! ├── outbox-relay        permanent  outbox rows → broker (JetStream, or the embedded queue)
//! ├── dlq                 permanent  dead letters → DEAD_LETTER_QUEUE stream; max-deliveries advisories
//! ├── retry-timer         permanent  automatic DLQ reprocess rules
//! ├── dlq-replayer        permanent  safe replay jobs: canary, ramp, rate cap, auto-abort
//! ├── primecheck-workers  supervisor (one_for_one): primecheck-worker-1..N
//! ├── email-workers       supervisor (one_for_one): email-worker-1..N
//! └── http                permanent  public API, DLQ API, /health /ready /metrics /admin/* /openapi.json
//! ```
//!
//! Children start top to bottom and stop bottom to top, so on shutdown HTTP intake stops
//! first, then the workers (which finish or release what they hold), then the DLQ and the
//! relay (which finishes its round), and the heartbeat last. The DLQ, the timer and the
//! workers run when the store and the broker are a pair: MySQL with NATS, or the embedded
//! file (SQLite) as both; the rate-limit monitor when rate limiting is on. Every child is
//! permanent (restarted whatever the exit), written out below.

use std::sync::Arc;
use std::time::Duration;

use actors::dlq::{Dlq, DlqArgs};
use actors::replay::{Replayer, ReplayerArgs};
use actors::retention::{Retention, RetentionArgs};
use actors::retry_timer::{RetryTimer, TimerArgs};
use actors::worker::{Worker, WorkerArgs};
use actors::{HealthSink, Heartbeat, HeartbeatArgs, OutboxRelay, RelayArgs};
use supervision::{Backoff, ChildSpec, Restart, Strategy, SupervisorSpec};

use crate::http::AppState;
use crate::http::server::{HttpArgs, HttpServer};
use crate::ratelimit::monitor::{MONITOR_INTERVAL, MonitorArgs, RateLimitMonitor};

/// Registered name of the root supervisor.
pub const ROOT: &str = "primed";
/// Registered name of the heartbeat actor.
pub const HEARTBEAT: &str = "heartbeat";
/// Registered name of the outbox relay.
pub const OUTBOX_RELAY: &str = "outbox-relay";
/// Registered name of the HTTP server actor.
pub const HTTP: &str = "http";
/// Registered name of the DLQ actor.
pub const DLQ: &str = "dlq";
/// Registered name of the retry timer.
pub const RETRY_TIMER: &str = "retry-timer";
/// Registered name of the replay job runner.
pub const REPLAYER: &str = "dlq-replayer";
/// Registered name of the rate-limit monitor.
pub const RATE_LIMIT_MONITOR: &str = "rate-limit-monitor";
/// Registered name of the retention actor.
pub const RETENTION: &str = "retention";
/// Registered name of the metrics collector.
pub const METRICS_COLLECTOR: &str = "metrics-collector";
/// The prime-check workers' supervisor.
pub const PRIMECHECK_WORKERS: &str = "primecheck-workers";
/// The email workers' supervisor.
pub const EMAIL_WORKERS: &str = "email-workers";

/// Restart backoff of every supervisor in the tree: a first failure restarts at once, a
/// repeated one waits 10 ms doubling to 5 s, ±20 %; forgotten after 30 s up.
const RESTART_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(10),
    max: Duration::from_secs(5),
    multiplier: 2.0,
    jitter: 0.2,
    reset_after: Duration::from_secs(30),
};

/// The consumers, the DLQ and the retry timer.
#[derive(Clone)]
pub struct PipelineDeps {
    /// A prime-check worker's configuration (its name is set per worker).
    pub primecheck: WorkerArgs,
    /// How many.
    pub primecheck_workers: u32,
    /// An email worker's configuration.
    pub email: WorkerArgs,
    /// How many.
    pub email_workers: u32,
    /// The DLQ actor.
    pub dlq: DlqArgs,
    /// The retry timer.
    pub timer: TimerArgs,
    /// Where each worker's progress is kept (for `worker_health_checks`).
    pub liveness: actors::Liveness,
    /// The SMTP circuit breaker of the email workers.
    pub smtp_breaker: Arc<actors::breaker::CircuitBreaker>,
    /// The replay job runner, when the store keeps replay jobs.
    pub replayer: Option<ReplayerArgs>,
}

fn pool(
    name: &str,
    worker: &str,
    n: u32,
    args: &WorkerArgs,
    liveness: &actors::Liveness,
) -> ChildSpec {
    let children = (1..=n).map(|i| {
        let name = format!("{worker}-{i}");
        let args = WorkerArgs {
            name: name.clone(),
            stats: liveness.register(&name),
            ..args.clone()
        };
        // A pull ends within `expires`; held messages are released on shutdown.
        ChildSpec::actor(name, Worker, args)
            .restart(Restart::Permanent)
            .shutdown(Duration::from_secs(15))
    });
    ChildSpec::supervisor(
        SupervisorSpec::new(name, Strategy::OneForOne)
            .intensity(20, Duration::from_secs(60))
            .backoff(RESTART_BACKOFF)
            .children(children),
    )
    .restart(Restart::Permanent)
}

/// What the tree's actors need from the daemon.
#[derive(Clone)]
pub struct TreeDeps {
    /// The bound HTTP socket.
    pub listener: Arc<std::net::TcpListener>,
    /// HTTP handler state.
    pub app: AppState,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Where heartbeats go.
    pub health_sinks: Vec<Arc<dyn HealthSink>>,
    /// The outbox relay's configuration, when a store and a broker are configured.
    pub relay: Option<RelayArgs>,
    /// The consumers, DLQ and retry timer (MySQL with NATS, or the embedded mode).
    pub pipeline: Option<PipelineDeps>,
    /// The gauges' sources, when there is a store to read.
    pub collector: Option<crate::collector::CollectorArgs>,
    /// The retention actor's store and settings, when there is a store.
    pub retention: Option<RetentionArgs>,
}

/// The root of the tree.
pub fn root(deps: &TreeDeps) -> SupervisorSpec {
    let relay = deps.relay.clone().map(|args| {
        // Its round (claim, publish, mark) finishes within the publish timeout.
        ChildSpec::actor(OUTBOX_RELAY, OutboxRelay, args)
            .restart(Restart::Permanent)
            .shutdown(Duration::from_secs(15))
    });
    SupervisorSpec::new(ROOT, Strategy::OneForOne)
        .intensity(10, Duration::from_secs(60))
        .backoff(RESTART_BACKOFF)
        .child(
            ChildSpec::actor(
                HEARTBEAT,
                Heartbeat,
                HeartbeatArgs {
                    root: ROOT.into(),
                    interval: deps.heartbeat_interval,
                    status_timeout: Duration::from_millis(500),
                    sinks: deps.health_sinks.clone(),
                },
            )
            .restart(Restart::Permanent)
            .shutdown(Duration::from_secs(2)),
        )
        .children(deps.collector.clone().map(|args| {
            ChildSpec::actor(METRICS_COLLECTOR, crate::collector::MetricsCollector, args)
                .restart(Restart::Permanent)
                .shutdown(Duration::from_secs(2))
        }))
        .children(deps.retention.clone().map(|args| {
            // One statement at a time: a stop waits for at most one batch.
            ChildSpec::actor(RETENTION, Retention, args)
                .restart(Restart::Permanent)
                .shutdown(Duration::from_secs(5))
        }))
        .children(deps.app.limiter.clone().map(|limiter| {
            ChildSpec::actor(
                RATE_LIMIT_MONITOR,
                RateLimitMonitor,
                MonitorArgs {
                    limiter,
                    interval: MONITOR_INTERVAL,
                },
            )
            .restart(Restart::Permanent)
            .shutdown(Duration::from_secs(2))
        }))
        .children(relay)
        .children(deps.pipeline.iter().flat_map(|p| {
            [
                ChildSpec::actor(DLQ, Dlq, p.dlq.clone())
                    .restart(Restart::Permanent)
                    .shutdown(Duration::from_secs(10)),
                ChildSpec::actor(RETRY_TIMER, RetryTimer, p.timer.clone())
                    .restart(Restart::Permanent)
                    .shutdown(Duration::from_secs(10)),
            ]
            .into_iter()
            .chain(p.replayer.clone().map(|args| {
                ChildSpec::actor(REPLAYER, Replayer, args)
                    .restart(Restart::Permanent)
                    .shutdown(Duration::from_secs(10))
            }))
            .chain([
                pool(
                    PRIMECHECK_WORKERS,
                    "primecheck-worker",
                    p.primecheck_workers,
                    &p.primecheck,
                    &p.liveness,
                ),
                pool(
                    EMAIL_WORKERS,
                    "email-worker",
                    p.email_workers,
                    &p.email,
                    &p.liveness,
                ),
            ])
        }))
        .child(
            ChildSpec::actor(
                HTTP,
                HttpServer,
                HttpArgs {
                    listener: deps.listener.clone(),
                    app: deps.app.clone(),
                    drain_timeout: Duration::from_secs(10),
                },
            )
            .restart(Restart::Permanent)
            .shutdown(Duration::from_secs(12)),
        )
}
