//! The gate: QoS rate limits and latency histograms of one bdev, on every core's channel.
//!
//! # Paying only when asked
//!
//! A bdev channel carries one flag, `gated`, in the cache line every submit reads anyway. It is
//! false unless the bdev has a rate limit (`bdev_set_qos_limit`) or a histogram
//! (`bdev_enable_histogram`); then [`crate::Channel::submit`] leaves its usual path for the
//! gate's (a cold, out-of-line function). A bdev without either pays one predictable branch on a
//! byte already in cache per submit, and nothing per completion.
//!
//! # Rate limits: one shared budget per timeslice, taken without locks
//!
//! SPDK enforces a limit by funnelling every I/O of a limited bdev through one channel on one
//! thread: a message per I/O to that thread and back. Per-core token shares (the limit split
//! over the cores, rebalanced by message every timeslice) avoid the messages but lag a timeslice
//! behind a shifting load and need a demand estimate to split well; a single core doing all the
//! I/O would otherwise get 1/N of its limit. Keel instead keeps, per limit, **one token counter
//! shared by the bdev's channels** ([`QosBucket`], an `AtomicI64`), refilled once per 1 ms
//! timeslice (SPDK's `SPDK_BDEV_QOS_TIMESLICE_IN_USEC`) by whichever core's gate poller first
//! sees the timeslice change (a compare-exchange on the timeslice number decides who). A submit
//! to a limited bdev reads the counters and, when every applicable one is positive, subtracts
//! its cost (1 I/O, its bytes) — one atomic add per applicable limit, no lock, no allocation,
//! no message; otherwise it waits in the channel's FIFO queue, which the gate poller releases as
//! tokens come. As in SPDK an I/O may overdraw a counter that was positive; the debt is carried
//! into the next timeslice, so the rate over seconds is the limit. The refill grants exactly
//! `limit × elapsed / 1 s` tokens (integer arithmetic over the timeslice count, no rounding
//! drift), for every timeslice that passed. Unused tokens carry over up to a depth of
//! [`MAX_CATCHUP_SLICES`] timeslices (an idle bdev banks no longer burst); while requests wait
//! there is no depth, because then a gap between refills means the reactor thread was
//! descheduled on a loaded machine, the demand was there and the budget is owed. The shared line is
//! touched only by limited bdevs, whose rate is bounded by the limit itself: at the 1000 IOPS
//! minimum to a few hundred thousand IOPS that line bounces far below what a cache line can do.
//!
//! A queued I/O is already validated and carries the submitter's frame; the submitter got
//! `Submit::Accepted`. Only when the queue is full ([`QUEUE_CAPACITY`]) does the submit hand the
//! request back (`Submit::Requeue`, backpressure as a value).
//!
//! # Histograms: per-core buckets merged by message
//!
//! Each channel records the latency of its requests (submit to completion, in ticks) into its
//! own [`Histogram`] — SPDK's `spdk_histogram_data` layout with granularity 7 over the whole
//! 64-bit range — with no lock: the buckets belong to the channel's core. To see completions,
//! the gate pushes a second frame whose completion goes to the gate's own queue; the gate poller
//! tallies the latency and completes the request onward to its submitter. `bdev_get_histogram`
//! merges every channel's buckets by `for_each_channel` ([`crate::Bdev::collect_histogram`]),
//! plus the counts of channels that closed meanwhile (kept by the bdev, as its statistics are).
//!
//! # Reach
//!
//! The gate sits in [`crate::Channel::submit`]: every request submitted to the bdev passes it.
//! A layer that forwards in place to a base (`forward.rs`) reaches the base's module below its
//! channel's submit; such a base is claimed, and the RPC layer refuses limits and histograms on
//! claimed bdevs for that reason.
//!
//! Everything here except [`QosBucket`] (shared, atomics) lives on one core.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use keel_reactor::{current, ticks, ticks_per_sec, PollStatus, PollerHandle};

use crate::bdev::BdevChannel;
use crate::{CompletionQueue, IoBox, IoCaps, IoOp, IoStatus, Submit};

