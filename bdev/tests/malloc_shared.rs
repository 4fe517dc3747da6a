//! Two cores write and read the same malloc blocks at the same time, on real reactor threads.
//!
//! Layout (4 KiB blocks): blocks `[0, 48)` start with pattern `P0`. Core A writes blocks
//! `[16, 28)`, core B writes `[20, 32)` and now and then zeroes `[24, 26)`, each alternating
//! between two patterns of its own, so `[20, 28)` is written by both at once. After every write
//! each core reads `[12, 36)` back — the shared window and four guard blocks on either side —
//! through a two-segment scatter list with odd segment sizes and an unaligned second buffer (the
//! copy kernels' tails and misaligned paths), and checks:
//!
//! * every byte outside the written blocks is still exactly `P0` (nothing outside a write ever
//!   changes);
//! * every byte inside is one of the values some writer may have put there (a mix of racing
//!   writes is allowed, as on a real disk; garbage is not);
//! * the blocks only this core writes hold exactly what it wrote last (its completed write is
//!   visible to its next read).
//!
//! At the end the whole of `[0, 48)` and a sample of never-written blocks are checked from a
//! third request. Run on a small disk (cached stores) and on a disk larger than any last-level
//! cache (non-temporal stores).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_bdev::modules::malloc;
use keel_bdev::{BdevRegistry, CompletionQueue, DmaBuf, IoBox, IoOp, IoRequest, IoStatus, IoVec, Submit};
use keel_reactor::{CoreId, CoreMask, PollStatus, PollerHandle, Runtime};

const BS: u64 = 4096;
const FILLED: u64 = 48;
const WINDOW: (u64, u64) = (16, 32);
const READ: (u64, u64) = (12, 36);
const ZEROED: (u64, u64) = (24, 26);
const RUN: Duration = Duration::from_millis(1500);

/// The byte of pattern `salt` at disk byte `pos`.
fn pat(pos: u64, salt: u64) -> u8 {
    let mut x = pos.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt.wrapping_mul(0xd6e8_feb8_6659_fd93);
    x ^= x >> 29;
    (x.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 56) as u8
}

const P0: u64 = 1;

/// One writer: its blocks and its two patterns.
#[derive(Clone, Copy)]
struct Writer {
    blocks: (u64, u64),
    salts: [u64; 2],
    /// Blocks only this writer writes.
    own: (u64, u64),
    /// Zeroes `ZEROED` every this many writes (0 = never).
    zero_every: u64,
}

const A: Writer = Writer {
    blocks: (16, 28),
    salts: [10, 11],
    own: (16, 20),
    zero_every: 0,
};
const B: Writer = Writer {
    blocks: (20, 32),
    salts: [20, 21],
    own: (28, 32),
    zero_every: 7,
};

fn inside(b: u64, r: (u64, u64)) -> bool {
    b >= r.0 && b < r.1
}

/// Whether `v` may be found at disk byte `pos` while both writers run.
fn allowed(pos: u64, v: u8) -> bool {
    let b = pos / BS;
    if !inside(b, WINDOW) {
        return v == pat(pos, P0);
    }
    if v == pat(pos, P0) {
        return true;
    }
    [A, B]
        .iter()
        .any(|w| inside(b, w.blocks) && w.salts.iter().any(|&s| v == pat(pos, s)))
        || (inside(b, ZEROED) && v == 0)
}

/// Splits `len` bytes into a 1000-byte segment at the start of `b1` and the rest at byte 24 of
/// `b2`.
fn two_segments(b1: &DmaBuf, b2: &DmaBuf, len: u64) -> [IoVec; 2] {
    [
        IoVec {
            buf: b1.clone(),
            offset_bytes: 0,
            len_bytes: 1000,
        },
        IoVec {
            buf: b2.clone(),
            offset_bytes: 24,
            len_bytes: (len - 1000) as u32,
        },
    ]
}

/// Gathers the bytes of `iovs` (test code).
fn gather(iovs: &[IoVec]) -> Vec<u8> {
    let mut v = Vec::new();
    for s in iovs {
        v.extend_from_slice(&s.buf.bytes()[s.offset_bytes as usize..(s.offset_bytes + s.len_bytes) as usize]);
    }
    v
}

/// Scatters `data` into `iovs`.
fn scatter(iovs: &[IoVec], data: &[u8]) {
    let mut at = 0;
    for s in iovs {
        let n = s.len_bytes as usize;
        s.buf.bytes_mut()[s.offset_bytes as usize..s.offset_bytes as usize + n].copy_from_slice(&data[at..at + n]);
        at += n;
    }
}

