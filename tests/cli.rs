//! Operator commands against a real MariaDB: `primed migrate`, `primed outbox replay`.

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
