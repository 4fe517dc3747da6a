//! After set-up, I/O through dm does not allocate: a counting global allocator sees zero
//! allocations while a keel-load job completes 50k I/Os in steady state through dm linear over
//! null, striped over two nulls (4 KiB I/Os that map whole: routed by the bdev layer; 12 KiB I/Os
//! that cross chunks: the splitter with child requests; 128 KiB I/Os over 4 KiB chunks: more
//! children than the pool holds, so parents wait in the splitter's pending queue; flushes fanned
//! out to every leg), three stripes (routed with a reciprocal multiply), tables the module
//! forwards itself (two linear targets, seventeen stripes), a route to a base that is not a leaf
//! (linear over a passthru), a 64-target linear table over malloc under verify (splits, data
//! checked), linear targets between zero targets (split pieces answered without a child), and
//! delay targets (held requests and held split pieces in FIFOs).
//!
//! Everything runs in one #[test] on one thread so that no other test allocates meanwhile.

use keel_bdev::modules::{malloc, null, passthru};
use keel_bdev::BdevRegistry;
use keel_dm::{CreateOpts, DmRegistry};
use keel_load::{Job, JobSpec, JobStatus, Workload};
use keel_reactor::{CoreId, TestDriver};

#[global_allocator]
static GLOBAL: keel_testkit::CountingAlloc = keel_testkit::CountingAlloc;

const WARMUP_IOS: u64 = 5_000;
const MEASURED_IOS: u64 = 50_000;

struct Case {
    name: &'static str,
    table: String,
    workload: Workload,
    io_size: u64,
}

fn steady_state_allocations(case: &Case) -> u64 {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    null::create(&reg, &null::NullOpts::new("N0", 1 << 16, 4096)).unwrap();
    null::create(&reg, &null::NullOpts::new("N1", 1 << 16, 4096)).unwrap();
    null::create(&reg, &null::NullOpts::new("N2", 1 << 16, 4096)).unwrap();
    null::create(&reg, &null::NullOpts::new("N3", 1 << 16, 4096)).unwrap();
    malloc::create(&reg, &malloc::MallocOpts::new("M0", 1024, 4096)).unwrap();
    passthru::create(&reg, &passthru::PassthruOpts::new("P3", "N3")).unwrap();
    let dm = DmRegistry::of(&reg);
    let (tx, rx) = std::sync::mpsc::channel();
    d.enter(CoreId(0), || {
        dm.create(
            CreateOpts {
                name: "dm0".into(),
                table: Some(case.table.clone()),
                ..Default::default()
            },
            move |r| tx.send(r).unwrap(),
        )
    });
    assert!(
        d.run_until(1_000, || matches!(rx.try_recv(), Ok(Ok(())))),
        "{}: create",
        case.name
    );
    let mut spec = JobSpec::new("dm0", case.workload, 32, case.io_size, 0);
    spec.rw_read_percent = 70;
    let job = d.enter(CoreId(0), || {
        let desc = reg.open("dm0", case.workload.writes(), |_| {}).unwrap();
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
    d.enter(CoreId(0), || dm.remove("dm0", false, move |r| tx.send(r).unwrap()));
    assert!(
        d.run_until(1_000, || matches!(rx.try_recv(), Ok(Ok(())))),
        "{}: remove",
        case.name
    );
    after - before
}

#[test]
fn steady_state_io_through_dm_does_not_allocate() {
    let base = keel_testkit::allocations();
    drop(std::hint::black_box(vec![1u8; 10]));
    assert!(keel_testkit::allocations() > base, "the counter sees allocations");
    let multi: String = (0..64)
        .map(|k| format!("{} 128 linear M0 {}\n", k * 128, (63 - k) * 128))
        .collect();
    // Seventeen stripes (more than a route takes), pieces of N0..N2 in turn.
    const LEG_SECTORS: u64 = 30840;
    let wide = format!(
        "0 {} striped 17 8 {}",
        17 * LEG_SECTORS,
        (0..17)
            .map(|k| format!("N{} {}", k % 3, (k / 3) * LEG_SECTORS))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Linear and zero targets in turn, 8 blocks each: 12 KiB reads cross from one to the other.
    let zebra: String = (0..64)
        .map(|k| {
            if k % 2 == 0 {
                format!("{} 64 linear N0 {}\n", k * 64, k * 64)
            } else {
                format!("{} 64 zero\n", k * 64)
            }
        })
        .collect();
    // 64 delay targets of 1 ms over malloc: 12 KiB reads that cross are split and their pieces
    // held.
    let delays: String = (0..64)
        .map(|k| format!("{} 128 delay M0 {} 1\n", k * 128, k * 128))
        .collect();
    let cases = [
        Case {
            name: "linear/null randread",
            table: "0 524288 linear N0 0".into(),
            workload: Workload::RandRead,
            io_size: 4096,
        },
        Case {
            name: "linear/null randwrite",
            table: "0 524288 linear N0 0".into(),
            workload: Workload::RandWrite,
            io_size: 4096,
        },
        Case {
            name: "striped/2 null randread 4k (direct)",
            table: "0 1048576 striped 2 8 N0 0 N1 0".into(),
            workload: Workload::RandRead,
            io_size: 4096,
        },
        Case {
            name: "striped/2 null randrw 12k (split)",
            table: "0 1048576 striped 2 8 N0 0 N1 0".into(),
            workload: Workload::RandRw,
            io_size: 12288,
        },
        Case {
            name: "striped/2 null randread 128k over 4k chunks (pending parents)",
            table: "0 1048576 striped 2 8 N0 0 N1 0".into(),
            workload: Workload::RandRead,
            io_size: 131072,
        },
        Case {
            name: "striped/2 null flush (fanned out)",
            table: "0 1048576 striped 2 8 N0 0 N1 0".into(),
            workload: Workload::Flush,
            io_size: 4096,
        },
        Case {
            name: "linear and zero targets/null randread 12k (answered pieces)",
            table: zebra,
            workload: Workload::RandRead,
            io_size: 12288,
        },
        Case {
            name: "two linear targets/null randread 4k (module forward)",
            table: "0 262144 linear N0 0\n262144 262144 linear N1 0".into(),
            workload: Workload::RandRead,
            io_size: 4096,
        },
        Case {
            name: "striped/3 null randread 4k (routed by reciprocal)",
            table: "0 1572864 striped 3 8 N0 0 N1 0 N2 0".into(),
            workload: Workload::RandRead,
            io_size: 4096,
        },
        Case {
            name: "striped/17 null randread 4k (module forward)",
            table: wide,
            workload: Workload::RandRead,
            io_size: 4096,
        },
        Case {
            name: "linear/passthru randread (route to a layer)",
            table: "0 524288 linear P3 0".into(),
            workload: Workload::RandRead,
            io_size: 4096,
        },
        Case {
            name: "64 linear targets/malloc verify 12k (split)",
            table: multi,
            workload: Workload::Verify,
            io_size: 12288,
        },
        Case {
            name: "delay 0/1 ms over malloc randread",
            table: "0 8192 delay M0 0 1".into(),
            workload: Workload::RandRead,
            io_size: 4096,
        },
        Case {
            name: "64 delay targets of 1 ms over malloc randread 12k (held split pieces)",
            table: delays,
            workload: Workload::RandRead,
            io_size: 12288,
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
