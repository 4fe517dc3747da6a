//! `--output-format json` prints exactly one JSON object on stdout: bdevperf's perform_tests
//! result (`results` with every job field, `core_count`) plus Keel's `latency_percentiles_us`.

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
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{out}"))
}

#[test]
fn json_report_has_bdevperf_fields_and_percentiles() {
    let v = run_json(&["-w", "randrw", "-M", "70", "-q", "8", "-o", "4k"]);
    assert_eq!(v["core_count"], 1);
    let results = v["results"].as_array().unwrap();
    let names: Vec<&str> = results.iter().map(|j| j["job"].as_str().unwrap()).collect();
    assert_eq!(names, ["Malloc0", "Null0"]);
    for j in results {
        let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "job",
            "core_mask",
            "workload",
            "percentage",
            "status",
            "queue_depth",
            "io_size",
            "runtime",
            "iops",
            "mibps",
            "io_failed",
            "io_timeout",
            "avg_latency_us",
            "min_latency_us",
            "max_latency_us",
            "latency_percentiles_us",
        ] {
            assert!(keys.contains(&k), "{k} missing in {j}");
        }
        assert!(j.get("verify_range").is_none());
        assert_eq!(j["core_mask"], "0x1");
        assert_eq!(j["workload"], "randrw");
        assert_eq!(j["percentage"], 70);
        assert_eq!(j["status"], "finished");
        assert_eq!(j["queue_depth"], 8);
        assert_eq!(j["io_size"], 4096);
        assert_eq!(j["io_failed"], 0);
        assert_eq!(j["io_timeout"], 0);
        let runtime = j["runtime"].as_f64().unwrap();
        assert!((1.0..1.5).contains(&runtime), "{runtime}");
        let iops = j["iops"].as_f64().unwrap();
        assert!(iops > 0.0);
        assert!((j["mibps"].as_f64().unwrap() - iops * 4096.0 / 1048576.0).abs() < 1e-6);
        let (avg, min, max) = (
            j["avg_latency_us"].as_f64().unwrap(),
            j["min_latency_us"].as_f64().unwrap(),
            j["max_latency_us"].as_f64().unwrap(),
        );
        assert!(0.0 < min && min <= avg && avg <= max, "{j}");
        let p = &j["latency_percentiles_us"];
        let pct: Vec<f64> = ["p50", "p90", "p99", "p99.9", "p99.99"]
            .iter()
            .map(|k| p[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {p}")))
            .collect();
        assert!(pct.windows(2).all(|w| w[0] <= w[1]), "{p}");
        assert!(pct[0] >= min * 0.99 && pct[4] <= max * 1.01, "{p} vs {min}..{max}");
    }

    // Verify jobs carry verify_range and no percentage.
    let v = run_json(&["-w", "verify", "-q", "4", "-T", "Malloc0"]);
    let j = &v["results"][0];
    assert_eq!(j["verify_range"]["start"], 0);
    assert_eq!(j["verify_range"]["length"], 4096);
    assert!(j.get("percentage").is_none());
}
