//! Opening the configured backends: the store (migrated when asked) and the broker (with
//! its streams and consumers). Shared by `primed run` and the operator commands.

use std::sync::Arc;

use actors::ports::AdvisoryFeed;
use actors::ports::Mailer;
use actors::ports::Source;
use actors::{Broker, DlqStore, OutboxStore, RequestStore, RetryPolicy, WorkerStore};
use futures::FutureExt;
use supervision::Backoff;

use crate::adapters::mysql::{MysqlSetupError, MysqlStore, PoolSettings};
use crate::adapters::nats::{JetStreamBroker, JetStreamSettings, NatsSetupError};
use crate::adapters::sqlite::{EmbeddedQueue, SqliteSetupError, SqliteStore};
use crate::adapters::timed::Timed;
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
    /// Where heartbeats write `worker_health_checks`.
    pub health: Arc<dyn actors::HealthStore>,
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
}

/// The file of the embedded backends.
pub fn embedded_path(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("primed.db")
}

/// The MySQL store, if configured, without migrating.
pub fn mysql(config: &Config) -> Result<Option<MysqlStore>, BackendError> {
    match &config.store {
        StoreConfig::Mysql { url } => Ok(Some(MysqlStore::connect(
            url,
            PoolSettings {
                max_connections: config.tuning.db_max_connections,
                acquire_timeout: config.tuning.db_timeout,
                outbox_max_retries: config.tuning.outbox_max_retries,
            },
        )?)),
        StoreConfig::Embedded => Ok(None),
    }
}

