//! The I/O engine: one job on one reactor core.
//!
//! # Design
//!
//! [`Job::start`] runs on the job's core. It checks the [`JobSpec`] against the bdev, then builds
//! everything the run will ever need — the bdev [`Channel`], a [`CompletionQueue`] with room for
//! every request, an [`IoPool`] of `queue_depth` requests, one [`DmaBuf`] per request slot (two
//! for verify: what was written and what was read back), a retry queue with room for every
//! request and an `hdrhistogram` with a fixed range — and registers one active poller. From then
//! on the I/O loop neither allocates nor locks: requests, buffers and queues are reused, the
//! histogram never resizes (`saturating_record`), progress is published with relaxed atomic
//! stores, and the removal check is an atomic load.
//!
//! Each turn the poller
//!
//! 1. reads the tick counter once (`now`; that is the only `ticks()` read of the engine per
//!    turn, shared by every completion and resubmission of the turn),
//! 2. decides whether to stop: deadline reached, stop requested ([`JobProgress::request_stop`],
//!    [`JobHandle::stop`], reactor shutdown) or bdev hot-removed,
//! 3. retries requests that the bdev handed back with `Submit::Requeue` (kept in a preallocated
//!    queue, in order),
//! 4. drains the completions present now (`cq.drain_now`): records the latency
//!    (`now - submit tick`, the submit tick is kept per slot; `io.tag` is the slot index),
//!    counts success or failure, for verify compares the buffers, and immediately resubmits the
//!    slot's next I/O unless the job is stopping,
//! 5. publishes its counters ([`JobProgress`], read by keel-perf's progress line).
//!
//! When the job is stopping and every request is back, the poller computes the [`JobResult`],
//! drops the engine — channel, descriptor, buffers, requests — on this core, unregisters itself
//! and hands the result to the `on_done` callback (keel-perf's orchestrator sends it over a
//! channel).
//!
//! Offsets: random workloads draw from xorshift64 and map the draw onto the job's range with a
//! multiply-shift (no division); sequential ones advance a cursor that wraps. Verify gives each
//! request slot its own offsets — slot `i` of `n` owns the I/O indices `i, i+n, i+2n, …` of the
//! range — so two outstanding I/Os never touch the same blocks; a slot writes its pattern
//! ([`crate::pattern`]), reads it back into its second buffer and compares the whole buffer.
//!
//! Counting: every completed I/O counts, except that a verify write and the read that checks it
//! count once, when the read completes (as bdevperf counts a verify pair), with one latency:
//! from the write's submission to the read's completion. Failed I/Os count toward `io_failed` and the latency figures; only successful ones
//! toward IOPS.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hdrhistogram::Histogram;
use keel_bdev::{Channel, CompletionQueue, Descriptor, DmaBuf, IoBox, IoOp, IoPool, IoStatus, IoVec, Submit};
use keel_reactor::{ticks, ticks_per_sec, CoreId, PollStatus, PollerHandle};

use crate::pattern;
use crate::workload::RESET_PERIOD_US;
use crate::{JobSpec, LoadError, Workload};

/// The percentiles reported per job (and their JSON keys).
pub const PERCENTILES: [(f64, &str); 5] = [
    (50.0, "p50"),
    (90.0, "p90"),
    (99.0, "p99"),
    (99.9, "p99.9"),
    (99.99, "p99.99"),
];

/// Longest latency the histogram resolves (longer ones are clamped to it): a minute covers any
/// I/O that is not hung, and keeps the histogram's fixed array at a few hundred KiB.
const HIST_MAX_SECS: u64 = 60;
/// Significant digits of the histogram (0.1 % resolution).
const HIST_SIGFIG: u8 = 3;
/// Most buffer memory one job may allocate (queue depth × I/O size, twice for verify): more is
/// a typo, not a benchmark, and would abort the process on allocation failure.
const MAX_JOB_BUFFER_BYTES: u64 = 16 << 30;
/// `io.tag` of the reset request of a `reset` job (slot tags are `0..queue_depth`).
const RESET_TAG: u64 = u64::MAX;

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Ran until its deadline (failed I/Os, if any, were tolerated by `-f`).
    Finished,
    /// A failed I/O without `-f`, or a miscompare.
    Failed,
    /// Stopped early: bdev hot-removed, stop requested, reactor shutting down.
    Terminated,
}

impl JobStatus {
    /// bdevperf's JSON `status` value.
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Finished => "finished",
            JobStatus::Failed => "failed",
            JobStatus::Terminated => "terminated",
        }
    }
}

