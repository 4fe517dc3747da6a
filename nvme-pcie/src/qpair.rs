//! A submission/completion queue pair: the per-reactor data path.
//!
//! # Design
//! One [`QueuePair`] is owned by one reactor (or, for the admin queue, by the [`Controller`]).
//! Its memory — the SQ ring, the CQ ring and one PRP-list page per command slot — is one
//! [`DmaMem`] mapped when the pair is created; nothing is allocated, locked or mapped per I/O.
//!
//! **Command slots.** A pair of `entries` slots can have at most `entries − 1` commands in
//! flight (a full SQ is `tail + 1 == head`). The pair keeps exactly that many trackers, and a
//! command's CID is its tracker's index, so a completion finds its request by indexing. A free
//! list (a preallocated stack of CIDs) gives out trackers; when it is empty the request is
//! handed back as [`Submitted::Requeue`] — backpressure is a value, never an error. Because no
//! more than `entries − 1` commands are ever outstanding, neither the SQ nor the CQ can
//! overflow, whatever the device does with its SQ head.
//!
//! **Submit**: take a CID, build the SQE (PRPs from the tracker's list page), copy it into
//! `sq[tail]`, advance the tail, ring the SQ tail doorbell. The doorbell write carries a release
//! fence ([`crate::sys`] explains the ordering argument), so the SQE is visible to the device
//! before the device can see the new tail.
//!
//! **Poll**: read the status word of `cq[head]` (volatile); if its phase bit equals the expected
//! phase, the entry is new: acquire fence, decode the CQE, take the tracker's request and hand it
//! to the caller's closure with the status; advance the head, flipping the expected phase when it
//! wraps. One CQ head doorbell write covers the whole batch. The SQ head comes from each CQE's
//! SQHD.
//!
//! **Timeouts** are coarse and syscall-free: [`QueuePair::tick`] stores the caller's "now"
//! (the reactor's clock), each submission records it, and [`QueuePair::expired`] names commands
//! older than the timeout once each, so the owner can send an Abort (through the controller's
//! admin queue) and, if that fails, reset the controller.
//!
//! **Reset**: after the controller was disabled (which deletes every queue), the owner calls
//! [`QueuePair::fail_outstanding`] to hand every in-flight request back with a "reset" status —
//! to retry or to fail, by policy — and the controller re-creates the queues on the device
//! ([`Controller::restore_io_qpair`]).
//!
//! [`Controller`]: crate::ctrlr::Controller
//! [`Controller::restore_io_qpair`]: crate::ctrlr::Controller::restore_io_qpair

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_nvme_proto::cqe::{Cqe, Status, StatusCode, CQE_LEN};
use keel_nvme_proto::props::{cq_head_doorbell, sq_tail_doorbell};
use keel_nvme_proto::sqe::{
    DataPointer, DatasetManagement, DsmRange, NvmCommand, ReadWrite, Sqe, WriteZeroes, DSM_RANGE_LEN, SQE_LEN,
};

use crate::dma::{DmaMapper, DmaMem};
use crate::error::PcieError;
use crate::prp;
use crate::regs::Registers;
use crate::sys::{acquire_fence, PAGE_BYTES};

/// Memory page size the driver programs (CC.MPS = 0): 4 KiB.
pub const MEMORY_PAGE_BYTES: u64 = PAGE_BYTES as u64;

/// Queue identifier (0 = admin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueId(pub u16);

/// A contiguous data buffer in device address space: an IOVA from a [`crate::dma::DmaPool`] or
/// another mapped region, and a length. Owned by the submitter; the device reads or writes it
/// until the command completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBuf {
    /// IOVA of byte 0 (dword aligned).
    pub iova: u64,
    /// Bytes to transfer (= blocks × block size).
    pub len_bytes: u32,
}

