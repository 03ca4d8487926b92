//! The outbox relay against real services: MariaDB, and a nats-server of each test's own.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::outbox_relay::{round, rounds};
use actors::{Broker, BrokerError, OutgoingMessage, RelayArgs, RelayWake, RetryPolicy};
use futures::FutureExt;
use futures::future::BoxFuture;
use primed::adapters::mysql::workers::OUTBOX_GAUGES_SQL;
use primed::adapters::mysql::{CLAIM_ABOVE_FLOOR_SQL, CLAIM_SQL, MysqlStore, PoolSettings};
use primed::adapters::nats::{CONSUMER_PRIMECHECK, DLQ_STREAM, JetStreamBroker, JetStreamSettings};
use primed::config::Secret;
use serde_json::{Value, json};
use supervision::Backoff;
use support::{Daemon, NatsServer, TestDb, stream_messages, subject_messages};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn store(db: &TestDb, max_retries: u32) -> Arc<MysqlStore> {
    let store = MysqlStore::connect(
        &Secret::new(db.url.clone()),
        PoolSettings {
            max_connections: 5,
            acquire_timeout: Duration::from_secs(5),
            outbox_max_retries: max_retries,
        },
    )
    .unwrap();
    store.migrate().await.unwrap();
    Arc::new(store)
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_retries: 100,
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
            multiplier: 2.0,
            jitter: 0.0,
            reset_after: Duration::ZERO,
        },
    }
}

fn relay_args(store: Arc<MysqlStore>, broker: Arc<dyn Broker>, batch: u32) -> RelayArgs {
    RelayArgs {
        store,
        broker,
        batch_size: batch,
        parallel_rounds: 1,
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_millis(100),
        retry: fast_retries(),
        retention: Duration::from_secs(3600),
        prune_interval: Duration::from_secs(3600),
        wake: RelayWake::new("unused"),
        stats: Default::default(),
        background_settle: None,
    }
}

/// `rows` pending `primecheck.requested` rows in the outbox (`rows` must be one of the
/// `seq_1_to_N` tables).
fn pending_rows(db: &TestDb, rows: usize) {
    db.sql(&format!(
        "INSERT INTO outbox (event_id, subject, payload) \
         SELECT UUID(), 'primecheck.requested', JSON_OBJECT('n', seq) FROM seq_1_to_{rows}"
    ));
}

/// A broker on `nats` with the pipeline's topology on the `PRIME` stream (and the client
/// to keep its connection).
async fn prime_stream(nats: &NatsServer) -> (JetStreamBroker, async_nats::Client) {
    let settings = JetStreamSettings::new("PRIME");
    let (broker, client) = JetStreamBroker::connect(&nats.url(), &settings)
        .await
        .unwrap();
    broker.ensure_topology(&settings).await.unwrap();
    (broker, client)
}

/// Counts every publish per event id on its way to the real broker.
struct Recording {
    inner: JetStreamBroker,
    seen: Mutex<HashMap<String, u32>>,
}

impl Broker for Recording {
    fn publish_batch<'a>(
        &'a self,
        messages: &'a [OutgoingMessage],
    ) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        async move {
            let results = self.inner.publish_batch(messages).await;
            let mut seen = self.seen.lock().unwrap();
            for (m, r) in messages.iter().zip(&results) {
                if r.is_ok() {
                    *seen.entry(m.event_id.clone()).or_default() += 1;
                }
            }
            results
        }
        .boxed()
    }
}

fn daemon(db: &TestDb, nats: &NatsServer) -> Daemon {
    Daemon::start(&[
        ("DATABASE_URL", &db.url),
        ("NATS_URL", &nats.url()),
        ("PRIMED_RETRY_INITIAL_MS", "100"),
        ("PRIMED_RETRY_MAX_MS", "500"),
        ("PRIMED_OUTBOX_MAX_RETRIES", "100"),
        ("PRIMED_OUTBOX_POLL_INTERVAL_MS", "100"),
    ])
}

