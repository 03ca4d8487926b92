//! Start-up and the shutdown procedure of `primed run`.
//!
//! Start-up: data directory → admin token → bind the HTTP socket → start the tree → ready
//! (READY=1). Shutdown on SIGTERM/SIGINT, with one deadline for the whole procedure:
//! not ready (`/ready` answers 503, STOPPING=1) → stop the tree in reverse start order
//! (HTTP intake first; each child within its own shutdown timeout, killed past it) → exit 0.
//! Past the deadline what is left is killed and the exit code is 1. If the root supervisor
//! gives up on its own, the process exits 1 so that systemd restarts it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actors::{HealthSink, RelayArgs, RelayWake};
use supervision::Supervisor;
use tokio::signal::unix::{SignalKind, signal};

use crate::adapters::systemd;
use crate::config::Config;
use crate::http::{AppState, admin};
use crate::tree::{self, TreeDeps};

/// Why the daemon could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The data directory cannot be created.
    #[error(
        "cannot create the data directory {path}: {source}; set PRIMED_DATA_DIR to a writable directory"
    )]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The admin token file cannot be read or written.
    #[error(
        "cannot read or create the admin token {path}: {source}; set ADMIN_API_KEYS or fix the file's permissions"
    )]
    AdminToken {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP address cannot be bound.
    #[error(
        "cannot listen on {addr}: {source}; is another process using it? Set PRIMED_HTTP_ADDR to a free address"
    )]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A configured backend (MySQL, NATS) cannot be reached or set up.
    #[error(transparent)]
    Backend(#[from] crate::backends::BackendError),
    /// Signal handlers cannot be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The tree did not start.
    #[error("the supervision tree did not start: {0}")]
    TreeStart(String),
    /// The root supervisor gave up (restart intensity exceeded).
    #[error(
        "the supervision tree gave up after too many restarts; see the log for the failing actor"
    )]
    TreeGaveUp,
    /// The shutdown did not finish within its deadline.
    #[error("shutdown did not finish within {0:?}; what was left was killed")]
    ShutdownOverran(Duration),
}

impl DaemonError {
    /// The process exit code for this error (sysexits.h where one fits).
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::DataDir { .. } | DaemonError::AdminToken { .. } => 73, // EX_CANTCREAT
            DaemonError::Bind { .. } | DaemonError::Backend(_) => 69,           // EX_UNAVAILABLE
            DaemonError::Signals(_) => 71,                                      // EX_OSERR
            DaemonError::TreeStart(_)
            | DaemonError::TreeGaveUp
            | DaemonError::ShutdownOverran(_) => 1,
        }
    }
}

/// Creates `dir` (and its missing parents) readable by this user only (0700): it holds the
/// embedded database, the emails and the admin token. An existing directory keeps its mode
/// (the operator chose it), with a warning when other users can read it.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %dir.display(),
            mode = format!("{mode:o}"),
            "the data directory is open to other users (it holds the database, the emails and the admin token); run `chmod 700` on it"
        );
    }
    Ok(())
}

