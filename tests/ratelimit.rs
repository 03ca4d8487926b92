//! Rate limiting end to end against real Redis: exact limits under concurrency, per-user and
//! global policies, burst and refill, headers, trusted proxies, bypasses, the operator
//! reset, and the fallback while a Redis of the test's own is killed and restarted.
//!
//! Tests on the shared Redis (127.0.0.1:6379) each use their own key prefix and delete
//! their keys at the end; clients come from distinct loopback addresses (127.0.0.x).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use primed::config::policy::parse_policies;
use primed::ratelimit::identity::{IdentityConfig, sign_hs256};
use primed::ratelimit::{Outcome, RateLimitSettings, RateLimiter};
use serde_json::{Value, json};
use support::{Daemon, RedisServer, primed, redis_cli, sample, scrape};

const SHARED_REDIS: u16 = 6379;
const JWT_SECRET: &str = "ratelimit-test-secret-0123456789abcdef";
const ADMIN: &str = "ratelimit-admin-token-0123";
const SERVICE_KEY: &str = "ratelimit-service-key-0123";

/// A key prefix of the test's own on the shared Redis; its keys are deleted on drop.
struct Prefix(String);

impl Prefix {
    fn new(test: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Self(format!("rltest-{test}-{}-{nanos}", std::process::id()))
    }

    fn keys(&self) -> Vec<String> {
        redis_cli(
            SHARED_REDIS,
            &["--scan", "--pattern", &format!("{}:*", self.0)],
        )
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .filter(|k| !k.is_empty())
        .collect()
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        for key in self.keys() {
            redis_cli(SHARED_REDIS, &["DEL", &key]);
        }
    }
}

/// An embedded-mode daemon limited by `policies`, on Redis at `redis_port`.
fn daemon(prefix: &str, redis_port: u16, policies: &str, extra: &[(&str, &str)]) -> Daemon {
    let port = redis_port.to_string();
    let mut env = vec![
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PORT", port.as_str()),
        ("RATE_LIMIT_KEY_PREFIX", prefix),
        ("RATE_LIMIT_POLICIES", policies),
        // Generous, so that a busy test machine never trips the fallback by accident.
        ("RATE_LIMIT_REDIS_TIMEOUT_MS", "500"),
        ("ADMIN_API_KEYS", ADMIN),
        ("JWT_SECRET", JWT_SECRET),
    ];
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k, v));
    }
    Daemon::start(&env)
}

