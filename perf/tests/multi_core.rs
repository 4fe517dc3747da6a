//! Jobs on several reactors: without -C one job per bdev, assigned round-robin over the mask;
//! with -C one job per core per bdev, each on an equal contiguous slice (visible as the verify
//! ranges).

mod common;

use serde_json::Value;

fn run_json(args: &[&str]) -> Value {
    let cfg = common::small_config();
    let mut all = vec![
        "--json",
        cfg.path().to_str().unwrap(),
        "--output-format",
        "json",
        "-t",
        "1",
        "--no-pin",
    ];
    all.extend_from_slice(args);
    let (code, out, err) = common::run_bin(&all);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn round_robin_and_every_core_slices() {
    // Malloc0 then Null0 (config order) on cores 0 and 1.
    let v = run_json(&["-m", "0x3", "-q", "8", "-w", "randwrite"]);
    let jobs: Vec<(&str, &str)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["job"].as_str().unwrap(), j["core_mask"].as_str().unwrap()))
        .collect();
    assert_eq!(jobs, [("Malloc0", "0x1"), ("Null0", "0x2")]);
    assert_eq!(v["core_count"], 2);

    // -C: Malloc0 (4096 blocks of 4 KiB) split between two cores, 2048 I/Os each.
    let v = run_json(&["-m", "[0-1]", "-C", "-T", "Malloc0", "-q", "8", "-w", "verify"]);
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(v["core_count"], 2);
    assert_eq!(
        (r[0]["core_mask"].as_str(), r[1]["core_mask"].as_str()),
        (Some("0x1"), Some("0x2"))
    );
    assert_eq!(
        (
            r[0]["verify_range"]["start"].as_u64(),
            r[1]["verify_range"]["start"].as_u64()
        ),
        (Some(0), Some(2048))
    );
    for j in r {
        assert_eq!(j["verify_range"]["length"], 2048);
        assert_eq!(j["status"], "finished");
        assert!(j["iops"].as_f64().unwrap() > 0.0);
    }
}
