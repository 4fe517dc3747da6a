//! [`Parity`]: the public operations, their argument checks, and the planner that feeds the
//! kernels.
//!
//! Every operation is a handful of kernel passes over caller-owned buffers. Generation walks the
//! data slots from the highest down (Horner's rule for Q), cut into *runs*: at most
//! [`GROUP`] present, consecutive slots per kernel call. The first run starts P and Q fresh;
//! each later run continues from what the outputs hold, Q first multiplied by `g^gap` for the
//! zero (missing) slots between the runs; if the lowest present slot is above 0, a last pass
//! multiplies Q by `g^lowest`. A dense stripe of up to 32 data blocks is therefore one kernel
//! call; missing blocks (recovery, DDF gaps) cost one extra pass over P and Q per gap. (Inside
//! a call, a stripe wider than an L1 set's ways works through 4 KiB column blocks in a few
//! passes; see the kernel's `PASS_STREAMS`.)
//!
//! Nothing here allocates: the runs are gathered into a stack array of slices, the check
//! helpers compute parity a column of [`CHECK_COLUMN`] bytes at a time into stack buffers.

use std::ops::Deref;

use crate::kernel::{self, Impl, Start, GROUP};
use crate::{gf, ParityError, MAX_Q_SLOTS};

/// Bytes of parity the check helpers compute at a time (on the stack) before comparing.
const CHECK_COLUMN: usize = 1024;

/// A handle on one kernel implementation. `Copy`; any core may hold one and call it, on buffers
/// the caller owns for the duration of the call (the md stripe's member buffers).
///
/// Data blocks are passed as a slice of anything that derefs to bytes (`&[u8]`, `&mut [u8]`,
/// `Vec<u8>`, a `Ref<[u8]>` borrowed from a `DmaBuf`), so the caller lends its buffers as they
/// are, without copying or gathering them first. **Index = Q slot**: `data[i]` is the data
/// block with md slot `i` (see [`crate::md_q_slot`]; for raid4/5, P-only operations, any
/// order). Every block, P, Q and output of one call must have the same length; any length works
/// (the vector loops take whole vectors, the rest goes through the portable code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parity {
    imp: Impl,
}

/// Result of [`Parity::check_pq`]: the first byte offset at which the stored P and Q differ
/// from the recomputed ones, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PqCheck {
    /// First differing byte of P.
    pub p_mismatch_byte: Option<usize>,
    /// First differing byte of Q.
    pub q_mismatch_byte: Option<usize>,
}

impl PqCheck {
    /// Whether both P and Q match the data.
    pub fn is_consistent(&self) -> bool {
        self.p_mismatch_byte.is_none() && self.q_mismatch_byte.is_none()
    }
}

fn len_check(what: &'static str, index: usize, expected_bytes: usize, found_bytes: usize) -> Result<(), ParityError> {
    if expected_bytes == found_bytes {
        Ok(())
    } else {
        Err(ParityError::LengthMismatch {
            what,
            index,
            expected_bytes,
            found_bytes,
        })
    }
}

fn slots_check(count: usize) -> Result<(), ParityError> {
    if count > MAX_Q_SLOTS {
        Err(ParityError::TooManySlots {
            count,
            max: MAX_Q_SLOTS,
        })
    } else {
        Ok(())
    }
}

fn dense_check<D: Deref<Target = [u8]>>(data: &[D], len: usize) -> Result<(), ParityError> {
    if data.is_empty() {
        return Err(ParityError::NoData);
    }
    for (i, d) in data.iter().enumerate() {
        len_check("data block", i, len, d.len())?;
    }
    Ok(())
}

/// Checks a sparse stripe and returns its missing slots (at most two are reported; `count` is
/// the total).
fn sparse_check<D: Deref<Target = [u8]>>(
    data: &[Option<D>],
    len: usize,
    expected_missing: usize,
) -> Result<[usize; 2], ParityError> {
    let mut missing = [0usize; 2];
    let mut found = 0;
    for (i, d) in data.iter().enumerate() {
        match d {
            Some(d) => len_check("data block", i, len, d.len())?,
            None => {
                if found < 2 {
                    missing[found] = i;
                }
                found += 1;
            }
        }
    }
    if found != expected_missing {
        return Err(ParityError::MissingCount {
            expected: expected_missing,
            found,
        });
    }
    Ok(missing)
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    // Compare 64-byte blocks first (the compiler vectorises the slice equality), then bytes.
    let mut off = 0;
    for (x, y) in a.chunks(64).zip(b.chunks(64)) {
        if x != y {
            return x.iter().zip(y).position(|(x, y)| x != y).map(|i| off + i);
        }
        off += x.len();
    }
    None
}

