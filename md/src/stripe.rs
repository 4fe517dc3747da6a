//! The layout and per-core lane of the parity levels (raid4, raid5, raid6): the stripe cache.
//!
//! # Ownership, not locks
//!
//! Two writes to one stripe must never interleave their read-modify-write: if core A reads old
//! data and P while core B does the same, both write a P that misses the other's change, and the
//! stripe is silently inconsistent until a resync (Linux serialises them on its stripe head's
//! lock). Keel's rule is one owner per piece of state and no lock per I/O, so a stripe has at
//! most one **owner** at a time: the stripe head that holds its **claim**.
//!
//! The obvious design — each stripe owned by one reactor, others sending it their writes by
//! message — does not fit this code base: a request and its buffers are `!Send` (reference
//! counted on the reactor that made them) and a reactor message is a boxed closure, so a
//! cross-core hand-off would allocate per I/O and copy the data. Instead the array's layout (one
//! per array, shared by every core) holds a fixed table of claim words ([`CLAIM_SLOTS`] atomics,
//! a stripe hashed to one). A stripe head takes the claim of its stripe with one
//! compare-and-exchange (0 → stripe + 1) before it reads anything it will write back, and gives
//! it back (store 0) when its last write completed. A head that finds the claim taken — by a head
//! of another core or of its own, or by another stripe hashed to the same word — does not wait
//! or spin: it stays queued on its core and tries again from the core's poller, exactly like a
//! request refused by a full queue. Nobody ever blocks on the claim, the claim's owner is always
//! a head that is making progress (its member I/O is in flight), and a core never touches
//! another core's heads or buffers: the claim word is the only shared state, and it says who
//! owns the stripe, not who may touch a structure. Reads of healthy chunks need no claim (data
//! is written in place; a read overlapping a write in flight gets old or new data, as on any
//! disk); reads that reconstruct a chunk from the others take it (they read parity).
//!
//! # The stripe cache
//!
//! Each core owns its heads, made when the core's state is built: a head has one buffer per
//! member of [`UNIT_MAX_SECTORS`] (64 KiB, or the chunk when smaller) and one request per
//! member, so nothing is allocated per I/O. The number of heads follows `md_set_stripe_cache`'s
//! `entries` as Linux counts them (one page per member each): `entries × 4 KiB / unit` heads per
//! core, at least [`MIN_HEADS`].
//!
//! # A request
//!
//! A read inside one chunk of a readable member is forwarded in place (like raid0). Anything
//! else — longer reads, reads touching a failed member, and every write (through the core's
//! write gate with its ticket) — takes a parent slot and is cut into **ops**: one stripe, one
//! band of chunk offsets `[lo, hi)` (cut at the request's first and last offsets, the chunk and
//! the unit) and the contiguous data indices the request covers in that band. Each op runs on a
//! head:
//!
//! * Read: the requested blocks are read straight into the request's buffers when their members
//!   are readable; otherwise (or after a read failed: the member is marked faulty) the head takes
//!   the claim, reads every readable member of the band, rebuilds the lost blocks (raid5: XOR;
//!   raid6: from P, from Q, or two from both) and copies the requested ones out.
//! * Write: with the claim, the head picks read-modify-write (read the written blocks and
//!   P/Q, update by the difference) or reconstruct-write (read the untouched data blocks,
//!   recompute) by the number of reads, Linux's rule (RMW only when strictly fewer); a
//!   full-stripe op reads nothing. When neither is possible (a failed member among both sets) it
//!   reads every readable member and reconstructs first. A block of a failed member is not
//!   written: its data lives on in the parity. A member write that fails marks it faulty; the
//!   write still succeeds while the array survives, and its ticket ends "not every member
//!   written" (the bitmap chunk stays dirty).
//!
//! The request completes when its last op did. A write's ticket ends on its own core.
//!
//! # Sync
//!
//! The sync space is a member's component (Linux's `resync_offset` counts member sectors for
//! raid5/6); a piece is a band of one stripe. Resync and repair read every member, recompute P
//! (and Q) and rewrite what differs, counting it; check only counts; recovery reads the others
//! and rebuilds the targets. The engine holds the window against writes through the gate
//! ([`Lane::gate_range`] maps a write to the stripe rows it touches).

use std::cell::{Ref, RefMut};
use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use arrayvec::ArrayVec;
use keel_bdev::{slice_iovs, DmaBuf, IoBox, IoOp, IoRequest, IoStatus, SgList, Submit};
use keel_parity::Parity;

use crate::channel::{upward, Members};
use crate::geometry::Geometry;
use crate::layout::MemberIdx;
use crate::parity_map::{ParityMap, StripeDisks};
use crate::personality::{
    CoreSetup, Cursor, FailedChild, Health, Lane, LaneCx, Layout, MdCore, Piece, SyncShape, Verdict, WriteTicket,
    LANE_TAG, MAX_MEMBERS,
};
use crate::MdError;

/// Largest band a head covers per member: 64 KiB.
pub(crate) const UNIT_MAX_SECTORS: u64 = 128;
/// Claim words per array.
pub(crate) const CLAIM_SLOTS: usize = 4096;
/// Fewest heads per core.
pub(crate) const MIN_HEADS: usize = 2;
/// Most heads per core.
const MAX_HEADS: usize = 4096;
/// Linux's default `stripe_cache_size` and its limits.
pub(crate) const DEFAULT_CACHE_ENTRIES: u32 = 256;
pub(crate) const CACHE_ENTRIES_MIN: u32 = 17;
pub(crate) const CACHE_ENTRIES_MAX: u32 = 32768;
/// Parent slots per core (requests cut into ops); beyond that: `Submit::Requeue`.
const PARENTS: usize = 128;
const SECTOR: usize = 512;
const NONE: u16 = u16::MAX;

