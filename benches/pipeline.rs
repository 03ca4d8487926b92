//! Pipeline benchmarks (a bench binary: `cargo bench --bench pipeline`). Needs MariaDB on
//! 127.0.0.1:3306 (root, no password; or MySQL on `BENCH_MYSQL_PORT`) and `nats-server`
//! installed; it creates its own database and starts its own nats-server, and removes both
//! afterwards.
//!
//! 1. Accept rate: `POST /prime-check` at 64 concurrent clients against MariaDB, next to the
//!    same two-insert transaction issued directly (the database's ceiling here).
//! 2. Relay throughput: a pre-filled outbox of 200,000 rows to JetStream acks, next to raw
//!    JetStream async publishing of the same messages.
//! 3. Relay lag: insert → JetStream ack at a steady 1,000 events/s.
//!
//! `ACCEPT_REQUESTS`, `RELAY_ROWS`, `RELAY_REPEATS` and `LAG_SECONDS` change the sizes.

// Benchmark code: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

// The daemon's allocator (see src/main.rs), so that the bench measures what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{env_count, mariadb, pct};

use actors::model::NewRequest;
use actors::outbox_relay::rounds;
use actors::{
    Broker, BrokerError, OutboxRelay, OutgoingMessage, RelayArgs, RelayWake, RequestStore,
    RetryPolicy,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use primed::adapters::mysql::{MysqlStore, PoolSettings};
use primed::adapters::nats::{HEADER_ATTEMPT, HEADER_EVENT_ID, JetStreamBroker, JetStreamSettings};
use primed::config::Secret;
use primed::http::{AppState, router};
use ractor::Actor;

const CONCURRENCY: usize = 64;
const POOL: u32 = 32;

struct Nats {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Relay rounds in flight (`RELAY_PARALLEL`, default 4 as `PRIMED_OUTBOX_PARALLEL_ROUNDS`).
fn parallel() -> u32 {
    env_count("RELAY_PARALLEL", 4) as u32
}

/// Events per relay round (`RELAY_BATCH`, default 1000; `PRIMED_OUTBOX_BATCH_SIZE` in the daemon).
fn batch() -> u32 {
    env_count("RELAY_BATCH", 1000) as u32
}

fn request(i: usize) -> NewRequest {
    NewRequest {
        id: uuid::Uuid::now_v7().to_string(),
        number: (1_000_000_007 + i).to_string(),
        email: "bench@example.com".into(),
        idempotency_key: None,
        request_id: Some(format!("bench-{i}")),
        traceparent: None,
        event_id: uuid::Uuid::now_v7().to_string(),
        owner: None,
    }
}

async fn run(db: &str) {
    let url = common::db_url(db);
    let store = Arc::new(
        MysqlStore::connect(
            &Secret::new(url.clone()),
            PoolSettings {
                max_connections: POOL,
                acquire_timeout: Duration::from_secs(30),
                outbox_max_retries: 3,
            },
        )
        .unwrap(),
    );
    store.migrate().await.unwrap();
    let version = mariadb("SELECT VERSION()");
    println!(
        "{} {} (innodb_flush_log_at_trx_commit={}, binary log {})",
        if version.contains("MariaDB") {
            "MariaDB"
        } else {
            "MySQL"
        },
        version.trim(),
        mariadb("SELECT @@innodb_flush_log_at_trx_commit").trim(),
        if mariadb("SELECT @@log_bin").trim() == "1" {
            "on"
        } else {
            "off"
        },
    );
    common::numbers(db, env_count("RELAY_ROWS", 200_000).max(20_000));

    accept_rate(db, store.clone()).await;
    let nats = Nats::start();
    relay_throughput(db, store.clone(), &nats).await;
    relay_lag(db, store, &nats).await;
}

async fn accept_rate(db: &str, store: Arc<MysqlStore>) {
    let total = env_count("ACCEPT_REQUESTS", 20_000);
    let per_client = total / CONCURRENCY;

    // The database's ceiling: the same two inserts in one transaction, issued directly.
    let raw_pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(POOL)
        .connect(&common::db_url(db))
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CONCURRENCY {
        let pool = raw_pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let r = request(c * per_client + i);
                let s = Instant::now();
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("INSERT INTO prime_check_requests (id, number, email, idempotency_key, request_id, created_at) VALUES (?, ?, ?, ?, ?, NOW(6))")
                    .bind(&r.id).bind(&r.number).bind(&r.email).bind(&r.idempotency_key).bind(&r.request_id)
                    .execute(&mut *tx).await.unwrap();
                sqlx::query("INSERT INTO outbox (event_id, subject, payload, request_id, traceparent, max_retries, created_at) VALUES (?, 'primecheck.requested', ?, ?, ?, 3, NOW(6))")
                    .bind(&r.event_id).bind(format!(r#"{{"request_id":"{}","number":"{}","email":"{}"}}"#, r.id, r.number, r.email)).bind(&r.request_id).bind(&r.traceparent)
                    .execute(&mut *tx).await.unwrap();
                tx.commit().await.unwrap();
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut raw_lat = Vec::new();
    for t in tasks {
        raw_lat.extend(t.await.unwrap());
    }
    let raw_elapsed = t0.elapsed();
    raw_lat.sort();
    let raw_rate = raw_lat.len() as f64 / raw_elapsed.as_secs_f64();
    mariadb(&format!(
        "TRUNCATE {db}.outbox; TRUNCATE {db}.prime_check_requests"
    ));

    // The API over HTTP on loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(AppState::new("bench", Vec::new()).with_requests(store.clone(), None, 1000));
    let stats_before = store.accept_stats();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let url = format!("http://{addr}/prime-check");
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CONCURRENCY {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let body = format!(
                    r#"{{"number":"{}","email":"bench@example.com"}}"#,
                    1_000_000_007 + c * per_client + i
                );
                let s = Instant::now();
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut api_lat = Vec::new();
    for t in tasks {
        api_lat.extend(t.await.unwrap());
    }
    let api_elapsed = t0.elapsed();
    api_lat.sort();
    let api_rate = api_lat.len() as f64 / api_elapsed.as_secs_f64();
    println!(
        "\n## Accept rate ({} requests, {CONCURRENCY} concurrent clients, pool {POOL})",
        api_lat.len()
    );
    println!("| path | requests/s | p50 | p99 |");
    println!("|---|---|---|---|");
    println!(
        "| raw two-insert transaction (sqlx) | {raw_rate:.0} | {:.2?} | {:.2?} |",
        pct(&raw_lat, 0.5),
        pct(&raw_lat, 0.99)
    );
    println!(
        "| POST /prime-check (HTTP + validation + transaction) | {api_rate:.0} | {:.2?} | {:.2?} |",
        pct(&api_lat, 0.5),
        pct(&api_lat, 0.99)
    );
    println!("API / raw: {:.0}%", 100.0 * api_rate / raw_rate);
    let stats = store.accept_stats();
    let (transactions, requests) = (
        stats.transactions - stats_before.transactions,
        stats.requests - stats_before.requests,
    );
    println!(
        "API transactions: {transactions} for {requests} requests ({:.1} requests per transaction)",
        requests as f64 / transactions.max(1) as f64
    );
}

async fn relay_throughput(db: &str, store: Arc<MysqlStore>, nats: &Nats) {
    let rows = env_count("RELAY_ROWS", 200_000);
    let repeats = env_count("RELAY_REPEATS", 3);
    let payload = r#"{"request_id":"01936d6e-5f2a-7c3b-9d4e-123456789abc","number":"1000000007","email":"bench@example.com"}"#;
    let settings = JetStreamSettings::new("PRIME");
    let (broker, client) = JetStreamBroker::connect(&nats.url(), &settings)
        .await
        .unwrap();
    broker.ensure_topology(&settings).await.unwrap();
    let js = broker.context().clone();

    let args = RelayArgs {
        store,
        broker: Arc::new(broker.clone()),
        batch_size: batch(),
        parallel_rounds: parallel(),
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_millis(100),
        retry: RetryPolicy::default(),
        retention: Duration::from_secs(3600),
        prune_interval: Duration::from_secs(3600),
        wake: RelayWake::new("unused"),
        stats: Default::default(),
        background_settle: None,
    };
    // Relay and raw publishing take turns, `repeats` times, each on a fresh outbox and an
    // empty stream, so that a slow moment of the shared machine does not decide the ratio.
    let mut runs = Vec::new();
    for _ in 0..repeats {
        mariadb(&format!("TRUNCATE {db}.outbox"));
        mariadb(&format!(
            "USE {db}; INSERT INTO outbox (event_id, subject, payload, request_id) \
             SELECT UUID(), 'primecheck.requested', '{payload}', CONCAT('bench-', seq) FROM numbers WHERE seq <= {rows}"
        ));
        js.get_stream("PRIME").await.unwrap().purge().await.unwrap();

        // All the pre-filled rows, timed from the first claim to the last mark.
        let mut published = 0;
        let t0 = Instant::now();
        loop {
            let outcome = rounds(&args).await.unwrap();
            published += outcome.published;
            if outcome.claimed == 0 {
                break;
            }
        }
        let relay_elapsed = t0.elapsed();
        assert_eq!(published, rows);

        js.get_stream("PRIME").await.unwrap().purge().await.unwrap();
        // Raw: the same messages (size and headers), async publish with acks awaited in windows.
        let t0 = Instant::now();
        let window = 1000;
        for start in (0..rows).step_by(window) {
            let mut acks = Vec::with_capacity(window);
            for i in start..(start + window).min(rows) {
                let mut headers = async_nats::HeaderMap::new();
                let id = uuid::Uuid::now_v7().to_string();
                headers.insert("Nats-Msg-Id", id.as_str());
                headers.insert(HEADER_EVENT_ID, id.as_str());
                headers.insert(HEADER_ATTEMPT, "1");
                headers.insert("Primed-Request-Id", format!("bench-{i}").as_str());
                acks.push(
                    js.publish_with_headers("primecheck.requested", headers, payload.into())
                        .await
                        .unwrap(),
                );
            }
            for ack in futures::future::join_all(acks.into_iter().map(|a| a.into_future())).await {
                ack.unwrap();
            }
        }
        let raw_elapsed = t0.elapsed();
        runs.push((relay_elapsed, raw_elapsed));
    }

    // Where a round's time goes (claim, publish, mark), on 20 rounds of 1,000 fresh rows,
    // after the timed run so that it publishes every pre-filled row.
    mariadb(&format!(
        "USE {db}; INSERT INTO outbox (event_id, subject, payload, request_id) \
         SELECT UUID(), 'primecheck.requested', '{payload}', CONCAT('bench-', seq) FROM numbers WHERE seq <= 20000"
    ));
    let (mut claim_t, mut publish_t, mut mark_t) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let sample = 20u32;
    for _ in 0..sample {
        let t = Instant::now();
        let claim = actors::OutboxStore::claim(&*args.store, 1000, Duration::from_secs(30))
            .await
            .unwrap();
        claim_t += t.elapsed();
        let messages: Vec<OutgoingMessage> = claim
            .events
            .iter()
            .map(|e| OutgoingMessage {
                event_id: e.event_id.clone(),
                subject: e.subject.clone(),
                payload: e.payload.clone(),
                attempt: 1,
                request_id: e.request_id.clone(),
                traceparent: None,
                dlq_id: e.dlq_id,
            })
            .collect();
        let t = Instant::now();
        let results = args.broker.publish_batch(&messages).await;
        publish_t += t.elapsed();
        assert!(results.iter().all(Result::is_ok));
        let ids: Vec<i64> = claim.events.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), 1000);
        let t = Instant::now();
        claim.settle(&ids, &[]).await.unwrap();
        mark_t += t.elapsed();
    }
    println!(
        "\nround breakdown (mean of {sample} rounds of 1000): claim {:.2?}, publish {:.2?}, mark and commit {:.2?}",
        claim_t / sample,
        publish_t / sample,
        mark_t / sample
    );

    drop(client);
    println!(
        "\n## Relay throughput ({rows} pre-filled rows, batch {}, {} rounds in flight, {}-byte payload)",
        batch(),
        parallel(),
        payload.len()
    );
    println!(
        "| turn | raw JetStream async publish (windows of 1000) | outbox relay (claim → publish → ack → mark) | relay / raw |"
    );
    println!("|---|---|---|---|");
    let mut ratios = Vec::new();
    for (i, (relay_elapsed, raw_elapsed)) in runs.iter().enumerate() {
        let relay_rate = rows as f64 / relay_elapsed.as_secs_f64();
        let raw_rate = rows as f64 / raw_elapsed.as_secs_f64();
        ratios.push(relay_rate / raw_rate);
        println!(
            "| {} | {raw_rate:.0} events/s ({raw_elapsed:.2?}) | {relay_rate:.0} events/s ({relay_elapsed:.2?}) | {:.0}% |",
            i + 1,
            100.0 * relay_rate / raw_rate
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "relay / raw: median {:.0}%",
        100.0 * ratios[ratios.len() / 2]
    );
}

/// Records when each event's publish was acknowledged.
struct Timed {
    inner: JetStreamBroker,
    acked: Mutex<HashMap<String, Instant>>,
}

impl Broker for Timed {
    fn publish_batch<'a>(
        &'a self,
        messages: &'a [OutgoingMessage],
    ) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        async move {
            let results = self.inner.publish_batch(messages).await;
            let now = Instant::now();
            let mut acked = self.acked.lock().unwrap();
            for m in messages {
                acked.insert(m.event_id.clone(), now);
            }
            results
        }
        .boxed()
    }
}

async fn relay_lag(db: &str, store: Arc<MysqlStore>, nats: &Nats) {
    let seconds = env_count("LAG_SECONDS", 10);
    mariadb(&format!(
        "TRUNCATE {db}.outbox; TRUNCATE {db}.prime_check_requests"
    ));
    let settings = JetStreamSettings::new("PRIME");
    let (broker, _client) = JetStreamBroker::connect(&nats.url(), &settings)
        .await
        .unwrap();
    let timed = Arc::new(Timed {
        inner: broker,
        acked: Mutex::new(HashMap::new()),
    });
    let wake = RelayWake::new("bench-relay");
    let args = RelayArgs {
        store: store.clone(),
        broker: timed.clone(),
        batch_size: 500,
        parallel_rounds: parallel(),
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_millis(500),
        retry: RetryPolicy::default(),
        retention: Duration::from_secs(3600),
        prune_interval: Duration::from_secs(3600),
        wake: wake.clone(),
        stats: Default::default(),
        // As the daemon runs it.
        background_settle: Some(actors::outbox_relay::SettleSlots::new(parallel())),
    };
    let (relay, handle) = Actor::spawn(Some("bench-relay".into()), OutboxRelay, args)
        .await
        .unwrap();

    let total = seconds * 1000;
    let mut committed = HashMap::with_capacity(total);
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let t0 = Instant::now();
    let mut inflight = Vec::new();
    for i in 0..total {
        ticker.tick().await;
        let store = store.clone();
        let wake = wake.clone();
        inflight.push(tokio::spawn(async move {
            let r = request(i);
            let event_id = r.event_id.clone();
            store.create(r).await.unwrap();
            let at = Instant::now();
            wake.wake();
            (event_id, at)
        }));
        if inflight.len() >= 200 {
            for t in inflight.drain(..) {
                let (id, at) = t.await.unwrap();
                committed.insert(id, at);
            }
        }
    }
    for t in inflight.drain(..) {
        let (id, at) = t.await.unwrap();
        committed.insert(id, at);
    }
    let offered = total as f64 / t0.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    while timed.acked.lock().unwrap().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.stop(None);
    let _ = handle.await;
    let acked = timed.acked.lock().unwrap();
    let mut lags: Vec<Duration> = committed
        .iter()
        .filter_map(|(id, at)| acked.get(id).map(|ack| ack.saturating_duration_since(*at)))
        .collect();
    assert_eq!(lags.len(), total, "every event must be acknowledged");
    lags.sort();
    println!(
        "\n## Relay lag (commit → JetStream ack), {total} events at {offered:.0} events/s offered"
    );
    println!("| p50 | p90 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| {:.2?} | {:.2?} | {:.2?} | {:.2?} |",
        pct(&lags, 0.5),
        pct(&lags, 0.9),
        pct(&lags, 0.99),
        lags[lags.len() - 1]
    );
}

fn main() {
    common::with_database("primed_bench", |db| async move { run(&db).await });
}
