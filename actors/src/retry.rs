//! Retry policy: how many attempts, and how long to wait between them.

use std::time::Duration;

use supervision::Backoff;

/// Exponential backoff with a cap and jitter, and a retry budget. The delay math is the
/// supervision crate's [`Backoff`], so restarts and retries grow the same way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Failed attempts allowed before giving up (an event's own `max_retries` wins).
    pub max_retries: u32,
    /// Delays between attempts.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    /// 3 retries, 1 s doubling to at most 5 minutes, ±20 % jitter (seed §2.3).
    fn default() -> Self {
        Self {
            max_retries: 3,
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(300),
                multiplier: 2.0,
                jitter: 0.2,
                reset_after: Duration::ZERO,
            },
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt number `failures` (1 for the first failure), or
    /// `None` when `failures` exceeds `max_retries`.
    pub fn next_delay(&self, failures: u32, max_retries: u32, unit: f64) -> Option<Duration> {
        (failures <= max_retries).then(|| self.backoff.delay(failures.saturating_sub(1), unit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_until_the_budget_is_spent() {
        let p = RetryPolicy {
            backoff: Backoff {
                jitter: 0.0,
                ..RetryPolicy::default().backoff
            },
            ..RetryPolicy::default()
        };
        let delays: Vec<Option<u64>> = (1..=4)
            .map(|n| p.next_delay(n, 3, 0.5).map(|d| d.as_secs()))
            .collect();
        assert_eq!(delays, vec![Some(1), Some(2), Some(4), None]);
        assert_eq!(p.next_delay(1, 0, 0.5), None, "no retries allowed");
    }
}
