//! Operator commands against a real MariaDB: `primed migrate`, `primed outbox replay`;
//! and `primed health` against a running daemon.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{TestDb, primed};

#[test]
fn migrate_creates_the_schema_and_is_idempotent() {
    let db = TestDb::create();
    for _ in 0..2 {
        let out = primed()
            .arg("migrate")
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("migrations are applied"));
    }
    let tables = db.sql("SHOW TABLES");
    for table in [
        "prime_check_requests",
        "outbox",
        "message_processing_logs",
        "worker_health_checks",
        "dead_letter_messages",
        "dlq_statistics",
        "processed_events",
    ] {
        assert!(
            tables.lines().any(|t| t == table),
            "{table} missing in {tables}"
        );
    }
    let columns = db.sql("SHOW COLUMNS FROM outbox");
    for column in [
        "retry_count",
        "max_retries",
        "next_retry_at",
        "error_message",
        "last_error_at",
    ] {
        assert!(columns.contains(column), "outbox.{column} missing");
    }
}

#[test]
fn migrate_without_a_database_or_with_an_unreachable_one_says_what_to_do() {
    let out = primed().arg("migrate").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("set DATABASE_URL or MYSQL_HOST"));

    let closed = support::free_addr();
    let out = primed()
        .arg("migrate")
        .env("DATABASE_URL", format!("mysql://root:pw@{closed}/x"))
        .env("PRIMED_DB_TIMEOUT_SECONDS", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect to MySQL"), "{stderr}");
    assert!(!stderr.contains(":pw@"), "the password leaked: {stderr}");
}

#[test]
fn outbox_replay_makes_recent_published_events_due_again() {
    let db = TestDb::create();
    let out = primed()
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(out.status.success());
    // Published within the last 2 hours: the first two, however old (the second waited in a
    // backlog); published before: the third; never published: the dead one.
    db.sql(
        "INSERT INTO outbox (event_id, subject, payload, state, published_at, created_at) VALUES \
         (UUID(), 'primecheck.requested', '{}', 'published', NOW(6), NOW(6)), \
         (UUID(), 'primecheck.requested', '{}', 'published', NOW(6) - INTERVAL 10 MINUTE, NOW(6) - INTERVAL 5 HOUR), \
         (UUID(), 'primecheck.requested', '{}', 'published', NOW(6) - INTERVAL 3 HOUR, NOW(6) - INTERVAL 3 HOUR), \
         (UUID(), 'primecheck.requested', '{}', 'dead', NULL, NOW(6))",
    );
    let out = primed()
        .args(["outbox", "replay", "--since", "2h"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("2 outbox events"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE state = 'pending'"),
        2
    );
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND created_at < NOW(6) - INTERVAL 4 HOUR"
        ),
        1,
        "the event that waited in a backlog was not replayed"
    );

    let bad = primed()
        .args(["outbox", "replay", "--since", "last tuesday"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since must be"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_by_the_daemons_readiness_as_the_image_health_check_uses_it() {
    let d = support::Daemon::start(&[]);
    assert_eventually!(
        reqwest::get(d.url("/ready"))
            .await
            .is_ok_and(|r| r.status() == 200),
        "not ready"
    );
    // By the daemon's own PRIMED_HTTP_ADDR (a wildcard address is asked on loopback).
    let wildcard = format!("0.0.0.0:{}", d.addr.port());
    let out = support::primed()
        .arg("health")
        .env("PRIMED_HTTP_ADDR", &wildcard)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ready: "));

    // Nothing listening: 69 and what to check.
    let out = support::primed()
        .args([
            "health",
            "--url",
            &format!("http://{}", support::free_addr()),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the daemon") && err.contains("PRIMED_HTTP_ADDR"),
        "{err}"
    );

    // The image and compose check health with it.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("HEALTHCHECK")
            && dockerfile.contains(r#"CMD ["/usr/local/bin/primed", "health"]"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_1_while_the_daemon_is_not_ready() {
    // An HTTP server that answers /ready with 503, as a daemon does while it starts or
    // while its database does not answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 21\r\nconnection: close\r\n\r\n{\"ready\":false,\"x\":1}")
                .await;
        }
    });
    let out = tokio::task::spawn_blocking(move || {
        support::primed()
            .args(["health", "--url", &format!("http://{addr}")])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not ready (503)"), "{err}");
}
