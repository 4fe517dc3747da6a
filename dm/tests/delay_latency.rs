//! `delay` holds each piece for its class's delay before submitting it (spec §3.5, §9.11):
//! keel-load jobs through delay tables see at least the configured latency per class (lower
//! bounds only: the machine is shared and noisy); held pieces show in INFO; a suspend releases
//! everything held at once and holding resumes after resume; flushes wait the flush class.

mod common;

use std::time::{Duration, Instant};

use common::{Rig, MAIN};
use keel_bdev::{DmaBuf, IoOp, IoStatus};
use keel_load::{Job, JobResult, JobSpec, Workload};

/// Runs `workload` through `bdev` on core 0 until `ios` I/Os completed; the result.
fn measure(r: &Rig, bdev: &str, workload: Workload, ios: u64) -> JobResult {
    let spec = JobSpec::new(bdev, workload, 4, 4096, 0);
    let job = r.d.enter(MAIN, || {
        let desc = r.reg.open(bdev, workload.writes(), |_| {}).unwrap();
        Job::start(spec, desc).unwrap()
    });
    assert!(r.d.run_until(100_000_000, || job.completed_ios() >= ios), "job stalled");
    job.stop();
    assert!(r.d.run_until(100_000_000, || job.is_done()));
    let res = job.result().unwrap();
    assert_eq!(res.ios_failed, 0, "{res:?}");
    res
}

#[test]
fn keel_perf_sees_each_class_delay() {
    let r = Rig::new(1);
    r.malloc("M0", 256, 4096);
    r.malloc("M1", 256, 4096);
    // One class: reads and writes wait 20 ms.
    r.create("d1", Some("0 2048 delay M0 0 20")).unwrap();
    let res = measure(&r, "d1", Workload::RandRead, 12);
    assert!(
        res.min_latency_us >= 20_000.0,
        "read min {} us < 20 ms",
        res.min_latency_us
    );
    let res = measure(&r, "d1", Workload::RandWrite, 12);
    assert!(
        res.min_latency_us >= 20_000.0,
        "write min {} us < 20 ms",
        res.min_latency_us
    );
    r.remove("d1", false).unwrap();
    // Two classes: reads 5 ms on M0, writes 30 ms on M1.
    r.create("d2", Some("0 2048 delay M0 0 5 M1 0 30")).unwrap();
    assert_eq!(r.dm.table(Some("d2"), false).unwrap(), "0 2048 delay M0 0 5 M1 0 30\n");
    let rd = measure(&r, "d2", Workload::RandRead, 12);
    let wr = measure(&r, "d2", Workload::RandWrite, 12);
    assert!(rd.min_latency_us >= 5_000.0, "read min {} us", rd.min_latency_us);
    assert!(wr.min_latency_us >= 30_000.0, "write min {} us", wr.min_latency_us);
    assert!(
        wr.avg_latency_us > rd.avg_latency_us,
        "writes ({} us) wait longer than reads ({} us)",
        wr.avg_latency_us,
        rd.avg_latency_us
    );
    eprintln!(
        "delay read 5 ms: avg {:.0} us min {:.0} us; write 30 ms: avg {:.0} us min {:.0} us",
        rd.avg_latency_us, rd.min_latency_us, wr.avg_latency_us, wr.min_latency_us
    );
    r.remove("d2", false).unwrap();
}

#[test]
fn suspend_releases_held_pieces_and_flushes_wait_their_class() {
    let r = Rig::new(1);
    r.malloc("M0", 256, 4096);
    // Reads and writes 5 s, flushes 40 ms.
    r.create("d", Some("0 2048 delay M0 0 5000 M0 0 5000 M0 0 40")).unwrap();
    assert_eq!(r.dm.status(Some("d")).unwrap(), "0 2048 delay 0 0 0\n");
    let mut c = r.client("d", MAIN, 4);
    let buf = DmaBuf::new(4096);
    let wbuf = DmaBuf::new(4096);
    assert!(c.start(&r, IoOp::Read, 0, 1, Some(&buf), 1));
    assert!(c.start(&r, IoOp::Write, 1, 1, Some(&wbuf), 2));
    for _ in 0..10 {
        r.d.turn();
    }
    assert!(c.poll().is_empty());
    assert_eq!(r.dm.status(Some("d")).unwrap(), "0 2048 delay 1 1 0\n");
    // Suspend: presuspend releases the held pieces at once; the suspend waits for them.
    let t0 = Instant::now();
    r.suspend("d", false).unwrap();
    let done = c.wait(&r, 2, Duration::from_secs(2));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "held pieces were not released by suspend"
    );
    assert!(done.iter().all(|(_, s)| *s == IoStatus::Success), "{done:?}");
    assert_eq!(r.dm.status(Some("d")).unwrap(), "0 2048 delay 0 0 0\n");
    r.resume("d").unwrap();
    // Holding again after resume.
    assert!(c.start(&r, IoOp::Read, 0, 1, Some(&buf), 3));
    for _ in 0..10 {
        r.d.turn();
    }
    assert_eq!(r.dm.status(Some("d")).unwrap(), "0 2048 delay 1 0 0\n");
    r.suspend("d", false).unwrap();
    c.wait(&r, 1, Duration::from_secs(2));
    r.resume("d").unwrap();
    // A flush waits the flush class (40 ms), not the read/write class.
    let t0 = Instant::now();
    assert_eq!(c.run_nodata(&r, IoOp::Flush, 0, 0), IoStatus::Success);
    let el = t0.elapsed();
    assert!(
        el >= Duration::from_millis(40) && el < Duration::from_secs(4),
        "flush took {el:?}"
    );
    c.close(&r);
}
