//! After set-up, I/O through md arrays does not allocate: a counting global allocator sees zero
//! allocations while a keel-load job completes 50k I/Os in steady state through every level:
//! raid0 over two nulls (4 KiB: forwarded in place; 12 KiB on 4 KiB chunks: split into
//! children), linear over two nulls (12 KiB, split where it crosses the members), raid1 over two
//! nulls (70 % reads forwarded round-robin, writes fanned out through the write gate) and over
//! two mallocs under verify, and with an internal write-intent bitmap (once its bit is on disk,
//! writes pass the gate without the control path), and raid10 near-2 over two nulls (12 KiB on
//! 4 KiB chunks: split reads, mirrored writes split at every chunk), raid5 over four nulls
//! (4 KiB random reads and writes on 4 KiB chunks: partial-stripe writes through the stripe
//! cache, read-modify-write and reconstruct-write) and over four mallocs under verify with
//! 12 KiB I/O (full and partial stripes), degraded raid5 (one member failed: reads rebuilt from
//! parity, writes to the lost chunk into parity only), and raid6 over five nulls with two
//! members failed (two-block rebuilds).
//!
//! Everything runs in one #[test] on one thread so that no other test allocates meanwhile.

use keel_bdev::modules::{malloc, null};
use keel_bdev::BdevRegistry;
use keel_load::{Job, JobSpec, JobStatus, Workload};
use keel_md::{CreateOpts, MdRegistry};
use keel_reactor::{CoreId, TestDriver};

#[global_allocator]
static GLOBAL: keel_testkit::CountingAlloc = keel_testkit::CountingAlloc;

const WARMUP_IOS: u64 = 5_000;
const MEASURED_IOS: u64 = 50_000;

struct Case {
    name: &'static str,
    level: &'static str,
    malloc: bool,
    workload: Workload,
    io_size: u64,
    bitmap: bool,
    /// Members (D0, D1, ...).
    members: usize,
    /// Members failed before the job starts.
    fail: &'static [&'static str],
}

fn steady_state_allocations(case: &Case) -> u64 {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    let names: Vec<String> = (0..case.members).map(|i| format!("D{i}")).collect();
    for m in &names {
        let m = m.as_str();
        if case.malloc {
            malloc::create(&reg, &malloc::MallocOpts::new(m, 8192, 512)).unwrap();
        } else {
            null::create(&reg, &null::NullOpts::new(m, 1 << 16, 512)).unwrap();
        }
    }
    let md = MdRegistry::of(&reg);
    let (tx, rx) = std::sync::mpsc::channel();
    d.enter(CoreId(0), || {
        md.create(
            CreateOpts {
                name: "md0".into(),
                level: case.level.into(),
                members: names.clone(),
                chunk_kb: Some(4),
                assume_clean: true,
                bitmap: Some(if case.bitmap { "internal" } else { "none" }.into()),
                ..Default::default()
            },
            move |r| tx.send(r).unwrap(),
        )
    });
    assert!(
        d.run_until(50_000_000, || matches!(rx.try_recv(), Ok(Ok(())))),
        "{}: create",
        case.name
    );
    for m in case.fail {
        md.fail("md0", m).unwrap();
    }
    if !case.fail.is_empty() {
        let state = md.arrays(Some("md0")).unwrap()[0].state.clone();
        assert!(state.contains("degraded"), "{}: {state}", case.name);
    }
    let mut spec = JobSpec::new("md0", case.workload, 32, case.io_size, 0);
    spec.rw_read_percent = 70;
    let job = d.enter(CoreId(0), || {
        let desc = reg.open("md0", case.workload.writes(), |_| {}).unwrap();
        Job::start(spec, desc).unwrap()
    });
    assert!(d.run_until(100_000_000, || job.completed_ios() >= WARMUP_IOS));
    // This thread's count: the test driver runs every reactor here, while helper threads (a
    // malloc bdev's page populator) may allocate at any moment and are not on the I/O path.
    let before = keel_testkit::thread_allocations();
    let start = job.completed_ios();
    assert!(d.run_until(100_000_000, || job.completed_ios() >= start + MEASURED_IOS));
    let after = keel_testkit::thread_allocations();
    job.stop();
    assert!(d.run_until(100_000, || job.is_done()));
    let r = job.result().unwrap();
    assert_eq!(r.status, JobStatus::Terminated, "{}: {r:?}", case.name);
    assert_eq!(r.ios_failed, 0, "{}", case.name);
    assert!(r.miscompare.is_none(), "{}", case.name);
    let (tx, rx) = std::sync::mpsc::channel();
    d.enter(CoreId(0), || md.stop("md0", move |r| tx.send(r).unwrap()));
    assert!(
        d.run_until(50_000_000, || matches!(rx.try_recv(), Ok(Ok(())))),
        "{}: stop",
        case.name
    );
    after - before
}

