//! SPDK's bdev_split through the stock `spdk-rpc`: parts named BASEpN with SPDK's product name,
//! driver_specific and sizes; refusals with SPDK's codes; a split configured before its base
//! exists (as SPDK configs do for NVMe namespaces) comes up when the base does, and survives
//! save_config → restart, as does an md raid1 over two parts of one base.

mod common;

use common::Target;
use serde_json::Value;

/// spdk-rpc prints the list of part names space-separated, as SPDK's own script does.
fn split(t: &Target, args: &[&str]) -> Vec<String> {
    let mut a = vec!["bdev_split_create"];
    a.extend_from_slice(args);
    t.ok(&a).split_whitespace().map(str::to_string).collect()
}

fn bdev(t: &Target, name: &str) -> Value {
    t.json(&["bdev_get_bdevs", "-b", name])[0].clone()
}

#[test]
fn split_create_delete_and_refusals() {
    let t = Target::start(&[]);
    // 8 MiB of 512-byte blocks.
    t.ok(&["bdev_malloc_create", "-b", "M0", "8", "512"]);
    let parts = split(&t, &["M0", "4"]);
    assert_eq!(parts, ["M0p0", "M0p1", "M0p2", "M0p3"]);
    let p2 = bdev(&t, "M0p2");
    assert_eq!(p2["product_name"], "Split Disk");
    assert_eq!(p2["num_blocks"], 4096);
    assert_eq!(p2["block_size"], 512);
    assert_eq!(p2["driver_specific"]["split"]["base_bdev"], "M0");
    assert_eq!(p2["driver_specific"]["split"]["offset_blocks"], 8192);
    assert_eq!(bdev(&t, "M0")["claimed"], true);

    // SPDK's codes: a second split of the same base EEXIST, delete of an unsplit base ENOENT,
    // a split of a claimed bdev EPERM; nothing changes.
    assert_eq!(t.err(&["bdev_split_create", "M0", "2"]).0, -17);
    assert_eq!(t.err(&["bdev_split_delete", "M9"]).0, -2);
    t.ok(&["bdev_malloc_create", "-b", "M1", "4", "512"]);
    t.ok(&["bdev_passthru_create", "-b", "M1", "-p", "P1"]);
    let (code, msg) = t.err(&["bdev_split_create", "M1", "2"]);
    assert_eq!(code, -1, "{msg}");
    assert!(msg.contains("M1"), "{msg}");
    // split_size_mb: 3 MiB parts of an 8 MiB base: 2 fit of the 4 asked.
    t.ok(&["bdev_malloc_create", "-b", "M2", "8", "4096"]);
    let parts = split(&t, &["-s", "3", "M2", "4"]);
    assert_eq!(parts, ["M2p0", "M2p1"]);
    assert_eq!(bdev(&t, "M2p1")["num_blocks"], 768);
    // Too small for one part, zero parts: refused, nothing stored.
    t.ok(&["bdev_malloc_create", "-b", "M3", "1", "512"]);
    assert_eq!(t.err(&["bdev_split_create", "-s", "2", "M3", "1"]).0, -22);
    assert_eq!(t.err(&["bdev_split_create", "M3", "0"]).0, -22);
    assert_eq!(bdev(&t, "M3")["claimed"], false);

    let before = t.json(&["bdev_get_bdevs"]).as_array().unwrap().len();
    t.ok(&["bdev_split_delete", "M0"]);
    let after = t.json(&["bdev_get_bdevs"]);
    assert_eq!(after.as_array().unwrap().len(), before - 4);
    assert_eq!(bdev(&t, "M0")["claimed"], false);
    assert_eq!(t.err(&["bdev_split_delete", "M0"]).0, -2);
    assert!(t.stop().success());
}

#[test]
fn a_split_waiting_for_its_base_loads_from_save_config() {
    let keep = tempfile::tempdir().unwrap();
    let t = Target::start(&[]);
    // Configured before the base exists: no parts yet.
    assert!(split(&t, &["Later", "2"]).is_empty());
    let saved = t.ok(&["save_config"]);
    assert!(saved.contains("bdev_split_create"), "{saved}");
    t.ok(&["bdev_malloc_create", "-b", "Later", "4", "512"]);
    assert_eq!(bdev(&t, "Laterp1")["num_blocks"], 4096);
    // Parts under an md raid1: two halves of one file mirror each other (a file, so the
    // array's superblocks are there after the restart).
    let img = keep.path().join("m0.img");
    std::fs::write(&img, vec![0u8; 8 << 20]).unwrap();
    t.ok(&["bdev_uring_create", img.to_str().unwrap(), "M0"]);
    t.ok(&["bdev_split_create", "M0", "2"]);
    t.ok(&["bdev_raid_create", "-n", "R1", "-r", "raid1", "-b", "M0p0 M0p1"]);
    let before = t.json(&["bdev_get_bdevs"]);
    let saved = t.ok(&["save_config"]);
    let cfg = keep.path().join("saved.json");
    std::fs::write(&cfg, &saved).unwrap();
    assert!(t.stop().success());

    // The saved config creates the base before its split and the array after the parts.
    let t2 = Target::start(&["-c", cfg.to_str().unwrap()]);
    let after = t2.json(&["bdev_get_bdevs"]);
    let mut b: Vec<_> = before.as_array().unwrap().iter().map(|x| x["name"].clone()).collect();
    let mut a: Vec<_> = after.as_array().unwrap().iter().map(|x| x["name"].clone()).collect();
    b.sort_by_key(|v| v.to_string());
    a.sort_by_key(|v| v.to_string());
    assert_eq!(a, b);
    for n in ["Laterp0", "Laterp1", "M0p0", "M0p1"] {
        let x = before.as_array().unwrap().iter().find(|v| v["name"] == n).unwrap();
        let y = after.as_array().unwrap().iter().find(|v| v["name"] == n).unwrap();
        assert_eq!(x["uuid"], y["uuid"], "{n}: a part's UUID is derived from its base's");
        assert_eq!(x["driver_specific"], y["driver_specific"]);
    }
    assert_eq!(t2.ok(&["save_config"]), saved);
    assert!(t2.stop().success());
}
