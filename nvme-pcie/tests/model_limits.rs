//! The controller's limits reach the driver: CAP.MQES caps the I/O queue size, MDTS (and what
//! one PRP list page expresses) caps the transfer the driver reports and the model refuses
//! longer ones with Invalid Field, the granted queue count caps how many pairs can exist (and a
//! deleted pair's id is reused), and requests the driver cannot express are handed back.

mod common;

use keel_nvme_pcie::model::ModelConfig;
use keel_nvme_pcie::{ControllerOpts, IoCommand, PcieError, QueuePair, Submitted};
use keel_nvme_proto::cqe::StatusCode;

#[test]
fn mqes_mdts_and_queue_count() {
    let mut r = common::rig(
        ModelConfig {
            mqes_0based: 7,
            mdts: 2,
            max_io_queues: 2,
            ..ModelConfig::default()
        },
        ControllerOpts {
            io_entries: 1024,
            io_queues: 8,
            ..ControllerOpts::default()
        },
    );
    assert_eq!(r.ctrlr.io_entries(), 8, "capped at MQES + 1");
    assert_eq!(r.ctrlr.io_queues_granted(), 2);
    assert_eq!(r.ctrlr.max_transfer_bytes(), 16 * 1024, "MDTS 2 × 4 KiB pages");
    let mut a: QueuePair<_, u8> = r.ctrlr.create_io_qpair().unwrap();
    let b: QueuePair<_, u8> = r.ctrlr.create_io_qpair().unwrap();
    assert_eq!(a.entries(), 8);
    let e = r.ctrlr.create_io_qpair::<u8>().err().expect("a third pair");
    assert!(e.to_string().contains("all 2 I/O queue pairs"), "{e}");
    let qid_b = b.qid();
    r.ctrlr.delete_io_qpair(b, |_, _| {}).unwrap();
    let c: QueuePair<_, u8> = r.ctrlr.create_io_qpair().unwrap();
    assert_eq!(c.qid(), qid_b, "a deleted pair's queue id is reused");

    let buf = r.pool.get().unwrap();
    // At MDTS: fine. Above it: the controller refuses (the splitter keeps I/O below the limit).
    let read = |bytes: u32| IoCommand::Read {
        nsid: 1,
        slba: 0,
        blocks: bytes / 512,
        buf: common::data(&buf, bytes),
    };
    assert!(matches!(a.submit(&read(16 * 1024), 1), Submitted::Accepted));
    assert!(matches!(a.submit(&read(32 * 1024), 2), Submitted::Accepted));
    let mut got = Vec::new();
    a.poll(8, |t, c| got.push((t, c.status)));
    assert!(got[0].1.is_success());
    assert_eq!(got[1].1.code, StatusCode::INVALID_FIELD);
    assert!(got[1].1.dnr);

    // What PRPs cannot express is handed back with the reason, not sent.
    let too_long = IoCommand::Read {
        nsid: 1,
        slba: 0,
        blocks: 4096,
        buf: keel_nvme_pcie::DataBuf {
            iova: buf.iova,
            len_bytes: 2 * 1024 * 1024 + 8192,
        },
    };
    match a.submit(&too_long, 3) {
        Submitted::Rejected(3, PcieError::Invalid(m)) => assert!(m.contains("split"), "{m}"),
        other => panic!("{other:?}"),
    }
    match a.submit(
        &IoCommand::Write {
            nsid: 1,
            slba: 0,
            blocks: 0,
            buf: common::data(&buf, 512),
            fua: false,
        },
        4,
    ) {
        Submitted::Rejected(4, e) => assert!(e.to_string().contains("0 blocks"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.outstanding(), 0, "rejected requests hold no slot");
}
