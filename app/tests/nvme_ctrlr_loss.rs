//! ctrlr_loss_timeout_sec: the target dies and stays away. A keel-tgt initiator attached with
//! ctrlr_loss_timeout_sec 3 and reconnect_delay_sec 1 shows the controller "resetting" while
//! it retries, then deletes it: the controller leaves bdev_nvme_get_controllers and its
//! namespace bdev is hot-removed.

mod common;

use std::time::{Duration, Instant};

use common::nvmf::{setup, NQN};
use common::Target;

#[test]
fn controller_deleted_after_ctrlr_loss_timeout() {
    let (mut t, addr) = setup();
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
        "-l",
        "3",
        "-o",
        "1",
    ]);
    assert_eq!(names.trim(), "Nvme0n1");
    t.child.kill().unwrap();
    t.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut saw_resetting = false;
    loop {
        let c = i.json(&["bdev_nvme_get_controllers"]);
        match c.as_array().unwrap().first() {
            Some(c) => {
                let state = c["ctrlrs"][0]["state"].as_str().unwrap().to_string();
                saw_resetting |= state == "resetting";
                assert!(["enabled", "resetting"].contains(&state.as_str()), "{state}");
            }
            None => break,
        }
        assert!(Instant::now() < deadline, "controller never deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(saw_resetting, "the controller was never seen resetting");
    let (code, _) = i.err(&["bdev_get_bdevs", "-b", "Nvme0n1"]);
    assert_eq!(code, -19);
    assert!(i.stop().success());
}
