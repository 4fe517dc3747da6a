//! The rig the tests of Keel's crates share (feature `testing`, enabled by dev-dependencies
//! only). Test code: it allocates freely, blocks the calling thread while it turns the reactors,
//! and panics with a message naming what went wrong instead of returning errors.
//!
//! - [`BdevRig`]: a deterministic single-thread reactor driver ([`TestDriver`]) and a bdev
//!   registry over its cores, with blocking helpers around them: create malloc/null bdevs, run an
//!   asynchronous control operation to its answer ([`BdevRig::call`]), turn until a condition
//!   holds, one raw request on any bdev ([`BdevRig::io`], [`BdevRig::read`],
//!   [`BdevRig::write`]). A layer's own rig (dm's and md's `tests/common`) holds a `BdevRig`
//!   next to the layer's registry and derefs to it, so its tests reach `r.d`, `r.reg` and these
//!   helpers directly.
//! - [`Client`]: a descriptor, channel, request pool and completion queue of one bdev on one
//!   core, for tests that keep several requests in flight and look at each completion.
//! - [`disks`]: fault-injecting test bdevs (corrupted reads, every n-th I/O failed, I/O held for
//!   a number of reactor turns).
//! - [`buf_from_fn`] and [`xorshift_bytes`]: test data.
//!
//! It lives in keel-load rather than in keel-testkit because it is built on keel-bdev, and
//! keel-bdev's own tests use keel-testkit: a testkit that linked keel-bdev would give those tests
//! two copies of every bdev type.

pub mod disks;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_bdev::modules::{malloc, null};
use keel_bdev::{
    BdevRegistry, Channel, CompletionQueue, Descriptor, DmaBuf, IoOp, IoPool, IoRequest, IoStatus, IoVec, Submit,
};
use keel_reactor::{CoreId, TestDriver};

/// The core the rig runs control operations and raw I/O on.
pub const MAIN: CoreId = CoreId(0);

/// How long [`BdevRig::call`] waits for an operation's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one raw request ([`BdevRig::io`]) may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer callback a [`BdevRig::call`] hands to the operation it starts.
pub type Reply<T> = Box<dyn FnOnce(T) + Send>;

/// Reactors (a [`TestDriver`], turned by the test's thread) and a bdev registry over them.
pub struct BdevRig {
    pub d: TestDriver,
    pub reg: Arc<BdevRegistry>,
}

impl BdevRig {
    /// A driver with `cores` reactors and an empty registry.
    pub fn new(cores: u32) -> BdevRig {
        let d = TestDriver::new(cores);
        let reg = BdevRegistry::new(d.cores());
        BdevRig { d, reg }
    }

    /// Creates a malloc bdev (`blocks` blocks of `bs` bytes).
    pub fn malloc(&self, name: &str, blocks: u64, bs: u32) {
        malloc::create(&self.reg, &malloc::MallocOpts::new(name, blocks, bs)).unwrap();
    }

    /// Creates a null bdev (`blocks` blocks of `bs` bytes).
    pub fn null(&self, name: &str, blocks: u64, bs: u32) {
        null::create(&self.reg, &null::NullOpts::new(name, blocks, bs)).unwrap();
    }

