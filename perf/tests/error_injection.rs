//! Error injection through the error bdev (keel_bdev::modules::error, configured by JSON config
//! as with SPDK): injected read failures show up as Fail/s > 0 and `io_failed` with -f, end the
//! job with error without it; injected data corruption makes verify fail with a miscompare on
//! stderr even with -f.

mod common;

use std::io::Write;

fn config(inject: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    write!(
        f,
        r#"{{"subsystems":[{{"subsystem":"bdev","config":[
            {{"method":"bdev_malloc_create","params":{{"name":"Malloc0","num_blocks":4096,"block_size":4096}}}},
            {{"method":"bdev_error_create","params":{{"base_name":"Malloc0"}}}},
            {{"method":"bdev_error_inject_error","params":{inject}}}
        ]}}]}}"#
    )
    .unwrap();
    f
}

#[test]
fn injected_failures_and_corruption() {
    // 100 failed reads, counted with -f; only the leaf EE_Malloc0 is tested (Malloc0 is claimed).
    let cfg = config(r#"{"name":"EE_Malloc0","io_type":"read","error_type":"failure","num":100}"#);
    let path = cfg.path().to_str().unwrap();
    let base = ["--json", path, "-w", "randread", "-q", "8", "-t", "1", "--no-pin"];
    let mut args = base.to_vec();
    args.extend(["-f", "--output-format", "json"]);
    let (code, out, err) = common::run_bin(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "only the leaf bdev: {out}");
    assert_eq!(results[0]["job"], "EE_Malloc0");
    assert_eq!(results[0]["io_failed"], 100);
    assert_eq!(results[0]["status"], "finished");

    let mut args = base.to_vec();
    args.push("-f");
    let (code, out, _) = common::run_bin(&args);
    assert_eq!(code, 0);
    let line = out.lines().find(|l| l.starts_with("\t EE_Malloc0")).unwrap();
    let fail_per_s: f64 = line[24..].split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(fail_per_s > 0.0, "{line}");

    // Without -f the first failure ends the job with error and the run fails.
    let (code, out, err) = common::run_bin(&base);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("Job: EE_Malloc0 ended in about "), "{out}");
    assert!(err.contains("Job EE_Malloc0 failed: read at offset"), "{err}");

    // Corrupted read data: verify reports a miscompare naming bdev, offset and length, exit 1
    // even with -f.
    let cfg = config(
        r#"{"name":"EE_Malloc0","io_type":"read","error_type":"corrupt_data","num":1,"corrupt_offset":10,"corrupt_value":85}"#,
    );
    let (code, out, err) = common::run_bin(&[
        "--json",
        cfg.path().to_str().unwrap(),
        "-w",
        "verify",
        "-q",
        "4",
        "-t",
        "1",
        "-f",
        "--no-pin",
    ]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("Miscompare on bdev EE_Malloc0 at offset "), "{err}");
    assert!(err.contains("length 4096 bytes: first difference at byte 10"), "{err}");
    assert!(out.contains("Job: EE_Malloc0 ended in about "), "{out}");
}
