//! Once an I/O qpair is connected, I/O through an NVMe/TCP namespace bdev does not allocate: a
//! counting global allocator sees zero allocations while keel-load jobs complete thousands of
//! I/Os through Keel's initiator against Keel's target (both in this process, on the
//! deterministic driver's reactor, over 127.0.0.1): 4 KiB random reads and writes (in-capsule
//! writes), 128 KiB ones (R2T and H2CData; reads in several C2HData PDUs), verify, flush, unmap
//! and write zeroes — without and with header and data digests. Then the same through a PCIe
//! namespace bdev over keel-nvme-pcie's in-process controller model (the model's device side
//! allocates nothing either), including a submission queue smaller than the job's depth (the
//! requeue path) and a controller whose MDTS cuts 128 KiB requests into several commands, with the
//! per-command timeout scan on.
//!
//! One #[test] on one thread, so nothing else allocates meanwhile (the helper threads that
//! connect queues are finished before the measurement starts).

use std::sync::Arc;

use keel_bdev::modules::malloc::{self, MallocOpts};
use keel_bdev::BdevRegistry;
use keel_load::{Job, JobSpec, JobStatus, Workload};
use keel_nvme::opts::DEFAULT_HOSTNQN;
use keel_nvme::{AttachOpts, NvmeModule, PcieDevice, TrType, TransportId};
use keel_nvme_pcie::model::{Model, ModelConfig};
use keel_nvmf::{ListenAddress, NsOpts, NvmfTarget, SubsystemOpts, TransportOpts};
use keel_reactor::{CoreId, TestDriver};

#[global_allocator]
static GLOBAL: keel_testkit::CountingAlloc = keel_testkit::CountingAlloc;

const NQN: &str = "nqn.2016-06.io.keel:nvme-noalloc";
const WARMUP_IOS: u64 = 6_000;
const MEASURED_IOS: u64 = 10_000;

fn setup(d: &'static TestDriver, digests: bool) -> Arc<BdevRegistry> {
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &MallocOpts::new("M0", 16384, 4096)).unwrap();
    let target = NvmfTarget::of(&reg);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    d.enter(CoreId(0), || {
        target
            .create_transport(TransportOpts {
                in_capsule_data_size: 8192,
                max_io_size: 131072,
                ..TransportOpts::default()
            })
            .unwrap();
        target
            .create_subsystem(
                NQN,
                SubsystemOpts {
                    allow_any_host: true,
                    ..SubsystemOpts::default()
                },
            )
            .unwrap();
        target
            .add_ns(
                NQN,
                &NsOpts {
                    bdev_name: "M0".into(),
                    ..NsOpts::default()
                },
            )
            .unwrap();
        let l = ListenAddress::parse("tcp", None, "127.0.0.1", Some(&port.to_string())).unwrap();
        target.add_listener(NQN, l).unwrap();
    });
    let opts = AttachOpts {
        name: "Nvme0".into(),
        trid: TransportId {
            trtype: TrType::Tcp,
            adrfam: "IPv4".into(),
            traddr: "127.0.0.1".into(),
            trsvcid: port.to_string(),
            subnqn: NQN.into(),
        },
        hostnqn: DEFAULT_HOSTNQN.into(),
        hdgst: digests,
        ddgst: digests,
        num_io_queues: 4,
        io_queue_depth: 128,
        ctrlr_loss_timeout_sec: 0,
        reconnect_delay_sec: 0,
        fast_io_fail_timeout_sec: 0,
        keep_alive_timeout_ms: 10_000,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let m = NvmeModule::of(&reg);
    d.enter(CoreId(0), || m.attach(opts, move |r| tx.send(r).unwrap()));
    let mut names = None;
    assert!(d.run_until(50_000_000, || {
        if let Ok(r) = rx.try_recv() {
            names = Some(r.unwrap());
        }
        names.is_some()
    }));
    assert_eq!(names.unwrap(), ["Nvme0n1"]);
    reg
}

