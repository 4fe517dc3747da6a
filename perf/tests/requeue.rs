//! Backpressure: when the bdev hands requests back (`Submit::Requeue`, here the error bdev's
//! `nomem` injection), the job keeps them in its retry queue and resubmits them on later turns —
//! nothing fails, nothing is lost, the job drains and finishes. Also with verify, whose slots
//! must keep their write/read order across retries.

use keel_bdev::modules::{error, malloc};
use keel_bdev::BdevRegistry;
use keel_perf::{Job, JobSpec, JobStatus, Workload};
use keel_reactor::{CoreId, TestDriver};

fn run(workload: Workload, nomem_count: u32) -> keel_perf::JobResult {
    let d = TestDriver::new(1);
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &malloc::MallocOpts::new("Malloc0", 2048, 512)).unwrap();
    error::create(
        &reg,
        &error::ErrorOpts {
            base_name: "Malloc0".into(),
            uuid: None,
        },
    )
    .unwrap();
    let mut inject = error::InjectOpts::new("EE_Malloc0", "write", "nomem");
    inject.num = Some(nomem_count);
    error::inject(&reg, &inject).unwrap();
    let spec = JobSpec::new("EE_Malloc0", workload, 16, 4096, 100_000);
    let job = d.enter(CoreId(0), || {
        let desc = reg.open("EE_Malloc0", true, |_| {}).unwrap();
        Job::start(spec, desc).unwrap()
    });
    assert!(d.run_until(100_000_000, || job.is_done()));
    assert_eq!(
        reg.get("Malloc0").unwrap().open_count(),
        1,
        "only the error bdev's claim is left"
    );
    job.result().unwrap()
}

#[test]
fn requeued_requests_are_retried_not_failed() {
    // Every write handed back for the whole run: nothing completes, nothing fails, and the job
    // still ends at its deadline with its requests back from the retry queue.
    let r = run(Workload::RandWrite, u32::MAX);
    assert_eq!(
        (r.status, r.ios_completed, r.ios_failed),
        (JobStatus::Finished, 0, 0),
        "{r:?}"
    );
    for workload in [Workload::RandWrite, Workload::Verify] {
        let r = run(workload, 500);
        assert_eq!(r.status, JobStatus::Finished, "{workload}: {r:?}");
        assert_eq!(r.ios_failed, 0, "{workload}");
        assert!(r.miscompare.is_none(), "{workload}");
        assert!(r.ios_completed > 500, "{workload}: {r:?}");
    }
}
