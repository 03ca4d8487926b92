//! Rate-limit policies: who is counted (client IP, user, everyone), how many requests a
//! bucket holds (burst), how fast it refills (sustained rate), an optional penalty, and what
//! to do while Redis is unreachable.
//!
//! They are written in `RATE_LIMIT_POLICIES` as
//! `endpoint: scope N/unit [burst=B] [penalty=DURATION] [down=fallback|open|closed], …; …`,
//! e.g. the seed's defaults (§4.2.1):
//! `prime-check: ip 60/min, user 100/min, global 1000/min; prime-check-list: ip 30/min, user 50/min`.

use std::fmt;
use std::time::Duration;

/// The seed's policies (§4.2.1).
pub const DEFAULT_POLICIES: &str = "prime-check: ip 60/min, user 100/min, global 1000/min; prime-check-list: ip 30/min, user 50/min";

/// Whose requests one bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// One bucket per client IP address.
    Ip,
    /// One bucket per authenticated user (JWT `sub`); anonymous requests skip it.
    User,
    /// One bucket for everyone.
    Global,
}

impl Scope {
    /// The policy name shown in `X-RateLimit-Policy` and metrics.
    pub fn policy_name(self) -> &'static str {
        match self {
            Scope::Ip => "per-ip",
            Scope::User => "per-user",
            Scope::Global => "global",
        }
    }
}

/// What a policy does while Redis does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRedisDown {
    /// Count in the in-process limiter, with the limits divided among the instances.
    #[default]
    Fallback,
    /// Let requests through unlimited by this policy.
    Open,
    /// Refuse requests (503) until Redis is back.
    Closed,
}

/// One token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Whose requests it counts.
    pub scope: Scope,
    /// Requests per `per` (the sustained rate).
    pub limit: u32,
    /// The period of `limit`.
    pub per: Duration,
    /// Bucket capacity: requests that may come at once (defaults to `limit`).
    pub burst: u32,
    /// After a refusal, refuse everything from this identity for this long.
    pub penalty: Option<Duration>,
    /// Behaviour while Redis is down.
    pub on_redis_down: OnRedisDown,
}

impl Policy {
    /// A policy of `limit` per `per` with burst `limit`, no penalty, fallback when Redis is down.
    pub fn new(scope: Scope, limit: u32, per: Duration) -> Self {
        Self {
            scope,
            limit,
            per,
            burst: limit,
            penalty: None,
            on_redis_down: OnRedisDown::Fallback,
        }
    }

    /// Tokens added per millisecond.
    pub fn rate_per_ms(&self) -> f64 {
        f64::from(self.limit) / (self.per.as_secs_f64() * 1000.0)
    }

    /// The same policy with its burst and rate divided among `instances` daemons (each at
    /// least one request of burst), for the in-process fallback.
    pub fn scaled(&self, instances: u32) -> Policy {
        let n = instances.max(1);
        Policy {
            limit: self.limit,
            per: self.per * n,
            burst: (self.burst / n).max(1),
            ..*self
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} per {}",
            self.scope.policy_name(),
            self.limit,
            humantime::format_duration(self.per)
        )?;
        if self.burst != self.limit {
            write!(f, " (burst {})", self.burst)?;
        }
        Ok(())
    }
}

/// The policies of one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointPolicies {
    /// The endpoint name used in keys, metrics and configuration (`prime-check`).
    pub endpoint: String,
    /// Its buckets, at most one per scope.
    pub policies: Vec<Policy>,
}

/// Parses a `RATE_LIMIT_POLICIES` value.
pub fn parse_policies(spec: &str) -> Result<Vec<EndpointPolicies>, String> {
    let mut out: Vec<EndpointPolicies> = Vec::new();
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (endpoint, list) = part
            .split_once(':')
            .ok_or_else(|| format!("{part:?} has no 'endpoint:' in front of its policies"))?;
        let endpoint = endpoint.trim();
        if endpoint.is_empty()
            || !endpoint
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "{endpoint:?} is not an endpoint name (letters, digits, '-', '_')"
            ));
        }
        if out.iter().any(|e| e.endpoint == endpoint) {
            return Err(format!("endpoint {endpoint:?} is given twice"));
        }
        let mut policies: Vec<Policy> = Vec::new();
        for text in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let policy = parse_policy(text).map_err(|e| format!("{endpoint}: {text:?}: {e}"))?;
            if policies.iter().any(|p| p.scope == policy.scope) {
                return Err(format!(
                    "{endpoint}: two {} policies",
                    policy.scope.policy_name()
                ));
            }
            policies.push(policy);
        }
        if policies.is_empty() {
            return Err(format!("endpoint {endpoint:?} has no policies"));
        }
        out.push(EndpointPolicies {
            endpoint: endpoint.to_string(),
            policies,
        });
    }
    Ok(out)
}

