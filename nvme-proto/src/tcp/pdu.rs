//! The PDU-specific headers, and the encoder that writes a whole PDU header.
//!
//! Each PDU type's header fields are a plain struct; [`PduHeader`] gathers them. The common
//! header's HLEN, PDO, PLEN and digest flags are not stored: the encoder derives them from the
//! type, the data length and the [`SessionParams`], and the parser checks them before it builds
//! a `PduHeader`. The flags that carry meaning (LAST_PDU, SUCCESS) are fields of the data PDUs.

use super::{
    Fes, PduType, SessionParams, CAPSULE_CMD_HLEN, DIGEST_LEN, FLAG_DDGSTF, FLAG_HDGSTF, FLAG_LAST_PDU, FLAG_SUCCESS,
    IC_LEN, MAX_PDA, MIN_MAXH2CDATA, SHORT_HLEN, TERM_REQ_MAX_DATA,
};
use crate::cqe::{Cqe, CQE_LEN};
use crate::digest::{crc32c, Crc32c};
use crate::sqe::{Sqe, SQE_LEN};
use crate::wire::{array, get_bytes, get_u16, get_u32, get_u8, put_bytes, put_u16, put_u32, put_u8};
use crate::{Expected, ProtoError};

/// ICReq: the host's connection initialisation request (HLEN = PLEN = 128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IcReq {
    /// PDU format version (8); 0 is the only one.
    pub pfv: u16,
    /// Host PDU data alignment, zero-based dwords, 0..=31 (10).
    pub hpda: u8,
    /// DGST bit 0: the host wants header digests (11).
    pub header_digest: bool,
    /// DGST bit 1: the host wants data digests (11).
    pub data_digest: bool,
    /// Most outstanding R2Ts per command, zero-based (12).
    pub maxr2t_0based: u32,
}

/// ICResp: the controller's answer (HLEN = PLEN = 128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcResp {
    /// PDU format version (8); 0.
    pub pfv: u16,
    /// Controller PDU data alignment, zero-based dwords, 0..=31 (10).
    pub cpda: u8,
    /// DGST bit 0: header digests enabled (11).
    pub header_digest: bool,
    /// DGST bit 1: data digests enabled (11).
    pub data_digest: bool,
    /// Most data bytes in one H2CData PDU: at least 4096, a multiple of 4 (12).
    pub maxh2cdata: u32,
}

/// H2CTermReq / C2HTermReq: why the sender is closing the connection (HLEN 24; the data is up to
/// 128 bytes of the offending PDU header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermReq {
    /// Fatal error status (8).
    pub fes: Fes,
    /// Fatal error information (10, unaligned u32): the offending field's offset for FES 1 and 6.
    pub fei: u32,
}

/// CapsuleCmd: a command (HLEN 72); in-capsule data may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsuleCmd {
    /// The submission queue entry (8..72).
    pub sqe: Sqe,
}

/// CapsuleResp: a completion (HLEN 24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsuleResp {
    /// The completion queue entry (8..24).
    pub cqe: Cqe,
}

/// H2CData: write data for a command, answering an R2T (HLEN 24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2CData {
    /// CID of the command (8).
    pub cccid: u16,
    /// Transfer tag copied from the R2T (10).
    pub ttag: u16,
    /// Offset of this chunk in the command's data (12).
    pub datao: u32,
    /// Bytes in this PDU (16); equals the PDU's data length.
    pub datal: u32,
    /// LAST_PDU: the last H2CData for the R2T.
    pub last_pdu: bool,
}

/// C2HData: read data for a command (HLEN 24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct C2HData {
    /// CID of the command (8).
    pub cccid: u16,
    /// Offset of this chunk in the command's data (12).
    pub datao: u32,
    /// Bytes in this PDU (16); equals the PDU's data length.
    pub datal: u32,
    /// LAST_PDU: the last C2HData of the command.
    pub last_pdu: bool,
    /// SUCCESS: the command completed successfully and no CapsuleResp follows (only with
    /// LAST_PDU, and only when SQ flow control is disabled).
    pub success: bool,
}

