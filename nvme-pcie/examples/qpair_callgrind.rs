//! Instructions per I/O of the driver's submit+complete path, for callgrind: 4 KiB reads at
//! queue depth 32 through one queue pair against the in-process controller model.
//!
//! ```text
//! cargo build --release -p keel-nvme-pcie --example qpair_callgrind
//! valgrind --tool=callgrind --callgrind-out-file=cg.out target/release/examples/qpair_callgrind 200000
//! callgrind_annotate --inclusive=yes cg.out | grep -E 'QueuePair|Registers for .*Model|main'
//! ```
//!
//! The model does the device's work (fetch, PRP walk, 4 KiB copy, CQE) inside the doorbell
//! write, so the driver's own cost is `QueuePair::submit` + `QueuePair::poll` inclusive minus
//! the model's `write32` inclusive: what a real device takes over. `nvme-pcie/bench.sh` does the
//! subtraction.
#![forbid(unsafe_code)]

use keel_nvme_pcie::model::{Model, ModelConfig};
use keel_nvme_pcie::{Controller, ControllerOpts, DataBuf, DmaPool, IoCommand, QueuePair, Submitted};

fn main() {
    let ios: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let qd = 32u32;
    let model = Model::new(ModelConfig {
        deferred: true,
        ..ModelConfig::default()
    });
    let mut ctrlr = Controller::attach(model.clone(), model.clone(), ControllerOpts::default()).expect("attach");
    let mut pool = DmaPool::new(&*model, qd, 4096).expect("pool");
    let bufs: Vec<DataBuf> = (0..qd)
        .map(|_| {
            let b = pool.get().expect("buffer");
            DataBuf {
                iova: b.iova,
                len_bytes: 4096,
            }
        })
        .collect();
    let mut qp: QueuePair<Model, u32> = ctrlr.create_io_qpair().expect("qpair");
    let blocks = 32 * 1024 / 8;
    let mut submitted = 0u64;
    let mut completed = 0u64;
    let mut free: Vec<u32> = (0..qd).collect();
    let mut lba = 0u64;
    while completed < ios {
        while let Some(slot) = free.pop() {
            if submitted == ios {
                free.push(slot);
                break;
            }
            lba = (lba * 6364136223846793005 + 1442695040888963407) % blocks;
            let cmd = IoCommand::Read {
                nsid: 1,
                slba: lba * 8,
                blocks: 8,
                buf: bufs[slot as usize],
            };
            match qp.submit(&cmd, slot) {
                Submitted::Accepted => submitted += 1,
                Submitted::Requeue(s) => {
                    free.push(s);
                    break;
                }
                Submitted::Rejected(_, e) => panic!("{e}"),
            }
        }
        model.run();
        qp.poll(64, |slot, c| {
            assert!(c.status.is_success());
            free.push(slot);
            completed += 1;
        });
    }
    println!("{completed} reads of 4 KiB at qd {qd}; {:?}", qp.stats());
}
