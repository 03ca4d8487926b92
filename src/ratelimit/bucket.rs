//! The token bucket, and the in-process limiter built on it (used alone when no Redis is
//! configured, and as the fallback while Redis does not answer).
//!
//! A bucket holds up to `burst` tokens and gains `limit / per` tokens per millisecond; a
//! request takes one token from every bucket that applies to it, or from none: a request
//! refused by one policy does not use up the others. A refusal by a policy with a penalty
//! blocks that bucket for the penalty. The Redis script (`redis.rs`) does exactly the same
//! arithmetic with the server's clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::policy::Policy;

/// Above this many buckets, a check first drops the idle ones (full and not blocked).
const SWEEP_ABOVE: usize = 100_000;

/// The outcome of one check, described by the policy that decided it: the refusing one, or,
/// when allowed, the one with the fewest requests left.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Index of the deciding policy in the checked list.
    pub policy: usize,
    /// Requests the deciding bucket still allows right now.
    pub remaining: u32,
    /// Milliseconds until a refused request could pass (0 when allowed).
    pub retry_after_ms: u64,
    /// Milliseconds until the deciding bucket is full again.
    pub reset_after_ms: u64,
}

/// One bucket's state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Tokens left (fractional while refilling).
    pub tokens: f64,
    /// When `tokens` was computed, in ms.
    pub at_ms: f64,
    /// Refused until then, in ms (0: not blocked).
    pub blocked_until_ms: f64,
    /// When it will be full again (and could be forgotten), in ms.
    pub full_at_ms: f64,
}

impl Bucket {
    /// A full bucket.
    pub fn full(policy: &Policy, now_ms: f64) -> Self {
        Self {
            tokens: f64::from(policy.burst),
            at_ms: now_ms,
            blocked_until_ms: 0.0,
            full_at_ms: now_ms,
        }
    }

    /// The bucket as it is at `now_ms`, refilled.
    pub fn refilled(mut self, policy: &Policy, now_ms: f64) -> Self {
        if now_ms > self.at_ms {
            self.tokens = (self.tokens + (now_ms - self.at_ms) * policy.rate_per_ms())
                .min(f64::from(policy.burst));
            self.at_ms = now_ms;
        }
        self
    }

    fn blocked(&self, now_ms: f64) -> bool {
        self.blocked_until_ms > now_ms
    }

    fn refuses(&self, now_ms: f64) -> bool {
        self.blocked(now_ms) || self.tokens < 1.0
    }

    fn retry_after_ms(&self, policy: &Policy, now_ms: f64) -> f64 {
        if self.blocked(now_ms) {
            self.blocked_until_ms - now_ms
        } else if self.tokens < 1.0 {
            (1.0 - self.tokens) / policy.rate_per_ms()
        } else {
            0.0
        }
    }

    fn reset_after_ms(&self, policy: &Policy, now_ms: f64) -> f64 {
        let refill = (f64::from(policy.burst) - self.tokens).max(0.0) / policy.rate_per_ms();
        refill.max(self.blocked_until_ms - now_ms)
    }

    /// Whether the bucket is indistinguishable from a new one.
    fn idle(&self, now_ms: f64) -> bool {
        !self.blocked(now_ms) && self.full_at_ms <= now_ms
    }
}

/// Checks `buckets` (already refilled to `now_ms`) and takes a token from each if all allow;
/// on refusal applies penalties. Returns the verdict; the buckets are updated in place.
pub fn decide(policies: &[&Policy], buckets: &mut [Bucket], now_ms: f64) -> Verdict {
    let refusing = buckets.iter().position(|b| b.refuses(now_ms));
    let verdict = match refusing {
        None => {
            for b in buckets.iter_mut() {
                b.tokens -= 1.0;
            }
            // The tightest bucket speaks for the request.
            let mut tightest = 0;
            for (i, b) in buckets.iter().enumerate() {
                if b.tokens < buckets[tightest].tokens {
                    tightest = i;
                }
            }
            let b = &buckets[tightest];
            Verdict {
                allowed: true,
                policy: tightest,
                remaining: b.tokens.floor().max(0.0) as u32,
                retry_after_ms: 0,
                reset_after_ms: b.reset_after_ms(policies[tightest], now_ms).ceil() as u64,
            }
        }
        Some(first) => {
            for (b, p) in buckets.iter_mut().zip(policies) {
                if let Some(penalty) = p.penalty
                    && b.refuses(now_ms)
                    && !b.blocked(now_ms)
                {
                    b.blocked_until_ms = now_ms + penalty.as_secs_f64() * 1000.0;
                }
            }
            let b = &buckets[first];
            let p = policies[first];
            Verdict {
                allowed: false,
                policy: first,
                remaining: 0,
                retry_after_ms: b.retry_after_ms(p, now_ms).ceil().max(1.0) as u64,
                reset_after_ms: b.reset_after_ms(p, now_ms).ceil() as u64,
            }
        }
    };
    for (b, p) in buckets.iter_mut().zip(policies) {
        b.full_at_ms = now_ms + b.reset_after_ms(p, now_ms);
    }
    verdict
}

