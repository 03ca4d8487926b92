//! Heartbeats into `worker_health_checks`: one row per actor and daemon instance, with
//! restarts and counts, against MariaDB and a nats-server of the test's own.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::{Daemon, NatsServer, SmtpStub, StubMode, TestDb, smtp_env};

const TOKEN: &str = "health-test-token-0123";

fn daemon(db: &TestDb, nats: &NatsServer, smtp_port: u16, instance: &str) -> Daemon {
    let mut env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), db.url.clone()),
        ("NATS_URL".into(), nats.url()),
        ("ADMIN_API_KEYS".into(), TOKEN.into()),
        ("PRIMED_INSTANCE".into(), instance.into()),
        ("PRIMED_HEARTBEAT_INTERVAL_SECONDS".into(), "1".into()),
        ("PRIMED_FAULT_INJECTION".into(), "true".into()),
        ("PRIMED_OUTBOX_POLL_INTERVAL_MS".into(), "100".into()),
    ];
    env.extend(smtp_env(smtp_port));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Daemon::start(&env)
}

/// `worker_name → (status, metadata)` of one instance.
fn rows(db: &TestDb, instance: &str) -> Vec<(String, String, Value)> {
    db.sql(&format!(
        "SELECT worker_name, status, metadata FROM worker_health_checks WHERE worker_name LIKE '{instance}/%' ORDER BY worker_name"
    ))
    .lines()
    .map(|line| {
        let mut cols = line.splitn(3, '\t');
        let name = cols.next().unwrap().to_string();
        let status = cols.next().unwrap().to_string();
        let metadata = serde_json::from_str(cols.next().unwrap()).unwrap();
        (name, status, metadata)
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_actor_of_every_daemon_heartbeats_into_its_own_row() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Accept).await;
    let a = daemon(&db, &nats, stub.port, "daemon-a");
    let b = daemon(&db, &nats, stub.port, "daemon-b");

    let actors = [
        "dlq",
        "dlq-replayer",
        "email-worker-1",
        "email-worker-2",
        "heartbeat",
        "http",
        "metrics-collector",
        "outbox-relay",
        "primecheck-worker-1",
        "primecheck-worker-2",
        "rate-limit-monitor",
        "retention",
        "retry-timer",
    ];
    for instance in ["daemon-a", "daemon-b"] {
        assert_eventually!(
            rows(&db, instance).len() == actors.len(),
            "{instance}: {:?}",
            rows(&db, instance)
        );
        let rows = rows(&db, instance);
        let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        let want: Vec<String> = actors.iter().map(|a| format!("{instance}/{a}")).collect();
        assert_eq!(names, want);
        for (name, status, metadata) in &rows {
            assert_eq!(status, "healthy", "{name}: {metadata}");
            assert_eq!(metadata["instance"], instance);
            assert_eq!(metadata["version"], env!("CARGO_PKG_VERSION"));
            assert!(metadata["pid"].as_u64().unwrap() > 0);
        }
    }

    // The heartbeat moves: last_heartbeat of the relay advances.
    let at = |db: &TestDb| {
        db.sql("SELECT last_heartbeat FROM worker_health_checks WHERE worker_name = 'daemon-a/outbox-relay'")
            .trim()
            .to_string()
    };
    let first = at(&db);
    assert_eventually!(at(&db) != first, "daemon-a's heartbeat does not advance");

    // Work shows in the counts: one request is checked and emailed by one worker of one
    // of the daemons.
    let r = reqwest::Client::new()
        .post(a.url("/prime-check"))
        .json(&json!({"number": "97", "email": "health@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let processed = |db: &TestDb, prefix: &str| -> u64 {
        ["daemon-a", "daemon-b"]
            .iter()
            .flat_map(|i| rows(db, i))
            .filter(|(name, _, _)| name.contains(prefix))
            .map(|(_, _, m)| m["processed"].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eventually!(
        processed(&db, "/primecheck-worker-") == 1 && processed(&db, "/email-worker-") == 1,
        "one prime check and one email, counted once: {} / {}",
        processed(&db, "/primecheck-worker-"),
        processed(&db, "/email-worker-")
    );

    // The relays published two events between them (the check and the email), each once.
    assert_eventually!(
        processed(&db, "/outbox-relay") == 2,
        "relays published {}",
        processed(&db, "/outbox-relay")
    );

    // A crash and restart is counted, and the actor is healthy again.
    let killed = reqwest::Client::new()
        .post(b.url("/admin/actors/retry-timer/kill"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(killed.status().is_success(), "{}", killed.status());
    let timer = |db: &TestDb| {
        rows(db, "daemon-b")
            .into_iter()
            .find(|(name, _, _)| name.ends_with("/retry-timer"))
            .unwrap()
    };
    assert_eventually!(
        timer(&db).2["restarts"] == 1 && timer(&db).1 == "healthy",
        "{:?}",
        timer(&db)
    );
    // The other daemon's rows are untouched by it.
    let a_timer = rows(&db, "daemon-a")
        .into_iter()
        .find(|(name, _, _)| name.ends_with("/retry-timer"))
        .unwrap();
    assert_eq!(a_timer.2["restarts"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_mode_heartbeats_into_its_sqlite_file() {
    let d = Daemon::start(&[
        ("PRIMED_HEARTBEAT_INTERVAL_SECONDS", "1"),
        ("PRIMED_INSTANCE", "solo"),
    ]);
    let url = format!("sqlite://{}?mode=ro", d.data_path("primed.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let healthy = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM worker_health_checks WHERE worker_name LIKE 'solo/%' AND status = 'healthy'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    // heartbeat, metrics collector, retention, rate-limit monitor, relay, dlq, retry timer,
    // replayer, 2 + 2 workers, http.
    assert_eventually!(healthy().await == 13, "{} healthy rows", healthy().await);
    let first: i64 = sqlx::query_scalar(
        "SELECT last_heartbeat FROM worker_health_checks WHERE worker_name = 'solo/heartbeat'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eventually!(
        sqlx::query_scalar::<_, i64>(
            "SELECT last_heartbeat FROM worker_health_checks WHERE worker_name = 'solo/heartbeat'"
        )
        .fetch_one(&pool)
        .await
        .unwrap()
            > first,
        "the row is updated, not duplicated"
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM worker_health_checks")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 13);
}

async fn get(d: &Daemon, path: &str) -> (u16, Value) {
    let r = reqwest::get(d.url(path)).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_every_dependency_and_ready_needs_the_store_and_broker() {
    let db = TestDb::create();
    let mut nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Accept).await;
    let mut redis = support::RedisServer::start();
    let port = redis.port.to_string();
    let mut env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), db.url.clone()),
        ("NATS_URL".into(), nats.url()),
        ("REDIS_HOST".into(), "127.0.0.1".into()),
        ("REDIS_PORT".into(), port),
    ];
    env.extend(smtp_env(stub.port));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let d = Daemon::start(&env);

    let (code, h) = get(&d, "/health").await;
    assert_eq!(code, 200, "{h}");
    assert_eq!(h["status"], "ok");
    assert_eq!(h["ready"], true);
    assert!(h["timestamp"].as_str().unwrap().ends_with('Z'));
    for check in [
        "supervision_tree",
        "database",
        "nats",
        "redis",
        "smtp",
        "rate_limiter",
    ] {
        assert_eq!(h["checks"][check]["status"], "ok", "{check}: {h}");
    }
    for check in ["database", "nats", "redis", "smtp"] {
        assert!(h["checks"][check]["response_time_ms"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(get(&d, "/ready").await.0, 200);

    // Without Redis the daemon is degraded but still ready: limits fall back in-process.
    redis.stop();
    let (code, h) = get(&d, "/health").await;
    assert_eq!(code, 503);
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["checks"]["redis"]["status"], "error", "{h}");
    assert_eq!(get(&d, "/ready").await.0, 200);
    redis.start_again();

    // Without NATS it cannot serve requests through: not ready, saying why.
    nats.stop();
    let (code, r) = get(&d, "/ready").await;
    assert_eq!(code, 503, "{r}");
    assert_eq!(r["checks"]["nats"]["status"], "error", "{r}");
    assert!(
        r["checks"]["database"].is_null(),
        "only failing checks are listed: {r}"
    );
    nats.start_again();
    assert_eventually!(
        get(&d, "/ready").await.0 == 200,
        "ready again once NATS is back"
    );
    assert_eventually!(
        get(&d, "/health").await.1["status"] == "ok",
        "healthy again: {}",
        get(&d, "/health").await.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_needs_the_store_and_comes_back_with_it() {
    // A MariaDB of the test's own, killed and started again (never the shared one).
    let dir = tempfile::tempdir().unwrap();
    let mut db = chaos::services::Mariadb::start(dir.path()).await.unwrap();
    support::mariadb_at(db.port, "CREATE DATABASE ready_test");
    let url = db.url("ready_test");
    let d = Daemon::start(&[("DATABASE_URL", url.as_str())]);
    assert_eq!(get(&d, "/ready").await.0, 200);

    db.kill();
    assert_eventually!(
        {
            let (code, r) = get(&d, "/ready").await;
            code == 503 && r["checks"]["database"]["status"] == "error"
        },
        "not ready, naming the database, while it is down: {}",
        get(&d, "/ready").await.1
    );
    let (_, h) = get(&d, "/health").await;
    assert_eq!(h["checks"]["database"]["status"], "error", "{h}");

    db.start_again().await.unwrap();
    assert_eventually!(
        get(&d, "/ready").await.0 == 200,
        "ready again once the database is back"
    );
}
