//! Limits, pool sizes, and the outbox relay's and retries' settings.

use std::time::Duration;

use super::error::ConfigError;
use super::raw::Raw;

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

impl Tuning {
    pub(super) fn read(raw: &Raw) -> Result<Tuning, ConfigError> {
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
}
