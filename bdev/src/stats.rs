//! Per-channel I/O statistics (the fields of SPDK's `bdev_get_iostat`).
//!
//! Each bdev channel owns a [`ChannelStats`] of plain `Cell`s, charged on its core at every
//! completion. Readers collect [`IoStats`] snapshots from every channel by message
//! (`for_each_channel`) and add the totals of channels that already closed.

use std::cell::Cell;

use serde::Serialize;

use crate::{IoOp, IoStatus};

#[derive(Default)]
struct OpCell {
    ops: Cell<u64>,
    /// Blocks moved; reported as bytes (× the bdev's block size) by `snapshot`.
    blocks: Cell<u64>,
    lat_sum: Cell<u64>,
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

/// Live statistics of one bdev channel. Owned by that channel, on its core.
pub struct ChannelStats {
    block_size: u64,
    per_op: [OpCell; 6],
    errors: [Cell<u64>; 9],
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
        let s = ChannelStats {
            block_size: block_size as u64,
            per_op: Default::default(),
            errors: Default::default(),
        };
        s.reset();
        s
    }

    /// Charges one completion of `num_blocks` blocks of `op`. Successful ops count toward
    /// ops/bytes/latency; failures count by status only (as SPDK's `io_error`).
    #[inline]
    pub(crate) fn record(&self, op: IoOp, num_blocks: u64, status: IoStatus, latency_ticks: u64) {
        if status != IoStatus::Success {
            self.record_error(status);
            return;
        }
        let c = &self.per_op[op as usize];
        c.ops.set(c.ops.get() + 1);
        c.blocks.set(c.blocks.get() + num_blocks);
        c.lat_sum.set(c.lat_sum.get() + latency_ticks);
        // `lat_min` rests at `u64::MAX` while no op counted (see `snapshot`): no branch on `ops`.
        c.lat_min.set(c.lat_min.get().min(latency_ticks));
        c.lat_max.set(c.lat_max.get().max(latency_ticks));
    }

    #[cold]
    fn record_error(&self, status: IoStatus) {
        let e = &self.errors[status_index(status)];
        e.set(e.get() + 1);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> IoStats {
        let mut s = IoStats::default();
        for (i, c) in self.per_op.iter().enumerate() {
            s.per_op[i] = OpStats {
                ops: c.ops.get(),
                bytes: c.blocks.get() * self.block_size,
                latency_ticks: c.lat_sum.get(),
                min_latency_ticks: if c.lat_min.get() == u64::MAX {
                    0
                } else {
                    c.lat_min.get()
                },
                max_latency_ticks: c.lat_max.get(),
            };
        }
        for (i, e) in self.errors.iter().enumerate() {
            if e.get() > 0 {
                s.errors.push((ERROR_KINDS[i].name(), e.get()));
            }
        }
        s
    }

    /// Applies a reset mode.
    pub fn apply_reset(&self, mode: StatsReset) {
        match mode {
            StatsReset::None => {}
            StatsReset::All => self.reset(),
            StatsReset::MaxMin => self.reset_maxmin(),
            StatsReset::Errors => self.reset_errors(),
        }
    }

    /// Zeroes the latency extremes only (`reset_mode: maxmin`); the next completion starts them
    /// afresh.
    pub fn reset_maxmin(&self) {
        for c in &self.per_op {
            c.lat_max.set(0);
            // The resting value: the next completion starts the minimum afresh.
            c.lat_min.set(u64::MAX);
        }
    }

    /// Zeroes the error counters only (`reset_mode: error`).
    pub fn reset_errors(&self) {
        for e in &self.errors {
            e.set(0);
        }
    }

    /// Zeroes the counters (`reset_mode: all`).
    pub fn reset(&self) {
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
}
