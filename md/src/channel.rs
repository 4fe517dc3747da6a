//! The per-core data path of an md array.
//!
//! # Shape
//!
//! Each array has an [`IoDevice`]`<MdCore>`: its value on a core ([`MdCore`]) owns, behind one
//! `RefCell` only that core touches, the members' [`Channel`]s on this core (one per role, `None`
//! while the role has no member) and a [`ForwardPath`] to each (built once the array bdev's
//! channel on this core binds it, [`MdCore::bind`]), a completion queue drained by one poller, a
//! [`ForwardCtx`] counting what is below, and preallocated pools — child requests (with side arrays naming each
//! child's parent, member and array sector), parent slots, a queue of parents that waited for
//! children, a retry queue of children a member handed back and a queue of writes the write gate
//! held. The geometry ([`Geometry`]) is immutable; member states, the resync checkpoint and the
//! write gate are atomics in [`Shared`]. The control path reaches a core's state only through
//! `for_each_channel` visits ([`MdCore::refresh_members`]).
//!
//! # Striped levels (linear, raid0)
//!
//! The array sector is mapped with [`crate::layout`]; when the whole request stays on one member
//! (inside one chunk for raid0) and that member has the array's block size, the request itself is
//! forwarded in place along the member's path ([`ForwardPath::forward`]): the original offset
//! goes into the layer word, `offset_blocks` becomes `data_offset + member sector`, and a success
//! goes straight up without visiting this layer's poller. Anything else is split at member/chunk
//! boundaries into children. A one-zone raid0 (of up to [`keel_bdev::ROUTE_LEGS`] members)
//! publishes that mapping as a striped [`Route`] while every member is present, so the bdev
//! layer forwards such requests without calling the array at all.
//!
//! # Copy levels (raid1, raid10)
//!
//! Reads go to one readable copy: in the part of the array not yet resynced, the first readable
//! copy (as Linux does); elsewhere the copy whose member last read the preceding sector
//! (sequential streams stay on one member) and otherwise the next in a per-core rotation (in-place
//! forwarded successes are not observed, so load is balanced by rotation). A single-chunk read is
//! forwarded in place; the member is kept in the layer word's top bits, so a failure marks that
//! member faulty and the read is sent to another copy. Crossing reads are split, each child on
//! its own copy, retried the same way.
//!
//! Writes, unmaps and write-zeroes pass the write gate ([`crate::shared::WriteGate::admit`]: dirty
//! mark, sync window, bitmap) — a held write waits in the held queue and is admitted again from
//! the poller — and then fan out to every writable copy of every piece. A member write that fails
//! marks the member faulty; the write still succeeds when the array, without the faulty members,
//! still holds every sector (Linux raid1/raid10 semantics). The gate is told when the last copy
//! answered, with whether every copy was written (a degraded write keeps its bitmap chunk dirty).
//!
//! Flush and reset fan out to every present member; `Unsupported` from a member counts as success.
//!
//! # Budget
//!
//! After the core's state exists nothing here allocates or locks. `Submit::Requeue` goes up only
//! when nothing was started (no parent slot or child); a parent that ran out of children mid-way
//! waits in the pending queue and continues as children come back.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use keel_bdev::{
    BackendChannel, Channel, ChannelCx, ChannelStats, CompletionQueue, ForwardCtx, ForwardPath, IoBox, IoOp, IoRequest,
    IoStatus, IoVec, Leg, Route, RouteHandle, SgList, Submit,
};
use keel_reactor::{current, IoChannel, PollStatus, PollerHandle};

use crate::geometry::Geometry;
use crate::layout::{MemberIdx, Place, MAX_COPIES};
use crate::shared::{Admit, Shared};

/// Child requests per core.
const CHILDREN: usize = 256;
/// Split or fanned-out parents in flight per core (beyond that: `Submit::Requeue`).
const PARENTS: usize = 128;
/// Initial capacity of the retry and held queues.
const QUEUE_CAPACITY: usize = 256;
/// Completion queue capacity before it first grows.
const CQ_CAPACITY: usize = 512;
/// Layer word: the original offset below this bit, the member above.
const MEMBER_SHIFT: u32 = 48;
const OFFSET_MASK: u64 = (1 << MEMBER_SHIFT) - 1;

