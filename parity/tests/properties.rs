//! Every implementation against a byte-at-a-time reference built only on `gf::mul` / `gf::exp`:
//! generation (dense and sparse, 1..=255 slots, any length and alignment), read-modify-write,
//! every one- and two-failure recovery, the check helpers, and the argument errors. Plus the
//! verified vector of md-personalities.md §6.2 (captured from a Linux 6.12 raid6).

use keel_parity::{gf, Impl, Parity, ParityError, PqCheck, MAX_Q_SLOTS};
use proptest::prelude::*;

/// Deterministic bytes for a case (xorshift64*), so cases are cheap to make and reproducible.
fn fill(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// `n` blocks of `len` bytes, each starting `misalign` bytes into its own allocation, so the
/// vector loops see unaligned buffers too.
struct Stripe {
    bufs: Vec<Vec<u8>>,
    misalign: usize,
    len: usize,
}

impl Stripe {
    fn new(n: usize, len: usize, misalign: usize, seed: u64) -> Stripe {
        let bufs = (0..n)
            .map(|i| fill(seed.wrapping_add(i as u64 * 0x9e37_79b9), len + misalign))
            .collect();
        Stripe { bufs, misalign, len }
    }
    fn blocks(&self) -> Vec<&[u8]> {
        self.bufs
            .iter()
            .map(|b| &b[self.misalign..self.misalign + self.len])
            .collect()
    }
}

fn ref_p(data: &[Option<&[u8]>], len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    for d in data.iter().flatten() {
        for (p, d) in p.iter_mut().zip(d.iter()) {
            *p ^= d;
        }
    }
    p
}

fn ref_q(data: &[Option<&[u8]>], len: usize) -> Vec<u8> {
    let mut q = vec![0u8; len];
    for (i, d) in data.iter().enumerate() {
        if let Some(d) = d {
            let c = gf::exp(i);
            for (q, d) in q.iter_mut().zip(d.iter()) {
                *q ^= gf::mul(c, *d);
            }
        }
    }
    q
}

fn dense<'a>(blocks: &[&'a [u8]]) -> Vec<Option<&'a [u8]>> {
    blocks.iter().map(|b| Some(*b)).collect()
}

fn impls() -> Vec<Parity> {
    Parity::all_supported().collect()
}

#[test]
fn selection_matches_the_cpu() {
    for imp in Impl::ALL {
        assert_eq!(Parity::new(imp).is_ok(), imp.is_supported(), "{imp:?}");
        if !imp.is_supported() {
            assert_eq!(Parity::new(imp), Err(ParityError::Unsupported(imp)));
        }
    }
    assert!(Impl::best().is_supported());
    assert_eq!(Parity::best().implementation(), Impl::best());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert_eq!(Impl::best(), Impl::Avx2);
    }
}

/// md-personalities.md §6.2: raid6, 5 disks, layout 2, stripe 0: D0..D2 = "BLK000000k" on
/// disks 1..3, P on disk 4, Q on disk 0.
const VEC_D: [&[u8; 10]; 3] = [b"BLK0000000", b"BLK0000001", b"BLK0000002"];
const VEC_P: [u8; 10] = [0x42, 0x4c, 0x4b, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x33];
const VEC_Q: [u8; 10] = [0xd3, 0xf9, 0xec, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x9a];

#[test]
fn linux_vector() {
    // The vector bytes as they are, and repeated to 4 KiB + 10 so every vector loop and tail
    // runs on them (parity is byte-wise, so the repetition's parity is the repeated parity).
    for reps in [1usize, 410] {
        let rep = |b: &[u8]| b.iter().copied().cycle().take(10 * reps).collect::<Vec<u8>>();
        let data: Vec<Vec<u8>> = VEC_D.iter().map(|d| rep(&d[..])).collect();
        let (want_p, want_q) = (rep(&VEC_P), rep(&VEC_Q));
        for par in impls() {
            let len = 10 * reps;
            let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
            par.pq_gen(&data, &mut p, &mut q).unwrap();
            assert_eq!(p, want_p, "{:?} P", par.implementation());
            assert_eq!(q, want_q, "{:?} Q", par.implementation());
            let mut p2 = vec![0u8; len];
            par.xor_gen(&data, &mut p2).unwrap();
            assert_eq!(p2, want_p);
            // The slot of each block comes from md's walk (disk 1 is slot 0 here).
            for (k, disk) in [1usize, 2, 3].into_iter().enumerate() {
                assert_eq!(keel_parity::md_q_slot(5, 4, 0, disk).unwrap(), Some(k));
            }
            // Layout 10 (DDF) stripe 0: D0..D2 on disks 0..2, Q on 3, P on 4: slot = disk, the
            // parity disks are zero blocks; same Q.
            let ddf: Vec<Option<&[u8]>> = vec![Some(&data[0]), Some(&data[1]), Some(&data[2]), None, None];
            let (mut p3, mut q3) = (vec![0u8; len], vec![0u8; len]);
            par.pq_gen_sparse(&ddf, &mut p3, &mut q3).unwrap();
            assert_eq!((&p3, &q3), (&want_p, &want_q));
            // §6.3's check: drop D0 and D2, rebuild both from P and Q.
            let lost: Vec<Option<&[u8]>> = vec![None, Some(&data[1]), None];
            let (mut x, mut y) = (vec![0u8; len], vec![0u8; len]);
            par.rebuild_two(&lost, &want_p, &want_q, &mut x, &mut y).unwrap();
            assert_eq!((&x, &y), (&data[0], &data[2]));
            assert!(par.check_pq(&data, &want_p, &want_q).unwrap().is_consistent());
        }
    }
}

