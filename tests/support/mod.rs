//! Helpers shared by the integration tests: a daemon process under test, and bounded polling.
#![allow(dead_code)]

pub mod otlp;
pub mod pipeline;
pub mod runbooks;
pub mod setup;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any bounded wait in the tests may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `$cond` (an expression, may `.await`) until it is true, failing after [`WAIT`].
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $crate::support::WAIT;
        loop {
            if $cond {
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!("not true within {:?}: {}", $crate::support::WAIT, format!($($msg)+));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// A `primed` process with a clean environment and its own data directory.
pub struct Daemon {
    child: Child,
    /// Where it listens (read from its "listening" log line).
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    lines: mpsc::Receiver<String>,
    /// Every stdout line read so far.
    pub log: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

/// A command for the primed binary with only `PATH` from our environment.
pub fn primed() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_primed"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info");
    cmd
}

impl Daemon {
    /// Starts `primed run` with `env` (on top of a fresh data dir and port 0) and waits for
    /// it to listen.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut daemon = Self::start_in(&data_dir, env);
        daemon._tmp = Some(tmp);
        daemon
    }

    /// Starts `primed run` on an existing data directory (a restart keeps its data).
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let data_dir = data_dir.to_path_buf();
        let tmp = None;
        let mut cmd = primed();
        cmd.arg("run")
            .env("PRIMED_DATA_DIR", &data_dir)
            .env("PRIMED_HTTP_ADDR", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, data_dir, tmp)
    }

    fn spawn(mut cmd: Command, data_dir: PathBuf, tmp: Option<tempfile::TempDir>) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn primed");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Self {
            child,
            addr: "0.0.0.0:0".parse().expect("addr"),
            data_dir,
            lines,
            log: Vec::new(),
            _tmp: tmp,
        };
        let line = daemon.wait_for_log("primed is listening");
        let json: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        daemon.addr = json["addr"]
            .as_str()
            .expect("addr field")
            .parse()
            .expect("socket addr");
        daemon
    }

    /// Every stdout line so far (reads what has arrived without waiting).
    pub fn log_so_far(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.log.join("\n")
    }

    /// Waits for a stdout line containing `needle` and returns it.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line containing {needle:?}; log so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// `http://addr/path`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The generated admin token.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token"))
            .expect("admin-token file")
            .trim()
            .to_string()
    }

    /// Sends a signal.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal)
            .expect("kill");
    }

    /// The exit status if the process has exited (reads the rest of its log then).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().expect("try_wait")?;
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.log.push(line);
        }
        Some(status)
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.log.push(line);
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "primed did not exit within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn data_path(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when nothing listens on `addr` (we can bind it).
pub fn port_is_free(addr: SocketAddr) -> bool {
    std::net::TcpListener::bind(addr).is_ok()
}

