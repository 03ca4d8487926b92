//! Every key primed reads: its name, whether it is a secret, its default and its help line
//! (what `primed config check` prints).

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
        "PRIMED_FAULT_PANIC_NUMBER",
        false,
        None,
        "test systems only (needs PRIMED_FAULT_INJECTION=true): a prime check of exactly this number panics its handler",
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
        "PRIMED_RETENTION_PROCESSING_LOGS_DAYS",
        false,
        Some("7"),
        "days message_processing_logs rows are kept (0: forever)",
    ),
    key(
        "PRIMED_RETENTION_PROCESSED_EVENTS_DAYS",
        false,
        Some("7"),
        "days processed_events and message_crashes rows are kept (0: forever; at least the outbox retention)",
    ),
    key(
        "PRIMED_RETENTION_SENT_EMAILS_DAYS",
        false,
        Some("7"),
        "days sent_emails rows are kept (0: forever)",
    ),
    key(
        "PRIMED_RETENTION_DEAD_LETTERS_DAYS",
        false,
        Some("7"),
        "days resolved and discarded dead letters are kept after they were settled (0: forever; pending ones always stay)",
    ),
    key(
        "PRIMED_RETENTION_DLQ_STATISTICS_DAYS",
        false,
        Some("7"),
        "days of hourly dlq_statistics rows kept (0: forever)",
    ),
    key(
        "PRIMED_RETENTION_HEALTH_ROWS_HOURS",
        false,
        Some("24"),
        "hours a worker_health_checks row is kept after its last heartbeat (0: forever)",
    ),
    key(
        "PRIMED_RETENTION_INTERVAL_SECONDS",
        false,
        Some("600"),
        "time between pruning rounds",
    ),
    key(
        "PRIMED_RETENTION_BATCH_SIZE",
        false,
        Some("1000"),
        "rows deleted per statement while pruning (1 to 10000)",
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
        "PRIMED_DLQ_RECONCILE_INTERVAL_SECONDS",
        false,
        Some("60"),
        "seconds between comparisons of the JetStream consumers' state with the DLQ (for messages whose max-deliveries advisory was lost)",
    ),
    key(
        "PRIMED_DLQ_RECONCILE_AFTER_SECONDS",
        false,
        Some("600"),
        "how long ago a message must have been published before the reconciler takes it for fallen through",
    ),
    key(
        "PRIMED_DLQ_REPLAY_ON_HEAL",
        false,
        Some("true"),
        "when the SMTP circuit breaker closes after an outage, replay (canary first) the transient email dead letters the outage caused",
    ),
    key(
        "PRIMED_DLQ_REPLAY_ON_HEAL_RATE",
        false,
        Some("5"),
        "letters a second that replay sends at most",
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
        Some(super::workers::DEFAULT_DLQ_RULES),
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
    key(
        "NATS_SUBJECT_PREFIX",
        false,
        None,
        "put in front of every subject (staging → staging.primecheck.requested, staging.dlq.*, stream STAGING_DEAD_LETTER_QUEUE), so deployments can share a NATS account",
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
        Some(super::policy::DEFAULT_POLICIES),
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
        "OTLP trace endpoint: http://host:4318 for http/protobuf (spans go to <endpoint>/v1/traces), http://host:4317 for grpc",
    ),
    key(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        false,
        None,
        "grpc or http/protobuf; unset: grpc when JAEGER_PORT is 4317, else http/protobuf",
    ),
    key(
        "JAEGER_HOST",
        false,
        None,
        "Jaeger OTLP host (alternative to OTEL_EXPORTER_OTLP_ENDPOINT)",
    ),
    key(
        "JAEGER_PORT",
        false,
        None,
        "Jaeger's OTLP port (unset: 4317 for grpc, 4318 for http/protobuf)",
    ),
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

/// The key named `name` exactly (upper case), if primed reads it.
pub(super) fn lookup(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}
