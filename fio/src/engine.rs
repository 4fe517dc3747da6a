//! One fio job's engine state, on the job's own thread, in safe Rust.
//!
//! # Design
//!
//! A [`JobEngine`] is created by fio's `init` callback on the job thread and owns, for the whole
//! job:
//!
//! - an [`AttachedReactor`] on a core of its own ([`Global::attach_job_reactor`]): the thread's
//!   `current()` reactor, so every bdev channel the job opens is this thread's channel, and the
//!   job drives it itself — fio threads are not Keel threads;
//! - one **slot** per fio `io_u` (fio makes `iodepth` of them; `io_u_init` calls
//!   [`JobEngine::add_slot`]): a preallocated [`IoBox`] whose `tag` is the slot index, plus the
//!   `io_u` address as an opaque value. The `io_u` carries the slot index back
//!   (`io_u->engine_data`), so io_u ↔ request is an array index both ways;
//! - one [`DmaBuf`] for all of fio's data buffers: fio's `iomem_alloc` asks the engine for the
//!   job's buffer memory ([`JobEngine::alloc_buffer`]) and carves one window per `io_u` out of it,
//!   so every request's single [`IoVec`] is a window of that buffer — set once per slot in
//!   [`JobEngine::post_init`], only its offset and length change per I/O. Data moves between
//!   fio and the bdev without a copy;
//! - the open bdevs ([`JobEngine::open`]: descriptor + this thread's channel), a completion
//!   queue, and fixed-capacity lists for queued, retried and reaped I/O.
//!
//! # Per I/O (no allocation, no lock, no syscall)
//!
//! - [`JobEngine::queue`] (fio `queue`): translate `ddir`/offset/length into op and blocks,
//!   point the slot's window at fio's transfer buffer, move the request to `pending`. Misaligned
//!   or out-of-buffer requests complete at once with `EINVAL`/`EFAULT` (the job's first
//!   misaligned one is explained in fio's log).
//! - [`JobEngine::commit`] (fio `commit`): submit everything pending on the bdev channels. A
//!   request the bdev hands back (`Submit::Requeue`) waits in `retry` and is resubmitted after
//!   completions.
//! - [`JobEngine::getevents`] (fio `getevents`): reap completions from the queue — those the
//!   modules finished inside `submit` are already there — and turn the reactor to let pollers
//!   (io_uring, stacking layers, timers) produce more, until `min` are reaped (or the timeout).
//!   Each reaped request goes back to its slot, its status becomes the `io_u`'s errno, its
//!   `io_u` goes to `events`. The reactor is turned whenever the queue holds fewer than `min`
//!   completions and, in any case, at least every [`TURN_EVERY`] calls, so pollers always make
//!   progress while a module that completes inline does not pay a loop turn per I/O.
//! - [`JobEngine::event`] (fio `event`): `events[i]`.
//!
//! All vectors get their capacity when slots are added; the reactor turn and the bdev channel
//! allocate nothing. `tests/no_alloc.rs` proves the loop allocation-free with a counting
//! allocator.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use keel_bdev::{
    BdevError, Channel, CompletionQueue, Descriptor, DmaBuf, IoBox, IoOp, IoRequest, IoStatus, IoVec, Submit,
};
use keel_reactor::AttachedReactor;

use crate::global::Global;

/// fio's `enum fio_ddir` values (io_u.h).
pub mod ddir {
    pub const READ: i32 = 0;
    pub const WRITE: i32 = 1;
    pub const TRIM: i32 = 2;
    pub const SYNC: i32 = 3;
    pub const DATASYNC: i32 = 4;
    pub const SYNC_FILE_RANGE: i32 = 5;
}

/// An `io_u` address, kept as an opaque value: the engine never dereferences it.
pub type IoUPtr = *mut c_void;

/// At most this many `getevents` calls in a row skip the reactor turn when completions are
/// already waiting: bounds how long a poller can wait behind inline completions (a few µs at
/// fio's pace) while keeping the turn's cost (two tick reads, three atomics) off most I/Os of a
/// module that completes inside `submit`.
pub const TURN_EVERY: u32 = 16;

/// Largest buffer area one job may ask for: windows are described by 32-bit offsets.
pub const MAX_BUFFER_BYTES: usize = u32::MAX as usize;

/// What `queue` did with an I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Waiting for `commit`; will come back through `getevents`.
    Queued,
    /// Finished now with this errno (never submitted).
    Completed(u32),
}

/// errno for a completion status, as fio reports it in `io_u->error`.
#[inline]
pub fn status_errno(s: IoStatus) -> u32 {
    (match s {
        IoStatus::Success => 0,
        IoStatus::Failed | IoStatus::StackOverflow | IoStatus::Pending => libc::EIO,
        IoStatus::Unsupported => libc::EOPNOTSUPP,
        IoStatus::InvalidRange => libc::EINVAL,
        IoStatus::Removed => libc::ENODEV,
        IoStatus::Aborted => libc::ECANCELED,
        IoStatus::ReadOnly => libc::EROFS,
    }) as u32
}

