//! What a chaos run is asked to do (its [`Options`] and [`Profile`]s), the settings every
//! part of the run shares, and the [`ChaosError`] that stops a run before it can vouch.

use std::path::PathBuf;
use std::time::Duration;

use super::services::ServiceError;

/// The admin token the daemons are started with.
pub(super) const ADMIN_TOKEN: &str = "chaos-harness-admin-token";

/// The consumers' ack wait in the daemons; a paused daemon stays stopped longer.
pub(super) const ACK_WAIT: Duration = Duration::from_secs(3);

/// How long a fault may take to heal before the run counts it as not recovered.
pub(super) const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// SMTP sends each daemon has in flight at most (`PRIMED_SMTP_CONCURRENCY`): the most emails
/// one daemon's fault can catch between the SMTP server's acceptance and their record.
pub(super) const SMTP_SENDS_IN_FLIGHT: usize = 8;

/// How long a daemon may take to stop on SIGTERM (its own deadline is 30 s).
pub(super) const SHUTDOWN_WAIT: Duration = Duration::from_secs(40);

/// The database the daemons share.
pub(super) const DATABASE: &str = "chaos";

/// A run's size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Its name.
    pub name: &'static str,
    /// Faults injected.
    pub faults: usize,
    /// Requests per second of the steady load.
    pub rate: f64,
    /// How long the drain may take.
    pub drain: Duration,
}

/// About two minutes: every fault class once and a few more (CI runs it).
pub const SHORT: Profile = Profile {
    name: "short",
    faults: 14,
    rate: 10.0,
    drain: Duration::from_secs(120),
};

/// Sixty faults under a heavier load (the README's long run).
pub const LONG: Profile = Profile {
    name: "long",
    faults: 60,
    rate: 25.0,
    drain: Duration::from_secs(300),
};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The size.
    pub profile: Profile,
    /// The schedule's seed.
    pub seed: u64,
    /// Daemons to run.
    pub daemons: usize,
    /// Three NATS nodes as one JetStream cluster with R3 streams.
    pub cluster: bool,
    /// The `primed` binary.
    pub primed: PathBuf,
    /// Where services and daemons keep their data and logs.
    pub work_dir: PathBuf,
}

/// The run could not be carried out (as opposed to: it ran and found violations).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// A service or daemon could not be started.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// Something else in the setup.
    #[error("{0}")]
    Setup(String),
}

pub(super) fn setup(what: &str) -> impl Fn(String) -> ChaosError + '_ {
    move |e| ChaosError::Setup(format!("{what}: {e}"))
}
