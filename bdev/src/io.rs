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
//! A layer with nothing to do on success forwards **in place** instead, along a
//! [`crate::ForwardPath`] (see `forward.rs`): a success then finishes the base's part and the
//! layer's in one go — the layer's offset restored, the pair's shared statistics charged once —
//! and goes straight to the first layer above that wants to see it; the layer's queue and poller
//! are never visited. A failure stops at the layer's queue with the layer's frame on top and its
//! offset restored, as after a plain submit. The base's part is either a frame of its own
//! (`Dest::Forwarded`) or, for a *leaf* base that never touches frames, just the request's `via`
//! (the path and the layer's offset), which belongs to the top frame: one slot less to fill and
//! to walk. A leaf pushes no frame, so at most one `via` is ever set.
//!
//! Frames live in a fixed array inside the request, written and cleared in place (a free slot
//! holds no reference): pushing and popping one moves no more than its fields, and `repr(C)`
//! keeps the per-I/O fields and the first frames in the request's first cache lines.
//!
//! Buffers: `iovs` holds [`IoVec`]s (a [`DmaBuf`] handle plus a byte window). The request's
//! owner decides them; layers read or fill them and never keep a clone after completing.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use arrayvec::ArrayVec;
use keel_reactor::ticks;

use crate::buf::DmaBuf;
use crate::forward::PathInner;
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

/// The parts of `iovs`' data from byte `offset_bytes` on, `len_bytes` long (less if the list
/// ends first): per segment touched, the segment, where the part starts in the segment's buffer
/// and its length in bytes. Any core; no allocation (what copies between a request's buffers
/// and another memory walk).
#[inline]
pub fn iov_windows(iovs: &SgList, offset_bytes: u64, len_bytes: u64) -> impl Iterator<Item = (&IoVec, u32, u32)> {
    let (mut off, mut len) = (offset_bytes, len_bytes);
    iovs.iter()
        .map_while(move |v| {
            if len == 0 {
                return None;
            }
            let vlen = v.len_bytes as u64;
            if off >= vlen {
                off -= vlen;
                return Some(None);
            }
            let take = (vlen - off).min(len);
            let start = v.offset_bytes + off as u32;
            len -= take;
            off = 0;
            Some(Some((v, start, take as u32)))
        })
        .flatten()
}

/// Appends to `dst` the windows of `src`'s data from byte `offset_bytes` on, `len_bytes` long
/// (less if `src` ends first): how a split child gets its part of its parent's buffers. The
/// windows share `src`'s buffers (reference-counted handles, no copy). A window of a list has at
/// most as many segments as the list, so an empty `dst` always has room. Any core; no
/// allocation.
#[inline]
pub fn slice_iovs(src: &SgList, offset_bytes: u64, len_bytes: u64, dst: &mut SgList) {
    for (v, start, len) in iov_windows(src, offset_bytes, len_bytes) {
        dst.push(IoVec {
            buf: v.buf.clone(),
            offset_bytes: start,
            len_bytes: len,
        });
    }
}

