//! Per-channel I/O statistics (the fields of SPDK's `bdev_get_iostat`).
//!
//! Each bdev channel owns a [`ChannelStats`] of plain `Cell`s, charged on its core at every
//! completion. Readers collect [`IoStats`] snapshots from every channel by message
//! (`for_each_channel`) and add the totals of channels that already closed.

use std::cell::Cell;

use serde::Serialize;

use crate::{IoOp, IoRequest, IoStatus};

#[derive(Default)]
struct OpCell {
    ops: Cell<u64>,
    bytes: Cell<u64>,
    lat_sum: Cell<u64>,
    lat_min: Cell<u64>,
    lat_max: Cell<u64>,
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
        ChannelStats {
            block_size: block_size as u64,
            per_op: Default::default(),
            errors: Default::default(),
        }
    }

    /// Charges one completion. Successful ops count toward ops/bytes/latency; failures count by
    /// status only (as SPDK's `io_error`).
    #[inline]
    pub(crate) fn record(&self, io: &IoRequest, status: IoStatus, latency_ticks: u64) {
        if status != IoStatus::Success {
            let e = &self.errors[status_index(status)];
            e.set(e.get() + 1);
            return;
        }
        let c = &self.per_op[io.op as usize];
        let n = c.ops.get();
        c.ops.set(n + 1);
        c.bytes.set(c.bytes.get() + io.num_blocks * self.block_size);
        c.lat_sum.set(c.lat_sum.get() + latency_ticks);
        if n == 0 || latency_ticks < c.lat_min.get() {
            c.lat_min.set(latency_ticks);
        }
        if latency_ticks > c.lat_max.get() {
            c.lat_max.set(latency_ticks);
        }
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> IoStats {
        let mut s = IoStats::default();
        for (i, c) in self.per_op.iter().enumerate() {
            s.per_op[i] = OpStats {
                ops: c.ops.get(),
                bytes: c.bytes.get(),
                latency_ticks: c.lat_sum.get(),
                min_latency_ticks: c.lat_min.get(),
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

    /// Zeroes the counters (`reset_mode: all`).
    pub fn reset(&self) {
        for c in &self.per_op {
            c.ops.set(0);
            c.bytes.set(0);
            c.lat_sum.set(0);
            c.lat_min.set(0);
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

    /// Counters of one op.
    pub fn op(&self, op: IoOp) -> &OpStats {
        &self.per_op[op as usize]
    }

    /// Failed completions of every kind.
    pub fn failed(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum()
    }
}