impl Parity {
    /// A handle on `imp`, or [`ParityError::Unsupported`] if this CPU cannot run it. Use it to
    /// force an implementation (tests, benchmarks); everything else uses [`Parity::best`].
    pub fn new(imp: Impl) -> Result<Parity, ParityError> {
        if imp.is_supported() {
            Ok(Parity { imp })
        } else {
            Err(ParityError::Unsupported(imp))
        }
    }

    /// The fastest implementation on this CPU ([`Impl::best`], detected once and cached).
    pub fn best() -> Parity {
        Parity { imp: Impl::best() }
    }

    /// The portable implementation (any CPU).
    pub fn portable() -> Parity {
        Parity { imp: Impl::Portable }
    }

    /// Every implementation this CPU supports, slowest first.
    pub fn all_supported() -> impl Iterator<Item = Parity> {
        Impl::ALL.into_iter().filter_map(|i| Parity::new(i).ok())
    }

    /// The implementation this handle runs.
    pub fn implementation(&self) -> Impl {
        self.imp
    }

    /// [`Parity::run`] for a dense stripe: up to [`GROUP`] blocks go to the kernel in one call,
    /// gathered in slot order without the run search (the common case, cheapest per call for
    /// md's 4 KiB stripe units).
    fn run_dense<D: Deref<Target = [u8]>>(
        &self,
        data: &[D],
        range: std::ops::Range<usize>,
        p: Option<&mut [u8]>,
        q: Option<&mut [u8]>,
        acc_p: bool,
    ) {
        if data.len() > GROUP {
            self.run(data.len(), |i| Some(&data[i][range.clone()]), p, q, acc_p);
        } else {
            let mut buf: [&[u8]; GROUP] = [&[]; GROUP];
            for (b, d) in buf.iter_mut().zip(data) {
                *b = &d[range.clone()];
            }
            let start = if acc_p { Start::Continue(1) } else { Start::Fresh };
            kernel::gen(self.imp, &buf[..data.len()], p, q, start);
        }
    }

