//! Bases that go away under dm tables (issue 13, item 5).
//!
//! * A delete of a bdev that a live or staged table names is refused with EBUSY naming the
//!   device, through every module's delete — directly, or when the bdev would only go along
//!   with the one deleted (a malloc under a passthru the table names); the claim holds.
//! * A hot-removed base (the disk vanished: `unregister`, which no one can refuse) leaves the
//!   device as Linux does, but a staged table naming it is never made live: `dm_resume` fails
//!   with ENODEV naming the bdev and the old table stays — it used to go live over the missing
//!   bdev.
//! * save_config after such a removal still loads: the live table is saved with `error`
//!   targets where the lost bdev was (the same I/O fails after a reload) and the unresumable
//!   staged table is left out; replaying the saved dm calls in a fresh registry with the
//!   surviving bdevs works. Before, the saved table named the missing bdev and the load failed.

mod common;

use common::{pattern, Rig, MAIN};
use keel_bdev::modules::delay::{self as bdelay, DelayOpts};
use keel_bdev::modules::{malloc, passthru};
use keel_bdev::{BdevError, BdevModule, IoOp, IoStatus};
use keel_dm::{CreateOpts, DmError};

fn unregister(r: &Rig, name: &str) {
    let (tx, rx) = std::sync::mpsc::channel();
    r.d.enter(MAIN, || r.reg.unregister(name, move || tx.send(()).unwrap()))
        .unwrap();
    assert!(r.d.run_until(10_000, || rx.try_recv().is_ok()), "unregister of {name}");
}

fn delete_malloc(r: &Rig, name: &str) -> Result<(), BdevError> {
    r.d.enter(MAIN, || malloc::delete(&r.reg, name, || {}))
}

#[test]
fn deletes_of_held_bases_are_refused_and_change_nothing() {
    let r = Rig::new(1);
    r.malloc("M0", 2048, 512);
    r.malloc("M1", 2048, 512);
    r.malloc("M2", 2048, 512);
    passthru::create(&r.reg, &passthru::PassthruOpts::new("P0", "M1")).unwrap();
    r.create("x", Some("0 1024 linear M0 0\n1024 1024 linear P0 0"))
        .unwrap();
    r.create("y", None).unwrap();
    r.load("y", "0 2048 linear M2 0").unwrap();
    for (name, holder) in [
        ("M0", "dm device 'x' (live table)"),
        ("M1", "dm device 'x' (live table) through 'P0', which goes with it"),
        ("M2", "dm device 'y' (staged table)"),
    ] {
        match delete_malloc(&r, name) {
            Err(e @ BdevError::InUse { .. }) => {
                assert_eq!(e.errno(), -libc::EBUSY);
                assert!(e.to_string().contains(holder), "{name}: {e}");
            }
            other => panic!("delete of {name}: {other:?}"),
        }
        assert!(r.reg.get(name).is_some(), "{name} is still there");
        assert_eq!(
            r.reg.get(name).unwrap().claimed_by().as_deref(),
            Some(if name == "M1" { "passthru" } else { "dm" })
        );
    }
    let e = r.d.enter(MAIN, || passthru::delete(&r.reg, "P0", || {})).unwrap_err();
    assert!(e.to_string().contains("dm device 'x' (live table)"), "{e}");
    assert_eq!(r.dm.holds(&r.reg.get("M0").unwrap()), ["dm device 'x' (live table)"]);
    // The same bdev in both tables of one device.
    r.load("x", "0 2048 linear M0 0").unwrap();
    assert_eq!(
        r.dm.holds(&r.reg.get("M0").unwrap()),
        ["dm device 'x' (live and staged tables)"]
    );
    assert_eq!(
        r.dm.table(Some("x"), false).unwrap(),
        "0 1024 linear M0 0\n1024 1024 linear P0 0\n"
    );
    r.remove("x", false).unwrap();
    r.remove("y", false).unwrap();
    delete_malloc(&r, "M0").unwrap();
    delete_malloc(&r, "M2").unwrap();
}

#[test]
fn a_staged_table_over_a_removed_base_never_goes_live() {
    let r = Rig::new(2);
    r.malloc("M0", 2048, 512);
    r.malloc("M1", 2048, 512);
    r.create("x", Some("0 2048 linear M0 0")).unwrap();
    r.load("x", "0 2048 linear M1 0").unwrap();
    unregister(&r, "M1");
    match r.resume("x") {
        Err(e @ DmError::BaseRemoved { .. }) => {
            assert_eq!(e.errno(), -libc::ENODEV);
            assert!(e.to_string().contains("'M1'"), "{e}");
        }
        other => panic!("resume over a removed base: {other:?}"),
    }
    assert_eq!(
        r.dm.table(Some("x"), false).unwrap(),
        "0 2048 linear M0 0\n",
        "the old table stays live"
    );
    assert!(r.dm.info("x").unwrap().inactive_table, "the staged table stays staged");
    // Suspended by hand first: the refused resume changes nothing (still suspended, still
    // staged); clearing the staged table lets it run again on the old one.
    r.malloc("M2", 2048, 512);
    r.load("x", "0 2048 linear M2 0").unwrap();
    r.suspend("x", false).unwrap();
    unregister(&r, "M2");
    assert!(matches!(r.resume("x"), Err(DmError::BaseRemoved { .. })));
    let info = r.dm.info("x").unwrap();
    assert!(info.suspended && info.inactive_table, "{info:?}");
    r.dm.clear("x").unwrap();
    r.resume("x").unwrap();
    assert!(!r.dm.info("x").unwrap().suspended);
    // A table over bdevs that are there resumes as usual.
    r.load("x", "0 2048 zero").unwrap();
    r.resume("x").unwrap();
    r.remove("x", false).unwrap();
}

