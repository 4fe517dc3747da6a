//! Per-channel I/O statistics (the fields of SPDK's `bdev_get_iostat`).
//!
//! Each bdev channel owns a [`ChannelStats`] of plain `Cell`s, charged on its core at every
//! completion. Readers collect [`IoStats`] snapshots from every channel by message
//! (`for_each_channel`) and add the totals of channels that already closed.
//!
//! # Counted once, reported twice
//!
//! A request that a layer forwards in place to a base bdev (see `crate::forward`) and that
//! succeeds is the same request, with the same op, size and latency, in both bdevs. It is charged
//! once, to the path's `SharedStats`, which both channels report on top of their own counters
//! (the layer's and the base's channel each *link* it). Resetting either channel first folds the
//! shared counters into both channels' own counters, so the other one keeps every count; a path
//! that goes away (a table swap, a layer removed) folds them the same way. What a reader sees is
//! exactly what charging both channels at every completion would give, for one charge.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use serde::Serialize;

use crate::{IoOp, IoStatus};

#[derive(Default)]
struct OpCell {
    ops: Cell<u64>,
    /// Blocks moved; reported as bytes (× the bdev's block size) by `snapshot`.
    blocks: Cell<u64>,
    lat_sum: Cell<u64>,
    /// Rests at `u64::MAX` while no op counted (see `snapshot`): `record` needs no branch on `ops`.
    lat_min: Cell<u64>,
    lat_max: Cell<u64>,
}

/// What to zero after reading statistics (`bdev_get_iostat`'s `reset_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsReset {
    None,
    /// Every counter.
    All,
    /// Latency minima and maxima.
    MaxMin,
    /// Error counters.
    Errors,
}

/// The counters one completion charges: per op kind, and failures by status. `repr(C)`: the
/// read counters first, where a forward path's hot fields end.
#[repr(C)]
struct Counters {
    per_op: [OpCell; 6],
    errors: [Cell<u64>; 9],
}

impl Counters {
    fn new() -> Counters {
        let c = Counters {
            per_op: Default::default(),
            errors: Default::default(),
        };
        c.reset();
        c
    }

    #[inline]
    fn record(&self, op: IoOp, num_blocks: u64, status: IoStatus, latency_ticks: u64) {
        if status != IoStatus::Success {
            self.record_error(status);
            return;
        }
        let c = &self.per_op[op as usize];
        c.ops.set(c.ops.get() + 1);
        c.blocks.set(c.blocks.get() + num_blocks);
        c.lat_sum.set(c.lat_sum.get() + latency_ticks);
        c.lat_min.set(c.lat_min.get().min(latency_ticks));
        c.lat_max.set(c.lat_max.get().max(latency_ticks));
    }

    #[cold]
    fn record_error(&self, status: IoStatus) {
        let e = &self.errors[status_index(status)];
        e.set(e.get() + 1);
    }

    /// Adds these counters to `s` (bytes = blocks × `block_size`).
    fn add_to(&self, s: &mut IoStats, block_size: u64) {
        for (i, c) in self.per_op.iter().enumerate() {
            s.per_op[i].merge(&OpStats {
                ops: c.ops.get(),
                bytes: c.blocks.get() * block_size,
                latency_ticks: c.lat_sum.get(),
                min_latency_ticks: if c.lat_min.get() == u64::MAX {
                    0
                } else {
                    c.lat_min.get()
                },
                max_latency_ticks: c.lat_max.get(),
            });
        }
        for (i, e) in self.errors.iter().enumerate() {
            if e.get() > 0 {
                let name = ERROR_KINDS[i].name();
                match s.errors.iter_mut().find(|(k, _)| *k == name) {
                    Some((_, v)) => *v += e.get(),
                    None => s.errors.push((name, e.get())),
                }
            }
        }
    }

    /// Adds `other`'s counters into these (sums add, extremes combine).
    fn absorb(&self, other: &Counters) {
        for (c, o) in self.per_op.iter().zip(&other.per_op) {
            c.ops.set(c.ops.get() + o.ops.get());
            c.blocks.set(c.blocks.get() + o.blocks.get());
            c.lat_sum.set(c.lat_sum.get() + o.lat_sum.get());
            c.lat_min.set(c.lat_min.get().min(o.lat_min.get()));
            c.lat_max.set(c.lat_max.get().max(o.lat_max.get()));
        }
        for (e, o) in self.errors.iter().zip(&other.errors) {
            e.set(e.get() + o.get());
        }
    }

