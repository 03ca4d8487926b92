//! End to end: accepted request → result email accepted by the SMTP server, with two
//! `primed` daemons sharing MariaDB and a nats-server (`cargo bench --bench e2e`).
//!
//! Needs MariaDB on 127.0.0.1:3306 (root, no password) and `nats-server`; creates its own
//! database, nats-server and an in-process SMTP sink (which reads the request id from each
//! email's body), and removes them afterwards.
//!
//! 1. Throughput: `E2E_REQUESTS` (default 10,000) 64-bit numbers submitted by 64 concurrent
//!    clients over both daemons; the time until the last email arrives.
//! 2. Latency: a steady `E2E_RATE` requests/s (default 500) for `E2E_SECONDS` (default 20);
//!    per request, the time from sending the POST to the email's arrival.
//!
//! `E2E_LOG` sets the daemons' `RUST_LOG` (default `warn`; `info` measures them with their
//! access and pipeline log lines and spans).

// Benchmark code: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{env_count, pct};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// When each request's email arrived, by request id.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// A minimal SMTP server that accepts everything and notes when each email came.
async fn smtp_sink(arrivals: Arrivals) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let arrivals = arrivals.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 sink\r\n").await;
                let mut in_data = false;
                let mut request = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            if let Some(id) = request.take() {
                                arrivals.lock().unwrap().insert(id, Instant::now());
                            }
                            let _ = write.write_all(b"250 ok\r\n").await;
                        } else if let Some(id) = line.strip_prefix("Request id: ") {
                            request = Some(id.trim().to_string());
                        }
                        continue;
                    }
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("DATA") {
                        in_data = true;
                        b"354 go\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn daemon(db_url: &str, nats_url: &str, smtp_port: u16, dir: &std::path::Path) -> (Proc, String) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_primed"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "RUST_LOG",
            std::env::var("E2E_LOG").unwrap_or_else(|_| "warn".into()),
        )
        // The pipeline is measured here; the limiter has its own benchmark.
        .env("RATE_LIMIT_ENABLED", "false")
        .env("DATABASE_URL", db_url)
        .env("NATS_URL", nats_url)
        .env("SMTP_HOST", "127.0.0.1")
        .env("SMTP_PORT", smtp_port.to_string())
        .env("SMTP_TLS", "none")
        .env("SMTP_FROM", "primed@example.com")
        .env("ADMIN_API_KEYS", "bench-token-0123456789")
        .env("PRIMED_DB_MAX_CONNECTIONS", "32")
        .env("PRIMED_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("PRIMED_DATA_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("primed");
    (Proc(child), format!("http://127.0.0.1:{port}"))
}

async fn post(client: &reqwest::Client, base: &str, n: u64) -> String {
    let r = client
        .post(format!("{base}/prime-check"))
        .json(&serde_json::json!({"number": n.to_string(), "email": "bench@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn run(db: &str) {
    let nats_port = free_port();
    let nats_dir = tempfile::tempdir().unwrap();
    let _nats = Proc(
        Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &nats_port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(nats_dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server"),
    );
    let arrivals: Arrivals = Arc::default();
    let smtp_port = smtp_sink(arrivals.clone()).await;
    let db_url = common::db_url(db);
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    // The first daemon migrates and sets up the streams; then the second joins.
    let mut daemons = Vec::new();
    let mut bases = Vec::new();
    for dir in &dirs {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (proc, base) = daemon(&db_url, &nats_url, smtp_port, dir.path());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client.get(format!("{base}/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "daemon at {base} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        daemons.push(proc);
        bases.push(base);
    }
    let bases = Arc::new(bases);

    // 1. Throughput.
    let total = env_count("E2E_REQUESTS", 10_000);
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (client, bases, next) = (client.clone(), bases.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let n = rand::random::<u64>() | 1;
                post(&client, &bases[i % 2], n).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while arrivals.lock().unwrap().len() < total {
        assert!(Instant::now() < deadline, "emails missing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done = started.elapsed();
    println!(
        "throughput: {total} requests accepted in {:.2} s ({:.0}/s); all emails in {:.2} s: {:.0} requests/s end to end (2 daemons)",
        accepted.as_secs_f64(),
        total as f64 / accepted.as_secs_f64(),
        done.as_secs_f64(),
        total as f64 / done.as_secs_f64()
    );

    // 2. Latency at a steady rate.
    let rate = env_count("E2E_RATE", 500);
    let seconds = env_count("E2E_SECONDS", 20);
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let count = rate * seconds;
    for i in 0..count {
        ticker.tick().await;
        let (client, bases, sent) = (client.clone(), bases.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let id = post(&client, &bases[i % 2], rand::random::<u64>() | 1).await;
            sent.lock().unwrap().insert(id, t);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let missing = {
            let sent = sent.lock().unwrap();
            let arrived = arrivals.lock().unwrap();
            sent.keys().filter(|id| !arrived.contains_key(*id)).count()
        };
        if missing == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{missing} emails missing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut latencies: Vec<Duration> = {
        let sent = sent.lock().unwrap();
        let arrived = arrivals.lock().unwrap();
        sent.iter()
            .map(|(id, t)| arrived[id].saturating_duration_since(*t))
            .collect()
    };
    latencies.sort();
    println!(
        "latency at {rate} requests/s for {seconds} s ({} requests): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        pct(&latencies, 0.5).as_secs_f64() * 1000.0,
        pct(&latencies, 0.9).as_secs_f64() * 1000.0,
        pct(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies[latencies.len() - 1].as_secs_f64() * 1000.0
    );
    drop(daemons);
}

fn main() {
    common::with_database("primed_e2e", |db| async move { run(&db).await });
}