async fn submit(d: &Daemon, n: usize) -> Vec<String> {
    let http = client();
    let mut ids = Vec::new();
    for i in 0..n {
        let r = http
            .post(d.url("/prime-check"))
            .header("x-request-id", format!("req-{i}"))
            .json(&json!({"number": (1000 + i).to_string(), "email": "a@b.co"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "request {i}");
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_requests_reach_jetstream_once_with_their_headers() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let d = daemon(&db, &nats);
    submit(&d, 30).await;
    assert_eventually!(
        db.count("SELECT COUNT(*) FROM outbox WHERE subject = 'primecheck.requested' AND state = 'published'") == 30,
        "not all rows were published"
    );
    assert_eq!(
        subject_messages(&nats.url(), "PRIME", "primecheck.requested").await,
        30
    );

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = js.get_stream("PRIME").await.unwrap();
    let first = stream.get_raw_message(1).await.unwrap();
    let headers = first.headers;
    let event_id = headers.get("Nats-Msg-Id").unwrap().to_string();
    assert_eq!(headers.get("Primed-Event-Id").unwrap().as_str(), event_id);
    assert_eq!(headers.get("Primed-Attempt").unwrap().as_str(), "1");
    let request_id = headers.get("Primed-Request-Id").unwrap().to_string();
    let row = db.sql(&format!(
        "SELECT CONCAT(subject, ' ', request_id) FROM outbox WHERE event_id = '{event_id}'"
    ));
    assert_eq!(row.trim(), format!("primecheck.requested {request_id}"));
    assert_eq!(first.subject.as_str(), "primecheck.requested");
    // The payload goes out as the event stored with the request (compared as JSON: MySQL's
    // JSON column keeps it re-spaced, and the fast path publishes what was written).
    let stored = db.sql(&format!(
        "SELECT payload FROM outbox WHERE event_id = '{event_id}'"
    ));
    let payload: Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(
        payload,
        serde_json::from_str::<Value>(stored.trim()).unwrap()
    );
    assert_eq!(payload["email"], "a@b.co", "payload: {payload}");

    // The topology of DESIGN §5.
    let mut consumer = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(CONSUMER_PRIMECHECK)
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.config.max_deliver, 3);
    assert_eq!(
        info.config.backoff,
        vec![Duration::from_secs(1), Duration::from_secs(2)]
    );
    let mut dlq = js.get_stream(DLQ_STREAM).await.unwrap();
    let dlq = dlq.info().await.unwrap().config.clone();
    assert_eq!(dlq.subjects, vec!["dlq.*"]);
    assert_eq!(dlq.max_messages, 10_000);
    assert_eq!(dlq.max_age, Duration::from_secs(7 * 24 * 3600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_table_publish_each_row_exactly_once() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let rows = 3000;
    let a = store(&db, 3).await;
    let b = store(&db, 3).await; // a second daemon's own pool
    pending_rows(&db, rows);
    let (broker, _client) = prime_stream(&nats).await;
    let recording = Arc::new(Recording {
        inner: broker,
        seen: Mutex::new(HashMap::new()),
    });

    let run = |store: Arc<MysqlStore>| {
        let args = relay_args(store, recording.clone(), 200);
        tokio::spawn(async move {
            let mut rounds = 0;
            while round(&args).await.unwrap().claimed > 0 {
                rounds += 1;
            }
            rounds
        })
    };
    let (ra, rb) = (run(a), run(b));
    let (ra, rb) = (ra.await.unwrap(), rb.await.unwrap());
    assert!(
        ra > 0 && rb > 0,
        "both relays must have worked: {ra} and {rb} rounds"
    );

    let seen = recording.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), rows);
    assert!(
        seen.values().all(|&n| n == 1),
        "an event was published twice"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE state = 'published'"),
        rows as i64
    );
    assert_eq!(stream_messages(&nats.url(), "PRIME").await, rows as u64);
}

/// With most retained rows published, the optimizer walked the primary key for the claim's
/// `ORDER BY id LIMIT n` (with the old `(state, id)` index) and read every published row
/// first. The claim must read the pending prefix of `(state, published_at, id)`, in id order:
/// no walk of the published rows and no sort of all pending ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_reads_pending_rows_through_the_state_index() {
    let db = TestDb::create();
    let _store = store(&db, 3).await;
    // A relay three quarters through a backlog of 200,000 events (the optimizer chooses
    // by table size: at 20,000 rows it takes the index by itself).
    db.sql(
        "INSERT INTO outbox (event_id, subject, payload, state, published_at) \
         SELECT UUID(), 'primecheck.requested', JSON_OBJECT('n', seq), \
                IF(seq <= 150000, 'published', 'pending'), \
                IF(seq <= 150000, NOW(6), '1970-01-01 00:00:01') \
         FROM seq_1_to_200000",
    );
    let plan = db.sql(&format!("EXPLAIN {}", CLAIM_SQL.replace('?', "1000")));
    let (_, key) = access(&plan);
    assert_eq!(key, "idx_state_published_id", "claim plan: {plan}");
    assert!(
        !plan.contains("filesort"),
        "the claim must read pending rows in id order, not sort them all: {plan}"
    );

    // Above a floor, the claim reads a range of the primary key from the floor up, in order.
    let plan = db.sql(&format!(
        "EXPLAIN {}",
        CLAIM_ABOVE_FLOOR_SQL
            .replacen('?', "150000", 1)
            .replacen('?', "1000", 1)
    ));
    assert_eq!(
        access(&plan),
        ("range", "PRIMARY"),
        "floor claim plan: {plan}"
    );
    assert!(!plan.contains("filesort"), "floor claim plan: {plan}");
}

/// Every access type `EXPLAIN` prints (MariaDB and MySQL; `NULL` for a step that reads no
/// table).
const ACCESS_TYPES: [&str; 13] = [
    "NULL",
    "system",
    "const",
    "eq_ref",
    "ref",
    "fulltext",
    "ref_or_null",
    "index_merge",
    "unique_subquery",
    "index_subquery",
    "range",
    "index",
    "ALL",
];

/// The access type and the key of an `EXPLAIN` row (MySQL prints a `partitions` column
/// after the table, MariaDB does not).
fn access(plan: &str) -> (&str, &str) {
    let fields: Vec<&str> = plan
        .lines()
        .next()
        .unwrap_or_default()
        .split('\t')
        .collect();
    let at = if fields.len() >= 12 { 4 } else { 3 };
    (
        fields.get(at).copied().unwrap_or_default(),
        fields.get(at + 2).copied().unwrap_or_default(),
    )
}

/// The metrics collector reads the backlog and the relay's lag every few seconds, also
/// while a backlog of a million rows waits (NATS down): it must read the state index, not
/// the table. The lag is the age of the oldest pending row that is due (a row waiting out
/// its retry backoff is not late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_gauges_are_right_and_read_the_state_index() {
    let db = TestDb::create();
    let store = store(&db, 3).await;
    db.sql(
        "INSERT INTO outbox (event_id, subject, payload, created_at, next_retry_at) VALUES \
           (UUID(), 's', '{}', NOW(6) - INTERVAL 600 SECOND, NOW(6) + INTERVAL 1 HOUR), \
           (UUID(), 's', '{}', NOW(6) - INTERVAL 60 SECOND, NULL), \
           (UUID(), 's', '{}', NOW(6) - INTERVAL 5 SECOND, NOW(6) - INTERVAL 1 SECOND); \
         INSERT INTO outbox (event_id, subject, payload, created_at, state, published_at) VALUES \
           (UUID(), 's', '{}', NOW(6) - INTERVAL 1 HOUR, 'published', NOW(6)), \
           (UUID(), 's', '{}', NOW(6) - INTERVAL 2 HOUR, 'dead', DEFAULT)",
    );
    let gauges = actors::GaugeSource::gauges(&*store).await.unwrap();
    assert_eq!(gauges.outbox_pending, 3);
    assert!(
        (60.0..90.0).contains(&gauges.outbox_lag_seconds),
        "lag {} s, want the 60 s of the oldest due row",
        gauges.outbox_lag_seconds
    );

    // A relay a quarter through a backlog of 200,000 events: no step of the plan reads
    // the whole table.
    db.sql(
        "INSERT INTO outbox (event_id, subject, payload, state, published_at) \
         SELECT UUID(), 'primecheck.requested', JSON_OBJECT('n', seq), \
                IF(seq <= 50000, 'published', 'pending'), \
                IF(seq <= 50000, NOW(6), '1970-01-01 00:00:01') \
         FROM seq_1_to_200000; ANALYZE TABLE outbox",
    );
    let plan = db.sql(&format!("EXPLAIN {OUTBOX_GAUGES_SQL}"));
    assert!(!plan.trim().is_empty(), "no plan");
    for step in plan.lines() {
        let (access, _) = access(step);
        // A step whose access type cannot be read fails, not passes: the check must see it.
        assert!(
            ACCESS_TYPES.contains(&access),
            "cannot read the access type of {step:?} in {plan}"
        );
        // `ALL` reads the whole table, `index` the whole of an index: both grow with it.
        assert!(
            access != "ALL" && access != "index",
            "a gauge query step reads a whole table or index ({access}): {plan}"
        );
    }
    assert!(plan.contains("idx_state_published_id"), "{plan}");
    let gauges = actors::GaugeSource::gauges(&*store).await.unwrap();
    assert_eq!(gauges.outbox_pending, 150_003);
}