/// What a parent slot is doing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Pieces at member/chunk boundaries (striped levels, copy-level reads); `next`/`end` are
    /// array sectors.
    Split,
    /// One child per present member (flush, reset); `next`/`end` are roles.
    Fanout,
    /// Every writable copy of every piece (copy-level writes); `next`/`end` are array sectors,
    /// `copy` the next copy of the current piece.
    Mirror,
}

struct ParentSlot {
    io: Option<IoBox>,
    kind: Kind,
    next: u64,
    end: u64,
    copy: u32,
    remaining: u32,
    status: IoStatus,
    /// Mirror: a copy failed or was not writable (degraded write).
    partial: bool,
    /// Mirror: some member write failed.
    write_failed: bool,
    /// Mirror: admitted through the write gate (tell it at the end).
    gated: bool,
}

/// Where a child went.
#[derive(Clone, Copy)]
struct ChildInfo {
    parent: u32,
    member: u16,
    /// Copy-level reads: the array sector of the piece (to find another copy).
    array_sector: u64,
}

/// raid0 of one zone over a power-of-two number of members with the array's block size:
/// mapped with shifts, straight to the forward (the common shape, kept out of `Geometry`'s
/// general path).
#[derive(Clone, Copy)]
struct FastRaid0 {
    block_shift: u32,
    chunk_shift: u32,
    members_shift: u32,
    data_offset_sectors: u64,
}