fn parse_policy(text: &str) -> Result<Policy, String> {
    let mut words = text.split_whitespace();
    let scope = match words.next() {
        Some("ip") => Scope::Ip,
        Some("user") => Scope::User,
        Some("global") => Scope::Global,
        _ => return Err("it must start with ip, user or global".into()),
    };
    let rate = words
        .next()
        .ok_or("it has no rate like 60/min after the scope")?;
    let (limit, unit) = rate
        .split_once('/')
        .ok_or("the rate must look like 60/min")?;
    let limit: u32 = limit
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or("the request count must be a whole number of at least 1")?;
    let per = match unit {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86400),
        other => humantime::parse_duration(other)
            .ok()
            .filter(|d| *d >= Duration::from_millis(1))
            .ok_or("the period must be s, min, h, day or a duration like 10s")?,
    };
    let mut policy = Policy::new(scope, limit, per);
    for option in words {
        let (key, value) = option
            .split_once('=')
            .ok_or_else(|| format!("option {option:?} must be key=value"))?;
        match key {
            "burst" => {
                policy.burst = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("burst must be a whole number of at least 1")?;
            }
            "penalty" => {
                policy.penalty = Some(
                    humantime::parse_duration(value)
                        .map_err(|e| format!("penalty is not a duration like 5m ({e})"))?,
                );
            }
            "down" => {
                policy.on_redis_down = match value {
                    "fallback" => OnRedisDown::Fallback,
                    "open" => OnRedisDown::Open,
                    "closed" => OnRedisDown::Closed,
                    _ => return Err("down must be fallback, open or closed".into()),
                };
            }
            _ => {
                return Err(format!("unknown option {key:?} (burst, penalty or down)"));
            }
        }
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_defaults_parse() {
        let all = parse_policies(DEFAULT_POLICIES).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].endpoint, "prime-check");
        assert_eq!(
            all[0].policies,
            vec![
                Policy::new(Scope::Ip, 60, Duration::from_secs(60)),
                Policy::new(Scope::User, 100, Duration::from_secs(60)),
                Policy::new(Scope::Global, 1000, Duration::from_secs(60)),
            ]
        );
        assert_eq!(all[1].endpoint, "prime-check-list");
        assert_eq!(all[1].policies[0].limit, 30);
        assert_eq!(all[1].policies[1].scope, Scope::User);
    }

    #[test]
    fn options_parse() {
        let all = parse_policies(
            "prime-check: ip 5/10s burst=2 penalty=1m down=closed, global 1/h down=open",
        )
        .unwrap();
        let p = &all[0].policies[0];
        assert_eq!(p.per, Duration::from_secs(10));
        assert_eq!(p.burst, 2);
        assert_eq!(p.penalty, Some(Duration::from_secs(60)));
        assert_eq!(p.on_redis_down, OnRedisDown::Closed);
        assert_eq!(all[0].policies[1].on_redis_down, OnRedisDown::Open);
        assert!((p.rate_per_ms() - 0.0005).abs() < 1e-12);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, expected) in [
            ("prime-check ip 5/min", "has no 'endpoint:'"),
            (
                "prime-check: visitor 5/min",
                "must start with ip, user or global",
            ),
            ("prime-check: ip 0/min", "at least 1"),
            ("prime-check: ip 5/fortnight", "the period must be"),
            ("prime-check: ip 5/min burst=0", "burst must be"),
            ("prime-check: ip 5/min color=red", "unknown option"),
            ("prime-check: ip 5/min, ip 6/min", "two per-ip policies"),
            ("a: ip 1/s; a: ip 2/s", "given twice"),
            ("a b: ip 1/s", "not an endpoint name"),
            ("a: ", "has no policies"),
        ] {
            let err = parse_policies(spec).unwrap_err();
            assert!(err.contains(expected), "{spec:?}: {err}");
        }
    }

    #[test]
    fn scaling_divides_burst_and_rate() {
        let mut p = Policy::new(Scope::Ip, 60, Duration::from_secs(60));
        p.burst = 30;
        let s = p.scaled(3);
        assert_eq!(s.burst, 10);
        assert!((s.rate_per_ms() - p.rate_per_ms() / 3.0).abs() < 1e-12);
        assert_eq!(
            Policy::new(Scope::Ip, 2, Duration::from_secs(1))
                .scaled(5)
                .burst,
            1
        );
    }
}
