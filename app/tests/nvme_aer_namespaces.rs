//! Namespaces added to and removed from a subsystem while Keel's initiator is attached: the
//! target's Asynchronous Event (namespace attribute changed) makes the initiator re-read the
//! active namespace list — a new namespace becomes bdev `Nvme0n2`, a removed one's bdev is
//! hot-removed.

mod common;

use std::time::{Duration, Instant};

use common::nvmf::{setup, NQN};
use common::Target;

fn wait_for(i: &Target, name: &str, present: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let there = i.rpc(&["bdev_get_bdevs", "-b", name]).status.success();
        if there == present {
            return;
        }
        assert!(Instant::now() < deadline, "{name} present={there}, wanted {present}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn namespace_add_and_remove_reach_the_initiator() {
    let (t, addr) = setup();
    let port = addr.port().to_string();
    let i = Target::start(&[]);
    let names = i.ok(&[
        "bdev_nvme_attach_controller",
        "-b",
        "Nvme0",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
        "-n",
        NQN,
    ]);
    assert_eq!(names.trim(), "Nvme0n1");

    t.ok(&["bdev_malloc_create", "-b", "Malloc1", "8", "4096"]);
    t.ok(&["nvmf_subsystem_add_ns", NQN, "Malloc1", "-n", "2"]);
    wait_for(&i, "Nvme0n2", true);
    let b = i.json(&["bdev_get_bdevs", "-b", "Nvme0n2"]);
    assert_eq!(b[0]["block_size"], 4096);
    assert_eq!(b[0]["num_blocks"], 2048);

    t.ok(&["nvmf_subsystem_remove_ns", NQN, "1"]);
    wait_for(&i, "Nvme0n1", false);
    // The other namespace stays.
    assert!(i.rpc(&["bdev_get_bdevs", "-b", "Nvme0n2"]).status.success());
    assert!(i.stop().success());
}
