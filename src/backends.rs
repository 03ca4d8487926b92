//! Opening the configured backends: the store (migrated when asked) and the broker (with
//! its streams and consumers). Shared by `primed run` and the operator commands.

use std::sync::Arc;

use actors::RetryPolicy;
use futures::FutureExt;
use supervision::Backoff;

use crate::adapters::mysql::{MysqlSetupError, MysqlStore, PoolSettings};
use crate::adapters::nats::{JetStreamBroker, JetStreamSettings, NatsSetupError};
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
}

/// The opened backends.
#[derive(Clone, Default)]
pub struct Backends {
    /// MySQL, when configured.
    pub mysql: Option<Arc<MysqlStore>>,
    /// JetStream, when configured.
    pub jetstream: Option<(Arc<JetStreamBroker>, async_nats::Client)>,
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

/// Opens what `config` names; migrates the store when `PRIMED_MIGRATE_ON_START` says so.
pub async fn open(config: &Config) -> Result<Backends, BackendError> {
    let mysql = match mysql(config)? {
        Some(store) => {
            if config.tuning.migrate_on_start {
                store.migrate().await?;
                tracing::info!("database migrations are applied");
            }
            Some(Arc::new(store))
        }
        None => None,
    };
    let jetstream = match &config.broker {
        BrokerConfig::Nats { url, stream } => {
            let settings = JetStreamSettings::new(stream);
            let (broker, client) = JetStreamBroker::connect(url, &settings).await?;
            broker.ensure_topology(&settings).await?;
            tracing::info!(stream = %stream, "JetStream streams and consumers are set up");
            Some((Arc::new(broker), client))
        }
        BrokerConfig::Embedded => None,
    };
    Ok(Backends { mysql, jetstream })
}

impl Backends {
    /// `/health` probes for each opened backend.
    pub fn dependencies(&self) -> Vec<Dependency> {
        let mut deps = Vec::new();
        if let Some(store) = &self.mysql {
            let store = store.clone();
            deps.push(Dependency::new("database", move || {
                let store = store.clone();
                async move { store.ping().await.map_err(|e| e.to_string()) }.boxed()
            }));
        }
        if let Some((_, client)) = &self.jetstream {
            let client = client.clone();
            deps.push(Dependency::new("nats", move || {
                let client = client.clone();
                async move { client.flush().await.map_err(|e| e.to_string()) }.boxed()
            }));
        }
        deps
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
