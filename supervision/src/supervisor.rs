//! The supervisor actor.
//!
//! Messages: [`SupervisorMsg::Snapshot`] (its children's status, answered at once),
//! [`SupervisorMsg::RestartChild`] (an operator's restart), and an internal timer message
//! for delayed restarts. Child exits arrive as ractor supervision events.
//!
//! Failure behaviour: an expected child exit is data (a restart, a stopped child). The
//! supervisor itself fails only when its restart intensity is exceeded; it then stops its
//! children in reverse order first, so its parent sees one failure and decides. When it is
//! stopped, it stops its children in reverse order, each within its shutdown timeout, and
//! restarts nothing while doing so.
//!
//! ractor kills the linked children of an actor that terminates; doing the ordered, timed
//! stop ourselves (in `post_stop`, and before failing) is what gives OTP's shutdown order.

use std::time::{Duration, SystemTime};

// The tokio clock: the same as the system's monotonic clock in a running daemon, and the
// paused clock of tests, so uptimes and the intensity window follow it there too.
use tokio::time::Instant;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RactorErr, RpcReplyPort,
    SupervisionEvent,
};

use crate::intensity::RestartWindow;
use crate::spec::Starter;
use crate::{
    Backoff, ChildKind, ChildSpec, ChildState, ChildStatus, EventHandler, Failure, Intensity,
    Restart, Strategy, SupervisorEvent, SupervisorSpec,
};

/// A reference to a running supervisor.
pub type SupervisorRef = ActorRef<SupervisorMsg>;

/// How long to wait for a child to die after it was killed.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Why a supervisor failed or refused a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SupervisorError {
    /// Too many restarts in the intensity window: the supervisor stopped its children and
    /// failed, escalating to its parent.
    #[error(
        "supervisor {supervisor} gave up: more than {max_restarts} restarts within {period:?}; last failure was {child}"
    )]
    IntensityExceeded {
        /// The supervisor.
        supervisor: String,
        /// The child whose failure was one too many.
        child: String,
        /// The intensity's limit.
        max_restarts: u32,
        /// The intensity's window.
        period: Duration,
    },
    /// Two children share a name.
    #[error("supervisor {supervisor} has two children named {child:?}; child names must be unique")]
    DuplicateChild {
        /// The supervisor.
        supervisor: String,
        /// The repeated name.
        child: String,
    },
    /// A child could not be started.
    #[error("supervisor {supervisor} could not start child {child}: {reason}")]
    StartFailed {
        /// The supervisor.
        supervisor: String,
        /// The child.
        child: String,
        /// The start function's error.
        reason: String,
    },
    /// No child has that name.
    #[error("supervisor {supervisor} has no child named {child:?}")]
    UnknownChild {
        /// The supervisor.
        supervisor: String,
        /// The name asked for.
        child: String,
    },
}

/// A supervisor's own view of its children, as returned by [`SupervisorMsg::Snapshot`].
/// Use [`crate::status`] to get the whole tree.
#[derive(Debug)]
pub struct Snapshot {
    /// The supervisor's name.
    pub name: String,
    /// Its strategy.
    pub strategy: Strategy,
    /// How long it has been running.
    pub uptime: Duration,
    /// Its children in start order.
    pub children: Vec<ChildSnapshot>,
}

/// One child in a [`Snapshot`].
#[derive(Debug)]
pub struct ChildSnapshot {
    /// The child's status (without grandchildren).
    pub status: ChildStatus,
    /// The child's current incarnation, when running.
    pub cell: Option<ActorCell>,
}

/// Messages a supervisor handles.
pub enum SupervisorMsg {
    /// Its children's status, answered without waiting on any child.
    Snapshot(RpcReplyPort<Snapshot>),
    /// Stops the named child (and, per the strategy, its dependants) and starts it again.
    /// Counts as a restart of the child but not against the intensity.
    RestartChild(String, RpcReplyPort<Result<(), SupervisorError>>),
    /// A delayed restart is due (sent by the supervisor to itself).
    #[doc(hidden)]
    RestartDue(u64),
}

