//! Verify over a uring bdev on a file in a temp dir, through the binary and a JSON config:
//! patterns reach the file through io_uring (O_DIRECT) and come back intact, with 4 KiB and
//! 64 KiB I/Os, on one and on two cores.

use std::process::Command;

fn run(cfg: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_keel-perf"))
        .args(["--no-pin", "--json"])
        .arg(cfg)
        .args(["-w", "verify", "-t", "1", "--output-format", "json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keel-perf {extra:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn verify_over_uring_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 16 << 20]).unwrap();
    let cfg = dir.path().join("c.json");
    std::fs::write(
        &cfg,
        serde_json::json!({"subsystems": [{"subsystem": "bdev", "config": [
            {"method": "bdev_uring_create", "params": {"name": "Uring0", "filename": img, "block_size": 4096}}
        ]}]})
        .to_string(),
    )
    .unwrap();
    for extra in [
        &["-q", "16", "-o", "4096"][..],
        &["-q", "4", "-o", "64k"],
        &["-q", "8", "-o", "4096", "-m", "0x3", "-C"],
    ] {
        let v = run(&cfg, extra);
        for job in v["results"].as_array().unwrap() {
            assert_eq!(job["status"], "finished", "{extra:?}: {job}");
            assert_eq!(job["io_failed"], 0, "{extra:?}");
            assert!(job["iops"].as_f64().unwrap() > 0.0);
        }
    }
    // What verify wrote is in the file: not all zeroes any more.
    let data = std::fs::read(&img).unwrap();
    assert!(data.iter().any(|&b| b != 0));
}