/// R2T: the controller is ready for a window of a command's write data (HLEN 24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2T {
    /// CID of the command (8).
    pub cccid: u16,
    /// Transfer tag the host copies into its H2CData (10).
    pub ttag: u16,
    /// Offset of the window in the command's data (12).
    pub r2to: u32,
    /// Length of the window, > 0 (16).
    pub r2tl: u32,
}

/// A PDU header, typed. Produced by [`super::PduParser`] for each received PDU and written by
/// [`PduHeader::encode_header`] for each PDU sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PduHeader {
    /// 00h.
    IcReq(IcReq),
    /// 01h.
    IcResp(IcResp),
    /// 02h.
    H2CTermReq(TermReq),
    /// 03h.
    C2HTermReq(TermReq),
    /// 04h.
    CapsuleCmd(CapsuleCmd),
    /// 05h.
    CapsuleResp(CapsuleResp),
    /// 06h.
    H2CData(H2CData),
    /// 07h.
    C2HData(C2HData),
    /// 09h.
    R2T(R2T),
}

/// How an encoded PDU is laid out: what [`PduHeader::encode_header`] wrote and what the caller
/// sends after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLayout {
    /// Bytes written: common + specific header, header digest and pad (= PDO when there is
    /// data, else HLEN plus the digest).
    pub header_len: usize,
    /// PDO as written.
    pub pdo: u8,
    /// True if a 4-byte header digest follows HLEN.
    pub header_digest: bool,
    /// Data bytes to send after the header.
    pub data_len: u32,
    /// True if a 4-byte data digest follows the data.
    pub data_digest: bool,
    /// PLEN as written: the whole PDU.
    pub plen: u32,
}

fn enc_err(t: PduType, field: &'static str, offset: usize, expected: Expected, found: u64) -> ProtoError {
    ProtoError::field(t.name(), field, offset, expected, found)
}

impl PduHeader {
    /// The PDU type.
    pub const fn pdu_type(&self) -> PduType {
        match self {
            PduHeader::IcReq(_) => PduType::IcReq,
            PduHeader::IcResp(_) => PduType::IcResp,
            PduHeader::H2CTermReq(_) => PduType::H2CTermReq,
            PduHeader::C2HTermReq(_) => PduType::C2HTermReq,
            PduHeader::CapsuleCmd(_) => PduType::CapsuleCmd,
            PduHeader::CapsuleResp(_) => PduType::CapsuleResp,
            PduHeader::H2CData(_) => PduType::H2CData,
            PduHeader::C2HData(_) => PduType::C2HData,
            PduHeader::R2T(_) => PduType::R2T,
        }
    }

