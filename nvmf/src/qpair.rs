//! One NVMe/TCP queue pair (one TCP connection) on its reactor.
//!
//! # Design
//!
//! A qpair is one value ([`Qpair`]) owned by one poller on the reactor the listener sent it to
//! (round robin); nothing else touches it. The socket is non-blocking; every turn the poller
//!
//! 1. drains the bdev completion queue (a read's data and completion are queued for sending, a
//!    FUA write goes out again as a flush, a Dataset Management command moves to its next
//!    range), then resubmits requests the bdev handed back (`Submit::Requeue`);
//! 2. on the admin queue, completes a held Asynchronous Event Request if a namespace changed,
//!    and enforces KATO (a host silent for longer ends the association: every qpair of the
//!    controller closes); every qpair closes when its controller's association ended;
//! 3. reads what the socket has (a bounded number of reads per turn, so a busy host cannot keep
//!    the reactor) and feeds it to the incremental [`PduParser`], which validates every header
//!    and digest. A CapsuleCmd takes a **slot** (one per command the queue may hold: the
//!    transport's queue depth, plus AER room on the admin queue). A PDU's data goes into the
//!    slot's pool buffer: what came in the same read as headers is copied from the receive
//!    buffer, and a remainder of 8 KiB or more is read straight into the pool buffer (one
//!    `readv` into [the rest of the data, the receive buffer for what follows]) and only run
//!    through the parser for its digest, never copied. A command is executed
//!    once its data is in (a write larger than the in-capsule size gets an R2T for its whole
//!    length — at most max_io_size, which is also the MAXH2CDATA announced — and runs when the
//!    H2CData PDUs covered it, in order);
//! 4. sends queued PDUs with one `writev`: per slot an R2T, or a C2HData header, the data
//!    straight from the buffer the bdev filled, the data digest and the CapsuleResp (omitted
//!    when the host disabled SQ flow control and the transport allows C2H SUCCESS). A PDU partly
//!    sent resumes at the next turn; a slot is free again when its last PDU left.
//!
//! Everything the data path needs (slots, request boxes, the send queue, the receive buffer) is
//! allocated when the connection is accepted; buffers come from the reactor's pool. After
//! Connect nothing is allocated per I/O. Admin commands (rare) may allocate their pages.
//!
//! **Errors.** A command that fails validation (unknown opcode, namespace, LBA range, transfer
//! over MDTS, SGL mismatch, anything before Connect) completes with the status the spec names.
//! A stream error (a malformed header, a digest mismatch in a header, H2CData without an R2T or
//! out of range, more commands than the queue holds) is fatal: the qpair sends a C2HTermReq with
//! the FES and the offending header, stops reading, lets its in-flight requests complete and
//! closes. A slow host only fills its own slots: the qpair stops having anything to read and
//! its sends wait for the socket, while other qpairs on the reactor go on.

use std::cell::Ref;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::Arc;

use arrayvec::ArrayVec;
use keel_bdev::{BufPool, Channel, CompletionQueue, DmaBuf, IoBox, IoOp, IoRequest, IoStatus, IoVec, Submit};
use keel_nvme_proto::cqe::{AsyncEvent, AsyncEventType, ConnectResponse, Cqe, InvalidParameter, Status, StatusCode};
use keel_nvme_proto::digest::Crc32c;
use keel_nvme_proto::log::LogPageId;
use keel_nvme_proto::props::Cc;
use keel_nvme_proto::sqe::{
    AdminCommand, Command, Connect, ConnectData, DataPointer, DsmRange, FabricsCommand, FeatureId, Fuse, NvmCommand,
    QueueCounts, QueueKind, SglDescriptor, SglSubtype, Sqe, CONNECT_DATA_LEN, DSM_RANGE_LEN,
};
use keel_nvme_proto::tcp::{
    C2HData, CapsuleResp, Event, Fes, H2CData, IcReq, IcResp, Limits, PduHeader, PduParser, Role, SessionParams,
    TermReq, ADMIN_IN_CAPSULE_BYTES, R2T,
};
use keel_nvme_proto::ProtoError;
use keel_reactor::{current, ticks, ticks_per_sec, PollStatus, PollerHandle};

use crate::admin;
use crate::config::TransportOpts;
use crate::ctrlr::Controller;
use crate::subsystem::Namespace;
use crate::target::{NvmfTarget, QpairShared};

/// The receive buffer.
const RX_CAP: usize = 64 << 10;
/// A PDU's remaining data is read straight into its command's buffer from this size on.
const DIRECT_MIN_BYTES: u32 = 8192;
/// Reads per turn.
const MAX_READS_PER_TURN: usize = 4;
/// iovecs per `writev`.
const MAX_IOV: usize = 96;
/// AERs held at once (Identify's AERL + 1).
const MAX_AERS: usize = 4;
/// Largest admin data transfer.
const MAX_ADMIN_DATA: u32 = 1 << 20;
/// How long a closing qpair keeps trying to send to a host that does not read.
const LINGER_SECS: u64 = 5;

/// Starts serving `stream` on the calling reactor. Called on the qpair's core (by message from
/// the accept poller).
pub(crate) fn spawn(target: Arc<NvmfTarget>, shared: Arc<QpairShared>, stream: TcpStream, opts: TransportOpts) {
    let local_ip = stream.local_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    let mut q = Qpair::new(target, shared, stream, opts, local_ip);
    let slot: Rc<RefCell<Option<PollerHandle>>> = Rc::new(RefCell::new(None));
    let s2 = slot.clone();
    let name = format!("nvmf_qpair_{}", q.shared.id);
    let handle = current().register_poller(name, move || match q.poll() {
        Turn::Busy => PollStatus::Busy,
        Turn::Idle => PollStatus::Idle,
        Turn::Finished => {
            drop(s2.borrow_mut().take());
            PollStatus::Busy
        }
    });
    *slot.borrow_mut() = Some(handle);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    Busy,
    Idle,
    Finished,
}

/// Where the qpair is in its life.
enum Phase {
    /// Waiting for ICReq.
    Handshake,
    /// ICResp sent; the first command must be Connect.
    AwaitConnect,
    /// The admin queue of a controller.
    Admin(Arc<Controller>),
    /// I/O queue `qid` of a controller.
    Io(Arc<Controller>, u16),
}

/// Why a qpair stopped reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    Eof,
    Socket,
    Fatal,
    Disconnect,
    Association,
    Requested,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Its capsule (and in-capsule data) is being received.
    Receiving,
    /// Its R2T is queued for sending.
    R2T,
    /// Its R2T went out; H2CData PDUs fill its buffer.
    AwaitH2C,
    /// At the bdev, retrying, or (an AER) held.
    Exec,
    /// Its PDUs are queued for sending.
    Sending,
}

/// What happens to a slot once its queued PDUs are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterSend {
    Release,
    AwaitH2C,
}

/// One command's everything, reused command after command.
struct Slot {
    state: SlotState,
    sqe: Sqe,
    io: Option<IoBox>,
    buf: Option<DmaBuf>,
    /// Data bytes of the command (to receive or to send).
    data_len: u32,
    /// H2C bytes received.
    got: u32,
    /// Answer with this once the command's data is in.
    err: Option<Status>,
    /// The namespace table index (nsid - 1) of an I/O command.
    ns_idx: usize,
    fua: bool,
    dsm_next: u16,
    dsm_count: u16,
    /// Header of the PDU carrying data or the R2T.
    hdr: [u8; 32],
    hdr_len: u8,
    send_data: bool,
    /// Data digest and/or CapsuleResp.
    tail: [u8; 40],
    tail_len: u8,
    after_send: AfterSend,
}

