//! The ring part of the uring bdev: one channel's io_uring — set-up with the best flags the
//! kernel has, the submission queue, the one `io_uring_enter` per reactor turn and when it is
//! needed, the completions as (token, result) pairs, a cancel-all entry, and the bounded wait of
//! a teardown. It knows nothing of files or requests: SQEs come built by the channel
//! (`file.rs`), and tokens are the channel's (a [`crate::tokens::TokenQueue`]).
//!
//! # Set-up
//!
//! The ring is set up with `SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN | TASKRUN_FLAG |
//! SUBMIT_ALL` where the kernel has them (falling back to `COOP_TASKRUN | TASKRUN_FLAG |
//! SUBMIT_ALL`, then to a plain ring): completion work then runs only when the reactor asks for
//! it, without inter-processor interrupts, and the kernel raises `IORING_SQ_TASKRUN` in the
//! shared ring when there is some. The completion ring is twice the submission ring (the
//! kernel's default).
//!
//! # One enter per turn
//!
//! [`Ring::enter_if_needed`] makes at most one `io_uring_enter` per reactor turn, and only when
//! there is something to do: SQEs queued (batched submission of everything queued since the last
//! turn), `IORING_SQ_TASKRUN` raised (completions waiting to be posted), or a CQ overflow. The
//! enter carries `GETEVENTS` with `min_complete = 0`, so it never blocks. As a safety net for
//! kernels that would not raise the task-run flag, a ring with submissions in flight and no
//! progress ([`Ring::note_progress`]) for `STALL_ENTER_US` makes one enter anyway.
//!
//! # Punted work and the reactor's core
//!
//! A request the kernel cannot start without blocking is *punted*: an `iou-wrk` kernel thread
//! of the ring's io-wq performs it. Those workers inherit the CPU mask of the thread that made
//! the ring — a reactor pinned to one core — so they compete for that core with a reactor that
//! never stops polling. The channel yields its core while only punted work is pending
//! ([`yield_core`]; see `file.rs`, which also keeps memory-only files off the ring). Moving the
//! workers to CPUs without reactors (`IORING_REGISTER_IOWQ_AFF`) was measured and lost: on a
//! shared 2-core machine the other CPU is rarely free, and the hand-off across cores costs more
//! than the copy (BENCHMARKS.md).
#![allow(unsafe_code)]

use std::io;
use std::os::unix::io::RawFd;

use io_uring::{opcode, types, IoUring, SubmissionQueue};
use keel_reactor::{ticks, ticks_per_sec};

/// With submissions in flight and no completion for this long, the poller enters the ring once
/// even though the kernel did not raise `IORING_SQ_TASKRUN`: a guard against a kernel that
/// defers completion work without flagging it. 1 ms costs nothing when the flag works (the
/// normal case) and bounds the damage when it does not.
const STALL_ENTER_US: u64 = 1_000;

/// One channel's io_uring. Created on the channel's core, used and dropped there.
pub(super) struct Ring {
    ring: IoUring,
    /// Ticks of the last progress (submission or completion) while submissions are in flight.
    last_progress_ticks: u64,
    stall_ticks: u64,
}

impl Ring {
    /// A ring of `entries` submission entries with the best set-up flags the kernel accepts
    /// (module docs). Called on the channel's core.
    pub(super) fn new(entries: u32) -> io::Result<Ring> {
        let ring = {
            let mut full = IoUring::builder();
            full.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_coop_taskrun()
                .setup_taskrun_flag()
                .setup_submit_all();
            match full.build(entries) {
                Ok(r) => r,
                Err(_) => {
                    let mut coop = IoUring::builder();
                    coop.setup_coop_taskrun().setup_taskrun_flag().setup_submit_all();
                    match coop.build(entries) {
                        Ok(r) => r,
                        Err(_) => IoUring::new(entries)?,
                    }
                }
            }
        };
        Ok(Ring {
            ring,
            last_progress_ticks: 0,
            stall_ticks: (STALL_ENTER_US as u128 * ticks_per_sec() as u128 / 1_000_000) as u64,
        })
    }

    /// Registers `fd` as fixed file 0 (SQEs then address it as `types::Fixed(0)` and skip the
    /// per-I/O fd lookup). False when the kernel refused; the raw fd still works.
    pub(super) fn register_file(&self, fd: RawFd) -> bool {
        self.ring.submitter().register_files(&[fd]).is_ok()
    }

