//! keel-tgt's NVMe/TCP target driven over 127.0.0.1 by the test host (keel-nvmf's `testhost`,
//! built on keel-nvme-proto) after SPDK's `spdk-rpc` configured it: the admin queue's enable
//! sequence (properties), Identify (controller, namespace, active list, id descriptors),
//! features and log pages; an I/O queue with in-capsule writes, R2T writes, reads verified
//! byte for byte, Write Zeroes, Dataset Management, Flush and FUA; the same with header and
//! data digests; and a discovery controller's log page.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Target;
use keel_nvme_proto::cqe::StatusCode;
use keel_nvme_proto::identify::{
    decode_active_ns_list, decode_ns_id_descriptors, Cns, IdentifyController, IdentifyNamespace, NsIdDescriptor,
};
use keel_nvme_proto::log::{DiscoveryEntry, DiscoveryLogHeader, LogPageId};
use keel_nvme_proto::props::{Cap, Cc, Csts, PropertySize, Shutdown};
use keel_nvme_proto::sqe::{
    AdminCommand, Command, DatasetManagement, DsmRange, FabricsCommand, FeatureId, GetFeatures, GetLogPage, Identify,
    NvmCommand, ReadWrite, SetFeatures, WriteZeroes,
};
use keel_nvmf::testhost::Host;

pub const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sleep_idle() -> Box<dyn FnMut()> {
    Box::new(|| std::thread::sleep(Duration::from_micros(50)))
}

/// A target with Malloc0 (32 MiB, 512-byte blocks) as namespace 1 of NQN on 127.0.0.1:port.
fn setup() -> (Target, SocketAddr) {
    let t = Target::start(&[]);
    let port = free_port().to_string();
    t.ok(&["bdev_malloc_create", "-b", "Malloc0", "32", "512"]);
    t.ok(&["nvmf_create_transport", "-t", "TCP", "-c", "8192", "-i", "131072"]);
    t.ok(&["nvmf_create_subsystem", NQN, "-a", "-s", "KEEL0001", "-d", "Keel test"]);
    t.ok(&["nvmf_subsystem_add_ns", NQN, "Malloc0"]);
    t.ok(&[
        "nvmf_subsystem_add_listener",
        NQN,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
    ]);
    t.ok(&[
        "nvmf_subsystem_add_listener",
        "discovery",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
    ]);
    (t, format!("127.0.0.1:{port}").parse().unwrap())
}

fn admin(c: AdminCommand) -> Command {
    Command::Admin(c)
}