/// The layout of a parity array (module docs): the map, the geometry, the claim words, the
/// stripe-cache size. Shared by every core and the sync engine.
pub(crate) struct StripeLayout {
    pub(crate) map: ParityMap,
    /// Sectors of each member in use (the sync space).
    pub(crate) component_sectors: u64,
    geo: Arc<Geometry>,
    claims: Box<[AtomicU64]>,
    cache_entries: AtomicU32,
}

impl Debug for StripeLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeLayout")
            .field("map", &self.map)
            .field("component_sectors", &self.component_sectors)
            .finish()
    }
}

impl StripeLayout {
    pub(crate) fn new(map: ParityMap, component_sectors: u64, geo: Geometry) -> Arc<StripeLayout> {
        Arc::new(StripeLayout {
            map,
            component_sectors,
            geo: Arc::new(geo),
            claims: (0..CLAIM_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            cache_entries: AtomicU32::new(DEFAULT_CACHE_ENTRIES),
        })
    }

    /// The band unit: 64 KiB or the chunk when smaller.
    fn unit_sectors(&self) -> u64 {
        self.map.chunk_sectors.min(UNIT_MAX_SECTORS)
    }

    /// Heads per core for `entries` Linux entries.
    fn heads_for(&self, entries: u32) -> usize {
        ((entries as u64 * 8 / self.unit_sectors()) as usize).clamp(MIN_HEADS, MAX_HEADS)
    }

    #[inline]
    fn claim_slot(stripe: u64) -> usize {
        (stripe.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - CLAIM_SLOTS.trailing_zeros())) as usize
    }

    /// Takes the claim of `stripe` (module docs); false when another head has it.
    #[inline]
    fn try_claim(&self, stripe: u64) -> bool {
        self.claims[Self::claim_slot(stripe)]
            .compare_exchange(0, stripe + 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    #[inline]
    fn release(&self, stripe: u64) {
        let prev = self.claims[Self::claim_slot(stripe)].swap(0, Ordering::Release);
        debug_assert_eq!(prev, stripe + 1, "released a claim this head did not hold");
    }

    /// The stripe-cache size in Linux entries.
    pub(crate) fn cache_entries(&self) -> u32 {
        self.cache_entries.load(Ordering::Relaxed)
    }
}

impl Layout for StripeLayout {
    fn geometry(&self) -> &Arc<Geometry> {
        &self.geo
    }

    fn health(&self, live: &dyn Fn(MemberIdx) -> bool) -> Health {
        let lost = (0..self.map.disks).filter(|&r| !live(MemberIdx(r))).count();
        let tolerate = (self.map.disks - self.map.data_disks) as usize;
        match lost {
            0 => Health::Optimal,
            l if l <= tolerate => Health::Degraded,
            _ => Health::Failed,
        }
    }

    fn optimal_io_boundary_sectors(&self) -> u64 {
        self.map.chunk_sectors
    }

    fn core(self: Arc<Self>, setup: CoreSetup) -> MdCore {
        let core = setup.core;
        let lane = StripeLane::new(self, core);
        MdCore::new(setup, lane)
    }

    fn sync(&self) -> Option<&dyn SyncShape> {
        Some(self)
    }

    fn stripe_cache(&self) -> Option<u32> {
        Some(self.cache_entries())
    }

    fn set_stripe_cache(&self, entries: u32) -> Result<(), MdError> {
        if !(CACHE_ENTRIES_MIN..=CACHE_ENTRIES_MAX).contains(&entries) {
            return Err(MdError::invalid(
                "entries",
                format!("{entries} is outside {CACHE_ENTRIES_MIN}..{CACHE_ENTRIES_MAX}"),
            ));
        }
        self.cache_entries.store(entries, Ordering::Relaxed);
        Ok(())
    }
}

/// What a head is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadState {
    /// Free.
    Idle,
    /// Waiting for its stripe's claim (tried again from the poller).
    Claiming,
    /// Member reads in flight (or waiting to be sent).
    Reading,
    /// Member writes in flight (or waiting to be sent).
    Writing,
}

/// How a head's reads were planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Read: the requested blocks straight into the request's buffers.
    Direct,
    /// Read-modify-write: the written blocks and the parity.
    Rmw,
    /// Reconstruct-write: the untouched data blocks.
    Rcw,
    /// Every readable member; lost data rebuilt first.
    Rebuild,
}

/// What a member is in a head's stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    P,
    Q,
    /// Data index.
    Data(u16),
}

