//! Opening the configured backends: the store (migrated when asked) and the broker (with
//! its streams and consumers). Shared by `primed run` and the operator commands.

use std::sync::Arc;

use actors::{Broker, OutboxStore, RequestStore, RetryPolicy};
use futures::FutureExt;
use supervision::Backoff;

use crate::adapters::mysql::{MysqlSetupError, MysqlStore, PoolSettings};
use crate::adapters::nats::{JetStreamBroker, JetStreamSettings, NatsSetupError};
use crate::adapters::sqlite::{EmbeddedQueue, SqliteSetupError, SqliteStore};
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
    dependencies: Vec<Dependency>,
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
    let (requests, outbox): (Arc<dyn RequestStore>, Arc<dyn OutboxStore>) = match mysql(config)? {
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
            (store.clone(), store)
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
            (store.clone(), store)
        }
    };
    let broker: Arc<dyn Broker> = match &config.broker {
        BrokerConfig::Nats { url, stream } => {
            let settings = JetStreamSettings::new(stream);
            let (broker, client) = JetStreamBroker::connect(url, &settings).await?;
            broker.ensure_topology(&settings).await?;
            tracing::info!(stream = %stream, "JetStream streams and consumers are set up");
            dependencies.push(Dependency::new("nats", move || {
                let client = client.clone();
                async move { client.flush().await.map_err(|e| e.to_string()) }.boxed()
            }));
            Arc::new(broker)
        }
        BrokerConfig::Embedded => {
            let file = match embedded {
                Some(store) => store,
                None => open_embedded(config).await?,
            };
            Arc::new(EmbeddedQueue::new(&file))
        }
    };
    Ok(Backends {
        requests,
        outbox,
        broker,
        dependencies,
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
