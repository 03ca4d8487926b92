//! OTP-style supervisors on [`ractor`].
//!
//! A [`Supervisor`] owns an ordered list of [`ChildSpec`]s and keeps them running:
//!
//! - restart types [`Restart::Permanent`] (always restarted), [`Restart::Transient`] (restarted
//!   only after an abnormal exit) and [`Restart::Temporary`] (never restarted);
//! - strategies [`Strategy::OneForOne`], [`Strategy::OneForAll`] and [`Strategy::RestForOne`];
//! - restart intensity ([`Intensity`]): more than `max_restarts` restarts within `period` makes
//!   the supervisor stop its children and fail, so the failure escalates to its own supervisor;
//! - an optional restart [`Backoff`] (exponential, capped, jittered, reset after a stable
//!   period), so a child whose dependency is down does not spin;
//! - a live status tree ([`status`]) and [`SupervisorEvent`]s for logs and metrics.
//!
//! Children start in order and stop in reverse order, each within its [`Shutdown`] timeout; a
//! child that overruns it is killed. A panic inside a child's handler is an abnormal exit.
//!
//! The crate knows nothing about the application it supervises. A restarted child is a new
//! actor with a new reference: peers should reach children by registered name
//! ([`ractor::registry::where_is`]), never through a reference captured at start.
//!
//! ```no_run
//! use std::time::Duration;
//! use supervision::{ChildSpec, Restart, Strategy, Supervisor, SupervisorSpec};
//! # use ractor::{Actor, ActorProcessingErr, ActorRef};
//! # #[derive(Clone)] struct Worker;
//! # impl Actor for Worker {
//! #     type Msg = (); type State = (); type Arguments = ();
//! #     async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> { Ok(()) }
//! # }
//! # async fn run() -> Result<(), ractor::SpawnErr> {
//! let spec = SupervisorSpec::new("root", Strategy::OneForOne)
//!     .intensity(3, Duration::from_secs(5))
//!     .child(ChildSpec::actor("worker", Worker, ()).restart(Restart::Permanent));
//! let (root, handle) = Supervisor::start(spec).await?;
//! let tree = supervision::status(&root, Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod backoff;
mod event;
mod intensity;
mod spec;
mod status;
mod supervisor;

pub use backoff::Backoff;
pub use event::{EventHandler, SupervisorEvent};
pub use intensity::Intensity;
pub use spec::{ChildKind, ChildSpec, Restart, Shutdown, StartFuture, Strategy, SupervisorSpec};
pub use status::{ChildState, ChildStatus, Failure, StatusError, status};
pub use supervisor::{Supervisor, SupervisorError, SupervisorMsg, SupervisorRef};