/// An open bdev of the job. Field order = drop order: channel before descriptor.
struct Target {
    ch: Channel,
    _desc: Descriptor,
    block_shift: u32,
    block_mask: u64,
}

struct Slot {
    /// `None` while the request is queued, in flight or waiting for a retry.
    io: Option<IoBox>,
    io_u: IoUPtr,
}

/// One fio job's engine. `!Send`: it lives on the job thread that created it. See the module
/// docs for the life cycle.
pub struct JobEngine {
    // Field order is drop order: bdev channels and requests die while the reactor is still
    // this thread's current one (it is declared last).
    targets: Vec<Option<Target>>,
    pending: Vec<(u32, IoBox)>,
    retry: VecDeque<(u32, IoBox)>,
    /// Requests finished by the engine itself (not by a bdev), reaped like completions.
    local: VecDeque<IoBox>,
    slots: Vec<Slot>,
    events: Vec<IoUPtr>,
    cq: CompletionQueue,
    buffer: Option<DmaBuf>,
    buffer_base: usize,
    buffer_len: usize,
    /// Slots whose request is out (pending, submitted, retrying or finished locally).
    busy: usize,
    turn_credit: u32,
    warned_misaligned: bool,
    owner: ThreadId,
    global: Arc<Global>,
    reactor: AttachedReactor,
}

impl JobEngine {
    /// Creates the job's engine on the calling thread, attaching a reactor for it. `iodepth` sizes
    /// the lists (more slots may be added; lists grow while slots are added, never per I/O).
    /// Called from fio's `init`, on the job thread.
    pub fn new(global: Arc<Global>, iodepth: usize) -> Result<JobEngine, String> {
        let reactor = global.attach_job_reactor()?;
        let n = iodepth.max(1);
        Ok(JobEngine {
            targets: Vec::new(),
            pending: Vec::with_capacity(n),
            retry: VecDeque::with_capacity(n),
            local: VecDeque::with_capacity(n),
            slots: Vec::with_capacity(n),
            events: Vec::with_capacity(n),
            cq: CompletionQueue::with_capacity(n),
            buffer: None,
            buffer_base: 0,
            buffer_len: 0,
            busy: 0,
            turn_credit: TURN_EVERY,
            warned_misaligned: false,
            owner: std::thread::current().id(),
            global,
            reactor,
        })
    }

    /// The thread that created the engine (the only one that may use or drop it).
    pub fn owner(&self) -> ThreadId {
        self.owner
    }

    /// The core of this job's reactor.
    pub fn core(&self) -> keel_reactor::CoreId {
        self.reactor.core()
    }

    /// Adds the slot for one fio `io_u` and returns its index (fio's `io_u_init`). Allocates the
    /// request; set-up only.
    pub fn add_slot(&mut self, io_u: IoUPtr) -> usize {
        let idx = self.slots.len();
        let mut io = IoRequest::new_boxed();
        io.tag = idx as u64;
        if let Some(buf) = &self.buffer {
            io.iovs.push(IoVec {
                buf: buf.clone(),
                offset_bytes: 0,
                len_bytes: 0,
            });
        }
        self.slots.push(Slot { io: Some(io), io_u });
        let n = self.slots.len();
        self.pending.reserve(n.saturating_sub(self.pending.len()));
        self.retry.reserve(n.saturating_sub(self.retry.len()));
        self.local.reserve(n.saturating_sub(self.local.len()));
        self.events.reserve(n.saturating_sub(self.events.len()));
        idx
    }

    /// Allocates the job's data buffer area of `len_bytes` (fio's `iomem_alloc`) and returns its
    /// page-aligned start for `td->orig_buffer`. The engine owns the memory; fio uses it until
    /// [`JobEngine::free_buffer`].
    pub fn alloc_buffer(&mut self, len_bytes: usize) -> Result<*mut u8, String> {
        if len_bytes > MAX_BUFFER_BYTES {
            return Err(format!(
                "fio asks for {len_bytes} bytes of I/O buffers (iodepth x largest bs); the engine supports up \
                 to {MAX_BUFFER_BYTES}"
            ));
        }
        let buf = DmaBuf::new(len_bytes.max(1));
        let ptr = buf.as_mut_ptr();
        self.buffer_base = ptr as usize;
        self.buffer_len = len_bytes;
        self.buffer = Some(buf);
        self.attach_windows();
        Ok(ptr)
    }

