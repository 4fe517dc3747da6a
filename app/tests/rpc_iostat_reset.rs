//! SPDK's bdev_reset_iostat through the stock `spdk-rpc`: one bdev or all, the modes, unknown
//! names refused.

mod common;

use common::Target;

fn reads(t: &Target, name: &str) -> u64 {
    t.json(&["bdev_get_iostat", "--names", name])["bdevs"][0]["num_read_ops"]
        .as_u64()
        .unwrap()
}

#[test]
fn reset_one_bdev_then_all() {
    let t = Target::start(&[]);
    t.ok(&["bdev_malloc_create", "-b", "M0", "8", "512"]);
    t.ok(&["bdev_malloc_create", "-b", "M1", "8", "512"]);
    // md's examine read each new bdev's superblock area.
    assert!(reads(&t, "M0") > 0 && reads(&t, "M1") > 0);
    t.ok(&["bdev_reset_iostat", "-b", "M0", "-m", "maxmin"]);
    assert!(reads(&t, "M0") > 0, "maxmin keeps the counts");
    t.ok(&["bdev_reset_iostat", "-b", "M0", "-m", "none"]);
    assert!(reads(&t, "M0") > 0);
    t.ok(&["bdev_reset_iostat", "-b", "M0"]);
    assert_eq!(reads(&t, "M0"), 0);
    assert!(reads(&t, "M1") > 0, "only the named bdev");
    t.ok(&["bdev_reset_iostat"]);
    assert_eq!(reads(&t, "M1"), 0);
    assert_eq!(t.err(&["bdev_reset_iostat", "-b", "Nope"]).0, -19);
    assert!(t.stop().success());
}
