//! Shared harness of the md scenario tests: a [`Rig`] (deterministic reactors, a bdev registry,
//! its md registry) that runs md's asynchronous operations to completion, and raw block I/O on
//! any bdev. Test code: it allocates freely.
#![allow(dead_code)]

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_bdev::modules::malloc;
use keel_bdev::{BdevRegistry, CompletionQueue, DmaBuf, IoOp, IoRequest, IoStatus, IoVec, Submit};
use keel_md::{CreateOpts, MdError, MdRegistry};
use keel_reactor::{CoreId, TestDriver};

pub const MAIN: CoreId = CoreId(0);

pub struct Rig {
    pub d: TestDriver,
    pub reg: Arc<BdevRegistry>,
    pub md: Arc<MdRegistry>,
}

impl Rig {
    pub fn new(cores: u32) -> Rig {
        let d = TestDriver::new(cores);
        let reg = BdevRegistry::new(d.cores());
        let md = MdRegistry::of(&reg);
        Rig { d, reg, md }
    }

    pub fn malloc(&self, name: &str, blocks: u64, bs: u32) {
        malloc::create(&self.reg, &malloc::MallocOpts::new(name, blocks, bs)).unwrap();
    }

    fn wait<T>(&self, rx: mpsc::Receiver<T>) -> T {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = rx.try_recv() {
                return r;
            }
            assert!(Instant::now() < until, "md operation did not finish");
            self.d.turn();
        }
    }

    /// `md_assemble` on the main core, run to its answer (the array's name).
    pub fn assemble(&self, opts: keel_md::AssembleOpts) -> Result<String, MdError> {
        let (tx, rx) = mpsc::channel();
        self.d.enter(MAIN, || {
            self.md.assemble(opts, move |r| {
                let _ = tx.send(r);
            })
        });
        self.wait(rx)
    }

    /// `md_add` on the main core, run to its answer.
    pub fn add(&self, name: &str, bdev: &str) -> Result<(), MdError> {
        let (tx, rx) = mpsc::channel();
        self.d.enter(MAIN, || {
            self.md.add(name, bdev, move |r| {
                let _ = tx.send(r);
            })
        });
        self.wait(rx)
    }

    /// The v1.2 superblock on bdev `member` (4 KiB in).
    pub fn superblock(&self, member: &str) -> keel_md::superblock::Superblock {
        use keel_md::superblock::{Superblock, V1_2_SUPER_OFFSET_SECTORS};
        Superblock::decode(&self.read_bytes(member, 4096, 4096), V1_2_SUPER_OFFSET_SECTORS).unwrap()
    }

    pub fn create(&self, opts: CreateOpts) -> Result<(), MdError> {
        let (tx, rx) = mpsc::channel();
        self.d.enter(MAIN, || {
            self.md.create(opts, move |r| {
                let _ = tx.send(r);
            })
        });
        self.wait(rx)
    }

    pub fn create_simple(
        &self,
        name: &str,
        level: &str,
        members: &[&str],
        chunk_kb: Option<u32>,
    ) -> Result<(), MdError> {
        self.create(CreateOpts {
            name: name.into(),
            level: level.into(),
            members: members.iter().map(|s| s.to_string()).collect(),
            chunk_kb,
            assume_clean: true,
            ..Default::default()
        })
    }

    pub fn stop(&self, name: &str) -> Result<(), MdError> {
        let (tx, rx) = mpsc::channel();
        let n = name.to_string();
        self.d.enter(MAIN, || {
            self.md.stop(&n, move |r| {
                let _ = tx.send(r);
            })
        });
        self.wait(rx)
    }

    /// Turns the reactors until `cond` holds (panics after `secs` seconds).
    pub fn wait_until(&self, secs: u64, what: &str, mut cond: impl FnMut(&Rig) -> bool) {
        let until = Instant::now() + Duration::from_secs(secs);
        while !cond(self) {
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

    /// The array `name` as md_get_arrays shows it.
    pub fn array(&self, name: &str) -> keel_md::ArrayInfo {
        self.md.arrays(Some(name)).unwrap().remove(0)
    }

    /// One request of `blocks` blocks at `offset` on bdev `name` (core 0) over `buf`.
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
        let until = Instant::now() + Duration::from_secs(5);
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

    /// Reads `blocks` blocks of bdev `name` at `offset` (read-only descriptor, core 0).
    pub fn read(&self, name: &str, offset: u64, blocks: u64) -> Vec<u8> {
        let bs = self.reg.get(name).unwrap().info().block_size as u64;
        let buf = DmaBuf::new((blocks * bs) as usize);
        assert_eq!(
            self.io(name, IoOp::Read, offset, blocks, &buf),
            IoStatus::Success,
            "read {name}"
        );
        let v = buf.bytes().to_vec();
        v
    }

    /// Writes `data` to bdev `name` at block `offset` (core 0).
    pub fn write(&self, name: &str, offset: u64, data: &[u8]) -> IoStatus {
        let bs = self.reg.get(name).unwrap().info().block_size as u64;
        let buf = DmaBuf::new(data.len());
        buf.bytes_mut().copy_from_slice(data);
        self.io(name, IoOp::Write, offset, data.len() as u64 / bs, &buf)
    }

    /// Bytes of `name` from byte `at`, `len` long (reads whole blocks).
    pub fn read_bytes(&self, name: &str, at: u64, len: u64) -> Vec<u8> {
        let bs = self.reg.get(name).unwrap().info().block_size as u64;
        let first = at / bs;
        let last = (at + len).div_ceil(bs);
        let v = self.read(name, first, last - first);
        let off = (at - first * bs) as usize;
        v[off..off + len as usize].to_vec()
    }
}

/// A deterministic, position-dependent pattern: byte i of the array is `f(seed, i)`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
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
