//! The per-core data path of a mapped device.
//!
//! # Shape
//!
//! Each mapped device has an [`IoDevice`]`<DmCore>`; the dm bdev's backend channel on a core
//! ([`DmChannel`]) holds that core's [`DmCore`]. A `DmCore` is keel-bdev's layer scaffold
//! ([`LayerCore`]: the state behind one `RefCell` that only its own core touches, the
//! completion queue, the poller draining it) around dm's state ([`LayerState`] for
//! `CoreState`), which holds:
//!
//! * a **table snapshot** ([`CoreTable`]): the live [`Table`] (`Arc`, immutable) plus what this
//!   core needs around it — the base bdevs' [`Channel`]s on this core, target starts in blocks
//!   for the lookup, per-target xorshift states and delay FIFOs;
//! * a [`Splitter`] (keel-bdev's split engine: the child pool with dm's per-child state, the
//!   parent slots, the pending and retry queues, all preallocated) and, apart from it, the
//!   running state it is driven with (`Run`: the snapshot, the mode flags, the held queue).
//!
//! Configuration reaches the snapshot only through `for_each_channel` visits ([`DmCore::suspend`],
//! [`DmCore::resume`], …), which run as messages between poller turns, never during a submit.
//!
//! # The hot paths
//!
//! The snapshot holds a [`ForwardPath`] to each base device on this core, built when the dm
//! bdev's channel here binds the core's state ([`DmCore::bind`]: the paths' shared statistics
//! link to that channel's).
//!
//! While the device runs (`fast`: live table, not suspended, nothing held, not read-only) with a
//! table of **one direct target** over the whole device — linear, or striped over at most
//! [`keel_bdev::ROUTE_LEGS`] stripes — the core's state publishes that mapping as a [`Route`]
//! through the bdev channel's [`RouteHandle`] (`refresh_fast`). The bdev layer then maps such
//! requests and forwards them in place itself, without calling this module; requests that do
//! not fit the route (crossing a chunk, flush, reset) still come here. Every visit that changes
//! `fast` republishes or clears the route on the same core, so a suspended, held, dead or
//! swapped device never sees a routed request.
//!
//! Here, `submit` checks the same flag, finds the target (index 0 for a one-target table, binary
//! search otherwise), and when the I/O fits in the target (and in one chunk of a striped target)
//! and the target is *direct* (same block size as its devices, no per-piece state) and maps
//! inline (linear, striped), computes the device and sector and forwards **the request itself**
//! in place along the device's path ([`ForwardPath::forward`]). Either way a success goes
//! straight to the submitter (the bdev layer restores the offset and charges the pair's shared
//! statistics on the way); a failure comes back to this channel's queue with the caller's offset
//! restored and is completed upward. This is straight-line code in [`CoreState::submit`]; every
//! other request goes to `submit_general`. No allocation, no lock, a few branches.
//!
//! The snapshot is held inline in the core's state (not boxed): one pointer fewer between the
//! channel and the base devices' channels on every I/O.
//!
//! # Splitting
//!
//! Anything else — an I/O crossing a target or chunk boundary, a tracked target, block sizes that
//! differ — goes to the core's [`Splitter`] (keel-bdev's `split.rs` has the engine's essay: who
//! owns the pools, the policy contract, requeue). dm is its policy (`impl SplitPolicy for Run`):
//!
//! * a parent's cursor is device blocks for data, flush legs (`0..legs`: every target's flush
//!   legs in turn) for a flush, devices (`0..devs`) for a reset;
//! * the next piece ends at the next target or chunk boundary and is mapped: linear and striped
//!   inline, other targets through `Target::map`. A piece the target answers by itself (`error`,
//!   `zero`, dropped writes) needs no child (`Step::Answered`; zero-fill fills the parent's
//!   buffers); a piece delay holds is a child kept in the target's FIFO (`Step::Kept`), sent by
//!   the poller when its time comes (a refusal waits in the splitter's retry queue,
//!   `Splitter::park`); everything else is a child sent now, its scatter list a window on the
//!   parent's buffers (`keel_bdev::slice_iovs`: reference-counted handles, not copies), around
//!   which a tracked target (flakey) gets `before_submit` / `end_io`;
//! * a child's completion records a failure against its target (striped's leg health); a flush or
//!   reset leg answering `Unsupported` (no cache to flush) succeeds; the status folds into the
//!   parent first failure wins, except that during a noflush suspend a removed base marks the
//!   parent for the held queue instead (see below);
//! * a finished parent completes upward, or goes to the held queue.
//!
//! The splitter issues children as long as its pool lasts; a parent whose remaining pieces found
//! the pool empty waits in its pending queue and continues, from this core's poller, as children
//! come back, so an I/O of any size progresses with any pool size. `Submit::Requeue` goes back up
//! only when nothing was started: no free parent slot or child.
//!
//! # Suspend, drain, swap
//!
//! A suspend visit sets `suspended` (and turns the route off): new I/O goes to the **held** queue
//! (it is never failed).
//! Delay FIFOs are released at once and stop holding. I/O already mapped (`inflight`: forwarded
//! parents and held-in-FIFO pieces counted in the forwarding context, plus the splitter's parents
//! in flight) keeps going; a core with I/O in flight keeps a
//! [`DrainTicket`] and releases it from its poller when `inflight` reaches 0. The suspend
//! completes when every core released its ticket. A resume visit installs the new snapshot (if
//! the table changed: the device is drained, so no I/O straddles two tables) and clears
//! `suspended`; the poller then re-issues the held queue in order, against the new table.
//!
//! With `noflush`, a piece that fails because its base bdev was removed (`Removed`, or `Aborted`
//! for what the removed base held) makes its parent go back to the held queue instead of
//! failing — Linux's "pushed back and requeued" — and it is re-issued after resume, possibly to
//! a new table. Otherwise a removed base's I/O
//! fails (`Failed`: the dm device itself is not removed).

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use keel_bdev::{
    slice_iovs, zero_iovs, BackendChannel, BaseId, ChannelCx, ChannelStats, ChildDone, Children, CompletionQueue,
    ForwardCtx, ForwardPath, IoBox, IoOp, IoRequest, IoStatus, LayerCore, LayerHandle, LayerState, Leg, Parent, Route,
    RouteHandle, Sent, SplitPolicy, Splitter, Step, Striping, Submit,
};
use keel_reactor::{ticks, CoreId, Cores, IoChannel};

