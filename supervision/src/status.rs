//! The live status tree of a supervisor and its descendants.

use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::BoxFuture;
use ractor::rpc::CallResult;
use serde::{Serialize, Serializer};

use crate::supervisor::{Snapshot, SupervisorMsg, SupervisorRef};
use crate::{ChildKind, Restart, Strategy};

/// Where a child is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildState {
    /// Up and handling messages.
    Running,
    /// Down and about to be started again (possibly after a backoff delay).
    Restarting,
    /// Exited normally and not restarted (a transient or temporary child that finished, or a
    /// child stopped by its supervisor).
    Stopped,
    /// Exited abnormally and not (yet) restarted.
    Failed,
}

/// The last abnormal exit of a child.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// What went wrong (the error, panic message or "killed").
    pub reason: String,
    /// When it happened.
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
}

fn rfc3339<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*at))
}

/// One node of the status tree: a worker, or a supervisor with its children.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChildStatus {
    /// The child's name.
    pub name: String,
    /// Worker or supervisor.
    pub kind: ChildKind,
    /// Its restart type.
    pub restart: Restart,
    /// Where it is in its life.
    pub state: ChildState,
    /// How many times it has been restarted.
    pub restart_count: u32,
    /// Its last abnormal exit, if any.
    pub last_failure: Option<Failure>,
    /// Seconds since its current incarnation started; absent when it is not running.
    pub uptime_seconds: Option<f64>,
    /// The strategy, for supervisors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// The children, for supervisors whose status could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<ChildStatus>>,
}

impl ChildStatus {
    /// The first node named `name` in this tree (depth first), including this one.
    pub fn find(&self, name: &str) -> Option<&ChildStatus> {
        if self.name == name {
            return Some(self);
        }
        self.children
            .iter()
            .flatten()
            .find_map(|child| child.find(name))
    }

    /// Paths (`root/sup/child`) of the nodes that should be running but are not: restarting,
    /// or failed and not temporary.
    pub fn unhealthy(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_unhealthy(&self.name, &mut out);
        out
    }

    fn collect_unhealthy(&self, path: &str, out: &mut Vec<String>) {
        let down = match self.state {
            ChildState::Restarting => true,
            ChildState::Failed => self.restart != Restart::Temporary,
            ChildState::Running | ChildState::Stopped => false,
        };
        if down {
            out.push(path.to_string());
        }
        for child in self.children.iter().flatten() {
            child.collect_unhealthy(&format!("{path}/{}", child.name), out);
        }
    }

    /// True when no node is [`ChildStatus::unhealthy`].
    pub fn is_healthy(&self) -> bool {
        self.unhealthy().is_empty()
    }
}

/// Why a status could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StatusError {
    /// The supervisor did not answer in time (it may be busy stopping children).
    #[error("supervisor {supervisor} did not answer a status query within {timeout:?}")]
    Timeout {
        /// The supervisor asked.
        supervisor: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The supervisor is not running.
    #[error("supervisor {supervisor} is not running")]
    NotRunning {
        /// The supervisor asked.
        supervisor: String,
    },
}

/// Reads the whole status tree under `supervisor`: its children and, recursively, those of
/// nested supervisors. Each supervisor answers within `timeout`; a nested supervisor that
/// does not shows up without `children`.
pub async fn status(
    supervisor: &SupervisorRef,
    timeout: Duration,
) -> Result<ChildStatus, StatusError> {
    let name = supervisor
        .get_name()
        .unwrap_or_else(|| supervisor.get_id().to_string());
    let snapshot = match supervisor
        .call(SupervisorMsg::Snapshot, Some(timeout))
        .await
    {
        Ok(CallResult::Success(snapshot)) => snapshot,
        Ok(CallResult::Timeout) => {
            return Err(StatusError::Timeout {
                supervisor: name,
                timeout,
            });
        }
        Ok(CallResult::SenderError) | Err(_) => {
            return Err(StatusError::NotRunning { supervisor: name });
        }
    };
    Ok(expand(snapshot, timeout).await)
}

fn expand(snapshot: Snapshot, timeout: Duration) -> BoxFuture<'static, ChildStatus> {
    async move {
        let mut children = Vec::with_capacity(snapshot.children.len());
        for child in snapshot.children {
            let mut node = child.status;
            if let (ChildKind::Supervisor, Some(cell)) = (node.kind, child.cell)
                && let Ok(nested) = status(&cell.into(), timeout).await
            {
                node.strategy = nested.strategy;
                node.children = nested.children;
            }
            children.push(node);
        }
        ChildStatus {
            name: snapshot.name,
            kind: ChildKind::Supervisor,
            restart: Restart::Permanent,
            state: ChildState::Running,
            restart_count: 0,
            last_failure: None,
            uptime_seconds: Some(snapshot.uptime.as_secs_f64()),
            strategy: Some(snapshot.strategy),
            children: Some(children),
        }
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, state: ChildState, restart: Restart) -> ChildStatus {
        ChildStatus {
            name: name.into(),
            kind: ChildKind::Worker,
            restart,
            state,
            restart_count: 0,
            last_failure: None,
            uptime_seconds: None,
            strategy: None,
            children: None,
        }
    }

    #[test]
    fn unhealthy_lists_paths_of_down_children_only() {
        let mut inner = node("inner", ChildState::Running, Restart::Permanent);
        inner.kind = ChildKind::Supervisor;
        inner.children = Some(vec![
            node("a", ChildState::Restarting, Restart::Permanent),
            node("b", ChildState::Stopped, Restart::Transient),
            node("c", ChildState::Failed, Restart::Temporary),
        ]);
        let mut root = node("root", ChildState::Running, Restart::Permanent);
        root.children = Some(vec![
            inner,
            node("d", ChildState::Failed, Restart::Permanent),
        ]);
        assert_eq!(root.unhealthy(), vec!["root/inner/a", "root/d"]);
        assert!(!root.is_healthy());
        assert_eq!(root.find("c").map(|c| c.state), Some(ChildState::Failed));
        assert!(root.find("zzz").is_none());
    }

    #[test]
    fn serializes_failure_time_as_rfc3339() {
        let mut n = node("w", ChildState::Running, Restart::Permanent);
        n.last_failure = Some(Failure {
            reason: "boom".into(),
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1500),
        });
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(json["last_failure"]["at"], "1970-01-01T00:00:01.500Z");
        assert_eq!(json["state"], "running");
        assert!(json.get("children").is_none());
    }
}