impl Slot {
    fn new(tag: u16) -> Slot {
        let mut io = IoRequest::new_boxed();
        io.tag = u64::from(tag);
        Slot {
            state: SlotState::Free,
            sqe: Sqe::default(),
            io: Some(io),
            buf: None,
            data_len: 0,
            got: 0,
            err: None,
            ns_idx: 0,
            fua: false,
            dsm_next: 0,
            dsm_count: 0,
            hdr: [0; 32],
            hdr_len: 0,
            send_data: false,
            tail: [0; 40],
            tail_len: 0,
            after_send: AfterSend::Release,
        }
    }

    fn wire_len(&self) -> usize {
        self.hdr_len as usize + if self.send_data { self.data_len as usize } else { 0 } + self.tail_len as usize
    }
}

/// The PDU whose data is being received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Incoming {
    None,
    IcReq,
    Capsule(u16),
    H2C { slot: u16, datao: u32, len: u32 },
    Skip,
}

/// A namespace as an I/O qpair uses it: the namespace and this core's channel.
struct NsChan {
    ns: Arc<Namespace>,
    ch: Channel,
}

struct Qpair {
    target: Arc<NvmfTarget>,
    shared: Arc<QpairShared>,
    stream: TcpStream,
    opts: TransportOpts,
    local_ip: String,
    parser: PduParser,
    params: SessionParams,
    phase: Phase,
    slots: Vec<Slot>,
    free: Vec<u16>,
    incoming: Incoming,
    /// Data bytes of the PDU being received, and how many of them are still to come.
    data_total: u32,
    data_left: u32,
    rx: Box<[u8]>,
    sendq: VecDeque<u16>,
    sent: usize,
    /// ICResp or C2HTermReq bytes (at most one of each), sent before anything else.
    ctl: [u8; 288],
    ctl_len: usize,
    ctl_sent: usize,
    cq: CompletionQueue,
    ns: Vec<Option<NsChan>>,
    ns_gen: u64,
    /// Channels of removed namespaces, dropped once nothing is at the bdev.
    retired: Vec<NsChan>,
    at_bdev: usize,
    retry: VecDeque<u16>,
    aers: ArrayVec<u16, MAX_AERS>,
    sq_head: u16,
    sqsize_0based: u16,
    sqflow_off: bool,
    closing: Option<Close>,
    close_deadline: u64,
    broken: bool,
    kato_ticks: u64,
}

fn ms_to_ticks(ms: u64) -> u64 {
    (ms as u128 * ticks_per_sec() as u128 / 1000) as u64
}

impl Qpair {
    fn new(
        target: Arc<NvmfTarget>,
        shared: Arc<QpairShared>,
        stream: TcpStream,
        opts: TransportOpts,
        local_ip: String,
    ) -> Qpair {
        let n = usize::from(opts.max_queue_depth.max(opts.max_aq_depth)) + MAX_AERS;
        Qpair {
            target,
            shared,
            stream,
            opts,
            local_ip,
            parser: PduParser::new(
                Role::Controller,
                Limits {
                    max_capsule_data_bytes: ADMIN_IN_CAPSULE_BYTES,
                    max_data_pdu_bytes: opts.max_io_size,
                },
            ),
            params: SessionParams::INITIAL,
            phase: Phase::Handshake,
            slots: (0..n).map(|i| Slot::new(i as u16)).collect(),
            free: (0..n as u16).rev().collect(),
            incoming: Incoming::None,
            data_total: 0,
            data_left: 0,
            rx: vec![0u8; RX_CAP].into_boxed_slice(),
            sendq: VecDeque::with_capacity(n),
            sent: 0,
            ctl: [0; 288],
            ctl_len: 0,
            ctl_sent: 0,
            cq: CompletionQueue::with_capacity(n),
            ns: Vec::new(),
            ns_gen: u64::MAX,
            retired: Vec::new(),
            at_bdev: 0,
            retry: VecDeque::with_capacity(n),
            aers: ArrayVec::new(),
            sq_head: 0,
            sqsize_0based: 0,
            sqflow_off: false,
            closing: None,
            close_deadline: u64::MAX,
            broken: false,
            kato_ticks: 0,
        }
    }

    fn poll(&mut self) -> Turn {
        let mut busy = false;
        let cq = self.cq.clone();
        busy |= cq.drain_now(|io| self.completed(io)) > 0;
        busy |= self.retry_submits();
        if self.closing.is_none() && (self.shared.stop_requested() || self.target.cores().is_stopping()) {
            self.close(Close::Requested);
        }
        match &self.phase {
            Phase::Admin(ctrl) => {
                let ctrl = ctrl.clone();
                if self.closing.is_none() {
                    if ctrl.is_failed() {
                        self.close(Close::Association);
                    } else {
                        busy |= self.admin_turn(&ctrl);
                    }
                }
            }
            Phase::Io(ctrl, _) if self.closing.is_none() && ctrl.is_failed() => self.close(Close::Association),
            _ => {}
        }
        if self.closing.is_none() {
            busy |= self.receive();
        }
        busy |= self.send();
        if self.at_bdev == 0 && !self.retired.is_empty() {
            self.retired.clear();
        }
        if self.closing.is_some() {
            let flushed = self.broken || (self.sendq.is_empty() && self.ctl_sent == self.ctl_len);
            if self.at_bdev == 0 && (flushed || ticks() > self.close_deadline) {
                return Turn::Finished;
            }
        }
        if busy {
            Turn::Busy
        } else {
            Turn::Idle
        }
    }

    /// KATO and asynchronous events, on the admin queue.
    fn admin_turn(&mut self, ctrl: &Arc<Controller>) -> bool {
        let kato = ctrl.kato_ms();
        if kato > 0 {
            if self.kato_ticks == 0 {
                self.kato_ticks = ms_to_ticks(u64::from(kato));
            }
            if ticks().saturating_sub(ctrl.last_keep_alive()) > self.kato_ticks {
                tracing::info!(
                    cntlid = ctrl.cntlid,
                    kato_ms = kato,
                    "nvmf: keep alive timeout; ending the association"
                );
                ctrl.fail();
                self.close(Close::Association);
                return true;
            }
        }
        if !self.aers.is_empty() && ctrl.take_aen() {
            let idx = self.aers.pop().expect("checked");
            let ev = AsyncEvent {
                event_type: AsyncEventType::NOTICE,
                info: 0,
                log_page: LogPageId::CHANGED_NS_LIST,
            };
            self.complete(idx, Status::SUCCESS, ev.to_dw0(), 0);
            return true;
        }
        false
    }

    fn close(&mut self, why: Close) {
        if self.closing.is_some() {
            return;
        }
        tracing::debug!(qpair = self.shared.id, reason = ?why, "nvmf: qpair stops reading");
        self.closing = Some(why);
        self.close_deadline = ticks().saturating_add(LINGER_SECS * ticks_per_sec());
        if matches!(why, Close::Eof | Close::Socket) {
            self.broken = true;
        }
        // Slots waiting for data or held (AERs) will get none: free them.
        for i in 0..self.slots.len() {
            if matches!(self.slots[i].state, SlotState::Receiving | SlotState::AwaitH2C) {
                self.release(i as u16);
            }
        }
        while let Some(i) = self.aers.pop() {
            self.release(i);
        }
    }

