//! One NBD connection on its reactor: the negotiation, then the transmission phase.
//!
//! # Design
//!
//! A connection is one value ([`Conn`]) owned by one active poller on the reactor the listener
//! sent it to; nothing else touches it. Each turn the poller drives whichever phase it is in
//! ([`Phase`]) without ever blocking: every socket call is non-blocking and "would block" just
//! ends that part of the turn.
//!
//! **Negotiation.** The sans-IO [`Handshake`] is fed whatever arrived and its output is written
//! back; its input buffer is bounded by the protocol core and its output flow-controlled. The
//! whole negotiation is bounded in time ([`ServerConfig::handshake_timeout_us`]): a client that
//! stalls is dropped. When it ends the chosen export is looked up again (the catalog is a
//! snapshot), attached under the server's lock (refused if its removal started), and the
//! connection builds everything the transmission phase will ever need: the bdev channel on this
//! core, a completion queue, `max_inflight` request **slots** (each with its own [`IoBox`] and a
//! small reply-header area), a free list, the retry and send queues with room for every slot,
//! and a small receive buffer. Bytes the client pipelined behind its last option are moved into
//! that buffer. After that the data path allocates nothing: buffers come from the reactor's
//! [`BufPool`] and go back to it.
//!
//! **Transmission**, per turn, in this order:
//!
//! 1. *Completions* (`cq.drain_now`): a slot's request came back from the bdev. A successful
//!    write with `FUA` goes out again as a flush (writes and zeroes are durable before their
//!    reply); anything else gets its reply encoded into the slot's header area and the slot joins
//!    the send queue (replies go in completion order: the protocol allows any order).
//! 2. *Retries*: requests the bdev handed back (`Submit::Requeue`) are submitted again, oldest
//!    first; a request that arrives while others wait queues behind them.
//! 3. *Receive*, only while a slot is free and the connection's buffered-bytes budget
//!    ([`ServerConfig::max_inflight_bytes`]) allows: every complete header already in the
//!    receive buffer is validated ([`RequestDecoder`]) and started — READ, FLUSH, TRIM and
//!    WRITE_ZEROES go to the bdev at once, CACHE and BLOCK_STATUS are answered at once, a
//!    rejection is answered with its errno after its payload is drained — and more bytes are
//!    read, up to a few reads per turn. A WRITE payload is read **straight into the pool buffer**
//!    the write is submitted from: `readv` into [rest of the payload, room for the next header].
//!    The receive window adapts: after a WRITE only the next header is read along with the
//!    payload, so a stream of writes never lands payload bytes in the receive buffer; after
//!    anything else up to [`RX_BATCH`] bytes are read at once, so a queue of READs costs one
//!    system call for dozens of headers. Only when a WRITE follows such a batch in the same read
//!    are its first bytes (at most [`RX_BATCH`]) copied out of the receive buffer.
//! 4. *Send*: the replies of the send queue are gathered into one `writev` — for a READ the
//!    header from the slot and the data from the very buffer the bdev filled — until the socket
//!    is full. A reply partly sent resumes where it stopped at the next turn. A slot is free
//!    again once its reply is gone; its buffer goes back to the pool.
//!
//! **Backpressure.** Every request, answered or not, occupies a slot until its reply has left,
//! so a client that does not read its replies runs out of slots and the connection stops reading
//! from it: the output it can pile up is bounded by the slots and by the bytes budget. Nothing
//! here waits, so such a client costs the other connections of the reactor only the poll of its
//! socket.
//!
//! **The end.** `DISC`, EOF (fio closes without `DISC`), a request the stream cannot be
//! followed after (bad magic, an oversized payload), a failed socket, the export's removal, the
//! server's stop and the reactor's shutdown all stop reading; the requests in flight complete,
//! their replies are sent (unless the socket failed), and only then is the socket closed, the
//! poller unregistered and the connection dropped — channel and buffers on this core.

use std::cell::{Ref, RefCell, RefMut};
use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arrayvec::ArrayVec;
use keel_bdev::{BufPool, Channel, CompletionQueue, DmaBuf, IoBox, IoOp, IoRequest, IoStatus, IoVec, Submit};
use keel_reactor::{current, ticks, ticks_per_sec, CoreId, PollStatus, PollerHandle};

use crate::error::{CloseReason, Errno};
use crate::handshake::{Handshake, HandshakeConfig, MetaContextId, Outcome, Session};
use crate::reply::{Extent, ReplyEncoder};
use crate::request::{Command, Decoded, Rejection, Request, RequestDecoder};
use crate::server::exports::{Catalog, Export};
use crate::server::sock::{would_block, Stream};
use crate::server::{NbdServer, ServerConfig};

