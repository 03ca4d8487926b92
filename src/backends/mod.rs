//! Opening the configured backends: the store (migrated when asked) and the broker (with
//! its streams and consumers). Shared by `primed run` and the operator commands.
//!
//! One file per mode: `production.rs` (MySQL and NATS JetStream: the whole pipeline, with
//! the outbox's fast path), `embedded.rs` (one SQLite file as store and queue), `mixed.rs`
//! (a store and a broker of different modes: requests are accepted and published, but no
//! worker runs). This file holds what they return and the pieces they share.

mod embedded;
mod mixed;
mod production;

use std::sync::Arc;

use actors::ports::AdvisoryFeed;
use actors::ports::Mailer;
use actors::ports::Source;
use actors::{Broker, DlqStore, OutboxStore, RequestStore, RetryPolicy, WorkerStore};
use futures::FutureExt;
use supervision::Backoff;

use crate::adapters::mysql::{MysqlSetupError, MysqlStore, PoolSettings};
use crate::adapters::nats::{JetStreamSettings, NatsSetupError};
use crate::adapters::sqlite::SqliteSetupError;
use crate::config::{BrokerConfig, Config, StoreConfig};
use crate::http::health::Dependency;

/// A backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The store.
    #[error(transparent)]
    Store(#[from] MysqlSetupError),
    /// The broker.
    #[error(transparent)]
    Broker(#[from] NatsSetupError),
    /// The embedded database.
    #[error(transparent)]
    Embedded(#[from] SqliteSetupError),
    /// The mail transport.
    #[error(transparent)]
    Mail(#[from] crate::adapters::mail::MailSetupError),
    /// The rate limiter's Redis address is not usable.
    #[error(
        "cannot set up the rate limiter's Redis client: {0}; check REDIS_HOST/REDIS_PORT/REDIS_PASSWORD"
    )]
    RateLimit(String),
    /// A durable consumer could not be bound.
    #[error("cannot bind to the JetStream consumers: {0}")]
    Consumer(String),
}

/// What the consumers and the DLQ need (production mode: MySQL and NATS).
#[derive(Clone)]
pub struct WorkerBackends {
    /// Results, sends, logs, dead letters.
    pub store: Arc<dyn WorkerStore>,
    /// The dead-letter queue.
    pub dlq: Arc<dyn DlqStore>,
    /// `primecheck.requested`.
    pub primecheck: Arc<dyn Source>,
    /// `email.send`.
    pub email: Arc<dyn Source>,
    /// Max-deliveries advisories.
    pub advisories: Option<Arc<dyn AdvisoryFeed>>,
    /// How mail goes out.
    pub mailer: Arc<dyn Mailer>,
    /// Where dead letters are copied (the DLQ stream).
    pub dlq_broker: Arc<dyn Broker>,
    /// The consumers' delivery settings (max deliveries, ack waits, backoffs), computed once
    /// from the configuration: JetStream's consumers are made with them, and the workers'
    /// policies read their ack backoffs from them.
    pub consumer_settings: JetStreamSettings,
}

/// The opened backends, whichever they are.
#[derive(Clone)]
pub struct Backends {
    /// Requests (the API's store).
    pub requests: Arc<dyn RequestStore>,
    /// The outbox (the relay's store).
    pub outbox: Arc<dyn OutboxStore>,
    /// Where the relay publishes.
    pub broker: Arc<dyn Broker>,
    /// The consumers' and the DLQ's backends, when the store is MySQL and the broker NATS.
    pub workers: Option<WorkerBackends>,
    /// The dead-letter queue (for the DLQ API), when the store has one.
    pub dlq: Option<Arc<dyn DlqStore>>,
    /// Safe replay jobs (the DLQ API starts them; the replayer runs them where workers
    /// run), with the dead-letter queue.
    pub replays: Option<Arc<dyn actors::ReplayStore>>,
    /// Where heartbeats write `worker_health_checks`.
    pub health: Arc<dyn actors::HealthStore>,
    /// Where the retention actor deletes rows past their retention.
    pub retention: Arc<dyn actors::RetentionStore>,
    /// What the metrics gauges read from the store.
    pub gauges: Arc<dyn actors::GaugeSource>,
    /// The JetStream consumers' pending counts, with NATS.
    pub consumer_gauges: Option<crate::adapters::nats::ConsumerGauges>,
    /// The outbox takes its marks while other claims run (MySQL, row locks). SQLite has one
    /// writer: overlapping marks with claims there only makes them wait on each other's
    /// lock, and under load past its busy timeout.
    pub background_settle: bool,
    dependencies: Vec<Dependency>,
    /// The store and broker of the outbox's fast path (MySQL and NATS).
    direct: Option<(Arc<MysqlStore>, Arc<dyn Broker>)>,
    /// The embedded store queues new events in their own commit (the embedded fast path).
    enqueues: bool,
    /// With JetStream: its leader elections and disconnections, which wake the relay.
    interruptions: Option<crate::adapters::nats::Interruptions>,
}

/// The file of the embedded backends.
pub fn embedded_path(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("primed.db")
}

/// The MySQL store, if configured, without migrating.
pub fn mysql(config: &Config) -> Result<Option<MysqlStore>, BackendError> {
    match &config.store {
        StoreConfig::Mysql { url } => Ok(Some(MysqlStore::connect(url, pool_settings(config))?)),
        StoreConfig::Embedded => Ok(None),
    }
}

/// The MySQL pool's settings.
fn pool_settings(config: &Config) -> PoolSettings {
    PoolSettings {
        max_connections: config.tuning.db_max_connections,
        acquire_timeout: config.tuning.db_timeout,
        outbox_max_retries: config.tuning.outbox_max_retries,
    }
}

/// Opens what `config` names; migrates a MySQL store when `PRIMED_MIGRATE_ON_START` says so
/// (the embedded file is always migrated).
pub async fn open(config: &Config) -> Result<Backends, BackendError> {
    let mut backends = match (&config.store, &config.broker) {
        (
            StoreConfig::Mysql { url },
            BrokerConfig::Nats {
                url: nats,
                stream,
                replicas,
                ..
            },
        ) => production::open(config, url, nats, stream, *replicas).await?,
        (StoreConfig::Embedded, BrokerConfig::Embedded) => embedded::open(config).await?,
        (StoreConfig::Mysql { url }, BrokerConfig::Embedded) => {
            mixed::mysql_with_queue(config, url).await?
        }
        (
            StoreConfig::Embedded,
            BrokerConfig::Nats {
                url,
                stream,
                replicas,
                ..
            },
        ) => mixed::sqlite_with_nats(config, url, stream, *replicas).await?,
    };
    if let Some(smtp) = &config.smtp {
        let (host, port) = (smtp.host.clone(), smtp.port);
        backends
            .dependencies
            .push(Dependency::optional("smtp", move || {
                let host = host.clone();
                async move { crate::adapters::mail::smtp_probe(&host, port).await }.boxed()
            }));
    }
    Ok(backends)
}

/// The JetStream settings the configuration describes.
pub fn jetstream_settings(config: &Config, stream: &str) -> JetStreamSettings {
    let mut settings = JetStreamSettings::new(stream);
    if let BrokerConfig::Nats { subject_prefix, .. } = &config.broker {
        settings.subjects = crate::adapters::nats::Subjects::new(subject_prefix);
    }
    settings.max_deliver = i64::from(config.workers.max_deliver);
    settings.ack_wait = config.workers.ack_wait;
    settings.backoff = config.workers.backoff.clone();
    for (durable, retry) in [
        (
            crate::adapters::nats::CONSUMER_PRIMECHECK,
            &config.workers.primecheck_retry,
        ),
        (
            crate::adapters::nats::CONSUMER_EMAIL,
            &config.workers.email_retry,
        ),
    ] {
        settings.overrides.push((
            durable.to_string(),
            i64::from(retry.max_deliver),
            retry.ack_wait,
            retry.backoff.clone(),
        ));
    }
    settings
}

/// The mail transport: SMTP when configured, else `.eml` files under the data directory.
pub fn mailer(config: &Config) -> Result<Arc<dyn Mailer>, BackendError> {
    use crate::adapters::mail::{FileMailer, SmtpMailer};
    Ok(match &config.smtp {
        Some(smtp) => Arc::new(SmtpMailer::new(
            smtp,
            config.workers.smtp_timeout,
            config.workers.smtp_concurrency,
        )?),
        None => {
            let dir = config.data_dir.join("mail");
            tracing::info!(dir = %dir.display(), "no SMTP_HOST: result emails are written as .eml files");
            Arc::new(FileMailer::new(dir, "primed@localhost")?)
        }
    })
}

impl Backends {
    /// `/health` probes for each opened backend.
    pub fn dependencies(&self) -> Vec<Dependency> {
        self.dependencies.clone()
    }

    /// Starts the outbox's fast path when `PRIMED_OUTBOX_DIRECT` is on: with MySQL and NATS
    /// new events are published right after their commit, and `wake` (the relay's) is woken
    /// only for what the fast path leaves to it; what it publishes counts in `relay_stats`
    /// (the relay's heartbeat row). In the embedded mode the store queues new events in
    /// their own commit, and the relay is not woken for them. Returns whether it started.
    pub fn publish_directly(
        &self,
        wake: &actors::RelayWake,
        relay_stats: Arc<actors::WorkerStats>,
    ) -> bool {
        match &self.direct {
            Some((store, broker)) => {
                store.publish_directly(broker.clone(), wake.clone(), relay_stats);
                true
            }
            None if self.enqueues => {
                // The embedded store queues its new events with their commit.
                wake.set_direct(true);
                true
            }
            None => false,
        }
    }
}

impl Backends {
    /// With JetStream, wakes the relay (through `wake`) at each leader election of the
    /// stream or its consumers: a relay that found the stream without a leader publishes as
    /// soon as it has one, instead of at its next probe.
    pub fn wake_on_elections(&self, wake: &actors::RelayWake) {
        let Some(mut interruptions) = self.interruptions.clone() else {
            return;
        };
        let wake = wake.clone();
        tokio::spawn(async move {
            loop {
                interruptions.next_election().await;
                wake.broker_changed();
            }
        });
    }
}

/// The retry policy the configuration describes.
pub fn retry_policy(config: &Config) -> RetryPolicy {
    RetryPolicy {
        max_retries: config.tuning.outbox_max_retries,
        backoff: Backoff {
            initial: config.tuning.retry_initial,
            max: config.tuning.retry_max,
            multiplier: config.tuning.retry_multiplier,
            jitter: config.tuning.retry_jitter,
            reset_after: std::time::Duration::ZERO,
        },
    }
}
