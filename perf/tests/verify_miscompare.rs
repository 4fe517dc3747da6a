//! A disk that corrupts one byte of its reads makes verify fail with a miscompare naming the
//! bdev, the offset (blocks and bytes) and the length — even with `-f` — both on the engine
//! (TestDriver) and through the orchestrator, which prints it on stderr and reports failure.

use keel_bdev::BdevRegistry;
use keel_load::testing::disks::corrupt_disk;
use keel_perf::{BdevSetup, Job, JobSpec, JobStatus, OutputFormat, RunOptions, Workload};
use keel_reactor::{CoreId, CoreMask, TestDriver};

/// Block 3 (4 KiB blocks), byte 100 of it.
const CORRUPT_BYTE: u64 = 3 * 4096 + 100;

#[test]
fn corrupted_read_is_a_miscompare_even_with_continue_on_failure() {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    corrupt_disk(&reg, "Bad0", 64, 4096, CORRUPT_BYTE);
    let mut spec = JobSpec::new("Bad0", Workload::Verify, 8, 4096, 1_000_000);
    spec.continue_on_failure = true;
    let job = d.enter(CoreId(0), || {
        let desc = reg.open("Bad0", true, |_| {}).unwrap();
        Job::start(spec, desc).unwrap()
    });
    assert!(d.run_until(10_000_000, || job.is_done()));
    let r = job.result().unwrap();
    assert_eq!(r.status, JobStatus::Failed);
    assert!(r.ended_with_error());
    let m = r.miscompare.clone().expect("miscompare recorded");
    assert_eq!(
        (m.bdev.as_str(), m.offset_blocks, m.offset_bytes, m.len_bytes),
        ("Bad0", 3, 12288, 4096)
    );
    assert_eq!(m.first_diff_byte, 100);
    assert_eq!(m.expected_byte ^ m.read_byte, 0x40);
    let text = m.to_string();
    for want in [
        "bdev Bad0",
        "offset 3 blocks (12288 bytes)",
        "length 4096 bytes",
        "byte 100",
    ] {
        assert!(text.contains(want), "{want} missing in: {text}");
    }

    // Through the orchestrator: stderr names it, the run is not a success, the report says the
    // job ended with error.
    let mut opts = RunOptions::defaults();
    opts.workload = Workload::Verify;
    opts.queue_depth = 8;
    opts.run_time_secs = 1;
    opts.pin = false;
    opts.continue_on_failure = true;
    opts.core_mask = CoreMask::parse("0x1").unwrap();
    opts.output = OutputFormat::Text;
    opts.bdevs = BdevSetup::Custom(Box::new(|reg| {
        corrupt_disk(reg, "Bad0", 64, 4096, CORRUPT_BYTE);
        Ok(())
    }));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let summary = keel_perf::run(opts, &mut out, &mut err).unwrap();
    let (out, err) = (String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap());
    assert!(!summary.success());
    assert!(
        err.contains("Miscompare on bdev Bad0 at offset 3 blocks (12288 bytes), length 4096 bytes"),
        "{err}"
    );
    assert!(out.contains("Job: Bad0 ended in about "), "{out}");
    assert!(out.contains(" seconds with error\n"), "{out}");
}
