//! Helpers the pipeline and end-to-end benchmarks share.
#![allow(dead_code)]

use std::future::Future;
use std::process::Command;
use std::time::Duration;

/// A size from the environment, or `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs SQL through the mariadb client (batch mode, no column names).
pub fn mariadb(sql: &str) -> String {
    let out = Command::new("mariadb")
        .args(["-h", "127.0.0.1", "-u", "root", "-N", "-B", "-e", sql])
        .output()
        .expect("mariadb client");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `p` quantile of sorted durations.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `bench` on a 2-thread runtime with a database `<prefix>_<random>` of its own, which
/// is dropped afterwards even when the run panics.
pub fn with_database<F, Fut>(prefix: &str, bench: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = format!("{prefix}_{:08x}", rand::random::<u32>());
    mariadb(&format!("CREATE DATABASE {db}"));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(bench(db.clone()))
    }));
    mariadb(&format!("DROP DATABASE {db}"));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
