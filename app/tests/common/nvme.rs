//! Helpers of the NVMe/TCP initiator tests: keel-perf from the same build, JSON configs that
//! attach controllers with `bdev_nvme_attach_controller`, and runs of keel-perf on them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use super::workspace;

/// keel-perf from the same build (built if missing).
pub fn keel_perf() -> PathBuf {
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
    assert!(p.exists(), "keel-perf not found at {}", p.display());
    p
}

/// The params of one `bdev_nvme_attach_controller` over TCP to `addr`, plus `extra` keys.
pub fn attach_params(name: &str, addr: SocketAddr, nqn: &str, digests: bool, extra: Value) -> Value {
    let mut p = json!({
        "name": name,
        "trtype": "tcp",
        "adrfam": "ipv4",
        "traddr": addr.ip().to_string(),
        "trsvcid": addr.port().to_string(),
        "subnqn": nqn,
        "hdgst": digests,
        "ddgst": digests,
        "prchk_reftag": false,
        "prchk_guard": false,
    });
    if let (Some(m), Value::Object(e)) = (p.as_object_mut(), extra) {
        m.extend(e);
    }
    p
}

/// Writes a config whose bdev subsystem runs `calls` (`(method, params)`) into `dir`.
pub fn write_config(dir: &Path, calls: &[(&str, Value)]) -> PathBuf {
    let config: Vec<Value> = calls.iter().map(|(m, p)| json!({"method": m, "params": p})).collect();
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": config}]});
    let path = dir.join("nvme.json");
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    path
}

/// Runs keel-perf on `cfg` with `args` (JSON output added).
pub fn perf(cfg: &Path, args: &[&str]) -> Output {
    Command::new(keel_perf())
        .args(["--no-pin", "--json"])
        .arg(cfg)
        .args(args)
        .args(["--output-format", "json"])
        .output()
        .unwrap()
}

/// Runs keel-perf and asserts every job finished without failed I/O; returns the jobs.
pub fn perf_ok(cfg: &Path, args: &[&str]) -> Vec<Value> {
    let out = perf(cfg, args);
    assert!(
        out.status.success(),
        "keel-perf {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = v["results"].as_array().unwrap().clone();
    assert!(!jobs.is_empty());
    for j in &jobs {
        assert_eq!(j["status"], "finished", "{j}");
        assert_eq!(j["io_failed"], 0, "{j}");
        assert!(j["iops"].as_f64().unwrap() > 0.0, "{j}");
    }
    jobs
}