use crate::table::Table;
use crate::target::{Layout, Map, MapCx, Piece, Target, SECTOR_BYTES};

/// Child requests per channel. A 4 KiB random workload through a one-chunk-per-I/O layout needs
/// none; crossing I/Os need a few each; larger I/Os continue as children come back. 128 keeps a
/// queue depth of 128 of crossing I/Os busy at ~90 KiB of requests per core per device.
const CHILDREN: usize = 128;
/// Split parents in flight per channel (beyond that: `Submit::Requeue`).
const PARENTS: usize = 128;
/// Initial capacity of the held queue, the retry queue and each delay FIFO; they keep whatever
/// high-water mark they reach.
const QUEUE_CAPACITY: usize = 256;
/// Completion queue capacity before it first grows.
const CQ_CAPACITY: usize = 512;
/// Marks the layer word of a piece a delay target holds: the rest is the caller's offset, which
/// the piece's completion (a plain submit's, not a forward's) does not restore by itself.
/// Offsets are block numbers, far below 2^63.
const HELD_PIECE: u64 = 1 << 63;

/// What the control path publishes for channels created later (read once by the factory).
#[derive(Default)]
pub(crate) struct Published {
    pub table: Option<Arc<Table>>,
    pub suspended: bool,
    pub noflush: bool,
    pub dead: bool,
}

/// Counts cores that still have I/O in flight; runs `done` on the origin core when the count
/// reaches zero. Starts at 1 for the visiting round itself, released by its completion.
pub(crate) struct DrainTicket {
    pending: AtomicUsize,
    done: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    cores: Cores,
    origin: CoreId,
}

impl DrainTicket {
    pub(crate) fn new(cores: Cores, origin: CoreId, done: impl FnOnce() + Send + 'static) -> Arc<DrainTicket> {
        Arc::new(DrainTicket {
            pending: AtomicUsize::new(1),
            done: Mutex::new(Some(Box::new(done))),
            cores,
            origin,
        })
    }

    fn add(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// One holder is done. Any core.
    pub(crate) fn release(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(done) = self.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
                if self.cores.send(self.origin, done).is_err() {
                    tracing::warn!("dm drain finished while the reactors stop");
                }
            }
        }
    }
}

/// A base bdev of the table, on this core.
struct CoreDev {
    /// The way to the base's channel on this core (in-place forwards, and its channel for
    /// children).
    path: ForwardPath,
    /// log2(base block size / 512): sectors → base blocks.
    sector_shift: u32,
    /// log2(device block size / base block size): device blocks → base blocks.
    block_shift: u32,
}

/// A piece held by a delay target until `release_ticks`.
struct HeldPiece {
    release_ticks: u64,
    io: IoBox,
    dev: u32,
    class: u8,
}

/// A target's mapping as the hot path computes it: inline for linear and striped, through the
/// target's `map` otherwise.
enum Fast {
    Linear {
        dev: u32,
        offset_sectors: u64,
    },
    Striped {
        /// Chunks in sectors over the legs.
        striping: Striping,
        /// Each stripe's device and start on it, in sectors.
        legs: Box<[(u32, u64)]>,
    },
    Dyn,
}

/// One target of the snapshot.
struct CoreTarget {
    fast: Fast,
    target: Arc<dyn Target>,
    start_blocks: u64,
    len_blocks: u64,
    /// Chunk size in blocks minus one; `u64::MAX` = no chunk boundary.
    split_mask: u64,
    /// Pieces may be forwarded as the request itself.
    direct: bool,
    rng: u64,
    fifo: VecDeque<HeldPiece>,
}

/// The live table as this core sees it. Built on this core by a visit (or the factory).
struct CoreTable {
    table: Arc<Table>,
    /// Target starts in device blocks, for the lookup.
    starts: Vec<u64>,
    targets: Vec<CoreTarget>,
    devs: Vec<CoreDev>,
    /// log2(device block size / 512).
    block_shift: u32,
    block_bytes: u64,
    num_blocks: u64,
    readonly: bool,
    /// Delay targets hold pieces (off while suspended).
    holding: bool,
    /// (target, leg) of every flush leg.
    legs: Vec<(u32, u32)>,
    delay_targets: Vec<u32>,
    /// `(device, offset_sectors)` when the table is one direct linear target (the common
    /// one-volume-on-one-device case): the hot path then maps without the lookup and the chunk
    /// checks.
    whole_linear: Option<(u32, u64)>,
}

impl CoreTarget {
    /// Maps a piece at `rel_sector` of this target (see [`Fast`]).
    #[inline(always)]
    fn map(&mut self, op: IoOp, rel_sector: u64) -> Map {
        match self.map_inline(rel_sector) {
            Some((dev, sector)) => Map::Remap { dev, sector },
            None => self.target.map(op, rel_sector, &mut MapCx::new(&mut self.rng)),
        }
    }