/// Bytes read at once while headers are expected (after anything but a WRITE): room for 64
/// extended or 73 compact headers, twice the usual queue depth of 32; also the most payload
/// bytes ever copied out of the receive buffer.
pub const RX_BATCH: usize = 2048;
/// The receive buffer: a batch, plus what a client may have pipelined behind its last option
/// (the handshake reads at most [`HS_READ`] bytes at a time).
const RX_CAP: usize = RX_BATCH + HS_READ;
/// Bytes the negotiation reads at once.
const HS_READ: usize = 4096;
/// A slot's reply area: the longest header Keel sends (an extended chunk of 32 bytes plus an
/// error chunk's 6 bytes, or a status chunk's 8 + 16) and an error message of up to 80 bytes.
const REPLY_CAP: usize = 128;
/// Longest error message in a reply (Keel's own texts are shorter; longer ones are cut).
const MAX_MESSAGE: usize = REPLY_CAP - 32 - 6 - 8;
/// Iovecs per `writev`: enough for a full queue of replies of small requests.
const MAX_IOV: usize = 64;
/// Read calls per turn and connection: a busy client cannot keep the reactor on its socket.
const MAX_READS_PER_TURN: usize = 8;

/// What the server, the export and `get_exports` know of a connection. Shared (`Arc`) between
/// the connection on its core and the server's control path on the main core.
pub(crate) struct ConnShared {
    /// Unique per server.
    pub id: u64,
    /// The peer, as [`Stream::peer`] shows it.
    pub peer: String,
    /// The reactor the connection lives on.
    pub core: CoreId,
    /// The listener that accepted it (`None` for a stream handed in).
    pub listener: Option<u64>,
    /// The export it serves once in transmission; set under the server's state lock.
    pub export: Mutex<Option<String>>,
    /// Asked to end: stop reading, finish what is in flight, close.
    stop: AtomicBool,
}

impl ConnShared {
    /// A new record.
    pub fn new(id: u64, peer: String, core: CoreId, listener: Option<u64>) -> ConnShared {
        ConnShared {
            id,
            peer,
            core,
            listener,
            export: Mutex::new(None),
            stop: AtomicBool::new(false),
        }
    }

