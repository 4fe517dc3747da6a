//! The NVMe/TCP I/O qpair: one connection of one controller on one reactor.
//!
//! # Design
//!
//! [`QpairCell`] is the per-core channel of the controller's I/O device: the first namespace
//! bdev channel on a reactor builds it, every namespace channel there shares it, and its poller
//! on that reactor owns everything in it. Its link ([`Link`]) is an enum stepped by the poller:
//! `Down` → (the controller is live at a generation this qpair has not tried) → `Connecting`
//! (a helper thread runs ICReq and Fabrics Connect and sends the connection back) → `Up`. A
//! failed connection goes back to `Down` and asks the controller for a reset; the requests it
//! carried are issued again once the link is up at the controller's next generation.
//!
//! **Requests.** A bdev request takes a **parent** slot and waits in the issue queue; the issue
//! step cuts it into NVMe commands (at most the controller's transfer size — MDTS, capped —
//! and 65536 blocks each; one DSM range per command for unmap) as long as a **command** slot
//! (CID = slot index) and room in the send buffer are free. Writes up to the queue's in-capsule
//! size travel in the capsule; larger ones wait for the controller's R2T and go out as H2CData
//! PDUs of at most MAXH2CDATA (and 64 KiB). C2HData is copied from the receive buffer into the
//! request's buffers. A parent completes through [`IoRequest::complete`] once its last command
//! completed; the first failure wins.
//!
//! **Gate.** The controller's I/O gate decides what waits: while it resets, parents stay queued
//! (and submits are queued, up to the slots); after fast_io_fail or deletion every queued parent
//! and every new submit fails.
//!
//! Everything (slots, queues, buffers) is allocated when the cell is built or the link comes up;
//! nothing allocates or locks per I/O.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Weak;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_bdev::{iov_windows, IoBox, IoOp, IoRequest, IoStatus, SgList, Submit};
use keel_nvme_proto::sqe::{
    Command, DataPointer, DatasetManagement, DsmRange, NvmCommand, ReadWrite, SglDescriptor, WriteZeroes, DSM_RANGE_LEN,
};
use keel_nvme_proto::tcp::{CapsuleCmd, Event, H2CData, PduHeader};
use keel_reactor::{current, PollStatus, PollerHandle};

use super::conn::Conn;
use crate::ctrlr::{Gate, Shared};
use crate::transport::QueueLink;
use crate::NvmeError;

/// Send buffer of an I/O connection: room for many capsules and an H2CData chunk.
pub(crate) const TX_BYTES: usize = 256 << 10;
/// Largest H2CData PDU Keel sends: a whole command's data at the transfer size Keel uses, so an
/// R2T is answered with one PDU when MAXH2CDATA allows (Linux's nvmet-tcp checks a data digest
/// against the whole command's data, so it needs exactly that).
const H2C_CHUNK_BYTES: u32 = super::setup::MAX_XFER_BYTES as u32;
/// Reads per poll.
const READS_PER_POLL: usize = 8;
/// Most blocks one Read/Write/Write Zeroes carries (NLB is 16 bits, zero-based).
const MAX_NLB: u64 = 1 << 16;
/// How long a helper thread may take to connect an I/O queue.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A bdev request being carried out.
struct Parent {
    io: Option<IoBox>,
    nsid: u32,
    block_size: u32,
    /// Units issued so far (blocks; one unit for a flush).
    issued: u64,
    /// Units in all.
    total: u64,
    /// Commands out.
    outstanding: u32,
    failed: bool,
}

/// One NVMe command on the wire (CID = its index).
#[derive(Clone, Copy, Default)]
struct Cmd {
    busy: bool,
    parent: u16,
    /// Where its data starts in the parent's buffers.
    offset_bytes: u64,
    len_bytes: u32,
    read: bool,
    write: bool,
}

/// H2CData owed for an R2T.
#[derive(Clone, Copy)]
struct Owed {
    cid: u16,
    ttag: u16,
    at: u32,
    end: u32,
}

/// The request-side state of a qpair; the link is beside it so the receive path can borrow both.
struct Slots {
    parents: Box<[Parent]>,
    free_parents: Vec<u16>,
    cmds: Box<[Cmd]>,
    free_cmds: Vec<u16>,
    /// Parents with units left to issue, oldest first.
    queue: VecDeque<u16>,
    /// H2CData to send, oldest first.
    owed: VecDeque<Owed>,
    /// The C2HData being received: (CID, DATAO, SUCCESS flag).
    rx: Option<(u16, u32, bool)>,
    in_capsule_bytes: u32,
    max_xfer_bytes: u64,
}

