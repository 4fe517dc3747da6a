//! Debian's `mdadm --examine` reads member images whose v1.2 superblocks Keel wrote: array UUID,
//! name, level, raid devices, device role, events and state come out as written. mdadm is
//! installed by scripts/deps.sh; without it this test fails.

use std::process::Command;

use keel_testkit::mdadm_field;

use keel_md::superblock::{Superblock, MAX_SECTOR, ROLE_FAULTY, ROLE_SPARE};

fn member(dev_number: u32, roles: &[u16], events: u64, clean: bool) -> Superblock {
    let mut dev_roles = vec![ROLE_SPARE; 128];
    dev_roles[..roles.len()].copy_from_slice(roles);
    Superblock {
        feature_map: 0,
        set_uuid: [
            0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00,
        ],
        set_name: b"keel:r1".to_vec(),
        ctime: 1_700_000_000,
        level: 1,
        layout: 0,
        size_sectors: 30_720,
        chunk_sectors: 0,
        raid_disks: 2,
        bitmap_offset_sectors: 0,
        new_level: 0,
        reshape_position: 0,
        delta_disks: 0,
        new_layout: 0,
        new_chunk: 0,
        new_offset: 0,
        data_offset_sectors: 2048,
        data_size_sectors: 30_720,
        super_offset_sectors: 8,
        recovery_offset_sectors: 0,
        dev_number,
        cnt_corrected_read: 0,
        device_uuid: [dev_number as u8; 16],
        devflags: 0,
        bblog_shift: 0,
        bblog_size: 8,
        bblog_offset: 16,
        utime: 1_700_000_100,
        events,
        resync_offset: if clean { MAX_SECTOR } else { 0 },
        dev_roles,
    }
}

fn examine(sb: &Superblock) -> String {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("m.img");
    let mut data = vec![0u8; 16 << 20];
    data[4096..8192].copy_from_slice(&sb.encode());
    std::fs::write(&img, &data).unwrap();
    let out = Command::new(keel_testkit::mdadm())
        .arg("--examine")
        .arg(&img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "mdadm --examine failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn mdadm_examine_reads_keel_superblocks() {
    let t = examine(&member(0, &[0, 1], 18, true));
    assert_eq!(mdadm_field(&t, "Magic"), "a92b4efc");
    assert_eq!(mdadm_field(&t, "Version"), "1.2");
    assert_eq!(mdadm_field(&t, "Array UUID"), "11223344:55667788:99aabbcc:ddeeff00");
    assert!(mdadm_field(&t, "Name").starts_with("keel:r1"));
    assert_eq!(mdadm_field(&t, "Raid Level"), "raid1");
    assert_eq!(mdadm_field(&t, "Raid Devices"), "2");
    assert_eq!(mdadm_field(&t, "Data Offset"), "2048 sectors");
    assert_eq!(mdadm_field(&t, "Super Offset"), "8 sectors");
    assert_eq!(mdadm_field(&t, "State"), "clean");
    assert!(mdadm_field(&t, "Checksum").ends_with("correct"), "{t}");
    assert_eq!(mdadm_field(&t, "Events"), "18");
    assert_eq!(mdadm_field(&t, "Device Role"), "Active device 0");
    assert!(mdadm_field(&t, "Array State").starts_with("AA "), "{t}");

    // Second member, dirty, one slot failed: role, state and array state follow.
    let t = examine(&member(1, &[ROLE_FAULTY, 1], 42, false));
    assert_eq!(mdadm_field(&t, "State"), "active");
    assert_eq!(mdadm_field(&t, "Events"), "42");
    assert_eq!(mdadm_field(&t, "Device Role"), "Active device 1");
    assert!(mdadm_field(&t, "Array State").starts_with(".A "), "{t}");

    // A spare.
    let t = examine(&member(2, &[0, 1, ROLE_SPARE], 7, true));
    assert_eq!(mdadm_field(&t, "Device Role"), "spare");
}

#[test]
fn mdadm_reads_keel_bitmaps() {
    use keel_md::bitmap::{set_bit, BitmapHeader, HEADER_BYTES};
    use keel_md::superblock::feature;
    let mut sb = member(0, &[0, 1], 18, true);
    sb.feature_map = feature::BITMAP_OFFSET;
    sb.bitmap_offset_sectors = 8;
    let bm = BitmapHeader {
        version: 4,
        uuid: sb.set_uuid,
        events: 18,
        events_cleared: 18,
        sync_size_sectors: sb.size_sectors,
        state: 0,
        chunk_bytes: 4 << 20,
        daemon_sleep_s: 5,
        write_behind: 0,
        sectors_reserved: 0,
        nodes: 0,
    };
    assert_eq!(bm.bits(), 4);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("m.img");
    let mut data = vec![0u8; 16 << 20];
    data[4096..8192].copy_from_slice(&sb.encode());
    data[8192..8192 + HEADER_BYTES].copy_from_slice(&bm.encode());
    set_bit(&mut data[8192 + HEADER_BYTES..], 2, true);
    std::fs::write(&img, &data).unwrap();
    // On a regular file `mdadm -X` reads an external bitmap (the same header and bits at
    // offset 0), so hand it the bitmap region on its own.
    let bm_file = dir.path().join("bitmap");
    std::fs::write(&bm_file, &data[8192..8192 + 4096]).unwrap();
    let out = Command::new(keel_testkit::mdadm())
        .arg("-X")
        .arg(&bm_file)
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(mdadm_field(&t, "Magic"), "6d746962", "{t}");
    assert_eq!(mdadm_field(&t, "Version"), "4");
    assert_eq!(mdadm_field(&t, "UUID"), "11223344:55667788:99aabbcc:ddeeff00");
    assert_eq!(mdadm_field(&t, "Events"), "18");
    assert_eq!(mdadm_field(&t, "State"), "OK");
    assert_eq!(mdadm_field(&t, "Chunksize"), "4 MB");
    assert_eq!(mdadm_field(&t, "Sync Size").split_whitespace().next(), Some("15360"));
    assert_eq!(mdadm_field(&t, "Bitmap"), "4 bits (chunks), 1 dirty (25.0%)");
    let e = Command::new(keel_testkit::mdadm())
        .arg("--examine")
        .arg(&img)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&e.stdout).to_string();
    assert_eq!(mdadm_field(&e, "Internal Bitmap"), "8 sectors from superblock");
    assert!(mdadm_field(&e, "Checksum").ends_with("correct"));
}