/// Opens what `config` names; migrates a MySQL store when `PRIMED_MIGRATE_ON_START` says so
/// (the embedded file is always migrated).
pub async fn open(config: &Config) -> Result<Backends, BackendError> {
    let mut dependencies = Vec::new();
    let mut embedded: Option<SqliteStore> = None;
    let mut mysql_store: Option<Arc<MysqlStore>> = None;
    type Stores = (
        Arc<dyn RequestStore>,
        Arc<dyn OutboxStore>,
        Arc<dyn actors::HealthStore>,
        Arc<dyn actors::GaugeSource>,
    );
    let mut consumer_gauges = None;
    let (requests, outbox, health, gauges): Stores = match mysql(config)? {
        Some(store) => {
            if config.tuning.migrate_on_start {
                store.migrate().await?;
                tracing::info!("database migrations are applied");
            }
            let store = Arc::new(store);
            let probe = store.clone();
            dependencies.push(Dependency::new("database", move || {
                let store = probe.clone();
                async move { store.ping().await.map_err(|e| e.to_string()) }.boxed()
            }));
            mysql_store = Some(store.clone());
            let timed = Arc::new(Timed(store.clone()));
            (timed.clone(), timed, Arc::new(store.shared()), store)
        }
        None => {
            let store = open_embedded(config).await?;
            let probe = store.clone();
            dependencies.push(Dependency::new("database", move || {
                let store = probe.clone();
                async move { store.ping().await.map_err(|e| e.to_string()) }.boxed()
            }));
            embedded = Some(store.clone());
            let store = Arc::new(store);
            let timed = Arc::new(Timed(store.clone()));
            (timed.clone(), timed, Arc::new(store.shared()), store)
        }
    };
    let mut workers = None;
    let mut enqueues = false;
    let broker: Arc<dyn Broker> = match &config.broker {
        BrokerConfig::Nats {
            url,
            stream,
            replicas,
        } => {
            let mut settings = jetstream_settings(config, stream);
            settings.replicas = *replicas;
            let (broker, client) = JetStreamBroker::connect(url, &settings).await?;
            // A JetStream cluster that is still electing its leader answers with timeouts
            // for a few seconds; keep trying for a while instead of exiting at once.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                match broker.ensure_topology(&settings).await {
                    Ok(()) => break,
                    Err(err) if std::time::Instant::now() < deadline => {
                        tracing::warn!(error = %err, "JetStream is not ready yet; trying again in 1 s (up to 30 s)");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            if let Some(store) = &mysql_store {
                workers = Some(worker_backends(config, store.clone(), &broker, stream).await?);
            }
            tracing::info!(stream = %stream, "JetStream streams and consumers are set up");
            consumer_gauges = Some(crate::adapters::nats::ConsumerGauges::new(
                client.clone(),
                stream,
            ));
            dependencies.push(Dependency::new("nats", move || {
                let client = client.clone();
                async move { client.flush().await.map_err(|e| e.to_string()) }.boxed()
            }));
            Arc::new(broker)
        }
        BrokerConfig::Embedded => {
            let both_embedded = embedded.is_some();
            let file = match embedded.clone() {
                Some(store) => store,
                None => open_embedded(config).await?,
            };
            let queue = EmbeddedQueue::new(&file);
            // One file holds the events and the queue: a commit can publish its events.
            enqueues = both_embedded && config.tuning.outbox_direct;
            file.enqueue_directly(enqueues);
            if both_embedded {
                workers = Some(embedded_workers(config, &file, &queue)?);
            }
            Arc::new(queue)
        }
    };
    if workers.is_none() {
        tracing::warn!(
            "the prime-check and email workers need the store and the broker of the same mode (MySQL with NATS, or both embedded); requests will wait as pending"
        );
    }
    let background_settle = mysql_store.is_some();
    let direct = match (&config.broker, &mysql_store) {
        (BrokerConfig::Nats { .. }, Some(store)) if config.tuning.outbox_direct => {
            Some((store.clone(), broker.clone()))
        }
        _ => None,
    };
    let dlq = match (&workers, mysql_store) {
        (_, Some(store)) => Some(Arc::new(Timed(Arc::new(store.shared()))) as Arc<dyn DlqStore>),
        (Some(w), None) => Some(w.dlq.clone()),
        (None, None) => None,
    };
    if let Some(smtp) = &config.smtp {
        let (host, port) = (smtp.host.clone(), smtp.port);
        dependencies.push(Dependency::optional("smtp", move || {
            let host = host.clone();
            async move { crate::adapters::mail::smtp_probe(&host, port).await }.boxed()
        }));
    }
    Ok(Backends {
        requests,
        outbox,
        broker,
        workers,
        dlq,
        health,
        gauges,
        consumer_gauges,
        background_settle,
        dependencies,
        direct,
        enqueues,
    })
}

/// The embedded mode's consumers: the queue table as the source, the SQLite file as the
/// store, `.eml` files (or SMTP when configured) as the mail.
fn embedded_workers(
    config: &Config,
    store: &SqliteStore,
    queue: &EmbeddedQueue,
) -> Result<WorkerBackends, BackendError> {
    use crate::adapters::sqlite::{EmbeddedAdvisories, EmbeddedSource};
    use actors::model::{SUBJECT_EMAIL_SEND, SUBJECT_PRIMECHECK_REQUESTED};
    let w = &config.workers;
    let dlq = Arc::new(Timed(Arc::new(store.shared())));
    let store = Arc::new(Timed(Arc::new(store.clone())));
    Ok(WorkerBackends {
        store,
        dlq,
        primecheck: Arc::new(EmbeddedSource::new(
            queue,
            SUBJECT_PRIMECHECK_REQUESTED,
            w.primecheck_retry.ack_wait,
            w.primecheck_retry.max_deliver,
        )),
        email: Arc::new(EmbeddedSource::new(
            queue,
            SUBJECT_EMAIL_SEND,
            w.email_retry.ack_wait,
            w.email_retry.max_deliver,
        )),
        advisories: Some(Arc::new(EmbeddedAdvisories::new(
            queue,
            vec![
                (
                    SUBJECT_PRIMECHECK_REQUESTED.to_string(),
                    w.primecheck_retry.max_deliver,
                ),
                (SUBJECT_EMAIL_SEND.to_string(), w.email_retry.max_deliver),
            ],
        ))),
        mailer: mailer(config)?,
        dlq_broker: Arc::new(queue.clone()),
    })
}

/// The JetStream settings the configuration describes.
pub fn jetstream_settings(config: &Config, stream: &str) -> JetStreamSettings {
    let mut settings = JetStreamSettings::new(stream);
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

async fn worker_backends(
    config: &Config,
    store: Arc<MysqlStore>,
    broker: &JetStreamBroker,
    stream: &str,
) -> Result<WorkerBackends, BackendError> {
    use crate::adapters::nats::source::{JetStreamAdvisories, JetStreamSource};
    use crate::adapters::nats::{CONSUMER_EMAIL, CONSUMER_PRIMECHECK};
    let js = broker.context();
    let bind = |durable: &'static str| async move {
        JetStreamSource::bind(js, stream, durable)
            .await
            .map_err(|e| BackendError::Consumer(e.to_string()))
    };
    let primecheck = bind(CONSUMER_PRIMECHECK).await?;
    let email = bind(CONSUMER_EMAIL).await?;
    let advisories = JetStreamAdvisories::bind(js, stream)
        .await
        .map_err(|e| BackendError::Consumer(e.to_string()))?;
    Ok(WorkerBackends {
        store: Arc::new(Timed(store.clone())),
        dlq: Arc::new(Timed(Arc::new(store.shared()))),
        primecheck: Arc::new(primecheck),
        email: Arc::new(email),
        advisories: Some(Arc::new(advisories)),
        mailer: mailer(config)?,
        dlq_broker: Arc::new(broker.clone()),
    })
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

async fn open_embedded(config: &Config) -> Result<SqliteStore, BackendError> {
    let path = embedded_path(config);
    let store = SqliteStore::open(&path, config.tuning.outbox_max_retries).await?;
    tracing::info!(path = %path.display(), "embedded database is open");
    Ok(store)
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