/// Verify range of a job in units of its I/O size (bdevperf's "Verification LBA range").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyRange {
    pub start: u64,
    pub length: u64,
}

/// A verify read that did not return what was written. Built on the job's core on the failure
/// path; keel-perf prints it on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miscompare {
    pub bdev: String,
    pub offset_blocks: u64,
    pub offset_bytes: u64,
    pub len_bytes: u64,
    /// First differing byte within the I/O.
    pub first_diff_byte: usize,
    pub expected_byte: u8,
    pub read_byte: u8,
    /// Sequence number of the write whose data was expected.
    pub expected_seq: u64,
    /// (offset_bytes, seq) found in the header of what was read (meaningful when the read data
    /// is another write's pattern).
    pub read_header: Option<(u64, u64)>,
}

impl std::fmt::Display for Miscompare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Miscompare on bdev {} at offset {} blocks ({} bytes), length {} bytes: first difference at byte {} \
             (expected 0x{:02x}, read 0x{:02x}; expected the data of write #{}",
            self.bdev,
            self.offset_blocks,
            self.offset_bytes,
            self.len_bytes,
            self.first_diff_byte,
            self.expected_byte,
            self.read_byte,
            self.expected_seq,
        )?;
        match self.read_header {
            // Sequence numbers start at 1: a zero header is not a verify pattern.
            Some((off, seq)) if seq != 0 => write!(f, ", read the data of write #{seq} to byte offset {off})"),
            _ => write!(f, ")"),
        }
    }
}

/// The outcome of one job. Plain data (`Send`): built on the job's core, sent to whoever reports.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    pub name: String,
    pub bdev: String,
    /// The core the job ran on (its "Core Mask" is this one bit).
    pub core: CoreId,
    pub workload: Workload,
    /// `Some` for rw/randrw only.
    pub rw_read_percent: Option<u8>,
    pub queue_depth: u32,
    pub io_size_bytes: u64,
    pub status: JobStatus,
    /// Verify/reset jobs only.
    pub verify_range: Option<VerifyRange>,
    /// From the first submission until the last outstanding I/O completed.
    pub runtime_us: f64,
    /// Successfully completed I/Os.
    pub ios_completed: u64,
    pub ios_failed: u64,
    /// I/Os that were still outstanding `-k` seconds after their submission (each counted
    /// once; it still completes and counts as done or failed, as bdevperf's).
    pub ios_timed_out: u64,
    /// Sum of the latencies of every completed or failed I/O (for I/O-weighted averages).
    pub latency_sum_us: f64,
    pub avg_latency_us: f64,
    pub min_latency_us: f64,
    pub max_latency_us: f64,
    /// [`PERCENTILES`] in order, µs.
    pub percentiles_us: [f64; 5],
    /// Why the job ended early, if it did ("bdev removed", the first failed I/O, ...).
    pub end_reason: Option<String>,
    pub miscompare: Option<Miscompare>,
}

impl JobResult {
    /// Successful I/Os per second of runtime.
    pub fn iops(&self) -> f64 {
        per_sec(self.ios_completed, self.runtime_us)
    }

    /// MiB/s of successful I/O.
    pub fn mibps(&self) -> f64 {
        self.iops() * self.io_size_bytes as f64 / 1_048_576.0
    }

    /// Failed I/Os per second.
    pub fn fail_per_sec(&self) -> f64 {
        per_sec(self.ios_failed, self.runtime_us)
    }

    /// Timed-out I/Os per second.
    pub fn timeout_per_sec(&self) -> f64 {
        per_sec(self.ios_timed_out, self.runtime_us)
    }

    /// Whether bdevperf would print "ended in about … seconds with error" (failed, not reset).
    pub fn ended_with_error(&self) -> bool {
        self.status == JobStatus::Failed && self.workload != Workload::Reset
    }
}

fn per_sec(n: u64, runtime_us: f64) -> f64 {
    if runtime_us <= 0.0 {
        0.0
    } else {
        n as f64 * 1e6 / runtime_us
    }
}

/// Live counters of a running job, shared with other threads (`Send + Sync`). The job stores
/// them with relaxed atomics once per poller turn that did work; readers get a consistent-enough
/// view for a progress line. Also carries the cross-thread stop request.
#[derive(Debug, Default)]
pub struct JobProgress {
    completed: AtomicU64,
    failed: AtomicU64,
    latency_sum_ticks: AtomicU64,
    min_latency_ticks: AtomicU64,
    max_latency_ticks: AtomicU64,
    start_tick: AtomicU64,
    stop: AtomicBool,
    done: AtomicBool,
}