/// An NVM command for an I/O queue pair. Block counts are one-based; the wire's zero-based
/// fields are filled in here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoCommand {
    /// Read `blocks` blocks at `slba` into `buf`.
    Read {
        /// Namespace.
        nsid: u32,
        /// First block.
        slba: u64,
        /// Blocks (1..=65536).
        blocks: u32,
        /// Destination.
        buf: DataBuf,
    },
    /// Write `blocks` blocks from `buf` at `slba`; `fua` forces them to media first.
    Write {
        /// Namespace.
        nsid: u32,
        /// First block.
        slba: u64,
        /// Blocks (1..=65536).
        blocks: u32,
        /// Source.
        buf: DataBuf,
        /// Force unit access.
        fua: bool,
    },
    /// Flush the volatile write cache of `nsid`.
    Flush {
        /// Namespace (or 0xFFFFFFFF for all).
        nsid: u32,
    },
    /// Write Zeroes over `blocks` blocks; with `deallocate` the controller may unmap them.
    WriteZeroes {
        /// Namespace.
        nsid: u32,
        /// First block.
        slba: u64,
        /// Blocks (1..=65536).
        blocks: u32,
        /// Deallocate (DEAC).
        deallocate: bool,
    },
    /// Dataset Management, deallocate one range (the bdev layer's unmap).
    Deallocate {
        /// Namespace.
        nsid: u32,
        /// First block.
        slba: u64,
        /// Blocks (1..=2^32-1).
        blocks: u32,
    },
}

/// How a command ended: the CQE's status and result dword 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Status (success, or the controller's error with DNR).
    pub status: Status,
    /// Command-specific result (DW0).
    pub dw0: u32,
}

impl Completion {
    /// What [`QueuePair::fail_outstanding`] reports: Command Aborted due to SQ Deletion, no DNR
    /// (the controller was reset; the command may be retried).
    pub const RESET: Completion = Completion {
        status: StatusCode::ABORTED_SQ_DELETION.retryable(),
        dw0: 0,
    };
}

/// The outcome of a submission. `T` is the caller's request, handed back unless accepted.
#[derive(Debug)]
pub enum Submitted<T> {
    /// The command is on the queue; `T` comes back through [`QueuePair::poll`].
    Accepted,
    /// Every command slot is in use: retry after the next poll completed something.
    Requeue(T),
    /// The command cannot be expressed (buffer misaligned or too long, block count out of range)
    /// or the queue pair is failed.
    Rejected(T, PcieError),
}

struct Tracker<T> {
    ctx: Option<T>,
    submitted_at: Instant,
    abort_requested: bool,
}

/// Counters of one queue pair (read by the owner for statistics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QpairStats {
    /// Commands submitted.
    pub submitted: u64,
    /// Completions handed to the caller.
    pub completed: u64,
    /// Submissions handed back because every slot was busy.
    pub requeued: u64,
    /// Completions whose CID named no outstanding command (ignored).
    pub stray_completions: u64,
    /// SQ doorbell writes.
    pub sq_doorbells: u64,
    /// CQ doorbell writes.
    pub cq_doorbells: u64,
}

/// One SQ/CQ pair and its command slots. `R` is the register access (the BAR or the model);
/// `T` the caller's per-command request (a bdev I/O, a test tag), owned by the pair while the
/// command is in flight. Owned and polled by one reactor; `Send` when `R` is `Sync` and `T` is
/// `Send`.
pub struct QueuePair<R: Registers, T> {
    regs: Arc<R>,
    qid: QueueId,
    entries: u16,
    sq_tail: u16,
    sq_head: u16,
    cq_head: u16,
    phase: bool,
    sq_doorbell: usize,
    cq_doorbell: usize,
    mem: DmaMem,
    cq_off: usize,
    prp_off: usize,
    trackers: Box<[Tracker<T>]>,
    free: Vec<u16>,
    now: Instant,
    failed: bool,
    stats: QpairStats,
}

