//! Examine-on-appear: a raid1 over two uring bdevs (temp files) is created, written and
//! stopped, and its bdevs deleted. With auto assembly enabled, re-creating the first bdev only
//! records it (the array is incomplete); re-creating the second makes the array reappear by
//! itself, with its data, and `examines_in_flight` drops back to 0 once it is running. Then a
//! member that was failed, removed and deleted comes back as a new bdev: the examiner re-adds
//! it to the degraded array, which recovers it.

mod common;

use std::path::Path;

use common::{pattern, Rig, MAIN};
use keel_bdev::modules::uring::{self, UringOpts};
use keel_bdev::IoStatus;
use keel_md::MdRegistry;

fn uring_create(r: &Rig, name: &str, file: &Path) {
    r.d.enter(MAIN, || {
        uring::create(
            &r.reg,
            &UringOpts {
                filename: file.to_str().unwrap().into(),
                name: name.into(),
                block_size: Some(512),
                uuid: None,
            },
        )
        .unwrap()
    });
}

fn uring_delete(r: &Rig, name: &str) {
    let (tx, rx) = std::sync::mpsc::channel();
    r.d.enter(MAIN, || {
        uring::delete(&r.reg, name, move || {
            let _ = tx.send(());
        })
        .unwrap()
    });
    r.wait_until(5, "bdev deletion", |_| rx.try_recv().is_ok());
}

#[test]
fn array_reappears_when_its_members_do() {
    let r = Rig::new(2);
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = (0..2).map(|i| dir.path().join(format!("m{i}.img"))).collect();
    for f in &files {
        std::fs::File::create(f).unwrap().set_len(16 << 20).unwrap();
    }
    uring_create(&r, "U0", &files[0]);
    uring_create(&r, "U1", &files[1]);
    r.create_simple("auto", "raid1", &["U0", "U1"], None).unwrap();
    let data = pattern(7, 256 * 1024);
    assert_eq!(r.write("auto", 64, &data), IoStatus::Success);
    r.stop("auto").unwrap();
    uring_delete(&r, "U0");
    uring_delete(&r, "U1");

    MdRegistry::enable_auto_assembly(&r.reg);
    MdRegistry::enable_auto_assembly(&r.reg); // idempotent: one examiner

    // Unrelated bdevs are examined and left alone.
    r.malloc("plain", 4096, 512);
    r.wait_until(5, "examine of 'plain'", |r| r.reg.examines_in_flight() == 0);
    assert!(r.reg.get("plain").unwrap().claimed_by().is_none());

    uring_create(&r, "U0", &files[0]);
    r.wait_until(5, "examine of U0", |r| r.reg.examines_in_flight() == 0);
    r.run_for_ms(50);
    assert!(
        r.md.arrays(None).unwrap().is_empty(),
        "one of two members is not enough"
    );
    assert!(
        r.reg.get("U0").unwrap().claimed_by().is_none(),
        "nothing is claimed before assembly"
    );

    uring_create(&r, "U1", &files[1]);
    assert!(r.reg.examines_in_flight() > 0, "counted from registration on");
    r.wait_until(5, "automatic assembly", |r| r.reg.examines_in_flight() == 0);
    let a = r.array("auto");
    assert_eq!(
        a.members
            .iter()
            .map(|m| (m.bdev.as_str(), m.role, m.state))
            .collect::<Vec<_>>(),
        [("U0", Some(0), "in_sync"), ("U1", Some(1), "in_sync")]
    );
    assert_eq!(r.read("auto", 64, data.len() as u64 / 512), data);

    // A member failed, removed and deleted, then re-created: re-added on appearance.
    r.md.fail("auto", "U1").unwrap();
    // md_remove succeeds once the daemon moved the failed member out of its role.
    r.wait_until(5, "U1 removable", |r| r.md.remove("auto", "U1").is_ok());
    r.wait_until(5, "U1 released", |r| r.reg.get("U1").unwrap().claimed_by().is_none());
    let more = pattern(8, 64 * 1024);
    assert_eq!(r.write("auto", 4096, &more), IoStatus::Success);
    uring_delete(&r, "U1");
    uring_create(&r, "U1", &files[1]);
    r.wait_until(5, "re-add", |r| r.reg.examines_in_flight() == 0);
    r.wait_until(20, "recovery of U1", |r| {
        let a = r.array("auto");
        a.members.len() == 2 && a.members.iter().all(|m| m.state == "in_sync")
    });
    assert_eq!(
        r.array("auto")
            .members
            .iter()
            .map(|m| (m.bdev.as_str(), m.role))
            .collect::<Vec<_>>(),
        [("U0", Some(0)), ("U1", Some(1))],
        "back in its old role"
    );
    assert_eq!(r.read("U1", 2048 + 4096, more.len() as u64 / 512), more);
    assert_eq!(r.read("U1", 2048 + 64, data.len() as u64 / 512), data);
    r.stop("auto").unwrap();
}
