//! SPDK's bdev_set_options (STARTUP only) and bdev_examine through the stock `spdk-rpc`: sizes
//! accepted, turning automatic examination off refused (Keel always examines), a manual
//! examine refused as SPDK refuses it while auto examine is on.

mod common;

use common::Target;

#[test]
fn set_options_at_startup_and_examine_refusals() {
    let t = Target::start(&["--wait-for-rpc"]);
    t.ok(&["bdev_set_options", "-p", "65535", "-c", "256"]);
    let (code, msg) = t.err(&["bdev_set_options", "--no-auto-examine"]);
    assert_eq!(code, -22, "{msg}");
    assert!(msg.contains("auto_examine"), "{msg}");
    assert_eq!(t.err(&["bdev_set_options", "-c", "0"]).0, -22);
    t.ok(&["framework_start_init"]);
    // RUNTIME: SPDK serves it only in STARTUP.
    let (code, _) = t.err(&["bdev_set_options", "-p", "1024"]);
    assert_ne!(code, 0);

    t.ok(&["bdev_malloc_create", "-b", "M0", "8", "512"]);
    let (code, msg) = t.err(&["bdev_examine", "-b", "M0"]);
    assert_eq!(code, -22);
    assert!(msg.contains("auto examine"), "{msg}");
    assert_eq!(t.err(&["bdev_examine", "-b", "Nope"]).0, -19);
    assert!(t.stop().success());
}
