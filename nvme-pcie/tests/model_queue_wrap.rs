//! Queue wrap-around and phase flips on a small queue, and full queues: with the model in
//! deferred mode (commands run only when the test says so) the pair fills up to entries − 1
//! commands and hands the next request back as `Submitted::Requeue`; after the completions are
//! polled the slots are reused. Data written across many laps reads back intact.

mod common;

use keel_nvme_pcie::model::ModelConfig;
use keel_nvme_pcie::{ControllerOpts, IoCommand, QueuePair, Submitted};

#[test]
fn many_laps_of_a_four_entry_queue() {
    let mut r = common::rig(
        ModelConfig::default(),
        ControllerOpts {
            io_entries: 4,
            ..ControllerOpts::default()
        },
    );
    let mut qp: QueuePair<_, u64> = r.ctrlr.create_io_qpair().unwrap();
    assert_eq!(qp.entries(), 4);
    let buf = r.pool.get().unwrap();
    // 50 laps: each command's completion lands in the next CQ slot; the phase flips every 4.
    for i in 0..200u64 {
        r.pool.write(&buf, 0, &i.to_le_bytes()).unwrap();
        let cmd = IoCommand::Write {
            nsid: 1,
            slba: i,
            blocks: 1,
            buf: common::data(&buf, 512),
            fua: false,
        };
        assert!(matches!(qp.submit(&cmd, i), Submitted::Accepted));
        let mut seen = 0;
        qp.poll(4, |tag, c| {
            assert_eq!(tag, i);
            assert!(c.status.is_success());
            seen += 1;
        });
        assert_eq!(seen, 1, "command {i}");
    }
    for i in 0..200u64 {
        let mut b = [0u8; 8];
        r.model.read_media(i as usize * 512, &mut b);
        assert_eq!(u64::from_le_bytes(b), i);
    }
    let s = qp.stats();
    assert_eq!((s.submitted, s.completed, s.stray_completions), (200, 200, 0));
}

#[test]
fn a_full_queue_hands_requests_back_and_drains_across_the_wrap() {
    let mut r = common::rig(
        ModelConfig {
            deferred: true,
            ..ModelConfig::default()
        },
        ControllerOpts {
            io_entries: 8,
            ..ControllerOpts::default()
        },
    );
    let mut qp: QueuePair<_, u32> = r.ctrlr.create_io_qpair().unwrap();
    let buf = r.pool.get().unwrap();
    let read = |slba| IoCommand::Read {
        nsid: 1,
        slba,
        blocks: 1,
        buf: common::data(&buf, 512),
    };
    let mut next = 0u32;
    let mut done = Vec::new();
    for round in 0..10 {
        // Fill: 7 accepted (entries − 1), the 8th handed back with its tag.
        let mut accepted = 0;
        loop {
            match qp.submit(&read(u64::from(next)), next) {
                Submitted::Accepted => {
                    accepted += 1;
                    next += 1;
                }
                Submitted::Requeue(tag) => {
                    assert_eq!(tag, next, "the request comes back unchanged");
                    break;
                }
                Submitted::Rejected(_, e) => panic!("{e}"),
            }
        }
        assert_eq!(accepted, 7, "round {round}");
        assert_eq!(qp.outstanding(), 7);
        // Nothing completes before the device runs.
        assert_eq!(qp.poll(64, |_, _| panic!("early completion")), 0);
        r.model.run();
        let n = qp.poll(64, |t, c| {
            assert!(c.status.is_success());
            done.push(t);
        });
        assert_eq!(n, 7);
    }
    assert_eq!(
        done,
        (0..70).collect::<Vec<_>>(),
        "completions in submission order, none lost"
    );
    assert_eq!(qp.stats().requeued, 10);
}