/// One stripe head (module docs): buffers and requests per member, one op at a time.
struct Head {
    /// Per member: `unit` bytes.
    bufs: Vec<DmaBuf>,
    /// Raid6 read-modify-write scratch (the new data of a block).
    scratch: DmaBuf,
    /// Per member: its request while not in flight.
    ios: Vec<Option<IoBox>>,
    /// Per member: read ok in this stage / read planned.
    got: Vec<bool>,
    /// Members whose request of this stage is still to be sent.
    unsent: Vec<u16>,
    state: HeadState,
    mode: Mode,
    parent: u16,
    stripe: u64,
    /// Band in chunk offsets (sectors).
    lo: u64,
    hi: u64,
    /// Data indices the op covers: `[k0, k1)`.
    k0: u16,
    k1: u16,
    pd: StripeDisks,
    write: bool,
    claimed: bool,
    /// Requests in flight.
    pending: u16,
    /// A read of this stage failed (re-plan).
    read_failed: bool,
    /// Some member was not written.
    degraded: bool,
}

/// A request being served by heads.
struct ParentSlot {
    io: Option<IoBox>,
    ticket: Option<WriteTicket>,
    start: u64,
    end: u64,
    /// Next op: stripe and band start.
    stripe: u64,
    band_lo: u64,
    /// Ops in flight.
    ops: u16,
    failed: bool,
    degraded: bool,
}

/// A parity layout's lane on one core (module docs).
pub(crate) struct StripeLane {
    layout: Arc<StripeLayout>,
    map: ParityMap,
    bs: u32,
    unit: u64,
    parity: Parity,
    heads: Vec<Head>,
    free_heads: Vec<u16>,
    /// Heads waiting for their claim, in order.
    claiming: VecDeque<u16>,
    /// Heads with requests to send.
    sending: VecDeque<u16>,
    parents: Vec<ParentSlot>,
    free_parents: Vec<u16>,
    /// Parents with ops still to start, in order.
    waiting: VecDeque<u16>,
    /// Heads the cache size asks for on this core.
    target_heads: usize,
}

impl StripeLane {
    fn new(layout: Arc<StripeLayout>, _core: u32) -> StripeLane {
        let map = layout.map;
        let unit = layout.unit_sectors();
        let n = map.disks as usize;
        let heads_n = layout.heads_for(layout.cache_entries());
        let mut lane = StripeLane {
            map,
            bs: layout.geo.block_shift,
            unit,
            parity: Parity::best(),
            heads: Vec::with_capacity(heads_n),
            free_heads: Vec::with_capacity(MAX_HEADS),
            claiming: VecDeque::with_capacity(MAX_HEADS),
            sending: VecDeque::with_capacity(MAX_HEADS),
            parents: (0..PARENTS)
                .map(|_| ParentSlot {
                    io: None,
                    ticket: None,
                    start: 0,
                    end: 0,
                    stripe: 0,
                    band_lo: 0,
                    ops: 0,
                    failed: false,
                    degraded: false,
                })
                .collect(),
            free_parents: (0..PARENTS as u16).rev().collect(),
            waiting: VecDeque::with_capacity(PARENTS),
            target_heads: heads_n,
            layout,
        };
        for _ in 0..heads_n {
            lane.add_head(n);
        }
        lane
    }

    fn add_head(&mut self, n: usize) {
        let i = self.heads.len() as u16;
        let bytes = (self.unit as usize) * SECTOR;
        self.heads.push(Head {
            bufs: (0..n).map(|_| DmaBuf::new(bytes)).collect(),
            scratch: DmaBuf::new(bytes),
            ios: (0..n)
                .map(|r| {
                    let mut io = IoRequest::new_boxed();
                    io.tag = LANE_TAG | ((i as u64) << 16) | r as u64;
                    Some(io)
                })
                .collect(),
            got: vec![false; n],
            unsent: Vec::with_capacity(n),
            state: HeadState::Idle,
            mode: Mode::Direct,
            parent: NONE,
            stripe: 0,
            lo: 0,
            hi: 0,
            k0: 0,
            k1: 0,
            pd: StripeDisks { p: 0, q: NONE },
            write: false,
            claimed: false,
            pending: 0,
            read_failed: false,
            degraded: false,
        });
        self.free_heads.push(i);
    }

    /// Follows the configured cache size: grows now (control-path rate: only when the size
    /// changed), shrinks by retiring free heads at the end of the table.
    fn resize(&mut self) {
        let want = self.layout.heads_for(self.layout.cache_entries());
        if want == self.target_heads {
            return;
        }
        let old = self.target_heads;
        self.target_heads = want;
        if want < old {
            // Free heads past the new size retire; busy ones retire when their op ends.
            self.free_heads.retain(|&h| (h as usize) < want);
            return;
        }
        // Heads retired earlier come back first, then new ones.
        for hi in old..self.heads.len().min(want) {
            let h = &self.heads[hi];
            if h.parent == NONE && h.pending == 0 {
                self.free_heads.push(hi as u16);
            }
        }
        let n = self.map.disks as usize;
        while self.heads.len() < want {
            self.add_head(n);
        }
    }

    /// Takes a parent slot for `io` over array sectors `[start, end)`; None when all are busy.
    fn take_parent(
        &mut self,
        io: IoBox,
        start: u64,
        end: u64,
        ticket: Option<WriteTicket>,
    ) -> Result<(), (IoBox, Option<WriteTicket>)> {
        let Some(i) = self.free_parents.pop() else {
            return Err((io, ticket));
        };
        let stripe = start / self.map.stripe_sectors();
        let p = &mut self.parents[i as usize];
        p.io = Some(io);
        p.ticket = ticket;
        p.start = start;
        p.end = end;
        p.stripe = stripe;
        p.band_lo = 0;
        p.ops = 0;
        p.failed = false;
        p.degraded = false;
        self.waiting.push_back(i);
        Ok(())
    }