/// Working off a backlog, claims start above the highest id claimed so far. A row below
/// that (a transaction that took its id early and committed late) and a pending row whose
/// `published_at` was set to NULL by hand (outside the index range the claim reads) must
/// still go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_behind_the_claim_floor_or_outside_its_range_still_go_out() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let store = store(&db, 3).await;
    db.sql(
        "INSERT INTO outbox (event_id, subject, payload) \
         SELECT UUID(), 'primecheck.requested', JSON_OBJECT('n', seq) FROM seq_1_to_3000; \
         DELETE FROM outbox WHERE id = 10",
    );
    let (broker, _client) = prime_stream(&nats).await;
    let args = relay_args(store, Arc::new(broker), 1000);
    for _ in 0..2 {
        assert_eq!(round(&args).await.unwrap().claimed, 1000);
    }
    // Both arrive while the relay is 2,000 rows into the backlog.
    db.sql(
        "INSERT INTO outbox (id, event_id, subject, payload) \
           VALUES (10, UUID(), 'primecheck.requested', '{\"late\": true}'); \
         INSERT INTO outbox (event_id, subject, payload, published_at) \
           VALUES (UUID(), 'primecheck.requested', '{\"by_hand\": true}', NULL)",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while db.count("SELECT COUNT(*) FROM outbox WHERE state = 'pending'") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "rows were left behind: {}",
            db.sql("SELECT id, published_at FROM outbox WHERE state = 'pending'")
        );
        if round(&args).await.unwrap().claimed == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE state = 'published'"),
        3001
    );
    assert_eq!(stream_messages(&nats.url(), "PRIME").await, 3001);
}

/// A broker that refuses every publish.
struct Refusing;

impl Broker for Refusing {
    fn publish_batch<'a>(
        &'a self,
        messages: &'a [OutgoingMessage],
    ) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        let refused = messages
            .iter()
            .map(|_| Err(BrokerError("refused".into())))
            .collect();
        async move { refused }.boxed()
    }
}

