//! fio's crc32c verify through Keel's NVMe/TCP initiator: the config file attaches a controller
//! with `bdev_nvme_attach_controller` (the same JSON keel-tgt saves and keel-perf loads), and fio
//! writes and verifies through its namespace bdev at 4 KiB (in-capsule writes) and 64 KiB (R2T).
//! The target is Keel's NVMe/TCP target on a reactor thread of this test process.

mod common;

use keel_bdev::modules::malloc::{self, MallocOpts};
use keel_bdev::BdevRegistry;
use keel_nvmf::{ListenAddress, NsOpts, NvmfTarget, SubsystemOpts, TransportOpts};
use keel_reactor::{CoreMask, Runtime};

use common::Scratch;

const NQN: &str = "nqn.2016-06.io.keel:fio-nvme";

#[test]
fn crc32c_verify_through_an_nvme_tcp_namespace() {
    common::require_fio();
    let rt = Runtime::start(&CoreMask::parse("0x1").unwrap(), false, || {}).unwrap();
    let cores = rt.cores();
    let reg = BdevRegistry::new(cores.clone());
    malloc::create(&reg, &MallocOpts::new("M0", 16384, 4096)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (tx, rx) = std::sync::mpsc::channel();
    let target = NvmfTarget::of(&reg);
    cores
        .run_on(cores.main_core(), move || {
            let r = (|| -> Result<(), keel_nvmf::NvmfError> {
                target.create_transport(TransportOpts {
                    in_capsule_data_size: 8192,
                    ..TransportOpts::default()
                })?;
                target.create_subsystem(
                    NQN,
                    SubsystemOpts {
                        allow_any_host: true,
                        ..SubsystemOpts::default()
                    },
                )?;
                target.add_ns(
                    NQN,
                    &NsOpts {
                        bdev_name: "M0".into(),
                        ..NsOpts::default()
                    },
                )?;
                let l = ListenAddress::parse("tcp", None, "127.0.0.1", Some(&port.to_string()))?;
                target.add_listener(NQN, l)
            })();
            tx.send(r.map_err(|e| e.to_string())).unwrap();
        })
        .unwrap();
    rx.recv().unwrap().unwrap();

    let s = Scratch::with_bdevs(serde_json::json!([
        {"method": "bdev_nvme_attach_controller",
         "params": {"name": "Nvme0", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
                    "trsvcid": port.to_string(), "subnqn": NQN}}
    ]));
    for bs in ["4k", "64k"] {
        let job = format!(
            "[verify]\nfilename=Nvme0n1\nrw=randwrite\nbs={bs}\niodepth=16\nsize=16m\nverify=crc32c\nverify_fatal=1\n"
        );
        let jobs = s.run(&s.job_file(&job), &[]).assert_ok();
        assert_eq!(jobs[0].write_bytes, 16 << 20, "{bs}: {jobs:?}");
        assert_eq!(
            jobs[0].read_bytes,
            16 << 20,
            "{bs}: the verify phase reads everything back"
        );
    }
    cores.request_stop();
    rt.join().unwrap();
}
