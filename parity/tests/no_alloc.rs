//! Parity is on md's data path: no operation allocates, whatever the implementation, stripe
//! width (up to the 255-slot limit, which the engine cuts into kernel groups on the stack),
//! missing blocks or the borrow form of the data (`&[u8]`, or `Ref<[u8]>` as md borrows its
//! `DmaBuf`s). A counting global allocator sees zero allocations on this thread across every
//! operation once the buffers exist.

use std::cell::RefCell;

use keel_parity::{Impl, Parity};

#[global_allocator]
static GLOBAL: keel_testkit::CountingAlloc = keel_testkit::CountingAlloc;

const LEN: usize = 4096 + 100; // a page plus a tail the vector loops leave to the portable code

fn ops(par: Parity, data: &[&[u8]], p: &mut [u8], q: &mut [u8], x: &mut [u8], y: &mut [u8]) {
    par.xor_gen(data, p).unwrap();
    par.pq_gen(data, p, q).unwrap();
    par.q_gen(data, q).unwrap();
    par.xor_acc(&data[..2], p).unwrap();
    par.xor_acc(&data[..2], p).unwrap();
    par.p_update(data[0], data[1], p).unwrap();
    par.p_update(data[0], data[1], p).unwrap();
    par.pq_update(1, data[0], data[1], p, q).unwrap();
    par.pq_update(1, data[0], data[1], p, q).unwrap();
    par.q_update(2, data[0], data[1], q).unwrap();
    par.q_update(2, data[0], data[1], q).unwrap();
    assert!(par.check_pq(data, p, q).unwrap().is_consistent());
    assert_eq!(par.check_p(data, p).unwrap(), None);

    // Lose slots 0 and the last one (gaps at both ends of the Horner walk).
    let n = data.len();
    let mut lost: [Option<&[u8]>; 255] = [None; 255];
    for (l, d) in lost.iter_mut().zip(data).skip(1).take(n - 2) {
        *l = Some(*d);
    }
    par.rebuild_two(&lost[..n], p, q, x, y).unwrap();
    assert_eq!((&*x, &*y), (data[0], data[n - 1]));
    lost[n - 1] = Some(data[n - 1]);
    par.rebuild_from_p(&lost[..n], p, x).unwrap();
    par.rebuild_from_q(&lost[..n], q, y).unwrap();
    assert_eq!((&*x, &*y), (data[0], data[0]));
    par.pq_gen_sparse(&lost[..n], x, y).unwrap();
}

#[test]
fn no_operation_allocates() {
    for n in [4usize, 10, 255] {
        let bufs: Vec<Vec<u8>> = (0..n).map(|i| vec![(i * 37 + 1) as u8; LEN]).collect();
        let data: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
        let cells: Vec<RefCell<Vec<u8>>> = bufs.iter().map(|b| RefCell::new(b.clone())).collect();
        let (mut p, mut q, mut x, mut y) = (vec![0u8; LEN], vec![0u8; LEN], vec![0u8; LEN], vec![0u8; LEN]);
        let impls: Vec<Parity> = Parity::all_supported().collect();
        // Warm the cached CPU detection before counting.
        let _ = Impl::best();
        let before = keel_testkit::thread_allocations();
        for &par in &impls {
            ops(par, &data, &mut p, &mut q, &mut x, &mut y);
            // md's form: a slice of borrow guards, borrowed for the call only.
            let guards: [Option<std::cell::Ref<'_, Vec<u8>>>; 4] =
                std::array::from_fn(|i| cells.get(i).map(|c| c.borrow()));
            let refs: [std::cell::Ref<'_, [u8]>; 4] =
                guards.map(|g| std::cell::Ref::map(g.expect("n >= 4"), |v| &v[..]));
            par.pq_gen(&refs, &mut p, &mut q).unwrap();
            keel_parity::pq_gen(&refs, &mut x, &mut y).unwrap();
            assert_eq!((&p, &q), (&x, &y));
        }
        assert_eq!(keel_testkit::thread_allocations() - before, 0, "{n} data blocks");
    }
}