#[test]
fn errors_not_panics() {
    let par = Parity::best();
    let a = vec![1u8; 64];
    let b = vec![2u8; 63];
    let (mut p, mut q) = (vec![0u8; 64], vec![0u8; 64]);
    let e = par.pq_gen(&[&a[..], &b[..]], &mut p, &mut q).unwrap_err();
    assert_eq!(
        e,
        ParityError::LengthMismatch {
            what: "data block",
            index: 1,
            expected_bytes: 64,
            found_bytes: 63
        }
    );
    assert!(e.to_string().contains("63 bytes, expected 64"));
    let mut q_short = vec![0u8; 32];
    assert!(matches!(
        par.pq_gen(&[&a[..]], &mut p, &mut q_short),
        Err(ParityError::LengthMismatch { what: "Q", .. })
    ));
    let none: [&[u8]; 0] = [];
    assert_eq!(par.pq_gen(&none, &mut p, &mut q), Err(ParityError::NoData));
    assert_eq!(par.xor_gen(&none, &mut p), Err(ParityError::NoData));
    assert_eq!(par.xor_acc(&none, &mut p), Ok(()));
    let many: Vec<&[u8]> = vec![&a[..]; MAX_Q_SLOTS + 2];
    assert_eq!(
        par.pq_gen(&many, &mut p, &mut q),
        Err(ParityError::TooManySlots { count: 257, max: 255 })
    );
    // P alone has no slot limit (257 blocks of ones XOR to ones).
    par.xor_gen(&many, &mut p).unwrap();
    assert_eq!(p, vec![1u8; 64]);
    assert_eq!(
        par.pq_update(255, &a, &a, &mut p, &mut q),
        Err(ParityError::SlotOutOfRange { slot: 255, max: 255 })
    );
    assert!(par.q_update(0, &a, &b, &mut q).is_err());
    let one_missing: Vec<Option<&[u8]>> = vec![None, Some(&a[..]), Some(&a[..])];
    let (mut x, mut y) = (vec![0u8; 64], vec![0u8; 64]);
    assert_eq!(
        par.rebuild_two(&one_missing, &p, &q, &mut x, &mut y),
        Err(ParityError::MissingCount { expected: 2, found: 1 })
    );
    let none_missing: Vec<Option<&[u8]>> = vec![Some(&a[..]), Some(&a[..])];
    assert_eq!(
        par.rebuild_from_p(&none_missing, &p, &mut x),
        Err(ParityError::MissingCount { expected: 1, found: 0 })
    );
    assert!(par.rebuild_from_q(&one_missing, &q[..8], &mut x).is_err());
    assert!(par.check_pq(&[&a[..]], &p, &q[..3]).is_err());
}

