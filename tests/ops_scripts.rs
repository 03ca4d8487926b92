//! The operations scripts of `scripts/ops/` (seed 000 §7.1.1 and appendix B) run against a
//! real daemon on a real MariaDB schema, Redis and NATS: the daily check, the monitoring
//! script, and the deployment's systemd path (with a `systemctl` that starts the installed
//! binary, since no systemd runs here), its backup and its roll-back.
// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use support::{Daemon, TestDb, free_addr};

fn script(name: &str, args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    support::setup::ensure();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/ops")
        .join(name);
    let out = Command::new("bash")
        .arg(path)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out, text)
}

/// A MySQL-backed daemon whose health rows are in `db`.
async fn daemon(db: &TestDb) -> Daemon {
    let d = Daemon::start(&[
        ("DATABASE_URL", db.url.as_str()),
        ("PRIMED_INSTANCE", "ops"),
        ("PRIMED_HEARTBEAT_INTERVAL_SECONDS", "1"),
    ]);
    assert_eventually!(
        db.count("SELECT COUNT(*) FROM worker_health_checks WHERE worker_name = 'ops/heartbeat'")
            == 1,
        "no heartbeat row"
    );
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_check_reads_the_real_schema_and_fails_on_what_it_finds() {
    let db = TestDb::create();
    let d = daemon(&db).await;
    let url = d.url("");
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("PRIMED_URL", url.as_str()),
        ("DISK_LIMIT", "100"),
        ("DLQ_LIMIT", "0"),
    ];
    let (out, text) = script("daily-check.sh", &[], &env);
    assert!(out.status.success(), "{text}");
    for line in [
        "ok       workers: every actor heartbeats",
        "ok       outbox: 0 events not yet published",
        "ok       DLQ: 0 pending dead letters",
        "ok       error rate: 0",
        "all checks passed",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }

    // A daemon gone silent and a pending dead letter are problems; the exit says so.
    db.sql(
        "INSERT INTO worker_health_checks (worker_name, status, last_heartbeat) VALUES ('gone/heartbeat', 'healthy', NOW(6) - INTERVAL 10 MINUTE)",
    );
    db.sql(
        "INSERT INTO dead_letter_messages (original_subject, dlq_subject, payload, error_message, error_type, original_created_at, streamed_at) \
         VALUES ('email.send', 'dlq.email.send', '{}', '550', 'permanent', NOW(6), NOW(6))",
    );
    let (out, text) = script("daily-check.sh", &[], &env);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("PROBLEM  workers down or silent for 2 minutes: gone/heartbeat"),
        "{text}"
    );
    assert!(
        text.contains("PROBLEM  DLQ: 1 pending dead letters"),
        "{text}"
    );
    assert!(text.contains("2 problem(s) found"), "{text}");

    // A database that does not answer is reported, not mistaken for an empty one.
    let (out, text) = script(
        "daily-check.sh",
        &[],
        &[
            ("MYSQL_HOST", "127.0.0.1"),
            ("MYSQL_PORT", "1"),
            ("PRIMED_URL", url.as_str()),
            ("DISK_LIMIT", "100"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("PROBLEM  DB connection failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitoring_script_shows_health_metrics_and_errors() {
    let db = TestDb::create();
    let d = daemon(&db).await;
    let url = d.url("");
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("PRIMED_URL", url.as_str()),
        ("REDIS_HOST", "127.0.0.1"),
        ("NATS_URL", "nats://127.0.0.1:4222"),
    ];
    let (out, text) = script("monitor.sh", &["health"], &env);
    for line in [
        "Database   ok",
        "Redis      PONG",
        "NATS       answers on 127.0.0.1:4222",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    assert!(text.contains("ops/heartbeat"), "{text}");
    assert!(out.status.success(), "{text}");

    let (out, text) = script("monitor.sh", &["metrics"], &env);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Outbox     0 not yet published"), "{text}");
    assert!(text.contains("Requests   "), "{text}");

    // A daemon that does not answer fails the health check.
    let gone = format!("http://{}", free_addr());
    let (out, text) = script(
        "monitor.sh",
        &["health"],
        &[
            ("PRIMED_URL", gone.as_str()),
            ("DATABASE_URL", db.url.as_str()),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("API        DOWN"), "{text}");

    // Recent errors from a log file.
    let (_dir, log) = support::temp_path("primed.log");
    std::fs::write(
        &log,
        "{\"level\":\"INFO\",\"fields\":{\"message\":\"fine\"}}\n{\"level\":\"ERROR\",\"fields\":{\"message\":\"smtp refused\"}}\n",
    )
    .unwrap();
    let (_, text) = script(
        "monitor.sh",
        &["logs"],
        &[("PRIMED_LOGS", log.to_str().unwrap())],
    );
    assert!(
        text.contains("smtp refused") && !text.contains("fine"),
        "{text}"
    );
}

/// A `systemctl` for the deployment test: `restart` stops the daemon it started last and
/// starts `$PRIMED_BIN_DIR/primed run` in the background; every call is logged.
const SYSTEMCTL: &str = r#"#!/usr/bin/env bash
echo "$*" >> "$STUB_STATE/calls"
case $1 in
  restart)
    if [ -f "$STUB_STATE/pid" ]; then kill "$(cat "$STUB_STATE/pid")" 2>/dev/null; sleep 0.5; fi
    "$PRIMED_BIN_DIR/primed" run >> "$STUB_STATE/log" 2>&1 &
    echo $! > "$STUB_STATE/pid" ;;
  status) echo "active (running)" ;;
esac
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_backs_up_installs_restarts_and_rolls_back_a_version_that_is_not_ready() {
    let db = TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let (bin, state, backups) = (
        dir.path().join("bin"),
        dir.path().join("state"),
        dir.path().join("backups"),
    );
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let systemctl = dir.path().join("systemctl");
    std::fs::write(&systemctl, SYSTEMCTL).unwrap();
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The version running now: a copy of the daemon with a marker appended.
    let mut old = std::fs::read(env!("CARGO_BIN_EXE_primed")).unwrap();
    old.extend_from_slice(b"previous-version");
    std::fs::write(bin.join("primed"), &old).unwrap();
    std::fs::set_permissions(bin.join("primed"), std::fs::Permissions::from_mode(0o755)).unwrap();

    // The database the running version uses.
    let migrated = support::primed()
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    let addr = free_addr().to_string();
    let data = dir.path().join("data");
    let env = |new: &str| -> Vec<(String, String)> {
        vec![
            ("PRIMED_DEPLOY".into(), "systemd".into()),
            ("SYSTEMCTL".into(), systemctl.to_str().unwrap().into()),
            ("STUB_STATE".into(), state.to_str().unwrap().into()),
            ("PRIMED_BIN_DIR".into(), bin.to_str().unwrap().into()),
            ("PRIMED_NEW_BINARY".into(), new.into()),
            ("BACKUP_DIR".into(), backups.to_str().unwrap().into()),
            ("PRIMED_READY_SECONDS".into(), "30".into()),
            ("DATABASE_URL".into(), db.url.clone()),
            ("PRIMED_HTTP_ADDR".into(), addr.clone()),
            ("PRIMED_DATA_DIR".into(), data.to_str().unwrap().into()),
        ]
    };
    let run = |env: Vec<(String, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        script("deploy.sh", &["1.2.3", "production"], &env)
    };
    let stop = || {
        if let Ok(pid) = std::fs::read_to_string(state.join("pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    };

    let (out, text) = run(env(env!("CARGO_BIN_EXE_primed")));
    stop();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Deploy completed successfully"), "{text}");
    assert!(text.contains("4. primed is ready"), "{text}");
    assert_eq!(
        std::fs::read(bin.join("primed")).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_primed")).unwrap(),
        "the new version is installed"
    );
    assert_eq!(std::fs::read(bin.join("primed.previous")).unwrap(), old);
    // The backup is a dump of the real schema, taken before the restart.
    let dumps: Vec<_> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    let dump = String::from_utf8_lossy(&std::fs::read(&dumps[0]).unwrap()).to_string();
    assert!(
        dumps[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("backup_production_")
    );
    assert!(dump.contains("CREATE TABLE `outbox`"), "{dump:.300}");

    // A version that never becomes ready is rolled back to the one before it.
    let broken = dir.path().join("broken-primed");
    std::fs::write(
        &broken,
        "#!/bin/sh\ncase $1 in version) echo 'primed 9.9.9';; *) echo 'cannot start' >&2; exit 1;; esac\n",
    )
    .unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut env = env(broken.to_str().unwrap());
    env.retain(|(k, _)| k != "PRIMED_READY_SECONDS");
    env.push(("PRIMED_READY_SECONDS".into(), "3".into()));
    let (out, text) = run(env);
    stop();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("primed is not ready after 3s"), "{text}");
    assert!(
        text.contains("5. rolled back to the previous binary"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(bin.join("primed")).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_primed")).unwrap(),
        "the version before the broken one runs again"
    );
    let calls = std::fs::read_to_string(state.join("calls")).unwrap();
    assert_eq!(
        calls.lines().filter(|l| *l == "restart primed").count(),
        3,
        "{calls}"
    );
}