/// While rounds come back full and clean, a relay call keeps rounds in flight; once a round
/// could not publish what it claimed, it starts no more (the broker is down: every further
/// round would spend a retry of each row it claims and keep the actor from a stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_call_starts_no_more_rounds_once_publishing_fails() {
    let db = TestDb::create();
    let store = store(&db, 3).await;
    db.sql(
        "INSERT INTO outbox (event_id, subject, payload) \
         SELECT UUID(), 'primecheck.requested', JSON_OBJECT('n', seq) FROM seq_1_to_10000",
    );
    let mut args = relay_args(store, Arc::new(Refusing), 1000);
    args.parallel_rounds = 4;
    // Failed rows must not come due again within the call: with the suite's 20 ms retries,
    // a wave's once-a-second claim from the bottom took the first round's rows a second
    // time on a loaded machine (3,000 rows with one failure instead of 5,000).
    args.retry.backoff.initial = Duration::from_secs(60);
    args.retry.backoff.max = Duration::from_secs(60);
    let outcome = rounds(&args).await.unwrap();
    // The first round, then one wave of four.
    assert_eq!(outcome.claimed, 5000, "{outcome:?}");
    assert_eq!(outcome.retried, 5000);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE retry_count = 1"),
        5000
    );
}

/// The largest configuration (batches of 5,000, four rounds in flight) asks for more
/// acknowledgements at once than the JetStream context lends permits for (5,000): a round
/// that sent all its messages before awaiting any acknowledgement waited forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_asking_for_more_acks_than_the_context_allows_all_finish() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let rows = 20_000;
    let store = store(&db, 3).await;
    pending_rows(&db, rows);
    let (broker, _client) = prime_stream(&nats).await;
    let mut args = relay_args(store, Arc::new(broker), 5000);
    args.parallel_rounds = 4;

    let relayed = tokio::time::timeout(Duration::from_secs(120), async {
        let mut published = 0;
        loop {
            let outcome = rounds(&args).await.unwrap();
            published += outcome.published;
            if outcome.claimed == 0 {
                return published;
            }
        }
    })
    .await
    .expect("the relay stalled: rounds waited on each other's acknowledgement permits");
    assert_eq!(relayed, rows);
    assert_eq!(stream_messages(&nats.url(), "PRIME").await, rows as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_rows_wait_with_backoff_and_go_out_once_it_is_back() {
    let db = TestDb::create();
    let mut nats = NatsServer::start();
    let d = daemon(&db, &nats);
    submit(&d, 1).await;
    assert_eventually!(
        db.count("SELECT COUNT(*) FROM outbox WHERE subject = 'primecheck.requested' AND state = 'published'") == 1,
        "the first row was not published"
    );

    nats.stop();
    submit(&d, 20).await; // accepted: the database is fine
    assert_eventually!(
        db.count(
            "SELECT COUNT(*) FROM outbox WHERE subject = 'primecheck.requested' AND state = 'pending' \
                  AND error_message IS NOT NULL AND next_retry_at IS NOT NULL AND last_error_at IS NOT NULL"
        ) == 20,
        "rows did not record their failed attempts"
    );
    // An outage is not the events' fault: it spends none of their retries.
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM outbox WHERE subject = 'primecheck.requested' AND retry_count > 0"
        ),
        0
    );

    nats.start_again();
    assert_eventually!(
        db.count("SELECT COUNT(*) FROM outbox WHERE subject = 'primecheck.requested' AND state = 'published'") == 21,
        "rows were not published after NATS came back"
    );
    assert_eq!(
        subject_messages(&nats.url(), "PRIME", "primecheck.requested").await,
        21,
        "none twice, none lost"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM dead_letter_messages"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_database_connections_are_replaced_without_help() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let d = daemon(&db, &nats);
    submit(&d, 1).await;
    assert_eventually!(
        db.count("SELECT COUNT(*) FROM outbox WHERE subject = 'primecheck.requested' AND state = 'published'") == 1,
        "the first row was not published"
    );
    // The daemon's connections, on the test's own server (support::mariadb talks to the
    // server the tests run on, MariaDB or MySQL), each killed there; a KILL that fails fails.
    let connections = || {
        support::mariadb(&format!(
            "SELECT id FROM information_schema.processlist WHERE db = '{}'",
            db.name
        ))
        .split_whitespace()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let killed = connections();
    assert!(!killed.is_empty(), "the daemon holds connections to kill");
    for id in &killed {
        support::mariadb(&format!("KILL {id}"));
    }
    assert_eventually!(
        connections().iter().all(|id| !killed.contains(id)),
        "the killed connections are gone"
    );
    submit(&d, 5).await;
    assert_eventually!(
        db.count("SELECT COUNT(*) FROM outbox WHERE subject = 'primecheck.requested' AND state = 'published'") == 6,
        "the relay did not recover from killed connections"
    );
    let health: Value = client()
        .get(d.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["checks"]["database"]["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_cannot_be_published_ends_in_the_dead_letter_table() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let store = store(&db, 2).await;
    // The broker is up and its stream answers, but no stream takes this subject: every
    // publish gets "no responders", a failure of the event, not an outage.
    let (broker, client) = JetStreamBroker::connect(&nats.url(), &JetStreamSettings::new("PRIME"))
        .await
        .unwrap();
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: "PRIME".into(),
            subjects: vec!["elsewhere.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let args = relay_args(store.clone(), Arc::new(broker), 10);
    db.sql(
        "INSERT INTO prime_check_requests (id, number, email) VALUES ('r-1', '7', 'a@b.co'); \
         INSERT INTO outbox (event_id, subject, payload, max_retries) \
         VALUES ('00000000-0000-7000-8000-000000000001', 'primecheck.requested', \
                 '{\"request_id\":\"r-1\",\"number\":\"7\",\"email\":\"a@b.co\"}', 2)",
    );
    assert_eventually!(
        {
            let _ = round(&args).await.unwrap();
            db.count("SELECT COUNT(*) FROM outbox WHERE state = 'dead'") == 1
        },
        "the event never became dead"
    );
    let dead = db.sql(
        "SELECT CONCAT_WS(' ', original_subject, original_message_id, dlq_subject, error_type, retry_count, status) \
         FROM dead_letter_messages",
    );
    assert_eq!(
        dead.trim(),
        "primecheck.requested 00000000-0000-7000-8000-000000000001 dlq.outbox transient 3 pending"
    );
    assert_eq!(
        db.count("SELECT SUM(count) FROM dlq_statistics WHERE subject = 'dlq.outbox'"),
        1
    );
    assert_eq!(
        db.count("SELECT retry_count FROM outbox"),
        3,
        "two retries after the first failure"
    );
    // The client sees its request failed, with the reason; the dead letter names it.
    assert_eq!(
        db.sql("SELECT CONCAT_WS(' ', status, completed_at IS NOT NULL) FROM prime_check_requests")
            .trim(),
        "failed 1"
    );
    assert!(
        db.sql("SELECT error FROM prime_check_requests")
            .contains("its event could not be published"),
    );
    assert_eq!(
        db.sql("SELECT request_id FROM dead_letter_messages").trim(),
        "r-1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_spends_none_of_an_events_retries() {
    let db = TestDb::create();
    let mut nats = NatsServer::start();
    let store = store(&db, 2).await;
    let mut settings = JetStreamSettings::new("PRIME");
    // A publish to a stopped server fails at this timeout.
    settings.publish_timeout = Duration::from_millis(300);
    let (broker, _client) = JetStreamBroker::connect(&nats.url(), &settings)
        .await
        .unwrap();
    broker.ensure_topology(&settings).await.unwrap();
    let args = relay_args(store.clone(), Arc::new(broker), 10);
    db.sql(
        "INSERT INTO outbox (event_id, subject, payload, max_retries) \
         VALUES ('00000000-0000-7000-8000-000000000002', 'primecheck.requested', '{}', 1)",
    );
    nats.stop();
    // Far more failed rounds than the event's one retry: none of them is the event's fault.
    let mut failed = 0;
    assert_eventually!(
        {
            db.sql("UPDATE outbox SET next_retry_at = NULL");
            if round(&args)
                .await
                .is_ok_and(|o| o.claimed == 1 && o.published == 0)
            {
                failed += 1;
            }
            failed >= 4
        },
        "rounds that claim the event and fail to publish it"
    );
    assert_eq!(
        db.sql("SELECT CONCAT_WS(' ', state, retry_count) FROM outbox")
            .trim(),
        "pending 0"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM dead_letter_messages"), 0);

    nats.start_again();
    assert_eventually!(
        {
            db.sql("UPDATE outbox SET next_retry_at = NULL");
            let _ = round(&args).await;
            db.count("SELECT COUNT(*) FROM outbox WHERE state = 'published'") == 1
        },
        "published once the broker is back"
    );
    assert_eq!(
        support::subject_messages(&nats.url(), "PRIME", "primecheck.requested").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_republishes_retained_rows_and_jetstream_drops_the_duplicates() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let store = store(&db, 3).await;
    let (broker, _client) = prime_stream(&nats).await;
    // A second setup changes nothing; a changed setting is applied.
    let settings = JetStreamSettings::new("PRIME");
    broker.ensure_topology(&settings).await.unwrap();
    let mut changed = settings.clone();
    changed.max_deliver = 5;
    broker.ensure_topology(&changed).await.unwrap();
    let js = broker.context().clone();
    let mut consumer = js
        .get_stream("PRIME")
        .await
        .unwrap()
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(CONSUMER_PRIMECHECK)
        .await
        .unwrap();
    assert_eq!(consumer.info().await.unwrap().config.max_deliver, 5);

    db.sql("INSERT INTO outbox (event_id, subject, payload) SELECT UUID(), 'primecheck.requested', '{}' FROM seq_1_to_50");
    let args = relay_args(store.clone(), Arc::new(broker), 500);
    assert_eq!(round(&args).await.unwrap().published, 50);
    let replayed = actors::OutboxStore::replay_since(&*store, chrono::DateTime::UNIX_EPOCH)
        .await
        .unwrap();
    assert_eq!(replayed, 50);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE state = 'pending'"),
        50
    );
    assert_eq!(round(&args).await.unwrap().published, 50);
    assert_eq!(
        stream_messages(&nats.url(), "PRIME").await,
        50,
        "duplicates were stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_rows_past_their_retention_are_pruned_and_nothing_else() {
    let db = TestDb::create();
    let store = store(&db, 3).await;
    db.sql(
        "INSERT INTO outbox (event_id, subject, payload, state, published_at) VALUES \
         (UUID(), 's', '{}', 'published', NOW(6) - INTERVAL 25 HOUR), \
         (UUID(), 's', '{}', 'published', NOW(6) - INTERVAL 26 HOUR), \
         (UUID(), 's', '{}', 'published', NOW(6) - INTERVAL 1 HOUR), \
         (UUID(), 's', '{}', 'pending', NULL), \
         (UUID(), 's', '{}', 'dead', NULL)",
    );
    let cutoff = chrono::Utc::now() - chrono::Duration::hours(24);
    let pruned = actors::OutboxStore::prune_published(&*store, cutoff)
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    assert_eq!(
        db.sql("SELECT GROUP_CONCAT(state ORDER BY state) FROM outbox")
            .trim(),
        "pending,published,dead"
    );
}

/// Daemons started together on a fresh database take turns migrating: each one ends with
/// the whole schema and none fails on the migrations table (found by the chaos harness).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_starts_migrate_one_at_a_time() {
    let db = TestDb::create();
    let stores: Vec<MysqlStore> = (0..4)
        .map(|_| {
            MysqlStore::connect(
                &Secret::new(db.url.clone()),
                PoolSettings {
                    max_connections: 2,
                    acquire_timeout: Duration::from_secs(5),
                    outbox_max_retries: 3,
                },
            )
            .unwrap()
        })
        .collect();
    let results = futures::future::join_all(stores.iter().map(|s| s.migrate())).await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1"),
        std::fs::read_dir("migrations/mysql").unwrap().count() as i64
    );
}

/// A store whose settles take 200 ms (a slow commit).
struct SlowSettles(Arc<MysqlStore>);

struct Delayed(actors::Claim);

impl actors::Settle for Delayed {
    fn settle<'a>(
        self: Box<Self>,
        published: &'a [i64],
        failures: &'a [actors::model::PublishFailure],
    ) -> BoxFuture<'a, Result<(), actors::StoreError>> {
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.0.settle(published, failures).await
        }
        .boxed()
    }
}

impl actors::OutboxStore for SlowSettles {
    fn claim(
        &self,
        limit: u32,
        lease: Duration,
    ) -> BoxFuture<'_, Result<actors::Claim, actors::StoreError>> {
        async move {
            let mut claim = self.0.claim(limit, lease).await?;
            if claim.events.is_empty() {
                return Ok(claim);
            }
            let events = std::mem::take(&mut claim.events);
            Ok(actors::Claim::new(events, Box::new(Delayed(claim))))
        }
        .boxed()
    }

    fn prune_published(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<u64, actors::StoreError>> {
        self.0.prune_published(before)
    }

    fn replay_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<u64, actors::StoreError>> {
        self.0.replay_since(since)
    }
}

/// With the daemon's background settling, a round returns before its rows are marked (here
/// 200 ms later); the rounds after it claim while those marks are pending and must skip the
/// still-locked rows: every row is published exactly once, and every one is marked as soon
/// as the settles are drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_that_settle_in_the_background_publish_each_row_once() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let rows = 3000;
    let store = store(&db, 3).await;
    pending_rows(&db, rows);
    let (broker, _client) = prime_stream(&nats).await;
    let recording = Arc::new(Recording {
        inner: broker,
        seen: Mutex::new(HashMap::new()),
    });
    let slots = actors::outbox_relay::SettleSlots::new(3);
    let mut args = relay_args(store.clone(), recording.clone(), 500);
    args.store = Arc::new(SlowSettles(store.clone()));
    args.parallel_rounds = 3;
    args.background_settle = Some(slots.clone());
    let mut published = 0;
    loop {
        let outcome = rounds(&args).await.unwrap();
        published += outcome.published;
        // Rows under a pending mark are skipped: an empty claim may come while marks run.
        assert!(
            slots.drain(Duration::from_secs(10)).await,
            "the settles end"
        );
        let marked: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE state = 'published'")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(
            marked as usize, published,
            "every published row is marked once drained"
        );
        if outcome.claimed == 0 {
            break;
        }
    }
    assert_eq!(published, rows);
    let seen = recording.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), rows);
    assert!(
        seen.values().all(|&n| n == 1),
        "an event was published twice"
    );
}

