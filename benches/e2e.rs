//! End to end: accepted request → result email accepted by the SMTP server
//! (`cargo bench --bench e2e`).
//!
//! Needs MariaDB on 127.0.0.1:3306 (root, no password) and `nats-server`. Each setup gets
//! its own database, nats-server (or, embedded, a data directory) and an in-process SMTP
//! sink that offers PIPELINING, as Postfix, Mailpit and the peers' sink do; it reads the
//! request id from each email's body. Everything is removed afterwards.
//!
//! Setups (`E2E_SETUPS`, comma-separated, default `mysql1,mysql2,embedded`): `mysqlN` (N
//! daemons on one MariaDB and one JetStream server; `mysql1`, `mysql2`, `mysql3`, …),
//! `clusterN` (N daemons on one MariaDB and a three-node JetStream cluster, every stream
//! with three replicas, each daemon given the three servers' URLs), `embedded` (one daemon,
//! SQLite). The daemons run with their defaults but for rate
//! limiting (off; it has its own bench). For the closed loop of a MySQL setup it also
//! reports what each process spent per request (CPU µs, from `/proc/<pid>/stat`: each daemon,
//! each nats-server, mariadbd, and this process — the clients and the SMTP sink) and the
//! database's commits per request (`Handler_commit`), for docs/SCALING.md.
//! In each:
//!
//! 1. Closed loop: `E2E_REQUESTS` (default 5,000) 18-digit numbers from 32 clients, as the
//!    peers' driver sends them. Reported: accepted/s (HTTP phase), emails/s end to end
//!    (delivered / (last email − first POST)), the e2e latency, and on MySQL each stage's
//!    rate from the tables (accepted, checked, emailed).
//! 2. Open loop at 100 and at 1,000 requests/s (`E2E_RATES`) for `E2E_SECONDS` (default 10):
//!    per request, POST sent → email received, p50 / p99 / max.
//!
//! `E2E_LOG` sets the daemons' `RUST_LOG` (default `info`, the daemon's own default); each
//! daemon's JSON lines go to a file in its data directory, as under the peers' driver.

