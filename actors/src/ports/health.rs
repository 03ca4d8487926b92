//! Where health goes: the heartbeat's sinks (the systemd watchdog, the table, metrics) and
//! the `worker_health_checks` rows.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use super::store::StoreError;
use crate::heartbeat::HealthReport;

/// A place health reports go: the systemd watchdog, a table, metrics.
pub trait HealthSink: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// Records one report.
    fn record<'a>(&'a self, report: &'a HealthReport)
    -> BoxFuture<'a, Result<(), HealthSinkError>>;
}

/// A sink could not record a report.
#[derive(Debug, thiserror::Error)]
#[error("health sink {sink} could not record the heartbeat: {reason}")]
pub struct HealthSinkError {
    /// The sink's name.
    pub sink: String,
    /// What went wrong.
    pub reason: String,
}

/// One `worker_health_checks` row.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerHealth {
    /// `<instance>/<actor>`.
    pub worker_name: String,
    /// Healthy or not.
    pub healthy: bool,
    /// The worker's last sign of life.
    pub last_heartbeat: DateTime<Utc>,
    /// Why it is unhealthy.
    pub error_message: Option<String>,
    /// Restarts, counts, host, pid, version.
    pub metadata: serde_json::Value,
}

/// Where `worker_health_checks` rows are written.
pub trait HealthStore: Send + Sync + 'static {
    /// Inserts or replaces the rows, by worker name.
    fn upsert_health<'a>(
        &'a self,
        rows: &'a [WorkerHealth],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Every row (all daemons'), by worker name.
    fn list_health(&self) -> BoxFuture<'_, Result<Vec<WorkerHealth>, StoreError>>;
}