#[test]
fn save_config_after_a_hot_removal_still_loads() {
    let r = Rig::new(1);
    r.malloc("M0", 4096, 512);
    r.malloc("M1", 4096, 512);
    r.malloc("M2", 4096, 512);
    r.create("x", Some("0 1024 linear M0 0\n1024 1024 linear M1 0\n2048 1024 zero"))
        .unwrap();
    r.create("y", Some("0 1024 linear M2 0")).unwrap();
    r.load("y", "0 1024 linear M1 8").unwrap();
    unregister(&r, "M1");
    let entries = r.dm.config(&r.reg);
    let calls: Vec<(String, serde_json::Value)> = entries
        .iter()
        .map(|e| (e.call.method.to_string(), e.call.params.clone()))
        .collect();
    let x = calls
        .iter()
        .find(|(m, p)| m == "dm_create" && p["name"] == "x")
        .unwrap();
    assert_eq!(
        x.1["table"], "0 1024 linear M0 0\n1024 1024 error \n2048 1024 zero \n",
        "the lost range is saved as an error target"
    );
    assert!(
        !calls.iter().any(|(m, p)| m == "dm_load" && p["name"] == "y"),
        "the staged table over the lost bdev is not saved: {calls:?}"
    );
    assert!(
        !entries.iter().any(|e| e.needs.iter().any(|n| n == "M1")),
        "nothing needs the lost bdev"
    );
    // Replay the saved dm calls in a fresh registry that has the surviving bdevs.
    let fresh = Rig::new(1);
    fresh.malloc("M0", 4096, 512);
    fresh.malloc("M2", 4096, 512);
    for (method, p) in &calls {
        match method.as_str() {
            "dm_create" => fresh
                .create_with(CreateOpts {
                    name: p["name"].as_str().unwrap().into(),
                    table: p["table"].as_str().map(str::to_string),
                    uuid: p["uuid"].as_str().map(str::to_string),
                    readonly: p["readonly"].as_bool().unwrap_or(false),
                    bdev_uuid: p["bdev_uuid"].as_str().map(|u| u.parse().unwrap()),
                    minor: p["minor"].as_u64().map(|m| m as u32),
                })
                .unwrap_or_else(|e| panic!("{p}: {e}")),
            "dm_load" => fresh
                .load(p["name"].as_str().unwrap(), p["table"].as_str().unwrap())
                .unwrap(),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        fresh.dm.table(Some("x"), false).unwrap(),
        "0 1024 linear M0 0\n1024 1024 error \n2048 1024 zero \n"
    );
    assert_eq!(
        fresh.reg.get("x").unwrap().info().num_blocks,
        r.reg.get("x").unwrap().info().num_blocks
    );
    r.remove("x", false).unwrap();
    r.remove("y", false).unwrap();
    fresh.remove("x", false).unwrap();
    fresh.remove("y", false).unwrap();
}

#[test]
fn a_base_removed_while_the_swap_drains_keeps_the_old_table() {
    let r = Rig::new(1);
    r.malloc("M0", 64, 4096);
    r.malloc("M1", 64, 4096);
    // A live table over a slow base, so the resume's suspend waits for a write in flight.
    bdelay::create(&r.reg, &DelayOpts::new("DL", "M0", 200_000, 200_000, 200_000, 200_000)).unwrap();
    r.create("x", Some("0 512 linear DL 0")).unwrap();
    r.load("x", "0 512 linear M1 0").unwrap();
    let mut c = r.client("x", MAIN, 2);
    let w = pattern(4096, |_| 0x5a);
    assert!(c.start(&r, IoOp::Write, 3, 1, Some(&w), 1));
    for _ in 0..5 {
        r.d.turn();
    }
    let resumed = r.start_op(|dm, done| dm.resume("x", done));
    for _ in 0..5 {
        r.d.turn();
    }
    assert!(resumed.try_recv().is_err(), "the swap waits for the write in flight");
    // The staged table's base goes while the device drains.
    unregister(&r, "M1");
    let result = (0..1_000_000)
        .find_map(|_| {
            r.d.turn();
            resumed.try_recv().ok()
        })
        .expect("the resume finished");
    assert!(matches!(result, Err(DmError::BaseRemoved { .. })), "{result:?}");
    assert_eq!(r.dm.table(Some("x"), false).unwrap(), "0 512 linear DL 0\n");
    assert!(
        !r.dm.info("x").unwrap().suspended,
        "the device runs again on its old table"
    );
    let done = c.wait(&r, 1, std::time::Duration::from_secs(5));
    assert_eq!(
        done,
        vec![(1, IoStatus::Success)],
        "the write completed through the old table"
    );
    assert!(r.read_raw("M0", 3, 1).iter().all(|&b| b == 0x5a));
    c.close(&r);
    r.remove("x", false).unwrap();
}
