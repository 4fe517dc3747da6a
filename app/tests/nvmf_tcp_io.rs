//! keel-tgt's NVMe/TCP target driven over 127.0.0.1 by the test host (keel-nvmf's `testhost`,
//! built on keel-nvme-proto) after SPDK's `spdk-rpc` configured it: the admin queue's enable
//! sequence (properties), Identify (controller, namespace, active list, id descriptors),
//! features and log pages; an I/O queue with in-capsule writes, R2T writes, reads verified
//! byte for byte, Write Zeroes, Dataset Management, Flush and FUA; the same with header and
//! data digests; a queue with SQ flow control disabled (C2HData SUCCESS) ended by Fabrics
//! Disconnect; and a discovery controller's log page.

mod common;

use std::time::Duration;

use keel_nvme_proto::cqe::StatusCode;
use keel_nvme_proto::identify::{
    decode_active_ns_list, decode_ns_id_descriptors, Cns, IdentifyController, IdentifyNamespace, NsIdDescriptor,
};
use keel_nvme_proto::log::{DiscoveryEntry, DiscoveryLogHeader, LogPageId};
use keel_nvme_proto::props::{Cc, Csts, PropertySize, Shutdown};
use keel_nvme_proto::sqe::{
    AdminCommand, Command, DatasetManagement, DsmRange, FabricsCommand, FeatureId, GetFeatures, GetLogPage, Identify,
    NvmCommand, SetFeatures, WriteZeroes,
};
use keel_nvmf::testhost::Host;

use common::nvmf::*;

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

    // A queue with SQ flow control disabled: reads end with C2HData SUCCESS (no CapsuleResp).
    let mut nf = Host::new(addr, digests, digests, sleep_idle()).unwrap();
    nf.disable_sq_flow_control = true;
    let c = nf.connect(2, NQN, HOSTNQN, a.cntlid, 0, 127, 8192).unwrap();
    assert!(c.status.is_success());
    assert_eq!(c.sq_head, 0xFFFF);
    write_read(&mut nf, 3000, 8192, 5, false);
    assert_eq!(nf.success_flag_reads, 1);
    // Fabrics Disconnect ends that queue.
    let c = nf
        .command(
            &Command::Fabrics(FabricsCommand::Disconnect { recfmt: 0 }),
            &[],
            &mut [],
        )
        .unwrap();
    assert!(c.status.is_success());
    assert!(nf.closed_within(Duration::from_secs(10)).is_some());

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