/// Bytes of a queue pair's memory: SQ ring, CQ ring (each page aligned), one PRP page per slot.
pub(crate) fn qpair_layout(entries: u16) -> (usize, usize, usize) {
    let n = entries as usize;
    let cq_off = (n * SQE_LEN).next_multiple_of(PAGE_BYTES);
    let prp_off = cq_off + (n * CQE_LEN).next_multiple_of(PAGE_BYTES);
    let total = prp_off + (n - 1) * PAGE_BYTES;
    (cq_off, prp_off, total)
}

impl<R: Registers, T> QueuePair<R, T> {
    /// Allocates and maps the memory of a pair of `entries` slots (2..=4096) for queue `qid`
    /// with doorbell stride `dstrd`. The queues exist on the device only once the controller
    /// created them ([`crate::ctrlr::Controller::create_io_qpair`] does both). Set-up path.
    pub(crate) fn new(
        regs: Arc<R>,
        mapper: &dyn DmaMapper,
        qid: QueueId,
        entries: u16,
        dstrd: u8,
    ) -> Result<Self, PcieError> {
        if !(2..=4096).contains(&entries) {
            return Err(PcieError::Invalid(format!("a queue of {entries} entries (2..=4096)")));
        }
        let (cq_off, prp_off, total) = qpair_layout(entries);
        let mem = DmaMem::new(mapper, total)?;
        let slots = entries - 1;
        let now = Instant::now();
        let trackers = (0..slots)
            .map(|_| Tracker {
                ctx: None,
                submitted_at: now,
                abort_requested: false,
            })
            .collect();
        Ok(QueuePair {
            regs,
            qid,
            entries,
            sq_tail: 0,
            sq_head: 0,
            cq_head: 0,
            phase: true,
            sq_doorbell: sq_tail_doorbell(qid.0, dstrd) as usize,
            cq_doorbell: cq_head_doorbell(qid.0, dstrd) as usize,
            mem,
            cq_off,
            prp_off,
            trackers,
            free: (0..slots).rev().collect(),
            now,
            failed: false,
            stats: QpairStats::default(),
        })
    }

    /// The queue id.
    pub fn qid(&self) -> QueueId {
        self.qid
    }

    /// Entries per queue (commands in flight ≤ entries − 1).
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// IOVA of the SQ ring (for Create I/O SQ / ASQ).
    pub(crate) fn sq_iova(&self) -> u64 {
        self.mem.iova
    }

    /// IOVA of the CQ ring (for Create I/O CQ / ACQ).
    pub(crate) fn cq_iova(&self) -> u64 {
        self.mem.iova + self.cq_off as u64
    }

    /// Commands in flight.
    pub fn outstanding(&self) -> usize {
        self.trackers.len() - self.free.len()
    }

    /// Counters.
    pub fn stats(&self) -> QpairStats {
        self.stats
    }

    /// Whether the pair was marked failed (device gone or queue lost); submissions are rejected.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Marks the pair failed: later submissions are rejected until it is restored.
    pub fn mark_failed(&mut self) {
        self.failed = true;
    }

    /// Sets the pair's notion of "now" (the reactor's clock, read once per poll loop) that
    /// submissions record for [`QueuePair::expired`].
    pub fn tick(&mut self, now: Instant) {
        self.now = now;
    }

    /// Submits an NVM command carrying `ctx`. On [`Submitted::Accepted`] the pair owns `ctx`
    /// until [`QueuePair::poll`] hands it back. No allocation, no lock, one MMIO write.
    pub fn submit(&mut self, cmd: &IoCommand, ctx: T) -> Submitted<T> {
        let Some(&cid) = self.free.last() else {
            self.stats.requeued += 1;
            return Submitted::Requeue(ctx);
        };
        match self.build_io(cmd, cid) {
            Ok(sqe) => self.push(sqe, cid, ctx),
            Err(e) => Submitted::Rejected(ctx, e),
        }
    }