    /// A fatal stream error: C2HTermReq with `fes`/`fei` and the offending header, then close.
    fn fatal(&mut self, fes: Fes, fei: u32) {
        if self.closing.is_some() {
            return;
        }
        tracing::info!(qpair = self.shared.id, peer = %self.shared.peer, fes = fes.0, fei, "nvmf: fatal transport error; terminating the connection");
        if self.sent > 0 {
            // A PDU is half sent: a termination request cannot be put in the stream now.
            return self.close(Close::Fatal);
        }
        let hdr_bytes = self.parser.header_bytes();
        let mut data = [0u8; 128];
        let n = hdr_bytes.len().min(128);
        data[..n].copy_from_slice(&hdr_bytes[..n]);
        let pdu = PduHeader::C2HTermReq(TermReq { fes, fei });
        match pdu.encode_pdu(&data[..n], &SessionParams::INITIAL, &mut self.ctl[self.ctl_len..]) {
            Ok(len) => self.ctl_len += len,
            Err(e) => tracing::warn!(error = %e, "nvmf: cannot encode a termination request"),
        }
        self.close(Close::Fatal);
    }

    fn proto_fatal(&mut self, e: ProtoError) {
        match e.fatal_error() {
            Some((fes, fei)) => self.fatal(fes, fei),
            None => self.close(Close::Fatal),
        }
    }

    // ---- receive ----------------------------------------------------------------------------

    fn receive(&mut self) -> bool {
        let mut busy = false;
        for _ in 0..MAX_READS_PER_TURN {
            if self.closing.is_none() {
                let (n, drained) = match self.direct_dst() {
                    Some((idx, at)) => match self.read_direct(idx, at) {
                        Some(r) => r,
                        None => break,
                    },
                    None => match self.stream.read(&mut self.rx) {
                        Ok(0) => {
                            self.close(Close::Eof);
                            break;
                        }
                        Ok(n) => (n, n < self.rx.len()),
                        Err(e) if would_block(&e) => break,
                        Err(_) => {
                            self.close(Close::Socket);
                            break;
                        }
                    },
                };
                busy = true;
                self.parse_rx(n);
                if drained {
                    break;
                }
            }
        }
        busy
    }

    /// Feeds `rx[..n]` to the parser and handles its events.
    fn parse_rx(&mut self, n: usize) {
        let rx = std::mem::take(&mut self.rx);
        let mut pos = 0;
        while self.closing.is_none() {
            match self.parser.feed(&rx[pos..n]) {
                Ok((used, ev)) => {
                    pos += used;
                    match ev {
                        Some(ev) => self.on_event(ev),
                        None => break,
                    }
                }
                Err(e) => {
                    self.proto_fatal(e);
                    break;
                }
            }
        }
        self.rx = rx;
    }

    /// Where the rest of the current PDU's data goes when it can be read straight into its
    /// command's buffer: (slot, byte offset in the buffer). Only for a large enough remainder
    /// (below that one batched read is cheaper than two system calls).
    fn direct_dst(&self) -> Option<(u16, usize)> {
        if self.data_left < DIRECT_MIN_BYTES {
            return None;
        }
        let done = (self.data_total - self.data_left) as usize;
        match self.incoming {
            Incoming::Capsule(idx) => {
                let s = &self.slots[idx as usize];
                (s.buf.is_some() && s.err.is_none()).then_some((idx, done))
            }
            Incoming::H2C { slot, datao, .. } => Some((slot, datao as usize + done)),
            _ => None,
        }
    }

    /// One `readv` into [the rest of the PDU's data in slot `idx`'s buffer at `at`, the
    /// receive buffer]; the data part goes through the parser (digest, state) without being
    /// copied. Returns the bytes that landed in the receive buffer and whether the socket was
    /// drained, or `None` when nothing was read (would block, EOF, error).
    fn read_direct(&mut self, idx: u16, at: usize) -> Option<(usize, bool)> {
        let left = self.data_left as usize;
        let r = {
            let buf = self.slots[idx as usize]
                .buf
                .as_ref()
                .expect("a direct destination has a buffer");
            let mut d = buf.bytes_mut();
            let mut iov = [
                IoSliceMut::new(&mut d[at..at + left]),
                IoSliceMut::new(&mut self.rx[..]),
            ];
            self.stream.read_vectored(&mut iov)
        };
        let n = match r {
            Ok(0) => {
                self.close(Close::Eof);
                return None;
            }
            Ok(n) => n,
            Err(e) if would_block(&e) => return None,
            Err(_) => {
                self.close(Close::Socket);
                return None;
            }
        };
        let data = n.min(left);
        let fed = {
            let buf = self.slots[idx as usize]
                .buf
                .as_ref()
                .expect("a direct destination has a buffer");
            let b = buf.bytes();
            match self.parser.feed(&b[at..at + data]) {
                Ok((used, Some(Event::Data { bytes, .. }))) if used == data && bytes.len() == data => Ok(()),
                Ok(_) => Err(None),
                Err(e) => Err(Some(e)),
            }
        };
        match fed {
            Ok(()) => self.data_left -= data as u32,
            Err(Some(e)) => {
                self.proto_fatal(e);
                return None;
            }
            Err(None) => {
                self.close(Close::Fatal);
                return None;
            }
        }
        Some((n - data, n < left + self.rx.len()))
    }

    fn on_event(&mut self, ev: Event<'_>) {
        match ev {
            Event::Header { pdu, data_len } => {
                self.data_total = data_len;
                self.data_left = data_len;
                self.on_header(pdu, data_len)
            }
            Event::Data { offset, bytes } => {
                self.data_left -= bytes.len() as u32;
                self.on_data(offset, bytes)
            }
            Event::End { data_digest } => self.on_end(data_digest),
        }
    }

    fn on_header(&mut self, pdu: PduHeader, data_len: u32) {
        match pdu {
            PduHeader::IcReq(r) => self.icreq(&r),
            PduHeader::CapsuleCmd(c) => self.capsule(c.sqe, data_len),
            PduHeader::H2CData(h) => self.h2c(&h, data_len),
            PduHeader::H2CTermReq(t) => {
                tracing::info!(
                    qpair = self.shared.id,
                    fes = t.fes.0,
                    "nvmf: the host terminated the connection"
                );
                self.incoming = Incoming::Skip;
                self.close(Close::Eof);
            }
            _ => self.fatal(Fes::INVALID_HEADER_FIELD, 0),
        }
    }

    fn on_data(&mut self, offset: u32, bytes: &[u8]) {
        match self.incoming {
            Incoming::Capsule(idx) => {
                let s = &self.slots[idx as usize];
                if let Some(buf) = &s.buf {
                    let at = offset as usize;
                    buf.bytes_mut()[at..at + bytes.len()].copy_from_slice(bytes);
                }
            }
            Incoming::H2C { slot, datao, .. } => {
                let s = &self.slots[slot as usize];
                if let Some(buf) = &s.buf {
                    let at = (datao + offset) as usize;
                    buf.bytes_mut()[at..at + bytes.len()].copy_from_slice(bytes);
                }
            }
            _ => {}
        }
    }