/// The supervisor actor; start it with [`Supervisor::start`] or as a child with
/// [`ChildSpec::supervisor`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Supervisor;

impl Supervisor {
    /// Starts a top-level supervisor and all its children, in order. Fails (after stopping
    /// the children already started) when a child cannot start.
    pub async fn start(
        spec: SupervisorSpec,
    ) -> Result<(SupervisorRef, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
        let name = spec.register.then(|| spec.name.clone());
        Actor::spawn(name, Supervisor, spec).await
    }

    /// Starts a supervisor linked to `parent`.
    pub async fn start_linked(
        spec: SupervisorSpec,
        parent: ActorCell,
    ) -> Result<(SupervisorRef, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
        let name = spec.register.then(|| spec.name.clone());
        Actor::spawn_linked(name, Supervisor, spec, parent).await
    }
}

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    state: ChildState,
    restart_count: u32,
    started_once: bool,
    last_failure: Option<Failure>,
    up_since: Option<Instant>,
    backoff_attempt: u32,
    pending: Option<u64>,
}

/// A supervisor's state: its configuration and its children's records.
pub struct SupervisorState {
    name: String,
    strategy: Strategy,
    intensity: Intensity,
    backoff: Option<Backoff>,
    events: Option<EventHandler>,
    started_at: Instant,
    children: Vec<Child>,
    window: RestartWindow,
    next_token: u64,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorSpec;

    async fn pre_start(
        &self,
        myself: SupervisorRef,
        spec: SupervisorSpec,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState::new(spec)?;
        for idx in 0..state.children.len() {
            if let Err(reason) = state.start_child(&myself, idx).await {
                let child = state.children[idx].spec.name.clone();
                let all: Vec<usize> = (0..state.children.len()).collect();
                state.stop_children(&all).await;
                return Err(SupervisorError::StartFailed {
                    supervisor: state.name.clone(),
                    child,
                    reason,
                }
                .into());
            }
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: SupervisorRef,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let all: Vec<usize> = (0..state.children.len()).collect();
        state.stop_children(&all).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: SupervisorRef,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Snapshot(reply) => {
                // The caller may have given up waiting; nothing to do then.
                let _ = reply.send(state.snapshot());
            }
            SupervisorMsg::RestartChild(name, reply) => {
                let (answer, escalate) = state.operator_restart(&myself, &name).await;
                let _ = reply.send(answer);
                escalate?;
            }
            SupervisorMsg::RestartDue(token) => state.restart_due(&myself, token).await?,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: SupervisorRef,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (id, abnormal, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                (cell.get_id(), true, Some(err.to_string()))
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                // A kill (or a cancelled task) is not a clean exit, as in OTP.
                let abnormal = matches!(
                    reason.as_deref(),
                    Some("killed") | Some("actor_task_cancelled")
                );
                (cell.get_id(), abnormal, reason)
            }
            _ => return Ok(()),
        };
        // Exits of children we stopped ourselves, or of earlier incarnations, match nothing.
        let Some(idx) = state.index_of(id) else {
            return Ok(());
        };
        state.child_down(&myself, idx, abnormal, reason).await?;
        Ok(())
    }
}

impl SupervisorState {
    fn new(spec: SupervisorSpec) -> Result<Self, SupervisorError> {
        let mut seen = std::collections::HashSet::new();
        for child in &spec.children {
            if !seen.insert(child.name.as_str()) {
                return Err(SupervisorError::DuplicateChild {
                    supervisor: spec.name.clone(),
                    child: child.name.clone(),
                });
            }
        }
        Ok(Self {
            name: spec.name,
            strategy: spec.strategy,
            intensity: spec.intensity,
            backoff: spec.backoff,
            events: spec.events,
            started_at: Instant::now(),
            children: spec
                .children
                .into_iter()
                .map(|spec| Child {
                    spec,
                    cell: None,
                    state: ChildState::Stopped,
                    restart_count: 0,
                    started_once: false,
                    last_failure: None,
                    up_since: None,
                    backoff_attempt: 0,
                    pending: None,
                })
                .collect(),
            window: RestartWindow::default(),
            next_token: 0,
        })
    }

