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
/// restart the whole process. When the tree turns unhealthy it says so in the unit's
/// status line (`systemctl status`: which actors are down), and again when it recovers.
#[derive(Debug, Default)]
pub struct WatchdogSink {
    /// Whether the last report after READY=1 was unhealthy.
    unhealthy: AtomicBool,
}

/// The status line while the tree is unhealthy.
fn unhealthy_status(report: &HealthReport) -> String {
    let down = if report.unhealthy.is_empty() {
        report
            .error
            .clone()
            .unwrap_or_else(|| "the tree cannot be read".into())
    } else {
        report.unhealthy.join(", ")
    };
    format!("unhealthy: {down} not running; the watchdog is not fed until it recovers")
}

impl HealthSink for WatchdogSink {
    fn name(&self) -> &str {
        "systemd-watchdog"
    }

    fn record<'a>(
        &'a self,
        report: &'a HealthReport,
    ) -> BoxFuture<'a, Result<(), HealthSinkError>> {
        let failed = |err: std::io::Error| HealthSinkError {
            sink: self.name().into(),
            reason: err.to_string(),
        };
        let result = if !READY.load(Ordering::Acquire) {
            Ok(())
        } else if report.healthy {
            if self.unhealthy.swap(false, Ordering::AcqRel) {
                sd_notify::notify(&[
                    NotifyState::Status("healthy again: every actor runs"),
                    NotifyState::Watchdog,
                ])
                .map_err(failed)
            } else {
                sd_notify::notify(&[NotifyState::Watchdog]).map_err(failed)
            }
        } else if !self.unhealthy.swap(true, Ordering::AcqRel) {
            let status = unhealthy_status(report);
            tracing::warn!(status = %status, "the supervision tree is unhealthy: not feeding the systemd watchdog");
            sd_notify::notify(&[NotifyState::Status(&status)]).map_err(failed)
        } else {
            Ok(())
        };
        async move { result }.boxed()
    }
}