fn new_request(i: usize) -> actors::model::NewRequest {
    actors::model::NewRequest {
        id: uuid::Uuid::now_v7().to_string(),
        number: (1000 + i).to_string(),
        email: "a@b.co".into(),
        idempotency_key: None,
        request_id: Some(format!("req-{i}")),
        traceparent: None,
        event_id: uuid::Uuid::now_v7().to_string(),
        owner: None,
    }
}

/// The fast path (PRIMED_OUTBOX_DIRECT, on by default): with no relay running at all, an
/// accepted request's event and a result's email event reach JetStream right after their
/// commits, and their rows end published. Their rows were written not yet due, so that no
/// relay takes them meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_events_are_published_right_after_their_commit_without_a_relay() {
    use actors::{RequestStore, WorkerStore};
    let db = TestDb::create();
    let nats = NatsServer::start();
    let store = store(&db, 3).await;
    let (broker, _client) = prime_stream(&nats).await;
    let wake = RelayWake::new("no-relay-here");
    store.publish_directly(Arc::new(broker), wake.clone(), Default::default());

    for i in 0..5 {
        store.create(new_request(i)).await.unwrap();
    }
    let request = new_request(5);
    let (request_id, event_id) = (request.id.clone(), request.event_id.clone());
    store.create(request).await.unwrap();
    assert_eventually!(
        db.count("SELECT COUNT(*) FROM outbox WHERE state = 'published'") == 6,
        "the new events were not marked published"
    );
    assert_eq!(
        subject_messages(&nats.url(), "PRIME", "primecheck.requested").await,
        6
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE next_retry_at > created_at"),
        6,
        "rows handed to the fast path are written not yet due"
    );

    let fresh = store
        .record_result(actors::model::PrimeResult {
            event_id,
            email_event_id: uuid::Uuid::now_v7().to_string(),
            email: actors::model::EmailSend {
                request_id: request_id.clone(),
                number: "1005".into(),
                email: "a@b.co".into(),
                is_prime: false,
                factor: Some("5".into()),
                digits: 4,
            },
            duration: Duration::from_micros(3),
            request_id: Some("req-5".into()),
            traceparent: None,
        })
        .await
        .unwrap();
    assert!(fresh);
    assert_eventually!(
        db.count(
            "SELECT COUNT(*) FROM outbox WHERE subject = 'email.send' AND state = 'published'"
        ) == 1,
        "the result's email event was not published"
    );
    assert_eq!(
        subject_messages(&nats.url(), "PRIME", "email.send").await,
        1
    );
}

