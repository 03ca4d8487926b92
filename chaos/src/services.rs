//! The real services the chaos harness runs its daemons against, each one its own process
//! on free loopback ports with its data in the run's directory, so that the harness can kill
//! and restart them without touching anybody else's: MariaDB, NATS (one server or a
//! three-node JetStream cluster), Redis and maildev (SMTP with an HTTP API).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a service may take to answer after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A service could not be set up or started.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The program could not be run.
    #[error(
        "cannot run {program}: {source}; is it installed? (scripts/ensure-services.sh installs what the harness needs)"
    )]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// It ran but did not come up.
    #[error("{what} did not answer within {timeout:?}; see {log}")]
    NotUp {
        /// Which service.
        what: String,
        /// How long we waited.
        timeout: Duration,
        /// Its log file.
        log: String,
    },
    /// Setting it up failed.
    #[error("cannot set up {what}: {reason}")]
    Setup {
        /// Which service.
        what: String,
        /// Why.
        reason: String,
    },
}

/// A free loopback port (bound then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Polls `up` every 20 ms until it holds or `START_TIMEOUT` passes.
async fn wait_until(
    what: &str,
    log: &Path,
    mut up: impl FnMut() -> bool,
) -> Result<(), ServiceError> {
    let deadline = Instant::now() + START_TIMEOUT;
    while !up() {
        if Instant::now() > deadline {
            return Err(ServiceError::NotUp {
                what: what.into(),
                timeout: START_TIMEOUT,
                log: log.display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A process the harness started, with its output in a log file.
#[derive(Debug)]
pub struct Process {
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// Describes a process; nothing runs until [`Process::start`].
    pub fn new(program: impl Into<PathBuf>, args: Vec<String>, log: PathBuf) -> Self {
        Self {
            program: program.into(),
            args,
            envs: Vec::new(),
            log,
            child: None,
        }
    }

    /// Adds an environment variable (the process gets ours plus these).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Starts it (again), appending to its log.
    pub fn start(&mut self) -> Result<(), ServiceError> {
        let spawn_err = |source| ServiceError::Spawn {
            program: self.program.display().to_string(),
            source,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(spawn_err)?;
        let err_log = log.try_clone().map_err(spawn_err)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(spawn_err)?;
        self.child = Some(child);
        Ok(())
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`) through kill(1).
    pub fn signal(&self, name: &str) -> Result<(), ServiceError> {
        let Some(child) = &self.child else {
            return Err(ServiceError::Setup {
                what: self.program.display().to_string(),
                reason: "it is not running".into(),
            });
        };
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .map_err(|source| ServiceError::Spawn {
                program: "kill".into(),
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(ServiceError::Setup {
                what: self.program.display().to_string(),
                reason: format!("kill -{name} failed"),
            })
        }
    }

    /// SIGTERM, then waits up to `timeout` for it to exit; its exit code (None: killed by
    /// a signal, or still running at the deadline, in which case it is killed).
    pub async fn stop_gracefully(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<i32>, ServiceError> {
        self.signal("TERM")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                self.kill();
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether it has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        match &mut self.child {
            None => true,
            Some(child) => !matches!(child.try_wait(), Ok(None)),
        }
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A stopped process cannot die until it is continued.
        let _ = self.signal("CONT");
        self.kill();
    }
}

/// A MariaDB server of the harness's own: a fresh data directory, root without a password.
/// With `PRIMED_CHAOS_MYSQLD` set (a `mysqld` command line, as `scripts/mysql-compat.sh`
/// runs Debian unstable's MySQL), a MySQL server instead: the same faults, on MySQL.
#[derive(Debug)]
pub struct Mariadb {
    /// Its port.
    pub port: u16,
    process: Process,
}

/// The environment variable naming a MySQL `mysqld` command line to run instead of MariaDB.
pub const MYSQLD_ENV: &str = "PRIMED_CHAOS_MYSQLD";

impl Mariadb {
    /// Initialises a data directory under `dir` and starts the server.
    pub async fn start(dir: &Path) -> Result<Self, ServiceError> {
        let data = dir.join("mariadb");
        let log = dir.join("mariadb.log");
        let mysqld: Option<Vec<String>> = std::env::var(MYSQLD_ENV)
            .ok()
            .map(|c| c.split_whitespace().map(String::from).collect())
            .filter(|c: &Vec<String>| !c.is_empty());
        let (init, init_args) = match &mysqld {
            Some(cmd) => {
                let mut args = cmd[1..].to_vec();
                args.extend([
                    "--initialize-insecure".to_string(),
                    format!("--datadir={}", data.display()),
                ]);
                (cmd[0].clone(), args)
            }
            None => (
                "mariadb-install-db".to_string(),
                vec![
                    "--no-defaults".to_string(),
                    format!("--datadir={}", data.display()),
                    "--auth-root-authentication-method=normal".into(),
                    "--skip-test-db".into(),
                ],
            ),
        };
        let out = Command::new(&init)
            .args(&init_args)
            .output()
            .map_err(|source| ServiceError::Spawn {
                program: init.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(ServiceError::Setup {
                what: "the database server".into(),
                reason: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let port = free_port().map_err(|e| ServiceError::Setup {
            what: "the database server".into(),
            reason: e.to_string(),
        })?;
        let mut args = vec![
            format!("--datadir={}", data.display()),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".into(),
            format!("--socket={}", dir.join("mariadb.sock").display()),
            format!("--pid-file={}", dir.join("mariadb.pid").display()),
            "--user=root".into(),
            "--innodb-buffer-pool-size=64M".into(),
            "--max-connections=500".into(),
        ];
        let program = match &mysqld {
            Some(cmd) => {
                // root@localhost matches 127.0.0.1 only with name resolution on.
                args.extend(["--mysqlx=OFF".into(), "--secure-file-priv=".into()]);
                let mut all = cmd[1..].to_vec();
                all.append(&mut args);
                args = all;
                PathBuf::from(&cmd[0])
            }
            None => {
                args.insert(0, "--no-defaults".into());
                args.push("--skip-name-resolve".into());
                PathBuf::from("/usr/sbin/mariadbd")
            }
        };
        let mut db = Self {
            port,
            process: Process::new(program, args, log),
        };
        db.start_again().await?;
        Ok(db)
    }

    /// Starts it again on the same data (after [`Mariadb::kill`]: crash recovery).
    pub async fn start_again(&mut self) -> Result<(), ServiceError> {
        self.process.start()?;
        let port = self.port;
        wait_until("MariaDB", self.process.log(), || answers(port)).await?;
        // The port opens before the server takes queries; wait for a real answer.
        let url = self.url("mysql");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            use sqlx::Connection;
            if let Ok(conn) = sqlx::MySqlConnection::connect(&url).await {
                let _ = conn.close().await;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ServiceError::NotUp {
                    what: "MariaDB".into(),
                    timeout: START_TIMEOUT,
                    log: self.process.log().display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9`, as a crash.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// `mysql://root@127.0.0.1:<port>/<database>`
    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }
}

/// One nats-server with JetStream, alone or as a node of a cluster.
#[derive(Debug)]
pub struct NatsNode {
    /// Its client port.
    pub port: u16,
    name: String,
    process: Process,
}

impl NatsNode {
    /// Starts `nodes` servers (1: alone; 3: one JetStream cluster) with stores under `dir`.
    pub async fn start_all(dir: &Path, nodes: usize) -> Result<Vec<Self>, ServiceError> {
        let setup = |e: std::io::Error| ServiceError::Setup {
            what: "NATS".into(),
            reason: e.to_string(),
        };
        let mut ports = Vec::new();
        for _ in 0..nodes {
            ports.push((free_port().map_err(setup)?, free_port().map_err(setup)?));
        }
        // Names no other run's servers have: `greets` tells ours by it.
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run = format!(
            "{:x}-{}",
            std::process::id(),
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut servers = Vec::new();
        for (i, (port, cluster_port)) in ports.iter().enumerate() {
            let mut args = vec![
                "-a".to_string(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-js".into(),
                "-sd".into(),
                dir.join(format!("nats-{i}")).display().to_string(),
                "-n".into(),
                format!("chaos-nats-{i}-{run}"),
            ];
            if nodes > 1 {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, c))| format!("nats://127.0.0.1:{c}"))
                    .collect();
                args.extend([
                    "--cluster_name".into(),
                    "chaos".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes".into(),
                    routes.join(","),
                    // Clients stay on the proxies they were given.
                    "--no_advertise".into(),
                ]);
            }
            let log = dir.join(format!("nats-{i}.log"));
            servers.push(Self {
                port: *port,
                name: format!("chaos-nats-{i}-{run}"),
                process: Process::new("nats-server", args, log),
            });
        }
        for server in &mut servers {
            server.process.start()?;
        }
        for server in &mut servers {
            server.wait_up().await?;
        }
        Ok(servers)
    }

    async fn wait_up(&self) -> Result<(), ServiceError> {
        let port = self.port;
        wait_until("NATS", self.process.log(), || greets(port, &self.name)).await
    }

    /// Its server name (what the cluster reports as a leader).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id while it runs (for what it costs, in the e2e bench).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port and store.
    pub async fn start_again(&mut self) -> Result<(), ServiceError> {
        self.process.start()?;
        self.wait_up().await
    }
}

/// Whether the NATS server named `name` greets on 127.0.0.1:`port` with its INFO line. The
/// name is checked so that a server of someone else's that took the same port (two picks of
/// a free port can meet) is never mistaken for ours.
pub fn greets(port: u16, name: &str) -> bool {
    use std::io::{BufRead, BufReader};
    let Ok(conn) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let mut line = String::new();
    if BufReader::new(conn).read_line(&mut line).is_err() {
        return false;
    }
    let Some(info) = line.strip_prefix("INFO ") else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(info.trim())
        .ok()
        .is_some_and(|info| info["server_name"] == name)
}

/// A redis-server keeping nothing on disk: a restart starts empty, as a lost cache would.
#[derive(Debug)]
pub struct Redis {
    /// Its port.
    pub port: u16,
    process: Process,
}

impl Redis {
    /// Starts one.
    pub async fn start(dir: &Path) -> Result<Self, ServiceError> {
        let port = free_port().map_err(|e| ServiceError::Setup {
            what: "Redis".into(),
            reason: e.to_string(),
        })?;
        let args = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        let mut redis = Self {
            port,
            process: Process::new("redis-server", args, dir.join("redis.log")),
        };
        redis.start_again().await?;
        Ok(redis)
    }

    /// Starts it again on the same port.
    pub async fn start_again(&mut self) -> Result<(), ServiceError> {
        self.process.start()?;
        let port = self.port;
        wait_until("Redis", self.process.log(), || answers(port)).await
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// A maildev SMTP server with its HTTP API, which lists what it received.
#[derive(Debug)]
pub struct MailDev {
    /// SMTP port.
    pub smtp_port: u16,
    /// HTTP API port.
    pub web_port: u16,
    _process: Process,
}

/// Where `scripts/ensure-services.sh` installs maildev (override with `MAILDEV`).
pub fn maildev_bin() -> PathBuf {
    std::env::var_os("MAILDEV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/maildev/node_modules/.bin/maildev"))
}

impl MailDev {
    /// Starts one.
    pub async fn start(dir: &Path) -> Result<Self, ServiceError> {
        let setup = |e: std::io::Error| ServiceError::Setup {
            what: "maildev".into(),
            reason: e.to_string(),
        };
        let smtp_port = free_port().map_err(setup)?;
        let web_port = free_port().map_err(setup)?;
        let args = [
            "--ip",
            "127.0.0.1",
            "--silent",
            "-s",
            &smtp_port.to_string(),
            "-w",
            &web_port.to_string(),
        ]
        .map(String::from)
        .to_vec();
        let mut process = Process::new(maildev_bin(), args, dir.join("maildev.log"));
        process.start()?;
        wait_until("maildev", process.log(), || {
            answers(smtp_port) && answers(web_port)
        })
        .await?;
        Ok(Self {
            smtp_port,
            web_port,
            _process: process,
        })
    }

    /// Every email received, as maildev's JSON.
    pub async fn emails(&self) -> Result<Vec<serde_json::Value>, reqwest::Error> {
        reqwest::get(format!("http://127.0.0.1:{}/email", self.web_port))
            .await?
            .json()
            .await
    }
}