/// A port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A path inside a directory that exists as long as the returned guard.
pub fn temp_path(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    (dir, path)
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// The port of the MySQL-protocol server the tests use: the shared MariaDB on 3306, or
/// `PRIMED_TEST_MYSQL_PORT` (`scripts/mysql-compat.sh` runs the database tests against a
/// MySQL server of its own that way).
pub fn db_port() -> u16 {
    std::env::var("PRIMED_TEST_MYSQL_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3306)
}

/// Whether that server is MySQL rather than MariaDB (asked once).
fn is_mysql() -> bool {
    static MYSQL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MYSQL.get_or_init(|| !mariadb("SELECT VERSION()").contains("MariaDB"))
}

/// Rows `seq` = 1..=N for the `seq_1_to_N` tables the tests read: MariaDB's sequence engine
/// has them built in; on MySQL they are views of a numbers table, made once per server.
const SEQUENCES: [u32; 5] = [50, 3000, 10000, 20000, 200000];

fn mysql_sequences(db: &str) {
    mariadb(
        "CREATE DATABASE IF NOT EXISTS primed_test_numbers; \
         CREATE TABLE IF NOT EXISTS primed_test_numbers.n (n INT NOT NULL PRIMARY KEY)",
    );
    if mariadb("SELECT COUNT(*) FROM primed_test_numbers.n").trim() != "200000" {
        mariadb(
            "INSERT IGNORE INTO primed_test_numbers.n (n) \
             WITH RECURSIVE d (x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM d WHERE x < 999) \
             SELECT a.x * 1000 + b.x + 1 FROM d a, d b WHERE a.x < 200",
        );
    }
    for n in SEQUENCES {
        mariadb(&format!(
            "CREATE VIEW {db}.seq_1_to_{n} AS SELECT n AS seq FROM primed_test_numbers.n WHERE n <= {n}"
        ));
    }
}

/// A database of its own on the test server (the shared MariaDB on 127.0.0.1:3306, root,
/// unless [`db_port`] says otherwise), dropped afterwards.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// `mysql://root@127.0.0.1:<port>/<name>`
    pub url: String,
}

impl TestDb {
    /// Creates `primed_t_<random>`.
    pub fn create() -> Self {
        setup::ensure();
        let name = format!("primed_t_{:016x}", rand::random::<u64>());
        mariadb(&format!("CREATE DATABASE {name}"));
        if is_mysql() {
            mysql_sequences(&name);
        }
        Self {
            url: format!("mysql://root@127.0.0.1:{}/{name}", db_port()),
            name,
        }
    }

    /// Runs SQL in this database (through the mariadb client) and returns its output.
    /// It blocks the calling thread: use it from multi-threaded test runtimes, so that the
    /// pool's background work (deferred rollbacks) keeps running meanwhile. On MySQL,
    /// `EXPLAIN` prints the table MariaDB prints (MySQL's default is a tree).
    pub fn sql(&self, sql: &str) -> String {
        let explain = if is_mysql() {
            "SET SESSION explain_format = TRADITIONAL; "
        } else {
            ""
        };
        mariadb(&format!("USE {}; {explain}{sql}", self.name))
    }

    /// A single number from a query.
    pub fn count(&self, sql: &str) -> i64 {
        self.sql(sql)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a number from {sql}"))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = client_at(db_port())
            .arg("-e")
            .arg(format!("DROP DATABASE IF EXISTS {}", self.name))
            .output();
    }
}

/// The mariadb client, connected to the server at `port` as root.
pub fn client_at(port: u16) -> Command {
    setup::ensure();
    let mut client = Command::new("mariadb");
    client.args(["-h", "127.0.0.1", "-u", "root", "-P"]);
    client.arg(port.to_string());
    client
}

/// Runs SQL on the test server through the mariadb client (batch mode, no column names).
pub fn mariadb(sql: &str) -> String {
    mariadb_at(db_port(), sql)
}

/// Runs SQL on the server at `port` (a test's own) through the mariadb client.
pub fn mariadb_at(port: u16, sql: &str) -> String {
    let out = client_at(port)
        .args(["-N", "-B", "-e", sql])
        .output()
        .expect("the mariadb client must be installed (scripts/ensure-services.sh installs it)");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A server a test runs on a port it picked: two picks of a free port can meet, so the server
/// may find its port taken and then moves to another.
trait OwnServer {
    const PROGRAM: &'static str;
    /// Spawns it on its port and waits until it answers as itself; false when it exited
    /// first (its port was taken).
    fn try_start(&mut self) -> bool;
    /// Kills it and moves it to `port`, for the next try.
    fn stop_and_move_to(&mut self, port: u16);
}

/// Starts `server` on its port, or on another free one when that was taken (five tries).
fn start_on_a_free_port<S: OwnServer>(mut server: S) -> S {
    for _ in 0..5 {
        if server.try_start() {
            return server;
        }
        server.stop_and_move_to(free_addr().port());
    }
    panic!("{} did not start on any of five free ports", S::PROGRAM);
}

/// A nats-server with JetStream of its own, on a free port, with its own store directory.
/// It can be stopped and started again on the same port and store (a broker restart).
pub struct NatsServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Its server name, which no other test's server has: it is how [`NatsServer::start`]
    /// tells its own server from another test's that picked the same free port.
    name: String,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one and waits until it greets clients. When another process took the port
    /// between its pick and the server's bind, it starts again on another.
    pub fn start() -> Self {
        Self::start_on(free_addr().port())
    }

    /// [`NatsServer::start`], trying `port` first.
    pub fn start_on(port: u16) -> Self {
        setup::ensure();
        start_on_a_free_port(Self {
            child: None,
            port,
            name: format!("primed-test-{:016x}", rand::random::<u64>()),
            store: tempfile::tempdir().expect("tempdir"),
        })
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it again after [`NatsServer::stop`], on the same port and store.
    pub fn start_again(&mut self) {
        assert!(
            self.try_start(),
            "nats-server did not start again on {}",
            self.port
        );
    }

    /// Kills it (as a crash would) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl OwnServer for NatsServer {
    const PROGRAM: &'static str = "nats-server";

    fn try_start(&mut self) -> bool {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-n",
                &self.name,
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed");
        let child = self.child.insert(child);
        let deadline = Instant::now() + WAIT;
        while !chaos::services::greets(self.port, &self.name) {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn stop_and_move_to(&mut self, port: u16) {
        self.stop();
        self.port = port;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A redis-server of the test's own, on a free port, keeping nothing on disk. It can be
/// killed and started again on the same port (a Redis crash: the new one is empty and has
/// no scripts cached).
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one and waits until it answers. When another process took the port between
    /// its pick and the server's bind, it starts again on another.
    pub fn start() -> Self {
        Self::start_on(free_addr().port())
    }

    /// [`RedisServer::start`], trying `port` first.
    pub fn start_on(port: u16) -> Self {
        setup::ensure();
        start_on_a_free_port(Self {
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
        })
    }

    /// Starts it again after [`RedisServer::stop`], on the same port.
    pub fn start_again(&mut self) {
        assert!(
            self.try_start(),
            "redis-server did not start again on {}",
            self.port
        );
    }

    /// Kills it (SIGKILL, as a crash would) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its process id (to stop and continue it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Runs one command with redis-cli; its trimmed output, or None when it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        redis_cli(self.port, args)
    }
}

impl OwnServer for RedisServer {
    const PROGRAM: &'static str = "redis-server";

    fn try_start(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let dir = std::fs::canonicalize(self.dir.path()).expect("tempdir");
        let deadline = Instant::now() + WAIT;
        loop {
            let answer = self.cli(&["CONFIG", "GET", "dir"]);
            if answer.is_some_and(|a| a.lines().any(|l| Path::new(l.trim()) == dir)) {
                return true;
            }
            if let Some(child) = self.child.as_mut()
                && matches!(child.try_wait(), Ok(Some(_)))
            {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop_and_move_to(&mut self, port: u16) {
        self.stop();
        self.port = port;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs one redis-cli command against 127.0.0.1:`port`; its trimmed output, or None when
/// the server did not answer.
pub fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    setup::ensure();
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be installed (scripts/ensure-services.sh installs redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.starts_with("Could not connect") && !text.starts_with("ERR"))
        .then_some(text)
}

/// Messages in a stream (0 when it does not exist).
pub async fn stream_messages(url: &str, stream: &str) -> u64 {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Whether both consumers of the `PRIME` stream at `url` hold nothing: no message waits,
/// none is delivered and unacknowledged. Then no redelivery, and no late duplicate, can
/// come: the evidence to wait for instead of a pause.
pub async fn consumers_idle(url: &str) -> bool {
    let Ok(client) = async_nats::connect(url).await else {
        return false;
    };
    let js = async_nats::jetstream::new(client);
    let Ok(stream) = js.get_stream("PRIME").await else {
        return false;
    };
    for durable in [
        primed::adapters::nats::CONSUMER_PRIMECHECK,
        primed::adapters::nats::CONSUMER_EMAIL,
    ] {
        let consumer: Result<async_nats::jetstream::consumer::PullConsumer, _> =
            stream.get_consumer(durable).await;
        let Ok(mut consumer) = consumer else {
            return false;
        };
        match consumer.info().await {
            Ok(i) if i.num_pending == 0 && i.num_ack_pending == 0 => {}
            _ => return false,
        }
    }
    true
}

/// Where `scripts/ensure-services.sh` installs maildev (override with `MAILDEV`).
pub use chaos::services::maildev_bin;

/// A maildev SMTP server of the test's own, with its HTTP API.
pub struct MailDev {
    child: Child,
    /// SMTP port.
    pub smtp_port: u16,
    /// HTTP API port.
    pub web_port: u16,
}

impl MailDev {
    /// Starts one on free ports and waits until both answer.
    pub fn start() -> Self {
        Self::start_on(free_addr().port())
    }

    /// Starts one with its SMTP server on `smtp_port`.
    pub fn start_on(smtp_port: u16) -> Self {
        setup::ensure();
        let web_port = free_addr().port();
        let child = Command::new(maildev_bin())
            .args(["--ip", "127.0.0.1", "--silent", "-s"])
            .arg(smtp_port.to_string())
            .arg("-w")
            .arg(web_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("maildev must be installed (scripts/ensure-services.sh installs it)");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", smtp_port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", web_port)).is_err()
        {
            assert!(Instant::now() < deadline, "maildev did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            smtp_port,
            web_port,
        }
    }

    /// Every email received, as maildev's JSON.
    pub async fn emails(&self) -> Vec<serde_json::Value> {
        reqwest::get(format!("http://127.0.0.1:{}/email", self.web_port))
            .await
            .expect("maildev API")
            .json()
            .await
            .expect("maildev JSON")
    }

    /// SMTP settings for a daemon.
    pub fn env(&self) -> Vec<(String, String)> {
        smtp_env(self.smtp_port)
    }
}

impl Drop for MailDev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SMTP settings for a plain-text server on a loopback port.
pub fn smtp_env(port: u16) -> Vec<(String, String)> {
    vec![
        ("SMTP_HOST".into(), "127.0.0.1".into()),
        ("SMTP_PORT".into(), port.to_string()),
        ("SMTP_TLS".into(), "none".into()),
        ("SMTP_FROM".into(), "primed@example.com".into()),
    ]
}

/// How the scripted SMTP stub answers `RCPT TO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StubMode {
    /// 250: accept the mail.
    Accept,
    /// 451: try again later (transient).
    Defer,
    /// 550: no such user (permanent).
    Reject,
    /// Close the connection right after accepting it.
    Drop,
    /// 421 as the greeting, then close: the service is not available (counted as an
    /// attempt).
    Unavailable,
}

/// A scripted SMTP server: answers by [`StubMode`], records when each `RCPT TO` (or each
/// connection it turned away with a 421) came and each accepted message's `Message-ID`.
pub struct SmtpStub {
    /// Its port.
    pub port: u16,
    mode: std::sync::Arc<std::sync::Mutex<StubMode>>,
    /// (when, mode answered) per RCPT TO, or per connection turned away with a 421.
    pub attempts: std::sync::Arc<std::sync::Mutex<Vec<(Instant, StubMode)>>>,
    /// Message-IDs of accepted messages.
    pub accepted: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The recipient of each accepted message, in the same order.
    recipients: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    hold: std::sync::Arc<Hold>,
    /// Mail transactions (from MAIL FROM to the reply to their data, or their abort) open
    /// now, the most ever open at once, and how long each accepted message's `250` waits.
    load: std::sync::Arc<Load>,
    task: tokio::task::JoinHandle<()>,
}

/// What [`SmtpStub`] counts of its concurrent transactions.
#[derive(Default)]
struct Load {
    open: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    reply_delay_ms: std::sync::atomic::AtomicU64,
}

impl Load {
    fn begin(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.open.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
    }

    fn end(&self) {
        self.open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Holds back the `250` of accepted messages: the moment between the server's acceptance
/// and the client hearing of it.
#[derive(Default)]
struct Hold {
    on: std::sync::atomic::AtomicBool,
    /// A message was accepted and its `250` is held.
    arrived: tokio::sync::Notify,
    /// Let the held `250`s go.
    release: tokio::sync::Notify,
}

impl SmtpStub {
    /// Starts one on a free port (inside a tokio runtime).
    pub async fn start(mode: StubMode) -> Self {
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(mode));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let hold = Arc::new(Hold::default());
        let load = Arc::new(Load::default());
        let recipients = Arc::new(Mutex::new(Vec::new()));
        let (m, a, acc, h, l, r) = (
            mode.clone(),
            attempts.clone(),
            accepted.clone(),
            hold.clone(),
            load.clone(),
            recipients.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (m, a, acc, h, l, r) = (
                    m.clone(),
                    a.clone(),
                    acc.clone(),
                    h.clone(),
                    l.clone(),
                    r.clone(),
                );
                tokio::spawn(async move {
                    let mut in_tx = false;
                    let served = async {
                        let mode = *m.lock().unwrap();
                        if mode == StubMode::Drop {
                            return;
                        }
                        let (read, mut write) = socket.into_split();
                        if mode == StubMode::Unavailable {
                            a.lock().unwrap().push((Instant::now(), mode));
                            let _ = write
                                .write_all(b"421 4.3.2 service not available\r\n")
                                .await;
                            return;
                        }
                        let mut lines = BufReader::new(read).lines();
                        let _ = write.write_all(b"220 stub ESMTP\r\n").await;
                        let mut in_data = false;
                        let mut message_id = String::new();
                        let mut recipient = String::new();
                        while let Ok(Some(line)) = lines.next_line().await {
                            if in_data {
                                if line == "." {
                                    in_data = false;
                                    acc.lock().unwrap().push(std::mem::take(&mut message_id));
                                    r.lock().unwrap().push(std::mem::take(&mut recipient));
                                    if h.on.load(std::sync::atomic::Ordering::SeqCst) {
                                        let released = h.release.notified();
                                        h.arrived.notify_one();
                                        released.await;
                                    }
                                    let delay =
                                        l.reply_delay_ms.load(std::sync::atomic::Ordering::SeqCst);
                                    if delay > 0 {
                                        tokio::time::sleep(Duration::from_millis(delay)).await;
                                    }
                                    let _ = write.write_all(b"250 2.0.0 queued\r\n").await;
                                    if std::mem::take(&mut in_tx) {
                                        l.end();
                                    }
                                } else if let Some(id) = line
                                    .strip_prefix("Message-ID: ")
                                    .or_else(|| line.strip_prefix("Message-Id: "))
                                {
                                    message_id = id.trim().to_string();
                                }
                                continue;
                            }
                            let upper = line.to_ascii_uppercase();
                            if upper.starts_with("MAIL") && !in_tx {
                                in_tx = true;
                                l.begin();
                            } else if (upper.starts_with("RSET") || upper.starts_with("QUIT"))
                                && std::mem::take(&mut in_tx)
                            {
                                l.end();
                            }
                            let reply: &[u8] = if upper.starts_with("EHLO")
                                || upper.starts_with("HELO")
                            {
                                b"250 stub\r\n"
                            } else if upper.starts_with("RCPT") {
                                recipient = line
                                    .split_once(':')
                                    .map(|(_, to)| to.trim().trim_matches(['<', '>']).to_string())
                                    .unwrap_or_default();
                                let mode = *m.lock().unwrap();
                                a.lock().unwrap().push((Instant::now(), mode));
                                match mode {
                                    StubMode::Defer => b"451 4.3.0 mailbox busy, deferred\r\n",
                                    StubMode::Reject => b"550 5.1.1 no such user here\r\n",
                                    _ => b"250 2.1.5 ok\r\n",
                                }
                            } else if upper.starts_with("DATA") {
                                in_data = true;
                                b"354 go ahead\r\n"
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
                    };
                    served.await;
                    // The connection ended inside a transaction: it is not open any more.
                    if in_tx {
                        l.end();
                    }
                });
            }
        });
        Self {
            port,
            mode,
            attempts,
            accepted,
            recipients,
            hold,
            load,
            task,
        }
    }

    /// The recipient of each accepted message.
    pub fn recipients(&self) -> Vec<String> {
        self.recipients.lock().unwrap().clone()
    }

    /// Delays the `250` of each accepted message by this much from now on (a slow server).
    pub fn slow_replies(&self, delay: Duration) {
        self.load.reply_delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// The most mail transactions that were ever open at once.
    pub fn most_in_flight(&self) -> usize {
        self.load.most.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// From now on, holds the `250` of each accepted message until [`Self::release`].
    pub fn hold_replies(&self) {
        self.hold
            .on
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits (bounded) for a message to be accepted with its `250` held.
    pub async fn held(&self) {
        tokio::time::timeout(WAIT, self.hold.arrived.notified())
            .await
            .expect("a message accepted with its reply held");
    }

    /// Lets the held `250`s go, and stops holding.
    pub fn release(&self) {
        self.hold
            .on
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.hold.release.notify_waiters();
    }

    /// Changes how it answers from now on.
    pub fn set_mode(&self, mode: StubMode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// RCPT TO commands seen.
    pub fn attempt_times(&self) -> Vec<(Instant, StubMode)> {
        self.attempts.lock().unwrap().clone()
    }

    /// Message-IDs accepted.
    pub fn accepted(&self) -> Vec<String> {
        self.accepted.lock().unwrap().clone()
    }
}

impl Drop for SmtpStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Messages on one subject of a stream (0 when the stream does not exist).
pub async fn subject_messages(url: &str, stream: &str, subject: &str) -> u64 {
    use futures::TryStreamExt;
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let Ok(s) = js.get_stream(stream).await else {
        return 0;
    };
    let Ok(counts) = s.info_with_subjects(subject).await else {
        return 0;
    };
    let counts: Vec<(String, usize)> = counts.try_collect().await.unwrap_or_default();
    counts.iter().map(|(_, n)| *n as u64).sum()
}

/// `GET /metrics` of `d`.
pub async fn scrape(d: &Daemon) -> String {
    reqwest::get(d.url("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the scrape's text")
}

/// The value of one sample line of a scrape (0 when absent).
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}
