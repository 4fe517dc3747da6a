//! After setup, keel-perf's I/O loop does not allocate: a counting global allocator sees zero
//! allocations while a job completes 100k I/Os in steady state, over null and malloc, for
//! randread, randwrite, randrw and verify (verify on malloc only: null stores no data), and
//! write_zeroes on malloc; and random writes to a malloc bdev larger than the last-level cache
//! (whose writes take the streaming-store kernel).
//!
//! The same holds through the QoS/histogram gate ("null-gated": a null bdev with an IOPS
//! limit that keeps requests waiting for tokens, and a histogram of every op).
//!
//! Everything runs in one #[test] on one thread so that no other test allocates meanwhile.

use keel_bdev::modules::{malloc, null};
use keel_bdev::BdevRegistry;
use keel_perf::{Job, JobSpec, JobStatus, Workload};
use keel_reactor::{CoreId, TestDriver};

#[global_allocator]
static GLOBAL: keel_testkit::CountingAlloc = keel_testkit::CountingAlloc;

const WARMUP_IOS: u64 = 10_000;
const MEASURED_IOS: u64 = 100_000;

fn steady_state_allocations(module: &str, workload: Workload) -> u64 {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    match module {
        "null" => null::create(&reg, &null::NullOpts::new("B", 1 << 16, 512)).map(|_| ()),
        "null-gated" => null::create(&reg, &null::NullOpts::new("B", 1 << 16, 512)).map(|b| {
            let limits = keel_bdev::QosLimits {
                rw_ios_per_sec: 1_000_000,
                ..Default::default()
            };
            d.enter(CoreId(0), || {
                b.set_qos_limits(limits, || {});
                b.set_histogram(Some(keel_bdev::IoCaps::ALL), || {});
            });
            d.run_until_idle(100);
        }),
        // 512 MiB: larger than the last-level cache of any machine the tests run on.
        "malloc-large" => malloc::create(&reg, &malloc::MallocOpts::new("B", 1 << 20, 512)).map(|_| ()),
        _ => malloc::create(&reg, &malloc::MallocOpts::new("B", 1 << 14, 512)).map(|_| ()),
    }
    .unwrap();
    let mut spec = JobSpec::new("B", workload, 32, 4096, 0);
    spec.rw_read_percent = 70;
    let job = d.enter(CoreId(0), || {
        let desc = reg.open("B", workload.writes(), |_| {}).unwrap();
        Job::start(spec, desc).unwrap()
    });
    assert!(d.run_until(10_000_000, || job.completed_ios() >= WARMUP_IOS));
    // This thread's count: the test driver runs every reactor here, while helper threads (a
    // malloc bdev's page populator) may allocate at any moment and are not on the I/O path.
    let before = keel_testkit::thread_allocations();
    let start = job.completed_ios();
    assert!(d.run_until(10_000_000, || job.completed_ios() >= start + MEASURED_IOS));
    let after = keel_testkit::thread_allocations();
    job.stop();
    assert!(d.run_until(1_000, || job.is_done()));
    let r = job.result().unwrap();
    assert_eq!(r.status, JobStatus::Terminated, "{module} {workload}: {r:?}");
    assert_eq!(r.ios_failed, 0, "{module} {workload}");
    assert!(r.miscompare.is_none(), "{module} {workload}");
    after - before
}

#[test]
fn steady_state_io_does_not_allocate() {
    // The counter sees allocations at all.
    let base = keel_testkit::allocations();
    drop(std::hint::black_box(vec![1u8; 10]));
    assert!(keel_testkit::allocations() > base);
    let mut report = Vec::new();
    for (module, w) in [
        ("null", Workload::RandRead),
        ("null", Workload::RandWrite),
        ("null", Workload::RandRw),
        ("null-gated", Workload::RandRw),
        ("malloc", Workload::RandRead),
        ("malloc", Workload::RandWrite),
        ("malloc", Workload::RandRw),
        ("malloc", Workload::Verify),
        ("malloc", Workload::WriteZeroes),
        ("malloc-large", Workload::RandWrite),
    ] {
        report.push((module, w, steady_state_allocations(module, w)));
    }
    for (module, w, n) in &report {
        assert_eq!(
            *n, 0,
            "{module} {w}: {n} allocations in {MEASURED_IOS} I/Os; all: {report:?}"
        );
    }
}
