//! The incremental NVMe/TCP receive parser.
//!
//! The design and the `feed` contract are documented on [`PduParser`].

use super::pdu::PduHeader;
use super::{
    PduType, SessionParams, COMMON_HEADER_LEN, DIGEST_LEN, FLAG_DDGSTF, FLAG_HDGSTF, FLAG_LAST_PDU, FLAG_SUCCESS,
    IC_LEN, TERM_REQ_MAX_DATA, TERM_REQ_MAX_PLEN,
};
use crate::digest::{crc32c, Crc32c};
use crate::{Expected, ProtoError};

/// Which end of the connection the parser serves: a controller receives host-to-controller
/// PDUs, a host controller-to-host PDUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The target side: receives ICReq, CapsuleCmd, H2CData, H2CTermReq.
    Controller,
    /// The initiator side: receives ICResp, CapsuleResp, C2HData, R2T, C2HTermReq.
    Host,
}

/// Data limits the receiver enforces; PDUs over them are fatal (FES 05h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most in-capsule data bytes in one CapsuleCmd (the queue's in-capsule size).
    pub max_capsule_data_bytes: u32,
    /// Most data bytes in one H2CData (the MAXH2CDATA the controller announced) or C2HData.
    pub max_data_pdu_bytes: u32,
}

impl Limits {
    /// No limits beyond the format's own.
    pub const NONE: Limits = Limits {
        max_capsule_data_bytes: u32::MAX,
        max_data_pdu_bytes: u32::MAX,
    };
}

/// What one [`PduParser::feed`] call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A PDU header, validated; `data_len` bytes of data follow (0: `End` comes next).
    Header {
        /// The typed header.
        pdu: PduHeader,
        /// Data bytes the PDU carries (in-capsule data, DATAL, or the offending header of a
        /// termination request).
        data_len: u32,
    },
    /// A chunk of the PDU's data, borrowed from the input passed to `feed`.
    Data {
        /// Offset of `bytes` within this PDU's data.
        offset: u32,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// The PDU is complete.
    End {
        /// `Err(ProtoError::DataDigest)` if the data digest did not match (the command that owns
        /// the data fails; the stream goes on).
        data_digest: Result<(), ProtoError>,
    },
}

/// The validated common header of the PDU being received.
#[derive(Debug, Clone, Copy)]
struct Current {
    pdu_type: PduType,
    flags: u8,
    header_digest: bool,
    /// Bytes from the PDU start to the data (or to the end of the header digest).
    region: usize,
    data_len: u32,
    data_digest: bool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Header,
    Data { offset: u32, remaining: u32 },
    Digest,
    End { data_digest: Result<(), ProtoError> },
    Failed(ProtoError),
}