/// SPDK's QoS timeslice (`SPDK_BDEV_QOS_TIMESLICE_IN_USEC`): the budget is granted per
/// millisecond.
pub const QOS_TIMESLICE_US: u64 = 1000;
/// The bucket's depth in timeslices when no request waits (10 ms of budget): unused tokens
/// carry over up to this, so an idle bdev does not bank a long burst.
pub const MAX_CATCHUP_SLICES: u64 = 10;
/// Timeslices a late refill makes up for at most (1 s): while requests wait, the whole gap's
/// budget is granted and kept — the demand was there, only the reactor thread was not
/// (descheduled on a loaded machine), so the budget is owed.
pub const MAX_BACKLOG_CATCHUP_SLICES: u64 = 1000;
/// Throttled requests one channel holds before it hands new ones back (`Submit::Requeue`):
/// more than any one submitter's queue depth in practice (bdevperf's largest common -q is 256).
pub const QUEUE_CAPACITY: usize = 4096;
/// SPDK's minimum and granularity of an IOPS limit (`SPDK_BDEV_QOS_MIN_IOS_PER_SEC`).
pub const QOS_MIN_IOS_PER_SEC: u64 = 1000;

/// A bdev's rate limits as `bdev_set_qos_limit` takes and `assigned_rate_limits` shows them
/// (0 = no limit). Plain data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QosLimits {
    pub rw_ios_per_sec: u64,
    pub rw_mbytes_per_sec: u64,
    pub r_mbytes_per_sec: u64,
    pub w_mbytes_per_sec: u64,
}

impl QosLimits {
    /// Whether no limit is set.
    pub fn is_unlimited(&self) -> bool {
        *self == QosLimits::default()
    }

    /// The limits per second in tokens (I/Os, then bytes), in [`QosBucket`] order.
    fn per_sec(&self) -> [u64; 4] {
        const MIB: u64 = 1024 * 1024;
        [
            self.rw_ios_per_sec,
            self.rw_mbytes_per_sec.saturating_mul(MIB),
            self.r_mbytes_per_sec.saturating_mul(MIB),
            self.w_mbytes_per_sec.saturating_mul(MIB),
        ]
    }
}

/// The ops rate limits apply to (SPDK's: the ones that address data; flush and reset pass).
const LIMITED_OPS: IoCaps = IoCaps::RANGED;

/// The shared token counters of one bdev's limits (see the module docs). `Send + Sync`, shared
/// by the bdev's channels on every core; built by the control path when limits change.
pub struct QosBucket {
    limits: QosLimits,
    /// Per limit: tokens per second (0 = inactive). Order: rw I/Os, rw bytes, read bytes,
    /// write bytes.
    per_sec: [u64; 4],
    remaining: [AtomicI64; 4],
    /// The timeslice number (since `origin_ticks`) last refilled.
    slice: AtomicU64,
    origin_ticks: u64,
    slice_ticks: u64,
}

impl QosBucket {
    /// A bucket for `limits`, starting with one timeslice's budget. Control path, any thread.
    pub fn new(limits: QosLimits) -> QosBucket {
        let per_sec = limits.per_sec();
        let slice_ticks = (ticks_per_sec() * QOS_TIMESLICE_US / 1_000_000).max(1);
        let b = QosBucket {
            limits,
            per_sec,
            remaining: Default::default(),
            slice: AtomicU64::new(0),
            origin_ticks: ticks(),
            slice_ticks,
        };
        for (i, r) in b.remaining.iter().enumerate() {
            r.store(b.granted(i, 0, 1), Ordering::Relaxed);
        }
        b
    }

    /// The limits this bucket enforces.
    pub fn limits(&self) -> QosLimits {
        self.limits
    }

    /// Tokens of limit `i` granted for timeslices `from .. to` (timeslice `j` gets
    /// `⌊limit × (j+1) ms⌋ − ⌊limit × j ms⌋`: exact differences of the cumulative grant, so no
    /// rounding accumulates).
    fn granted(&self, i: usize, from: u64, to: u64) -> i64 {
        let per_slice_total = |n: u64| self.per_sec[i] as u128 * n as u128 * QOS_TIMESLICE_US as u128 / 1_000_000;
        let g = per_slice_total(to) - per_slice_total(from);
        g.min(i64::MAX as u128) as i64
    }

    /// What `op` of `bytes` costs against each limit (0 = the limit does not apply).
    #[inline]
    fn costs(&self, op: IoOp, bytes: u64) -> [i64; 4] {
        if !LIMITED_OPS.supports(op) {
            return [0; 4];
        }
        let bytes = bytes.min(i64::MAX as u64) as i64;
        let (read, write) = (op == IoOp::Read, op == IoOp::Write);
        [
            1,
            if read || write { bytes } else { 0 },
            if read { bytes } else { 0 },
            if write { bytes } else { 0 },
        ]
    }

