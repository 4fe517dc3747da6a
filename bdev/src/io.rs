//! I/O requests and how they travel.
//!
//! An [`IoRequest`] is owned by whoever created it (usually from an [`IoPool`]) and moves as a
//! `Box` ([`IoBox`]) down the stack of bdevs and back: no copy, no allocation. Each bdev it enters
//! pushes a *frame* recording where to deliver the completion (a [`CompletionQueue`]), the channel
//! statistics to charge and the submit time. [`IoRequest::complete`] pops the top frame, charges
//! the statistics and pushes the request onto that frame's queue. The queue's owner drains it
//! from a poller: **completions are never delivered on the submitter's stack**, even when a
//! module (null, malloc) finishes the I/O inside `submit`.
//!
//! A layer that forwards a request to a bdev below submits the same box with its own completion
//! queue; when it comes back the layer finishes its part and completes it upward. A layer that
//! changes `offset_blocks` on the way down restores it before completing upward, using
//! [`IoRequest::layer_word`] to remember it.
//!
//! Buffers: `iovs` holds [`IoVec`]s (a [`DmaBuf`] handle plus a byte window). The request's
//! owner decides them; layers read or fill them and never keep a clone after completing.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use arrayvec::ArrayVec;
use keel_reactor::ticks;

use crate::buf::DmaBuf;
use crate::stats::ChannelStats;

/// Operation of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOp {
    Read,
    Write,
    Flush,
    Unmap,
    WriteZeroes,
    Reset,
}

impl IoOp {
    /// Every operation, in a fixed order (index = `as usize`).
    pub const ALL: [IoOp; 6] = [
        IoOp::Read,
        IoOp::Write,
        IoOp::Flush,
        IoOp::Unmap,
        IoOp::WriteZeroes,
        IoOp::Reset,
    ];

    /// Whether data moves through `iovs`.
    #[inline]
    pub fn has_data(self) -> bool {
        matches!(self, IoOp::Read | IoOp::Write)
    }

    /// Whether the op addresses a block range (flush and reset may have `num_blocks == 0`).
    #[inline]
    pub fn needs_range(self) -> bool {
        !matches!(self, IoOp::Flush | IoOp::Reset)
    }

    /// SPDK's name of the op (`supported_io_types` keys, bdev_error io_type values).
    pub fn name(self) -> &'static str {
        match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Flush => "flush",
            IoOp::Unmap => "unmap",
            IoOp::WriteZeroes => "write_zeroes",
            IoOp::Reset => "reset",
        }
    }
}

/// Outcome of a request. Small and `Copy`: this is the data path's error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoStatus {
    /// Not completed yet.
    Pending,
    Success,
    /// The device (or an injected error) failed it.
    Failed,
    /// The bdev does not support the op.
    Unsupported,
    /// Range outside the bdev, zero length, or buffers smaller than the range.
    InvalidRange,
    /// The bdev is being (or was) hot-removed.
    Removed,
    /// Cancelled (reset, forced removal).
    Aborted,
    /// The request needs more nesting levels than a request can carry.
    StackOverflow,
    /// A write-type op through a read-only descriptor.
    ReadOnly,
}

impl IoStatus {
    /// Whether the request succeeded.
    #[inline]
    pub fn is_success(self) -> bool {
        self == IoStatus::Success
    }

    /// Short name used in statistics (`io_error` keys).
    pub fn name(self) -> &'static str {
        match self {
            IoStatus::Pending => "pending",
            IoStatus::Success => "success",
            IoStatus::Failed => "failed",
            IoStatus::Unsupported => "unsupported",
            IoStatus::InvalidRange => "invalid_range",
            IoStatus::Removed => "removed",
            IoStatus::Aborted => "aborted",
            IoStatus::StackOverflow => "stack_overflow",
            IoStatus::ReadOnly => "read_only",
        }
    }
}

/// A window of a buffer: `len_bytes` from `offset_bytes`.
#[derive(Clone, Debug)]
pub struct IoVec {
    pub buf: DmaBuf,
    pub offset_bytes: u32,
    pub len_bytes: u32,
}

impl IoVec {
    /// The whole buffer.
    pub fn whole(buf: DmaBuf) -> IoVec {
        let len = buf.len() as u32;
        IoVec {
            buf,
            offset_bytes: 0,
            len_bytes: len,
        }
    }
}

/// Most segments one request carries. 16 covers every layer's splitting; a request is a fixed
/// size so pools never reallocate.
pub const MAX_IOVS: usize = 16;
/// Most bdev layers one request can pass through.
pub const MAX_DEPTH: usize = 12;

/// Scatter-gather list of a request.
pub type SgList = ArrayVec<IoVec, MAX_IOVS>;

/// Where a completion goes: a FIFO owned by one poller on one core. Cloning shares it. It grows
/// to its owner's high-water mark of outstanding requests once and then never allocates.
#[derive(Clone, Default)]
pub struct CompletionQueue {
    q: Rc<RefCell<VecDeque<IoBox>>>,
}