    /// Submits a prepared entry (admin commands; the CID is filled in here). `data`, if any, is
    /// described with PRPs from the slot's list page.
    pub(crate) fn submit_sqe(&mut self, mut sqe: Sqe, data: Option<DataBuf>, ctx: T) -> Submitted<T> {
        let Some(&cid) = self.free.last() else {
            self.stats.requeued += 1;
            return Submitted::Requeue(ctx);
        };
        if let Some(buf) = data {
            match self.prps(cid, buf) {
                Ok((prp1, prp2)) => {
                    let dp = DataPointer::Prp { prp1, prp2 };
                    if let Err(e) = sqe.set_data_pointer(dp) {
                        return Submitted::Rejected(ctx, e.into());
                    }
                }
                Err(e) => return Submitted::Rejected(ctx, e),
            }
        }
        self.push(sqe, cid, ctx)
    }

    fn push(&mut self, mut sqe: Sqe, cid: u16, ctx: T) -> Submitted<T> {
        if self.failed {
            return Submitted::Rejected(ctx, PcieError::State("failed (reset or detach pending)"));
        }
        self.free.pop();
        sqe.cid = cid;
        let t = &mut self.trackers[cid as usize];
        t.ctx = Some(ctx);
        t.submitted_at = self.now;
        t.abort_requested = false;
        self.mem.region.write(self.sq_tail as usize * SQE_LEN, &sqe.to_bytes());
        self.sq_tail += 1;
        if self.sq_tail == self.entries {
            self.sq_tail = 0;
        }
        // Release fence inside write32: the SQE above is visible before the tail (crate::sys).
        self.regs.write32(self.sq_doorbell, u32::from(self.sq_tail));
        self.stats.submitted += 1;
        self.stats.sq_doorbells += 1;
        Submitted::Accepted
    }

    fn prps(&mut self, cid: u16, buf: DataBuf) -> Result<(u64, u64), PcieError> {
        let list_off = self.prp_off + cid as usize * PAGE_BYTES;
        let list_iova = self.mem.iova + list_off as u64;
        let region = &self.mem.region;
        let p = prp::build(
            buf.iova,
            u64::from(buf.len_bytes),
            MEMORY_PAGE_BYTES,
            list_iova,
            |i, addr| region.write_u64(list_off + i * 8, addr),
        )?;
        Ok((p.prp1, p.prp2))
    }

    fn build_io(&mut self, cmd: &IoCommand, cid: u16) -> Result<Sqe, PcieError> {
        fn nlb(blocks: u32) -> Result<u16, PcieError> {
            if blocks == 0 || blocks > 65536 {
                return Err(PcieError::Invalid(format!(
                    "{blocks} blocks in one command (1..=65536)"
                )));
            }
            Ok((blocks - 1) as u16)
        }
        let (command, data) = match *cmd {
            IoCommand::Read {
                nsid,
                slba,
                blocks,
                buf,
            } => (
                NvmCommand::Read(ReadWrite {
                    nsid,
                    slba,
                    nlb_0based: nlb(blocks)?,
                    fua: false,
                    limited_retry: false,
                }),
                Some(buf),
            ),
            IoCommand::Write {
                nsid,
                slba,
                blocks,
                buf,
                fua,
            } => (
                NvmCommand::Write(ReadWrite {
                    nsid,
                    slba,
                    nlb_0based: nlb(blocks)?,
                    fua,
                    limited_retry: false,
                }),
                Some(buf),
            ),
            IoCommand::Flush { nsid } => (NvmCommand::Flush { nsid }, None),
            IoCommand::WriteZeroes {
                nsid,
                slba,
                blocks,
                deallocate,
            } => (
                NvmCommand::WriteZeroes(WriteZeroes {
                    nsid,
                    slba,
                    nlb_0based: nlb(blocks)?,
                    deallocate,
                    fua: false,
                    limited_retry: false,
                }),
                None,
            ),
            IoCommand::Deallocate { nsid, slba, blocks } => {
                if blocks == 0 {
                    return Err(PcieError::Invalid("a deallocate of 0 blocks".into()));
                }
                // The range list lives in the slot's PRP page (one range, 16 bytes).
                let list_off = self.prp_off + cid as usize * PAGE_BYTES;
                let range = DsmRange {
                    attributes: 0,
                    block_count: blocks,
                    slba,
                };
                self.mem.region.write(list_off, &range.to_bytes());
                let c = NvmCommand::DatasetManagement(DatasetManagement {
                    nsid,
                    nr_0based: 0,
                    integral_read: false,
                    integral_write: false,
                    deallocate: true,
                });
                const _: () = assert!(DSM_RANGE_LEN <= PAGE_BYTES);
                return Ok(c.to_sqe_prp(cid, self.mem.iova + list_off as u64, 0));
            }
        };
        let (prp1, prp2) = match data {
            Some(buf) => self.prps(cid, buf)?,
            None => (0, 0),
        };
        Ok(command.to_sqe_prp(cid, prp1, prp2))
    }

