//! One NVMe/TCP connection as the host sees it: the socket, the receive parser, a receive
//! buffer and a fixed-size send buffer, shared by the admin queue and the I/O qpairs.
//!
//! The socket is non-blocking from the start. The handshake ([`Conn::connect`]) and the
//! one-command-at-a-time helper [`Conn::exec_blocking`] wait by sleeping briefly between
//! attempts, up to a deadline: they run on the helper threads that connect queues, never on a
//! reactor. On a reactor the owner calls [`Conn::recv`] and [`Conn::flush`] from its poller.
//!
//! Buffers: both are allocated in `connect` and never grow. [`Conn::push`] encodes a PDU at the
//! end of the send buffer (compacting it first if needed) or answers `false` when it does not
//! fit yet — the caller keeps the work for the next poll. Nothing here allocates per PDU.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use keel_nvme_proto::cqe::Cqe;
use keel_nvme_proto::digest::Crc32c;
use keel_nvme_proto::sqe::{SglDescriptor, Sqe};
use keel_nvme_proto::tcp::{CapsuleCmd, Event, IcReq, Limits, PduHeader, PduParser, Role, SessionParams};

use crate::NvmeError;

/// Bytes one receive call may read.
pub(crate) const RX_BYTES: usize = 64 << 10;
/// How long a helper thread sleeps when the socket would block.
const WAIT: Duration = Duration::from_micros(50);

/// See the module doc. Owned by one helper thread during setup, then by one poller.
pub(crate) struct Conn {
    stream: TcpStream,
    parser: PduParser,
    params: SessionParams,
    rx: Box<[u8]>,
    tx: Box<[u8]>,
    tx_start: usize,
    tx_end: usize,
    /// MAXH2CDATA the controller announced.
    pub(crate) maxh2cdata: u32,
}