/// One generated stripe: data count, length, misalignment, seed.
fn stripe_params(max_n: usize, max_len: usize) -> impl Strategy<Value = (usize, usize, usize, u64)> {
    (1..=max_n, 0..=max_len, 0usize..64, any::<u64>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn generation_equals_reference((n, len, mis, seed) in stripe_params(40, 1200)) {
        let s = Stripe::new(n, len, mis, seed);
        let blocks = s.blocks();
        let d = dense(&blocks);
        let (want_p, want_q) = (ref_p(&d, len), ref_q(&d, len));
        for par in impls() {
            let (mut p, mut q) = (vec![0xAAu8; len], vec![0x55u8; len]);
            par.pq_gen(&blocks, &mut p, &mut q).unwrap();
            prop_assert_eq!(&p, &want_p, "{:?} P n={} len={}", par.implementation(), n, len);
            prop_assert_eq!(&q, &want_q, "{:?} Q n={} len={}", par.implementation(), n, len);
            let mut p2 = vec![0x11u8; len];
            par.xor_gen(&blocks, &mut p2).unwrap();
            prop_assert_eq!(&p2, &want_p);
            let mut q2 = vec![0x22u8; len];
            par.q_gen(&blocks, &mut q2).unwrap();
            prop_assert_eq!(&q2, &want_q);
            prop_assert_eq!(par.check_pq(&blocks, &p, &q).unwrap(), PqCheck::default());
            prop_assert_eq!(par.check_p(&blocks, &p).unwrap(), None);
        }
    }

    #[test]
    fn sparse_generation_equals_reference(
        (n, len, mis, seed) in stripe_params(70, 300),
        holes in any::<u128>(),
    ) {
        let s = Stripe::new(n, len, mis, seed);
        let blocks = s.blocks();
        let sparse: Vec<Option<&[u8]>> =
            blocks.iter().enumerate().map(|(i, b)| (holes >> (i % 128) & 1 == 0).then_some(*b)).collect();
        let (want_p, want_q) = (ref_p(&sparse, len), ref_q(&sparse, len));
        for par in impls() {
            let (mut p, mut q) = (vec![0xAAu8; len], vec![0x55u8; len]);
            par.pq_gen_sparse(&sparse, &mut p, &mut q).unwrap();
            prop_assert_eq!(&p, &want_p, "{:?}", par.implementation());
            prop_assert_eq!(&q, &want_q, "{:?} holes={:x}", par.implementation(), holes);
        }
    }

    #[test]
    fn rmw_equals_regeneration(
        (n, len, mis, seed) in stripe_params(40, 900),
        which in any::<prop::sample::Index>(),
        seed2 in any::<u64>(),
    ) {
        let s = Stripe::new(n, len, mis, seed);
        let old_blocks = s.blocks();
        let slot = which.index(n);
        let new = fill(seed2, len);
        let mut new_blocks = old_blocks.clone();
        new_blocks[slot] = &new;
        for par in impls() {
            let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
            par.pq_gen(&old_blocks, &mut p, &mut q).unwrap();
            let (mut p_want, mut q_want) = (vec![0u8; len], vec![0u8; len]);
            par.pq_gen(&new_blocks, &mut p_want, &mut q_want).unwrap();

            let (mut p1, mut q1) = (p.clone(), q.clone());
            par.pq_update(slot, old_blocks[slot], &new, &mut p1, &mut q1).unwrap();
            prop_assert_eq!(&p1, &p_want, "{:?} pq_update P", par.implementation());
            prop_assert_eq!(&q1, &q_want, "{:?} pq_update Q", par.implementation());

            let mut q2 = q.clone();
            par.q_update(slot, old_blocks[slot], &new, &mut q2).unwrap();
            prop_assert_eq!(&q2, &q_want);
            let mut p2 = p.clone();
            par.p_update(old_blocks[slot], &new, &mut p2).unwrap();
            prop_assert_eq!(&p2, &p_want);
            let mut p3 = p.clone();
            par.xor_acc(&[old_blocks[slot], &new[..]], &mut p3).unwrap();
            prop_assert_eq!(&p3, &p_want);
        }
    }

    #[test]
    fn one_failure_recovery(
        (n, len, mis, seed) in stripe_params(40, 900),
        which in any::<prop::sample::Index>(),
    ) {
        let s = Stripe::new(n, len, mis, seed);
        let blocks = s.blocks();
        let x = which.index(n);
        let d = dense(&blocks);
        let (p, q) = (ref_p(&d, len), ref_q(&d, len));
        let mut lost: Vec<Option<&[u8]>> = blocks.iter().map(|b| Some(*b)).collect();
        lost[x] = None;
        for par in impls() {
            // Data lost, P present (raid5 degraded read; raid6 with Q present or lost).
            let mut out = vec![0xEEu8; len];
            par.rebuild_from_p(&lost, &p, &mut out).unwrap();
            prop_assert_eq!(&out[..], blocks[x], "{:?} from P, x={}", par.implementation(), x);
            // Data and P lost: from Q.
            let mut out = vec![0xEEu8; len];
            par.rebuild_from_q(&lost, &q, &mut out).unwrap();
            prop_assert_eq!(&out[..], blocks[x], "{:?} from Q, x={} n={}", par.implementation(), x, n);
        }
    }

    #[test]
    fn two_failure_recovery(
        (n, len, mis, seed) in stripe_params(40, 900),
        a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(),
    ) {
        prop_assume!(n >= 2);
        let s = Stripe::new(n, len, mis, seed);
        let blocks = s.blocks();
        let x = a.index(n);
        let mut y = b.index(n - 1);
        if y >= x { y += 1; }
        let (x, y) = (x.min(y), x.max(y));
        let d = dense(&blocks);
        let (p, q) = (ref_p(&d, len), ref_q(&d, len));
        let mut lost: Vec<Option<&[u8]>> = blocks.iter().map(|b| Some(*b)).collect();
        lost[x] = None;
        lost[y] = None;
        for par in impls() {
            let (mut ox, mut oy) = (vec![0xEEu8; len], vec![0xEEu8; len]);
            par.rebuild_two(&lost, &p, &q, &mut ox, &mut oy).unwrap();
            prop_assert_eq!(&ox[..], blocks[x], "{:?} x={} y={} n={}", par.implementation(), x, y, n);
            prop_assert_eq!(&oy[..], blocks[y], "{:?} x={} y={} n={}", par.implementation(), x, y, n);
        }
    }

    #[test]
    fn check_finds_the_first_mismatch(
        (n, len, mis, seed) in stripe_params(12, 3000),
        at in any::<prop::sample::Index>(),
        at2 in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        prop_assume!(len > 0);
        let s = Stripe::new(n, len, mis, seed);
        let blocks = s.blocks();
        let d = dense(&blocks);
        let (p, q) = (ref_p(&d, len), ref_q(&d, len));
        let (i, j) = (at.index(len), at2.index(len));
        for par in impls() {
            let mut bad_p = p.clone();
            bad_p[i] ^= flip;
            prop_assert_eq!(par.check_p(&blocks, &bad_p).unwrap(), Some(i));
            let mut bad_q = q.clone();
            bad_q[j] ^= flip;
            bad_q[len - 1] ^= 1;
            let want_q = if j == len - 1 && flip == 1 { None } else { Some(j.min(len - 1)) };
            prop_assert_eq!(
                par.check_pq(&blocks, &bad_p, &bad_q).unwrap(),
                PqCheck { p_mismatch_byte: Some(i), q_mismatch_byte: want_q }
            );
            prop_assert_eq!(
                par.check_pq(&blocks, &p, &bad_q).unwrap().p_mismatch_byte,
                None
            );
        }
    }
}

proptest! {
    // Few cases of the expensive shapes: md allows up to 256 raid6 members (254 data slots) and
    // Q supports 255 (short blocks: the grouping of many slots into kernel runs); and long
    // blocks.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn long_blocks_in_several_passes((n, len, mis, seed) in (5usize..=20, 4000usize..=10_000, 0usize..64, any::<u64>())) {
        // Wider than one pass (8 streams with P and Q) and longer than one 4 KiB column block:
        // the SIMD kernels' blocked passes, block boundaries and tails.
        let s = Stripe::new(n, len, mis, seed);
        let blocks = s.blocks();
        let d = dense(&blocks);
        let (want_p, want_q) = (ref_p(&d, len), ref_q(&d, len));
        for par in impls() {
            let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
            par.pq_gen(&blocks, &mut p, &mut q).unwrap();
            prop_assert_eq!(&p, &want_p, "{:?} n={} len={}", par.implementation(), n, len);
            prop_assert_eq!(&q, &want_q, "{:?} n={} len={}", par.implementation(), n, len);
            let mut p2 = vec![0u8; len];
            par.xor_gen(&blocks, &mut p2).unwrap();
            prop_assert_eq!(&p2, &want_p);
        }
    }

    #[test]
    fn large_stripes((n, len, mis, seed) in (200usize..=MAX_Q_SLOTS, 0usize..=200, 0usize..64, any::<u64>()),
                     a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>()) {
        let s = Stripe::new(n, len, mis, seed);
        let blocks = s.blocks();
        let d = dense(&blocks);
        let (want_p, want_q) = (ref_p(&d, len), ref_q(&d, len));
        let x = a.index(n);
        let mut y = b.index(n - 1);
        if y >= x { y += 1; }
        let (x, y) = (x.min(y), x.max(y));
        let mut lost: Vec<Option<&[u8]>> = blocks.iter().map(|b| Some(*b)).collect();
        lost[x] = None;
        lost[y] = None;
        for par in impls() {
            let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
            par.pq_gen(&blocks, &mut p, &mut q).unwrap();
            prop_assert_eq!(&p, &want_p);
            prop_assert_eq!(&q, &want_q, "{:?} n={}", par.implementation(), n);
            let (mut ox, mut oy) = (vec![0u8; len], vec![0u8; len]);
            par.rebuild_two(&lost, &p, &q, &mut ox, &mut oy).unwrap();
            prop_assert_eq!(&ox[..], blocks[x]);
            prop_assert_eq!(&oy[..], blocks[y]);
            let mut q1 = q.clone();
            par.q_update(y, blocks[y], &vec![0u8; len], &mut q1).unwrap();
            let mut zeroed = d.clone();
            zeroed[y] = None;
            prop_assert_eq!(q1, ref_q(&zeroed, len));
        }
    }
}
