//! Controller reset under load over the PCIe transport (controller model): a verify job runs
//! while the controller reports fatal status (CSTS.CFS) — the admin poller resets it, every
//! queue pair re-creates its queues and re-submits what was in flight, and the job goes on
//! with no failed I/O and no miscompare (no acknowledged write lost). The same for a reset
//! asked for (bdev_nvme_reset_controller's path) on two reactors.

mod common;

use keel_load::{JobStatus, Workload};
use keel_nvme::NvmeModule;
use keel_nvme_pcie::model::ModelConfig;

#[test]
fn fatal_status_and_requested_reset_mid_flight_lose_nothing() {
    let (d, reg, model) = common::setup(2, ModelConfig::default(), 64);
    let m = NvmeModule::of(&reg);
    let c = m.pcie_controller("Nvme0").unwrap();
    assert_eq!(c.generation(), 0);

    let job = common::start(
        d,
        &reg,
        0,
        "Nvme0n1",
        common::spec("Nvme0n1", Workload::Verify, 16, 8192),
    );
    assert!(d.run_until(100_000_000, || job.completed_ios() >= 300));
    model.set_fatal();
    assert!(
        d.run_until(100_000_000, || c.generation() == 1),
        "no reset after CSTS.CFS"
    );
    let at = job.completed_ios();
    assert!(
        d.run_until(100_000_000, || job.completed_ios() >= at + 300),
        "I/O stalled after the reset"
    );
    let r = common::stop(d, &job);
    assert_eq!(r.status, JobStatus::Terminated, "{r:?}");
    assert_eq!(r.ios_failed, 0, "{r:?}");
    assert!(r.miscompare.is_none(), "{:?}", r.miscompare);

    // A requested reset while two reactors have I/O in flight.
    let mut a = common::spec("Nvme0n1", Workload::Verify, 16, 4096);
    a.length_blocks = 16 * 1024;
    let mut b = common::spec("Nvme0n1", Workload::Verify, 16, 131072);
    b.offset_blocks = 16 * 1024;
    b.length_blocks = 16 * 1024;
    let ja = common::start(d, &reg, 0, "Nvme0n1", a);
    let jb = common::start(d, &reg, 1, "Nvme0n1", b);
    assert!(d.run_until(100_000_000, || ja.completed_ios() >= 200 && jb.completed_ios() >= 100));
    m.reset("Nvme0").unwrap();
    assert!(
        d.run_until(100_000_000, || c.generation() == 2),
        "the requested reset did not happen"
    );
    let (at_a, at_b) = (ja.completed_ios(), jb.completed_ios());
    assert!(d.run_until(100_000_000, || ja.completed_ios() >= at_a + 200
        && jb.completed_ios() >= at_b + 50));
    for j in [ja, jb] {
        let r = common::stop(d, &j);
        assert_eq!(r.ios_failed, 0, "{r:?}");
        assert!(r.miscompare.is_none(), "{:?}", r.miscompare);
    }
    assert!(m.reset("Nope").is_err());
}
