//! Primality testing: deterministic for 64-bit numbers, Baillie–PSW beyond.
//!
//! Both sizes run the same test: trial division by the primes below 1,000 (which also finds
//! the "small factor" reported for most composites), a strong Fermat (Miller–Rabin) test to
//! base 2, and an almost-extra-strong Lucas test with Q = 1 (PARI/GP's choice of Baillie–PSW).
//! No composite below 2^64 passes both (checked against Feitsma's list of base-2
//! pseudoprimes), so the answer is exact for `u64`; above that, no counterexample is known.
//!
//! 64-bit numbers use Montgomery multiplication (no divisions in the inner loops). Larger
//! numbers use `dashu-int`'s residues modulo a precomputed divisor, check the deadline every
//! 64 exponent bits and give up with
//! [`PrimalityError::TimedOut`] once it has passed. Everything here is CPU-bound and
//! synchronous: callers run it on a blocking thread.

use std::time::Instant;

use dashu_base::{BitTest, SquareRoot};
pub use dashu_int::UBig;
use dashu_int::fast_div::ConstDivisor;

/// The answer for one number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the number is prime.
    pub is_prime: bool,
    /// A small prime factor of a composite, when trial division found one.
    pub factor: Option<String>,
    /// Decimal digits of the number.
    pub digits: usize,
}

/// The test could not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrimalityError {
    /// The input is not a non-negative decimal integer.
    #[error("{0:?} is not a non-negative decimal integer")]
    NotANumber(String),
    /// The test did not finish before its deadline.
    #[error(
        "the primality test of a {digits}-digit number did not finish within its time limit; raise PRIMED_PRIME_TIMEOUT_MS or lower PRIMED_MAX_DIGITS"
    )]
    TimedOut {
        /// Decimal digits of the number.
        digits: usize,
    },
}

/// Primes below 1,000: trial divisors.
const SMALL_PRIMES: [u16; 168] = small_primes();

const fn small_primes() -> [u16; 168] {
    let mut out = [0u16; 168];
    let mut count = 0;
    let mut n = 2u16;
    while n < 1000 {
        let mut d = 2u16;
        let mut prime = true;
        while d * d <= n {
            if n.is_multiple_of(d) {
                prime = false;
                break;
            }
            d += 1;
        }
        if prime {
            out[count] = n;
            count += 1;
        }
        n += 1;
    }
    out
}

/// Tests a decimal number. `deadline` bounds the work for numbers above 64 bits.
pub fn check(number: &str, deadline: Option<Instant>) -> Result<Verdict, PrimalityError> {
    let trimmed = number.trim_start_matches('0');
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PrimalityError::NotANumber(truncate(number)));
    }
    let digits = trimmed.len().max(1);
    let small = if trimmed.is_empty() {
        Some(0)
    } else {
        trimmed.parse::<u64>().ok()
    };
    let (is_prime, factor) = match small {
        Some(n) => classify_u64(n),
        None => {
            let n = UBig::from_str_radix(trimmed, 10)
                .map_err(|_| PrimalityError::NotANumber(truncate(number)))?;
            classify_big(&n, deadline).ok_or(PrimalityError::TimedOut { digits })?
        }
    };
    Ok(Verdict {
        is_prime,
        factor: factor.map(|f| f.to_string()),
        digits,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Whether `n` is prime (exact for every `u64`).
pub fn is_prime_u64(n: u64) -> bool {
    classify_u64(n).0
}

/// For each odd small prime p: p⁻¹ mod 2^64 and ⌊(2^64 − 1) / p⌋. `n` is a multiple of p
/// exactly when `n · p⁻¹ mod 2^64 ≤ ⌊(2^64 − 1) / p⌋`: a multiplication instead of a
/// division (which costs ten times more), so trial division takes ~1 ns per prime.
const DIVISIBILITY: [(u64, u64); 167] = divisibility();

const fn divisibility() -> [(u64, u64); 167] {
    let mut out = [(0u64, 0u64); 167];
    let mut i = 0;
    while i < 167 {
        let p = SMALL_PRIMES[i + 1] as u64;
        let mut inv = p;
        let mut k = 0;
        while k < 6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(p.wrapping_mul(inv)));
            k += 1;
        }
        out[i] = (inv, u64::MAX / p);
        i += 1;
    }
    out
}