impl Conn {
    /// Connects to `addr` and runs ICReq/ICResp asking for the digests given, all before
    /// `deadline`. `tx_bytes` is the send buffer's size. Blocking: helper threads only.
    pub(crate) fn connect(
        addr: SocketAddr,
        hdgst: bool,
        ddgst: bool,
        tx_bytes: usize,
        deadline: Instant,
    ) -> Result<Conn, NvmeError> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let stream = TcpStream::connect_timeout(&addr, left).map_err(NvmeError::io("connect"))?;
        stream.set_nodelay(true).map_err(NvmeError::io("TCP_NODELAY"))?;
        stream.set_nonblocking(true).map_err(NvmeError::io("O_NONBLOCK"))?;
        let mut c = Conn {
            stream,
            parser: PduParser::new(Role::Host, Limits::NONE),
            params: SessionParams::INITIAL,
            rx: vec![0u8; RX_BYTES].into_boxed_slice(),
            tx: vec![0u8; tx_bytes].into_boxed_slice(),
            tx_start: 0,
            tx_end: 0,
            maxh2cdata: 0,
        };
        let req = PduHeader::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            header_digest: hdgst,
            data_digest: ddgst,
            maxr2t_0based: 0,
        });
        c.push(&req, 0, |_| {})?;
        let mut resp = None;
        while resp.is_none() {
            c.flush()?;
            let got = c.recv(1, |ev| {
                if let Event::Header {
                    pdu: PduHeader::IcResp(r),
                    ..
                } = ev
                {
                    resp = Some(r);
                } else if let Event::Header {
                    pdu: PduHeader::C2HTermReq(t),
                    ..
                } = ev
                {
                    return Err(NvmeError::Closed(format!(" (termination request, FES {:#x})", t.fes.0)));
                }
                Ok(())
            })?;
            if !got {
                wait(deadline, "ICResp")?;
            }
        }
        let r = resp.expect("loop ends with a response");
        if r.maxh2cdata < 4096 {
            return Err(NvmeError::Sequence("ICResp MAXH2CDATA below 4096"));
        }
        c.maxh2cdata = r.maxh2cdata;
        c.params = SessionParams {
            header_digest: r.header_digest,
            data_digest: r.data_digest,
            hpda: 0,
            cpda: r.cpda,
            c2h_success_allowed: false,
        };
        c.parser.set_session(c.params);
        Ok(c)
    }

    /// Appends a PDU: `hdr` with `data_len` data bytes that `fill` writes, and the data digest if
    /// negotiated. `Ok(false)`: no room now (nothing written).
    pub(crate) fn push(
        &mut self,
        hdr: &PduHeader,
        data_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<bool, NvmeError> {
        let layout = hdr.layout(data_len as u32, &self.params)?;
        let total = layout.plen as usize;
        if self.tx.len() - self.tx_end < total {
            self.compact();
            if self.tx.len() - self.tx_end < total {
                if total > self.tx.len() {
                    return Err(NvmeError::Sequence("PDU larger than the send buffer"));
                }
                return Ok(false);
            }
        }
        let at = self.tx_end;
        let layout = hdr.encode_header(data_len as u32, &self.params, &mut self.tx[at..])?;
        let d0 = at + layout.header_len;
        let data = &mut self.tx[d0..d0 + data_len];
        fill(data);
        if layout.data_digest {
            let mut c = Crc32c::new();
            c.update(data);
            self.tx[d0 + data_len..d0 + data_len + 4].copy_from_slice(&c.to_wire());
        }
        self.tx_end = at + total;
        Ok(true)
    }

    fn compact(&mut self) {
        if self.tx_start > 0 {
            self.tx.copy_within(self.tx_start..self.tx_end, 0);
            self.tx_end -= self.tx_start;
            self.tx_start = 0;
        }
    }

    /// Writes what the send buffer holds, as far as the socket takes it (one `write` for all
    /// the PDUs queued since the last flush). `Ok(true)` if bytes went out.
    pub(crate) fn flush(&mut self) -> Result<bool, NvmeError> {
        let mut did = false;
        while self.tx_start < self.tx_end {
            match self.stream.write(&self.tx[self.tx_start..self.tx_end]) {
                Ok(0) => return Err(NvmeError::Closed(String::new())),
                Ok(n) => {
                    self.tx_start += n;
                    did = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(NvmeError::Io {
                        what: "send",
                        source: e,
                    })
                }
            }
        }
        if self.tx_start == self.tx_end {
            self.tx_start = 0;
            self.tx_end = 0;
        }
        Ok(did)
    }

    /// Reads up to `max_reads` times what the socket has and hands every parser event to `on`.
    /// `Ok(true)` if bytes arrived. A parser error, a closed socket or an error from `on` ends
    /// the connection (the caller drops it).
    pub(crate) fn recv(
        &mut self,
        max_reads: usize,
        mut on: impl FnMut(Event<'_>) -> Result<(), NvmeError>,
    ) -> Result<bool, NvmeError> {
        let mut did = false;
        for _ in 0..max_reads {
            let n = match self.stream.read(&mut self.rx) {
                Ok(0) => return Err(NvmeError::Closed(String::new())),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(NvmeError::Io {
                        what: "receive",
                        source: e,
                    })
                }
            };
            did = true;
            let mut pos = 0;
            loop {
                let (used, ev) = self.parser.feed(&self.rx[pos..n])?;
                pos += used;
                match ev {
                    Some(ev) => on(ev)?,
                    None => break,
                }
            }
            if n < self.rx.len() {
                break;
            }
        }
        Ok(did)
    }

    /// Sends `sqe` (CID `cid`) with in-capsule data `write` and waits for its completion,
    /// collecting C2HData into `read`. One command at a time, before `deadline`; helper
    /// threads only (setup: Connect, properties, Identify, Set Features).
    pub(crate) fn exec_blocking(
        &mut self,
        mut sqe: Sqe,
        cid: u16,
        write: &[u8],
        read: &mut [u8],
        what: &'static str,
        deadline: Instant,
    ) -> Result<Cqe, NvmeError> {
        sqe.cid = cid;
        sqe.flags = (sqe.flags & 0x3F) | 0x40;
        let sgl = if write.is_empty() {
            SglDescriptor::transport(read.len() as u32)
        } else {
            SglDescriptor::in_capsule(write.len() as u32)
        };
        sqe.dptr = sgl.to_bytes()?;
        let hdr = PduHeader::CapsuleCmd(CapsuleCmd { sqe });
        if !self.push(&hdr, write.len(), |d| d.copy_from_slice(write))? {
            return Err(NvmeError::Sequence("setup command does not fit the send buffer"));
        }
        let mut cqe = None;
        let mut data_at = 0usize;
        loop {
            self.flush()?;
            let got = self.recv(1, |ev| {
                match ev {
                    Event::Header { pdu, .. } => match pdu {
                        PduHeader::CapsuleResp(r) if r.cqe.cid == cid => cqe = Some(r.cqe),
                        PduHeader::CapsuleResp(_) => {}
                        PduHeader::C2HData(d) if d.cccid == cid => data_at = d.datao as usize,
                        PduHeader::C2HTermReq(t) => {
                            return Err(NvmeError::Closed(format!(" (termination request, FES {:#x})", t.fes.0)))
                        }
                        _ => return Err(NvmeError::Sequence("unexpected PDU during setup")),
                    },
                    Event::Data { offset, bytes } => {
                        let at = data_at + offset as usize;
                        let end = at + bytes.len();
                        if end > read.len() {
                            return Err(NvmeError::Sequence("C2HData beyond the command's buffer"));
                        }
                        read[at..end].copy_from_slice(bytes);
                    }
                    Event::End { data_digest } => data_digest?,
                }
                Ok(())
            })?;
            if let Some(c) = cqe {
                return Ok(c);
            }
            if !got {
                wait(deadline, what)?;
            }
        }
    }
}

/// Sleeps briefly, or fails with `Timeout(what)` past `deadline`.
pub(crate) fn wait(deadline: Instant, what: &'static str) -> Result<(), NvmeError> {
    if Instant::now() >= deadline {
        return Err(NvmeError::Timeout(what));
    }
    std::thread::sleep(WAIT);
    Ok(())
}
