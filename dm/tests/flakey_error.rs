//! `error`, `zero`, `flakey` and striped leg health produce exactly the behaviour their tables
//! ask for (spec §3, §9.9–9.12): which ops fail, which writes are dropped, which byte is
//! corrupted, and that nothing else changes — checked against the base bdev's bytes.

mod common;

use common::{pattern, Rig, MAIN};
use keel_bdev::modules::error::{self as ee, ErrorOpts, InjectOpts};
use keel_bdev::{DmaBuf, IoOp, IoStatus};

const BS: usize = 4096;

/// A rig with malloc M0 (64 blocks of 4 KiB) filled with a known pattern.
fn rig() -> (Rig, Vec<u8>) {
    let r = Rig::new(1);
    r.malloc("M0", 64, BS as u32);
    let data: Vec<u8> = (0..64 * BS).map(|i| (i * 7 + i / 4096) as u8).collect();
    r.write_raw("M0", 0, &data);
    (r, data)
}

#[test]
fn error_and_zero_targets() {
    let (r, base) = rig();
    r.create("ez", Some("0 64 zero\n64 64 error\n128 128 linear M0 0"))
        .unwrap();
    let mut c = r.client("ez", MAIN, 1);
    // zero: reads zeroes, writes and unmaps succeed and are dropped; write_zeroes unsupported
    // (the device lacks it because a zero target cannot do it).
    let buf = pattern(2 * BS, |_| 0xEE);
    assert_eq!(c.run(&r, IoOp::Read, 0, 2, &buf), IoStatus::Success);
    assert!(buf.bytes().iter().all(|&b| b == 0));
    let w = pattern(BS, |_| 1);
    assert_eq!(c.run(&r, IoOp::Write, 3, 1, &w), IoStatus::Success);
    assert_eq!(c.run(&r, IoOp::Read, 3, 1, &buf), IoStatus::Success);
    assert!(buf.bytes()[..BS].iter().all(|&b| b == 0), "zero swallowed the write");
    assert_eq!(c.run_nodata(&r, IoOp::Unmap, 0, 8), IoStatus::Success);
    assert_eq!(c.run_nodata(&r, IoOp::WriteZeroes, 0, 1), IoStatus::Unsupported);
    // error: every read, write, unmap fails; flush of the device succeeds (no flush legs).
    for op in [IoOp::Read, IoOp::Write] {
        assert_eq!(c.run(&r, op, 8, 1, &w), IoStatus::Failed, "{op:?}");
    }
    assert_eq!(c.run_nodata(&r, IoOp::Unmap, 8, 8), IoStatus::Failed);
    assert_eq!(c.run_nodata(&r, IoOp::Flush, 0, 0), IoStatus::Success);
    // An I/O crossing zero → error → linear fails as a whole, and the linear part is written.
    let big = pattern(18 * BS, |i| (i / BS) as u8 + 100);
    assert_eq!(c.run(&r, IoOp::Write, 7, 18, &big), IoStatus::Failed);
    let raw = r.read_raw("M0", 0, 64);
    // blocks 16..25 of the device = M0 blocks 0..9 got the tail of the write (big blocks 9..18).
    for b in 0..9 {
        assert!(
            raw[b * BS..(b + 1) * BS].iter().all(|&x| x == 109 + b as u8),
            "block {b}"
        );
    }
    assert_eq!(&raw[9 * BS..], &base[9 * BS..], "nothing else changed");
    c.close(&r);
}

/// A flakey device (always down: up 0, down 1000 s) with `features`, over all of M0.
fn down(r: &Rig, name: &str, features: &str) {
    r.create(name, Some(&format!("0 512 flakey M0 0 0 1000 {features}")))
        .unwrap();
}