    /// The next op of parent `pi`: (stripe, lo, hi, k0, k1), or None when every op started.
    fn next_op(&mut self, pi: u16) -> Option<(u64, u64, u64, u16, u16)> {
        let chunk = self.map.chunk_sectors;
        let ss = self.map.stripe_sectors();
        loop {
            let p = &self.parents[pi as usize];
            let (s, lo) = (p.stripe, p.band_lo);
            let s0 = s * ss;
            if s0 >= p.end {
                return None;
            }
            let c0 = p.start.max(s0) - s0;
            let c1 = p.end.min(s0 + ss) - s0;
            let (kf, a) = (c0 / chunk, c0 % chunk);
            let (kl, b) = ((c1 - 1) / chunk, (c1 - 1) % chunk + 1);
            let mut hi = ((lo / self.unit) + 1) * self.unit;
            hi = hi.min(chunk);
            if a > lo {
                hi = hi.min(a);
            }
            if b > lo {
                hi = hi.min(b);
            }
            let p = &mut self.parents[pi as usize];
            if hi >= chunk {
                p.stripe += 1;
                p.band_lo = 0;
            } else {
                p.band_lo = hi;
            }
            let k_start = if lo >= a { kf } else { kf + 1 };
            let k_end = if hi <= b { kl + 1 } else { kl };
            if k_start < k_end {
                return Some((s, lo, hi, k_start as u16, k_end as u16));
            }
        }
    }

    /// Starts ops of waiting parents while heads are free.
    fn pump(&mut self, cx: &mut LaneCx<'_>) -> usize {
        let mut n = 0;
        while let Some(&pi) = self.waiting.front() {
            let Some(&hi) = self.free_heads.last() else { break };
            let Some((stripe, lo, bhi, k0, k1)) = self.next_op(pi) else {
                self.waiting.pop_front();
                self.maybe_finish(cx.m, pi);
                continue;
            };
            self.free_heads.pop();
            let write = self.parents[pi as usize]
                .io
                .as_ref()
                .is_some_and(|io| io.op != IoOp::Read);
            self.parents[pi as usize].ops += 1;
            let pd = self.map.parity_disks(stripe);
            let h = &mut self.heads[hi as usize];
            h.parent = pi;
            h.stripe = stripe;
            h.lo = lo;
            h.hi = bhi;
            h.k0 = k0;
            h.k1 = k1;
            h.pd = pd;
            h.write = write;
            h.claimed = false;
            h.degraded = false;
            h.state = HeadState::Claiming;
            self.start(cx, hi);
            n += 1;
        }
        n
    }

    /// Plans head `hi`'s reads (taking its claim when it needs one) and sends them.
    fn start(&mut self, cx: &mut LaneCx<'_>, hi: u16) {
        let m = cx.m;
        let map = self.map;
        let h = &self.heads[hi as usize];
        let n = map.disks;
        let msec = h.stripe * map.chunk_sectors + h.lo;
        let len = h.hi - h.lo;
        let (k0, k1, pd, write) = (h.k0, h.k1, h.pd, h.write);
        let readable = |r: u16| m.readable(MemberIdx(r), msec, len);
        let written = |k: u16| k >= k0 && k < k1;
        // Direct reads need no claim.
        let mode = if !write {
            let direct = (k0..k1).all(|k| readable(map.data_disk(pd, k)));
            if direct {
                Mode::Direct
            } else {
                Mode::Rebuild
            }
        } else {
            let parity_ok = readable(pd.p) && (pd.q == NONE || readable(pd.q));
            let mut rmw_reads = if pd.q == NONE { 1 } else { 2 };
            let mut rcw_reads = 0;
            let (mut rmw_ok, mut rcw_ok) = (parity_ok, true);
            for k in 0..self.map.data_disks {
                let r = self.map.data_disk(pd, k);
                if written(k) {
                    rmw_reads += 1;
                    rmw_ok &= readable(r);
                } else {
                    rcw_reads += 1;
                    rcw_ok &= readable(r);
                }
            }
            if rmw_ok && (!rcw_ok || rmw_reads < rcw_reads) {
                Mode::Rmw
            } else if rcw_ok {
                Mode::Rcw
            } else {
                Mode::Rebuild
            }
        };
        let needs_claim = mode != Mode::Direct;
        let h = &mut self.heads[hi as usize];
        h.mode = mode;
        if needs_claim && !h.claimed {
            if !self.layout.try_claim(h.stripe) {
                h.state = HeadState::Claiming;
                self.claiming.push_back(hi);
                return;
            }
            h.claimed = true;
        }
        // The reads of the mode.
        h.unsent.clear();
        h.read_failed = false;
        let mut lost = 0;
        for r in 0..n {
            h.got[r as usize] = false;
            let role = if r == pd.p {
                Role::P
            } else if r == pd.q {
                Role::Q
            } else {
                Role::Data(self.map.data_index(pd, r).expect("data member"))
            };
            let want = match (mode, role) {
                (Mode::Direct, Role::Data(k)) => written(k),
                (Mode::Direct, _) => false,
                (Mode::Rmw, Role::Data(k)) => written(k),
                (Mode::Rmw, _) => true,
                (Mode::Rcw, Role::Data(k)) => !written(k),
                (Mode::Rcw, _) => false,
                (Mode::Rebuild, _) => true,
            };
            if want {
                if readable(r) {
                    h.unsent.push(r);
                } else {
                    lost += 1;
                }
            }
        }
        let tolerate = (n - self.map.data_disks) as usize;
        if lost > tolerate {
            return self.op_done(cx, hi, false);
        }
        let h = &mut self.heads[hi as usize];
        h.state = HeadState::Reading;
        if h.unsent.is_empty() {
            return self.reads_done(cx, hi);
        }
        self.send(cx, hi);
    }

