//! Embedded mode: one SQLite file in the data directory is the store and, through its queue
//! table, the broker; a commit queues its own events when `PRIMED_OUTBOX_DIRECT` is on.

use std::sync::Arc;

use futures::FutureExt;

use super::{BackendError, Backends, WorkerBackends, embedded_path, jetstream_settings, mailer};
use crate::adapters::sqlite::{EmbeddedQueue, SqliteStore};
use crate::adapters::timed::Timed;
use crate::config::Config;
use crate::http::health::Dependency;

/// The file as store and queue, with the workers' backends.
pub(super) async fn open(config: &Config) -> Result<Backends, BackendError> {
    let mut dependencies = Vec::new();
    let file = open_sqlite(config, &mut dependencies).await?;
    let queue = EmbeddedQueue::new(&file);
    // One file holds the events and the queue: a commit can publish its events.
    let enqueues = config.tuning.outbox_direct;
    file.enqueue_directly(enqueues);
    let workers = embedded_workers(config, &file, &queue)?;
    let store = Arc::new(file);
    let timed = Arc::new(Timed(store.clone()));
    Ok(Backends {
        requests: timed.clone(),
        outbox: timed,
        broker: Arc::new(queue),
        dlq: Some(workers.dlq.clone()),
        replays: Some(Arc::new(store.shared())),
        workers: Some(workers),
        health: Arc::new(store.shared()),
        retention: Arc::new(store.shared()),
        gauges: store,
        consumer_gauges: None,
        background_settle: false,
        dependencies,
        direct: None,
        enqueues,
        interruptions: None,
    })
}

/// The embedded file as the store, with its `/health` probe.
pub(super) async fn open_sqlite(
    config: &Config,
    dependencies: &mut Vec<Dependency>,
) -> Result<SqliteStore, BackendError> {
    let store = open_file(config).await?;
    let probe = store.clone();
    dependencies.push(Dependency::new("database", move || {
        let store = probe.clone();
        async move { store.ping().await.map_err(|e| e.to_string()) }.boxed()
    }));
    Ok(store)
}

/// The embedded file (migrated), for its queue or its store.
pub(super) async fn open_file(config: &Config) -> Result<SqliteStore, BackendError> {
    let path = embedded_path(config);
    let store = SqliteStore::open(&path, config.tuning.outbox_max_retries).await?;
    tracing::info!(path = %path.display(), "embedded database is open");
    Ok(store)
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
        // The queue's deliveries follow the consumers' settings as JetStream's would.
        consumer_settings: jetstream_settings(config, ""),
    })
}
