//! SPDK's bdev_set_qos_limit through the stock `spdk-rpc`: limits set, updated one by one and
//! lifted, shown in bdev_get_bdevs' `assigned_rate_limits`, saved by save_config after the
//! bdev's creation, SPDK's refusals; then keel-perf, fed the saved config, runs the limited
//! bdev at its limits.
//!
//! The rate checks are functional, not timed: limits far below what null does on any machine
//! (5000 IOPS, 8 MiB/s), over 3 s, checked at ±5 %. The budget is granted per 1 ms timeslice with
//! a catch-up of 10 ms for a descheduled reactor, so a loaded machine loses at most a few
//! timeslices of budget over the run (well under 1 %).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{workspace, Target};
use serde_json::{json, Value};

fn keel_perf() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("keel-perf");
    if !p.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace()).args(["build", "-q", "-p", "keel-perf"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "cannot build keel-perf");
    }
    p
}

fn limits(t: &Target, name: &str) -> Value {
    t.json(&["bdev_get_bdevs", "-b", name])[0]["assigned_rate_limits"].clone()
}

/// Runs keel-perf on `bdev` of the config `cfg` and returns its one job's result.
fn perf(cfg: &Path, bdev: &str, workload: &str) -> Value {
    let out = Command::new(keel_perf())
        .args(["--no-pin", "--json"])
        .arg(cfg)
        .args(["-q", "32", "-o", "4096", "-w", workload, "-t", "3", "-T", bdev])
        .args(["--output-format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = v["results"][0].clone();
    assert_eq!((job["job"].as_str(), job["io_failed"].as_u64()), (Some(bdev), Some(0)));
    job
}

fn within(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= want * 0.05,
        "{what}: {got:.1} is not within 5 % of the limit {want}"
    );
}

#[test]
fn limits_set_shown_saved_refused_and_enforced() {
    let keep = tempfile::tempdir().unwrap();
    let t = Target::start(&[]);
    t.ok(&["bdev_null_create", "N0", "64", "512"]);
    t.ok(&["bdev_null_create", "N1", "64", "512"]);
    let none = json!({"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0});
    assert_eq!(limits(&t, "N0"), none);

    t.ok(&["bdev_set_qos_limit", "N0", "--rw-ios-per-sec", "5000"]);
    t.ok(&["bdev_set_qos_limit", "N0", "--r-mbytes-per-sec", "100"]);
    assert_eq!(
        limits(&t, "N0"),
        json!({"rw_ios_per_sec": 5000, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 100, "w_mbytes_per_sec": 0}),
        "a limit not given keeps its value"
    );
    t.ok(&["bdev_set_qos_limit", "N0", "--r-mbytes-per-sec", "0"]);
    t.ok(&["bdev_set_qos_limit", "N1", "--w-mbytes-per-sec", "8"]);

    // SPDK's refusals, each changing nothing.
    assert_eq!(
        t.err(&["bdev_set_qos_limit", "Nope", "--rw-ios-per-sec", "1000"]).0,
        -19
    );
    let (code, msg) = t.err(&["bdev_set_qos_limit", "N0"]);
    assert_eq!((code, msg.contains("No rate limits specified")), (-22, true), "{msg}");
    let (code, msg) = t.err(&["bdev_set_qos_limit", "N0", "--rw-ios-per-sec", "1500"]);
    assert_eq!(code, -32602);
    assert!(
        msg.starts_with("Failed to configure rate limit: Invalid argument"),
        "{msg}"
    );
    // A claimed bdev: its layer forwards below the bdev's submit (see keel_bdev::gate).
    t.ok(&["bdev_malloc_create", "-b", "M0", "8", "512"]);
    t.ok(&["bdev_passthru_create", "-b", "M0", "-p", "P0"]);
    let (code, msg) = t.err(&["bdev_set_qos_limit", "M0", "--rw-ios-per-sec", "1000"]);
    assert_eq!(code, -32602);
    assert!(msg.contains("Device or resource busy"), "{msg}");
    assert_eq!(limits(&t, "M0"), none);
    assert_eq!(limits(&t, "N0")["rw_ios_per_sec"], 5000);

    // save_config: each limit after its bdev's creation, only the limits set, as SPDK.
    let saved = t.ok(&["save_config"]);
    let cfg: Value = serde_json::from_str(&saved).unwrap();
    let bdev = cfg["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == "bdev")
        .unwrap();
    let calls = bdev["config"].as_array().unwrap();
    let pos = |method: &str, name: &str| {
        calls
            .iter()
            .position(|c| c["method"] == method && c["params"]["name"] == name)
            .unwrap_or_else(|| panic!("{method} {name} not saved: {calls:?}"))
    };
    assert!(pos("bdev_null_create", "N0") < pos("bdev_set_qos_limit", "N0"));
    assert!(pos("bdev_null_create", "N1") < pos("bdev_set_qos_limit", "N1"));
    assert_eq!(
        calls[pos("bdev_set_qos_limit", "N0")]["params"],
        json!({"name": "N0", "rw_ios_per_sec": 5000})
    );
    assert_eq!(
        calls[pos("bdev_set_qos_limit", "N1")]["params"],
        json!({"name": "N1", "w_mbytes_per_sec": 8})
    );
    let file = keep.path().join("qos.json");
    std::fs::write(&file, &saved).unwrap();

    // Lifting the last limit of a bdev: unlimited again, nothing saved for it.
    t.ok(&["bdev_set_qos_limit", "N1", "--w-mbytes-per-sec", "0"]);
    assert_eq!(limits(&t, "N1"), none);
    assert!(!t.ok(&["save_config"]).contains("\"N1\", \"w_mbytes_per_sec\""));
    assert!(t.stop().success());

    // The saved config, loaded by keel-perf: the limited bdevs run at their limits.
    let job = perf(&file, "N0", "randread");
    within(job["iops"].as_f64().unwrap(), 5000.0, "N0 IOPS");
    let job = perf(&file, "N1", "randwrite");
    within(job["mibps"].as_f64().unwrap(), 8.0, "N1 MiB/s");
}
