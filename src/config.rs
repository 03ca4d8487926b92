//! Configuration: environment variables (DESIGN §13, the seed's appendix A.1 names) and an
//! optional TOML file whose keys are the same names (case-insensitive). The environment wins
//! over the file; anything unset takes its default. No store or broker settings at all
//! means embedded mode.
//!
//! Parsing works on a plain key → value map, so it is tested without touching the
//! process environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `value` with the credentials of every URL in it (`scheme://user:password@host`, one URL or
/// a comma-separated list) replaced by `<redacted>`, so that a value that is not a secret as
/// a whole (`NATS_URL`) can be shown and logged without the password it may carry.
pub fn redact_url_credentials(value: &str) -> String {
    value
        .split(',')
        .map(|part| {
            let Some(scheme_end) = part.find("://") else {
                return part.to_string();
            };
            let authority_start = scheme_end + 3;
            let rest = &part[authority_start..];
            let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_len].rfind('@') {
                Some(at) => format!("{}<redacted>{}", &part[..authority_start], &rest[at..]),
                None => part.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Every key primed reads, with whether it is a secret, its default and what it means.
pub const KEYS: &[Key] = &[
    key(
        "PRIMED_HTTP_ADDR",
        false,
        Some("127.0.0.1:8080"),
        "HTTP listen address (host:port)",
    ),
    key(
        "PRIMED_DATA_DIR",
        false,
        Some("./data"),
        "data directory (embedded store, mail files, admin token)",
    ),
    key(
        "PRIMED_SHUTDOWN_TIMEOUT_SECONDS",
        false,
        Some("30"),
        "deadline for a graceful shutdown",
    ),
    key(
        "PRIMED_HTTP_HEADER_TIMEOUT_SECONDS",
        false,
        Some("10"),
        "seconds a client has to send a request's headers once it started, before its connection is closed",
    ),
    key(
        "PRIMED_HTTP_BODY_TIMEOUT_SECONDS",
        false,
        Some("30"),
        "seconds a client has to send a request's body (else 408)",
    ),
    key(
        "PRIMED_HTTP_IDLE_TIMEOUT_SECONDS",
        false,
        Some("60"),
        "seconds a kept-alive connection may wait for its next request",
    ),
    key(
        "PRIMED_HTTP_MAX_CONNECTIONS",
        false,
        Some("1024"),
        "most HTTP connections open at once; more are answered 503 and closed",
    ),
    key(
        "PRIMED_AUTH_FAILURES_PER_MINUTE",
        false,
        Some("10"),
        "failed authentications a client address may make a minute (and at once) before its credentials are refused with 429",
    ),
    key(
        "PRIMED_HEARTBEAT_INTERVAL_SECONDS",
        false,
        Some("5"),
        "seconds between heartbeats",
    ),
    key(
        "PRIMED_METRICS_INTERVAL_SECONDS",
        false,
        Some("5"),
        "seconds between readings of the gauges (outbox, DLQ, queues, pools, Redis)",
    ),
    key(
        "PRIMED_INSTANCE",
        false,
        None,
        "this daemon's name in worker_health_checks (<instance>/<actor>); unset: <hostname>:<HTTP port>",
    ),
    key(
        "PRIMED_FAULT_INJECTION",
        false,
        Some("false"),
        "true enables POST /admin/actors/{name}/kill for chaos testing",
    ),
    key(
        "PRIMED_MAX_DIGITS",
        false,
        Some("1000"),
        "most digits a submitted number may have",
    ),
    key(
        "PRIMED_MIGRATE_ON_START",
        false,
        Some("true"),
        "apply pending database migrations at start",
    ),
    key(
        "PRIMED_DB_MAX_CONNECTIONS",
        false,
        Some("10"),
        "database connection pool size",
    ),
    key(
        "PRIMED_DB_TIMEOUT_SECONDS",
        false,
        Some("5"),
        "wait for a database connection at most this long",
    ),
    key(
        "PRIMED_OUTBOX_BATCH_SIZE",
        false,
        Some("1000"),
        "outbox rows the relay publishes per round",
    ),
    key(
        "PRIMED_OUTBOX_PARALLEL_ROUNDS",
        false,
        Some("4"),
        "relay rounds in flight at once (1-16)",
    ),
    key(
        "PRIMED_OUTBOX_DIRECT",
        false,
        Some("true"),
        "publish new events right after their commit (MySQL + NATS), or in it (embedded); the relay keeps what this misses",
    ),
    key(
        "PRIMED_OUTBOX_POLL_INTERVAL_MS",
        false,
        Some("500"),
        "relay round interval when nothing wakes it",
    ),
    key(
        "PRIMED_OUTBOX_MAX_RETRIES",
        false,
        Some("3"),
        "failed publishes before an event is dead-lettered (dlq.outbox)",
    ),
    key(
        "PRIMED_OUTBOX_RETENTION_HOURS",
        false,
        Some("24"),
        "hours published outbox rows are kept (for outbox replay)",
    ),
    key(
        "PRIMED_RETRY_INITIAL_MS",
        false,
        Some("1000"),
        "first retry delay",
    ),
    key(
        "PRIMED_RETRY_MAX_MS",
        false,
        Some("300000"),
        "longest retry delay",
    ),
    key(
        "PRIMED_RETRY_MULTIPLIER",
        false,
        Some("2"),
        "growth of the retry delay per attempt",
    ),
    key(
        "PRIMED_RETRY_JITTER",
        false,
        Some("0.2"),
        "random spread of retry delays, 0 to 1",
    ),
    key(
        "PRIMED_PRIMECHECK_WORKERS",
        false,
        Some("2"),
        "prime-check workers (pullers) in this daemon",
    ),
    key(
        "PRIMED_EMAIL_WORKERS",
        false,
        Some("2"),
        "email-send workers (pullers) in this daemon",
    ),
    key(
        "PRIMED_WORKER_BATCH",
        false,
        Some("16"),
        "messages a worker pulls and handles at once",
    ),
    key(
        "PRIMED_PRIME_TIMEOUT_MS",
        false,
        Some("10000"),
        "longest a primality test may run before it is a permanent error",
    ),
    key(
        "PRIMED_MAX_DELIVER",
        false,
        Some("3"),
        "deliveries of a message before a transient failure is dead-lettered",
    ),
    key(
        "PRIMED_ACK_WAIT_SECONDS",
        false,
        Some("30"),
        "time a worker may hold a message before JetStream redelivers it",
    ),
    key(
        "PRIMED_RETRY_BACKOFF",
        false,
        Some("1s,2s,4s"),
        "delays before the 2nd, 3rd, ... delivery after a transient failure",
    ),
    key(
        "PRIMED_PRIMECHECK_MAX_DELIVER",
        false,
        None,
        "primecheck.requested only: deliveries (unset: PRIMED_MAX_DELIVER)",
    ),
    key(
        "PRIMED_PRIMECHECK_ACK_WAIT_SECONDS",
        false,
        None,
        "primecheck.requested only: ack wait (unset: PRIMED_ACK_WAIT_SECONDS)",
    ),
    key(
        "PRIMED_PRIMECHECK_RETRY_BACKOFF",
        false,
        None,
        "primecheck.requested only: retry delays (unset: PRIMED_RETRY_BACKOFF)",
    ),
    key(
        "PRIMED_EMAIL_MAX_DELIVER",
        false,
        None,
        "email.send only: deliveries (unset: PRIMED_MAX_DELIVER)",
    ),
    key(
        "PRIMED_EMAIL_ACK_WAIT_SECONDS",
        false,
        None,
        "email.send only: ack wait (unset: PRIMED_ACK_WAIT_SECONDS)",
    ),
    key(
        "PRIMED_EMAIL_RETRY_BACKOFF",
        false,
        None,
        "email.send only: retry delays (unset: PRIMED_RETRY_BACKOFF)",
    ),
    key(
        "PRIMED_SMTP_CONCURRENCY",
        false,
        Some("8"),
        "SMTP sends in flight at once in this daemon",
    ),
    key(
        "PRIMED_SMTP_TIMEOUT_SECONDS",
        false,
        Some("10"),
        "SMTP connect and command timeout",
    ),
    key(
        "PRIMED_SMTP_BREAKER_THRESHOLD",
        false,
        Some("5"),
        "consecutive transient SMTP failures that open the circuit breaker",
    ),
    key(
        "PRIMED_SMTP_BREAKER_COOLDOWN_SECONDS",
        false,
        Some("30"),
        "seconds the SMTP breaker stays open before a probe",
    ),
    key(
        "PRIMED_DLQ_RULES",
        false,
        Some(DEFAULT_DLQ_RULES),
        "automatic DLQ reprocess rules: name:wait:max:subjects:regex, separated by ';' (empty: none)",
    ),
    key(
        "PRIMED_DLQ_RULE_INTERVAL_SECONDS",
        false,
        Some("30"),
        "seconds between applications of the DLQ rules",
    ),
    key(
        "DATABASE_URL",
        true,
        None,
        "store URL (mysql://user:pass@host:port/db); selects production mode",
    ),
    key(
        "MYSQL_HOST",
        false,
        None,
        "MySQL/MariaDB host; selects production mode",
    ),
    key("MYSQL_PORT", false, Some("3306"), "MySQL/MariaDB port"),
    key(
        "MYSQL_DATABASE",
        false,
        Some("prime_check_db"),
        "database name",
    ),
    key("MYSQL_USER", false, Some("root"), "database user"),
    key("MYSQL_PASSWORD", true, None, "database password"),
    key(
        "NATS_URL",
        false,
        None,
        "NATS URL (nats://host:port), or a comma-separated list of a cluster's URLs; selects JetStream",
    ),
    key("NATS_HOST", false, None, "NATS host; selects JetStream"),
    key(
        "NATS_REPLICAS",
        false,
        Some("1"),
        "replicas of each JetStream stream (1, or 3/5 on a JetStream cluster)",
    ),
    key("NATS_PORT", false, Some("4222"), "NATS port"),
    key(
        "NATS_STREAM",
        false,
        Some("PRIME"),
        "main JetStream stream name",
    ),
    key("REDIS_HOST", false, None, "Redis host for rate limiting"),
    key("REDIS_PORT", false, Some("6379"), "Redis port"),
    key("REDIS_PASSWORD", true, None, "Redis password"),
    key(
        "RATE_LIMIT_REDIS_HOST",
        false,
        None,
        "Redis for rate limiting as host:port (alternative to REDIS_HOST)",
    ),
    key(
        "RATE_LIMIT_DEFAULT_LIMIT",
        false,
        Some("100"),
        "requests allowed per window",
    ),
    key(
        "RATE_LIMIT_WINDOW_SECONDS",
        false,
        Some("60"),
        "rate-limit window in seconds",
    ),
    key(
        "RATE_LIMIT_ENABLED",
        false,
        Some("true"),
        "limit the public API (false: no limits at all)",
    ),
    key(
        "RATE_LIMIT_POLICIES",
        false,
        Some(crate::ratelimit::policy::DEFAULT_POLICIES),
        "per-endpoint policies: 'endpoint: ip|user|global N/unit [burst=B] [penalty=5m] [down=fallback|open|closed], ...; ...'",
    ),
    key(
        "RATE_LIMIT_KEY_PREFIX",
        false,
        Some("ratelimit"),
        "first part of every Redis key (<prefix>:<endpoint>:<identifier>); separate environments sharing a Redis",
    ),
    key(
        "RATE_LIMIT_REDIS_TIMEOUT_MS",
        false,
        Some("5"),
        "longest wait for Redis before a check uses the in-process fallback",
    ),
    key(
        "RATE_LIMIT_INSTANCES",
        false,
        Some("1"),
        "daemons sharing the limits; the fallback gives each 1/N of every limit",
    ),
    key(
        "RATE_LIMIT_TRUSTED_PROXIES",
        false,
        None,
        "comma-separated IPs/CIDRs whose X-Forwarded-For is believed",
    ),
    key(
        "RATE_LIMIT_WHITELIST",
        false,
        None,
        "comma-separated client IPs/CIDRs that are never limited",
    ),
    key(
        "RATE_LIMIT_SERVICE_KEYS",
        true,
        None,
        "comma-separated keys (header X-Service-Key) that bypass the limits",
    ),
    key(
        "SMTP_HOST",
        false,
        None,
        "SMTP server; unset writes .eml files to the data directory",
    ),
    key("SMTP_PORT", false, Some("25"), "SMTP port"),
    key("SMTP_USERNAME", false, None, "SMTP user"),
    key("SMTP_PASSWORD", true, None, "SMTP password"),
    key("SMTP_TLS", false, Some("starttls"), "none, starttls or tls"),
    key(
        "SMTP_FROM",
        false,
        Some("primed@localhost"),
        "sender address",
    ),
    key(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        false,
        None,
        "OTLP/HTTP trace endpoint (http://host:4318; spans go to <endpoint>/v1/traces)",
    ),
    key(
        "JAEGER_HOST",
        false,
        None,
        "Jaeger OTLP host (alternative to OTEL_EXPORTER_OTLP_ENDPOINT)",
    ),
    key("JAEGER_PORT", false, Some("4318"), "Jaeger OTLP/HTTP port"),
    key(
        "ADMIN_API_KEYS",
        true,
        None,
        "comma-separated admin tokens; unset generates one in the data directory",
    ),
    key(
        "JWT_SECRET",
        true,
        None,
        "HS256 secret for user tokens (at least 32 bytes; tokens must carry exp)",
    ),
];

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The environment variable name.
    pub name: &'static str,
    /// Whether its value is never printed.
    pub secret: bool,
    /// Its default, if any.
    pub default: Option<&'static str>,
    /// What it means.
    pub help: &'static str,
}

const fn key(
    name: &'static str,
    secret: bool,
    default: Option<&'static str>,
    help: &'static str,
) -> Key {
    Key {
        name,
        secret,
        default,
        help,
    }
}

fn lookup(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// Bad configuration. Each variant names the key and the expected form.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value does not have the expected form.
    #[error("{key} must be {expected}, got {value}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value as given (quoted), or `<redacted>` for secrets.
        value: String,
        /// The expected form.
        expected: &'static str,
    },
    /// A structured value (a list of rules or policies) does not parse.
    #[error("{key} is not valid: {reason}")]
    Spec {
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Two keys that exclude each other are both set.
    #[error("{a} and {b} are both set; set only one of them")]
    Conflict {
        /// One key.
        a: &'static str,
        /// The other.
        b: &'static str,
    },
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The config file has a key primed does not know.
    #[error(
        "config file {path}: unknown key {key:?}; keys are the environment variable names, e.g. primed_http_addr = \"127.0.0.1:8080\" (see `primed config check`)"
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// The config file has a value of a type that cannot be a setting.
    #[error(
        "config file {path}: {key} must be a string, number, boolean or (for ADMIN_API_KEYS) a list of strings"
    )]
    BadFileValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// An environment variable.
    Env,
    /// The config file.
    File,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Default => "default",
            Origin::Env => "environment",
            Origin::File => "config file",
        })
    }
}