    /// Sends head `hi`'s unsent requests of its stage; a refused one waits for the poller.
    fn send(&mut self, cx: &mut LaneCx<'_>, hi: u16) {
        let msec_base = {
            let h = &self.heads[hi as usize];
            h.stripe * self.map.chunk_sectors + h.lo
        };
        let g = cx.m.geo();
        loop {
            let h = &mut self.heads[hi as usize];
            let Some(&r) = h.unsent.last() else { break };
            let member = MemberIdx(r);
            if !cx.m.present(member) {
                // Gone since planning: as a failed request.
                h.unsent.pop();
                if h.state == HeadState::Reading {
                    h.read_failed = true;
                } else {
                    h.degraded = true;
                }
                continue;
            }
            let len = h.hi - h.lo;
            let mut io = h.ios[r as usize]
                .take()
                .expect("a member's request is home between stages");
            let shift = g.member_shift(member);
            let op = if h.state == HeadState::Writing {
                IoOp::Write
            } else {
                IoOp::Read
            };
            io.prepare(op, (g.data_offset_sectors + msec_base) >> shift, len >> shift);
            io.iovs.clear();
            let direct = h.mode == Mode::Direct;
            if direct {
                let k = self.map.data_index(h.pd, r).expect("direct reads are data");
                let at = array_sector(&self.map, h.stripe, k, h.lo);
                let parent = self.parents[h.parent as usize]
                    .io
                    .as_ref()
                    .expect("a head serves a live parent");
                let start = parent.offset_blocks << self.bs;
                slice_iovs(
                    &parent.iovs,
                    (at - start) * SECTOR as u64,
                    len * SECTOR as u64,
                    &mut io.iovs,
                );
            } else {
                io.iovs.push(keel_bdev::IoVec {
                    buf: h.bufs[r as usize].clone(),
                    offset_bytes: 0,
                    len_bytes: (len as usize * SECTOR) as u32,
                });
            }
            match cx.submit_own(member, io) {
                Submit::Accepted => {
                    let h = &mut self.heads[hi as usize];
                    h.unsent.pop();
                    h.pending += 1;
                }
                Submit::Requeue(mut io) => {
                    io.iovs.clear();
                    let h = &mut self.heads[hi as usize];
                    h.ios[r as usize] = Some(io);
                    self.sending.push_back(hi);
                    return;
                }
            }
        }
        let h = &self.heads[hi as usize];
        if h.pending == 0 {
            match h.state {
                HeadState::Reading => self.reads_done(cx, hi),
                HeadState::Writing => self.writes_done(cx, hi),
                _ => {}
            }
        }
    }

    /// Every read of head `hi` is back: compute and write, or re-plan after a failure.
    fn reads_done(&mut self, cx: &mut LaneCx<'_>, hi: u16) {
        if self.heads[hi as usize].read_failed {
            return self.start(cx, hi);
        }
        let ok = self.compute(hi);
        if !ok {
            return self.op_done(cx, hi, false);
        }
        let h = &mut self.heads[hi as usize];
        if !h.write {
            return self.op_done(cx, hi, true);
        }
        // Writes: the written data members and the parity.
        h.unsent.clear();
        let pd = h.pd;
        for r in 0..self.map.disks {
            let want = match role(&self.map, pd, r) {
                Role::Data(k) => k >= h.k0 && k < h.k1,
                Role::P | Role::Q => true,
            };
            if !want {
                continue;
            }
            if cx.m.writable(MemberIdx(r)) {
                h.unsent.push(r);
            } else {
                h.degraded = true;
            }
        }
        h.state = HeadState::Writing;
        if h.unsent.is_empty() {
            return self.writes_done(cx, hi);
        }
        self.send(cx, hi);
    }