#[test]
fn flakey_features_while_down() {
    let (r, base) = rig();
    let w = pattern(BS, |_| 0x11);
    let rbuf = DmaBuf::new(BS);

    // No features: reads and writes fail (the two implicit features).
    down(&r, "f0", "");
    assert_eq!(
        r.dm.table(Some("f0"), false).unwrap(),
        "0 512 flakey M0 0 0 1000 2 error_reads error_writes\n"
    );
    assert_eq!(r.dm.status(Some("f0")).unwrap(), "0 512 flakey \n");
    let mut c = r.client("f0", MAIN, 1);
    assert_eq!(c.run(&r, IoOp::Read, 0, 1, &rbuf), IoStatus::Failed);
    assert_eq!(c.run(&r, IoOp::Write, 0, 1, &w), IoStatus::Failed);
    assert_eq!(c.run_nodata(&r, IoOp::Flush, 0, 0), IoStatus::Success);
    c.close(&r);
    r.remove("f0", false).unwrap();
    assert_eq!(r.read_raw("M0", 0, 64), base);

    // drop_writes: writes succeed without reaching M0, reads pass.
    down(&r, "f1", "1 drop_writes");
    assert_eq!(
        r.dm.table(Some("f1"), false).unwrap(),
        "0 512 flakey M0 0 0 1000 1 drop_writes\n"
    );
    let mut c = r.client("f1", MAIN, 1);
    assert_eq!(c.run(&r, IoOp::Write, 2, 1, &w), IoStatus::Success);
    assert_eq!(c.run(&r, IoOp::Read, 2, 1, &rbuf), IoStatus::Success);
    assert_eq!(&rbuf.bytes()[..], &base[2 * BS..3 * BS]);
    c.close(&r);
    r.remove("f1", false).unwrap();
    assert_eq!(r.read_raw("M0", 0, 64), base, "dropped writes left M0 untouched");

    // error_writes: writes fail, reads pass.
    down(&r, "f2", "1 error_writes");
    let mut c = r.client("f2", MAIN, 1);
    assert_eq!(c.run(&r, IoOp::Write, 2, 1, &w), IoStatus::Failed);
    assert_eq!(c.run_nodata(&r, IoOp::Unmap, 2, 1), IoStatus::Failed);
    assert_eq!(c.run(&r, IoOp::Read, 2, 1, &rbuf), IoStatus::Success);
    c.close(&r);
    r.remove("f2", false).unwrap();

    // error_reads: reads fail, writes go through.
    down(&r, "f3", "1 error_reads");
    let mut c = r.client("f3", MAIN, 1);
    assert_eq!(c.run(&r, IoOp::Read, 2, 1, &rbuf), IoStatus::Failed);
    assert_eq!(c.run(&r, IoOp::Write, 5, 1, &w), IoStatus::Success);
    c.close(&r);
    r.remove("f3", false).unwrap();
    let now = r.read_raw("M0", 0, 64);
    assert!(now[5 * BS..6 * BS].iter().all(|&b| b == 0x11));
    let mut base = base;
    base[5 * BS..6 * BS].fill(0x11);
    assert_eq!(now, base);

    // corrupt_bio_byte 32 r 171 0: a read returns M0's data with exactly byte 31 set to 171.
    down(&r, "f4", "5 corrupt_bio_byte 32 r 171 0");
    assert_eq!(
        r.dm.table(Some("f4"), false).unwrap(),
        "0 512 flakey M0 0 0 1000 5 corrupt_bio_byte 32 r 171 0\n"
    );
    let mut c = r.client("f4", MAIN, 1);
    let two = DmaBuf::new(2 * BS);
    assert_eq!(c.run(&r, IoOp::Read, 1, 2, &two), IoStatus::Success);
    let mut expect = base[BS..3 * BS].to_vec();
    expect[31] = 171;
    assert_eq!(&two.bytes()[..], &expect[..], "exactly byte 32 of the read changed");
    assert_eq!(c.run(&r, IoOp::Write, 6, 1, &w), IoStatus::Success, "writes unaffected");
    c.close(&r);
    r.remove("f4", false).unwrap();
    base[6 * BS..7 * BS].fill(0x11);
    assert_eq!(r.read_raw("M0", 0, 64), base, "read corruption never reaches M0");

    // corrupt_bio_byte 5 w 7 0: what lands on M0 has byte 4 = 7; the caller's buffer is intact.
    down(&r, "f5", "5 corrupt_bio_byte 5 w 7 0");
    let mut c = r.client("f5", MAIN, 1);
    let w2 = pattern(BS, |i| i as u8);
    assert_eq!(c.run(&r, IoOp::Write, 9, 1, &w2), IoStatus::Success);
    assert!(
        w2.bytes().iter().enumerate().all(|(i, &b)| b == i as u8),
        "caller's buffer restored"
    );
    c.close(&r);
    r.remove("f5", false).unwrap();
    let now = r.read_raw("M0", 9, 1);
    let mut exp: Vec<u8> = (0..BS).map(|i| i as u8).collect();
    exp[4] = 7;
    assert_eq!(now, exp);

    // random_read_corrupt with probability 1: every read has exactly one byte changed.
    down(&r, "f6", "2 random_read_corrupt 1000000000");
    let mut c = r.client("f6", MAIN, 1);
    let expect_blk = r.read_raw("M0", 20, 1);
    for _ in 0..8 {
        assert_eq!(c.run(&r, IoOp::Read, 20, 1, &rbuf), IoStatus::Success);
        let diff = rbuf.bytes().iter().zip(&expect_blk).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 1);
    }
    c.close(&r);
    r.remove("f6", false).unwrap();

    // Up (down interval 0): plain linear.
    r.create("up", Some("0 512 flakey M0 0 1000 0 1 error_reads")).unwrap();
    let mut c = r.client("up", MAIN, 1);
    assert_eq!(c.run(&r, IoOp::Read, 20, 1, &rbuf), IoStatus::Success);
    assert_eq!(&rbuf.bytes()[..], &expect_blk[..]);
    c.close(&r);
    // No messages.
    let e = r.dm.message("up", 0, "hello").unwrap_err();
    assert_eq!(e.errno(), -22);
    assert!(e.to_string().contains("does not support messages"), "{e}");
}

