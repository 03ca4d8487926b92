//! A circuit breaker: after `threshold` consecutive failures it opens for `cool_down`, then
//! lets one probe through (half-open); the probe's success closes it, its failure opens it
//! again.
//!
//! It remembers each outage — from the first failure of the streak that opened it to the
//! success that closed it again, with the fingerprints of the errors seen — and publishes
//! it when it heals ([`CircuitBreaker::healed`]), so that the dead letters the outage
//! caused can be replayed.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;

/// Most distinct error fingerprints an outage keeps.
const MAX_OUTAGE_ERRORS: usize = 20;

/// An outage the breaker saw end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    /// The first failure of the streak that opened the breaker.
    pub since: DateTime<Utc>,
    /// The success that closed it again.
    pub until: DateTime<Utc>,
    /// The error fingerprints of the failures in between (see [`crate::fingerprint`]).
    pub fingerprints: BTreeSet<String>,
    /// How many outages this breaker has seen end so far (this one included).
    pub number: u64,
}

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

/// The failures of the current streak or outage.
#[derive(Debug, Default)]
struct Streak {
    since: Option<DateTime<Utc>>,
    fingerprints: BTreeSet<String>,
}

/// A thread-safe circuit breaker (tokio's clock, so tests can pause time).
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
    streak: Mutex<Streak>,
    /// The subject whose errors the fingerprints are of.
    subject: &'static str,
    healed: watch::Sender<Option<Outage>>,
}

impl CircuitBreaker {
    /// A closed breaker around the handling of `subject`'s messages.
    pub fn new(settings: BreakerSettings) -> Self {
        Self::for_subject(settings, crate::model::SUBJECT_EMAIL_SEND)
    }

    /// A closed breaker whose outages' errors are fingerprinted as `subject`'s.
    pub fn for_subject(settings: BreakerSettings, subject: &'static str) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            streak: Mutex::new(Streak::default()),
            subject,
            healed: watch::channel(None).0,
        }
    }

    /// The last outage seen to end: changes each time the breaker closes after being open.
    pub fn healed(&self) -> watch::Receiver<Option<Outage>> {
        self.healed.subscribe()
    }

    fn streak(&self) -> std::sync::MutexGuard<'_, Streak> {
        self.streak.lock().unwrap_or_else(|p| p.into_inner())
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
            let was_open = !matches!(*inner, Inner::Closed { .. });
            *inner = Inner::Closed { failures: 0 };
            drop(inner);
            let streak = std::mem::take(&mut *self.streak());
            if was_open {
                tracing::info!("circuit breaker closed");
                let outage = Outage {
                    since: streak.since.unwrap_or_else(Utc::now),
                    until: Utc::now(),
                    fingerprints: streak.fingerprints,
                    number: self.healed.borrow().as_ref().map_or(0, |o| o.number) + 1,
                };
                self.healed.send_replace(Some(outage));
            }
        }
    }

    /// The call failed with `error` in a way that counts (a transient failure of the
    /// dependency). Returns `true` when this opened the breaker.
    pub fn failure(&self, error: &str) -> bool {
        {
            let mut streak = self.streak();
            streak.since.get_or_insert_with(Utc::now);
            if streak.fingerprints.len() < MAX_OUTAGE_ERRORS {
                streak.fingerprints.insert(crate::fingerprint::fingerprint(
                    self.subject,
                    crate::model::ErrorClass::Transient,
                    error,
                ));
            }
        }
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
        assert!(!b.failure("451 busy"));
        b.success();
        // Failures must be consecutive.
        assert!(!b.failure("451 busy"));
        assert!(!b.failure("451 busy"));
        assert!(
            b.failure("451 busy"),
            "the third consecutive failure opens it"
        );
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.try_acquire());
        assert_eq!(b.blocked_for(), Some(Duration::from_secs(10)));

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire(), "one probe");
        assert!(!b.try_acquire(), "only one");
        assert!(b.failure("451 busy"), "a failed probe opens it again");
        assert!(!b.try_acquire());

        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.try_acquire());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire() && b.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn a_healed_outage_is_published_with_its_errors_and_a_broken_streak_is_not() {
        let b = CircuitBreaker::new(BreakerSettings {
            threshold: 2,
            cool_down: Duration::from_secs(1),
        });
        let mut healed = b.healed();
        // A failure and a success: no outage.
        b.failure("451 4.3.0 mailbox busy");
        b.success();
        assert!(!healed.has_changed().unwrap());

        b.failure("451 4.3.0 mailbox busy");
        b.failure("connect to smtp.example.com:25 refused");
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.try_acquire());
        b.failure("451 4.3.1 mailbox busy");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.try_acquire());
        b.success();
        assert!(healed.has_changed().unwrap());
        let outage = healed.borrow_and_update().clone().unwrap();
        assert_eq!(outage.number, 1);
        assert!(outage.since <= outage.until);
        assert_eq!(
            outage.fingerprints,
            [
                crate::fingerprint::fingerprint(
                    "email.send",
                    crate::model::ErrorClass::Transient,
                    "451 4.3.0 mailbox busy"
                ),
                crate::fingerprint::fingerprint(
                    "email.send",
                    crate::model::ErrorClass::Transient,
                    "connect to smtp.example.com:25 refused"
                ),
            ]
            .into_iter()
            .collect(),
            "the two kinds of error, the 451s counted once"
        );
        // The next outage starts afresh.
        b.failure("timed out");
        b.failure("timed out");
        tokio::time::advance(Duration::from_secs(1)).await;
        b.success();
        let next = healed.borrow_and_update().clone().unwrap();
        assert_eq!((next.number, next.fingerprints.len()), (2, 1));
    }
}