    /// Head `hi`'s math once its reads are in: rebuild lost blocks, fill the new data, compute
    /// parity; copies a read's blocks out. False when a lost block cannot be rebuilt.
    fn compute(&mut self, hi: u16) -> bool {
        let h = &self.heads[hi as usize];
        let len = ((h.hi - h.lo) as usize) * SECTOR;
        let pd = h.pd;
        let map = self.map;
        let n = map.disks;
        if h.mode == Mode::Direct {
            return true;
        }
        let parent = self.parents[h.parent as usize]
            .io
            .as_ref()
            .expect("a head serves a live parent");
        let pstart = parent.offset_blocks << self.bs;
        let new_off = |k: u16| (array_sector(&map, h.stripe, k, h.lo) - pstart) as usize * SECTOR;
        let written = |k: u16| k >= h.k0 && k < h.k1;
        match h.mode {
            Mode::Rebuild => {
                if !rebuild(&self.parity, &map, pd, &h.bufs, &h.got, 0, len) {
                    return false;
                }
                if !h.write {
                    for k in h.k0..h.k1 {
                        let r = map.data_disk(pd, k);
                        copy_to_iovs(&parent.iovs, new_off(k), &h.bufs[r as usize].bytes()[..len]);
                    }
                    return true;
                }
                for k in h.k0..h.k1 {
                    let r = map.data_disk(pd, k);
                    fill_new(parent, new_off(k), &mut h.bufs[r as usize].bytes_mut()[..len]);
                }
                gen_parity(&self.parity, &map, pd, &h.bufs, 0, len, None);
            }
            Mode::Rcw => {
                for k in h.k0..h.k1 {
                    let r = map.data_disk(pd, k);
                    fill_new(parent, new_off(k), &mut h.bufs[r as usize].bytes_mut()[..len]);
                }
                gen_parity(&self.parity, &map, pd, &h.bufs, 0, len, None);
            }
            Mode::Rmw => {
                for r in 0..n {
                    let Role::Data(k) = role(&map, pd, r) else { continue };
                    if !written(k) {
                        continue;
                    }
                    {
                        let mut s = h.scratch.bytes_mut();
                        fill_new(parent, new_off(k), &mut s[..len]);
                    }
                    let old = h.bufs[r as usize].bytes();
                    let new = h.scratch.bytes();
                    let mut p = h.bufs[pd.p as usize].bytes_mut();
                    if pd.q == NONE {
                        self.parity
                            .p_update(&old[..len], &new[..len], &mut p[..len])
                            .expect("equal lengths");
                    } else {
                        let mut q = h.bufs[pd.q as usize].bytes_mut();
                        self.parity
                            .pq_update(
                                map.q_slot(pd, r),
                                &old[..len],
                                &new[..len],
                                &mut p[..len],
                                &mut q[..len],
                            )
                            .expect("equal lengths, slot below 255");
                    }
                    drop(old);
                    drop(new);
                    h.bufs[r as usize].bytes_mut()[..len].copy_from_slice(&h.scratch.bytes()[..len]);
                }
            }
            Mode::Direct => {}
        }
        true
    }

    /// A request of head `hi` came back.
    fn completed(&mut self, cx: &mut LaneCx<'_>, hi: u16, r: u16, mut io: IoBox) {
        let status = io.status();
        io.iovs.clear();
        let h = &mut self.heads[hi as usize];
        h.ios[r as usize] = Some(io);
        h.pending -= 1;
        let ok = status == IoStatus::Success;
        if h.parent == NONE {
            // The array went away meanwhile: the head frees once everything is home.
            if h.pending == 0 && h.unsent.is_empty() {
                self.free_head(hi);
            }
            return;
        }
        if !ok && status != IoStatus::Aborted {
            cx.m.fail_member(MemberIdx(r));
        }
        match h.state {
            HeadState::Reading => {
                if ok {
                    h.got[r as usize] = true;
                } else {
                    h.read_failed = true;
                }
                if h.pending == 0 && h.unsent.is_empty() {
                    self.reads_done(cx, hi);
                }
            }
            HeadState::Writing => {
                if !ok {
                    h.degraded = true;
                }
                if h.pending == 0 && h.unsent.is_empty() {
                    self.writes_done(cx, hi);
                }
            }
            HeadState::Idle | HeadState::Claiming => {}
        }
    }

    fn writes_done(&mut self, cx: &mut LaneCx<'_>, hi: u16) {
        let degraded = self.heads[hi as usize].degraded;
        let ok = !degraded || self.layout.health(&|r| cx.m.in_sync(r)) != Health::Failed;
        self.op_done(cx, hi, ok);
    }

    /// Head `hi`'s op is over (`ok`: it served its part): release, account, maybe finish.
    fn op_done(&mut self, cx: &mut LaneCx<'_>, hi: u16, ok: bool) {
        let h = &mut self.heads[hi as usize];
        if h.claimed {
            self.layout.release(h.stripe);
            h.claimed = false;
        }
        let pi = h.parent;
        let degraded = h.degraded;
        self.free_head(hi);
        let p = &mut self.parents[pi as usize];
        p.ops -= 1;
        p.failed |= !ok;
        p.degraded |= degraded;
        if !self.waiting.contains(&pi) {
            self.maybe_finish(cx.m, pi);
        }
    }

    fn free_head(&mut self, hi: u16) {
        let h = &mut self.heads[hi as usize];
        h.state = HeadState::Idle;
        h.parent = NONE;
        if (hi as usize) < self.target_heads {
            self.free_heads.push(hi);
        }
    }

    /// Completes parent `pi` once every op started and finished.
    fn maybe_finish(&mut self, m: &Members, pi: u16) {
        let p = &mut self.parents[pi as usize];
        if p.ops > 0 || p.io.is_none() {
            return;
        }
        let ss = self.map.stripe_sectors();
        if p.stripe * ss < p.end {
            return;
        }
        let io = p.io.take().expect("checked");
        if let Some(t) = p.ticket.take() {
            m.end_write(t, !p.degraded && !p.failed);
        }
        let status = if p.failed { IoStatus::Failed } else { IoStatus::Success };
        self.free_parents.push(pi);
        io.complete(status);
    }
}

/// The role of member `r` in a stripe of `map` whose parity is at `pd`.
#[inline]
fn role(map: &ParityMap, pd: StripeDisks, r: u16) -> Role {
    if r == pd.p {
        Role::P
    } else if r == pd.q {
        Role::Q
    } else {
        Role::Data(map.data_index(pd, r).expect("a member is P, Q or data"))
    }
}

