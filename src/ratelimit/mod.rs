//! Rate limiting of the public API (seed §4): token buckets per client IP, per user and
//! global, kept in Redis and checked by one Lua script per request, with an in-process
//! fallback that takes over while Redis does not answer and hands back when it does.
//!
//! - [`crate::config::policy`]: the policies and their configuration syntax (read with the configuration).
//! - [`bucket`]: the token-bucket arithmetic and the in-process limiter.
//! - [`redis`]: the shared limiter (one `EVALSHA` per request).
//! - [`identity`]: client IP through trusted proxies, JWT users, bypasses.
//! - [`monitor`]: the supervised actor that brings the limiter back to Redis after an outage.
//! - The axum middleware (headers, 429, 401, metrics) is the HTTP layer's: `crate::http::ratelimit`.

pub mod bucket;
pub mod identity;
pub mod monitor;
pub mod redis;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::config::policy::{EndpointPolicies, OnRedisDown, Policy, Scope};
use crate::metrics::metrics;
use bucket::{LocalLimiter, Verdict};
use identity::IdentityConfig;
use redis::RedisLimiter;

/// What a limiter is built from.
#[derive(Clone)]
pub struct RateLimitSettings {
    /// Policies of the named endpoints.
    pub endpoints: Vec<EndpointPolicies>,
    /// Policy of endpoints without their own (per IP).
    pub default_policy: Policy,
    /// Daemons sharing the limits: the fallback gives each `1/instances` of them.
    pub instances: u32,
    /// First part of every key (`ratelimit`).
    pub key_prefix: String,
    /// `redis://…` of the shared store; none: in-process only.
    pub redis_url: Option<String>,
    /// Longest wait for Redis before a check falls back.
    pub redis_timeout: Duration,
    /// How requests are identified and which bypass.
    pub identity: IdentityConfig,
}

/// A decision about one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// No policy applies (or all are fail-open while Redis is down).
    Unlimited,
    /// Decided by `policy` (as enforced: scaled when the fallback decided).
    Decided {
        /// The deciding policy.
        policy: Policy,
        /// The decision.
        verdict: Verdict,
        /// Whether the in-process limiter decided.
        fallback: bool,
    },
    /// Redis is down and `policy` is fail-closed.
    Unavailable {
        /// The fail-closed policy.
        policy: Policy,
    },
}

/// The limiter: Redis when configured and answering, the in-process buckets otherwise.
pub struct RateLimiter {
    endpoints: HashMap<String, Vec<Policy>>,
    default: Vec<Policy>,
    instances: u32,
    prefix: String,
    redis: Option<RedisLimiter>,
    local: LocalLimiter,
    down: AtomicBool,
    down_since: Mutex<Option<(SystemTime, String)>>,
    /// How requests are identified.
    pub identity: IdentityConfig,
}

impl RateLimitSettings {
    /// The settings of `config`, with `admin_keys` (the effective admin tokens) as a bypass;
    /// none when rate limiting is disabled.
    pub fn from_config(
        config: &crate::config::Config,
        admin_keys: Vec<crate::config::Secret>,
    ) -> Option<Self> {
        let rl = &config.rate_limit;
        if !rl.enabled {
            return None;
        }
        Some(Self {
            endpoints: rl.endpoints.clone(),
            default_policy: Policy::new(
                Scope::Ip,
                config.rate_limit_default_limit,
                config.rate_limit_window,
            ),
            instances: rl.instances,
            key_prefix: rl.key_prefix.clone(),
            redis_url: config.redis.as_ref().map(crate::config::RedisConfig::url),
            redis_timeout: rl.redis_timeout,
            identity: IdentityConfig {
                trusted_proxies: rl.trusted_proxies.clone(),
                whitelist: rl.whitelist.clone(),
                service_keys: rl.service_keys.clone(),
                admin_keys,
                jwt_secret: config.jwt_secret.clone(),
            },
        })
    }
}

impl RateLimiter {
    /// A limiter from `settings`. With Redis configured it starts on Redis and connects
    /// lazily; run a [`monitor::RateLimitMonitor`] so that it comes back after an outage.
    pub fn new(settings: RateLimitSettings) -> Result<Self, ::redis::RedisError> {
        let redis = match &settings.redis_url {
            Some(url) => Some(RedisLimiter::new(url, settings.redis_timeout)?),
            None => None,
        };
        Ok(Self {
            endpoints: settings
                .endpoints
                .into_iter()
                .map(|e| (e.endpoint, e.policies))
                .collect(),
            default: vec![settings.default_policy],
            instances: settings.instances.max(1),
            prefix: settings.key_prefix,
            redis,
            local: LocalLimiter::new(),
            down: AtomicBool::new(false),
            down_since: Mutex::new(None),
            identity: settings.identity,
        })
    }