/// Zeroes `len_bytes` of `iovs`' data from byte `offset_bytes` on (less if the list ends first):
/// a read a layer answers with zeroes. The buffers are the request owner's; the caller holds the
/// request. Any core; no allocation.
pub fn zero_iovs(iovs: &SgList, offset_bytes: u64, len_bytes: u64) {
    for (v, start, len) in iov_windows(iovs, offset_bytes, len_bytes) {
        let start = start as usize;
        v.buf.bytes_mut()[start..start + len as usize].fill(0);
    }
}

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
    pub(crate) fn push(&self, io: IoBox) {
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

/// Where a frame's completion goes.
pub(crate) enum Dest {
    /// A free slot of the frame stack (no frame): holds nothing.
    Empty,
    /// The submitter's queue (a frame pushed by [`crate::Channel::submit`]).
    Queue(CompletionQueue),
    /// The frame of a base that a layer forwarded the request to in place along this path: a
    /// success continues with the layer's frame below (offset restored, the layer's in-flight
    /// count dropped); a failure goes to the layer's queue with the layer's frame on top.
    Forwarded(Rc<PathInner>),
}

/// What a request carries for one bdev it is in. Frames live in a fixed array inside the
/// request and are written and cleared in place (a cleared slot holds no reference).
pub(crate) struct Frame {
    dest: Dest,
    /// The bdev channel's statistics, charged when the frame completes (`None` for a
    /// `Dest::Forwarded` frame: its success is charged to the path's shared statistics, a
    /// failure to the path's base).
    stats: Option<Rc<ChannelStats>>,
    submit_ticks: u64,
    layer_word: u64,
    /// `Dest::Forwarded` only: the layer's `offset_blocks`, set back when the base is done.
    restore_offset_blocks: u64,
}

impl Frame {
    const EMPTY: Frame = Frame {
        dest: Dest::Empty,
        stats: None,
        submit_ticks: 0,
        layer_word: 0,
        restore_offset_blocks: 0,
    };

    /// Makes this free slot a frame. A free slot holds no reference (popping clears it), so its
    /// old contents are overwritten without running their (empty) destructors.
    #[inline(always)]
    fn fill(&mut self, dest: Dest, stats: Option<Rc<ChannelStats>>, submit_ticks: u64, restore_offset_blocks: u64) {
        let old_dest = std::mem::replace(&mut self.dest, dest);
        debug_assert!(matches!(old_dest, Dest::Empty), "frame slot in use");
        std::mem::forget(old_dest);
        let old_stats = std::mem::replace(&mut self.stats, stats);
        debug_assert!(old_stats.is_none(), "frame slot in use");
        std::mem::forget(old_stats);
        self.submit_ticks = submit_ticks;
        self.layer_word = 0;
        self.restore_offset_blocks = restore_offset_blocks;
    }
}

/// A block I/O request. See the module docs for the life cycle.
///
/// `repr(C)` keeps what every layer touches per I/O — op, status, range, the frame count and the
/// first frames — together in the first cache lines, and the scatter list (read by the top
/// bdev's validation, not again by in-place forwards) after the frames: with a queue depth of
/// requests in flight, fewer lines per request compete for L1.
#[repr(C)]
pub struct IoRequest {
    pub op: IoOp,
    status: IoStatus,
    /// Frames in use: `frames[..depth]`, the top one last.
    depth: u32,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    /// The owner's cookie; layers never touch it.
    pub tag: u64,
    /// The top frame's bdev forwarded the request in place along this path to a leaf base: the
    /// leaf's part of the request (a leaf pushes no frame).
    via: Option<Rc<PathInner>>,
    /// With `via`: the layer's `offset_blocks`, set back when the leaf is done.
    via_restore_offset_blocks: u64,
    frames: [Frame; MAX_DEPTH],
    pub iovs: SgList,
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
            status: IoStatus::Pending,
            depth: 0,
            offset_blocks: 0,
            num_blocks: 0,
            tag: 0,
            via: None,
            via_restore_offset_blocks: 0,
            frames: [const { Frame::EMPTY }; MAX_DEPTH],
            iovs: SgList::new(),
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
        match self.iovs.as_slice() {
            // The common case (one buffer) without the loop.
            [v] => v.len_bytes as u64,
            iovs => iovs.iter().map(|v| v.len_bytes as u64).sum(),
        }
    }

    /// How many bdev layers the request is in now.
    #[inline]
    pub fn depth(&self) -> usize {
        self.depth as usize
    }

    /// The top frame (the layer holding the request), if any.
    #[inline]
    fn top(&self) -> Option<&Frame> {
        self.frames[..self.depth as usize].last()
    }

    /// A word of scratch space private to the layer that currently holds the request (the top
    /// frame), e.g. an original offset to restore. Zero when the layer received it.
    #[inline(always)]
    pub fn layer_word(&mut self) -> &mut u64 {
        let d = self.depth as usize;
        &mut self.frames[..d]
            .last_mut()
            .expect("layer_word outside a bdev")
            .layer_word
    }

    /// Ticks at which the current layer received the request.
    #[inline]
    pub fn submit_ticks(&self) -> u64 {
        self.top().map(|f| f.submit_ticks).unwrap_or(0)
    }

    /// Pushes a frame stamped `submit_ticks` (the caller's reading of [`ticks`]) whose completion
    /// goes to `cq`. `Err` when the request is in [`MAX_DEPTH`] bdevs already.
    #[inline]
    pub(crate) fn push_frame(
        &mut self,
        cq: &CompletionQueue,
        stats: Option<Rc<ChannelStats>>,
        submit_ticks: u64,
    ) -> Result<(), ()> {
        let d = self.depth as usize;
        let Some(f) = self.frames.get_mut(d) else {
            return Err(());
        };
        f.fill(Dest::Queue(cq.clone()), stats, submit_ticks, 0);
        self.depth = d as u32 + 1;
        Ok(())
    }

    /// Pushes the frame of a non-leaf base that the layer whose frame is on top forwards the
    /// request to along `path` (see [`crate::ForwardPath::forward`]). It shares the layer's
    /// stamp: the same moment, one clock read fewer. `Err` when the request carries no layer
    /// frame (`Err(false)`) or no room for one more (`Err(true)`).
    #[inline(always)]
    pub(crate) fn push_forwarded_frame(
        &mut self,
        path: &Rc<PathInner>,
        restore_offset_blocks: u64,
    ) -> Result<(), bool> {
        let d = self.depth as usize;
        let Some(submit_ticks) = self.top().map(|f| f.submit_ticks) else {
            return Err(false);
        };
        let Some(f) = self.frames.get_mut(d) else {
            return Err(true);
        };
        f.fill(Dest::Forwarded(path.clone()), None, submit_ticks, restore_offset_blocks);
        self.depth = d as u32 + 1;
        Ok(())
    }

    /// Records that the top frame's bdev (a layer) forwards the request in place along `path`
    /// to a leaf base: the leaf's part of the request, without a frame of its own. `Err` (and
    /// nothing recorded) when the request is in no bdev.
    #[inline(always)]
    pub(crate) fn set_via(&mut self, path: Rc<PathInner>, restore_offset_blocks: u64) -> Result<(), Rc<PathInner>> {
        if self.depth == 0 {
            return Err(path);
        }
        self.set_via_on_top(path, restore_offset_blocks);
        Ok(())
    }

    /// [`IoRequest::set_via`] for a request known to be in a bdev (the core's route, right after
    /// the layer's frame was pushed).
    #[inline(always)]
    pub(crate) fn set_via_on_top(&mut self, path: Rc<PathInner>, restore_offset_blocks: u64) {
        debug_assert!(self.depth > 0, "the layer's frame is on top");
        // A leaf pushes no frame and forwards nothing, so no part is recorded yet: nothing to
        // drop.
        let old = self.via.replace(path);
        debug_assert!(old.is_none(), "one leaf part at a time");
        std::mem::forget(old);
        self.via_restore_offset_blocks = restore_offset_blocks;
    }

    /// Makes the top frame charge `stats` if it charges nothing yet (a frame pushed for a route,
    /// whose request turned out not to be charged to a path's shared statistics).
    #[inline]
    pub(crate) fn charge_top_to(&mut self, stats: &Rc<ChannelStats>) {
        if let Some(d) = (self.depth as usize).checked_sub(1) {
            let f = &mut self.frames[d];
            if f.stats.is_none() {
                f.stats = Some(stats.clone());
            }
        }
    }

    /// Sets what the top frame charges (the QoS/histogram gate decides it when it sends the
    /// request on, see `gate.rs`).
    #[inline]
    pub(crate) fn set_top_stats(&mut self, stats: Option<Rc<ChannelStats>>) {
        if let Some(d) = (self.depth as usize).checked_sub(1) {
            self.frames[d].stats = stats;
        }
    }

    /// Takes back what [`IoRequest::set_via`] recorded (a leaf handed the request back).
    #[inline]
    pub(crate) fn clear_via(&mut self) {
        self.via = None;
    }

    /// Drops the top frame (a request handed back with `Requeue`).
    #[inline]
    pub(crate) fn pop_frame(&mut self) {
        if let Some(d) = self.depth.checked_sub(1) {
            self.depth = d;
            let f = &mut self.frames[d as usize];
            f.dest = Dest::Empty;
            f.stats = None;
            self.via = None;
        }
    }

    /// Finishes the current layer's part: records `status`, charges the layer's statistics and
    /// queues the request for the layer above, whose poller will see it. On success, layers
    /// above that forwarded the request in place ([`crate::ForwardPath::forward`]) are finished
    /// here too — offset restored, in-flight count dropped, each forwarded pair charged once to
    /// its shared statistics with the one completion time read here — so the request goes
    /// straight to the first layer that did not. A failure of a forwarded request stops at the
    /// forwarding layer's queue with that layer's frame on top and its offset restored. Called
    /// by modules on the request's core, inside `submit` or later from a poller.
    #[inline]
    pub fn complete(mut self: Box<Self>, status: IoStatus) {
        self.status = status;
        let now = ticks();
        let d = self
            .depth
            .checked_sub(1)
            .expect("complete() on a request that is in no bdev");
        if self.via.is_some() {
            return self.complete_via(d, now);
        }
        let f = &mut self.frames[d as usize];
        let latency = now.wrapping_sub(f.submit_ticks);
        self.depth = d;
        let stats = f.stats.take();
        match std::mem::replace(&mut f.dest, Dest::Empty) {
            Dest::Queue(cq) => {
                if let Some(stats) = stats {
                    stats.record(self.op, self.num_blocks, status, latency);
                }
                cq.push(self);
            }
            Dest::Forwarded(path) => {
                let restore = f.restore_offset_blocks;
                self.complete_forwarded(path, restore, false, latency)
            }
            Dest::Empty => unreachable!("a frame in use has a destination"),
        }
    }

    /// [`IoRequest::complete`] when the top frame (`d`) carries a leaf base's part (a leaf pushes
    /// no frame of its own): a failure goes back to the forwarding layer with its frame on top;
    /// a success is charged once, to the pair's shared statistics, for both bdevs, and the
    /// layer's frame is finished without charging its own. The first step of
    /// [`IoRequest::complete_forwarded`]'s loop, written out: handing over to the loop instead
    /// costs a routed I/O ~20 instructions more (callgrind: dm-linear 221 -> 241), most of what
    /// the whole layer costs over bare null (192).
    #[inline(always)]
    fn complete_via(mut self: Box<Self>, d: u32, now: u64) {
        let (op, num_blocks, status) = (self.op, self.num_blocks, self.status);
        let Some(path) = self.via.take() else {
            unreachable!("complete_via without a leaf part");
        };
        self.offset_blocks = self.via_restore_offset_blocks;
        let latency = now.wrapping_sub(self.frames[d as usize].submit_ticks);
        if status != IoStatus::Success {
            path.base_stats().record(op, num_blocks, status, latency);
            path.return_failure(self);
            return;
        }
        path.shared().record(op, num_blocks, status, latency);
        drop(path);
        self.depth = d;
        let f = &mut self.frames[d as usize];
        // Counted with the leaf; a routed frame holds no statistics at all.
        drop(f.stats.take());
        match std::mem::replace(&mut f.dest, Dest::Empty) {
            Dest::Queue(cq) => cq.push(self),
            Dest::Forwarded(path) => {
                let restore = f.restore_offset_blocks;
                self.complete_forwarded(path, restore, true, latency)
            }
            Dest::Empty => unreachable!("a frame in use has a destination"),
        }
    }

    /// The rest of [`IoRequest::complete`] once the frame of a base that a layer forwarded
    /// to in place along `path` is popped (`restore`: the layer's offset it kept): finishes the
    /// layer's frame, and those of layers that forwarded in place below it. `charged`: the
    /// popped frame's bdev was already counted (with the leaf below it). Every frame of such a
    /// chain shares one submit stamp, hence one `latency`.
    fn complete_forwarded(
        mut self: Box<Self>,
        mut path: Rc<PathInner>,
        mut restore: u64,
        mut charged: bool,
        latency: u64,
    ) {
        let (op, num_blocks, status) = (self.op, self.num_blocks, self.status);
        loop {
            self.offset_blocks = restore;
            if status != IoStatus::Success {
                path.base_stats().record(op, num_blocks, status, latency);
                path.return_failure(self);
                return;
            }
            if charged {
                // The base was counted with the leaf below it; the layer counts itself.
                charged = false;
            } else {
                path.shared().record(op, num_blocks, status, latency);
                charged = true;
            }
            let d = self
                .depth
                .checked_sub(1)
                .expect("a forwarded frame sits on its layer's");
            self.depth = d;
            let f = &mut self.frames[d as usize];
            let stats = f.stats.take();
            match std::mem::replace(&mut f.dest, Dest::Empty) {
                Dest::Queue(cq) => {
                    if let Some(stats) = stats.filter(|_| !charged) {
                        stats.record(op, num_blocks, status, latency);
                    }
                    cq.push(self);
                    return;
                }
                Dest::Forwarded(next) => {
                    path = next;
                    restore = f.restore_offset_blocks;
                }
                Dest::Empty => unreachable!("a frame in use has a destination"),
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Three segments of 10, 5 and 20 bytes, in buffers at offsets 3, 0 and 7 (the rest of each
    /// buffer 0xEE), holding bytes 0..35 of the list in order.
    fn list() -> SgList {
        let mut l = SgList::new();
        let mut at = 0u8;
        for (pad, len) in [(3usize, 10u32), (0, 5), (7, 20)] {
            let buf = DmaBuf::new(pad + len as usize + 4);
            buf.bytes_mut().fill(0xEE);
            for (i, b) in buf.bytes_mut()[pad..pad + len as usize].iter_mut().enumerate() {
                *b = at + i as u8;
            }
            at += len as u8;
            l.push(IoVec {
                buf,
                offset_bytes: pad as u32,
                len_bytes: len,
            });
        }
        l
    }

    fn bytes(l: &SgList) -> Vec<u8> {
        l.iter()
            .flat_map(|v| v.buf.bytes()[v.offset_bytes as usize..(v.offset_bytes + v.len_bytes) as usize].to_vec())
            .collect()
    }

    #[test]
    fn slices_are_windows_of_the_list() {
        let src = list();
        for off in 0..36u64 {
            for len in 0..(37 - off) {
                let mut dst = SgList::new();
                slice_iovs(&src, off, len, &mut dst);
                let want: Vec<u8> = (off..(off + len).min(35)).map(|b| b as u8).collect();
                assert_eq!(bytes(&dst), want, "{off}+{len}");
                assert!(dst.iter().all(|v| v.len_bytes > 0), "no empty windows");
                assert!(
                    dst.iter().all(|v| src.iter().any(|s| s.buf.same(&v.buf))),
                    "shared buffers"
                );
            }
        }
    }

    #[test]
    fn zeroing_touches_the_range_only() {
        for (off, len) in [(0u64, 35u64), (4, 9), (10, 5), (12, 14), (30, 10), (35, 3)] {
            let l = list();
            zero_iovs(&l, off, len);
            let want: Vec<u8> = (0..35u64)
                .map(|b| if b >= off && b < off + len { 0 } else { b as u8 })
                .collect();
            assert_eq!(bytes(&l), want, "{off}+{len}");
            // Bytes of the buffers outside the segments' windows are untouched.
            for v in &l {
                let b = v.buf.bytes();
                let (from, to) = (v.offset_bytes as usize, (v.offset_bytes + v.len_bytes) as usize);
                assert!(b[..from].iter().chain(&b[to..]).all(|&x| x == 0xEE), "{off}+{len}");
            }
        }
    }
}