    fn apply_reset(&self, mode: StatsReset) {
        match mode {
            StatsReset::None => {}
            StatsReset::All => self.reset(),
            StatsReset::MaxMin => {
                for c in &self.per_op {
                    c.lat_max.set(0);
                    c.lat_min.set(u64::MAX);
                }
            }
            StatsReset::Errors => {
                for e in &self.errors {
                    e.set(0);
                }
            }
        }
    }

    fn reset(&self) {
        for c in &self.per_op {
            c.ops.set(0);
            c.blocks.set(0);
            c.lat_sum.set(0);
            c.lat_min.set(u64::MAX);
            c.lat_max.set(0);
        }
        for e in &self.errors {
            e.set(0);
        }
    }
}

/// Live statistics of one bdev channel. Owned by that channel (`Rc`, shared with the frames of
/// requests in flight), on its core.
pub struct ChannelStats {
    block_size: u64,
    own: Counters,
    /// What holds the shared counters of forward paths from or to this channel (reported with
    /// `own`).
    links: RefCell<Vec<Weak<dyn HoldsShared>>>,
}

/// Something that holds [`SharedStats`] (a forward path: the counters live in its allocation,
/// one pointer from the requests that charge them).
pub(crate) trait HoldsShared {
    fn shared(&self) -> &SharedStats;
}

/// The counters of successful requests that one layer channel forwarded in place to one base
/// channel on the same core: charged once per request, reported by both (see the module docs).
/// Held by the forward path; linked into both channels' [`ChannelStats`] with [`SharedStats::link`].
#[repr(C)]
pub(crate) struct SharedStats {
    counters: Counters,
    layer: Weak<ChannelStats>,
    base: Weak<ChannelStats>,
}

impl SharedStats {
    /// Shared counters between `layer` and `base` (not linked yet).
    pub(crate) fn new(layer: &Rc<ChannelStats>, base: &Rc<ChannelStats>) -> SharedStats {
        SharedStats {
            counters: Counters::new(),
            layer: Rc::downgrade(layer),
            base: Rc::downgrade(base),
        }
    }

    /// Links the counters `holder` holds into both channels. Control path, on their core.
    pub(crate) fn link<H: HoldsShared + 'static>(holder: &Rc<H>) {
        let weak: Weak<dyn HoldsShared> = Rc::downgrade(holder) as Weak<dyn HoldsShared>;
        let s = holder.shared();
        for owner in [&s.layer, &s.base] {
            if let Some(o) = owner.upgrade() {
                o.links.borrow_mut().push(weak.clone());
            }
        }
    }

    /// Charges one completion (a success: failures are charged to the channels themselves).
    #[inline]
    pub(crate) fn record(&self, op: IoOp, num_blocks: u64, status: IoStatus, latency_ticks: u64) {
        self.counters.record(op, num_blocks, status, latency_ticks);
    }

    /// The layer's channel statistics, while that channel lives.
    pub(crate) fn layer(&self) -> Option<Rc<ChannelStats>> {
        self.layer.upgrade()
    }

    /// Moves the counts into both channels' own counters (each keeps reporting them).
    fn fold(&self) {
        for owner in [&self.layer, &self.base] {
            if let Some(o) = owner.upgrade() {
                o.own.absorb(&self.counters);
            }
        }
        self.counters.reset();
    }

    /// The holder (at `holder`, being dropped) goes away: fold, then unlink from both
    /// channels. Runs on their core, possibly inside a completion (no allocation: the link
    /// lists only shrink).
    pub(crate) fn retire(&self, holder: *const ()) {
        self.fold();
        for owner in [&self.layer, &self.base] {
            if let Some(o) = owner.upgrade() {
                o.links.borrow_mut().retain(|l| l.as_ptr() as *const () != holder);
            }
        }
    }

    /// Each live holder's counters.
    fn of_links(links: &[Weak<dyn HoldsShared>], mut f: impl FnMut(&SharedStats)) {
        for l in links {
            if let Some(h) = l.upgrade() {
                f(h.shared());
            }
        }
    }
}

/// Counters of one op kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OpStats {
    pub ops: u64,
    pub bytes: u64,
    pub latency_ticks: u64,
    /// 0 when no op completed (SPDK reports it that way).
    pub min_latency_ticks: u64,
    pub max_latency_ticks: u64,
}

impl OpStats {
    fn merge(&mut self, o: &OpStats) {
        if o.ops == 0 {
            return;
        }
        self.min_latency_ticks = if self.ops == 0 {
            o.min_latency_ticks
        } else {
            self.min_latency_ticks.min(o.min_latency_ticks)
        };
        self.ops += o.ops;
        self.bytes += o.bytes;
        self.latency_ticks += o.latency_ticks;
        self.max_latency_ticks = self.max_latency_ticks.max(o.max_latency_ticks);
    }
}

