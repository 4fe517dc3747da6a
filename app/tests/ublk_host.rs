//! SPDK's ublk methods through the stock `spdk-rpc` on the build host, whose kernel has no
//! `ublk_drv` (the lab guest has it: `lab_ublk_disk.rs`): `ublk_create_target` fails with the
//! OS's error naming the module and creates nothing, the disk methods answer SPDK's codes, and
//! bad params are refused before anything is touched.

mod common;

use std::path::Path;

use common::Target;

#[test]
fn ublk_methods_without_the_driver() {
    let t = Target::start(&[]);
    t.ok(&["bdev_malloc_create", "-b", "M0", "8", "4096"]);
    assert_eq!(t.json(&["ublk_get_disks"]), serde_json::json!([]));
    let (code, msg) = t.err(&["ublk_start_disk", "M0", "1"]);
    assert_eq!(code, -19, "no target yet: {msg}");
    let (code, msg) = t.err(&["ublk_stop_disk", "1"]);
    assert_eq!(code, -19, "{msg}");
    let (code, msg) = t.err(&["ublk_get_disks", "-n", "1"]);
    assert_eq!(code, -19, "{msg}");
    let (code, msg) = t.err(&["ublk_destroy_target"]);
    assert_eq!(code, -2, "{msg}");
    if !Path::new("/dev/ublk-control").exists() {
        let (code, msg) = t.err(&["ublk_create_target"]);
        assert_eq!(code, -2, "{msg}");
        assert!(msg.contains("ublk_drv"), "{msg}");
        let (code, msg) = t.err(&["ublk_create_target", "-m", "0x1"]);
        assert_eq!(code, -2, "{msg}");
        // Still no target: nothing was half made.
        let (code, msg) = t.err(&["ublk_destroy_target"]);
        assert_eq!(code, -2, "{msg}");
    }
    let (code, msg) = t.err(&["ublk_create_target", "-m", "0x4"]);
    assert_eq!(code, -22, "core 2 has no reactor: {msg}");
    let cfg = t.json(&["framework_get_config", "ublk"]);
    assert!(!cfg.to_string().contains("ublk_"), "{cfg}");
    t.ok(&["bdev_malloc_delete", "M0"]);
    assert!(t.stop().success());
}
