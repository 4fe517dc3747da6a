//! The real peer: the lab guest's Linux 6.12 NVMe/TCP host (`../shared/lab`, QEMU) against
//! keel-tgt on this machine. keel-tgt serves a 64 MiB malloc namespace on a free 127.0.0.1
//! port (and the discovery subsystem there); the guest reaches it as 10.0.2.100 (the lab's
//! guest forward) and runs `tests/lab/nvmf_linux_host.sh`: `nvme discover`, `nvme connect`
//! without and with header and data digests (`-g -G`), `nvme list`, `nvme id-ctrl`/`id-ns`, fio
//! verify at 4, 64 and 128 KiB (in-capsule and R2T writes), mkfs + mount + file checksum across a
//! remount, `nvme disconnect`. Through `keel_testkit::lab` (scripts/lab.sh): a lab that cannot
//! start fails the test; the run is bounded in time.

mod common;

use std::path::Path;
use std::time::Duration;

use common::nvmf::serve;
use common::{workspace, Target};
use keel_testkit::lab::{run_guest, LabOpts};

const NQN: &str = "nqn.2016-06.io.keel:lab";

#[test]
fn linux_nvme_tcp_host_discovers_connects_verifies_and_disconnects() {
    let t = Target::start(&[]);
    let port = serve(&t, NQN, "64", &[], &["-a", "-s", "KEELLAB1", "-d", "Keel lab"]).port();
    let script = workspace().join("app/tests/lab/nvmf_linux_host.sh");
    let r = run_guest(
        Path::new(&script),
        &LabOpts {
            guestfwd: vec![port],
            env: vec![("PORT".into(), port.to_string()), ("NQN".into(), NQN.into())],
            timeout: Duration::from_secs(600),
            ..LabOpts::new("nvmf_linux_host")
        },
    );
    r.assert_success();
    assert!(r.guest_log().contains("NVMF-LAB-OK"), "{}", r.guest_log());
    // The target is still healthy after the host went away.
    assert_eq!(t.json(&["nvmf_subsystem_get_controllers", NQN]), serde_json::json!([]));
    t.stop();
}