    /// Takes `costs` if every applicable active counter is positive. Any core; lock-free.
    #[inline]
    fn try_take(&self, costs: &[i64; 4]) -> bool {
        let applies = |i: usize| self.per_sec[i] > 0 && costs[i] > 0;
        if (0..4).any(|i| applies(i) && self.remaining[i].load(Ordering::Relaxed) <= 0) {
            return false;
        }
        for (i, r) in self.remaining.iter().enumerate() {
            if applies(i) {
                r.fetch_sub(costs[i], Ordering::Relaxed);
            }
        }
        true
    }

    /// Grants the budget of the timeslices that passed since the last refill (up to
    /// [`MAX_BACKLOG_CATCHUP_SLICES`] of them), if this core is the first to see them. Debt
    /// carries over. Unused tokens carry over up to [`MAX_CATCHUP_SLICES`] timeslices' worth
    /// (the bucket's depth: an idle bdev banks no longer burst), without a cap while requests
    /// wait (`backlogged`: the budget of a gap in which the reactor was descheduled is owed
    /// and is spent as fast as the requests come back). Any core; lock-free.
    fn refill(&self, now_ticks: u64, backlogged: bool) {
        let now_slice = now_ticks.saturating_sub(self.origin_ticks) / self.slice_ticks;
        let last = self.slice.load(Ordering::Relaxed);
        if now_slice <= last
            || self
                .slice
                .compare_exchange(last, now_slice, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let from = now_slice - (now_slice - last).min(MAX_BACKLOG_CATCHUP_SLICES);
        for i in 0..4 {
            if self.per_sec[i] == 0 {
                continue;
            }
            let grant = self.granted(i, from + 1, now_slice + 1);
            let depth = if backlogged {
                i64::MAX
            } else {
                self.granted(i, 0, MAX_CATCHUP_SLICES).max(1)
            };
            let _ = self.remaining[i].fetch_update(Ordering::AcqRel, Ordering::Relaxed, |r| {
                let topped = r.saturating_add(grant);
                Some(if topped > depth { r.max(depth) } else { topped })
            });
        }
    }
}

/// SPDK's default histogram granularity (`SPDK_HISTOGRAM_GRANULARITY_DEFAULT`, formerly
/// `SPDK_HISTOGRAM_BUCKET_SHIFT_DEFAULT`): 2^7 buckets per power-of-two range.
pub const HISTOGRAM_GRANULARITY: u32 = 7;
/// Ranges of the full 64-bit histogram (`64 - granularity + 1`): ranges 0..=57.
pub const HISTOGRAM_RANGES: usize = 64 - HISTOGRAM_GRANULARITY as usize + 1;
/// Buckets of the full histogram: 128 × 58 = 7424 counters.
pub const HISTOGRAM_BUCKETS: usize = HISTOGRAM_RANGES << HISTOGRAM_GRANULARITY;

/// A latency histogram in SPDK's `spdk_histogram_data` layout (granularity 7, min_range 0,
/// max_range 57): bucket `(range << 7) + index`, where a value `v` falls in range
/// `max(0, 57 - clz(v))` and index `(v >> max(0, range - 1)) & 127`. Owned by one channel (or by
/// the caller of a merge).
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    buckets: Box<[u64]>,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram").field("total", &self.total()).finish()
    }
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new()
    }
}

impl Histogram {
    /// All buckets zero (allocates the 58 KiB of counters).
    pub fn new() -> Histogram {
        Histogram {
            buckets: vec![0; HISTOGRAM_BUCKETS].into_boxed_slice(),
        }
    }

    /// The bucket `value` falls in (SPDK's range and index arithmetic).
    #[inline]
    pub fn bucket_of(value: u64) -> usize {
        let lsb = 64 - HISTOGRAM_GRANULARITY;
        let clz = value.leading_zeros();
        let range = lsb.saturating_sub(clz);
        let shift = range.saturating_sub(1);
        let index = (value >> shift) & ((1 << HISTOGRAM_GRANULARITY) - 1);
        ((range as usize) << HISTOGRAM_GRANULARITY) + index as usize
    }

    /// Counts one value.
    #[inline]
    pub fn tally(&mut self, value: u64) {
        self.buckets[Histogram::bucket_of(value)] += 1;
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
    }

