//! A store and a broker of different modes: requests are accepted and their events
//! published, but no worker runs (the workers need the store and the broker of one mode), so
//! requests wait as pending. Said at start.

use std::sync::Arc;

use super::embedded::{open_file, open_sqlite};
use super::production::{open_mysql, open_nats};
use super::{BackendError, Backends};
use crate::adapters::sqlite::EmbeddedQueue;
use crate::adapters::timed::Timed;
use crate::config::{Config, Secret};

fn no_workers() {
    tracing::warn!(
        "the prime-check and email workers need the store and the broker of the same mode (MySQL with NATS, or both embedded); requests will wait as pending"
    );
}

/// MySQL at `url` as the store, the embedded file's queue as the broker.
pub(super) async fn mysql_with_queue(
    config: &Config,
    url: &Secret,
) -> Result<Backends, BackendError> {
    let mut dependencies = Vec::new();
    let store = open_mysql(config, url, &mut dependencies).await?;
    let file = open_file(config).await?;
    file.enqueue_directly(false);
    let queue = EmbeddedQueue::new(&file);
    no_workers();
    let timed = Arc::new(Timed(store.clone()));
    Ok(Backends {
        requests: timed.clone(),
        outbox: timed,
        broker: Arc::new(queue),
        workers: None,
        dlq: Some(Arc::new(Timed(Arc::new(store.shared())))),
        replays: Some(Arc::new(store.shared())),
        health: Arc::new(store.shared()),
        retention: Arc::new(store.shared()),
        gauges: store,
        consumer_gauges: None,
        background_settle: true,
        dependencies,
        direct: None,
        enqueues: false,
        interruptions: None,
    })
}

/// The embedded file as the store, JetStream at `url` as the broker.
pub(super) async fn sqlite_with_nats(
    config: &Config,
    url: &str,
    stream: &str,
    replicas: usize,
) -> Result<Backends, BackendError> {
    let mut dependencies = Vec::new();
    let file = open_sqlite(config, &mut dependencies).await?;
    let (broker, consumer_gauges, _) =
        open_nats(config, url, stream, replicas, &mut dependencies).await?;
    no_workers();
    let store = Arc::new(file);
    let timed = Arc::new(Timed(store.clone()));
    let interruptions = broker.interruptions();
    Ok(Backends {
        requests: timed.clone(),
        outbox: timed,
        broker: Arc::new(broker),
        workers: None,
        dlq: None,
        replays: None,
        health: Arc::new(store.shared()),
        retention: Arc::new(store.shared()),
        gauges: store,
        consumer_gauges: Some(consumer_gauges),
        background_settle: false,
        dependencies,
        direct: None,
        enqueues: false,
        interruptions: Some(interruptions),
    })
}
