//! The SIMD kernel bodies, written once and instantiated per instruction set.
//!
//! [`simd_kernels!`] expands, inside `ssse3.rs` and `avx2.rs`, to the four kernels of
//! [`super`]. The expanding module supplies the vector type and a handful of primitives, each a
//! `#[target_feature]` function of the same feature so they inline into the kernels:
//! `V` (vector), `W` (bytes per vector), `U` (vectors per column step), `zero()`, `splat(b)`,
//! `xor(a, b)`, `mul2(q, poly)` (`q·g`, `poly` = `splat(0x1D)`), `Tbl` + `table(c)` (the
//! nibble tables of `c` as shuffle vectors) + `mulc(&t, x)` (`c·x` by two `pshufb`), and the
//! unaligned `load(ptr)` / `store(ptr, v)`.
//!
//! `gen` keeps at most `PASS_STREAMS` (8) streams in flight: a wider stripe is computed per
//! 4 KiB column block in passes over groups of sources, the later passes continuing from P and
//! Q while they are still in L1 (see the constants for why).
//!
//! Memory safety of the vector loops: every kernel asserts its slice contract (one length for
//! all slices, at most `GROUP` sources) before its loop, runs the loop only over
//! `main = len - len % step` bytes, and hands bytes `main..len` to the portable kernel. So
//! every pointer it forms is `base + off + k` with `off + k + W <= main <= len` of a slice of
//! `len` bytes.