    /// The layout this header would have with `data_len` data bytes under `params`, after
    /// checking that the combination is one the spec allows (data only where the type carries
    /// it, DATAL equal to the data length, at most 128 bytes in a termination request, fields
    /// within their ranges).
    pub fn layout(&self, data_len: u32, params: &SessionParams) -> Result<HeaderLayout, ProtoError> {
        let t = self.pdu_type();
        if data_len > 0 && !t.carries_data() {
            return Err(enc_err(t, "data length", 4, Expected::Exactly(0), u64::from(data_len)));
        }
        match self {
            PduHeader::IcReq(r) if r.hpda > MAX_PDA => {
                return Err(enc_err(
                    t,
                    "HPDA",
                    10,
                    Expected::AtMost(u64::from(MAX_PDA)),
                    u64::from(r.hpda),
                ))
            }
            PduHeader::IcResp(r) if r.cpda > MAX_PDA => {
                return Err(enc_err(
                    t,
                    "CPDA",
                    10,
                    Expected::AtMost(u64::from(MAX_PDA)),
                    u64::from(r.cpda),
                ))
            }
            PduHeader::IcResp(r) if r.maxh2cdata < MIN_MAXH2CDATA || !r.maxh2cdata.is_multiple_of(4) => {
                return Err(enc_err(
                    t,
                    "MAXH2CDATA",
                    12,
                    Expected::Text(">= 4096 and a multiple of 4"),
                    u64::from(r.maxh2cdata),
                ))
            }
            PduHeader::H2CTermReq(_) | PduHeader::C2HTermReq(_) if data_len as usize > TERM_REQ_MAX_DATA => {
                return Err(enc_err(
                    t,
                    "data length",
                    4,
                    Expected::AtMost(TERM_REQ_MAX_DATA as u64),
                    u64::from(data_len),
                ))
            }
            PduHeader::H2CData(H2CData { datal, .. }) | PduHeader::C2HData(C2HData { datal, .. })
                if *datal != data_len || data_len == 0 =>
            {
                return Err(enc_err(
                    t,
                    "DATAL",
                    16,
                    Expected::Exactly(u64::from(data_len)),
                    u64::from(*datal),
                ))
            }
            PduHeader::C2HData(d) if d.success && !d.last_pdu => {
                return Err(enc_err(
                    t,
                    "FLAGS",
                    1,
                    Expected::Text("SUCCESS only with LAST_PDU"),
                    u64::from(FLAG_SUCCESS),
                ))
            }
            PduHeader::R2T(r) if r.r2tl == 0 => return Err(enc_err(t, "R2TL", 16, Expected::AtLeast(1), 0)),
            _ => {}
        }
        let hlen = t.hlen();
        let hd = params.header_digest && t.header_digest_allowed();
        let dd = params.data_digest && t.data_digest_allowed() && data_len > 0;
        let after_header = hlen + if hd { DIGEST_LEN } else { 0 };
        let (header_len, pdo) = if data_len == 0 {
            (after_header, 0)
        } else if matches!(t, PduType::H2CTermReq | PduType::C2HTermReq) {
            // The offending header follows HLEN directly; PDO stays 0.
            (hlen, 0)
        } else {
            let align = params.data_alignment(t);
            let pdo = after_header.div_ceil(align) * align;
            (pdo, pdo)
        };
        let plen = (header_len as u64) + u64::from(data_len) + if dd { DIGEST_LEN as u64 } else { 0 };
        let plen =
            u32::try_from(plen).map_err(|_| enc_err(t, "PLEN", 4, Expected::AtMost(u64::from(u32::MAX)), plen))?;
        Ok(HeaderLayout {
            header_len,
            pdo: pdo as u8,
            header_digest: hd,
            data_len,
            data_digest: dd,
            plen,
        })
    }

    /// Writes the common header, this header, the header digest and any pad into `out` for a
    /// PDU with `data_len` data bytes, and returns the layout. The caller then sends
    /// `out[..layout.header_len]`, the data, and — if `layout.data_digest` — the data's CRC32C
    /// little-endian. Called on the sending reactor per PDU; `out` is the qpair's header slot.
    pub fn encode_header(
        &self,
        data_len: u32,
        params: &SessionParams,
        out: &mut [u8],
    ) -> Result<HeaderLayout, ProtoError> {
        let layout = self.layout(data_len, params)?;
        let t = self.pdu_type();
        crate::wire::need_out(out, layout.header_len, t.name())?;
        let (hdr, _) = out.split_at_mut(layout.header_len);
        hdr.fill(0);
        let mut flags = 0;
        if layout.header_digest {
            flags |= FLAG_HDGSTF;
        }
        if layout.data_digest {
            flags |= FLAG_DDGSTF;
        }
        match self {
            PduHeader::H2CData(d) if d.last_pdu => flags |= FLAG_LAST_PDU,
            PduHeader::C2HData(d) => {
                flags |= if d.last_pdu { FLAG_LAST_PDU } else { 0 } | if d.success { FLAG_SUCCESS } else { 0 }
            }
            _ => {}
        }
        hdr[0] = t.to_u8();
        hdr[1] = flags;
        hdr[2] = t.hlen() as u8;
        hdr[3] = layout.pdo;
        hdr[4..8].copy_from_slice(&layout.plen.to_le_bytes());
        self.encode_specific(&mut hdr[..t.hlen()])?;
        if flags & FLAG_HDGSTF != 0 {
            let d = crc32c(&hdr[..t.hlen()]);
            hdr[t.hlen()..t.hlen() + DIGEST_LEN].copy_from_slice(&d.to_le_bytes());
        }
        Ok(layout)
    }