/// The link's state; see the module doc.
enum Link {
    /// No connection; `tried` is the controller generation last tried.
    Down { tried: Option<u64> },
    /// A helper thread is connecting for generation `gen`.
    Connecting {
        rx: Receiver<Result<QueueLink, NvmeError>>,
        gen: u64,
    },
    /// Connected at generation `gen`.
    Up { conn: Box<Conn>, gen: u64 },
}

/// The state of one qpair; owned by [`QpairCell`].
pub(crate) struct IoQpair {
    shared: Arc<Shared>,
    qid: u16,
    link: Link,
    slots: Slots,
}

/// The per-core channel of a controller's I/O device: the qpair and its poller. `!Send`.
pub(crate) struct QpairCell {
    q: RefCell<IoQpair>,
    poller: RefCell<Option<PollerHandle>>,
}

impl QpairCell {
    /// Builds this core's qpair (allocating all its slots) and registers its poller. Called on
    /// the core, by the I/O device's factory.
    pub(crate) fn new(shared: Arc<Shared>, me: &Weak<QpairCell>) -> QpairCell {
        let depth = shared.opts.io_queue_depth as usize;
        let qid = shared.take_qid();
        let slots = Slots {
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
            cmds: vec![Cmd::default(); depth].into_boxed_slice(),
            free_cmds: (0..depth as u16).rev().collect(),
            queue: VecDeque::with_capacity(depth),
            owed: VecDeque::with_capacity(depth),
            rx: None,
            in_capsule_bytes: 0,
            max_xfer_bytes: 4096,
        };
        let weak = me.clone();
        let name = format!("nvme_qpair_{}", shared.name);
        let handle = current().register_poller(name, move || match weak.upgrade() {
            Some(cell) => PollStatus::from_work(cell.q.borrow_mut().poll()),
            None => PollStatus::Idle,
        });
        QpairCell {
            q: RefCell::new(IoQpair {
                shared,
                qid,
                link: Link::Down { tried: None },
                slots,
            }),
            poller: RefCell::new(Some(handle)),
        }
    }

    /// Takes `io` for namespace `nsid` (blocks of `block_size` bytes). Called on the cell's core
    /// by a namespace bdev channel; the request completes later from the poller (or now, when
    /// the gate is failing). `Requeue` when every parent slot is busy.
    #[inline]
    pub(crate) fn submit(&self, nsid: u32, block_size: u32, io: IoBox) -> Submit {
        self.q.borrow_mut().submit(nsid, block_size, io)
    }
}

impl Drop for QpairCell {
    fn drop(&mut self) {
        if let Some(h) = self.poller.borrow_mut().take() {
            h.unregister();
        }
        let mut q = self.q.borrow_mut();
        q.slots.fail_all();
        q.shared.put_qid(q.qid);
    }
}

impl IoQpair {
    fn submit(&mut self, nsid: u32, block_size: u32, io: IoBox) -> Submit {
        match self.shared.gate() {
            Gate::Failing | Gate::Deleted => {
                io.complete(IoStatus::Failed);
                return Submit::Accepted;
            }
            Gate::Open | Gate::Hold => {}
        }
        if self.qid == 0 {
            io.complete(IoStatus::Failed);
            return Submit::Accepted;
        }
        let Some(p) = self.slots.free_parents.pop() else {
            return Submit::Requeue(io);
        };
        let total = match io.op {
            IoOp::Flush | IoOp::Reset => 1,
            _ => io.num_blocks,
        };
        let parent = &mut self.slots.parents[p as usize];
        parent.io = Some(io);
        parent.nsid = nsid;
        parent.block_size = block_size;
        parent.issued = 0;
        parent.total = total;
        parent.outstanding = 0;
        parent.failed = false;
        self.slots.queue.push_back(p);
        Submit::Accepted
    }