    /// Reaps up to `max` completions, handing each request back through `done` with its
    /// [`Completion`]; returns how many. One CQ doorbell write per non-empty batch. No
    /// allocation, no lock.
    pub fn poll(&mut self, max: usize, mut done: impl FnMut(T, Completion)) -> usize {
        let mut n = 0;
        while n < max {
            let at = self.cq_off + self.cq_head as usize * CQE_LEN;
            let status = self.mem.region.read_u16_volatile(at + 14);
            if (status & 1 == 1) != self.phase {
                break;
            }
            acquire_fence();
            let mut raw = [0u8; CQE_LEN];
            self.mem.region.read(at, &mut raw);
            let cqe = Cqe::from_bytes(&raw);
            self.cq_head += 1;
            if self.cq_head == self.entries {
                self.cq_head = 0;
                self.phase = !self.phase;
            }
            n += 1;
            if cqe.sq_head < self.entries {
                self.sq_head = cqe.sq_head;
            }
            let ctx = self.trackers.get_mut(cqe.cid as usize).and_then(|t| t.ctx.take());
            match ctx {
                Some(ctx) => {
                    self.free.push(cqe.cid);
                    self.stats.completed += 1;
                    done(
                        ctx,
                        Completion {
                            status: cqe.status,
                            dw0: cqe.result_u64() as u32,
                        },
                    );
                }
                None => self.stats.stray_completions += 1,
            }
        }
        if n > 0 {
            self.regs.write32(self.cq_doorbell, u32::from(self.cq_head));
            self.stats.cq_doorbells += 1;
        }
        n
    }

    /// Calls `f(cid)` once for each command submitted more than `timeout` before `now` that was
    /// not named before (the owner then sends an Abort for `(qid, cid)`); returns how many.
    pub fn expired(&mut self, now: Instant, timeout: Duration, mut f: impl FnMut(u16)) -> usize {
        let mut n = 0;
        for (cid, t) in self.trackers.iter_mut().enumerate() {
            if t.ctx.is_some() && !t.abort_requested && now.saturating_duration_since(t.submitted_at) > timeout {
                t.abort_requested = true;
                n += 1;
                f(cid as u16);
            }
        }
        n
    }

    /// Hands every in-flight request back through `done` with `completion` (normally
    /// [`Completion::RESET`]) and resets the rings to empty (CQ zeroed, phase 1) — after the
    /// controller dropped the queues (reset, CFS, removal). Returns how many were failed.
    pub fn fail_outstanding(&mut self, completion: Completion, mut done: impl FnMut(T, Completion)) -> usize {
        let mut n = 0;
        for (cid, t) in self.trackers.iter_mut().enumerate() {
            if let Some(ctx) = t.ctx.take() {
                self.free.push(cid as u16);
                n += 1;
                done(ctx, completion);
            }
        }
        self.reset_rings();
        n
    }

    fn reset_rings(&mut self) {
        self.mem.region.fill(self.cq_off, self.entries as usize * CQE_LEN, 0);
        self.sq_tail = 0;
        self.sq_head = 0;
        self.cq_head = 0;
        self.phase = true;
    }

    /// After the queues were re-created on the device: accept submissions again.
    pub(crate) fn restored(&mut self) {
        self.failed = false;
    }
}
