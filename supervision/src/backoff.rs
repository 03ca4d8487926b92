//! Restart backoff: exponential, capped, jittered, and reset after a child has been stable.

use std::time::Duration;

/// How long a supervisor waits before restarting a child that failed again.
///
/// A supervisor restarts a child's first failure at once; the n-th consecutive restart after
/// that (counting from 0) waits `min(initial * multiplier^n, max)`, spread by ±`jitter` (a
/// fraction), so children whose dependency is down do not restart in lock-step. A child
/// that stayed up for at least `reset_after` is restarted at once again, and its earlier
/// restarts leave the supervisor's intensity window (they no longer count towards giving
/// up). Retry policies use [`Backoff::delay`] directly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Upper bound of any delay (before jitter).
    pub max: Duration,
    /// Growth factor between consecutive delays; values below 1 are treated as 1.
    pub multiplier: f64,
    /// Fraction of the delay added or removed at random, between 0 and 1.
    pub jitter: f64,
    /// Uptime after which a child's consecutive-restart count, and its restarts in the
    /// intensity window, are forgotten.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
            reset_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before restart number `attempt` (0-based), given a uniform random sample
    /// `unit` in `[0, 1)` that picks the point inside the jitter band.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let multiplier = self.multiplier.max(1.0);
        let exp = multiplier.powi(attempt.min(i32::MAX as u32) as i32);
        let base = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::try_from_secs_f64((base * factor).max(0.0)).unwrap_or(self.max)
    }

    /// The delay before restart number `attempt`, with a random jitter.
    pub fn delay_random(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: 0.0,
            reset_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn grows_exponentially_then_caps() {
        let b = no_jitter();
        let got: Vec<u128> = (0..7).map(|n| b.delay(n, 0.5).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[test]
    fn huge_attempt_counts_stay_at_the_cap() {
        let b = no_jitter();
        assert_eq!(b.delay(u32::MAX, 0.3), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let b = Backoff {
            jitter: 0.25,
            ..no_jitter()
        };
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(75));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(125));
        for _ in 0..1000 {
            let d = b.delay_random(3);
            assert!(d >= Duration::from_millis(600) && d <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn a_multiplier_below_one_never_shrinks_the_delay() {
        let b = Backoff {
            multiplier: 0.5,
            ..no_jitter()
        };
        assert_eq!(b.delay(5, 0.5), Duration::from_millis(100));
    }
}
