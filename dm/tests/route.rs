//! The route a mapped device publishes for the bdev layer (see keel-bdev's `forward.rs`): on
//! while the device runs with one direct linear target, or one striped target over up to 16
//! stripes; off while suspended, for other tables, after remove. Routed requests land
//! where the table says, count in both bdevs' statistics, and a suspend still holds (never
//! fails) what arrives meanwhile.

mod common;

use std::time::Duration;

use common::{pattern, Rig, MAIN};
use keel_bdev::{DmaBuf, IoOp, IoStatus};
use keel_reactor::CoreId;

const BS: u64 = 512;

fn routed(r: &Rig, c: &common::Client) -> bool {
    r.d.enter(c.core, || c.ch.is_routed())
}

#[test]
fn route_follows_the_table_and_the_life_cycle() {
    let r = Rig::new(2);
    for m in ["M0", "M1", "M2"] {
        r.malloc(m, 4096, BS as u32);
    }
    r.create("d", Some("0 1536 linear M0 512")).unwrap();
    let mut c0 = r.client("d", MAIN, 4);
    let mut c1 = r.client("d", CoreId(1), 4);
    assert!(
        routed(&r, &c0) && routed(&r, &c1),
        "a linear table is routed on every core"
    );

    // Routed writes land at the table's offset; both bdevs count them.
    let data = pattern(4 * BS as usize, |i| (i * 7 + 3) as u8);
    assert_eq!(c0.run(&r, IoOp::Write, 10, 4, &data), IoStatus::Success);
    assert_eq!(r.read_raw("M0", 522, 4), data.bytes().to_vec());
    let dm_writes = r.d.enter(MAIN, || c0.ch.stats().snapshot().op(IoOp::Write).ops);
    let m0_writes = r.d.enter(MAIN, || {
        r.reg.get("M0").unwrap().local_stats().unwrap().op(IoOp::Write).ops
    });
    assert_eq!((dm_writes, m0_writes), (1, 1));
    // Flush is not part of a route: the module takes it.
    assert_eq!(c1.run_nodata(&r, IoOp::Flush, 0, 0), IoStatus::Success);

    // Suspended: no route, and what arrives is held, then finished after resume.
    r.suspend("d", false).unwrap();
    assert!(!routed(&r, &c0) && !routed(&r, &c1));
    let back = DmaBuf::new(4 * BS as usize);
    assert!(c1.start(&r, IoOp::Read, 10, 4, Some(&back), 7));
    for _ in 0..50 {
        r.d.turn();
    }
    assert!(c1.poll().is_empty(), "held while suspended");
    r.resume("d").unwrap();
    assert_eq!(c1.wait(&r, 1, Duration::from_secs(5)), vec![(7, IoStatus::Success)]);
    assert_eq!(back.bytes().to_vec(), data.bytes().to_vec());
    assert!(routed(&r, &c0) && routed(&r, &c1));

    // Striped over two legs: routed; a chunk-crossing request goes to the module and is split.
    r.load("d", "0 1536 striped 2 8 M1 0 M2 0").unwrap();
    r.suspend("d", false).unwrap();
    r.resume("d").unwrap();
    assert!(routed(&r, &c0));
    let one = pattern(BS as usize, |i| i as u8 ^ 0x5a);
    // Block 9 = chunk 1 (blocks 8..15) = leg 1 (M2), its chunk 0, block 1.
    assert_eq!(c0.run(&r, IoOp::Write, 9, 1, &one), IoStatus::Success);
    assert_eq!(r.read_raw("M2", 1, 1), one.bytes().to_vec());
    let cross = pattern(4 * BS as usize, |i| (i / 3) as u8);
    assert_eq!(c0.run(&r, IoOp::Write, 6, 4, &cross), IoStatus::Success);
    let mut got = r.read_raw("M1", 6, 2);
    got.extend(r.read_raw("M2", 0, 2));
    assert_eq!(got, cross.bytes().to_vec());

    // Three stripes (not a power of two): routed too. Chunk c is chunk c / 3 of leg c % 3.
    r.load("d", "0 1536 striped 3 8 M0 0 M1 0 M2 0").unwrap();
    r.suspend("d", false).unwrap();
    r.resume("d").unwrap();
    assert!(routed(&r, &c0) && routed(&r, &c1));
    for (block, dev, on_leg) in [(9, "M1", 1), (23, "M2", 7), (24, "M0", 8), (1535, "M2", 511)] {
        let one = pattern(BS as usize, |i| (i as u64 ^ block) as u8);
        assert_eq!(c1.run(&r, IoOp::Write, block, 1, &one), IoStatus::Success);
        assert_eq!(r.read_raw(dev, on_leg, 1), one.bytes().to_vec(), "block {block}");
        let back = DmaBuf::new(BS as usize);
        assert_eq!(c0.run(&r, IoOp::Read, block, 1, &back), IoStatus::Success);
        assert_eq!(back.bytes().to_vec(), one.bytes().to_vec(), "block {block} read back");
    }

    // Shapes the core does not map: two targets, an error target (the size stays: the bdev is
    // open).
    for table in ["0 768 linear M0 0\n768 768 linear M1 0", "0 1536 error"] {
        r.load("d", table).unwrap();
        r.suspend("d", false).unwrap();
        r.resume("d").unwrap();
        assert!(!routed(&r, &c0), "{table:?} is not routed");
    }
    // The module path still serves the two-target table: block 800 is M1's block 32.
    r.load("d", "0 768 linear M0 0\n768 768 linear M1 0").unwrap();
    r.suspend("d", false).unwrap();
    r.resume("d").unwrap();
    assert_eq!(c0.run(&r, IoOp::Write, 800, 1, &one), IoStatus::Success);
    assert_eq!(r.read_raw("M1", 32, 1), one.bytes().to_vec());

    c0.close(&r);
    c1.close(&r);
    r.remove("d", false).unwrap();
}

#[test]
fn a_removed_base_fails_routed_io_instead_of_serving_it() {
    let r = Rig::new(1);
    r.malloc("M0", 2048, BS as u32);
    r.create("d", Some("0 2048 linear M0 0")).unwrap();
    let mut c = r.client("d", MAIN, 2);
    assert!(routed(&r, &c));
    r.d.enter(MAIN, || r.reg.unregister("M0", || {}).unwrap());
    // Once the removal reached the core (its abort visit), routed I/O stops at the base.
    for _ in 0..10 {
        r.d.turn();
    }
    let buf = DmaBuf::new(BS as usize);
    // The dm device itself stays; I/O to the removed base fails (Linux: EIO), nothing is
    // acknowledged.
    assert_eq!(c.run(&r, IoOp::Write, 0, 1, &buf), IoStatus::Failed);
    c.close(&r);
}