/// A registry with controller `Nvme0` over a PCIe controller model of `cfg`.
fn setup_pcie(d: &'static TestDriver, cfg: ModelConfig) -> Arc<BdevRegistry> {
    let reg = BdevRegistry::new(d.cores());
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
        num_io_queues: 4,
        io_queue_depth: 64,
        ctrlr_loss_timeout_sec: 0,
        reconnect_delay_sec: 0,
        fast_io_fail_timeout_sec: 0,
        keep_alive_timeout_ms: 0,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let m = NvmeModule::of(&reg);
    // Timeouts on (never reached): the periodic scan runs on the measured path too.
    let mut o = keel_nvme::ModuleOpts::default();
    o.other.insert("timeout_us".into(), serde_json::json!(60_000_000));
    o.other.insert("action_on_timeout".into(), serde_json::json!("abort"));
    m.set_options(o).unwrap();
    let dev = PcieDevice::Model(Model::new(cfg));
    d.enter(CoreId(0), || m.attach_pcie(opts, dev, move |r| tx.send(r).unwrap()));
    let mut names = None;
    assert!(d.run_until(50_000_000, || {
        if let Ok(r) = rx.try_recv() {
            names = Some(r.unwrap());
        }
        names.is_some()
    }));
    assert_eq!(names.unwrap(), ["Nvme0n1"]);
    reg
}

fn steady(d: &'static TestDriver, reg: &Arc<BdevRegistry>, workload: Workload, io_size: u64) -> u64 {
    let mut spec = JobSpec::new("Nvme0n1", workload, 32, io_size, 0);
    spec.rw_read_percent = 50;
    let job = d.enter(CoreId(0), || {
        let desc = reg.open("Nvme0n1", true, |_| {}).unwrap();
        Job::start(spec, desc).unwrap()
    });
    assert!(d.run_until(100_000_000, || job.completed_ios() >= WARMUP_IOS));
    let before = keel_testkit::allocations();
    let start = job.completed_ios();
    assert!(d.run_until(100_000_000, || job.completed_ios() >= start + MEASURED_IOS));
    let after = keel_testkit::allocations();
    job.stop();
    assert!(d.run_until(1_000_000, || job.is_done()));
    let r = job.result().unwrap();
    assert_eq!(r.status, JobStatus::Terminated, "{workload:?} {io_size}: {r:?}");
    assert_eq!(r.ios_failed, 0, "{workload:?} {io_size}");
    assert!(r.miscompare.is_none(), "{workload:?} {io_size}");
    after - before
}

#[test]
fn steady_state_nvme_tcp_and_pcie_io_does_not_allocate() {
    let base = keel_testkit::allocations();
    drop(std::hint::black_box(vec![1u8; 10]));
    assert!(keel_testkit::allocations() > base, "the counter sees allocations");
    for digests in [false, true] {
        let d: &'static TestDriver = Box::leak(Box::new(TestDriver::new(1)));
        let reg = setup(d, digests);
        for (w, size) in [
            (Workload::RandRw, 4096),
            (Workload::RandRw, 131072),
            (Workload::Verify, 8192),
            (Workload::Flush, 4096),
            (Workload::Unmap, 65536),
            (Workload::WriteZeroes, 65536),
        ] {
            let n = steady(d, &reg, w, size);
            assert_eq!(n, 0, "{w:?} {size} B (digests {digests}): {n} allocations");
        }
    }
    // PCIe over the controller model: a roomy queue, then 8 entries with an 8 KiB MDTS.
    for cfg in [
        ModelConfig::default(),
        ModelConfig {
            mqes_0based: 7,
            mdts: 1,
            ..ModelConfig::default()
        },
    ] {
        let d: &'static TestDriver = Box::leak(Box::new(TestDriver::new(1)));
        let reg = setup_pcie(d, cfg.clone());
        for (w, size) in [
            (Workload::RandRw, 4096),
            (Workload::RandRw, 131072),
            (Workload::Verify, 8192),
            (Workload::Flush, 4096),
            (Workload::Unmap, 65536),
            (Workload::WriteZeroes, 65536),
        ] {
            let n = steady(d, &reg, w, size);
            assert_eq!(n, 0, "PCIe {w:?} {size} B ({cfg:?}): {n} allocations");
        }
    }
}
