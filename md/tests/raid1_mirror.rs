//! raid1: every write lands on both members at data_offset (single-block and large writes),
//! reads return it from either member, md_get_arrays shows the array; the first write marks the
//! superblocks active before it reaches the members, safe mode marks them clean again, stop
//! writes events + 1.

mod common;

use common::{pattern, Rig};
use keel_bdev::IoStatus;
use keel_md::superblock::{Superblock, MAX_SECTOR};
use keel_md::CreateOpts;

#[test]
fn raid1_writes_reach_every_member() {
    let r = Rig::new(2);
    r.malloc("M0", 8192, 512);
    r.malloc("M1", 9000, 512);
    r.create(CreateOpts {
        name: "mir".into(),
        level: "raid1".into(),
        members: vec!["M0".into(), "M1".into()],
        assume_clean: true,
        bitmap: Some("none".into()),
        ..Default::default()
    })
    .unwrap();
    let info = r.reg.get("mir").unwrap().info().clone();
    // Component size: smallest data size rounded down to 64 KiB.
    assert_eq!(info.num_blocks, (8192 - 2048) / 128 * 128);

    let data = pattern(11, 64 * 512);
    assert_eq!(r.write("mir", 100, &data[..512]), IoStatus::Success);
    assert_eq!(r.write("mir", 1000, &data), IoStatus::Success);
    for m in ["M0", "M1"] {
        assert_eq!(r.read(m, 2048 + 100, 1), &data[..512], "{m}");
        assert_eq!(r.read(m, 2048 + 1000, 64), data, "{m}");
    }
    // Reads alternate members; both give the data.
    for _ in 0..4 {
        assert_eq!(r.read("mir", 1000, 64), data);
    }

    let a = r.array("mir");
    assert_eq!((a.level.as_str(), a.raid_devices), ("raid1", 2));
    // The first write marked the superblocks active (events 2).
    assert!(a.events >= 2, "{a:?}");
    assert_eq!(
        a.members
            .iter()
            .map(|m| (m.bdev.as_str(), m.role, m.state))
            .collect::<Vec<_>>(),
        [("M0", Some(0), "in_sync"), ("M1", Some(1), "in_sync")]
    );
    assert_eq!(a.uuid, Superblock::uuid_text(&r.superblock("M0").set_uuid));
    assert!(r.md.arrays(Some("nope")).is_err());
    // Safe mode: idle writes → clean again.
    r.wait_until(5, "safe mode", |r| r.array("mir").state == "clean");
    let events = r.array("mir").events;
    assert_eq!(r.superblock("M1").events, events);
    assert_eq!(r.superblock("M1").resync_offset, MAX_SECTOR);

    r.stop("mir").unwrap();
    for (i, m) in ["M0", "M1"].into_iter().enumerate() {
        let s = r.superblock(m);
        assert_eq!(
            (s.level, s.events, s.resync_offset, s.dev_number),
            (1, events + 1, MAX_SECTOR, i as u32)
        );
        assert_eq!(s.size_sectors, info.num_blocks);
    }
    assert!(r.md.arrays(None).unwrap().is_empty());
}

#[test]
fn write_marks_dirty_before_reaching_members() {
    let r = Rig::new(1);
    r.malloc("M0", 8192, 512);
    r.malloc("M1", 8192, 512);
    r.create(CreateOpts {
        name: "mir".into(),
        level: "raid1".into(),
        members: vec!["M0".into(), "M1".into()],
        assume_clean: true,
        bitmap: Some("none".into()),
        uuid: Some("01234567:89abcdef:01234567:89abcdef".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.array("mir").uuid, "01234567:89abcdef:01234567:89abcdef");
    assert_eq!(r.superblock("M0").resync_offset, MAX_SECTOR);
    assert_eq!(r.array("mir").state, "clean");
    let data = pattern(3, 4096);
    assert_eq!(r.write("mir", 0, &data), IoStatus::Success);
    // By the time the write completed, the superblocks said "active".
    let s = r.superblock("M0");
    assert!(s.resync_offset == 0 || r.array("mir").state == "clean", "{s:?}");
    assert!(s.events >= 2);
    r.stop("mir").unwrap();
}
