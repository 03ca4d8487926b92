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

/// The port of the MySQL-protocol server on 127.0.0.1 the benches use (`BENCH_MYSQL_PORT`;
/// the local MariaDB's 3306 unless set, e.g. to a MySQL server's).
pub fn db_port() -> u16 {
    env_count("BENCH_MYSQL_PORT", 3306) as u16
}

/// `mysql://root@127.0.0.1:<port>/<db>`.
pub fn db_url(db: &str) -> String {
    format!("mysql://root@127.0.0.1:{}/{db}", db_port())
}

/// Creates `<db>.numbers (seq)` = 1..=`max` rounded up to a power of ten,
/// with plain SQL that MariaDB and MySQL both run (MariaDB's `seq_1_to_N` tables are
/// MariaDB's own).
pub fn numbers(db: &str, max: usize) {
    let digits = "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
                  UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 \
                  UNION ALL SELECT 8 UNION ALL SELECT 9)";
    let mut places = 1;
    while 10usize.pow(places as u32) < max {
        places += 1;
    }
    let tables: Vec<String> = (0..places).map(|i| format!("{digits} p{i}")).collect();
    let value: Vec<String> = (0..places)
        .map(|i| format!("p{i}.d * {}", 10usize.pow(i as u32)))
        .collect();
    mariadb(&format!(
        "CREATE TABLE {db}.numbers (seq INT NOT NULL PRIMARY KEY); \
         INSERT INTO {db}.numbers (seq) SELECT {} + 1 FROM {}",
        value.join(" + "),
        tables.join(", ")
    ));
}

/// Runs SQL through the mariadb client (batch mode, no column names).
pub fn mariadb(sql: &str) -> String {
    let out = Command::new("mariadb")
        .args(["-h", "127.0.0.1", "-u", "root", "-N", "-B", "-P"])
        .arg(db_port().to_string())
        .args(["-e", sql])
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
