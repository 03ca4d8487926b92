//! Operator commands that work on the backends without running the daemon:
//! `primed migrate`, `primed outbox replay` and `primed ratelimit reset`; and
//! `primed health`, which asks a running daemon whether it is ready.

use chrono::{DateTime, Utc};

use crate::backends::{self, BackendError};
use crate::config::Config;

/// An operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The command needs a backend the configuration does not name.
    #[error("{0}")]
    NotConfigured(&'static str),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] actors::StoreError),
    /// The command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// The daemon answered that it is not ready.
    #[error("the daemon at {url} is not ready ({status}): {body}")]
    NotReady {
        /// Where it was asked.
        url: String,
        /// Its HTTP status.
        status: u16,
        /// What it said.
        body: String,
    },
    /// The daemon cannot be reached.
    #[error(
        "cannot reach the daemon at {url}: {message}; is it running, and is PRIMED_HTTP_ADDR (or --url) its address?"
    )]
    Unreachable {
        /// Where it was asked.
        url: String,
        /// Why not.
        message: String,
    },
    /// Redis failed.
    #[error(
        "Redis at {addr} failed: {message}; check that it runs and REDIS_HOST/REDIS_PORT/REDIS_PASSWORD"
    )]
    Redis {
        /// host:port
        addr: String,
        /// What it said.
        message: String,
    },
}

impl OpsError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            OpsError::NotConfigured(_) | OpsError::Usage(_) => 64,
            OpsError::NotReady { .. } => 1,
            OpsError::Backend(_)
            | OpsError::Store(_)
            | OpsError::Redis { .. }
            | OpsError::Unreachable { .. } => 69,
        }
    }
}

/// The `/ready` URL of the daemon at `url`, or at the configured HTTP address (a wildcard
/// address is asked on loopback).
pub fn ready_url(config: &Config, url: Option<&str>) -> String {
    match url {
        Some(url) => format!("{}/ready", url.trim_end_matches('/')),
        None => {
            let mut addr = config.http_addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            format!("http://{addr}/ready")
        }
    }
}

/// Asks the daemon at `url` (a `/ready` URL) whether it is ready; its answer when it is.
pub async fn health(url: &str) -> Result<String, OpsError> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()
        .map_err(|e| OpsError::Usage(e.to_string()))?;
    let unreachable = |e: reqwest::Error| OpsError::Unreachable {
        url: url.to_string(),
        message: e.to_string(),
    };
    let response = client.get(url).send().await.map_err(unreachable)?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(unreachable)?;
    if status == 200 {
        Ok(body)
    } else {
        Err(OpsError::NotReady {
            url: url.to_string(),
            status,
            body,
        })
    }
}

/// Applies pending migrations to the configured store.
pub async fn migrate(config: &Config) -> Result<String, OpsError> {
    let store = backends::mysql(config)?.ok_or(OpsError::NotConfigured(
        "no MySQL store is configured: set DATABASE_URL or MYSQL_HOST (embedded mode migrates its SQLite file at start)",
    ))?;
    store.migrate().await.map_err(BackendError::from)?;
    Ok("migrations are applied; the schema is up to date".into())
}

/// Makes outbox events published since `since` due again, so the relay of a running
/// daemon publishes them once more (JetStream drops those it still has; consumers ignore
/// events they have applied).
pub async fn outbox_replay(config: &Config, since: DateTime<Utc>) -> Result<u64, OpsError> {
    let store = backends::mysql(config)?.ok_or(OpsError::NotConfigured(
        "no MySQL store is configured: set DATABASE_URL or MYSQL_HOST",
    ))?;
    Ok(actors::OutboxStore::replay_since(&store, since).await?)
}

/// Deletes the rate-limit buckets in Redis whose key matches `pattern` (under the key
/// prefix; `*` wildcards), so the clients they count start afresh. Returns the glob used and
/// how many keys were deleted.
pub async fn ratelimit_reset(config: &Config, pattern: &str) -> Result<(String, u64), OpsError> {
    let redis = config.redis.as_ref().ok_or(OpsError::NotConfigured(
        "no Redis is configured (REDIS_HOST or RATE_LIMIT_REDIS_HOST): limits live in each daemon's memory and restart with it",
    ))?;
    let glob = crate::ratelimit::reset_pattern(&config.rate_limit.key_prefix, pattern)
        .map_err(OpsError::Usage)?;
    let addr = format!("{}:{}", redis.host, redis.port);
    let fail = |e: &dyn std::fmt::Display| OpsError::Redis {
        addr: addr.clone(),
        message: e.to_string(),
    };
    let limiter =
        crate::ratelimit::redis::RedisLimiter::new(&redis.url(), std::time::Duration::from_secs(5))
            .map_err(|e| fail(&e))?;
    let deleted = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        limiter.delete_matching(&glob),
    )
    .await
    .map_err(|_| fail(&"no answer within 60 s"))?
    .map_err(|e| fail(&e))?;
    Ok((glob, deleted))
}

/// Parses `--since`: an RFC 3339 time (`2026-11-24T10:00:00Z`) or an age (`90m`, `2h`, `1day`).
pub fn parse_since(input: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(input) {
        return Ok(at.with_timezone(&Utc));
    }
    let age = humantime::parse_duration(input).map_err(|_| {
        format!("--since must be an RFC 3339 time (2026-11-24T10:00:00Z) or an age (90m, 2h), got {input:?}")
    })?;
    let age = chrono::Duration::from_std(age)
        .map_err(|_| format!("--since {input:?} is too far back"))?;
    now.checked_sub_signed(age)
        .ok_or_else(|| format!("--since {input:?} is too far back"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_an_age() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_since("2026-11-24T10:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-11-24T10:00:00+00:00"
        );
        assert_eq!(
            parse_since("2h", now).unwrap().to_rfc3339(),
            "2026-11-24T10:00:00+00:00"
        );
        assert_eq!(
            parse_since("90m", now).unwrap().to_rfc3339(),
            "2026-11-24T10:30:00+00:00"
        );
        assert!(
            parse_since("yesterday", now)
                .unwrap_err()
                .contains("--since must be")
        );
    }
}