    /// Writes the whole PDU — header, `data` and data digest — into `out` and returns PLEN. For
    /// PDUs small enough to build in one buffer (handshake, responses, R2T, termination
    /// requests, test streams).
    pub fn encode_pdu(&self, data: &[u8], params: &SessionParams, out: &mut [u8]) -> Result<usize, ProtoError> {
        let t = self.pdu_type();
        let data_len = u32::try_from(data.len()).map_err(|_| {
            enc_err(
                t,
                "data length",
                4,
                Expected::AtMost(u64::from(u32::MAX)),
                data.len() as u64,
            )
        })?;
        let layout = self.layout(data_len, params)?;
        let plen = layout.plen as usize;
        crate::wire::need_out(out, plen, t.name())?;
        self.encode_header(data_len, params, out)?;
        out[layout.header_len..layout.header_len + data.len()].copy_from_slice(data);
        if layout.data_digest {
            let mut d = Crc32c::new();
            d.update(data);
            out[plen - DIGEST_LEN..plen].copy_from_slice(&d.to_wire());
        }
        Ok(plen)
    }

    /// Writes the PDU-specific fields into `hdr` (exactly HLEN bytes, already zeroed, common
    /// header written).
    fn encode_specific(&self, hdr: &mut [u8]) -> Result<(), ProtoError> {
        const S: usize = SHORT_HLEN;
        match self {
            PduHeader::IcReq(r) => {
                let b = crate::wire::array_mut::<IC_LEN>(hdr, "ICReq")?;
                put_u16::<8, IC_LEN>(b, r.pfv);
                put_u8::<10, IC_LEN>(b, r.hpda);
                put_u8::<11, IC_LEN>(b, u8::from(r.header_digest) | u8::from(r.data_digest) << 1);
                put_u32::<12, IC_LEN>(b, r.maxr2t_0based);
            }
            PduHeader::IcResp(r) => {
                let b = crate::wire::array_mut::<IC_LEN>(hdr, "ICResp")?;
                put_u16::<8, IC_LEN>(b, r.pfv);
                put_u8::<10, IC_LEN>(b, r.cpda);
                put_u8::<11, IC_LEN>(b, u8::from(r.header_digest) | u8::from(r.data_digest) << 1);
                put_u32::<12, IC_LEN>(b, r.maxh2cdata);
            }
            PduHeader::H2CTermReq(r) | PduHeader::C2HTermReq(r) => {
                let b = crate::wire::array_mut::<S>(hdr, "TermReq")?;
                put_u16::<8, S>(b, r.fes.0);
                put_u32::<10, S>(b, r.fei);
            }
            PduHeader::CapsuleCmd(c) => {
                let b = crate::wire::array_mut::<CAPSULE_CMD_HLEN>(hdr, "CapsuleCmd")?;
                put_bytes::<8, SQE_LEN, CAPSULE_CMD_HLEN>(b, &c.sqe.to_bytes());
            }
            PduHeader::CapsuleResp(c) => {
                let b = crate::wire::array_mut::<S>(hdr, "CapsuleResp")?;
                put_bytes::<8, CQE_LEN, S>(b, &c.cqe.to_bytes());
            }
            PduHeader::H2CData(d) => {
                let b = crate::wire::array_mut::<S>(hdr, "H2CData")?;
                put_u16::<8, S>(b, d.cccid);
                put_u16::<10, S>(b, d.ttag);
                put_u32::<12, S>(b, d.datao);
                put_u32::<16, S>(b, d.datal);
            }
            PduHeader::C2HData(d) => {
                let b = crate::wire::array_mut::<S>(hdr, "C2HData")?;
                put_u16::<8, S>(b, d.cccid);
                put_u32::<12, S>(b, d.datao);
                put_u32::<16, S>(b, d.datal);
            }
            PduHeader::R2T(r) => {
                let b = crate::wire::array_mut::<S>(hdr, "R2T")?;
                put_u16::<8, S>(b, r.cccid);
                put_u16::<10, S>(b, r.ttag);
                put_u32::<12, S>(b, r.r2to);
                put_u32::<16, S>(b, r.r2tl);
            }
        }
        Ok(())
    }

