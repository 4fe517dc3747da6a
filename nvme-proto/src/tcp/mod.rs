//! NVMe/TCP PDUs: types, encoders and the incremental receive parser.
//!
//! # The stream
//! One TCP connection carries one queue pair as a stream of PDUs. Each PDU is an 8-byte common
//! header (type, flags, HLEN, PDO, PLEN), a PDU-specific header completing HLEN bytes, an
//! optional 4-byte header digest, padding up to PDO, optional data, and an optional 4-byte data
//! digest; PLEN counts all of it. The first PDU each way is the connection handshake (ICReq from
//! the host, ICResp from the controller), which negotiates digests and data alignment; after it
//! the host sends CapsuleCmd and H2CData, the controller CapsuleResp, C2HData and R2T, and
//! either side may end the connection with a termination request. `nvme-tcp.md` §1–7 has the
//! layouts and rules; [`PduType`] knows the per-type facts (HLEN, allowed flags, direction).
//!
//! # Receiving: [`PduParser`]
//! A qpair reads whatever the non-blocking socket has and pushes it into its parser with
//! [`PduParser::feed`], which consumes a prefix and reports at most one [`Event`] per call:
//! `Header` (the typed header, after the common header was validated field by field and the
//! header digest checked), then zero or more `Data` chunks borrowed from the caller's input,
//! then `End` (after the data digest was checked). The parser keeps only the header bytes
//! (at most 255, in a fixed array) and a running CRC: it never allocates and never copies data,
//! so a qpair can receive data straight into a bdev buffer and feed that same slice back.
//! [`PduParser`] documents the exact contract.
//!
//! # Sending: [`PduHeader::encode_header`]
//! The encoder writes the common header, the PDU-specific header, the header digest and any pad
//! into a caller-provided buffer and reports the [`HeaderLayout`]; the caller then sends the data
//! from wherever it lives (a vectored write) followed by the data digest, computed with
//! [`crate::digest::Crc32c`]. [`PduHeader::encode_pdu`] does all of it into one buffer for small
//! PDUs.
//!
//! # Errors
//! Every stream error is fatal except a data digest mismatch. [`ProtoError::fatal_error`] maps
//! an error to the termination request to send (FES and FEI); a termination request with an
//! impossible length is answered by just closing.

mod parser;
mod pdu;

pub use parser::{Event, Limits, PduParser, Role};
pub use pdu::{C2HData, CapsuleCmd, CapsuleResp, H2CData, HeaderLayout, IcReq, IcResp, PduHeader, TermReq, R2T};

use crate::ProtoError;

/// Length of the common header.
pub const COMMON_HEADER_LEN: usize = 8;
/// Length of a header or data digest.
pub const DIGEST_LEN: usize = 4;
/// HLEN (and PLEN) of ICReq and ICResp.
pub const IC_LEN: usize = 128;
/// HLEN of a CapsuleCmd (common header + SQE).
pub const CAPSULE_CMD_HLEN: usize = 72;
/// HLEN of every other PDU type (CapsuleResp, H2CData, C2HData, R2T, termination requests).
pub const SHORT_HLEN: usize = 24;
/// Most bytes of offending header a termination request carries.
pub const TERM_REQ_MAX_DATA: usize = 128;
/// Largest termination request PDU (24 + 128).
pub const TERM_REQ_MAX_PLEN: u32 = 152;
/// Smallest MAXH2CDATA a controller may offer.
pub const MIN_MAXH2CDATA: u32 = 4096;
/// Largest HPDA/CPDA value (zero-based dwords: 128-byte alignment).
pub const MAX_PDA: u8 = 31;
/// The in-capsule data size Linux assumes on the admin queue and for Fabrics commands.
pub const ADMIN_IN_CAPSULE_BYTES: u32 = 8192;
/// The NVMe-oF I/O port.
pub const IO_PORT: u16 = 4420;
/// The NVMe/TCP discovery port.
pub const DISCOVERY_PORT: u16 = 8009;

// Header sizes from nvme-tcp.md §2–3: the common header plus the SQE (CapsuleCmd) or CQE
// (CapsuleResp) is the whole header; a termination request is 24 bytes plus at most 128; PDO is
// a byte, so the largest header region (HLEN + digest + pad to 128-byte alignment) must fit it.
const _: () = assert!(COMMON_HEADER_LEN + crate::sqe::SQE_LEN == CAPSULE_CMD_HLEN);
const _: () = assert!(COMMON_HEADER_LEN + crate::cqe::CQE_LEN == SHORT_HLEN);
const _: () = assert!(SHORT_HLEN as u32 + TERM_REQ_MAX_DATA as u32 == TERM_REQ_MAX_PLEN);
const _: () = assert!((CAPSULE_CMD_HLEN + DIGEST_LEN).div_ceil(128) * 128 <= u8::MAX as usize);

