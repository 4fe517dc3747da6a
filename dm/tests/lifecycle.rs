//! The life cycle of a mapped device against spec §9: create → info/table; load → inactive;
//! suspend holds I/O and resume swaps and releases it against the new table; load + clear;
//! resume without a staged table; rename and set_uuid raise events (and `wait` sees them);
//! duplicate names and uuids are EBUSY; remove while open is EBUSY, `force` works; failed
//! creates leave nothing behind; claims are taken by live and inactive tables and released by
//! clear, swap and remove.

mod common;

use std::time::Duration;

use common::{pattern, Rig, MAIN};
use keel_bdev::{IoOp, IoStatus};
use keel_dm::{CreateOpts, DmError, DmRegistry};

fn errno(r: Result<impl std::fmt::Debug, DmError>) -> i32 {
    match r {
        Err(e) => e.errno(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[test]
fn create_info_table_status() {
    let r = Rig::new(2);
    r.malloc("M0", 2048, 512);
    r.malloc("M1", 2048, 512);
    r.create("lin0", Some("0 2048 linear M0 0")).unwrap();
    let i = r.dm.info("lin0").unwrap();
    assert_eq!(i.attr(), "L--w");
    assert_eq!((i.event_nr, i.major, i.minor, i.target_count), (0, 253, 0, 1));
    assert_eq!(i.state(), "ACTIVE");
    assert_eq!(i.tables_present(), "LIVE");
    assert_eq!(i.read_ahead_sectors, Some(256));
    assert_eq!(r.dm.table(Some("lin0"), false).unwrap(), "0 2048 linear M0 0\n");
    assert_eq!(r.dm.status(Some("lin0")).unwrap(), "0 2048 linear \n");
    let b = r.reg.get("lin0").expect("the device's bdev is named after it");
    assert_eq!(
        (
            b.info().module,
            b.info().product_name,
            b.info().num_blocks,
            b.info().block_size
        ),
        ("dm", "Device Mapper", 2048, 512)
    );
    assert_eq!(r.reg.get("M0").unwrap().claimed_by().as_deref(), Some("dm"));
    assert_eq!(r.dm.deps("lin0").unwrap(), vec!["M0"]);

    // A multi-target device and the all-devices forms.
    r.create("multi", Some("0 100 zero\n100 100 error\n200 2048 linear M1 0"))
        .unwrap();
    assert_eq!(r.dm.info("multi").unwrap().minor, 1);
    assert_eq!(
        r.dm.table(None, false).unwrap(),
        "lin0: 0 2048 linear M0 0\nmulti: 0 100 zero \nmulti: 100 100 error \nmulti: 200 2048 linear M1 0\n"
    );
    assert_eq!(
        r.dm.status(Some("multi")).unwrap(),
        "0 100 zero \n100 100 error \n200 2048 linear \n"
    );
    // Striped status and read-ahead.
    r.malloc("S0", 4096, 512);
    r.malloc("S1", 4096, 512);
    r.create("st", Some("0 4096 striped 2 128 S0 0 S1 0")).unwrap();
    assert_eq!(
        r.dm.table(Some("st"), false).unwrap(),
        "0 4096 striped 2 128 S0 0 S1 0\n"
    );
    assert_eq!(r.dm.status(Some("st")).unwrap(), "0 4096 striped 2 S0 S1 1 AA\n");
    assert_eq!(r.dm.info("st").unwrap().read_ahead_sectors, Some(512));
    let names: Vec<String> = r.dm.list().into_iter().map(|i| i.name).collect();
    assert_eq!(names, vec!["lin0", "multi", "st"]);
    assert_eq!(
        DmRegistry::target_versions(),
        vec![
            ("zero", (1, 2, 0)),
            ("flakey", (1, 5, 0)),
            ("delay", (1, 4, 0)),
            ("striped", (1, 6, 0)),
            ("linear", (1, 4, 0)),
            ("error", (1, 7, 0)),
        ]
    );
}

#[test]
fn notable_load_clear_and_resume_without_table() {
    let r = Rig::new(1);
    r.malloc("M0", 1024, 512);
    r.create("d", None).unwrap();
    let i = r.dm.info("d").unwrap();
    assert_eq!(
        (i.attr().as_str(), i.tables_present(), i.target_count),
        ("---w", "None", 0)
    );
    assert_eq!(i.read_ahead_sectors, None);
    assert!(r.reg.get("d").is_none(), "no bdev before a live table");
    assert_eq!(r.dm.table(Some("d"), false).unwrap(), "");
    // Empty load refused.
    assert_eq!(errno(r.load("d", "")), -22);
    // load + clear.
    r.load("d", "0 1024 linear M0 0").unwrap();
    assert_eq!(r.dm.info("d").unwrap().attr(), "-I-w");
    assert_eq!(r.reg.get("M0").unwrap().claimed_by().as_deref(), Some("dm"));
    assert_eq!(r.dm.table(Some("d"), true).unwrap(), "0 1024 linear M0 0\n");
    r.d.enter(MAIN, || r.dm.clear("d")).unwrap();
    assert_eq!(r.dm.info("d").unwrap().attr(), "---w");
    assert_eq!(r.reg.get("M0").unwrap().claimed_by(), None, "clear released the claim");
    // Resume without a staged table: no change, no error.
    r.resume("d").unwrap();
    assert_eq!(r.dm.info("d").unwrap().attr(), "---w");
    // load + resume makes it live and registers the bdev.
    r.load("d", "0 1024 linear M0 0").unwrap();
    r.resume("d").unwrap();
    assert_eq!(r.dm.info("d").unwrap().attr(), "L--w");
    assert_eq!(r.reg.get("d").unwrap().info().num_blocks, 1024);
    assert_eq!(r.dm.info("d").unwrap().event_nr, 0, "load/resume raise no event");
}

#[test]
fn suspend_holds_io_and_resume_serves_it_from_the_new_table() {
    let r = Rig::new(2);
    r.malloc("A", 64, 4096);
    r.malloc("B", 64, 4096);
    r.write_raw("A", 0, &[0xAA; 4096]);
    r.write_raw("B", 0, &[0xBB; 4096]);
    r.create("sw", Some("0 512 linear A 0")).unwrap();
    let mut c = r.client("sw", keel_reactor::CoreId(1), 8);
    let buf = pattern(4096, |_| 0);
    assert_eq!(c.run(&r, IoOp::Read, 0, 1, &buf), IoStatus::Success);
    assert!(buf.bytes().iter().all(|&b| b == 0xAA));

    r.load("sw", "0 512 linear B 0").unwrap();
    assert_eq!(r.dm.info("sw").unwrap().attr(), "LI-w");
    r.suspend("sw", false).unwrap();
    assert_eq!(r.dm.info("sw").unwrap().attr(), "LIsw");
    assert_eq!(r.dm.info("sw").unwrap().state(), "SUSPENDED");
    r.suspend("sw", false).unwrap(); // idempotent
    let buf2 = pattern(4096, |_| 0);
    assert!(c.start(&r, IoOp::Read, 0, 1, Some(&buf2), 9));
    for _ in 0..200 {
        r.d.turn();
    }
    assert!(c.poll().is_empty(), "a suspended device holds I/O");
    r.resume("sw").unwrap();
    let done = c.wait(&r, 1, Duration::from_secs(5));
    assert_eq!(
        done,
        vec![(9, IoStatus::Success)],
        "held I/O completes after resume, not failed"
    );
    assert!(
        buf2.bytes().iter().all(|&b| b == 0xBB),
        "the held read was served by the new table"
    );
    assert_eq!(r.dm.info("sw").unwrap().attr(), "L--w");
    assert_eq!(
        r.reg.get("A").unwrap().claimed_by(),
        None,
        "the swapped-out table released A"
    );
    assert_eq!(r.reg.get("B").unwrap().claimed_by().as_deref(), Some("dm"));

    // A swap that changes the size while the bdev is open is refused, nothing changes.
    r.load("sw", "0 256 linear A 0").unwrap();
    assert_eq!(errno(r.resume("sw")), -16);
    assert_eq!(r.dm.info("sw").unwrap().attr(), "LI-w");
    // remove while open: EBUSY.
    assert_eq!(errno(r.remove("sw", false)), -16);
    c.close(&r);
    // Closed: the size change goes through (the bdev is re-registered at the new size).
    r.resume("sw").unwrap();
    assert_eq!(r.reg.get("sw").unwrap().info().num_blocks, 32);
    assert_eq!(r.dm.table(Some("sw"), false).unwrap(), "0 256 linear A 0\n");
    r.remove("sw", false).unwrap();
    assert!(r.reg.get("sw").is_none());
    assert_eq!(errno(r.dm.info("sw")), -6);
    assert_eq!(r.reg.get("A").unwrap().claimed_by(), None, "remove released the claims");
    assert_eq!(r.reg.get("B").unwrap().claimed_by(), None);
}

#[test]
fn names_uuids_events_and_wait() {
    let r = Rig::new(1);
    r.malloc("M0", 1024, 512);
    r.create_with(CreateOpts {
        name: "lin1".into(),
        table: Some("0 1024 linear M0 0".into()),
        uuid: Some("TEST-UUID-1".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.dm.info("lin1").unwrap().uuid.as_deref(), Some("TEST-UUID-1"));
    // Duplicate name or uuid: EBUSY; a bdev name counts as taken.
    assert_eq!(errno(r.create("lin1", None)), -16);
    assert_eq!(errno(r.create("M0", None)), -16);
    assert_eq!(
        errno(r.create_with(CreateOpts {
            name: "other".into(),
            uuid: Some("TEST-UUID-1".into()),
            ..Default::default()
        })),
        -16
    );
    // Bad names.
    for bad in ["", "a/b", "has space", &"x".repeat(128)] {
        assert_eq!(errno(r.create(bad, None)), -22, "{bad:?}");
    }
    // A waiter on the current number blocks; rename raises an event and releases it.
    let rx = r.start_op(|dm, done| dm.wait("lin1", 0, None, done));
    for _ in 0..50 {
        r.d.turn();
    }
    assert!(rx.try_recv().is_err(), "wait 0 blocks while the counter is 0");
    r.rename("lin1", "lin2").unwrap();
    let mut got = None;
    for _ in 0..100 {
        r.d.turn();
        if let Ok(x) = rx.try_recv() {
            got = Some(x);
            break;
        }
    }
    let info = got.expect("wait returned").unwrap();
    assert_eq!((info.name.as_str(), info.event_nr), ("lin2", 1));
    assert!(
        r.reg.get("lin1").is_none() && r.reg.get("lin2").is_some(),
        "the bdev follows the name"
    );
    assert_eq!(errno(r.dm.info("lin1")), -6);
    // set_uuid on a device that has one: EINVAL; on one without: event.
    assert_eq!(errno(r.d.enter(MAIN, || r.dm.set_uuid("lin2", "U2"))), -22);
    r.create("nouuid", None).unwrap();
    r.d.enter(MAIN, || r.dm.set_uuid("nouuid", "U3")).unwrap();
    assert_eq!(errno(r.d.enter(MAIN, || r.dm.set_uuid("nouuid", "U4"))), -22);
    let i = r.dm.info("nouuid").unwrap();
    assert_eq!((i.uuid.as_deref(), i.event_nr), (Some("U3"), 1));
    // wait with a number that differs returns at once; a timeout gives ETIMEDOUT.
    assert_eq!(r.op(|dm, done| dm.wait("lin2", 0, None, done)).unwrap().event_nr, 1);
    assert_eq!(errno(r.op(|dm, done| dm.wait("lin2", 1, Some(20_000), done))), -110);
    // rename onto a taken name: EBUSY.
    assert_eq!(errno(r.rename("lin2", "nouuid")), -16);
}

#[test]
fn failed_creates_leave_nothing_behind() {
    let r = Rig::new(1);
    r.malloc("M0", 1024, 512);
    r.malloc("M4k", 128, 4096);
    for (table, needle) in [
        ("0 1024 linear M0", "Invalid argument count"),
        ("0 1024 linear M0 x", "field 5 <offset> 'x'"),
        ("0 1024 linear Nope 0", "not found"),
        ("0 2048 linear M0 0", "too small for target"),
        ("0 1024 striped 2 96 M0 0 M0 512", "not a power of two"),
        ("0 1000 striped 2 128 M0 0 M0 512", "not divisible by chunk size"),
        ("0 1024 striped 3 128 M0 0 M0 512", "not divisible by number of stripes"),
        ("0 1024 striped 2 128 M0 0", "Not enough destinations"),
        ("0 1024 zero x", "No arguments required"),
        ("0 1024 delay M0 0", "Requires exactly 3, 6 or 9 arguments"),
        ("0 1024 flakey M0 0 0 0", "Total (up + down) interval is zero"),
        ("0 1024 flakey M0 0 1 1 2 drop_writes error_writes", "conflicts"),
        ("0 12 linear M4k 0", "not aligned to the logical block size"),
        ("0 8 linear M4k 1", "not aligned"),
        ("0 64 striped 2 4 M4k 0 M4k 64", "smaller than the logical block size"),
        ("0 8 zero\n10 8 zero", "Gap in table"),
    ] {
        match r.create("bad", Some(table)) {
            Err(e) => {
                assert_eq!(e.errno(), -22, "{table}: {e}");
                let msg = e.to_string();
                assert!(msg.contains(needle), "{table}: {msg}");
                assert!(msg.contains("line"), "{table}: {msg}");
            }
            Ok(()) => panic!("{table} was accepted"),
        }
        assert!(r.dm.list().is_empty(), "{table}: device left behind");
        assert!(r.reg.get("bad").is_none());
        assert_eq!(
            r.reg.get("M0").unwrap().claimed_by(),
            None,
            "{table}: claim left behind"
        );
    }
    // A base claimed by another module: EBUSY.
    keel_bdev::modules::passthru::create(&r.reg, &keel_bdev::modules::passthru::PassthruOpts::new("P0", "M0")).unwrap();
    assert_eq!(errno(r.create("bad", Some("0 1024 linear M0 0"))), -16);
    assert!(r.dm.list().is_empty());
}

#[test]
fn shared_claims_and_dependency_cycles() {
    let r = Rig::new(1);
    r.malloc("M0", 2048, 512);
    // Two devices over one bdev (LVM's case) share dm's claim.
    r.create("a", Some("0 1024 linear M0 0")).unwrap();
    r.create("b", Some("0 1024 linear M0 1024")).unwrap();
    // A device over a device.
    r.create("top", Some("0 1024 linear a 0")).unwrap();
    assert_eq!(r.reg.get("a").unwrap().claimed_by().as_deref(), Some("dm"));
    assert_eq!(r.dm.info("a").unwrap().open_count, 1);
    assert_eq!(errno(r.remove("a", false)), -16, "a is open by top's table");
    // a's table may not name top (cycle), nor a itself.
    let e = r.load("a", "0 1024 linear top 0").unwrap_err().to_string();
    assert!(e.contains("cycle"), "{e}");
    let e = r.load("a", "0 1024 linear a 0").unwrap_err().to_string();
    assert!(e.contains("cycle"), "{e}");
    // Nor through another module's layer: a passthru over top (found by save_config_property:
    // such a staged table made I/O circle between the two devices).
    keel_bdev::modules::passthru::create(&r.reg, &keel_bdev::modules::passthru::PassthruOpts::new("PT", "top"))
        .unwrap();
    let e = r.load("a", "0 1024 linear PT 0").unwrap_err().to_string();
    assert!(e.contains("cycle"), "{e}");
    let (tx, rx) = std::sync::mpsc::channel();
    keel_bdev::modules::passthru::delete(&r.reg, "PT", move || tx.send(()).unwrap()).unwrap();
    r.wait_reply(&rx, "passthru delete");
    r.remove("top", false).unwrap();
    r.remove("a", false).unwrap();
    assert_eq!(
        r.reg.get("M0").unwrap().claimed_by().as_deref(),
        Some("dm"),
        "b still holds it"
    );
    r.remove("b", false).unwrap();
    assert_eq!(r.reg.get("M0").unwrap().claimed_by(), None);
}

#[test]
fn read_only_tables_and_caps_that_follow_the_table() {
    let r = Rig::new(1);
    r.malloc("M0", 64, 4096);
    r.create_with(CreateOpts {
        name: "ro".into(),
        table: Some("0 512 linear M0 0".into()),
        readonly: true,
        ..Default::default()
    })
    .unwrap();
    let i = r.dm.info("ro").unwrap();
    assert_eq!((i.attr().as_str(), i.state().as_str()), ("L--r", "ACTIVE (READ-ONLY)"));
    let mut c = r.client("ro", MAIN, 1);
    let buf = pattern(4096, |_| 3);
    assert_eq!(c.run(&r, IoOp::Read, 0, 1, &buf), IoStatus::Success);
    assert_eq!(c.run(&r, IoOp::Write, 0, 1, &buf), IoStatus::ReadOnly);
    assert_eq!(c.run_nodata(&r, IoOp::Unmap, 0, 1), IoStatus::ReadOnly);
    c.close(&r);
    // A writable reload; the zero target cannot write_zeroes, so the bdev (closed) loses it.
    r.load("ro", "0 512 zero").unwrap();
    r.resume("ro").unwrap();
    assert_eq!(r.dm.info("ro").unwrap().attr(), "L--w");
    let caps = r.reg.get("ro").unwrap().info().caps;
    assert!(!caps.supports(IoOp::WriteZeroes) && caps.supports(IoOp::Unmap));
}

#[test]
fn force_remove_fails_held_io() {
    let r = Rig::new(1);
    r.malloc("M0", 64, 4096);
    r.create("f", Some("0 512 linear M0 0")).unwrap();
    let mut c = r.client("f", MAIN, 4);
    r.suspend("f", false).unwrap();
    let buf = pattern(4096, |_| 1);
    assert!(c.start(&r, IoOp::Write, 0, 1, Some(&buf), 5));
    for _ in 0..20 {
        r.d.turn();
    }
    assert!(c.poll().is_empty());
    assert_eq!(errno(r.remove("f", false)), -16);
    r.remove("f", true).unwrap();
    let done = c.wait(&r, 1, Duration::from_secs(5));
    assert_eq!(done.len(), 1);
    assert_ne!(done[0].1, IoStatus::Success, "force remove fails outstanding I/O");
    assert!(r.reg.get("f").is_none());
    assert_eq!(r.reg.get("M0").unwrap().claimed_by(), None);
    c.close(&r);
}