    /// `(device, sector)` of `rel_sector` for the targets mapped inline (linear, striped);
    /// `None` for the others.
    #[inline(always)]
    fn map_inline(&self, rel_sector: u64) -> Option<(u32, u64)> {
        match &self.fast {
            Fast::Linear { dev, offset_sectors } => Some((*dev, offset_sectors + rel_sector)),
            Fast::Striped { striping, legs } => {
                let p = striping.locate(rel_sector);
                let (dev, offset) = legs[p.leg];
                Some((dev, offset + p.offset_blocks))
            }
            Fast::Dyn => None,
        }
    }
}

impl CoreTable {
    /// Builds the snapshot on the calling core (creates the base bdevs' channels here, and a
    /// forward path from the dm bdev channel whose statistics are `layer` to each).
    fn build(table: &Arc<Table>, core: CoreId, fwd: &Rc<ForwardCtx>, layer: &Rc<ChannelStats>) -> CoreTable {
        let block_shift = (table.block_size as u64 / SECTOR_BYTES).trailing_zeros();
        let devs: Vec<CoreDev> = table
            .devs
            .iter()
            .map(|d| {
                let claim = d.claim.as_ref().expect("a live table's devices are claimed");
                let dbs = d.geometry.block_size;
                CoreDev {
                    path: ForwardPath::new(fwd, layer, claim.desc.channel()),
                    sector_shift: (dbs as u64 / SECTOR_BYTES).trailing_zeros(),
                    block_shift: (table.block_size / dbs).trailing_zeros(),
                }
            })
            .collect();
        let mut legs = Vec::new();
        let mut delay_targets = Vec::new();
        let targets: Vec<CoreTarget> = table
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                for leg in 0..l.target.flush_legs() {
                    legs.push((i as u32, leg));
                }
                let holds = l.ttype.name == "delay";
                if holds {
                    delay_targets.push(i as u32);
                }
                let split_mask = match l.target.split_sectors() {
                    Some((chunk, _)) => (chunk >> block_shift).max(1) - 1,
                    None => u64::MAX,
                };
                let same_size = l.target.extents().iter().all(|x| devs[x.dev as usize].block_shift == 0);
                let tracked = l.target.tracked();
                let fast = match l.target.layout() {
                    Layout::Linear { dev, offset_sectors } => Fast::Linear { dev, offset_sectors },
                    Layout::Striped { striping, stripes } => Fast::Striped {
                        striping,
                        legs: stripes.into_boxed_slice(),
                    },
                    Layout::Other => Fast::Dyn,
                };
                CoreTarget {
                    fast,
                    target: l.target.clone(),
                    start_blocks: l.start_sectors >> block_shift,
                    len_blocks: l.len_sectors >> block_shift,
                    split_mask,
                    direct: same_size && !tracked,
                    // Distinct non-zero xorshift seeds per core and target.
                    rng: 0x9e37_79b9_7f4a_7c15 ^ ((core.0 as u64 + 1) << 32) ^ (i as u64 + 1),
                    fifo: if holds {
                        VecDeque::with_capacity(QUEUE_CAPACITY)
                    } else {
                        VecDeque::new()
                    },
                }
            })
            .collect();
        let whole_linear = match targets.as_slice() {
            [t] if t.direct => match t.fast {
                Fast::Linear { dev, offset_sectors } => Some((dev, offset_sectors)),
                _ => None,
            },
            _ => None,
        };
        CoreTable {
            whole_linear,
            starts: targets.iter().map(|t| t.start_blocks).collect(),
            block_shift,
            block_bytes: table.block_size as u64,
            num_blocks: table.num_blocks(),
            readonly: table.readonly,
            holding: true,
            legs,
            delay_targets,
            targets,
            devs,
            table: table.clone(),
        }
    }

    /// The route of this snapshot for the core (see `refresh_fast`): one direct target over the
    /// whole device, linear or striped over at most `ROUTE_LEGS` stripes (wider stripe sets get
    /// no route: `Route::striped` declines them).
    fn route(&self) -> Route {
        let [ct] = self.targets.as_slice() else {
            return Route::off();
        };
        if !ct.direct {
            return Route::off();
        }
        let ops = self.table.caps;
        match &ct.fast {
            Fast::Linear { dev, offset_sectors } => {
                let d = &self.devs[*dev as usize];
                Route::linear(d.path.clone(), offset_sectors >> d.sector_shift, ops)
            }
            Fast::Striped { striping, legs } => {
                let legs = legs
                    .iter()
                    .map(|&(dev, offset_sectors)| {
                        let d = &self.devs[dev as usize];
                        Leg {
                            path: d.path.clone(),
                            offset_blocks: offset_sectors >> d.sector_shift,
                        }
                    })
                    .collect();
                Route::striped(1 << (striping.chunk_shift() - self.block_shift), legs, ops).unwrap_or_else(Route::off)
            }
            Fast::Dyn => Route::off(),
        }
    }

    /// `(device, sector)` of a read, write, unmap or write_zeroes of `num_blocks` at
    /// `offset_blocks` (inside the table) when the whole range goes to one device as it is: one
    /// direct target, within one chunk. `None` = it needs the general path (split, or a target
    /// that maps by itself).
    #[inline(always)]
    fn map_direct(&self, offset_blocks: u64, num_blocks: u64) -> Option<(u32, u64)> {
        if let Some((dev, offset_sectors)) = self.whole_linear {
            // The table starts at 0; only its end needs checking.
            return (offset_blocks + num_blocks <= self.num_blocks)
                .then(|| (dev, offset_sectors + (offset_blocks << self.block_shift)));
        }
        let ct = &self.targets[self.find(offset_blocks)];
        let rel = offset_blocks - ct.start_blocks;
        let last = rel + num_blocks - 1;
        if ct.direct && last < ct.len_blocks && (rel | ct.split_mask) == (last | ct.split_mask) {
            ct.map_inline(rel << self.block_shift)
        } else {
            None
        }
    }

    /// Prepares `child` for the `n` device blocks of `parent` from device block `at`, mapped to
    /// device `dev` at `sector`: the range on the base, and the window of the parent's buffers.
    #[inline(always)]
    fn prepare_data(&self, child: &mut IoRequest, parent: &IoRequest, at: u64, n: u64, dev: u32, sector: u64) {
        let d = &self.devs[dev as usize];
        child.prepare(parent.op, sector >> d.sector_shift, n << d.block_shift);
        child.iovs.clear();
        if parent.op.has_data() {
            let at_bytes = (at - parent.offset_blocks) * self.block_bytes;
            slice_iovs(&parent.iovs, at_bytes, n * self.block_bytes, &mut child.iovs);
        }
    }

    /// The target containing device block `offset_blocks` (which is inside the table).
    #[inline]
    fn find(&self, offset_blocks: u64) -> usize {
        if self.starts.len() == 1 {
            0
        } else {
            self.starts.partition_point(|&s| s <= offset_blocks) - 1
        }
    }
}

