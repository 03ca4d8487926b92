//! The rate limiter's costs (BENCHMARKS.md "Rate limiting"):
//!
//! 1. Decision latency over loopback Redis (one `EVALSHA` checking three buckets) next to a
//!    bare `PING` on the same connection, p50/p99, sequential, interleaved in rounds.
//! 2. The in-process fallback: ns per decision, for the bucket arithmetic alone and for a
//!    whole `RateLimiter::check` (key formatting included), over 10,000 client addresses.
//! 3. What the layer costs in requests/s: a minimal HTTP route without it, with it on
//!    Redis, and with it in-process, under 32 concurrent keep-alive clients.
//!
//! `cargo bench --bench ratelimit` (`RL_ROUNDS`, `RL_SECONDS`; Redis at `REDIS_URL`,
//! default `redis://127.0.0.1:6379/`).

// Benchmark code: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::{env_count, pct};
use futures::FutureExt;
use primed::config::policy::{Policy, Scope, parse_policies};
use primed::ratelimit::bucket::LocalLimiter;
use primed::ratelimit::identity::IdentityConfig;
use primed::ratelimit::redis::RedisLimiter;
use primed::ratelimit::{RateLimitSettings, RateLimiter};

const HUGE: &str = "prime-check-list: ip 1000000000/s, user 1000000000/s, global 1000000000/s";

fn settings(prefix: &str, redis_url: Option<String>) -> RateLimitSettings {
    RateLimitSettings {
        endpoints: parse_policies(HUGE).unwrap(),
        default_policy: Policy::new(Scope::Ip, 100, Duration::from_secs(60)),
        instances: 1,
        key_prefix: prefix.to_string(),
        redis_url,
        redis_timeout: Duration::from_secs(1),
        identity: IdentityConfig::default(),
    }
}

async fn latency(redis_url: &str, prefix: &str, rounds: usize) {
    let redis = RedisLimiter::new(redis_url, Duration::from_secs(1)).unwrap();
    let policies = parse_policies(HUGE).unwrap().remove(0).policies;
    let keys: Vec<String> = ["ip:192.0.2.1", "user:alice", "global"]
        .iter()
        .map(|k| format!("{prefix}:prime-check-list:{k}"))
        .collect();
    let checks: Vec<(&str, &Policy)> = keys.iter().map(String::as_str).zip(&policies).collect();
    // Warm up the connection and load the script.
    for _ in 0..1000 {
        redis.ping(Duration::from_secs(1)).await.unwrap();
        redis.check(&checks).await.unwrap();
    }
    let (mut ping, mut check) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for _ in 0..1000 {
            ping.push(redis.ping(Duration::from_secs(1)).await.unwrap());
        }
        for _ in 0..1000 {
            let t0 = Instant::now();
            let v = redis.check(&checks).await.unwrap();
            check.push(t0.elapsed());
            assert!(v.allowed);
        }
    }
    ping.sort();
    check.sort();
    let (p50, p99) = (pct(&ping, 0.5), pct(&ping, 0.99));
    let (c50, c99) = (pct(&check, 0.5), pct(&check, 0.99));
    println!("redis decision vs PING ({} each, sequential)", ping.len());
    println!("  PING                 p50 {p50:>9.1?}  p99 {p99:>9.1?}");
    println!("  limiter (3 buckets)  p50 {c50:>9.1?}  p99 {c99:>9.1?}");
    println!(
        "  ratio                p50 {:.2}x     p99 {:.2}x   (target: p99 within 1.5x)",
        c50.as_secs_f64() / p50.as_secs_f64(),
        c99.as_secs_f64() / p99.as_secs_f64()
    );
    redis.delete_matching(&format!("{prefix}:*")).await.unwrap();
}

