//! The split engine of an array's per-core state: parent slots, the child pool, and the
//! pending and retry queues. A lane ([`crate::personality::Lane`]) drives it with a small policy
//! — the next piece of a parent ([`Lane::next_piece`]), what a failed child means
//! ([`Lane::child_failed`]), a parent's final status ([`Lane::parent_done`]) — and never sees
//! its insides, so the engine can be swapped for the bdev layer's without touching a
//! personality.
//!
//! A parent takes a slot and is cut into children from the pool (each child's scatter list a
//! window on the parent's buffers: reference-counted clones, no copies), issued as long as the
//! pool lasts; a parent whose remaining pieces found the pool empty waits in the pending queue
//! and continues as children come back, so an I/O of any size progresses with any pool size.
//! A child a member hands back waits in the retry queue. Flush and reset **fan out**: one child
//! per member the lane names ([`Lane::fanout_to`]); `Unsupported` from a member counts as
//! success. A parent completes when its last child does, with the first failure seen (children
//! the lane absorbed count as successes and mark the parent degraded). A parent admitted by the
//! write gate carries its [`WriteTicket`], ended when the parent completes (or when it is handed
//! back without starting). `Submit::Requeue` goes up only when nothing was started: no parent
//! slot or child.
//!
//! After the core's state exists nothing here allocates or locks.

use std::collections::VecDeque;

use keel_bdev::{CompletionQueue, IoBox, IoOp, IoRequest, IoStatus, IoVec, SgList, Submit};

use crate::channel::{upward, Members};
use crate::layout::MemberIdx;
use crate::personality::Lane;

/// Child requests per core.
const CHILDREN: usize = 256;
/// Split or fanned-out parents in flight per core (beyond that: `Submit::Requeue`).
const PARENTS: usize = 128;
/// Initial capacity of the retry queue.
const QUEUE_CAPACITY: usize = 256;

/// A write the core's write gate admitted over sync-space sectors `[start, end)` (array sectors
/// for the copy levels; see `SyncShape`): it must be ended
/// exactly once ([`Members::end_write`]), which the split engine does for the parent that
/// carries it.
#[must_use = "a write ticket must be ended, or the sync window never drains"]
#[derive(Debug)]
pub(crate) struct WriteTicket {
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// Where a split parent stands; the lane moves it in [`Lane::next_piece`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cursor {
    /// The next array sector to map.
    pub next: u64,
    /// The parent's end (array sector).
    pub end: u64,
    /// The lane's position inside the piece at `next` (e.g. the next copy).
    pub sub: u32,
    /// Some piece was not written everywhere (the lane marks it).
    pub degraded: bool,
}

/// The next piece of a parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    /// A child of `sectors` at `array_sector` of the parent, to `member` at `member_sector`
    /// (relative to the data offset). A member without a channel fails the parent.
    Child {
        member: MemberIdx,
        member_sector: u64,
        array_sector: u64,
        sectors: u64,
    },
    /// The cursor moved without a child: ask again.
    Again,
    /// Nothing can serve the rest: the parent fails.
    Fail,
}

/// A child that failed (status neither success nor `Aborted`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailedChild {
    pub op: IoOp,
    pub member: MemberIdx,
    /// Array sector of the piece (0 for fan-out children).
    pub array_sector: u64,
    /// Length of the piece in sectors.
    pub sectors: u64,
}

/// What a failed child means for its parent ([`Lane::child_failed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The parent fails with the child's status.
    Fail,
    /// The child counts as done; the parent is marked degraded.
    Absorb,
    /// Send the same piece to `member` at `member_sector` instead.
    Retry { member: MemberIdx, member_sector: u64 },
}

struct ParentSlot {
    io: Option<IoBox>,
    /// One child per member (flush, reset) instead of pieces.
    fanout: bool,
    cur: Cursor,
    remaining: u32,
    status: IoStatus,
    ticket: Option<WriteTicket>,
}