    /// The policies of `endpoint`.
    pub fn policies(&self, endpoint: &str) -> &[Policy] {
        self.endpoints
            .get(endpoint)
            .map_or(&self.default[..], Vec::as_slice)
    }

    /// The Redis limiter, when configured.
    pub fn redis(&self) -> Option<&RedisLimiter> {
        self.redis.as_ref()
    }

    /// Whether Redis is configured.
    pub fn has_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// Whether the in-process fallback is deciding because Redis does not answer.
    pub fn is_degraded(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Decides about one request to `endpoint` from `ip`, by `user` when authenticated.
    pub async fn check(&self, endpoint: &str, ip: IpAddr, user: Option<&str>) -> Outcome {
        let mut buckets: Vec<(String, Policy)> = Vec::with_capacity(3);
        let prefix = &self.prefix;
        for policy in self.policies(endpoint) {
            let key = match (policy.scope, user) {
                (Scope::Ip, _) => format!("{prefix}:{endpoint}:ip:{ip}"),
                (Scope::User, Some(user)) => format!("{prefix}:{endpoint}:user:{user}"),
                (Scope::User, None) => continue,
                (Scope::Global, _) => format!("{prefix}:{endpoint}:global"),
            };
            buckets.push((key, *policy));
        }
        if buckets.is_empty() {
            return Outcome::Unlimited;
        }
        if let Some(redis) = &self.redis {
            if !self.is_degraded() {
                let checks: Vec<(&str, &Policy)> =
                    buckets.iter().map(|(k, p)| (k.as_str(), p)).collect();
                match redis.check(&checks).await {
                    Ok(verdict) => {
                        return Outcome::Decided {
                            policy: buckets[verdict.policy].1,
                            verdict,
                            fallback: false,
                        };
                    }
                    Err(e) => self.switch_to_fallback(&e.to_string()),
                }
            }
            // Redis is down: each policy as configured for that.
            if let Some((_, policy)) = buckets
                .iter()
                .find(|(_, p)| p.on_redis_down == OnRedisDown::Closed)
            {
                return Outcome::Unavailable { policy: *policy };
            }
            buckets.retain(|(_, p)| p.on_redis_down == OnRedisDown::Fallback);
            if buckets.is_empty() {
                return Outcome::Unlimited;
            }
        }
        Self::decide_locally(&self.local, &buckets, self.instances)
    }

    /// The in-process decision, with limits divided among `instances`.
    fn decide_locally(
        local: &LocalLimiter,
        buckets: &[(String, Policy)],
        instances: u32,
    ) -> Outcome {
        let scaled: Vec<Policy> = buckets.iter().map(|(_, p)| p.scaled(instances)).collect();
        let checks: Vec<(&str, &Policy)> = buckets
            .iter()
            .zip(&scaled)
            .map(|((k, _), p)| (k.as_str(), p))
            .collect();
        let verdict = local.check(&checks);
        Outcome::Decided {
            policy: scaled[verdict.policy],
            verdict,
            fallback: true,
        }
    }

    fn switch_to_fallback(&self, error: &str) {
        if !self.down.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                error,
                "rate limiter: Redis does not answer; limiting with the in-process fallback until it does"
            );
            if let Ok(mut since) = self.down_since.lock() {
                *since = Some((SystemTime::now(), error.to_string()));
            }
            let m = metrics();
            m.rate_limit_fallback_active.set(1);
            m.rate_limit_backend_switches
                .with_label_values(&["fallback"])
                .inc();
        }
    }

    fn switch_to_redis(&self) {
        if self.down.swap(false, Ordering::SeqCst) {
            tracing::info!("rate limiter: Redis answers again; limits are shared through it again");
            if let Ok(mut since) = self.down_since.lock() {
                *since = None;
            }
            let m = metrics();
            m.rate_limit_fallback_active.set(0);
            m.rate_limit_backend_switches
                .with_label_values(&["redis"])
                .inc();
        }
    }

    /// Checks Redis once: falls back if it does not answer, returns to it if it does.
    pub async fn probe(&self) {
        let Some(redis) = &self.redis else { return };
        // A probe may wait longer than a request would: it only decides when to switch.
        match redis
            .ping(redis.timeout().max(Duration::from_millis(250)))
            .await
        {
            Ok(_) => self.switch_to_redis(),
            Err(e) => self.switch_to_fallback(&e.to_string()),
        }
    }

    /// The `/health` entry: `up`, or `degraded` while the fallback decides.
    pub fn health(&self) -> Value {
        if self.redis.is_none() {
            return json!({"status": "ok", "backend": "in-process"});
        }
        let since = self.down_since.lock().ok().and_then(|s| s.clone());
        match (self.is_degraded(), since) {
            (true, Some((at, error))) => json!({
                "status": "degraded",
                "backend": "in-process fallback",
                "error": error,
                "fallback_seconds": at.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0),
            }),
            (true, None) => json!({"status": "degraded", "backend": "in-process fallback"}),
            (false, _) => json!({"status": "ok", "backend": "redis"}),
        }
    }

    /// Forgets the in-process buckets whose key matches the glob `pattern` (`*` only).
    pub fn reset_local(&self, pattern: &str) -> usize {
        self.local.remove_where(|key| glob_match(pattern, key))
    }
}

