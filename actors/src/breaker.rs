//! A circuit breaker: after `threshold` consecutive failures it opens for `cool_down`, then
//! lets one probe through (half-open); the probe's success closes it, its failure opens it
//! again.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub threshold: u32,
    /// How long it stays open before a probe.
    pub cool_down: Duration,
}

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// One probe call is allowed.
    HalfOpen,
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// A thread-safe circuit breaker (tokio's clock, so tests can pause time).
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where it is now.
    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        Self::advance(&mut inner);
        match *inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn advance(inner: &mut Inner) {
        if let Inner::Open { until } = *inner
            && Instant::now() >= until
        {
            *inner = Inner::HalfOpen { probing: false };
        }
    }

    /// `None` when a call may start now, else how long until it may be tried again.
    pub fn blocked_for(&self) -> Option<Duration> {
        let mut inner = self.lock();
        Self::advance(&mut inner);
        match *inner {
            Inner::Closed { .. } | Inner::HalfOpen { probing: false } => None,
            Inner::Open { until } => Some(until.saturating_duration_since(Instant::now())),
            Inner::HalfOpen { probing: true } => Some(Duration::from_millis(100)),
        }
    }

    /// Asks to make a call: `true` when it may go ahead (in half-open state, only the one
    /// probe may).
    pub fn try_acquire(&self) -> bool {
        let mut inner = self.lock();
        Self::advance(&mut inner);
        match &mut *inner {
            Inner::Closed { .. } => true,
            Inner::Open { .. } => false,
            Inner::HalfOpen { probing } => {
                if *probing {
                    false
                } else {
                    *probing = true;
                    true
                }
            }
        }
    }

    /// The call succeeded: close.
    pub fn success(&self) {
        let mut inner = self.lock();
        if !matches!(*inner, Inner::Closed { failures: 0 }) {
            if !matches!(*inner, Inner::Closed { .. }) {
                tracing::info!("circuit breaker closed");
            }
            *inner = Inner::Closed { failures: 0 };
        }
    }

    /// The call failed in a way that counts (a transient failure of the dependency). Returns
    /// `true` when this opened the breaker.
    pub fn failure(&self) -> bool {
        let mut inner = self.lock();
        let open = match &mut *inner {
            Inner::Closed { failures } => {
                *failures += 1;
                *failures >= self.settings.threshold
            }
            Inner::HalfOpen { .. } => true,
            Inner::Open { .. } => false,
        };
        if open {
            *inner = Inner::Open {
                until: Instant::now() + self.settings.cool_down,
            };
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_probes_after_the_cool_down() {
        let b = CircuitBreaker::new(BreakerSettings {
            threshold: 3,
            cool_down: Duration::from_secs(10),
        });
        assert!(b.try_acquire());
        assert!(!b.failure());
        b.success();
        // Failures must be consecutive.
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.failure(), "the third consecutive failure opens it");
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.try_acquire());
        assert_eq!(b.blocked_for(), Some(Duration::from_secs(10)));

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire(), "one probe");
        assert!(!b.try_acquire(), "only one");
        assert!(b.failure(), "a failed probe opens it again");
        assert!(!b.try_acquire());

        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.try_acquire());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire() && b.try_acquire());
    }
}
