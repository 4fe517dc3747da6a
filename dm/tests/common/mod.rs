//! Shared harness of the dm scenario tests: a [`Rig`] (deterministic reactors, a bdev registry,
//! its dm registry) that runs dm's asynchronous operations to completion, and a [`Client`] that
//! submits I/O on one core and collects completions. Test code: it allocates freely.
#![allow(dead_code)]

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_bdev::modules::{malloc, null};
use keel_bdev::{BdevRegistry, Channel, CompletionQueue, DmaBuf, IoOp, IoPool, IoStatus, IoVec, Submit};
use keel_dm::{CreateOpts, DmError, DmRegistry};
use keel_reactor::{CoreId, TestDriver};

pub const MAIN: CoreId = CoreId(0);

pub struct Rig {
    pub d: TestDriver,
    pub reg: Arc<BdevRegistry>,
    pub dm: Arc<DmRegistry>,
}

type Reply<T> = Box<dyn FnOnce(Result<T, DmError>) + Send>;

impl Rig {
    pub fn new(cores: u32) -> Rig {
        let d = TestDriver::new(cores);
        let reg = BdevRegistry::new(d.cores());
        let dm = DmRegistry::of(&reg);
        Rig { d, reg, dm }
    }

    pub fn malloc(&self, name: &str, blocks: u64, bs: u32) {
        malloc::create(&self.reg, &malloc::MallocOpts::new(name, blocks, bs)).unwrap();
    }

    pub fn null(&self, name: &str, blocks: u64, bs: u32) {
        null::create(&self.reg, &null::NullOpts::new(name, blocks, bs)).unwrap();
    }

    /// Runs an asynchronous dm operation on the main core and turns the reactors until it
    /// answered.
    pub fn op<T: Send + 'static>(&self, f: impl FnOnce(&Arc<DmRegistry>, Reply<T>)) -> Result<T, DmError> {
        let (tx, rx) = mpsc::channel();
        self.d.enter(MAIN, || {
            f(
                &self.dm,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
        });
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = rx.try_recv() {
                return r;
            }
            assert!(Instant::now() < until, "dm operation did not finish");
            self.d.turn();
        }
    }

    /// Starts an operation without waiting; the receiver gets its answer.
    pub fn start_op<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Arc<DmRegistry>, Reply<T>),
    ) -> mpsc::Receiver<Result<T, DmError>> {
        let (tx, rx) = mpsc::channel();
        self.d.enter(MAIN, || {
            f(
                &self.dm,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
        });
        rx
    }

    pub fn create(&self, name: &str, table: Option<&str>) -> Result<(), DmError> {
        let opts = CreateOpts {
            name: name.into(),
            table: table.map(String::from),
            ..Default::default()
        };
        self.op(|dm, done| dm.create(opts, done))
    }

    pub fn create_with(&self, opts: CreateOpts) -> Result<(), DmError> {
        self.op(|dm, done| dm.create(opts, done))
    }

    pub fn load(&self, name: &str, table: &str) -> Result<(), DmError> {
        self.d.enter(MAIN, || self.dm.load(name, table, false))
    }

    pub fn suspend(&self, name: &str, noflush: bool) -> Result<(), DmError> {
        let n = name.to_string();
        self.op(|dm, done| dm.suspend(&n, noflush, done))
    }

    pub fn resume(&self, name: &str) -> Result<(), DmError> {
        let n = name.to_string();
        self.op(|dm, done| dm.resume(&n, done))
    }

    pub fn remove(&self, name: &str, force: bool) -> Result<(), DmError> {
        let n = name.to_string();
        self.op(|dm, done| dm.remove(&n, force, done))
    }

    pub fn rename(&self, name: &str, new_name: &str) -> Result<(), DmError> {
        let (n, m) = (name.to_string(), new_name.to_string());
        self.op(|dm, done| dm.rename(&n, &m, done))
    }

    /// A client of bdev `name` on `core` (writable), with `depth` requests.
    pub fn client(&self, name: &str, core: CoreId, depth: usize) -> Client {
        self.d.enter(core, || {
            let desc = self.reg.open(name, true, |_| {}).unwrap();
            Client {
                ch: desc.channel(),
                _desc: desc,
                cq: CompletionQueue::with_capacity(depth),
                pool: IoPool::new(depth),
                core,
                block_size: self.reg.get(name).unwrap().info().block_size as u64,
            }
        })
    }

    /// Reads `blocks` blocks of bdev `name` at `offset` (read-only descriptor, core 0).
    pub fn read_raw(&self, name: &str, offset: u64, blocks: u64) -> Vec<u8> {
        let bs = self.reg.get(name).unwrap().info().block_size as u64;
        let (ch, desc) = self.d.enter(MAIN, || {
            let desc = self.reg.open(name, false, |_| {}).unwrap();
            (desc.channel(), desc)
        });
        let buf = DmaBuf::new((blocks * bs) as usize);
        let cq = CompletionQueue::with_capacity(1);
        let mut io = keel_bdev::IoRequest::new_boxed();
        io.iovs.push(IoVec::whole(buf.clone()));
        io.prepare(IoOp::Read, offset, blocks);
        self.d
            .enter(MAIN, || assert!(matches!(ch.submit(io, &cq), Submit::Accepted)));
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(io) = cq.pop() {
                assert_eq!(io.status(), IoStatus::Success, "raw read of {name}");
                break;
            }
            assert!(Instant::now() < until, "raw read did not complete");
            self.d.turn();
        }
        self.d.enter(MAIN, || {
            drop(ch);
            drop(desc);
        });
        let v = buf.bytes().to_vec();
        v
    }

    /// Writes `data` to bdev `name` at block `offset` (core 0; the bdev must be writable by us).
    pub fn write_raw(&self, name: &str, offset: u64, data: &[u8]) {
        let mut c = self.client(name, MAIN, 1);
        let buf = DmaBuf::new(data.len());
        buf.bytes_mut().copy_from_slice(data);
        let n = data.len() as u64 / c.block_size;
        let st = c.run(self, IoOp::Write, offset, n, &buf);
        assert_eq!(st, IoStatus::Success);
        c.close(self);
    }
}

