//! The PCIe I/O qpair of one controller on one reactor: a keel-nvme-pcie [`QueuePair`] plus
//! the request bookkeeping and the bounce buffers.
//!
//! # Design
//!
//! [`PcieQpairCell`] is the per-core channel of the controller's I/O device: the first
//! namespace bdev channel on a reactor builds it (Create I/O CQ/SQ on the admin queue, under the
//! controller lock — set-up path), every namespace channel there shares it, and its poller on
//! that reactor owns it. Nothing else touches it.
//!
//! **Requests.** A bdev request takes a **parent** slot and waits in the issue queue; the issue
//! step cuts it into NVMe commands of at most the qpair's chunk (the controller's transfer
//! size, capped at [`CHUNK_BYTES`]) while a **command** slot is free. Every command slot owns
//! one DMA bounce buffer of the chunk size from a per-qpair [`DmaPool`]: write data is copied
//! from the request's buffers into it before submission, read data copied out of it after the
//! completion. (The bdev layer's buffers are ordinary memory, not mapped for the device; mapping
//! the bdev buffer pool with VFIO_IOMMU_MAP_DMA would remove this copy and is not done yet.)
//! A full submission queue is backpressure: the command goes back to its slot and the parent
//! waits in the issue queue; a full parent table hands the request back (`Submit::Requeue`).
//!
//! **Gate and generation.** The controller's admin poller (main reactor) publishes a gate
//! (open, hold while resetting, deleted) and a generation that grows with every successful
//! reset. A qpair that sees a new generation re-creates its queues
//! ([`keel_nvme_pcie::Controller::restore_io_qpair`]) and re-submits every command that was in
//! flight (its data is still in its bounce buffer); one that sees `Deleted` fails everything
//! outstanding and every new request.
//!
//! Everything is allocated when the cell is built; nothing allocates or locks per I/O
//! (`tests/no_alloc.rs`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Weak;
use std::sync::Arc;
use std::time::Instant;

use keel_bdev::{iov_windows, IoBox, IoOp, IoRequest, IoStatus, SgList, Submit};
use keel_nvme_pcie::{Completion, DataBuf, DmaBuf, DmaPool, IoCommand, QueuePair, Submitted};
use keel_reactor::{current, PollStatus, PollerHandle};

use super::{PcieGate, PcieShared, Regs, TimeoutAction};

/// Largest bounce buffer (and so command) a qpair uses.
pub(crate) const CHUNK_BYTES: u32 = 128 * 1024;
/// Most blocks one Read/Write/Write Zeroes carries (NLB is 16 bits, zero-based).
const MAX_NLB: u64 = 1 << 16;
/// Completions reaped per poll.
const REAP_PER_POLL: usize = 64;
/// Polls between two reads of the clock for the timeout scan (when timeouts are on).
const POLLS_PER_TIMEOUT_SCAN: u32 = 256;

/// A bdev request being carried out.
struct Parent {
    io: Option<IoBox>,
    nsid: u32,
    block_size: u32,
    /// Units issued (blocks; one unit for a flush).
    issued: u64,
    /// Units in all.
    total: u64,
    /// Commands out.
    outstanding: u32,
    failed: bool,
}

/// One command slot: its bounce buffer and the command it carries (kept for a retry after a
/// reset).
struct Cmd {
    parent: u16,
    buf: DmaBuf,
    cmd: IoCommand,
    /// Where its data starts in the parent's buffers.
    offset_bytes: u64,
}

/// The request side of a qpair (beside the queue pair so a completion closure can borrow it).
struct Slots {
    parents: Box<[Parent]>,
    free_parents: Vec<u16>,
    cmds: Box<[Cmd]>,
    free_cmds: Vec<u16>,
    /// Parents with units left to issue, oldest first.
    queue: VecDeque<u16>,
    /// Commands handed back by a reset, to submit again first.
    retry: VecDeque<u16>,
    pool: Option<DmaPool>,
    chunk_bytes: u32,
}

