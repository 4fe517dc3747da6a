//! Qpairs on keel-tgt's NVMe/TCP target: with two reactors the connections of one controller
//! are spread round robin and `nvmf_subsystem_get_qpairs` shows both reactors' poll groups,
//! all of them doing verified I/O in turn; and on one reactor, a host that queues 127 reads of
//! 128 KiB and never reads its socket does not stall another host's I/O on the same reactor,
//! and when it goes away the target drops its controller.

mod common;

use std::time::Duration;

use common::nvmf::*;
use common::Target;
use keel_nvme_proto::sqe::{Command, DataPointer, NvmCommand};
use keel_nvmf::testhost::Host;

#[test]
fn io_queues_spread_over_both_reactors() {
    let t = Target::start(&["-m", "0x3"]);
    let addr = serve(&t, NQN, "32", &[], &["-a"]);
    let a = admin_queue(addr, NQN, false, 0);
    let mut queues: Vec<Host> = (1..=3u16)
        .map(|qid| {
            let mut h = Host::new(addr, false, false, sleep_idle()).unwrap();
            assert!(h
                .connect(qid, NQN, HOSTNQN, a.cntlid, 0, 127, 4096)
                .unwrap()
                .status
                .is_success());
            h
        })
        .collect();
    let qps = t.json(&["nvmf_subsystem_get_qpairs", NQN]);
    let mut threads: Vec<String> = qps
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["thread"].as_str().unwrap().to_string())
        .collect();
    threads.sort();
    threads.dedup();
    assert_eq!(threads, ["nvmf_tgt_poll_group_000", "nvmf_tgt_poll_group_001"], "{qps}");
    for r in 0..20u64 {
        for (i, q) in queues.iter_mut().enumerate() {
            write_read(q, (i as u64) * 8192 + r * 256, 65536, (i as u8) * 40 + r as u8, false);
        }
    }
    assert_eq!(t.json(&["nvmf_subsystem_get_controllers", NQN])[0]["num_io_qpairs"], 3);
    drop(queues);
    drop(a);
    t.stop();
}

#[test]
fn a_host_that_does_not_read_cannot_stall_another() {
    let (t, addr) = setup();
    let slow_admin = admin_queue(addr, NQN, false, 0);
    let mut slow = io_queue(addr, slow_admin.cntlid, false);
    let mut good_admin = admin_queue(addr, NQN, false, 0);
    let mut good = io_queue_of(addr, NQN, good_admin.cntlid);
    for i in 0..127u64 {
        let sqe = Command::Nvm(NvmCommand::Read(rw(1, i * 256, 256, false)))
            .to_sqe(0, DataPointer::NONE_TCP)
            .unwrap();
        slow.post_read(sqe, 128 << 10).unwrap();
    }
    // ~16 MiB of replies are queued behind a socket nobody reads; the other host goes on.
    std::thread::sleep(Duration::from_millis(500));
    for r in 0..30u8 {
        write_read(&mut good, 4096 + u64::from(r) * 128, 65536, r, false);
    }
    drop(slow);
    drop(slow_admin);
    for _ in 0..100 {
        let n = t
            .json(&["nvmf_subsystem_get_controllers", NQN])
            .as_array()
            .unwrap()
            .len();
        if n == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ctrls = t.json(&["nvmf_subsystem_get_controllers", NQN]);
    assert_eq!(ctrls.as_array().unwrap().len(), 1, "{ctrls}");
    assert_eq!(ctrls[0]["cntlid"], good_admin.cntlid);
    assert!(good_admin
        .command(
            &Command::Admin(keel_nvme_proto::sqe::AdminCommand::KeepAlive),
            &[],
            &mut []
        )
        .unwrap()
        .status
        .is_success());
    t.stop();
}
