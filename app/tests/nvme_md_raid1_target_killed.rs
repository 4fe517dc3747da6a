//! md raid1 over two NVMe/TCP namespaces served by two keel-tgt processes: keel-perf attaches
//! both (ctrlr_loss_timeout_sec 0: a lost controller is deleted at once) and creates the array
//! in its JSON config, and verifies through it while one target is killed mid-write. The lost
//! namespace is hot-removed, the array degrades to the survivor, and nothing acknowledged is
//! lost: the job ends with no failed I/O and no miscompare.

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use common::nvme::{attach_params, keel_perf, write_config};
use common::nvmf::{serve, NQN};
use common::Target;

#[test]
fn raid1_over_two_targets_survives_one_killed() {
    let ta = Target::start(&[]);
    let addr_a = serve(&ta, NQN, "32", &["-c", "8192"], &["-a", "-s", "KEELA"]);
    let mut tb = Target::start(&[]);
    let addr_b = serve(&tb, NQN, "32", &["-c", "8192"], &["-a", "-s", "KEELB"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[
            (
                "bdev_nvme_attach_controller",
                attach_params("NvmeA", addr_a, NQN, false, json!({})),
            ),
            (
                "bdev_nvme_attach_controller",
                attach_params("NvmeB", addr_b, NQN, false, json!({})),
            ),
            (
                "md_create",
                json!({"name": "md0", "level": "raid1", "members": ["NvmeAn1", "NvmeBn1"],
                       "assume_clean": true, "bitmap": "none"}),
            ),
        ],
    );
    let perf = Command::new(keel_perf())
        .args(["--no-pin", "--json"])
        .arg(&cfg)
        .args(["-q", "16", "-o", "4096", "-w", "verify", "-t", "6", "-T", "md0"])
        .args(["--output-format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    tb.child.kill().unwrap();
    tb.child.wait().unwrap();
    let out = perf.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = &v["results"][0];
    assert_eq!(job["job"], "md0");
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["io_failed"], 0, "{job}");
    assert!(job["iops"].as_f64().unwrap() > 0.0, "{job}");
    drop(ta);
}