/// The state of one qpair; owned by [`PcieQpairCell`].
struct IoQpair {
    shared: Arc<PcieShared>,
    /// `None`: the queue pair could not be created (logged); every request fails.
    qp: Option<QueuePair<Regs, u16>>,
    /// The controller generation the queues exist at.
    gen: u64,
    /// Polls since the last timeout scan.
    polls: u32,
    /// Command ids the last timeout scan found (room for every entry: no allocation).
    expired: Vec<u16>,
    slots: Slots,
}

/// The per-core channel of a PCIe controller's I/O device: the qpair and its poller. `!Send`.
pub(crate) struct PcieQpairCell {
    q: RefCell<IoQpair>,
    poller: RefCell<Option<PollerHandle>>,
}

impl PcieQpairCell {
    /// Builds this core's qpair: creates the queues on the device and the bounce buffers, and
    /// registers the poller. Called on the core by the I/O device's factory (set-up path; it
    /// takes the controller lock for the admin commands).
    pub(crate) fn new(shared: Arc<PcieShared>, me: &Weak<PcieQpairCell>) -> PcieQpairCell {
        let chunk_bytes = shared.chunk_bytes;
        let mut depth = usize::from(shared.opts.io_queue_depth);
        let gen = shared.generation();
        let qp = {
            let mut c = shared.ctrlr.lock().unwrap();
            match c.as_mut().map(|c| c.create_io_qpair::<u16>()) {
                Some(Ok(qp)) => Some(qp),
                Some(Err(e)) => {
                    tracing::error!("nvme {}: no I/O queue pair on this core: {e}", shared.name);
                    None
                }
                None => None,
            }
        };
        if let Some(qp) = &qp {
            depth = depth.min(usize::from(qp.entries()) - 1).max(1);
        }
        let pool = match DmaPool::new(&*shared.mapper, depth as u32, chunk_bytes) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!("nvme {}: no bounce buffers on this core: {e}", shared.name);
                None
            }
        };
        let mut slots = Slots {
            parents: (0..depth)
                .map(|_| Parent {
                    io: None,
                    nsid: 0,
                    block_size: 0,
                    issued: 0,
                    total: 0,
                    outstanding: 0,
                    failed: false,
                })
                .collect(),
            free_parents: (0..depth as u16).rev().collect(),
            cmds: Box::new([]),
            free_cmds: Vec::with_capacity(depth),
            queue: VecDeque::with_capacity(depth),
            retry: VecDeque::with_capacity(depth),
            pool,
            chunk_bytes,
        };
        let mut cmds = Vec::with_capacity(depth);
        if let Some(pool) = slots.pool.as_mut() {
            while let Some(buf) = pool.get() {
                cmds.push(Cmd {
                    parent: 0,
                    buf,
                    cmd: IoCommand::Flush { nsid: 0 },
                    offset_bytes: 0,
                });
            }
        }
        slots.free_cmds.extend((0..cmds.len() as u16).rev());
        slots.cmds = cmds.into_boxed_slice();
        let weak = me.clone();
        let handle = current().register_poller(format!("nvme_pcie_qpair_{}", shared.name), move || {
            match weak.upgrade() {
                Some(cell) => PollStatus::from_work(cell.q.borrow_mut().poll()),
                None => PollStatus::Idle,
            }
        });
        PcieQpairCell {
            q: RefCell::new(IoQpair {
                shared,
                expired: Vec::with_capacity(qp.as_ref().map_or(0, |q| usize::from(q.entries()))),
                qp: if slots.cmds.is_empty() { None } else { qp },
                gen,
                polls: 0,
                slots,
            }),
            poller: RefCell::new(Some(handle)),
        }
    }

    /// Takes `io` for namespace `nsid` (blocks of `block_size` bytes). Called on the cell's core
    /// by a namespace bdev channel; the request completes later through
    /// [`IoRequest::complete`]. `Requeue` when every parent slot is busy.
    #[inline]
    pub(crate) fn submit(&self, nsid: u32, block_size: u32, io: IoBox) -> Submit {
        self.q.borrow_mut().submit(nsid, block_size, io)
    }
}