    /// The counters, bucket order.
    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    /// Values counted.
    pub fn total(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The counters as SPDK hands them to base64: each a little-endian u64, bucket order.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buckets.len() * 8);
        for b in self.buckets.iter() {
            out.extend_from_slice(&b.to_le_bytes());
        }
        assert_eq!(out.len(), HISTOGRAM_BUCKETS * 8);
        out
    }
}

/// What the bdev asks of its channels' gates: the current limits' bucket and the ops histograms
/// record. Kept by the bdev (control path) and copied to each channel by message.
#[derive(Clone, Default)]
pub(crate) struct GateConfig {
    pub qos: Option<std::sync::Arc<QosBucket>>,
    /// `Some(ops)`: a histogram records these ops.
    pub hist_ops: Option<IoCaps>,
}

impl GateConfig {
    pub(crate) fn is_active(&self) -> bool {
        self.qos.is_some() || self.hist_ops.is_some()
    }
}

/// One channel's gate (module docs). Lives on the channel's core, shared (`Rc`) by the channel
/// and its poller.
pub(crate) struct Gate {
    qos: RefCell<Option<std::sync::Arc<QosBucket>>>,
    /// Ops the histogram records (`IoCaps::NONE`: no histogram).
    hist_ops: Cell<IoCaps>,
    hist: RefCell<Option<Histogram>>,
    /// Throttled requests, validated, the submitter's frame on top.
    queue: RefCell<VecDeque<IoBox>>,
    /// Where requests with a histogram frame come back.
    cq: CompletionQueue,
    /// Requests below with a histogram frame (their completion passes `cq`).
    inflight: Cell<u64>,
    /// Requests waited for tokens when the last turn ended (so they waited all through the gap
    /// to this turn: see [`MAX_BACKLOG_CATCHUP_SLICES`]).
    backlogged: Cell<bool>,
    poller: RefCell<Option<PollerHandle>>,
}

/// What became of a request the gate sent to the module.
enum Sent {
    Accepted,
    /// The module handed it back (the submitter's frame on top).
    Back(IoBox),
}

impl Gate {
    fn new() -> Rc<Gate> {
        Rc::new(Gate {
            qos: RefCell::new(None),
            hist_ops: Cell::new(IoCaps::NONE),
            hist: RefCell::new(None),
            queue: RefCell::new(VecDeque::with_capacity(QUEUE_CAPACITY)),
            cq: CompletionQueue::with_capacity(256),
            inflight: Cell::new(0),
            backlogged: Cell::new(false),
            poller: RefCell::new(None),
        })
    }

    /// Applies `cfg` to `ch`'s gate, creating it (and its poller) if needed. On `ch`'s core
    /// (channel creation, or a `for_each_channel` visit).
    pub(crate) fn apply(ch: &BdevChannel, me: &Weak<BdevChannel>, cfg: &GateConfig) {
        let existing = ch.gate.borrow().clone();
        let gate = match existing {
            Some(g) => g,
            None if !cfg.is_active() => return,
            None => {
                let g = Gate::new();
                *ch.gate.borrow_mut() = Some(g.clone());
                g
            }
        };
        *gate.qos.borrow_mut() = cfg.qos.clone();
        match cfg.hist_ops {
            Some(ops) => {
                gate.hist_ops.set(ops);
                let mut h = gate.hist.borrow_mut();
                if h.is_none() {
                    *h = Some(Histogram::new());
                }
            }
            None => {
                gate.hist_ops.set(IoCaps::NONE);
                *gate.hist.borrow_mut() = None;
            }
        }
        ch.gated.set(cfg.is_active());
        if gate.poller.borrow().as_ref().is_none_or(|p| !p.is_registered()) {
            let (g2, me2) = (Rc::downgrade(&gate), me.clone());
            let name = format!("bdev_gate:{}", ch.core.info.name);
            let handle = current().register_poller(name, move || {
                let (Some(g), Some(ch)) = (g2.upgrade(), me2.upgrade()) else {
                    return PollStatus::Idle;
                };
                PollStatus::from_work(g.turn(&ch) > 0)
            });
            *gate.poller.borrow_mut() = Some(handle);
        }
        if gate.qos.borrow().is_none() {
            // No limit any more: what waited goes now.
            gate.release(ch, None);
        }
    }

