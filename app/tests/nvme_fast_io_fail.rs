//! fast_io_fail_timeout_sec: the target dies and stays away. keel-perf (continuing on failed
//! I/O) runs random reads through Keel's initiator attached with ctrlr_loss_timeout_sec 60,
//! reconnect_delay_sec 1, fast_io_fail_timeout_sec 2: I/O is held while the controller resets,
//! and once fast_io_fail passed it fails instead of waiting — the job ends on time with failed
//! I/O counted (without fast_io_fail it would wait for ctrlr_loss, past the end of the run).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use common::nvme::{attach_params, keel_perf, write_config};
use common::nvmf::{setup, NQN};

#[test]
fn io_fails_after_fast_io_fail_timeout() {
    let (mut t, addr) = setup();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[(
            "bdev_nvme_attach_controller",
            attach_params(
                "Nvme0",
                addr,
                NQN,
                false,
                json!({"ctrlr_loss_timeout_sec": 60, "reconnect_delay_sec": 1, "fast_io_fail_timeout_sec": 2}),
            ),
        )],
    );
    let start = Instant::now();
    let perf = Command::new(keel_perf())
        .args(["--no-pin", "--json"])
        .arg(&cfg)
        .args([
            "-q", "8", "-o", "4096", "-w", "randread", "-t", "6", "-f", "-T", "Nvme0n1",
        ])
        .args(["--output-format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    t.child.kill().unwrap();
    t.child.wait().unwrap();
    let out = perf.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let job = &v["results"][0];
    assert!(job["io_failed"].as_u64().unwrap() > 0, "{job}");
    // Ended with the run, not at ctrlr_loss (60 s).
    assert!(start.elapsed() < Duration::from_secs(50), "{:?}", start.elapsed());
}