    fn on_end(&mut self, data_digest: Result<(), ProtoError>) {
        let inc = std::mem::replace(&mut self.incoming, Incoming::None);
        match inc {
            Incoming::IcReq => self.parser.set_session(self.params),
            Incoming::Capsule(idx) => {
                if data_digest.is_err() {
                    self.slots[idx as usize].err = Some(StatusCode::DATA_TRANSFER_ERROR.retryable());
                }
                match self.slots[idx as usize].err {
                    Some(st) => self.complete(idx, st, 0, 0),
                    None => self.execute(idx),
                }
            }
            Incoming::H2C { slot, len, .. } => {
                let s = &mut self.slots[slot as usize];
                s.got += len;
                if data_digest.is_err() {
                    s.err = Some(StatusCode::DATA_TRANSFER_ERROR.retryable());
                }
                if s.got == s.data_len {
                    s.state = SlotState::Exec;
                    match s.err {
                        Some(st) => self.complete(slot, st, 0, 0),
                        None => self.data_in(slot),
                    }
                }
            }
            Incoming::None | Incoming::Skip => {}
        }
    }

    fn icreq(&mut self, r: &IcReq) {
        if r.pfv != 0 {
            return self.fatal(Fes::UNSUPPORTED_PARAMETER, 8);
        }
        self.params = SessionParams {
            header_digest: r.header_digest,
            data_digest: r.data_digest,
            hpda: r.hpda,
            cpda: 0,
            c2h_success_allowed: false,
        };
        let resp = PduHeader::IcResp(IcResp {
            pfv: 0,
            cpda: 0,
            header_digest: r.header_digest,
            data_digest: r.data_digest,
            maxh2cdata: self.opts.max_io_size,
        });
        match resp.encode_pdu(&[], &SessionParams::INITIAL, &mut self.ctl[self.ctl_len..]) {
            Ok(n) => self.ctl_len += n,
            Err(_) => return self.fatal(Fes::INVALID_HEADER_FIELD, 0),
        }
        self.incoming = Incoming::IcReq;
        self.phase = Phase::AwaitConnect;
    }

    fn capsule(&mut self, sqe: Sqe, data_len: u32) {
        let Some(idx) = self.free.pop() else {
            tracing::info!(
                qpair = self.shared.id,
                "nvmf: the host sent more commands than its queue holds"
            );
            return self.fatal(Fes::DATA_LIMIT_EXCEEDED, 0);
        };
        self.sq_head = if self.sqsize_0based == 0 {
            self.sq_head.wrapping_add(1)
        } else {
            (self.sq_head + 1) % (self.sqsize_0based + 1)
        };
        let s = &mut self.slots[idx as usize];
        s.state = SlotState::Receiving;
        s.sqe = sqe;
        s.data_len = 0;
        s.got = 0;
        s.err = None;
        s.fua = false;
        s.send_data = false;
        s.hdr_len = 0;
        s.tail_len = 0;
        s.after_send = AfterSend::Release;
        if data_len > 0 {
            match sqe.data_pointer() {
                Ok(DataPointer::Sgl(SglDescriptor::DataBlock {
                    address: 0,
                    length,
                    subtype: SglSubtype::OFFSET,
                })) if length == data_len => {
                    s.buf = Some(BufPool::with(|p| p.get(data_len as usize)));
                    s.data_len = data_len;
                    s.got = data_len;
                }
                Ok(DataPointer::Sgl(SglDescriptor::DataBlock {
                    subtype: SglSubtype::OFFSET,
                    address,
                    ..
                })) if address != 0 => s.err = Some(StatusCode::SGL_OFFSET_INVALID.dnr()),
                _ => s.err = Some(StatusCode::DATA_SGL_LENGTH_INVALID.dnr()),
            }
        }
        self.incoming = Incoming::Capsule(idx);
    }

    fn h2c(&mut self, h: &H2CData, data_len: u32) {
        let idx = h.ttag;
        let ok_slot = self
            .slots
            .get(idx as usize)
            .is_some_and(|s| s.state == SlotState::AwaitH2C && s.sqe.cid == h.cccid);
        if !ok_slot {
            return self.fatal(Fes::INVALID_HEADER_FIELD, 10);
        }
        let s = &self.slots[idx as usize];
        if h.datao != s.got || u64::from(h.datao) + u64::from(data_len) > u64::from(s.data_len) || data_len == 0 {
            return self.fatal(Fes::DATA_OUT_OF_RANGE, 0);
        }
        self.incoming = Incoming::H2C {
            slot: idx,
            datao: h.datao,
            len: data_len,
        };
    }

    // ---- command execution ----------------------------------------------------------------

    fn execute(&mut self, idx: u16) {
        let sqe = self.slots[idx as usize].sqe;
        self.slots[idx as usize].state = SlotState::Exec;
        if !matches!(sqe.fuse(), Ok(Fuse::Normal)) {
            return self.complete(idx, StatusCode::INVALID_FIELD.dnr(), 0, 0);
        }
        let kind = match self.phase {
            Phase::Io(..) => QueueKind::Io,
            _ => QueueKind::Admin,
        };
        let cmd = match Command::decode(&sqe, kind) {
            Ok(c) => c,
            Err(e) => return self.complete(idx, e.status(), 0, 0),
        };
        match (&self.phase, cmd) {
            (Phase::AwaitConnect, Command::Fabrics(FabricsCommand::Connect(c))) => self.connect(idx, &c),
            (Phase::AwaitConnect, _) | (Phase::Handshake, _) => {
                self.complete(idx, StatusCode::COMMAND_SEQUENCE_ERROR.dnr(), 0, 0)
            }
            (_, Command::Fabrics(FabricsCommand::Connect(_))) => {
                self.complete(idx, StatusCode::COMMAND_SEQUENCE_ERROR.dnr(), 0, 0)
            }
            (_, Command::Fabrics(FabricsCommand::Disconnect { .. })) => {
                self.complete(idx, Status::SUCCESS, 0, 0);
                self.close(Close::Disconnect);
            }
            (Phase::Admin(ctrl), Command::Fabrics(f)) => {
                let ctrl = ctrl.clone();
                self.property(idx, &ctrl, f)
            }
            (Phase::Io(..), Command::Fabrics(_)) => self.complete(idx, StatusCode::INVALID_FIELD.dnr(), 0, 0),
            (Phase::Admin(ctrl), Command::Admin(a)) => {
                let ctrl = ctrl.clone();
                self.admin(idx, &ctrl, a)
            }
            (Phase::Io(..), Command::Nvm(n)) => self.nvm(idx, n),
            _ => self.complete(idx, StatusCode::INVALID_OPCODE.dnr(), 0, 0),
        }
    }

    fn connect(&mut self, idx: u16, c: &Connect) {
        let invalid = |in_data: bool, offset: u16| {
            (
                StatusCode::CONNECT_INVALID_PARAMETERS.dnr(),
                InvalidParameter { in_data, offset }.to_dw0(),
            )
        };
        let r = self.try_connect(idx, c);
        let (status, dw0) = match r {
            Ok(dw0) => (Status::SUCCESS, dw0),
            Err(ConnectErr::Param(in_data, off)) => invalid(in_data, off),
            Err(ConnectErr::Status(s, dw0)) => (s, dw0),
        };
        if !status.is_success() {
            tracing::info!(qpair = self.shared.id, peer = %self.shared.peer, %status, dw0, "nvmf: Connect refused");
        }
        self.complete(idx, status, dw0, 0);
    }