/// What one core's loop reports.
#[derive(Debug)]
struct Outcome {
    rounds: u64,
    started: Instant,
    ended: Instant,
    error: Option<String>,
}

/// One core's loop as a poller: write (or zero), read back, check; until `RUN` passed.
struct Loop {
    w: Writer,
    ch: keel_bdev::Channel,
    cq: CompletionQueue,
    io: Option<IoBox>,
    bufs: (DmaBuf, DmaBuf),
    round: u64,
    /// The salt of this core's last completed write.
    last_salt: Option<u64>,
    reading: bool,
    started: Instant,
    done: Option<mpsc::Sender<Outcome>>,
}

impl Loop {
    fn submit_write(&mut self) {
        let mut io = self.io.take().expect("request at hand");
        io.iovs.clear();
        let w = self.w;
        if w.zero_every != 0 && self.round % w.zero_every == w.zero_every - 1 {
            io.prepare(IoOp::WriteZeroes, ZEROED.0, ZEROED.1 - ZEROED.0);
        } else {
            let salt = w.salts[(self.round % 2) as usize];
            let len = (w.blocks.1 - w.blocks.0) * BS;
            let iovs = two_segments(&self.bufs.0, &self.bufs.1, len);
            let base = w.blocks.0 * BS;
            let data: Vec<u8> = (0..len).map(|i| pat(base + i, salt)).collect();
            scatter(&iovs, &data);
            io.iovs.extend(iovs);
            io.prepare(IoOp::Write, w.blocks.0, w.blocks.1 - w.blocks.0);
        }
        self.reading = false;
        assert!(matches!(self.ch.submit(io, &self.cq), Submit::Accepted));
    }

    fn submit_read(&mut self) {
        let mut io = self.io.take().expect("request at hand");
        io.iovs.clear();
        io.iovs
            .extend(two_segments(&self.bufs.0, &self.bufs.1, (READ.1 - READ.0) * BS));
        io.prepare(IoOp::Read, READ.0, READ.1 - READ.0);
        self.reading = true;
        assert!(matches!(self.ch.submit(io, &self.cq), Submit::Accepted));
    }

    fn check_read(&self, io: &IoRequest) -> Result<(), String> {
        let data = gather(&io.iovs);
        let base = READ.0 * BS;
        for (i, &v) in data.iter().enumerate() {
            let pos = base + i as u64;
            if !allowed(pos, v) {
                return Err(format!(
                    "byte {pos} (block {}) is {v:#04x}: not a value any writer put there",
                    pos / BS
                ));
            }
            if let Some(salt) = self.last_salt {
                if inside(pos / BS, self.w.own) && v != pat(pos, salt) {
                    return Err(format!(
                        "byte {pos} of a block only this core writes is {v:#04x}, not its last write"
                    ));
                }
            }
        }
        Ok(())
    }

    fn poll(&mut self) -> PollStatus {
        let Some(io) = self.cq.pop() else {
            return PollStatus::Idle;
        };
        let mut error = (io.status() != IoStatus::Success).then(|| format!("{:?} failed: {:?}", io.op, io.status()));
        if error.is_none() && self.reading {
            error = self.check_read(&io).err();
        }
        if !self.reading && io.op == IoOp::Write {
            self.last_salt = Some(self.w.salts[(self.round % 2) as usize]);
        }
        self.io = Some(io);
        if self.reading {
            self.round += 1;
        }
        if error.is_some() || (self.reading && self.started.elapsed() >= RUN) {
            if let Some(tx) = self.done.take() {
                let _ = tx.send(Outcome {
                    rounds: self.round,
                    started: self.started,
                    ended: Instant::now(),
                    error,
                });
            }
            return PollStatus::Busy;
        }
        if self.reading {
            self.submit_write();
        } else {
            self.submit_read();
        }
        PollStatus::Busy
    }
}

/// Runs `f` on `core` and blocks the test thread until it sent its answer.
fn on_core<T: Send + 'static>(
    cores: &keel_reactor::Cores,
    core: CoreId,
    f: impl FnOnce(mpsc::Sender<T>) + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    cores.run_on(core, move || f(tx)).unwrap();
    rx.recv_timeout(Duration::from_secs(60)).expect("core answered")
}

/// One request start to finish on the current core, polling its queue (test helper; the
/// malloc bdev completes into the queue during submit).
fn one_io(ch: &keel_bdev::Channel, op: IoOp, offset: u64, blocks: u64, buf: &DmaBuf) -> IoStatus {
    let cq = CompletionQueue::with_capacity(1);
    let mut io = IoRequest::new_boxed();
    io.iovs.push(IoVec::whole(buf.clone()));
    io.prepare(op, offset, blocks);
    assert!(matches!(ch.submit(io, &cq), Submit::Accepted));
    cq.pop().expect("malloc completes inside submit").status()
}

