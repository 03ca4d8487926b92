//! The wiring: turns the configuration and the opened backends into the arguments of each
//! child of the tree ([`TreeDeps`]), the HTTP state included. `tree.rs` says which children
//! run and how they are supervised; this file says what each is given. Read them as a pair.

use std::sync::Arc;
use std::time::Duration;

use actors::{HealthSink, RelayArgs, RelayWake};

use crate::adapters::systemd;
use crate::backends::{BackendError, Backends};
use crate::config::{Config, Secret};
use crate::http::AppState;
use crate::tree::{self, TreeDeps};

/// What the daemon starts and keeps for its shutdown.
pub struct Wired {
    /// The tree's arguments.
    pub deps: TreeDeps,
    /// The HTTP state (readiness is set on it).
    pub app: AppState,
    /// Tells the workers to release what they hold (at shutdown).
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

/// The tree's arguments for `config` on `backends`, serving on `listener` (bound to
/// `port`), with the admin tokens `admin_keys`.
pub async fn wire(
    config: &Config,
    backends: &Backends,
    admin_keys: Vec<Secret>,
    listener: std::net::TcpListener,
    port: u16,
) -> Result<Wired, BackendError> {
    let limiter = match crate::ratelimit::RateLimitSettings::from_config(config, admin_keys.clone())
    {
        Some(settings) => {
            let limiter = Arc::new(
                crate::ratelimit::RateLimiter::new(settings)
                    .map_err(|e| BackendError::RateLimit(e.to_string()))?,
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
    backends.wake_on_elections(&wake);
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
        retry: crate::backends::retry_policy(config),
        retention: config.tuning.outbox_retention,
        prune_interval: Duration::from_secs(600),
        wake: wake.clone(),
        stats: relay_stats,
        background_settle: backends
            .background_settle
            .then(|| actors::outbox_relay::SettleSlots::new(config.tuning.outbox_parallel_rounds)),
    });
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let journal = match &backends.workers {
        Some(w) => send_journal(&config.data_dir, w.store.as_ref()).await,
        None => None,
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let instance_name = config
        .instance
        .clone()
        .unwrap_or_else(|| format!("{host}:{port}"));
    let pipeline = backends.workers.as_ref().map(|w| {
        let replayer = backends
            .replays
            .clone()
            .map(|store| actors::replay::ReplayerArgs {
                store,
                owner: instance_name.clone(),
                tick: Duration::from_millis(250),
                lease: Duration::from_secs(15),
                wake: Some(wake.clone()),
                // Set by `pipeline` from the email workers' breaker.
                on_heal: None,
            });
        pipeline(
            config,
            w,
            journal.clone(),
            wake.clone(),
            shutdown_rx.clone(),
            liveness.clone(),
            replayer,
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
    if let Some(replays) = &backends.replays {
        app = app.with_replays(replays.clone());
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
    let instance = actors::Instance {
        name: instance_name,
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
        health_sinks.push(Arc::new(systemd::WatchdogSink::default()));
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
        retention: Some(actors::retention::RetentionArgs {
            store: backends.retention.clone(),
            keep: config.retention.keep.clone(),
            interval: config.retention.interval,
            batch: config.retention.batch,
            // Long enough for the hot path's statements to pass between two batches.
            pause: Duration::from_millis(100),
        }),
    };
    Ok(Wired {
        deps,
        app,
        shutdown,
    })
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
    replayer: Option<actors::replay::ReplayerArgs>,
) -> tree::PipelineDeps {
    use actors::breaker::{BreakerSettings, CircuitBreaker};
    use actors::dlq::DlqArgs;
    use actors::handlers::{EmailHandler, PrimeCheckHandler};
    use actors::retry_timer::{ReprocessRule, TimerArgs};
    use actors::worker::{ConsumerPolicy, WorkerArgs};
    use tokio::sync::Semaphore;

    let workers = &config.workers;
    let settings = &w.consumer_settings;
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
            panic_on: workers.panic_number.clone(),
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
    let replayer = replayer.map(|mut args| {
        if workers.replay_on_heal {
            args.on_heal = Some((
                breaker.healed(),
                actors::model::ReplayPace {
                    canary: 2,
                    ramp: 5,
                    rate_per_second: f64::from(workers.replay_on_heal_rate),
                    max_failure_ratio: 0.5,
                },
            ));
        }
        args
    });
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
            in_flight: Default::default(),
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
        replayer,
        dlq: DlqArgs {
            store: w.dlq.clone(),
            workers: w.store.clone(),
            broker: w.dlq_broker.clone(),
            advisories: w.advisories.clone(),
            interval: Duration::from_secs(1),
            reconcile_every: workers.reconcile_every,
            reconcile_after: workers.reconcile_after,
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