    /// Runs `start` on `core` with a [`Reply`] and returns the receiver of its answer without
    /// waiting (turn the reactors, then [`BdevRig::wait_reply`] or `try_recv`).
    pub fn start_call<T: Send + 'static>(&self, core: CoreId, start: impl FnOnce(Reply<T>)) -> mpsc::Receiver<T> {
        let (tx, rx) = mpsc::channel();
        self.d.enter(core, || {
            start(Box::new(move |r| {
                let _ = tx.send(r);
            }))
        });
        rx
    }

    /// Turns the reactors until `rx` has an answer; panics with "`what` did not finish" after
    /// 10 s.
    pub fn wait_reply<T>(&self, rx: &mpsc::Receiver<T>, what: &str) -> T {
        let until = Instant::now() + CALL_TIMEOUT;
        loop {
            if let Ok(r) = rx.try_recv() {
                return r;
            }
            assert!(Instant::now() < until, "{what} did not finish");
            self.d.turn();
        }
    }

    /// Runs an asynchronous operation on `core` and turns the reactors until it answered
    /// ([`BdevRig::start_call`] then [`BdevRig::wait_reply`]).
    pub fn call<T: Send + 'static>(&self, core: CoreId, what: &str, start: impl FnOnce(Reply<T>)) -> T {
        let rx = self.start_call(core, start);
        self.wait_reply(&rx, what)
    }

    /// Turns the reactors (100 turns at a time) until `cond` holds; panics with "timed out
    /// waiting for `what`" after `secs` seconds.
    pub fn turn_until(&self, secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            for _ in 0..100 {
                self.d.turn();
            }
        }
    }

    /// Turns the reactors for `ms` milliseconds of wall time.
    pub fn run_for_ms(&self, ms: u64) {
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until {
            self.d.turn();
        }
    }

    /// One request of `blocks` blocks at `offset` on bdev `name` over `buf`, on [`MAIN`] through
    /// a descriptor opened for it (writable unless `op` is a read) and closed after; its status.
    pub fn io(&self, name: &str, op: IoOp, offset: u64, blocks: u64, buf: &DmaBuf) -> IoStatus {
        let writable = op != IoOp::Read;
        let (ch, desc) = self.d.enter(MAIN, || {
            let desc = self.reg.open(name, writable, |_| {}).unwrap();
            (desc.channel(), desc)
        });
        let cq = CompletionQueue::with_capacity(1);
        let mut io = IoRequest::new_boxed();
        io.iovs.push(IoVec::whole(buf.clone()));
        io.prepare(op, offset, blocks);
        self.d
            .enter(MAIN, || assert!(matches!(ch.submit(io, &cq), Submit::Accepted)));
        let until = Instant::now() + IO_TIMEOUT;
        let status = loop {
            if let Some(io) = cq.pop() {
                break io.status();
            }
            assert!(Instant::now() < until, "I/O on {name} did not complete");
            self.d.turn();
        };
        self.d.enter(MAIN, || {
            drop(ch);
            drop(desc);
        });
        status
    }

    /// Reads `blocks` blocks of bdev `name` at `offset` (read-only descriptor, [`MAIN`]); panics
    /// unless the read succeeds.
    pub fn read(&self, name: &str, offset: u64, blocks: u64) -> Vec<u8> {
        let bs = self.block_size(name);
        let buf = DmaBuf::new((blocks * bs) as usize);
        assert_eq!(
            self.io(name, IoOp::Read, offset, blocks, &buf),
            IoStatus::Success,
            "read {name}"
        );
        let v = buf.bytes().to_vec();
        v
    }

    /// Writes `data` (whole blocks) to bdev `name` at block `offset` ([`MAIN`]); its status.
    pub fn write(&self, name: &str, offset: u64, data: &[u8]) -> IoStatus {
        let bs = self.block_size(name);
        let buf = DmaBuf::new(data.len());
        buf.bytes_mut().copy_from_slice(data);
        self.io(name, IoOp::Write, offset, data.len() as u64 / bs, &buf)
    }

    /// Bytes of `name` from byte `at`, `len` long (reads the whole blocks around them).
    pub fn read_bytes(&self, name: &str, at: u64, len: u64) -> Vec<u8> {
        let bs = self.block_size(name);
        let first = at / bs;
        let last = (at + len).div_ceil(bs);
        let v = self.read(name, first, last - first);
        let off = (at - first * bs) as usize;
        v[off..off + len as usize].to_vec()
    }

    /// A client of bdev `name` on `core` (writable descriptor) with `depth` requests.
    pub fn client(&self, name: &str, core: CoreId, depth: usize) -> Client {
        self.d.enter(core, || {
            let desc = self.reg.open(name, true, |_| {}).unwrap();
            Client {
                ch: desc.channel(),
                _desc: desc,
                cq: CompletionQueue::with_capacity(depth),
                pool: IoPool::new(depth),
                core,
                block_size: self.block_size(name),
            }
        })
    }

    fn block_size(&self, name: &str) -> u64 {
        self.reg
            .get(name)
            .unwrap_or_else(|| panic!("no bdev {name}"))
            .info()
            .block_size as u64
    }
}