/// Kinds of child piece.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum ChildKind {
    #[default]
    Data,
    FlushLeg,
    ResetLeg,
}

/// dm's side data of a child (the splitter keeps it, and the child's parent, by the child).
#[derive(Clone, Copy, Default)]
struct ChildMeta {
    target: u32,
    /// Data: piece start relative to the target, in sectors. Flush: the leg.
    rel: u64,
    word: u64,
    kind: ChildKind,
}

/// dm's side data of a split parent.
#[derive(Default)]
struct DmParent {
    /// Go back to the held queue instead of completing (noflush, base removed).
    requeue: bool,
}

/// The core's splitter: parents are device blocks (`offset..offset + num`) for data, flush legs
/// (`0..legs`) for a flush, devices (`0..devs`) for a reset.
type DmSplitter = Splitter<ChildMeta, DmParent>;

impl SplitPolicy for Run {
    type Child = ChildMeta;
    type Parent = DmParent;

    /// Maps the piece at the cursor: a reset's device, a flush's leg, or a data piece up to the
    /// next target or chunk boundary. Pieces a target answers itself need no child; held pieces
    /// go to their delay FIFO.
    #[inline]
    fn next_piece(&mut self, p: Parent<'_, DmParent>, children: &mut Children<'_, ChildMeta>) -> Step {
        let Some(t) = self.table.as_mut() else {
            unreachable!("split parents imply a table")
        };
        let pio = p.io;
        let op = pio.op;
        // What this piece is, where it goes.
        let (m, n, ti, rel, kind) = match op {
            IoOp::Reset => {
                let dev = p.next as u32;
                (Map::Remap { dev, sector: 0 }, 1, u32::MAX, 0, ChildKind::ResetLeg)
            }
            IoOp::Flush => {
                let (ti, leg) = t.legs[p.next as usize];
                let ct = &mut t.targets[ti as usize];
                let m = ct.target.map_flush(leg, &mut MapCx::new(&mut ct.rng));
                (m, 1, ti, leg as u64, ChildKind::FlushLeg)
            }
            _ => {
                let i = t.find(p.next);
                let ct = &mut t.targets[i];
                let rel = p.next - ct.start_blocks;
                let piece_end = (rel | ct.split_mask)
                    .saturating_add(1)
                    .min(ct.len_blocks)
                    .min(p.end - ct.start_blocks);
                let rel_sectors = rel << t.block_shift;
                let n = piece_end - rel;
                if let Some((dev, sector)) = ct.map_inline(rel_sectors) {
                    // Linear and striped: untracked, never held, nothing to go through `Map` for.
                    let Some((mut child, meta)) = children.take() else {
                        return Step::Stalled;
                    };
                    t.prepare_data(&mut child, pio, p.next, n, dev, sector);
                    *meta = ChildMeta {
                        target: i as u32,
                        rel: rel_sectors,
                        word: 0,
                        kind: ChildKind::Data,
                    };
                    return Step::Send {
                        child,
                        base: BaseId(dev),
                        units: n,
                    };
                }
                let m = ct.target.map(op, rel_sectors, &mut MapCx::new(&mut ct.rng));
                (m, n, i as u32, rel_sectors, ChildKind::Data)
            }
        };
        let (dev, sector, word, hold) = match m {
            Map::Remap { dev, sector } => (dev, sector, 0, None),
            Map::Track { dev, sector, word } => (dev, sector, word, None),
            Map::Hold {
                dev,
                sector,
                delay_ticks,
                class,
            } => (dev, sector, 0, t.holding.then_some((delay_ticks, class))),
            Map::Done(status) => {
                if status != IoStatus::Success && kind == ChildKind::Data {
                    t.targets[ti as usize].target.on_error(Piece::Sector(rel), status);
                }
                let status = self.piece_status(status, p.data);
                return Step::Answered { units: n, status };
            }
            Map::ZeroFill => {
                if op == IoOp::Read {
                    zero_iovs(
                        &pio.iovs,
                        (p.next - pio.offset_blocks) * t.block_bytes,
                        n * t.block_bytes,
                    );
                }
                return Step::Answered {
                    units: n,
                    status: IoStatus::Success,
                };
            }
        };
        let Some((mut child, meta)) = children.take() else {
            return Step::Stalled;
        };
        match kind {
            ChildKind::Data => t.prepare_data(&mut child, pio, p.next, n, dev, sector),
            _ => {
                child.prepare(op, 0, 0);
                child.iovs.clear();
            }
        }
        *meta = ChildMeta {
            target: ti,
            rel,
            word,
            kind,
        };
        if word != 0 {
            t.targets[ti as usize].target.before_submit(&mut child, &mut meta.word);
        }
        if let Some((delay_ticks, class)) = hold {
            let ct = &mut t.targets[ti as usize];
            ct.target.on_hold(class);
            ct.fifo.push_back(HeldPiece {
                release_ticks: ticks().saturating_add(delay_ticks),
                io: child,
                dev,
                class,
            });
            self.fifo_len += 1;
            return Step::Kept { units: n };
        }
        Step::Send {
            child,
            base: BaseId(dev),
            units: n,
        }
    }