    /// A validated request (the submitter's frame on top, charging nothing yet) entering the
    /// gate from [`crate::Channel::submit`].
    pub(crate) fn admit(&self, ch: &BdevChannel, io: IoBox) -> Submit {
        let qos = self.qos.borrow().clone();
        if let Some(q) = qos {
            let costs = q.costs(io.op, io.num_blocks * ch.core.info.block_size as u64);
            let mut queue = self.queue.borrow_mut();
            if !queue.is_empty() || !q.try_take(&costs) {
                if queue.len() >= QUEUE_CAPACITY {
                    drop(queue);
                    let mut io = io;
                    io.pop_frame();
                    return Submit::Requeue(io);
                }
                queue.push_back(io);
                return Submit::Accepted;
            }
        }
        match self.send(ch, io) {
            Sent::Accepted => Submit::Accepted,
            Sent::Back(mut io) => {
                io.pop_frame();
                Submit::Requeue(io)
            }
        }
    }

    /// Sends a request to the module: with a histogram frame (charging the channel's statistics,
    /// completing to the gate) when its op is recorded, else with the submitter's frame
    /// charging them.
    fn send(&self, ch: &BdevChannel, mut io: IoBox) -> Sent {
        let record = self.hist_ops.get().supports(io.op);
        if record {
            io.set_top_stats(None);
            let stamp = io.submit_ticks();
            if io.push_frame(&self.cq, Some(ch.stats.clone()), stamp).is_err() {
                io.charge_top_to(&ch.stats);
                io.complete(IoStatus::StackOverflow);
                return Sent::Accepted;
            }
        } else {
            io.set_top_stats(Some(ch.stats.clone()));
        }
        match ch.backend.submit(io) {
            Submit::Accepted => {
                if record {
                    self.inflight.set(self.inflight.get() + 1);
                }
                Sent::Accepted
            }
            Submit::Requeue(mut io) => {
                if record {
                    io.pop_frame();
                }
                Sent::Back(io)
            }
        }
    }

    /// Releases queued requests while `qos` (None: all of them) has tokens. Returns how many
    /// went.
    fn release(&self, ch: &BdevChannel, qos: Option<&QosBucket>) -> usize {
        let mut n = 0;
        loop {
            let Some(io) = self.queue.borrow_mut().pop_front() else {
                break;
            };
            if let Some(q) = qos {
                let costs = q.costs(io.op, io.num_blocks * ch.core.info.block_size as u64);
                if !q.try_take(&costs) {
                    self.queue.borrow_mut().push_front(io);
                    break;
                }
            }
            match self.send(ch, io) {
                Sent::Accepted => n += 1,
                Sent::Back(io) => {
                    // The module is out of resources: retry on a later turn.
                    self.queue.borrow_mut().push_front(io);
                    break;
                }
            }
        }
        n
    }

    /// One poller turn: tally and pass on what came back, refill and release what waits; when
    /// the gate is off and empty, stop the poller and drop the gate. Returns the work done.
    fn turn(&self, ch: &BdevChannel) -> usize {
        let mut work = self.cq.drain_now(|io| {
            self.inflight.set(self.inflight.get() - 1);
            let latency = ticks().wrapping_sub(io.submit_ticks());
            if let Some(h) = self.hist.borrow_mut().as_mut() {
                h.tally(latency);
            }
            let status = io.status();
            io.complete(status);
        });
        let qos = self.qos.borrow().clone();
        if let Some(q) = qos {
            let backlogged = self.backlogged.get() && !self.queue.borrow().is_empty();
            q.refill(ticks(), backlogged);
            if !self.queue.borrow().is_empty() {
                work += self.release(ch, Some(&q));
            }
        } else if !self.queue.borrow().is_empty() {
            work += self.release(ch, None);
        }
        self.backlogged.set(!self.queue.borrow().is_empty());
        if !ch.gated.get() && self.inflight.get() == 0 && self.queue.borrow().is_empty() {
            if let Some(p) = self.poller.borrow_mut().take() {
                p.unregister();
            }
            ch.gate.borrow_mut().take();
        }
        work
    }

    /// Hot removal reached the channel: what waits fails (what is below fails there).
    pub(crate) fn abort_queued(&self, ch: &BdevChannel) {
        loop {
            let Some(mut io) = self.queue.borrow_mut().pop_front() else {
                break;
            };
            io.charge_top_to(&ch.stats);
            io.complete(IoStatus::Removed);
        }
    }