/// Whether `n` is prime, and a small factor when trial division finds one.
fn classify_u64(n: u64) -> (bool, Option<u64>) {
    if n < 2 {
        return (false, None);
    }
    if n.is_multiple_of(2) {
        return (n == 2, (n != 2).then_some(2));
    }
    for (i, &(inv, limit)) in DIVISIBILITY.iter().enumerate() {
        if n.wrapping_mul(inv) <= limit {
            let p = u64::from(SMALL_PRIMES[i + 1]);
            return if n == p {
                (true, None)
            } else {
                (false, Some(p))
            };
        }
    }
    if n < 1_000_000 {
        // Every composite below 1000² has a factor below 1000.
        return (true, None);
    }
    let m = Montgomery::new(n);
    (m.strong_fermat_base2() && m.lucas(), None)
}

/// Arithmetic modulo an odd `n` in Montgomery form (R = 2^64).
struct Montgomery {
    n: u64,
    /// n⁻¹ mod 2^64.
    inv: u64,
    /// R mod n: 1 in Montgomery form.
    one: u64,
}

impl Montgomery {
    fn new(n: u64) -> Self {
        debug_assert!(n % 2 == 1);
        // Newton's iteration doubles the correct low bits each step: 1 → 64 in 6 steps.
        let mut inv = n;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(n.wrapping_mul(inv)));
        }
        // 2^64 mod n without a 128-bit division.
        let one = (u64::MAX % n + 1) % n;
        Self { n, inv, one }
    }

    /// A small `x` into Montgomery form, by doubling and adding (no division).
    fn small_to_mont(&self, x: u64) -> u64 {
        let mut acc = 0;
        for bit in (0..64 - x.leading_zeros()).rev() {
            acc = self.add(acc, acc);
            if (x >> bit) & 1 == 1 {
                acc = self.add(acc, self.one);
            }
        }
        acc
    }

    /// REDC(a·b) for a, b < n.
    #[inline(always)]
    fn mul(&self, a: u64, b: u64) -> u64 {
        let t = u128::from(a) * u128::from(b);
        let lo = t as u64;
        let hi = (t >> 64) as u64;
        let m = lo.wrapping_mul(self.inv);
        let mn_hi = ((u128::from(m) * u128::from(self.n)) >> 64) as u64;
        let (r, borrow) = hi.overflowing_sub(mn_hi);
        if borrow { r.wrapping_add(self.n) } else { r }
    }

    #[inline(always)]
    fn add(&self, a: u64, b: u64) -> u64 {
        let (s, carry) = a.overflowing_add(b);
        if carry || s >= self.n {
            s.wrapping_sub(self.n)
        } else {
            s
        }
    }

    #[inline(always)]
    fn sub(&self, a: u64, b: u64) -> u64 {
        let (d, borrow) = a.overflowing_sub(b);
        if borrow { d.wrapping_add(self.n) } else { d }
    }

    /// Strong probable prime to base 2.
    fn strong_fermat_base2(&self) -> bool {
        let n1 = self.n - 1;
        let s = n1.trailing_zeros();
        let d = n1 >> s;
        // 2^d, left to right; multiplying by the base 2 is a doubling.
        let mut x = self.one;
        for bit in (0..64 - d.leading_zeros()).rev() {
            x = self.mul(x, x);
            if (d >> bit) & 1 == 1 {
                x = self.add(x, x);
            }
        }
        let minus_one = self.n - self.one;
        if x == self.one || x == minus_one {
            return true;
        }
        for _ in 1..s {
            x = self.mul(x, x);
            if x == minus_one {
                return true;
            }
        }
        false
    }

    /// Almost-extra-strong Lucas probable prime with Q = 1 and P the first of 3, 5, 7, …
    /// with Jacobi(P² − 4, n) = −1.
    fn lucas(&self) -> bool {
        let n = self.n;
        let mut p = 3u64;
        loop {
            let d = p * p - 4;
            match jacobi_u64(d, n) {
                -1 => break,
                0 if !d.is_multiple_of(n) => return false,
                _ => {}
            }
            p += 2;
            if p == 17 && is_square_u64(n) {
                return false;
            }
        }
        let s_total = n.wrapping_add(1);
        // n is odd and below 2^64 − 1 here (it is prime-sized and not all ones… check).
        if s_total == 0 {
            // n = 2^64 − 1 = 3·5·17·257·641·65537·6700417 is caught by trial division.
            return false;
        }
        let t = s_total.trailing_zeros();
        let s = s_total >> t;
        let two = self.add(self.one, self.one);
        let pm = self.small_to_mont(p);
        // Ladder over (V_k, V_{k+1}) from k = 0.
        let mut vk = two;
        let mut vk1 = pm;
        for bit in (0..64 - s.leading_zeros()).rev() {
            if (s >> bit) & 1 == 1 {
                vk = self.sub(self.mul(vk, vk1), pm);
                vk1 = self.sub(self.mul(vk1, vk1), two);
            } else {
                vk1 = self.sub(self.mul(vk, vk1), pm);
                vk = self.sub(self.mul(vk, vk), two);
            }
        }
        if vk == two || vk == n - two {
            return true;
        }
        for _ in 1..t {
            if vk == 0 {
                return true;
            }
            vk = self.sub(self.mul(vk, vk), two);
        }
        false
    }
}