/// A snapshot of statistics (one channel, or summed over channels).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Indexed by `IoOp as usize` (read, write, flush, unmap, write_zeroes, reset).
    pub per_op: [OpStats; 6],
    /// Failed completions by status (name, count), non-zero only.
    pub errors: Vec<(&'static str, u64)>,
}

const ERROR_KINDS: [IoStatus; 9] = [
    IoStatus::Pending,
    IoStatus::Success,
    IoStatus::Failed,
    IoStatus::Unsupported,
    IoStatus::InvalidRange,
    IoStatus::Removed,
    IoStatus::Aborted,
    IoStatus::StackOverflow,
    IoStatus::ReadOnly,
];

#[inline]
fn status_index(s: IoStatus) -> usize {
    match s {
        IoStatus::Pending => 0,
        IoStatus::Success => 1,
        IoStatus::Failed => 2,
        IoStatus::Unsupported => 3,
        IoStatus::InvalidRange => 4,
        IoStatus::Removed => 5,
        IoStatus::Aborted => 6,
        IoStatus::StackOverflow => 7,
        IoStatus::ReadOnly => 8,
    }
}

impl ChannelStats {
    /// Zeroed statistics for a bdev of `block_size` bytes.
    pub fn new(block_size: u32) -> ChannelStats {
        ChannelStats {
            block_size: block_size as u64,
            own: Counters::new(),
            links: RefCell::new(Vec::new()),
        }
    }

    /// Charges one completion of `num_blocks` blocks of `op`. Successful ops count toward
    /// ops/bytes/latency; failures count by status only (as SPDK's `io_error`).
    #[inline]
    pub(crate) fn record(&self, op: IoOp, num_blocks: u64, status: IoStatus, latency_ticks: u64) {
        self.own.record(op, num_blocks, status, latency_ticks);
    }

    /// A copy of the counters (this channel's own plus the shared counters it reports).
    pub fn snapshot(&self) -> IoStats {
        // Summed raw first: an extreme reset since the last op (resting at its sentinel) must
        // not read as a zero latency once the sources are combined.
        let total = Counters::new();
        total.absorb(&self.own);
        SharedStats::of_links(&self.links.borrow(), |l| total.absorb(&l.counters));
        let mut s = IoStats::default();
        total.add_to(&mut s, self.block_size);
        s
    }

    /// Applies a reset mode. Shared counters are first folded into both channels' own counters,
    /// so the channel at the other end of a path keeps its counts.
    pub fn apply_reset(&self, mode: StatsReset) {
        if mode == StatsReset::None {
            return;
        }
        SharedStats::of_links(&self.links.borrow(), SharedStats::fold);
        self.own.apply_reset(mode);
    }

    /// Zeroes the latency extremes only (`reset_mode: maxmin`); the next completion starts them
    /// afresh.
    pub fn reset_maxmin(&self) {
        self.apply_reset(StatsReset::MaxMin);
    }

    /// Zeroes the error counters only (`reset_mode: error`).
    pub fn reset_errors(&self) {
        self.apply_reset(StatsReset::Errors);
    }

    /// Zeroes the counters (`reset_mode: all`).
    pub fn reset(&self) {
        self.apply_reset(StatsReset::All);
    }
}

