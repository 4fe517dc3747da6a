//! The per-core data path of an md array (linear, raid0, raid1).
//!
//! # Shape
//!
//! The array bdev's backend channel on a core ([`MdChannel`]) owns, behind one `RefCell` only
//! its core touches: the members' [`Channel`]s on this core, a completion queue drained by one
//! poller, a [`ForwardCtx`] for in-place forwarding, and preallocated pools — child requests
//! (with a side array naming each child's parent), parent slots, a pending queue of parents that
//! waited for children and a retry queue of children a member handed back. The geometry
//! ([`Geometry`]) is immutable and shared by every core (`Arc`).
//!
//! # Hot path
//!
//! Linear and raid0: the array sector is mapped with [`crate::layout`]; when the whole request
//! stays on one member (inside one chunk for raid0) and that member has the array's block size,
//! the request itself is forwarded ([`Channel::forward`]): the original offset goes into the
//! layer word, `offset_blocks` becomes `data_offset + member sector`, a success goes straight up
//! without visiting this layer's poller. raid1 reads are forwarded the same way to one member,
//! round-robin over the members while the array is in sync, role 0 only while it is not (no
//! resync yet: only role 0's contents are known good).
//!
//! # Splitting and fan-out
//!
//! Anything else takes a parent slot: requests crossing a member or chunk boundary are cut
//! there, each piece sent as a child from the pool (its scatter list windows on the parent's
//! buffers: `DmaBuf` handle clones, no copies); raid1 writes, unmaps and write-zeroes, and flush
//! and reset on every level, fan out as one child per member. A parent completes when its last
//! child does, with the first failure seen (`Unsupported` from a member's flush or reset counts
//! as success: nothing to flush). `Submit::Requeue` goes up only when nothing was started (no
//! parent slot or no child); a parent that ran out of children mid-way waits in the pending
//! queue and continues as children come back.
//!
//! After the channel exists nothing here allocates or locks.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use keel_bdev::{
    BackendChannel, Channel, CompletionQueue, ForwardCtx, IoBox, IoOp, IoRequest, IoStatus, IoVec, SgList, Submit,
};
use keel_reactor::{current, PollStatus, PollerHandle};

use crate::layout::{Linear, Place, Raid0};

/// Child requests per channel.
const CHILDREN: usize = 256;
/// Split or fanned-out parents in flight per channel (beyond that: `Submit::Requeue`).
const PARENTS: usize = 128;
/// Initial capacity of the retry queue.
const QUEUE_CAPACITY: usize = 256;
/// Completion queue capacity before it first grows.
const CQ_CAPACITY: usize = 512;

/// How array sectors map to members.
#[derive(Debug)]
pub(crate) enum Mapping {
    Linear(Linear),
    Raid0(Raid0),
    /// Every member holds every sector.
    Raid1,
}

/// What every core needs to map I/O. Built by the control path at create; shared by `Arc`.
#[derive(Debug)]
pub(crate) struct Geometry {
    pub mapping: Mapping,
    /// Where data starts on every member, in 512-byte sectors.
    pub data_offset_sectors: u64,
    /// log2(array block size / 512).
    pub block_shift: u32,
    /// log2(member block size / 512), per member in role order.
    pub member_shifts: Vec<u32>,
    /// raid1: whether all members hold the same data (assume_clean, or resync done). Read on
    /// every raid1 read (relaxed atomic load), written by the control path.
    pub in_sync: AtomicBool,
}

impl Geometry {
    #[inline]
    fn map(&self, array_sector: u64) -> (Place, u64) {
        match &self.mapping {
            Mapping::Linear(l) => l.map(array_sector),
            Mapping::Raid0(r) => r.map(array_sector),
            Mapping::Raid1 => unreachable!("raid1 is not mapped by sector"),
        }
    }
}

/// What a parent slot is doing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Pieces at member/chunk boundaries; `next`/`end` are array sectors.
    Split,
    /// One child per member; `next`/`end` are member indices.
    Fanout,
}

