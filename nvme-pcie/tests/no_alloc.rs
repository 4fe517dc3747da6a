//! No allocation per I/O: after a queue pair exists, submitting and polling reads, writes,
//! flushes, write zeroes and deallocates — including a full queue's requeue, PRP lists and the
//! timeout scan — allocates nothing on the submitting thread (counted by the testkit's
//! allocator). The model's own device-side work runs on the same thread and allocates nothing
//! either, so the count is the driver's.

mod common;

use std::time::{Duration, Instant};

use keel_nvme_pcie::model::ModelConfig;
use keel_nvme_pcie::{ControllerOpts, IoCommand, QueuePair, Submitted};

#[global_allocator]
static GLOBAL: keel_testkit::CountingAlloc = keel_testkit::CountingAlloc;

#[test]
fn steady_state_io_allocates_nothing() {
    let mut r = common::rig(
        ModelConfig {
            deferred: true,
            ..ModelConfig::default()
        },
        ControllerOpts {
            io_entries: 32,
            ..ControllerOpts::default()
        },
    );
    let mut qp: QueuePair<_, u32> = r.ctrlr.create_io_qpair().unwrap();
    let buf = r.pool.get().unwrap();
    let cmds = [
        IoCommand::Read {
            nsid: 1,
            slba: 0,
            blocks: 8,
            buf: common::data(&buf, 4096),
        },
        IoCommand::Write {
            nsid: 1,
            slba: 64,
            blocks: 256,
            buf: common::data(&buf, 128 * 1024),
            fua: true,
        },
        IoCommand::Flush { nsid: 1 },
        IoCommand::WriteZeroes {
            nsid: 1,
            slba: 8,
            blocks: 8,
            deallocate: false,
        },
        IoCommand::Deallocate {
            nsid: 1,
            slba: 16,
            blocks: 8,
        },
    ];
    let round = |qp: &mut QueuePair<_, u32>| {
        let mut done = 0u32;
        for i in 0..40u32 {
            match qp.submit(&cmds[i as usize % cmds.len()], i) {
                Submitted::Accepted | Submitted::Requeue(_) => {}
                Submitted::Rejected(_, e) => panic!("{e}"),
            }
        }
        r.model.run();
        while done < 31 {
            qp.poll(16, |_, c| {
                assert!(c.status.is_success());
                done += 1;
            });
        }
        let now = Instant::now();
        qp.tick(now);
        qp.expired(now, Duration::from_secs(30), |_| panic!("nothing is late"));
    };
    // Warm-up (first-touch of anything lazily set up), then the counted window.
    round(&mut qp);
    let before = keel_testkit::thread_allocations();
    for _ in 0..50 {
        round(&mut qp);
    }
    let after = keel_testkit::thread_allocations();
    assert_eq!(after - before, 0, "allocations in 50 rounds of 40 submissions");
    assert!(qp.stats().requeued >= 50 * 9, "the window included full-queue requeues");
}