/// A value that is never printed or logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` equals one of `keys`. Every key is compared in constant time and
    /// none is skipped, so timing tells neither whether nor which one matched.
    pub fn any_matches(keys: &[Secret], presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let mut matched = subtle::Choice::from(0);
        for key in keys {
            matched |= key.0.as_bytes().ct_eq(presented.as_bytes());
        }
        bool::from(matched)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where requests, results and the outbox are stored.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    /// SQLite in the data directory.
    Embedded,
    /// MySQL or MariaDB.
    Mysql {
        /// A complete URL (DATABASE_URL).
        url: Secret,
    },
}

/// What one HTTP client may hold of the server: time to send a request, time a kept-alive
/// connection may idle, and how many connections all clients together may keep open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// From a request's first byte to its last header.
    pub header_timeout: Duration,
    /// From the headers to the body's last byte.
    pub body_timeout: Duration,
    /// Between the end of an answer and the next request on the connection.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    /// The defaults of the configuration keys.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// The message broker.
#[derive(Clone, PartialEq)]
pub enum BrokerConfig {
    /// A durable queue table in the embedded store.
    Embedded,
    /// NATS JetStream.
    Nats {
        /// nats://host:port
        url: String,
        /// Main stream name.
        stream: String,
        /// Replicas of each stream (more than 1 needs a JetStream cluster).
        replicas: usize,
    },
}

impl std::fmt::Debug for BrokerConfig {
    /// The URL without the credentials it may carry.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("Embedded"),
            Self::Nats {
                url,
                stream,
                replicas,
            } => f
                .debug_struct("Nats")
                .field("url", &redact_url_credentials(url))
                .field("stream", stream)
                .field("replicas", replicas)
                .finish(),
        }
    }
}