/// Common header flag bit 0: a header digest follows the header.
pub const FLAG_HDGSTF: u8 = 0x01;
/// Common header flag bit 1: a data digest follows the data.
pub const FLAG_DDGSTF: u8 = 0x02;
/// Common header flag bit 2 (H2CData/C2HData): last data PDU of the command or R2T.
pub const FLAG_LAST_PDU: u8 = 0x04;
/// Common header flag bit 3 (C2HData only): the command succeeded; no CapsuleResp follows.
pub const FLAG_SUCCESS: u8 = 0x08;

/// The PDU types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PduType {
    /// 00h, host to controller: connection initialisation request.
    IcReq,
    /// 01h, controller to host: connection initialisation response.
    IcResp,
    /// 02h, host to controller: terminate the connection.
    H2CTermReq,
    /// 03h, controller to host: terminate the connection.
    C2HTermReq,
    /// 04h, host to controller: a command capsule (SQE and in-capsule data).
    CapsuleCmd,
    /// 05h, controller to host: a response capsule (CQE).
    CapsuleResp,
    /// 06h, host to controller: write data.
    H2CData,
    /// 07h, controller to host: read data.
    C2HData,
    /// 09h, controller to host: ready to transfer (ask for write data).
    R2T,
}

impl PduType {
    /// Every type, in value order.
    pub const ALL: [PduType; 9] = [
        PduType::IcReq,
        PduType::IcResp,
        PduType::H2CTermReq,
        PduType::C2HTermReq,
        PduType::CapsuleCmd,
        PduType::CapsuleResp,
        PduType::H2CData,
        PduType::C2HData,
        PduType::R2T,
    ];

    /// The type with value `v`, if any (08h and above 09h are not types).
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x00 => PduType::IcReq,
            0x01 => PduType::IcResp,
            0x02 => PduType::H2CTermReq,
            0x03 => PduType::C2HTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2CData,
            0x07 => PduType::C2HData,
            0x09 => PduType::R2T,
            _ => return None,
        })
    }

    /// The type's value.
    pub const fn to_u8(self) -> u8 {
        match self {
            PduType::IcReq => 0x00,
            PduType::IcResp => 0x01,
            PduType::H2CTermReq => 0x02,
            PduType::C2HTermReq => 0x03,
            PduType::CapsuleCmd => 0x04,
            PduType::CapsuleResp => 0x05,
            PduType::H2CData => 0x06,
            PduType::C2HData => 0x07,
            PduType::R2T => 0x09,
        }
    }

    /// The spec's name.
    pub const fn name(self) -> &'static str {
        match self {
            PduType::IcReq => "ICReq",
            PduType::IcResp => "ICResp",
            PduType::H2CTermReq => "H2CTermReq",
            PduType::C2HTermReq => "C2HTermReq",
            PduType::CapsuleCmd => "CapsuleCmd",
            PduType::CapsuleResp => "CapsuleResp",
            PduType::H2CData => "H2CData",
            PduType::C2HData => "C2HData",
            PduType::R2T => "R2T",
        }
    }

    /// True for PDUs the host sends to the controller (even type values).
    pub const fn to_controller(self) -> bool {
        self.to_u8() & 1 == 0
    }

    /// HLEN, fixed per type.
    pub const fn hlen(self) -> usize {
        match self {
            PduType::IcReq | PduType::IcResp => IC_LEN,
            PduType::CapsuleCmd => CAPSULE_CMD_HLEN,
            _ => SHORT_HLEN,
        }
    }

    /// True if the type carries a header digest once header digests are negotiated.
    pub const fn header_digest_allowed(self) -> bool {
        matches!(
            self,
            PduType::CapsuleCmd | PduType::CapsuleResp | PduType::H2CData | PduType::C2HData | PduType::R2T
        )
    }

    /// True if the type may carry data that a data digest covers.
    pub const fn data_digest_allowed(self) -> bool {
        matches!(self, PduType::CapsuleCmd | PduType::H2CData | PduType::C2HData)
    }

    /// True if the type may carry data (termination requests carry the offending header).
    pub const fn carries_data(self) -> bool {
        matches!(
            self,
            PduType::CapsuleCmd | PduType::H2CData | PduType::C2HData | PduType::H2CTermReq | PduType::C2HTermReq
        )
    }

    /// The flag bits this type may have set.
    pub const fn valid_flags(self) -> u8 {
        match self {
            PduType::CapsuleCmd => FLAG_HDGSTF | FLAG_DDGSTF,
            PduType::CapsuleResp | PduType::R2T => FLAG_HDGSTF,
            PduType::H2CData => FLAG_HDGSTF | FLAG_DDGSTF | FLAG_LAST_PDU,
            PduType::C2HData => FLAG_HDGSTF | FLAG_DDGSTF | FLAG_LAST_PDU | FLAG_SUCCESS,
            PduType::IcReq | PduType::IcResp | PduType::H2CTermReq | PduType::C2HTermReq => 0,
        }
    }
}