    fn emit(&self, event: SupervisorEvent) {
        match &event {
            SupervisorEvent::ChildStarted {
                supervisor,
                child,
                restart_count,
            } => tracing::debug!(supervisor, child, restart_count, "child started"),
            SupervisorEvent::ChildExited {
                supervisor,
                child,
                reason,
            } => tracing::info!(
                supervisor,
                child,
                reason = reason.as_deref(),
                "child exited"
            ),
            SupervisorEvent::ChildFailed {
                supervisor,
                child,
                reason,
            } => tracing::warn!(supervisor, child, reason, "child failed"),
            SupervisorEvent::ChildRestartScheduled {
                supervisor,
                child,
                delay,
            } => tracing::info!(
                supervisor,
                child,
                delay_ms = delay.as_millis() as u64,
                "child restart delayed"
            ),
            SupervisorEvent::ChildStartFailed {
                supervisor,
                child,
                reason,
            } => tracing::warn!(supervisor, child, reason, "child failed to start"),
            SupervisorEvent::ChildKilled {
                supervisor,
                child,
                timeout,
            } => tracing::warn!(
                supervisor,
                child,
                timeout_ms = timeout.as_millis() as u64,
                "child overran its shutdown timeout and was killed"
            ),
            SupervisorEvent::GaveUp {
                supervisor,
                child,
                restarts,
                period,
            } => tracing::error!(
                supervisor,
                child,
                restarts,
                period_ms = period.as_millis() as u64,
                "restart intensity exceeded; supervisor gives up"
            ),
        }
        if let Some(handler) = &self.events {
            handler.emit(&event);
        }
    }

    fn index_of(&self, id: ActorId) -> Option<usize> {
        self.children
            .iter()
            .position(|c| c.cell.as_ref().is_some_and(|cell| cell.get_id() == id))
    }

    fn snapshot(&self) -> Snapshot {
        let now = Instant::now();
        Snapshot {
            name: self.name.clone(),
            strategy: self.strategy,
            uptime: now.duration_since(self.started_at),
            children: self
                .children
                .iter()
                .map(|c| ChildSnapshot {
                    status: ChildStatus {
                        name: c.spec.name.clone(),
                        kind: c.spec.kind(),
                        restart: c.spec.restart,
                        state: c.state,
                        restart_count: c.restart_count,
                        last_failure: c.last_failure.clone(),
                        uptime_seconds: c.up_since.map(|t| now.duration_since(t).as_secs_f64()),
                        strategy: None,
                        children: None,
                    },
                    cell: c.cell.clone(),
                })
                .collect(),
        }
    }

    /// Starts child `idx`; on error returns the reason and leaves the child marked failed.
    async fn start_child(&mut self, myself: &SupervisorRef, idx: usize) -> Result<(), String> {
        let started = match &self.children[idx].spec.starter {
            Starter::Worker(start) => start(myself.get_cell()).await,
            Starter::Supervisor(spec) => {
                let mut spec = (**spec).clone();
                if spec.events.is_none() {
                    spec.events = self.events.clone();
                }
                Supervisor::start_linked(spec, myself.get_cell())
                    .await
                    .map(|(actor, _)| actor.get_cell())
            }
        };
        let child = &mut self.children[idx];
        child.pending = None;
        match started {
            Ok(cell) => {
                child.cell = Some(cell);
                child.state = ChildState::Running;
                child.up_since = Some(Instant::now());
                if child.started_once {
                    child.restart_count += 1;
                }
                child.started_once = true;
                let event = SupervisorEvent::ChildStarted {
                    supervisor: self.name.clone(),
                    child: child.spec.name.clone(),
                    restart_count: child.restart_count,
                };
                self.emit(event);
                Ok(())
            }
            Err(err) => {
                let reason = err.to_string();
                child.state = ChildState::Failed;
                child.last_failure = Some(Failure {
                    reason: reason.clone(),
                    at: SystemTime::now(),
                });
                let event = SupervisorEvent::ChildStartFailed {
                    supervisor: self.name.clone(),
                    child: child.spec.name.clone(),
                    reason: reason.clone(),
                };
                self.emit(event);
                Err(reason)
            }
        }
    }