/// A client whose requests come from `ip` (any 127.0.0.0/8 address works on loopback).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// `r` and `t` of a `RateLimit` field (`"<policy>";r=<n>;t=<s>`).
fn ietf_fields(field: &str) -> (u64, u64) {
    let param = |name: &str| -> u64 {
        field
            .split(';')
            .find_map(|p| p.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {field}"))
            .parse()
            .unwrap()
    };
    assert!(field.starts_with('"'), "the policy name first: {field}");
    (param("r="), param("t="))
}

fn num(r: &reqwest::Response, name: &str) -> u64 {
    header(r, name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .parse()
        .unwrap()
}

fn token(sub: &str, exp_offset: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    sign_hs256(
        &json!({"sub": sub, "exp": now + exp_offset}),
        JWT_SECRET.as_bytes(),
    )
}

async fn list(c: &reqwest::Client, d: &Daemon) -> reqwest::Response {
    c.get(d.url("/prime-check-list")).send().await.unwrap()
}

async fn codes(c: &reqwest::Client, d: &Daemon, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(list(c, d).await.status().as_u16());
    }
    out
}

async fn health(d: &Daemon) -> (u16, Value) {
    let r = reqwest::get(d.url("/health")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_limit_passes_under_concurrency_and_other_clients_are_unaffected() {
    let prefix = Prefix::new("exact");
    let d = daemon(&prefix.0, SHARED_REDIS, "prime-check-list: ip 20/h", &[]);
    let a = client_from("127.0.0.2");
    let responses = join_all((0..200).map(|_| list(&a, &d))).await;
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    let limited = responses.iter().filter(|r| r.status() == 429).count();
    assert_eq!(
        (ok, limited),
        (20, 180),
        "200 concurrent requests, burst 20"
    );

    // Remaining counts down across the allowed answers: each of 19..=0 exactly once.
    let mut remaining: Vec<u64> = responses
        .iter()
        .filter(|r| r.status() == 200)
        .map(|r| num(r, "x-ratelimit-remaining"))
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..20).collect::<Vec<u64>>());

    // Another client has its own bucket.
    let r = list(&client_from("127.0.0.3"), &d).await;
    assert_eq!(r.status(), 200);
    assert_eq!(num(&r, "x-ratelimit-remaining"), 19);
    // The IETF draft's fields carry the same numbers: the quota and its window (20 at one
    // per 180 s: an hour), what is left and the seconds until the bucket is full.
    assert_eq!(
        header(&r, "ratelimit-policy").unwrap(),
        r#""per-ip";q=20;w=3600"#
    );
    let ietf = header(&r, "ratelimit").unwrap();
    let (left, reset_in) = ietf_fields(&ietf);
    assert_eq!(left, 19, "{ietf}");
    let reset = num(&r, "x-ratelimit-reset");
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        reset.abs_diff(now_s + reset_in) <= 1 && (170..=181).contains(&reset_in),
        "RateLimit t={reset_in} against X-RateLimit-Reset {reset} at {now_s}"
    );

    // A refusal says who refused, for how long, and when the bucket is full again.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let r = list(&a, &d).await;
    assert_eq!(r.status(), 429);
    assert_eq!(num(&r, "x-ratelimit-limit"), 20);
    assert_eq!(num(&r, "x-ratelimit-remaining"), 0);
    assert_eq!(header(&r, "x-ratelimit-policy").unwrap(), "per-ip");
    let retry = num(&r, "retry-after");
    assert!(
        (170..=180).contains(&retry),
        "one request per 180 s: {retry}"
    );
    let reset = num(&r, "x-ratelimit-reset");
    let (left, reset_in) = ietf_fields(&header(&r, "ratelimit").unwrap());
    assert_eq!(left, 0);
    assert!(
        (now + reset_in).abs_diff(reset) <= 1,
        "RateLimit t={reset_in} against X-RateLimit-Reset {reset} at {now}"
    );
    assert_eq!(
        header(&r, "ratelimit-policy").unwrap(),
        r#""per-ip";q=20;w=3600"#
    );
    assert!(
        (now + 3500..=now + 3602).contains(&reset),
        "20 tokens at one per 180 s: full in an hour, got {reset} at {now}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["policy"], "per-ip");
    assert_eq!(body["retry_after_seconds"], retry);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("prime-check-list")
    );

    // The buckets are in Redis under the configured prefix.
    let mut keys = prefix.keys();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("{}:prime-check-list:ip:127.0.0.2", prefix.0),
            format!("{}:prime-check-list:ip:127.0.0.3", prefix.0),
        ]
    );

    let m = scrape(&d).await;
    assert_eq!(
        sample(
            &m,
            r#"rate_limit_hits_total{endpoint="prime-check-list",policy="per-ip",result="limited"}"#
        ),
        181.0
    );
    assert_eq!(
        sample(
            &m,
            r#"rate_limit_hits_total{endpoint="prime-check-list",policy="per-ip",result="allowed"}"#
        ),
        21.0
    );
    assert_eq!(
        sample(
            &m,
            r#"rate_limit_check_duration_seconds_count{endpoint="prime-check-list"}"#
        ),
        202.0
    );
}