/// What the fast path cannot publish (NATS is down) waits out its grace and goes through
/// the relay; once a publish failed, new events are written due at once, for the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_fast_path_cannot_publish_goes_through_the_relay() {
    use actors::RequestStore;
    let db = TestDb::create();
    let mut nats = NatsServer::start();
    let store = store(&db, 100).await;
    let (broker, _client) = prime_stream(&nats).await;
    let broker: Arc<dyn Broker> = Arc::new(broker);
    store.publish_directly(
        broker.clone(),
        RelayWake::new("no-relay-here"),
        Default::default(),
    );

    nats.stop();
    store.create(new_request(0)).await.unwrap();
    assert_eventually!(
        db.count("SELECT COUNT(*) FROM outbox WHERE state = 'published'") == 0
            && store
                .direct_stats()
                .is_some_and(|s| s.failed.load(std::sync::atomic::Ordering::Relaxed) >= 1)
            && metric_value("outbox_direct_events_total{result=\"failed\"}") >= 1.0,
        "the failed direct publish was not counted"
    );
    // Taken by the fast path, written with its grace: not due for a relay yet.
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE next_retry_at > created_at"),
        1
    );
    // After the failure, a new event is left to the relay at once.
    store.create(new_request(1)).await.unwrap();
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE next_retry_at IS NULL"),
        1,
        "a new event after a failed publish is due at once"
    );

    nats.start_again();
    let args = relay_args(store.clone(), broker, 100);
    assert_eventually!(
        {
            let _ = round(&args).await;
            db.count("SELECT COUNT(*) FROM outbox WHERE state = 'published'") == 2
        },
        "the relay did not publish what the fast path missed"
    );
    assert_eq!(
        subject_messages(&nats.url(), "PRIME", "primecheck.requested").await,
        2,
        "none lost, none twice"
    );
}

