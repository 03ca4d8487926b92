//! Worker liveness, and the heartbeat sink that writes it to `worker_health_checks`.
//!
//! A running actor is not necessarily a working one: a worker stuck in a call that never
//! returns is still "running" to its supervisor. So each pulling worker touches its
//! [`WorkerStats`] whenever it makes progress (a pull starts, a message is handled, a long
//! test or a held message ticks), and the [`WorkerHealthSink`] calls a worker unhealthy when
//! it has not touched them for `stale_after`, whatever its supervisor says.
//!
//! Rows are named `<instance>/<actor>`, so several daemons on one database never overwrite
//! each other's rows; `metadata` carries restarts, processed/failed/retried counts, host,
//! pid and version.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::json;
use supervision::{ChildKind, ChildState, ChildStatus};

use crate::heartbeat::HealthReport;
use crate::ports::{HealthSink, HealthSinkError, HealthStore, WorkerHealth};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What one worker has done, and when it last made progress.
#[derive(Debug)]
pub struct WorkerStats {
    last_active_ms: AtomicU64,
    processed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
}

impl Default for WorkerStats {
    fn default() -> Self {
        Self {
            last_active_ms: AtomicU64::new(now_ms()),
            processed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        }
    }
}

/// A copy of [`WorkerStats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Last progress, unix ms.
    pub last_active_ms: u64,
    /// Messages handled successfully.
    pub processed: u64,
    /// Messages dead-lettered.
    pub failed: u64,
    /// Messages given back for a retry.
    pub retried: u64,
}

impl WorkerStats {
    /// Notes progress now.
    pub fn touch(&self) {
        self.last_active_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Notes a message handled successfully.
    pub fn succeeded(&self) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    /// Notes a message dead-lettered.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    /// Notes a message given back for a retry.
    pub fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    /// Notes a batch: `processed` handled, `failed` dead-lettered, `retried` given back.
    pub fn add(&self, processed: u64, failed: u64, retried: u64) {
        self.processed.fetch_add(processed, Ordering::Relaxed);
        self.failed.fetch_add(failed, Ordering::Relaxed);
        self.retried.fetch_add(retried, Ordering::Relaxed);
        self.touch();
    }

    /// The counts now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            last_active_ms: self.last_active_ms.load(Ordering::Relaxed),
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
        }
    }
}

/// The stats of every worker of a daemon, by name. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct Liveness(Arc<Mutex<BTreeMap<String, Arc<WorkerStats>>>>);

impl Liveness {
    /// The stats of `name`, created on first use (a restarted worker keeps its counts).
    pub fn register(&self, name: &str) -> Arc<WorkerStats> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(name.to_string()).or_default().clone()
    }

    /// The stats of `name`, if registered.
    pub fn get(&self, name: &str) -> Option<Arc<WorkerStats>> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(name).cloned()
    }

    /// Every registered name.
    pub fn names(&self) -> Vec<String> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.keys().cloned().collect()
    }
}

/// Who this daemon is, for the rows' names and metadata.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Unique among the daemons sharing a database (`host:port` by default).
    pub name: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Daemon version.
    pub version: String,
}

/// The heartbeat sink that writes one `worker_health_checks` row per actor.
pub struct WorkerHealthSink {
    /// The table.
    pub store: Arc<dyn HealthStore>,
    /// The pulling workers' progress.
    pub liveness: Liveness,
    /// Who is writing.
    pub instance: Instance,
    /// A worker without progress for this long is unhealthy.
    pub stale_after: Duration,
}

fn leaves<'a>(node: &'a ChildStatus, out: &mut Vec<&'a ChildStatus>) {
    match (&node.kind, &node.children) {
        (ChildKind::Supervisor, Some(children)) => {
            for child in children {
                leaves(child, out);
            }
        }
        (ChildKind::Supervisor, None) => {}
        _ => out.push(node),
    }
}

fn state_name(state: ChildState) -> &'static str {
    match state {
        ChildState::Running => "running",
        ChildState::Restarting => "restarting",
        ChildState::Stopped => "stopped",
        ChildState::Failed => "failed",
    }
}

impl WorkerHealthSink {
    /// The rows for `report`.
    pub fn rows(&self, report: &HealthReport) -> Vec<WorkerHealth> {
        let at: DateTime<Utc> = report.at.into();
        let now = now_ms();
        let stale_ms = self.stale_after.as_millis() as u64;
        let mut actors = Vec::new();
        if let Some(tree) = &report.tree {
            leaves(tree, &mut actors);
        }
        let mut rows: Vec<WorkerHealth> = actors
            .into_iter()
            .filter(|a| a.state != ChildState::Stopped)
            .map(|actor| {
                let stats = self.liveness.get(&actor.name).map(|s| s.snapshot());
                let running = actor.state == ChildState::Running;
                let idle_ms = stats.map(|s| now.saturating_sub(s.last_active_ms));
                let stale = idle_ms.is_some_and(|ms| ms > stale_ms);
                let error_message = if !running {
                    Some(match &actor.last_failure {
                        Some(f) => format!("{}: {}", state_name(actor.state), f.reason),
                        None => state_name(actor.state).to_string(),
                    })
                } else if stale {
                    Some(format!(
                        "running but no progress for {} s (limit {} s): stuck in a call?",
                        idle_ms.unwrap_or(0) / 1000,
                        stale_ms / 1000
                    ))
                } else {
                    None
                };
                let last_heartbeat = match stats {
                    Some(s) => {
                        DateTime::from_timestamp_millis(s.last_active_ms as i64).unwrap_or(at)
                    }
                    None => at,
                };
                WorkerHealth {
                    worker_name: format!("{}/{}", self.instance.name, actor.name),
                    healthy: running && !stale,
                    last_heartbeat,
                    error_message,
                    metadata: json!({
                        "instance": self.instance.name,
                        "actor": actor.name,
                        "state": state_name(actor.state),
                        "restarts": actor.restart_count,
                        "uptime_seconds": actor.uptime_seconds,
                        "processed": stats.map(|s| s.processed),
                        "failed": stats.map(|s| s.failed),
                        "retried": stats.map(|s| s.retried),
                        "host": self.instance.host,
                        "pid": self.instance.pid,
                        "version": self.instance.version,
                    }),
                }
            })
            .collect();
        if report.tree.is_none() {
            // The tree could not be read: every known worker is in doubt.
            let why = report
                .error
                .clone()
                .unwrap_or_else(|| "the supervision tree did not answer".into());
            rows.extend(self.liveness.names().into_iter().map(|name| WorkerHealth {
                worker_name: format!("{}/{name}", self.instance.name),
                healthy: false,
                last_heartbeat: at,
                error_message: Some(why.clone()),
                metadata: json!({"instance": self.instance.name, "actor": name, "host": self.instance.host, "pid": self.instance.pid, "version": self.instance.version}),
            }));
        }
        rows
    }
}

