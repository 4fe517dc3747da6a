//! md_create / md_get_arrays / md_stop through spdk-rpc's keel_rpc plugin on aio members backed
//! by image files; afterwards Debian's mdadm --examine on each image reports the array's UUID,
//! name, level, devices, the member's role, the events (1 at create, 2 after stop) and
//! State clean. A raid0 array shows its chunk; an unsupported level is refused.

mod common;

use common::Target;
use keel_testkit::mdadm_field;

fn plugin(t: &Target, args: &[&str]) -> String {
    let o = t.rpc_with(&["--plugin", "keel_rpc"], args, None);
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn md_create_stop_then_mdadm_examine() {
    let t = Target::start(&[]);
    let mut imgs = Vec::new();
    for (i, name) in ["M0", "M1", "S0", "S1"].into_iter().enumerate() {
        let img = t.dir.path().join(format!("m{i}.img"));
        std::fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
        t.ok(&["bdev_aio_create", img.to_str().unwrap(), name, "512"]);
        imgs.push(img);
    }

    let out = plugin(
        &t,
        &["md_create", "-n", "data", "-l", "raid1", "--assume-clean", "M0", "M1"],
    );
    assert!(out.contains("data"), "{out}");
    let arrays: serde_json::Value = serde_json::from_str(&plugin(&t, &["md_get_arrays", "data"])).unwrap();
    let a = &arrays[0];
    assert_eq!(
        (a["name"].as_str(), a["level"].as_str(), a["state"].as_str()),
        (Some("data"), Some("raid1"), Some("clean"))
    );
    assert_eq!((a["raid_devices"].as_u64(), a["events"].as_u64()), (Some(2), Some(1)));
    assert_eq!(a["members"][1]["bdev"], "M1");
    assert_eq!(a["members"][1]["role"], 1);
    let uuid = a["uuid"].as_str().unwrap().to_string();
    let bdev = t.json(&["bdev_get_bdevs", "-b", "data"]);
    // A raid1 is an SPDK raid level too: SPDK's product name (raid_methods.rs).
    assert_eq!(bdev[0]["product_name"], "Raid Volume");
    assert_eq!(bdev[0]["claimed"], false);

    plugin(
        &t,
        &["md_create", "-n", "stripe", "-l", "raid0", "-c", "64", "S0", "S1"],
    );
    // An unknown level and a claimed member: clear errors.
    let o = t.rpc_with(
        &["--plugin", "keel_rpc"],
        &["md_create", "-n", "x", "-l", "raid7", "S0", "M0"],
        None,
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("not an md level"), "{o:?}");
    let o = t.rpc_with(
        &["--plugin", "keel_rpc"],
        &["md_create", "-n", "x", "-l", "raid1", "S0", "M0"],
        None,
    );
    assert!(!o.status.success());

    plugin(&t, &["md_stop", "data"]);
    plugin(&t, &["md_stop", "stripe"]);
    let left: serde_json::Value = serde_json::from_str(&plugin(&t, &["md_get_arrays"])).unwrap();
    assert_eq!(left, serde_json::json!([]));

    for (i, img) in imgs[..2].iter().enumerate() {
        let x = keel_testkit::mdadm_run(&["--examine"], img);
        assert_eq!(mdadm_field(&x, "Array UUID"), uuid, "{x}");
        assert!(mdadm_field(&x, "Name").starts_with("data"), "{x}");
        assert_eq!(mdadm_field(&x, "Raid Level"), "raid1", "{x}");
        assert_eq!(mdadm_field(&x, "Raid Devices"), "2", "{x}");
        assert_eq!(mdadm_field(&x, "Device Role"), format!("Active device {i}"), "{x}");
        assert_eq!(mdadm_field(&x, "Events"), "2", "{x}");
        assert_eq!(mdadm_field(&x, "State"), "clean", "{x}");
        assert!(mdadm_field(&x, "Array State").starts_with("AA"), "{x}");
        assert_eq!(mdadm_field(&x, "Data Offset"), "2048 sectors", "{x}");
    }
    let x = keel_testkit::mdadm_run(&["--examine"], &imgs[3]);
    assert_eq!(mdadm_field(&x, "Raid Level"), "raid0", "{x}");
    assert_eq!(mdadm_field(&x, "Chunk Size"), "64K", "{x}");
    assert_eq!(mdadm_field(&x, "Device Role"), "Active device 1", "{x}");
    assert_eq!(mdadm_field(&x, "State"), "clean", "{x}");
}
