//! The shared limiter: every policy of a request checked and taken in one Lua script, one
//! round trip, with the Redis server's clock (so daemons with skewed clocks agree).
//!
//! The script runs by `EVALSHA`; after a Redis restart or `SCRIPT FLUSH` the server answers
//! `NOSCRIPT` and the client loads it again and retries, within the same check. The
//! connection manager reconnects by itself; each call is bounded by a timeout so a slow
//! Redis costs a request at most that long before the fallback takes over.

use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use super::bucket::Verdict;
use crate::config::policy::Policy;

/// The token bucket of `bucket.rs`, for all of a request's buckets at once.
///
/// KEYS: one hash per bucket (`t` tokens, `at` ms, `b` blocked until ms).
/// ARGV: per bucket its burst, its rate in tokens per ms and its penalty in ms (0: none).
/// Returns {allowed 0/1, deciding index (0-based), remaining, retry-after ms, reset-after ms}.
const SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local n = #KEYS
local tokens, blocked, burst, rate, penalty = {}, {}, {}, {}, {}
local refusing = 0
for i = 1, n do
  burst[i] = tonumber(ARGV[3 * i - 2])
  rate[i] = tonumber(ARGV[3 * i - 1])
  penalty[i] = tonumber(ARGV[3 * i])
  local h = redis.call('HMGET', KEYS[i], 't', 'at', 'b')
  local tk, at = tonumber(h[1]), tonumber(h[2])
  blocked[i] = tonumber(h[3]) or 0
  if tk == nil or at == nil then tk, at = burst[i], now end
  if now > at then tk = math.min(burst[i], tk + (now - at) * rate[i]) end
  tokens[i] = tk
  if refusing == 0 and (blocked[i] > now or tk < 1) then refusing = i end
end
local function reset_after(i)
  return math.max(math.max(0, burst[i] - tokens[i]) / rate[i], blocked[i] - now)
end
local function store(i)
  redis.call('HSET', KEYS[i], 't', tostring(tokens[i]), 'at', tostring(now), 'b', tostring(blocked[i]))
  redis.call('PEXPIRE', KEYS[i], math.ceil(reset_after(i)) + 1000)
end
if refusing == 0 then
  local tightest = 1
  for i = 1, n do
    tokens[i] = tokens[i] - 1
    if tokens[i] < tokens[tightest] then tightest = i end
    store(i)
  end
  return {1, tightest - 1, math.floor(tokens[tightest]), 0, math.ceil(reset_after(tightest))}
end
for i = 1, n do
  if penalty[i] > 0 and blocked[i] <= now and tokens[i] < 1 then
    blocked[i] = now + penalty[i]
    store(i)
  end
end
local retry
if blocked[refusing] > now then
  retry = blocked[refusing] - now
else
  retry = (1 - tokens[refusing]) / rate[refusing]
end
return {0, refusing - 1, 0, math.max(1, math.ceil(retry)), math.ceil(reset_after(refusing))}
"#;

/// Why Redis gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisLimiterError {
    /// No answer in time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A connection or server error.
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    /// The script answered something else than it should.
    #[error("the rate-limit script answered {0:?}; is this a Redis 6 or later server?")]
    Answer(Vec<i64>),
}

/// The Redis limiter.
#[derive(Clone)]
pub struct RedisLimiter {
    conn: ConnectionManager,
    script: Script,
    timeout: Duration,
}

impl RedisLimiter {
    /// A limiter on `url` (`redis://[:password@]host:port/`) that connects in the
    /// background (the daemon starts, on the fallback, while Redis is down) and bounds
    /// each call by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_min_delay(Duration::from_millis(50))
            // Reconnect attempts are cheap; a long wait between them is what makes a Redis
            // restart cost seconds of fallback (the chaos harness measured 1.8 s at 1 s).
            .set_max_delay(Duration::from_millis(250));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            script: Script::new(SCRIPT),
            timeout,
        })
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Checks one request against `checks` (bucket key and policy).
    pub async fn check(&self, checks: &[(&str, &Policy)]) -> Result<Verdict, RedisLimiterError> {
        let mut invocation = self.script.prepare_invoke();
        for (key, policy) in checks {
            invocation
                .key(*key)
                .arg(policy.burst)
                .arg(format!("{:e}", policy.rate_per_ms()))
                .arg(policy.penalty.map_or(0, |p| p.as_millis() as u64));
        }
        let mut conn = self.conn.clone();
        let answer: Vec<i64> =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| RedisLimiterError::Timeout(self.timeout))??;
        match answer[..] {
            [allowed, policy, remaining, retry, reset]
                if (0..checks.len() as i64).contains(&policy) =>
            {
                Ok(Verdict {
                    allowed: allowed == 1,
                    policy: policy as usize,
                    remaining: remaining.max(0) as u32,
                    retry_after_ms: retry.max(0) as u64,
                    reset_after_ms: reset.max(0) as u64,
                })
            }
            _ => Err(RedisLimiterError::Answer(answer)),
        }
    }

    /// One `PING` round trip, bounded by `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, RedisLimiterError> {
        let mut conn = self.conn.clone();
        let t0 = Instant::now();
        let _: String = tokio::time::timeout(timeout, redis::cmd("PING").query_async(&mut conn))
            .await
            .map_err(|_| RedisLimiterError::Timeout(timeout))??;
        Ok(t0.elapsed())
    }

    /// Deletes the keys matching `pattern` (a Redis glob); returns how many.
    pub async fn delete_matching(&self, pattern: &str) -> Result<u64, RedisError> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

impl RedisLimiter {
    /// `connected_clients` from `INFO clients`.
    pub async fn connected_clients(&self) -> Result<i64, RedisLimiterError> {
        let mut conn = self.conn.clone();
        let info: String = tokio::time::timeout(
            Duration::from_secs(1),
            redis::cmd("INFO").arg("clients").query_async(&mut conn),
        )
        .await
        .map_err(|_| RedisLimiterError::Timeout(Duration::from_secs(1)))??;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }
}
