//! `database_connections{state="wait"}`: the tasks waiting for a pooled connection right
//! now. Every transaction of either store begins through [`waiting`], and so do the shared
//! statements and the email workers' grouped reads and writes; only the health ping and the
//! relay's occasional sweep and prune take a connection uncounted.

use std::future::Future;
use std::sync::{LazyLock, Mutex};

use actors::instruments::Gauge;

/// The count, and its series: each change is recorded under the lock, so the last value
/// recorded is the count.
static WAITING: LazyLock<Mutex<(i64, Gauge<i64>)>> = LazyLock::new(|| {
    Mutex::new((
        0,
        crate::metrics::metrics()
            .database_connections
            .with_label_values(&["wait"]),
    ))
});

fn moved(by: i64) {
    if let Ok(mut waiting) = WAITING.lock() {
        waiting.0 += by;
        waiting.1.set(waiting.0);
    }
}

/// Counted while it lives (and uncounted when dropped: a caller that gives up waiting, or
/// is cancelled, leaves the count).
struct Waiting;

impl Waiting {
    fn start() -> Self {
        moved(1);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        moved(-1);
    }
}

/// Awaits `acquire` (a pool's `acquire()` or `begin()`), counted as waiting meanwhile.
pub(crate) async fn waiting<T>(acquire: impl Future<Output = T>) -> T {
    let _counted = Waiting::start();
    acquire.await
}