    /// One poll; true if anything happened.
    fn poll(&mut self) -> bool {
        let gate = self.shared.gate();
        let mut did = false;
        if matches!(gate, Gate::Failing | Gate::Deleted) && !self.slots.queue.is_empty() {
            if let Link::Up { .. } = self.link {
                // Commands on the wire finish normally; only what waits fails.
                did |= self.slots.fail_queued();
            } else {
                did |= self.slots.fail_all();
            }
        }
        let generation = self.shared.generation();
        match &mut self.link {
            Link::Up { conn, gen } => {
                if *gen != generation || gate == Gate::Deleted {
                    // The controller reconnected (or is gone) under this connection.
                    let tried = Some(*gen);
                    self.link = Link::Down { tried };
                    self.slots.requeue_in_flight();
                    return true;
                }
                let r = (|| -> Result<bool, NvmeError> {
                    let slots = &mut self.slots;
                    let mut did = conn.recv(READS_PER_POLL, |ev| slots.on_event(ev))?;
                    did |= slots.send_owed(conn)?;
                    if gate == Gate::Open {
                        did |= slots.issue(conn)?;
                    }
                    did |= conn.flush()?;
                    Ok(did)
                })();
                match r {
                    Ok(d) => did |= d,
                    Err(e) => {
                        tracing::warn!(
                            "nvme {} qpair {}: {e}; resetting the controller",
                            self.shared.name,
                            self.qid
                        );
                        let failed_gen = *gen;
                        self.link = Link::Down {
                            tried: Some(failed_gen),
                        };
                        self.slots.requeue_in_flight();
                        self.shared.request_reset(failed_gen);
                        did = true;
                    }
                }
            }
            Link::Connecting { rx, gen } => match rx.try_recv() {
                Ok(Ok(QueueLink::Tcp(conn))) => {
                    let gen = *gen;
                    if gen == generation && gate != Gate::Deleted {
                        self.slots.in_capsule_bytes = self.shared.in_capsule_bytes();
                        self.slots.max_xfer_bytes = self.shared.max_xfer_bytes();
                        self.link = Link::Up {
                            conn: Box::new(conn),
                            gen,
                        };
                    } else {
                        self.link = Link::Down { tried: Some(gen) };
                    }
                    did = true;
                }
                Ok(Err(e)) => {
                    tracing::warn!("nvme {}: connecting I/O queue {}: {e}", self.shared.name, self.qid);
                    let gen = *gen;
                    self.link = Link::Down { tried: Some(gen) };
                    self.shared.request_reset(gen);
                    did = true;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    let gen = *gen;
                    self.link = Link::Down { tried: Some(gen) };
                    did = true;
                }
            },
            Link::Down { tried } => {
                if gate == Gate::Open && *tried != Some(generation) && self.qid != 0 {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let shared = self.shared.clone();
                    let (cntlid, qid) = (self.shared.cntlid(), self.qid);
                    let spawned = std::thread::Builder::new()
                        .name(format!("nvme-connect-{qid}"))
                        .spawn(move || {
                            let deadline = Instant::now() + CONNECT_TIMEOUT;
                            let _ = tx.send(shared.transport.connect_io(&shared.opts, cntlid, qid, deadline));
                        });
                    self.link = match spawned {
                        Ok(_) => Link::Connecting { rx, gen: generation },
                        Err(_) => Link::Down {
                            tried: Some(generation),
                        },
                    };
                    did = true;
                }
            }
        }
        did
    }
}

/// Copies the parent's data from byte `off` of `iovs` into `dst`.
fn copy_out(iovs: &SgList, off: u64, dst: &mut [u8]) {
    let mut done = 0;
    for (v, start, len) in iov_windows(iovs, off, dst.len() as u64) {
        let (s, n) = (start as usize, len as usize);
        dst[done..done + n].copy_from_slice(&v.buf.bytes()[s..s + n]);
        done += n;
    }
}

/// Copies `src` into the parent's buffers from byte `off` of `iovs`.
fn copy_in(iovs: &SgList, off: u64, src: &[u8]) {
    let mut done = 0;
    for (v, start, len) in iov_windows(iovs, off, src.len() as u64) {
        let (s, n) = (start as usize, len as usize);
        v.buf.bytes_mut()[s..s + n].copy_from_slice(&src[done..done + n]);
        done += n;
    }
}