struct ParentSlot {
    io: Option<IoBox>,
    kind: Kind,
    next: u64,
    end: u64,
    remaining: u32,
    status: IoStatus,
}

struct State {
    geo: Arc<Geometry>,
    members: Vec<Channel>,
    fwd: Rc<ForwardCtx>,
    children: Vec<IoBox>,
    /// Parent slot of each child, indexed by the child's tag.
    child_parent: Vec<u32>,
    parents: Vec<ParentSlot>,
    free_parents: Vec<u32>,
    pending: VecDeque<u32>,
    retry: VecDeque<(IoBox, u32)>,
    /// raid1 read round-robin cursor.
    rr: usize,
    /// Set by `abort_all` (the array bdev is being unregistered): new I/O fails.
    dead: bool,
}

/// Copies `len` bytes of `src`'s data starting at byte `off` into `dst` as windows.
#[inline]
fn slice_iovs(src: &SgList, mut off: u64, mut len: u64, dst: &mut SgList) {
    for v in src {
        if len == 0 {
            break;
        }
        let vlen = v.len_bytes as u64;
        if off >= vlen {
            off -= vlen;
            continue;
        }
        let take = (vlen - off).min(len);
        dst.push(IoVec {
            buf: v.buf.clone(),
            offset_bytes: v.offset_bytes + off as u32,
            len_bytes: take as u32,
        });
        len -= take;
        off = 0;
    }
}

impl State {
    fn new(geo: Arc<Geometry>, members: Vec<Channel>, fwd: Rc<ForwardCtx>) -> State {
        State {
            geo,
            members,
            fwd,
            children: (0..CHILDREN)
                .map(|i| {
                    let mut io = IoRequest::new_boxed();
                    io.tag = i as u64;
                    io
                })
                .collect(),
            child_parent: vec![0; CHILDREN],
            parents: (0..PARENTS)
                .map(|_| ParentSlot {
                    io: None,
                    kind: Kind::Split,
                    next: 0,
                    end: 0,
                    remaining: 0,
                    status: IoStatus::Success,
                })
                .collect(),
            free_parents: (0..PARENTS as u32).rev().collect(),
            pending: VecDeque::with_capacity(PARENTS),
            retry: VecDeque::with_capacity(QUEUE_CAPACITY),
            rr: 0,
            dead: false,
        }
    }

    /// Entry of every request (range and op already validated by the bdev layer).
    #[inline]
    fn submit(&mut self, io: IoBox, cq: &CompletionQueue) -> Submit {
        if self.dead {
            io.complete(IoStatus::Aborted);
            return Submit::Accepted;
        }
        let n = self.members.len() as u64;
        match io.op {
            IoOp::Flush | IoOp::Reset => self.accept(io, Kind::Fanout, 0, n, cq),
            op => match self.geo.mapping {
                Mapping::Raid1 => {
                    if op == IoOp::Read {
                        let m = if self.geo.in_sync.load(Ordering::Relaxed) {
                            self.rr = (self.rr + 1) % self.members.len();
                            self.rr
                        } else {
                            0
                        };
                        let sector = io.offset_blocks << self.geo.block_shift;
                        self.forward(io, m, sector, cq)
                    } else {
                        self.accept(io, Kind::Fanout, 0, n, cq)
                    }
                }
                _ => {
                    let bs = self.geo.block_shift;
                    let start = io.offset_blocks << bs;
                    let len = io.num_blocks << bs;
                    let (place, left) = self.geo.map(start);
                    if len <= left {
                        self.forward(io, place.member.0 as usize, place.sector, cq)
                    } else {
                        self.accept(io, Kind::Split, start, start + len, cq)
                    }
                }
            },
        }
    }

