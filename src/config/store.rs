//! Where requests, results and the outbox are stored, and the message broker.

use super::error::ConfigError;
use super::raw::{Raw, percent_encode};
use super::secret::{Secret, redact_url_credentials};

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
        /// Put in front of every subject (`NATS_SUBJECT_PREFIX`); empty: none.
        subject_prefix: String,
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
                subject_prefix,
            } => f
                .debug_struct("Nats")
                .field("url", &redact_url_credentials(url))
                .field("stream", stream)
                .field("replicas", replicas)
                .field("subject_prefix", subject_prefix)
                .finish(),
        }
    }
}

impl StoreConfig {
    pub(super) fn read(raw: &Raw) -> Result<StoreConfig, ConfigError> {
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
            return Ok(StoreConfig::Mysql {
                url: Secret::new(url),
            });
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
            url: Secret::new(format!("mysql://{auth}@{host}:{port}/{database}")),
        })
    }
}

impl BrokerConfig {
    pub(super) fn read(raw: &Raw) -> Result<BrokerConfig, ConfigError> {
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
        let subject_prefix = raw
            .get("NATS_SUBJECT_PREFIX")
            .unwrap_or_default()
            .trim()
            .to_string();
        let token = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !subject_prefix.is_empty()
            && (subject_prefix.len() > 64 || !subject_prefix.split('.').all(token))
        {
            return Err(raw.invalid(
                "NATS_SUBJECT_PREFIX",
                "dot-separated tokens of letters, digits, '-' and '_' (no wildcards), at most 64 characters, e.g. staging",
            ));
        }
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
                subject_prefix,
            });
        }
        match raw.host("NATS_HOST")? {
            Some(host) => Ok(BrokerConfig::Nats {
                url: format!("nats://{host}:{}", raw.port("NATS_PORT")?),
                stream,
                replicas,
                subject_prefix,
            }),
            None => Ok(BrokerConfig::Embedded),
        }
    }
}