/// With burst B and rate R, at most B + R·T requests pass in T seconds, however many
/// clients race for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_limiter_never_grants_more_than_burst_plus_rate_times_time() {
    let prefix = Prefix::new("overgrant");
    let (burst, rate) = (10.0, 20.0);
    let limiter = Arc::new(
        RateLimiter::new(RateLimitSettings {
            endpoints: parse_policies("race: ip 20/s burst=10").unwrap(),
            default_policy: parse_policies("x: ip 1/s").unwrap()[0].policies[0],
            instances: 1,
            key_prefix: prefix.0.clone(),
            redis_url: Some(format!("redis://127.0.0.1:{SHARED_REDIS}/")),
            redis_timeout: Duration::from_secs(2),
            identity: IdentityConfig::default(),
        })
        .unwrap(),
    );
    let allowed = Arc::new(AtomicU32::new(0));
    let checks = Arc::new(AtomicU32::new(0));
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    // The buckets refill by Redis's clock (TIME in the script): T is measured on it too,
    // from before the first check to after the last, so the bound does not depend on how
    // fast this machine runs the clients.
    let server_from = redis_time(SHARED_REDIS);
    let start = Instant::now();
    let until = start + Duration::from_secs(2);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (limiter, allowed, checks) = (limiter.clone(), allowed.clone(), checks.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    match limiter.check("race", ip, None).await {
                        Outcome::Decided {
                            verdict, fallback, ..
                        } => {
                            assert!(!fallback, "Redis must decide every check here");
                            checks.fetch_add(1, Ordering::Relaxed);
                            if verdict.allowed {
                                allowed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = redis_time(SHARED_REDIS) - server_from;
    let allowed = f64::from(allowed.load(Ordering::Relaxed));
    let checks = checks.load(Ordering::Relaxed);
    assert!(checks > 500, "the clients really raced: {checks} checks");
    assert!(
        allowed <= burst + rate * elapsed,
        "{allowed} allowed in {elapsed:.3} s of Redis time: more than {burst} + {rate}·T"
    );
    // Clients checking all the time take each token soon after it refills; only a stall
    // of the whole machine longer than burst / rate (0.5 s) loses some, hence the margin.
    assert!(
        allowed >= burst + rate * elapsed * 0.5,
        "{allowed} allowed in {elapsed:.3} s of Redis time: the limiter refuses what it should grant"
    );
}

/// Redis's clock, in seconds (the rate limiter's buckets refill by it).
fn redis_time(port: u16) -> f64 {
    let time = redis_cli(port, &["TIME"]).expect("Redis answers TIME");
    let mut parts = time.split_whitespace().map(|p| p.parse::<f64>().unwrap());
    let (seconds, micros) = (parts.next().unwrap(), parts.next().unwrap());
    seconds + micros / 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_everyone_have_their_own_limits() {
    let prefix = Prefix::new("users");
    let d = daemon(
        &prefix.0,
        SHARED_REDIS,
        "prime-check-list: ip 100/h, user 3/h, global 8/h",
        &[],
    );
    let c = client_from("127.0.0.2");
    let alice = format!("Bearer {}", token("alice", 600));
    let bob = format!("Bearer {}", token("bob", 600));
    let as_user = |auth: &str| {
        c.get(d.url("/prime-check-list"))
            .header("authorization", auth)
            .send()
    };
    for left in (0..3).rev() {
        let r = as_user(&alice).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-policy").unwrap(), "per-user");
        assert_eq!(num(&r, "x-ratelimit-remaining"), left);
    }
    let r = as_user(&alice).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-policy").unwrap(), "per-user");
    assert_eq!(num(&r, "x-ratelimit-limit"), 3);
    // Bob, from the same address, has his own user bucket.
    let r = as_user(&bob).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(num(&r, "x-ratelimit-remaining"), 2);

    // Anonymous clients elsewhere use up what is left of the global 8.
    let anon = client_from("127.0.0.3");
    for left in (0..4).rev() {
        let r = list(&anon, &d).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-policy").unwrap(), "global");
        assert_eq!(num(&r, "x-ratelimit-remaining"), left);
    }
    for ip in ["127.0.0.3", "127.0.0.4"] {
        let r = list(&client_from(ip), &d).await;
        assert_eq!(r.status(), 429);
        assert_eq!(header(&r, "x-ratelimit-policy").unwrap(), "global");
    }

    // A token that is not valid is refused, not served as anonymous.
    for bad in [
        format!("Bearer {}", token("alice", -3600)),
        format!("Bearer {}x", token("alice", 600)),
        "Bearer not-a-token".to_string(),
        "Basic YWxpY2U6c2VjcmV0".to_string(),
    ] {
        let r = as_user(&bad).await.unwrap();
        assert_eq!(r.status(), 401, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_credentials");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_followed_by_the_sustained_rate() {
    let prefix = Prefix::new("refill");
    let d = daemon(
        &prefix.0,
        SHARED_REDIS,
        "prime-check-list: ip 2/s burst=3",
        &[],
    );
    let c = client_from("127.0.0.2");
    for left in (0..3).rev() {
        let r = list(&c, &d).await;
        assert_eq!(r.status(), 200);
        assert_eq!(num(&r, "x-ratelimit-remaining"), left);
        assert_eq!(num(&r, "x-ratelimit-limit"), 3);
    }
    let r = list(&c, &d).await;
    assert_eq!(r.status(), 429);
    assert_eq!(num(&r, "retry-after"), 1, "one token per 500 ms");

    // Then requests pass at the sustained rate: about 2 per second, never the burst again.
    // T on Redis's clock, which the bucket refills by.
    let server_from = redis_time(SHARED_REDIS);
    let start = Instant::now();
    let mut passed = 0;
    while start.elapsed() < Duration::from_secs(2) {
        if list(&c, &d).await.status() == 200 {
            passed += 1;
        }
    }
    let elapsed = redis_time(SHARED_REDIS) - server_from;
    let passed = f64::from(passed);
    assert!(
        passed <= 1.0 + 2.0 * elapsed,
        "{passed} passed in {elapsed:.3} s of Redis time at 2/s: the burst came back"
    );
    // A client asking all the time takes each token as it refills; only a stall longer
    // than burst / rate (1.5 s) could lose one.
    assert!(
        passed >= 2.0 * elapsed - 2.0,
        "{passed} passed in {elapsed:.3} s of Redis time at 2/s: the limiter refuses what it should grant"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_through_trusted_proxies() {
    let prefix = Prefix::new("xff");
    let d = daemon(
        &prefix.0,
        SHARED_REDIS,
        "prime-check-list: ip 2/h",
        &[("RATE_LIMIT_TRUSTED_PROXIES", "127.0.0.5")],
    );
    let spoofer = client_from("127.0.0.4");
    let mut codes = Vec::new();
    for i in 0..4 {
        let r = spoofer
            .get(d.url("/prime-check-list"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    assert_eq!(
        codes,
        [200, 200, 429, 429],
        "an untrusted peer cannot pick its address"
    );

    let proxy = client_from("127.0.0.5");
    let via = |xff: &'static str| {
        proxy
            .get(d.url("/prime-check-list"))
            .header("x-forwarded-for", xff)
            .send()
    };
    assert_eq!(via("198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(via("198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(via("198.51.100.1").await.unwrap().status(), 429);
    // A client that prepends a fake address is still counted by its real one.
    assert_eq!(
        via("203.0.113.9, 198.51.100.1").await.unwrap().status(),
        429
    );
    // Another client behind the same proxy is not affected.
    assert_eq!(via("198.51.100.2").await.unwrap().status(), 200);
    assert!(
        prefix
            .keys()
            .contains(&format!("{}:prime-check-list:ip:198.51.100.2", prefix.0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitelisted_networks_admin_tokens_and_service_keys_bypass_the_limits() {
    let prefix = Prefix::new("bypass");
    let d = daemon(
        &prefix.0,
        SHARED_REDIS,
        "prime-check-list: ip 1/h",
        &[
            ("RATE_LIMIT_WHITELIST", "127.0.0.6/32, 10.0.0.0/8"),
            ("RATE_LIMIT_SERVICE_KEYS", SERVICE_KEY),
        ],
    );
    let whitelisted = client_from("127.0.0.6");
    let service = client_from("127.0.0.7");
    let admin = client_from("127.0.0.8");
    for _ in 0..5 {
        let r = list(&whitelisted, &d).await;
        assert_eq!(r.status(), 200);
        assert!(header(&r, "x-ratelimit-remaining").is_none());
        assert!(header(&r, "ratelimit").is_none() && header(&r, "ratelimit-policy").is_none());
        let r = service
            .get(d.url("/prime-check-list"))
            .header("x-service-key", SERVICE_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = admin
            .get(d.url("/prime-check-list"))
            .header("authorization", format!("Bearer {ADMIN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Without the bypass, the same clients are limited.
    assert_eq!(list(&admin, &d).await.status(), 200);
    assert_eq!(list(&admin, &d).await.status(), 429);
    assert_eq!(list(&service, &d).await.status(), 200);
    assert_eq!(list(&service, &d).await.status(), 429);
    // A wrong service key is refused.
    let r = service
        .get(d.url("/prime-check-list"))
        .header("x-service-key", "guessed-key-0000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let m = scrape(&d).await;
    for kind in ["whitelist", "service-key", "admin-token"] {
        assert_eq!(
            sample(
                &m,
                &format!(
                    r#"rate_limit_hits_total{{endpoint="prime-check-list",policy="{kind}",result="bypass"}}"#
                )
            ),
            5.0,
            "{kind}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_resets_limits_by_key_pattern() {
    let prefix = Prefix::new("reset");
    let d = daemon(&prefix.0, SHARED_REDIS, "prime-check-list: ip 1/h", &[]);
    let c = client_from("127.0.0.2");
    let other = client_from("127.0.0.3");
    for client in [&c, &other] {
        assert_eq!(list(client, &d).await.status(), 200);
        assert_eq!(list(client, &d).await.status(), 429);
    }
    let out = primed()
        .args(["ratelimit", "reset", "prime-check-list:ip:127.0.0.2"])
        .env("REDIS_HOST", "127.0.0.1")
        .env("REDIS_PORT", SHARED_REDIS.to_string())
        .env("RATE_LIMIT_KEY_PREFIX", &prefix.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "deleted 1 rate-limit keys matching {}:prime-check-list:ip:127.0.0.2",
            prefix.0
        )
    );
    assert_eq!(list(&c, &d).await.status(), 200);
    assert_eq!(
        list(&other, &d).await.status(),
        429,
        "only the matching key"
    );

    // Without Redis there is nothing to reset, and it says so.
    let out = primed().args(["ratelimit", "reset", "*"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Redis is configured"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_is_replaced_by_the_fallback_until_it_answers_again() {
    let mut redis = RedisServer::start();
    let mut d = daemon(
        "ratelimit",
        redis.port,
        "prime-check-list: ip 5/h; prime-check: ip 100/h down=closed",
        &[("RATE_LIMIT_REDIS_TIMEOUT_MS", "200")],
    );
    let c = client_from("127.0.0.2");
    assert_eq!(codes(&c, &d, 6).await, [200, 200, 200, 200, 200, 429]);
    let (code, h) = health(&d).await;
    assert_eq!(h["checks"]["rate_limiter"]["backend"], "redis", "{h}");
    assert_eq!(code, 200, "{h}");

    redis.stop();
    // Still limited: the in-process buckets start full and count from here.
    assert_eq!(codes(&c, &d, 7).await, [200, 200, 200, 200, 200, 429, 429]);
    let (code, h) = health(&d).await;
    assert_eq!(code, 503, "{h}");
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["checks"]["rate_limiter"]["status"], "degraded", "{h}");
    let m = scrape(&d).await;
    assert_eq!(sample(&m, "rate_limit_fallback_active"), 1.0);
    // A fail-closed policy refuses while Redis is away.
    let r = c
        .post(d.url("/prime-check"))
        .json(&json!({"number": "7", "email": "a@b.co"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after").unwrap(), "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limiter_unavailable");
    // The line arrives through the daemon's stdout reader: wait for it, then count.
    d.wait_for_log("Redis does not answer");
    let log = d.log_so_far();
    assert_eq!(
        log.matches("Redis does not answer").count(),
        1,
        "the switch is logged once"
    );

    redis.start_again();
    assert_eventually!(
        health(&d).await.1["checks"]["rate_limiter"]["status"] == "ok",
        "the limiter goes back to Redis"
    );
    d.wait_for_log("Redis answers again");
    // The new Redis is empty and has no script: the limiter loads it and counts there.
    assert_eq!(codes(&c, &d, 6).await, [200, 200, 200, 200, 200, 429]);
    assert_eq!(
        redis
            .cli(&["EXISTS", "ratelimit:prime-check-list:ip:127.0.0.2"])
            .as_deref(),
        Some("1")
    );
    // After SCRIPT FLUSH the script is loaded again within the same check.
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]).as_deref(), Some("OK"));
    let r = list(&c, &d).await;
    assert_eq!(r.status(), 429, "Redis still decides");
    let m = scrape(&d).await;
    assert_eq!(sample(&m, "rate_limit_fallback_active"), 0.0);
    assert_eq!(
        sample(&m, r#"rate_limit_backend_switches_total{to="fallback"}"#),
        1.0,
        "no new fallback after the flush"
    );
    assert_eq!(
        sample(&m, r#"rate_limit_backend_switches_total{to="redis"}"#),
        1.0
    );
    let (code, _) = health(&d).await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_penalty_keeps_a_client_out_after_its_refill() {
    let prefix = Prefix::new("penalty");
    let d = daemon(
        &prefix.0,
        SHARED_REDIS,
        "prime-check-list: ip 10/s burst=1 penalty=1h",
        &[],
    );
    let c = client_from("127.0.0.2");
    assert_eq!(list(&c, &d).await.status(), 200);
    let r = list(&c, &d).await;
    assert_eq!(r.status(), 429);
    let retry = num(&r, "retry-after");
    assert!((3590..=3600).contains(&retry), "the penalty: {retry}");
    // The bucket refills in 100 ms by Redis's clock (the script's TIME); let that clock
    // pass 300 ms: the penalty holds.
    let from = redis_time(SHARED_REDIS);
    assert_eventually!(
        redis_time(SHARED_REDIS) - from >= 0.3,
        "Redis's clock moved 300 ms on"
    );
    let r = list(&c, &d).await;
    assert_eq!(r.status(), 429);
    assert!(num(&r, "retry-after") > 3500);
    // Others are not affected.
    assert_eq!(list(&client_from("127.0.0.3"), &d).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_hangs_costs_one_timeout_then_the_fallback_decides() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let redis = RedisServer::start();
    let mut d = daemon(
        "ratelimit",
        redis.port,
        "prime-check-list: ip 3/h",
        &[("RATE_LIMIT_REDIS_TIMEOUT_MS", "200")],
    );
    let c = client_from("127.0.0.2");
    assert_eq!(codes(&c, &d, 4).await, [200, 200, 200, 429]);
    let pid = Pid::from_raw(redis.pid() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    // The first request waits out the timeout; the rest are decided in-process at once,
    // and the limit still holds.
    assert_eq!(codes(&c, &d, 4).await, [200, 200, 200, 429]);
    // One timeout: the limiter switched to its fallback once, not once per request.
    assert_eq!(
        sample(
            &scrape(&d).await,
            r#"rate_limit_backend_switches_total{to="fallback"}"#
        ),
        1.0
    );
    let (code, h) = health(&d).await;
    assert_eq!(code, 503, "{h}");
    assert_eq!(h["checks"]["rate_limiter"]["status"], "degraded", "{h}");
    assert!(
        h["checks"]["rate_limiter"]["error"]
            .as_str()
            .unwrap()
            .contains("did not answer within 200ms"),
        "{h}"
    );
    kill(pid, Signal::SIGCONT).unwrap();
    assert_eventually!(
        health(&d).await.1["checks"]["rate_limiter"]["status"] == "ok",
        "the limiter goes back to Redis once it answers"
    );
    d.wait_for_log("Redis answers again");
    // Redis kept its buckets while it hung: the client is still out.
    assert_eq!(list(&c, &d).await.status(), 429);
}
