//! A resync interrupted by a stop resumes from its checkpoint: a raid1 created without
//! assume_clean (no bitmap: a full resync) over members with different contents resyncs at a
//! limited speed; stopping it mid-way persists `resync_offset` between 0 and the array size in
//! every superblock; assembling again continues from there (the progress starts at the
//! checkpoint, not 0) and ends with identical mirrors and a clean array.

mod common;

use common::{pattern, Rig};
use keel_md::superblock::MAX_SECTOR;
use keel_md::{AssembleOpts, CreateOpts};

#[test]
fn interrupted_resync_resumes_from_checkpoint() {
    let r = Rig::new(1);
    r.malloc("M0", 20480, 512);
    r.malloc("M1", 20480, 512);
    // Different data on the two members: the resync must make them equal.
    let a = pattern(1, 20480 * 512);
    let b = pattern(2, 20480 * 512);
    for (m, d) in [("M0", &a), ("M1", &b)] {
        for chunk in 0..20 {
            let at = chunk * 1024;
            assert!(r
                .write(m, at, &d[(at * 512) as usize..((at + 1024) * 512) as usize])
                .is_success());
        }
    }
    r.create(CreateOpts {
        name: "mir".into(),
        level: "raid1".into(),
        members: vec!["M0".into(), "M1".into()],
        bitmap: Some("none".into()),
        ..Default::default()
    })
    .unwrap();
    let size = r.reg.get("mir").unwrap().info().num_blocks;
    r.md.set_sync_speed("mir", Some(1), Some(2048)).unwrap();
    r.wait_until(10, "resync under way", |r| {
        let s = r.array("mir").sync;
        s.action == "resync" && s.done_sectors >= 4096
    });
    r.stop("mir").unwrap();
    let cp = r.superblock("M0").resync_offset;
    assert!(cp > 0 && cp < size, "checkpoint {cp} of {size}");
    assert_eq!(r.superblock("M1").resync_offset, cp);

    r.assemble(AssembleOpts {
        name: None,
        uuid: None,
        members: Some(vec!["M0".into(), "M1".into()]),
        force: false,
    })
    .unwrap();
    // Slow again, to look at where it starts.
    r.md.set_sync_speed("mir", Some(1), Some(2048)).unwrap();
    r.wait_until(10, "resync resumed", |r| r.array("mir").sync.action == "resync");
    let first = r.array("mir").sync.done_sectors;
    assert!(first >= cp, "resumed at {first}, checkpoint {cp}");
    r.md.set_sync_speed("mir", None, Some(1 << 30)).unwrap();
    r.wait_until(30, "resync done", |r| {
        let a = r.array("mir");
        a.sync.action == "idle" && a.sync.last_action == Some("resync")
    });
    let off = r.superblock("M0").data_offset_sectors;
    assert_eq!(r.read("M0", off, size), r.read("M1", off, size), "mirrors differ");
    r.wait_until(5, "clean", |r| r.array("mir").state == "clean");
    r.stop("mir").unwrap();
    assert_eq!(r.superblock("M0").resync_offset, MAX_SECTOR);
}
