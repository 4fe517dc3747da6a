//! The target goes away under running I/O and comes back: keel-perf verifies through Keel's
//! initiator (ctrlr_loss_timeout_sec 30, reconnect_delay_sec 1, no fast_io_fail) while the
//! keel-tgt serving the namespace (a file-backed aio bdev, so acknowledged data survives the
//! process) is killed and, two seconds later, started again on the same port. The controller
//! resets, reconnects every second until the target answers, the I/O held meanwhile is issued
//! again, and the job finishes with no failed I/O and no miscompare.

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use common::nvme::{attach_params, keel_perf, write_config};
use common::nvmf::{free_port, listen, NQN};
use common::Target;

fn serve_file(file: &std::path::Path, port: &str) -> Target {
    let t = Target::start(&[]);
    t.ok(&["bdev_aio_create", file.to_str().unwrap(), "A0", "512"]);
    t.ok(&["nvmf_create_transport", "-t", "TCP", "-c", "8192"]);
    t.ok(&["nvmf_create_subsystem", NQN, "-a", "-s", "KEEL0003"]);
    t.ok(&["nvmf_subsystem_add_ns", NQN, "A0"]);
    listen(&t, NQN, port);
    t
}

#[test]
fn io_survives_a_target_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::File::create(&file).unwrap().set_len(32 << 20).unwrap();
    let port = free_port().to_string();
    let mut t1 = serve_file(&file, &port);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = write_config(
        dir.path(),
        &[(
            "bdev_nvme_attach_controller",
            attach_params(
                "Nvme0",
                addr,
                NQN,
                false,
                json!({"ctrlr_loss_timeout_sec": 30, "reconnect_delay_sec": 1}),
            ),
        )],
    );
    let perf = Command::new(keel_perf())
        .args(["--no-pin", "--json"])
        .arg(&cfg)
        .args(["-q", "8", "-o", "4096", "-w", "verify", "-t", "8", "-T", "Nvme0n1"])
        .args(["--output-format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    t1.child.kill().unwrap();
    t1.child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let _t2 = serve_file(&file, &port);
    let out = perf.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = &v["results"][0];
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["io_failed"], 0, "{job}");
    assert!(job["iops"].as_f64().unwrap() > 0.0, "{job}");
}
