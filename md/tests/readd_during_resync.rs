//! A member of a raid5/raid6 failed while the array resyncs, written around while it is out
//! (the resync goes on degraded), and re-added: its bitmap-guided recovery must cover what it
//! missed — with the other members failed, the array reads the data written last. (Written
//! while chasing a lost write the crash matrix once showed after a member was failed during
//! the resync that followed a kill; this in-process form of it holds.)

mod common;

use common::{pattern, Rig};
use keel_md::CreateOpts;

const BLOCKS: u64 = 16384; // 8 MiB

fn scenario(level: &str, n: usize) {
    let r = Rig::new(1);
    let members: Vec<String> = (0..n).map(|i| format!("S{i}")).collect();
    for m in &members {
        r.malloc(m, BLOCKS, 512);
    }
    r.create(CreateOpts {
        name: "arr".into(),
        level: level.into(),
        members: members.clone(),
        chunk_kb: Some(64),
        bitmap: Some("internal".into()),
        assume_clean: true,
        ..Default::default()
    })
    .unwrap();
    let size = r.reg.get("arr").unwrap().info().num_blocks;
    let mut data = pattern(1, size as usize * 512);
    assert!(r.write("arr", 0, &data).is_success());
    r.md.set_sync_speed("arr", Some(1), Some(2000)).unwrap();
    r.md.set_sync_action("arr", "resync").unwrap();
    r.wait_until(10, "resync runs", |r| r.array("arr").sync.action == "resync");
    r.run_for_ms(100);
    r.md.fail("arr", "S1").unwrap();
    r.wait_until(10, "S1 leaves", |r| r.md.remove("arr", "S1").is_ok());
    let fresh = pattern(2, 2 << 20);
    data[..fresh.len()].copy_from_slice(&fresh);
    assert!(r.write("arr", 0, &fresh).is_success());
    r.md.set_sync_speed("arr", Some(100_000), Some(4_000_000)).unwrap();
    r.run_for_ms(300);
    r.add("arr", "S1").unwrap();
    r.wait_until(60, "healthy", |r| {
        let a = r.array("arr");
        a.sync.action == "idle" && a.members.iter().all(|m| m.state == "in_sync") && !a.state.contains("degraded")
    });
    for m in if level == "raid6" {
        &["S0", "S2"][..]
    } else {
        &["S0"][..]
    } {
        r.md.fail("arr", m).unwrap();
    }
    r.run_for_ms(20);
    let got = r.read("arr", 0, size);
    let bad = got.chunks(4096).zip(data.chunks(4096)).position(|(g, w)| g != w);
    assert!(bad.is_none(), "{level}: block {bad:?} stale");
}

#[test]
fn raid5_readd_during_resync() {
    scenario("raid5", 4);
}

#[test]
fn raid6_readd_during_resync() {
    scenario("raid6", 4);
}