    fn try_connect(&mut self, idx: u16, c: &Connect) -> Result<u32, ConnectErr> {
        if c.recfmt != 0 {
            return Err(ConnectErr::Status(StatusCode::CONNECT_INCOMPATIBLE_FORMAT.dnr(), 0));
        }
        let data = {
            let s = &self.slots[idx as usize];
            let Some(buf) = s.buf.as_ref().filter(|_| s.data_len as usize >= CONNECT_DATA_LEN) else {
                return Err(ConnectErr::Status(StatusCode::DATA_SGL_LENGTH_INVALID.dnr(), 0));
            };
            let b = buf.bytes();
            ConnectData::decode(&b[..CONNECT_DATA_LEN]).map_err(|e| match e {
                ProtoError::Nqn { .. } | ProtoError::Field { .. } => ConnectErr::Param(true, 256),
                _ => ConnectErr::Param(true, 0),
            })?
        };
        let subnqn = data.subnqn.as_str().ok_or(ConnectErr::Param(true, 256))?.to_string();
        let hostnqn = data.hostnqn.as_str().ok_or(ConnectErr::Param(true, 512))?.to_string();
        let s = self.target.subsystem(&subnqn).ok_or(ConnectErr::Param(true, 256))?;
        if !s.listens_on(&self.shared.listen) {
            return Err(ConnectErr::Param(true, 256));
        }
        if !s.host_allowed(&hostnqn) {
            return Err(ConnectErr::Status(
                StatusCode::CONNECT_INVALID_HOST.dnr(),
                InvalidParameter {
                    in_data: true,
                    offset: 512,
                }
                .to_dw0(),
            ));
        }
        let (ctrl, qid) = if c.qid == 0 {
            if data.cntlid != ConnectData::DYNAMIC_CNTLID {
                return Err(ConnectErr::Param(true, 16));
            }
            if c.sqsize_0based == 0 || c.sqsize_0based >= self.opts.max_aq_depth {
                return Err(ConnectErr::Param(false, 44));
            }
            let (listen, local_ip) = (self.shared.listen.clone(), self.local_ip.clone());
            let max_io = if s.discovery {
                0
            } else {
                self.opts.max_io_qpairs_per_ctrlr
            };
            let now = ticks();
            let ctrl = self
                .target
                .create_ctrlr(|id| {
                    Controller::new(
                        id,
                        s.clone(),
                        hostnqn.clone(),
                        data.hostid,
                        listen,
                        local_ip,
                        max_io,
                        c.kato_ms,
                        now,
                    )
                })
                .ok_or(ConnectErr::Status(StatusCode::CONNECT_CONTROLLER_BUSY.dnr(), 0))?;
            self.phase = Phase::Admin(ctrl.clone());
            (ctrl, 0)
        } else {
            if s.discovery {
                return Err(ConnectErr::Param(false, 42));
            }
            if c.sqsize_0based == 0 || c.sqsize_0based >= self.opts.max_queue_depth {
                return Err(ConnectErr::Param(false, 44));
            }
            let ctrl = self
                .target
                .find_ctrlr(&subnqn, data.cntlid, &hostnqn)
                .ok_or(ConnectErr::Param(true, 16))?;
            if !ctrl.add_io_qid(c.qid) {
                return Err(ConnectErr::Param(false, 42));
            }
            self.phase = Phase::Io(ctrl.clone(), c.qid);
            self.parser.set_limits(Limits {
                max_capsule_data_bytes: self.opts.in_capsule_data_size,
                max_data_pdu_bytes: self.opts.max_io_size,
            });
            self.refresh_ns(&ctrl);
            (ctrl, c.qid)
        };
        self.sqsize_0based = c.sqsize_0based;
        self.sqflow_off = c.sq_flow_control_disabled();
        self.sq_head = 1;
        *self.shared.connected.lock().unwrap_or_else(|e| e.into_inner()) = Some((ctrl.cntlid, qid, subnqn.clone()));
        tracing::info!(
            qpair = self.shared.id,
            subnqn,
            hostnqn,
            cntlid = ctrl.cntlid,
            qid,
            core = self.shared.core.0,
            "nvmf: connected"
        );
        Ok(ConnectResponse {
            cntlid: ctrl.cntlid,
            authentication_required: false,
            secure_channel_required: false,
        }
        .to_dw0())
    }

    fn property(&mut self, idx: u16, ctrl: &Arc<Controller>, f: FabricsCommand) {
        match f {
            FabricsCommand::PropertyGet { offset, .. } => match admin::property_get(ctrl, &self.opts, offset) {
                Ok(v) => self.complete(idx, Status::SUCCESS, v as u32, (v >> 32) as u32),
                Err(st) => self.complete(idx, st, 0, 0),
            },
            FabricsCommand::PropertySet { offset, value, .. } => {
                if offset == 0x14 {
                    ctrl.write_cc(Cc::from_bits(value as u32));
                    self.complete(idx, Status::SUCCESS, 0, 0)
                } else {
                    self.complete(idx, StatusCode::INVALID_FIELD.dnr(), 0, 0)
                }
            }
            _ => self.complete(idx, StatusCode::INVALID_OPCODE.dnr(), 0, 0),
        }
    }

    /// The C2H transfer length of a command: its transport SGL's length.
    fn c2h_len(&self, idx: u16) -> Result<u32, Status> {
        match self.slots[idx as usize].sqe.data_pointer() {
            Ok(DataPointer::Sgl(SglDescriptor::TransportDataBlock { length, .. })) => Ok(length),
            _ => Err(StatusCode::SGL_DESCRIPTOR_TYPE_INVALID.dnr()),
        }
    }

    /// Answers an admin command whose data `fill` produces into a zeroed buffer of the
    /// command's transfer length.
    fn admin_data(&mut self, idx: u16, fill: impl FnOnce(&mut [u8]) -> Result<(), Status>) {
        let len = match self.c2h_len(idx) {
            Ok(0) => return self.complete(idx, StatusCode::DATA_SGL_LENGTH_INVALID.dnr(), 0, 0),
            Ok(l) if l > MAX_ADMIN_DATA => return self.complete(idx, StatusCode::DATA_SGL_LENGTH_INVALID.dnr(), 0, 0),
            Ok(l) => l,
            Err(st) => return self.complete(idx, st, 0, 0),
        };
        let buf = BufPool::with(|p| p.get(len as usize));
        let r = {
            let mut b = buf.bytes_mut();
            b[..len as usize].fill(0);
            fill(&mut b[..len as usize])
        };
        let s = &mut self.slots[idx as usize];
        if let Some(old) = s.buf.replace(buf) {
            BufPool::with(|p| p.put(old));
        }
        s.data_len = len;
        match r {
            Ok(()) => self.complete_with_data(idx),
            Err(st) => self.complete(idx, st, 0, 0),
        }
    }