/// Where a child went.
#[derive(Clone, Copy)]
struct ChildInfo {
    parent: u32,
    member: MemberIdx,
    array_sector: u64,
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

/// The engine's pools and queues on one core (module docs).
pub(crate) struct Splitter {
    children: Vec<IoBox>,
    child_info: Vec<ChildInfo>,
    parents: Vec<ParentSlot>,
    free_parents: Vec<u32>,
    pending: VecDeque<u32>,
    retry: VecDeque<(IoBox, MemberIdx)>,
}

impl Splitter {
    /// The pools, allocated once when the core's state is built.
    pub(crate) fn new() -> Splitter {
        Splitter {
            children: (0..CHILDREN)
                .map(|i| {
                    let mut io = IoRequest::new_boxed();
                    io.tag = i as u64;
                    io
                })
                .collect(),
            child_info: vec![
                ChildInfo {
                    parent: 0,
                    member: MemberIdx(0),
                    array_sector: 0,
                };
                CHILDREN
            ],
            parents: (0..PARENTS)
                .map(|_| ParentSlot {
                    io: None,
                    fanout: false,
                    cur: Cursor::default(),
                    remaining: 0,
                    status: IoStatus::Success,
                    ticket: None,
                })
                .collect(),
            free_parents: (0..PARENTS as u32).rev().collect(),
            pending: VecDeque::with_capacity(PARENTS),
            retry: VecDeque::with_capacity(QUEUE_CAPACITY),
        }
    }

    /// Whether a new parent can start (a slot and a child are free).
    #[inline]
    pub(crate) fn has_room(&self) -> bool {
        !self.children.is_empty() && !self.free_parents.is_empty()
    }

    /// Whether the poller has queued work here.
    #[inline]
    pub(crate) fn has_queued(&self) -> bool {
        !self.retry.is_empty() || !self.pending.is_empty()
    }

    /// Takes a parent slot for `io` over `[next, end)` (array sectors; roles for a fan-out) and
    /// issues children while they last. Without a slot or a child the request goes back
    /// (`Requeue`, its ticket ended first).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn accept<L: Lane>(
        &mut self,
        lane: &mut L,
        m: &Members,
        io: IoBox,
        fanout: bool,
        next: u64,
        end: u64,
        ticket: Option<WriteTicket>,
        cq: &CompletionQueue,
    ) -> Submit {
        if !self.has_room() {
            if let Some(t) = ticket {
                m.end_write(t, true);
            }
            return Submit::Requeue(io);
        }
        let pidx = self.free_parents.pop().expect("checked");
        let p = &mut self.parents[pidx as usize];
        p.io = Some(io);
        p.fanout = fanout;
        p.cur = Cursor {
            next,
            end,
            sub: 0,
            degraded: false,
        };
        p.remaining = 0;
        p.status = IoStatus::Success;
        p.ticket = ticket;
        m.fwd().begin();
        if self.issue(lane, m, pidx, cq) {
            if self.parents[pidx as usize].remaining == 0 {
                self.finish(lane, m, pidx);
            }
        } else {
            self.pending.push_back(pidx);
        }
        Submit::Accepted
    }

    /// Prepares `child` for `n` sectors at `member`'s `member_sector`, windowing the parent's
    /// data from array sector `at`.
    #[inline]
    fn prep_child(
        m: &Members,
        child: &mut IoBox,
        pio: &IoRequest,
        member: MemberIdx,
        member_sector: u64,
        at: u64,
        n: u64,
    ) {
        let g = m.geo();
        let shift = g.member_shift(member);
        let op = pio.op;
        child.prepare(op, (g.data_offset_sectors + member_sector) >> shift, n >> shift);
        child.iovs.clear();
        if op.has_data() {
            let base = pio.offset_blocks << g.block_shift;
            slice_iovs(&pio.iovs, (at - base) << 9, n << 9, &mut child.iovs);
        }
    }

