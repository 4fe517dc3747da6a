//! AVX2 kernels: 256-bit vectors, four per column step (128 bytes), which keeps four
//! independent Horner chains in flight (the chain `q·g ⊕ d` is four dependent operations).
//! The kernel bodies come from [`simd_kernels!`](super::simd); this file supplies the
//! primitives.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m256i, _mm256_add_epi8, _mm256_and_si256, _mm256_blendv_epi8, _mm256_broadcastsi128_si256, _mm256_loadu_si256,
    _mm256_set1_epi8, _mm256_setzero_si256, _mm256_shuffle_epi8, _mm256_srli_epi16, _mm256_storeu_si256,
    _mm256_xor_si256, _mm_loadu_si128,
};

type V = __m256i;
const W: usize = 32;
const U: usize = 4;

#[target_feature(enable = "avx2")]
#[inline]
fn zero() -> V {
    _mm256_setzero_si256()
}

#[target_feature(enable = "avx2")]
#[inline]
fn splat(b: u8) -> V {
    _mm256_set1_epi8(b as i8)
}

#[target_feature(enable = "avx2")]
#[inline]
fn xor(a: V, b: V) -> V {
    _mm256_xor_si256(a, b)
}

/// `q·g`: bytes with the top bit set get `0x1D` added after the doubling (`pblendvb` picks
/// `poly` or zero by each byte's top bit: one instruction for compare-and-mask).
#[target_feature(enable = "avx2")]
#[inline]
fn mul2(q: V, poly: V) -> V {
    let red = _mm256_blendv_epi8(_mm256_setzero_si256(), poly, q);
    _mm256_xor_si256(_mm256_add_epi8(q, q), red)
}

/// The nibble tables of a constant, each broadcast to both 128-bit lanes (`pshufb` looks up
/// within a lane).
struct Tbl {
    lo: V,
    hi: V,
    mask: V,
}

#[target_feature(enable = "avx2")]
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
        lo: _mm256_broadcastsi128_si256(lo),
        hi: _mm256_broadcastsi128_si256(hi),
        mask: _mm256_set1_epi8(0x0f),
    }
}

/// `c·x` for the constant whose table `t` is.
#[target_feature(enable = "avx2")]
#[inline]
fn mulc(t: &Tbl, x: V) -> V {
    let lo = _mm256_and_si256(x, t.mask);
    let hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), t.mask);
    _mm256_xor_si256(_mm256_shuffle_epi8(t.lo, lo), _mm256_shuffle_epi8(t.hi, hi))
}

/// # Safety
/// `p..p + 32` must be readable.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load(p: *const u8) -> V {
    // SAFETY: the caller guarantees 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// # Safety
/// `p..p + 32` must be writable and not borrowed elsewhere.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store(p: *mut u8, v: V) {
    // SAFETY: the caller guarantees 32 writable bytes; the store is unaligned.
    unsafe { _mm256_storeu_si256(p.cast(), v) }
}

simd_kernels!("avx2");