/// Redis for rate limiting.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// host
    pub host: String,
    /// port
    pub port: u16,
    /// password
    pub password: Option<Secret>,
}

impl RedisConfig {
    /// `redis://[:password@]host:port/` (the password percent-encoded).
    pub fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match &self.password {
            None => format!("redis://{host}:{}/", self.port),
            Some(p) => {
                let encoded: String = p
                    .expose()
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
                format!("redis://:{encoded}@{host}:{}/", self.port)
            }
        }
    }
}

/// The rate limits of the public API.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Whether requests are limited at all.
    pub enabled: bool,
    /// Per-endpoint policies.
    pub endpoints: Vec<crate::ratelimit::policy::EndpointPolicies>,
    /// First part of the Redis keys.
    pub key_prefix: String,
    /// Redis wait before falling back.
    pub redis_timeout: Duration,
    /// Daemons sharing the limits.
    pub instances: u32,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Never-limited clients.
    pub whitelist: Vec<ipnet::IpNet>,
    /// Bypass keys.
    pub service_keys: Vec<Secret>,
}

/// How to talk TLS to the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text (a local relay or Mailpit).
    None,
    /// Upgrade with STARTTLS.
    StartTls,
    /// TLS from the first byte.
    Tls,
}

/// SMTP delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct SmtpConfig {
    /// host
    pub host: String,
    /// port
    pub port: u16,
    /// user
    pub username: Option<String>,
    /// password
    pub password: Option<Secret>,
    /// TLS mode
    pub tls: SmtpTls,
    /// sender address
    pub from: String,
}

/// The default automatic reprocess rule (seed §3.3.1): network trouble and timeouts are
/// retried after 30 minutes, at most twice.
pub const DEFAULT_DLQ_RULES: &str =
    "network:30m:2::(?i)(timed? ?out|timeout|connection (refused|reset)|network)";

/// One automatic DLQ reprocess rule.
#[derive(Debug, Clone)]
pub struct DlqRule {
    /// Its name.
    pub name: String,
    /// Wait before a retry.
    pub wait: Duration,
    /// Automatic retries per dead letter.
    pub max_retries: u32,
    /// Original subjects (all when empty).
    pub subjects: Vec<String>,
    /// Matched against the error message.
    pub pattern: regex::Regex,
}

impl PartialEq for DlqRule {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.wait == other.wait
            && self.max_retries == other.max_retries
            && self.subjects == other.subjects
            && self.pattern.as_str() == other.pattern.as_str()
    }
}

/// Parses `name:wait:max:subjects:regex;...`.
pub fn parse_dlq_rules(spec: &str) -> Result<Vec<DlqRule>, String> {
    spec.split(';')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|rule| {
            let mut parts = rule.splitn(5, ':');
            let mut next = |what: &str| {
                parts
                    .next()
                    .map(str::trim)
                    .ok_or_else(|| format!("rule {rule:?} has no {what}"))
            };
            let name = next("name")?.to_string();
            let wait = humantime::parse_duration(next("wait")?)
                .map_err(|e| format!("rule {name:?}: the wait is not a duration like 30m ({e})"))?;
            let max_retries = next("max")?
                .parse::<u32>()
                .map_err(|_| format!("rule {name:?}: the max is not a whole number"))?;
            let subjects = next("subjects")?
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let pattern = regex::Regex::new(next("regex")?)
                .map_err(|e| format!("rule {name:?}: the pattern is not a valid regex ({e})"))?;
            Ok(DlqRule {
                name,
                wait,
                max_retries,
                subjects,
                pattern,
            })
        })
        .collect()
}

/// The retry policy of one subject (seed §2.3).
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectRetry {
    /// Deliveries before a transient failure is dead-lettered.
    pub max_deliver: u32,
    /// Ack wait.
    pub ack_wait: Duration,
    /// NAK delays after the 1st, 2nd, … failed delivery.
    pub backoff: Vec<Duration>,
}

/// The consumers, their retries, SMTP limits and the DLQ rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Workers {
    /// Prime-check workers.
    pub primecheck_workers: u32,
    /// Email workers.
    pub email_workers: u32,
    /// Messages per pull.
    pub batch: u32,
    /// Primality test limit.
    pub prime_timeout: Duration,
    /// Deliveries before dead-lettering.
    pub max_deliver: u32,
    /// Ack wait.
    pub ack_wait: Duration,
    /// NAK delays.
    pub backoff: Vec<Duration>,
    /// `primecheck.requested`'s policy (the global one unless overridden).
    pub primecheck_retry: SubjectRetry,
    /// `email.send`'s policy (the global one unless overridden).
    pub email_retry: SubjectRetry,
    /// SMTP sends in flight.
    pub smtp_concurrency: u32,
    /// SMTP timeout.
    pub smtp_timeout: Duration,
    /// Breaker threshold.
    pub breaker_threshold: u32,
    /// Breaker cool-down.
    pub breaker_cool_down: Duration,
    /// Automatic reprocess rules.
    pub dlq_rules: Vec<DlqRule>,
    /// Rule interval.
    pub dlq_rule_interval: Duration,
}

/// Limits, pool sizes, and the outbox relay's and retries' settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    /// Most digits a number may have.
    pub max_digits: usize,
    /// Apply migrations at start.
    pub migrate_on_start: bool,
    /// Database pool size.
    pub db_max_connections: u32,
    /// Database connection wait.
    pub db_timeout: Duration,
    /// Rows per relay round.
    pub outbox_batch_size: u32,
    /// Relay rounds in flight.
    pub outbox_parallel_rounds: u32,
    /// Publish new events right after their commit (the relay as the fallback).
    pub outbox_direct: bool,
    /// Relay round interval.
    pub outbox_poll_interval: Duration,
    /// Failed publishes before dead-lettering.
    pub outbox_max_retries: u32,
    /// Published-row retention.
    pub outbox_retention: Duration,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Retry delay growth.
    pub retry_multiplier: f64,
    /// Retry jitter fraction.
    pub retry_jitter: f64,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Graceful shutdown deadline.
    pub shutdown_timeout: Duration,
    /// What one HTTP client may hold of the server.
    pub http_limits: HttpLimits,
    /// Failed authentications a client address may make a minute.
    pub auth_failures_per_minute: u32,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Gauge collection interval.
    pub metrics_interval: Duration,
    /// Whether the admin API may kill actors (chaos testing).
    pub fault_injection: bool,
    /// This daemon's name in `worker_health_checks`; None: host:port.
    pub instance: Option<String>,
    /// Pipeline tuning: limits, pools, outbox and retries.
    pub tuning: Tuning,
    /// Consumers, their retries, SMTP limits, DLQ rules.
    pub workers: Workers,
    /// Store.
    pub store: StoreConfig,
    /// Broker.
    pub broker: BrokerConfig,
    /// Rate-limit store; None = in-process.
    pub redis: Option<RedisConfig>,
    /// Requests per window.
    pub rate_limit_default_limit: u32,
    /// Window.
    pub rate_limit_window: Duration,
    /// The public API's rate limits.
    pub rate_limit: RateLimitConfig,
    /// SMTP; None = .eml files.
    pub smtp: Option<SmtpConfig>,
    /// OTLP endpoint; None = tracing export off.
    pub otlp_endpoint: Option<String>,
    /// Admin tokens; empty = generate one in the data directory.
    pub admin_api_keys: Vec<Secret>,
    /// JWT secret.
    pub jwt_secret: Option<Secret>,
    /// Every key's effective value (secrets already redacted) and origin, for
    /// `primed config check`.
    pub effective: Vec<(&'static Key, Option<String>, Origin)>,
}

/// The raw values and their origins.
struct Raw {
    values: BTreeMap<&'static str, (String, Origin)>,
}

impl Raw {
    fn get(&self, name: &'static str) -> Option<&str> {
        self.values
            .get(name)
            .map(|(v, _)| v.as_str())
            .or_else(|| lookup(name).and_then(|k| k.default))
    }

    fn is_set(&self, name: &'static str) -> bool {
        self.values.contains_key(name)
    }

