//! `nbd_start_disk` / `nbd_stop_disk` / `nbd_get_disks` against a real kernel: the lab guest
//! (Linux 6.12 under QEMU, `scripts/lab.sh`) runs keel-tgt and keel-rpc built here, attaches
//! bdevs of 4 KiB and 512-byte blocks to `/dev/nbdN` (the first free one and a named one),
//! writes them with fio verify through the kernel, stops a disk and verifies its data from
//! another device, checks SPDK's error codes, save_config's entries, and that the target's
//! exit clears every device. The guest side is `tests/lab/nbd_disk.sh`; a lab that cannot
//! start fails this test.

use std::path::Path;
use std::time::Duration;

use keel_testkit::lab::{run_guest, LabOpts};

#[test]
fn kernel_nbd_disks_in_the_lab_guest() {
    let share = tempfile::tempdir().expect("tempdir");
    for bin in [env!("CARGO_BIN_EXE_keel-tgt"), env!("CARGO_BIN_EXE_keel-rpc")] {
        let bin = Path::new(bin);
        std::fs::copy(bin, share.path().join(bin.file_name().unwrap())).expect("copy a binary into the share");
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/nbd_disk.sh");
    let r = run_guest(
        &script,
        &LabOpts {
            share: Some(share.path().into()),
            timeout: Duration::from_secs(400),
            ..LabOpts::new("nbd_disk")
        },
    );
    r.assert_success();
    let log = r.guest_log();
    assert!(log.contains("verify after restart: OK"), "{log}");
    assert!(log.trim_end().ends_with("NBD_DISK: OK"), "{log}");
}
