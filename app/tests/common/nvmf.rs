//! Helpers of the NVMe/TCP target tests: a keel-tgt with one malloc namespace on a free port,
//! and test-host queues through the Linux host's connect sequence.

use std::net::SocketAddr;
use std::time::Duration;

use keel_nvme_proto::identify::Cns;
use keel_nvme_proto::props::{Cap, Cc, Csts, PropertySize};
use keel_nvme_proto::sqe::{AdminCommand, Command, FabricsCommand, Identify, NvmCommand, ReadWrite};
use keel_nvmf::testhost::Host;

use super::Target;

pub const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn sleep_idle() -> Box<dyn FnMut()> {
    Box::new(|| std::thread::sleep(Duration::from_micros(50)))
}

/// A target with Malloc0 (32 MiB, 512-byte blocks) as namespace 1 of NQN on 127.0.0.1:port.
/// `nvmf_subsystem_add_listener NQN -t tcp -a 127.0.0.1 -s PORT` (`discovery` for the
/// discovery subsystem).
pub fn listen(t: &Target, nqn: &str, port: &str) {
    t.ok(&[
        "nvmf_subsystem_add_listener",
        nqn,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        port,
    ]);
}

/// Serves a new malloc bdev `Malloc0` of `size_mib` MiB (512-byte blocks) as namespace 1 of
/// subsystem `nqn` (created with `subsystem_args` after the NQN) on a free 127.0.0.1 port,
/// with the discovery subsystem on the same port; `transport_args` go to
/// `nvmf_create_transport -t TCP`. Returns the address.
pub fn serve(t: &Target, nqn: &str, size_mib: &str, transport_args: &[&str], subsystem_args: &[&str]) -> SocketAddr {
    let port = free_port().to_string();
    t.ok(&["bdev_malloc_create", "-b", "Malloc0", size_mib, "512"]);
    t.ok(&[&["nvmf_create_transport", "-t", "TCP"][..], transport_args].concat());
    t.ok(&[&["nvmf_create_subsystem", nqn][..], subsystem_args].concat());
    t.ok(&["nvmf_subsystem_add_ns", nqn, "Malloc0"]);
    listen(t, nqn, &port);
    listen(t, "discovery", &port);
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// keel-tgt serving Malloc0 (32 MiB) as namespace 1 of [`NQN`] (any host, serial KEEL0001,
/// 8 KiB in-capsule data) on a free port.
pub fn setup() -> (Target, SocketAddr) {
    let t = Target::start(&[]);
    let addr = serve(
        &t,
        NQN,
        "32",
        &["-c", "8192", "-i", "131072"],
        &["-a", "-s", "KEEL0001", "-d", "Keel test"],
    );
    (t, addr)
}

pub fn admin(c: AdminCommand) -> Command {
    Command::Admin(c)
}

pub fn prop_get(h: &mut Host, offset: u32, size: PropertySize) -> u64 {
    let c = h
        .command(
            &Command::Fabrics(FabricsCommand::PropertyGet { size, offset }),
            &[],
            &mut [],
        )
        .unwrap();
    assert!(c.status.is_success(), "{:?}", c.status);
    u64::from(c.dw0) | u64::from(c.dw1) << 32
}

pub fn prop_set_cc(h: &mut Host, cc: Cc) {
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
}

/// ICReq, admin Connect, and the enable sequence of the Linux host.
pub fn admin_queue(addr: SocketAddr, nqn: &str, digests: bool, kato_ms: u32) -> Host {
    let mut h = Host::new(addr, digests, digests, sleep_idle()).unwrap();
    let c = h.connect(0, nqn, HOSTNQN, 0xFFFF, kato_ms, 31, 0).unwrap();
    assert!(c.status.is_success(), "admin connect: {:?}", c.status);
    assert!(h.cntlid >= 1);
    let cap = Cap::from_bits(prop_get(&mut h, 0, PropertySize::Eight));
    assert!(cap.mqes_0based >= 31, "MQES {}", cap.mqes_0based);
    let cc = Cc {
        iosqes: 6,
        iocqes: 4,
        ..Cc::default()
    };
    prop_set_cc(&mut h, cc);
    prop_set_cc(&mut h, Cc { enable: true, ..cc });
    let csts = Csts::from_bits(prop_get(&mut h, 0x1C, PropertySize::Four) as u32);
    assert!(csts.ready);
    assert_eq!(prop_get(&mut h, 0x08, PropertySize::Four), 0x0001_0300);
    h
}

pub fn identify(h: &mut Host, cns: Cns, nsid: u32) -> Vec<u8> {
    let mut page = vec![0u8; 4096];
    let c = h
        .command(
            &admin(AdminCommand::Identify(Identify {
                nsid,
                cns,
                cntid: 0,
                csi: 0,
            })),
            &[],
            &mut page,
        )
        .unwrap();
    assert!(c.status.is_success(), "identify {cns:?}: {:?}", c.status);
    page
}

pub fn rw(nsid: u32, slba: u64, blocks: u32, fua: bool) -> ReadWrite {
    ReadWrite {
        nsid,
        slba,
        nlb_0based: (blocks - 1) as u16,
        fua,
        limited_retry: false,
    }
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub fn write_read(io: &mut Host, slba: u64, len: usize, seed: u8, fua: bool) {
    let data = pattern(len, seed);
    let blocks = (len / 512) as u32;
    let c = io
        .command(
            &Command::Nvm(NvmCommand::Write(rw(1, slba, blocks, fua))),
            &data,
            &mut [],
        )
        .unwrap();
    assert!(c.status.is_success(), "write {len} at {slba}: {:?}", c.status);
    let mut back = vec![0u8; len];
    let c = io
        .command(
            &Command::Nvm(NvmCommand::Read(rw(1, slba, blocks, false))),
            &[],
            &mut back,
        )
        .unwrap();
    assert!(c.status.is_success(), "read {len} at {slba}: {:?}", c.status);
    assert!(back == data, "data read back at {slba} ({len} bytes) differs");
}

pub fn io_queue(addr: SocketAddr, cntlid: u16, digests: bool) -> Host {
    let mut io = Host::new(addr, digests, digests, sleep_idle()).unwrap();
    let c = io.connect(1, NQN, HOSTNQN, cntlid, 0, 127, 8192).unwrap();
    assert!(c.status.is_success(), "io connect: {:?}", c.status);
    assert_eq!(io.cntlid, cntlid);
    io
}

/// An I/O queue (QID 1) of controller `cntlid` of subsystem `nqn`.
pub fn io_queue_of(addr: SocketAddr, nqn: &str, cntlid: u16) -> Host {
    let mut io = Host::new(addr, false, false, sleep_idle()).unwrap();
    let c = io.connect(1, nqn, HOSTNQN, cntlid, 0, 63, 4096).unwrap();
    assert!(c.status.is_success(), "io connect: {:?}", c.status);
    io
}