/// An in-process limiter: buckets in a map behind one lock, so that the policies of a
/// request are checked and taken atomically.
pub struct LocalLimiter {
    epoch: Instant,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            buckets: Mutex::new(HashMap::default()),
        }
    }

    /// Milliseconds since the limiter was made.
    pub fn now_ms(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1000.0
    }

    /// Checks one request against `checks` (bucket key and policy) at `now_ms`.
    pub fn check_at(&self, checks: &[(&str, &Policy)], now_ms: f64) -> Verdict {
        let policies: Vec<&Policy> = checks.iter().map(|(_, p)| *p).collect();
        // A poisoned lock only means another check panicked mid-update; the map is still a
        // map of valid buckets.
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, b| !b.idle(now_ms));
        }
        let mut buckets: Vec<Bucket> = checks
            .iter()
            .map(|(key, p)| {
                map.get(*key)
                    .copied()
                    .unwrap_or_else(|| Bucket::full(p, now_ms))
                    .refilled(p, now_ms)
            })
            .collect();
        let before = buckets.clone();
        let verdict = decide(&policies, &mut buckets, now_ms);
        for (((key, _), b), old) in checks.iter().zip(buckets).zip(before) {
            // A refusal changes a bucket only when it starts a penalty.
            if !verdict.allowed && b.blocked_until_ms == old.blocked_until_ms {
                continue;
            }
            match map.get_mut(*key) {
                Some(slot) => *slot = b,
                None => {
                    map.insert((*key).to_string(), b);
                }
            }
        }
        verdict
    }

    /// Checks one request now.
    pub fn check(&self, checks: &[(&str, &Policy)]) -> Verdict {
        self.check_at(checks, self.now_ms())
    }

    /// Drops the buckets that a new one would equal at `now_ms`.
    pub fn sweep_at(&self, now_ms: f64) {
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, b| !b.idle(now_ms));
    }

    /// Drops the buckets that a new one would equal now.
    pub fn sweep(&self) {
        self.sweep_at(self.now_ms());
    }

    /// Forgets the buckets whose key `matches`; returns how many.
    pub fn remove_where(&self, matches: impl Fn(&str) -> bool) -> usize {
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = map.len();
        map.retain(|k, _| !matches(k));
        before - map.len()
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::policy::Scope;

    fn policy(limit: u32, secs: u64, burst: u32) -> Policy {
        let mut p = Policy::new(Scope::Ip, limit, Duration::from_secs(secs));
        p.burst = burst;
        p
    }

    #[test]
    fn burst_then_sustained_rate() {
        let l = LocalLimiter::new();
        let p = policy(10, 10, 3); // 1 per second, burst 3
        let c = [("k", &p)];
        for i in 0..3 {
            let v = l.check_at(&c, 0.0);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 2 - i);
        }
        let v = l.check_at(&c, 0.0);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ms, 1000);
        assert_eq!(v.reset_after_ms, 3000);
        assert!(!l.check_at(&c, 999.0).allowed);
        assert!(l.check_at(&c, 1000.0).allowed);
        assert!(!l.check_at(&c, 1500.0).allowed);
        // After a long pause the bucket holds no more than its burst.
        for _ in 0..3 {
            assert!(l.check_at(&c, 100_000.0).allowed);
        }
        assert!(!l.check_at(&c, 100_000.0).allowed);
    }

    #[test]
    fn a_refusal_takes_nothing_from_the_other_buckets() {
        let l = LocalLimiter::new();
        let tight = policy(1, 60, 1);
        let loose = policy(100, 60, 100);
        assert!(l.check_at(&[("a", &tight), ("g", &loose)], 0.0).allowed);
        for _ in 0..10 {
            let v = l.check_at(&[("a", &tight), ("g", &loose)], 0.0);
            assert!(!v.allowed);
            assert_eq!(v.policy, 0);
        }
        let v = l.check_at(&[("b", &tight), ("g", &loose)], 0.0);
        assert!(v.allowed);
        // The tightest bucket speaks for an allowed request.
        assert_eq!((v.policy, v.remaining), (0, 0));
        let v = l.check_at(&[("g", &loose)], 0.0);
        assert_eq!(v.remaining, 97);
    }

    #[test]
    fn a_penalty_blocks_after_a_refusal() {
        let l = LocalLimiter::new();
        let mut p = policy(1, 1, 1);
        p.penalty = Some(Duration::from_secs(30));
        let c = [("k", &p)];
        assert!(l.check_at(&c, 0.0).allowed);
        let v = l.check_at(&c, 10.0);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ms, 30_000);
        // Refilled, but still serving the penalty.
        let v = l.check_at(&c, 20_000.0);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ms, 10_010);
        assert!(l.check_at(&c, 30_010.0).allowed);
    }

    #[test]
    fn sweep_drops_only_idle_buckets() {
        let l = LocalLimiter::new();
        let p = policy(1, 3600, 1);
        l.check_at(&[("old", &p)], 0.0);
        l.sweep_at(3_599_999.0);
        assert_eq!(l.len(), 1);
        l.sweep_at(3_600_001.0);
        assert!(l.is_empty());
        l.check(&[("ratelimit:a:ip:1", &p), ("ratelimit:b:ip:1", &p)]);
        assert_eq!(l.remove_where(|k| k.starts_with("ratelimit:a:")), 1);
        assert_eq!(l.len(), 1);
    }
}