    fn admin(&mut self, idx: u16, ctrl: &Arc<Controller>, a: AdminCommand) {
        let opts = self.opts;
        match a {
            AdminCommand::Identify(id) => self.admin_data(idx, |b| admin::identify(ctrl, &opts, &id, b)),
            AdminCommand::GetLogPage(g) => {
                if u64::from(self.c2h_len(idx).unwrap_or(0)) != g.len_bytes() {
                    return self.complete(idx, StatusCode::DATA_SGL_LENGTH_INVALID.dnr(), 0, 0);
                }
                let target = self.target.clone();
                self.admin_data(idx, |b| admin::log_page(&target, ctrl, &opts, &g, b))
            }
            AdminCommand::SetFeatures(f) => {
                let r = match f.fid {
                    FeatureId::NUMBER_OF_QUEUES if !ctrl.subsys.discovery => Ok(self.queue_counts(ctrl)),
                    FeatureId::ASYNC_EVENT_CONFIG => {
                        ctrl.set_aer_config(f.value);
                        Ok(0)
                    }
                    FeatureId::KEEP_ALIVE_TIMER => {
                        ctrl.set_kato_ms(f.value);
                        self.kato_ticks = 0;
                        ctrl.keep_alive(ticks());
                        Ok(0)
                    }
                    FeatureId::VOLATILE_WRITE_CACHE if !ctrl.subsys.discovery => {
                        ctrl.set_vwc(f.value & 1 != 0);
                        Ok(0)
                    }
                    _ => Err(StatusCode::INVALID_FIELD.dnr()),
                };
                let r = if f.save {
                    Err(StatusCode::FEATURE_NOT_SAVEABLE.dnr())
                } else {
                    r
                };
                match r {
                    Ok(dw0) => self.complete(idx, Status::SUCCESS, dw0, 0),
                    Err(st) => self.complete(idx, st, 0, 0),
                }
            }
            AdminCommand::GetFeatures(g) => {
                let r = match g.fid {
                    FeatureId::NUMBER_OF_QUEUES if !ctrl.subsys.discovery => Ok(self.queue_counts(ctrl)),
                    FeatureId::ASYNC_EVENT_CONFIG => Ok(ctrl.aer_config()),
                    FeatureId::KEEP_ALIVE_TIMER => Ok(ctrl.kato_ms()),
                    FeatureId::VOLATILE_WRITE_CACHE if !ctrl.subsys.discovery => Ok(u32::from(ctrl.vwc())),
                    _ => Err(StatusCode::INVALID_FIELD.dnr()),
                };
                match r {
                    Ok(dw0) => self.complete(idx, Status::SUCCESS, dw0, 0),
                    Err(st) => self.complete(idx, st, 0, 0),
                }
            }
            AdminCommand::AsyncEventRequest => {
                if self.aers.is_full() {
                    return self.complete(idx, StatusCode::AER_LIMIT_EXCEEDED.dnr(), 0, 0);
                }
                self.aers.push(idx);
            }
            AdminCommand::KeepAlive => {
                ctrl.keep_alive(ticks());
                self.complete(idx, Status::SUCCESS, 0, 0)
            }
            AdminCommand::Abort { .. } => self.complete(idx, Status::SUCCESS, 1, 0),
            _ => self.complete(idx, StatusCode::INVALID_OPCODE.dnr(), 0, 0),
        }
    }

    fn queue_counts(&self, ctrl: &Controller) -> u32 {
        let n = ctrl.max_io_queues.saturating_sub(1);
        QueueCounts {
            nsq_0based: n,
            ncq_0based: n,
        }
        .to_dword()
    }

    /// Rebuilds the namespace table if the subsystem's namespaces changed.
    fn refresh_ns(&mut self, ctrl: &Controller) {
        let gen = ctrl.subsys.ns_generation();
        if gen == self.ns_gen {
            return;
        }
        self.ns_gen = gen;
        let now = ctrl.subsys.namespaces();
        let max = now.iter().map(|n| n.nsid as usize).max().unwrap_or(0);
        let mut old = std::mem::take(&mut self.ns);
        self.ns.resize_with(max, || None);
        for n in now {
            let i = n.nsid as usize - 1;
            let kept = old.get_mut(i).and_then(Option::take).filter(|c| Arc::ptr_eq(&c.ns, &n));
            self.ns[i] = match kept {
                Some(c) => Some(c),
                None => n.channel().map(|ch| NsChan { ns: n.clone(), ch }),
            };
        }
        self.retired.extend(old.into_iter().flatten());
    }

    fn nvm(&mut self, idx: u16, cmd: NvmCommand) {
        if let Phase::Io(ctrl, _) = &self.phase {
            let ctrl = ctrl.clone();
            self.refresh_ns(&ctrl);
        }
        let nsid = match cmd {
            NvmCommand::Flush { nsid } => nsid,
            NvmCommand::Read(rw) | NvmCommand::Write(rw) | NvmCommand::Compare(rw) => rw.nsid,
            NvmCommand::WriteZeroes(w) => w.nsid,
            NvmCommand::DatasetManagement(d) => d.nsid,
        };
        let ns_idx = (nsid as usize).wrapping_sub(1);
        let Some(Some(nc)) = self.ns.get(ns_idx) else {
            return self.complete(idx, StatusCode::INVALID_NAMESPACE_OR_FORMAT.dnr(), 0, 0);
        };
        let (bs, nblocks) = (nc.ns.block_size, nc.ns.num_blocks);
        let (flush, unmap) = (nc.ns.flush, nc.ns.unmap);
        self.slots[idx as usize].ns_idx = ns_idx;
        let in_range = |slba: u64, count: u64| slba.checked_add(count).is_some_and(|e| e <= nblocks);
        match cmd {
            NvmCommand::Read(rw) | NvmCommand::Write(rw) => {
                let count = u64::from(rw.block_count());
                let len = count * u64::from(bs);
                if len > u64::from(self.opts.max_transfer_bytes()) {
                    return self.complete(idx, StatusCode::INVALID_FIELD.dnr(), 0, 0);
                }
                if !in_range(rw.slba, count) {
                    return self.complete(idx, StatusCode::LBA_OUT_OF_RANGE.dnr(), 0, 0);
                }
                let len = len as u32;
                let write = matches!(cmd, NvmCommand::Write(_));
                let s = &mut self.slots[idx as usize];
                s.fua = write && rw.fua && flush;
                let sgl = s.sqe.data_pointer();
                match (write, sgl) {
                    (true, _) if s.buf.is_some() && s.data_len == len => {
                        self.prepare(idx, IoOp::Write, rw.slba, count, len);
                        self.submit(idx);
                    }
                    (_, Ok(DataPointer::Sgl(SglDescriptor::TransportDataBlock { length, .. }))) if length == len => {
                        s.buf = Some(BufPool::with(|p| p.get(len as usize)));
                        s.data_len = len;
                        if write {
                            self.request_data(idx);
                        } else {
                            self.prepare(idx, IoOp::Read, rw.slba, count, len);
                            self.submit(idx);
                        }
                    }
                    _ => self.complete(idx, StatusCode::DATA_SGL_LENGTH_INVALID.dnr(), 0, 0),
                }
            }
            NvmCommand::Flush { .. } => {
                if flush && self.ctrl_vwc() {
                    self.prepare(idx, IoOp::Flush, 0, nblocks, 0);
                    self.submit(idx);
                } else {
                    self.complete(idx, Status::SUCCESS, 0, 0);
                }
            }
            NvmCommand::WriteZeroes(w) => {
                let count = u64::from(w.block_count());
                if !in_range(w.slba, count) {
                    return self.complete(idx, StatusCode::LBA_OUT_OF_RANGE.dnr(), 0, 0);
                }
                self.slots[idx as usize].fua = w.fua && flush;
                self.prepare(idx, IoOp::WriteZeroes, w.slba, count, 0);
                self.submit(idx);
            }
            NvmCommand::DatasetManagement(d) => {
                let need = (d.range_count() * DSM_RANGE_LEN) as u32;
                let s = &mut self.slots[idx as usize];
                s.dsm_count = if d.deallocate && unmap {
                    d.range_count() as u16
                } else {
                    0
                };
                s.dsm_next = 0;
                if s.buf.is_some() {
                    if s.data_len < need {
                        return self.complete(idx, StatusCode::DATA_SGL_LENGTH_INVALID.dnr(), 0, 0);
                    }
                    return self.data_in(idx);
                }
                match s.sqe.data_pointer() {
                    Ok(DataPointer::Sgl(SglDescriptor::TransportDataBlock { length, .. }))
                        if length >= need && length <= self.opts.max_io_size =>
                    {
                        s.buf = Some(BufPool::with(|p| p.get(length as usize)));
                        s.data_len = length;
                        self.request_data(idx);
                    }
                    _ => self.complete(idx, StatusCode::DATA_SGL_LENGTH_INVALID.dnr(), 0, 0),
                }
            }
            NvmCommand::Compare(_) => self.complete(idx, StatusCode::INVALID_OPCODE.dnr(), 0, 0),
        }
    }