struct State {
    fast: Option<FastRaid0>,
    geo: Arc<Geometry>,
    shared: Arc<Shared>,
    core: u32,
    /// This core's channel of each role's member.
    members: Vec<Option<Channel>>,
    /// The forward path to each present member, once bound to the array bdev's channel here.
    paths: Vec<Option<ForwardPath>>,
    /// What the array bdev's channel on this core gave ([`MdCore::bind`]).
    bound: Option<(Rc<ChannelStats>, RouteHandle)>,
    /// Identity of the member each channel belongs to (see [`MdCore::refresh_members`]).
    member_ids: Vec<u64>,
    /// Channels of replaced members, dropped once nothing is in flight here.
    retired: Vec<Channel>,
    fwd: Rc<ForwardCtx>,
    children: Vec<IoBox>,
    child_info: Vec<ChildInfo>,
    parents: Vec<ParentSlot>,
    free_parents: Vec<u32>,
    pending: VecDeque<u32>,
    retry: VecDeque<(IoBox, u32)>,
    held: VecDeque<IoBox>,
    /// Copy-level read rotation.
    rr: usize,
    /// Per role: the sector after the last read sent there (sequential detection).
    next_read: Vec<u64>,
    /// Set when the array bdev goes away: new I/O fails.
    dead: bool,
    copies: [Place; MAX_COPIES],
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

/// Hands `io` to role `m`'s member along `path` at `member_offset_blocks` with
/// [`ForwardPath::forward`]: the original offset and the role go into the layer word (a failure
/// comes back knowing both), and a request handed back gets its offset restored.
#[inline]
fn forward_in_place(path: &ForwardPath, mut io: IoBox, m: usize, member_offset_blocks: u64) -> Submit {
    let orig = io.offset_blocks;
    *io.layer_word() = orig | ((m as u64) << MEMBER_SHIFT);
    io.offset_blocks = member_offset_blocks;
    match path.forward(io, orig) {
        Submit::Accepted => Submit::Accepted,
        Submit::Requeue(mut io) => {
            io.offset_blocks = orig;
            Submit::Requeue(io)
        }
    }
}

#[inline]
fn upward(status: IoStatus) -> IoStatus {
    if status == IoStatus::Removed {
        IoStatus::Failed
    } else {
        status
    }
}

impl State {
    fn new(
        geo: Arc<Geometry>,
        shared: Arc<Shared>,
        core: u32,
        members: Vec<(u64, Option<Channel>)>,
        fwd: Rc<ForwardCtx>,
    ) -> State {
        let roles = members.len();
        shared.gate.row(core);
        let (member_ids, members) = members.into_iter().unzip();
        let fast = match &geo.mapping {
            crate::geometry::Mapping::Raid0(r) if geo.member_shifts.iter().all(|&s| s == geo.block_shift) => {
                r.pow2_single_zone().map(|(chunk_shift, members_shift)| FastRaid0 {
                    block_shift: geo.block_shift,
                    chunk_shift,
                    members_shift,
                    data_offset_sectors: geo.data_offset_sectors,
                })
            }
            _ => None,
        };
        State {
            fast,
            geo,
            shared,
            core,
            members,
            member_ids,
            retired: Vec::new(),
            paths: (0..roles).map(|_| None).collect(),
            bound: None,
            fwd,
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
                    member: 0,
                    array_sector: 0
                };
                CHILDREN
            ],
            parents: (0..PARENTS)
                .map(|_| ParentSlot {
                    io: None,
                    kind: Kind::Split,
                    next: 0,
                    end: 0,
                    copy: 0,
                    remaining: 0,
                    status: IoStatus::Success,
                    partial: false,
                    write_failed: false,
                    gated: false,
                })
                .collect(),
            free_parents: (0..PARENTS as u32).rev().collect(),
            pending: VecDeque::with_capacity(PARENTS),
            retry: VecDeque::with_capacity(QUEUE_CAPACITY),
            held: VecDeque::with_capacity(QUEUE_CAPACITY),
            rr: 0,
            next_read: vec![u64::MAX; roles],
            dead: false,
            copies: [Place {
                member: MemberIdx(0),
                sector: 0,
            }; MAX_COPIES],
        }
    }

    /// Rebuilds the forward paths for the present members (and the route over them).
    fn rebuild_paths(&mut self) {
        let Some((stats, _)) = &self.bound else { return };
        for (path, member) in self.paths.iter_mut().zip(&self.members) {
            let same = matches!((&*path, member), (Some(p), Some(c)) if p.base().same_channel(c));
            if !same {
                *path = member.as_ref().map(|c| ForwardPath::new(&self.fwd, stats, c.clone()));
            }
        }
        self.publish_route();
    }

    /// The core maps a one-zone raid0 (of up to `ROUTE_LEGS` members, all of the array's block
    /// size) by itself while every member is present and the array lives; otherwise requests
    /// come here.
    fn publish_route(&self) {
        let Some((_, slot)) = &self.bound else { return };
        slot.set(self.raid0_route().unwrap_or_else(Route::off));
    }

    /// The route of a one-zone raid0 as it stands, if it has one (control path).
    fn raid0_route(&self) -> Option<Route> {
        let g = &*self.geo;
        let crate::geometry::Mapping::Raid0(r) = &g.mapping else {
            return None;
        };
        let (chunk_shift, _) = r.single_zone()?;
        let same_blocks = g.member_shifts.iter().all(|&s| s == g.block_shift);
        if self.dead || !same_blocks || chunk_shift < g.block_shift {
            return None;
        }
        let legs = self
            .paths
            .iter()
            .map(|p| {
                p.clone().map(|path| Leg {
                    path,
                    offset_blocks: g.data_offset_sectors >> g.block_shift,
                })
            })
            .collect::<Option<Vec<Leg>>>()?;
        Route::striped(1 << (chunk_shift - g.block_shift), legs, keel_bdev::IoCaps::RANGED)
    }

    #[inline]
    fn usable(&self, m: usize) -> bool {
        self.members[m].is_some()
    }

    /// Entry of every request (range and op already validated by the bdev layer).
    #[inline]
    fn submit(&mut self, io: IoBox, cq: &CompletionQueue) -> Submit {
        if let Some(f) = self.fast {
            if !self.dead && !matches!(io.op, IoOp::Flush | IoOp::Reset) {
                let start = io.offset_blocks << f.block_shift;
                let len = io.num_blocks << f.block_shift;
                let chunk = start >> f.chunk_shift;
                let off = start & ((1 << f.chunk_shift) - 1);
                if off + len <= 1 << f.chunk_shift {
                    let m = (chunk & ((1 << f.members_shift) - 1)) as usize;
                    let member_sector = ((chunk >> f.members_shift) << f.chunk_shift) + off;
                    if let Some(path) = self.paths[m].as_ref() {
                        let at = (f.data_offset_sectors + member_sector) >> f.block_shift;
                        return forward_in_place(path, io, m, at);
                    }
                }
            }
        }
        if self.dead {
            io.complete(IoStatus::Aborted);
            return Submit::Accepted;
        }
        let bs = self.geo.block_shift;
        let start = io.offset_blocks << bs;
        let len = io.num_blocks << bs;
        match io.op {
            IoOp::Flush | IoOp::Reset => {
                let n = self.members.len() as u64;
                self.accept(io, Kind::Fanout, 0, n, cq)
            }
            op if !self.geo.redundant() => {
                let _ = op;
                let (place, left) = self.geo.map(start);
                if len <= left {
                    self.forward(io, place.member.0 as usize, place.sector, start, cq)
                } else {
                    self.accept(io, Kind::Split, start, start + len, cq)
                }
            }
            IoOp::Read => {
                let (k, left) = self.geo.copies(start, &mut self.copies);
                if len <= left {
                    match self.pick_copy(k, start, len, u16::MAX) {
                        Some((m, sector)) => self.forward(io, m, sector, start, cq),
                        None => {
                            io.complete(IoStatus::Failed);
                            Submit::Accepted
                        }
                    }
                } else {
                    self.accept(io, Kind::Split, start, start + len, cq)
                }
            }
            _ => self.write(io, start, len, cq),
        }
    }

    /// A copy-level write: through the gate, then fanned out.
    #[inline]
    fn write(&mut self, io: IoBox, start: u64, len: u64, cq: &CompletionQueue) -> Submit {
        if self.children.is_empty() || self.free_parents.is_empty() {
            return Submit::Requeue(io);
        }
        if !self.held.is_empty() {
            // Keep order behind writes already held.
            self.held.push_back(io);
            return Submit::Accepted;
        }
        let row = self.shared.gate.row(self.core);
        match self
            .shared
            .gate
            .admit(row, self.shared.intent.as_ref(), start, start + len)
        {
            Admit::Go => self.accept_gated(io, start, len, cq),
            Admit::Hold => {
                self.held.push_back(io);
                Submit::Accepted
            }
        }
    }

    fn accept_gated(&mut self, io: IoBox, start: u64, len: u64, cq: &CompletionQueue) -> Submit {
        match self.accept(io, Kind::Mirror, start, start + len, cq) {
            Submit::Accepted => Submit::Accepted,
            Submit::Requeue(io) => {
                let row = self.shared.gate.row(self.core);
                self.shared
                    .gate
                    .end(row, self.shared.intent.as_ref(), start, start + len, true);
                Submit::Requeue(io)
            }
        }
    }

    /// Picks the copy (of `self.copies[..k]`) to read `[sector, sector + len)` from, skipping
    /// member `avoid`. Returns the role and the member sector.
    #[inline]
    fn pick_copy(&mut self, k: usize, array_sector: u64, len: u64, avoid: u16) -> Option<(usize, u64)> {
        let unsynced = array_sector + len > self.shared.resync_cp();
        let mut first = None;
        let mut seq = None;
        let mut count = 0usize;
        for i in 0..k {
            let p = self.copies[i];
            let m = p.member.0 as usize;
            if p.member.0 == avoid || !self.usable(m) || !self.shared.slots[m].readable(p.sector, len) {
                continue;
            }
            if first.is_none() {
                first = Some((m, p.sector));
                if unsynced {
                    break;
                }
            }
            if seq.is_none() && self.next_read[m] == p.sector {
                seq = Some((m, p.sector));
            }
            count += 1;
        }
        let pick = if unsynced || count <= 1 {
            first
        } else if seq.is_some() {
            seq
        } else {
            self.rr = self.rr.wrapping_add(1);
            let want = self.rr % count;
            let mut seen = 0;
            let mut out = first;
            for i in 0..k {
                let p = self.copies[i];
                let m = p.member.0 as usize;
                if p.member.0 == avoid || !self.usable(m) || !self.shared.slots[m].readable(p.sector, len) {
                    continue;
                }
                if seen == want {
                    out = Some((m, p.sector));
                    break;
                }
                seen += 1;
            }
            out
        };
        if let Some((m, s)) = pick {
            self.next_read[m] = s + len;
        }
        pick
    }

    /// Sends the whole request to member `m` at `member_sector` (relative to data_offset): in
    /// place when the member has the array's block size, as a one-piece split otherwise.
    #[inline]
    fn forward(&mut self, io: IoBox, m: usize, member_sector: u64, array_sector: u64, cq: &CompletionQueue) -> Submit {
        let g = &*self.geo;
        let shift = g.member_shifts[m];
        if self.members[m].is_none() {
            io.complete(IoStatus::Failed);
            return Submit::Accepted;
        }
        match self.paths[m].as_ref() {
            Some(path) if shift == g.block_shift => {
                forward_in_place(path, io, m, (g.data_offset_sectors + member_sector) >> shift)
            }
            _ => {
                let len = io.num_blocks << g.block_shift;
                self.accept(io, Kind::Split, array_sector, array_sector + len, cq)
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
        p.copy = 0;
        p.remaining = 0;
        p.status = IoStatus::Success;
        p.partial = false;
        p.write_failed = false;
        p.gated = kind == Kind::Mirror;
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

    /// Prepares `child` for `n` sectors at member `m`'s `member_sector`, windowing the parent's
    /// data from array sector `at`.
    #[inline]
    fn prep_child(g: &Geometry, child: &mut IoBox, pio: &IoRequest, m: usize, member_sector: u64, at: u64, n: u64) {
        let shift = g.member_shifts[m];
        let op = pio.op;
        child.prepare(op, (g.data_offset_sectors + member_sector) >> shift, n >> shift);
        child.iovs.clear();
        if op.has_data() {
            let base = pio.offset_blocks << g.block_shift;
            slice_iovs(&pio.iovs, (at - base) << 9, n << 9, &mut child.iovs);
        }
    }

    /// Issues the parent's remaining children. Returns whether all are issued.
    fn issue(&mut self, pidx: u32, cq: &CompletionQueue) -> bool {
        loop {
            let p = &self.parents[pidx as usize];
            if p.next >= p.end {
                return true;
            }
            if self.children.is_empty() {
                return false;
            }
            let (kind, next, end) = (p.kind, p.next, p.end);
            let op = p.io.as_ref().expect("parent present").op;
            match kind {
                Kind::Fanout => {
                    let m = next as usize;
                    self.parents[pidx as usize].next += 1;
                    let present =
                        self.members[m].is_some() && (!self.geo.redundant() || self.shared.slots[m].writable());
                    if !present {
                        continue;
                    }
                    let mut child = self.children.pop().expect("checked");
                    child.iovs.clear();
                    child.prepare(op, 0, 0);
                    self.send_child(child, pidx, m, 0, cq);
                }
                Kind::Split => {
                    let (m, sector, n) = if self.geo.redundant() {
                        let (k, left) = self.geo.copies(next, &mut self.copies);
                        let n = left.min(end - next);
                        match self.pick_copy(k, next, n, u16::MAX) {
                            Some((m, s)) => (m, s, n),
                            None => {
                                // No readable copy: the rest of this parent fails.
                                let p = &mut self.parents[pidx as usize];
                                p.next = p.end;
                                p.status = IoStatus::Failed;
                                return true;
                            }
                        }
                    } else {
                        let (place, left) = self.geo.map(next);
                        (place.member.0 as usize, place.sector, left.min(end - next))
                    };
                    let mut child = self.children.pop().expect("checked");
                    {
                        let pio = self.parents[pidx as usize].io.as_ref().expect("parent present");
                        Self::prep_child(&self.geo, &mut child, pio, m, sector, next, n);
                    }
                    self.parents[pidx as usize].next += n;
                    if self.members[m].is_none() {
                        self.children.push(child);
                        let p = &mut self.parents[pidx as usize];
                        p.status = IoStatus::Failed;
                        continue;
                    }
                    self.send_child(child, pidx, m, next, cq);
                }
                Kind::Mirror => {
                    let (k, left) = self.geo.copies(next, &mut self.copies);
                    let n = left.min(end - next);
                    let copy = self.parents[pidx as usize].copy as usize;
                    if copy >= k {
                        let p = &mut self.parents[pidx as usize];
                        p.next += n;
                        p.copy = 0;
                        continue;
                    }
                    self.parents[pidx as usize].copy += 1;
                    let place = self.copies[copy];
                    let m = place.member.0 as usize;
                    if self.members[m].is_none() || !self.shared.slots[m].writable() {
                        self.parents[pidx as usize].partial = true;
                        continue;
                    }
                    let mut child = self.children.pop().expect("checked");
                    {
                        let pio = self.parents[pidx as usize].io.as_ref().expect("parent present");
                        Self::prep_child(&self.geo, &mut child, pio, m, place.sector, next, n);
                    }
                    self.send_child(child, pidx, m, next, cq);
                }
            }
        }
    }

    #[inline]
    fn send_child(&mut self, child: IoBox, pidx: u32, m: usize, array_sector: u64, cq: &CompletionQueue) {
        self.child_info[child.tag as usize] = ChildInfo {
            parent: pidx,
            member: m as u16,
            array_sector,
        };
        self.parents[pidx as usize].remaining += 1;
        let ch = self.members[m].as_ref().expect("present member");
        if let Submit::Requeue(c) = ch.submit(child, cq) {
            self.retry.push_back((c, m as u32));
        }
    }

    /// A parent's last child is done: complete it upward.
    fn finish(&mut self, pidx: u32) {
        let p = &mut self.parents[pidx as usize];
        let io = p.io.take().expect("parent present");
        let mut status = p.status;
        if p.kind == Kind::Mirror {
            let (partial, failed) = (p.partial, p.write_failed);
            if p.gated {
                let bs = self.geo.block_shift;
                let start = io.offset_blocks << bs;
                let end = start + (io.num_blocks << bs);
                let row = self.shared.gate.row(self.core);
                self.shared
                    .gate
                    .end(row, self.shared.intent.as_ref(), start, end, !partial && !failed);
            }
            if failed || partial {
                // Every sector must still have a surviving copy that took the write.
                let ok = self
                    .geo
                    .operational(|m| self.shared.slots[m].state() == crate::shared::SlotState::InSync);
                status = if ok && status != IoStatus::Failed {
                    IoStatus::Success
                } else {
                    IoStatus::Failed
                };
            }
        }
        self.free_parents.push(pidx);
        self.fwd.end();
        io.complete(status);
    }

    /// One completion from a member.
    #[inline]
    fn on_complete(&mut self, mut io: IoBox, cq: &CompletionQueue) {
        if io.depth() == 0 {
            return self.child_done(io, cq);
        }
        // A forwarded request that failed (forwarded successes never come here).
        let word = *io.layer_word();
        let orig = word & OFFSET_MASK;
        let m = (word >> MEMBER_SHIFT) as usize;
        self.fwd.end();
        let status = io.status();
        if self.geo.redundant() && io.op == IoOp::Read && status != IoStatus::Aborted {
            self.shared.fail_member(m);
            io.offset_blocks = orig;
            let bs = self.geo.block_shift;
            let start = orig << bs;
            let len = io.num_blocks << bs;
            let (k, _) = self.geo.copies(start, &mut self.copies);
            if let Some((m2, sector)) = self.pick_copy(k, start, len, m as u16) {
                if let Submit::Requeue(io) = self.forward(io, m2, sector, start, cq) {
                    // No room below right now: fail rather than spin (the bdev layer may retry).
                    io.complete(IoStatus::Failed);
                }
                return;
            }
            return io.complete(IoStatus::Failed);
        }
        io.offset_blocks = orig;
        io.complete(upward(status));
    }

    fn child_done(&mut self, mut io: IoBox, cq: &CompletionQueue) {
        let info = self.child_info[io.tag as usize];
        let pidx = info.parent;
        let mut status = io.status();
        let op = io.op;
        if status == IoStatus::Unsupported && matches!(op, IoOp::Flush | IoOp::Reset) {
            status = IoStatus::Success;
        }
        let redundant = self.geo.redundant();
        if status != IoStatus::Success && status != IoStatus::Aborted && redundant {
            match op {
                IoOp::Read => {
                    self.shared.fail_member(info.member as usize);
                    // Another copy of the same piece.
                    let n = io.num_blocks << self.geo.member_shifts[info.member as usize];
                    let (k, _) = self.geo.copies(info.array_sector, &mut self.copies);
                    if let Some((m2, sector)) = self.pick_copy(k, info.array_sector, n, info.member) {
                        let shift = self.geo.member_shifts[m2];
                        let lshift = self.geo.member_shifts[info.member as usize];
                        let blocks = (io.num_blocks << lshift) >> shift;
                        io.prepare(op, (self.geo.data_offset_sectors + sector) >> shift, blocks);
                        self.child_info[io.tag as usize].member = m2 as u16;
                        let ch = self.members[m2].as_ref().expect("readable member has a channel");
                        if let Submit::Requeue(c) = ch.submit(io, cq) {
                            self.retry.push_back((c, m2 as u32));
                        }
                        return;
                    }
                }
                IoOp::Write | IoOp::Unmap | IoOp::WriteZeroes => {
                    self.shared.fail_member(info.member as usize);
                    let p = &mut self.parents[pidx as usize];
                    p.write_failed = true;
                    status = IoStatus::Success;
                }
                IoOp::Flush | IoOp::Reset => {
                    self.shared.fail_member(info.member as usize);
                    status = IoStatus::Success;
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
        if p.remaining == 0 && p.next >= p.end {
            self.finish(pidx);
        }
    }

    /// Resubmits children a member handed back.
    fn run_retry(&mut self, cq: &CompletionQueue) -> usize {
        let mut n = 0;
        while let Some((io, m)) = self.retry.pop_front() {
            let Some(ch) = self.members[m as usize].as_ref() else {
                io.complete(IoStatus::Failed);
                n += 1;
                continue;
            };
            match ch.submit(io, cq) {
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

    /// Admits held writes in order while the gate lets them through.
    fn run_held(&mut self, cq: &CompletionQueue) -> usize {
        let mut n = 0;
        while let Some(io) = self.held.front() {
            if self.dead {
                let io = self.held.pop_front().expect("front");
                io.complete(IoStatus::Aborted);
                n += 1;
                continue;
            }
            if self.children.is_empty() || self.free_parents.is_empty() {
                break;
            }
            let bs = self.geo.block_shift;
            let start = io.offset_blocks << bs;
            let len = io.num_blocks << bs;
            let row = self.shared.gate.row(self.core);
            if self
                .shared
                .gate
                .admit(row, self.shared.intent.as_ref(), start, start + len)
                == Admit::Hold
            {
                break;
            }
            let io = self.held.pop_front().expect("front");
            if let Submit::Requeue(io) = self.accept_gated(io, start, len, cq) {
                self.held.push_front(io);
                break;
            }
            n += 1;
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
        let cq = &self.cq;
        let mut n = cq.drain_now(|io| st.on_complete(io, cq));
        if !st.retry.is_empty() {
            n += st.run_retry(cq);
        }
        if !st.pending.is_empty() {
            n += st.run_pending(cq);
        }
        if !st.held.is_empty() {
            n += st.run_held(cq);
        }
        if !st.retired.is_empty() && st.fwd.inflight() == 0 {
            st.retired.clear();
            n += 1;
        }
        n
    }
}

/// An array's state on one core: the value of its [`IoDevice`](keel_reactor::IoDevice)
/// channel. Built by the array's `IoDevice` factory on the core that first does I/O to it.
pub(crate) struct MdCore {
    inner: Rc<Inner>,
    _poller: PollerHandle,
}

impl MdCore {
    /// Builds the core's state over `members` (per role: the member's identity and this core's
    /// channel of it). Called on `core`.
    pub(crate) fn new(
        name: &str,
        core: u32,
        geo: Arc<Geometry>,
        shared: Arc<Shared>,
        members: Vec<(u64, Option<Channel>)>,
    ) -> MdCore {
        let cq = CompletionQueue::with_capacity(CQ_CAPACITY);
        let fwd = ForwardCtx::new(cq.clone());
        let inner = Rc::new(Inner {
            st: RefCell::new(State::new(geo, shared, core, members, fwd)),
            cq,
        });
        let i2 = inner.clone();
        let poller = current().register_poller(format!("md_{name}"), move || PollStatus::from_work(i2.poll() > 0));
        MdCore { inner, _poller: poller }
    }

    /// Control-path visit: installs the members of `ids` (per role; 0 = none) whose identity
    /// changed, opening this core's channel with `open(role)`. Replaced channels are dropped
    /// once nothing is in flight on this core.
    pub(crate) fn refresh_members(&self, ids: &[u64], open: impl Fn(usize) -> Option<Channel>) {
        let mut st = self.inner.st.borrow_mut();
        for (r, &id) in ids.iter().enumerate() {
            if st.member_ids[r] == id {
                continue;
            }
            st.member_ids[r] = id;
            let new = if id == 0 { None } else { open(r) };
            if let Some(old) = std::mem::replace(&mut st.members[r], new) {
                st.retired.push(old);
            }
            st.next_read[r] = u64::MAX;
        }
        st.rebuild_paths();
    }

    /// Control-path visit: the array is going away; new and held I/O fail.
    pub(crate) fn kill(&self) {
        let mut st = self.inner.st.borrow_mut();
        st.dead = true;
        st.publish_route();
    }

    /// Binds this core's state to the array bdev's channel being built here (see
    /// [`ChannelCx`]): member paths link to its statistics, and a raid0 of the simple shape
    /// publishes its route in its slot. Called on the core, from the bdev channel's
    /// construction.
    pub(crate) fn bind(&self, cx: &ChannelCx) {
        let mut st = self.inner.st.borrow_mut();
        if let Some((_, old)) = st.bound.take() {
            old.set(Route::off());
        }
        st.bound = Some((cx.stats().clone(), cx.route_handle()));
        st.rebuild_paths();
    }
}

/// The array bdev's backend channel on one core.
pub(crate) struct MdChannel {
    core: IoChannel<MdCore>,
    /// The core's state, held directly (one pointer hop less per I/O).
    inner: Rc<Inner>,
}

impl MdChannel {
    /// The array bdev's module channel on `cx`'s core, bound to the core's state.
    pub(crate) fn new(core: IoChannel<MdCore>, cx: &ChannelCx) -> MdChannel {
        core.bind(cx);
        let inner = core.rc().inner.clone();
        MdChannel { core, inner }
    }
}

impl BackendChannel for MdChannel {
    #[inline]
    fn submit(&self, io: IoBox) -> Submit {
        let inner = &*self.inner;
        inner.st.borrow_mut().submit(io, &inner.cq)
    }

    fn abort_all(&self) {
        self.core.rc().kill();
    }
}
