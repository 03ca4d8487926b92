//! How long the tables that only grow keep their rows (seed 000 §3.1.1: a week), and how the
//! retention actor prunes them.

use std::time::Duration;

use actors::Retained;

use super::error::ConfigError;
use super::raw::Raw;

/// The retention settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionConfig {
    /// How long each kind is kept; a kind set to 0 is not named (kept forever).
    pub keep: Vec<(Retained, Duration)>,
    /// Time between pruning rounds.
    pub interval: Duration,
    /// Rows per `DELETE`.
    pub batch: u32,
}

const DAY: u64 = 86_400;

/// Each kind's key, and the seconds one unit of it is.
pub(super) const KINDS: [(Retained, &str, u64); 7] = [
    (
        Retained::ProcessingLogs,
        "PRIMED_RETENTION_PROCESSING_LOGS_DAYS",
        DAY,
    ),
    (
        Retained::ProcessedEvents,
        "PRIMED_RETENTION_PROCESSED_EVENTS_DAYS",
        DAY,
    ),
    // A crash record matters while its message can be delivered again: as long as the
    // record that it was processed.
    (
        Retained::MessageCrashes,
        "PRIMED_RETENTION_PROCESSED_EVENTS_DAYS",
        DAY,
    ),
    (
        Retained::SentEmails,
        "PRIMED_RETENTION_SENT_EMAILS_DAYS",
        DAY,
    ),
    (
        Retained::DeadLetters,
        "PRIMED_RETENTION_DEAD_LETTERS_DAYS",
        DAY,
    ),
    (
        Retained::DlqStatistics,
        "PRIMED_RETENTION_DLQ_STATISTICS_DAYS",
        DAY,
    ),
    (
        Retained::HealthRows,
        "PRIMED_RETENTION_HEALTH_ROWS_HOURS",
        3600,
    ),
];

impl RetentionConfig {
    pub(super) fn read(raw: &Raw, outbox_retention: Duration) -> Result<Self, ConfigError> {
        let mut keep = Vec::new();
        for (what, key, unit) in KINDS {
            let expected = if unit == DAY {
                "a whole number of days (0: keep forever)"
            } else {
                "a whole number of hours (0: keep forever)"
            };
            let n = match raw.required(key)?.trim().parse::<u32>() {
                Ok(n) if n <= 36_500 => n,
                _ => return Err(raw.invalid(key, expected)),
            };
            if n > 0 {
                keep.push((what, Duration::from_secs(u64::from(n) * unit)));
            }
        }
        // A consumer skips an event it has a record of; an event published again by
        // `primed outbox replay` (any published in the outbox's retention) must still find
        // its record, or it is applied twice.
        if let Some((_, events)) = keep
            .iter()
            .find(|(what, _)| *what == Retained::ProcessedEvents)
            && *events < outbox_retention
        {
            return Err(raw.invalid(
                "PRIMED_RETENTION_PROCESSED_EVENTS_DAYS",
                "at least PRIMED_OUTBOX_RETENTION_HOURS (events the outbox can publish again must find their processed record), or 0",
            ));
        }
        let interval = Duration::from_secs(
            raw.positive(
                "PRIMED_RETENTION_INTERVAL_SECONDS",
                "a whole number of seconds, at least 1",
            )?
            .into(),
        );
        let batch = match raw
            .required("PRIMED_RETENTION_BATCH_SIZE")?
            .trim()
            .parse::<u32>()
        {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => {
                return Err(raw.invalid(
                    "PRIMED_RETENTION_BATCH_SIZE",
                    "a whole number of rows from 1 to 10000",
                ));
            }
        };
        Ok(Self {
            keep,
            interval,
            batch,
        })
    }
}