    /// A copy of this channel's histogram, if it records one.
    pub(crate) fn histogram(&self) -> Option<Histogram> {
        self.hist.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_spdk_ranges() {
        // Range 0 and 1: one value per bucket.
        assert_eq!(Histogram::bucket_of(0), 0);
        assert_eq!(Histogram::bucket_of(127), 127);
        assert_eq!(Histogram::bucket_of(128), 128);
        assert_eq!(Histogram::bucket_of(255), 255);
        // Range 2: two values per bucket, 256..512.
        assert_eq!(Histogram::bucket_of(256), 256);
        assert_eq!(Histogram::bucket_of(257), 256);
        assert_eq!(Histogram::bucket_of(258), 257);
        assert_eq!(Histogram::bucket_of(511), 383);
        // The top range ends at the last bucket.
        assert_eq!(Histogram::bucket_of(u64::MAX), HISTOGRAM_BUCKETS - 1);
        assert_eq!(Histogram::bucket_of(1 << 63), (57 << 7));
    }

    /// SPDK's bucket start (`__spdk_histogram_data_get_bucket_start` of the previous bucket):
    /// the lowest value of bucket `(range, index)`.
    fn bucket_low(range: u32, index: u64) -> u64 {
        if range == 0 {
            index
        } else {
            (1u64 << (range + HISTOGRAM_GRANULARITY - 1)) + (index << (range - 1))
        }
    }

    proptest::proptest! {
        #[test]
        fn a_value_lies_in_its_bucket(v in proptest::prelude::any::<u64>()) {
            let b = Histogram::bucket_of(v);
            let (range, index) = ((b >> 7) as u32, (b & 127) as u64);
            let low = bucket_low(range, index);
            proptest::prop_assert!(v >= low);
            let width = if range <= 1 { 1u128 } else { 1u128 << (range - 1) };
            proptest::prop_assert!((v as u128) < low as u128 + width);
        }
    }

    #[test]
    fn the_bucket_grants_the_limit_over_time_and_carries_debt() {
        let b = QosBucket::new(QosLimits {
            rw_ios_per_sec: 1000,
            ..Default::default()
        });
        let one = b.costs(IoOp::Read, 4096);
        // One I/O per 1 ms timeslice.
        assert!(b.try_take(&one));
        assert!(!b.try_take(&one));
        b.refill(b.origin_ticks + b.slice_ticks, false);
        assert!(b.try_take(&one));
        assert!(!b.try_take(&one));
        // Late by 3 slices: three granted at once; more than the cap is not.
        b.refill(b.origin_ticks + 4 * b.slice_ticks, false);
        assert_eq!(b.remaining[0].load(Ordering::Relaxed), 3);
        b.refill(b.origin_ticks + 100 * b.slice_ticks, false);
        assert_eq!(b.remaining[0].load(Ordering::Relaxed), MAX_CATCHUP_SLICES as i64);
        // Requests waited through the gap: the whole gap's budget is owed.
        b.refill(b.origin_ticks + 400 * b.slice_ticks, true);
        assert_eq!(b.remaining[0].load(Ordering::Relaxed), 310);
        // Back to the depth only by spending: no more is added while above it.
        b.refill(b.origin_ticks + 401 * b.slice_ticks, false);
        assert_eq!(b.remaining[0].load(Ordering::Relaxed), 310);
        // Flush and reset are not limited.
        assert_eq!(b.costs(IoOp::Flush, 0), [0; 4]);
    }

    #[test]
    fn byte_limits_apply_by_direction_and_debt_carries_over() {
        let b = QosBucket::new(QosLimits {
            w_mbytes_per_sec: 1,
            ..Default::default()
        });
        // 1 MiB/s: 1048 bytes in the first ms (1048.576 granted exactly over time).
        let write = b.costs(IoOp::Write, 4096);
        let read = b.costs(IoOp::Read, 4096);
        assert!(b.try_take(&read), "reads are not limited by a write limit");
        assert!(b.try_take(&write), "a positive counter may be overdrawn");
        assert!(!b.try_take(&write));
        assert_eq!(b.remaining[3].load(Ordering::Relaxed), 1048 - 4096);
        b.refill(b.origin_ticks + b.slice_ticks, false);
        assert_eq!(b.remaining[3].load(Ordering::Relaxed), 1048 - 4096 + 1049);
        // Over 1000 slices exactly 1 MiB is granted.
        assert_eq!(b.granted(3, 0, 1000), 1024 * 1024);
    }
}
