//! raid1: every write lands on both members at data_offset (single-block and large writes,
//! unmap-free malloc), reads return it from either member, md_get_arrays shows the array, a
//! raid1 created without assume_clean is "active" with resync_offset 0 on disk and stays so
//! after stop, one created clean is "clean" with events 1 → 2 at stop.

mod common;

use common::{pattern, Rig};
use keel_bdev::IoStatus;
use keel_md::superblock::{Superblock, MAX_SECTOR, V1_2_SUPER_OFFSET_SECTORS};
use keel_md::CreateOpts;

fn sb(r: &Rig, m: &str) -> Superblock {
    Superblock::decode(&r.read_bytes(m, 4096, 4096), V1_2_SUPER_OFFSET_SECTORS).unwrap()
}

#[test]
fn raid1_writes_reach_every_member() {
    let r = Rig::new(2);
    r.malloc("M0", 8192, 512);
    r.malloc("M1", 9000, 512);
    r.create_simple("mir", "raid1", &["M0", "M1"], None).unwrap();
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

    let a = r.md.arrays(Some("mir")).unwrap();
    assert_eq!(a.len(), 1);
    let a = &a[0];
    assert_eq!(
        (a.level.as_str(), a.raid_devices, a.state, a.events),
        ("raid1", 2, "clean", 1)
    );
    assert_eq!(
        a.members.iter().map(|m| (m.bdev.as_str(), m.role)).collect::<Vec<_>>(),
        [("M0", 0), ("M1", 1)]
    );
    assert_eq!(a.uuid, Superblock::uuid_text(&sb(&r, "M0").set_uuid));
    assert!(r.md.arrays(Some("nope")).is_err());

    r.stop("mir").unwrap();
    for (i, m) in ["M0", "M1"].into_iter().enumerate() {
        let s = sb(&r, m);
        assert_eq!(
            (s.level, s.events, s.resync_offset, s.dev_number),
            (1, 2, MAX_SECTOR, i as u32)
        );
        assert_eq!(s.size_sectors, info.num_blocks);
    }
    assert!(r.md.arrays(None).unwrap().is_empty());

    // Without assume_clean: active on disk (needs the resync of the next phase), before and
    // after stop; reads come from role 0 only but the array works.
    r.create(CreateOpts {
        name: "dirty".into(),
        level: "raid1".into(),
        members: vec!["M0".into(), "M1".into()],
        uuid: Some("01234567:89abcdef:01234567:89abcdef".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(sb(&r, "M1").resync_offset, 0);
    assert_eq!(r.md.arrays(None).unwrap()[0].state, "active");
    assert_eq!(
        r.md.arrays(None).unwrap()[0].uuid,
        "01234567:89abcdef:01234567:89abcdef"
    );
    assert_eq!(r.write("dirty", 5, &data[..1024]), IoStatus::Success);
    assert_eq!(r.read("dirty", 5, 2), &data[..1024]);
    r.stop("dirty").unwrap();
    let s = sb(&r, "M0");
    assert_eq!((s.events, s.resync_offset), (2, 0));
}