    fn invalid(&self, name: &'static str, expected: &'static str) -> ConfigError {
        let secret = lookup(name).is_some_and(|k| k.secret);
        let value = match self.get(name) {
            Some(_) if secret => "<redacted>".to_string(),
            Some(v) => format!("{:?}", redact_url_credentials(v)),
            None => "nothing".to_string(),
        };
        ConfigError::Invalid {
            key: name,
            value,
            expected,
        }
    }

    fn required(&self, name: &'static str) -> Result<&str, ConfigError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| self.invalid(name, "set (it has no default)"))
    }

    fn port(&self, name: &'static str) -> Result<u16, ConfigError> {
        let expected = "a number between 1 and 65535";
        let v = self.required(name)?;
        match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(self.invalid(name, expected)),
        }
    }

    fn positive(&self, name: &'static str, expected: &'static str) -> Result<u32, ConfigError> {
        let v = self.required(name)?;
        match v.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(self.invalid(name, expected)),
        }
    }

    fn host(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(v)
                if v.trim().is_empty() || v.contains(char::is_whitespace) || v.contains('/') =>
            {
                Err(self.invalid(name, "a host name or IP address"))
            }
            Some(v) => Ok(Some(v.trim().to_string())),
        }
    }

    fn boolean(&self, name: &'static str) -> Result<bool, ConfigError> {
        match self.required(name)?.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(self.invalid(name, "true or false")),
        }
    }

    /// A comma-separated list of secrets, each at least 16 characters long.
    fn secret_list(
        &self,
        name: &'static str,
        expected: &'static str,
    ) -> Result<Vec<Secret>, ConfigError> {
        let keys: Vec<Secret> = self
            .get(name)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| Secret(k.to_string()))
            .collect();
        if keys.iter().any(|k| k.0.len() < 16) {
            return Err(self.invalid(name, expected));
        }
        Ok(keys)
    }

    fn secret(&self, name: &'static str) -> Option<Secret> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| Secret(v.to_string()))
    }
}

impl Config {
    /// Reads the configuration from the process environment and an optional file.
    pub fn from_env(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load(std::env::vars(), file)
    }

    /// Reads the configuration from `env` (name, value pairs) and an optional TOML file.
    pub fn load(
        env: impl IntoIterator<Item = (String, String)>,
        file: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let mut values = BTreeMap::new();
        if let Some(path) = file {
            for (name, value) in read_file(path)? {
                values.insert(name, (value, Origin::File));
            }
        }
        for (name, value) in env {
            if let Some(key) = lookup(&name) {
                values.insert(key.name, (value, Origin::Env));
            }
        }
        Self::parse(Raw { values })
    }

    fn parse(raw: Raw) -> Result<Self, ConfigError> {
        let http_addr = raw
            .required("PRIMED_HTTP_ADDR")?
            .trim()
            .parse::<SocketAddr>()
            .map_err(|_| {
                raw.invalid(
                    "PRIMED_HTTP_ADDR",
                    "an IP address and port, e.g. 127.0.0.1:8080 or [::1]:8080",
                )
            })?;
        let data_dir = PathBuf::from(raw.required("PRIMED_DATA_DIR")?);
        let shutdown_timeout = Duration::from_secs(
            raw.positive(
                "PRIMED_SHUTDOWN_TIMEOUT_SECONDS",
                "a whole number of seconds, at least 1",
            )?
            .into(),
        );
        let seconds = |name| {
            raw.positive(name, "a whole number of seconds, at least 1")
                .map(|n| Duration::from_secs(n.into()))
        };
        let http_limits = HttpLimits {
            header_timeout: seconds("PRIMED_HTTP_HEADER_TIMEOUT_SECONDS")?,
            body_timeout: seconds("PRIMED_HTTP_BODY_TIMEOUT_SECONDS")?,
            idle_timeout: seconds("PRIMED_HTTP_IDLE_TIMEOUT_SECONDS")?,
            max_connections: raw.positive(
                "PRIMED_HTTP_MAX_CONNECTIONS",
                "a whole number of connections, at least 1",
            )? as usize,
        };
        let auth_failures_per_minute = raw.positive(
            "PRIMED_AUTH_FAILURES_PER_MINUTE",
            "a whole number of failed authentications a minute, at least 1",
        )?;
        let heartbeat_interval = Duration::from_secs(
            raw.positive(
                "PRIMED_HEARTBEAT_INTERVAL_SECONDS",
                "a whole number of seconds, at least 1",
            )?
            .into(),
        );
        let metrics_interval = Duration::from_secs(
            raw.positive(
                "PRIMED_METRICS_INTERVAL_SECONDS",
                "a whole number of seconds, at least 1",
            )?
            .into(),
        );

        let fault_injection = raw.boolean("PRIMED_FAULT_INJECTION")?;
        let instance = match raw.get("PRIMED_INSTANCE").map(str::trim) {
            None | Some("") => None,
            Some(v) if v.len() > 60 || v.contains(char::is_whitespace) || v.contains('/') => {
                return Err(raw.invalid(
                    "PRIMED_INSTANCE",
                    "a name of at most 60 characters without spaces or '/'",
                ));
            }
            Some(v) => Some(v.to_string()),
        };
        let tuning = Self::tuning(&raw)?;
        let workers = Self::workers(&raw)?;
        let store = Self::store(&raw)?;
        let broker = Self::broker(&raw)?;

        if raw.is_set("REDIS_HOST") && raw.is_set("RATE_LIMIT_REDIS_HOST") {
            return Err(ConfigError::Conflict {
                a: "REDIS_HOST",
                b: "RATE_LIMIT_REDIS_HOST",
            });
        }
        let redis = if let Some(hostport) = raw.get("RATE_LIMIT_REDIS_HOST") {
            let (host, port) = split_host_port(hostport).ok_or_else(|| {
                raw.invalid("RATE_LIMIT_REDIS_HOST", "host:port, e.g. redis:6379")
            })?;
            Some(RedisConfig {
                host,
                port,
                password: raw.secret("REDIS_PASSWORD"),
            })
        } else if let Some(host) = raw.host("REDIS_HOST")? {
            Some(RedisConfig {
                host,
                port: raw.port("REDIS_PORT")?,
                password: raw.secret("REDIS_PASSWORD"),
            })
        } else {
            None
        };
        let rate_limit_default_limit = raw.positive(
            "RATE_LIMIT_DEFAULT_LIMIT",
            "a whole number of requests, at least 1",
        )?;
        let rate_limit_window = Duration::from_secs(
            raw.positive(
                "RATE_LIMIT_WINDOW_SECONDS",
                "a whole number of seconds, at least 1",
            )?
            .into(),
        );

        let rate_limit = Self::rate_limit(&raw)?;

        let smtp = match raw.host("SMTP_HOST")? {
            None => None,
            Some(host) => {
                let tls = match raw
                    .required("SMTP_TLS")?
                    .trim()
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "none" | "off" | "false" => SmtpTls::None,
                    "starttls" => SmtpTls::StartTls,
                    "tls" | "true" | "on" => SmtpTls::Tls,
                    _ => return Err(raw.invalid("SMTP_TLS", "one of none, starttls, tls")),
                };
                let from = raw.required("SMTP_FROM")?.trim().to_string();
                if !looks_like_email(&from) {
                    return Err(
                        raw.invalid("SMTP_FROM", "an email address, e.g. primed@example.com")
                    );
                }
                Some(SmtpConfig {
                    host,
                    port: raw.port("SMTP_PORT")?,
                    username: raw
                        .get("SMTP_USERNAME")
                        .filter(|v| !v.is_empty())
                        .map(String::from),
                    password: raw.secret("SMTP_PASSWORD"),
                    tls,
                    from,
                })
            }
        };