impl Drop for PcieQpairCell {
    fn drop(&mut self) {
        if let Some(h) = self.poller.borrow_mut().take() {
            h.unregister();
        }
        let q = self.q.get_mut();
        if let Some(qp) = q.qp.take() {
            let mut c = q.shared.ctrlr.lock().unwrap();
            let slots = &mut q.slots;
            match c.as_mut() {
                Some(c) => {
                    if let Err(e) = c.delete_io_qpair(qp, |cmd, _| slots.cmd_done(cmd, false)) {
                        tracing::warn!("nvme {}: deleting an I/O queue pair: {e}", q.shared.name);
                    }
                }
                None => drop(qp),
            }
        }
        q.slots.fail_all();
    }
}

impl IoQpair {
    fn submit(&mut self, nsid: u32, block_size: u32, io: IoBox) -> Submit {
        if self.qp.is_none() || self.shared.gate() == PcieGate::Deleted {
            io.complete(IoStatus::Failed);
            return Submit::Accepted;
        }
        let Some(p) = self.slots.free_parents.pop() else {
            return Submit::Requeue(io);
        };
        let total = match io.op {
            IoOp::Flush => 1,
            _ => io.num_blocks,
        };
        if total == 0
            || !matches!(
                io.op,
                IoOp::Read | IoOp::Write | IoOp::Flush | IoOp::Unmap | IoOp::WriteZeroes
            )
        {
            self.slots.free_parents.push(p);
            io.complete(if total == 0 {
                IoStatus::Success
            } else {
                IoStatus::Unsupported
            });
            return Submit::Accepted;
        }
        let parent = &mut self.slots.parents[p as usize];
        *parent = Parent {
            io: Some(io),
            nsid,
            block_size,
            issued: 0,
            total,
            outstanding: 0,
            failed: false,
        };
        self.slots.queue.push_back(p);
        self.issue();
        Submit::Accepted
    }

    /// One poll: follows the controller's gate and generation, reaps completions, issues what
    /// waits. Whether it did any work.
    fn poll(&mut self) -> bool {
        let Some(qp) = self.qp.as_mut() else {
            return false;
        };
        let slots = &mut self.slots;
        let mut work = false;
        match self.shared.gate() {
            PcieGate::Deleted => {
                // Detached or removed: fail what is out and what waits.
                let n = qp.fail_outstanding(Completion::RESET, |c, _| slots.cmd_done(c, false));
                work = n > 0 || !slots.queue.is_empty() || !slots.retry.is_empty();
                slots.fail_waiting();
                return work;
            }
            PcieGate::Hold => return false,
            PcieGate::Open => {}
        }
        let gen = self.shared.generation();
        if gen != self.gen {
            // The controller was reset: re-create the queues, re-submit what was in flight.
            self.gen = gen;
            work = true;
            let r = match self.shared.ctrlr.lock().unwrap().as_mut() {
                Some(c) => c
                    .restore_io_qpair(qp, |c, _| slots.retry.push_back(c))
                    .map_err(|e| e.to_string()),
                None => Err("the controller is gone".to_string()),
            };
            if let Err(e) = r {
                tracing::error!(
                    "nvme {}: I/O queue pair not restored after a reset: {e}",
                    self.shared.name
                );
                while let Some(c) = slots.retry.pop_front() {
                    slots.cmd_done(c, false);
                }
                slots.fail_waiting();
                qp.mark_failed();
                return true;
            }
        }
        let reaped = qp.poll(REAP_PER_POLL, |c, comp| {
            if !comp.status.is_success() {
                tracing::debug!("nvme command failed: {}", comp.status);
            }
            slots.cmd_done(c, comp.status.is_success())
        });
        work |= reaped > 0;
        if let Some(after) = self.shared.timeout.after {
            self.polls += 1;
            if self.polls >= POLLS_PER_TIMEOUT_SCAN {
                self.polls = 0;
                let now = Instant::now();
                qp.tick(now);
                let expired = &mut self.expired;
                expired.clear();
                qp.expired(now, after, |cid| {
                    if expired.len() < expired.capacity() {
                        expired.push(cid)
                    }
                });
                let qid = qp.qid();
                for &cid in expired.iter() {
                    work = true;
                    tracing::warn!("nvme {}: command {cid} of queue {} timed out", self.shared.name, qid.0);
                    match self.shared.timeout.action {
                        TimeoutAction::None => {}
                        TimeoutAction::Reset => self.shared.request_reset(),
                        TimeoutAction::Abort => {
                            let aborted = match self.shared.ctrlr.lock().unwrap().as_mut() {
                                Some(c) => c.abort(qid, cid).unwrap_or(false),
                                None => false,
                            };
                            if !aborted {
                                self.shared.request_reset();
                            }
                        }
                    }
                }
            }
        }
        work |= self.issue();
        work
    }

