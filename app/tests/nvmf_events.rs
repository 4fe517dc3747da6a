//! Controller events on keel-tgt's NVMe/TCP target: a host that armed namespace-attribute
//! notices and holds an Asynchronous Event Request sees it complete when a namespace is added
//! and again when one is removed while it is connected, and reads the changed namespaces from
//! the log page; a controller whose host stops sending Keep Alive is torn down after KATO
//! (admin and I/O connections closed, the controller gone from the RPC listing) while one that
//! keeps sending them stays.

mod common;

use std::time::{Duration, Instant};

use common::nvmf::*;
use keel_nvme_proto::cqe::AsyncEvent;
use keel_nvme_proto::identify::{decode_active_ns_list, Cns};
use keel_nvme_proto::log::{decode_changed_ns_list, ChangedNamespaces, LogPageId};
use keel_nvme_proto::sqe::{AdminCommand, Command, FeatureId, GetLogPage, SetFeatures};
use keel_nvmf::testhost::Host;

fn arm(a: &mut Host) -> u16 {
    let set = Command::Admin(AdminCommand::SetFeatures(SetFeatures {
        nsid: 0,
        fid: FeatureId::ASYNC_EVENT_CONFIG,
        save: false,
        value: 1 << 8,
    }));
    assert!(a.command(&set, &[], &mut []).unwrap().status.is_success());
    a.post(
        Command::Admin(AdminCommand::AsyncEventRequest)
            .to_sqe(0, keel_nvme_proto::sqe::DataPointer::NONE_TCP)
            .unwrap(),
    )
    .unwrap()
}

fn changed(a: &mut Host) -> Vec<u32> {
    let mut page = vec![0u8; 4096];
    let g = GetLogPage::new(0xFFFF_FFFF, LogPageId::CHANGED_NS_LIST, 0, 4096).unwrap();
    assert!(a
        .command(&Command::Admin(AdminCommand::GetLogPage(g)), &[], &mut page)
        .unwrap()
        .status
        .is_success());
    match decode_changed_ns_list(&page).unwrap() {
        ChangedNamespaces::List(l) => l.collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn namespace_changes_complete_the_held_aer() {
    let (t, addr) = setup();
    let mut a = admin_queue(addr, NQN, false, 0);
    let cid = arm(&mut a);
    t.ok(&["bdev_malloc_create", "-b", "Malloc9", "8", "512"]);
    t.ok(&["nvmf_subsystem_add_ns", NQN, "Malloc9", "-n", "5"]);
    let c = a.wait_cqe().unwrap();
    assert_eq!(c.cid, cid);
    let ev = AsyncEvent::from_dw0(c.dw0);
    assert_eq!(
        (ev.event_type.0, ev.info, ev.log_page),
        (2, 0, LogPageId::CHANGED_NS_LIST)
    );
    assert_eq!(changed(&mut a), [5]);
    let list: Vec<u32> = decode_active_ns_list(&identify(&mut a, Cns::ACTIVE_NS_LIST, 0))
        .unwrap()
        .collect();
    assert_eq!(list, [1, 5]);
    // An I/O queue sees the new namespace.
    let mut io = io_queue(addr, a.cntlid, false);
    let data = pattern(4096, 3);
    let c = io
        .command(
            &Command::Nvm(keel_nvme_proto::sqe::NvmCommand::Write(rw(5, 0, 8, false))),
            &data,
            &mut [],
        )
        .unwrap();
    assert!(c.status.is_success());
    // Removal: a second notice; the namespace is gone for the I/O queue.
    let cid = a
        .post(
            Command::Admin(AdminCommand::AsyncEventRequest)
                .to_sqe(0, keel_nvme_proto::sqe::DataPointer::NONE_TCP)
                .unwrap(),
        )
        .unwrap();
    t.ok(&["nvmf_subsystem_remove_ns", NQN, "5"]);
    assert_eq!(a.wait_cqe().unwrap().cid, cid);
    assert_eq!(changed(&mut a), [5]);
    let mut back = vec![0u8; 4096];
    let c = io
        .command(
            &Command::Nvm(keel_nvme_proto::sqe::NvmCommand::Read(rw(5, 0, 8, false))),
            &[],
            &mut back,
        )
        .unwrap();
    assert_eq!(
        c.status.code,
        keel_nvme_proto::cqe::StatusCode::INVALID_NAMESPACE_OR_FORMAT
    );
    // The bdev is free again.
    t.ok(&["bdev_malloc_delete", "Malloc9"]);
    t.stop();
}

#[test]
fn a_silent_host_loses_its_controller_after_kato() {
    let (t, addr) = setup();
    let mut silent = admin_queue(addr, NQN, false, 1000);
    let mut silent_io = io_queue(addr, silent.cntlid, false);
    let mut alive = admin_queue(addr, NQN, false, 1500);
    let keep_alive = |h: &mut Host| {
        let c = h
            .command(&Command::Admin(AdminCommand::KeepAlive), &[], &mut [])
            .unwrap();
        assert!(c.status.is_success());
    };
    let start = Instant::now();
    // The other host sends Keep Alive every 250 ms while the silent one sends nothing.
    let closed = loop {
        keep_alive(&mut alive);
        if silent.closed_within(Duration::from_millis(250)).is_some() {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the silent admin queue stays open"
        );
    };
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}, before KATO"
    );
    assert!(
        silent_io.closed_within(Duration::from_secs(5)).is_some(),
        "its I/O queue stays open"
    );
    for _ in 0..8 {
        keep_alive(&mut alive);
        std::thread::sleep(Duration::from_millis(250));
    }
    let ctrls = t.json(&["nvmf_subsystem_get_controllers", NQN]);
    let ids: Vec<u64> = ctrls
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cntlid"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [u64::from(alive.cntlid)]);
    t.stop();
}