        if raw.is_set("OTEL_EXPORTER_OTLP_ENDPOINT") && raw.is_set("JAEGER_HOST") {
            return Err(ConfigError::Conflict {
                a: "OTEL_EXPORTER_OTLP_ENDPOINT",
                b: "JAEGER_HOST",
            });
        }
        let otlp_endpoint = if let Some(url) = raw.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(raw.invalid(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "an http:// or https:// URL, e.g. http://jaeger:4318",
                ));
            }
            Some(url.to_string())
        } else if let Some(host) = raw.host("JAEGER_HOST")? {
            Some(format!("http://{host}:{}", raw.port("JAEGER_PORT")?))
        } else {
            None
        };

        let admin_api_keys = raw.secret_list(
            "ADMIN_API_KEYS",
            "comma-separated tokens of at least 16 characters each",
        )?;
        let jwt_secret = raw.secret("JWT_SECRET");
        if jwt_secret.as_ref().is_some_and(|s| s.expose().len() < 32) {
            return Err(raw.invalid(
                "JWT_SECRET",
                "at least 32 bytes (a guessable HS256 secret lets anyone sign user tokens), e.g. the output of `openssl rand -hex 32`",
            ));
        }

        let effective = KEYS
            .iter()
            .map(|k| {
                let (value, origin) = match raw.values.get(k.name) {
                    Some((_, o)) if k.secret => (Some("<redacted>".to_string()), o.clone()),
                    Some((v, o)) => (Some(redact_url_credentials(v)), o.clone()),
                    None => (k.default.map(String::from), Origin::Default),
                };
                (k, value, origin)
            })
            .collect();

        Ok(Config {
            http_addr,
            data_dir,
            shutdown_timeout,
            heartbeat_interval,
            metrics_interval,
            fault_injection,
            http_limits,
            auth_failures_per_minute,
            instance,
            tuning,
            workers,
            store,
            broker,
            redis,
            rate_limit_default_limit,
            rate_limit_window,
            rate_limit,
            smtp,
            otlp_endpoint,
            admin_api_keys,
            jwt_secret,
            effective,
        })
    }

    fn rate_limit(raw: &Raw) -> Result<RateLimitConfig, ConfigError> {
        let endpoints = crate::ratelimit::policy::parse_policies(
            raw.get("RATE_LIMIT_POLICIES").unwrap_or_default(),
        )
        .map_err(|reason| ConfigError::Spec {
            key: "RATE_LIMIT_POLICIES",
            reason,
        })?;
        let nets = |name: &'static str| -> Result<Vec<ipnet::IpNet>, ConfigError> {
            raw.get(name)
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| {
                    n.parse::<ipnet::IpNet>()
                        .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            raw.invalid(
                                name,
                                "comma-separated IP addresses or CIDR networks, e.g. 10.0.0.0/8,192.0.2.1",
                            )
                        })
                })
                .collect()
        };
        let service_keys = raw.secret_list(
            "RATE_LIMIT_SERVICE_KEYS",
            "comma-separated keys of at least 16 characters each",
        )?;
        let key_prefix = raw.required("RATE_LIMIT_KEY_PREFIX")?.trim().to_string();
        if key_prefix.is_empty()
            || key_prefix.contains(|c: char| c.is_whitespace() || "*?[]\\".contains(c))
        {
            return Err(raw.invalid(
                "RATE_LIMIT_KEY_PREFIX",
                "a key prefix without spaces or glob characters, e.g. ratelimit",
            ));
        }
        Ok(RateLimitConfig {
            enabled: raw.boolean("RATE_LIMIT_ENABLED")?,
            endpoints,
            key_prefix,
            redis_timeout: Duration::from_millis(
                raw.positive(
                    "RATE_LIMIT_REDIS_TIMEOUT_MS",
                    "a whole number of milliseconds, at least 1",
                )?
                .into(),
            ),
            instances: raw.positive("RATE_LIMIT_INSTANCES", "a whole number, at least 1")?,
            trusted_proxies: nets("RATE_LIMIT_TRUSTED_PROXIES")?,
            whitelist: nets("RATE_LIMIT_WHITELIST")?,
            service_keys,
        })
    }

    fn workers(raw: &Raw) -> Result<Workers, ConfigError> {
        let secs = |name: &'static str| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs(
                raw.positive(name, "a whole number of seconds, at least 1")?
                    .into(),
            ))
        };
        let durations = |name: &'static str, text: &str| -> Result<Vec<Duration>, ConfigError> {
            let list: Vec<Duration> = text
                .split(',')
                .map(|s| humantime::parse_duration(s.trim()))
                .collect::<Result<_, _>>()
                .map_err(|_| raw.invalid(name, "comma-separated durations, e.g. 1s,2s,4s"))?;
            if list.is_empty() || list.iter().any(Duration::is_zero) {
                return Err(raw.invalid(name, "comma-separated durations, e.g. 1s,2s,4s"));
            }
            Ok(list)
        };
        let backoff = durations(
            "PRIMED_RETRY_BACKOFF",
            raw.required("PRIMED_RETRY_BACKOFF")?,
        )?;
        let max_deliver = raw.positive("PRIMED_MAX_DELIVER", "a whole number, at least 1")?;
        let ack_wait = secs("PRIMED_ACK_WAIT_SECONDS")?;
        let subject = |deliver: &'static str,
                       wait: &'static str,
                       delays: &'static str|
         -> Result<SubjectRetry, ConfigError> {
            let set = |name| raw.get(name).is_some_and(|v| !v.trim().is_empty());
            Ok(SubjectRetry {
                max_deliver: if set(deliver) {
                    raw.positive(deliver, "a whole number, at least 1")?
                } else {
                    max_deliver
                },
                ack_wait: if set(wait) { secs(wait)? } else { ack_wait },
                backoff: match raw.get(delays).filter(|v| !v.trim().is_empty()) {
                    Some(text) => durations(delays, text)?,
                    None => backoff.clone(),
                },
            })
        };
        let primecheck_retry = subject(
            "PRIMED_PRIMECHECK_MAX_DELIVER",
            "PRIMED_PRIMECHECK_ACK_WAIT_SECONDS",
            "PRIMED_PRIMECHECK_RETRY_BACKOFF",
        )?;
        let email_retry = subject(
            "PRIMED_EMAIL_MAX_DELIVER",
            "PRIMED_EMAIL_ACK_WAIT_SECONDS",
            "PRIMED_EMAIL_RETRY_BACKOFF",
        )?;
        let dlq_rules = parse_dlq_rules(raw.get("PRIMED_DLQ_RULES").unwrap_or_default()).map_err(
            |_| {
                raw.invalid(
                    "PRIMED_DLQ_RULES",
                    "rules name:wait:max:subjects:regex separated by ';', e.g. network:30m:2::timed out",
                )
            },
        )?;
        Ok(Workers {
            primecheck_workers: raw
                .positive("PRIMED_PRIMECHECK_WORKERS", "a whole number, at least 1")?,
            email_workers: raw.positive("PRIMED_EMAIL_WORKERS", "a whole number, at least 1")?,
            batch: raw.positive("PRIMED_WORKER_BATCH", "a whole number, at least 1")?,
            prime_timeout: Duration::from_millis(
                raw.positive(
                    "PRIMED_PRIME_TIMEOUT_MS",
                    "a whole number of milliseconds, at least 1",
                )?
                .into(),
            ),
            max_deliver,
            ack_wait,
            backoff,
            primecheck_retry,
            email_retry,
            smtp_concurrency: raw
                .positive("PRIMED_SMTP_CONCURRENCY", "a whole number, at least 1")?,
            smtp_timeout: secs("PRIMED_SMTP_TIMEOUT_SECONDS")?,
            breaker_threshold: raw.positive(
                "PRIMED_SMTP_BREAKER_THRESHOLD",
                "a whole number, at least 1",
            )?,
            breaker_cool_down: secs("PRIMED_SMTP_BREAKER_COOLDOWN_SECONDS")?,
            dlq_rules,
            dlq_rule_interval: secs("PRIMED_DLQ_RULE_INTERVAL_SECONDS")?,
        })
    }

    fn tuning(raw: &Raw) -> Result<Tuning, ConfigError> {
        let ms = |name: &'static str| -> Result<Duration, ConfigError> {
            Ok(Duration::from_millis(
                raw.positive(name, "a whole number of milliseconds, at least 1")?
                    .into(),
            ))
        };
        let fraction = |name: &'static str,
                        lo: f64,
                        hi: f64,
                        expected: &'static str|
         -> Result<f64, ConfigError> {
            match raw.required(name)?.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && (lo..=hi).contains(&v) => Ok(v),
                _ => Err(raw.invalid(name, expected)),
            }
        };
        let max_retries = match raw
            .required("PRIMED_OUTBOX_MAX_RETRIES")?
            .trim()
            .parse::<u32>()
        {
            Ok(n) if n <= 100 => n,
            _ => {
                return Err(
                    raw.invalid("PRIMED_OUTBOX_MAX_RETRIES", "a whole number from 0 to 100")
                );
            }
        };
        let batch = raw.positive("PRIMED_OUTBOX_BATCH_SIZE", "a whole number from 1 to 5000")?;
        if batch > 5000 {
            return Err(raw.invalid("PRIMED_OUTBOX_BATCH_SIZE", "a whole number from 1 to 5000"));
        }
        let tuning = Tuning {
            max_digits: raw.positive("PRIMED_MAX_DIGITS", "a whole number of digits, at least 1")?
                as usize,
            migrate_on_start: raw.boolean("PRIMED_MIGRATE_ON_START")?,
            db_max_connections: raw.positive(
                "PRIMED_DB_MAX_CONNECTIONS",
                "a whole number of connections, at least 1",
            )?,
            db_timeout: Duration::from_secs(
                raw.positive(
                    "PRIMED_DB_TIMEOUT_SECONDS",
                    "a whole number of seconds, at least 1",
                )?
                .into(),
            ),
            outbox_batch_size: batch,
            outbox_parallel_rounds: match raw
                .required("PRIMED_OUTBOX_PARALLEL_ROUNDS")?
                .trim()
                .parse::<u32>()
            {
                Ok(n) if (1..=16).contains(&n) => n,
                _ => {
                    return Err(raw.invalid(
                        "PRIMED_OUTBOX_PARALLEL_ROUNDS",
                        "a whole number from 1 to 16",
                    ));
                }
            },
            outbox_direct: raw.boolean("PRIMED_OUTBOX_DIRECT")?,
            outbox_poll_interval: ms("PRIMED_OUTBOX_POLL_INTERVAL_MS")?,
            outbox_max_retries: max_retries,
            outbox_retention: Duration::from_secs(
                u64::from(raw.positive(
                    "PRIMED_OUTBOX_RETENTION_HOURS",
                    "a whole number of hours, at least 1",
                )?) * 3600,
            ),
            retry_initial: ms("PRIMED_RETRY_INITIAL_MS")?,
            retry_max: ms("PRIMED_RETRY_MAX_MS")?,
            retry_multiplier: fraction(
                "PRIMED_RETRY_MULTIPLIER",
                1.0,
                10.0,
                "a number from 1 to 10",
            )?,
            retry_jitter: fraction("PRIMED_RETRY_JITTER", 0.0, 1.0, "a number from 0 to 1")?,
        };
        if tuning.retry_max < tuning.retry_initial {
            return Err(raw.invalid("PRIMED_RETRY_MAX_MS", "at least PRIMED_RETRY_INITIAL_MS"));
        }
        Ok(tuning)
    }

    fn store(raw: &Raw) -> Result<StoreConfig, ConfigError> {
        let parts = [
            "MYSQL_HOST",
            "MYSQL_PORT",
            "MYSQL_DATABASE",
            "MYSQL_USER",
            "MYSQL_PASSWORD",
        ];
        if let Some(url) = raw.get("DATABASE_URL") {
            if let Some(part) = parts.iter().find(|p| raw.is_set(p)) {
                return Err(ConfigError::Conflict {
                    a: "DATABASE_URL",
                    b: part,
                });
            }
            let url = url.replacen("mariadb://", "mysql://", 1);
            // Parsed as `run` will parse it (a port that is not a number, say), so that
            // `config check` catches what `run` would stop on.
            if !url.starts_with("mysql://")
                || url.parse::<sqlx::mysql::MySqlConnectOptions>().is_err()
            {
                return Err(raw.invalid(
                    "DATABASE_URL",
                    "a mysql:// URL, e.g. mysql://user:password@127.0.0.1:3306/prime_check_db",
                ));
            }
            return Ok(StoreConfig::Mysql { url: Secret(url) });
        }
        let Some(host) = raw.host("MYSQL_HOST")? else {
            if let Some(part) = parts.iter().find(|p| raw.is_set(p)) {
                return Err(ConfigError::Invalid {
                    key: "MYSQL_HOST",
                    value: "nothing".into(),
                    expected: if *part == "MYSQL_HOST" {
                        "a host name"
                    } else {
                        "set when any other MYSQL_* key is set"
                    },
                });
            }
            return Ok(StoreConfig::Embedded);
        };
        let port = raw.port("MYSQL_PORT")?;
        let database = raw.required("MYSQL_DATABASE")?;
        if !database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        {
            return Err(raw.invalid(
                "MYSQL_DATABASE",
                "a database name of letters, digits and underscores",
            ));
        }
        let user = raw.required("MYSQL_USER")?;
        let auth = match raw.secret("MYSQL_PASSWORD") {
            Some(p) => format!("{}:{}", percent_encode(user), percent_encode(p.expose())),
            None => percent_encode(user),
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(StoreConfig::Mysql {
            url: Secret(format!("mysql://{auth}@{host}:{port}/{database}")),
        })
    }

    fn broker(raw: &Raw) -> Result<BrokerConfig, ConfigError> {
        let stream = raw.required("NATS_STREAM")?.trim().to_string();
        if stream.is_empty()
            || !stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(raw.invalid(
                "NATS_STREAM",
                "a stream name of letters, digits, '-' and '_'",
            ));
        }
        let replicas = raw.positive("NATS_REPLICAS", "1, 3 or 5 (replicas of each stream)")?;
        if replicas > 5 {
            return Err(raw.invalid("NATS_REPLICAS", "1, 3 or 5 (replicas of each stream)"));
        }
        let replicas = replicas as usize;
        if let Some(url) = raw.get("NATS_URL") {
            if raw.is_set("NATS_HOST") {
                return Err(ConfigError::Conflict {
                    a: "NATS_URL",
                    b: "NATS_HOST",
                });
            }
            let valid = |u: &str| {
                (u.starts_with("nats://") || u.starts_with("tls://")) && u.len() > "nats://".len()
            };
            if !url.split(',').map(str::trim).all(valid) {
                return Err(raw.invalid(
                    "NATS_URL",
                    "a nats:// URL, e.g. nats://127.0.0.1:4222, or a comma-separated list of them",
                ));
            }
            return Ok(BrokerConfig::Nats {
                url: url.to_string(),
                stream,
                replicas,
            });
        }
        match raw.host("NATS_HOST")? {
            Some(host) => Ok(BrokerConfig::Nats {
                url: format!("nats://{host}:{}", raw.port("NATS_PORT")?),
                stream,
                replicas,
            }),
            None => Ok(BrokerConfig::Embedded),
        }
    }

    /// Settings that are valid but probably not what the operator meant, each as a sentence
    /// saying what to do; `config check` prints them and `run` logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(net) = self
            .rate_limit
            .trusted_proxies
            .iter()
            .find(|n| n.prefix_len() == 0)
        {
            out.push(format!(
                "RATE_LIMIT_TRUSTED_PROXIES contains {net}, which trusts every address: any client can choose the address it is limited and logged as with X-Forwarded-For; list only your proxies' addresses"
            ));
        }
        out
    }

    /// The effective configuration as `KEY = value  # origin` lines, secrets redacted.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mode = match (&self.store, &self.broker) {
            (StoreConfig::Embedded, BrokerConfig::Embedded) => {
                "embedded (SQLite store and queue in the data directory)"
            }
            (StoreConfig::Mysql { .. }, BrokerConfig::Nats { .. }) => {
                "production (MySQL store, NATS JetStream broker)"
            }
            (StoreConfig::Mysql { .. }, BrokerConfig::Embedded) => {
                "mixed (MySQL store, embedded queue)"
            }
            (StoreConfig::Embedded, BrokerConfig::Nats { .. }) => {
                "mixed (SQLite store, NATS JetStream broker)"
            }
        };
        out.push_str(&format!("# mode: {mode}\n"));
        let width = KEYS.iter().map(|k| k.name.len()).max().unwrap_or(0);
        for (key, value, origin) in &self.effective {
            let shown = match value {
                None => "(unset)".to_string(),
                Some(_) if key.secret => "<redacted>".to_string(),
                Some(v) => format!("{v:?}"),
            };
            out.push_str(&format!(
                "{:width$} = {shown:<24} # {origin}: {}\n",
                key.name, key.help
            ));
        }
        out
    }
}

