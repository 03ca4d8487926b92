//! The public API's rate limits and the Redis that holds them.

use std::time::Duration;

use super::error::ConfigError;
use super::raw::{Raw, split_host_port};
use super::secret::Secret;

/// Redis for rate limiting.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// host
    pub host: String,
    /// port
    pub port: u16,
    /// password
    pub password: Option<Secret>,
}

impl RedisConfig {
    /// Read from `RATE_LIMIT_REDIS_HOST` or `REDIS_HOST`/`REDIS_PORT`; None when neither is set.
    pub(super) fn read(raw: &Raw) -> Result<Option<Self>, ConfigError> {
        if raw.is_set("REDIS_HOST") && raw.is_set("RATE_LIMIT_REDIS_HOST") {
            return Err(ConfigError::Conflict {
                a: "REDIS_HOST",
                b: "RATE_LIMIT_REDIS_HOST",
            });
        }
        Ok(if let Some(hostport) = raw.get("RATE_LIMIT_REDIS_HOST") {
            let (host, port) = split_host_port(hostport).ok_or_else(|| {
                raw.invalid("RATE_LIMIT_REDIS_HOST", "host:port, e.g. redis:6379")
            })?;
            Some(RedisConfig {
                host,
                port,
                password: raw.secret("REDIS_PASSWORD"),
            })
        } else if let Some(host) = raw.host("REDIS_HOST")? {
            Some(RedisConfig {
                host,
                port: raw.port("REDIS_PORT")?,
                password: raw.secret("REDIS_PASSWORD"),
            })
        } else {
            None
        })
    }

    /// `redis://[:password@]host:port/` (the password percent-encoded).
    pub fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match &self.password {
            None => format!("redis://{host}:{}/", self.port),
            Some(p) => {
                let encoded: String = p
                    .expose()
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
                format!("redis://:{encoded}@{host}:{}/", self.port)
            }
        }
    }
}

/// The rate limits of the public API.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Whether requests are limited at all.
    pub enabled: bool,
    /// Per-endpoint policies.
    pub endpoints: Vec<super::policy::EndpointPolicies>,
    /// First part of the Redis keys.
    pub key_prefix: String,
    /// Redis wait before falling back.
    pub redis_timeout: Duration,
    /// Daemons sharing the limits.
    pub instances: u32,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Never-limited clients.
    pub whitelist: Vec<ipnet::IpNet>,
    /// Bypass keys.
    pub service_keys: Vec<Secret>,
}

impl RateLimitConfig {
    pub(super) fn read(raw: &Raw) -> Result<RateLimitConfig, ConfigError> {
        let endpoints =
            super::policy::parse_policies(raw.get("RATE_LIMIT_POLICIES").unwrap_or_default())
                .map_err(|reason| ConfigError::Spec {
                    key: "RATE_LIMIT_POLICIES",
                    reason,
                })?;
        let nets = |name: &'static str| -> Result<Vec<ipnet::IpNet>, ConfigError> {
            raw.get(name)
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| {
                    n.parse::<ipnet::IpNet>()
                        .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            raw.invalid(
                                name,
                                "comma-separated IP addresses or CIDR networks, e.g. 10.0.0.0/8,192.0.2.1",
                            )
                        })
                })
                .collect()
        };
        let service_keys = raw.secret_list(
            "RATE_LIMIT_SERVICE_KEYS",
            "comma-separated keys of at least 16 characters each",
        )?;
        let key_prefix = raw.required("RATE_LIMIT_KEY_PREFIX")?.trim().to_string();
        if key_prefix.is_empty()
            || key_prefix.contains(|c: char| c.is_whitespace() || "*?[]\\".contains(c))
        {
            return Err(raw.invalid(
                "RATE_LIMIT_KEY_PREFIX",
                "a key prefix without spaces or glob characters, e.g. ratelimit",
            ));
        }
        Ok(RateLimitConfig {
            enabled: raw.boolean("RATE_LIMIT_ENABLED")?,
            endpoints,
            key_prefix,
            redis_timeout: Duration::from_millis(
                raw.positive(
                    "RATE_LIMIT_REDIS_TIMEOUT_MS",
                    "a whole number of milliseconds, at least 1",
                )?
                .into(),
            ),
            instances: raw.positive("RATE_LIMIT_INSTANCES", "a whole number, at least 1")?,
            trusted_proxies: nets("RATE_LIMIT_TRUSTED_PROXIES")?,
            whitelist: nets("RATE_LIMIT_WHITELIST")?,
            service_keys,
        })
    }
}