/// A qpair owns one [`PduParser`] for its connection's receive direction, on the reactor that
/// polls the socket. Bytes arrive in arbitrary pieces; the parser is a state machine over the
/// PDU's parts, and each [`PduParser::feed`] call advances it over a prefix of the input:
///
/// ```text
/// Header ──(8 bytes: common header validated)──(HLEN [+HDGST] [+PAD] bytes: digest checked)──▶ Event::Header
///   │                                                                                            │
///   │        ┌────────────────────── data_len > 0 ────────────────────────────────────────────────┘
///   │        ▼
///   │      Data ──▶ Event::Data { offset, bytes } (bytes borrowed from the input, as many calls as it takes)
///   │        │
///   │        ▼ (if DDGSTF) Digest: 4 bytes, compared with the running CRC32C
///   │        ▼
///   └──── End ──▶ Event::End { data_digest }  ──▶ back to Header for the next PDU
/// ```
///
/// The contract of `feed(input) -> Ok((consumed, event))`: the parser consumed `input[..consumed]`;
/// if `event` is `None` it consumed all of `input` and needs more bytes; otherwise the caller
/// handles the event and calls again with `input[consumed..]` (possibly empty: `End` can follow
/// `Data` without further input). Every PDU yields exactly one `Header` and one `End`.
///
/// Validation follows the order of the header's fields, so the first bad field is the one
/// reported (type and direction, then flags including the digest flags the session requires,
/// HLEN, PDO against the data alignment, PLEN and the data limits; then the PDU-specific fields
/// and the header digest). Any such error is fatal: the parser keeps returning it, and
/// [`crate::ProtoError::fatal_error`] gives the termination request to send with
/// [`PduParser::header_bytes`] as its data. A data digest mismatch is not fatal: the PDU was
/// consumed whole, `End` reports the mismatch and parsing goes on.
///
/// The handshake: a parser made with [`PduParser::new`] accepts only the handshake PDU of its
/// direction (or a termination request) first; once it has delivered that PDU's `End`, the owner
/// calls [`PduParser::set_session`] with the negotiated parameters before feeding more bytes
/// (calling it in the middle of a PDU defers it to the next PDU boundary). A second handshake
/// PDU is a sequence error.
///
/// Memory: the header bytes (at most PDO ≤ 255) live in a fixed array inside the parser; data is
/// never copied. Nothing allocates.
///
/// # Example
/// A controller-side receive loop (the socket read is simulated by slicing a buffer):
/// ```
/// use keel_nvme_proto::tcp::{Event, IcReq, Limits, PduHeader, PduParser, Role, SessionParams};
///
/// let mut wire = [0u8; 128];
/// let icreq = PduHeader::IcReq(IcReq::default());
/// icreq.encode_pdu(&[], &SessionParams::INITIAL, &mut wire).unwrap();
///
/// let mut parser = PduParser::new(Role::Controller, Limits::NONE);
/// for read in wire.chunks(50) {
///     let mut rest = read;
///     while let (used, Some(event)) = parser.feed(rest).unwrap() {
///         rest = &rest[used..];
///         match event {
///             Event::Header { pdu, .. } => assert_eq!(pdu, icreq),
///             Event::Data { .. } => {}
///             // The handshake is done: answer ICResp, then switch the parser to the session.
///             Event::End { .. } => parser.set_session(SessionParams::INITIAL),
///         }
///     }
/// }
/// assert!(parser.at_boundary());
/// ```
#[derive(Debug, Clone)]
pub struct PduParser {
    role: Role,
    limits: Limits,
    params: SessionParams,
    pending: Option<SessionParams>,
    awaiting_handshake: bool,
    hdr: [u8; 256],
    have: usize,
    need: usize,
    current: Option<Current>,
    state: State,
    crc: Crc32c,
    digest: [u8; DIGEST_LEN],
    digest_have: usize,
}

fn pdu_err(t: Option<PduType>, field: &'static str, offset: usize, expected: Expected, found: u64) -> ProtoError {
    ProtoError::Pdu {
        pdu: t.map_or("PDU", PduType::name),
        field,
        offset,
        expected,
        found,
    }
}

impl PduParser {
    /// A parser for a new connection: the first PDU must be the handshake (ICReq for a
    /// controller, ICResp for a host).
    pub fn new(role: Role, limits: Limits) -> Self {
        PduParser {
            role,
            limits,
            params: SessionParams::INITIAL,
            pending: None,
            awaiting_handshake: true,
            hdr: [0; 256],
            have: 0,
            need: COMMON_HEADER_LEN,
            current: None,
            state: State::Header,
            crc: Crc32c::new(),
            digest: [0; DIGEST_LEN],
            digest_have: 0,
        }
    }

    /// A parser for a connection whose handshake is already done, with `params`.
    pub fn established(role: Role, limits: Limits, params: SessionParams) -> Self {
        PduParser {
            params,
            awaiting_handshake: false,
            ..Self::new(role, limits)
        }
    }

    /// Sets the negotiated session parameters (after the handshake; or new limits of the same
    /// session). Takes effect at once between PDUs, else at the next PDU boundary.
    pub fn set_session(&mut self, params: SessionParams) {
        if self.at_boundary() {
            self.params = params;
        } else {
            self.pending = Some(params);
        }
    }

    /// Replaces the data limits (e.g. once the queue id, and so the in-capsule size, is known);
    /// they apply from the next common header on.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The session parameters in force.
    pub fn session(&self) -> &SessionParams {
        &self.params
    }

