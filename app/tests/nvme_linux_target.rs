//! The real peer: Keel's NVMe/TCP initiator (in keel-perf, from a JSON config) against the lab
//! guest's Linux 6.12 kernel target (nvmet-tcp, `../shared/lab` under QEMU). The guest runs
//! `tests/lab/nvme_linux_target.sh`: nvmet-tcp with a 64 MiB file namespace on its port 4420,
//! which the lab forwards to a free port on this machine's loopback (`LAB_HOSTFWD`). keel-perf
//! then verifies through the namespace bdev at 4 KiB (in-capsule writes) and 128 KiB (R2T), with
//! and without header and data digests. Through `keel_testkit::lab` (scripts/lab.sh): a lab
//! that cannot start fails the test; the run is bounded in time.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use common::nvme::{attach_params, perf, write_config};
use common::nvmf::free_port;
use common::workspace;
use keel_testkit::lab::{run_guest, LabOpts};

const NQN: &str = "nqn.2016-06.io.keel:lab-nvmet";

#[test]
fn keel_initiator_verifies_against_linux_nvmet_tcp() {
    let share = tempfile::tempdir().unwrap();
    let port = free_port();
    // The lab reads LAB_HOSTFWD from the environment (LabOpts has no field for it).
    std::env::set_var("LAB_HOSTFWD", format!("tcp:127.0.0.1:{port}-:4420"));
    let script = workspace().join("app/tests/lab/nvme_linux_target.sh");
    let opts = LabOpts {
        share: Some(share.path().to_path_buf()),
        env: vec![("NQN".into(), NQN.into())],
        timeout: Duration::from_secs(900),
        ..LabOpts::new("nvme_linux_target")
    };
    let guest = std::thread::spawn(move || run_guest(Path::new(&script), &opts));
    let ready = share.path().join("ready");
    let deadline = Instant::now() + Duration::from_secs(800);
    while !ready.exists() {
        assert!(!guest.is_finished(), "the guest ended before its target was up");
        assert!(Instant::now() < deadline, "the guest's target never came up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut report = String::new();
    let mut ok = true;
    for digests in [false, true] {
        let cfg = write_config(
            dir.path(),
            &[(
                "bdev_nvme_attach_controller",
                attach_params("Lnx0", addr, NQN, digests, json!({})),
            )],
        );
        for size in ["4096", "131072"] {
            let out = perf(
                &cfg,
                &["-q", "8", "-o", size, "-w", "verify", "-t", "5", "-T", "Lnx0n1"],
            );
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let good = out.status.success()
                && serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| {
                    let j = &v["results"][0];
                    j["status"] == "finished" && j["io_failed"] == 0 && j["iops"].as_f64().unwrap_or(0.0) > 0.0
                });
            report.push_str(&format!(
                "digests={digests} size={size}: {}\n{text}\n{}\n",
                if good { "ok" } else { "FAILED" },
                String::from_utf8_lossy(&out.stderr)
            ));
            ok &= good;
        }
    }
    if ok {
        report.push_str("HOST-OK\n");
    }
    std::fs::write(share.path().join("result.txt"), &report).unwrap();
    std::fs::write(share.path().join("done"), b"").unwrap();
    let r = guest.join().unwrap();
    assert!(ok, "{report}");
    r.assert_success();
    assert!(r.guest_log().contains("NVMET-LAB-OK"), "{}", r.guest_log());
}
