//! SPDK's ublk methods against a real `ublk_drv`: the lab guest (Linux 6.12 under QEMU,
//! `scripts/lab.sh`) runs keel-tgt and keel-rpc built here, serves bdevs of 4 KiB and 512-byte
//! blocks as `/dev/ublkbN` (two queues on two reactors, and one), writes them with fio verify,
//! stops a disk and verifies its data under another id, checks SPDK's error codes and
//! save_config's entries, destroys the target, checks that keel-tgt's exit deletes its disks,
//! recovers a disk whose keel-tgt was SIGKILLed under fio (`ublk_recover_disk`), and reads
//! keel-tgt's per-reactor allocation count around fio to show the queue path allocates nothing. The guest side is `tests/lab/ublk_disk.sh`; a lab that cannot start fails this test.

use std::path::Path;
use std::time::Duration;

use keel_testkit::lab::{run_guest, LabOpts};

#[test]
fn ublk_disks_in_the_lab_guest() {
    let share = tempfile::tempdir().expect("tempdir");
    for bin in [env!("CARGO_BIN_EXE_keel-tgt"), env!("CARGO_BIN_EXE_keel-rpc")] {
        let bin = Path::new(bin);
        std::fs::copy(bin, share.path().join(bin.file_name().unwrap())).expect("copy a binary into the share");
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/ublk_disk.sh");
    let r = run_guest(
        &script,
        &LabOpts {
            share: Some(share.path().into()),
            timeout: Duration::from_secs(400),
            ..LabOpts::new("ublk_disk")
        },
    );
    r.assert_success();
    let log = r.guest_log();
    assert!(log.contains("verify after restart: OK"), "{log}");
    assert!(log.contains("recovery: OK"), "{log}");
    assert!(log.contains("no allocation per I/O: OK"), "{log}");
    assert!(log.trim_end().ends_with("UBLK_DISK: OK"), "{log}");
}