    /// Sends the whole request to member `m` at `member_sector` (relative to data_offset): in
    /// place when the member has the array's block size, as one child otherwise.
    #[inline]
    fn forward(&mut self, mut io: IoBox, m: usize, member_sector: u64, cq: &CompletionQueue) -> Submit {
        let g = &*self.geo;
        let shift = g.member_shifts[m];
        if shift != g.block_shift {
            // Different block size: a child carries the rescaled range (a one-piece split).
            return match g.mapping {
                Mapping::Raid1 => self.accept(io, Kind::Fanout, m as u64, m as u64 + 1, cq),
                _ => {
                    let start = io.offset_blocks << g.block_shift;
                    let len = io.num_blocks << g.block_shift;
                    self.accept(io, Kind::Split, start, start + len, cq)
                }
            };
        }
        let orig = io.offset_blocks;
        *io.layer_word() = orig;
        io.offset_blocks = (g.data_offset_sectors + member_sector) >> shift;
        match self.members[m].forward(io, &self.fwd, orig) {
            Submit::Accepted => Submit::Accepted,
            Submit::Requeue(mut io) => {
                io.offset_blocks = orig;
                Submit::Requeue(io)
            }
        }
    }

    /// Takes a parent slot and issues children while they last.
    fn accept(&mut self, io: IoBox, kind: Kind, next: u64, end: u64, cq: &CompletionQueue) -> Submit {
        if self.children.is_empty() {
            return Submit::Requeue(io);
        }
        let Some(pidx) = self.free_parents.pop() else {
            return Submit::Requeue(io);
        };
        let p = &mut self.parents[pidx as usize];
        p.io = Some(io);
        p.kind = kind;
        p.next = next;
        p.end = end;
        p.remaining = 0;
        p.status = IoStatus::Success;
        self.fwd.begin();
        if self.issue(pidx, cq) {
            if self.parents[pidx as usize].remaining == 0 {
                self.finish(pidx);
            }
        } else {
            self.pending.push_back(pidx);
        }
        Submit::Accepted
    }

    /// Issues the parent's remaining children. Returns whether all are issued.
    fn issue(&mut self, pidx: u32, cq: &CompletionQueue) -> bool {
        let State {
            geo,
            members,
            children,
            child_parent,
            parents,
            retry,
            ..
        } = self;
        let g = &**geo;
        let p = &mut parents[pidx as usize];
        let pio = p.io.as_ref().expect("parent present");
        let op = pio.op;
        let base_sector = pio.offset_blocks << g.block_shift;
        let len_sectors = pio.num_blocks << g.block_shift;
        while p.next < p.end {
            let Some(mut child) = children.pop() else {
                return false;
            };
            let (m, n) = match p.kind {
                Kind::Split => {
                    let (place, left) = g.map(p.next);
                    let m = place.member.0 as usize;
                    let n = left.min(p.end - p.next);
                    let shift = g.member_shifts[m];
                    child.prepare(op, (g.data_offset_sectors + place.sector) >> shift, n >> shift);
                    child.iovs.clear();
                    if op.has_data() {
                        slice_iovs(&pio.iovs, (p.next - base_sector) << 9, n << 9, &mut child.iovs);
                    }
                    (m, n)
                }
                Kind::Fanout => {
                    let m = p.next as usize;
                    let shift = g.member_shifts[m];
                    child.iovs.clear();
                    if op.needs_range() {
                        child.prepare(op, (g.data_offset_sectors + base_sector) >> shift, len_sectors >> shift);
                        if op.has_data() {
                            slice_iovs(&pio.iovs, 0, len_sectors << 9, &mut child.iovs);
                        }
                    } else {
                        child.prepare(op, 0, 0);
                    }
                    (m, 1)
                }
            };
            child_parent[child.tag as usize] = pidx;
            p.remaining += 1;
            p.next += n;
            if let Submit::Requeue(c) = members[m].submit(child, cq) {
                retry.push_back((c, m as u32));
            }
        }
        true
    }

