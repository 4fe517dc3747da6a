//! SSSE3 kernels: 128-bit vectors, four per column step (64 bytes), which keeps four
//! independent Horner chains in flight (the chain `q·g ⊕ d` is four dependent operations).
//! The kernel bodies come from [`simd_kernels!`](super::simd); this file supplies the
//! primitives.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m128i, _mm_add_epi8, _mm_and_si128, _mm_cmpgt_epi8, _mm_loadu_si128, _mm_set1_epi8, _mm_setzero_si128,
    _mm_shuffle_epi8, _mm_srli_epi16, _mm_storeu_si128, _mm_xor_si128,
};

type V = __m128i;
const W: usize = 16;
const U: usize = 4;

#[target_feature(enable = "ssse3")]
#[inline]
fn zero() -> V {
    _mm_setzero_si128()
}

#[target_feature(enable = "ssse3")]
#[inline]
fn splat(b: u8) -> V {
    _mm_set1_epi8(b as i8)
}

#[target_feature(enable = "ssse3")]
#[inline]
fn xor(a: V, b: V) -> V {
    _mm_xor_si128(a, b)
}

/// `q·g`: bytes with the top bit set (negative as i8) get `0x1D` added after the doubling.
#[target_feature(enable = "ssse3")]
#[inline]
fn mul2(q: V, poly: V) -> V {
    let top = _mm_cmpgt_epi8(_mm_setzero_si128(), q);
    _mm_xor_si128(_mm_add_epi8(q, q), _mm_and_si128(top, poly))
}

/// The nibble tables of a constant as shuffle vectors.
struct Tbl {
    lo: V,
    hi: V,
    mask: V,
}

#[target_feature(enable = "ssse3")]
#[inline]
fn table(c: u8) -> Tbl {
    let t = crate::gf::nibble_table(c);
    // SAFETY: `t` is 32 readable bytes; each load reads 16 of them.
    let (lo, hi) = unsafe {
        (
            _mm_loadu_si128(t.as_ptr().cast()),
            _mm_loadu_si128(t.as_ptr().add(16).cast()),
        )
    };
    Tbl {
        lo,
        hi,
        mask: _mm_set1_epi8(0x0f),
    }
}

/// `c·x` for the constant whose table `t` is.
#[target_feature(enable = "ssse3")]
#[inline]
fn mulc(t: &Tbl, x: V) -> V {
    let lo = _mm_and_si128(x, t.mask);
    let hi = _mm_and_si128(_mm_srli_epi16(x, 4), t.mask);
    _mm_xor_si128(_mm_shuffle_epi8(t.lo, lo), _mm_shuffle_epi8(t.hi, hi))
}

/// # Safety
/// `p..p + 16` must be readable.
#[target_feature(enable = "ssse3")]
#[inline]
unsafe fn load(p: *const u8) -> V {
    // SAFETY: the caller guarantees 16 readable bytes; the load is unaligned.
    unsafe { _mm_loadu_si128(p.cast()) }
}

/// # Safety
/// `p..p + 16` must be writable and not borrowed elsewhere.
#[target_feature(enable = "ssse3")]
#[inline]
unsafe fn store(p: *mut u8, v: V) {
    // SAFETY: the caller guarantees 16 writable bytes; the store is unaligned.
    unsafe { _mm_storeu_si128(p.cast(), v) }
}

simd_kernels!("ssse3");
