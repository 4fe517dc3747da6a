//! A small NVMe/TCP host for tests (feature `testing`): one TCP connection, one command at a
//! time, built on [`keel_nvme_proto`]'s encoders and parser. It speaks the protocol as the
//! Linux host does (SGL data blocks in-capsule up to the queue's in-capsule size, transport
//! SGLs with R2T/H2CData above it, digests as negotiated) and lets tests send raw bytes.
//!
//! Owned by the test thread. The socket is non-blocking; whenever it would block the host calls
//! its idle hook (a test driving reactors in-process turns them there; one talking to a keel-tgt
//! process sleeps). After [`Host::new`] nothing allocates per command: PDUs are built and
//! received in preallocated buffers, read data lands in the caller's slice.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use keel_nvme_proto::cqe::Cqe;
use keel_nvme_proto::digest::Crc32c;
use keel_nvme_proto::nqn::NqnField;
use keel_nvme_proto::sqe::{
    Command, Connect, ConnectData, DataPointer, FabricsCommand, SglDescriptor, Sqe, CONNECT_DATA_LEN,
};
use keel_nvme_proto::tcp::{
    CapsuleCmd, Event, H2CData, IcReq, Limits, PduHeader, PduParser, Role, SessionParams, TermReq,
    ADMIN_IN_CAPSULE_BYTES,
};
use keel_nvme_proto::ProtoError;

/// What a receive produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A completion.
    Cqe(Cqe),
    /// The controller terminated the connection.
    Term(TermReq),
    /// The connection closed.
    Closed,
}