    /// Stops the given children in the given order, each within its shutdown timeout.
    async fn stop_children(&mut self, order: &[usize]) {
        for &idx in order.iter().rev() {
            self.stop_child(idx).await;
        }
    }

    async fn stop_child(&mut self, idx: usize) {
        let child = &mut self.children[idx];
        child.pending = None;
        child.up_since = None;
        let Some(cell) = child.cell.take() else {
            if child.state == ChildState::Restarting {
                child.state = ChildState::Stopped;
            }
            return;
        };
        child.state = ChildState::Stopped;
        let shutdown = child.spec.shutdown.as_timeout();
        let name = child.spec.name.clone();
        // Any other outcome means the child is gone (stopped, or already dead).
        if let Err(RactorErr::Timeout) = cell.stop_and_wait(Some("shutdown".into()), shutdown).await
        {
            self.emit(SupervisorEvent::ChildKilled {
                supervisor: self.name.clone(),
                child: name,
                timeout: shutdown.unwrap_or_default(),
            });
            if cell.kill_and_wait(Some(KILL_WAIT)).await.is_err() {
                tracing::error!(supervisor = %self.name, child = %cell.get_id(), "child did not die after kill");
            }
        }
    }

    async fn child_down(
        &mut self,
        myself: &SupervisorRef,
        idx: usize,
        abnormal: bool,
        reason: Option<String>,
    ) -> Result<(), SupervisorError> {
        let now = Instant::now();
        let child = &mut self.children[idx];
        child.cell = None;
        let uptime = child.up_since.take().map(|t| now.duration_since(t));
        let name = child.spec.name.clone();
        let event = if abnormal {
            let reason = reason.unwrap_or_else(|| "unknown".into());
            child.state = ChildState::Failed;
            child.last_failure = Some(Failure {
                reason: reason.clone(),
                at: SystemTime::now(),
            });
            SupervisorEvent::ChildFailed {
                supervisor: self.name.clone(),
                child: name,
                reason,
            }
        } else {
            child.state = ChildState::Stopped;
            SupervisorEvent::ChildExited {
                supervisor: self.name.clone(),
                child: name,
                reason,
            }
        };
        if let (Some(backoff), Some(uptime)) = (&self.backoff, uptime)
            && uptime >= backoff.reset_after
        {
            // A stable run: restarted at once again, and its earlier restarts forgiven.
            child.backoff_attempt = 0;
            self.window.forget(idx);
        }
        let restart = match child.spec.restart {
            Restart::Permanent => true,
            Restart::Transient => abnormal,
            Restart::Temporary => false,
        };
        self.emit(event);
        if restart {
            self.restart_from(myself, idx).await
        } else {
            Ok(())
        }
    }

    /// The children restarted together with child `idx`, in start order.
    fn plan(&self, idx: usize) -> Vec<usize> {
        match self.strategy {
            Strategy::OneForOne => vec![idx],
            Strategy::OneForAll => (0..self.children.len()).collect(),
            Strategy::RestForOne => (idx..self.children.len()).collect(),
        }
    }

    /// Restarts child `failed` (and its siblings per the strategy), counting against the
    /// intensity; repeats while restarts fail to start.
    async fn restart_from(
        &mut self,
        myself: &SupervisorRef,
        mut failed: usize,
    ) -> Result<(), SupervisorError> {
        loop {
            if !self.window.record(&self.intensity, Instant::now(), failed) {
                return Err(self.give_up(failed).await);
            }
            let plan = self.plan(failed);
            let others: Vec<usize> = plan.iter().copied().filter(|&i| i != failed).collect();
            self.stop_children(&others).await;
            let restartable: Vec<usize> = plan
                .into_iter()
                .filter(|&i| self.children[i].spec.restart != Restart::Temporary)
                .collect();
            for &i in &restartable {
                self.children[i].state = ChildState::Restarting;
            }
            if let Some(delay) = self.next_delay(failed) {
                self.next_token += 1;
                let token = self.next_token;
                for &i in &restartable {
                    self.children[i].pending = Some(token);
                }
                self.emit(SupervisorEvent::ChildRestartScheduled {
                    supervisor: self.name.clone(),
                    child: self.children[failed].spec.name.clone(),
                    delay,
                });
                myself.send_after(delay, move || SupervisorMsg::RestartDue(token));
                return Ok(());
            }
            match self.start_all(myself, &restartable).await {
                Ok(()) => return Ok(()),
                Err(idx) => failed = idx,
            }
        }
    }

