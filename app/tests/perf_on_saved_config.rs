//! The config keel-tgt saves (through spdk-rpc's save_config) drives keel-perf unchanged: the
//! same file feeds both tools.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{workspace, Target};

/// keel-perf from the same build (the workspace test run builds it; build it if missing).
fn keel_perf() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap(); // target/<profile>/deps/..
    let p = dir.join("keel-perf");
    if !p.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile_release = dir.ends_with("release");
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace()).args(["build", "-q", "-p", "keel-perf"]);
        if profile_release {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "cannot build keel-perf");
    }
    assert!(p.exists(), "keel-perf not found at {}", p.display());
    p
}

#[test]
fn keel_perf_runs_on_keel_tgt_saved_config() {
    let keep = tempfile::tempdir().unwrap();
    let t = Target::start(&[]);
    t.ok(&["bdev_malloc_create", "-b", "M0", "16", "4096"]);
    t.ok(&["bdev_passthru_create", "-b", "M0", "-p", "P0"]);
    t.ok(&["bdev_null_create", "N0", "16", "512"]);
    let cfg = keep.path().join("stack.json");
    std::fs::write(&cfg, t.ok(&["save_config"])).unwrap();
    assert!(t.stop().success());

    let out = Command::new(keel_perf())
        .args(["--no-pin", "--json"])
        .arg(&cfg)
        .args([
            "-q",
            "8",
            "-o",
            "4096",
            "-w",
            "verify",
            "-t",
            "1",
            "-T",
            "P0",
            "--output-format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = &v["results"][0];
    assert_eq!(job["job"], "P0");
    assert_eq!(job["status"], "finished");
    assert!(job["iops"].as_f64().unwrap() > 0.0);
    assert_eq!(job["io_failed"], 0);

    // Without -T: the leaf bdevs (P0 and N0; M0 is claimed by P0).
    let out = Command::new(keel_perf())
        .args(["--no-pin", "--json"])
        .arg(&cfg)
        .args([
            "-q",
            "8",
            "-o",
            "4096",
            "-w",
            "randread",
            "-t",
            "1",
            "--output-format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut jobs: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job"].as_str().unwrap())
        .collect();
    jobs.sort();
    assert_eq!(jobs, ["N0", "P0"]);
}
