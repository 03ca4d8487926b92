//! `database_connections{state="wait"}`: the tasks waiting for a pooled connection right
//! now. Every transaction of either store begins through [`waiting`], and so do the shared
//! statements and the email workers' grouped reads and writes; only the health ping and the
//! relay's occasional sweep and prune take a connection uncounted.

use std::future::Future;
use std::sync::LazyLock;

use prometheus::IntGauge;

static WAITING: LazyLock<IntGauge> = LazyLock::new(|| {
    crate::metrics::metrics()
        .database_connections
        .with_label_values(&["wait"])
});

/// Counted while it lives (and uncounted when dropped: a caller that gives up waiting, or
/// is cancelled, leaves the count).
struct Waiting;

impl Waiting {
    fn start() -> Self {
        WAITING.inc();
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.dec();
    }
}

/// Awaits `acquire` (a pool's `acquire()` or `begin()`), counted as waiting meanwhile.
pub(crate) async fn waiting<T>(acquire: impl Future<Output = T>) -> T {
    let _counted = Waiting::start();
    acquire.await
}