    fn next_delay(&mut self, idx: usize) -> Option<Duration> {
        let backoff = self.backoff?;
        let child = &mut self.children[idx];
        let attempt = child.backoff_attempt;
        child.backoff_attempt = attempt.saturating_add(1);
        // As in OTP, a child that fails after a stable run is restarted at once; only a
        // child that fails again before `reset_after` waits, so a crash loop slows down.
        let delay = backoff.delay_random(attempt.checked_sub(1)?);
        (!delay.is_zero()).then_some(delay)
    }

    /// Starts the listed children that are not running, in order; returns the first that
    /// failed to start.
    async fn start_all(&mut self, myself: &SupervisorRef, order: &[usize]) -> Result<(), usize> {
        for &idx in order {
            if self.children[idx].cell.is_none() && self.start_child(myself, idx).await.is_err() {
                return Err(idx);
            }
        }
        Ok(())
    }

    async fn restart_due(
        &mut self,
        myself: &SupervisorRef,
        token: u64,
    ) -> Result<(), SupervisorError> {
        let due: Vec<usize> = (0..self.children.len())
            .filter(|&i| self.children[i].pending == Some(token))
            .collect();
        match self.start_all(myself, &due).await {
            Ok(()) => Ok(()),
            Err(idx) => self.restart_from(myself, idx).await,
        }
    }

    /// An operator's restart: the answer for the operator, and an error that must fail the
    /// supervisor (when the new incarnation's failures exceed the intensity).
    async fn operator_restart(
        &mut self,
        myself: &SupervisorRef,
        name: &str,
    ) -> (Result<(), SupervisorError>, Result<(), SupervisorError>) {
        let Some(idx) = self.children.iter().position(|c| c.spec.name == name) else {
            let err = SupervisorError::UnknownChild {
                supervisor: self.name.clone(),
                child: name.to_string(),
            };
            return (Err(err), Ok(()));
        };
        let plan = self.plan(idx);
        self.stop_children(&plan).await;
        let restartable: Vec<usize> = plan
            .into_iter()
            .filter(|&i| i == idx || self.children[i].spec.restart != Restart::Temporary)
            .collect();
        match self.start_all(myself, &restartable).await {
            Ok(()) => (Ok(()), Ok(())),
            Err(failed) => {
                let child = &self.children[failed];
                let answer = Err(SupervisorError::StartFailed {
                    supervisor: self.name.clone(),
                    child: child.spec.name.clone(),
                    reason: child
                        .last_failure
                        .as_ref()
                        .map(|f| f.reason.clone())
                        .unwrap_or_default(),
                });
                (answer, self.restart_from(myself, failed).await)
            }
        }
    }

    async fn give_up(&mut self, failed: usize) -> SupervisorError {
        let all: Vec<usize> = (0..self.children.len()).collect();
        self.stop_children(&all).await;
        let child = self.children[failed].spec.name.clone();
        self.emit(SupervisorEvent::GaveUp {
            supervisor: self.name.clone(),
            child: child.clone(),
            restarts: self.window.len() as u32,
            period: self.intensity.period,
        });
        SupervisorError::IntensityExceeded {
            supervisor: self.name.clone(),
            child,
            max_restarts: self.intensity.max_restarts,
            period: self.intensity.period,
        }
    }
}

impl ChildSpec {
    /// Whether this child is a nested supervisor.
    pub fn is_supervisor(&self) -> bool {
        self.kind() == ChildKind::Supervisor
    }
}