    /// Reads the PDU-specific fields of a `t` PDU from its HLEN header bytes, whose common
    /// header the parser already validated (`flags`, and `data_len` bytes of data). Checks the
    /// fields the spec constrains: PFV, HPDA/CPDA, MAXH2CDATA, DATAL, R2TL.
    pub(crate) fn decode_specific(t: PduType, flags: u8, data_len: u32, hdr: &[u8]) -> Result<PduHeader, ProtoError> {
        const S: usize = SHORT_HLEN;
        let unsupported = |field, offset, expected, found: u64| ProtoError::Unsupported {
            pdu: t.name(),
            field,
            offset,
            expected,
            found,
        };
        let invalid = |field, offset, expected, found: u64| ProtoError::Pdu {
            pdu: t.name(),
            field,
            offset,
            expected,
            found,
        };
        Ok(match t {
            PduType::IcReq | PduType::IcResp => {
                let b = array::<IC_LEN>(hdr, t.name())?;
                let pfv = get_u16::<8, IC_LEN>(b);
                if pfv != 0 {
                    return Err(unsupported("PFV", 8, Expected::Exactly(0), u64::from(pfv)));
                }
                let pda = get_u8::<10, IC_LEN>(b);
                if pda > MAX_PDA {
                    let name = if t == PduType::IcReq { "HPDA" } else { "CPDA" };
                    return Err(unsupported(
                        name,
                        10,
                        Expected::AtMost(u64::from(MAX_PDA)),
                        u64::from(pda),
                    ));
                }
                let dgst = get_u8::<11, IC_LEN>(b);
                let word = get_u32::<12, IC_LEN>(b);
                if t == PduType::IcReq {
                    PduHeader::IcReq(IcReq {
                        pfv,
                        hpda: pda,
                        header_digest: dgst & 1 != 0,
                        data_digest: dgst & 2 != 0,
                        maxr2t_0based: word,
                    })
                } else {
                    if word < MIN_MAXH2CDATA || !word.is_multiple_of(4) {
                        return Err(unsupported(
                            "MAXH2CDATA",
                            12,
                            Expected::Text(">= 4096 and a multiple of 4"),
                            u64::from(word),
                        ));
                    }
                    PduHeader::IcResp(IcResp {
                        pfv,
                        cpda: pda,
                        header_digest: dgst & 1 != 0,
                        data_digest: dgst & 2 != 0,
                        maxh2cdata: word,
                    })
                }
            }
            PduType::H2CTermReq | PduType::C2HTermReq => {
                let b = array::<S>(hdr, t.name())?;
                let r = TermReq {
                    fes: Fes(get_u16::<8, S>(b)),
                    fei: get_u32::<10, S>(b),
                };
                if t == PduType::H2CTermReq {
                    PduHeader::H2CTermReq(r)
                } else {
                    PduHeader::C2HTermReq(r)
                }
            }
            PduType::CapsuleCmd => {
                let b = array::<CAPSULE_CMD_HLEN>(hdr, t.name())?;
                PduHeader::CapsuleCmd(CapsuleCmd {
                    sqe: Sqe::from_bytes(&get_bytes::<8, SQE_LEN, CAPSULE_CMD_HLEN>(b)),
                })
            }
            PduType::CapsuleResp => {
                let b = array::<S>(hdr, t.name())?;
                PduHeader::CapsuleResp(CapsuleResp {
                    cqe: Cqe::from_bytes(&get_bytes::<8, CQE_LEN, S>(b)),
                })
            }
            PduType::H2CData | PduType::C2HData => {
                let b = array::<S>(hdr, t.name())?;
                let datal = get_u32::<16, S>(b);
                if datal != data_len {
                    return Err(invalid(
                        "DATAL",
                        16,
                        Expected::Exactly(u64::from(data_len)),
                        u64::from(datal),
                    ));
                }
                let (cccid, datao) = (get_u16::<8, S>(b), get_u32::<12, S>(b));
                let last_pdu = flags & FLAG_LAST_PDU != 0;
                if t == PduType::H2CData {
                    PduHeader::H2CData(H2CData {
                        cccid,
                        ttag: get_u16::<10, S>(b),
                        datao,
                        datal,
                        last_pdu,
                    })
                } else {
                    PduHeader::C2HData(C2HData {
                        cccid,
                        datao,
                        datal,
                        last_pdu,
                        success: flags & FLAG_SUCCESS != 0,
                    })
                }
            }
            PduType::R2T => {
                let b = array::<S>(hdr, t.name())?;
                let r2tl = get_u32::<16, S>(b);
                if r2tl == 0 {
                    return Err(invalid("R2TL", 16, Expected::AtLeast(1), 0));
                }
                PduHeader::R2T(R2T {
                    cccid: get_u16::<8, S>(b),
                    ttag: get_u16::<10, S>(b),
                    r2to: get_u32::<12, S>(b),
                    r2tl,
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cqe::Status;

    const PLAIN: SessionParams = SessionParams::INITIAL;
    const DIGESTS: SessionParams = SessionParams {
        header_digest: true,
        data_digest: true,
        ..SessionParams::INITIAL
    };

    #[test]
    fn linux_icreq_and_nvmet_icresp_bytes() {
        // nvme-tcp.md §4: ICReq = 00 00 80 00 80 00 00 00 then 120 zero bytes;
        // nvmet's ICResp = 01 00 80 00 80 00 00 00 00 00 00 00 00 00 40 00 then zeros.
        let mut out = [0xFFu8; 128];
        let req = PduHeader::IcReq(IcReq::default());
        assert_eq!(req.encode_pdu(&[], &PLAIN, &mut out), Ok(128));
        assert_eq!(&out[..8], &[0x00, 0x00, 0x80, 0x00, 0x80, 0x00, 0x00, 0x00]);
        assert!(out[8..].iter().all(|&b| b == 0));
        // Digests never apply to the handshake, whatever the session says.
        assert_eq!(req.encode_pdu(&[], &DIGESTS, &mut out), Ok(128));
        assert_eq!(out[1], 0);
        let resp = PduHeader::IcResp(IcResp {
            pfv: 0,
            cpda: 0,
            header_digest: false,
            data_digest: false,
            maxh2cdata: 0x40_0000,
        });
        assert_eq!(resp.encode_pdu(&[], &PLAIN, &mut out), Ok(128));
        assert_eq!(
            &out[..16],
            &[0x01, 0, 0x80, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0]
        );
        assert!(out[16..].iter().all(|&b| b == 0));
    }

    #[test]
    fn captured_capsule_resp_with_header_digest() {
        // nvme-tcp.md §5: 05 01 18 00 1c 00 00 00 | CQE (CNTLID 1, SQHD 1) | 42 62 33 32.
        let cqe = Cqe {
            dw0: 1,
            sq_head: 1,
            status: Status::SUCCESS,
            ..Cqe::default()
        };
        let hd = SessionParams {
            header_digest: true,
            ..SessionParams::INITIAL
        };
        let mut out = [0u8; 28];
        assert_eq!(
            PduHeader::CapsuleResp(CapsuleResp { cqe }).encode_pdu(&[], &hd, &mut out),
            Ok(28)
        );
        assert_eq!(
            out,
            [
                0x05, 0x01, 0x18, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x42, 0x62, 0x33, 0x32
            ]
        );
    }

    #[test]
    fn lengths_offsets_and_flags() {
        // nvme-tcp.md §2: CapsuleResp 24/28, R2T 24/28, data-less CapsuleCmd 72/76.
        let cmd = PduHeader::CapsuleCmd(CapsuleCmd { sqe: Sqe::new(0x02, 1) });
        let l = cmd.layout(0, &PLAIN).unwrap();
        assert_eq!((l.plen, l.pdo, l.header_len), (72, 0, 72));
        let l = cmd.layout(0, &DIGESTS).unwrap();
        assert_eq!((l.plen, l.pdo, l.data_digest), (76, 0, false));
        // With data: PDO = HLEN + HDGST, PLEN = PDO + data + DDGST; flags 0x03.
        let mut out = [0u8; 256];
        let l = cmd.encode_header(4096, &DIGESTS, &mut out).unwrap();
        assert_eq!((l.pdo, l.plen, l.header_len), (76, 76 + 4096 + 4, 76));
        assert_eq!(out[1], 0x03);
        // CapsuleCmd without data under digests: flags 0x01.
        cmd.encode_header(0, &DIGESTS, &mut out).unwrap();
        assert_eq!(out[1], 0x01);
        // C2HData with digests and LAST|SUCCESS: flags 0x0F; without SUCCESS 0x07.
        let c2h = C2HData {
            cccid: 1,
            datao: 0,
            datal: 512,
            last_pdu: true,
            success: false,
        };
        PduHeader::C2HData(c2h).encode_header(512, &DIGESTS, &mut out).unwrap();
        assert_eq!(out[1], 0x07);
        PduHeader::C2HData(C2HData { success: true, ..c2h })
            .encode_header(512, &DIGESTS, &mut out)
            .unwrap();
        assert_eq!(out[1], 0x0F);
        // HPDA 1 (8-byte alignment) pads a 24+4 header to 32.
        let aligned = SessionParams { hpda: 1, ..DIGESTS };
        let l = PduHeader::C2HData(c2h).encode_header(512, &aligned, &mut out).unwrap();
        assert_eq!((l.pdo, l.header_len, l.plen), (32, 32, 32 + 512 + 4));
        assert_eq!(&out[28..32], &[0; 4]);
        // Termination requests: no digests, data right after HLEN, PDO 0.
        let term = PduHeader::C2HTermReq(TermReq {
            fes: Fes::INVALID_HEADER_FIELD,
            fei: 2,
        });
        let l = term.encode_header(24, &DIGESTS, &mut out).unwrap();
        assert_eq!((l.header_len, l.pdo, l.plen, out[1]), (24, 0, 48, 0));
        assert_eq!(&out[8..14], &[1, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn impossible_headers_are_refused() {
        let mut out = [0u8; 256];
        let resp = PduHeader::CapsuleResp(CapsuleResp { cqe: Cqe::default() });
        assert!(resp.encode_header(1, &PLAIN, &mut out).is_err());
        let h2c = PduHeader::H2CData(H2CData {
            cccid: 1,
            ttag: 1,
            datao: 0,
            datal: 10,
            last_pdu: true,
        });
        assert!(h2c.encode_header(11, &PLAIN, &mut out).is_err());
        let empty = PduHeader::H2CData(H2CData {
            cccid: 1,
            ttag: 1,
            datao: 0,
            datal: 0,
            last_pdu: true,
        });
        assert!(empty.encode_header(0, &PLAIN, &mut out).is_err());
        let term = PduHeader::H2CTermReq(TermReq {
            fes: Fes::PDU_SEQUENCE_ERROR,
            fei: 0,
        });
        assert!(term.encode_header(129, &PLAIN, &mut out).is_err());
        let r2t = PduHeader::R2T(R2T {
            cccid: 1,
            ttag: 0,
            r2to: 0,
            r2tl: 0,
        });
        assert!(r2t.encode_header(0, &PLAIN, &mut out).is_err());
        let small = PduHeader::IcResp(IcResp {
            pfv: 0,
            cpda: 0,
            header_digest: false,
            data_digest: false,
            maxh2cdata: 4095,
        });
        assert!(small.encode_header(0, &PLAIN, &mut out).is_err());
        let succ = PduHeader::C2HData(C2HData {
            cccid: 0,
            datao: 0,
            datal: 1,
            last_pdu: false,
            success: true,
        });
        assert!(succ.encode_header(1, &PLAIN, &mut out).is_err());
        let cmd = PduHeader::CapsuleCmd(CapsuleCmd { sqe: Sqe::new(0, 0) });
        assert!(matches!(
            cmd.encode_header(0, &PLAIN, &mut out[..71]),
            Err(ProtoError::BufferTooSmall { .. })
        ));
        assert!(matches!(
            cmd.encode_pdu(&[1; 8], &PLAIN, &mut out[..79]),
            Err(ProtoError::BufferTooSmall { .. })
        ));
    }
}