    /// Asks the connection to end (any thread); it notices at its next turn.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The export it serves, if in transmission.
    pub fn export_name(&self) -> Option<String> {
        self.export.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How a connection begins.
pub(crate) enum Start {
    /// With the negotiation, answering from this catalog (a listener's connection).
    Handshake(Arc<Catalog>),
    /// Directly in transmission for `export` with this session (a socketpair handed to a kernel
    /// client, which sends no handshake); the connection is already attached to the export.
    Transmission(Arc<Export>, Session),
}

/// Starts serving `stream` on the calling reactor: builds the connection and registers its
/// poller. Called on the connection's core (by message from the listener or the control path).
pub(crate) fn spawn(server: Arc<NbdServer>, shared: Arc<ConnShared>, stream: Stream, start: Start) {
    let config = server.config();
    let phase = match start {
        Start::Handshake(catalog) => {
            let mut out = Vec::new();
            let hs = Handshake::new(catalog.clone(), HandshakeConfig::default(), &mut out);
            let deadline = ticks().saturating_add(us_to_ticks(config.handshake_timeout_us));
            Phase::Negotiating(Box::new(Negotiation {
                hs,
                catalog,
                out,
                out_sent: 0,
                input: vec![0; HS_READ].into_boxed_slice(),
                input_len: 0,
                deadline,
                closing: false,
            }))
        }
        Start::Transmission(export, session) => match Tx::new(&config, export, &session, &[], Vec::new()) {
            Some(tx) => Phase::Transmission(Box::new(tx)),
            None => Phase::Closed,
        },
    };
    let conn = Conn {
        server,
        shared,
        stream,
        phase,
    };
    let name = format!("nbd_conn_{}", conn.shared.id);
    let handle_slot: Rc<RefCell<Option<PollerHandle>>> = Rc::new(RefCell::new(None));
    let h2 = handle_slot.clone();
    let mut conn = conn;
    let handle = current().register_poller(name, move || match conn.poll() {
        Poll::Busy => PollStatus::Busy,
        Poll::Idle => PollStatus::Idle,
        Poll::Finished => {
            // Unregisters: the reactor drops this closure, and with it the connection, before
            // its next turn.
            drop(h2.borrow_mut().take());
            PollStatus::Busy
        }
    });
    *handle_slot.borrow_mut() = Some(handle);
}

fn us_to_ticks(us: u64) -> u64 {
    (us as u128 * ticks_per_sec() as u128 / 1_000_000) as u64
}

/// What one turn of a connection did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Poll {
    Busy,
    Idle,
    /// Done: close and drop.
    Finished,
}

/// The connection's phase.
enum Phase {
    Negotiating(Box<Negotiation>),
    Transmission(Box<Tx>),
    Closed,
}

/// A connection (see the module essay). Owned by its poller.
struct Conn {
    server: Arc<NbdServer>,
    shared: Arc<ConnShared>,
    stream: Stream,
    phase: Phase,
}

impl Conn {
    fn poll(&mut self) -> Poll {
        let stopping = self.shared.stop_requested() || self.server.cores().is_stopping();
        match &mut self.phase {
            Phase::Negotiating(n) => {
                if stopping {
                    return Poll::Finished;
                }
                match n.poll(&mut self.stream) {
                    HsStep::Busy => Poll::Busy,
                    HsStep::Idle => Poll::Idle,
                    HsStep::Finished => Poll::Finished,
                    HsStep::Done(session, leftover) => {
                        let preamble = std::mem::take(&mut n.out);
                        let preamble = preamble[n.out_sent..].to_vec();
                        let export = n.catalog.resolve(&session.export_name);
                        let Some(export) = export.filter(|e| self.server.attach(&self.shared, e)) else {
                            tracing::debug!(conn = self.shared.id, export = %session.export_name, "export went away during the negotiation");
                            return Poll::Finished;
                        };
                        match Tx::new(&self.server.config(), export, &session, &leftover, preamble) {
                            Some(tx) => {
                                self.phase = Phase::Transmission(Box::new(tx));
                                Poll::Busy
                            }
                            None => Poll::Finished,
                        }
                    }
                }
            }
            Phase::Transmission(tx) => {
                if stopping {
                    tx.stop_reading(Stop::Requested);
                }
                tx.poll(&mut self.stream)
            }
            Phase::Closed => Poll::Finished,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Channel, buffers and the export's reference go first, so the export's removal (which
        // waits for the last connection) finds nothing left of this one.
        self.phase = Phase::Closed;
        self.stream.shutdown();
        self.server.conn_closed(&self.shared);
    }
}

// ---------------------------------------------------------------------------------------------
// Negotiation
// ---------------------------------------------------------------------------------------------

struct Negotiation {
    hs: Handshake<Arc<Catalog>>,
    catalog: Arc<Catalog>,
    /// The handshake's output; `out[out_sent..]` is still to send.
    out: Vec<u8>,
    out_sent: usize,
    /// Received and not yet consumed by the handshake.
    input: Box<[u8]>,
    input_len: usize,
    deadline: u64,
    /// The handshake decided to close: send what it wrote, then close.
    closing: bool,
}

enum HsStep {
    Busy,
    Idle,
    Finished,
    /// Negotiated: the session and the bytes received after the handshake's last message.
    Done(Session, Vec<u8>),
}

impl Negotiation {
    fn poll(&mut self, stream: &mut Stream) -> HsStep {
        let mut busy = false;
        // Send what is pending.
        while self.out_sent < self.out.len() {
            match stream.write_vectored(&[IoSlice::new(&self.out[self.out_sent..])]) {
                Ok(0) => return HsStep::Finished,
                Ok(n) => {
                    self.out_sent += n;
                    busy = true;
                }
                Err(e) if would_block(&e) => break,
                Err(_) => return HsStep::Finished,
            }
        }
        if self.out_sent == self.out.len() {
            self.out.clear();
            self.out_sent = 0;
        }
        let expired = ticks() > self.deadline;
        if self.closing {
            return if self.out.is_empty() || expired {
                HsStep::Finished
            } else {
                step(busy)
            };
        }
        if expired {
            tracing::debug!("nbd: negotiation timed out");
            return HsStep::Finished;
        }
        // Read, unless the client already owes us reading a lot of replies.
        if self.out.len() - self.out_sent <= HandshakeConfig::default().output_high_water_bytes
            && self.input_len < self.input.len()
        {
            match stream.read(&mut self.input[self.input_len..]) {
                Ok(0) => return HsStep::Finished,
                Ok(n) => {
                    self.input_len += n;
                    busy = true;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return HsStep::Finished,
            }
        }
        if self.input_len == 0 {
            return step(busy);
        }
        let fed = self.hs.feed(&self.input[..self.input_len], &mut self.out);
        self.input.copy_within(fed.consumed..self.input_len, 0);
        self.input_len -= fed.consumed;
        match fed.outcome {
            Outcome::NeedInput | Outcome::OutputFull => HsStep::Busy,
            Outcome::Done(session) => HsStep::Done(session, self.input[..self.input_len].to_vec()),
            Outcome::Close(reason) => {
                tracing::debug!(%reason, "nbd: negotiation ends");
                self.closing = true;
                HsStep::Busy
            }
        }
    }
}

fn step(busy: bool) -> HsStep {
    if busy {
        HsStep::Busy
    } else {
        HsStep::Idle
    }
}

// ---------------------------------------------------------------------------------------------
// Transmission
// ---------------------------------------------------------------------------------------------

/// Where a slot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Its WRITE payload is being received.
    Receiving,
    /// Its request is at the bdev (or waiting to be retried).
    InFlight,
    /// Its reply is in the send queue.
    Ready,
}

/// One request's everything, reused request after request.
struct Slot {
    state: SlotState,
    /// The request, home when not at the bdev.
    io: Option<IoBox>,
    /// The data buffer of a READ or WRITE, from the reactor's pool.
    buf: Option<DmaBuf>,
    cookie: u64,
    offset_bytes: u64,
    /// Payload (WRITE) or data (READ) bytes.
    data_len: usize,
    /// Bytes charged to the connection's budget.
    charged: u64,
    /// After the write succeeds, flush before replying.
    fua: bool,
    /// The reply header (and small reply payloads), `reply[..reply_len]`.
    reply: [u8; REPLY_CAP],
    reply_len: usize,
    /// The reply is followed by `buf[..data_len]` (a successful READ).
    send_data: bool,
}

impl Slot {
    fn new(tag: u16) -> Slot {
        let mut io = IoRequest::new_boxed();
        io.tag = u64::from(tag);
        Slot {
            state: SlotState::Free,
            io: Some(io),
            buf: None,
            cookie: 0,
            offset_bytes: 0,
            data_len: 0,
            charged: 0,
            fua: false,
            reply: [0; REPLY_CAP],
            reply_len: 0,
            send_data: false,
        }
    }

    /// Bytes this slot's reply puts on the wire.
    fn reply_bytes(&self) -> usize {
        self.reply_len + if self.send_data { self.data_len } else { 0 }
    }
}

/// What the receive side expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recv {
    /// A request header; `after_write` narrows the read to one header (see the essay).
    Header { after_write: bool },
    /// The payload of the WRITE in `slot`, `got` bytes of it so far.
    Payload { slot: u16, got: usize },
    /// Payload bytes of a rejected request still to drop.
    Discard { left: u64 },
}

/// Why a connection stopped reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Disc,
    Eof,
    Protocol(CloseReason),
    Socket,
    Requested,
}

/// The transmission phase of one connection (see the module essay).
struct Tx {
    export: Arc<Export>,
    ch: Channel,
    cq: CompletionQueue,
    dec: RequestDecoder,
    enc: ReplyEncoder,
    base_allocation: Option<MetaContextId>,
    block_shift: u32,
    num_blocks: u64,
    slots: Vec<Slot>,
    free: Vec<u16>,
    retry: VecDeque<u16>,
    sendq: VecDeque<u16>,
    /// Bytes of the first queued reply already sent.
    sent: usize,
    /// The negotiation's last output (its final `ACK`), sent before any reply.
    preamble: Vec<u8>,
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    recv: Recv,
    stopped: Option<Stop>,
    /// Once stopped: when to give up sending to a client that does not read (ticks).
    stop_deadline: u64,
    linger_ticks: u64,
    /// The socket failed: replies are dropped instead of sent.
    broken: bool,
    inflight_bytes: u64,
    max_inflight_bytes: u64,
}

impl Tx {
    /// Everything the transmission phase needs, allocated now; `None` if the export's
    /// descriptor is already gone. `leftover`: bytes received after the negotiation's last
    /// message. Called on the connection's core.
    fn new(
        config: &ServerConfig,
        export: Arc<Export>,
        session: &Session,
        leftover: &[u8],
        preamble: Vec<u8>,
    ) -> Option<Tx> {
        let ch = export.channel()?;
        let n = config.max_inflight.clamp(1, u16::MAX as usize);
        let mut rx = vec![0u8; RX_CAP].into_boxed_slice();
        let keep = leftover.len().min(RX_CAP);
        rx[..keep].copy_from_slice(&leftover[..keep]);
        let num_blocks = ch.info().num_blocks;
        Some(Tx {
            dec: RequestDecoder::new(session),
            enc: ReplyEncoder::for_session(session),
            base_allocation: session.base_allocation,
            block_shift: export.block_size.trailing_zeros(),
            num_blocks,
            export,
            ch,
            cq: CompletionQueue::with_capacity(n),
            slots: (0..n).map(|i| Slot::new(i as u16)).collect(),
            free: (0..n as u16).rev().collect(),
            retry: VecDeque::with_capacity(n),
            sendq: VecDeque::with_capacity(n),
            sent: 0,
            preamble,
            rx,
            rx_start: 0,
            rx_end: keep,
            recv: Recv::Header { after_write: false },
            stopped: None,
            stop_deadline: u64::MAX,
            linger_ticks: us_to_ticks(config.handshake_timeout_us),
            broken: false,
            inflight_bytes: 0,
            max_inflight_bytes: config.max_inflight_bytes,
        })
    }