/// Array sector of data index `k` of `stripe` at chunk offset `off`.
#[inline]
fn array_sector(map: &ParityMap, stripe: u64, k: u16, off: u64) -> u64 {
    (stripe * map.data_disks as u64 + k as u64) * map.chunk_sectors + off
}

/// Copies `src` into the request's buffers from byte `off`.
fn copy_to_iovs(iovs: &SgList, mut off: usize, mut src: &[u8]) {
    for v in iovs {
        if src.is_empty() {
            break;
        }
        let vlen = v.len_bytes as usize;
        if off >= vlen {
            off -= vlen;
            continue;
        }
        let take = (vlen - off).min(src.len());
        let start = v.offset_bytes as usize + off;
        v.buf.bytes_mut()[start..start + take].copy_from_slice(&src[..take]);
        src = &src[take..];
        off = 0;
    }
}

/// The new data of a write at byte `off` of `parent` into `dst` (zeroes for write-zeroes and
/// unmap, which carry no data).
fn fill_new(parent: &IoRequest, mut off: usize, mut dst: &mut [u8]) {
    if parent.op != IoOp::Write {
        dst.fill(0);
        return;
    }
    for v in &parent.iovs {
        if dst.is_empty() {
            break;
        }
        let vlen = v.len_bytes as usize;
        if off >= vlen {
            off -= vlen;
            continue;
        }
        let take = (vlen - off).min(dst.len());
        let start = v.offset_bytes as usize + off;
        dst[..take].copy_from_slice(&v.buf.bytes()[start..start + take]);
        dst = &mut dst[take..];
        off = 0;
    }
}

type Refs<'a> = ArrayVec<Ref<'a, [u8]>, MAX_MEMBERS>;

/// Members of the data slots of a stripe in md's Q order (raid4/5: data index order).
fn slot_members(map: &ParityMap, pd: StripeDisks) -> ArrayVec<u16, MAX_MEMBERS> {
    let mut by_slot: ArrayVec<u16, MAX_MEMBERS> = (0..map.data_disks).map(|_| NONE).collect();
    for k in 0..map.data_disks {
        let r = map.data_disk(pd, k);
        let slot = if map.has_q() { map.q_slot(pd, r) } else { k as usize };
        by_slot[slot] = r;
    }
    by_slot
}

/// P (and Q) of `bufs`' data members into their parity buffers, `len` bytes.
/// `bufs` hold member `r`'s bytes at `[off, off + len)` of `bufs[r]`; `p_out`/`q_out` (None:
/// the P and Q members' own buffers) take the result at the same range.
pub(crate) fn gen_parity(
    parity: &Parity,
    map: &ParityMap,
    pd: StripeDisks,
    bufs: &[DmaBuf],
    off: usize,
    len: usize,
    out: Option<(&DmaBuf, &DmaBuf)>,
) {
    let slots = slot_members(map, pd);
    let data: Refs<'_> = slots
        .iter()
        .map(|&r| Ref::map(bufs[r as usize].bytes(), |b| &b[off..off + len]))
        .collect();
    let (pb, qb) = match out {
        Some((p, q)) => (p, q),
        None => (
            &bufs[pd.p as usize],
            &bufs[if map.has_q() { pd.q } else { pd.p } as usize],
        ),
    };
    let mut p = pb.bytes_mut();
    if map.has_q() {
        let mut q = qb.bytes_mut();
        parity
            .pq_gen(&data, &mut p[off..off + len], &mut q[off..off + len])
            .expect("equal lengths");
    } else {
        parity.xor_gen(&data, &mut p[off..off + len]).expect("equal lengths");
    }
}

/// Rebuilds the data members of `bufs` not in `got` from the others and P/Q (`len` bytes).
/// False when more are lost than the parity can give back.
pub(crate) fn rebuild(
    parity: &Parity,
    map: &ParityMap,
    pd: StripeDisks,
    bufs: &[DmaBuf],
    got: &[bool],
    off: usize,
    len: usize,
) -> bool {
    let slots = slot_members(map, pd);
    let lost: ArrayVec<usize, 3> = match slots
        .iter()
        .enumerate()
        .filter(|(_, &r)| !got[r as usize])
        .map(|(s, _)| s)
        .take(3)
        .try_fold(ArrayVec::<usize, 3>::new(), |mut a, s| {
            a.try_push(s).ok()?;
            Some(a)
        }) {
        Some(l) => l,
        None => return false,
    };
    if lost.is_empty() {
        return true;
    }
    let has_p = got[pd.p as usize];
    let has_q = map.has_q() && got[pd.q as usize];
    let data: ArrayVec<Option<Ref<'_, [u8]>>, MAX_MEMBERS> = slots
        .iter()
        .map(|&r| got[r as usize].then(|| Ref::map(bufs[r as usize].bytes(), |b| &b[off..off + len])))
        .collect();
    let out =
        |s: usize| -> RefMut<'_, [u8]> { RefMut::map(bufs[slots[s] as usize].bytes_mut(), |b| &mut b[off..off + len]) };
    match (lost.as_slice(), has_p, has_q) {
        ([x], true, _) => {
            let p = bufs[pd.p as usize].bytes();
            parity.rebuild_from_p(&data, &p[off..off + len], &mut out(*x)).is_ok()
        }
        ([x], false, true) => {
            let q = bufs[pd.q as usize].bytes();
            parity.rebuild_from_q(&data, &q[off..off + len], &mut out(*x)).is_ok()
        }
        ([x, y], true, true) => {
            let p = bufs[pd.p as usize].bytes();
            let q = bufs[pd.q as usize].bytes();
            parity
                .rebuild_two(
                    &data,
                    &p[off..off + len],
                    &q[off..off + len],
                    &mut out(*x),
                    &mut out(*y),
                )
                .is_ok()
        }
        _ => false,
    }
}