impl Slots {
    /// Issues commands for queued parents while slots and send room last.
    fn issue(&mut self, conn: &mut Conn) -> Result<bool, NvmeError> {
        let mut did = false;
        while let Some(&p) = self.queue.front() {
            let Some(&cid) = self.free_cmds.last() else { break };
            let parent = &self.parents[p as usize];
            let Some(io) = parent.io.as_ref() else {
                self.queue.pop_front();
                continue;
            };
            let bs = u64::from(parent.block_size);
            let left = parent.total - parent.issued;
            let slba = io.offset_blocks + parent.issued;
            let offset_bytes = parent.issued * bs;
            let nsid = parent.nsid;
            let (cmd, units, len_bytes, in_capsule) = match io.op {
                IoOp::Read | IoOp::Write => {
                    let max = (self.max_xfer_bytes / bs).clamp(1, MAX_NLB);
                    let n = left.min(max);
                    let rw = ReadWrite {
                        nsid,
                        slba,
                        nlb_0based: (n - 1) as u16,
                        fua: false,
                        limited_retry: false,
                    };
                    let len = (n * bs) as u32;
                    if io.op == IoOp::Read {
                        (NvmCommand::Read(rw), n, len, false)
                    } else {
                        (NvmCommand::Write(rw), n, len, len <= self.in_capsule_bytes)
                    }
                }
                IoOp::WriteZeroes => {
                    let n = left.min(MAX_NLB);
                    let wz = WriteZeroes {
                        nsid,
                        slba,
                        nlb_0based: (n - 1) as u16,
                        deallocate: false,
                        fua: false,
                        limited_retry: false,
                    };
                    (NvmCommand::WriteZeroes(wz), n, 0, false)
                }
                IoOp::Unmap => {
                    let n = left.min(u64::from(u32::MAX));
                    let dsm = DatasetManagement {
                        nsid,
                        nr_0based: 0,
                        integral_read: false,
                        integral_write: false,
                        deallocate: true,
                    };
                    (NvmCommand::DatasetManagement(dsm), n, DSM_RANGE_LEN as u32, true)
                }
                IoOp::Flush | IoOp::Reset => (NvmCommand::Flush { nsid }, 1, 0, false),
            };
            let sgl = if in_capsule {
                SglDescriptor::in_capsule(len_bytes)
            } else {
                SglDescriptor::transport(len_bytes)
            };
            let sqe = Command::Nvm(cmd).to_sqe(cid, DataPointer::Sgl(sgl))?;
            let hdr = PduHeader::CapsuleCmd(CapsuleCmd { sqe });
            let data_len = if in_capsule { len_bytes as usize } else { 0 };
            let pushed = conn.push(&hdr, data_len, |d| {
                if io.op == IoOp::Unmap {
                    let r = DsmRange {
                        attributes: 0,
                        block_count: units as u32,
                        slba,
                    };
                    d.copy_from_slice(&r.to_bytes());
                } else if !d.is_empty() {
                    copy_out(&io.iovs, offset_bytes, d);
                }
            })?;
            if !pushed {
                break;
            }
            let op = io.op;
            self.free_cmds.pop();
            self.cmds[cid as usize] = Cmd {
                busy: true,
                parent: p,
                offset_bytes,
                len_bytes,
                read: op == IoOp::Read,
                write: op == IoOp::Write && !in_capsule,
            };
            let parent = &mut self.parents[p as usize];
            parent.issued += units;
            parent.outstanding += 1;
            if parent.issued >= parent.total {
                self.queue.pop_front();
            }
            did = true;
        }
        Ok(did)
    }

    /// Sends H2CData owed for R2Ts while the send buffer has room.
    fn send_owed(&mut self, conn: &mut Conn) -> Result<bool, NvmeError> {
        let mut did = false;
        let chunk_max = conn.maxh2cdata.min(H2C_CHUNK_BYTES);
        while let Some(o) = self.owed.front_mut() {
            let cmd = self.cmds[o.cid as usize];
            let n = (o.end - o.at).min(chunk_max);
            let last = o.at + n == o.end;
            let hdr = PduHeader::H2CData(H2CData {
                cccid: o.cid,
                ttag: o.ttag,
                datao: o.at,
                datal: n,
                last_pdu: last,
            });
            let Some(io) = self.parents[cmd.parent as usize].io.as_ref() else {
                return Err(NvmeError::Sequence("R2T for a command without a request"));
            };
            let off = cmd.offset_bytes + u64::from(o.at);
            if !conn.push(&hdr, n as usize, |d| copy_out(&io.iovs, off, d))? {
                break;
            }
            o.at += n;
            if last {
                self.owed.pop_front();
            }
            did = true;
        }
        Ok(did)
    }