    /// True between PDUs (no byte of the next PDU consumed yet).
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header) && self.have == 0
    }

    /// How many more bytes the parser takes before its next event: the rest of the header, of
    /// the data, or of the digest (0 when an event is ready or the parser failed). Lets a qpair
    /// receive data straight into its final buffer.
    pub fn bytes_wanted(&self) -> usize {
        match self.state {
            State::Header => self.need - self.have,
            State::Data { remaining, .. } => remaining as usize,
            State::Digest => DIGEST_LEN - self.digest_have,
            State::End { .. } | State::Failed(_) => 0,
        }
    }

    /// The header bytes of the current (or failed) PDU received so far, at most 128: the data of
    /// the termination request that reports an error in it.
    pub fn header_bytes(&self) -> &[u8] {
        &self.hdr[..self.have.min(TERM_REQ_MAX_DATA)]
    }

    fn fail<T>(&mut self, e: ProtoError) -> Result<T, ProtoError> {
        self.state = State::Failed(e);
        Err(e)
    }

    /// Consumes a prefix of `input` and reports at most one event; see the module doc for the
    /// contract. `Err` is a fatal stream error (repeated by every later call).
    pub fn feed<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<Event<'a>>), ProtoError> {
        let mut used = 0;
        loop {
            match self.state {
                State::Failed(e) => return Err(e),
                State::Header => {
                    let rest = input.get(used..).unwrap_or_default();
                    let take = (self.need - self.have).min(rest.len());
                    self.hdr[self.have..self.have + take].copy_from_slice(&rest[..take]);
                    self.have += take;
                    used += take;
                    if self.have < self.need {
                        return Ok((used, None));
                    }
                    match self.current {
                        None => match self.validate_common() {
                            Ok(cur) => {
                                self.need = cur.region;
                                self.current = Some(cur);
                            }
                            Err(e) => return self.fail(e),
                        },
                        Some(cur) => match self.finish_header(cur) {
                            Ok(ev) => return Ok((used, Some(ev))),
                            Err(e) => return self.fail(e),
                        },
                    }
                }
                State::Data { offset, remaining } => {
                    let rest = input.get(used..).unwrap_or_default();
                    let take = (remaining as usize).min(rest.len());
                    if take == 0 {
                        return Ok((used, None));
                    }
                    let bytes = &rest[..take];
                    let digest = self.current.is_some_and(|c| c.data_digest);
                    if digest {
                        self.crc.update(bytes);
                    }
                    let remaining = remaining - take as u32;
                    self.state = if remaining > 0 {
                        State::Data {
                            offset: offset + take as u32,
                            remaining,
                        }
                    } else if digest {
                        State::Digest
                    } else {
                        State::End { data_digest: Ok(()) }
                    };
                    return Ok((used + take, Some(Event::Data { offset, bytes })));
                }
                State::Digest => {
                    let rest = input.get(used..).unwrap_or_default();
                    let take = (DIGEST_LEN - self.digest_have).min(rest.len());
                    self.digest[self.digest_have..self.digest_have + take].copy_from_slice(&rest[..take]);
                    self.digest_have += take;
                    used += take;
                    if self.digest_have < DIGEST_LEN {
                        return Ok((used, None));
                    }
                    let received = u32::from_le_bytes(self.digest);
                    let computed = self.crc.value();
                    self.state = State::End {
                        data_digest: if received == computed {
                            Ok(())
                        } else {
                            Err(ProtoError::DataDigest { computed, received })
                        },
                    };
                }
                State::End { data_digest } => {
                    self.finish_pdu();
                    return Ok((used, Some(Event::End { data_digest })));
                }
            }
        }
    }

    /// Resets for the next PDU.
    fn finish_pdu(&mut self) {
        if self
            .current
            .is_some_and(|c| matches!(c.pdu_type, PduType::IcReq | PduType::IcResp))
        {
            self.awaiting_handshake = false;
        }
        self.have = 0;
        self.need = COMMON_HEADER_LEN;
        self.current = None;
        self.digest_have = 0;
        self.crc = Crc32c::new();
        self.state = State::Header;
        if let Some(p) = self.pending.take() {
            self.params = p;
        }
    }

    /// Checks the 8-byte common header in `hdr`, field by field in offset order.
    fn validate_common(&self) -> Result<Current, ProtoError> {
        let [ty, flags, hlen, pdo, p0, p1, p2, p3, ..] = self.hdr;
        let plen = u32::from_le_bytes([p0, p1, p2, p3]);
        let (hlen, pdo) = (usize::from(hlen), usize::from(pdo));

        // PDU-Type (0): known, of our receive direction, allowed in this phase.
        let incoming = match self.role {
            Role::Controller => "a host-to-controller PDU type (00h, 02h, 04h, 06h)",
            Role::Host => "a controller-to-host PDU type (01h, 03h, 05h, 07h, 09h)",
        };
        let t = PduType::from_u8(ty).ok_or(pdu_err(None, "PDU-Type", 0, Expected::Text(incoming), u64::from(ty)))?;
        if t.to_controller() != (self.role == Role::Controller) {
            return Err(pdu_err(Some(t), "PDU-Type", 0, Expected::Text(incoming), u64::from(ty)));
        }
        let handshake = matches!(t, PduType::IcReq | PduType::IcResp);
        let term = matches!(t, PduType::H2CTermReq | PduType::C2HTermReq);
        if self.awaiting_handshake && !handshake && !term {
            let expected = if self.role == Role::Controller {
                "ICReq first"
            } else {
                "ICResp first"
            };
            return Err(ProtoError::Sequence {
                expected,
                found: t.name(),
            });
        }
        if !self.awaiting_handshake && handshake {
            return Err(ProtoError::Sequence {
                expected: "no second connection handshake",
                found: t.name(),
            });
        }

        // FLAGS (1): only this type's bits; HDGSTF exactly when header digests are on;
        // SUCCESS only with LAST_PDU and only when the session allows it.
        let flags_err =
            |expected: &'static str| pdu_err(Some(t), "FLAGS", 1, Expected::Text(expected), u64::from(flags));
        if flags & !t.valid_flags() != 0 {
            return Err(flags_err("only the flags defined for this PDU type"));
        }
        let header_digest = self.params.header_digest && t.header_digest_allowed();
        if (flags & FLAG_HDGSTF != 0) != header_digest {
            return Err(flags_err(if header_digest {
                "HDGSTF set: header digests were negotiated"
            } else {
                "HDGSTF clear: header digests were not negotiated"
            }));
        }
        if t == PduType::C2HData && flags & FLAG_SUCCESS != 0 {
            if flags & FLAG_LAST_PDU == 0 {
                return Err(flags_err("SUCCESS only together with LAST_PDU"));
            }
            if !self.params.c2h_success_allowed {
                return Err(flags_err("no SUCCESS while SQ flow control is enabled"));
            }
        }

        // HLEN (2): fixed per type.
        if hlen != t.hlen() {
            return Err(pdu_err(
                Some(t),
                "HLEN",
                2,
                Expected::Exactly(t.hlen() as u64),
                hlen as u64,
            ));
        }
        let after_header = hlen + if header_digest { DIGEST_LEN } else { 0 };
        let plen_err = |expected| pdu_err(Some(t), "PLEN", 4, expected, u64::from(plen));
        let pdo_err = |expected| pdu_err(Some(t), "PDO", 3, expected, pdo as u64);

        // PDO (3) and PLEN (4), by the shape of the type.
        let (region, data_len, data_digest) = match t {
            PduType::IcReq | PduType::IcResp => {
                if pdo != 0 {
                    return Err(pdo_err(Expected::Exactly(0)));
                }
                if plen != IC_LEN as u32 {
                    return Err(plen_err(Expected::Exactly(IC_LEN as u64)));
                }
                (IC_LEN, 0, false)
            }
            PduType::H2CTermReq | PduType::C2HTermReq => {
                if pdo != 0 && pdo != hlen {
                    return Err(pdo_err(Expected::OneOf(&[0, 24])));
                }
                if !(hlen as u32..=TERM_REQ_MAX_PLEN).contains(&plen) {
                    return Err(ProtoError::TermReqLength { plen });
                }
                (hlen, plen - hlen as u32, false)
            }
            PduType::CapsuleResp | PduType::R2T => {
                if pdo != 0 {
                    return Err(pdo_err(Expected::Exactly(0)));
                }
                if plen != after_header as u32 {
                    return Err(plen_err(Expected::Exactly(after_header as u64)));
                }
                (after_header, 0, false)
            }
            PduType::CapsuleCmd | PduType::H2CData | PduType::C2HData => {
                let data_pdu = t != PduType::CapsuleCmd;
                if plen as usize == after_header {
                    if data_pdu {
                        return Err(plen_err(Expected::AtLeast(after_header as u64 + 1)));
                    }
                    if pdo != 0 {
                        return Err(pdo_err(Expected::Exactly(0)));
                    }
                    if flags & FLAG_DDGSTF != 0 {
                        return Err(flags_err("DDGSTF only on a PDU that carries data"));
                    }
                    (after_header, 0, false)
                } else {
                    let align = self.params.data_alignment(t);
                    if pdo < after_header || !pdo.is_multiple_of(align) {
                        return Err(pdo_err(Expected::Text(
                            "at least HLEN plus the header digest, and a multiple of the data alignment",
                        )));
                    }
                    let data_digest = flags & FLAG_DDGSTF != 0;
                    if data_digest != self.params.data_digest {
                        return Err(flags_err(if self.params.data_digest {
                            "DDGSTF set: data digests were negotiated"
                        } else {
                            "DDGSTF clear: data digests were not negotiated"
                        }));
                    }
                    let tail = pdo + if data_digest { DIGEST_LEN } else { 0 };
                    if (plen as usize) <= tail {
                        return Err(plen_err(Expected::AtLeast(tail as u64 + 1)));
                    }
                    let data_len = plen - tail as u32;
                    let limit = if data_pdu {
                        self.limits.max_data_pdu_bytes
                    } else {
                        self.limits.max_capsule_data_bytes
                    };
                    if data_len > limit {
                        return Err(ProtoError::Limit {
                            pdu: t.name(),
                            field: "data length",
                            limit: u64::from(limit),
                            found: u64::from(data_len),
                        });
                    }
                    (pdo, data_len, data_digest)
                }
            }
        };
        Ok(Current {
            pdu_type: t,
            flags,
            header_digest,
            region,
            data_len,
            data_digest,
        })
    }

    /// The whole header region is in `hdr`: check the header digest, decode the PDU-specific
    /// header, and move on to the data.
    fn finish_header(&mut self, cur: Current) -> Result<Event<'static>, ProtoError> {
        let hlen = cur.pdu_type.hlen();
        if cur.header_digest {
            let computed = crc32c(&self.hdr[..hlen]);
            let d = &self.hdr[hlen..hlen + DIGEST_LEN];
            let received = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            if computed != received {
                return Err(ProtoError::HeaderDigest { computed, received });
            }
        }
        let pdu = PduHeader::decode_specific(cur.pdu_type, cur.flags, cur.data_len, &self.hdr[..hlen])?;
        self.crc = Crc32c::new();
        self.state = if cur.data_len > 0 {
            State::Data {
                offset: 0,
                remaining: cur.data_len,
            }
        } else {
            State::End { data_digest: Ok(()) }
        };
        Ok(Event::Header {
            pdu,
            data_len: cur.data_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cqe::{Cqe, Status};
    use crate::sqe::Sqe;
    use crate::tcp::{C2HData, CapsuleCmd, CapsuleResp, Fes, H2CData, IcReq, IcResp, TermReq, R2T};

    const PLAIN: SessionParams = SessionParams::INITIAL;
    const DIGESTS: SessionParams = SessionParams {
        header_digest: true,
        data_digest: true,
        ..SessionParams::INITIAL
    };

    /// Everything one PDU produced, gathered.
    #[derive(Debug, PartialEq)]
    struct Got {
        pdu: PduHeader,
        data: Vec<u8>,
        digest: Result<(), ProtoError>,
    }

    /// Feeds `stream` in pieces of `step` bytes and gathers the PDUs.
    fn parse(parser: &mut PduParser, stream: &[u8], step: usize) -> Result<Vec<Got>, ProtoError> {
        let mut out = Vec::new();
        let mut cur: Option<(PduHeader, Vec<u8>)> = None;
        for piece in stream.chunks(step.max(1)) {
            let mut rest = piece;
            loop {
                let (used, ev) = parser.feed(rest)?;
                rest = &rest[used..];
                match ev {
                    None => {
                        assert!(rest.is_empty());
                        break;
                    }
                    Some(Event::Header { pdu, .. }) => {
                        assert!(cur.is_none());
                        cur = Some((pdu, Vec::new()));
                    }
                    Some(Event::Data { offset, bytes }) => {
                        let c = cur.as_mut().unwrap();
                        assert_eq!(offset as usize, c.1.len());
                        c.1.extend_from_slice(bytes);
                    }
                    Some(Event::End { data_digest }) => {
                        let (pdu, data) = cur.take().unwrap();
                        out.push(Got {
                            pdu,
                            data,
                            digest: data_digest,
                        });
                    }
                }
            }
        }
        assert!(cur.is_none(), "stream ended inside a PDU");
        Ok(out)
    }

    fn pdu(h: PduHeader, data: &[u8], params: &SessionParams) -> Vec<u8> {
        let mut out = vec![0u8; 512 + data.len()];
        let n = h.encode_pdu(data, params, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn icreq() -> PduHeader {
        PduHeader::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            header_digest: true,
            data_digest: true,
            maxr2t_0based: 0,
        })
    }

    #[test]
    fn handshake_then_session_in_every_split() {
        let write = Sqe::new(0x01, 0x1001);
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut stream = pdu(icreq(), &[], &PLAIN);
        stream.extend(pdu(PduHeader::CapsuleCmd(CapsuleCmd { sqe: write }), &data, &DIGESTS));
        stream.extend(pdu(
            PduHeader::CapsuleCmd(CapsuleCmd { sqe: Sqe::new(0x02, 7) }),
            &[],
            &DIGESTS,
        ));
        let h2c = H2CData {
            cccid: 7,
            ttag: 3,
            datao: 0,
            datal: 100,
            last_pdu: true,
        };
        stream.extend(pdu(PduHeader::H2CData(h2c), &data[..100], &DIGESTS));
        for step in [1, 2, 3, 7, 8, 64, 100, 4096, stream.len()] {
            let mut p = PduParser::new(Role::Controller, Limits::NONE);
            // The handshake alone first, then the session parameters, then the rest.
            let got = parse(&mut p, &stream[..128], step).unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].pdu, icreq());
            p.set_session(DIGESTS);
            let got = parse(&mut p, &stream[128..], step).unwrap();
            assert_eq!(got.len(), 3, "step {step}");
            assert_eq!(got[0].pdu, PduHeader::CapsuleCmd(CapsuleCmd { sqe: write }));
            assert_eq!(got[0].data, data);
            assert_eq!(got[0].digest, Ok(()));
            assert!(got[1].data.is_empty());
            assert_eq!(got[2].pdu, PduHeader::H2CData(h2c));
            assert_eq!(got[2].data, &data[..100]);
            assert!(p.at_boundary());
        }
    }

    #[test]
    fn host_side_pdus() {
        let resp = PduHeader::IcResp(IcResp {
            pfv: 0,
            cpda: 0,
            header_digest: false,
            data_digest: false,
            maxh2cdata: 131072,
        });
        let sq_off = SessionParams {
            c2h_success_allowed: true,
            ..PLAIN
        };
        let mut stream = pdu(resp, &[], &PLAIN);
        let r2t = PduHeader::R2T(R2T {
            cccid: 4,
            ttag: 9,
            r2to: 0,
            r2tl: 65536,
        });
        stream.extend(pdu(r2t, &[], &sq_off));
        let c2h = PduHeader::C2HData(C2HData {
            cccid: 5,
            datao: 0,
            datal: 512,
            last_pdu: true,
            success: true,
        });
        stream.extend(pdu(c2h, &[0xAB; 512], &sq_off));
        let cqe = PduHeader::CapsuleResp(CapsuleResp {
            cqe: Cqe {
                cid: 4,
                ..Cqe::default()
            },
        });
        stream.extend(pdu(cqe, &[], &sq_off));
        let mut p = PduParser::new(Role::Host, Limits::NONE);
        let (used, ev) = p.feed(&stream).unwrap();
        assert_eq!(used, 128);
        assert_eq!(ev, Some(Event::Header { pdu: resp, data_len: 0 }));
        assert_eq!(
            p.feed(&stream[128..]).unwrap(),
            (0, Some(Event::End { data_digest: Ok(()) }))
        );
        p.set_session(sq_off);
        let got = parse(&mut p, &stream[128..], 5).unwrap();
        assert_eq!(got.iter().map(|g| g.pdu).collect::<Vec<_>>(), [r2t, c2h, cqe]);
        assert_eq!(got[1].data, [0xAB; 512]);
    }

    #[test]
    fn data_digest_mismatch_is_not_fatal() {
        let mut s = pdu(
            PduHeader::CapsuleCmd(CapsuleCmd { sqe: Sqe::new(1, 1) }),
            &[1, 2, 3, 4],
            &DIGESTS,
        );
        let n = s.len();
        s[n - 1] ^= 0xFF;
        s.extend(pdu(
            PduHeader::CapsuleCmd(CapsuleCmd { sqe: Sqe::new(1, 2) }),
            &[5; 8],
            &DIGESTS,
        ));
        let mut p = PduParser::established(Role::Controller, Limits::NONE, DIGESTS);
        let got = parse(&mut p, &s, 3).unwrap();
        assert!(matches!(got[0].digest, Err(ProtoError::DataDigest { .. })));
        assert_eq!(got[0].data, [1, 2, 3, 4]);
        assert_eq!(got[1].digest, Ok(()));
    }

    /// Feeds one PDU and returns the fatal error it caused.
    fn error_of(p: &mut PduParser, bytes: &[u8]) -> ProtoError {
        let e = parse(p, bytes, bytes.len()).unwrap_err();
        // Fatal errors stick.
        assert_eq!(p.feed(&[0]).unwrap_err(), e);
        e
    }

    #[test]
    fn header_fields_are_checked_in_order() {
        let good = pdu(PduHeader::CapsuleResp(CapsuleResp { cqe: Cqe::default() }), &[], &PLAIN);
        let host = || PduParser::established(Role::Host, Limits::NONE, PLAIN);
        let field_of = |bytes: &[u8]| match error_of(&mut host(), bytes) {
            ProtoError::Pdu { field, offset, .. } => (field, offset),
            other => panic!("{other:?}"),
        };
        let mut b = good.clone();
        b[0] = 0x08;
        assert_eq!(field_of(&b), ("PDU-Type", 0));
        b[0] = 0x04; // a host-to-controller type arriving at the host
        assert_eq!(field_of(&b), ("PDU-Type", 0));
        let mut b = good.clone();
        b[1] = FLAG_LAST_PDU;
        assert_eq!(field_of(&b), ("FLAGS", 1));
        b[1] = FLAG_HDGSTF; // not negotiated
        assert_eq!(field_of(&b), ("FLAGS", 1));
        let mut b = good.clone();
        b[2] = 25;
        b[3] = 1; // PDO is also wrong, but HLEN comes first
        assert_eq!(field_of(&b), ("HLEN", 2));
        let mut b = good.clone();
        b[3] = 24;
        assert_eq!(field_of(&b), ("PDO", 3));
        let mut b = good.clone();
        b[4] = 28;
        assert_eq!(field_of(&b), ("PLEN", 4));
        let e = error_of(&mut host(), &{
            let mut b = good.clone();
            b[2] = 25;
            b
        });
        assert_eq!(e.fatal_error(), Some((Fes::INVALID_HEADER_FIELD, 2)));
    }

    #[test]
    fn digests_must_match_the_session() {
        let cmd = PduHeader::CapsuleCmd(CapsuleCmd { sqe: Sqe::new(1, 1) });
        // Header digests negotiated, PDU without HDGSTF (Linux rejects this too).
        let mut p = PduParser::established(Role::Controller, Limits::NONE, DIGESTS);
        let e = error_of(&mut p, &pdu(cmd, &[], &PLAIN));
        assert!(matches!(e, ProtoError::Pdu { field: "FLAGS", .. }), "{e:?}");
        // Corrupted header digest: FES 3.
        let mut b = pdu(cmd, &[9; 16], &DIGESTS);
        b[10] ^= 1;
        let mut p = PduParser::established(Role::Controller, Limits::NONE, DIGESTS);
        let e = error_of(&mut p, &b);
        assert!(matches!(e, ProtoError::HeaderDigest { .. }));
        assert_eq!(e.fatal_error(), Some((Fes::HEADER_DIGEST_ERROR, 0)));
        assert_eq!(p.header_bytes().len(), 76);
        // Data digest flag when only header digests were negotiated.
        let hd_only = SessionParams {
            header_digest: true,
            ..PLAIN
        };
        let mut p = PduParser::established(Role::Controller, Limits::NONE, hd_only);
        assert!(matches!(
            error_of(&mut p, &pdu(cmd, &[1; 4], &DIGESTS)),
            ProtoError::Pdu { field: "FLAGS", .. }
        ));
    }

    #[test]
    fn sequence_and_parameters() {
        // Anything but ICReq first is a sequence error (FES 2); so is a second ICReq.
        let cmd = pdu(PduHeader::CapsuleCmd(CapsuleCmd { sqe: Sqe::new(1, 1) }), &[], &PLAIN);
        let e = error_of(&mut PduParser::new(Role::Controller, Limits::NONE), &cmd);
        assert_eq!(e.fatal_error(), Some((Fes::PDU_SEQUENCE_ERROR, 0)));
        let mut two = pdu(icreq(), &[], &PLAIN);
        two.extend(pdu(icreq(), &[], &PLAIN));
        let e = error_of(&mut PduParser::new(Role::Controller, Limits::NONE), &two);
        assert!(matches!(e, ProtoError::Sequence { found: "ICReq", .. }));
        // PFV 1: unsupported parameter at byte 8 (FES 6).
        let mut b = pdu(icreq(), &[], &PLAIN);
        b[8] = 1;
        let e = error_of(&mut PduParser::new(Role::Controller, Limits::NONE), &b);
        assert_eq!(e.fatal_error(), Some((Fes::UNSUPPORTED_PARAMETER, 8)));
        // HPDA 32.
        let mut b = pdu(icreq(), &[], &PLAIN);
        b[10] = 32;
        let e = error_of(&mut PduParser::new(Role::Controller, Limits::NONE), &b);
        assert_eq!(e.fatal_error(), Some((Fes::UNSUPPORTED_PARAMETER, 10)));
        // A termination request may come before the handshake (the peer refusing ours).
        let term = PduHeader::C2HTermReq(TermReq {
            fes: Fes::UNSUPPORTED_PARAMETER,
            fei: 8,
        });
        let got = parse(
            &mut PduParser::new(Role::Host, Limits::NONE),
            &pdu(term, &[0; 128], &PLAIN),
            9,
        )
        .unwrap();
        assert_eq!((got[0].pdu, got[0].data.len()), (term, 128));
    }

    #[test]
    fn limits_and_data_lengths() {
        let limits = Limits {
            max_capsule_data_bytes: 8192,
            max_data_pdu_bytes: 4096,
        };
        let big = pdu(
            PduHeader::CapsuleCmd(CapsuleCmd { sqe: Sqe::new(1, 1) }),
            &[0; 8193],
            &PLAIN,
        );
        let e = error_of(&mut PduParser::established(Role::Controller, limits, PLAIN), &big);
        assert_eq!(e.fatal_error(), Some((Fes::DATA_LIMIT_EXCEEDED, 0)));
        let h2c = H2CData {
            cccid: 1,
            ttag: 1,
            datao: 0,
            datal: 4097,
            last_pdu: true,
        };
        let b = pdu(PduHeader::H2CData(h2c), &[0; 4097], &PLAIN);
        assert!(matches!(
            error_of(&mut PduParser::established(Role::Controller, limits, PLAIN), &b),
            ProtoError::Limit { .. }
        ));
        // DATAL must equal the data the PDU carries.
        let mut b = pdu(PduHeader::H2CData(H2CData { datal: 10, ..h2c }), &[0; 10], &PLAIN);
        b[16] = 11;
        let e = error_of(&mut PduParser::established(Role::Controller, limits, PLAIN), &b);
        assert!(
            matches!(
                e,
                ProtoError::Pdu {
                    field: "DATAL",
                    offset: 16,
                    ..
                }
            ),
            "{e:?}"
        );
        // An H2CData without data.
        let mut b = b[..24].to_vec();
        b[4] = 24;
        b[3] = 0;
        let e = error_of(&mut PduParser::established(Role::Controller, limits, PLAIN), &b);
        assert!(matches!(e, ProtoError::Pdu { field: "PLEN", .. }), "{e:?}");
        // A termination request longer than 152 bytes: close without answering.
        let mut t = pdu(
            PduHeader::H2CTermReq(TermReq { fes: Fes(1), fei: 0 }),
            &[0; 100],
            &PLAIN,
        );
        t[4] = 153;
        let e = error_of(&mut PduParser::established(Role::Controller, limits, PLAIN), &t);
        assert_eq!(e, ProtoError::TermReqLength { plen: 153 });
        assert_eq!(e.fatal_error(), None);
    }

    #[test]
    fn success_flag_rules() {
        let c2h = PduHeader::C2HData(C2HData {
            cccid: 1,
            datao: 0,
            datal: 4,
            last_pdu: true,
            success: true,
        });
        let b = pdu(c2h, &[1; 4], &PLAIN);
        let e = error_of(&mut PduParser::established(Role::Host, Limits::NONE, PLAIN), &b);
        assert!(matches!(e, ProtoError::Pdu { field: "FLAGS", .. }));
        let allowed = SessionParams {
            c2h_success_allowed: true,
            ..PLAIN
        };
        let mut b2 = b.clone();
        b2[1] = FLAG_SUCCESS;
        let e = error_of(&mut PduParser::established(Role::Host, Limits::NONE, allowed), &b2);
        assert!(matches!(e, ProtoError::Pdu { field: "FLAGS", .. }));
        assert_eq!(
            parse(&mut PduParser::established(Role::Host, Limits::NONE, allowed), &b, 1)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn bytes_wanted_guides_reads() {
        let data = [7u8; 300];
        let b = pdu(
            PduHeader::CapsuleCmd(CapsuleCmd { sqe: Sqe::new(1, 1) }),
            &data,
            &DIGESTS,
        );
        let mut p = PduParser::established(Role::Controller, Limits::NONE, DIGESTS);
        assert_eq!(p.bytes_wanted(), 8);
        assert_eq!(p.feed(&b[..8]).unwrap(), (8, None));
        assert_eq!(p.bytes_wanted(), 68);
        let (used, ev) = p.feed(&b[8..]).unwrap();
        assert_eq!(
            (used, ev.map(|e| matches!(e, Event::Header { data_len: 300, .. }))),
            (68, Some(true))
        );
        assert_eq!(p.bytes_wanted(), 300);
        // The qpair receives the data into its own buffer and feeds that buffer.
        let mut dest = [0u8; 300];
        dest.copy_from_slice(&b[76..376]);
        assert_eq!(
            p.feed(&dest).unwrap(),
            (
                300,
                Some(Event::Data {
                    offset: 0,
                    bytes: &dest
                })
            )
        );
        assert_eq!(p.bytes_wanted(), 4);
        assert_eq!(
            p.feed(&b[376..]).unwrap(),
            (4, Some(Event::End { data_digest: Ok(()) }))
        );
        assert!(p.at_boundary());
        let _ = Status::SUCCESS;
    }
}