impl CompletionQueue {
    /// A queue with room for `cap` completions before it grows.
    pub fn with_capacity(cap: usize) -> CompletionQueue {
        CompletionQueue {
            q: Rc::new(RefCell::new(VecDeque::with_capacity(cap))),
        }
    }

    /// Takes the oldest completion.
    #[inline]
    pub fn pop(&self) -> Option<IoBox> {
        self.q.borrow_mut().pop_front()
    }

    /// Completions waiting.
    #[inline]
    pub fn len(&self) -> usize {
        self.q.borrow().len()
    }

    /// Whether none is waiting.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.q.borrow().is_empty()
    }

    #[inline]
    fn push(&self, io: IoBox) {
        self.q.borrow_mut().push_back(io);
    }

    /// Pops up to the number of completions present now (not ones pushed while `f` runs, so a
    /// handler that resubmits cannot loop forever) and hands each to `f`. Returns how many.
    #[inline]
    pub fn drain_now(&self, mut f: impl FnMut(IoBox)) -> usize {
        let n = self.len();
        for _ in 0..n {
            match self.pop() {
                Some(io) => f(io),
                None => return n,
            }
        }
        n
    }
}

pub(crate) struct Frame {
    cq: CompletionQueue,
    stats: Option<Rc<ChannelStats>>,
    submit_ticks: u64,
    layer_word: u64,
    /// Set when this frame's layer forwarded the request in place ([`crate::Channel::forward`]):
    /// a success from below passes through this layer without visiting its queue.
    fwd: Option<Rc<ForwardCtx>>,
    restore_offset_blocks: u64,
}

/// A layer's per-channel state for in-place forwarding ([`crate::Channel::forward`]): the queue
/// where failures come back to the layer, and the count of its requests still below it. Owned
/// by the layer's channel (shared by `Rc` with the requests in flight), on its core.
pub struct ForwardCtx {
    failure_cq: CompletionQueue,
    inflight: Cell<u64>,
}

impl ForwardCtx {
    /// A context whose failures arrive on `failure_cq` (the layer's own completion queue).
    pub fn new(failure_cq: CompletionQueue) -> Rc<ForwardCtx> {
        Rc::new(ForwardCtx {
            failure_cq,
            inflight: Cell::new(0),
        })
    }

    /// Requests forwarded (or otherwise counted with [`ForwardCtx::begin`]) and not yet finished.
    #[inline]
    pub fn inflight(&self) -> u64 {
        self.inflight.get()
    }

    /// Counts one more request below the layer.
    #[inline]
    pub fn begin(&self) {
        self.inflight.set(self.inflight.get() + 1);
    }

    /// Counts one request back (the layer calls this for failures it handles itself).
    #[inline]
    pub fn end(&self) {
        self.inflight.set(self.inflight.get() - 1);
    }

    /// The layer's queue.
    pub fn cq(&self) -> &CompletionQueue {
        &self.failure_cq
    }
}

/// A block I/O request. See the module docs for the life cycle.
pub struct IoRequest {
    pub op: IoOp,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    pub iovs: SgList,
    /// The owner's cookie; layers never touch it.
    pub tag: u64,
    status: IoStatus,
    frames: ArrayVec<Frame, MAX_DEPTH>,
}

/// How requests move: boxed, so moving one is a pointer move.
pub type IoBox = Box<IoRequest>;

/// What `submit` did with a request. Backpressure is a value: `Requeue` hands the request back
/// untouched (no completion will come); the caller retries after one of its completions.
#[must_use]
pub enum Submit {
    Accepted,
    Requeue(IoBox),
}

impl IoRequest {
    /// A fresh request (allocates: for pools and set-up).
    pub fn new_boxed() -> IoBox {
        Box::new(IoRequest {
            op: IoOp::Read,
            offset_blocks: 0,
            num_blocks: 0,
            iovs: SgList::new(),
            tag: 0,
            status: IoStatus::Pending,
            frames: ArrayVec::new(),
        })
    }

    /// Sets op and range, keeps `iovs` and `tag`, clears the status.
    #[inline]
    pub fn prepare(&mut self, op: IoOp, offset_blocks: u64, num_blocks: u64) {
        self.op = op;
        self.offset_blocks = offset_blocks;
        self.num_blocks = num_blocks;
        self.status = IoStatus::Pending;
    }

    /// The outcome (`Pending` until completed).
    #[inline]
    pub fn status(&self) -> IoStatus {
        self.status
    }

    /// Sets the outcome without completing (a layer about to complete upward with a child's
    /// status).
    #[inline]
    pub fn set_status(&mut self, status: IoStatus) {
        self.status = status;
    }