/// What the connection handshake settled, which decides the PDU layout from then on. The
/// controller fills it from the ICReq it accepted and the ICResp it sent, the host from its
/// ICReq and the ICResp it got; both hand it to their parser and encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionParams {
    /// Header digests on (HDGST on CapsuleCmd/Resp, H2C/C2HData, R2T).
    pub header_digest: bool,
    /// Data digests on (DDGST on every PDU that carries data, except termination requests).
    pub data_digest: bool,
    /// HPDA: data sent to the host starts at a multiple of (HPDA + 1) × 4 bytes.
    pub hpda: u8,
    /// CPDA: data sent to the controller starts at a multiple of (CPDA + 1) × 4 bytes.
    pub cpda: u8,
    /// The host disabled SQ flow control, so the controller may set SUCCESS on the last
    /// C2HData. Only the host's parser reads it.
    pub c2h_success_allowed: bool,
}

impl SessionParams {
    /// Before the handshake: no digests, dword alignment.
    pub const INITIAL: SessionParams = SessionParams {
        header_digest: false,
        data_digest: false,
        hpda: 0,
        cpda: 0,
        c2h_success_allowed: false,
    };

    /// Alignment in bytes of DATA in PDUs of type `t` ((PDA + 1) × 4 for its direction).
    pub const fn data_alignment(&self, t: PduType) -> usize {
        let pda = if t.to_controller() { self.cpda } else { self.hpda };
        (pda as usize % (MAX_PDA as usize + 1) + 1) * 4
    }
}

/// Fatal error status of a termination request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fes(pub u16);

impl Fes {
    /// Invalid PDU header field; FEI is the field's byte offset.
    pub const INVALID_HEADER_FIELD: Fes = Fes(0x01);
    /// PDU sequence error.
    pub const PDU_SEQUENCE_ERROR: Fes = Fes(0x02);
    /// Header digest error.
    pub const HEADER_DIGEST_ERROR: Fes = Fes(0x03);
    /// Data transfer out of range.
    pub const DATA_OUT_OF_RANGE: Fes = Fes(0x04);
    /// Data transfer limit exceeded (also R2T limit exceeded: same code).
    pub const DATA_LIMIT_EXCEEDED: Fes = Fes(0x05);
    /// R2T limit exceeded.
    pub const R2T_LIMIT_EXCEEDED: Fes = Fes(0x05);
    /// Unsupported parameter; FEI is the field's byte offset.
    pub const UNSUPPORTED_PARAMETER: Fes = Fes(0x06);
}

impl ProtoError {
    /// The termination request this stream error calls for: `Some((FES, FEI))`, or `None` if the
    /// connection is to be closed without one (a malformed termination request) or the error is
    /// not a fatal stream error (a data digest mismatch, structure errors). Called by a qpair
    /// when its parser fails; the TermReq's data is [`PduParser::header_bytes`].
    pub fn fatal_error(&self) -> Option<(Fes, u32)> {
        match *self {
            ProtoError::Pdu { offset, .. } => Some((Fes::INVALID_HEADER_FIELD, offset as u32)),
            ProtoError::Unsupported { offset, .. } => Some((Fes::UNSUPPORTED_PARAMETER, offset as u32)),
            ProtoError::Limit { .. } => Some((Fes::DATA_LIMIT_EXCEEDED, 0)),
            ProtoError::Sequence { .. } => Some((Fes::PDU_SEQUENCE_ERROR, 0)),
            ProtoError::HeaderDigest { .. } => Some((Fes::HEADER_DIGEST_ERROR, 0)),
            ProtoError::TermReqLength { .. }
            | ProtoError::DataDigest { .. }
            | ProtoError::Truncated { .. }
            | ProtoError::BufferTooSmall { .. }
            | ProtoError::Field { .. }
            | ProtoError::Nqn { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_table() {
        // nvme-tcp.md §2.
        let hlens: Vec<_> = PduType::ALL.iter().map(|t| (t.to_u8(), t.hlen())).collect();
        assert_eq!(
            hlens,
            [
                (0, 128),
                (1, 128),
                (2, 24),
                (3, 24),
                (4, 72),
                (5, 24),
                (6, 24),
                (7, 24),
                (9, 24)
            ]
        );
        assert_eq!(PduType::from_u8(8), None);
        assert_eq!(PduType::from_u8(0x0A), None);
        for t in PduType::ALL {
            assert_eq!(PduType::from_u8(t.to_u8()), Some(t));
        }
        assert!(PduType::R2T.header_digest_allowed() && !PduType::R2T.data_digest_allowed());
        assert!(!PduType::IcReq.header_digest_allowed() && !PduType::C2HTermReq.data_digest_allowed());
        assert!(PduType::CapsuleCmd.to_controller() && !PduType::R2T.to_controller());
    }

    #[test]
    fn alignment() {
        let p = SessionParams {
            hpda: 1,
            cpda: 3,
            ..SessionParams::INITIAL
        };
        assert_eq!(p.data_alignment(PduType::C2HData), 8);
        assert_eq!(p.data_alignment(PduType::H2CData), 16);
        assert_eq!(SessionParams::INITIAL.data_alignment(PduType::CapsuleCmd), 4);
    }
}