    fn poll(&mut self, stream: &mut Stream) -> Poll {
        let mut busy = false;
        let cq = self.cq.clone();
        busy |= cq.drain_now(|io| self.completed(io)) > 0;
        busy |= self.retry_submits();
        if self.stopped.is_none() {
            busy |= self.receive(stream);
        }
        if self.stopped.is_some() && !self.broken && ticks() > self.stop_deadline {
            // Stopped, and the client has not taken its replies for that long: drop them.
            tracing::debug!(
                export = self.export.name(),
                "nbd: client does not read its last replies"
            );
            self.socket_failed();
        }
        busy |= self.send(stream);
        if self.stopped.is_some() && self.free.len() == self.slots.len() && (self.sendq.is_empty() || self.broken) {
            return Poll::Finished;
        }
        if busy {
            Poll::Busy
        } else {
            Poll::Idle
        }
    }

    /// Stops reading for `why` (the first reason sticks); a payload being received is dropped.
    fn stop_reading(&mut self, why: Stop) {
        if self.stopped.is_some() {
            return;
        }
        tracing::debug!(reason = ?why, export = self.export.name(), "nbd: connection stops reading");
        self.stopped = Some(why);
        self.stop_deadline = ticks().saturating_add(self.linger_ticks);
        if let Recv::Payload { slot, .. } = self.recv {
            self.release(slot);
        }
        self.recv = Recv::Header { after_write: false };
    }

