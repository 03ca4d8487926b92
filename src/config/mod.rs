//! Configuration: environment variables (DESIGN §13, the seed's appendix A.1 names) and an
//! optional TOML file whose keys are the same names (case-insensitive). The environment wins
//! over the file; anything unset takes its default. No store or broker settings at all
//! means embedded mode.
//!
//! Parsing works on a plain key → value map, so it is tested without touching the
//! process environment. One file per part:
//!
//! - [`keys`]: the catalogue of every key, its default and its help line.
//! - `raw`: the values as read (environment, file, default) and the typed readers every part
//!   uses, each failing with the key and the expected form ([`ConfigError`]).
//! - One file per subsystem's settings and how they are read from the raw values:
//!   `http` ([`HttpLimits`]), `store` ([`StoreConfig`], [`BrokerConfig`]), `rate_limit`
//!   ([`RateLimitConfig`], [`RedisConfig`]) with [`policy`] (the `RATE_LIMIT_POLICIES`
//!   syntax), `smtp` ([`SmtpConfig`]), `workers` ([`Workers`], the DLQ rules) and `tuning`
//!   ([`Tuning`]).
//! - This file: [`Config`], which reads them all, and its rendering for `primed config check`.
//!
//! Nothing here imports from the features: they read their settings from here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod error;
mod http;
pub mod keys;
pub mod policy;
mod rate_limit;
mod raw;
mod retention;
mod secret;
mod smtp;
mod store;
#[cfg(test)]
mod tests;
mod tuning;
mod workers;

pub use error::ConfigError;
pub use http::HttpLimits;
pub use keys::{KEYS, Key};
pub use rate_limit::{RateLimitConfig, RedisConfig};
pub use raw::Origin;
pub use retention::RetentionConfig;
pub use secret::{Secret, redact_url_credentials};
pub use smtp::{SmtpConfig, SmtpTls};
pub use store::{BrokerConfig, StoreConfig};
pub use tuning::Tuning;
pub use workers::{DEFAULT_DLQ_RULES, DlqRule, SubjectRetry, Workers, parse_dlq_rules};

use keys::lookup;
use raw::{Raw, read_file};

/// The OTLP protocol spans are exported with (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318), to `<endpoint>/v1/traces`.
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The collector's usual port for it.
    pub fn default_port(self) -> u16 {
        match self {
            OtlpProtocol::Grpc => 4317,
            OtlpProtocol::HttpProtobuf => 4318,
        }
    }

    /// Its name in `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn name(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
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
    /// How long the tables that only grow keep their rows.
    pub retention: RetentionConfig,
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
    /// How spans (and pushed metrics) are sent.
    pub otlp_protocol: OtlpProtocol,
    /// Where the metrics are pushed over OTLP too; None = only `GET /metrics`.
    pub otlp_metrics_endpoint: Option<String>,
    /// Time between two pushes.
    pub otlp_metrics_interval: Duration,
    /// Admin tokens; empty = generate one in the data directory.
    pub admin_api_keys: Vec<Secret>,
    /// JWT secret.
    pub jwt_secret: Option<Secret>,
    /// Every key's effective value (secrets already redacted) and origin, for
    /// `primed config check`.
    pub effective: Vec<(&'static Key, Option<String>, Origin)>,
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
        let http_limits = HttpLimits::read(&raw)?;
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
        let tuning = Tuning::read(&raw)?;
        let retention = RetentionConfig::read(&raw, tuning.outbox_retention)?;
        let workers = Workers::read(&raw)?;
        let store = StoreConfig::read(&raw)?;
        let broker = BrokerConfig::read(&raw)?;

        let redis = RedisConfig::read(&raw)?;
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

        let rate_limit = RateLimitConfig::read(&raw)?;

        let smtp = SmtpConfig::read(&raw)?;

        if raw.is_set("OTEL_EXPORTER_OTLP_ENDPOINT") && raw.is_set("JAEGER_HOST") {
            return Err(ConfigError::Conflict {
                a: "OTEL_EXPORTER_OTLP_ENDPOINT",
                b: "JAEGER_HOST",
            });
        }
        let jaeger_port = match raw.get("JAEGER_PORT") {
            Some(_) => Some(raw.port("JAEGER_PORT")?),
            None => None,
        };
        let otlp_protocol = match raw.get("OTEL_EXPORTER_OTLP_PROTOCOL").map(str::trim) {
            Some("grpc") => OtlpProtocol::Grpc,
            Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some(_) => {
                return Err(raw.invalid(
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                    "grpc or http/protobuf (http/json is not supported)",
                ));
            }
            // The seed's JAEGER_PORT 4317 is OTLP/gRPC's port.
            None if jaeger_port == Some(4317) => OtlpProtocol::Grpc,
            None => OtlpProtocol::HttpProtobuf,
        };
        let otlp_endpoint = if let Some(url) = raw.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(raw.invalid(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "an http:// or https:// URL, e.g. http://jaeger:4318 (http/protobuf) or http://jaeger:4317 (grpc)",
                ));
            }
            Some(url.to_string())
        } else if let Some(host) = raw.host("JAEGER_HOST")? {
            let port = jaeger_port.unwrap_or(otlp_protocol.default_port());
            Some(format!("http://{host}:{port}"))
        } else {
            None
        };

        let otlp_metrics_endpoint = match raw.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                Some(url.to_string())
            }
            Some(_) => {
                return Err(raw.invalid(
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    "an http:// or https:// URL, e.g. http://collector:4318/v1/metrics (http/protobuf) or http://collector:4317 (grpc)",
                ));
            }
            None => None,
        };
        let otlp_metrics_interval = Duration::from_millis(
            raw.positive(
                "OTEL_METRIC_EXPORT_INTERVAL",
                "a whole number of milliseconds, at least 1",
            )?
            .into(),
        );

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
            retention,
            workers,
            store,
            broker,
            redis,
            rate_limit_default_limit,
            rate_limit_window,
            rate_limit,
            smtp,
            otlp_endpoint,
            otlp_protocol,
            otlp_metrics_endpoint,
            otlp_metrics_interval,
            admin_api_keys,
            jwt_secret,
            effective,
        })
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
