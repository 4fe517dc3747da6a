//! Instructions per I/O of a bdev's submit+complete path, for callgrind: keel-load 4 KiB random
//! reads at queue depth 32 on one core of the deterministic driver, against either the null
//! bdev or a PCIe namespace bdev over keel-nvme-pcie's in-process controller model (the whole
//! channel: bdev core, the PCIe qpair, the bounce-buffer copy, the driver's queue pair).
//!
//! ```text
//! cargo build --release -p keel-nvme --example bdev_callgrind
//! for kind in null pcie; do for n in 100000 300000; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$kind.$n target/release/examples/bdev_callgrind $kind $n
//! done; done
//! callgrind_annotate --inclusive=yes cg.pcie.300000 | grep -E 'Model as .*Registers>::write32'
//! ```
//!
//! Per I/O = (total(300000) − total(100000)) / 200000, so set-up cancels out. The model does the
//! device's work (SQE fetch, PRP walk, the 4 KiB copy into the buffer, CQE post) inside its
//! doorbell register write; subtracting that function's inclusive count (also as a difference)
//! leaves what Keel runs — what a real device takes over is the model's part.
#![forbid(unsafe_code)]

use std::sync::Arc;

use keel_bdev::modules::null::{self, NullOpts};
use keel_bdev::BdevRegistry;
use keel_load::{Job, JobSpec, JobStatus, Workload};
use keel_nvme::opts::DEFAULT_HOSTNQN;
use keel_nvme::{AttachOpts, NvmeModule, PcieDevice, TrType, TransportId};
use keel_nvme_pcie::model::{Model, ModelConfig};
use keel_reactor::{CoreId, TestDriver};

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "pcie".into());
    let ios: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let d: &'static TestDriver = Box::leak(Box::new(TestDriver::new(1)));
    let reg = BdevRegistry::new(d.cores());
    let bdev = match kind.as_str() {
        "null" => {
            null::create(&reg, &NullOpts::new("Null0", 32 * 1024 * 8, 512)).expect("null bdev");
            "Null0"
        }
        "pcie" => {
            attach(d, &reg);
            "Nvme0n1"
        }
        other => panic!("unknown kind {other}: null or pcie"),
    };
    let spec = JobSpec::new(bdev, Workload::RandRead, 32, 4096, 0);
    let job = d.enter(CoreId(0), || {
        let desc = reg.open(bdev, false, |_| {}).expect("open");
        Job::start(spec, desc).expect("job")
    });
    assert!(d.run_until(usize::MAX, || job.completed_ios() >= ios));
    job.stop();
    assert!(d.run_until(1_000_000, || job.is_done()));
    let r = job.result().expect("result");
    assert_eq!(r.status, JobStatus::Terminated);
    assert_eq!(r.ios_failed, 0);
    println!("{kind}: {} I/Os", r.ios_completed);
}

fn attach(d: &'static TestDriver, reg: &Arc<BdevRegistry>) {
    let opts = AttachOpts {
        name: "Nvme0".into(),
        trid: TransportId {
            trtype: TrType::Pcie,
            adrfam: String::new(),
            traddr: "model:0".into(),
            trsvcid: String::new(),
            subnqn: String::new(),
        },
        hostnqn: DEFAULT_HOSTNQN.into(),
        hdgst: false,
        ddgst: false,
        num_io_queues: 1,
        io_queue_depth: 64,
        ctrlr_loss_timeout_sec: 0,
        reconnect_delay_sec: 0,
        fast_io_fail_timeout_sec: 0,
        keep_alive_timeout_ms: 0,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let m = NvmeModule::of(reg);
    let dev = PcieDevice::Model(Model::new(ModelConfig::default()));
    d.enter(CoreId(0), || m.attach_pcie(opts, dev, move |r| tx.send(r).unwrap()));
    let mut done = false;
    assert!(d.run_until(50_000_000, || {
        if let Ok(r) = rx.try_recv() {
            r.expect("attach");
            done = true;
        }
        done
    }));
}
