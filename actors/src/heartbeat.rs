//! The heartbeat actor: tracks the liveness of the whole supervision tree.
//!
//! Every `interval` it reads the tree's status from the root supervisor (found by its
//! registered name, so a restarted root or heartbeat never holds a stale reference), turns
//! it into a [`HealthReport`] and hands it to each [`HealthSink`] (the systemd watchdog,
//! `worker_health_checks` through [`crate::liveness::WorkerHealthSink`]).
//!
//! Messages: [`HeartbeatMsg::Beat`] (scheduled), [`HeartbeatMsg::Latest`] (the last report).
//! Failure behaviour: a sink that fails is logged and tried again at the next beat; the actor
//! itself does not fail on it. A restart loses only the last report.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use supervision::{ChildStatus, status};

use crate::ports::HealthSink;

/// The tree's health at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// When it was taken.
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    /// True when the root answered and every child that should run is running.
    pub healthy: bool,
    /// Paths of children that should run but do not.
    pub unhealthy: Vec<String>,
    /// The whole tree, when the root answered.
    pub tree: Option<ChildStatus>,
    /// Why the tree could not be read.
    pub error: Option<String>,
}

fn rfc3339<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*at))
}

impl HealthReport {
    /// Reads the tree under the supervisor registered as `root`.
    pub async fn take(root: &str, timeout: Duration) -> Self {
        let at = SystemTime::now();
        let Some(cell) = ractor::registry::where_is(root) else {
            return Self::unreadable(at, format!("root supervisor {root:?} is not running"));
        };
        match status(&cell.into(), timeout).await {
            Ok(tree) => {
                let unhealthy = tree.unhealthy();
                Self {
                    at,
                    healthy: unhealthy.is_empty(),
                    unhealthy,
                    tree: Some(tree),
                    error: None,
                }
            }
            Err(err) => Self::unreadable(at, err.to_string()),
        }
    }

    fn unreadable(at: SystemTime, error: String) -> Self {
        Self {
            at,
            healthy: false,
            unhealthy: Vec::new(),
            tree: None,
            error: Some(error),
        }
    }
}

/// The heartbeat actor.
#[derive(Debug, Clone, Copy, Default)]
pub struct Heartbeat;

/// The heartbeat's configuration.
#[derive(Clone)]
pub struct HeartbeatArgs {
    /// Registered name of the root supervisor.
    pub root: String,
    /// Time between beats.
    pub interval: Duration,
    /// How long the tree may take to answer.
    pub status_timeout: Duration,
    /// Where reports go.
    pub sinks: Vec<Arc<dyn HealthSink>>,
}

/// The heartbeat's state.
pub struct HeartbeatState {
    args: HeartbeatArgs,
    latest: Option<HealthReport>,
}

/// Messages the heartbeat handles.
pub enum HeartbeatMsg {
    /// Take a report and hand it to the sinks.
    Beat,
    /// The last report, if any.
    Latest(RpcReplyPort<Option<HealthReport>>),
}

impl Actor for Heartbeat {
    type Msg = HeartbeatMsg;
    type State = HeartbeatState;
    type Arguments = HeartbeatArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HeartbeatMsg>,
        args: HeartbeatArgs,
    ) -> Result<HeartbeatState, ActorProcessingErr> {
        myself.send_interval(args.interval, || HeartbeatMsg::Beat);
        Ok(HeartbeatState { args, latest: None })
    }

    async fn post_start(
        &self,
        myself: ActorRef<HeartbeatMsg>,
        _: &mut HeartbeatState,
    ) -> Result<(), ActorProcessingErr> {
        // The first beat should not wait a whole interval.
        myself.cast(HeartbeatMsg::Beat)?;
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<HeartbeatMsg>,
        msg: HeartbeatMsg,
        state: &mut HeartbeatState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HeartbeatMsg::Beat => {
                let report = HealthReport::take(&state.args.root, state.args.status_timeout).await;
                if !report.healthy {
                    tracing::warn!(
                        unhealthy = ?report.unhealthy,
                        error = report.error.as_deref(),
                        "supervision tree is not healthy"
                    );
                }
                for sink in &state.args.sinks {
                    if let Err(err) = sink.record(&report).await {
                        tracing::warn!(sink = sink.name(), error = %err, "heartbeat not recorded");
                    }
                }
                state.latest = Some(report);
            }
            HeartbeatMsg::Latest(reply) => {
                let _ = reply.send(state.latest.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::HealthSinkError;
    use futures::FutureExt;
    use futures::future::BoxFuture;
    use supervision::{ChildSpec, Strategy, Supervisor, SupervisorSpec};
    use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

    struct Recorder(UnboundedSender<HealthReport>);

    impl HealthSink for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }
        fn record<'a>(
            &'a self,
            report: &'a HealthReport,
        ) -> BoxFuture<'a, Result<(), HealthSinkError>> {
            let _ = self.0.send(report.clone());
            async { Ok(()) }.boxed()
        }
    }

    #[tokio::test]
    async fn reports_the_tree_it_lives_in_and_reports_a_missing_root() {
        let (tx, mut rx) = unbounded_channel();
        let args = HeartbeatArgs {
            root: "heartbeat-test-root".into(),
            interval: Duration::from_secs(3600),
            status_timeout: Duration::from_secs(1),
            sinks: vec![Arc::new(Recorder(tx))],
        };
        let spec = SupervisorSpec::new("heartbeat-test-root", Strategy::OneForOne).child(
            ChildSpec::actor("heartbeat-test-hb", Heartbeat, args.clone()),
        );
        let (root, _) = Supervisor::start(spec).await.unwrap();

        let report = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(report.healthy, "{report:?}");
        let tree = report.tree.unwrap();
        assert_eq!(tree.name, "heartbeat-test-root");
        assert!(tree.find("heartbeat-test-hb").is_some());
        root.stop_and_wait(None, Some(Duration::from_secs(5)))
            .await
            .unwrap();

        let orphan = HealthReport::take("heartbeat-test-root", Duration::from_secs(1)).await;
        assert!(!orphan.healthy);
        assert!(orphan.error.unwrap().contains("is not running"));
    }
}