pub struct Client {
    pub ch: Channel,
    _desc: keel_bdev::Descriptor,
    pub cq: CompletionQueue,
    pub pool: IoPool,
    pub core: CoreId,
    pub block_size: u64,
}

impl Client {
    /// Submits one request over `buf` (whole buffer as the scatter list). `false` = requeued.
    pub fn start(&mut self, rig: &Rig, op: IoOp, offset: u64, blocks: u64, buf: Option<&DmaBuf>, tag: u64) -> bool {
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
    pub fn start_sg(&mut self, rig: &Rig, op: IoOp, offset: u64, blocks: u64, iovs: Vec<IoVec>, tag: u64) -> bool {
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

    /// Completions collected now (no turning).
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
    pub fn wait(&mut self, rig: &Rig, n: usize, timeout: Duration) -> Vec<(u64, IoStatus)> {
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
    pub fn run(&mut self, rig: &Rig, op: IoOp, offset: u64, blocks: u64, buf: &DmaBuf) -> IoStatus {
        assert!(self.start(rig, op, offset, blocks, Some(buf), 1), "requeued");
        self.wait(rig, 1, Duration::from_secs(10))[0].1
    }

    /// One request without data (flush, unmap, reset, write_zeroes).
    pub fn run_nodata(&mut self, rig: &Rig, op: IoOp, offset: u64, blocks: u64) -> IoStatus {
        assert!(self.start(rig, op, offset, blocks, None, 1), "requeued");
        self.wait(rig, 1, Duration::from_secs(10))[0].1
    }

    /// Drops the channel and descriptor on their core.
    pub fn close(self, rig: &Rig) {
        let core = self.core;
        rig.d.enter(core, move || drop(self));
    }
}

/// A buffer whose bytes are `f(i)`.
pub fn pattern(len: usize, f: impl Fn(usize) -> u8) -> DmaBuf {
    let b = DmaBuf::new(len);
    for (i, x) in b.bytes_mut().iter_mut().enumerate() {
        *x = f(i);
    }
    b
}