#[test]
fn steady_state_io_through_md_does_not_allocate() {
    let base = keel_testkit::allocations();
    drop(std::hint::black_box(vec![1u8; 10]));
    assert!(keel_testkit::allocations() > base, "the counter sees allocations");
    let cases = [
        Case {
            name: "raid0/2 null randread 4k (forwarded)",
            level: "raid0",
            malloc: false,
            workload: Workload::RandRead,
            io_size: 4096,
            bitmap: false,
            members: 2,
            fail: &[],
        },
        Case {
            name: "raid0/2 null randrw 12k (split)",
            level: "raid0",
            malloc: false,
            workload: Workload::RandRw,
            io_size: 12288,
            bitmap: false,
            members: 2,
            fail: &[],
        },
        Case {
            name: "linear/2 null randrw 12k",
            level: "linear",
            malloc: false,
            workload: Workload::RandRw,
            io_size: 12288,
            bitmap: false,
            members: 2,
            fail: &[],
        },
        Case {
            name: "raid10/2 null randrw 12k (split)",
            level: "raid10",
            malloc: false,
            workload: Workload::RandRw,
            io_size: 12288,
            bitmap: false,
            members: 2,
            fail: &[],
        },
        Case {
            name: "raid1/2 null randrw 4k",
            level: "raid1",
            malloc: false,
            workload: Workload::RandRw,
            io_size: 4096,
            bitmap: false,
            members: 2,
            fail: &[],
        },
        Case {
            name: "raid1/2 malloc verify 8k",
            level: "raid1",
            malloc: true,
            workload: Workload::Verify,
            io_size: 8192,
            bitmap: false,
            members: 2,
            fail: &[],
        },
        Case {
            name: "raid1/2 malloc randrw 4k, internal bitmap",
            level: "raid1",
            malloc: true,
            workload: Workload::RandRw,
            io_size: 4096,
            bitmap: true,
            members: 2,
            fail: &[],
        },
        Case {
            name: "raid5/4 null randrw 4k (partial stripes)",
            level: "raid5",
            malloc: false,
            workload: Workload::RandRw,
            io_size: 4096,
            bitmap: false,
            members: 4,
            fail: &[],
        },
        Case {
            name: "raid5/4 malloc verify 12k",
            level: "raid5",
            malloc: true,
            workload: Workload::Verify,
            io_size: 12288,
            bitmap: false,
            members: 4,
            fail: &[],
        },
        Case {
            name: "raid5/4 null randrw 4k, degraded",
            level: "raid5",
            malloc: false,
            workload: Workload::RandRw,
            io_size: 4096,
            bitmap: false,
            members: 4,
            fail: &["D1"],
        },
        Case {
            name: "raid6/5 malloc verify 8k, two members failed",
            level: "raid6",
            malloc: true,
            workload: Workload::Verify,
            io_size: 8192,
            bitmap: false,
            members: 5,
            fail: &["D0", "D3"],
        },
    ];
    let mut report = Vec::new();
    for c in &cases {
        report.push((c.name, steady_state_allocations(c)));
    }
    for (name, n) in &report {
        assert_eq!(*n, 0, "{name}: {n} allocations in {MEASURED_IOS} I/Os; all: {report:?}");
    }
}
