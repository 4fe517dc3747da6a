//! Once a qpair is connected, serving NVMe/TCP commands does not allocate: a counting global
//! allocator sees zero allocations while the test host drives the target's real listener and
//! qpair code over 127.0.0.1 on the deterministic driver's reactor — in-capsule 4 KiB writes,
//! R2T 64 KiB writes (some with FUA), 4 KiB and 64 KiB reads, Write Zeroes, Dataset Management
//! deallocate and Flush on a malloc namespace, for hundreds of rounds, without and with header
//! and data digests. The host uses only the buffers it preallocated.
//!
//! One #[test] on one thread (the reactor is the driver's; the host turns it while it waits),
//! so nothing else allocates meanwhile.

use std::net::SocketAddr;

use keel_bdev::modules::malloc::{self, MallocOpts};
use keel_bdev::BdevRegistry;
use keel_nvme_proto::props::{Cc, PropertySize};
use keel_nvme_proto::sqe::{
    Command, DataPointer, DatasetManagement, DsmRange, FabricsCommand, NvmCommand, ReadWrite, Sqe, WriteZeroes,
};
use keel_nvmf::testhost::Host;
use keel_nvmf::{ListenAddress, NsOpts, NvmfTarget, SubsystemOpts, TransportOpts};
use keel_reactor::{CoreId, TestDriver};

#[global_allocator]
static GLOBAL: keel_testkit::CountingAlloc = keel_testkit::CountingAlloc;

const NQN: &str = "nqn.2016-06.io.keel:noalloc";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000aa";
const WARMUP_ROUNDS: u64 = 50;
const MEASURED_ROUNDS: u64 = 300;

struct Cmds {
    sqes: Vec<(Sqe, usize, usize)>,
    data: Vec<u8>,
    dsm: Vec<u8>,
    back: Vec<u8>,
}

fn sqe(c: NvmCommand) -> Sqe {
    Command::Nvm(c).to_sqe(0, DataPointer::NONE_TCP).unwrap()
}

fn rw(slba: u64, blocks: u16, fua: bool) -> ReadWrite {
    ReadWrite {
        nsid: 1,
        slba,
        nlb_0based: blocks - 1,
        fua,
        limited_retry: false,
    }
}

/// Every command of a round, built before the measurement: (SQE, write bytes, read bytes).
fn commands() -> Cmds {
    let mut dsm = vec![0u8; 4096];
    DsmRange::encode_list(
        &[DsmRange {
            attributes: 0,
            block_count: 8,
            slba: 512,
        }],
        &mut dsm,
    )
    .unwrap();
    let sqes = vec![
        (sqe(NvmCommand::Write(rw(0, 1, false))), 4096, 0),
        (sqe(NvmCommand::Write(rw(16, 16, false))), 65536, 0),
        (sqe(NvmCommand::Write(rw(64, 16, true))), 65536, 0),
        (sqe(NvmCommand::Read(rw(0, 1, false))), 0, 4096),
        (sqe(NvmCommand::Read(rw(16, 16, false))), 0, 65536),
        (
            sqe(NvmCommand::WriteZeroes(WriteZeroes {
                nsid: 1,
                slba: 256,
                nlb_0based: 7,
                deallocate: false,
                fua: false,
                limited_retry: false,
            })),
            0,
            0,
        ),
        (
            sqe(NvmCommand::DatasetManagement(DatasetManagement {
                nsid: 1,
                nr_0based: 0,
                integral_read: false,
                integral_write: false,
                deallocate: true,
            })),
            usize::MAX,
            0,
        ),
        (sqe(NvmCommand::Flush { nsid: 1 }), 0, 0),
    ];
    Cmds {
        sqes,
        data: (0..65536).map(|i| i as u8).collect(),
        dsm,
        back: vec![0u8; 65536],
    }
}

fn rounds(io: &mut Host, c: &mut Cmds, n: u64) -> u64 {
    let before = keel_testkit::allocations();
    for _ in 0..n {
        for (s, w, r) in c.sqes.iter() {
            let write: &[u8] = if *w == usize::MAX { &c.dsm } else { &c.data[..*w] };
            let cqe = io.exec(*s, write, &mut c.back[..*r]).unwrap();
            assert!(cqe.status.is_success(), "{:?}", cqe.status);
        }
    }
    keel_testkit::allocations() - before
}

fn steady_state(digests: bool) -> u64 {
    let d: &'static TestDriver = Box::leak(Box::new(TestDriver::new(1)));
    let reg = BdevRegistry::new(d.cores());
    malloc::create(&reg, &MallocOpts::new("M0", 8192, 4096)).unwrap();
    let target = NvmfTarget::of(&reg);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    d.enter(CoreId(0), || {
        target.create_transport(TransportOpts::default()).unwrap();
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
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let turn = move || {
        d.turn();
    };
    let mut admin = Host::new(addr, digests, digests, Box::new(turn)).unwrap();
    assert!(admin
        .connect(0, NQN, HOST, 0xFFFF, 0, 31, 0)
        .unwrap()
        .status
        .is_success());
    let set = |h: &mut Host, cc: Cc| {
        let c = h
            .command(
                &Command::Fabrics(FabricsCommand::PropertySet {
                    size: PropertySize::Four,
                    offset: 0x14,
                    value: u64::from(cc.to_bits()),
                }),
                &[],
                &mut [],
            )
            .unwrap();
        assert!(c.status.is_success());
    };
    set(
        &mut admin,
        Cc {
            enable: true,
            iosqes: 6,
            iocqes: 4,
            ..Cc::default()
        },
    );
    let mut io = Host::new(addr, digests, digests, Box::new(turn)).unwrap();
    let cntlid = admin.cntlid;
    assert!(io
        .connect(1, NQN, HOST, cntlid, 0, 127, 4096)
        .unwrap()
        .status
        .is_success());
    let mut cmds = commands();
    // The warm-up fills the reactor's buffer pool and the hosts' buffers.
    rounds(&mut io, &mut cmds, WARMUP_ROUNDS);
    let n = rounds(&mut io, &mut cmds, MEASURED_ROUNDS);
    drop(io);
    drop(admin);
    d.run_until(100_000, || {
        target.subsystems_json(Some(NQN)).is_ok() && reg_idle(&target)
    });
    n
}

fn reg_idle(target: &NvmfTarget) -> bool {
    target
        .controllers_json(NQN)
        .map(|v| v.as_array().is_some_and(|a| a.is_empty()))
        .unwrap_or(false)
}

#[test]
fn serving_commands_does_not_allocate() {
    let base = keel_testkit::allocations();
    drop(std::hint::black_box(vec![1u8; 10]));
    assert!(keel_testkit::allocations() > base, "the counter sees allocations");
    assert_eq!(steady_state(false), 0, "no digests");
    assert_eq!(steady_state(true), 0, "header and data digests");
}