impl HealthSink for WorkerHealthSink {
    fn name(&self) -> &str {
        "worker_health_checks"
    }

    fn record<'a>(
        &'a self,
        report: &'a HealthReport,
    ) -> BoxFuture<'a, Result<(), HealthSinkError>> {
        Box::pin(async move {
            let rows = self.rows(report);
            self.store
                .upsert_health(&rows)
                .await
                .map_err(|e| HealthSinkError {
                    sink: "worker_health_checks".into(),
                    reason: e.to_string(),
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::ports::StoreError;
    use std::time::SystemTime;

    use supervision::{Failure, Restart, Strategy};

    use super::*;

    struct NoStore;

    impl HealthStore for NoStore {
        fn upsert_health<'a>(
            &'a self,
            _rows: &'a [WorkerHealth],
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async { Ok(()) })
        }

        fn list_health(&self) -> BoxFuture<'_, Result<Vec<WorkerHealth>, StoreError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    fn node(name: &str, state: ChildState, failure: Option<&str>) -> ChildStatus {
        ChildStatus {
            name: name.into(),
            kind: ChildKind::Worker,
            restart: Restart::Permanent,
            state,
            restart_count: u32::from(failure.is_some()),
            last_failure: failure.map(|reason| Failure {
                reason: reason.into(),
                at: SystemTime::now(),
            }),
            uptime_seconds: None,
            strategy: None,
            children: None,
        }
    }

    fn sink(liveness: &Liveness) -> WorkerHealthSink {
        WorkerHealthSink {
            store: Arc::new(NoStore),
            liveness: liveness.clone(),
            instance: Instance {
                name: "host-a:8080".into(),
                host: "host-a".into(),
                pid: 42,
                version: "0.1.0".into(),
            },
            stale_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn running_failed_and_stuck_workers() {
        let liveness = Liveness::default();
        let busy = liveness.register("worker-1");
        busy.succeeded();
        busy.succeeded();
        busy.retried();
        let stuck = liveness.register("worker-2");
        stuck
            .last_active_ms
            .store(now_ms() - 31_000, Ordering::Relaxed);
        let mut pool = node("pool", ChildState::Running, None);
        pool.kind = ChildKind::Supervisor;
        pool.strategy = Some(Strategy::OneForOne);
        pool.children = Some(vec![
            node("worker-1", ChildState::Running, None),
            node("worker-2", ChildState::Running, None),
            node("worker-3", ChildState::Restarting, Some("boom")),
            node("gone", ChildState::Stopped, None),
        ]);
        let mut root = node("root", ChildState::Running, None);
        root.kind = ChildKind::Supervisor;
        root.children = Some(vec![node("relay", ChildState::Running, None), pool]);
        let report = HealthReport {
            at: SystemTime::now(),
            healthy: false,
            unhealthy: vec![],
            tree: Some(root),
            error: None,
        };
        let rows = sink(&liveness).rows(&report);
        let names: Vec<&str> = rows.iter().map(|r| r.worker_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "host-a:8080/relay",
                "host-a:8080/worker-1",
                "host-a:8080/worker-2",
                "host-a:8080/worker-3"
            ],
            "one row per actor, supervisors and stopped actors left out"
        );
        assert!(rows[0].healthy && rows[1].healthy);
        assert_eq!(rows[1].metadata["processed"], 2);
        assert_eq!(rows[1].metadata["retried"], 1);
        assert_eq!(rows[1].metadata["pid"], 42);
        assert!(!rows[2].healthy, "running but stuck");
        assert!(
            rows[2]
                .error_message
                .as_deref()
                .unwrap()
                .contains("no progress for 31 s")
        );
        assert!(
            rows[2].last_heartbeat < DateTime::<Utc>::from(report.at),
            "a stuck worker's heartbeat is its last progress"
        );
        assert!(!rows[3].healthy);
        assert_eq!(rows[3].error_message.as_deref(), Some("restarting: boom"));
        assert_eq!(rows[3].metadata["restarts"], 1);
    }

    #[test]
    fn an_unreadable_tree_makes_every_known_worker_unhealthy() {
        let liveness = Liveness::default();
        liveness.register("worker-1");
        let report = HealthReport {
            at: SystemTime::now(),
            healthy: false,
            unhealthy: vec![],
            tree: None,
            error: Some("root supervisor is not running".into()),
        };
        let rows = sink(&liveness).rows(&report);
        assert_eq!(rows.len(), 1);
        assert!(!rows[0].healthy);
        assert_eq!(
            rows[0].error_message.as_deref(),
            Some("root supervisor is not running")
        );
    }
}