/// A publish the broker refuses at once (as a new stream leader does right after its
/// election) is handed to the relay at once: its row is made due before its grace ends,
/// instead of leaving its request a second behind the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_broker_refuses_on_the_fast_path_is_due_for_the_relay_at_once() {
    use actors::RequestStore;
    let db = TestDb::create();
    let nats = NatsServer::start();
    let store = store(&db, 100).await;
    let (broker, client) = prime_stream(&nats).await;
    store.publish_directly(
        Arc::new(broker),
        RelayWake::new("no-relay-here"),
        Default::default(),
    );
    // No stream takes the subject now: the publish is refused at once.
    async_nats::jetstream::new(client)
        .delete_stream("PRIME")
        .await
        .unwrap();
    store.create(new_request(0)).await.unwrap();
    assert_eventually!(
        db.count(
            "SELECT COUNT(*) FROM outbox WHERE state = 'pending' \
             AND next_retry_at < created_at + INTERVAL 1 SECOND"
        ) == 1,
        "the refused event was not made due before its grace ended"
    );
}

/// The value of a sample in this process's registry.
fn metric_value(series: &str) -> f64 {
    let families = actors::metrics::registry().gather();
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .unwrap();
    support::sample(&text, series)
}

/// A pull request the old leader of its consumer held is answered by nobody: when
/// JetStream reports a new leader for the consumer (or the stream), the pull ends at once
/// instead of at its expiry, so the worker pulls from the new leader. (The advisories are
/// published here by hand, on the subjects JetStream uses; that another consumer's election
/// leaves a pull alone is a unit test of `Interruptions`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_ends_when_jetstream_elects_a_new_leader_for_its_consumer_or_stream() {
    use actors::ports::Source;
    use futures::StreamExt;
    use primed::adapters::nats::source::JetStreamSource;
    let nats = NatsServer::start();
    let (broker, client) = prime_stream(&nats).await;
    let js = async_nats::jetstream::new(client.clone());
    for (consumer, subject) in [
        (
            CONSUMER_PRIMECHECK,
            "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.PRIME.primecheck-worker",
        ),
        (
            primed::adapters::nats::CONSUMER_EMAIL,
            "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.PRIME",
        ),
    ] {
        let source = JetStreamSource::bind(
            broker.context(),
            "PRIME",
            consumer,
            &primed::adapters::nats::Subjects::new(""),
        )
        .await
        .unwrap()
        .ended_by(broker.interruptions().for_consumer(consumer));
        let mut pull = source.pull(1, Duration::from_secs(60));
        let next = tokio::spawn(async move { pull.next().await.is_none() });
        // The pull request is at the server, so the pull is being waited on.
        assert_eventually!(
            {
                let mut c: async_nats::jetstream::consumer::PullConsumer = js
                    .get_stream("PRIME")
                    .await
                    .unwrap()
                    .get_consumer(consumer)
                    .await
                    .unwrap();
                c.info().await.unwrap().num_waiting > 0
            },
            "the pull request of {consumer} reaches the server"
        );
        client
            .publish(subject, bytes::Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .unwrap_or_else(|_| panic!("the pull from {consumer} was not ended by {subject}"))
            .unwrap();
        assert!(ended, "it ended without a message");
    }
}