    // ---- completions and submission ---------------------------------------------------------

    /// A request came back from the bdev.
    fn completed(&mut self, mut io: IoBox) {
        let idx = io.tag as u16;
        let status = io.status();
        let was_read = io.op == IoOp::Read;
        io.iovs.clear();
        let num_blocks = self.num_blocks;
        let s = &mut self.slots[idx as usize];
        if status == IoStatus::Success && s.fua {
            s.fua = false;
            io.prepare(IoOp::Flush, 0, num_blocks);
            s.io = Some(io);
            self.submit(idx);
            return;
        }
        s.io = Some(io);
        if status != IoStatus::Success {
            let (errno, why) = errno_of(status);
            return self.reply_error(idx, errno, why);
        }
        let r = if was_read {
            s.send_data = true;
            let (cookie, off, len) = (s.cookie, s.offset_bytes, s.data_len as u64);
            self.enc.read_data_header(&mut s.reply, cookie, off, off, len, true)
        } else {
            self.enc.success(&mut s.reply, s.cookie, s.offset_bytes)
        };
        self.finish(idx, r);
    }

    /// Sends slot `idx`'s prepared request to the bdev, behind any waiting retries.
    #[inline]
    fn submit(&mut self, idx: u16) {
        let s = &mut self.slots[idx as usize];
        s.state = SlotState::InFlight;
        if !self.retry.is_empty() {
            self.retry.push_back(idx);
            return;
        }
        let io = s.io.take().expect("a slot's request is home before submission");
        if let Submit::Requeue(io) = self.ch.submit(io, &self.cq) {
            self.slots[idx as usize].io = Some(io);
            self.retry.push_back(idx);
        }
    }

