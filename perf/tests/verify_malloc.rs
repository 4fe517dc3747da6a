//! Verify over malloc passes: many slots writing patterns and reading them back, on the
//! TestDriver (with a range smaller than the queue depth too), and through the binary, whose
//! report prints the verification range.

mod common;

use keel_bdev::modules::malloc;
use keel_bdev::BdevRegistry;
use keel_perf::{Job, JobSpec, JobStatus, VerifyRange, Workload};
use keel_reactor::{CoreId, TestDriver};

/// Runs verify jobs until one completed at least `min_ios` (the machine may be shared and slow:
/// each retry runs four times longer, up to ~10 s), and returns the last result. What is checked
/// is correctness (every completed read matched), never speed.
fn verify_at_least(
    min_ios: u64,
    num_blocks: u64,
    qd: u32,
    offset_blocks: u64,
    length_blocks: u64,
) -> keel_perf::JobResult {
    let mut runtime_us = 150_000;
    loop {
        let r = verify(num_blocks, qd, offset_blocks, length_blocks, runtime_us);
        if r.ios_completed >= min_ios || runtime_us > 2_500_000 || r.status != JobStatus::Finished {
            return r;
        }
        runtime_us *= 4;
    }
}

fn verify(num_blocks: u64, qd: u32, offset_blocks: u64, length_blocks: u64, runtime_us: u64) -> keel_perf::JobResult {
    let d = TestDriver::new(2);
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &malloc::MallocOpts::new("Malloc0", num_blocks, 512)).unwrap();
    let mut spec = JobSpec::new("Malloc0", Workload::Verify, qd, 4096, runtime_us);
    spec.offset_blocks = offset_blocks;
    spec.length_blocks = length_blocks;
    let job = d.enter(CoreId(1), || {
        let desc = reg.open("Malloc0", true, |_| {}).unwrap();
        Job::start(spec, desc).unwrap()
    });
    assert!(d.run_until(100_000_000, || job.is_done()));
    let r = job.result().unwrap();
    // A write and the read that checks it count once, as bdevperf's: one per read done.
    let reads = std::sync::Arc::new(std::sync::Mutex::new(None));
    let r2 = reads.clone();
    let bdev = reg.get("Malloc0").unwrap();
    d.enter(CoreId(0), || {
        bdev.collect_stats(keel_bdev::StatsReset::None, move |s| {
            *r2.lock().unwrap() = Some(s.op(keel_bdev::IoOp::Read).ops)
        })
    });
    d.run_until_idle(1000);
    let reads = reads.lock().unwrap().expect("statistics collected");
    assert_eq!(r.ios_completed, reads, "{r:?}");
    r
}

#[test]
fn verify_over_malloc_passes() {
    // Whole bdev: 4096 blocks of 512 = 512 I/Os of 4 KiB.
    let r = verify_at_least(1001, 4096, 64, 0, 0);
    assert_eq!(r.status, JobStatus::Finished, "{r:?}");
    assert!(r.miscompare.is_none());
    assert!(r.ios_completed > 1000, "{r:?}");
    assert_eq!(r.ios_failed, 0);
    assert_eq!(r.verify_range, Some(VerifyRange { start: 0, length: 512 }));
    assert_eq!(r.core, CoreId(1));

    // A slice of 5 I/Os with queue depth 32: only 5 slots take part, each owning its offset, and
    // the wrap-around rewrites each offset many times with new sequence numbers.
    let r = verify_at_least(101, 4096, 32, 80, 40);
    assert_eq!(r.status, JobStatus::Finished, "{r:?}");
    assert_eq!(r.verify_range, Some(VerifyRange { start: 10, length: 5 }));
    assert!(r.ios_completed > 100);

    // The binary over a JSON config.
    let cfg = common::small_config();
    let (code, out, err) = common::run_bin(&[
        "--json",
        cfg.path().to_str().unwrap(),
        "-T",
        "Malloc0",
        "-w",
        "verify",
        "-q",
        "16",
        "-o",
        "8k",
        "-t",
        "1",
    ]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("Job: Malloc0 (Core Mask 0x1, workload: verify, depth: 16, IO size: 8192)"),
        "{out}"
    );
    // 4096 blocks of 4 KiB in I/Os of 8 KiB.
    assert!(
        out.contains("\t Verification LBA range: start 0x0 length 0x800\n"),
        "{out}"
    );
    assert!(!err.contains("Miscompare"), "{err}");
}