    /// Forgets the buffer area (fio's `iomem_free`). Idle slots drop their windows at once, so
    /// the memory goes when the last in-flight request (if any) lets go of it.
    pub fn free_buffer(&mut self) {
        self.buffer = None;
        self.buffer_base = 0;
        self.buffer_len = 0;
        for s in &mut self.slots {
            if let Some(io) = &mut s.io {
                io.iovs.clear();
            }
        }
    }

    /// Finishes set-up once slots and buffer exist (fio's `post_init`): every slot gets its
    /// window, and the completion queue room for every slot.
    pub fn post_init(&mut self) {
        self.attach_windows();
        if self.busy == 0 {
            self.cq = CompletionQueue::with_capacity(self.slots.len().max(1));
        }
    }

    fn attach_windows(&mut self) {
        let Some(buf) = &self.buffer else { return };
        for s in &mut self.slots {
            if let Some(io) = &mut s.io {
                io.iovs.clear();
                io.iovs.push(IoVec {
                    buf: buf.clone(),
                    offset_bytes: 0,
                    len_bytes: 0,
                });
            }
        }
    }

    /// Opens bdev `name` for this job (fio's `open_file`): a descriptor — writable, or read-only
    /// when a module claims the bdev — and this thread's channel. Returns the token fio keeps in
    /// `fio_file->engine_data` (never 0).
    pub fn open(&mut self, name: &str) -> Result<usize, String> {
        let reg = self.global.registry();
        let desc = match reg.open(name, true, |_| {}) {
            Ok(d) => d,
            Err(BdevError::Claimed { module, .. }) => {
                let d = reg.open(name, false, |_| {}).map_err(|e| e.to_string())?;
                crate::abi::log_error(&format!(
                    "bdev '{name}' is claimed by module '{module}': opened read-only, writes to it fail with EROFS"
                ));
                d
            }
            Err(BdevError::NotFound(_)) => return Err(self.global.bdev_size(name).err().unwrap_or_default()),
            Err(e) => return Err(format!("cannot open bdev '{name}': {e}")),
        };
        let bs = desc.info().block_size;
        let target = Target {
            ch: desc.channel(),
            _desc: desc,
            block_shift: bs.trailing_zeros(),
            block_mask: bs as u64 - 1,
        };
        let idx = match self.targets.iter().position(Option::is_none) {
            Some(i) => {
                self.targets[i] = Some(target);
                i
            }
            None => {
                self.targets.push(Some(target));
                self.targets.len() - 1
            }
        };
        Ok(idx + 1)
    }

    /// Closes what [`JobEngine::open`] opened (fio's `close_file`, after the file's I/O is done).
    pub fn close(&mut self, token: usize) {
        if let Some(t) = token.checked_sub(1).and_then(|i| self.targets.get_mut(i)) {
            *t = None;
        }
    }