    #[inline]
    fn send(&mut self, base: BaseId, io: IoBox, cq: &CompletionQueue) -> Sent {
        let Some(t) = self.table.as_ref() else {
            unreachable!("children imply a table")
        };
        t.devs[base.0 as usize].path.base().submit(io, cq).into()
    }

    /// Lets a tracked target finish its piece, records failures against the target (striped's
    /// leg health), and folds: a flush or reset leg without a cache to flush succeeds.
    #[inline]
    fn child_done(&mut self, io: &mut IoRequest, m: &mut ChildMeta, p: Parent<'_, DmParent>) -> ChildDone {
        let mut status = io.status();
        if m.kind != ChildKind::ResetLeg {
            let Some(t) = self.table.as_ref() else {
                unreachable!("children imply a table")
            };
            let target = &t.targets[m.target as usize].target;
            if m.word != 0 {
                status = target.end_io(io, status, m.word);
            }
            if m.kind == ChildKind::FlushLeg && status == IoStatus::Unsupported {
                // A device without a volatile cache has nothing to flush.
                status = IoStatus::Success;
            }
            if status != IoStatus::Success {
                let piece = match m.kind {
                    ChildKind::FlushLeg => Piece::Leg(m.rel as u32),
                    _ => Piece::Sector(m.rel),
                };
                target.on_error(piece, status);
            }
        } else if status == IoStatus::Unsupported {
            status = IoStatus::Success;
        }
        ChildDone::Finished(self.piece_status(status, p.data))
    }

    /// Completes the parent upward, or sends it back to the held queue.
    fn finish(&mut self, io: IoBox, status: IoStatus, data: DmParent) {
        if data.requeue {
            self.held.push_back(io);
            self.fast = false;
        } else {
            io.complete(status);
        }
    }
}

/// What the dm bdev's channel on this core gave the core's state ([`DmCore::bind`]): the
/// statistics its forward paths link to and the handle through which the route is published.
struct Bound {
    stats: Rc<ChannelStats>,
    route: RouteHandle,
}

/// Everything of the core's channel that changes; one `RefCell` around it.
struct CoreState {
    core: CoreId,
    /// The table that is live on this core (its snapshot `run.table` is built once bound).
    live: Option<Arc<Table>>,
    bound: Option<Bound>,
    /// Requests below the device that are not split (forwarded, held in a delay FIFO), counted
    /// in the in-place forwarding context: a forwarded success drops the count on its way up
    /// without visiting this channel. Its queue is the channel's completion queue.
    fwd: Rc<ForwardCtx>,
    drain: Option<Arc<DrainTicket>>,
    /// Split parents and their children, parents waiting for children, refused children.
    split: DmSplitter,
    /// What the data path maps with and holds; the splitter's policy (a field apart from the
    /// splitter, so each call lends it as it is).
    run: Run,
}

/// The core's running state of the device: its table snapshot, its mode and what it holds. dm's
/// [`SplitPolicy`].
struct Run {
    table: Option<CoreTable>,
    /// Take the hot path: live table, not suspended, nothing held, writable, alive.
    fast: bool,
    suspended: bool,
    noflush: bool,
    /// The dm bdev is gone (removed): new I/O fails, held I/O was aborted.
    dead: bool,
    held: VecDeque<IoBox>,
    /// Pieces in delay FIFOs (so the poller reads the clock only when there are some).
    fifo_len: usize,
}

impl Run {
    /// Whether a piece failing because its base is gone goes back to the held queue.
    #[inline]
    fn requeue_removed(&self) -> bool {
        self.suspended && self.noflush && !self.dead
    }

    /// A piece's status as it folds into its parent (the splitter keeps the first failure):
    /// while a noflush suspend requeues, a removed base marks the parent for the held queue
    /// instead of failing it; `Removed` goes up as `Failed` (the dm device itself is not
    /// removed).
    #[inline]
    fn piece_status(&self, status: IoStatus, parent: &mut DmParent) -> IoStatus {
        if status == IoStatus::Success {
            return status;
        }
        if base_gone(status) && self.requeue_removed() {
            parent.requeue = true;
            return IoStatus::Success;
        }
        if status == IoStatus::Removed {
            IoStatus::Failed
        } else {
            status
        }
    }
}

#[inline]
fn is_write_op(op: IoOp) -> bool {
    matches!(op, IoOp::Write | IoOp::Unmap | IoOp::WriteZeroes)
}

impl CoreState {
    fn new(core: CoreId, p: &Published, fwd: Rc<ForwardCtx>) -> CoreState {
        let mut st = CoreState {
            core,
            live: p.table.clone(),
            bound: None,
            fwd,
            drain: None,
            split: Splitter::new(CHILDREN, PARENTS, QUEUE_CAPACITY),
            run: Run {
                table: None,
                fast: false,
                suspended: p.suspended,
                noflush: p.noflush,
                dead: p.dead,
                held: VecDeque::with_capacity(QUEUE_CAPACITY),
                fifo_len: 0,
            },
        };
        if let Some(t) = st.run.table.as_mut() {
            t.holding = !p.suspended;
        }
        st.refresh_fast();
        st
    }