macro_rules! simd_kernels {
    ($feat:literal) => {
        use $crate::kernel::{portable, Start, GROUP};

        /// Bytes per column step of `gen`.
        const STEP: usize = U * W;
        /// Most streams (sources and outputs) one pass of `gen` touches: the 8 ways of an L1 set
        /// (32 KiB, 8-way on Zen 4; Intel's 48 KiB, 12-way has more). Buffers are 4 KiB-aligned
        /// (DmaBufs), so every stream maps the same column to the same set; past 8 streams each
        /// column evicts the lines the next one needs and the loads miss L1. Measured on the
        /// EPYC: P+Q of 8+2 in one pass ran at 2/3 the speed of two passes of 4 data blocks,
        /// while 6+2 was fastest in one pass.
        const PASS_STREAMS: usize = 8;
        /// Column block of a multi-pass `gen`: one L1 way (32 KiB / 8 ways), so P and Q of the
        /// block stay in L1 from one pass to the next.
        const BLOCK: usize = 4096;
        const _: () = assert!(BLOCK % STEP == 0, "a column block is whole column steps");

        fn contract(srcs: usize, lens: impl IntoIterator<Item = usize>, len: usize) {
            assert!(srcs <= GROUP, "kernel given {srcs} sources");
            for l in lens {
                assert_eq!(l, len, "kernel given unequal lengths");
            }
        }

        /// One pass of `gen` over columns `from..to` (multiples of `STEP`) for `srcs`
        /// (ascending slots, Horner from the last).
        ///
        /// # Safety
        /// Every source and (when present) `pp` / `qp` point to at least `to` bytes, and
        /// `to` is at most the length of each.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn columns<const WP: bool, const WQ: bool>(
            srcs: &[&[u8]],
            pp: *mut u8,
            qp: *mut u8,
            from: usize,
            to: usize,
            start: Start,
            cont: Option<&Tbl>,
        ) {
            let poly = splat(0x1D);
            let mut off = from;
            while off < to {
                let mut pv = [zero(); U];
                let mut qv = [zero(); U];
                let mut z = srcs.len();
                // SAFETY: `off + STEP <= to`, and every buffer touched holds at least `to`
                // bytes (the caller's contract); `pp` / `qp` are touched only when present.
                unsafe {
                    match start {
                        Start::Fresh => {
                            if z > 0 {
                                z -= 1;
                                let s = srcs[z].as_ptr().add(off);
                                for u in 0..U {
                                    let d = load(s.add(u * W));
                                    pv[u] = d;
                                    qv[u] = d;
                                }
                            }
                        }
                        Start::Continue(_) => {
                            for u in 0..U {
                                if WP {
                                    pv[u] = load(pp.add(off + u * W));
                                }
                                if WQ {
                                    let x = load(qp.add(off + u * W));
                                    qv[u] = match cont {
                                        Some(t) => mulc(t, x),
                                        None => x,
                                    };
                                }
                            }
                        }
                    }
                    while z > 0 {
                        z -= 1;
                        let s = srcs[z].as_ptr().add(off);
                        for u in 0..U {
                            let d = load(s.add(u * W));
                            if WP {
                                pv[u] = xor(pv[u], d);
                            }
                            if WQ {
                                qv[u] = xor(mul2(qv[u], poly), d);
                            }
                        }
                    }
                    for u in 0..U {
                        if WP {
                            store(pp.add(off + u * W), pv[u]);
                        }
                        if WQ {
                            store(qp.add(off + u * W), qv[u]);
                        }
                    }
                }
                off += STEP;
            }
        }

        /// See `portable::gen`. Stripes wider than a pass ([`PASS_STREAMS`]) are cut into column
        /// blocks of [`BLOCK`] bytes, each computed in passes of at most that many sources
        /// (the later passes continue from P and Q, which stay in L1 between passes).
        #[target_feature(enable = $feat)]
        pub(crate) fn gen<const WP: bool, const WQ: bool>(srcs: &[&[u8]], p: &mut [u8], q: &mut [u8], start: Start) {
            let len = if WP { p.len() } else { q.len() };
            contract(
                srcs.len(),
                srcs.iter()
                    .map(|s| s.len())
                    .chain(WP.then_some(p.len()))
                    .chain(WQ.then_some(q.len())),
                len,
            );
            let main = len - len % STEP;
            let cont = match start {
                Start::Continue(c) if c != 1 => Some(table(c)),
                _ => None,
            };
            let (pp, qp) = (p.as_mut_ptr(), q.as_mut_ptr());
            let n = srcs.len();
            let pass_sources = PASS_STREAMS - usize::from(WP) - usize::from(WQ);
            let passes = n.div_ceil(pass_sources).max(1);
            let per_pass = n.div_ceil(passes);
            let block = if passes == 1 { main } else { BLOCK };
            let mut from = 0;
            while from < main {
                let to = (from + block).min(main);
                let mut hi = n;
                let mut first = true;
                while first || hi > 0 {
                    let lo = hi.saturating_sub(per_pass);
                    // SAFETY: `to <= main <= len`, and every source, `p` (if WP) and `q`
                    // (if WQ) has `len` bytes (contract asserted above).
                    unsafe {
                        if first {
                            columns::<WP, WQ>(&srcs[lo..hi], pp, qp, from, to, start, cont.as_ref());
                        } else {
                            columns::<WP, WQ>(&srcs[lo..hi], pp, qp, from, to, Start::Continue(1), None);
                        }
                    }
                    hi = lo;
                    first = false;
                }
                from = to;
            }
            if main < len {
                let mut tail: [&[u8]; GROUP] = [&[]; GROUP];
                for (t, s) in tail.iter_mut().zip(srcs) {
                    *t = &s[main..];
                }
                portable::gen::<WP, WQ>(
                    &tail[..srcs.len()],
                    p.get_mut(main..).unwrap_or_default(),
                    q.get_mut(main..).unwrap_or_default(),
                    start,
                );
            }
        }

        /// See `portable::mul_xor`.
        #[target_feature(enable = $feat)]
        pub(crate) fn mul_xor(c: u8, buf: &mut [u8], other: &[u8]) {
            let len = buf.len();
            contract(0, [other.len()], len);
            let main = len - len % W;
            let t = table(c);
            let bp = buf.as_mut_ptr();
            let op = other.as_ptr();
            let mut off = 0;
            while off < main {
                // SAFETY: `off + W <= main <= len`, both slices have `len` bytes.
                unsafe {
                    let x = xor(load(bp.add(off)), load(op.add(off)));
                    store(bp.add(off), mulc(&t, x));
                }
                off += W;
            }
            portable::mul_xor(c, &mut buf[main..], &other[main..]);
        }

        /// See `portable::update`.
        #[target_feature(enable = $feat)]
        pub(crate) fn update<const WP: bool, const WQ: bool>(
            c: u8,
            old: &[u8],
            new: &[u8],
            p: &mut [u8],
            q: &mut [u8],
        ) {
            let len = old.len();
            contract(
                0,
                [new.len()]
                    .into_iter()
                    .chain(WP.then_some(p.len()))
                    .chain(WQ.then_some(q.len())),
                len,
            );
            let main = len - len % W;
            let t = table(c);
            let (op, np, pp, qp) = (old.as_ptr(), new.as_ptr(), p.as_mut_ptr(), q.as_mut_ptr());
            let mut off = 0;
            while off < main {
                // SAFETY: `off + W <= main <= len`, every slice touched has `len` bytes.
                unsafe {
                    let d = xor(load(op.add(off)), load(np.add(off)));
                    if WP {
                        store(pp.add(off), xor(load(pp.add(off)), d));
                    }
                    if WQ {
                        store(qp.add(off), xor(load(qp.add(off)), mulc(&t, d)));
                    }
                }
                off += W;
            }
            portable::update::<WP, WQ>(
                c,
                &old[main..],
                &new[main..],
                p.get_mut(main..).unwrap_or_default(),
                q.get_mut(main..).unwrap_or_default(),
            );
        }

        /// See `super::two_data`.
        #[target_feature(enable = $feat)]
        pub(crate) fn two_data(a: u8, b: u8, px_out: &mut [u8], qx_out: &mut [u8], p: &[u8], q: &[u8]) {
            let len = px_out.len();
            contract(0, [qx_out.len(), p.len(), q.len()], len);
            let main = len - len % W;
            let (ta, tb) = (table(a), table(b));
            let (xp, yp, pp, qp) = (px_out.as_mut_ptr(), qx_out.as_mut_ptr(), p.as_ptr(), q.as_ptr());
            let mut off = 0;
            while off < main {
                // SAFETY: `off + W <= main <= len`, all four slices have `len` bytes.
                unsafe {
                    let px = xor(load(xp.add(off)), load(pp.add(off)));
                    let qx = xor(load(yp.add(off)), load(qp.add(off)));
                    let dy = xor(mulc(&ta, px), mulc(&tb, qx));
                    store(xp.add(off), xor(px, dy));
                    store(yp.add(off), dy);
                }
                off += W;
            }
            portable::two_data(
                a,
                b,
                &mut px_out[main..],
                &mut qx_out[main..],
                &p[main..],
                &q[main..],
            );
        }
    };
}