    /// Submits retries, then the waiting parents' next pieces, while command slots and queue
    /// entries last. Whether it submitted anything.
    fn issue(&mut self) -> bool {
        if self.shared.gate() != PcieGate::Open {
            return false;
        }
        let Some(qp) = self.qp.as_mut() else {
            return false;
        };
        let s = &mut self.slots;
        let mut did = false;
        while let Some(&c) = s.retry.front() {
            match qp.submit(&s.cmds[c as usize].cmd, c) {
                Submitted::Accepted => {
                    s.retry.pop_front();
                    did = true;
                }
                Submitted::Requeue(_) => return did,
                Submitted::Rejected(c, e) => {
                    tracing::error!("nvme: a retried command was refused: {e}");
                    s.retry.pop_front();
                    s.cmd_done(c, false);
                }
            }
        }
        while let Some(&p) = s.queue.front() {
            let Some(c) = s.free_cmds.pop() else {
                break;
            };
            let parent = &mut s.parents[p as usize];
            let Some(io) = parent.io.as_ref() else {
                s.free_cmds.push(c);
                s.queue.pop_front();
                continue;
            };
            let bs = u64::from(parent.block_size);
            let left = parent.total - parent.issued;
            let slba = io.offset_blocks + parent.issued;
            let offset_bytes = parent.issued * bs;
            let slot = &mut s.cmds[c as usize];
            let data_units = left.min(u64::from(s.chunk_bytes) / bs).min(MAX_NLB);
            let buf = |units: u64| DataBuf {
                iova: slot.buf.iova,
                len_bytes: (units * bs) as u32,
            };
            let (cmd, units) = match io.op {
                IoOp::Read => (
                    IoCommand::Read {
                        nsid: parent.nsid,
                        slba,
                        blocks: data_units as u32,
                        buf: buf(data_units),
                    },
                    data_units,
                ),
                IoOp::Write => {
                    if let Some(pool) = s.pool.as_ref() {
                        copy_to_dma(pool, &slot.buf, &io.iovs, offset_bytes, data_units * bs);
                    }
                    (
                        IoCommand::Write {
                            nsid: parent.nsid,
                            slba,
                            blocks: data_units as u32,
                            buf: buf(data_units),
                            fua: false,
                        },
                        data_units,
                    )
                }
                IoOp::WriteZeroes => {
                    let units = left.min(MAX_NLB);
                    (
                        IoCommand::WriteZeroes {
                            nsid: parent.nsid,
                            slba,
                            blocks: units as u32,
                            deallocate: false,
                        },
                        units,
                    )
                }
                IoOp::Unmap => {
                    let units = left.min(u64::from(u32::MAX));
                    (
                        IoCommand::Deallocate {
                            nsid: parent.nsid,
                            slba,
                            blocks: units as u32,
                        },
                        units,
                    )
                }
                _ => (IoCommand::Flush { nsid: parent.nsid }, 1),
            };
            slot.cmd = cmd;
            slot.parent = p;
            slot.offset_bytes = offset_bytes;
            match qp.submit(&cmd, c) {
                Submitted::Accepted => {
                    did = true;
                    parent.issued += units;
                    parent.outstanding += 1;
                    if parent.issued >= parent.total {
                        s.queue.pop_front();
                    }
                }
                Submitted::Requeue(c) => {
                    s.free_cmds.push(c);
                    break;
                }
                Submitted::Rejected(c, e) => {
                    tracing::error!("nvme: command refused by the driver: {e}");
                    s.free_cmds.push(c);
                    parent.failed = true;
                    parent.total = parent.issued;
                    s.queue.pop_front();
                    if parent.outstanding == 0 {
                        s.finish(p);
                    }
                }
            }
        }
        did
    }
}