    fn ctrl_vwc(&self) -> bool {
        match &self.phase {
            Phase::Io(c, _) | Phase::Admin(c) => c.vwc(),
            _ => true,
        }
    }

    /// The write data of slot `idx` is in: run it.
    fn data_in(&mut self, idx: u16) {
        let s = &self.slots[idx as usize];
        let sqe = s.sqe;
        match sqe.opcode {
            0x01 => {
                let slba = u64::from(sqe.cdw10) | u64::from(sqe.cdw11) << 32;
                let count = u64::from(sqe.cdw12 & 0xFFFF) + 1;
                let len = s.data_len;
                self.prepare(idx, IoOp::Write, slba, count, len);
                self.submit(idx);
            }
            0x09 => self.dsm_next(idx),
            _ => self.complete(idx, StatusCode::INTERNAL_ERROR.dnr(), 0, 0),
        }
    }

    /// Submits the next range of a Dataset Management deallocate, or completes it.
    fn dsm_next(&mut self, idx: u16) {
        let s = &mut self.slots[idx as usize];
        if s.dsm_next >= s.dsm_count {
            return self.complete(idx, Status::SUCCESS, 0, 0);
        }
        let i = s.dsm_next as usize;
        s.dsm_next += 1;
        let range = {
            let b = s.buf.as_ref().expect("DSM data").bytes();
            let at = i * DSM_RANGE_LEN;
            let mut r = [0u8; DSM_RANGE_LEN];
            r.copy_from_slice(&b[at..at + DSM_RANGE_LEN]);
            DsmRange::from_bytes(&r)
        };
        let nblocks = self.ns[s.ns_idx].as_ref().map_or(0, |n| n.ns.num_blocks);
        let count = u64::from(range.block_count);
        if count == 0 {
            return self.dsm_next(idx);
        }
        if range.slba.checked_add(count).is_none_or(|e| e > nblocks) {
            return self.complete(idx, StatusCode::LBA_OUT_OF_RANGE.dnr(), 0, 0);
        }
        self.prepare(idx, IoOp::Unmap, range.slba, count, 0);
        self.submit(idx);
    }

    /// Queues an R2T for the whole of slot `idx`'s write data.
    fn request_data(&mut self, idx: u16) {
        let params = self.params;
        let s = &mut self.slots[idx as usize];
        s.got = 0;
        let pdu = PduHeader::R2T(R2T {
            cccid: s.sqe.cid,
            ttag: idx,
            r2to: 0,
            r2tl: s.data_len,
        });
        match pdu.encode_header(0, &params, &mut s.hdr) {
            Ok(l) => s.hdr_len = l.header_len as u8,
            Err(_) => return self.complete(idx, StatusCode::INTERNAL_ERROR.dnr(), 0, 0),
        }
        s.send_data = false;
        s.tail_len = 0;
        s.after_send = AfterSend::AwaitH2C;
        s.state = SlotState::R2T;
        self.sendq.push_back(idx);
    }

    fn prepare(&mut self, idx: u16, op: IoOp, slba: u64, count: u64, len: u32) {
        let s = &mut self.slots[idx as usize];
        let io = s.io.as_mut().expect("a slot's request is home");
        io.iovs.clear();
        if len > 0 {
            if let Some(buf) = &s.buf {
                io.iovs.push(IoVec {
                    buf: buf.clone(),
                    offset_bytes: 0,
                    len_bytes: len,
                });
            }
        }
        io.prepare(op, slba, count);
    }

    fn submit(&mut self, idx: u16) {
        let s = &mut self.slots[idx as usize];
        s.state = SlotState::Exec;
        self.at_bdev += 1;
        if !self.retry.is_empty() {
            self.retry.push_back(idx);
            return;
        }
        let io = s.io.take().expect("home before submission");
        let Some(Some(nc)) = self.ns.get(s.ns_idx) else {
            s.io = Some(io);
            self.at_bdev -= 1;
            return self.complete(idx, StatusCode::INVALID_NAMESPACE_OR_FORMAT.dnr(), 0, 0);
        };
        if let Submit::Requeue(io) = nc.ch.submit(io, &self.cq) {
            self.slots[idx as usize].io = Some(io);
            self.retry.push_back(idx);
        }
    }

    fn retry_submits(&mut self) -> bool {
        let mut did = false;
        while let Some(&idx) = self.retry.front() {
            let s = &mut self.slots[idx as usize];
            let io = s.io.take().expect("a waiting request is home");
            let Some(Some(nc)) = self.ns.get(s.ns_idx) else {
                s.io = Some(io);
                self.retry.pop_front();
                self.at_bdev -= 1;
                self.complete(idx, StatusCode::INVALID_NAMESPACE_OR_FORMAT.dnr(), 0, 0);
                continue;
            };
            match nc.ch.submit(io, &self.cq) {
                Submit::Accepted => {
                    self.retry.pop_front();
                    did = true;
                }
                Submit::Requeue(io) => {
                    self.slots[idx as usize].io = Some(io);
                    break;
                }
            }
        }
        did
    }

    fn completed(&mut self, mut io: IoBox) {
        let idx = io.tag as u16;
        self.at_bdev -= 1;
        let status = io.status();
        let op = io.op;
        io.iovs.clear();
        let s = &mut self.slots[idx as usize];
        s.io = Some(io);
        if self.closing.is_some() && self.broken {
            return self.release(idx);
        }
        if status != IoStatus::Success {
            let write = op != IoOp::Read;
            return self.complete(idx, io_status(status, write), 0, 0);
        }
        if s.fua {
            s.fua = false;
            let nblocks = self.ns[s.ns_idx].as_ref().map_or(0, |n| n.ns.num_blocks);
            self.prepare(idx, IoOp::Flush, 0, nblocks, 0);
            return self.submit(idx);
        }
        match op {
            IoOp::Read => self.complete_with_data(idx),
            IoOp::Unmap => self.dsm_next(idx),
            _ => self.complete(idx, Status::SUCCESS, 0, 0),
        }
    }

    // ---- completions and send ----------------------------------------------------------------

    fn cqe(&self, idx: u16, status: Status, dw0: u32, dw1: u32) -> Cqe {
        let qid = match self.phase {
            Phase::Io(_, q) => q,
            _ => 0,
        };
        let s = &self.slots[idx as usize];
        let connect = s.sqe.opcode == 0x7F && s.sqe.nsid & 0xFF == 0x01;
        let sq_head = if self.sqflow_off {
            if connect {
                0xFFFF
            } else {
                0
            }
        } else {
            self.sq_head
        };
        Cqe {
            dw0,
            dw1,
            sq_head,
            sq_id: qid,
            cid: s.sqe.cid,
            status,
            phase: false,
        }
    }