/// Matches a Redis-style glob with `*` wildcards (no `?` or classes) against `text`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Turns a pattern given to `primed ratelimit reset` into a key glob under `prefix:`.
pub fn reset_pattern(prefix: &str, pattern: &str) -> Result<String, String> {
    let pattern = pattern.trim();
    if pattern.is_empty() {
        return Err("give a key pattern, e.g. 'prime-check:ip:203.0.113.7' or 'prime-check:*' ('*' resets every limit)".into());
    }
    if pattern.contains(['?', '[', ']', '\\']) {
        return Err("only '*' wildcards are supported in the pattern".into());
    }
    Ok(if pattern.starts_with(&format!("{prefix}:")) {
        pattern.to_string()
    } else {
        format!("{prefix}:{pattern}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("ratelimit:*", "ratelimit:a:ip:1"));
        assert!(glob_match("ratelimit:a:*:1", "ratelimit:a:ip:1"));
        assert!(!glob_match("ratelimit:a:*:2", "ratelimit:a:ip:1"));
        assert!(glob_match("ratelimit:a:ip:1", "ratelimit:a:ip:1"));
        assert!(!glob_match("ratelimit:a", "ratelimit:a:ip:1"));
        assert!(glob_match("*", "anything"));
        assert!(!glob_match("a*a", "a"));
    }

    #[test]
    fn reset_patterns_stay_under_the_prefix() {
        let r = |p| reset_pattern("ratelimit", p);
        assert_eq!(r("prime-check:*").unwrap(), "ratelimit:prime-check:*");
        assert_eq!(r("ratelimit:x").unwrap(), "ratelimit:x");
        assert_eq!(r("*").unwrap(), "ratelimit:*");
        assert_eq!(reset_pattern("staging", "a:*").unwrap(), "staging:a:*");
        assert!(r(" ").is_err());
        assert!(r("a?").is_err());
    }

    #[tokio::test]
    async fn without_redis_the_local_limiter_decides_with_scaled_limits() {
        let mut p = Policy::new(Scope::Ip, 10, Duration::from_secs(3600));
        p.on_redis_down = OnRedisDown::Closed; // ignored without Redis
        let limiter = RateLimiter::new(RateLimitSettings {
            endpoints: vec![EndpointPolicies {
                endpoint: "e".into(),
                policies: vec![p, Policy::new(Scope::User, 100, Duration::from_secs(3600))],
            }],
            default_policy: Policy::new(Scope::Ip, 1, Duration::from_secs(3600)),
            instances: 2,
            key_prefix: "ratelimit".into(),
            redis_url: None,
            redis_timeout: Duration::from_millis(5),
            identity: IdentityConfig::default(),
        })
        .unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut allowed = 0;
        for _ in 0..20 {
            if let Outcome::Decided {
                verdict, fallback, ..
            } = limiter.check("e", ip, None).await
            {
                assert!(fallback);
                allowed += u32::from(verdict.allowed);
            }
        }
        assert_eq!(
            allowed, 5,
            "half of the burst of 10 for each of 2 instances"
        );
        // Endpoints without policies use the default.
        assert!(matches!(
            limiter.check("other", ip, None).await,
            Outcome::Decided {
                verdict: Verdict { allowed: true, .. },
                ..
            }
        ));
        assert!(matches!(
            limiter.check("other", ip, None).await,
            Outcome::Decided {
                verdict: Verdict { allowed: false, .. },
                ..
            }
        ));
        assert_eq!(limiter.reset_local("ratelimit:other:*"), 1);
        assert_eq!(limiter.health()["backend"], "in-process");
    }
}