// Benchmark code: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{env_count, pct};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// A minimal SMTP server that accepts everything, answers pipelined commands with one
/// write per read, and notes when each email came.
async fn smtp_sink(arrivals: Arrivals) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let arrivals = arrivals.clone();
            tokio::spawn(async move {
                let _ = socket.set_nodelay(true);
                if socket.write_all(b"220 sink ESMTP\r\n").await.is_err() {
                    return;
                }
                let mut pending = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                let mut in_data = false;
                let mut request = None;
                loop {
                    let n = match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    let mut replies = Vec::new();
                    let mut quit = false;
                    while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
                        let line: Vec<u8> = pending.drain(..end + 2).collect();
                        let line = String::from_utf8_lossy(&line[..end]);
                        if in_data {
                            if line == "." {
                                in_data = false;
                                if let Some(id) = request.take() {
                                    arrivals.lock().unwrap().insert(id, Instant::now());
                                }
                                replies.extend_from_slice(b"250 ok\r\n");
                            } else if let Some(id) = line.strip_prefix("Request id: ") {
                                request = Some(id.trim().to_string());
                            }
                            continue;
                        }
                        let upper = line.to_ascii_uppercase();
                        if upper.starts_with("EHLO") {
                            replies.extend_from_slice(
                                b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                            );
                        } else if upper.starts_with("DATA") {
                            in_data = true;
                            replies.extend_from_slice(b"354 go\r\n");
                        } else if upper.starts_with("QUIT") {
                            replies.extend_from_slice(b"221 bye\r\n");
                            quit = true;
                        } else {
                            replies.extend_from_slice(b"250 ok\r\n");
                        }
                    }
                    if (!replies.is_empty() && socket.write_all(&replies).await.is_err()) || quit {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// What a daemon is started with besides the common settings.
enum Backend<'a> {
    Mysql {
        db_url: &'a str,
        nats_url: &'a str,
        replicas: usize,
    },
    Embedded,
}

fn daemon(backend: &Backend<'_>, smtp_port: u16, dir: &std::path::Path) -> (Proc, String) {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_primed"));
    cmd.arg("run")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "RUST_LOG",
            std::env::var("E2E_LOG").unwrap_or_else(|_| "info".into()),
        )
        // The pipeline is measured here; the limiter has its own benchmark.
        .env("RATE_LIMIT_ENABLED", "false")
        .env("SMTP_HOST", "127.0.0.1")
        .env("SMTP_PORT", smtp_port.to_string())
        .env("SMTP_TLS", "none")
        .env("SMTP_FROM", "primed@example.com")
        .env("ADMIN_API_KEYS", "bench-token-0123456789")
        .env("PRIMED_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("PRIMED_INSTANCE", format!("bench-{port}"))
        .env("PRIMED_DATA_DIR", dir)
        .stdout(std::fs::File::create(dir.join("daemon.log")).expect("daemon log file"))
        .stderr(Stdio::inherit());
    if let Backend::Mysql {
        db_url,
        nats_url,
        replicas,
    } = backend
    {
        cmd.env("DATABASE_URL", db_url)
            .env("NATS_URL", nats_url)
            .env("NATS_REPLICAS", replicas.to_string());
    }
    (
        Proc(cmd.spawn().expect("primed")),
        format!("http://127.0.0.1:{port}"),
    )
}

/// A random 18-digit number (odd, so that some are prime).
fn number() -> String {
    ((100_000_000_000_000_000u64 + rand::random::<u64>() % 900_000_000_000_000_000) | 1).to_string()
}

/// Posts one request; its id, or what went wrong (over capacity the daemon refuses
/// connections past its cap with a 503 and closes them: counted, not fatal).
async fn post(client: &reqwest::Client, base: &str, i: usize) -> Result<String, String> {
    let r = client
        .post(format!("{base}/prime-check"))
        .json(&serde_json::json!({"number": number(), "email": format!("bench-{i}@example.com")}))
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    if r.status() != 202 {
        return Err(format!("answered {}", r.status()));
    }
    let body = r
        .json::<serde_json::Value>()
        .await
        .map_err(|e| format!("unreadable answer: {e}"))?;
    Ok(body["id"].as_str().unwrap().to_string())
}

/// Requests the daemon did not accept, by what went wrong.
type Failures = Arc<Mutex<HashMap<String, usize>>>;

fn note_failure(failures: &Failures, error: String) {
    // One line per kind, not per request id or port.
    let kind = error.split(" for url").next().unwrap_or(&error).to_string();
    *failures.lock().unwrap().entry(kind).or_default() += 1;
}

/// ", N not accepted (…)" when some were not.
fn failed(failures: &Failures) -> String {
    let f = failures.lock().unwrap();
    if f.is_empty() {
        return String::new();
    }
    let n: usize = f.values().sum();
    let kinds: Vec<String> = f.iter().map(|(k, v)| format!("{v}× {k}")).collect();
    format!("; {n} not accepted ({})", kinds.join("; "))
}

/// Sent times by request id, for the latency of each.
type Sent = Arc<Mutex<HashMap<String, Instant>>>;

/// Waits until every request in `sent` has its email, at most `wait`; returns the
/// latencies of those emailed, sorted (and says how many were not, if any).
async fn latencies(sent: &Sent, arrivals: &Arrivals, wait: Duration) -> Vec<Duration> {
    let deadline = Instant::now() + wait;
    loop {
        let missing = {
            let sent = sent.lock().unwrap();
            let arrived = arrivals.lock().unwrap();
            sent.keys().filter(|id| !arrived.contains_key(*id)).count()
        };
        if missing == 0 {
            break;
        }
        if Instant::now() > deadline {
            println!(
                "  {missing} accepted requests not emailed within {} s (left out of the figures below)",
                wait.as_secs()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent = sent.lock().unwrap();
    let arrived = arrivals.lock().unwrap();
    let mut l: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, t)| Some(arrived.get(id)?.saturating_duration_since(*t)))
        .collect();
    l.sort();
    l
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(l: &[Duration]) -> String {
    if l.is_empty() {
        return "none accepted".into();
    }
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(pct(l, 0.5)),
        ms(pct(l, 0.9)),
        ms(pct(l, 0.99)),
        ms(l[l.len() - 1])
    )
}

/// Each stage's rate from the tables: rows / (last − first timestamp).
fn stage_rates(db: &str) -> String {
    let span = |table: &str, column: &str| {
        let out = common::mariadb(&format!(
            "SELECT COUNT({column}), TIMESTAMPDIFF(MICROSECOND, MIN({column}), MAX({column})) FROM {db}.{table}"
        ));
        let mut f = out.split_whitespace();
        let n: f64 = f.next().unwrap().parse().unwrap();
        let us: f64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        if us > 0.0 { n / (us / 1e6) } else { 0.0 }
    };
    format!(
        "stages: accepted {:.0}/s, checked {:.0}/s, emailed {:.0}/s",
        span("prime_check_requests", "created_at"),
        span("prime_check_requests", "completed_at"),
        span("sent_emails", "sent_at")
    )
}

/// CPU seconds a process has used so far (user + system), from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the state.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The MariaDB server's process id (the shared server the MySQL setups use).
fn mariadbd_pid() -> Option<u32> {
    let out = Command::new("pidof").arg("mariadbd").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The database's commits so far.
fn commits() -> f64 {
    common::mariadb("SHOW GLOBAL STATUS LIKE 'Handler_commit'")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The processes whose CPU a MySQL setup's closed loop reports, by name.
struct Accounted {
    processes: Vec<(String, u32)>,
}

impl Accounted {
    fn snapshot(&self) -> (Vec<f64>, f64) {
        (
            self.processes
                .iter()
                .map(|(_, pid)| cpu_seconds(*pid))
                .collect(),
            commits(),
        )
    }

    /// What each process spent per request between `before` and now, and the commits.
    fn report(&self, name: &str, before: &(Vec<f64>, f64), requests: usize) {
        let (after, commits_after) = self.snapshot();
        let n = requests.max(1) as f64;
        let parts: Vec<String> = self
            .processes
            .iter()
            .zip(after.iter().zip(&before.0))
            .map(|((what, _), (a, b))| format!("{what} {:.0}", (a - b) / n * 1e6))
            .collect();
        let daemons: f64 = self
            .processes
            .iter()
            .zip(after.iter().zip(&before.0))
            .filter(|((what, _), _)| what.starts_with("daemon"))
            .map(|(_, (a, b))| a - b)
            .sum();
        println!(
            "{name} closed loop CPU µs per request: {}; all daemons {:.0}; database commits per request {:.2}",
            parts.join(", "),
            daemons / n * 1e6,
            (commits_after - before.1) / n
        );
    }
}

async fn measure(
    name: &str,
    bases: &[String],
    arrivals: &Arrivals,
    db: Option<&str>,
    accounted: Option<&Accounted>,
) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let bases = Arc::new(bases.to_vec());

    // 1. Closed loop.
    let total = env_count("E2E_REQUESTS", 5_000);
    let sent: Sent = Arc::default();
    let failures: Failures = Arc::default();
    let before = accounted.map(Accounted::snapshot);
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, bases, next, sent, failures) = (
            client.clone(),
            bases.clone(),
            next.clone(),
            sent.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let t = Instant::now();
                match post(&client, &bases[i % bases.len()], i).await {
                    Ok(id) => {
                        sent.lock().unwrap().insert(id, t);
                    }
                    Err(e) => note_failure(&failures, e),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = started.elapsed();
    let l = latencies(&sent, arrivals, Duration::from_secs(600)).await;
    let last = {
        let sent = sent.lock().unwrap();
        let arrived = arrivals.lock().unwrap();
        sent.keys()
            .filter_map(|id| arrived.get(id).copied())
            .max()
            .unwrap_or(started)
    };
    let done = last.duration_since(started);
    let delivered = l.len();
    println!(
        "{name} closed loop, {total} requests, 32 clients: accepted {:.0}/s; emails {:.0}/s end to end ({:.2} s); e2e {}{}",
        delivered as f64 / accepted.as_secs_f64(),
        delivered as f64 / done.as_secs_f64(),
        done.as_secs_f64(),
        summary(&l),
        failed(&failures)
    );
    if let Some(db) = db {
        println!("{name} closed loop {}", stage_rates(db));
    }
    if let (Some(accounted), Some(before)) = (accounted, &before) {
        accounted.report(name, before, delivered);
    }

    // 2. Open loop.
    let seconds = env_count("E2E_SECONDS", 10);
    let rates = std::env::var("E2E_RATES").unwrap_or_else(|_| "100,1000".into());
    for rate in rates
        .split(',')
        .filter_map(|r| r.trim().parse::<usize>().ok())
    {
        let sent: Sent = Arc::default();
        let failures: Failures = Arc::default();
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::new();
        for i in 0..rate * seconds {
            ticker.tick().await;
            let (client, bases, sent, failures) = (
                client.clone(),
                bases.clone(),
                sent.clone(),
                failures.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                match post(&client, &bases[i % bases.len()], total + i).await {
                    Ok(id) => {
                        sent.lock().unwrap().insert(id, t);
                    }
                    Err(e) => note_failure(&failures, e),
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let l = latencies(&sent, arrivals, Duration::from_secs(120)).await;
        println!(
            "{name} open loop {rate}/s for {seconds} s ({} requests emailed): e2e {}{}",
            l.len(),
            summary(&l),
            failed(&failures)
        );
    }
}

async fn wait_ready(base: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client.get(format!("{base}/ready")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        assert!(Instant::now() < deadline, "daemon at {base} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `daemons` daemons on the MariaDB database `db` and `nats_nodes` JetStream servers (1:
/// one server; 3: a cluster, every stream replicated on the three).
async fn mysql(db: &str, daemons: usize, nats_nodes: usize) {
    let nats_dir = tempfile::tempdir().unwrap();
    let nats = chaos::services::NatsNode::start_all(nats_dir.path(), nats_nodes)
        .await
        .expect("nats-server");
    let arrivals: Arrivals = Arc::default();
    let smtp_port = smtp_sink(arrivals.clone()).await;
    let db_url = common::db_url(db);
    let nats_url = nats
        .iter()
        .map(|node| format!("nats://127.0.0.1:{}", node.port))
        .collect::<Vec<_>>()
        .join(",");
    let backend = Backend::Mysql {
        db_url: &db_url,
        nats_url: &nats_url,
        replicas: nats_nodes,
    };
    let dirs: Vec<_> = (0..daemons).map(|_| tempfile::tempdir().unwrap()).collect();
    // The first daemon migrates and sets up the streams; then the others join.
    let mut procs = Vec::new();
    let mut bases = Vec::new();
    for dir in &dirs {
        let (proc, base) = daemon(&backend, smtp_port, dir.path());
        wait_ready(&base).await;
        procs.push(proc);
        bases.push(base);
    }
    let mut processes: Vec<(String, u32)> = procs
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("daemon {}", i + 1), p.0.id()))
        .collect();
    for (i, node) in nats.iter().enumerate() {
        let name = if nats_nodes == 1 {
            "nats-server".to_string()
        } else {
            format!("nats-server {}", i + 1)
        };
        processes.extend(node.pid().map(|pid| (name, pid)));
    }
    if let Some(pid) = mariadbd_pid() {
        processes.push(("mariadbd".into(), pid));
    }
    processes.push(("bench (clients, sink)".into(), std::process::id()));
    let accounted = Accounted { processes };
    let name = if nats_nodes == 1 {
        format!("mysql{daemons}")
    } else {
        format!("cluster{daemons}")
    };
    measure(&name, &bases, &arrivals, Some(db), Some(&accounted)).await;
}

async fn embedded() {
    let arrivals: Arrivals = Arc::default();
    let smtp_port = smtp_sink(arrivals.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (_proc, base) = daemon(&Backend::Embedded, smtp_port, dir.path());
    wait_ready(&base).await;
    measure("embedded", &[base], &arrivals, None, None).await;
}

fn main() {
    let setups = std::env::var("E2E_SETUPS").unwrap_or_else(|_| "mysql1,mysql2,embedded".into());
    for setup in setups.split(',').map(str::trim) {
        // (daemons, JetStream servers)
        let count = |prefix: &str| {
            setup
                .strip_prefix(prefix)
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n > 0)
        };
        let shape = count("mysql")
            .map(|n| (n, 1))
            .or_else(|| count("cluster").map(|n| (n, 3)));
        match setup {
            _ if shape.is_some() => {
                let (n, nodes) = shape.unwrap_or((1, 1));
                common::with_database("primed_e2e", |db| async move { mysql(&db, n, nodes).await })
            }
            "embedded" => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(embedded()),
            other => panic!("unknown setup {other:?} in E2E_SETUPS (mysqlN, clusterN, embedded)"),
        }
    }
}
