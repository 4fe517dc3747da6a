//! Every workload on null and malloc, driven on the deterministic TestDriver for a short time:
//! each job finishes with I/O done and nothing failed — except verify/reset on null, which must
//! miscompare (a null bdev does not store data; bdevperf behaves the same way).

use keel_bdev::modules::{malloc, null};
use keel_bdev::BdevRegistry;
use keel_perf::{Job, JobSpec, JobStatus, Workload};
use keel_reactor::{CoreId, TestDriver};

fn run_one(module: &str, workload: Workload) -> keel_perf::JobResult {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    match module {
        "null" => null::create(&reg, &null::NullOpts::new("B", 1 << 14, 512)).map(|_| ()),
        _ => malloc::create(&reg, &malloc::MallocOpts::new("B", 1 << 12, 512)).map(|_| ()),
    }
    .unwrap();
    let mut spec = JobSpec::new("B", workload, 16, 4096, 100_000);
    spec.rw_read_percent = 70;
    let job = d.enter(CoreId(0), || {
        let desc = reg.open("B", workload.writes(), |_| {}).unwrap();
        Job::start(spec, desc).unwrap()
    });
    assert!(
        d.run_until(100_000_000, || job.is_done()),
        "{module} {workload} never ended"
    );
    let r = job.result().unwrap();
    assert_eq!(reg.get("B").unwrap().open_count(), 0, "descriptor released");
    r
}

#[test]
fn every_workload_on_null_and_malloc() {
    for module in ["null", "malloc"] {
        for w in Workload::ALL {
            let r = run_one(module, w);
            let tag = format!("{module} {w}: {r:?}");
            assert_eq!(r.workload, w);
            assert!(r.ios_completed > 0, "{tag}");
            assert_eq!(r.ios_failed, 0, "{tag}");
            assert!(r.min_latency_us > 0.0 && r.min_latency_us <= r.avg_latency_us, "{tag}");
            assert!(r.avg_latency_us <= r.max_latency_us, "{tag}");
            assert!(r.percentiles_us.windows(2).all(|p| p[0] <= p[1]), "{tag}");
            assert_eq!(r.rw_read_percent.is_some(), w.is_mixed(), "{tag}");
            assert_eq!(r.verify_range.is_some(), w.is_verify(), "{tag}");
            if w.is_verify() && module == "null" {
                assert_eq!(r.status, JobStatus::Failed, "{tag}");
                let m = r.miscompare.expect("null cannot verify");
                assert_eq!(m.bdev, "B");
                assert_eq!(m.len_bytes, 4096);
            } else {
                assert_eq!(r.status, JobStatus::Finished, "{tag}");
                assert!(r.runtime_us >= 100_000.0, "{tag}");
                assert!(r.miscompare.is_none(), "{tag}");
            }
        }
    }
}