/// One bdev as seen from one core: a writable descriptor, its channel, a request pool and a
/// completion queue. Made by [`BdevRig::client`]; submits on its core (entered through the rig)
/// and collects completions by tag. Close it with [`Client::close`] so the channel and
/// descriptor drop on their core.
pub struct Client {
    pub ch: Channel,
    _desc: Descriptor,
    pub cq: CompletionQueue,
    pub pool: IoPool,
    pub core: CoreId,
    pub block_size: u64,
}

impl Client {
    /// Submits one request over `buf` (the whole buffer as the scatter list), tagged `tag`.
    /// `false` = the bdev handed it back (requeue).
    pub fn start(&mut self, rig: &BdevRig, op: IoOp, offset: u64, blocks: u64, buf: Option<&DmaBuf>, tag: u64) -> bool {
        let mut io = self.pool.get().expect("free request");
        io.iovs.clear();
        if let Some(b) = buf {
            io.iovs.push(IoVec::whole(b.clone()));
        }
        io.prepare(op, offset, blocks);
        io.tag = tag;
        let r = rig.d.enter(self.core, || self.ch.submit(io, &self.cq));
        match r {
            Submit::Accepted => true,
            Submit::Requeue(io) => {
                self.pool.put(io);
                false
            }
        }
    }

    /// Submits with a scatter list of several windows.
    pub fn start_sg(&mut self, rig: &BdevRig, op: IoOp, offset: u64, blocks: u64, iovs: Vec<IoVec>, tag: u64) -> bool {
        let mut io = self.pool.get().expect("free request");
        io.iovs.clear();
        for v in iovs {
            io.iovs.push(v);
        }
        io.prepare(op, offset, blocks);
        io.tag = tag;
        let r = rig.d.enter(self.core, || self.ch.submit(io, &self.cq));
        match r {
            Submit::Accepted => true,
            Submit::Requeue(io) => {
                self.pool.put(io);
                false
            }
        }
    }

    /// Completions collected now, as (tag, status) (no turning).
    pub fn poll(&mut self) -> Vec<(u64, IoStatus)> {
        let mut out = Vec::new();
        while let Some(mut io) = self.cq.pop() {
            out.push((io.tag, io.status()));
            io.iovs.clear();
            self.pool.put(io);
        }
        out
    }

    /// Turns the reactors until `n` completions arrived (panics after `timeout`).
    pub fn wait(&mut self, rig: &BdevRig, n: usize, timeout: Duration) -> Vec<(u64, IoStatus)> {
        let until = Instant::now() + timeout;
        let mut out = self.poll();
        while out.len() < n {
            assert!(Instant::now() < until, "only {} of {n} completions arrived", out.len());
            rig.d.turn();
            out.extend(self.poll());
        }
        out
    }

    /// One request, waited for; its status.
    pub fn run(&mut self, rig: &BdevRig, op: IoOp, offset: u64, blocks: u64, buf: &DmaBuf) -> IoStatus {
        assert!(self.start(rig, op, offset, blocks, Some(buf), 1), "requeued");
        self.wait(rig, 1, Duration::from_secs(10))[0].1
    }

    /// One request without data (flush, unmap, reset, write_zeroes).
    pub fn run_nodata(&mut self, rig: &BdevRig, op: IoOp, offset: u64, blocks: u64) -> IoStatus {
        assert!(self.start(rig, op, offset, blocks, None, 1), "requeued");
        self.wait(rig, 1, Duration::from_secs(10))[0].1
    }

    /// Drops the channel and descriptor on their core.
    pub fn close(self, rig: &BdevRig) {
        let core = self.core;
        rig.d.enter(core, move || drop(self));
    }
}

/// A buffer whose byte `i` is `f(i)`.
pub fn buf_from_fn(len: usize, f: impl Fn(usize) -> u8) -> DmaBuf {
    let b = DmaBuf::new(len);
    for (i, x) in b.bytes_mut().iter_mut().enumerate() {
        *x = f(i);
    }
    b
}

/// `len` deterministic pseudo-random bytes (xorshift64 seeded from `seed`): a position-dependent
/// pattern, different for every seed.
pub fn xorshift_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