    /// A parent's last child is done: complete it upward.
    fn finish(&mut self, pidx: u32) {
        let p = &mut self.parents[pidx as usize];
        let io = p.io.take().expect("parent present");
        let status = p.status;
        self.free_parents.push(pidx);
        self.fwd.end();
        io.complete(status);
    }

    /// One completion from a member.
    #[inline]
    fn on_complete(&mut self, mut io: IoBox) {
        if io.depth() == 0 {
            return self.child_done(io);
        }
        // A forwarded request that failed (forwarded successes never come here).
        io.offset_blocks = *io.layer_word();
        self.fwd.end();
        let status = io.status();
        io.complete(if status == IoStatus::Removed {
            IoStatus::Failed
        } else {
            status
        });
    }

    fn child_done(&mut self, mut io: IoBox) {
        let pidx = self.child_parent[io.tag as usize];
        let mut status = io.status();
        if status == IoStatus::Unsupported && matches!(io.op, IoOp::Flush | IoOp::Reset) {
            status = IoStatus::Success;
        }
        io.iovs.clear();
        self.children.push(io);
        let p = &mut self.parents[pidx as usize];
        p.remaining -= 1;
        if status != IoStatus::Success && p.status == IoStatus::Success {
            p.status = if status == IoStatus::Removed {
                IoStatus::Failed
            } else {
                status
            };
        }
        if p.remaining == 0 && p.next == p.end {
            self.finish(pidx);
        }
    }

    /// Resubmits children a member handed back.
    fn run_retry(&mut self, cq: &CompletionQueue) -> usize {
        let mut n = 0;
        while let Some((io, m)) = self.retry.pop_front() {
            match self.members[m as usize].submit(io, cq) {
                Submit::Accepted => n += 1,
                Submit::Requeue(io) => {
                    self.retry.push_front((io, m));
                    break;
                }
            }
        }
        n
    }

    /// Continues parents that waited for children.
    fn run_pending(&mut self, cq: &CompletionQueue) -> usize {
        let mut n = 0;
        while let Some(&pidx) = self.pending.front() {
            if self.children.is_empty() {
                break;
            }
            n += 1;
            if !self.issue(pidx, cq) {
                break;
            }
            self.pending.pop_front();
            if self.parents[pidx as usize].remaining == 0 {
                self.finish(pidx);
            }
        }
        n
    }
}

struct Inner {
    st: RefCell<State>,
    cq: CompletionQueue,
}

impl Inner {
    fn poll(&self) -> usize {
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let mut n = self.cq.drain_now(|io| st.on_complete(io));
        if !st.retry.is_empty() {
            n += st.run_retry(&self.cq);
        }
        if !st.pending.is_empty() {
            n += st.run_pending(&self.cq);
        }
        n
    }
}

/// The array bdev's backend channel on one core. Built by [`crate::array`]'s backend on the
/// core that first does I/O to the array; owns that core's member channels and pools.
pub(crate) struct MdChannel {
    inner: Rc<Inner>,
    _poller: PollerHandle,
}

impl MdChannel {
    /// Builds the core's state over `members` (this core's channels of the member bdevs, in
    /// role order). Called on that core.
    pub(crate) fn new(name: &str, geo: Arc<Geometry>, members: Vec<Channel>) -> MdChannel {
        let cq = CompletionQueue::with_capacity(CQ_CAPACITY);
        let fwd = ForwardCtx::new(cq.clone());
        let inner = Rc::new(Inner {
            st: RefCell::new(State::new(geo, members, fwd)),
            cq,
        });
        let i2 = inner.clone();
        let poller = current().register_poller(format!("md_{name}"), move || PollStatus::from_work(i2.poll() > 0));
        MdChannel { inner, _poller: poller }
    }
}

impl BackendChannel for MdChannel {
    #[inline]
    fn submit(&mut self, io: IoBox) -> Submit {
        self.inner.st.borrow_mut().submit(io, &self.inner.cq)
    }

    fn abort_all(&mut self) {
        self.inner.st.borrow_mut().dead = true;
    }
}