    /// The command `cid` if it is out, else a protocol error.
    fn busy_cmd(&self, cid: u16) -> Result<Cmd, NvmeError> {
        match self.cmds.get(cid as usize) {
            Some(c) if c.busy => Ok(*c),
            _ => Err(NvmeError::Sequence("PDU for a command that is not outstanding")),
        }
    }

    /// Handles one receive event.
    fn on_event(&mut self, ev: Event<'_>) -> Result<(), NvmeError> {
        match ev {
            Event::Header { pdu, .. } => match pdu {
                PduHeader::CapsuleResp(r) => {
                    self.busy_cmd(r.cqe.cid)?;
                    if self.rx.is_some_and(|(cid, _, _)| cid == r.cqe.cid) {
                        return Err(NvmeError::Sequence("CapsuleResp in the middle of its data"));
                    }
                    self.finish(r.cqe.cid, r.cqe.status.is_success());
                }
                PduHeader::C2HData(d) => {
                    let c = self.busy_cmd(d.cccid)?;
                    if !c.read || u64::from(d.datao) + u64::from(d.datal) > u64::from(c.len_bytes) {
                        return Err(NvmeError::Sequence("C2HData outside the read"));
                    }
                    if d.success && !d.last_pdu {
                        return Err(NvmeError::Sequence("C2HData SUCCESS without LAST_PDU"));
                    }
                    self.rx = Some((d.cccid, d.datao, d.success));
                }
                PduHeader::R2T(r) => {
                    let c = self.busy_cmd(r.cccid)?;
                    let end = u64::from(r.r2to) + u64::from(r.r2tl);
                    if !c.write || r.r2tl == 0 || end > u64::from(c.len_bytes) {
                        return Err(NvmeError::Sequence("R2T outside the write"));
                    }
                    if self.owed.len() == self.owed.capacity() {
                        return Err(NvmeError::Sequence("more R2Ts than commands"));
                    }
                    self.owed.push_back(Owed {
                        cid: r.cccid,
                        ttag: r.ttag,
                        at: r.r2to,
                        end: end as u32,
                    });
                }
                PduHeader::C2HTermReq(t) => {
                    return Err(NvmeError::Closed(format!(" (termination request, FES {:#x})", t.fes.0)));
                }
                _ => return Err(NvmeError::Sequence("unexpected PDU type on an I/O queue")),
            },
            Event::Data { offset, bytes } => {
                let Some((cid, datao, _)) = self.rx else {
                    return Err(NvmeError::Sequence("data without a C2HData header"));
                };
                let c = self.cmds[cid as usize];
                if let Some(io) = self.parents[c.parent as usize].io.as_ref() {
                    copy_in(&io.iovs, c.offset_bytes + u64::from(datao) + u64::from(offset), bytes);
                }
            }
            Event::End { data_digest } => {
                if let Some((cid, _, success)) = self.rx.take() {
                    let c = self.cmds[cid as usize];
                    if data_digest.is_err() {
                        self.parents[c.parent as usize].failed = true;
                    }
                    if success {
                        self.finish(cid, true);
                    }
                }
            }
        }
        Ok(())
    }

    /// Command `cid` completed (`ok` or not): frees it and completes its parent if it was the last.
    fn finish(&mut self, cid: u16, ok: bool) {
        let c = self.cmds[cid as usize];
        self.cmds[cid as usize].busy = false;
        self.free_cmds.push(cid);
        self.owed.retain(|o| o.cid != cid);
        let p = c.parent;
        let parent = &mut self.parents[p as usize];
        parent.outstanding -= 1;
        parent.failed |= !ok;
        if parent.outstanding == 0 && parent.issued >= parent.total {
            let status = if parent.failed {
                IoStatus::Failed
            } else {
                IoStatus::Success
            };
            if let Some(io) = parent.io.take() {
                self.free_parents.push(p);
                IoRequest::complete(io, status);
            }
        }
    }

