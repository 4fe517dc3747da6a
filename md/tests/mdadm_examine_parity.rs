//! Debian's `mdadm --examine` reads the members of raid4, raid5 and raid6 arrays Keel created
//! (the superblock and bitmap region of each member copied into an image file of the member's
//! size) and agrees with Keel's own examine on every level field: level, raid devices, array
//! size, used and available device size, data offset, layout (by mdadm's name), chunk, device
//! role and array state. mdadm is installed by scripts/deps.sh; without it this test fails.

mod common;

use std::process::Command;

use common::{Rig, MAIN};
use keel_md::examine::{examine, Examine};
use keel_md::CreateOpts;
use keel_testkit::mdadm_field;

const MEMBER_BLOCKS: u64 = 32768; // 16 MiB of 512-byte blocks

fn keel_examine(r: &Rig, bdev: &str) -> Examine {
    r.call(MAIN, "examine", |done| examine(&r.reg, bdev, done)).unwrap()
}

fn mdadm_examine(r: &Rig, bdev: &str, data_offset_sectors: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("m.img");
    let head = r.read_bytes(bdev, 0, data_offset_sectors * 512);
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(MEMBER_BLOCKS * 512).unwrap();
    drop(f);
    let mut data = std::fs::read(&img).unwrap();
    data[..head.len()].copy_from_slice(&head);
    std::fs::write(&img, &data).unwrap();
    let out = Command::new(keel_testkit::mdadm())
        .arg("--examine")
        .arg(&img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "mdadm --examine: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn agree(level: &str, members: usize, layout: Option<&str>, mdadm_layout: Option<&str>) {
    let r = Rig::new(1);
    let names: Vec<String> = (0..members).map(|i| format!("{level}_{i}")).collect();
    for n in &names {
        r.malloc(n, MEMBER_BLOCKS, 512);
    }
    r.create(CreateOpts {
        name: level.into(),
        level: level.into(),
        members: names.clone(),
        chunk_kb: Some(64),
        layout: layout.map(str::to_string),
        assume_clean: true,
        ..Default::default()
    })
    .unwrap();
    let parity = if level == "raid6" { 2 } else { 1 };
    for (i, n) in names.iter().enumerate() {
        let x = keel_examine(&r, n);
        let t = mdadm_examine(&r, n, x.sb.data_offset_sectors);
        assert_eq!(mdadm_field(&t, "Raid Level"), level, "{t}");
        assert_eq!(mdadm_field(&t, "Raid Devices"), members.to_string());
        let size = |f: &str| {
            mdadm_field(&t, f)
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        assert_eq!(size("Array Size"), x.array_size_kib(), "{t}");
        assert_eq!(x.array_size_kib(), x.sb.size_sectors / 2 * (members as u64 - parity));
        // mdadm prints the used size only when it is not the whole available size.
        let used = if t.contains("Used Dev Size") {
            size("Used Dev Size")
        } else {
            size("Avail Dev Size")
        };
        assert_eq!(used, x.sb.size_sectors, "{t}");
        assert_eq!(size("Avail Dev Size"), x.sb.data_size_sectors, "{t}");
        assert_eq!(size("Data Offset"), x.sb.data_offset_sectors);
        assert_eq!(mdadm_field(&t, "Chunk Size"), "64K");
        assert_eq!(x.sb.chunk_sectors, 128);
        match mdadm_layout {
            Some(l) => {
                assert_eq!(mdadm_field(&t, "Layout"), l, "{t}");
                assert_eq!(x.layout_text().as_deref(), Some(l));
            }
            None => assert!(!t.contains("Layout :"), "{t}"),
        }
        assert_eq!(mdadm_field(&t, "Device Role"), format!("Active device {i}"));
        assert_eq!(mdadm_field(&t, "Device Role"), x.role_text());
        assert!(mdadm_field(&t, "Array State").starts_with(&x.array_state()), "{t}");
        assert!(mdadm_field(&t, "Checksum").ends_with("correct"), "{t}");
        assert_eq!(mdadm_field(&t, "Internal Bitmap"), "8 sectors from superblock", "{t}");
    }
    r.stop(level).unwrap();
}

#[test]
fn mdadm_agrees_on_raid5() {
    agree("raid5", 4, None, Some("left-symmetric"));
}

#[test]
fn mdadm_agrees_on_raid6_with_a_dash_6_layout() {
    agree("raid6", 5, Some("right-asymmetric-6"), Some("right-asymmetric-6"));
}

#[test]
fn mdadm_agrees_on_raid4() {
    agree("raid4", 3, None, None);
}
