//! Production mode: MySQL (or MariaDB) as the store, NATS JetStream as the broker. The whole
//! pipeline runs, with the outbox's fast path when `PRIMED_OUTBOX_DIRECT` is on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::Broker;
use futures::FutureExt;

use super::{BackendError, Backends, WorkerBackends, jetstream_settings, mailer, pool_settings};
use crate::adapters::mysql::MysqlStore;
use crate::adapters::nats::{ConsumerGauges, JetStreamBroker, JetStreamSettings};
use crate::adapters::timed::Timed;
use crate::config::{Config, Secret};
use crate::http::health::Dependency;

/// MySQL at `url`, JetStream at `nats` with the stream `stream` in `replicas` replicas.
pub(super) async fn open(
    config: &Config,
    url: &Secret,
    nats: &str,
    stream: &str,
    replicas: usize,
) -> Result<Backends, BackendError> {
    let mut dependencies = Vec::new();
    let store = open_mysql(config, url, &mut dependencies).await?;
    let (broker, consumer_gauges, settings) =
        open_nats(config, nats, stream, replicas, &mut dependencies).await?;
    let workers = worker_backends(config, store.clone(), &broker, settings).await?;
    let interruptions = broker.interruptions();
    let broker: Arc<dyn Broker> = Arc::new(broker);
    let timed = Arc::new(Timed(store.clone()));
    Ok(Backends {
        requests: timed.clone(),
        outbox: timed,
        broker: broker.clone(),
        dlq: Some(workers.dlq.clone()),
        replays: Some(Arc::new(store.shared())),
        workers: Some(workers),
        health: Arc::new(store.shared()),
        retention: Arc::new(store.shared()),
        gauges: store.clone(),
        consumer_gauges: Some(consumer_gauges),
        background_settle: true,
        dependencies,
        direct: config.tuning.outbox_direct.then_some((store, broker)),
        enqueues: false,
        interruptions: Some(interruptions),
    })
}

/// The MySQL store at `url`, migrated when `PRIMED_MIGRATE_ON_START` says so, with its
/// `/health` probe.
pub(super) async fn open_mysql(
    config: &Config,
    url: &Secret,
    dependencies: &mut Vec<Dependency>,
) -> Result<Arc<MysqlStore>, BackendError> {
    let store = MysqlStore::connect(url, pool_settings(config))?;
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
    Ok(store)
}

/// JetStream at `url`, its streams and consumers set up, with its `/health` probe, the
/// consumers' gauges and the settings they were made with.
pub(super) async fn open_nats(
    config: &Config,
    url: &str,
    stream: &str,
    replicas: usize,
    dependencies: &mut Vec<Dependency>,
) -> Result<(JetStreamBroker, ConsumerGauges, JetStreamSettings), BackendError> {
    let mut settings = jetstream_settings(config, stream);
    settings.replicas = replicas;
    let (broker, client) = JetStreamBroker::connect(url, &settings).await?;
    // A JetStream cluster that is still electing its leader answers with timeouts for a few
    // seconds; keep trying for a while instead of exiting at once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match broker.ensure_topology(&settings).await {
            Ok(()) => break,
            // Another stream holds the subjects: waiting changes nothing.
            Err(err @ crate::adapters::nats::NatsSetupError::Overlap { .. }) => {
                return Err(err.into());
            }
            Err(err) if Instant::now() < deadline => {
                tracing::warn!(error = %err, "JetStream is not ready yet; trying again in 1 s (up to 30 s)");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
    tracing::info!(stream = %stream, "JetStream streams and consumers are set up");
    let gauges = ConsumerGauges::new(client.clone(), stream);
    dependencies.push(Dependency::new("nats", move || {
        let client = client.clone();
        async move { client.flush().await.map_err(|e| e.to_string()) }.boxed()
    }));
    Ok((broker, gauges, settings))
}

async fn worker_backends(
    config: &Config,
    store: Arc<MysqlStore>,
    broker: &JetStreamBroker,
    settings: JetStreamSettings,
) -> Result<WorkerBackends, BackendError> {
    let stream = settings.stream.as_str();
    let subjects = &settings.subjects;
    use crate::adapters::nats::source::{JetStreamAdvisories, JetStreamSource};
    use crate::adapters::nats::{CONSUMER_EMAIL, CONSUMER_PRIMECHECK};
    let js = broker.context();
    let bind = |durable: &'static str| async move {
        JetStreamSource::bind(js, stream, durable, subjects)
            .await
            .map(|source| source.ended_by(broker.interruptions().for_consumer(durable)))
            .map_err(|e| BackendError::Consumer(e.to_string()))
    };
    let primecheck = bind(CONSUMER_PRIMECHECK).await?;
    let email = bind(CONSUMER_EMAIL).await?;
    let advisories = JetStreamAdvisories::bind(js, stream, subjects)
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
        consumer_settings: settings,
    })
}