    /// Total bytes of the scatter list.
    #[inline]
    pub fn iov_len_bytes(&self) -> u64 {
        self.iovs.iter().map(|v| v.len_bytes as u64).sum()
    }

    /// How many bdev layers the request is in now.
    #[inline]
    pub fn depth(&self) -> usize {
        self.frames.len()
    }

    /// A word of scratch space private to the layer that currently holds the request (the top
    /// frame), e.g. an original offset to restore. Zero when the layer received it.
    #[inline]
    pub fn layer_word(&mut self) -> &mut u64 {
        &mut self.frames.last_mut().expect("layer_word outside a bdev").layer_word
    }

    /// Ticks at which the current layer received the request.
    #[inline]
    pub fn submit_ticks(&self) -> u64 {
        self.frames.last().map(|f| f.submit_ticks).unwrap_or(0)
    }

    /// Pushes a frame stamped `submit_ticks` (the caller's reading of [`ticks`]; a forwarded
    /// request reuses its layer's stamp: the same moment, one clock read fewer).
    #[inline]
    pub(crate) fn push_frame(
        &mut self,
        cq: &CompletionQueue,
        stats: Option<Rc<ChannelStats>>,
        submit_ticks: u64,
    ) -> Result<(), ()> {
        self.frames
            .try_push(Frame {
                cq: cq.clone(),
                stats,
                submit_ticks,
                layer_word: 0,
                fwd: None,
                restore_offset_blocks: 0,
            })
            .map_err(|_| ())
    }

    #[inline]
    pub(crate) fn pop_frame(&mut self) {
        self.frames.pop();
    }

    /// Finishes the current layer's part: records `status`, charges the layer's statistics and
    /// queues the request for the layer above, whose poller will see it. On success, layers
    /// above that forwarded the request in place ([`crate::Channel::forward`]) are finished
    /// here too — offset restored, statistics charged, in-flight count dropped — so the request
    /// goes straight to the first layer that did not. Called by modules on the request's core,
    /// inside `submit` or later from a poller.
    #[inline]
    pub fn complete(mut self: Box<Self>, status: IoStatus) {
        self.status = status;
        let now = ticks();
        let mut frame = self.frames.pop().expect("complete() on a request that is in no bdev");
        if let Some(stats) = &frame.stats {
            stats.record(&self, status, now.wrapping_sub(frame.submit_ticks));
        }
        if status == IoStatus::Success {
            while self.frames.last().is_some_and(|f| f.fwd.is_some()) {
                let up = self.frames.pop().expect("checked");
                let ctx = up.fwd.as_ref().expect("checked");
                ctx.end();
                self.offset_blocks = up.restore_offset_blocks;
                if let Some(stats) = &up.stats {
                    stats.record(&self, status, now.wrapping_sub(up.submit_ticks));
                }
                frame = up;
            }
        }
        frame.cq.push(self);
    }

    /// Marks the current layer's frame as forwarded in place (see [`crate::Channel::forward`]).
    #[inline]
    pub(crate) fn mark_forwarded(&mut self, ctx: &Rc<ForwardCtx>, restore_offset_blocks: u64) -> bool {
        match self.frames.last_mut() {
            Some(f) => {
                f.fwd = Some(ctx.clone());
                f.restore_offset_blocks = restore_offset_blocks;
                ctx.begin();
                true
            }
            None => false,
        }
    }

    /// Undoes [`IoRequest::mark_forwarded`] after the base handed the request back.
    #[inline]
    pub(crate) fn unmark_forwarded(&mut self) {
        if let Some(ctx) = self.frames.last_mut().and_then(|f| f.fwd.take()) {
            ctx.end();
        }
    }

    /// Completes the request to `cq` without a bdev frame: used when it is refused before
    /// entering a layer (e.g. stack overflow). Delivered from `cq`'s poller like any completion.
    pub(crate) fn complete_direct(mut self: Box<Self>, cq: &CompletionQueue, status: IoStatus) {
        self.status = status;
        cq.push(self);
    }
}

/// A fixed set of requests owned by one submitter on one core. `get` and `put` never allocate.
pub struct IoPool {
    free: Vec<IoBox>,
    capacity: usize,
}

impl IoPool {
    /// `capacity` requests, allocated now.
    pub fn new(capacity: usize) -> IoPool {
        IoPool {
            free: (0..capacity).map(|_| IoRequest::new_boxed()).collect(),
            capacity,
        }
    }

    /// A free request, if any is left.
    #[inline]
    pub fn get(&mut self) -> Option<IoBox> {
        self.free.pop()
    }

    /// Gives a request back (after its completion was handled).
    #[inline]
    pub fn put(&mut self, io: IoBox) {
        debug_assert!(self.free.len() < self.capacity, "pool over-filled");
        self.free.push(io);
    }

    /// Requests currently out of the pool.
    pub fn outstanding(&self) -> usize {
        self.capacity - self.free.len()
    }

    /// Total requests.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
