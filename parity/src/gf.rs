//! Arithmetic in GF(2^8) with Linux md's representation: reducing polynomial
//! x^8 + x^4 + x^3 + x^2 + 1 (`0x11D`), generator g = `{02}`.
//!
//! Elements are bytes; addition is XOR; multiplication is polynomial multiplication modulo
//! `0x11D`. Because `{02}` generates the multiplicative group (order 255), every non-zero
//! element is `g^k` for exactly one `k` in `0..255`, so multiplication is `exp[log a + log b]`.
//! The tables here are built at compile time (`const fn`), so nothing is initialised at run time.
//!
//! These scalar helpers are what the recovery code uses to derive its per-stripe constants
//! (`g^-x`, `(g^(y-x) + 1)^-1`, …) and what the tests use as the reference; the bulk kernels
//! multiply whole buffers by a constant through [`nibble_table`] (two 16-entry tables, the shape
//! the `pshufb` kernels need). Any core may call them; they touch no shared state.

/// The reducing polynomial, x^8 + x^4 + x^3 + x^2 + 1.
pub const POLY: u16 = 0x11D;

/// Number of distinct powers of the generator: `g^255 = 1`, so Q can tell apart at most this
/// many data slots (slots `0..=254`).
pub const ORDER: usize = 255;

/// `x · {02}`: shift left, reduce by `0x1D` when the top bit falls out.
#[inline]
pub const fn mul2(x: u8) -> u8 {
    let shifted = (x as u16) << 1;
    if shifted & 0x100 != 0 {
        (shifted ^ POLY) as u8
    } else {
        shifted as u8
    }
}

const fn build_exp() -> [u8; 2 * ORDER] {
    let mut t = [0u8; 2 * ORDER];
    let mut x = 1u8;
    let mut i = 0;
    while i < 2 * ORDER {
        t[i] = x;
        x = mul2(x);
        i += 1;
    }
    t
}

const fn build_log() -> [u8; 256] {
    let exp = build_exp();
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < ORDER {
        t[exp[i] as usize] = i as u8;
        i += 1;
    }
    t
}

/// `EXP[k] = g^k` for `k` in `0..510` (doubled so a sum of two logs needs no reduction).
static EXP: [u8; 2 * ORDER] = build_exp();
/// `LOG[g^k] = k`; `LOG[0]` is meaningless (0 has no logarithm).
static LOG: [u8; 256] = build_log();

/// `g^k` for any `k` (taken modulo 255).
#[inline]
pub fn exp(k: usize) -> u8 {
    EXP[k % ORDER]
}

/// `g^-k` for any `k` (taken modulo 255).
#[inline]
pub fn exp_neg(k: usize) -> u8 {
    EXP[(ORDER - k % ORDER) % ORDER]
}

/// The discrete logarithm: the `k` in `0..255` with `g^k = a`, or `None` for 0.
#[inline]
pub fn log(a: u8) -> Option<usize> {
    if a == 0 {
        None
    } else {
        Some(LOG[a as usize] as usize)
    }
}

/// The product `a · b`.
#[inline]
pub fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        0
    } else {
        EXP[LOG[a as usize] as usize + LOG[b as usize] as usize]
    }
}

/// The multiplicative inverse, or `None` for 0 (which has none). Equals `a^254`.
#[inline]
pub fn inv(a: u8) -> Option<u8> {
    log(a).map(|k| EXP[(ORDER - k) % ORDER])
}

const fn mul_const(a: u8, b: u8) -> u8 {
    // Shift-and-add; used only at compile time to build the nibble tables.
    let mut r = 0u8;
    let mut a = a;
    let mut b = b;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        a = mul2(a);
        b >>= 1;
    }
    r
}

const fn build_nibbles() -> [[u8; 32]; 256] {
    let mut t = [[0u8; 32]; 256];
    let mut c = 0;
    while c < 256 {
        let mut i = 0;
        while i < 16 {
            t[c][i] = mul_const(c as u8, i as u8);
            t[c][16 + i] = mul_const(c as u8, (i << 4) as u8);
            i += 1;
        }
        c += 1;
    }
    t
}

/// For each constant `c`: `[c·0, c·1, …, c·15, c·0x00, c·0x10, …, c·0xF0]`. Multiplication is
/// linear over XOR, so `c·x = low[x & 15] ^ high[x >> 4]`.
static NIBBLES: [[u8; 32]; 256] = build_nibbles();

/// The two 16-entry tables that multiply by `c`: bytes 0..16 for the low nibble, 16..32 for the
/// high nibble (see [`NIBBLES`]). The `pshufb` kernels load them as shuffle tables.
#[inline]
pub(crate) fn nibble_table(c: u8) -> &'static [u8; 32] {
    &NIBBLES[c as usize]
}

/// `c · x` through a nibble table (the scalar form of what the SIMD kernels do).
#[inline]
pub(crate) fn mul_nibble(t: &[u8; 32], x: u8) -> u8 {
    t[(x & 15) as usize] ^ t[16 + (x >> 4) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_has_order_255() {
        let mut seen = [false; 256];
        for k in 0..ORDER {
            let v = exp(k);
            assert!(!seen[v as usize], "g^{k} repeats");
            seen[v as usize] = true;
        }
        assert!(!seen[0]);
        assert_eq!(exp(ORDER), 1);
        assert_eq!(exp(8), 0x1D, "g^8 = x^8 reduces to x^4+x^3+x^2+1");
    }

    #[test]
    fn mul_matches_shift_and_add_everywhere() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(mul(a, b), mul_const(a, b), "{a:#x}·{b:#x}");
                assert_eq!(mul_nibble(nibble_table(a), b), mul(a, b));
            }
        }
    }

    #[test]
    fn inverse_and_log() {
        assert_eq!(inv(0), None);
        assert_eq!(log(0), None);
        for a in 1..=255u8 {
            let i = inv(a).unwrap();
            assert_eq!(mul(a, i), 1, "{a:#x}");
            // The spec's form: v^-1 = v^254.
            let mut p = 1u8;
            for _ in 0..254 {
                p = mul(p, a);
            }
            assert_eq!(p, i);
            assert_eq!(exp(log(a).unwrap()), a);
        }
        for k in 0..600 {
            assert_eq!(mul(exp(k), exp_neg(k)), 1);
        }
    }
}