impl Lane for StripeLane {
    /// A write touches the stripe rows of its first to last stripe, in member sectors.
    #[inline]
    fn gate_range(&self, start: u64, end: u64) -> (u64, u64) {
        let ss = self.map.stripe_sectors();
        let chunk = self.map.chunk_sectors;
        (start / ss * chunk, end.div_ceil(ss) * chunk)
    }

    fn submit(&mut self, cx: &mut LaneCx<'_>, io: IoBox, ticket: Option<WriteTicket>) -> Submit {
        let start = io.offset_blocks << self.bs;
        let end = start + (io.num_blocks << self.bs);
        if io.op == IoOp::Read {
            let l = self.map.locate(start);
            if end - start <= l.left_in_chunk && cx.m.readable(l.member, l.member_sector, end - start) {
                return cx.forward(self, io, l.member, l.member_sector, start);
            }
        }
        match self.take_parent(io, start, end, ticket) {
            Ok(()) => {
                self.pump(cx);
                Submit::Accepted
            }
            Err((io, ticket)) => {
                if let Some(t) = ticket {
                    cx.m.end_write(t, true);
                }
                Submit::Requeue(io)
            }
        }
    }

    /// One-member reads split at chunks: only a single-chunk read whose member has another
    /// block size than the array reaches the splitter ([`LaneCx::forward`] splits it then).
    fn next_piece(&mut self, m: &Members, _op: IoOp, cur: &mut Cursor) -> Piece {
        let l = self.map.locate(cur.next);
        let sectors = l.left_in_chunk.min(cur.end - cur.next);
        let array_sector = cur.next;
        cur.next += sectors;
        if !m.present(l.member) {
            return Piece::Fail;
        }
        Piece::Child {
            member: l.member,
            member_sector: l.member_sector,
            array_sector,
            sectors,
        }
    }

    fn child_failed(&mut self, m: &Members, child: &FailedChild) -> Verdict {
        m.fail_member(child.member);
        Verdict::Fail
    }

    /// A forwarded read failed: the member is marked faulty and the read served by rebuilding.
    fn forward_failed(&mut self, cx: &mut LaneCx<'_>, io: IoBox, member: MemberIdx) {
        let status = io.status();
        if io.op != IoOp::Read || status == IoStatus::Aborted {
            return io.complete(upward(status));
        }
        cx.m.fail_member(member);
        let start = io.offset_blocks << self.bs;
        let end = start + (io.num_blocks << self.bs);
        match self.take_parent(io, start, end, None) {
            Ok(()) => {
                self.pump(cx);
            }
            Err((io, _)) => io.complete(IoStatus::Failed),
        }
    }

    fn own_done(&mut self, cx: &mut LaneCx<'_>, io: IoBox) {
        let tag = io.tag & !LANE_TAG;
        let hi = (tag >> 16) as u16;
        let r = (tag & 0xFFFF) as u16;
        self.completed(cx, hi, r, io);
        self.pump(cx);
    }

    fn fanout_to(&self, m: &Members, member: MemberIdx) -> bool {
        m.writable(member)
    }

    fn poll(&mut self, cx: &mut LaneCx<'_>) -> usize {
        let mut n = 0;
        self.resize();
        for _ in 0..self.sending.len() {
            let Some(hi) = self.sending.pop_front() else { break };
            n += 1;
            self.send(cx, hi);
        }
        for _ in 0..self.claiming.len() {
            let Some(hi) = self.claiming.pop_front() else { break };
            if self.heads[hi as usize].parent == NONE {
                continue;
            }
            if self.layout.try_claim(self.heads[hi as usize].stripe) {
                self.heads[hi as usize].claimed = true;
                n += 1;
                self.start(cx, hi);
            } else {
                self.claiming.push_back(hi);
            }
        }
        if !self.waiting.is_empty() && !self.free_heads.is_empty() {
            n += self.pump(cx);
        }
        n
    }

    /// The array is going away on this core: waiting and served requests fail `Aborted`, claims
    /// are given back; heads with requests in flight free themselves as those come home.
    fn quiesce(&mut self) {
        self.waiting.clear();
        self.claiming.clear();
        self.sending.clear();
        for hi in 0..self.heads.len() {
            let h = &mut self.heads[hi];
            if h.parent == NONE {
                continue;
            }
            if h.claimed {
                self.layout.release(h.stripe);
                h.claimed = false;
            }
            h.parent = NONE;
            h.unsent.clear();
            h.state = HeadState::Idle;
            if h.pending == 0 && (hi) < self.target_heads {
                self.free_heads.push(hi as u16);
            }
        }
        for (i, p) in self.parents.iter_mut().enumerate() {
            if let Some(io) = p.io.take() {
                // The gate is dropped with the array; the ticket goes with it.
                let _unended = p.ticket.take();
                io.complete(IoStatus::Aborted);
                self.free_parents.push(i as u16);
            }
        }
    }
}