/// Runs the daemon until a signal or a fatal failure of the tree.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    create_private_dir(&config.data_dir).map_err(|source| DaemonError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let admin_keys = if config.admin_api_keys.is_empty() {
        let (token, path) = admin::load_or_create_token(&config.data_dir).map_err(|source| {
            DaemonError::AdminToken {
                path: config.data_dir.join("admin-token"),
                source,
            }
        })?;
        tracing::info!(path = %path.display(), "ADMIN_API_KEYS is not set: the admin API accepts the token in this file");
        vec![token]
    } else {
        config.admin_api_keys.clone()
    };

    let backends = crate::backends::open(&config).await?;

    let listener =
        std::net::TcpListener::bind(config.http_addr).map_err(|source| DaemonError::Bind {
            addr: config.http_addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: config.http_addr,
        source,
    })?;

    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;

    let limiter =
        match crate::ratelimit::RateLimitSettings::from_config(&config, admin_keys.clone()) {
            Some(settings) => {
                let limiter = Arc::new(
                    crate::ratelimit::RateLimiter::new(settings)
                        .map_err(|e| crate::backends::BackendError::RateLimit(e.to_string()))?,
                );
                Some(limiter)
            }
            None => {
                tracing::warn!("RATE_LIMIT_ENABLED is false: the public API is not rate limited");
                None
            }
        };
    let mut app = AppState::new(tree::ROOT, admin_keys)
        .with_fault_injection(config.fault_injection)
        .with_limits(config.http_limits)
        .with_jwt_secret(config.jwt_secret.clone())
        .with_auth_failure_limit(config.auth_failures_per_minute);
    if let Some(limiter) = limiter {
        if limiter.has_redis() {
            let probe = limiter.clone();
            app = app.with_dependency(crate::http::health::Dependency::optional(
                "redis",
                move || {
                    let probe = probe.clone();
                    Box::pin(async move {
                        match probe.redis() {
                            Some(redis) => redis
                                .ping(Duration::from_secs(1))
                                .await
                                .map(|_| ())
                                .map_err(|e| e.to_string()),
                            None => Ok(()),
                        }
                    })
                },
            ));
        }
        app = app.with_limiter(limiter);
    }
    for dependency in backends.dependencies() {
        app = app.with_dependency(dependency);
    }
    let liveness = actors::Liveness::default();
    let wake = RelayWake::new(tree::OUTBOX_RELAY);
    let relay_stats = liveness.register(tree::OUTBOX_RELAY);
    if backends.publish_directly(&wake, relay_stats.clone()) {
        tracing::info!(
            "new outbox events are published right after their commit; the relay publishes what that misses"
        );
    }
    let relay = Some(RelayArgs {
        store: backends.outbox.clone(),
        broker: backends.broker.clone(),
        batch_size: config.tuning.outbox_batch_size,
        parallel_rounds: config.tuning.outbox_parallel_rounds,
        lease: Duration::from_secs(30),
        poll_interval: config.tuning.outbox_poll_interval,
        retry: crate::backends::retry_policy(&config),
        retention: config.tuning.outbox_retention,
        prune_interval: Duration::from_secs(600),
        wake: wake.clone(),
        stats: relay_stats,
        background_settle: backends
            .background_settle
            .then(|| actors::outbox_relay::SettleSlots::new(config.tuning.outbox_parallel_rounds)),
    });
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let journal = match &backends.workers {
        Some(w) => send_journal(&config.data_dir, w.store.as_ref()).await,
        None => None,
    };
    let pipeline = backends.workers.as_ref().map(|w| {
        pipeline(
            &config,
            w,
            journal.clone(),
            wake.clone(),
            shutdown_rx.clone(),
            liveness.clone(),
        )
    });
    app = app.with_requests(
        backends.requests.clone(),
        Some(wake),
        config.tuning.max_digits,
    );
    if let Some(dlq) = &backends.dlq {
        app = app.with_dlq(dlq.clone());
    }
    if let Some(p) = &pipeline {
        app = app.with_controls(crate::http::Controls {
            consumers: vec![
                (
                    "primecheck",
                    p.primecheck.paused.clone(),
                    p.primecheck_workers,
                ),
                ("email", p.email.paused.clone(), p.email_workers),
            ],
            smtp_breaker: Some(p.smtp_breaker.clone()),
        });
    }
    app = app.with_health_store(backends.health.clone());
    if config.fault_injection {
        tracing::warn!("PRIMED_FAULT_INJECTION is on: the admin API can kill actors");
    }
    let mut heartbeat_interval = config.heartbeat_interval;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let instance = actors::Instance {
        name: config
            .instance
            .clone()
            .unwrap_or_else(|| format!("{host}:{}", addr.port())),
        host,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    // A worker shows progress at least once per ack wait (pulls end within a second, long
    // work and held messages tick at a third of it); allow two missed heartbeats more.
    let stale_after = config
        .workers
        .primecheck_retry
        .ack_wait
        .max(config.workers.email_retry.ack_wait)
        + 2 * config.heartbeat_interval;
    let mut health_sinks: Vec<Arc<dyn HealthSink>> = vec![
        Arc::new(actors::WorkerHealthSink {
            store: backends.health.clone(),
            liveness: liveness.clone(),
            instance,
            stale_after,
        }),
        Arc::new(crate::metrics::ActorMetricsSink::new(liveness.clone())),
    ];
    if let Some(period) = systemd::watchdog_period() {
        // Pet the watchdog at least twice per period.
        heartbeat_interval = heartbeat_interval.min(period / 2);
        health_sinks.push(Arc::new(systemd::WatchdogSink));
        tracing::info!(
            watchdog_ms = period.as_millis() as u64,
            "systemd watchdog enabled"
        );
    }
    let deps = TreeDeps {
        listener: Arc::new(listener),
        app: app.clone(),
        heartbeat_interval,
        health_sinks,
        relay,
        pipeline,
        collector: Some(crate::collector::CollectorArgs {
            store: backends.gauges.clone(),
            nats: backends.consumer_gauges.clone(),
            limiter: app.limiter.clone(),
            interval: config.metrics_interval,
        }),
    };
    let (root, mut root_done) = Supervisor::start(tree::root(&deps))
        .await
        .map_err(|e| DaemonError::TreeStart(e.to_string()))?;

    app.set_ready(true);
    tracing::info!(addr = %addr, version = env!("CARGO_PKG_VERSION"), mode = mode(&config), "primed is listening");
    systemd::notify_ready(&format!("serving on {addr}"));

    // Each branch only waits; none holds state that cancellation could lose.
    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
        _ = &mut root_done => {
            app.set_ready(false);
            return Err(DaemonError::TreeGaveUp);
        }
    };

    tracing::info!(
        signal = signal_name,
        deadline_ms = config.shutdown_timeout.as_millis() as u64,
        "shutting down"
    );
    app.set_ready(false);
    systemd::notify_stopping();
    // Workers release the messages they hold instead of waiting for a dependency.
    let _ = shutdown_tx.send(true);
    match root
        .stop_and_wait(Some("shutdown".into()), Some(config.shutdown_timeout))
        .await
    {
        Ok(()) => {
            tracing::info!("primed stopped");
            Ok(())
        }
        Err(_) => {
            root.kill();
            Err(DaemonError::ShutdownOverran(config.shutdown_timeout))
        }
    }
}

