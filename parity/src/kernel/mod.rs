//! The bulk kernels, one module per instruction set, and the switch between them.
//!
//! Every implementation provides the same four operations on equal-length byte slices:
//! - `gen`: P and/or Q of up to [`GROUP`] sources given in ascending slot order, by Horner's rule
//!   from the last source down (`q = q·g ⊕ D`), either fresh or continuing from what the outputs
//!   already hold (P xor-accumulates, Q is first multiplied by a constant, which is how
//!   [`crate::Parity`] chains groups and skips missing slots).
//! - `mul_xor`: `buf = c·(buf ⊕ other)` (one data block rebuilt from Q).
//! - `update`: `d = old ⊕ new; P ^= d; Q ^= c·d` (read-modify-write).
//! - `two_data`: the last step of rebuilding two data blocks from P and Q.
//!
//! [`portable`] is plain safe Rust (u64 words, nibble tables); [`ssse3`] and [`avx2`] use
//! `std::arch` (multiply by `g`: add the vector to itself, select `0x1D` where the top bit was
//! set — compare+and on SSSE3, `pblendvb` on AVX2 — and xor; multiply by a constant: two
//! `pshufb` table lookups on the nibbles). The SIMD kernels run their vector loop over whole vectors and
//! hand the last `len % step` bytes to the portable kernel. Each SIMD kernel is a
//! `#[target_feature]` function: calling it is sound only on a CPU with that feature, which
//! [`Impl::is_supported`] checks and [`crate::Parity::new`] enforces before any call is possible.
//!
//! Contract of every kernel (the engine guarantees it; the kernels assert it, since their
//! pointer arithmetic relies on it): all slices of one call have one length, and `gen` gets at
//! most [`GROUP`] sources.

use std::sync::OnceLock;

pub(crate) mod portable;
#[cfg(target_arch = "x86_64")]
#[macro_use]
mod simd;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod ssse3;

/// Sources per kernel call. The engine feeds longer stripes in groups of this many, each group
/// continuing from the previous one's P and Q (one extra pass over P and Q per group).
pub(crate) const GROUP: usize = 32;

/// How `gen` starts its outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// P and Q start at zero (the previous contents are ignored).
    Fresh,
    /// P and Q start from their current contents, Q multiplied by the constant first
    /// (`g^gap` for `gap` skipped zero slots; 1 for none).
    Continue(u8),
}

/// An implementation of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Impl {
    /// Safe Rust on u64 words; any CPU. The reference the others are tested against.
    Portable,
    /// 128-bit SSSE3 (`pshufb`) kernels.
    Ssse3,
    /// 256-bit AVX2 kernels.
    Avx2,
}

impl Impl {
    /// Every implementation, slowest first.
    pub const ALL: [Impl; 3] = [Impl::Portable, Impl::Ssse3, Impl::Avx2];

    /// Whether this CPU can run the implementation (CPUID, through `is_x86_feature_detected!`).
    pub fn is_supported(self) -> bool {
        match self {
            Impl::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Impl::Ssse3 => std::arch::is_x86_feature_detected!("ssse3"),
            #[cfg(target_arch = "x86_64")]
            Impl::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest implementation this CPU supports, detected on the first call and cached.
    pub fn best() -> Impl {
        static BEST: OnceLock<Impl> = OnceLock::new();
        *BEST.get_or_init(|| {
            Impl::ALL
                .into_iter()
                .rev()
                .find(|i| i.is_supported())
                .unwrap_or(Impl::Portable)
        })
    }

    /// Lower-case name, as the benchmark prints it.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Portable => "portable",
            Impl::Ssse3 => "ssse3",
            Impl::Avx2 => "avx2",
        }
    }
}

/// Runs `$m::$f::<WP, WQ>` for the outputs present.
macro_rules! with_outputs {
    ($m:ident :: $f:ident, $p:expr, $q:expr, |$pp:ident, $qq:ident| ($($arg:expr),*)) => {{
        match ($p, $q) {
            (Some($pp), Some($qq)) => $m::$f::<true, true>($($arg),*),
            (Some($pp), None) => {
                let $qq: &mut [u8] = &mut [];
                $m::$f::<true, false>($($arg),*)
            }
            (None, Some($qq)) => {
                let $pp: &mut [u8] = &mut [];
                $m::$f::<false, true>($($arg),*)
            }
            (None, None) => {}
        }
    }};
}

/// P and/or Q of `srcs` (ascending slots) into `p` / `q`; see [`Start`].
#[allow(unsafe_code)] // the SIMD calls; see each SAFETY note
pub(crate) fn gen(imp: Impl, srcs: &[&[u8]], p: Option<&mut [u8]>, q: Option<&mut [u8]>, start: Start) {
    match imp {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Impl::Avx2` reaches here only through a `Parity` that checked
        // `Impl::is_supported` (AVX2 detected); the kernel's slice contract is asserted inside.
        Impl::Avx2 => unsafe { with_outputs!(avx2::gen, p, q, |pp, qq| (srcs, pp, qq, start)) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, SSSE3 detected.
        Impl::Ssse3 => unsafe { with_outputs!(ssse3::gen, p, q, |pp, qq| (srcs, pp, qq, start)) },
        _ => with_outputs!(portable::gen, p, q, |pp, qq| (srcs, pp, qq, start)),
    }
}

/// `buf = c·(buf ⊕ other)`.
#[allow(unsafe_code)] // the SIMD calls; see each SAFETY note
pub(crate) fn mul_xor(imp: Impl, c: u8, buf: &mut [u8], other: &[u8]) {
    match imp {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 detected (see `gen`).
        Impl::Avx2 => unsafe { avx2::mul_xor(c, buf, other) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSSE3 detected (see `gen`).
        Impl::Ssse3 => unsafe { ssse3::mul_xor(c, buf, other) },
        _ => portable::mul_xor(c, buf, other),
    }
}

/// `d = old ⊕ new; p ^= d; q ^= c·d`, for the outputs present.
#[allow(unsafe_code)] // the SIMD calls; see each SAFETY note
pub(crate) fn update(imp: Impl, c: u8, old: &[u8], new: &[u8], p: Option<&mut [u8]>, q: Option<&mut [u8]>) {
    match imp {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 detected (see `gen`).
        Impl::Avx2 => unsafe { with_outputs!(avx2::update, p, q, |pp, qq| (c, old, new, pp, qq)) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSSE3 detected (see `gen`).
        Impl::Ssse3 => unsafe { with_outputs!(ssse3::update, p, q, |pp, qq| (c, old, new, pp, qq)) },
        _ => with_outputs!(portable::update, p, q, |pp, qq| (c, old, new, pp, qq)),
    }
}

/// With `px = P' ⊕ P` and `qx = Q' ⊕ Q` (P', Q' computed with both lost blocks as zero):
/// `dy = a·px ⊕ b·qx`, `dx = px ⊕ dy`; `px_out` (holding P') becomes `dx`, `qx_out` (holding
/// Q') becomes `dy`.
#[allow(unsafe_code)] // the SIMD calls; see each SAFETY note
pub(crate) fn two_data(imp: Impl, a: u8, b: u8, px_out: &mut [u8], qx_out: &mut [u8], p: &[u8], q: &[u8]) {
    match imp {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 detected (see `gen`).
        Impl::Avx2 => unsafe { avx2::two_data(a, b, px_out, qx_out, p, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSSE3 detected (see `gen`).
        Impl::Ssse3 => unsafe { ssse3::two_data(a, b, px_out, qx_out, p, q) },
        _ => portable::two_data(a, b, px_out, qx_out, p, q),
    }
}
