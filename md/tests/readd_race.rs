//! Re-adding a member while a stopped sync is still winding down (issue 13's leftover).
//!
//! A recovery onto member X runs window by window; X is failed while a window is in flight (the
//! daemon stops the run, but the window's reads are still out), removed, written around, and
//! added back at once: `md_add` finds X's own superblock naming its old role, which is empty.
//! Before the fix the re-add took the role at once (`Rebuilding`, 0 sectors recovered) — and
//! when the old run's window came back, the run published its progress to that role's slot:
//! the new recovery started after that window and never copied what was written to the array
//! while X was out below it, yet X ended `in_sync` (a Done run would even have marked it in sync
//! outright). Linux gives a re-added device its role only once no sync thread is running; so
//! does Keel now.
//!
//! Deterministic: the reads of the sync's source member go through a delay bdev holding them
//! one second (writes are not delayed, and the writes meanwhile cover whole stripes, so they
//! read nothing), so the window is still in flight when X comes back —
//! the test asserts that precondition (the old run still reports "recover" when `md_add`
//! answers) rather than hoping for it. The outcome: after the recovery, with the other copy
//! failed, the array reads what was written last (raid1 from X itself, raid5 rebuilt with X's
//! chunks), and a check finds no mismatch.

mod common;

use common::{pattern, Rig, MAIN};
use keel_bdev::modules::delay::{self, DelayOpts};
use keel_bdev::IoStatus;
use keel_md::CreateOpts;

/// 16 MiB members of 512-byte blocks.
const BLOCKS: u64 = 32768;
/// A second, in µs: how long the source's reads are held.
const HOLD_US: u64 = 1_000_000;

fn set_read_delay(r: &Rig, us: u64) {
    for t in ["avg_read", "p99_read"] {
        delay::update_latency(&r.reg, "D0", t, us).unwrap();
    }
}

/// Fails `x` and takes it out of the array (once the daemon moved it to the faulty list).
fn fail_remove(r: &Rig, name: &str, x: &str) {
    r.md.fail(name, x).unwrap();
    r.wait_until(10, "the failed member leaves its role", |r| {
        r.md.remove(name, x).is_ok()
    });
}

fn scenario(level: &str) {
    let r = Rig::new(1);
    let others: &[&str] = if level == "raid1" { &[] } else { &["M1", "M2"] };
    r.malloc("M0", BLOCKS, 512);
    r.d.enter(MAIN, || {
        delay::create(&r.reg, &DelayOpts::new("D0", "M0", 0, 0, 0, 0)).unwrap();
    });
    for m in others.iter().chain(&["X"]) {
        r.malloc(m, BLOCKS, 512);
    }
    let members: Vec<String> = ["D0"]
        .iter()
        .chain(others)
        .chain(&["X"])
        .map(|s| s.to_string())
        .collect();
    r.create(CreateOpts {
        name: "arr".into(),
        level: level.into(),
        members,
        chunk_kb: Some(64),
        bitmap: Some("internal".into()),
        assume_clean: true,
        ..Default::default()
    })
    .unwrap();
    // Windows of 4 MiB one after the other, no pacing.
    r.md.set_sync_speed("arr", Some(1_000_000), Some(4_000_000)).unwrap();
    let a = pattern(0xa, 8 << 20);
    let b = pattern(0xb, 1 << 20);
    // Whole stripes (raid5: 3 × 64 KiB), so that writing it needs no read of the held source.
    let c = pattern(0xc, 768 << 10);
    assert_eq!(r.write("arr", 0, &a), IoStatus::Success);

    // X leaves and misses B; it comes back (a bitmap re-add) and its recovery starts with the
    // source's reads held.
    fail_remove(&r, "arr", "X");
    assert_eq!(r.write("arr", 0, &b), IoStatus::Success);
    set_read_delay(&r, HOLD_US);
    r.add("arr", "X").unwrap();
    r.wait_until(10, "the first window of the recovery", |r| {
        let s = r.array("arr").sync;
        s.action == "recover" && s.done_sectors > 0
    });
    let first_window = r.array("arr").sync.done_sectors;
    r.run_for_ms(50);
    assert_eq!(
        r.array("arr").sync.done_sectors,
        first_window,
        "the second window is in flight (its reads held a second)"
    );

    // X leaves again with that window in flight, misses C below it, and comes back at once.
    fail_remove(&r, "arr", "X");
    assert_eq!(r.write("arr", 0, &c), IoStatus::Success);
    r.add("arr", "X").unwrap();
    assert_eq!(
        r.array("arr").sync.action,
        "recover",
        "precondition: the stopped run is still winding down when X is re-added"
    );
    set_read_delay(&r, 0);

    r.wait_until(60, "X recovered", |r| {
        let a = r.array("arr");
        a.sync.action == "idle" && !a.state.contains("degraded") && a.members.iter().all(|m| m.state == "in_sync")
    });
    assert!(r.array("arr").members.iter().any(|m| m.bdev == "X"));
    r.md.set_sync_action("arr", "check").unwrap();
    r.wait_until(60, "check", |r| {
        let a = r.array("arr");
        a.sync.action == "idle" && a.sync.last_action == Some("check")
    });
    assert_eq!(
        r.array("arr").sync.mismatch_sectors,
        0,
        "{level}: check after the recovery"
    );
    // Only X (raid1) or X and the two others (raid5) serve now.
    r.md.fail("arr", "D0").unwrap();
    r.run_for_ms(20);
    let mut want = a.clone();
    want[..b.len()].copy_from_slice(&b);
    want[..c.len()].copy_from_slice(&c);
    let got = r.read("arr", 0, want.len() as u64 / 512);
    let bad = got.chunks(4096).zip(want.chunks(4096)).position(|(g, w)| g != w);
    assert!(
        bad.is_none(),
        "{level}: without the source, 4 KiB block {bad:?} of the array is not what was written last \
         (X's recovery skipped what it missed)"
    );
    r.stop("arr").unwrap();
}

#[test]
fn raid1_readd_while_a_stopped_recovery_winds_down() {
    scenario("raid1");
}

#[test]
fn raid5_readd_while_a_stopped_recovery_winds_down() {
    scenario("raid5");
}