/// A new leader answers info requests before it serves (nats-server 2.9 announces it before
/// it subscribes to the stream's subjects or the consumer's pull requests): for [`SETTLE`]
/// after JetStream reports an election — of the stream, or of a consumer — a failed publish
/// is the broker's (the relay retries it soon and spends none of the event's retries), not
/// the event's, which would put it on its backoff. Afterwards the stream's answer decides
/// again. (The advisories are published here by hand on JetStream's subjects.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_failures_just_after_an_election_are_the_brokers() {
    use primed::adapters::nats::SETTLE;
    let nats = NatsServer::start();
    let (broker, client) = prime_stream(&nats).await;
    // A subject no stream takes: JetStream answers "no responders" while the stream is up.
    let failed = broker
        .publish_batch(&[OutgoingMessage::first(
            "e-1".into(),
            "nowhere.else",
            b"{}".to_vec(),
            None,
            None,
        )])
        .await;
    assert!(failed[0].is_err(), "a publish nobody takes fails");
    assert!(
        broker.available().await,
        "the stream answers: the failure is the event's"
    );

    for advisory in [
        "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.PRIME",
        "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.PRIME.primecheck-worker",
    ] {
        let mut seen = Box::pin(broker.interruptions().next());
        assert!((&mut seen).now_or_never().is_none(), "no election yet");
        client
            .publish(advisory, bytes::Bytes::from_static(b"{}"))
            .await
            .unwrap();
        tokio::time::timeout(support::WAIT, seen)
            .await
            .unwrap_or_else(|_| panic!("the broker sees {advisory}"));
        let elected = std::time::Instant::now();
        assert!(
            !broker.available().await,
            "after {advisory} a failure is the broker's"
        );
        assert!(elected.elapsed() < SETTLE, "checked while settling");
        assert_eventually!(
            broker.available().await,
            "once the new leader has settled, the stream's answer decides again"
        );
    }
}

/// A new consumer leader announces itself before it listens for pull requests, so a pull sent
/// at its election can go unheard until its `expires`. While the broker settles after an
/// election, pulls are short: a minute's pull ends within a second, and is sent again. Once
/// settled, a pull waits its time again. (The advisory is published here by hand.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_are_short_while_the_broker_settles_after_an_election() {
    use actors::ports::Source;
    use futures::StreamExt;
    use primed::adapters::nats::SETTLE;
    use primed::adapters::nats::source::JetStreamSource;
    let nats = NatsServer::start();
    let (broker, client) = prime_stream(&nats).await;
    let source = JetStreamSource::bind(
        broker.context(),
        "PRIME",
        CONSUMER_PRIMECHECK,
        &primed::adapters::nats::Subjects::new(""),
    )
    .await
    .unwrap()
    .ended_by(broker.interruptions().for_consumer(CONSUMER_PRIMECHECK));
    let pull_ends_within = |expires: Duration, within: Duration| {
        let mut pull = source.pull(1, expires);
        async move {
            tokio::time::timeout(within, pull.next())
                .await
                .is_ok_and(|next| next.is_none())
        }
    };
    assert!(
        !pull_ends_within(Duration::from_secs(60), Duration::from_secs(2)).await,
        "settled, a pull waits its time"
    );

    let mut seen = Box::pin(broker.interruptions().next());
    assert!((&mut seen).now_or_never().is_none(), "no election yet");
    client
        .publish(
            "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.PRIME.email-worker",
            bytes::Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
    tokio::time::timeout(support::WAIT, seen)
        .await
        .expect("the broker sees the election");
    let elected = std::time::Instant::now();
    assert!(
        pull_ends_within(Duration::from_secs(60), Duration::from_secs(1)).await,
        "while settling, a minute's pull ends within a second"
    );
    assert!(elected.elapsed() < SETTLE, "checked while settling");

    assert_eventually!(
        !broker.interruptions().settling(),
        "the broker settles {SETTLE:?} after the election"
    );
    assert!(
        !pull_ends_within(Duration::from_secs(60), Duration::from_secs(2)).await,
        "settled again, a pull waits its time"
    );
}
