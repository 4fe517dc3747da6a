//! Hot removal under load: a job on core 1 keeps 32 I/Os in flight on a disk that holds them
//! for a few turns; core 0 unregisters the bdev mid-run. The job ends (status terminated, the
//! reason names the removal), the in-flight I/O completes as failed (aborted by the removal),
//! the descriptor and channel are released on core 1, and nothing hangs. Also with real threads
//! through the orchestrator's building blocks (Runtime + Job::start_with).

use std::sync::mpsc;
use std::time::Duration;

use keel_bdev::BdevRegistry;
use keel_load::testing::disks::slow_disk;
use keel_perf::{Job, JobSpec, JobStatus, Workload};
use keel_reactor::{CoreId, CoreMask, Runtime, TestDriver};

#[test]
fn removal_under_load_ends_the_job_and_fails_in_flight_io() {
    let d = TestDriver::new(2);
    let reg = BdevRegistry::new(d.cores());
    let bdev = slow_disk(&reg, "Slow0", 1 << 16, 512, 3);
    let spec = JobSpec::new("Slow0", Workload::RandWrite, 32, 4096, 60_000_000);
    let job = d.enter(CoreId(1), || {
        let desc = reg.open("Slow0", true, |_| {}).unwrap();
        Job::start(spec, desc).unwrap()
    });
    assert!(d.run_until(100_000, || job.completed_ios() >= 1000));
    assert_eq!(bdev.open_count(), 1);
    d.enter(CoreId(0), || reg.unregister("Slow0", || {}).unwrap());
    assert!(d.run_until(10_000, || job.is_done()), "job hangs after removal");
    let r = job.result().unwrap();
    assert_eq!(r.status, JobStatus::Terminated, "{r:?}");
    assert!(
        r.end_reason.as_deref().unwrap_or("").contains("Slow0 was removed"),
        "{r:?}"
    );
    assert!(r.ios_failed > 0, "in-flight I/O must complete as failed: {r:?}");
    assert!(r.ios_completed >= 1000);
    assert_eq!(bdev.open_count(), 0, "descriptor released");
    assert!(reg.get("Slow0").is_none());
    d.run_until_idle(1000);
}

#[test]
fn removal_with_real_threads() {
    let rt = Runtime::start(&CoreMask::parse("0x3").unwrap(), false, || {}).unwrap();
    let cores = rt.cores();
    let reg = BdevRegistry::new(cores.clone());
    let (tx, rx) = mpsc::channel();
    {
        let reg = reg.clone();
        cores
            .run_on(CoreId(0), move || {
                slow_disk(&reg, "Slow0", 1 << 16, 512, 50);
            })
            .unwrap();
    }
    let (ptx, prx) = mpsc::channel();
    {
        let reg = reg.clone();
        cores
            .run_on(CoreId(1), move || {
                // The bdev is created by core 0's message, which may not have run yet.
                let desc = loop {
                    if let Ok(d) = reg.open("Slow0", true, |_| {}) {
                        break d;
                    }
                    std::thread::yield_now();
                };
                let spec = JobSpec::new("Slow0", Workload::RandRead, 64, 4096, 60_000_000);
                let h = Job::start_with(spec, desc, move |r| tx.send(r.clone()).unwrap()).unwrap();
                ptx.send(h.progress()).unwrap();
            })
            .unwrap();
    }
    let progress = prx.recv_timeout(Duration::from_secs(5)).unwrap();
    let t0 = std::time::Instant::now();
    while progress.completed_ios() < 1000 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
    {
        let reg = reg.clone();
        cores
            .run_on(CoreId(0), move || reg.unregister("Slow0", || {}).unwrap())
            .unwrap();
    }
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("job ended after removal");
    // Whether in-flight I/O finished before the abort reached core 1 is timing here; the
    // deterministic test above pins the failure accounting down.
    assert_eq!(r.status, JobStatus::Terminated, "{r:?}");
    assert!(progress.is_done());
    cores.request_stop();
    rt.wait();
}
