//! One ublk queue on its reactor: an io_uring of `URING_CMD`s on `/dev/ublkcN` and the
//! queue's tags (`shared/specs/nbd-ublk.md` C8–C9).
//!
//! # Design
//!
//! The kernel's rule decides the shape: the task that arms a queue's tags becomes the queue's
//! daemon, and every later command for that queue must come from the same task. So a queue is
//! built **on its reactor's thread** (by message from the main core), owned by one poller there
//! and never moved: the ring, the mapping of the kernel's request descriptors, one data buffer
//! of `max_io_buf_bytes` per tag and one [`IoRequest`] per tag, all allocated before the first
//! FETCH. The data path allocates nothing after that.
//!
//! The device runs in the driver's plain copy mode (neither `NEED_GET_DATA` nor `USER_COPY`):
//! each tag's FETCH / COMMIT_AND_FETCH names the tag's buffer; the kernel copies a WRITE's data
//! into it before completing the command, and a READ's data out of it when the commit arrives.
//! A tag is always in one of three places: armed in the kernel, at the bdev, or waiting for its
//! commit to be submitted. Each turn of the poller:
//!
//! 1. reaps the ring: a completion with result 0 means the kernel put a request in the tag's
//!    descriptor — it is checked and sent to the bdev (READ/WRITE through the tag's buffer,
//!    FLUSH of the whole bdev, DISCARD as unmap, WRITE_ZEROES), or answered at once with an
//!    errno if malformed; `-ENODEV` means the device is stopping: the tag is done;
//! 2. drains the bdev's completions: each becomes a COMMIT_AND_FETCH carrying the bytes done
//!    (or `-EIO`) that also re-arms the tag;
//! 3. resubmits requests the bdev handed back (`Submit::Requeue`), oldest first;
//! 4. submits every SQE queued in this turn with one `io_uring_enter`.
//!
//! The queue finishes when every tag is done and nothing is at the bdev: it unregisters, drops
//! its channel, ring and mapping on this core, and tells the main core.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};
use keel_bdev::{Channel, CompletionQueue, DmaBuf, IoBox, IoOp, IoRequest, IoStatus, IoVec, Submit};
use keel_reactor::{current, PollStatus, PollerHandle};

use crate::wire::{self, IoCmd, IoDesc, IO_COMMIT_AND_FETCH_REQ, IO_DESC_BYTES, IO_FETCH_REQ};

/// What a queue needs to start; built on the main core, sent to the queue's core.
pub(crate) struct QueueSpec {
    /// The device id N.
    pub dev_id: u32,
    /// The queue's index.
    pub q_id: u16,
    /// Tags.
    pub depth: u16,
    /// Each tag's buffer (the device's `max_io_buf_bytes`).
    pub buf_bytes: usize,
    /// `/dev/ublkcN`, shared by the device's queues.
    pub cdev: Arc<File>,
    /// The bdev's block size as a shift.
    pub block_shift: u32,
    /// The bdev's size in blocks.
    pub num_blocks: u64,
}

/// The read-only mapping of a queue's request descriptors.
struct IodMap {
    ptr: *const u8,
    len: usize,
    depth: u16,
}

impl IodMap {
    fn map(cdev: &File, q_id: u16, depth: u16) -> io::Result<IodMap> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = wire::iod_len(depth, page);
        let off = wire::iod_offset(q_id, page);
        // SAFETY: a fresh shared read-only mapping of the char device at the offset and length
        // the driver documents; no existing memory is affected; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                cdev.as_raw_fd(),
                off as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(IodMap {
            ptr: ptr as *const u8,
            len,
            depth,
        })
    }

    /// Tag `tag`'s descriptor, as the kernel wrote it before completing the tag's command.
    fn get(&self, tag: u16) -> IoDesc {
        assert!(tag < self.depth, "tag within the queue");
        let mut b = [0u8; IO_DESC_BYTES];
        // SAFETY: `tag < depth`, so the 24 bytes lie inside the mapping, which lives as long as
        // `self`. The kernel wrote them before posting the completion we reaped (the CQE's
        // release/acquire orders it), and does not write them again until the tag is re-armed,
        // which only we do; volatile reads keep the compiler from assuming anything about memory
        // it does not see written.
        unsafe {
            let src = self.ptr.add(usize::from(tag) * IO_DESC_BYTES);
            for (i, byte) in b.iter_mut().enumerate() {
                *byte = std::ptr::read_volatile(src.add(i));
            }
        }
        IoDesc::decode(&b)
    }
}

impl Drop for IodMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; nothing refers to it any more.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Where a tag is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TagState {
    /// Armed in the kernel (FETCH or COMMIT_AND_FETCH outstanding).
    Armed,
    /// Its request is at the bdev.
    AtBdev,
    /// Its request is waiting to be resubmitted to the bdev.
    Retry,
    /// The device is stopping (or the command failed): never re-armed.
    Done,
}

struct Tag {
    state: TagState,
    buf: DmaBuf,
    /// Home while not at the bdev.
    io: Option<IoBox>,
    /// The byte count a successful READ/WRITE commits (others commit 0).
    done_bytes: i32,
}

