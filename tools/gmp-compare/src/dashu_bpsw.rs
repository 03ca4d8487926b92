//! Scratch: Baillie–PSW on dashu-int's modular ring, to compare with num-bigint.

use dashu_base::BitTest;
use dashu_int::UBig;
use dashu_int::fast_div::ConstDivisor;

pub fn is_bpsw(n: &UBig) -> bool {
    let ring = ConstDivisor::new(n.clone());
    let one = UBig::ONE;
    let n1 = n - &one;
    let s = n1.trailing_zeros().unwrap_or(0);
    let d = &n1 >> s;
    let two = ring.reduce(2u8);
    let mut x = two.pow(&d);
    let r_one = ring.reduce(1u8);
    let r_m1 = ring.reduce(n1.clone());
    let mut ok = x == r_one || x == r_m1;
    if !ok {
        for _ in 1..s {
            x = x.sqr();
            if x == r_m1 {
                ok = true;
                break;
            }
        }
    }
    if !ok {
        return false;
    }
    // Lucas, Q = 1.
    let mut p = 3u64;
    loop {
        let dd = UBig::from(p * p - 4);
        let j = jacobi(&dd, n);
        if j == -1 {
            break;
        }
        if j == 0 {
            return false;
        }
        p += 2;
    }
    let s_total = n + &one;
    let t = s_total.trailing_zeros().unwrap_or(0);
    let sv = &s_total >> t;
    let pm = ring.reduce(p);
    let mut vk = two.clone();
    let mut vk1 = pm.clone();
    let bits = sv.bit_len();
    for bit in (0..bits).rev() {
        if sv.bit(bit) {
            vk = &(&vk * &vk1) - &pm;
            vk1 = &vk1.sqr() - &two;
        } else {
            vk1 = &(&vk * &vk1) - &pm;
            vk = &vk.sqr() - &two;
        }
    }
    let r_m2 = ring.reduce(n - UBig::from(2u8));
    if vk == two || vk == r_m2 {
        return true;
    }
    let zero = ring.reduce(0u8);
    for _ in 1..t {
        if vk == zero {
            return true;
        }
        vk = &vk.sqr() - &two;
    }
    false
}

fn jacobi(a: &UBig, n: &UBig) -> i32 {
    let mut a = a % n;
    let mut n = n.clone();
    let mut result = 1;
    let eight = UBig::from(8u8);
    let four = UBig::from(4u8);
    while a != UBig::ZERO {
        let z = a.trailing_zeros().unwrap_or(0);
        a >>= z;
        let n8 = &n % &eight;
        if z % 2 == 1 && (n8 == UBig::from(3u8) || n8 == UBig::from(5u8)) {
            result = -result;
        }
        if &a % &four == UBig::from(3u8) && &n % &four == UBig::from(3u8) {
            result = -result;
        }
        std::mem::swap(&mut a, &mut n);
        a = &a % &n;
    }
    if n == UBig::ONE { result } else { 0 }
}
