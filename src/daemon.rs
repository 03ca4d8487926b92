//! Start-up and the shutdown procedure of `primed run`.
//!
//! [`run`] reads as its three steps. Start-up: data directory → admin token → backends
//! (`backends.rs`) → bind the HTTP socket → each child's arguments (`wiring.rs`) → start the
//! tree (`tree.rs`) → ready (READY=1). Shutdown on SIGTERM/SIGINT, with one deadline for the whole procedure:
//! not ready (`/ready` answers 503, STOPPING=1) → stop the tree in reverse start order
//! (HTTP intake first; each child within its own shutdown timeout, killed past it) → exit 0.
//! Past the deadline what is left is killed and the exit code is 1. If the root supervisor
//! gives up on its own, the process exits 1 so that systemd restarts it.

use std::path::PathBuf;
use std::time::Duration;

use supervision::Supervisor;
use tokio::signal::unix::{SignalKind, signal};

use crate::adapters::systemd;
use crate::config::Config;
use crate::http::{AppState, admin};
use crate::tree::{self};

/// Why the daemon could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The data directory cannot be created.
    #[error(
        "cannot create the data directory {path}: {source}; set PRIMED_DATA_DIR to a writable directory"
    )]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The admin token file cannot be read or written.
    #[error(
        "cannot read or create the admin token {path}: {source}; set ADMIN_API_KEYS or fix the file's permissions"
    )]
    AdminToken {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP address cannot be bound.
    #[error(
        "cannot listen on {addr}: {source}; is another process using it? Set PRIMED_HTTP_ADDR to a free address"
    )]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A configured backend (MySQL, NATS) cannot be reached or set up.
    #[error(transparent)]
    Backend(#[from] crate::backends::BackendError),
    /// Signal handlers cannot be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The tree did not start.
    #[error("the supervision tree did not start: {0}")]
    TreeStart(String),
    /// The root supervisor gave up (restart intensity exceeded).
    #[error(
        "the supervision tree gave up after too many restarts; see the log for the failing actor"
    )]
    TreeGaveUp,
    /// The shutdown did not finish within its deadline.
    #[error("shutdown did not finish within {0:?}; what was left was killed")]
    ShutdownOverran(Duration),
}

impl DaemonError {
    /// The process exit code for this error (sysexits.h where one fits).
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::DataDir { .. } | DaemonError::AdminToken { .. } => 73, // EX_CANTCREAT
            DaemonError::Bind { .. } | DaemonError::Backend(_) => 69,           // EX_UNAVAILABLE
            DaemonError::Signals(_) => 71,                                      // EX_OSERR
            DaemonError::TreeStart(_)
            | DaemonError::TreeGaveUp
            | DaemonError::ShutdownOverran(_) => 1,
        }
    }
}

/// Creates `dir` (and its missing parents) readable by this user only (0700): it holds the
/// embedded database, the emails and the admin token. An existing directory keeps its mode
/// (the operator chose it), with a warning when other users can read it.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %dir.display(),
            mode = format!("{mode:o}"),
            "the data directory is open to other users (it holds the database, the emails and the admin token); run `chmod 700` on it"
        );
    }
    Ok(())
}

/// Runs the daemon until a signal or a fatal failure of the tree: start, wait, ordered stop.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let mut running = start(&config).await?;
    let signal = running.wait().await?;
    running.stop(signal, config.shutdown_timeout).await
}

/// A started daemon: its tree, its HTTP state and the signals it waits for.
struct Running {
    root: supervision::SupervisorRef,
    root_done: tokio::task::JoinHandle<()>,
    app: AppState,
    shutdown: tokio::sync::watch::Sender<bool>,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

/// Data directory → admin token → backends → bind the HTTP socket → wire the children →
/// start the tree → ready (READY=1).
async fn start(config: &Config) -> Result<Running, DaemonError> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    create_private_dir(&config.data_dir).map_err(|source| DaemonError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let admin_keys = if config.admin_api_keys.is_empty() {
        let (token, path) = admin::load_or_create_token(&config.data_dir).map_err(|source| {
            DaemonError::AdminToken {
                path: config.data_dir.join("admin-token"),
                source,
            }
        })?;
        tracing::info!(path = %path.display(), "ADMIN_API_KEYS is not set: the admin API accepts the token in this file");
        vec![token]
    } else {
        config.admin_api_keys.clone()
    };

    let backends = crate::backends::open(config).await?;

    let listener =
        std::net::TcpListener::bind(config.http_addr).map_err(|source| DaemonError::Bind {
            addr: config.http_addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: config.http_addr,
        source,
    })?;

    let terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;

    let wired = crate::wiring::wire(config, &backends, admin_keys, listener, addr.port()).await?;
    let (root, root_done) = Supervisor::start(tree::root(&wired.deps))
        .await
        .map_err(|e| DaemonError::TreeStart(e.to_string()))?;

    wired.app.set_ready(true);
    tracing::info!(addr = %addr, version = env!("CARGO_PKG_VERSION"), mode = mode(config), "primed is listening");
    systemd::notify_ready(&format!("serving on {addr}"));
    Ok(Running {
        root,
        root_done,
        app: wired.app,
        shutdown: wired.shutdown,
        terminate,
        interrupt,
    })
}

impl Running {
    /// Waits for SIGTERM or SIGINT (its name); an error if the root supervisor gave up.
    async fn wait(&mut self) -> Result<&'static str, DaemonError> {
        // Each branch only waits; none holds state that cancellation could lose.
        tokio::select! {
            _ = self.terminate.recv() => Ok("SIGTERM"),
            _ = self.interrupt.recv() => Ok("SIGINT"),
            _ = &mut self.root_done => {
                self.app.set_ready(false);
                Err(DaemonError::TreeGaveUp)
            }
        }
    }

    /// Not ready (STOPPING=1) → workers release what they hold → the tree stops in reverse
    /// start order, all within `deadline`; past it what is left is killed.
    async fn stop(self, signal: &'static str, deadline: Duration) -> Result<(), DaemonError> {
        tracing::info!(
            signal,
            deadline_ms = deadline.as_millis() as u64,
            "shutting down"
        );
        self.app.set_ready(false);
        systemd::notify_stopping();
        // Workers release the messages they hold instead of waiting for a dependency.
        let _ = self.shutdown.send(true);
        match self
            .root
            .stop_and_wait(Some("shutdown".into()), Some(deadline))
            .await
        {
            Ok(()) => {
                tracing::info!("primed stopped");
                Ok(())
            }
            Err(_) => {
                self.root.kill();
                Err(DaemonError::ShutdownOverran(deadline))
            }
        }
    }
}

fn mode(config: &Config) -> &'static str {
    use crate::config::{BrokerConfig, StoreConfig};
    match (&config.store, &config.broker) {
        (StoreConfig::Embedded, BrokerConfig::Embedded) => "embedded",
        (StoreConfig::Mysql { .. }, BrokerConfig::Nats { .. }) => "production",
        _ => "mixed",
    }
}