/// A running queue (owned by its poller).
///
/// Field order is drop order: the ring closes first (cancelling what is still armed), then the
/// descriptor mapping, then the tags' buffers the kernel may have been using.
pub(crate) struct Queue {
    ring: IoUring,
    iod: IodMap,
    tags: Vec<Tag>,
    ch: Channel,
    cq: CompletionQueue,
    retry: VecDeque<u16>,
    /// SQEs queued since the last submit.
    queued: u32,
    /// Tags not `Done`.
    live: usize,
    /// Tags whose request is at the bdev or waiting to be resubmitted.
    at_bdev: usize,
    spec: QueueSpec,
}

impl Queue {
    /// Builds the queue on the calling reactor and arms every tag (FETCH). Called on the
    /// queue's core; the queue's commands must all come from this thread from now on.
    pub fn start(spec: QueueSpec, ch: Channel) -> io::Result<Queue> {
        let depth = u32::from(spec.depth);
        let ring = IoUring::builder().setup_cqsize(depth * 2).build(depth)?;
        let iod = IodMap::map(&spec.cdev, spec.q_id, spec.depth)?;
        let tags = (0..spec.depth)
            .map(|t| {
                let mut io = IoRequest::new_boxed();
                io.tag = u64::from(t);
                Tag {
                    state: TagState::Armed,
                    buf: DmaBuf::new(spec.buf_bytes),
                    io: Some(io),
                    done_bytes: 0,
                }
            })
            .collect();
        let mut q = Queue {
            ring,
            iod,
            tags,
            ch,
            cq: CompletionQueue::with_capacity(usize::from(spec.depth)),
            retry: VecDeque::with_capacity(usize::from(spec.depth)),
            queued: 0,
            live: usize::from(spec.depth),
            at_bdev: 0,
            spec,
        };
        for t in 0..q.spec.depth {
            q.push_cmd(IO_FETCH_REQ, t, 0)?;
        }
        q.ring.submit()?;
        q.queued = 0;
        Ok(q)
    }

    /// Queues FETCH or COMMIT_AND_FETCH for `tag` with its buffer.
    fn push_cmd(&mut self, op: u32, tag: u16, result: i32) -> io::Result<()> {
        let cmd = IoCmd {
            q_id: self.spec.q_id,
            tag,
            result,
            addr: self.tags[usize::from(tag)].buf.as_mut_ptr() as u64,
        };
        let sqe = opcode::UringCmd16::new(types::Fd(self.spec.cdev.as_raw_fd()), op)
            .cmd(cmd.encode())
            .build()
            .user_data(u64::from(tag));
        loop {
            // SAFETY: the SQE names the device's char device (kept open by `spec.cdev`) and the
            // tag's buffer, which lives in `self.tags` until after the ring is closed (field
            // order) and which only the kernel uses while the tag is armed.
            let pushed = unsafe { self.ring.submission().push(&sqe) };
            if pushed.is_ok() {
                self.queued += 1;
                return Ok(());
            }
            // Full (cannot happen with one command per tag and depth SQEs, but stay correct).
            self.ring.submit()?;
            self.queued = 0;
        }
    }

    /// Commits `tag` with `result` (re-arming it).
    fn commit(&mut self, tag: u16, result: i32) {
        self.tags[usize::from(tag)].state = TagState::Armed;
        if let Err(e) = self.push_cmd(IO_COMMIT_AND_FETCH_REQ, tag, result) {
            tracing::error!(error = %e, q = self.spec.q_id, tag, "ublk: cannot queue a commit");
            self.tags[usize::from(tag)].state = TagState::Done;
            self.live -= 1;
        }
    }

    /// The kernel handed `tag` a request: check it, send it to the bdev or answer it.
    fn request(&mut self, tag: u16) {
        let d = self.iod.get(tag);
        let shift = self.spec.block_shift;
        let sectors_per_block_shift = shift - 9;
        let len_bytes = u64::from(d.nr_sectors) << 9;
        let unaligned = |v: u64| v & ((1u64 << sectors_per_block_shift) - 1) != 0;
        let (op, data) = match d.op {
            wire::OP_READ => (IoOp::Read, true),
            wire::OP_WRITE => (IoOp::Write, true),
            wire::OP_FLUSH => (IoOp::Flush, false),
            wire::OP_DISCARD => (IoOp::Unmap, false),
            wire::OP_WRITE_ZEROES => (IoOp::WriteZeroes, false),
            _ => return self.commit(tag, -libc::EOPNOTSUPP),
        };
        let (offset_blocks, num_blocks) = if op == IoOp::Flush {
            (0, self.spec.num_blocks)
        } else {
            if d.nr_sectors == 0 || unaligned(d.start_sector) || unaligned(u64::from(d.nr_sectors)) {
                return self.commit(tag, -libc::EINVAL);
            }
            let off = d.start_sector >> sectors_per_block_shift;
            let n = u64::from(d.nr_sectors) >> sectors_per_block_shift;
            if off.checked_add(n).is_none_or(|end| end > self.spec.num_blocks) {
                return self.commit(tag, -libc::EIO);
            }
            (off, n)
        };
        if data && len_bytes > self.spec.buf_bytes as u64 {
            return self.commit(tag, -libc::EINVAL);
        }
        let t = &mut self.tags[usize::from(tag)];
        t.done_bytes = if data { len_bytes as i32 } else { 0 };
        let mut io = t.io.take().expect("an armed tag's request is home");
        io.iovs.clear();
        if data {
            io.iovs.push(IoVec {
                buf: t.buf.clone(),
                offset_bytes: 0,
                len_bytes: len_bytes as u32,
            });
        }
        io.prepare(op, offset_blocks, num_blocks);
        self.submit(tag, io);
    }

