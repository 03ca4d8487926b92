//! systemd's notify protocol: READY=1 when the tree is up, WATCHDOG=1 while it is healthy,
//! STOPPING=1 on shutdown. Without `NOTIFY_SOCKET` every call does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actors::{HealthReport, HealthSink, HealthSinkError};
use futures::FutureExt;
use futures::future::BoxFuture;
use sd_notify::NotifyState;

/// Whether READY=1 was sent: the watchdog is petted only after it (the heartbeat's first
/// beat can come while the tree is still starting, before the daemon says it is ready).
static READY: AtomicBool = AtomicBool::new(false);

/// Tells systemd the service is ready, with a status line.
pub fn notify_ready(status: &str) {
    READY.store(true, Ordering::Release);
    if let Err(err) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]) {
        tracing::warn!(error = %err, "could not send READY=1 to systemd");
    }
}

/// Tells systemd the service is stopping.
pub fn notify_stopping() {
    if let Err(err) = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]) {
        tracing::warn!(error = %err, "could not send STOPPING=1 to systemd");
    }
}

/// The watchdog period systemd expects (`WatchdogSec`), if it set one for this process.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// A heartbeat sink that pets the systemd watchdog, only while the tree is healthy (and
/// once READY=1 was sent): a tree stuck restarting lets the watchdog fire and systemd
/// restart the whole process.
#[derive(Debug, Default)]
pub struct WatchdogSink;

impl HealthSink for WatchdogSink {
    fn name(&self) -> &str {
        "systemd-watchdog"
    }

    fn record<'a>(
        &'a self,
        report: &'a HealthReport,
    ) -> BoxFuture<'a, Result<(), HealthSinkError>> {
        let result = if report.healthy && READY.load(Ordering::Acquire) {
            sd_notify::notify(&[NotifyState::Watchdog]).map_err(|err| HealthSinkError {
                sink: self.name().into(),
                reason: err.to_string(),
            })
        } else {
            Ok(())
        };
        async move { result }.boxed()
    }
}