/// Host errors: the stream, or a PDU the parser refused.
#[derive(Debug)]
pub enum HostError {
    /// Socket error or timeout.
    Io(std::io::Error),
    /// A malformed controller PDU.
    Proto(ProtoError),
    /// The controller closed or terminated the connection.
    Closed(Received),
    /// The controller sent something out of sequence.
    Unexpected(&'static str),
}

impl From<std::io::Error> for HostError {
    fn from(e: std::io::Error) -> Self {
        HostError::Io(e)
    }
}

/// See the module doc.
pub struct Host {
    s: TcpStream,
    idle: Box<dyn FnMut()>,
    parser: PduParser,
    params: SessionParams,
    /// In-capsule data limit of this queue.
    pub in_capsule_bytes: u32,
    /// MAXH2CDATA from ICResp.
    pub maxh2cdata: u32,
    /// CNTLID from Connect.
    pub cntlid: u16,
    /// Connect asks for SQ flow control to be disabled (CATTR bit 2), which lets the
    /// controller end a read with a C2HData carrying SUCCESS instead of a CapsuleResp.
    pub disable_sq_flow_control: bool,
    /// Reads that ended with C2HData SUCCESS (no CapsuleResp).
    pub success_flag_reads: u64,
    next_cid: u16,
    out: Vec<u8>,
    pdu: Vec<u8>,
    timeout: Duration,
}

impl Host {
    /// Connects to `addr` and runs ICReq/ICResp with the digests asked for. `idle` runs whenever
    /// the socket would block.
    pub fn new(
        addr: SocketAddr,
        header_digest: bool,
        data_digest: bool,
        idle: Box<dyn FnMut()>,
    ) -> Result<Host, HostError> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        let mut h = Host {
            s,
            idle,
            parser: PduParser::new(Role::Host, Limits::NONE),
            params: SessionParams::INITIAL,
            in_capsule_bytes: ADMIN_IN_CAPSULE_BYTES,
            maxh2cdata: 0,
            cntlid: 0xFFFF,
            disable_sq_flow_control: false,
            success_flag_reads: 0,
            next_cid: 1,
            out: Vec::with_capacity(1 << 20),
            pdu: Vec::with_capacity(4 << 20),
            timeout: Duration::from_secs(20),
        };
        let req = PduHeader::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            header_digest,
            data_digest,
            maxr2t_0based: 0,
        });
        let mut b = [0u8; 128];
        req.encode_pdu(&[], &SessionParams::INITIAL, &mut b)
            .map_err(HostError::Proto)?;
        h.send_raw(&b)?;
        h.read_pdu()?;
        let mut resp = None;
        h.feed_pdu(|ev| {
            if let Event::Header {
                pdu: PduHeader::IcResp(r),
                ..
            } = ev
            {
                resp = Some(r);
            }
        })?;
        let r = resp.ok_or(HostError::Unexpected("no ICResp"))?;
        h.maxh2cdata = r.maxh2cdata;
        h.params = SessionParams {
            header_digest: r.header_digest,
            data_digest: r.data_digest,
            hpda: 0,
            cpda: r.cpda,
            c2h_success_allowed: true,
        };
        h.parser.set_session(h.params);
        Ok(h)
    }

    /// Sets how long a receive may wait (default 20 s).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// Writes `bytes` as they are (malformed PDUs for tests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), HostError> {
        let mut at = 0;
        let start = Instant::now();
        while at < bytes.len() {
            match self.s.write(&bytes[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if start.elapsed() > self.timeout {
                        return Err(HostError::Io(ErrorKind::TimedOut.into()));
                    }
                    (self.idle)()
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn read_exact(&mut self, from: usize, to: usize) -> Result<bool, HostError> {
        let start = Instant::now();
        let mut at = from;
        while at < to {
            match self.s.read(&mut self.pdu[at..to]) {
                Ok(0) => return Ok(false),
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if start.elapsed() > self.timeout {
                        return Err(HostError::Io(ErrorKind::TimedOut.into()));
                    }
                    (self.idle)()
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Reads one whole PDU into `self.pdu`.
    fn read_pdu(&mut self) -> Result<(), HostError> {
        self.pdu.resize(8, 0);
        if !self.read_exact(0, 8)? {
            return Err(HostError::Closed(Received::Closed));
        }
        let plen = u32::from_le_bytes(self.pdu[4..8].try_into().expect("4 bytes")) as usize;
        if !(8..=(16 << 20)).contains(&plen) {
            return Err(HostError::Unexpected("PLEN out of range"));
        }
        self.pdu.resize(plen, 0);
        if !self.read_exact(8, plen)? {
            return Err(HostError::Closed(Received::Closed));
        }
        Ok(())
    }

    fn feed_pdu(&mut self, mut on: impl FnMut(Event<'_>)) -> Result<(), HostError> {
        let mut pos = 0;
        loop {
            let (used, ev) = self.parser.feed(&self.pdu[pos..]).map_err(HostError::Proto)?;
            pos += used;
            match ev {
                Some(ev) => {
                    let end = matches!(ev, Event::End { .. });
                    on(ev);
                    if end {
                        return Ok(());
                    }
                }
                None => return Ok(()),
            }
        }
    }

    fn send_pdu(&mut self, pdu: PduHeader, data: &[u8]) -> Result<(), HostError> {
        let mut out = std::mem::take(&mut self.out);
        out.resize(256, 0);
        let layout = pdu
            .encode_header(data.len() as u32, &self.params, &mut out)
            .map_err(HostError::Proto)?;
        out.truncate(layout.header_len);
        out.extend_from_slice(data);
        if layout.data_digest {
            let mut c = Crc32c::new();
            c.update(data);
            out.extend_from_slice(&c.to_wire());
        }
        let r = self.send_raw(&out);
        self.out = out;
        r
    }

    /// Sends `sqe` (its CID replaced by the next one) with `write` data — in-capsule when it
    /// fits, else by R2T — and collects a read's data into `read`; returns the completion. A
    /// C2HData with SUCCESS stands for a successful completion.
    pub fn exec(&mut self, mut sqe: Sqe, write: &[u8], read: &mut [u8]) -> Result<Cqe, HostError> {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1) & 0x0FFF;
        sqe.cid = cid;
        sqe.flags = (sqe.flags & 0x3F) | 0x40;
        let in_capsule = !write.is_empty() && write.len() as u32 <= self.in_capsule_bytes;
        let sgl = if in_capsule {
            SglDescriptor::in_capsule(write.len() as u32)
        } else if !write.is_empty() {
            SglDescriptor::transport(write.len() as u32)
        } else {
            SglDescriptor::transport(read.len() as u32)
        };
        sqe.dptr = sgl.to_bytes().map_err(HostError::Proto)?;
        self.send_pdu(
            PduHeader::CapsuleCmd(CapsuleCmd { sqe }),
            if in_capsule { write } else { &[] },
        )?;
        loop {
            match self.receive(read)? {
                Step::Cqe(c) => return Ok(c),
                Step::R2T { ttag, offset, len } => {
                    let end = (offset + len) as usize;
                    if end > write.len() {
                        return Err(HostError::Unexpected("R2T beyond the write"));
                    }
                    let mut at = offset as usize;
                    while at < end {
                        let n = (end - at).min(self.maxh2cdata.max(4096) as usize);
                        let last = at + n == end;
                        let h = PduHeader::H2CData(H2CData {
                            cccid: cid,
                            ttag,
                            datao: at as u32,
                            datal: n as u32,
                            last_pdu: last,
                        });
                        self.send_pdu(h, &write[at..at + n])?;
                        at += n;
                    }
                }
                Step::Success => {
                    self.success_flag_reads += 1;
                    return Ok(Cqe { cid, ..Cqe::default() });
                }
            }
        }
    }

    fn receive(&mut self, read: &mut [u8]) -> Result<Step, HostError> {
        self.read_pdu()?;
        let mut step = None;
        let mut term = None;
        let mut bad = None;
        let mut data_at = 0usize;
        let mut success = false;
        self.feed_pdu(|ev| match ev {
            Event::Header { pdu, .. } => match pdu {
                PduHeader::CapsuleResp(r) => step = Some(Step::Cqe(r.cqe)),
                PduHeader::R2T(r) => {
                    step = Some(Step::R2T {
                        ttag: r.ttag,
                        offset: r.r2to,
                        len: r.r2tl,
                    })
                }
                PduHeader::C2HData(d) => {
                    data_at = d.datao as usize;
                    success = d.success;
                }
                PduHeader::C2HTermReq(t) => term = Some(t),
                _ => bad = Some("unexpected PDU"),
            },
            Event::Data { offset, bytes } => {
                if term.is_none() {
                    let at = data_at + offset as usize;
                    if at + bytes.len() <= read.len() {
                        read[at..at + bytes.len()].copy_from_slice(bytes);
                    } else {
                        bad = Some("C2HData beyond the read");
                    }
                }
            }
            Event::End { data_digest } => {
                if data_digest.is_err() {
                    bad = Some("data digest mismatch");
                }
            }
        })?;
        if let Some(t) = term {
            return Err(HostError::Closed(Received::Term(t)));
        }
        if let Some(b) = bad {
            return Err(HostError::Unexpected(b));
        }
        match step {
            Some(s) => Ok(s),
            None if success => Ok(Step::Success),
            None => self.receive(read),
        }
    }

    /// Waits for a completion without sending anything (an AER's).
    pub fn wait_cqe(&mut self) -> Result<Cqe, HostError> {
        match self.receive(&mut [])? {
            Step::Cqe(c) => Ok(c),
            _ => Err(HostError::Unexpected("not a completion")),
        }
    }

    /// Sends `sqe` and returns without waiting (an AER).
    pub fn post(&mut self, sqe: Sqe) -> Result<u16, HostError> {
        self.post_read(sqe, 0)
    }

    /// Sends `sqe` for a read of `read_len` bytes and returns without waiting for the data
    /// (a host that does not read its socket).
    pub fn post_read(&mut self, mut sqe: Sqe, read_len: u32) -> Result<u16, HostError> {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1) & 0x0FFF;
        sqe.cid = cid;
        sqe.flags = (sqe.flags & 0x3F) | 0x40;
        sqe.dptr = SglDescriptor::transport(read_len)
            .to_bytes()
            .map_err(HostError::Proto)?;
        self.send_pdu(PduHeader::CapsuleCmd(CapsuleCmd { sqe }), &[])?;
        Ok(cid)
    }

    /// Fabrics Connect: queue `qid` of subsystem `subnqn` as host `hostnqn` (`cntlid` 0xFFFF
    /// for the admin queue). On success records the CNTLID and, for an I/O queue, the
    /// in-capsule size `io_in_capsule_bytes`.
    #[allow(clippy::too_many_arguments)]
    pub fn connect(
        &mut self,
        qid: u16,
        subnqn: &str,
        hostnqn: &str,
        cntlid: u16,
        kato_ms: u32,
        sqsize_0based: u16,
        io_in_capsule_bytes: u32,
    ) -> Result<Cqe, HostError> {
        let mut data = [0u8; CONNECT_DATA_LEN];
        ConnectData {
            hostid: [7; 16],
            cntlid,
            subnqn: NqnField::new_unchecked_format(subnqn.as_bytes()).map_err(HostError::Proto)?,
            hostnqn: NqnField::new_unchecked_format(hostnqn.as_bytes()).map_err(HostError::Proto)?,
        }
        .encode(&mut data)
        .map_err(HostError::Proto)?;
        let cmd = Command::Fabrics(FabricsCommand::Connect(Connect {
            recfmt: 0,
            qid,
            sqsize_0based,
            cattr: if self.disable_sq_flow_control {
                Connect::CATTR_DISABLE_SQ_FLOW_CONTROL
            } else {
                0
            },
            kato_ms,
        }));
        let sqe = cmd
            .to_sqe(0, DataPointer::Sgl(SglDescriptor::in_capsule(CONNECT_DATA_LEN as u32)))
            .map_err(HostError::Proto)?;
        let c = self.exec(sqe, &data, &mut [])?;
        if c.status.is_success() {
            self.cntlid = c.dw0 as u16;
            if qid != 0 {
                self.in_capsule_bytes = io_in_capsule_bytes;
            }
        }
        Ok(c)
    }

    /// Runs a typed command (no data or a read of `read.len()` bytes, or a write of `write`).
    pub fn command(&mut self, cmd: &Command, write: &[u8], read: &mut [u8]) -> Result<Cqe, HostError> {
        let sqe = cmd.to_sqe(0, DataPointer::NONE_TCP).map_err(HostError::Proto)?;
        self.exec(sqe, write, read)
    }

    /// Whether the controller closed the connection within `wait` (reading and dropping
    /// anything it still sends); a termination request it sent is returned.
    pub fn closed_within(&mut self, wait: Duration) -> Option<Received> {
        let old = self.timeout;
        self.timeout = wait;
        let r = loop {
            match self.read_pdu() {
                Ok(()) => {
                    if self.pdu.first() == Some(&0x03) {
                        let fes = u16::from_le_bytes([self.pdu[8], self.pdu[9]]);
                        let fei = u32::from_le_bytes([self.pdu[10], self.pdu[11], self.pdu[12], self.pdu[13]]);
                        break Some(Received::Term(TermReq {
                            fes: keel_nvme_proto::tcp::Fes(fes),
                            fei,
                        }));
                    }
                }
                Err(HostError::Closed(r)) => break Some(r),
                Err(HostError::Io(e)) if e.kind() != ErrorKind::TimedOut => break Some(Received::Closed),
                Err(_) => break None,
            }
        };
        self.timeout = old;
        r
    }
}

enum Step {
    Cqe(Cqe),
    R2T { ttag: u16, offset: u32, len: u32 },
    Success,
}
