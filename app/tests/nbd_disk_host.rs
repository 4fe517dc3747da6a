//! The kernel NBD methods through SPDK's stock `spdk-rpc` on the build host: `nbd_get_disks`
//! lists nothing, bad params are refused with SPDK's codes, and where the kernel has no nbd
//! (this host; the lab guest has it, see `lab_nbd_disk.rs`) `nbd_start_disk` fails with a clear
//! error naming the module, changes nothing, and leaves the bdev free to delete.

mod common;

use std::path::Path;

use common::Target;

#[test]
fn kernel_nbd_methods_without_a_kernel_device() {
    let t = Target::start(&[]);
    t.ok(&["bdev_malloc_create", "-b", "M0", "8", "4096"]);
    assert_eq!(t.json(&["nbd_get_disks"]), serde_json::json!([]));
    let (code, msg) = t.err(&["nbd_get_disks", "-n", "/dev/nbd0"]);
    assert_eq!(code, -19, "{msg}");
    let (code, msg) = t.err(&["nbd_stop_disk", "/dev/nbd0"]);
    assert_eq!((code, msg.as_str()), (-19, "invalid nbd device"));
    let (code, msg) = t.err(&["nbd_start_disk", "nope"]);
    assert_eq!(code, -19, "{msg}");
    let (code, msg) = t.err(&["nbd_start_disk", "M0", "/dev/sda"]);
    assert_eq!(code, -22, "{msg}");
    // A device node that does not exist is the OS's ENOENT, named.
    let (code, msg) = t.err(&["nbd_start_disk", "M0", "/dev/nbd4095"]);
    assert_eq!(code, -2, "{msg}");
    assert!(msg.contains("/dev/nbd4095"), "{msg}");
    if !Path::new("/sys/block/nbd0").exists() {
        let (code, msg) = t.err(&["nbd_start_disk", "M0"]);
        assert_eq!(code, -19, "{msg}");
        assert!(msg.contains("nbd module"), "{msg}");
    }
    // Nothing changed: no disk, and the bdev is not held.
    assert_eq!(t.json(&["nbd_get_disks"]), serde_json::json!([]));
    let cfg = t.json(&["framework_get_config", "nbd"]);
    assert!(!cfg.to_string().contains("nbd_start_disk"), "{cfg}");
    t.ok(&["bdev_malloc_delete", "M0"]);
    assert!(t.stop().success());
}
