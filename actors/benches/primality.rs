//! Primality test speed: 64-bit numbers (ns per test) and big primes (ms per test).
//!
//! `cargo bench -p actors --bench primality`. Results go in BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use actors::primality::{UBig, check, is_prime_big, is_prime_u64};
use rand::{Rng, SeedableRng};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);

    // Random 64-bit numbers: each timed alone over a batch of 64 repeats (the clock's
    // resolution is ~20 ns), 20,000 numbers.
    let numbers: Vec<u64> = (0..20_000).map(|_| rng.random()).collect();
    let mut per_test: Vec<f64> = numbers
        .iter()
        .map(|&n| {
            let t = Instant::now();
            for _ in 0..64 {
                black_box(is_prime_u64(black_box(n)));
            }
            t.elapsed().as_nanos() as f64 / 64.0
        })
        .collect();
    per_test.sort_by(f64::total_cmp);
    println!(
        "random u64: median {:.1} ns, p99 {:.1} ns, max {:.1} ns ({} numbers)",
        percentile(&per_test, 0.5),
        percentile(&per_test, 0.99),
        per_test[per_test.len() - 1],
        per_test.len()
    );

    // Worst case: primes near 2^64 (every stage runs to the end).
    let mut primes = Vec::new();
    let mut n = u64::MAX;
    while primes.len() < 1000 {
        if is_prime_u64(n) {
            primes.push(n);
        }
        n -= 2;
    }
    // Each prime: the best of 5 batches of 64, so that an interrupt landing in one batch
    // does not count as the test's own cost.
    let mut per_prime: Vec<f64> = primes
        .iter()
        .map(|&p| {
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..64 {
                        black_box(is_prime_u64(black_box(p)));
                    }
                    t.elapsed().as_nanos() as f64 / 64.0
                })
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    per_prime.sort_by(f64::total_cmp);
    println!(
        "64-bit primes (worst case): median {:.1} ns, p99 {:.1} ns, max {:.1} ns ({} primes)",
        percentile(&per_prime, 0.5),
        percentile(&per_prime, 0.99),
        per_prime[per_prime.len() - 1],
        per_prime.len()
    );

    // A 5000-digit search takes minutes (hundreds of candidates at ~1 s each): opt in.
    let sizes: &[usize] = if std::env::var_os("PRIMALITY_5000").is_some() {
        &[100, 1000, 5000]
    } else {
        &[100, 1000]
    };
    for &digits in sizes {
        let p = next_prime(&random_digits(&mut rng, digits), digits);
        let runs = if digits >= 5000 { 3 } else { 10 };
        let mut ms: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                let v = check(black_box(&p), None).map(|v| v.is_prime);
                assert_eq!(v, Ok(true));
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "{digits}-digit prime: median {:.2} ms, min {:.2} ms ({runs} runs)",
            percentile(&ms, 0.5),
            ms[0]
        );
    }
}

fn random_digits(rng: &mut impl Rng, digits: usize) -> UBig {
    let mut s = String::with_capacity(digits);
    s.push(char::from(b'1' + rng.random_range(0..9u8)));
    for _ in 1..digits {
        s.push(char::from(b'0' + rng.random_range(0..10u8)));
    }
    UBig::from_str_radix(&s, 10).unwrap_or(UBig::ONE)
}

/// The first probable prime at or above `from` (the search itself is reported).
fn next_prime(from: &UBig, digits: usize) -> String {
    let t = Instant::now();
    let mut n = if from % 2u64 == 0 {
        from + UBig::ONE
    } else {
        from.clone()
    };
    let mut tried = 0;
    while !is_prime_big(&n) {
        n += UBig::from(2u8);
        tried += 1;
    }
    let took = t.elapsed();
    if took > Duration::from_secs(1) {
        eprintln!("found a {digits}-digit prime after {tried} candidates in {took:.1?}");
    }
    n.to_string()
}