/// Jacobi symbol (a/n) for odd n.
fn jacobi_u64(a: u64, n: u64) -> i32 {
    let mut a = a % n;
    let mut n = n;
    let mut result = 1;
    while a != 0 {
        let z = a.trailing_zeros();
        a >>= z;
        if z % 2 == 1 && (n % 8 == 3 || n % 8 == 5) {
            result = -result;
        }
        if a % 4 == 3 && n % 4 == 3 {
            result = -result;
        }
        std::mem::swap(&mut a, &mut n);
        a %= n;
    }
    if n == 1 { result } else { 0 }
}

fn is_square_u64(n: u64) -> bool {
    let r = n.isqrt();
    r * r == n
}

/// Whether `n` is prime and a small factor, or `None` when the deadline passed.
fn classify_big(n: &UBig, deadline: Option<Instant>) -> Option<(bool, Option<u64>)> {
    for &p in &SMALL_PRIMES {
        if n % u64::from(p) == 0 {
            return Some((false, Some(u64::from(p))));
        }
    }
    let clock = Clock { deadline };
    // Residues modulo n, reduced with a precomputed divisor (no full division per step).
    let ring = ConstDivisor::new(n.clone());
    if !strong_fermat_base2_big(n, &ring, &clock)? {
        return Some((false, None));
    }
    Some((lucas_big(n, &ring, &clock)?, None))
}

struct Clock {
    deadline: Option<Instant>,
}

impl Clock {
    /// `None` once the deadline has passed.
    fn tick(&self) -> Option<()> {
        match self.deadline {
            Some(d) if Instant::now() >= d => None,
            _ => Some(()),
        }
    }
}

/// Exponent bits handled between deadline checks.
const BLOCK_BITS: usize = 64;

fn strong_fermat_base2_big(n: &UBig, ring: &ConstDivisor, clock: &Clock) -> Option<bool> {
    let n1 = n - UBig::ONE;
    let s = n1.trailing_zeros().unwrap_or(0);
    let d = &n1 >> s;
    // 2^d, left to right: square, and double where d has a one (the base is 2).
    let one = ring.reduce(1u8);
    let minus_one = ring.reduce(n1.clone());
    let mut x = one.clone();
    for bit in (0..d.bit_len()).rev() {
        if bit % BLOCK_BITS == 0 {
            clock.tick()?;
        }
        x = x.sqr();
        if d.bit(bit) {
            x = x.dbl();
        }
    }
    if x == one || x == minus_one {
        return Some(true);
    }
    for _ in 1..s {
        clock.tick()?;
        x = x.sqr();
        if x == minus_one {
            return Some(true);
        }
    }
    Some(false)
}

