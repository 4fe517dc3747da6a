//! `-k`: I/Os outstanding longer than the timeout count once each in TO/s (`io_timeout`), and
//! still complete. A delay bdev holds every read 1.5 s; with `-k 1` each read times out.

mod common;

use std::io::Write;

fn run(extra: &[&str]) -> serde_json::Value {
    let mut cfg = tempfile::NamedTempFile::new().unwrap();
    write!(
        cfg,
        r#"{{"subsystems":[{{"subsystem":"bdev","config":[
            {{"method":"bdev_null_create","params":{{"name":"N0","num_blocks":1024,"block_size":512}}}},
            {{"method":"bdev_delay_create","params":{{"base_bdev_name":"N0","name":"D0",
              "avg_read_latency":1500000,"p99_read_latency":1500000,
              "avg_write_latency":10,"p99_write_latency":10}}}}]}}]}}"#
    )
    .unwrap();
    let mut args = vec![
        "--json",
        cfg.path().to_str().unwrap(),
        "-T",
        "D0",
        "-q",
        "2",
        "-o",
        "512",
    ];
    args.extend_from_slice(&["-w", "randread", "-t", "2", "--output-format", "json"]);
    args.extend_from_slice(extra);
    let (code, out, err) = common::run_bin(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["results"][0].clone()
}

#[test]
fn slow_ios_count_as_timed_out_once_and_still_complete() {
    let job = run(&["-k", "1"]);
    let (timed_out, done) = (job["io_timeout"].as_u64().unwrap(), job["iops"].as_f64().unwrap());
    // Two reads at a time, each 1.5 s: the first two time out at 1 s; the next two are issued
    // at 1.5 s and time out during the drain. Each counts once, and each completes.
    assert!((2..=4).contains(&timed_out), "{job}");
    assert!(done > 0.0, "timed-out I/Os still complete: {job}");
    assert_eq!(job["io_failed"], 0);
    let job = run(&[]);
    assert_eq!(job["io_timeout"], 0, "no -k, no timeouts: {job}");
}