    /// Resubmits requests the bdev handed back, oldest first, until one is handed back again.
    fn retry_submits(&mut self) -> bool {
        let mut did = false;
        while let Some(&idx) = self.retry.front() {
            let io = self.slots[idx as usize].io.take().expect("a waiting request is home");
            match self.ch.submit(io, &self.cq) {
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

    /// Queues slot `idx`'s reply, just encoded (`Err`: the encoder refused, which only a bug
    /// can cause: the connection is ended rather than sending a broken reply).
    fn finish(&mut self, idx: u16, encoded: Result<usize, crate::NbdError>) {
        let s = &mut self.slots[idx as usize];
        match encoded {
            Ok(n) => {
                s.reply_len = n;
                s.state = SlotState::Ready;
                self.sendq.push_back(idx);
            }
            Err(e) => {
                tracing::error!(error = %e, "nbd: cannot encode a reply; closing the connection");
                s.send_data = false;
                self.release(idx);
                self.stop_reading(Stop::Protocol(CloseReason::HandshakeOver));
                self.broken = true;
            }
        }
    }

    /// Answers slot `idx` with an error.
    fn reply_error(&mut self, idx: u16, errno: Errno, why: &str) {
        let s = &mut self.slots[idx as usize];
        s.send_data = false;
        let r = self.enc.error(&mut s.reply, s.cookie, s.offset_bytes, errno, cut(why));
        self.finish(idx, r);
    }

    /// Takes a free slot for a request; `buf_len` > 0 also takes a pool buffer of that size.
    fn take_slot(&mut self, cookie: u64, offset_bytes: u64, buf_len: usize) -> u16 {
        let idx = self.free.pop().expect("caller checked for a free slot");
        let s = &mut self.slots[idx as usize];
        debug_assert_eq!(s.state, SlotState::Free);
        s.cookie = cookie;
        s.offset_bytes = offset_bytes;
        s.data_len = buf_len;
        s.fua = false;
        s.send_data = false;
        s.reply_len = 0;
        s.charged = 0;
        if buf_len > 0 {
            let buf = BufPool::with(|p| p.get(buf_len));
            s.charged = buf.len() as u64;
            self.inflight_bytes += s.charged;
            s.buf = Some(buf);
        }
        s.state = SlotState::InFlight;
        idx
    }

    /// Frees slot `idx`: its buffer back to the pool, its budget back to the connection.
    fn release(&mut self, idx: u16) {
        let s = &mut self.slots[idx as usize];
        if let Some(buf) = s.buf.take() {
            BufPool::with(|p| p.put(buf));
        }
        self.inflight_bytes -= s.charged;
        s.charged = 0;
        s.send_data = false;
        s.state = SlotState::Free;
        self.free.push(idx);
    }

    /// Sets slot `idx`'s request to `op` over the request's byte range (and its buffer).
    fn prepare(&mut self, idx: u16, op: IoOp, offset_bytes: u64, len_bytes: u64) {
        let shift = self.block_shift;
        let s = &mut self.slots[idx as usize];
        let io = s.io.as_mut().expect("a free slot's request is home");
        io.iovs.clear();
        if let Some(buf) = &s.buf {
            io.iovs.push(IoVec {
                buf: buf.clone(),
                offset_bytes: 0,
                len_bytes: len_bytes as u32,
            });
        }
        io.prepare(op, offset_bytes >> shift, len_bytes >> shift);
    }

    // ---- receive ---------------------------------------------------------------------------

    /// Receives and starts requests (see the essay). Returns whether it did anything.
    fn receive(&mut self, stream: &mut Stream) -> bool {
        let mut busy = false;
        let mut reads = 0;
        // A read that returned less than it asked for emptied the socket: reading again in this
        // turn would only cost a system call that finds nothing.
        let mut drained = false;
        let hdr_len = self.dec.header_len();
        while self.stopped.is_none() {
            match self.recv {
                Recv::Header { after_write } => {
                    if self.free.is_empty() {
                        break;
                    }
                    if self.rx_end - self.rx_start >= hdr_len {
                        if !self.start_request() {
                            break;
                        }
                        busy = true;
                        continue;
                    }
                    if reads == MAX_READS_PER_TURN || drained {
                        break;
                    }
                    // Keep what is there at the start, then read the next header (after a
                    // write) or a batch of them.
                    self.rx.copy_within(self.rx_start..self.rx_end, 0);
                    self.rx_end -= self.rx_start;
                    self.rx_start = 0;
                    let want = if after_write { hdr_len } else { RX_BATCH };
                    reads += 1;
                    match stream.read(&mut self.rx[self.rx_end..want]) {
                        Ok(0) => self.stop_reading(Stop::Eof),
                        Ok(n) => {
                            drained = self.rx_end + n < want;
                            self.rx_end += n;
                            busy = true;
                        }
                        Err(e) if would_block(&e) => break,
                        Err(_) => self.stop_reading(Stop::Socket),
                    }
                }
                Recv::Payload { slot, got } => {
                    let len = self.slots[slot as usize].data_len;
                    let buffered = self.rx_end - self.rx_start;
                    let mut got = got;
                    if buffered > 0 {
                        // The start of the payload came with earlier headers (bounded: at most
                        // one batch).
                        let n = buffered.min(len - got);
                        let buf = self.slots[slot as usize].buf.as_ref().expect("a write's buffer");
                        buf.bytes_mut()[got..got + n].copy_from_slice(&self.rx[self.rx_start..self.rx_start + n]);
                        self.rx_start += n;
                        got += n;
                    }
                    if got == len {
                        self.recv = Recv::Header { after_write: true };
                        self.submit(slot);
                        busy = true;
                        continue;
                    }
                    self.recv = Recv::Payload { slot, got };
                    if reads == MAX_READS_PER_TURN || drained {
                        break;
                    }
                    // The receive buffer is empty here: the rest of the payload goes straight
                    // into the pool buffer, the next header behind it.
                    self.rx_start = 0;
                    self.rx_end = 0;
                    reads += 1;
                    let r = {
                        let buf = self.slots[slot as usize].buf.as_ref().expect("a write's buffer");
                        let mut data: RefMut<'_, [u8]> = buf.bytes_mut();
                        let mut iov = [
                            IoSliceMut::new(&mut data[got..len]),
                            IoSliceMut::new(&mut self.rx[..hdr_len]),
                        ];
                        stream.read_vectored(&mut iov)
                    };
                    match r {
                        Ok(0) => self.stop_reading(Stop::Eof),
                        Ok(n) => {
                            drained = n < len - got + hdr_len;
                            let p = n.min(len - got);
                            self.recv = Recv::Payload { slot, got: got + p };
                            self.rx_end = n - p;
                            busy = true;
                        }
                        Err(e) if would_block(&e) => break,
                        Err(_) => self.stop_reading(Stop::Socket),
                    }
                }
                Recv::Discard { left } => {
                    let buffered = (self.rx_end - self.rx_start) as u64;
                    let n = buffered.min(left);
                    self.rx_start += n as usize;
                    let left = left - n;
                    if left == 0 {
                        self.recv = Recv::Header { after_write: false };
                        continue;
                    }
                    self.recv = Recv::Discard { left };
                    if reads == MAX_READS_PER_TURN || drained {
                        break;
                    }
                    self.rx_start = 0;
                    self.rx_end = 0;
                    reads += 1;
                    match stream.read(&mut self.rx[..RX_BATCH]) {
                        Ok(0) => self.stop_reading(Stop::Eof),
                        Ok(n) => {
                            drained = n < RX_BATCH;
                            self.rx_end = n;
                            busy = true;
                        }
                        Err(e) if would_block(&e) => break,
                        Err(_) => self.stop_reading(Stop::Socket),
                    }
                }
            }
        }
        busy
    }

    /// Validates and starts the request whose header is at the start of the receive buffer (a
    /// slot is free). `false`: it must wait (the bytes budget), nothing consumed.
    fn start_request(&mut self) -> bool {
        let hdr_len = self.dec.header_len();
        let decoded = self.dec.decode(&self.rx[self.rx_start..self.rx_end]);
        match decoded {
            Decoded::Incomplete { .. } => false,
            Decoded::Close(reason) => {
                self.stop_reading(Stop::Protocol(reason));
                true
            }
            Decoded::Reject(rj) => {
                self.rx_start += hdr_len;
                self.reject(&rj);
                true
            }
            Decoded::Request(r) => {
                let data = match r.command {
                    Command::Read | Command::Write => r.length_bytes,
                    _ => 0,
                };
                // A buffer beyond the budget waits for others to come back (one alone always
                // goes: the maximum payload is below the budget).
                if data > 0 && self.inflight_bytes > 0 && self.inflight_bytes + data > self.max_inflight_bytes {
                    return false;
                }
                self.rx_start += hdr_len;
                self.start(&r);
                true
            }
        }
    }

    /// Answers a rejected request and arranges for its payload to be dropped.
    fn reject(&mut self, rj: &Rejection) {
        tracing::debug!(command = rj.command, errno = ?rj.errno, why = rj.why, "nbd: request rejected");
        let idx = self.take_slot(rj.cookie, rj.offset_bytes, 0);
        let s = &mut self.slots[idx as usize];
        let r = self.enc.reject(&mut s.reply, rj);
        let r = match r {
            // A message too long for the slot: the errno alone.
            Err(_) => self
                .enc
                .error(&mut s.reply, rj.cookie, rj.offset_bytes, rj.errno, cut(rj.why)),
            ok => ok,
        };
        self.finish(idx, r);
        if rj.discard_bytes > 0 {
            self.recv = Recv::Discard {
                left: u64::from(rj.discard_bytes),
            };
        }
    }

    /// Starts a valid request.
    fn start(&mut self, r: &Request) {
        match r.command {
            Command::Disc => self.stop_reading(Stop::Disc),
            Command::Read => {
                let idx = self.take_slot(r.cookie, r.offset_bytes, r.length_bytes as usize);
                self.prepare(idx, IoOp::Read, r.offset_bytes, r.length_bytes);
                self.submit(idx);
            }
            Command::Write => {
                let idx = self.take_slot(r.cookie, r.offset_bytes, r.length_bytes as usize);
                self.prepare(idx, IoOp::Write, r.offset_bytes, r.length_bytes);
                self.slots[idx as usize].fua = r.flags.fua() && self.export.flush;
                self.slots[idx as usize].state = SlotState::Receiving;
                self.recv = Recv::Payload { slot: idx, got: 0 };
            }
            Command::Flush => {
                let idx = self.take_slot(r.cookie, 0, 0);
                if self.export.flush {
                    self.prepare(idx, IoOp::Flush, 0, self.num_blocks << self.block_shift);
                    self.submit(idx);
                } else {
                    let s = &mut self.slots[idx as usize];
                    let res = self.enc.success(&mut s.reply, r.cookie, 0);
                    self.finish(idx, res);
                }
            }
            Command::Trim | Command::WriteZeroes => {
                let op = if r.command == Command::Trim {
                    IoOp::Unmap
                } else {
                    IoOp::WriteZeroes
                };
                let idx = self.take_slot(r.cookie, r.offset_bytes, 0);
                self.prepare(idx, op, r.offset_bytes, r.length_bytes);
                self.slots[idx as usize].fua = r.flags.fua() && self.export.flush;
                self.submit(idx);
            }
            Command::Cache => {
                let idx = self.take_slot(r.cookie, r.offset_bytes, 0);
                let s = &mut self.slots[idx as usize];
                let res = self.enc.success(&mut s.reply, r.cookie, r.offset_bytes);
                self.finish(idx, res);
            }
            Command::BlockStatus => {
                // Keel's bdevs cannot tell holes from data: one allocated extent (status 0,
                // always a safe answer) over the request.
                let idx = self.take_slot(r.cookie, r.offset_bytes, 0);
                let context = self.base_allocation.expect("the decoder checked the context");
                let e = Extent {
                    length_bytes: r.length_bytes,
                    flags: 0,
                };
                let s = &mut self.slots[idx as usize];
                let res = self
                    .enc
                    .block_status(&mut s.reply, r.cookie, r.offset_bytes, context, &[e], true);
                self.finish(idx, res);
            }
        }
    }

    // ---- send ------------------------------------------------------------------------------

    /// Sends queued replies with `writev` until the socket is full. Returns whether it sent.
    fn send(&mut self, stream: &mut Stream) -> bool {
        let mut busy = false;
        if self.broken {
            while let Some(idx) = self.sendq.pop_front() {
                self.release(idx);
                busy = true;
            }
            self.sent = 0;
            return busy;
        }
        if !self.preamble.is_empty() {
            match stream.write_vectored(&[IoSlice::new(&self.preamble)]) {
                Ok(n) if n == self.preamble.len() => self.preamble = Vec::new(),
                Ok(n) => {
                    self.preamble.drain(..n);
                    return true;
                }
                Err(e) if would_block(&e) => return false,
                Err(_) => {
                    self.socket_failed();
                    return true;
                }
            }
            busy = true;
        }
        while !self.sendq.is_empty() {
            let (n, wanted) = {
                let mut refs: ArrayVec<Ref<'_, [u8]>, MAX_IOV> = ArrayVec::new();
                let mut count = 0;
                let mut iovs = 0;
                for &idx in self.sendq.iter() {
                    let s = &self.slots[idx as usize];
                    let need = 1 + usize::from(s.send_data);
                    if iovs + need > MAX_IOV {
                        break;
                    }
                    if s.send_data {
                        refs.push(s.buf.as_ref().expect("a read's buffer").bytes());
                    }
                    iovs += need;
                    count += 1;
                }
                let mut iov: ArrayVec<IoSlice<'_>, MAX_IOV> = ArrayVec::new();
                let mut skip = self.sent;
                let mut wanted = 0;
                let mut data = refs.iter();
                for &idx in self.sendq.iter().take(count) {
                    let s = &self.slots[idx as usize];
                    let header = &s.reply[..s.reply_len];
                    if skip < header.len() {
                        iov.push(IoSlice::new(&header[skip..]));
                        wanted += header.len() - skip;
                        skip = 0;
                    } else {
                        skip -= header.len();
                    }
                    if s.send_data {
                        let d = &data.next().expect("one data window per read")[..s.data_len];
                        iov.push(IoSlice::new(&d[skip..]));
                        wanted += d.len() - skip;
                        skip = 0;
                    }
                }
                match stream.write_vectored(&iov) {
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
                let total = self.slots[idx as usize].reply_bytes();
                if done < total {
                    break;
                }
                done -= total;
                self.sendq.pop_front();
                self.release(idx);
            }
            self.sent = done;
            if n < wanted {
                break;
            }
        }
        busy
    }

    /// The socket failed: stop reading, drop the replies (now and to come).
    fn socket_failed(&mut self) {
        self.broken = true;
        self.stop_reading(Stop::Socket);
        while let Some(idx) = self.sendq.pop_front() {
            self.release(idx);
        }
        self.sent = 0;
    }
}

/// The reply's errno (and message) for a request the bdev failed.
fn errno_of(status: IoStatus) -> (Errno, &'static str) {
    match status {
        IoStatus::ReadOnly => (Errno::Perm, "the export is read-only"),
        IoStatus::InvalidRange => (Errno::Inval, "range outside the device"),
        IoStatus::Removed => (Errno::Shutdown, "the device is being removed"),
        IoStatus::Unsupported => (Errno::Inval, "the device does not support this command"),
        IoStatus::Aborted => (Errno::Io, "the request was aborted"),
        _ => (Errno::Io, "I/O error"),
    }
}

/// `why`, cut to fit a slot's reply area (at a character boundary).
fn cut(why: &str) -> &str {
    if why.len() <= MAX_MESSAGE {
        return why;
    }
    let mut end = MAX_MESSAGE;
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    &why[..end]
}