    /// Recomputes the hot-path flag and publishes the route that goes with it: while the
    /// device runs with a one-target linear or striped table over devices of its block size,
    /// the core maps and forwards requests that fit by itself; otherwise every request comes
    /// here.
    fn refresh_fast(&mut self) {
        self.run.fast = !self.run.suspended
            && !self.run.dead
            && self.run.held.is_empty()
            && self.run.table.as_ref().is_some_and(|t| !t.readonly);
        if let Some(b) = &self.bound {
            let route = match (self.run.fast, &self.run.table) {
                (true, Some(t)) => t.route(),
                _ => Route::off(),
            };
            b.route.set(route);
        }
    }

    /// (Re)builds the snapshot of the live table for the current binding. Delay FIFOs hold
    /// requests, so a snapshot of the same table is kept and only its paths are rebuilt.
    fn rebuild(&mut self) {
        let Some(b) = &self.bound else {
            self.run.table = None;
            return;
        };
        match (&self.live, &mut self.run.table) {
            (Some(live), Some(t)) if Arc::ptr_eq(live, &t.table) => {
                for d in &mut t.devs {
                    d.path = ForwardPath::new(&self.fwd, &b.stats, d.path.base().clone());
                }
            }
            (Some(live), _) => self.run.table = Some(CoreTable::build(live, self.core, &self.fwd, &b.stats)),
            (None, _) => self.run.table = None,
        }
    }

    /// Every request the hot path of `submit` does not take.
    #[inline(never)]
    fn submit_general(&mut self, io: IoBox, cq: &CompletionQueue) -> Submit {
        if self.run.fast {
            return self.submit_mapped(io, cq);
        }
        self.submit_slow(io, cq)
    }

    #[cold]
    fn submit_slow(&mut self, io: IoBox, cq: &CompletionQueue) -> Submit {
        if self.run.dead {
            io.complete(IoStatus::Aborted);
            return Submit::Accepted;
        }
        if self.run.suspended || !self.run.held.is_empty() {
            self.run.held.push_back(io);
            return Submit::Accepted;
        }
        self.submit_checked(io, cq)
    }

    /// The checks the hot path's flag stands for: a table, writability, range.
    fn submit_checked(&mut self, io: IoBox, cq: &CompletionQueue) -> Submit {
        let Some(t) = self.run.table.as_ref() else {
            io.complete(IoStatus::Failed);
            return Submit::Accepted;
        };
        if t.readonly && is_write_op(io.op) {
            io.complete(IoStatus::ReadOnly);
            return Submit::Accepted;
        }
        if io.op.needs_range() && (io.offset_blocks >= t.num_blocks || io.num_blocks > t.num_blocks - io.offset_blocks)
        {
            io.complete(IoStatus::InvalidRange);
            return Submit::Accepted;
        }
        self.submit_mapped(io, cq)
    }

    /// Maps a request against the live table: direct forward, or split.
    #[inline]
    fn submit_mapped(&mut self, mut io: IoBox, cq: &CompletionQueue) -> Submit {
        let Some(t) = self.run.table.as_mut() else {
            io.complete(IoStatus::Failed);
            return Submit::Accepted;
        };
        if !io.op.needs_range() {
            return self.accept_split(io, cq);
        }
        let i = t.find(io.offset_blocks);
        let ct = &mut t.targets[i];
        let rel = io.offset_blocks - ct.start_blocks;
        let last = rel + io.num_blocks - 1;
        if !(ct.direct && last < ct.len_blocks && (rel | ct.split_mask) == (last | ct.split_mask)) {
            return self.accept_split(io, cq);
        }
        let m = ct.map(io.op, rel << t.block_shift);
        match m {
            Map::Remap { dev, sector } | Map::Track { dev, sector, .. } => {
                let d = &t.devs[dev as usize];
                let orig = io.offset_blocks;
                io.offset_blocks = sector >> d.sector_shift;
                // In place: a success goes straight up; failures come back to `on_complete`.
                match d.path.forward(io, orig) {
                    Submit::Accepted => Submit::Accepted,
                    Submit::Requeue(mut io) => {
                        io.offset_blocks = orig;
                        Submit::Requeue(io)
                    }
                }
            }
            Map::Done(status) => {
                io.complete(status);
                Submit::Accepted
            }
            Map::ZeroFill => {
                zero_iovs(&io.iovs, 0, io.num_blocks * t.block_bytes);
                io.complete(IoStatus::Success);
                Submit::Accepted
            }
            Map::Hold {
                dev,
                sector,
                delay_ticks,
                class,
            } => {
                let d = &t.devs[dev as usize];
                let orig = io.offset_blocks;
                io.offset_blocks = sector >> d.sector_shift;
                if !t.holding {
                    return match d.path.forward(io, orig) {
                        Submit::Accepted => Submit::Accepted,
                        Submit::Requeue(mut io) => {
                            io.offset_blocks = orig;
                            Submit::Requeue(io)
                        }
                    };
                }
                // Released later with a plain submit to the base: it comes back here, where the
                // marked word gives the caller's offset back.
                *io.layer_word() = orig | HELD_PIECE;
                self.fwd.begin();
                ct.target.on_hold(class);
                ct.fifo.push_back(HeldPiece {
                    release_ticks: ticks().saturating_add(delay_ticks),
                    io,
                    dev,
                    class,
                });
                self.run.fifo_len += 1;
                Submit::Accepted
            }
        }
    }

    /// Hands a request that needs pieces (or legs) to the splitter.
    fn accept_split(&mut self, io: IoBox, cq: &CompletionQueue) -> Submit {
        if !self.split.can_accept() {
            return Submit::Requeue(io);
        }
        let t = self.run.table.as_ref().expect("split needs a table");
        let (next, end) = match io.op {
            IoOp::Flush => (0, t.legs.len() as u64),
            IoOp::Reset => (0, t.devs.len() as u64),
            _ => (io.offset_blocks, io.offset_blocks + io.num_blocks),
        };
        self.split.accept(io, next, end, DmParent::default(), &mut self.run, cq)
    }