fn jacobi_big(a: u64, n: &UBig) -> i32 {
    // (a/n) for small a: take out the twos, then reciprocity turns it into (n mod a / a).
    let r = n % a;
    let n_mod8 = n % 8u64;
    let mut a = a;
    let mut result = 1;
    let z = a.trailing_zeros();
    a >>= z;
    if z % 2 == 1 && (n_mod8 == 3 || n_mod8 == 5) {
        result = -result;
    }
    if a == 1 {
        return result;
    }
    if a % 4 == 3 && n_mod8 % 4 == 3 {
        result = -result;
    }
    result * jacobi_u64(r % a, a)
}

fn lucas_big(n: &UBig, ring: &ConstDivisor, clock: &Clock) -> Option<bool> {
    let mut p = 3u64;
    loop {
        let d = p * p - 4;
        match jacobi_big(d, n) {
            -1 => break,
            0 => return Some(false),
            _ => {}
        }
        p += 2;
        if p == 17 {
            let r = n.sqrt();
            if &(&r * &r) == n {
                return Some(false);
            }
        }
    }
    let s_total = n + UBig::ONE;
    let t = s_total.trailing_zeros().unwrap_or(0);
    let s = &s_total >> t;
    let two = ring.reduce(2u8);
    let pm = ring.reduce(p);
    // Ladder over (V_k, V_{k+1}) from k = 0.
    let mut vk = two.clone();
    let mut vk1 = pm.clone();
    for bit in (0..s.bit_len()).rev() {
        if bit % BLOCK_BITS == 0 {
            clock.tick()?;
        }
        if s.bit(bit) {
            vk = &(&vk * &vk1) - &pm;
            vk1 = &vk1.sqr() - &two;
        } else {
            vk1 = &(&vk * &vk1) - &pm;
            vk = &vk.sqr() - &two;
        }
    }
    let minus_two = ring.reduce(n - UBig::from(2u8));
    if vk == two || vk == minus_two {
        return Some(true);
    }
    let zero = ring.reduce(0u8);
    for _ in 1..t {
        if vk == zero {
            return Some(true);
        }
        clock.tick()?;
        vk = &vk.sqr() - &two;
    }
    Some(false)
}