    /// Queues slot `idx`'s CapsuleResp.
    fn complete(&mut self, idx: u16, status: Status, dw0: u32, dw1: u32) {
        if self.broken {
            return self.release(idx);
        }
        let cqe = self.cqe(idx, status, dw0, dw1);
        let params = self.params;
        let s = &mut self.slots[idx as usize];
        s.hdr_len = 0;
        s.send_data = false;
        match PduHeader::CapsuleResp(CapsuleResp { cqe }).encode_header(0, &params, &mut s.tail) {
            Ok(l) => s.tail_len = l.header_len as u8,
            Err(_) => {
                self.release(idx);
                return self.close(Close::Fatal);
            }
        }
        s.after_send = AfterSend::Release;
        s.state = SlotState::Sending;
        self.sendq.push_back(idx);
    }

    /// Queues slot `idx`'s C2HData (its whole buffer) and, unless SUCCESS may stand in for it,
    /// its CapsuleResp.
    fn complete_with_data(&mut self, idx: u16) {
        if self.broken {
            return self.release(idx);
        }
        let success_flag = self.sqflow_off && self.opts.c2h_success;
        let cqe = self.cqe(idx, Status::SUCCESS, 0, 0);
        let params = self.params;
        let s = &mut self.slots[idx as usize];
        let pdu = PduHeader::C2HData(C2HData {
            cccid: s.sqe.cid,
            datao: 0,
            datal: s.data_len,
            last_pdu: true,
            success: success_flag,
        });
        let layout = match pdu.encode_header(s.data_len, &params, &mut s.hdr) {
            Ok(l) => l,
            Err(_) => {
                self.release(idx);
                return self.close(Close::Fatal);
            }
        };
        s.hdr_len = layout.header_len as u8;
        s.send_data = true;
        let mut tail = 0;
        if layout.data_digest {
            let mut crc = Crc32c::new();
            crc.update(&s.buf.as_ref().expect("data").bytes()[..s.data_len as usize]);
            s.tail[..4].copy_from_slice(&crc.to_wire());
            tail = 4;
        }
        if !success_flag {
            match PduHeader::CapsuleResp(CapsuleResp { cqe }).encode_header(0, &params, &mut s.tail[tail..]) {
                Ok(l) => tail += l.header_len,
                Err(_) => {
                    self.release(idx);
                    return self.close(Close::Fatal);
                }
            }
        }
        s.tail_len = tail as u8;
        s.after_send = AfterSend::Release;
        s.state = SlotState::Sending;
        self.sendq.push_back(idx);
    }

    fn release(&mut self, idx: u16) {
        let s = &mut self.slots[idx as usize];
        if s.state == SlotState::Free {
            return;
        }
        if let Some(buf) = s.buf.take() {
            BufPool::with(|p| p.put(buf));
        }
        s.state = SlotState::Free;
        s.data_len = 0;
        self.free.push(idx);
    }

    fn send(&mut self) -> bool {
        let mut busy = false;
        if self.broken {
            while let Some(idx) = self.sendq.pop_front() {
                self.release(idx);
                busy = true;
            }
            return busy;
        }
        while self.ctl_sent < self.ctl_len {
            match self.stream.write(&self.ctl[self.ctl_sent..self.ctl_len]) {
                Ok(n) => {
                    self.ctl_sent += n;
                    busy = true;
                }
                Err(e) if would_block(&e) => return busy,
                Err(_) => {
                    self.socket_failed();
                    return true;
                }
            }
        }
        self.ctl_len = 0;
        self.ctl_sent = 0;
        if self.closing == Some(Close::Fatal) {
            // After a termination request nothing else goes out.
            while let Some(idx) = self.sendq.pop_front() {
                self.release(idx);
                busy = true;
            }
            self.sent = 0;
            return busy;
        }
        while !self.sendq.is_empty() {
            let (n, wanted) = {
                let mut refs: ArrayVec<Ref<'_, [u8]>, MAX_IOV> = ArrayVec::new();
                let mut count = 0;
                let mut iovs = 0;
                for &idx in self.sendq.iter() {
                    let s = &self.slots[idx as usize];
                    if iovs + 3 > MAX_IOV {
                        break;
                    }
                    if s.send_data {
                        refs.push(s.buf.as_ref().expect("data buffer").bytes());
                    }
                    iovs += 3;
                    count += 1;
                }
                let mut iov: ArrayVec<IoSlice<'_>, MAX_IOV> = ArrayVec::new();
                let mut skip = self.sent;
                let mut wanted = 0;
                let mut data = refs.iter();
                for &idx in self.sendq.iter().take(count) {
                    let s = &self.slots[idx as usize];
                    let d: &[u8] = if s.send_data {
                        &data.next().expect("one data window per data slot")[..s.data_len as usize]
                    } else {
                        &[]
                    };
                    for part in [&s.hdr[..s.hdr_len as usize], d, &s.tail[..s.tail_len as usize]] {
                        if skip >= part.len() {
                            skip -= part.len();
                            continue;
                        }
                        iov.push(IoSlice::new(&part[skip..]));
                        wanted += part.len() - skip;
                        skip = 0;
                    }
                }
                match self.stream.write_vectored(&iov) {
                    Ok(n) => (n, wanted),
                    Err(e) if would_block(&e) => break,
                    Err(_) => {
                        drop(iov);
                        drop(refs);
                        self.socket_failed();
                        return true;
                    }
                }
            };
            busy = true;
            let mut done = self.sent + n;
            while let Some(&idx) = self.sendq.front() {
                let total = self.slots[idx as usize].wire_len();
                if done < total {
                    break;
                }
                done -= total;
                self.sendq.pop_front();
                let s = &mut self.slots[idx as usize];
                match s.after_send {
                    AfterSend::Release => self.release(idx),
                    AfterSend::AwaitH2C => {
                        if s.state == SlotState::R2T {
                            s.state = SlotState::AwaitH2C;
                        }
                    }
                }
            }
            self.sent = done;
            if n < wanted {
                break;
            }
        }
        busy
    }

    fn socket_failed(&mut self) {
        self.broken = true;
        self.close(Close::Socket);
        while let Some(idx) = self.sendq.pop_front() {
            self.release(idx);
        }
        self.sent = 0;
    }
}

impl Drop for Qpair {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        match &self.phase {
            Phase::Admin(ctrl) => self.target.ctrlr_gone(ctrl),
            Phase::Io(ctrl, qid) => ctrl.remove_io_qid(*qid),
            _ => {}
        }
        self.ns.clear();
        self.retired.clear();
        self.target.qpair_closed(&self.shared);
    }
}

enum ConnectErr {
    /// Invalid parameter: (in the Connect data, byte offset).
    Param(bool, u16),
    Status(Status, u32),
}

/// The NVMe status of a request the bdev failed.
fn io_status(s: IoStatus, write: bool) -> Status {
    match s {
        IoStatus::InvalidRange => StatusCode::LBA_OUT_OF_RANGE.dnr(),
        IoStatus::Unsupported => StatusCode::INVALID_OPCODE.dnr(),
        IoStatus::ReadOnly => StatusCode::WRITE_TO_READ_ONLY.dnr(),
        IoStatus::Removed => StatusCode::NAMESPACE_NOT_READY.retryable(),
        IoStatus::Aborted => StatusCode::ABORT_REQUESTED.retryable(),
        IoStatus::Failed if write => StatusCode::WRITE_FAULT.retryable(),
        IoStatus::Failed => StatusCode::UNRECOVERED_READ_ERROR.retryable(),
        _ => StatusCode::INTERNAL_ERROR.retryable(),
    }
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}