    /// The link dropped: every command on the wire is forgotten and its parent goes back to the
    /// queue to be issued again from its start.
    fn requeue_in_flight(&mut self) {
        for cid in 0..self.cmds.len() {
            if self.cmds[cid].busy {
                self.cmds[cid].busy = false;
                self.free_cmds.push(cid as u16);
            }
        }
        self.owed.clear();
        self.rx = None;
        self.queue.clear();
        for (i, p) in self.parents.iter_mut().enumerate() {
            if p.io.is_some() {
                p.issued = 0;
                p.outstanding = 0;
                p.failed = false;
                self.queue.push_back(i as u16);
            }
        }
    }

    /// Fails every parent that has no command on the wire and waits in the queue.
    fn fail_queued(&mut self) -> bool {
        let mut did = false;
        let mut keep = self.queue.len();
        while keep > 0 {
            keep -= 1;
            let Some(p) = self.queue.pop_front() else { break };
            let parent = &mut self.parents[p as usize];
            if parent.outstanding == 0 {
                if let Some(io) = parent.io.take() {
                    self.free_parents.push(p);
                    IoRequest::complete(io, IoStatus::Failed);
                    did = true;
                }
            } else {
                // Partly issued: stop issuing, complete failed when the rest is back.
                parent.total = parent.issued;
                parent.failed = true;
            }
        }
        did
    }

    /// Fails every parent (the link is down, nothing is on the wire).
    fn fail_all(&mut self) -> bool {
        self.requeue_in_flight();
        self.queue.clear();
        let mut did = false;
        for (i, p) in self.parents.iter_mut().enumerate() {
            if let Some(io) = p.io.take() {
                self.free_parents.push(i as u16);
                IoRequest::complete(io, IoStatus::Failed);
                did = true;
            }
        }
        did
    }
}

impl crate::bdev::NsQueue for QpairCell {
    #[inline]
    fn submit(&self, nsid: u32, block_size: u32, io: IoBox) -> Submit {
        QpairCell::submit(self, nsid, block_size, io)
    }
}

#[cfg(test)]
mod tests {
    use keel_nvme_proto::cqe::Cqe;
    use keel_nvme_proto::tcp::{C2HData, CapsuleResp, Limits, PduParser, Role, SessionParams, TermReq, R2T};
    use proptest::prelude::*;

    use super::*;

    /// Slots with commands 0..4 out (0, 1 reads of 8 KiB, 2, 3 writes of 64 KiB by R2T), each
    /// with a parent of its own and no request attached (nothing completes upward).
    fn slots() -> Slots {
        let depth = 8;
        let mut s = Slots {
            parents: (0..depth)
                .map(|_| Parent {
                    io: None,
                    nsid: 1,
                    block_size: 512,
                    issued: 1,
                    total: 1,
                    outstanding: 0,
                    failed: false,
                })
                .collect(),
            free_parents: Vec::new(),
            cmds: vec![Cmd::default(); depth].into_boxed_slice(),
            free_cmds: (4..depth as u16).rev().collect(),
            queue: VecDeque::with_capacity(depth),
            owed: VecDeque::with_capacity(depth),
            rx: None,
            in_capsule_bytes: 8192,
            max_xfer_bytes: 131072,
        };
        for cid in 0..4u16 {
            s.cmds[cid as usize] = Cmd {
                busy: true,
                parent: cid,
                offset_bytes: 0,
                len_bytes: if cid < 2 { 8192 } else { 65536 },
                read: cid < 2,
                write: cid >= 2,
            };
            s.parents[cid as usize].outstanding = 1;
        }
        s
    }

    /// Feeds `bytes` through a host parser into `s` until the stream or the slots refuse it.
    fn feed(s: &mut Slots, bytes: &[u8], params: SessionParams) -> Result<(), NvmeError> {
        let mut p = PduParser::established(Role::Host, Limits::NONE, params);
        let mut pos = 0;
        loop {
            let (used, ev) = p.feed(&bytes[pos..])?;
            pos += used;
            match ev {
                Some(ev) => s.on_event(ev)?,
                None => return Ok(()),
            }
        }
    }