fn read_file(path: &Path) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::ParseFile {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
    let mut out = Vec::new();
    for (name, value) in table {
        let key = lookup(&name.to_ascii_uppercase()).ok_or_else(|| ConfigError::UnknownKey {
            path: path.to_path_buf(),
            key: name.clone(),
        })?;
        let bad = || ConfigError::BadFileValue {
            path: path.to_path_buf(),
            key: key.name.to_string(),
        };
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) if key.name == "ADMIN_API_KEYS" => items
                .into_iter()
                .map(|i| i.as_str().map(String::from).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            _ => return Err(bad()),
        };
        out.push((key.name, value));
    }
    Ok(out)
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.trim().rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    (!host.is_empty()).then(|| (host.to_string(), port))
}

fn looks_like_email(s: &str) -> bool {
    matches!(s.split_once('@'), Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !s.contains(char::is_whitespace))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            None,
        )
    }

    #[test]
    fn nothing_set_means_embedded_mode_with_defaults() {
        let c = load(&[]).unwrap();
        assert_eq!(c.http_addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.store, StoreConfig::Embedded);
        assert_eq!(c.broker, BrokerConfig::Embedded);
        assert_eq!(c.redis, None);
        assert_eq!(c.smtp, None);
        assert_eq!(c.rate_limit_default_limit, 100);
        assert_eq!(c.rate_limit_window, Duration::from_secs(60));
        assert!(c.rate_limit.enabled);
        assert_eq!(c.rate_limit.endpoints.len(), 2, "the seed's two endpoints");
        assert_eq!(c.rate_limit.key_prefix, "ratelimit");
        assert_eq!(c.rate_limit.redis_timeout, Duration::from_millis(5));
        assert_eq!(c.rate_limit.instances, 1);
        assert!(c.rate_limit.trusted_proxies.is_empty());
        assert!(c.admin_api_keys.is_empty());
        assert!(c.render().contains("# mode: embedded"));
    }

    #[test]
    fn redis_urls_encode_the_password() {
        let c = load(&[
            ("REDIS_HOST", "cache"),
            ("REDIS_PASSWORD", "p@ss:w/rd"),
            ("RATE_LIMIT_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1"),
        ])
        .unwrap();
        assert_eq!(
            c.redis.unwrap().url(),
            "redis://:p%40ss%3Aw%2Frd@cache:6379/"
        );
        assert_eq!(
            c.rate_limit.trusted_proxies,
            vec![
                "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap(),
                "192.0.2.1/32".parse().unwrap()
            ]
        );
    }

    #[test]
    fn worker_settings_have_the_seeds_defaults_and_rules_parse() {
        let c = load(&[]).unwrap();
        let w = &c.workers;
        assert_eq!((w.max_deliver, w.ack_wait), (3, Duration::from_secs(30)));
        assert_eq!(
            w.backoff,
            vec![
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4)
            ]
        );
        assert_eq!(w.dlq_rules.len(), 1);
        let rule = &w.dlq_rules[0];
        assert_eq!(
            (rule.wait, rule.max_retries),
            (Duration::from_secs(1800), 2)
        );
        assert!(
            rule.pattern
                .is_match("cannot talk to the SMTP server: Connection refused")
        );
        assert!(rule.pattern.is_match("network timeout"));
        assert!(!rule.pattern.is_match("550 no such user"));

        let c = load(&[("PRIMED_DLQ_RULES", "")]).unwrap();
        assert!(c.workers.dlq_rules.is_empty(), "empty disables the rules");
        let rules = parse_dlq_rules("a:5m:1:email.send,primecheck.requested:x|y:z; b:1s:3::^boom$")
            .unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0].subjects,
            vec!["email.send", "primecheck.requested"]
        );
        assert_eq!(
            rules[0].pattern.as_str(),
            "x|y:z",
            "the pattern may hold ':' and '|'"
        );
        assert!(rules[1].subjects.is_empty());
        for bad in ["a:soon:1::x", "a:1s:many::x", "a:1s:1::(", "a:1s"] {
            assert!(parse_dlq_rules(bad).is_err(), "{bad}");
        }
        assert_eq!(c.workers.email_retry, c.workers.primecheck_retry);
        let c = load(&[
            ("PRIMED_EMAIL_MAX_DELIVER", "5"),
            ("PRIMED_EMAIL_RETRY_BACKOFF", "1m,5m"),
            ("PRIMED_PRIMECHECK_ACK_WAIT_SECONDS", "120"),
        ])
        .unwrap();
        let (p, e) = (&c.workers.primecheck_retry, &c.workers.email_retry);
        assert_eq!((p.max_deliver, p.ack_wait), (3, Duration::from_secs(120)));
        assert_eq!(p.backoff.len(), 3, "the global steps");
        assert_eq!((e.max_deliver, e.ack_wait), (5, Duration::from_secs(30)));
        assert_eq!(
            e.backoff,
            vec![Duration::from_secs(60), Duration::from_secs(300)]
        );
        let err = load(&[("PRIMED_EMAIL_RETRY_BACKOFF", "soon")]).unwrap_err();
        assert!(
            err.to_string().contains("PRIMED_EMAIL_RETRY_BACKOFF"),
            "{err}"
        );
        let err = load(&[("PRIMED_RETRY_BACKOFF", "1s,0s")]).unwrap_err();
        assert!(err.to_string().contains("PRIMED_RETRY_BACKOFF"), "{err}");
    }

    #[test]
    fn the_seeds_production_variables_select_production_mode() {
        let c = load(&[
            ("MYSQL_HOST", "mysql"),
            ("MYSQL_PORT", "3307"),
            ("MYSQL_DATABASE", "prime_check_db"),
            ("MYSQL_USER", "prime_check_user"),
            ("MYSQL_PASSWORD", "p@ss word"),
            ("NATS_HOST", "nats"),
            ("RATE_LIMIT_REDIS_HOST", "redis:6380"),
            ("REDIS_PASSWORD", "r"),
            ("JAEGER_HOST", "jaeger"),
            ("SMTP_HOST", "mailpit"),
            ("SMTP_PORT", "1025"),
            ("SMTP_TLS", "none"),
            ("ADMIN_API_KEYS", "0123456789abcdef, fedcba9876543210"),
        ])
        .unwrap();
        assert_eq!(
            c.store,
            StoreConfig::Mysql {
                url: Secret(
                    "mysql://prime_check_user:p%40ss%20word@mysql:3307/prime_check_db".into()
                )
            }
        );
        assert_eq!(
            c.broker,
            BrokerConfig::Nats {
                url: "nats://nats:4222".into(),
                stream: "PRIME".into(),
                replicas: 1,
            }
        );
        assert_eq!(
            c.redis.as_ref().map(|r| (r.host.as_str(), r.port)),
            Some(("redis", 6380))
        );
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://jaeger:4318"));
        assert_eq!(
            c.smtp.as_ref().map(|s| (s.port, s.tls)),
            Some((1025, SmtpTls::None))
        );
        assert_eq!(c.admin_api_keys.len(), 2);
        let rendered = c.render();
        assert!(rendered.contains("# mode: production"));
        assert!(!rendered.contains("p@ss"), "{rendered}");
        assert!(!rendered.contains("0123456789abcdef"), "{rendered}");
        assert!(rendered.contains("MYSQL_PASSWORD"));
        assert!(rendered.contains("<redacted>"));
    }

    #[test]
    fn bad_values_name_the_key_and_the_expected_form() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("MYSQL_HOST", "db"), ("MYSQL_PORT", "abc")],
                r#"MYSQL_PORT must be a number between 1 and 65535, got "abc""#,
            ),
            (
                &[("MYSQL_HOST", "db"), ("MYSQL_PORT", "0")],
                r#"MYSQL_PORT must be a number between 1 and 65535, got "0""#,
            ),
            (
                &[("PRIMED_HTTP_ADDR", "localhost")],
                r#"PRIMED_HTTP_ADDR must be an IP address and port"#,
            ),
            (
                &[("RATE_LIMIT_DEFAULT_LIMIT", "-5")],
                r#"RATE_LIMIT_DEFAULT_LIMIT must be a whole number of requests, at least 1, got "-5""#,
            ),
            (
                &[("RATE_LIMIT_WINDOW_SECONDS", "0")],
                "RATE_LIMIT_WINDOW_SECONDS must be",
            ),
            (
                &[("MYSQL_USER", "u")],
                "MYSQL_HOST must be set when any other MYSQL_* key is set",
            ),
            (
                &[("DATABASE_URL", "postgres://x")],
                "DATABASE_URL must be a mysql:// URL",
            ),
            (
                &[("DATABASE_URL", "mysql://x"), ("MYSQL_HOST", "db")],
                "DATABASE_URL and MYSQL_HOST are both set",
            ),
            (
                &[("NATS_URL", "http://x")],
                "NATS_URL must be a nats:// URL",
            ),
            (
                &[("DATABASE_URL", "mysql://u:pw@db:port/x")],
                "DATABASE_URL must be a mysql:// URL",
            ),
            (
                &[("JWT_SECRET", "a")],
                "JWT_SECRET must be at least 32 bytes",
            ),
            (
                &[("NATS_URL", "nats://a:4222,http://b:4222")],
                "NATS_URL must be a nats:// URL",
            ),
            (
                &[("NATS_URL", "nats://a:4222"), ("NATS_REPLICAS", "7")],
                "NATS_REPLICAS must be 1, 3 or 5",
            ),
            (
                &[("SMTP_HOST", "mail"), ("SMTP_TLS", "maybe")],
                "SMTP_TLS must be one of none, starttls, tls",
            ),
            (
                &[("SMTP_HOST", "mail"), ("SMTP_FROM", "nobody")],
                "SMTP_FROM must be an email address",
            ),
            (
                &[("RATE_LIMIT_REDIS_HOST", "redis")],
                "RATE_LIMIT_REDIS_HOST must be host:port",
            ),
            (
                &[("ADMIN_API_KEYS", "short")],
                "ADMIN_API_KEYS must be comma-separated tokens of at least 16 characters each, got <redacted>",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger:4317")],
                "OTEL_EXPORTER_OTLP_ENDPOINT must be an http://",
            ),
            (
                &[("PRIMED_SHUTDOWN_TIMEOUT_SECONDS", "soon")],
                "PRIMED_SHUTDOWN_TIMEOUT_SECONDS must be",
            ),
            (&[("PRIMED_MAX_DIGITS", "0")], "PRIMED_MAX_DIGITS must be"),
            (
                &[("PRIMED_OUTBOX_BATCH_SIZE", "9999")],
                "PRIMED_OUTBOX_BATCH_SIZE must be a whole number from 1 to 5000",
            ),
            (
                &[("PRIMED_RETRY_JITTER", "1.5")],
                "PRIMED_RETRY_JITTER must be a number from 0 to 1",
            ),
            (
                &[("PRIMED_RETRY_MULTIPLIER", "NaN")],
                "PRIMED_RETRY_MULTIPLIER must be a number from 1 to 10",
            ),
            (
                &[("PRIMED_RETRY_MAX_MS", "10")],
                "PRIMED_RETRY_MAX_MS must be at least PRIMED_RETRY_INITIAL_MS",
            ),
            (
                &[("PRIMED_MIGRATE_ON_START", "perhaps")],
                "PRIMED_MIGRATE_ON_START must be true or false",
            ),
            (
                &[("PRIMED_FAULT_INJECTION", "maybe")],
                r#"PRIMED_FAULT_INJECTION must be true or false, got "maybe""#,
            ),
            (
                &[("RATE_LIMIT_POLICIES", "prime-check: ip 60/fortnight")],
                "RATE_LIMIT_POLICIES is not valid: prime-check: \"ip 60/fortnight\": the period must be",
            ),
            (
                &[("RATE_LIMIT_TRUSTED_PROXIES", "10.0.0.0/8, lb.internal")],
                "RATE_LIMIT_TRUSTED_PROXIES must be comma-separated IP addresses or CIDR networks",
            ),
            (
                &[("RATE_LIMIT_WHITELIST", "300.1.1.1")],
                "RATE_LIMIT_WHITELIST must be comma-separated IP addresses",
            ),
            (
                &[("RATE_LIMIT_SERVICE_KEYS", "short")],
                "RATE_LIMIT_SERVICE_KEYS must be comma-separated keys of at least 16 characters each, got <redacted>",
            ),
            (
                &[("RATE_LIMIT_REDIS_TIMEOUT_MS", "0")],
                "RATE_LIMIT_REDIS_TIMEOUT_MS must be a whole number of milliseconds",
            ),
            (
                &[("RATE_LIMIT_KEY_PREFIX", "a b")],
                "RATE_LIMIT_KEY_PREFIX must be a key prefix without spaces",
            ),
            (
                &[("RATE_LIMIT_ENABLED", "sometimes")],
                "RATE_LIMIT_ENABLED must be true or false",
            ),
        ];
        for (pairs, want) in cases {
            let err = load(pairs)
                .err()
                .unwrap_or_else(|| panic!("{pairs:?} must fail"));
            assert!(
                err.to_string().contains(want),
                "{pairs:?}: got {err}, want {want}"
            );
        }
    }

    #[test]
    fn the_environment_overrides_the_file_and_unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("primed.toml");
        std::fs::write(
            &path,
            "primed_http_addr = \"127.0.0.1:9000\"\nMYSQL_HOST = \"db\"\nmysql_port = 3310\nadmin_api_keys = [\"aaaaaaaaaaaaaaaa\", \"bbbbbbbbbbbbbbbb\"]\n",
        )
        .unwrap();
        let env = vec![("MYSQL_PORT".to_string(), "3311".to_string())];
        let c = Config::load(env, Some(&path)).unwrap();
        assert_eq!(c.http_addr.port(), 9000);
        assert_eq!(c.admin_api_keys.len(), 2);
        assert!(
            matches!(&c.store, StoreConfig::Mysql { url } if url.expose().contains("@db:3311/"))
        );
        let origins: BTreeMap<_, _> = c
            .effective
            .iter()
            .map(|(k, _, o)| (k.name, o.clone()))
            .collect();
        assert_eq!(origins["PRIMED_HTTP_ADDR"], Origin::File);
        assert_eq!(origins["MYSQL_PORT"], Origin::Env);
        assert_eq!(origins["NATS_STREAM"], Origin::Default);

        std::fs::write(&path, "primed_http_adress = \"x\"\n").unwrap();
        let err = Config::load(Vec::new(), Some(&path)).err().unwrap();
        assert!(
            err.to_string()
                .contains("unknown key \"primed_http_adress\""),
            "{err}"
        );

        std::fs::write(&path, "primed_http_addr = [\n").unwrap();
        let err = Config::load(Vec::new(), Some(&path)).err().unwrap();
        assert!(err.to_string().contains("is not valid TOML"), "{err}");

        let err = Config::load(Vec::new(), Some(&dir.path().join("missing.toml")))
            .err()
            .unwrap();
        assert!(err.to_string().contains("cannot read config file"), "{err}");
    }

    #[test]
    fn url_credentials_are_redacted() {
        assert_eq!(
            redact_url_credentials("nats://user:pa55@n1:4222, nats://tok@n2:4222,nats://n3:4222"),
            "nats://<redacted>@n1:4222, nats://<redacted>@n2:4222,nats://n3:4222"
        );
        assert_eq!(
            redact_url_credentials("http://h:4318/v1?next=a@b"),
            "http://h:4318/v1?next=a@b",
            "an @ after the authority is not userinfo"
        );
        assert_eq!(redact_url_credentials("plain@value"), "plain@value");
        let cfg = load(&[("NATS_URL", "nats://user:pa55word@n1:4222")]).unwrap();
        let rendered = cfg.render();
        assert!(!rendered.contains("pa55word"), "{rendered}");
        assert!(rendered.contains("nats://<redacted>@n1:4222"), "{rendered}");
        assert!(!format!("{cfg:?}").contains("pa55word"));
        let err = load(&[("NATS_URL", "http://user:pa55word@n1:4222")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("pa55word"), "{err}");
    }

    #[test]
    fn trusting_every_address_is_warned_about() {
        assert!(load(&[]).unwrap().warnings().is_empty());
        let narrow = load(&[("RATE_LIMIT_TRUSTED_PROXIES", "10.0.0.0/8")]).unwrap();
        assert!(narrow.warnings().is_empty());
        for everyone in ["0.0.0.0/0", "192.0.2.1, ::/0"] {
            let c = load(&[("RATE_LIMIT_TRUSTED_PROXIES", everyone)]).unwrap();
            let w = c.warnings();
            assert_eq!(w.len(), 1, "{everyone}: {w:?}");
            assert!(w[0].contains("trusts every address"), "{w:?}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = load(&[
            ("JWT_SECRET", "topsecret-topsecret-topsecret-topsecret"),
            ("DATABASE_URL", "mysql://u:pw@h/db"),
        ])
        .unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("topsecret"));
        assert!(!debug.contains(":pw@"));
    }
}
