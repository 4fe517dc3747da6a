//! md_examine through spdk-rpc's plugin agrees with Debian's mdadm --examine on the same member
//! image; corrupt or missing superblocks are refused with the reason, and so is a hostile one
//! with a valid checksum (raid_disks 0xFFFFFFFF), without stalling the target.

mod common;

use common::Target;
use keel_md::superblock::{Superblock, MAX_SECTOR, ROLE_FAULTY, ROLE_SPARE};
use keel_testkit::mdadm_field;

fn raid10_member() -> Superblock {
    let mut roles = vec![ROLE_SPARE; 128];
    roles[..4].copy_from_slice(&[0, ROLE_FAULTY, 2, 3]);
    roles[4] = 1;
    Superblock {
        feature_map: 0,
        set_uuid: *b"keel-md-examine!",
        set_name: b"host:data".to_vec(),
        ctime: 1_750_000_000,
        level: 10,
        layout: 0x102,
        size_sectors: 30_720,
        chunk_sectors: 128,
        raid_disks: 4,
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
        dev_number: 2,
        cnt_corrected_read: 0,
        device_uuid: [7; 16],
        devflags: 0,
        bblog_shift: 0,
        bblog_size: 8,
        bblog_offset: 16,
        utime: 1_750_000_500,
        events: 77,
        resync_offset: MAX_SECTOR,
        dev_roles: roles,
    }
}

#[test]
fn md_examine_agrees_with_mdadm() {
    let t = Target::start(&[]);
    let img = t.dir.path().join("member.img");
    let mut data = vec![0u8; 16 << 20];
    data[4096..8192].copy_from_slice(&raid10_member().encode());
    std::fs::write(&img, &data).unwrap();
    let mdadm = keel_testkit::mdadm_run(&["--examine"], &img);
    t.ok(&["bdev_aio_create", img.to_str().unwrap(), "M0", "512"]);
    let o = t.rpc_with(&["--plugin", "keel_rpc"], &["md_examine", "M0"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let k: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(k["array_uuid"], mdadm_field(&mdadm, "Array UUID"));
    assert_eq!(k["raid_level"], mdadm_field(&mdadm, "Raid Level"));
    assert_eq!(k["raid_devices"].to_string(), mdadm_field(&mdadm, "Raid Devices"));
    assert_eq!(k["events"].to_string(), mdadm_field(&mdadm, "Events"));
    assert_eq!(k["state"], mdadm_field(&mdadm, "State"));
    assert_eq!(k["device_role"], mdadm_field(&mdadm, "Device Role"));
    assert!(
        mdadm_field(&mdadm, "Array State").starts_with(k["array_state"].as_str().unwrap()),
        "{mdadm}"
    );
    assert_eq!(
        format!("{} sectors", k["data_offset_sectors"]),
        mdadm_field(&mdadm, "Data Offset")
    );
    assert_eq!(k["layout"], mdadm_field(&mdadm, "Layout"));
    assert_eq!(format!("{}K", k["chunk_size_kib"]), mdadm_field(&mdadm, "Chunk Size"));
    assert!(mdadm_field(&mdadm, "Name").starts_with(k["name"].as_str().unwrap()));
    assert!(
        mdadm_field(&mdadm, "Array Size").starts_with(&format!("{} KiB", k["array_size_kib"])),
        "{mdadm}"
    );
    assert!(mdadm_field(&mdadm, "Checksum").starts_with(k["checksum"].as_str().unwrap()));

    // A corrupt superblock: refused with the field named.
    data[4096 + 100] ^= 0xff;
    let bad = t.dir.path().join("bad.img");
    std::fs::write(&bad, &data).unwrap();
    t.ok(&["bdev_aio_create", bad.to_str().unwrap(), "B0", "512"]);
    let o = t.rpc_with(&["--plugin", "keel_rpc"], &["md_examine", "B0"], None);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sb_csum"), "{err}");
    // No superblock at all, and no such bdev.
    t.ok(&["bdev_malloc_create", "-b", "Empty", "16", "512"]);
    let o = t.rpc_with(&["--plugin", "keel_rpc"], &["md_examine", "Empty"], None);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("magic"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = t.rpc_with(&["--plugin", "keel_rpc"], &["md_examine", "Nope"], None);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("-19"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // raid_disks 0xFFFFFFFF with a valid checksum once spun the main reactor (four billion
    // array-state slots) and stopped every RPC: now a clear refusal, and the target answers.
    let hostile = Superblock {
        raid_disks: 0xFFFF_FFFF,
        ..raid10_member()
    };
    data[4096..8192].copy_from_slice(&hostile.encode());
    let img = t.dir.path().join("hostile.img");
    std::fs::write(&img, &data).unwrap();
    t.ok(&["bdev_aio_create", img.to_str().unwrap(), "H0", "512"]);
    let o = t.rpc_with(&["--plugin", "keel_rpc"], &["md_examine", "H0"], None);
    let err = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("raid_disks") && err.contains("-22"),
        "{err}"
    );
    assert_eq!(t.json(&["bdev_get_bdevs", "-b", "H0"])[0]["name"], "H0");
}
