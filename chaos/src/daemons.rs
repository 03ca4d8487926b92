//! The daemons under test: their environment (a production configuration pointing at the
//! services' proxies), starting one, and waiting until it is ready.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::load::Shared;
use super::options::{
    ACK_WAIT, ADMIN_TOKEN, ChaosError, DATABASE, Options, SMTP_SENDS_IN_FLIGHT, setup,
};
use super::services::{Process, free_port};

/// One daemon child process.
pub(super) struct Daemon {
    pub(super) index: usize,
    pub(super) port: u16,
    pub(super) process: Process,
}

impl Daemon {
    pub(super) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// The environment every daemon gets (besides its own data directory, port and instance
/// name): the services through their proxies, fault injection on, and settings that make
/// faults show quickly (3 s ack waits, 1 s heartbeats, a 1 s breaker cooldown).
pub(super) fn daemon_env(
    database: SocketAddr,
    nats: &[SocketAddr],
    redis: SocketAddr,
    smtp: SocketAddr,
) -> Vec<(String, String)> {
    let nats_url = nats
        .iter()
        .map(|a| format!("nats://{a}"))
        .collect::<Vec<_>>()
        .join(",");
    let replicas = nats.len();
    [
        ("RUST_LOG", "info".to_string()),
        (
            "DATABASE_URL",
            format!("mysql://root@{database}/{DATABASE}"),
        ),
        ("NATS_URL", nats_url),
        ("NATS_REPLICAS", replicas.to_string()),
        ("REDIS_HOST", "127.0.0.1".into()),
        ("REDIS_PORT", redis.port().to_string()),
        // The limiter runs (on Redis, through its proxy) but never refuses the load.
        (
            "RATE_LIMIT_POLICIES",
            "prime-check: ip 1000000/min, global 1000000/min; prime-check-list: ip 1000000/min"
                .into(),
        ),
        // Debug builds on two loaded cores miss the 5 ms default now and then, which
        // would make the limiter flap to its fallback.
        ("RATE_LIMIT_REDIS_TIMEOUT_MS", "50".into()),
        ("SMTP_HOST", "127.0.0.1".into()),
        ("SMTP_PORT", smtp.port().to_string()),
        ("SMTP_TLS", "none".into()),
        ("SMTP_FROM", "primed@example.com".into()),
        ("PRIMED_FAULT_INJECTION", "true".into()),
        ("ADMIN_API_KEYS", ADMIN_TOKEN.into()),
        ("PRIMED_PRIME_TIMEOUT_MS", "2".into()),
        (
            "PRIMED_PRIMECHECK_ACK_WAIT_SECONDS",
            ACK_WAIT.as_secs().to_string(),
        ),
        (
            "PRIMED_EMAIL_ACK_WAIT_SECONDS",
            ACK_WAIT.as_secs().to_string(),
        ),
        ("PRIMED_HEARTBEAT_INTERVAL_SECONDS", "1".into()),
        ("PRIMED_SMTP_TIMEOUT_SECONDS", "5".into()),
        ("PRIMED_SMTP_CONCURRENCY", SMTP_SENDS_IN_FLIGHT.to_string()),
        ("PRIMED_SMTP_BREAKER_COOLDOWN_SECONDS", "1".into()),
        ("PRIMED_DB_TIMEOUT_SECONDS", "3".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Starts daemon `index` (it is not ready yet).
pub(super) fn spawn_daemon(
    options: &Options,
    index: usize,
    env: &[(String, String)],
) -> Result<Daemon, ChaosError> {
    let port = free_port().map_err(|e| setup("daemon port")(e.to_string()))?;
    let dir = &options.work_dir;
    let data = dir.join(format!("daemon-{index}"));
    std::fs::create_dir_all(&data).map_err(|e| setup("daemon directory")(e.to_string()))?;
    let mut process = Process::new(
        &options.primed,
        vec!["run".into()],
        dir.join(format!("daemon-{index}.log")),
    )
    .env("PRIMED_DATA_DIR", data.display().to_string())
    .env("PRIMED_HTTP_ADDR", format!("127.0.0.1:{port}"))
    .env("PRIMED_INSTANCE", format!("chaos-{index}"));
    for (k, v) in env {
        process = process.env(k, v);
    }
    process.start()?;
    Ok(Daemon {
        index,
        port,
        process,
    })
}

/// Waits until a daemon answers `/ready`.
pub(super) async fn wait_ready(shared: &Shared, d: &mut Daemon) -> Result<(), ChaosError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = shared.http.get(d.url("/ready")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if d.process.exited() || Instant::now() > deadline {
            return Err(ChaosError::Setup(format!(
                "daemon {} did not become ready; see {}",
                d.index,
                d.process.log().display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The harness's default work directory: a fresh one under the system's temporary directory.
pub fn default_work_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "primed-chaos-{}-{}",
        std::process::id(),
        chrono::Utc::now().format("%Y%m%dT%H%M%S")
    ))
}

/// The `primed` binary next to this program.
pub fn sibling_primed() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.join("primed");
    candidate.exists().then_some(candidate).or_else(|| {
        // Test binaries live one level down, in deps/.
        let up = exe.parent()?.parent()?.join("primed");
        up.exists().then_some(up)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use primed::config::{BrokerConfig, Config, StoreConfig};

    #[test]
    fn the_daemons_environment_is_a_valid_production_configuration_with_every_key_known() {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let env = daemon_env(addr(1), &[addr(2), addr(3), addr(4)], addr(5), addr(6));
        for (name, _) in &env {
            if name != "RUST_LOG" {
                assert!(
                    primed::config::KEYS.iter().any(|k| k.name == name),
                    "{name} is not a configuration key"
                );
            }
        }
        let config = Config::load(env, None).unwrap();
        assert!(matches!(config.store, StoreConfig::Mysql { .. }));
        match config.broker {
            BrokerConfig::Nats { url, replicas, .. } => {
                assert_eq!(
                    url,
                    "nats://127.0.0.1:2,nats://127.0.0.1:3,nats://127.0.0.1:4"
                );
                assert_eq!(replicas, 3);
            }
            other => panic!("{other:?}"),
        }
        assert!(config.fault_injection);
    }
}