fn two_cores_share_blocks(num_blocks: u64) {
    let mask = CoreMask::parse("0x3").unwrap();
    let rt = Runtime::start(&mask, false, || {}).unwrap();
    let cores = rt.cores();
    let reg = BdevRegistry::new(cores.clone());
    malloc::create(&reg, &malloc::MallocOpts::new("M", num_blocks, BS as u32)).unwrap();
    let desc = Arc::new(reg.open("M", true, |_| {}).unwrap());

    let d2 = desc.clone();
    let st = on_core(&cores, CoreId(0), move |tx| {
        let ch = d2.channel();
        let buf = DmaBuf::new((FILLED * BS) as usize);
        for (i, b) in buf.bytes_mut().iter_mut().enumerate() {
            *b = pat(i as u64, P0);
        }
        let _ = tx.send(one_io(&ch, IoOp::Write, 0, FILLED, &buf));
    });
    assert_eq!(st, IoStatus::Success);

    let (tx, rx) = mpsc::channel();
    for (core, w) in [(CoreId(0), A), (CoreId(1), B)] {
        let (d, tx) = (desc.clone(), tx.clone());
        cores
            .run_on(core, move || {
                let len = ((READ.1 - READ.0) * BS) as usize;
                let mut lp = Loop {
                    w,
                    ch: d.channel(),
                    cq: CompletionQueue::with_capacity(2),
                    io: Some(IoRequest::new_boxed()),
                    bufs: (DmaBuf::new(1000), DmaBuf::new(len + 24)),
                    round: 0,
                    last_salt: None,
                    reading: false,
                    started: Instant::now(),
                    done: Some(tx),
                };
                lp.submit_write();
                // The poller drops its own handle once it reported: that unregisters it, and
                // the reactor drops the loop (and its channel) on this core.
                let handle: Rc<RefCell<Option<PollerHandle>>> = Rc::default();
                let h2 = handle.clone();
                let poller = keel_reactor::current().register_poller("malloc_shared", move || {
                    let status = lp.poll();
                    if lp.done.is_none() {
                        h2.borrow_mut().take();
                    }
                    status
                });
                *handle.borrow_mut() = Some(poller);
            })
            .unwrap();
    }
    drop(tx);
    let outcomes: Vec<Outcome> = (0..2)
        .map(|_| rx.recv_timeout(Duration::from_secs(120)).expect("both cores report"))
        .collect();
    for o in &outcomes {
        assert_eq!(o.error, None, "{o:?}");
        assert!(o.rounds >= 5, "too few rounds to mean anything: {o:?}");
    }
    let (a, b) = (&outcomes[0], &outcomes[1]);
    assert!(
        a.started < b.ended && b.started < a.ended,
        "the two cores did not run at the same time: {outcomes:?}"
    );

    // Final state from a third request: guards and the rest of the filled range are P0, the
    // window holds allowed values, never-written blocks read as zeros.
    let d2 = desc.clone();
    let result = on_core(&cores, CoreId(1), move |tx| {
        let ch = d2.channel();
        let buf = DmaBuf::new((FILLED * BS) as usize);
        let mut r = match one_io(&ch, IoOp::Read, 0, FILLED, &buf) {
            IoStatus::Success => None,
            s => Some(format!("final read: {s:?}")),
        };
        if r.is_none() {
            r = buf
                .bytes()
                .iter()
                .enumerate()
                .find(|&(i, &v)| !allowed(i as u64, v))
                .map(|(i, v)| format!("byte {i} is {v:#04x} after the run"));
        }
        let tail = DmaBuf::new(BS as usize);
        for blk in [FILLED, FILLED + 1, num_blocks / 2, num_blocks - 1] {
            if r.is_none()
                && (one_io(&ch, IoOp::Read, blk, 1, &tail) != IoStatus::Success || tail.bytes().iter().any(|&b| b != 0))
            {
                r = Some(format!("never-written block {blk} does not read as zeros"));
            }
        }
        let _ = tx.send(r);
    });
    assert_eq!(result, None);
    drop(desc);
    cores.request_stop();
    rt.wait();
}

#[test]
fn two_cores_share_blocks_of_a_small_disk() {
    two_cores_share_blocks(256);
}

#[test]
fn two_cores_share_blocks_of_a_disk_larger_than_the_caches() {
    // 1 GiB: larger than any last-level cache, so writes take the streaming stores. Memory is
    // only used where written (a few MiB).
    two_cores_share_blocks((1 << 30) / BS);
}
