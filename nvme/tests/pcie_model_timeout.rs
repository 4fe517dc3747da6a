//! Per-command timeouts of the PCIe transport (bdev_nvme_set_options' `timeout_us` and
//! `action_on_timeout`), against the controller model holding the commands that read block 0:
//! with `abort` the stuck command is aborted and its I/O fails while the rest go on; with
//! `reset` the controller is reset and the stuck command re-submitted, so nothing fails.

mod common;

use std::sync::Arc;

use keel_bdev::BdevRegistry;
use keel_load::Workload;
use keel_nvme::{ModuleOpts, NvmeModule};
use keel_nvme_pcie::model::{Model, ModelConfig};
use keel_reactor::TestDriver;
use serde_json::json;

fn setup(action: &str) -> (&'static TestDriver, Arc<BdevRegistry>, Arc<Model>) {
    let d: &'static TestDriver = Box::leak(Box::new(TestDriver::new(1)));
    let reg = BdevRegistry::new(d.cores());
    let mut o = ModuleOpts::default();
    o.other.insert("timeout_us".into(), json!(50_000));
    o.other.insert("action_on_timeout".into(), json!(action));
    NvmeModule::of(&reg).set_options(o).unwrap();
    let model = Model::new(ModelConfig::default());
    model.hold_lba(Some(0));
    assert_eq!(common::attach(d, &reg, &model, "Nvme0"), ["Nvme0n1"]);
    (d, reg, model)
}

#[test]
fn abort_fails_the_stuck_io_only() {
    let (d, reg, model) = setup("abort");
    let mut s = common::spec("Nvme0n1", Workload::Read, 1, 4096);
    s.continue_on_failure = true;
    let job = common::start(d, &reg, 0, "Nvme0n1", s);
    assert!(
        d.run_until(usize::MAX >> 8, || job.failed_ios() >= 1),
        "the held command never timed out"
    );
    assert_eq!(model.held(), 0, "the held command was aborted");
    model.hold_lba(None);
    let at = job.completed_ios();
    assert!(d.run_until(100_000_000, || job.completed_ios() >= at + 100));
    let r = common::stop(d, &job);
    assert_eq!(r.ios_failed, 1, "{r:?}");
}

#[test]
fn reset_resubmits_the_stuck_io() {
    let (d, reg, model) = setup("reset");
    let c = NvmeModule::of(&reg).pcie_controller("Nvme0").unwrap();
    let mut s = common::spec("Nvme0n1", Workload::Read, 1, 4096);
    s.continue_on_failure = true;
    let job = common::start(d, &reg, 0, "Nvme0n1", s);
    assert!(d.run_until(100_000_000, || model.held() >= 1));
    model.hold_lba(None);
    assert!(
        d.run_until(usize::MAX >> 8, || c.generation() >= 1),
        "no reset after the timeout"
    );
    let at = job.completed_ios();
    assert!(d.run_until(100_000_000, || job.completed_ios() >= at + 100));
    let r = common::stop(d, &job);
    assert_eq!(r.ios_failed, 0, "{r:?}");
}
