//! The real peer: the lab guest's Linux 6.12 NVMe/TCP host (`../shared/lab`, QEMU) against
//! keel-tgt on this machine. keel-tgt serves a 64 MiB malloc namespace on a free 127.0.0.1
//! port (and the discovery subsystem there); the guest reaches it as 10.0.2.2 and runs
//! `tests/lab/nvmf_linux_host.sh`: `nvme discover`, `nvme connect` without and with header and
//! data digests (`-g -G`), `nvme list`, `nvme id-ctrl`/`id-ns`, fio verify at 4, 64 and 128 KiB
//! (in-capsule and R2T writes), mkfs + mount + file checksum across a remount, `nvme
//! disconnect`. The lab must be there (`LAB_CACHE` set up); a missing lab fails the test.
//! Bounded by the lab's timeout (LAB_TIMEOUT, 600 s).

mod common;

use std::process::Command;

use common::nvmf::serve;
use common::{workspace, Target};

const NQN: &str = "nqn.2016-06.io.keel:lab";

#[test]
fn linux_nvme_tcp_host_discovers_connects_verifies_and_disconnects() {
    let lab = workspace().join("../shared/lab/run-in-guest.sh");
    assert!(lab.exists(), "the lab is missing at {}", lab.display());
    let t = Target::start(&[]);
    let port = serve(&t, NQN, "64", &[], &["-a", "-s", "KEELLAB1", "-d", "Keel lab"]).port();
    let out = tempfile::tempdir().unwrap();
    let script = workspace().join("app/tests/lab/nvmf_linux_host.sh");
    let o = Command::new(&lab)
        .arg(&script)
        .env("LAB_NET", "user")
        .env("LAB_OUT", out.path())
        .env("LAB_CONSOLE", "quiet")
        .env("LAB_ENV", format!("PORT={port}\nNQN={NQN}"))
        .output()
        .unwrap();
    let log = std::fs::read_to_string(out.path().join("guest.log")).unwrap_or_default();
    eprintln!("{log}");
    assert!(
        o.status.success() && log.contains("NVMF-LAB-OK"),
        "the guest's run failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // The target is still healthy after the host went away.
    assert_eq!(t.json(&["nvmf_subsystem_get_controllers", NQN]), serde_json::json!([]));
    t.stop();
}