fn fallback() {
    let policies = parse_policies(HUGE).unwrap().remove(0).policies;
    let local = LocalLimiter::new();
    let keys: Vec<[String; 3]> = (0..10_000u32)
        .map(|i| {
            [
                format!("ratelimit:prime-check-list:ip:10.0.{}.{}", i / 256, i % 256),
                format!("ratelimit:prime-check-list:user:u{i}"),
                "ratelimit:prime-check-list:global".to_string(),
            ]
        })
        .collect();
    let n = 1_000_000;
    let trials = 5;
    let mut bucket_ns = Vec::new();
    for _ in 0..trials {
        let t0 = Instant::now();
        for i in 0..n {
            let k = &keys[i % keys.len()];
            let checks = [
                (k[0].as_str(), &policies[0]),
                (k[1].as_str(), &policies[1]),
                (k[2].as_str(), &policies[2]),
            ];
            std::hint::black_box(local.check(&checks));
        }
        bucket_ns.push(t0.elapsed().as_nanos() as f64 / n as f64);
    }

    let limiter = RateLimiter::new(settings("ratelimit", None)).unwrap();
    let ips: Vec<IpAddr> = (0..10_000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, (i / 256) as u8, (i % 256) as u8)))
        .collect();
    let mut whole_ns = Vec::new();
    for _ in 0..trials {
        let t0 = Instant::now();
        for i in 0..n {
            let outcome = limiter
                .check("prime-check-list", ips[i % ips.len()], None)
                .now_or_never()
                .unwrap();
            std::hint::black_box(outcome);
        }
        whole_ns.push(t0.elapsed().as_nanos() as f64 / n as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0])
    };
    let (b_med, b_best) = median(&mut bucket_ns);
    let (w_med, w_best) = median(&mut whole_ns);
    println!("in-process fallback ({trials} x {n} decisions, 10,000 clients, one thread)");
    println!(
        "  bucket decision (3 buckets, keys given)   median {b_med:>5.0} ns/op  best {b_best:>5.0}   (target: < 1 µs)"
    );
    println!(
        "  RateLimiter::check (ip + global + keys)   median {w_med:>5.0} ns/op  best {w_best:>5.0}"
    );
}

async fn serve(limiter: Option<Arc<RateLimiter>>) -> SocketAddr {
    let app = Router::new()
        .route("/prime-check-list", get(|| async { "[]" }))
        .route_layer(axum::middleware::from_fn_with_state(
            limiter,
            primed::http::ratelimit::limit,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    addr
}

async fn rate(addr: SocketAddr, seconds: u64) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(32)
        .build()
        .unwrap();
    let url = format!("http://{addr}/prime-check-list");
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (client, url, done) = (client.clone(), url.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    let r = client.get(&url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

async fn layer_cost(redis_url: &str, prefix: &str, seconds: u64) {
    let plain = serve(None).await;
    let redis = Arc::new(RateLimiter::new(settings(prefix, Some(redis_url.to_string()))).unwrap());
    let on_redis = serve(Some(redis.clone())).await;
    let local = serve(Some(Arc::new(
        RateLimiter::new(settings(prefix, None)).unwrap(),
    )))
    .await;
    // Warm-up, then rounds in turn so that the machine's drift hits all three alike.
    rate(plain, 1).await;
    let (mut r_plain, mut r_redis, mut r_local) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        r_plain.push(rate(plain, seconds).await);
        r_redis.push(rate(on_redis, seconds).await);
        r_local.push(rate(local, seconds).await);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r_plain, r_redis, r_local) = (median(r_plain), median(r_redis), median(r_local));
    assert!(
        !redis.is_degraded(),
        "Redis must have decided every request"
    );
    println!(
        "accept rate, minimal route, 32 keep-alive clients, median of 3 rounds of {seconds} s"
    );
    println!("  without the layer          {r_plain:>8.0} req/s");
    println!(
        "  with the layer, Redis      {r_redis:>8.0} req/s  ({:+.0}%)",
        (r_redis / r_plain - 1.0) * 100.0
    );
    println!(
        "  with the layer, in-process {r_local:>8.0} req/s  ({:+.0}%)",
        (r_local / r_plain - 1.0) * 100.0
    );
    RedisLimiter::new(redis_url, Duration::from_secs(5))
        .unwrap()
        .delete_matching(&format!("{prefix}:*"))
        .await
        .unwrap();
}

fn main() {
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_string());
    let rounds = env_count("RL_ROUNDS", 20);
    let seconds = env_count("RL_SECONDS", 3) as u64;
    let prefix = format!("rlbench-{:08x}", rand::random::<u32>());
    fallback();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        latency(&redis_url, &prefix, rounds).await;
        layer_cost(&redis_url, &prefix, seconds).await;
    });
}