/// A copy of [`JobProgress`]'s counters (latencies in µs).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProgressSnapshot {
    pub completed: u64,
    pub failed: u64,
    /// Seconds since the job's first submission (0 before it started).
    pub elapsed_us: f64,
    pub latency_sum_us: f64,
    pub min_latency_us: f64,
    pub max_latency_us: f64,
    pub done: bool,
}

impl JobProgress {
    /// Successfully completed I/Os so far. Any thread.
    pub fn completed_ios(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Failed I/Os so far. Any thread.
    pub fn failed_ios(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Asks the job to stop submitting, drain and report (status `terminated` unless it already
    /// ended). Any thread; takes effect at the job's next poller turn.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether the job has ended and reported.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// The counters now. Any thread.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let start = self.start_tick.load(Ordering::Relaxed);
        let tps = ticks_per_sec() as f64;
        let to_us = |t: u64| t as f64 * 1e6 / tps;
        ProgressSnapshot {
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            elapsed_us: if start == 0 {
                0.0
            } else {
                to_us(ticks().saturating_sub(start))
            },
            latency_sum_us: to_us(self.latency_sum_ticks.load(Ordering::Relaxed)),
            min_latency_us: to_us(self.min_latency_ticks.load(Ordering::Relaxed)),
            max_latency_us: to_us(self.max_latency_ticks.load(Ordering::Relaxed)),
            done: self.is_done(),
        }
    }
}

type OnDone = Box<dyn FnOnce(&JobResult)>;

struct JobShared {
    progress: Arc<JobProgress>,
    result: RefCell<Option<JobResult>>,
    poller: RefCell<Option<PollerHandle>>,
    on_done: RefCell<Option<OnDone>>,
}

/// The starter's handle of a job, on the job's core (`!Send`). Dropping it does not stop the job:
/// the job's poller keeps it alive until it ended.
#[derive(Clone)]
pub struct JobHandle {
    shared: Rc<JobShared>,
}

impl JobHandle {
    /// Successfully completed I/Os so far (updated once per poller turn).
    pub fn completed_ios(&self) -> u64 {
        self.shared.progress.completed_ios()
    }

    /// Failed I/Os so far.
    pub fn failed_ios(&self) -> u64 {
        self.shared.progress.failed_ios()
    }

    /// Asks the job to stop; see [`JobProgress::request_stop`].
    pub fn stop(&self) {
        self.shared.progress.request_stop();
    }

    /// Whether the job ended (its resources are released and the result is available).
    pub fn is_done(&self) -> bool {
        self.shared.progress.is_done()
    }

    /// The result, once the job ended.
    pub fn result(&self) -> Option<JobResult> {
        self.shared.result.borrow().clone()
    }

    /// The thread-safe progress counters and stop flag.
    pub fn progress(&self) -> Arc<JobProgress> {
        self.shared.progress.clone()
    }
}

/// Entry points of the engine. See the module docs.
pub struct Job;

impl Job {
    /// Starts `spec` against `desc` on the calling reactor core and returns its handle. All
    /// allocation happens here; I/O starts at the poller's first turn. The job owns `desc` and
    /// drops it (with its channel) on this core when it ends. Called on a reactor core; the job
    /// completes later (poll [`JobHandle::is_done`] or use [`Job::start_with`]).
    pub fn start(spec: JobSpec, desc: Descriptor) -> Result<JobHandle, LoadError> {
        Job::start_with(spec, desc, |_| {})
    }

    /// [`Job::start`] with a callback that runs once, on this core, with the result when the job
    /// has ended and released its descriptor.
    pub fn start_with(
        spec: JobSpec,
        desc: Descriptor,
        on_done: impl FnOnce(&JobResult) + 'static,
    ) -> Result<JobHandle, LoadError> {
        Job::start_boxed(spec, desc, Box::new(on_done))
    }

    /// The body of [`Job::start_with`]. Not generic, so that the poller closure and the I/O loop
    /// it inlines are compiled once, here, whatever callback the caller passes: a generic body
    /// would be instantiated in the caller's crate (keel-perf), where the per-I/O call into the
    /// latency histogram was left out of line.
    fn start_boxed(spec: JobSpec, desc: Descriptor, on_done: OnDone) -> Result<JobHandle, LoadError> {
        let reactor = keel_reactor::try_current()
            .ok_or_else(|| LoadError::Reactor("Job::start must be called on a reactor core".into()))?;
        let engine = Engine::new(spec, desc, reactor.core())?;
        let shared = Rc::new(JobShared {
            progress: Arc::new(JobProgress::default()),
            result: RefCell::new(None),
            poller: RefCell::new(None),
            on_done: RefCell::new(Some(on_done)),
        });
        let weak = Rc::downgrade(&shared);
        reactor.on_shutdown(move || {
            if let Some(s) = weak.upgrade() {
                s.progress.request_stop();
            }
        });
        // The name keel_get_pollers shows; kept from when the engine lived in keel-perf.
        let poller_name = format!("keel_perf_{}", engine.spec.name);
        let mut engine = Some(engine);
        let sh = shared.clone();
        let handle = reactor.register_poller(poller_name, move || {
            let Some(e) = engine.as_mut() else {
                return PollStatus::Idle;
            };
            let busy = e.poll(&sh.progress);
            if e.is_finished() {
                let e = engine.take().expect("engine present");
                let result = e.into_result();
                sh.progress.done.store(true, Ordering::Release);
                *sh.result.borrow_mut() = Some(result.clone());
                if let Some(cb) = sh.on_done.borrow_mut().take() {
                    cb(&result);
                }
                // Unregisters this poller; the reactor drops the closure before its next turn.
                drop(sh.poller.borrow_mut().take());
                return PollStatus::Busy;
            }
            PollStatus::from_work(busy)
        });
        *shared.poller.borrow_mut() = Some(handle);
        Ok(JobHandle { shared })
    }
}

/// One request slot: the request's tag is the slot index.
struct Slot {
    submit_tick: u64,
    /// The slot's request is in the bdev (submitted, not completed yet).
    in_flight: bool,
    /// `-k`: the request in flight was already counted as timed out.
    timed_out: bool,
    /// Verify: when the slot's current pair's write was submitted (a pair's latency runs from
    /// there to its read's completion).
    pair_tick: u64,
    /// Verify: offset of the slot's current write/read.
    offset_blocks: u64,
    /// Verify: next I/O index (relative to the range) this slot writes.
    next_index: u64,
    /// Verify: sequence number of the slot's current write.
    seq: u64,
    /// Verify: the next I/O of this slot reads back what it wrote.
    reading: bool,
    /// Data buffer (what is written; the read target for non-verify reads).
    wbuf: Option<DmaBuf>,
    /// Verify: where reads land.
    rbuf: Option<DmaBuf>,
}

struct Engine {
    spec: JobSpec,
    core: CoreId,
    // What the job issues.
    fixed_op: Option<IoOp>,
    verify: bool,
    random: bool,
    /// `-F`: Zipf ranks instead of uniform random offsets.
    zipf: Option<crate::zipf::Zipf>,
    read_percent: u64,
    io_blocks: u64,
    block_size: u64,
    range_start_blocks: u64,
    range_ios: u64,
    /// Verify: number of slots that take part (≤ queue depth, ≤ I/Os in the range).
    verify_stride: u64,
    // Resources (dropped on this core when the job ends; channel before descriptor).
    ch: Channel,
    desc: Descriptor,
    cq: CompletionQueue,
    pool: IoPool,
    retry: VecDeque<IoBox>,
    slots: Vec<Slot>,
    reset_io: Option<IoBox>,
    next_reset_tick: u64,
    reset_period_ticks: u64,
    // State.
    rng: u64,
    seq_cursor: u64,
    write_seq: u64,
    started: bool,
    start_tick: u64,
    end_tick: u64,
    last_tick: u64,
    run_ticks: u64,
    stopping: Option<JobStatus>,
    end_reason: Option<String>,
    miscompare: Option<Miscompare>,
    /// `-k` in ticks (0: off), and when in-flight requests are next checked against it.
    timeout_ticks: u64,
    next_timeout_scan: u64,
    // Statistics.
    timed_out: u64,
    hist: Histogram<u64>,
    completed: u64,
    failed: u64,
    lat_sum: u64,
    lat_min: u64,
    lat_max: u64,
}

impl Engine {
    fn new(spec: JobSpec, desc: Descriptor, core: CoreId) -> Result<Engine, LoadError> {
        let info = desc.info().clone();
        let reject = |reason: String| LoadError::JobRejected {
            job: spec.name.clone(),
            reason,
        };
        if spec.queue_depth == 0 {
            return Err(LoadError::invalid("-q", "queue depth must be greater than 0"));
        }
        if spec.rw_read_percent > 100 {
            return Err(LoadError::invalid(
                "-M",
                format!("read percentage {} is not within 0..100", spec.rw_read_percent),
            ));
        }
        if desc.bdev().is_removed() {
            return Err(LoadError::Bdev(keel_bdev::BdevError::Removed(info.name.clone())));
        }
        let bs = info.block_size as u64;
        if spec.io_size_bytes == 0 || !spec.io_size_bytes.is_multiple_of(bs) {
            return Err(reject(format!(
                "IO size ({}) is not a multiple of the data block size ({}) of bdev {}",
                spec.io_size_bytes, bs, info.name
            )));
        }
        if spec.io_size_bytes > u32::MAX as u64 {
            return Err(reject(format!("IO size ({}) is larger than 4 GiB", spec.io_size_bytes)));
        }
        for &op in spec.workload.ops() {
            if !info.caps.supports(op) {
                return Err(LoadError::Unsupported {
                    job: spec.name.clone(),
                    op: op.name(),
                });
            }
        }
        if spec.workload.writes() && !desc.writable() {
            return Err(reject(format!(
                "workload {} writes but bdev {} was opened read-only",
                spec.workload, info.name
            )));
        }
        let io_blocks = spec.io_size_bytes / bs;
        let length = if spec.length_blocks == 0 {
            info.num_blocks.saturating_sub(spec.offset_blocks)
        } else {
            spec.length_blocks
        };
        if spec.offset_blocks >= info.num_blocks || length > info.num_blocks - spec.offset_blocks {
            return Err(reject(format!(
                "range {}+{} blocks lies outside bdev {} ({} blocks)",
                spec.offset_blocks, length, info.name, info.num_blocks
            )));
        }
        let range_ios = length / io_blocks;
        if range_ios == 0 {
            return Err(reject(format!(
                "IO size ({}) is larger than the job's range ({} bytes)",
                spec.io_size_bytes,
                length * bs
            )));
        }
        let qd = spec.queue_depth as usize;
        let verify = spec.workload.is_verify();
        let buffer_bytes = if spec.workload.has_data() {
            (spec.queue_depth as u64)
                .saturating_mul(spec.io_size_bytes)
                .saturating_mul(if verify { 2 } else { 1 })
        } else {
            0
        };
        if buffer_bytes > MAX_JOB_BUFFER_BYTES {
            return Err(reject(format!(
                "queue depth {} x IO size {} needs {} bytes of buffers, more than the {} GiB limit",
                spec.queue_depth,
                spec.io_size_bytes,
                buffer_bytes,
                MAX_JOB_BUFFER_BYTES >> 30
            )));
        }
        let verify_stride = (qd as u64).min(range_ios);
        let zipf = match spec.zipf_theta {
            None => None,
            Some(theta) => Some(
                crate::zipf::Zipf::new(range_ios, theta).ok_or_else(|| LoadError::InvalidParam {
                    param: "-F",
                    reason: format!("zipf theta must be at least 0 and below 1 (got {theta})"),
                })?,
            ),
        };
        let io_len = spec.io_size_bytes as usize;
        let mut pool = IoPool::new(qd);
        let mut slots = Vec::with_capacity(qd);
        let mut reqs = Vec::with_capacity(qd);
        for i in 0..qd {
            let mut io = pool.get().expect("pool holds queue_depth requests");
            io.tag = i as u64;
            io.iovs.clear();
            let wbuf = spec.workload.has_data().then(|| DmaBuf::new(io_len));
            let rbuf = verify.then(|| DmaBuf::new(io_len));
            if let Some(b) = &wbuf {
                io.iovs.push(IoVec::whole(b.clone()));
            }
            slots.push(Slot {
                submit_tick: 0,
                in_flight: false,
                timed_out: false,
                pair_tick: 0,
                offset_blocks: 0,
                next_index: i as u64,
                seq: 0,
                reading: false,
                wbuf,
                rbuf,
            });
            reqs.push(io);
        }
        // Verify slots beyond the range's I/O count stay in the pool unused.
        for io in reqs.into_iter().rev() {
            pool.put(io);
        }
        let reset_io = (spec.workload == Workload::Reset).then(|| {
            let mut io = keel_bdev::IoRequest::new_boxed();
            io.tag = RESET_TAG;
            io
        });
        let tps = ticks_per_sec();
        let hist = Histogram::<u64>::new_with_bounds(1, (HIST_MAX_SECS * tps).max(2), HIST_SIGFIG)
            .map_err(|e| LoadError::Reactor(format!("cannot create latency histogram: {e}")))?;
        let ch = desc.channel();
        Ok(Engine {
            fixed_op: spec.workload.fixed_op(),
            verify,
            random: spec.workload.is_random(),
            read_percent: spec.rw_read_percent as u64,
            io_blocks,
            block_size: bs,
            range_start_blocks: spec.offset_blocks,
            range_ios,
            zipf,
            verify_stride,
            ch,
            desc,
            cq: CompletionQueue::with_capacity(qd + 1),
            pool,
            retry: VecDeque::with_capacity(qd + 1),
            slots,
            reset_io,
            next_reset_tick: u64::MAX,
            reset_period_ticks: (RESET_PERIOD_US as u128 * tps as u128 / 1_000_000) as u64,
            rng: if spec.seed == 0 {
                0x9e37_79b9_7f4a_7c15
            } else {
                spec.seed
            },
            seq_cursor: 0,
            write_seq: 0,
            started: false,
            start_tick: 0,
            end_tick: u64::MAX,
            last_tick: 0,
            run_ticks: 0,
            stopping: None,
            end_reason: None,
            miscompare: None,
            timeout_ticks: (spec.timeout_us as u128 * tps as u128 / 1_000_000) as u64,
            next_timeout_scan: 0,
            timed_out: 0,
            hist,
            completed: 0,
            failed: 0,
            lat_sum: 0,
            lat_min: u64::MAX,
            lat_max: 0,
            spec,
            core,
        })
    }

    #[inline]
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Maps a random draw onto `0..n` without a division.
    #[inline]
    fn below(x: u64, n: u64) -> u64 {
        ((x as u128 * n as u128) >> 64) as u64
    }

    /// Chooses the slot's next I/O, fills it in and submits it. Returns false when the bdev
    /// handed it back (it waits in the retry queue).
    #[inline]
    fn issue(&mut self, mut io: IoBox, now: u64) -> bool {
        let slot_idx = io.tag as usize;
        let (op, offset_blocks) = if self.verify {
            let slot = &mut self.slots[slot_idx];
            if slot.reading {
                let rbuf = slot.rbuf.as_ref().expect("verify slot has a read buffer");
                io.iovs[0] = IoVec::whole(rbuf.clone());
                (IoOp::Read, slot.offset_blocks)
            } else {
                let index = slot.next_index;
                slot.next_index += self.verify_stride;
                if slot.next_index >= self.range_ios {
                    slot.next_index = slot_idx as u64;
                }
                let offset_blocks = self.range_start_blocks + index * self.io_blocks;
                self.write_seq += 1;
                slot.seq = self.write_seq;
                slot.pair_tick = now;
                slot.offset_blocks = offset_blocks;
                let wbuf = slot.wbuf.as_ref().expect("verify slot has a write buffer");
                pattern::fill(&mut wbuf.bytes_mut(), offset_blocks * self.block_size, slot.seq);
                io.iovs[0] = IoVec::whole(wbuf.clone());
                (IoOp::Write, offset_blocks)
            }
        } else {
            let op = match self.fixed_op {
                Some(op) => op,
                None => {
                    let x = self.next_random();
                    if Self::below(x, 100) < self.read_percent {
                        IoOp::Read
                    } else {
                        IoOp::Write
                    }
                }
            };
            let index = if self.random {
                let x = self.next_random();
                match &self.zipf {
                    Some(z) => z.rank(x),
                    None => Self::below(x, self.range_ios),
                }
            } else {
                let i = self.seq_cursor;
                self.seq_cursor = if i + 1 == self.range_ios { 0 } else { i + 1 };
                i
            };
            (op, self.range_start_blocks + index * self.io_blocks)
        };
        io.prepare(op, offset_blocks, self.io_blocks);
        self.slots[slot_idx].submit_tick = now;
        match self.ch.submit(io, &self.cq) {
            Submit::Accepted => {
                let slot = &mut self.slots[slot_idx];
                slot.in_flight = true;
                slot.timed_out = false;
                true
            }
            Submit::Requeue(io) => {
                self.retry.push_back(io);
                false
            }
        }
    }

    fn stop(&mut self, status: JobStatus) {
        if self.stopping.is_none() {
            self.stopping = Some(status);
        }
    }

    /// Handles one completion.
    #[inline]
    fn complete(&mut self, io: IoBox, now: u64) {
        if io.tag == RESET_TAG {
            // A reset's outcome is not an I/O of the job (bdevperf neither counts it).
            self.reset_io = Some(io);
            return;
        }
        let slot_idx = io.tag as usize;
        self.slots[slot_idx].in_flight = false;
        let status = io.status();
        // A verify pair is one I/O (it counts once): its latency runs from its write's
        // submission to its read's completion, measured when the pair ends.
        let slot = &self.slots[slot_idx];
        if !(self.verify && status == IoStatus::Success && !slot.reading) {
            let since = if self.verify { slot.pair_tick } else { slot.submit_tick };
            let lat = now.saturating_sub(since).max(1);
            self.hist.saturating_record(lat);
            self.lat_sum += lat;
            self.lat_min = self.lat_min.min(lat);
            self.lat_max = self.lat_max.max(lat);
        }
        if status == IoStatus::Success {
            if self.verify {
                let slot = &mut self.slots[slot_idx];
                if slot.reading {
                    slot.reading = false;
                    // The pair is done: it counts once.
                    self.completed += 1;
                    self.check_read_back(slot_idx);
                } else {
                    slot.reading = true;
                }
            } else {
                self.completed += 1;
            }
        } else {
            self.failed += 1;
            if self.verify {
                self.slots[slot_idx].reading = false;
            }
            self.on_failure(&io, status);
        }
        if self.stopping.is_some() {
            self.pool.put(io);
            return;
        }
        self.issue(io, now);
    }

    /// `-k`: counts the requests in flight for longer than the timeout (each once), then
    /// schedules the next check a tenth of the timeout later (at most 10 ms): a request is
    /// counted within 10 % of the timeout after it passed.
    #[cold]
    fn scan_timeouts(&mut self, now: u64) {
        for slot in self.slots.iter_mut() {
            if slot.in_flight && !slot.timed_out && now.saturating_sub(slot.submit_tick) > self.timeout_ticks {
                slot.timed_out = true;
                self.timed_out += 1;
            }
        }
        let ten_ms = ticks_per_sec() / 100;
        self.next_timeout_scan = now + (self.timeout_ticks / 10).clamp(1, ten_ms.max(1));
    }

    /// Compares a slot's read-back buffer with what it wrote (verify). The first miscompare is
    /// kept and stops the job; later ones (of I/O already in flight) only count as I/O.
    #[inline]
    fn check_read_back(&mut self, slot_idx: usize) {
        let slot = &self.slots[slot_idx];
        let (Some(w), Some(r)) = (&slot.wbuf, &slot.rbuf) else {
            return;
        };
        let (wb, rb) = (w.bytes(), r.bytes());
        let Some(pos) = pattern::first_mismatch(&wb, &rb) else {
            return;
        };
        if self.miscompare.is_none() {
            self.miscompare = Some(Miscompare {
                bdev: self.desc.info().name.clone(),
                offset_blocks: slot.offset_blocks,
                offset_bytes: slot.offset_blocks * self.block_size,
                len_bytes: self.spec.io_size_bytes,
                first_diff_byte: pos,
                expected_byte: wb[pos],
                read_byte: rb[pos],
                expected_seq: slot.seq,
                read_header: pattern::header(&rb),
            });
            self.end_reason = Some("data miscompare".into());
        }
        drop((wb, rb));
        self.stop(JobStatus::Failed);
    }

    #[cold]
    fn on_failure(&mut self, io: &IoBox, status: IoStatus) {
        if status == IoStatus::Removed {
            if self.end_reason.is_none() {
                self.end_reason = Some(format!("bdev {} was removed", self.desc.info().name));
            }
            self.stop(JobStatus::Terminated);
        } else if !self.spec.continue_on_failure && self.spec.workload != Workload::Reset {
            if self.end_reason.is_none() {
                self.end_reason = Some(format!(
                    "{} at offset {} blocks ({} blocks) failed: {}",
                    io.op.name(),
                    io.offset_blocks,
                    io.num_blocks,
                    status.name()
                ));
            }
            self.stop(JobStatus::Failed);
        }
    }

    /// One poller turn; returns whether it did work.
    #[inline]
    fn poll(&mut self, progress: &JobProgress) -> bool {
        let now = ticks();
        self.last_tick = now;
        if !self.started {
            self.started = true;
            self.start_tick = now;
            progress.start_tick.store(now.max(1), Ordering::Relaxed);
            if self.spec.run_time_us > 0 {
                let dur = u64::try_from(self.spec.run_time_us as u128 * ticks_per_sec() as u128 / 1_000_000)
                    .unwrap_or(u64::MAX);
                self.end_tick = now.saturating_add(dur);
            }
            if self.reset_io.is_some() {
                self.next_reset_tick = now.saturating_add(self.reset_period_ticks);
            }
            let active = if self.verify {
                self.verify_stride as usize
            } else {
                self.pool.capacity()
            };
            for _ in 0..active {
                let Some(io) = self.pool.get() else { break };
                self.issue(io, now);
            }
            return true;
        }
        if self.stopping.is_none() {
            if now >= self.end_tick {
                self.stop(JobStatus::Finished);
            } else if progress.stop.load(Ordering::Relaxed) {
                self.end_reason = Some("stopped".into());
                self.stop(JobStatus::Terminated);
            } else if self.desc.bdev().is_removed() {
                self.end_reason = Some(format!("bdev {} was removed", self.desc.info().name));
                self.stop(JobStatus::Terminated);
            }
        }
        let mut work = false;
        // Retries count as work only when the bdev took one (a bdev that keeps refusing is
        // backpressure, not progress).
        for _ in 0..self.retry.len() {
            let Some(io) = self.retry.pop_front() else { break };
            if self.stopping.is_some() {
                self.pool.put(io);
                work = true;
            } else {
                work |= self.issue(io, now);
            }
        }
        if now >= self.next_reset_tick && self.stopping.is_none() {
            if let Some(mut io) = self.reset_io.take() {
                work = true;
                io.prepare(IoOp::Reset, 0, 0);
                if let Submit::Requeue(io) = self.ch.submit(io, &self.cq) {
                    self.reset_io = Some(io);
                } else {
                    self.next_reset_tick = now.saturating_add(self.reset_period_ticks);
                }
            }
        }
        if self.timeout_ticks > 0 && now >= self.next_timeout_scan {
            self.scan_timeouts(now);
        }
        let cq = self.cq.clone();
        let n = cq.drain_now(|io| self.complete(io, now));
        if n > 0 {
            work = true;
            progress.completed.store(self.completed, Ordering::Relaxed);
            progress.failed.store(self.failed, Ordering::Relaxed);
            progress.latency_sum_ticks.store(self.lat_sum, Ordering::Relaxed);
            progress.min_latency_ticks.store(self.lat_min, Ordering::Relaxed);
            progress.max_latency_ticks.store(self.lat_max, Ordering::Relaxed);
        }
        if self.stopping.is_some() && self.pool.outstanding() == 0 {
            self.run_ticks = now.saturating_sub(self.start_tick);
        }
        work
    }

    fn is_finished(&self) -> bool {
        self.stopping.is_some()
            && self.pool.outstanding() == 0
            && (self.spec.workload != Workload::Reset || self.reset_io.is_some())
    }

    fn into_result(self) -> JobResult {
        let tps = ticks_per_sec() as f64;
        let to_us = |t: u64| t as f64 * 1e6 / tps;
        let total = self.completed + self.failed;
        let run_ticks = if self.run_ticks > 0 {
            self.run_ticks
        } else {
            self.last_tick.saturating_sub(self.start_tick)
        };
        let mut percentiles_us = [0.0; 5];
        if total > 0 {
            for (i, (p, _)) in PERCENTILES.iter().enumerate() {
                percentiles_us[i] = to_us(self.hist.value_at_quantile(p / 100.0));
            }
        }
        let spec = &self.spec;
        let result = JobResult {
            name: spec.name.clone(),
            bdev: self.desc.info().name.clone(),
            core: self.core,
            workload: spec.workload,
            rw_read_percent: spec.workload.is_mixed().then_some(spec.rw_read_percent),
            queue_depth: spec.queue_depth,
            io_size_bytes: spec.io_size_bytes,
            status: self.stopping.unwrap_or(JobStatus::Finished),
            verify_range: spec.workload.is_verify().then_some(VerifyRange {
                start: self.range_start_blocks / self.io_blocks,
                length: self.range_ios,
            }),
            runtime_us: to_us(run_ticks),
            ios_completed: self.completed,
            ios_failed: self.failed,
            ios_timed_out: self.timed_out,
            latency_sum_us: to_us(self.lat_sum),
            avg_latency_us: if total > 0 {
                to_us(self.lat_sum) / total as f64
            } else {
                0.0
            },
            min_latency_us: if total > 0 { to_us(self.lat_min) } else { 0.0 },
            max_latency_us: to_us(self.lat_max),
            percentiles_us,
            end_reason: self.end_reason.clone(),
            miscompare: self.miscompare.clone(),
        };
        // Resources drop here, on the job's core: requests and buffers, then the channel, then
        // the descriptor (field order of `Engine` puts `ch` before `desc`).
        drop(self);
        result
    }
}
