//! What a supervisor supervises: child specs, restart types, strategies, shutdown.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, SpawnErr};
use serde::Serialize;

use crate::{Backoff, EventHandler, Intensity};

/// When a child that exited is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always restarted, whatever the exit.
    Permanent,
    /// Restarted only after an abnormal exit (error, panic, kill).
    Transient,
    /// Never restarted.
    Temporary,
}

/// Which children are restarted when one of them has to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the child that exited.
    OneForOne,
    /// All children: the others are stopped (in reverse order) and all start again in order.
    OneForAll,
    /// The child that exited and every child after it in start order.
    RestForOne,
}

/// Whether a child is a worker or a supervisor of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildKind {
    /// An actor doing work.
    Worker,
    /// A nested [`crate::Supervisor`].
    Supervisor,
}

/// How long a child is given to stop before it is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Wait this long for a graceful stop, then kill.
    Timeout(Duration),
    /// Wait as long as it takes (the default for nested supervisors, which bound their own
    /// children's shutdown).
    Infinity,
}

impl Shutdown {
    pub(crate) fn as_timeout(self) -> Option<Duration> {
        match self {
            Shutdown::Timeout(d) => Some(d),
            Shutdown::Infinity => None,
        }
    }
}

/// The future a start function returns: the started child's cell, linked to the supervisor.
pub type StartFuture = BoxFuture<'static, Result<ActorCell, SpawnErr>>;

type StartFn = Arc<dyn Fn(ActorCell) -> StartFuture + Send + Sync>;

#[derive(Clone)]
pub(crate) enum Starter {
    Worker(StartFn),
    Supervisor(Box<SupervisorSpec>),
}

/// One child of a supervisor: its name, how to start it, when to restart it and how long it
/// may take to stop.
#[derive(Clone)]
pub struct ChildSpec {
    pub(crate) name: String,
    pub(crate) restart: Restart,
    pub(crate) shutdown: Shutdown,
    pub(crate) starter: Starter,
}

impl ChildSpec {
    /// A worker started by `start`, which receives the supervisor's cell and must spawn the
    /// actor linked to it (`Actor::spawn_linked`). Permanent, 5 s shutdown by default.
    pub fn worker<F, Fut>(name: impl Into<String>, start: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        Self {
            name: name.into(),
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(Duration::from_secs(5)),
            starter: Starter::Worker(Arc::new(move |sup| start(sup).boxed())),
        }
    }

    /// A worker that runs `actor` with `args`, registered under the child's name so that
    /// peers find the current incarnation with [`ractor::registry::where_is`].
    pub fn actor<A>(name: impl Into<String>, actor: A, args: A::Arguments) -> Self
    where
        A: Actor + Clone,
        A::Arguments: Clone + Sync,
    {
        let name = name.into();
        let registered = name.clone();
        Self::worker(name, move |sup| {
            let actor = actor.clone();
            let args = args.clone();
            let registered = registered.clone();
            async move {
                let (actor_ref, _) = A::spawn_linked(Some(registered), actor, args, sup).await?;
                Ok(actor_ref.get_cell())
            }
        })
    }

    /// A nested supervisor. Permanent, and it may take as long as its own children need to
    /// stop.
    pub fn supervisor(spec: SupervisorSpec) -> Self {
        Self {
            name: spec.name.clone(),
            restart: Restart::Permanent,
            shutdown: Shutdown::Infinity,
            starter: Starter::Supervisor(Box::new(spec)),
        }
    }

    /// Sets the restart type.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Sets the shutdown timeout: after it the child is killed.
    pub fn shutdown(mut self, timeout: Duration) -> Self {
        self.shutdown = Shutdown::Timeout(timeout);
        self
    }

    /// Sets the shutdown behaviour.
    pub fn shutdown_policy(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Worker or supervisor.
    pub fn kind(&self) -> ChildKind {
        match self.starter {
            Starter::Worker(_) => ChildKind::Worker,
            Starter::Supervisor(_) => ChildKind::Supervisor,
        }
    }
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("kind", &self.kind())
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .finish()
    }
}

/// A supervisor's configuration: its name, strategy, intensity, backoff and children.
#[derive(Clone, Debug)]
pub struct SupervisorSpec {
    pub(crate) name: String,
    pub(crate) strategy: Strategy,
    pub(crate) intensity: Intensity,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) children: Vec<ChildSpec>,
    pub(crate) events: Option<EventHandler>,
    pub(crate) register: bool,
}

impl SupervisorSpec {
    /// A supervisor with no children, the default [`Intensity`] and no backoff. It registers
    /// itself under `name` (see [`SupervisorSpec::unregistered`]).
    pub fn new(name: impl Into<String>, strategy: Strategy) -> Self {
        Self {
            name: name.into(),
            strategy,
            intensity: Intensity::default(),
            backoff: None,
            children: Vec::new(),
            events: None,
            register: true,
        }
    }

    /// Sets the restart intensity.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.intensity = Intensity {
            max_restarts,
            period,
        };
        self
    }

    /// Delays restarts with `backoff`.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Appends a child; children start in the order they are added.
    pub fn child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }

    /// Appends several children.
    pub fn children(mut self, children: impl IntoIterator<Item = ChildSpec>) -> Self {
        self.children.extend(children);
        self
    }

    /// Sends every event of this supervisor (and of nested ones without their own) to `handler`.
    pub fn on_event(mut self, handler: EventHandler) -> Self {
        self.events = Some(handler);
        self
    }

    /// Does not register the supervisor's name in ractor's registry (several supervisors
    /// with the same name can then run in one process).
    pub fn unregistered(mut self) -> Self {
        self.register = false;
        self
    }

    /// The supervisor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The children, in start order.
    pub fn child_specs(&self) -> &[ChildSpec] {
        &self.children
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }
}