    /// Issues the parent's remaining children. Returns whether all are issued.
    fn issue<L: Lane>(&mut self, lane: &mut L, m: &Members, pidx: u32, cq: &CompletionQueue) -> bool {
        loop {
            let p = &mut self.parents[pidx as usize];
            if p.cur.next >= p.cur.end {
                return true;
            }
            if self.children.is_empty() {
                return false;
            }
            let op = p.io.as_ref().expect("parent present").op;
            if p.fanout {
                let member = MemberIdx(p.cur.next as u16);
                p.cur.next += 1;
                if !lane.fanout_to(m, member) {
                    continue;
                }
                let mut child = self.children.pop().expect("checked");
                child.iovs.clear();
                child.prepare(op, 0, 0);
                self.send_child(m, child, pidx, member, 0, cq);
                continue;
            }
            match lane.next_piece(m, op, &mut p.cur) {
                Piece::Again => {}
                Piece::Fail => {
                    p.cur.next = p.cur.end;
                    p.status = IoStatus::Failed;
                    return true;
                }
                Piece::Child {
                    member,
                    member_sector,
                    array_sector,
                    sectors,
                } => {
                    if !m.present(member) {
                        p.status = IoStatus::Failed;
                        continue;
                    }
                    let mut child = self.children.pop().expect("checked");
                    let pio = p.io.as_ref().expect("parent present");
                    Self::prep_child(m, &mut child, pio, member, member_sector, array_sector, sectors);
                    self.send_child(m, child, pidx, member, array_sector, cq);
                }
            }
        }
    }

    #[inline]
    fn send_child(
        &mut self,
        m: &Members,
        child: IoBox,
        pidx: u32,
        member: MemberIdx,
        array_sector: u64,
        cq: &CompletionQueue,
    ) {
        self.child_info[child.tag as usize] = ChildInfo {
            parent: pidx,
            member,
            array_sector,
        };
        self.parents[pidx as usize].remaining += 1;
        let ch = m.channel(member).expect("present member");
        if let Submit::Requeue(c) = ch.submit(child, cq) {
            self.retry.push_back((c, member));
        }
    }

    /// A parent's last child is done: ends its ticket and completes it upward.
    fn finish<L: Lane>(&mut self, lane: &mut L, m: &Members, pidx: u32) {
        let p = &mut self.parents[pidx as usize];
        let io = p.io.take().expect("parent present");
        let degraded = p.cur.degraded;
        if let Some(t) = p.ticket.take() {
            m.end_write(t, !degraded);
        }
        let status = if p.fanout {
            p.status
        } else {
            lane.parent_done(m, io.op, p.status, degraded)
        };
        self.free_parents.push(pidx);
        m.fwd().end();
        io.complete(status);
    }

    /// A child came back (completion queue, on this core).
    pub(crate) fn child_done<L: Lane>(&mut self, lane: &mut L, m: &Members, mut io: IoBox, cq: &CompletionQueue) {
        let info = self.child_info[io.tag as usize];
        let pidx = info.parent;
        let mut status = io.status();
        let op = io.op;
        if status == IoStatus::Unsupported && matches!(op, IoOp::Flush | IoOp::Reset) {
            status = IoStatus::Success;
        }
        if status != IoStatus::Success && status != IoStatus::Aborted {
            let g = m.geo();
            let failed = FailedChild {
                op,
                member: info.member,
                array_sector: info.array_sector,
                sectors: io.num_blocks << g.member_shift(info.member),
            };
            match lane.child_failed(m, &failed) {
                Verdict::Fail => {}
                Verdict::Absorb => {
                    self.parents[pidx as usize].cur.degraded = true;
                    status = IoStatus::Success;
                }
                Verdict::Retry { member, member_sector } => {
                    let shift = g.member_shift(member);
                    let blocks = (io.num_blocks << g.member_shift(info.member)) >> shift;
                    io.prepare(op, (g.data_offset_sectors + member_sector) >> shift, blocks);
                    self.child_info[io.tag as usize].member = member;
                    let ch = m.channel(member).expect("a retry goes to a present member");
                    if let Submit::Requeue(c) = ch.submit(io, cq) {
                        self.retry.push_back((c, member));
                    }
                    return;
                }
            }
        }
        io.iovs.clear();
        self.children.push(io);
        let p = &mut self.parents[pidx as usize];
        p.remaining -= 1;
        if status != IoStatus::Success && p.status == IoStatus::Success {
            p.status = upward(status);
        }
        if p.remaining == 0 && p.cur.next >= p.cur.end {
            self.finish(lane, m, pidx);
        }
    }

