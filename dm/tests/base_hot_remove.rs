//! A base bdev hot-removed under a mapped device loses no I/O: what was in flight completes
//! (failed), new I/O to the missing base fails instead of hanging, the device stays (as Linux)
//! and a new table swapped in serves I/O again. With a `noflush` suspend in progress, the I/O the
//! removal failed is pushed back instead and re-issued after resume — to the new table.

mod common;

use std::time::Duration;

use common::{pattern, Rig, MAIN};
use keel_bdev::modules::delay::{self as bdelay, DelayOpts};
use keel_bdev::{IoOp, IoStatus};
use keel_load::{Job, JobSpec, JobStatus, Workload};
use keel_reactor::CoreId;

fn unregister(r: &Rig, name: &str) {
    let (tx, rx) = std::sync::mpsc::channel();
    r.d.enter(MAIN, || r.reg.unregister(name, move || tx.send(()).unwrap()))
        .unwrap();
    assert!(
        r.d.run_until(10_000, || rx.try_recv().is_ok()),
        "unregister of {name} finished"
    );
}

#[test]
fn removal_under_a_running_job_then_swap() {
    let r = Rig::new(2);
    r.malloc("M0", 256, 4096);
    r.malloc("M1", 256, 4096);
    r.create("x", Some("0 2048 linear M0 0")).unwrap();
    let mut spec = JobSpec::new("x", Workload::RandRw, 16, 4096, 0);
    spec.continue_on_failure = true;
    let job = r.d.enter(CoreId(1), || {
        let desc = r.reg.open("x", true, |_| {}).unwrap();
        Job::start(spec, desc).unwrap()
    });
    assert!(r.d.run_until(1_000_000, || job.completed_ios() >= 2_000));
    unregister(&r, "M0");
    assert!(
        r.d.run_until(1_000_000, || job.failed_ios() >= 100),
        "I/O to the missing base fails"
    );
    assert!(r.dm.info("x").is_ok(), "the mapped device stays");
    // Swap to a table over M1: I/O succeeds again.
    r.load("x", "0 2048 linear M1 0").unwrap();
    r.resume("x").unwrap();
    let failed = job.failed_ios();
    let done = job.completed_ios();
    assert!(r.d.run_until(1_000_000, || job.completed_ios() >= done + 2_000));
    assert_eq!(job.failed_ios(), failed, "no failures after the swap");
    job.stop();
    assert!(r.d.run_until(100_000, || job.is_done()), "every I/O came back");
    let res = job.result().unwrap();
    assert_eq!(res.status, JobStatus::Terminated);
    assert_eq!(r.dm.deps("x").unwrap(), vec!["M1"]);
    r.remove("x", false).unwrap();
}

#[test]
fn noflush_pushes_back_what_the_removed_base_failed() {
    for noflush in [true, false] {
        let r = Rig::new(1);
        r.malloc("M0", 64, 4096);
        r.malloc("M1", 64, 4096);
        // A base that holds I/O for 200 ms, so the write is in flight when the base goes.
        bdelay::create(&r.reg, &DelayOpts::new("DL", "M0", 200_000, 200_000, 200_000, 200_000)).unwrap();
        r.create("x", Some("0 512 linear DL 0")).unwrap();
        let mut c = r.client("x", MAIN, 2);
        let w = pattern(4096, |_| 0x77);
        assert!(c.start(&r, IoOp::Write, 3, 1, Some(&w), 1));
        for _ in 0..5 {
            r.d.turn();
        }
        let suspended = r.start_op(move |dm, done| dm.suspend("x", noflush, done));
        for _ in 0..5 {
            r.d.turn();
        }
        assert!(suspended.try_recv().is_err(), "suspend waits for the in-flight write");
        unregister(&r, "DL");
        assert!(
            r.d.run_until(10_000, || suspended.try_recv().is_ok()),
            "suspend finished once the write came back"
        );
        let early = c.poll();
        if noflush {
            assert!(
                early.is_empty(),
                "noflush: the failed write was pushed back, not completed"
            );
            r.load("x", "0 512 linear M1 0").unwrap();
            r.resume("x").unwrap();
            let done = c.wait(&r, 1, Duration::from_secs(5));
            assert_eq!(done, vec![(1, IoStatus::Success)]);
            let raw = r.read_raw("M1", 3, 1);
            assert!(raw.iter().all(|&b| b == 0x77), "re-issued to the new table");
        } else {
            assert_eq!(early.len(), 1);
            assert_ne!(early[0].1, IoStatus::Success, "without noflush the write fails");
            r.resume("x").unwrap();
        }
        c.close(&r);
        r.remove("x", false).unwrap();
    }
}