fn prop_get(h: &mut Host, offset: u32, size: PropertySize) -> u64 {
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

fn prop_set_cc(h: &mut Host, cc: Cc) {
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
    assert_eq!(cap.mqes_0based, 127);
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

fn identify(h: &mut Host, cns: Cns, nsid: u32) -> Vec<u8> {
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

fn rw(nsid: u32, slba: u64, blocks: u32, fua: bool) -> ReadWrite {
    ReadWrite {
        nsid,
        slba,
        nlb_0based: (blocks - 1) as u16,
        fua,
        limited_retry: false,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn write_read(io: &mut Host, slba: u64, len: usize, seed: u8, fua: bool) {
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

fn io_queue(addr: SocketAddr, cntlid: u16, digests: bool) -> Host {
    let mut io = Host::new(addr, digests, digests, sleep_idle()).unwrap();
    let c = io.connect(1, NQN, HOSTNQN, cntlid, 0, 127, 8192).unwrap();
    assert!(c.status.is_success(), "io connect: {:?}", c.status);
    assert_eq!(io.cntlid, cntlid);
    io
}

fn run(digests: bool) {
    let (t, addr) = setup();
    let mut a = admin_queue(addr, NQN, digests, 0);
    let ctrl = IdentifyController::decode(&identify(&mut a, Cns::CONTROLLER, 0)).unwrap();
    assert_eq!(ctrl.cntlid, a.cntlid);
    assert_eq!(ctrl.subnqn.as_str(), Some(NQN));
    assert_eq!(ctrl.mdts, 5);
    assert_eq!(ctrl.ioccsz, (8192 + 64) / 16);
    assert_eq!(ctrl.cntrltype, 1);
    assert_eq!(std::str::from_utf8(ctrl.sn.trimmed()).unwrap(), "KEEL0001");
    assert_eq!(ctrl.oncs & 0x0C, 0x0C);
    let ns = IdentifyNamespace::decode(&identify(&mut a, Cns::NAMESPACE, 1)).unwrap();
    assert_eq!(ns.nsze, 65536);
    assert_eq!(ns.block_size_bytes().unwrap(), 512);
    let list: Vec<u32> = decode_active_ns_list(&identify(&mut a, Cns::ACTIVE_NS_LIST, 0))
        .unwrap()
        .collect();
    assert_eq!(list, [1]);
    let page = identify(&mut a, Cns::NS_ID_DESCRIPTORS, 1);
    let descs: Vec<NsIdDescriptor> = decode_ns_id_descriptors(&page).filter_map(Result::ok).collect();
    assert!(descs.iter().any(|d| matches!(d, NsIdDescriptor::Uuid(_))), "{descs:?}");
    // Unknown NSID: Invalid Namespace.
    let c = a
        .command(
            &admin(AdminCommand::Identify(Identify {
                nsid: 99,
                cns: Cns::NAMESPACE,
                cntid: 0,
                csi: 0,
            })),
            &[],
            &mut [0u8; 4096],
        )
        .unwrap();
    assert_eq!(c.status.code, StatusCode::INVALID_NAMESPACE_OR_FORMAT);
    // Number of queues: the transport's max_io_qpairs_per_ctrlr (127) zero-based.
    let c = a
        .command(
            &admin(AdminCommand::SetFeatures(SetFeatures {
                nsid: 0,
                fid: FeatureId::NUMBER_OF_QUEUES,
                save: false,
                value: 0x0003_0003,
            })),
            &[],
            &mut [],
        )
        .unwrap();
    assert_eq!(c.dw0, 0x007E_007E);
    let c = a
        .command(
            &admin(AdminCommand::GetFeatures(GetFeatures {
                nsid: 0,
                fid: FeatureId::VOLATILE_WRITE_CACHE,
                select: 0,
                cdw11: 0,
            })),
            &[],
            &mut [],
        )
        .unwrap();
    assert_eq!(c.dw0, 1);
    let mut smart = vec![0u8; 512];
    let g = GetLogPage::new(0xFFFF_FFFF, LogPageId::SMART, 0, 512).unwrap();
    assert!(a
        .command(&admin(AdminCommand::GetLogPage(g)), &[], &mut smart)
        .unwrap()
        .status
        .is_success());
    assert!(a
        .command(&admin(AdminCommand::KeepAlive), &[], &mut [])
        .unwrap()
        .status
        .is_success());

    let mut io = io_queue(addr, a.cntlid, digests);
    // In-capsule (4 KiB), R2T (64 KiB and the 128 KiB maximum), FUA.
    write_read(&mut io, 0, 4096, 1, false);
    write_read(&mut io, 100, 65536, 2, false);
    write_read(&mut io, 1000, 131072, 3, true);
    write_read(&mut io, 65536 - 8, 4096, 4, false);
    // Write Zeroes, then the range reads zeros.
    let c = io
        .command(
            &Command::Nvm(NvmCommand::WriteZeroes(WriteZeroes {
                nsid: 1,
                slba: 100,
                nlb_0based: 7,
                deallocate: false,
                fua: false,
                limited_retry: false,
            })),
            &[],
            &mut [],
        )
        .unwrap();
    assert!(c.status.is_success(), "{:?}", c.status);
    let mut back = vec![1u8; 4096];
    io.command(&Command::Nvm(NvmCommand::Read(rw(1, 100, 8, false))), &[], &mut back)
        .unwrap();
    assert!(back.iter().all(|b| *b == 0));
    // Dataset Management deallocate (Linux's 4096-byte payload, one range).
    let mut dsm = vec![0u8; 4096];
    DsmRange::encode_list(
        &[DsmRange {
            attributes: 0,
            block_count: 16,
            slba: 1000,
        }],
        &mut dsm,
    )
    .unwrap();
    let c = io
        .command(
            &Command::Nvm(NvmCommand::DatasetManagement(DatasetManagement {
                nsid: 1,
                nr_0based: 0,
                integral_read: false,
                integral_write: false,
                deallocate: true,
            })),
            &dsm,
            &mut [],
        )
        .unwrap();
    assert!(c.status.is_success(), "{:?}", c.status);
    assert!(io
        .command(&Command::Nvm(NvmCommand::Flush { nsid: 1 }), &[], &mut [])
        .unwrap()
        .status
        .is_success());

    // The controller and its qpairs as the RPC methods list them.
    let ctrls = t.json(&["nvmf_subsystem_get_controllers", NQN]);
    assert_eq!(ctrls[0]["cntlid"], a.cntlid);
    assert_eq!(ctrls[0]["hostnqn"], HOSTNQN);
    assert_eq!(ctrls[0]["num_io_qpairs"], 1);
    let qps = t.json(&["nvmf_subsystem_get_qpairs", NQN]);
    assert_eq!(qps.as_array().unwrap().len(), 2, "{qps}");

    // Shutdown as the Linux host does it.
    prop_set_cc(
        &mut a,
        Cc {
            enable: true,
            shn: Shutdown::Normal,
            iosqes: 6,
            iocqes: 4,
            ..Cc::default()
        },
    );
    let csts = Csts::from_bits(prop_get(&mut a, 0x1C, PropertySize::Four) as u32);
    assert_eq!(csts.shst, Shutdown::COMPLETE);
    drop(io);
    drop(a);
    t.stop();
}

#[test]
fn identify_and_io_without_digests() {
    run(false);
}

#[test]
fn identify_and_io_with_header_and_data_digests() {
    run(true);
}

#[test]
fn discovery_log_lists_the_subsystem() {
    let (t, addr) = setup();
    let mut d = admin_queue(addr, keel_nvme_proto::nqn::DISCOVERY_NQN, false, 0);
    let ctrl = IdentifyController::decode(&identify(&mut d, Cns::CONTROLLER, 0)).unwrap();
    assert_eq!(ctrl.cntrltype, 2);
    let mut page = vec![0u8; 3 * 1024];
    let g = GetLogPage::new(0, LogPageId::DISCOVERY, 0, 3 * 1024).unwrap();
    let c = d.command(&admin(AdminCommand::GetLogPage(g)), &[], &mut page).unwrap();
    assert!(c.status.is_success(), "{:?}", c.status);
    let hdr = DiscoveryLogHeader::decode(&page).unwrap();
    assert_eq!(hdr.numrec, 2, "the subsystem and the discovery subsystem");
    let entries: Vec<DiscoveryEntry> = (1..3)
        .map(|i| DiscoveryEntry::decode(&page[i * 1024..]).unwrap())
        .collect();
    let nvm = entries.iter().find(|e| e.subtype == 2).expect("an NVM subsystem entry");
    assert_eq!(nvm.subnqn.as_str(), Some(NQN));
    assert_eq!(nvm.trtype, 3);
    assert_eq!(std::str::from_utf8(nvm.traddr.trimmed()).unwrap(), "127.0.0.1");
    assert_eq!(
        std::str::from_utf8(nvm.trsvcid.trimmed()).unwrap(),
        addr.port().to_string()
    );
    // Identify Namespace is not for discovery controllers.
    let c = d
        .command(
            &admin(AdminCommand::Identify(Identify {
                nsid: 1,
                cns: Cns::NAMESPACE,
                cntid: 0,
                csi: 0,
            })),
            &[],
            &mut [0u8; 4096],
        )
        .unwrap();
    assert_eq!(c.status.code, StatusCode::INVALID_FIELD);
    drop(d);
    t.stop();
}
