//! Fault-injecting test bdevs: each registers a bdev of its own module name (`test_corrupt`,
//! `test_fail`, `test_slow`) with the test's registry. Their channels are made on any core; they
//! are test code (the corrupting disk keeps its data behind a mutex), not data paths under test.
//!
//! - [`corrupt_disk`]: a RAM disk that flips one byte of every read covering a chosen byte
//!   position — drives verify miscompares.
//! - [`fail_disk`]: a null-like disk that fails every `every`-th I/O — drives continue-on-failure
//!   and failure counting.
//! - [`slow_disk`]: a null-like disk that holds each I/O for a few reactor turns (its own poller)
//!   and fails what it holds on hot removal (`abort_all`) — drives removal under load.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keel_bdev::{
    BackendChannel, Bdev, BdevBackend, BdevInfo, BdevParams, BdevRegistry, ChannelCx, ConfigCall, IoBox, IoCaps, IoOp,
    IoStatus, Submit,
};
use keel_reactor::{current, PollStatus, PollerHandle};

fn params(name: &str, num_blocks: u64, block_size: u32, module: &'static str) -> BdevParams {
    BdevParams {
        name: name.to_string(),
        uuid: None,
        product_name: "Test disk",
        module,
        block_size,
        num_blocks,
        caps: IoCaps::ALL,
        optimal_io_boundary_blocks: 0,
    }
}

// ---------------------------------------------------------------------------------------------

/// The backend of [`corrupt_disk`].
pub struct CorruptDisk {
    data: Arc<Mutex<Vec<u8>>>,
    block_size: u64,
    corrupt_byte: u64,
}

struct CorruptChannel {
    data: Arc<Mutex<Vec<u8>>>,
    block_size: u64,
    corrupt_byte: u64,
}

impl BackendChannel for CorruptChannel {
    fn submit(&self, io: IoBox) -> Submit {
        let pos = (io.offset_blocks * self.block_size) as usize;
        let len = (io.num_blocks * self.block_size) as usize;
        let mut data = self.data.lock().unwrap();
        match io.op {
            IoOp::Write => {
                let mut at = pos;
                for v in &io.iovs {
                    let n = (v.len_bytes as usize).min(pos + len - at);
                    let b = v.buf.bytes();
                    data[at..at + n].copy_from_slice(&b[v.offset_bytes as usize..v.offset_bytes as usize + n]);
                    at += n;
                }
            }
            IoOp::Read => {
                let mut at = pos;
                for v in &io.iovs {
                    let n = (v.len_bytes as usize).min(pos + len - at);
                    let mut b = v.buf.bytes_mut();
                    let start = v.offset_bytes as usize;
                    b[start..start + n].copy_from_slice(&data[at..at + n]);
                    let c = self.corrupt_byte as usize;
                    if (at..at + n).contains(&c) {
                        b[start + c - at] ^= 0x40;
                    }
                    at += n;
                }
            }
            _ => {}
        }
        drop(data);
        io.complete(IoStatus::Success);
        Submit::Accepted
    }
}

impl BdevBackend for CorruptDisk {
    fn create_channel(&self, _cx: &ChannelCx) -> Box<dyn BackendChannel> {
        Box::new(CorruptChannel {
            data: self.data.clone(),
            block_size: self.block_size,
            corrupt_byte: self.corrupt_byte,
        })
    }
    fn config(&self, _info: &BdevInfo) -> Option<ConfigCall> {
        None
    }
}

/// Registers a RAM disk whose reads come back with the byte at `corrupt_byte` flipped.
pub fn corrupt_disk(reg: &BdevRegistry, name: &str, num_blocks: u64, block_size: u32, corrupt_byte: u64) -> Arc<Bdev> {
    let size = (num_blocks * block_size as u64) as usize;
    reg.register(
        params(name, num_blocks, block_size, "test_corrupt"),
        Arc::new(CorruptDisk {
            data: Arc::new(Mutex::new(vec![0; size])),
            block_size: block_size as u64,
            corrupt_byte,
        }),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------

/// The backend of [`fail_disk`].
pub struct FailDisk {
    every: u64,
    count: Arc<AtomicU64>,
}

struct FailChannel {
    every: u64,
    count: Arc<AtomicU64>,
}

impl BackendChannel for FailChannel {
    fn submit(&self, io: IoBox) -> Submit {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        io.complete(if n.is_multiple_of(self.every) {
            IoStatus::Failed
        } else {
            IoStatus::Success
        });
        Submit::Accepted
    }
}

impl BdevBackend for FailDisk {
    fn create_channel(&self, _cx: &ChannelCx) -> Box<dyn BackendChannel> {
        Box::new(FailChannel {
            every: self.every,
            count: self.count.clone(),
        })
    }
    fn config(&self, _info: &BdevInfo) -> Option<ConfigCall> {
        None
    }
}

/// Registers a disk that fails every `every`-th I/O (counted over all cores).
pub fn fail_disk(reg: &BdevRegistry, name: &str, num_blocks: u64, block_size: u32, every: u64) -> Arc<Bdev> {
    reg.register(
        params(name, num_blocks, block_size, "test_fail"),
        Arc::new(FailDisk {
            every,
            count: Arc::new(AtomicU64::new(0)),
        }),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------

type Held = Rc<RefCell<VecDeque<(u64, IoBox)>>>;

/// The backend of [`slow_disk`].
pub struct SlowDisk {
    hold_turns: u64,
}

struct SlowChannel {
    held: Held,
    turn: Rc<Cell<u64>>,
    hold_turns: u64,
    _poller: PollerHandle,
}

impl BackendChannel for SlowChannel {
    fn submit(&self, io: IoBox) -> Submit {
        self.held
            .borrow_mut()
            .push_back((self.turn.get() + self.hold_turns, io));
        Submit::Accepted
    }

    fn abort_all(&self) {
        let all: Vec<(u64, IoBox)> = self.held.borrow_mut().drain(..).collect();
        for (_, io) in all {
            io.complete(IoStatus::Aborted);
        }
    }
}

impl BdevBackend for SlowDisk {
    fn create_channel(&self, _cx: &ChannelCx) -> Box<dyn BackendChannel> {
        let held: Held = Rc::default();
        let turn = Rc::new(Cell::new(0u64));
        let (h2, t2) = (held.clone(), turn.clone());
        let poller = current().register_poller("slow_disk", move || {
            t2.set(t2.get() + 1);
            let mut did = false;
            loop {
                let due = matches!(h2.borrow().front(), Some((d, _)) if *d <= t2.get());
                if !due {
                    break;
                }
                let (_, io) = h2.borrow_mut().pop_front().expect("front exists");
                io.complete(IoStatus::Success);
                did = true;
            }
            PollStatus::from_work(did)
        });
        Box::new(SlowChannel {
            held,
            turn,
            hold_turns: self.hold_turns,
            _poller: poller,
        })
    }
    fn config(&self, _info: &BdevInfo) -> Option<ConfigCall> {
        None
    }
}

/// Registers a disk that completes each I/O `hold_turns` reactor turns after it was submitted.
pub fn slow_disk(reg: &BdevRegistry, name: &str, num_blocks: u64, block_size: u32, hold_turns: u64) -> Arc<Bdev> {
    reg.register(
        params(name, num_blocks, block_size, "test_slow"),
        Arc::new(SlowDisk { hold_turns }),
    )
    .unwrap()
}