#[test]
fn striped_leg_errors_show_in_status_and_raise_events() {
    let r = Rig::new(1);
    r.malloc("M0", 64, BS as u32);
    r.malloc("M1", 64, BS as u32);
    ee::create(
        &r.reg,
        &ErrorOpts {
            base_name: "M1".into(),
            uuid: None,
        },
    )
    .unwrap();
    r.create("st", Some("0 1024 striped 2 16 M0 0 EE_M1 0")).unwrap();
    assert_eq!(r.dm.status(Some("st")).unwrap(), "0 1024 striped 2 M0 EE_M1 1 AA\n");
    let ev0 = r.dm.info("st").unwrap().event_nr;
    let waiter = r.start_op(move |dm, done| dm.wait("st", ev0, None, done));
    let mut o = InjectOpts::new("EE_M1", "read", "failure");
    o.num = Some(1);
    ee::inject(&r.reg, &o).unwrap();
    let mut c = r.client("st", MAIN, 1);
    let buf = DmaBuf::new(4 * BS);
    // Blocks 0-1 are on leg 0, blocks 2-3 on leg 1: the read is split and its leg-1 piece fails.
    assert_eq!(c.run(&r, IoOp::Read, 0, 4, &buf), IoStatus::Failed);
    assert_eq!(r.dm.status(Some("st")).unwrap(), "0 1024 striped 2 M0 EE_M1 1 AD\n");
    let mut got = None;
    for _ in 0..100 {
        r.d.turn();
        if let Ok(x) = waiter.try_recv() {
            got = Some(x);
            break;
        }
    }
    let info = got.expect("wait returned after the leg error").unwrap();
    assert_eq!(info.event_nr, ev0 + 1);
    // A direct (one-chunk) failing read on leg 1 counts too.
    ee::inject(&r.reg, &o).unwrap();
    assert_eq!(c.run(&r, IoOp::Read, 2, 1, &buf), IoStatus::Failed);
    for _ in 0..10 {
        r.d.turn();
    }
    assert_eq!(r.dm.info("st").unwrap().event_nr, ev0 + 2);
    assert_eq!(c.run(&r, IoOp::Read, 0, 4, &buf), IoStatus::Success);
    c.close(&r);
}