impl Slots {
    /// Command `c` completed (`ok` or not): copies read data out, frees the slot and completes
    /// its parent if that was its last command.
    fn cmd_done(&mut self, c: u16, ok: bool) {
        let cmd = &self.cmds[c as usize];
        let p = cmd.parent;
        let parent = &mut self.parents[p as usize];
        if ok {
            if let (IoCommand::Read { buf, .. }, Some(io), Some(pool)) =
                (&cmd.cmd, parent.io.as_ref(), self.pool.as_ref())
            {
                copy_from_dma(pool, &cmd.buf, &io.iovs, cmd.offset_bytes, u64::from(buf.len_bytes));
            }
        } else {
            parent.failed = true;
        }
        self.free_cmds.push(c);
        parent.outstanding = parent.outstanding.saturating_sub(1);
        if parent.outstanding == 0 && (parent.issued >= parent.total || parent.failed) {
            if parent.issued < parent.total {
                // Failed part-way: stop issuing the rest.
                parent.total = parent.issued;
                if let Some(i) = self.queue.iter().position(|&q| q == p) {
                    self.queue.remove(i);
                }
            }
            self.finish(p);
        }
    }

    /// Completes parent `p` and frees its slot.
    fn finish(&mut self, p: u16) {
        let parent = &mut self.parents[p as usize];
        if let Some(io) = parent.io.take() {
            let status = if parent.failed {
                IoStatus::Failed
            } else {
                IoStatus::Success
            };
            IoRequest::complete(io, status);
            self.free_parents.push(p);
        }
    }

    /// Fails every parent waiting to issue and every command waiting for a retry.
    fn fail_waiting(&mut self) {
        while let Some(c) = self.retry.pop_front() {
            self.cmd_done(c, false);
        }
        while let Some(p) = self.queue.pop_front() {
            let parent = &mut self.parents[p as usize];
            parent.failed = true;
            parent.total = parent.issued;
            if parent.outstanding == 0 {
                self.finish(p);
            }
        }
    }

    /// Fails every parent still held (the cell is going away).
    fn fail_all(&mut self) {
        self.fail_waiting();
        for p in 0..self.parents.len() {
            self.parents[p].failed = true;
            self.finish(p as u16);
        }
    }
}

/// Copies `len_bytes` of the request's data from byte `off` of `iovs` into bounce buffer `dst`.
fn copy_to_dma(pool: &DmaPool, dst: &DmaBuf, iovs: &SgList, off: u64, len_bytes: u64) {
    let mut done = 0usize;
    for (v, start, len) in iov_windows(iovs, off, len_bytes) {
        let (s, n) = (start as usize, len as usize);
        let _ = pool.write(dst, done, &v.buf.bytes()[s..s + n]);
        done += n;
    }
}

/// Copies `len_bytes` from bounce buffer `src` into the request's buffers from byte `off` of
/// `iovs`.
fn copy_from_dma(pool: &DmaPool, src: &DmaBuf, iovs: &SgList, off: u64, len_bytes: u64) {
    let mut done = 0usize;
    for (v, start, len) in iov_windows(iovs, off, len_bytes) {
        let (s, n) = (start as usize, len as usize);
        let _ = pool.read(src, done, &mut v.buf.bytes_mut()[s..s + n]);
        done += n;
    }
}

impl crate::bdev::NsQueue for PcieQpairCell {
    #[inline]
    fn submit(&self, nsid: u32, block_size: u32, io: IoBox) -> Submit {
        PcieQpairCell::submit(self, nsid, block_size, io)
    }
}
