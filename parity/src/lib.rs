//! Parity math for md raid4, raid5 and raid6: P, Q, read-modify-write updates and recovery,
//! byte-equal to what Linux md writes, vectorised with SSSE3/AVX2 chosen at run time.
//!
//! md (`#![forbid(unsafe_code)]`) calls this crate for every parity byte; the `unsafe` of the
//! `std::arch` kernels lives here, behind a safe API that checks every argument.
//!
//! # The field
//! Parity works byte by byte, each byte an element of GF(2^8): bytes add by XOR and multiply as
//! polynomials over GF(2) modulo x^8 + x^4 + x^3 + x^2 + 1 (`0x11D`). That polynomial is
//! primitive, so `g = {02}` (the polynomial `x`) generates all 255 non-zero elements: every
//! non-zero byte is `g^k` for one `k` in `0..255`, and `g^255 = 1`. Multiplying by `g` is a
//! shift left plus, when the top bit falls out, an XOR with `0x1D`. This is the field and
//! generator of Linux's `lib/raid6` (H. Peter Anvin, "The mathematics of RAID-6") and of
//! ISA-L's `pq_gen`; note it is *not* AES's field (`0x11B`, where `{02}` does not generate).
//! Scalar helpers: [`gf`].
//!
//! # P and Q
//! For the data blocks `D_0 … D_{d-1}` of a stripe:
//! - `P = D_0 ⊕ D_1 ⊕ … ⊕ D_{d-1}` (raid4/5 parity, raid6's first syndrome);
//! - `Q = g^0·D_0 ⊕ g^1·D_1 ⊕ … ⊕ g^{d-1}·D_{d-1}` (raid6's second syndrome), computed by
//!   Horner's rule from the highest slot down, `q = q·g ⊕ D_i`, so generation needs only the
//!   multiply-by-`g` step, never a general multiply.
//!
//! Since `g^i` are distinct for `i < 255`, Q tells at most 255 slots apart ([`MAX_Q_SLOTS`]); md
//! allows 256 raid6 members, i.e. 254 data slots.
//!
//! # md's slot order (what the caller passes)
//! The `i` in `g^i` is the block's md *slot*, and the slot is not always its logical position in
//! the stripe. md numbers the data disks by walking the members from the disk right after Q
//! (wrapping), skipping P. Callers pass `data[i]` = the block in slot `i`; [`md_q_slot`] and
//! [`md_slot_disk`] compute the walk for md's native layouts (0–5, 16–20; for the symmetric
//! layouts 2 and 3, the default, slot = logical index). The DDF layouts (8–10) use the
//! physical disk index as the slot with P's and Q's disks as zero blocks:
//! [`Parity::pq_gen_sparse`]. raid4/5 use P only, where order does not matter.
//!
//! Same field, same generator, same slot order: the Q bytes this crate computes are exactly the
//! ones the kernel writes (and reads back when it reconstructs), so arrays move between Keel and
//! Linux in either direction. The unit tests hold it to the vector md-personalities.md §6.2
//! captured from a Linux 6.12 array, and the benchmark checks every output against ISA-L's.
//!
//! # Recovery
//! Let P', Q' be P and Q computed with the lost data blocks taken as zero, `Px = P ⊕ P'`,
//! `Qx = Q ⊕ Q'`. Then (md-personalities.md §6.3):
//! - one data block `x` lost, P present: `D_x = Px` ([`Parity::rebuild_from_p`]);
//! - `D_x` and P lost: `Qx = g^x·D_x`, so `D_x = g^-x·Qx` ([`Parity::rebuild_from_q`]), then P
//!   is regenerated;
//! - `D_x` and Q lost: `D_x` from P, then Q is regenerated; P and Q lost: regenerate both;
//! - two data blocks `x < y` lost: `Px = D_x ⊕ D_y` and `Qx = g^x·D_x ⊕ g^y·D_y`; substituting
//!   `D_x = Px ⊕ D_y` gives `D_y = (g^(y-x) ⊕ 1)^-1·Px ⊕ (g^x ⊕ g^y)^-1·Qx`, then
//!   `D_x = Px ⊕ D_y` ([`Parity::rebuild_two`]). The two constants are computed once per call;
//!   the per-byte work is two table multiplies and three XORs.
//!
//! Read-modify-write uses linearity: changing `D_i` from `old` to `new` changes P by
//! `old ⊕ new` and Q by `g^i·(old ⊕ new)` ([`Parity::pq_update`]), so a 4 KiB raid6 write reads
//! old data, P and Q and writes all three without touching the other data blocks.
//!
//! # Implementations
//! [`Impl::Portable`] (safe Rust on u64 words), [`Impl::Ssse3`] and [`Impl::Avx2`]
//! (`std::arch`: multiply by `g` with add, a top-bit select of `0x1D` and xor, multiply by a
//! constant with two `pshufb` lookups on the nibbles). [`Impl::best`] picks the fastest the CPU supports with
//! `is_x86_feature_detected!` on first use and caches it; the free functions below use it, and
//! [`Parity::new`] forces one (tests, the benchmark). Every implementation produces the same
//! bytes; property tests compare each with a byte-at-a-time reference.
//!
//! # Callers, buffers, cost
//! Any core may call anything here at any time: no state is shared except the cached
//! detection. The caller owns every buffer for the duration of the call (md: the stripe's member
//! buffers on its reactor); data blocks are borrowed through [`std::ops::Deref`] (`&[u8]`,
//! `Vec<u8>`, `Ref<[u8]>` of a `DmaBuf`), P, Q and outputs as `&mut [u8]`. Nothing allocates or
//! locks, so every function is fit for the data path. Bad arguments (unequal lengths, too many
//! slots, the wrong number of missing blocks) return a [`ParityError`], never panic.
//!
//! # Map
//! - [`gf`]: scalar field arithmetic and the tables.
//! - `engine`: [`Parity`], argument checks, the planner that cuts a stripe into kernel runs.
//! - `kernel`: [`Impl`] and the portable, SSSE3 and AVX2 kernels.
//! - `slot`: md's slot order ([`md_q_slot`], [`md_slot_disk`]).
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use std::ops::Deref;

mod engine;
mod error;
pub mod gf;
mod kernel;
mod slot;

pub use engine::{Parity, PqCheck};
pub use error::ParityError;
pub use kernel::Impl;
pub use slot::{md_q_slot, md_slot_disk};

/// Most data slots Q can tell apart: `g^255 = 1`, so slots are `0..255`.
pub const MAX_Q_SLOTS: usize = gf::ORDER;

/// [`Parity::xor_gen`] with the best implementation.
pub fn xor_gen<D: Deref<Target = [u8]>>(data: &[D], p: &mut [u8]) -> Result<(), ParityError> {
    Parity::best().xor_gen(data, p)
}

/// [`Parity::xor_acc`] with the best implementation.
pub fn xor_acc<D: Deref<Target = [u8]>>(data: &[D], p: &mut [u8]) -> Result<(), ParityError> {
    Parity::best().xor_acc(data, p)
}

/// [`Parity::pq_gen`] with the best implementation.
pub fn pq_gen<D: Deref<Target = [u8]>>(data: &[D], p: &mut [u8], q: &mut [u8]) -> Result<(), ParityError> {
    Parity::best().pq_gen(data, p, q)
}

/// [`Parity::pq_update`] with the best implementation.
pub fn pq_update(slot: usize, old: &[u8], new: &[u8], p: &mut [u8], q: &mut [u8]) -> Result<(), ParityError> {
    Parity::best().pq_update(slot, old, new, p, q)
}
