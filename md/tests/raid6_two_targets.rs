//! raid6 over four members recovers two at once: the members taken out while the array ran
//! (written meanwhile) come back — by `md_add` (re-add into their roles, bitmap-guided) and
//! by assembly (stale members rebuilding) — and one recovery run rebuilds both. Over four
//! members such a run reads two members and writes two per piece: as many requests as its
//! reads give back — but when the reads come back in different polls, the engine lends the
//! first one to the next piece meanwhile. (Before, the piece then failed the run with "no free
//! sync requests for a piece's writes"; retried a second later it failed again, and the array
//! never became redundant.) One surviving member sits behind a delay bdev holding its reads
//! 2 ms, so the other's always come back first: deterministic. Each case ends with both
//! members in sync, a check without mismatches, and the data read back with the two other
//! members failed.

mod common;

use common::{pattern, Rig, MAIN};
use keel_bdev::modules::delay::{self, DelayOpts};
use keel_md::{AssembleOpts, CreateOpts};

const BLOCKS: u64 = 32768; // 16 MiB

fn members() -> Vec<String> {
    ["S0", "D1", "S2", "S3"].map(String::from).to_vec()
}

fn setup(r: &Rig) -> Vec<u8> {
    for m in ["S0", "S1", "S2", "S3"] {
        r.malloc(m, BLOCKS, 512);
    }
    r.d.enter(MAIN, || {
        delay::create(&r.reg, &DelayOpts::new("D1", "S1", 2000, 2000, 0, 0)).unwrap();
    });
    r.create(CreateOpts {
        name: "six".into(),
        level: "raid6".into(),
        members: members(),
        chunk_kb: Some(64),
        bitmap: Some("internal".into()),
        assume_clean: true,
        ..Default::default()
    })
    .unwrap();
    r.md.set_sync_speed("six", Some(1_000_000), Some(4_000_000)).unwrap();
    let size = r.reg.get("six").unwrap().info().num_blocks;
    let data = pattern(6, size as usize * 512);
    assert!(r.write("six", 0, &data).is_success());
    for m in ["S2", "S3"] {
        r.md.fail("six", m).unwrap();
        r.wait_until(10, "the failed member leaves", |r| r.md.remove("six", m).is_ok());
    }
    // Written while the two are out.
    let mut data = data;
    let fresh = pattern(66, 4 << 20);
    data[..fresh.len()].copy_from_slice(&fresh);
    assert!(r.write("six", 0, &fresh).is_success());
    data
}

fn verify(r: &Rig, data: &[u8]) {
    r.wait_until(60, "both members recovered", |r| {
        let a = r.array("six");
        a.sync.action == "idle" && a.members.iter().filter(|m| m.state == "in_sync").count() == 4
    });
    assert_eq!(r.array("six").sync.last_action, Some("recover"));
    r.md.set_sync_action("six", "check").unwrap();
    r.wait_until(60, "check", |r| {
        let a = r.array("six");
        a.sync.action == "idle" && a.sync.last_action == Some("check")
    });
    assert_eq!(r.array("six").sync.mismatch_sectors, 0);
    // Only the two rebuilt members and no parity redundancy left: the data must come from them.
    for m in ["S0", "D1"] {
        r.md.fail("six", m).unwrap();
    }
    r.run_for_ms(20);
    let size = r.reg.get("six").unwrap().info().num_blocks;
    assert!(r.read("six", 0, size) == data, "the rebuilt members serve the data");
    r.stop("six").unwrap();
}

#[test]
fn raid6_readds_two_members_at_once() {
    let r = Rig::new(1);
    let data = setup(&r);
    // Frozen, so that both re-adds are waiting when recovery may start: one run, two targets.
    r.md.set_sync_action("six", "frozen").unwrap();
    r.add("six", "S2").unwrap();
    r.add("six", "S3").unwrap();
    r.md.set_sync_action("six", "idle").unwrap();
    verify(&r, &data);
}

#[test]
fn raid6_assembles_two_stale_members_and_rebuilds_both() {
    let r = Rig::new(1);
    let data = setup(&r);
    r.stop("six").unwrap();
    r.assemble(AssembleOpts {
        name: Some("six".into()),
        members: Some(members()),
        ..Default::default()
    })
    .unwrap();
    r.md.set_sync_speed("six", Some(1_000_000), Some(4_000_000)).unwrap();
    verify(&r, &data);
}