    /// Requests below the device: forwarded or held (the forwarding context's count) and split
    /// parents. For drains, not for the I/O path.
    fn inflight(&self) -> u64 {
        self.fwd.inflight() + self.split.parents_in_flight() as u64
    }

    #[cold]
    fn direct_failed(&mut self, io: IoBox, status: IoStatus) {
        if let Some(t) = self.run.table.as_ref() {
            if io.offset_blocks < t.num_blocks {
                let ct = &t.targets[t.find(io.offset_blocks)];
                ct.target.on_error(
                    Piece::Sector((io.offset_blocks - ct.start_blocks) << t.block_shift),
                    status,
                );
            }
        }
        if base_gone(status) && self.run.requeue_removed() {
            self.run.held.push_back(io);
            self.run.fast = false;
            return;
        }
        io.complete(if status == IoStatus::Removed {
            IoStatus::Failed
        } else {
            status
        });
    }

    /// The splitter's poll step: children a base handed back, parents that waited for children.
    fn poll_split(&mut self, cq: &CompletionQueue) -> usize {
        if self.run.table.is_none() {
            return 0;
        }
        self.split.poll(&mut self.run, cq)
    }

    /// Submits delay pieces whose time came (all of them with `all`).
    fn release_due(&mut self, cq: &CompletionQueue, all: bool) -> usize {
        let CoreState { run, split, .. } = self;
        let Some(t) = run.table.as_mut() else { return 0 };
        let now = if all { u64::MAX } else { ticks() };
        let mut n = 0;
        for &ti in &t.delay_targets {
            let ct = &mut t.targets[ti as usize];
            while ct.fifo.front().is_some_and(|h| h.release_ticks <= now) {
                let Some(h) = ct.fifo.pop_front() else { break };
                ct.target.on_release(h.class);
                n += 1;
                // A child, or a forwarded request (its word marked): either way a refusal waits
                // with the splitter's refused children.
                if let Submit::Requeue(io) = t.devs[h.dev as usize].path.base().submit(h.io, cq) {
                    split.park(io, BaseId(h.dev));
                }
            }
        }
        self.run.fifo_len -= n;
        n
    }

    /// Re-issues held requests in order once the device runs again.
    fn run_held(&mut self, cq: &CompletionQueue) -> usize {
        let mut n = 0;
        while let Some(io) = self.run.held.pop_front() {
            match self.submit_checked(io, cq) {
                Submit::Accepted => n += 1,
                Submit::Requeue(io) => {
                    self.run.held.push_front(io);
                    break;
                }
            }
        }
        self.refresh_fast();
        n
    }

    fn abort_held(&mut self) -> usize {
        let n = self.run.held.len();
        while let Some(io) = self.run.held.pop_front() {
            io.complete(IoStatus::Aborted);
        }
        n
    }

    fn check_drain(&mut self) -> bool {
        if self.inflight() == 0 {
            if let Some(t) = self.drain.take() {
                t.release();
                return true;
            }
        }
        false
    }
}

/// Whether a status says the base bdev went away under the piece: `Removed` for I/O that reached
/// a removed bdev, `Aborted` for I/O a removed bdev still held.
#[inline]
fn base_gone(status: IoStatus) -> bool {
    matches!(status, IoStatus::Removed | IoStatus::Aborted)
}

/// dm's per-core state in keel-bdev's layer scaffold: the requests from above, the completions
/// from below, and the poller's step.
impl LayerState for CoreState {
    /// Entry of every request (`BackendChannel::submit`). The hot path — device running, a
    /// range inside one chunk of a direct linear or striped target — is straight-line here and
    /// forwards the request in place; everything else goes to [`CoreState::submit_general`].
    #[inline(always)]
    fn submit(&mut self, mut io: IoBox, cq: &CompletionQueue) -> Submit {
        if self.run.fast && io.op.needs_range() {
            if let Some(t) = self.run.table.as_ref() {
                if let Some((dev, sector)) = t.map_direct(io.offset_blocks, io.num_blocks) {
                    let d = &t.devs[dev as usize];
                    let orig = io.offset_blocks;
                    io.offset_blocks = sector >> d.sector_shift;
                    // In place: a success goes straight up; failures come back to `complete`.
                    return match d.path.forward(io, orig) {
                        Submit::Accepted => Submit::Accepted,
                        Submit::Requeue(mut io) => {
                            io.offset_blocks = orig;
                            Submit::Requeue(io)
                        }
                    };
                }
            }
        }
        self.submit_general(io, cq)
    }

    /// One completion from a base bdev.
    #[inline]
    fn complete(&mut self, mut io: IoBox, cq: &CompletionQueue) {
        if io.depth() == 0 {
            // One of the splitter's children.
            return self.split.child_done(io, &mut self.run, cq);
        }
        // A forwarded request that failed (forwarded successes never come here; the offset is
        // the caller's again), or a held piece released to its base (its word has the caller's
        // offset): complete it upward.
        let word = *io.layer_word();
        if word & HELD_PIECE != 0 {
            io.offset_blocks = word & !HELD_PIECE;
        }
        self.fwd.end();
        let status = io.status();
        if status == IoStatus::Success {
            io.complete(status);
        } else {
            self.direct_failed(io, status);
        }
    }

