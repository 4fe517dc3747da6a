//! Spares and hot removal: a member bdev hot-removed (unregistered) while a sync runs — the
//! initial resync, a recovery onto a spare, a check — then a spare added with `md_add`: the
//! spare must recover and end `in_sync`, and the array must end redundant with copies that
//! compare equal (before: the spare was marked faulty within half a second after 32 "member
//! I/O failed" and the array ran on one member for good: the running sync still used the removed
//! member's channel, and its failures were charged to the role, which the spare held by then).
//! Then the rebuilt member is failed, removed and added back, and recovers again; a check finds
//! no mismatch, and the raid1 members compare equal byte for byte. raid1 and raid10 near-2.

mod common;

use common::{Rig, MAIN};
use keel_bdev::IoStatus;
use keel_md::CreateOpts;

const BLOCKS: u64 = 16384;

fn in_sync(r: &Rig, name: &str) -> Vec<String> {
    r.array(name)
        .members
        .iter()
        .filter(|m| m.state == "in_sync")
        .map(|m| m.bdev.clone())
        .collect()
}

fn unregister(r: &Rig, bdev: &str) {
    r.d.enter(MAIN, || r.reg.unregister(bdev, || {}).unwrap());
    r.run_for_ms(5);
}

/// Member `m`'s data area equals `n`'s (raid1: whole data areas).
fn copies_equal(r: &Rig, a: &str, b: &str) {
    let off = r.superblock(a).data_offset_sectors;
    let len = r.superblock(a).size_sectors;
    assert_eq!(
        r.read_bytes(a, off * 512, len * 512),
        r.read_bytes(b, off * 512, len * 512),
        "'{a}' and '{b}' differ"
    );
}

fn wait_idle_redundant(r: &Rig, name: &str, members: usize) {
    r.wait_until(60, "recovery to the end", |r| {
        let a = r.array(name);
        a.sync.action == "idle" && !a.state.contains("degraded") && in_sync(r, name).len() == members
    });
}

fn scenario(level: &str, action: &str) {
    let r = Rig::new(1);
    let members: Vec<String> = if level == "raid1" {
        vec!["M0".into(), "M1".into()]
    } else {
        (0..4).map(|i| format!("M{i}")).collect()
    };
    for m in members.iter().map(String::as_str).chain(["S0", "S1"]) {
        r.malloc(m, BLOCKS, 512);
    }
    r.create(CreateOpts {
        name: "mir".into(),
        level: level.into(),
        members: members.clone(),
        chunk_kb: Some(64),
        assume_clean: action != "resync",
        bitmap: Some("none".into()),
        ..Default::default()
    })
    .unwrap();
    let n = members.len();
    let blocks = r.reg.get("mir").unwrap().info().num_blocks;
    for i in 0..8u64 {
        let at = i * (blocks / 8);
        assert_eq!(r.write("mir", at, &common::pattern(i, 4096)), IoStatus::Success);
    }
    // Slow, so the removal lands in the middle of the run.
    r.md.set_sync_speed("mir", Some(1), Some(2000)).unwrap();
    match action {
        "resync" => {}
        "check" => r.md.set_sync_action("mir", "check").unwrap(),
        "recover" => {
            r.md.fail("mir", "M0").unwrap();
            r.run_for_ms(20);
            r.md.remove("mir", "M0").unwrap();
            r.add("mir", "S1").unwrap();
        }
        _ => unreachable!(),
    }
    r.wait_until(10, "the sync runs", |r| r.array("mir").sync.action == action);
    r.run_for_ms(50);
    // The member that is read from (resync/check: either; recovery: the source) stays; the
    // other goes: for recovery the target S1 vanishes.
    let gone = if action == "recover" { "S1" } else { "M1" };
    unregister(&r, gone);
    r.wait_until(10, "the removed member leaves", |r| {
        r.array("mir").members.iter().all(|m| m.bdev != gone)
    });
    r.md.set_sync_speed("mir", Some(1000), Some(200_000)).unwrap();
    r.add("mir", "S0").unwrap();
    wait_idle_redundant(&r, "mir", n);
    let survivors = in_sync(&r, "mir");
    assert!(survivors.contains(&"S0".to_string()), "{survivors:?}");
    for i in 0..8u64 {
        let at = i * (blocks / 8);
        assert_eq!(r.read("mir", at, 8), common::pattern(i, 4096), "{action}: block {at}");
    }
    // Fail the rebuilt member and add it back: it recovers again.
    r.md.fail("mir", "S0").unwrap();
    r.run_for_ms(20);
    r.md.remove("mir", "S0").unwrap();
    r.add("mir", "S0").unwrap();
    wait_idle_redundant(&r, "mir", n);
    // The array's own comparison of its copies, then (raid1) the members' bytes.
    r.md.set_sync_action("mir", "check").unwrap();
    r.wait_until(60, "check", |r| {
        let a = r.array("mir");
        a.sync.action == "idle" && a.sync.last_action == Some("check")
    });
    assert_eq!(
        r.array("mir").sync.mismatch_sectors,
        0,
        "{level} {action}: copies differ"
    );
    r.stop("mir").unwrap();
    if level == "raid1" {
        copies_equal(&r, &survivors[0], &survivors[1]);
    }
}

#[test]
fn removal_during_resync_then_spare() {
    scenario("raid1", "resync");
    scenario("raid10", "resync");
}

#[test]
fn removal_during_check_then_spare() {
    scenario("raid1", "check");
    scenario("raid10", "check");
}

#[test]
fn removal_of_the_recovery_target_then_spare() {
    scenario("raid1", "recover");
    scenario("raid10", "recover");
}