    /// Feeds slots `0..n_slots` (`get(i)`: the block of slot `i`, `None` = zero block) to the
    /// kernels, top slot first, writing P and/or Q. `acc_p`: P-only, xor into `p` instead of
    /// overwriting it.
    fn run<'a>(
        &self,
        n_slots: usize,
        get: impl Fn(usize) -> Option<&'a [u8]>,
        mut p: Option<&mut [u8]>,
        mut q: Option<&mut [u8]>,
        acc_p: bool,
    ) {
        let with_q = q.is_some();
        debug_assert!(!(acc_p && with_q), "Q accumulation is not a run mode");
        let mut buf: [&[u8]; GROUP] = [&[]; GROUP];
        let mut started = acc_p;
        // Lowest slot folded into Q so far.
        let mut prev_lo = n_slots;
        // Slots `i..` are done; the next one to look at is `i - 1`.
        let mut i = n_slots;
        loop {
            while i > 0 && get(i - 1).is_none() {
                i -= 1;
            }
            if i == 0 {
                break;
            }
            let hi = i - 1;
            let mut k = 0;
            while i > 0 && k < GROUP {
                match get(i - 1) {
                    Some(s) => {
                        buf[k] = s;
                        k += 1;
                        i -= 1;
                    }
                    // XOR ignores order: a P-only run packs across gaps.
                    None if !with_q => i -= 1,
                    None => break,
                }
            }
            buf[..k].reverse();
            let start = if started {
                Start::Continue(gf::exp(prev_lo - hi - 1))
            } else {
                Start::Fresh
            };
            kernel::gen(self.imp, &buf[..k], p.as_deref_mut(), q.as_deref_mut(), start);
            started = true;
            prev_lo = i;
        }
        if !started {
            kernel::gen(self.imp, &[], p, q, Start::Fresh);
        } else if with_q && prev_lo > 0 {
            kernel::gen(self.imp, &[], None, q, Start::Continue(gf::exp(prev_lo)));
        }
    }

    /// P = XOR of the data blocks (raid4/5 parity; also a raid5 rebuild when the data slice holds
    /// the surviving blocks and P). Needs at least one block.
    pub fn xor_gen<D: Deref<Target = [u8]>>(&self, data: &[D], p: &mut [u8]) -> Result<(), ParityError> {
        dense_check(data, p.len())?;
        self.run_dense(data, 0..p.len(), Some(p), None, false);
        Ok(())
    }

    /// `p ^= XOR of the data blocks` (read-modify-write: `xor_acc(&[old, new], p)`). Zero blocks
    /// leave `p` as it is.
    pub fn xor_acc<D: Deref<Target = [u8]>>(&self, data: &[D], p: &mut [u8]) -> Result<(), ParityError> {
        for (i, d) in data.iter().enumerate() {
            len_check("data block", i, p.len(), d.len())?;
        }
        if !data.is_empty() {
            self.run_dense(data, 0..p.len(), Some(p), None, true);
        }
        Ok(())
    }

    /// P and Q of a raid6 stripe: `P = ⊕ D_i`, `Q = ⊕ g^i·D_i` with `i` the md slot (the
    /// index in `data`). One pass over the data for up to 32 blocks. At most
    /// [`MAX_Q_SLOTS`] blocks.
    pub fn pq_gen<D: Deref<Target = [u8]>>(&self, data: &[D], p: &mut [u8], q: &mut [u8]) -> Result<(), ParityError> {
        dense_check(data, p.len())?;
        len_check("Q", 0, p.len(), q.len())?;
        slots_check(data.len())?;
        self.run_dense(data, 0..p.len(), Some(p), Some(q), false);
        Ok(())
    }

    /// Q alone (P's member is being rebuilt elsewhere or is not wanted).
    pub fn q_gen<D: Deref<Target = [u8]>>(&self, data: &[D], q: &mut [u8]) -> Result<(), ParityError> {
        dense_check(data, q.len())?;
        slots_check(data.len())?;
        self.run_dense(data, 0..q.len(), None, Some(q), false);
        Ok(())
    }

    /// P and Q with some slots taken as zero blocks (`None`): md's DDF layouts, where P's and
    /// Q's disks are slots too. Needs at least one slot (all `None` gives zero P and Q).
    pub fn pq_gen_sparse<D: Deref<Target = [u8]>>(
        &self,
        data: &[Option<D>],
        p: &mut [u8],
        q: &mut [u8],
    ) -> Result<(), ParityError> {
        if data.is_empty() {
            return Err(ParityError::NoData);
        }
        len_check("Q", 0, p.len(), q.len())?;
        slots_check(data.len())?;
        for (i, d) in data.iter().enumerate() {
            if let Some(d) = d {
                len_check("data block", i, p.len(), d.len())?;
            }
        }
        self.run(data.len(), |i| data[i].as_deref(), Some(p), Some(q), false);
        Ok(())
    }

    /// raid4/5 read-modify-write: `p ^= old ⊕ new`, one pass.
    pub fn p_update(&self, old: &[u8], new: &[u8], p: &mut [u8]) -> Result<(), ParityError> {
        len_check("old data", 0, p.len(), old.len())?;
        len_check("new data", 0, p.len(), new.len())?;
        kernel::update(self.imp, 1, old, new, Some(p), None);
        Ok(())
    }

    /// raid6 read-modify-write of Q alone: `q ^= g^slot·(old ⊕ new)`.
    pub fn q_update(&self, slot: usize, old: &[u8], new: &[u8], q: &mut [u8]) -> Result<(), ParityError> {
        self.update_check(slot, old, new, q.len())?;
        kernel::update(self.imp, gf::exp(slot), old, new, None, Some(q));
        Ok(())
    }

    /// raid6 read-modify-write of the block in `slot`: `p ^= old ⊕ new` and
    /// `q ^= g^slot·(old ⊕ new)`, one pass. Several changed blocks of one stripe: one call each.
    pub fn pq_update(
        &self,
        slot: usize,
        old: &[u8],
        new: &[u8],
        p: &mut [u8],
        q: &mut [u8],
    ) -> Result<(), ParityError> {
        self.update_check(slot, old, new, p.len())?;
        len_check("Q", 0, p.len(), q.len())?;
        kernel::update(self.imp, gf::exp(slot), old, new, Some(p), Some(q));
        Ok(())
    }

    fn update_check(&self, slot: usize, old: &[u8], new: &[u8], len: usize) -> Result<(), ParityError> {
        if slot >= MAX_Q_SLOTS {
            return Err(ParityError::SlotOutOfRange { slot, max: MAX_Q_SLOTS });
        }
        len_check("old data", 0, len, old.len())?;
        len_check("new data", 0, len, new.len())
    }

    /// Rebuilds the one missing (`None`) data block into `out` from P and the other blocks:
    /// `out = P ⊕ (⊕ present)`. raid4/5 degraded reads and recovery; raid6 with P present.
    pub fn rebuild_from_p<D: Deref<Target = [u8]>>(
        &self,
        data: &[Option<D>],
        p: &[u8],
        out: &mut [u8],
    ) -> Result<(), ParityError> {
        len_check("P", 0, out.len(), p.len())?;
        sparse_check(data, out.len(), 1)?;
        let n = data.len();
        self.run(
            n + 1,
            |i| if i == n { Some(p) } else { data[i].as_deref() },
            Some(out),
            None,
            false,
        );
        Ok(())
    }

    /// Rebuilds the one missing data block (slot `x`) into `out` from Q when P is lost too:
    /// `out = g^-x·(Q ⊕ Q')`, Q' the Q of the present blocks. Recompute P afterwards with
    /// [`Parity::xor_gen`] if its member needs it.
    pub fn rebuild_from_q<D: Deref<Target = [u8]>>(
        &self,
        data: &[Option<D>],
        q: &[u8],
        out: &mut [u8],
    ) -> Result<(), ParityError> {
        len_check("Q", 0, out.len(), q.len())?;
        slots_check(data.len())?;
        let [x, _] = sparse_check(data, out.len(), 1)?;
        self.run(data.len(), |i| data[i].as_deref(), None, Some(&mut *out), false);
        kernel::mul_xor(self.imp, gf::exp_neg(x), out, q);
        Ok(())
    }

    /// Rebuilds the two missing data blocks (slots `x < y`) from P and Q: `out_x` gets slot
    /// `x` (the lower), `out_y` slot `y`. With `Px = P ⊕ P'`, `Qx = Q ⊕ Q'` (P', Q' of the
    /// present blocks): `D_y = (g^(y-x) ⊕ 1)^-1·Px ⊕ (g^x ⊕ g^y)^-1·Qx`, `D_x = Px ⊕ D_y`.
    /// Two passes.
    pub fn rebuild_two<D: Deref<Target = [u8]>>(
        &self,
        data: &[Option<D>],
        p: &[u8],
        q: &[u8],
        out_x: &mut [u8],
        out_y: &mut [u8],
    ) -> Result<(), ParityError> {
        let len = out_x.len();
        len_check("second output", 0, len, out_y.len())?;
        len_check("P", 0, len, p.len())?;
        len_check("Q", 0, len, q.len())?;
        slots_check(data.len())?;
        let [x, y] = sparse_check(data, len, 2)?;
        self.run(
            data.len(),
            |i| data[i].as_deref(),
            Some(&mut *out_x),
            Some(&mut *out_y),
            false,
        );
        // Both non-zero: 0 < y - x < 255 and x != y, so g^(y-x) != 1 and g^x != g^y.
        let a = gf::inv(gf::exp(y - x) ^ 1).unwrap_or(0);
        let b = gf::inv(gf::exp(x) ^ gf::exp(y)).unwrap_or(0);
        kernel::two_data(self.imp, a, b, out_x, out_y, p, q);
        Ok(())
    }

    /// raid4/5 check: the first byte at which `p` differs from the XOR of the data, or `None`
    /// when the stripe is consistent. Reads only; needs no scratch buffer from the caller.
    pub fn check_p<D: Deref<Target = [u8]>>(&self, data: &[D], p: &[u8]) -> Result<Option<usize>, ParityError> {
        dense_check(data, p.len())?;
        let mut pb = [0u8; CHECK_COLUMN];
        let mut off = 0;
        while off < p.len() {
            let end = (off + CHECK_COLUMN).min(p.len());
            let pc = &mut pb[..end - off];
            self.run_dense(data, off..end, Some(&mut *pc), None, false);
            if let Some(d) = first_difference(pc, &p[off..end]) {
                return Ok(Some(off + d));
            }
            off = end;
        }
        Ok(None)
    }

    /// raid6 check: the first byte at which `p` and `q` each differ from the parity of the
    /// data. Reads only; needs no scratch buffer from the caller.
    pub fn check_pq<D: Deref<Target = [u8]>>(&self, data: &[D], p: &[u8], q: &[u8]) -> Result<PqCheck, ParityError> {
        dense_check(data, p.len())?;
        len_check("Q", 0, p.len(), q.len())?;
        slots_check(data.len())?;
        let mut pb = [0u8; CHECK_COLUMN];
        let mut qb = [0u8; CHECK_COLUMN];
        let mut res = PqCheck::default();
        let mut off = 0;
        while off < p.len() && !(res.p_mismatch_byte.is_some() && res.q_mismatch_byte.is_some()) {
            let end = (off + CHECK_COLUMN).min(p.len());
            let (pc, qc) = (&mut pb[..end - off], &mut qb[..end - off]);
            let want_p = res.p_mismatch_byte.is_none();
            let want_q = res.q_mismatch_byte.is_none();
            self.run_dense(
                data,
                off..end,
                want_p.then_some(&mut *pc),
                want_q.then_some(&mut *qc),
                false,
            );
            if want_p {
                res.p_mismatch_byte = first_difference(pc, &p[off..end]).map(|d| off + d);
            }
            if want_q {
                res.q_mismatch_byte = first_difference(qc, &q[off..end]).map(|d| off + d);
            }
            off = end;
        }
        Ok(res)
    }
}
