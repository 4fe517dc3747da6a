//! Per-command timeouts and Abort: a command the controller holds is named once by
//! `expired` after its timeout (with the pair's clock moved by `tick`, no sleeping); Abort
//! makes it complete with Abort Requested. When Abort does not abort (QEMU's behaviour), the
//! controller is reset and the request comes back with the reset status for a retry, which then
//! succeeds.

mod common;

use std::time::{Duration, Instant};

use keel_nvme_pcie::model::ModelConfig;
use keel_nvme_pcie::{Completion, ControllerOpts, IoCommand, QueuePair, Submitted};
use keel_nvme_proto::cqe::StatusCode;

#[test]
fn a_held_command_times_out_and_is_aborted() {
    let mut r = common::rig(ModelConfig::default(), ControllerOpts::default());
    let mut qp: QueuePair<_, &str> = r.ctrlr.create_io_qpair().unwrap();
    let buf = r.pool.get().unwrap();
    r.model.hold_lba(Some(77));
    let t0 = Instant::now();
    qp.tick(t0);
    let cmd = IoCommand::Read {
        nsid: 1,
        slba: 77,
        blocks: 1,
        buf: common::data(&buf, 512),
    };
    assert!(matches!(qp.submit(&cmd, "held"), Submitted::Accepted));
    let other = IoCommand::Flush { nsid: 1 };
    assert!(matches!(qp.submit(&other, "flush"), Submitted::Accepted));
    let mut got = Vec::new();
    qp.poll(8, |t, _| got.push(t));
    assert_eq!(got, ["flush"]);
    let timeout = Duration::from_secs(30);
    assert_eq!(
        qp.expired(t0 + Duration::from_secs(29), timeout, |_| panic!("too early")),
        0
    );
    let mut cids = Vec::new();
    assert_eq!(
        qp.expired(t0 + Duration::from_secs(31), timeout, |cid| cids.push(cid)),
        1
    );
    assert_eq!(
        qp.expired(t0 + Duration::from_secs(60), timeout, |_| panic!("named twice")),
        0
    );
    assert!(
        r.ctrlr.abort(qp.qid(), cids[0]).unwrap(),
        "the model aborts held commands"
    );
    let mut got = Vec::new();
    qp.poll(8, |t, c| got.push((t, c)));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "held");
    assert_eq!(got[0].1.status.code, StatusCode::ABORT_REQUESTED);
    assert_eq!(r.model.held(), 0);
}

#[test]
fn a_failed_abort_leads_to_a_reset_and_a_retry() {
    let mut r = common::rig(
        ModelConfig {
            abort_succeeds: false,
            ..ModelConfig::default()
        },
        ControllerOpts::default(),
    );
    let mut qp: QueuePair<_, u32> = r.ctrlr.create_io_qpair().unwrap();
    let buf = r.pool.get().unwrap();
    r.pool.write(&buf, 0, &[0x5A; 512]).unwrap();
    r.model.hold_lba(Some(5));
    let t0 = Instant::now();
    qp.tick(t0);
    let cmd = IoCommand::Write {
        nsid: 1,
        slba: 5,
        blocks: 1,
        buf: common::data(&buf, 512),
        fua: true,
    };
    assert!(matches!(qp.submit(&cmd, 1), Submitted::Accepted));
    let mut cid = None;
    qp.expired(t0 + Duration::from_secs(31), Duration::from_secs(30), |c| cid = Some(c));
    assert!(!r.ctrlr.abort(qp.qid(), cid.unwrap()).unwrap(), "not aborted");
    // Reset, then the owner restores its pair and gets the request back to retry.
    r.model.hold_lba(None);
    r.ctrlr.reset().unwrap();
    assert_eq!(r.model.held(), 0, "a disabled controller drops what it held");
    let mut back = Vec::new();
    r.ctrlr.restore_io_qpair(&mut qp, |t, c| back.push((t, c))).unwrap();
    assert_eq!(back, [(1, Completion::RESET)]);
    assert!(matches!(qp.submit(&cmd, 1), Submitted::Accepted));
    let mut ok = false;
    qp.poll(8, |_, c| ok = c.status.is_success());
    assert!(ok);
    let mut media = [0u8; 512];
    r.model.read_media(5 * 512, &mut media);
    assert_eq!(media, [0x5A; 512]);
}
