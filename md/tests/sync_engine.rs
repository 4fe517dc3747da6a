//! The sync engine through the array: a raid1 created without `assume_clean` over members that
//! hold different data resyncs until every copy equals the first; a check then counts exactly
//! the sectors that read back differently (read corruption injected on one member's `EE_`
//! bdev), a repair rewrites them, and a second check finds none. (The engine's own unit tests
//! in `md/src/sync.rs` drive it directly; this is the path `md_set_sync_action` takes.)

mod common;

use common::{pattern, Rig, MAIN};
use keel_bdev::modules::error::{self, ErrorOpts, InjectOpts};
use keel_md::{ArrayInfo, CreateOpts};

const MEMBER_BLOCKS: u64 = 12 * 2048; // 12 MiB of 512-byte blocks

fn info(r: &Rig, name: &str) -> ArrayInfo {
    r.md.arrays(Some(name)).unwrap().remove(0)
}

/// Asks for `action` and turns the reactors until it runs.
fn request(r: &Rig, name: &str, action: &str) {
    r.d.enter(MAIN, || r.md.set_sync_action(name, action)).unwrap();
    assert!(
        r.d.run_until(100_000, || info(r, name).sync.action == action),
        "{action} did not start: {:?}",
        info(r, name).sync
    );
}

/// Turns the reactors until the array's sync is idle after `action` ran.
fn wait_for(r: &Rig, name: &str, action: &str) -> ArrayInfo {
    assert!(
        r.d.run_until(2_000_000, || {
            let i = info(r, name);
            i.sync.action == "idle" && i.sync.last_action == Some(action)
        }),
        "{action} did not finish: {:?}",
        info(r, name).sync
    );
    info(r, name)
}

#[test]
fn resync_then_check_and_repair_through_the_array() {
    let r = Rig::new(1);
    r.malloc("M0", MEMBER_BLOCKS, 512);
    r.malloc("M1", MEMBER_BLOCKS, 512);
    let len = (MEMBER_BLOCKS * 512) as usize;
    r.write("M0", 0, &pattern(1, len));
    r.write("M1", 0, &pattern(2, len));
    error::create(
        &r.reg,
        &ErrorOpts {
            base_name: "M1".into(),
            uuid: None,
        },
    )
    .unwrap();
    r.create(CreateOpts {
        name: "md0".into(),
        level: "raid1".into(),
        members: vec!["M0".into(), "EE_M1".into()],
        bitmap: Some("none".into()),
        assume_clean: false,
        ..Default::default()
    })
    .unwrap();

    let i = wait_for(&r, "md0", "resync");
    let off = i.data_offset_sectors * 512;
    let size = i.size_blocks * i.block_size as u64;
    assert_eq!(i.sync.done_sectors, 0, "idle shows no progress: {:?}", i.sync);
    let m0 = r.read_bytes("M0", off, size);
    let m1 = r.read_bytes("M1", off, size);
    assert!(m0 == m1, "resync made the copies equal");
    assert!(
        m0[..4096] == pattern(1, len)[off as usize..off as usize + 4096],
        "copy 0 is the source"
    );

    // Three reads of member 1 come back with one byte flipped: three mismatching sectors.
    let mut inj = InjectOpts::new("EE_M1", "read", "corrupt_data");
    inj.num = Some(3);
    inj.corrupt_offset = Some(700);
    inj.corrupt_value = Some(0x5a);
    error::inject(&r.reg, &inj).unwrap();
    request(&r, "md0", "check");
    let i = wait_for(&r, "md0", "check");
    assert_eq!(i.sync.mismatch_sectors, 3);

    // Repair rewrites the three pieces from copy 0 (the data on disk was fine: reads lied).
    error::inject(&r.reg, &inj).unwrap();
    request(&r, "md0", "repair");
    let i = wait_for(&r, "md0", "repair");
    assert_eq!(i.sync.mismatch_sectors, 3);

    request(&r, "md0", "check");
    let i = wait_for(&r, "md0", "check");
    assert_eq!(i.sync.mismatch_sectors, 0);
    assert_eq!(r.read_bytes("M1", off, size), m0);
    assert!(i.members.iter().all(|m| m.state == "in_sync"), "{:?}", i.members);
    r.stop("md0").unwrap();
}