/// Whether `n` is prime, without a deadline (for tests and benchmarks).
pub fn is_prime_big(n: &UBig) -> bool {
    match u64::try_from(n) {
        Ok(small) => is_prime_u64(small),
        Err(_) => classify_big(n, None).is_some_and(|(prime, _)| prime),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(n: u64) -> bool {
        if n < 2 {
            return false;
        }
        let mut d = 2;
        while d * d <= n {
            if n.is_multiple_of(d) {
                return false;
            }
            d += 1;
        }
        true
    }

    #[test]
    fn agrees_with_a_sieve_below_two_million() {
        const N: usize = 2_000_000;
        let mut sieve = vec![true; N];
        sieve[0] = false;
        sieve[1] = false;
        let mut i = 2;
        while i * i < N {
            if sieve[i] {
                (i * i..N).step_by(i).for_each(|j| sieve[j] = false);
            }
            i += 1;
        }
        for (n, &prime) in sieve.iter().enumerate() {
            assert_eq!(is_prime_u64(n as u64), prime, "{n}");
        }
        assert!((0..1000).all(|n| naive(n) == sieve[n as usize]));
    }

    #[test]
    fn base2_pseudoprimes_and_carmichaels_are_composite() {
        // Strong pseudoprimes to base 2, Carmichael numbers, and squares of primes.
        for n in [
            2047u64,
            3277,
            4033,
            4681,
            8321,
            561,
            1105,
            1729,
            3215031751,
            2152302898747,
            3474749660383,
            341550071728321,
            3825123056546413051,
            1_000_003u64 * 1_000_033,
            4_294_967_291u64 * 4_294_967_279,
            999_999_937u64 * 999_999_937,
        ] {
            assert!(!is_prime_u64(n), "{n} is composite");
        }
    }

    #[test]
    fn known_primes_near_the_top_of_u64() {
        for p in [
            18446744073709551557u64, // largest 64-bit prime
            9223372036854775783,     // largest below 2^63
            4294967291,
            1_000_000_007,
            999_999_999_989,
        ] {
            assert!(is_prime_u64(p), "{p}");
        }
        assert!(!is_prime_u64(u64::MAX));
        assert!(!is_prime_u64(18446744073709551557 - 2));
    }

    #[test]
    fn big_numbers() {
        // 2^127 − 1 and 2^521 − 1 are Mersenne primes; 2^128 + 1 is composite (Fermat F7).
        let m127 = (UBig::ONE << 127) - UBig::ONE;
        let m521 = (UBig::ONE << 521) - UBig::ONE;
        let f7 = (UBig::ONE << 128) + UBig::ONE;
        assert!(is_prime_big(&m127));
        assert!(is_prime_big(&m521));
        assert!(!is_prime_big(&f7));
        assert!(!is_prime_big(&(&m127 * &m521)));
        // A product of two 64-bit primes has no small factor: only the strong tests catch it.
        let pq = UBig::from(18446744073709551557u64) * UBig::from(9223372036854775783u64);
        assert!(!is_prime_big(&pq));
        let v = check(&pq.to_string(), None).unwrap();
        assert_eq!((v.is_prime, v.factor, v.digits), (false, None, 39));
    }

    #[test]
    fn check_reports_small_factors_and_digits() {
        let v = check("1000000000000000000000000000002", None).unwrap();
        assert_eq!(
            (v.is_prime, v.factor.as_deref(), v.digits),
            (false, Some("2"), 31)
        );
        let v = check("91", None).unwrap();
        assert_eq!((v.is_prime, v.factor.as_deref()), (false, Some("7")));
        let v = check("0", None).unwrap();
        assert_eq!((v.is_prime, v.digits), (false, 1));
        let v = check("0007", None).unwrap();
        assert_eq!((v.is_prime, v.digits), (true, 1));
        assert!(matches!(
            check("12a", None),
            Err(PrimalityError::NotANumber(_))
        ));
        assert!(matches!(
            check("", None),
            Err(PrimalityError::NotANumber(_))
        ));
        assert!(matches!(
            check("-7", None),
            Err(PrimalityError::NotANumber(_))
        ));
    }

    #[test]
    fn a_passed_deadline_times_out_big_numbers_only() {
        let past = Some(Instant::now());
        let m521 = ((UBig::ONE << 521) - UBig::ONE).to_string();
        assert_eq!(
            check(&m521, past),
            Err(PrimalityError::TimedOut { digits: 157 })
        );
        // 64-bit numbers take well under a microsecond: no deadline applies.
        assert!(check("18446744073709551557", past).unwrap().is_prime);
    }

    proptest! {
        #[test]
        fn u64_path_agrees_with_the_big_path(n in any::<u64>()) {
            let big = UBig::from(n);
            let small = is_prime_u64(n);
            if n > 1_000_000 && n % 2 == 1 {
                prop_assert_eq!(classify_big(&big, None).map(|r| r.0), Some(small));
            }
        }

        #[test]
        fn products_are_composite(a in 2u64..u32::MAX as u64, b in 2u64..u32::MAX as u64) {
            prop_assert!(!is_prime_u64(a * b));
            prop_assert!(!is_prime_big(&(UBig::from(a) * UBig::from(b) * UBig::from(u64::MAX))));
        }
    }
}