    fn pdu(h: PduHeader, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 512 + data.len()];
        let n = h.encode_pdu(data, &SessionParams::INITIAL, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn resp(cid: u16) -> PduHeader {
        PduHeader::CapsuleResp(CapsuleResp {
            cqe: Cqe { cid, ..Cqe::default() },
        })
    }

    #[test]
    fn well_formed_traffic_is_accepted() {
        let mut s = slots();
        let mut b = pdu(
            PduHeader::C2HData(C2HData {
                cccid: 0,
                datao: 0,
                datal: 8192,
                last_pdu: true,
                success: false,
            }),
            &[7u8; 8192],
        );
        b.extend(pdu(resp(0), &[]));
        b.extend(pdu(
            PduHeader::R2T(R2T {
                cccid: 2,
                ttag: 5,
                r2to: 0,
                r2tl: 65536,
            }),
            &[],
        ));
        feed(&mut s, &b, SessionParams::INITIAL).unwrap();
        assert!(!s.cmds[0].busy);
        assert_eq!(s.owed.len(), 1);
        // The completion of a command drops what it was still owed.
        feed(&mut s, &pdu(resp(2), &[]), SessionParams::INITIAL).unwrap();
        assert!(s.owed.is_empty());
    }

    #[test]
    fn hostile_pdus_are_refused_not_panicked_on() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("completion of a free CID", pdu(resp(6), &[])),
            ("completion of an out-of-range CID", pdu(resp(4000), &[])),
            (
                "C2HData for a write",
                pdu(
                    PduHeader::C2HData(C2HData {
                        cccid: 2,
                        datao: 0,
                        datal: 4,
                        last_pdu: true,
                        success: false,
                    }),
                    &[1, 2, 3, 4],
                ),
            ),
            (
                "C2HData past the read",
                pdu(
                    PduHeader::C2HData(C2HData {
                        cccid: 0,
                        datao: 8190,
                        datal: 4,
                        last_pdu: true,
                        success: false,
                    }),
                    &[1, 2, 3, 4],
                ),
            ),
            (
                "R2T for a read",
                pdu(
                    PduHeader::R2T(R2T {
                        cccid: 1,
                        ttag: 1,
                        r2to: 0,
                        r2tl: 512,
                    }),
                    &[],
                ),
            ),
            (
                "R2T past the write",
                pdu(
                    PduHeader::R2T(R2T {
                        cccid: 3,
                        ttag: 1,
                        r2to: 65000,
                        r2tl: 4096,
                    }),
                    &[],
                ),
            ),
            (
                "termination request",
                pdu(
                    PduHeader::C2HTermReq(TermReq {
                        fes: keel_nvme_proto::tcp::Fes(1),
                        fei: 0,
                    }),
                    &[0u8; 8],
                ),
            ),
            ("unknown PDU type", vec![0x55, 0, 8, 0, 8, 0, 0, 0]),
            ("PLEN below HLEN", vec![0x05, 0, 24, 0, 8, 0, 0, 0]),
        ];
        for (what, bytes) in cases {
            let mut s = slots();
            assert!(feed(&mut s, &bytes, SessionParams::INITIAL).is_err(), "{what} accepted");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Any byte stream, with or without digests: refused or accepted, never a panic.
        #[test]
        fn arbitrary_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), hd in any::<bool>(), dd in any::<bool>()) {
            let mut s = slots();
            let params = SessionParams { header_digest: hd, data_digest: dd, ..SessionParams::INITIAL };
            let _ = feed(&mut s, &bytes, params);
        }

        /// Well-formed headers with arbitrary field values: refused or accepted, never a panic.
        #[test]
        fn arbitrary_fields_never_panic(kind in 0u8..4, cid in any::<u16>(), a in any::<u32>(), b in 1u32..70000, last in any::<bool>(), ok in any::<bool>()) {
            let mut s = slots();
            let h = match kind {
                0 => resp(cid),
                1 => PduHeader::R2T(R2T { cccid: cid, ttag: 0, r2to: a % 70000, r2tl: b }),
                2 => PduHeader::C2HData(C2HData { cccid: cid, datao: a % 70000, datal: 16, last_pdu: last || ok, success: ok }),
                _ => PduHeader::C2HData(C2HData { cccid: cid % 4, datao: a % 9000, datal: 16, last_pdu: true, success: ok }),
            };
            let data = if kind >= 2 { vec![9u8; 16] } else { Vec::new() };
            let mut out = vec![0u8; 600];
            let params = SessionParams { c2h_success_allowed: true, ..SessionParams::INITIAL };
            if let Ok(n) = h.encode_pdu(&data, &params, &mut out) {
                let _ = feed(&mut s, &out[..n], params);
            }
        }
    }
}
