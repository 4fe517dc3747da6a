//! Failed I/O: with `-f` it is counted (Fail/s > 0 in the report, `io_failed` in JSON) and the
//! job runs to its deadline; without `-f` the first failure ends the job with error and the run
//! fails. Uses a test disk that fails every 50th I/O (the error bdev's injection is the
//! production way to get the same effect).

use keel_load::testing::disks::fail_disk;
use keel_perf::{BdevSetup, JobStatus, OutputFormat, RunOptions, RunSummary, Workload};

fn run(continue_on_failure: bool, output: OutputFormat) -> (RunSummary, String, String) {
    let mut opts = RunOptions::defaults();
    opts.workload = Workload::RandRead;
    opts.queue_depth = 16;
    opts.run_time_secs = 1;
    opts.pin = false;
    opts.continue_on_failure = continue_on_failure;
    opts.output = output;
    opts.bdevs = BdevSetup::Custom(Box::new(|reg| {
        fail_disk(reg, "Flaky0", 1 << 16, 512, 50);
        Ok(())
    }));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let s = keel_perf::run(opts, &mut out, &mut err).unwrap();
    (s, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

#[test]
fn failures_are_counted_with_f_and_end_the_job_without() {
    let (s, out, _) = run(true, OutputFormat::Text);
    assert!(s.success());
    let r = &s.results[0];
    assert_eq!(r.status, JobStatus::Finished);
    assert!(r.ios_failed > 0 && r.ios_completed > 0, "{r:?}");
    assert!(r.runtime_us >= 1e6);
    let line = out.lines().find(|l| l.starts_with("\t Flaky0")).expect("stats line");
    let fail_per_s: f64 = line[24..].split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(fail_per_s > 0.0, "{line}");

    let (s, out, _) = run(true, OutputFormat::Json);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["results"][0]["io_failed"].as_u64().unwrap() > 0, "{out}");
    assert_eq!(v["results"][0]["status"], "finished");
    assert!(s.success());

    let (s, out, err) = run(false, OutputFormat::Text);
    assert!(!s.success());
    let r = &s.results[0];
    assert_eq!(r.status, JobStatus::Failed);
    assert_eq!(r.ios_failed, 1, "the first failure ends the job: {r:?}");
    assert!(r.runtime_us < 1e6);
    assert!(out.contains("Job: Flaky0 ended in about "), "{out}");
    assert!(err.contains("Job Flaky0 failed: read at offset"), "{err}");
}