    /// Sends `io` (tag `tag`) to the bdev, behind any waiting retries.
    fn submit(&mut self, tag: u16, io: IoBox) {
        self.at_bdev += 1;
        let t = &mut self.tags[usize::from(tag)];
        if !self.retry.is_empty() {
            t.io = Some(io);
            t.state = TagState::Retry;
            self.retry.push_back(tag);
            return;
        }
        t.state = TagState::AtBdev;
        if let Submit::Requeue(io) = self.ch.submit(io, &self.cq) {
            let t = &mut self.tags[usize::from(tag)];
            t.io = Some(io);
            t.state = TagState::Retry;
            self.retry.push_back(tag);
        }
    }

    fn retry_submits(&mut self) -> bool {
        let mut did = false;
        while let Some(&tag) = self.retry.front() {
            let t = &mut self.tags[usize::from(tag)];
            let io = t.io.take().expect("a waiting request is home");
            t.state = TagState::AtBdev;
            match self.ch.submit(io, &self.cq) {
                Submit::Accepted => {
                    self.retry.pop_front();
                    did = true;
                }
                Submit::Requeue(io) => {
                    let t = &mut self.tags[usize::from(tag)];
                    t.io = Some(io);
                    t.state = TagState::Retry;
                    break;
                }
            }
        }
        did
    }

    /// A request came back from the bdev: commit it.
    fn completed(&mut self, mut io: IoBox) {
        let tag = io.tag as u16;
        let ok = io.status() == IoStatus::Success;
        io.iovs.clear();
        self.at_bdev -= 1;
        let t = &mut self.tags[usize::from(tag)];
        let result = if ok { t.done_bytes } else { -libc::EIO };
        t.io = Some(io);
        self.commit(tag, result);
    }

    /// One turn (see the module essay): whether it did work, and whether the queue is done.
    fn poll(&mut self) -> (bool, bool) {
        let mut busy = false;
        // 1. The kernel's completions. Collected first: the ring is borrowed while iterating.
        let mut got = [(0u16, 0i32); 64];
        loop {
            let mut n = 0;
            for cqe in self.ring.completion().take(got.len()) {
                got[n] = (cqe.user_data() as u16, cqe.result());
                n += 1;
            }
            if n == 0 {
                break;
            }
            busy = true;
            for &(tag, res) in &got[..n] {
                if usize::from(tag) >= self.tags.len() {
                    continue;
                }
                match res {
                    0 => self.request(tag),
                    r => {
                        if r != -libc::ENODEV {
                            tracing::warn!(
                                q = self.spec.q_id,
                                tag,
                                errno = -r,
                                "ublk: the kernel refused a tag's command"
                            );
                        }
                        let t = &mut self.tags[usize::from(tag)];
                        if t.state != TagState::Done {
                            t.state = TagState::Done;
                            self.live -= 1;
                        }
                    }
                }
            }
        }
        // 2. The bdev's completions.
        let cq = self.cq.clone();
        busy |= cq.drain_now(|io| self.completed(io)) > 0;
        // 3. Retries.
        busy |= self.retry_submits();
        // 4. One submit for everything queued.
        if self.queued > 0 {
            match self.ring.submit() {
                Ok(_) => self.queued = 0,
                Err(e) => tracing::error!(error = %e, q = self.spec.q_id, "ublk: io_uring_enter failed"),
            }
            busy = true;
        }
        (busy, self.live == 0 && self.at_bdev == 0)
    }
}

/// Registers `q`'s poller on the calling reactor; `done` runs there once the queue finished
/// and everything of it was dropped.
pub(crate) fn run(q: Queue, done: impl FnOnce() + 'static) {
    let slot: Rc<RefCell<Option<PollerHandle>>> = Rc::new(RefCell::new(None));
    let s2 = slot.clone();
    let name = format!("ublk{}_q{}", q.spec.dev_id, q.spec.q_id);
    let mut q = Some(q);
    let mut done = Some(done);
    let handle = current().register_poller(name, move || {
        let Some(queue) = q.as_mut() else {
            return PollStatus::Idle;
        };
        let (busy, finished) = queue.poll();
        if !finished {
            return if busy { PollStatus::Busy } else { PollStatus::Idle };
        }
        drop(q.take());
        drop(s2.borrow_mut().take());
        if let Some(d) = done.take() {
            d();
        }
        PollStatus::Busy
    });
    *slot.borrow_mut() = Some(handle);
}