/// Opens the email workers' send journal in the data directory and records what a killed
/// run of this daemon sent and had not recorded, before any message is taken. Without it
/// (it cannot be opened) the daemon runs as before, with a warning.
async fn send_journal(
    data_dir: &std::path::Path,
    store: &dyn actors::WorkerStore,
) -> Option<Arc<dyn actors::ports::SendJournal>> {
    use crate::adapters::sent_journal::FileJournal;
    let dir = data_dir.join("sent-journal");
    let (journal, leftover) = match FileJournal::open(&dir) {
        Ok(opened) => opened,
        Err(err) => {
            tracing::warn!(error = %err, "running without a send journal: a daemon killed right after the mail server accepted an email sends it again when it is redelivered");
            return None;
        }
    };
    if !leftover.sent.is_empty() {
        let notes = leftover.sent.len();
        match leftover.replay(store).await {
            Ok(recorded) => tracing::info!(
                notes,
                recorded,
                "the send journal of the previous run is recorded: emails it sent will not be sent again"
            ),
            Err(err) => tracing::warn!(
                error = %err,
                notes,
                "could not record the send journal of the previous run (kept for the next start); its emails may be sent again"
            ),
        }
    }
    Some(Arc::new(journal))
}

/// The consumers, the DLQ actor and the retry timer.
fn pipeline(
    config: &Config,
    w: &crate::backends::WorkerBackends,
    journal: Option<Arc<dyn actors::ports::SendJournal>>,
    wake: RelayWake,
    shutdown: tokio::sync::watch::Receiver<bool>,
    liveness: actors::Liveness,
) -> tree::PipelineDeps {
    use actors::breaker::{BreakerSettings, CircuitBreaker};
    use actors::dlq::DlqArgs;
    use actors::handlers::{EmailHandler, PrimeCheckHandler};
    use actors::retry_timer::{ReprocessRule, TimerArgs};
    use actors::worker::{ConsumerPolicy, WorkerArgs};
    use tokio::sync::Semaphore;

    let workers = &config.workers;
    let settings = crate::backends::jetstream_settings(config, "");
    let policy = |durable: &str, retry: &crate::config::SubjectRetry| ConsumerPolicy {
        max_deliver: retry.max_deliver,
        backoff: retry.backoff.clone(),
        ack_wait: retry.ack_wait,
        ack_backoff: settings.consumer(durable, "").backoff,
    };
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let worker = |name: &str, source, handler, policy| WorkerArgs {
        name: name.into(),
        source,
        handler,
        store: w.store.clone(),
        policy,
        batch: workers.batch as usize,
        expires: Duration::from_secs(1),
        shutdown: shutdown.clone(),
        // Replaced per worker by the tree.
        stats: Default::default(),
        paused: Default::default(),
    };
    let primecheck = worker(
        "primecheck-worker",
        w.primecheck.clone(),
        Arc::new(PrimeCheckHandler {
            store: w.store.clone(),
            time_limit: workers.prime_timeout,
            cpu: Arc::new(Semaphore::new(cpus)),
            wake: Some(wake),
        }),
        policy(
            crate::adapters::nats::CONSUMER_PRIMECHECK,
            &workers.primecheck_retry,
        ),
    );
    let breaker = Arc::new(CircuitBreaker::new(BreakerSettings {
        threshold: workers.breaker_threshold,
        cool_down: workers.breaker_cool_down,
    }));
    let email = worker(
        "email-worker",
        w.email.clone(),
        Arc::new(EmailHandler {
            store: w.store.clone(),
            mailer: w.mailer.clone(),
            breaker: breaker.clone(),
            concurrency: Arc::new(Semaphore::new(workers.smtp_concurrency as usize)),
            message_id_domain: "primed".into(),
            journal,
        }),
        policy(crate::adapters::nats::CONSUMER_EMAIL, &workers.email_retry),
    );
    tree::PipelineDeps {
        primecheck,
        primecheck_workers: workers.primecheck_workers,
        email,
        email_workers: workers.email_workers,
        liveness,
        smtp_breaker: breaker,
        dlq: DlqArgs {
            store: w.dlq.clone(),
            workers: w.store.clone(),
            broker: w.dlq_broker.clone(),
            advisories: w.advisories.clone(),
            interval: Duration::from_secs(1),
        },
        timer: TimerArgs {
            store: w.dlq.clone(),
            rules: workers
                .dlq_rules
                .iter()
                .map(|r| ReprocessRule {
                    name: r.name.clone(),
                    pattern: r.pattern.clone(),
                    wait: r.wait,
                    max_retries: r.max_retries,
                    subjects: r.subjects.clone(),
                })
                .collect(),
            interval: workers.dlq_rule_interval,
        },
    }
}

fn mode(config: &Config) -> &'static str {
    use crate::config::{BrokerConfig, StoreConfig};
    match (&config.store, &config.broker) {
        (StoreConfig::Embedded, BrokerConfig::Embedded) => "embedded",
        (StoreConfig::Mysql { .. }, BrokerConfig::Nats { .. }) => "production",
        _ => "mixed",
    }
}
