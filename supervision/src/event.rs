//! Events a supervisor emits, for logs and metrics.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Something that happened to a supervisor or one of its children.
#[derive(Debug, Clone, PartialEq)]
pub enum SupervisorEvent {
    /// A child was started; `restart_count` is 0 for its first start.
    ChildStarted {
        /// The supervisor's name.
        supervisor: String,
        /// The child's name.
        child: String,
        /// How many times this child has been restarted so far.
        restart_count: u32,
    },
    /// A child exited normally (it stopped itself or was stopped).
    ChildExited {
        /// The supervisor's name.
        supervisor: String,
        /// The child's name.
        child: String,
        /// The reason it gave, if any.
        reason: Option<String>,
    },
    /// A child failed: it returned an error, panicked or was killed.
    ChildFailed {
        /// The supervisor's name.
        supervisor: String,
        /// The child's name.
        child: String,
        /// What went wrong.
        reason: String,
    },
    /// A child's restart was delayed by the backoff.
    ChildRestartScheduled {
        /// The supervisor's name.
        supervisor: String,
        /// The child's name.
        child: String,
        /// How long until the restart.
        delay: Duration,
    },
    /// A child's start function failed.
    ChildStartFailed {
        /// The supervisor's name.
        supervisor: String,
        /// The child's name.
        child: String,
        /// What went wrong.
        reason: String,
    },
    /// A child overran its shutdown timeout and was killed.
    ChildKilled {
        /// The supervisor's name.
        supervisor: String,
        /// The child's name.
        child: String,
        /// The timeout it overran.
        timeout: Duration,
    },
    /// The supervisor exceeded its restart intensity, stopped its children and failed.
    GaveUp {
        /// The supervisor's name.
        supervisor: String,
        /// The child whose failure was one too many.
        child: String,
        /// Restarts counted in the window.
        restarts: u32,
        /// The window.
        period: Duration,
    },
}

/// A callback that receives every [`SupervisorEvent`]; nested supervisors inherit their
/// parent's handler unless they have their own. It runs on the supervisor's task, so it
/// must be quick (update a metric, write a log line).
#[derive(Clone)]
pub struct EventHandler(Arc<dyn Fn(&SupervisorEvent) + Send + Sync>);

impl EventHandler {
    /// Wraps a callback.
    pub fn new(f: impl Fn(&SupervisorEvent) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub(crate) fn emit(&self, event: &SupervisorEvent) {
        (self.0)(event)
    }
}

impl fmt::Debug for EventHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventHandler")
    }
}