    /// The splitter's queues, delay pieces whose time came, held requests once the device runs
    /// again, and the drain.
    fn poll(&mut self, cq: &CompletionQueue) -> usize {
        let mut n = 0;
        if !self.split.is_idle() {
            n += self.poll_split(cq);
        }
        if self.run.fifo_len > 0 {
            n += self.release_due(cq, false);
        }
        if !self.run.held.is_empty() && !self.run.suspended && !self.run.dead {
            n += self.run_held(cq);
        }
        if self.drain.is_some() && self.check_drain() {
            n += 1;
        }
        n
    }
}

/// A mapped device's state on one core: the value of its [`IoDevice`] channel. Built by the
/// factory on the core that first does I/O to the device; visited by the control path.
pub(crate) struct DmCore {
    layer: LayerCore<CoreState>,
}

impl DmCore {
    /// Builds the core's state from what the control path published. Called on `core` by the
    /// device's `IoDevice` factory.
    pub(crate) fn new(core: CoreId, published: &Mutex<Published>, name: &str) -> DmCore {
        let layer = LayerCore::new(format!("dm_{name}"), CQ_CAPACITY, |cq| {
            let p = published.lock().unwrap_or_else(|e| e.into_inner());
            CoreState::new(core, &p, ForwardCtx::new(cq.clone()))
        });
        DmCore { layer }
    }

    /// Suspend visit: hold new I/O, release delay FIFOs, join the drain if I/O is in flight.
    pub(crate) fn suspend(&self, noflush: bool, ticket: &Arc<DrainTicket>) {
        let mut st = self.layer.state();
        st.run.suspended = true;
        st.run.noflush = noflush;
        if let Some(t) = st.run.table.as_mut() {
            t.holding = false;
        }
        if st.run.fifo_len > 0 {
            st.release_due(self.layer.cq(), true);
        }
        st.refresh_fast();
        if st.inflight() > 0 {
            ticket.add();
            if let Some(old) = st.drain.replace(ticket.clone()) {
                old.release();
            }
        }
    }

    /// Drain visit without suspending (remove): join the drain if I/O is in flight.
    pub(crate) fn drain(&self, ticket: &Arc<DrainTicket>) {
        let mut st = self.layer.state();
        if st.inflight() > 0 {
            ticket.add();
            if let Some(old) = st.drain.replace(ticket.clone()) {
                old.release();
            }
        }
    }

    /// Resume visit: install `table` if it is not the live one, run again (held I/O is
    /// re-issued by the poller).
    pub(crate) fn resume(&self, table: Option<&Arc<Table>>) {
        let mut st = self.layer.state();
        if let Some(tb) = table {
            let same = st.live.as_ref().is_some_and(|t| Arc::ptr_eq(t, tb));
            if !same {
                debug_assert_eq!(st.inflight(), 0, "table swap with I/O in flight");
                st.live = Some(tb.clone());
                st.rebuild();
            }
        }
        st.run.suspended = false;
        st.run.noflush = false;
        // A suspend that gave up on its drain left its ticket here; nobody waits on it now.
        if let Some(old) = st.drain.take() {
            old.release();
        }
        if let Some(t) = st.run.table.as_mut() {
            t.holding = true;
        }
        st.refresh_fast();
    }

    /// Remove: the device is gone — fail held I/O, fail new I/O.
    pub(crate) fn kill(&self) {
        let mut st = self.layer.state();
        st.run.dead = true;
        st.abort_held();
        st.refresh_fast();
    }

    /// Remove, after the drain: drop the snapshot (and with it this core's base channels).
    pub(crate) fn drop_table(&self) {
        let mut st = self.layer.state();
        st.run.dead = true;
        st.live = None;
        st.run.table = None;
        st.refresh_fast();
    }

    /// Binds this core's state to the dm bdev's channel being built here (see
    /// [`ChannelCx`]): forward paths link to its statistics and the route goes to its slot. A
    /// bdev registered again (rename, new geometry) binds its new channel; the old one's route is
    /// turned off first. Called on the core, from the bdev channel's construction.
    pub(crate) fn bind(&self, cx: &ChannelCx) {
        let mut st = self.layer.state();
        if let Some(old) = st.bound.take() {
            old.route.set(Route::off());
        }
        st.bound = Some(Bound {
            stats: cx.stats().clone(),
            route: cx.route_handle(),
        });
        st.rebuild();
        st.refresh_fast();
    }
}

impl Drop for DmCore {
    fn drop(&mut self) {
        // Nothing held is lost when the last user closes: held requests complete as aborted.
        // A drain this core joined (a suspend or a remove waiting for its in-flight I/O) can no
        // longer be finished here: release it, or the operation would never answer and a remove
        // would keep the device's tables, and their claims, for ever.
        if let Some(mut st) = self.layer.try_state() {
            st.abort_held();
            if let Some(t) = st.drain.take() {
                t.release();
            }
        }
    }
}

/// The dm bdev's backend channel on one core: a handle on the core's [`DmCore`].
pub(crate) struct DmChannel {
    /// The core's state, held directly: one pointer less on the hot path.
    layer: LayerHandle<CoreState>,
    core: IoChannel<DmCore>,
    /// Set while dm itself unregisters this bdev to re-register it (rename, resize): the abort
    /// that unregistration sends must not kill the device's state.
    internal: Arc<AtomicBool>,
}

impl DmChannel {
    /// The dm bdev's module channel on `cx`'s core, bound to the core's state.
    pub(crate) fn new(core: IoChannel<DmCore>, internal: Arc<AtomicBool>, cx: &ChannelCx) -> DmChannel {
        core.bind(cx);
        DmChannel {
            layer: core.layer.handle(),
            core,
            internal,
        }
    }
}

impl BackendChannel for DmChannel {
    #[inline]
    fn submit(&self, io: IoBox) -> Submit {
        self.layer.submit(io)
    }

    fn abort_all(&self) {
        if !self.internal.load(Ordering::Acquire) {
            self.core.kill();
        }
    }
}
