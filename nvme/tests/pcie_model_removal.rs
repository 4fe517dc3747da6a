//! The PCIe device goes away under load (controller model's surprise removal: registers read
//! all ones): the admin poller sees it, in-flight and new I/O fail, the namespace bdev is
//! hot-removed, the controller leaves bdev_nvme_get_controllers, and the job ends — nothing
//! hangs. Then detach under load of a second controller: the job ends too, the bdev goes, and
//! the controller takes the shutdown notification.

mod common;

use keel_load::Workload;
use keel_nvme::NvmeModule;
use keel_nvme_pcie::model::{Model, ModelConfig};
use keel_reactor::CoreId;

#[test]
fn surprise_removal_and_detach_under_load_end_every_io() {
    let (d, reg, model) = common::setup(1, ModelConfig::default(), 64);
    let m = NvmeModule::of(&reg);
    let mut s = common::spec("Nvme0n1", Workload::RandRw, 32, 4096);
    s.continue_on_failure = true;
    let job = common::start(d, &reg, 0, "Nvme0n1", s);
    assert!(d.run_until(100_000_000, || job.completed_ios() >= 300));
    model.remove();
    assert!(
        d.run_until(100_000_000, || reg.get("Nvme0n1").is_none()),
        "the bdev stays after removal"
    );
    assert!(m.controllers_json(None).unwrap().as_array().unwrap().is_empty());
    assert!(
        d.run_until(100_000_000, || job.is_done()),
        "the job hangs after removal"
    );

    // Detach under load.
    let model2 = Model::new(ModelConfig {
        serial: "KEELMODEL1".into(),
        ..ModelConfig::default()
    });
    assert_eq!(common::attach(d, &reg, &model2, "Nvme1"), ["Nvme1n1"]);
    let mut s = common::spec("Nvme1n1", Workload::RandRw, 32, 131072);
    s.continue_on_failure = true;
    let job = common::start(d, &reg, 0, "Nvme1n1", s);
    assert!(d.run_until(100_000_000, || job.completed_ios() >= 100));
    d.enter(CoreId(0), || m.detach("Nvme1").unwrap());
    assert!(d.run_until(100_000_000, || job.is_done()), "the job hangs after detach");
    assert!(reg.get("Nvme1n1").is_none());
    assert!(m.detach("Nvme1").is_err());
    assert_eq!(model2.io_sq_count(), 0, "the controller was disabled by the shutdown");
}
