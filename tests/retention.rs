//! Retention on both stores (seed 000 §3.1.1): a daemon deletes the rows that outlived
//! their setting, in batches, and keeps the rest — pending dead letters whatever their age,
//! and its own health rows — counting what it deleted in `retention_pruned_rows_total`.
// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use chrono::{DateTime, Duration, Utc};
use support::{Daemon, TestDb, sample, scrape};

/// The store under test, written and read beside the daemon.
enum Store {
    Mysql(TestDb),
    Sqlite(sqlx::SqlitePool),
}

impl Store {
    /// `at` as a SQL literal of the store's instants.
    fn at(&self, at: DateTime<Utc>) -> String {
        match self {
            Store::Mysql(_) => format!("'{}'", at.format("%Y-%m-%d %H:%M:%S%.6f")),
            Store::Sqlite(_) => at.timestamp_micros().to_string(),
        }
    }

    /// `days` ago as a SQL literal.
    fn ago(&self, days: i64) -> String {
        self.at(Utc::now() - Duration::days(days))
    }

    async fn exec(&self, sql: &str) {
        match self {
            Store::Mysql(db) => {
                db.sql(sql);
            }
            Store::Sqlite(pool) => {
                sqlx::raw_sql(sql).execute(pool).await.unwrap();
            }
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        match self {
            Store::Mysql(db) => db.count(sql),
            Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        }
    }
}

/// What each table holds after a round: (query, rows that must be left).
const LEFT: [(&str, i64); 8] = [
    ("SELECT COUNT(*) FROM message_processing_logs", 2),
    ("SELECT COUNT(*) FROM processed_events", 1),
    ("SELECT COUNT(*) FROM message_crashes", 1),
    ("SELECT COUNT(*) FROM sent_emails", 1),
    // The fresh resolved one, and the old pending and reprocessing ones.
    ("SELECT COUNT(*) FROM dead_letter_messages", 3),
    ("SELECT COUNT(*) FROM dlq_statistics", 1),
    (
        "SELECT COUNT(*) FROM worker_health_checks WHERE worker_name LIKE 'gone/%'",
        0,
    ),
    (
        "SELECT COUNT(*) FROM worker_health_checks WHERE worker_name LIKE 'alive/%'",
        1,
    ),
];

/// Old and fresh rows in every table the retention actor prunes: five old attempt logs
/// (more than one batch of 2), one old and one fresh row elsewhere; old pending and
/// reprocessing dead letters that must stay.
async fn seed(s: &Store) {
    let (old, fresh, ancient) = (s.ago(8), s.ago(1), s.ago(400));
    for i in 0..5 {
        s.exec(&format!(
            "INSERT INTO message_processing_logs (message_id, subject, status, created_at) VALUES ('old-{i}', 'email.send', 'success', {old})"
        ))
        .await;
    }
    for i in 0..2 {
        s.exec(&format!(
            "INSERT INTO message_processing_logs (message_id, subject, status, created_at) VALUES ('new-{i}', 'email.send', 'success', {fresh})"
        ))
        .await;
    }
    for (id, at) in [("old", &old), ("new", &fresh)] {
        s.exec(&format!(
            "INSERT INTO processed_events (event_id, consumer, processed_at) VALUES ('{id}', 'email', {at})"
        ))
        .await;
        s.exec(&format!(
            "INSERT INTO message_crashes (event_id, crashes, last_error, updated_at) VALUES ('{id}', 1, 'panic', {at})"
        ))
        .await;
        s.exec(&format!(
            "INSERT INTO sent_emails (event_id, request_id, recipient, message_id, sent_at) VALUES ('{id}', 'r', 'a@b.co', 'm', {at})"
        ))
        .await;
    }
    let hour_old = s.at((Utc::now() - Duration::days(8))
        .date_naive()
        .and_hms_opt(10, 0, 0)
        .unwrap()
        .and_utc());
    let hour_new = s.at((Utc::now() - Duration::days(1))
        .date_naive()
        .and_hms_opt(10, 0, 0)
        .unwrap()
        .and_utc());
    for at in [&hour_old, &hour_new] {
        s.exec(&format!(
            "INSERT INTO dlq_statistics (date_hour, subject, error_type, count, created_at) VALUES ({at}, 'email.send', 'permanent', 3, {at})"
        ))
        .await;
    }
    for (status, resolved) in [
        ("resolved", Some(&old)),
        ("discarded", Some(&old)),
        ("resolved", Some(&fresh)),
        ("pending", None),
        ("reprocessing", None),
    ] {
        let resolved = resolved.map_or("NULL".to_string(), |r| r.to_string());
        s.exec(&format!(
            "INSERT INTO dead_letter_messages (original_subject, original_message_id, dlq_subject, payload, error_message, error_type, original_created_at, dlq_created_at, status, resolved_at, streamed_at, updated_at) \
             VALUES ('email.send', 'm', 'dlq.email.send', '{{}}', '550 no such user', 'permanent', {ancient}, {ancient}, '{status}', {resolved}, {ancient}, {ancient})"
        ))
        .await;
    }
    for (name, at) in [
        ("gone/heartbeat", s.ago(2)),
        ("alive/heartbeat", s.at(Utc::now())),
    ] {
        s.exec(&format!(
            "INSERT INTO worker_health_checks (worker_name, status, last_heartbeat, created_at, updated_at) VALUES ('{name}', 'healthy', {at}, {at}, {at})"
        ))
        .await;
    }
}

const ENV: [(&str, &str); 3] = [
    ("PRIMED_RETENTION_INTERVAL_SECONDS", "1"),
    ("PRIMED_RETENTION_BATCH_SIZE", "2"),
    ("PRIMED_INSTANCE", "retention"),
];

async fn rows_left(s: &Store) -> Vec<i64> {
    let mut left = Vec::new();
    for (q, _) in LEFT {
        left.push(s.count(q).await);
    }
    left
}

async fn prunes_past_retention_and_keeps_the_rest(d: &Daemon, s: &Store) {
    seed(s).await;
    let want: Vec<i64> = LEFT.iter().map(|(_, n)| *n).collect();
    assert_eventually!(rows_left(s).await == want, "{:?}", rows_left(s).await);
    // The daemon's own health rows are kept.
    assert!(
        s.count("SELECT COUNT(*) FROM worker_health_checks WHERE worker_name LIKE 'retention/%'")
            .await
            > 5
    );
    let metrics = scrape(d).await;
    for (table, n) in [
        ("message_processing_logs", 5.0),
        ("processed_events", 1.0),
        ("message_crashes", 1.0),
        ("sent_emails", 1.0),
        ("dead_letter_messages", 2.0),
        ("dlq_statistics", 1.0),
        ("worker_health_checks", 1.0),
    ] {
        assert_eq!(
            sample(
                &metrics,
                &format!("retention_pruned_rows_total{{table=\"{table}\"}}")
            ),
            n,
            "{table}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_prunes_each_table_past_its_retention() {
    let db = TestDb::create();
    let d = Daemon::start(
        &[("DATABASE_URL", db.url.as_str())]
            .into_iter()
            .chain(ENV)
            .collect::<Vec<_>>(),
    );
    let s = Store::Mysql(db);
    prunes_past_retention_and_keeps_the_rest(&d, &s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_file_prunes_each_table_past_its_retention() {
    let d = Daemon::start(&ENV);
    let url = format!("sqlite://{}", d.data_path("primed.db").display());
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            url.parse::<sqlx::sqlite::SqliteConnectOptions>()
                .unwrap()
                .busy_timeout(std::time::Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let s = Store::Sqlite(pool);
    prunes_past_retention_and_keeps_the_rest(&d, &s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_keeps_a_table_forever_and_a_short_event_record_is_refused() {
    // 0 days: the old attempt logs stay while the other tables are pruned.
    let d = Daemon::start(
        &ENV.into_iter()
            .chain([("PRIMED_RETENTION_PROCESSING_LOGS_DAYS", "0")])
            .collect::<Vec<_>>(),
    );
    let url = format!("sqlite://{}", d.data_path("primed.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let s = Store::Sqlite(pool);
    seed(&s).await;
    assert_eventually!(
        s.count("SELECT COUNT(*) FROM sent_emails").await == 1,
        "sent_emails not pruned"
    );
    assert_eq!(
        s.count("SELECT COUNT(*) FROM message_processing_logs")
            .await,
        7
    );

    // Events the outbox can publish again (48 h of published rows) must find their record.
    let out = support::primed()
        .args(["config", "check"])
        .env("PRIMED_OUTBOX_RETENTION_HOURS", "48")
        .env("PRIMED_RETENTION_PROCESSED_EVENTS_DAYS", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("PRIMED_RETENTION_PROCESSED_EVENTS_DAYS")
            && text.contains("at least PRIMED_OUTBOX_RETENTION_HOURS"),
        "{text}"
    );
}
