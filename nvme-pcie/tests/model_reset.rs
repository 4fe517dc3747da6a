//! Failures around the controller: a reset with commands in flight (every request comes back
//! once, with the reset status, none is completed twice, and the queue works afterwards from a
//! fresh phase), controller fatal status seen by `health` and cured by a reset, and surprise
//! removal: health says gone, admin commands fail, the in-flight requests are handed back.

mod common;

use std::collections::HashSet;

use keel_nvme_pcie::model::ModelConfig;
use keel_nvme_pcie::{Completion, ControllerOpts, CtrlrState, Health, IoCommand, PcieError, QueuePair, Submitted};

fn write(buf: &keel_nvme_pcie::DmaBuf, slba: u64) -> IoCommand {
    IoCommand::Write {
        nsid: 1,
        slba,
        blocks: 1,
        buf: common::data(buf, 512),
        fua: false,
    }
}

#[test]
fn reset_mid_flight_returns_every_request_once() {
    let mut r = common::rig(
        ModelConfig {
            deferred: true,
            ..ModelConfig::default()
        },
        ControllerOpts {
            io_entries: 16,
            ..ControllerOpts::default()
        },
    );
    let mut qp: QueuePair<_, u64> = r.ctrlr.create_io_qpair().unwrap();
    let mut qp2: QueuePair<_, u64> = r.ctrlr.create_io_qpair().unwrap();
    let buf = r.pool.get().unwrap();
    // Half a lap completes, then 10 more are in flight when the reset comes.
    for i in 0..5 {
        assert!(matches!(qp.submit(&write(&buf, i), i), Submitted::Accepted));
    }
    r.model.run();
    assert_eq!(qp.poll(64, |_, _| {}), 5);
    for i in 5..15 {
        assert!(matches!(qp.submit(&write(&buf, i), i), Submitted::Accepted));
    }
    assert!(matches!(qp2.submit(&write(&buf, 100), 100), Submitted::Accepted));
    // Some of the queued writes ran on the device and some did not: the reset makes that moot —
    // whatever the driver had not polled comes back with the reset status, exactly once.
    r.model.run();
    r.ctrlr.reset().unwrap();
    assert_eq!(r.model.io_sq_count(), 0, "CC.EN = 0 deleted the I/O queues");
    let mut back = HashSet::new();
    r.ctrlr
        .restore_io_qpair(&mut qp, |t, c| {
            assert_eq!(c, Completion::RESET);
            assert!(back.insert(t), "request {t} handed back twice");
        })
        .unwrap();
    assert_eq!(back, (5..15).collect());
    let mut back2 = Vec::new();
    r.ctrlr.restore_io_qpair(&mut qp2, |t, _| back2.push(t)).unwrap();
    assert_eq!(back2, [100]);
    assert_eq!(r.model.io_sq_count(), 2);
    // Late completions of the old queue never show up; the new lap starts at phase 1.
    assert_eq!(qp.poll(64, |t, _| panic!("stale completion for {t}")), 0);
    for i in 0..40 {
        assert!(matches!(qp.submit(&write(&buf, i), 1000 + i), Submitted::Accepted));
        r.model.run();
        let mut n = 0;
        qp.poll(4, |t, c| {
            assert_eq!(t, 1000 + i);
            assert!(c.status.is_success());
            n += 1;
        });
        assert_eq!(n, 1);
    }
    assert_eq!(qp.stats().stray_completions, 0);
}

#[test]
fn fatal_status_is_seen_and_reset_cures_it() {
    let mut r = common::rig(ModelConfig::default(), ControllerOpts::default());
    let mut qp: QueuePair<_, u8> = r.ctrlr.create_io_qpair().unwrap();
    let buf = r.pool.get().unwrap();
    assert_eq!(r.ctrlr.health(), Health::Ok);
    r.model.set_fatal();
    assert!(matches!(qp.submit(&write(&buf, 1), 1), Submitted::Accepted));
    assert_eq!(qp.poll(8, |_, _| {}), 0, "a fatal controller completes nothing");
    assert_eq!(r.ctrlr.health(), Health::Fatal);
    assert_eq!(r.ctrlr.state(), CtrlrState::Failed);
    assert!(matches!(r.ctrlr.create_io_qpair::<u8>(), Err(PcieError::State(_))));
    r.ctrlr.reset().unwrap();
    assert_eq!(r.ctrlr.health(), Health::Ok);
    let mut back = Vec::new();
    r.ctrlr.restore_io_qpair(&mut qp, |t, _| back.push(t)).unwrap();
    assert_eq!(back, [1]);
    assert!(matches!(qp.submit(&write(&buf, 1), 2), Submitted::Accepted));
    assert_eq!(qp.poll(8, |t, c| assert!(t == 2 && c.status.is_success())), 1);
}

#[test]
fn surprise_removal_fails_cleanly() {
    let mut r = common::rig(ModelConfig::default(), ControllerOpts::default());
    let mut qp: QueuePair<_, u8> = r.ctrlr.create_io_qpair().unwrap();
    let buf = r.pool.get().unwrap();
    r.model.hold_lba(Some(9));
    assert!(matches!(qp.submit(&write(&buf, 9), 7), Submitted::Accepted));
    r.model.remove();
    assert_eq!(r.ctrlr.health(), Health::Gone);
    assert_eq!(r.ctrlr.state(), CtrlrState::Removed);
    assert!(matches!(r.ctrlr.reset(), Err(PcieError::State(_))));
    let mut back = Vec::new();
    qp.fail_outstanding(
        Completion {
            status: keel_nvme_pcie::ctrlr::DEVICE_GONE_STATUS,
            dw0: 0,
        },
        |t, c| back.push((t, c.status.dnr)),
    );
    assert_eq!(back, [(7, true)]);
    qp.mark_failed();
    assert!(matches!(qp.submit(&write(&buf, 1), 8), Submitted::Rejected(8, _)));
    // Detach of a removed device does not hang.
    r.ctrlr.shutdown().unwrap();
}

#[test]
fn detach_under_load_hands_every_request_back() {
    let mut r = common::rig(
        ModelConfig {
            deferred: true,
            ..ModelConfig::default()
        },
        ControllerOpts::default(),
    );
    let mut qp: QueuePair<_, u64> = r.ctrlr.create_io_qpair().unwrap();
    let buf = r.pool.get().unwrap();
    for i in 0..20 {
        assert!(matches!(qp.submit(&write(&buf, i), i), Submitted::Accepted));
    }
    let mut back = Vec::new();
    r.ctrlr
        .delete_io_qpair(qp, |t, c| {
            assert_eq!(c, Completion::RESET);
            back.push(t)
        })
        .unwrap();
    back.sort();
    assert_eq!(back, (0..20).collect::<Vec<_>>());
    assert_eq!(r.model.io_sq_count(), 0);
    r.ctrlr.shutdown().unwrap();
}
