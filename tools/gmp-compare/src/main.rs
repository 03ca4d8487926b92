//! Time per primality test of primes with 100, 1,000 and 5,000 digits: primed's
//! Baillie–PSW (`actors::primality::check`) next to GMP's `mpz_probab_prime_p(n, 25)`
//! (Baillie–PSW plus one Miller–Rabin round in GMP 6.2), on the same numbers in the same run.
//! The primes are found with GMP's `next_prime` from a seeded random start.
//!
//! `cargo run --release --manifest-path tools/gmp-compare/Cargo.toml [digits...]`

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rug::Integer;
use rug::integer::IsPrime;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() { vec![100, 1000, 5000] } else { sizes };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    println!("digits  primed ms  GMP ms  ratio");
    for digits in sizes {
        let mut s = String::new();
        s.push(char::from(b'1' + rng.random_range(0..9u8)));
        for _ in 1..digits {
            s.push(char::from(b'0' + rng.random_range(0..10u8)));
        }
        let start: Integer = s.parse().expect("digits");
        let p = start.next_prime();
        let text = p.to_string();
        let runs = if digits >= 5000 { 3 } else { 10 };
        let ours = median(
            (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    let v = actors::primality::check(&text, None).expect("a number");
                    assert!(v.is_prime);
                    t.elapsed().as_secs_f64() * 1000.0
                })
                .collect(),
        );
        let gmp = median(
            (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    assert_ne!(p.is_probably_prime(25), IsPrime::No);
                    t.elapsed().as_secs_f64() * 1000.0
                })
                .collect(),
        );
        println!("{digits:>6}  {ours:>9.2}  {gmp:>6.2}  {:>5.2}", ours / gmp);
    }
}