    /// Resubmits children a member handed back.
    pub(crate) fn run_retry(&mut self, m: &Members, cq: &CompletionQueue) -> usize {
        let mut n = 0;
        while let Some((io, member)) = self.retry.pop_front() {
            let Some(ch) = m.channel(member) else {
                io.complete(IoStatus::Failed);
                n += 1;
                continue;
            };
            match ch.submit(io, cq) {
                Submit::Accepted => n += 1,
                Submit::Requeue(io) => {
                    self.retry.push_front((io, member));
                    break;
                }
            }
        }
        n
    }

    /// Continues parents that waited for children.
    pub(crate) fn run_pending<L: Lane>(&mut self, lane: &mut L, m: &Members, cq: &CompletionQueue) -> usize {
        let mut n = 0;
        while let Some(&pidx) = self.pending.front() {
            if self.children.is_empty() {
                break;
            }
            n += 1;
            if !self.issue(lane, m, pidx, cq) {
                break;
            }
            self.pending.pop_front();
            if self.parents[pidx as usize].remaining == 0 {
                self.finish(lane, m, pidx);
            }
        }
        n
    }
}

/// The tag bit of requests a lane owns (its own pool, e.g. a stripe cache's member reads and
/// writes): their completions go to [`Lane::own_done`]. The split engine's children never carry
/// it (their tags are pool indices).
pub(crate) const LANE_TAG: u64 = 1 << 63;

/// What a lane is handed for a request: this core's members, its split engine and completion
/// queue. Built by the core around each lane call.
pub(crate) struct LaneCx<'a> {
    pub m: &'a Members,
    pub(crate) split: &'a mut Splitter,
    pub(crate) cq: &'a CompletionQueue,
}

impl LaneCx<'_> {
    /// Splits `io` over array sectors `[start, end)` with `lane`'s pieces; `ticket` ends with
    /// the parent.
    #[inline]
    pub(crate) fn split<L: Lane>(
        &mut self,
        lane: &mut L,
        io: IoBox,
        start: u64,
        end: u64,
        ticket: Option<WriteTicket>,
    ) -> Submit {
        self.split.accept(lane, self.m, io, false, start, end, ticket, self.cq)
    }

    /// Sends a request the lane owns (its tag has [`LANE_TAG`] set, its offset is the member's)
    /// to `member`, which must be present ([`Members::present`]). Its completion comes back to
    /// [`Lane::own_done`] on this core; `Requeue` hands it back untouched, for the lane to retry
    /// from its poll step. While it is in flight, channels of replaced members stay open.
    #[inline]
    #[cfg_attr(not(test), allow(dead_code))] // for lanes that own their I/O; tested in `channel`
    pub(crate) fn submit_own(&mut self, member: MemberIdx, io: IoBox) -> Submit {
        debug_assert!(io.tag & LANE_TAG != 0, "a lane's own request carries LANE_TAG");
        let ch = self.m.channel(member).expect("the lane checked the member is present");
        let r = ch.submit(io, self.cq);
        if matches!(r, Submit::Accepted) {
            self.m.fwd().begin();
        }
        r
    }

    /// Sends the whole request to `member` at `member_sector` (relative to the data offset): in
    /// place when the member has the array's block size, as a one-piece split (through
    /// `lane`'s pieces from `array_sector`) otherwise; a member without a channel fails it.
    #[inline]
    pub(crate) fn forward<L: Lane>(
        &mut self,
        lane: &mut L,
        io: IoBox,
        member: MemberIdx,
        member_sector: u64,
        array_sector: u64,
    ) -> Submit {
        let g = self.m.geo();
        let shift = g.member_shift(member);
        if !self.m.present(member) {
            io.complete(IoStatus::Failed);
            return Submit::Accepted;
        }
        match self.m.path(member) {
            Some(path) if shift == g.block_shift => {
                crate::channel::forward_in_place(path, io, member, (g.data_offset_sectors + member_sector) >> shift)
            }
            _ => {
                let len = io.num_blocks << g.block_shift;
                self.split(lane, io, array_sector, array_sector + len, None)
            }
        }
    }
}