    /// Queues one I/O (fio's `queue`). `slot` and `io_u` are what `io_u_init` paired; `token`
    /// is the file's [`JobEngine::open`] token; `xfer_addr`/`len_bytes` the transfer buffer in
    /// the job's buffer area. Data path.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn queue(
        &mut self,
        slot: usize,
        io_u: IoUPtr,
        ddir: i32,
        token: usize,
        offset_bytes: u64,
        xfer_addr: usize,
        len_bytes: u64,
    ) -> Queued {
        let target_idx = token.wrapping_sub(1);
        let Some(Some(t)) = self.targets.get(target_idx) else {
            return Queued::Completed(libc::ENODEV as u32);
        };
        let (op, has_data) = match ddir {
            ddir::READ => (IoOp::Read, true),
            ddir::WRITE => (IoOp::Write, true),
            ddir::TRIM => (IoOp::Unmap, false),
            ddir::SYNC | ddir::DATASYNC | ddir::SYNC_FILE_RANGE => (IoOp::Flush, false),
            _ => return Queued::Completed(libc::EINVAL as u32),
        };
        let (offset_blocks, num_blocks) = if op == IoOp::Flush {
            (0, 0)
        } else if (offset_bytes | len_bytes) & t.block_mask != 0 {
            let block_size = t.block_mask + 1;
            return self.refuse_misaligned(offset_bytes, len_bytes, block_size);
        } else {
            (offset_bytes >> t.block_shift, len_bytes >> t.block_shift)
        };
        let window = xfer_addr.wrapping_sub(self.buffer_base);
        if has_data && (window > self.buffer_len || len_bytes > (self.buffer_len - window) as u64) {
            return Queued::Completed(libc::EFAULT as u32);
        }
        let Some(s) = self.slots.get_mut(slot).filter(|s| s.io_u == io_u) else {
            return Queued::Completed(libc::EINVAL as u32);
        };
        let Some(mut io) = s.io.take() else {
            return Queued::Completed(libc::EBUSY as u32);
        };
        if has_data {
            let Some(v) = io.iovs.first_mut() else {
                s.io = Some(io);
                return Queued::Completed(libc::EFAULT as u32);
            };
            v.offset_bytes = window as u32;
            v.len_bytes = len_bytes as u32;
        }
        io.prepare(op, offset_blocks, num_blocks);
        self.pending.push((target_idx as u32, io));
        self.busy += 1;
        Queued::Queued
    }

    /// `EINVAL` for an I/O that is not in whole blocks; the first one of the job is also
    /// explained in fio's log (fio itself only prints "Invalid argument").
    #[cold]
    fn refuse_misaligned(&mut self, offset_bytes: u64, len_bytes: u64, block_size: u64) -> Queued {
        if !self.warned_misaligned {
            self.warned_misaligned = true;
            crate::abi::log_error(&format!(
                "I/O of {len_bytes} bytes at offset {offset_bytes} is not in whole {block_size}-byte blocks of \
                 the bdev: use bs= and offsets that are multiples of {block_size}"
            ));
        }
        Queued::Completed(libc::EINVAL as u32)
    }

    /// Submits every queued I/O to its bdev (fio's `commit`). Data path.
    #[inline]
    pub fn commit(&mut self) {
        for (t, mut io) in self.pending.drain(..) {
            match &self.targets[t as usize] {
                Some(target) => {
                    if let Submit::Requeue(io) = target.ch.submit(io, &self.cq) {
                        self.retry.push_back((t, io));
                    }
                }
                None => {
                    // The file was closed under a queued I/O: finish it here.
                    io.set_status(IoStatus::Removed);
                    self.local.push_back(io);
                }
            }
        }
    }

    /// Resubmits requests the bdevs handed back, in order, until one is refused again.
    #[inline]
    fn resubmit(&mut self) {
        while let Some((t, mut io)) = self.retry.pop_front() {
            match &self.targets[t as usize] {
                Some(target) => {
                    if let Submit::Requeue(io) = target.ch.submit(io, &self.cq) {
                        self.retry.push_front((t, io));
                        return;
                    }
                }
                None => {
                    io.set_status(IoStatus::Removed);
                    self.local.push_back(io);
                }
            }
        }
    }

    #[inline]
    fn reap_one(&mut self, io: IoBox, on_complete: &mut impl FnMut(IoUPtr, u32)) {
        let errno = status_errno(io.status());
        let slot = &mut self.slots[io.tag as usize];
        on_complete(slot.io_u, errno);
        self.events.push(slot.io_u);
        slot.io = Some(io);
        self.busy -= 1;
    }

    /// Reaps between `min` and `max` completions (fio's `getevents`), polling this thread's
    /// reactor as needed; with `timeout` it gives up after that long (returning fewer than
    /// `min`). `on_complete(io_u, errno)` runs for each reaped I/O before it is listed for
    /// [`JobEngine::event`]. Returns how many were reaped. Data path.
    #[inline]
    pub fn getevents(
        &mut self,
        min: usize,
        max: usize,
        timeout: Option<Duration>,
        mut on_complete: impl FnMut(IoUPtr, u32),
    ) -> usize {
        self.events.clear();
        // Only submitted I/O can complete: never wait for more than that.
        let min = min.min(self.busy - self.pending.len());
        let max = max.max(min);
        let mut deadline: Option<Instant> = None;
        loop {
            if self.cq.len() + self.local.len() < min.max(1) || self.turn_credit == 0 {
                self.reactor.turn();
                self.turn_credit = TURN_EVERY;
            } else {
                self.turn_credit -= 1;
            }
            while self.events.len() < max {
                let Some(io) = self.local.pop_front().or_else(|| self.cq.pop()) else {
                    break;
                };
                self.reap_one(io, &mut on_complete);
            }
            if !self.retry.is_empty() {
                self.resubmit();
            }
            let n = self.events.len();
            if n >= min {
                return n;
            }
            if let Some(t) = timeout {
                let now = Instant::now();
                if now >= *deadline.get_or_insert(now + t) {
                    return n;
                }
            }
        }
    }

    /// The `io_u` of the `i`-th event of the last [`JobEngine::getevents`] (fio's `event`); null
    /// when out of range. Data path.
    #[inline]
    pub fn event(&self, i: usize) -> IoUPtr {
        self.events.get(i).copied().unwrap_or(std::ptr::null_mut())
    }

    /// Requests out of their slots (queued, in flight, waiting for retry or reaping).
    pub fn busy(&self) -> usize {
        self.busy
    }

    /// Waits (turning the reactor) until no submitted I/O is left, for at most `timeout`.
    /// Returns whether everything came back. Called from fio's `cleanup` before dropping.
    pub fn drain(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.commit();
        while self.busy > 0 {
            self.getevents(0, self.slots.len(), Some(Duration::ZERO), |_, _| {});
            if self.busy > 0 && Instant::now() > deadline {
                return false;
            }
        }
        true
    }
}
