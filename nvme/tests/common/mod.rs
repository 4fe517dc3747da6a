//! Shared set-up of the PCIe tests: a registry on a deterministic driver with a PCIe
//! controller attached over keel-nvme-pcie's in-process controller model, and keel-load jobs.
#![allow(dead_code)]

use std::sync::Arc;

use keel_bdev::BdevRegistry;
use keel_load::{Job, JobHandle, JobResult, JobSpec, Workload};
use keel_nvme::opts::DEFAULT_HOSTNQN;
use keel_nvme::{AttachOpts, NvmeModule, PcieDevice, TrType, TransportId};
use keel_nvme_pcie::model::{Model, ModelConfig};
use keel_reactor::{CoreId, TestDriver};

/// Attach options of PCIe controller `name` at label `traddr`.
pub fn pcie_opts(name: &str, traddr: &str, io_queue_depth: u16) -> AttachOpts {
    AttachOpts {
        name: name.into(),
        trid: TransportId {
            trtype: TrType::Pcie,
            adrfam: String::new(),
            traddr: traddr.into(),
            trsvcid: String::new(),
            subnqn: String::new(),
        },
        hostnqn: DEFAULT_HOSTNQN.into(),
        hdgst: false,
        ddgst: false,
        num_io_queues: 4,
        io_queue_depth,
        ctrlr_loss_timeout_sec: 0,
        reconnect_delay_sec: 0,
        fast_io_fail_timeout_sec: 0,
        keep_alive_timeout_ms: 0,
    }
}

/// A driver with `cores` cores, a registry, and controller `Nvme0` over a model of `cfg`
/// attached with queue depth `depth`. Returns the registry and the model.
pub fn setup(cores: u32, cfg: ModelConfig, depth: u16) -> (&'static TestDriver, Arc<BdevRegistry>, Arc<Model>) {
    let d: &'static TestDriver = Box::leak(Box::new(TestDriver::new(cores)));
    let reg = BdevRegistry::new(d.cores());
    let model = Model::new(cfg);
    let names = attach_with(d, &reg, &model, "Nvme0", depth);
    assert_eq!(names, ["Nvme0n1"]);
    (d, reg, model)
}

/// Attaches `model` as controller `name`; the namespace bdev names.
pub fn attach(d: &'static TestDriver, reg: &Arc<BdevRegistry>, model: &Arc<Model>, name: &str) -> Vec<String> {
    attach_with(d, reg, model, name, 64)
}

/// Attaches `model` as controller `name` with I/O queue depth `depth`; the bdev names.
pub fn attach_with(
    d: &'static TestDriver,
    reg: &Arc<BdevRegistry>,
    model: &Arc<Model>,
    name: &str,
    depth: u16,
) -> Vec<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let m = NvmeModule::of(reg);
    let opts = pcie_opts(name, "model:0", depth);
    let dev = PcieDevice::Model(model.clone());
    d.enter(CoreId(0), || m.attach_pcie(opts, dev, move |r| tx.send(r).unwrap()));
    let mut names = None;
    assert!(d.run_until(50_000_000, || {
        if let Ok(r) = rx.try_recv() {
            names = Some(r.expect("attach"));
        }
        names.is_some()
    }));
    names.unwrap()
}

/// Starts a job on `core` against `bdev`.
pub fn start(d: &'static TestDriver, reg: &Arc<BdevRegistry>, core: u32, bdev: &str, spec: JobSpec) -> JobHandle {
    d.enter(CoreId(core), || {
        let desc = reg.open(bdev, true, |_| {}).unwrap();
        Job::start(spec, desc).unwrap()
    })
}

/// A job spec (named after its bdev).
pub fn spec(bdev: &str, w: Workload, qd: u32, io_size: u64) -> JobSpec {
    JobSpec::new(bdev, w, qd, io_size, 0)
}

/// Runs `job` until `ios` completed, stops it and returns its result.
pub fn run_for(d: &'static TestDriver, job: &JobHandle, ios: u64) -> JobResult {
    assert!(
        d.run_until(100_000_000, || job.completed_ios() >= ios),
        "{ios} I/Os did not complete"
    );
    stop(d, job)
}

/// Stops `job` and returns its result (it must end).
pub fn stop(d: &'static TestDriver, job: &JobHandle) -> JobResult {
    job.stop();
    assert!(d.run_until(10_000_000, || job.is_done()), "the job does not end");
    job.result().unwrap()
}