    /// Whether the ring runs with `SINGLE_ISSUER` (for the log).
    pub(super) fn single_issuer(&self) -> bool {
        self.ring.params().is_setup_single_issuer()
    }

    /// The submission queue: check for room and push built SQEs. Pushing is `unsafe`: the
    /// pusher vouches for every piece of memory the SQE points to until its completion is
    /// reaped. Dropping the queue makes the pushed entries visible to the kernel (no syscall;
    /// the next [`Ring::enter_if_needed`] submits them).
    #[inline]
    pub(super) fn sq(&mut self) -> SubmissionQueue<'_> {
        self.ring.submission()
    }

    /// Queues one `IORING_OP_ASYNC_CANCEL` matching every submission in flight, carrying
    /// `user_data` (a value that is no submission's token). False when the SQ is full (try again
    /// next turn).
    pub(super) fn push_cancel_all(&mut self, user_data: u64) -> bool {
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(user_data);
        // SAFETY: a cancel SQE points to no memory.
        unsafe { self.ring.submission().push(&entry) }.is_ok()
    }

    /// Records progress (a first submission, completions reaped): restarts the stall clock.
    #[inline]
    pub(super) fn note_progress(&mut self) {
        self.last_progress_ticks = ticks();
    }

    /// The turn's `io_uring_enter`, made only when needed (module docs); `in_flight` says
    /// whether submissions are in flight. Never blocks. `Ok(true)` when the kernel took SQEs.
    #[inline]
    pub(super) fn enter_if_needed(&mut self, in_flight: bool) -> io::Result<bool> {
        let (queued, kernel_wants) = {
            let sq = self.ring.submission();
            (sq.len(), sq.taskrun() || sq.cq_overflow())
        };
        if queued == 0
            && !kernel_wants
            && !(in_flight && ticks().wrapping_sub(self.last_progress_ticks) > self.stall_ticks)
        {
            return Ok(false);
        }
        let r = enter(&self.ring, queued as u32, 0);
        if in_flight {
            self.last_progress_ticks = ticks();
        }
        r.map(|n| n > 0)
    }

    /// The completions posted now, as (token, result), consumed as they are iterated.
    #[inline]
    pub(super) fn completions(&mut self) -> impl Iterator<Item = (u64, i32)> + '_ {
        self.ring.completion().map(|cqe| (cqe.user_data(), cqe.result()))
    }

    /// Teardown only (blocks the core): submits what is queued and waits for at least one
    /// completion, at most `timeout_sec` seconds where the kernel supports a timeout
    /// (`EXT_ARG`; `ETIME` when it expired), without a bound on older kernels.
    pub(super) fn wait_for_completion(&mut self, timeout_sec: u64) -> io::Result<usize> {
        let queued = self.ring.submission().len() as u32;
        let ts = types::Timespec::new().sec(timeout_sec);
        let args = types::SubmitArgs::new().timespec(&ts);
        if self.ring.params().is_feature_ext_arg() {
            self.ring.submitter().submit_with_args(1, &args)
        } else {
            // Old kernels: an unbounded wait (the caller sent a cancel, so submissions do come
            // back).
            enter(&self.ring, queued, 1)
        }
    }
}

/// Gives this core to other runnable threads of it (`sched_yield`): what a channel does while
/// only punted work is pending and the ring's workers share its core (module docs). Returns at
/// once when nothing else is runnable.
#[inline]
pub(super) fn yield_core() {
    // SAFETY: sched_yield takes no arguments and cannot fail in a way that matters here.
    unsafe {
        libc::sched_yield();
    }
}

/// `io_uring_enter(to_submit, min_complete, GETEVENTS)`: with `min_complete == 0` it never
/// blocks; `GETEVENTS` makes the kernel run deferred completion work so CQEs get posted.
#[inline]
fn enter(ring: &IoUring, to_submit: u32, min_complete: u32) -> io::Result<usize> {
    // SAFETY: no argument pointer is passed (`None`), so there is nothing for the kernel to read
    // beyond the ring itself, whose SQEs were validated when pushed.
    unsafe {
        ring.submitter()
            .enter::<libc::sigset_t>(to_submit, min_complete, io_uring::EnterFlags::GETEVENTS.bits(), None)
    }
}