impl IoStats {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &IoStats) {
        for i in 0..6 {
            let o = other.per_op[i];
            self.per_op[i].merge(&o);
        }
        for &(name, n) in &other.errors {
            match self.errors.iter_mut().find(|(k, _)| *k == name) {
                Some((_, v)) => *v += n,
                None => self.errors.push((name, n)),
            }
        }
    }

    /// Applies a reset mode to a snapshot (the totals of closed channels).
    pub fn apply_reset(&mut self, mode: StatsReset) {
        match mode {
            StatsReset::None => {}
            StatsReset::All => *self = IoStats::default(),
            StatsReset::MaxMin => {
                for o in &mut self.per_op {
                    o.min_latency_ticks = 0;
                    o.max_latency_ticks = 0;
                }
            }
            StatsReset::Errors => self.errors.clear(),
        }
    }

    /// Counters of one op.
    pub fn op(&self, op: IoOp) -> &OpStats {
        &self.per_op[op as usize]
    }

    /// Failed completions of every kind.
    pub fn failed(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_resets_by_mode() {
        let s = ChannelStats::new(512);
        s.record(IoOp::Read, 8, IoStatus::Success, 100);
        s.record(IoOp::Read, 8, IoStatus::Success, 40);
        s.record(IoOp::Write, 1, IoStatus::Success, 7);
        s.record(IoOp::Read, 8, IoStatus::Failed, 1);
        let snap = s.snapshot();
        let r = snap.op(IoOp::Read);
        assert_eq!(
            (
                r.ops,
                r.bytes,
                r.latency_ticks,
                r.min_latency_ticks,
                r.max_latency_ticks
            ),
            (2, 8192, 140, 40, 100)
        );
        assert_eq!(snap.errors, vec![("failed", 1)]);

        s.apply_reset(StatsReset::MaxMin);
        let r = *s.snapshot().op(IoOp::Read);
        assert_eq!((r.ops, r.min_latency_ticks, r.max_latency_ticks), (2, 0, 0));
        s.record(IoOp::Read, 8, IoStatus::Success, 55);
        let r = *s.snapshot().op(IoOp::Read);
        assert_eq!((r.ops, r.min_latency_ticks, r.max_latency_ticks), (3, 55, 55));

        s.apply_reset(StatsReset::Errors);
        let snap = s.snapshot();
        assert!(snap.errors.is_empty());
        assert_eq!(snap.op(IoOp::Read).ops, 3);

        let mut total = IoStats::default();
        total.merge(&snap);
        total.merge(&snap);
        assert_eq!(total.op(IoOp::Read).ops, 6);
        assert_eq!(total.op(IoOp::Read).min_latency_ticks, 55);
        total.apply_reset(StatsReset::MaxMin);
        assert_eq!(total.op(IoOp::Read).max_latency_ticks, 0);

        s.apply_reset(StatsReset::All);
        assert_eq!(s.snapshot(), IoStats::default());
    }

    #[test]
    fn shared_counters_count_for_both_channels_through_resets_and_retirement() {
        let layer = Rc::new(ChannelStats::new(4096));
        let base = Rc::new(ChannelStats::new(4096));
        struct Holder(SharedStats);
        impl HoldsShared for Holder {
            fn shared(&self) -> &SharedStats {
                &self.0
            }
        }
        let holder = Rc::new(Holder(SharedStats::new(&layer, &base)));
        SharedStats::link(&holder);
        let shared = &holder.0;
        // The base also serves a request of its own; the layer fails one itself.
        base.record(IoOp::Write, 2, IoStatus::Success, 9);
        layer.record(IoOp::Read, 1, IoStatus::Failed, 3);
        shared.record(IoOp::Read, 1, IoStatus::Success, 20);
        shared.record(IoOp::Read, 1, IoStatus::Success, 10);
        let read = |s: &ChannelStats| *s.snapshot().op(IoOp::Read);
        let expect = OpStats {
            ops: 2,
            bytes: 8192,
            latency_ticks: 30,
            min_latency_ticks: 10,
            max_latency_ticks: 20,
        };
        assert_eq!((read(&layer), read(&base)), (expect, expect));
        assert_eq!(base.snapshot().op(IoOp::Write).ops, 1);
        assert_eq!((layer.snapshot().failed(), base.snapshot().failed()), (1, 0));

        // The layer resets its extremes: its counts stay, the base keeps everything.
        layer.apply_reset(StatsReset::MaxMin);
        assert_eq!(read(&base), expect);
        let r = read(&layer);
        assert_eq!((r.ops, r.min_latency_ticks, r.max_latency_ticks), (2, 0, 0));
        // Charged after the reset: the layer's extremes start afresh, the base's continue.
        shared.record(IoOp::Read, 1, IoStatus::Success, 15);
        let (r, b) = (read(&layer), read(&base));
        assert_eq!((r.ops, r.min_latency_ticks, r.max_latency_ticks), (3, 15, 15));
        assert_eq!((b.ops, b.min_latency_ticks, b.max_latency_ticks), (3, 10, 20));

        // The base resets everything: the layer keeps its counts.
        base.apply_reset(StatsReset::All);
        assert_eq!(base.snapshot(), IoStats::default());
        assert_eq!(read(&layer).ops, 3);
        assert_eq!(layer.snapshot().failed(), 1);

        // The path goes away: what it counted stays with both, and it is unlinked.
        shared.record(IoOp::Read, 1, IoStatus::Success, 5);
        shared.retire(Rc::as_ptr(&holder) as *const ());
        assert_eq!((read(&layer).ops, read(&base).ops), (4, 1));
        assert!(layer.links.borrow().is_empty() && base.links.borrow().is_empty());
    }
}
