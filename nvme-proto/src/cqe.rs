//! The 16-byte completion queue entry and the NVMe status it carries.
//!
//! Layout (`nvme-tcp.md` §8): DW0 (command result) at 0, DW1 at 4, SQHD at 8, SQID at 10, CID at
//! 12 and the status field at 14: bit 0 the phase tag, bits 8:1 SC, 11:9 SCT, 13:12 CRD, 14 More,
//! 15 DNR. The PCIe driver reads the phase tag to find new entries; over fabrics it is sent as 0.
//!
//! [`Status`] is the status without the phase tag; [`StatusCode`] is its (SCT, SC) pair, with a
//! named constant for every status Keel's target, initiator and PCIe driver produce or act on, and
//! a `Display` that prints the name. Some command-specific codes mean different things for
//! different commands (SCT 1 / SC 80h is "Incompatible Format" for Connect and "Conflicting
//! Attributes" for NVM I/O); those constants share a value and the name says both.
//!
//! Typed views of DW0 for the commands whose result is structured live here too:
//! [`ConnectResponse`], [`InvalidParameter`] and [`AsyncEvent`].

use std::fmt;

use crate::log::LogPageId;
use crate::wire::{array, array_mut, get_u16, get_u32, put_u16, put_u32};
use crate::{Expected, ProtoError};

/// Encoded length of a completion queue entry.
pub const CQE_LEN: usize = 16;

// The completion entry is 16 bytes (nvme-tcp.md §8); `to_bytes` returns exactly that array.
const _: () = assert!(CQE_LEN == 4 * 4);

/// Status Code Type: which table an [`StatusCode::sc`] value is from. Three bits on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sct(pub u8);

impl Sct {
    /// Generic command status.
    pub const GENERIC: Sct = Sct(0);
    /// Command specific status.
    pub const COMMAND_SPECIFIC: Sct = Sct(1);
    /// Media and data integrity errors.
    pub const MEDIA: Sct = Sct(2);
    /// Path related status.
    pub const PATH: Sct = Sct(3);
    /// Vendor specific.
    pub const VENDOR: Sct = Sct(7);
}

/// A status code: the (SCT, SC) pair of a completion. Built by whoever completes a command (the
/// target's command handlers, the PCIe driver's error paths) and matched by the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusCode {
    /// Status code type (3 bits).
    pub sct: Sct,
    /// Status code within the type.
    pub sc: u8,
}

const fn sc(sct: u8, sc: u8) -> StatusCode {
    StatusCode { sct: Sct(sct), sc }
}

impl StatusCode {
    /// Successful completion.
    pub const SUCCESS: StatusCode = sc(0, 0x00);
    /// Invalid command opcode.
    pub const INVALID_OPCODE: StatusCode = sc(0, 0x01);
    /// Invalid field in command.
    pub const INVALID_FIELD: StatusCode = sc(0, 0x02);
    /// Command ID conflict.
    pub const COMMAND_ID_CONFLICT: StatusCode = sc(0, 0x03);
    /// Data transfer error (also what an NVMe/TCP host reports for a data digest mismatch).
    pub const DATA_TRANSFER_ERROR: StatusCode = sc(0, 0x04);
    /// Internal error.
    pub const INTERNAL_ERROR: StatusCode = sc(0, 0x06);
    /// Command abort requested.
    pub const ABORT_REQUESTED: StatusCode = sc(0, 0x07);
    /// Command aborted due to SQ deletion.
    pub const ABORTED_SQ_DELETION: StatusCode = sc(0, 0x08);
    /// Invalid namespace or format.
    pub const INVALID_NAMESPACE_OR_FORMAT: StatusCode = sc(0, 0x0B);
    /// Command sequence error.
    pub const COMMAND_SEQUENCE_ERROR: StatusCode = sc(0, 0x0C);
    /// Data SGL length invalid.
    pub const DATA_SGL_LENGTH_INVALID: StatusCode = sc(0, 0x0F);
    /// SGL descriptor type invalid.
    pub const SGL_DESCRIPTOR_TYPE_INVALID: StatusCode = sc(0, 0x11);
    /// Invalid PRP offset.
    pub const INVALID_PRP_OFFSET: StatusCode = sc(0, 0x13);
    /// SGL offset invalid.
    pub const SGL_OFFSET_INVALID: StatusCode = sc(0, 0x16);
    /// Host identifier inconsistent format.
    pub const HOST_ID_INCONSISTENT_FORMAT: StatusCode = sc(0, 0x18);
    /// Keep alive timer expired.
    pub const KEEP_ALIVE_EXPIRED: StatusCode = sc(0, 0x19);
    /// Keep alive timeout invalid.
    pub const KEEP_ALIVE_INVALID: StatusCode = sc(0, 0x1A);
    /// Transient transport error.
    pub const TRANSIENT_TRANSPORT_ERROR: StatusCode = sc(0, 0x22);
    /// LBA out of range.
    pub const LBA_OUT_OF_RANGE: StatusCode = sc(0, 0x80);
    /// Capacity exceeded.
    pub const CAPACITY_EXCEEDED: StatusCode = sc(0, 0x81);
    /// Namespace not ready.
    pub const NAMESPACE_NOT_READY: StatusCode = sc(0, 0x82);

    /// Create I/O SQ: completion queue invalid.
    pub const COMPLETION_QUEUE_INVALID: StatusCode = sc(1, 0x00);
    /// Create/Delete I/O queue: invalid queue identifier.
    pub const INVALID_QUEUE_IDENTIFIER: StatusCode = sc(1, 0x01);
    /// Create I/O queue: invalid queue size.
    pub const INVALID_QUEUE_SIZE: StatusCode = sc(1, 0x02);
    /// Abort: abort command limit exceeded.
    pub const ABORT_LIMIT_EXCEEDED: StatusCode = sc(1, 0x03);
    /// Asynchronous Event Request: limit exceeded.
    pub const AER_LIMIT_EXCEEDED: StatusCode = sc(1, 0x05);
    /// Create I/O CQ: invalid interrupt vector.
    pub const INVALID_INTERRUPT_VECTOR: StatusCode = sc(1, 0x08);
    /// Get Log Page: invalid log page.
    pub const INVALID_LOG_PAGE: StatusCode = sc(1, 0x09);
    /// Delete I/O CQ: invalid queue deletion.
    pub const INVALID_QUEUE_DELETION: StatusCode = sc(1, 0x0C);
    /// Set Features: feature identifier not saveable.
    pub const FEATURE_NOT_SAVEABLE: StatusCode = sc(1, 0x0D);
    /// Set Features: feature not changeable.
    pub const FEATURE_NOT_CHANGEABLE: StatusCode = sc(1, 0x0E);
    /// Set Features: feature not namespace specific.
    pub const FEATURE_NOT_NS_SPECIFIC: StatusCode = sc(1, 0x0F);
    /// Connect: incompatible format (same code as [`StatusCode::CONFLICTING_ATTRIBUTES`]).
    pub const CONNECT_INCOMPATIBLE_FORMAT: StatusCode = sc(1, 0x80);
    /// Connect: controller busy (same code as [`StatusCode::INVALID_PROTECTION_INFO`]).
    pub const CONNECT_CONTROLLER_BUSY: StatusCode = sc(1, 0x81);
    /// Connect: invalid parameters; DW0 holds an [`InvalidParameter`] (same code as
    /// [`StatusCode::WRITE_TO_READ_ONLY`]).
    pub const CONNECT_INVALID_PARAMETERS: StatusCode = sc(1, 0x82);
    /// Connect: restart discovery.
    pub const CONNECT_RESTART_DISCOVERY: StatusCode = sc(1, 0x83);
    /// Connect: invalid host.
    pub const CONNECT_INVALID_HOST: StatusCode = sc(1, 0x84);
    /// Get Log Page (discovery): log restart discovery.
    pub const LOG_RESTART_DISCOVERY: StatusCode = sc(1, 0x90);
    /// Connect: authentication required.
    pub const AUTHENTICATION_REQUIRED: StatusCode = sc(1, 0x91);
    /// NVM I/O: conflicting attributes.
    pub const CONFLICTING_ATTRIBUTES: StatusCode = sc(1, 0x80);
    /// NVM I/O: invalid protection information.
    pub const INVALID_PROTECTION_INFO: StatusCode = sc(1, 0x81);
    /// NVM I/O: attempted write to read only range.
    pub const WRITE_TO_READ_ONLY: StatusCode = sc(1, 0x82);

    /// Write fault.
    pub const WRITE_FAULT: StatusCode = sc(2, 0x80);
    /// Unrecovered read error.
    pub const UNRECOVERED_READ_ERROR: StatusCode = sc(2, 0x81);
    /// Compare failure.
    pub const COMPARE_FAILURE: StatusCode = sc(2, 0x85);
    /// Access denied.
    pub const ACCESS_DENIED: StatusCode = sc(2, 0x86);

    /// Internal path error.
    pub const INTERNAL_PATH_ERROR: StatusCode = sc(3, 0x00);
    /// Asymmetric access persistent loss.
    pub const ANA_PERSISTENT_LOSS: StatusCode = sc(3, 0x01);
    /// Asymmetric access inaccessible.
    pub const ANA_INACCESSIBLE: StatusCode = sc(3, 0x02);
    /// Asymmetric access transition.
    pub const ANA_TRANSITION: StatusCode = sc(3, 0x03);
    /// Command aborted by host (host path error).
    pub const HOST_PATH_ERROR: StatusCode = sc(3, 0x70);

    /// The status with `DNR` set and no CRD/More: what a target returns for a request that will
    /// fail the same way again.
    pub const fn dnr(self) -> Status {
        Status {
            code: self,
            crd: 0,
            more: false,
            dnr: true,
        }
    }

    /// The status with no flags (the command may be retried).
    pub const fn retryable(self) -> Status {
        Status {
            code: self,
            crd: 0,
            more: false,
            dnr: false,
        }
    }

    /// The spec's name for this code, or `None` if this crate has no name for it.
    pub fn name(self) -> Option<&'static str> {
        Some(match (self.sct.0, self.sc) {
            (0, 0x00) => "Successful Completion",
            (0, 0x01) => "Invalid Command Opcode",
            (0, 0x02) => "Invalid Field in Command",
            (0, 0x03) => "Command ID Conflict",
            (0, 0x04) => "Data Transfer Error",
            (0, 0x06) => "Internal Error",
            (0, 0x07) => "Command Abort Requested",
            (0, 0x08) => "Command Aborted due to SQ Deletion",
            (0, 0x0B) => "Invalid Namespace or Format",
            (0, 0x0C) => "Command Sequence Error",
            (0, 0x0F) => "Data SGL Length Invalid",
            (0, 0x11) => "SGL Descriptor Type Invalid",
            (0, 0x13) => "Invalid PRP Offset",
            (0, 0x16) => "SGL Offset Invalid",
            (0, 0x18) => "Host Identifier Inconsistent Format",
            (0, 0x19) => "Keep Alive Timer Expired",
            (0, 0x1A) => "Keep Alive Timeout Invalid",
            (0, 0x22) => "Transient Transport Error",
            (0, 0x80) => "LBA Out of Range",
            (0, 0x81) => "Capacity Exceeded",
            (0, 0x82) => "Namespace Not Ready",
            (1, 0x00) => "Completion Queue Invalid",
            (1, 0x01) => "Invalid Queue Identifier",
            (1, 0x02) => "Invalid Queue Size",
            (1, 0x03) => "Abort Command Limit Exceeded",
            (1, 0x05) => "Asynchronous Event Request Limit Exceeded",
            (1, 0x08) => "Invalid Interrupt Vector",
            (1, 0x09) => "Invalid Log Page",
            (1, 0x0C) => "Invalid Queue Deletion",
            (1, 0x0D) => "Feature Identifier Not Saveable",
            (1, 0x0E) => "Feature Not Changeable",
            (1, 0x0F) => "Feature Not Namespace Specific",
            (1, 0x80) => "Connect Incompatible Format / Conflicting Attributes",
            (1, 0x81) => "Connect Controller Busy / Invalid Protection Information",
            (1, 0x82) => "Connect Invalid Parameters / Attempted Write to Read Only Range",
            (1, 0x83) => "Connect Restart Discovery",
            (1, 0x84) => "Connect Invalid Host",
            (1, 0x90) => "Discover Restart",
            (1, 0x91) => "Authentication Required",
            (2, 0x80) => "Write Fault",
            (2, 0x81) => "Unrecovered Read Error",
            (2, 0x85) => "Compare Failure",
            (2, 0x86) => "Access Denied",
            (3, 0x00) => "Internal Path Error",
            (3, 0x01) => "Asymmetric Access Persistent Loss",
            (3, 0x02) => "Asymmetric Access Inaccessible",
            (3, 0x03) => "Asymmetric Access Transition",
            (3, 0x70) => "Command Aborted By Host",
            _ => return None,
        })
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} (SCT {:#x}, SC {:#04x})", self.sct.0, self.sc),
            None => write!(f, "status SCT {:#x}, SC {:#04x}", self.sct.0, self.sc),
        }
    }
}

/// The status of a completion without the phase tag: code plus the retry hints. `Copy`; the
/// data path passes it by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status {
    /// SCT and SC.
    pub code: StatusCode,
    /// Command Retry Delay: 0, or which of Identify's CRDT1..3 to wait before a retry (2 bits).
    pub crd: u8,
    /// More: the error log has more about this error.
    pub more: bool,
    /// Do Not Retry.
    pub dnr: bool,
}

impl Status {
    /// Successful completion.
    pub const SUCCESS: Status = StatusCode::SUCCESS.retryable();

    /// True for SCT 0 / SC 0.
    pub const fn is_success(&self) -> bool {
        self.code.sct.0 == 0 && self.code.sc == 0
    }

    /// The 16-bit status field with phase tag `phase`. Fields wider than their bits (SCT > 7,
    /// CRD > 3) are masked.
    pub const fn to_field(self, phase: bool) -> u16 {
        (self.dnr as u16) << 15
            | (self.more as u16) << 14
            | ((self.crd & 0x3) as u16) << 12
            | ((self.code.sct.0 & 0x7) as u16) << 9
            | (self.code.sc as u16) << 1
            | phase as u16
    }

    /// Splits a 16-bit status field into the status and the phase tag.
    #[inline]
    pub const fn from_field(field: u16) -> (Status, bool) {
        let status = Status {
            code: StatusCode {
                sct: Sct(((field >> 9) & 0x7) as u8),
                sc: (field >> 1) as u8,
            },
            crd: ((field >> 12) & 0x3) as u8,
            more: field & (1 << 14) != 0,
            dnr: field & (1 << 15) != 0,
        };
        (status, field & 1 != 0)
    }
}

impl From<StatusCode> for Status {
    fn from(code: StatusCode) -> Self {
        code.retryable()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if self.crd != 0 {
            write!(f, ", CRD {}", self.crd)?;
        }
        if self.more {
            f.write_str(", More")?;
        }
        if self.dnr {
            f.write_str(", DNR")?;
        }
        Ok(())
    }
}

/// A completion queue entry. Built by the target per command and by the PCIe controller model;
/// decoded by the initiator (from a CapsuleResp) and the PCIe driver (from the CQ ring, after it
/// saw the phase tag flip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cqe {
    /// Command specific result, dword 0.
    pub dw0: u32,
    /// Command specific result, dword 1.
    pub dw1: u32,
    /// SQ head pointer (SQHD).
    pub sq_head: u16,
    /// SQ identifier the command came from.
    pub sq_id: u16,
    /// Command identifier, echoed from the SQE.
    pub cid: u16,
    /// Completion status.
    pub status: Status,
    /// Phase tag (PCIe); `false` over fabrics.
    pub phase: bool,
}

impl Default for Status {
    fn default() -> Self {
        Status::SUCCESS
    }
}

impl Cqe {
    /// The 16 bytes of this entry.
    pub fn to_bytes(&self) -> [u8; CQE_LEN] {
        let mut b = [0u8; CQE_LEN];
        put_u32::<0, CQE_LEN>(&mut b, self.dw0);
        put_u32::<4, CQE_LEN>(&mut b, self.dw1);
        put_u16::<8, CQE_LEN>(&mut b, self.sq_head);
        put_u16::<10, CQE_LEN>(&mut b, self.sq_id);
        put_u16::<12, CQE_LEN>(&mut b, self.cid);
        put_u16::<14, CQE_LEN>(&mut b, self.status.to_field(self.phase));
        b
    }

    /// Writes the entry into the first 16 bytes of `out` (a CQ slot, a CapsuleResp header);
    /// returns 16.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, ProtoError> {
        *array_mut::<CQE_LEN>(out, "CQE")? = self.to_bytes();
        Ok(CQE_LEN)
    }

    /// The entry in 16 bytes. Every bit pattern is a valid entry.
    #[inline]
    pub fn from_bytes(b: &[u8; CQE_LEN]) -> Self {
        let (status, phase) = Status::from_field(get_u16::<14, CQE_LEN>(b));
        Cqe {
            dw0: get_u32::<0, CQE_LEN>(b),
            dw1: get_u32::<4, CQE_LEN>(b),
            sq_head: get_u16::<8, CQE_LEN>(b),
            sq_id: get_u16::<10, CQE_LEN>(b),
            cid: get_u16::<12, CQE_LEN>(b),
            status,
            phase,
        }
    }

    /// Decodes the first 16 bytes of `buf`; `Err` only if it is shorter.
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        Ok(Self::from_bytes(array::<CQE_LEN>(buf, "CQE")?))
    }

    /// The 64-bit result (DW1:DW0), as Property Get returns an 8-byte property.
    pub const fn result_u64(&self) -> u64 {
        (self.dw1 as u64) << 32 | self.dw0 as u64
    }
}

/// DW0 of a successful Connect: the controller id, and whether authentication is required.
/// Built by the target, read by the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectResponse {
    /// The controller id the host is now connected to (bits 15:0).
    pub cntlid: u16,
    /// ATR, authentication required (bit 17); Keel never sets it.
    pub authentication_required: bool,
    /// ASCR, secure channel required (bit 18); Keel never sets it.
    pub secure_channel_required: bool,
}

impl ConnectResponse {
    /// The DW0 value.
    pub const fn to_dw0(self) -> u32 {
        self.cntlid as u32 | (self.authentication_required as u32) << 17 | (self.secure_channel_required as u32) << 18
    }

    /// Reads DW0 of a successful Connect completion.
    pub const fn from_dw0(dw0: u32) -> Self {
        ConnectResponse {
            cntlid: dw0 as u16,
            authentication_required: dw0 & (1 << 17) != 0,
            secure_channel_required: dw0 & (1 << 18) != 0,
        }
    }
}

/// DW0 of a Connect that failed with [`StatusCode::CONNECT_INVALID_PARAMETERS`]: where the bad
/// field is. Built by the target from the failing field's offset, read by the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InvalidParameter {
    /// IATTR: the offset is into the Connect data (`true`) or into the SQE (`false`).
    pub in_data: bool,
    /// IPO: byte offset of the field.
    pub offset: u16,
}

impl InvalidParameter {
    /// The DW0 value (IPO in bits 15:0, IATTR in bit 16).
    pub const fn to_dw0(self) -> u32 {
        self.offset as u32 | (self.in_data as u32) << 16
    }

    /// Reads DW0 of the failed Connect.
    pub const fn from_dw0(dw0: u32) -> Self {
        InvalidParameter {
            in_data: dw0 & (1 << 16) != 0,
            offset: dw0 as u16,
        }
    }
}

/// The kind of an asynchronous event (bits 2:0 of an AER completion's DW0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncEventType(pub u8);

impl AsyncEventType {
    /// Error status.
    pub const ERROR: AsyncEventType = AsyncEventType(0);
    /// SMART / health status.
    pub const SMART: AsyncEventType = AsyncEventType(1);
    /// Notice.
    pub const NOTICE: AsyncEventType = AsyncEventType(2);
    /// I/O command set specific status.
    pub const IO_COMMAND_SET: AsyncEventType = AsyncEventType(6);
    /// Vendor specific.
    pub const VENDOR: AsyncEventType = AsyncEventType(7);
}

/// DW0 of an Asynchronous Event Request completion. Built by the target when an event fires
/// (a namespace added or removed, the discovery log changed), read by the initiator, which then
/// reads the named log page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncEvent {
    /// Event type (3 bits).
    pub event_type: AsyncEventType,
    /// Event information, meaning per type (bits 15:8).
    pub info: u8,
    /// The log page to read to learn more and re-arm the event (bits 23:16).
    pub log_page: LogPageId,
}

impl AsyncEvent {
    /// Notice info: namespace attribute changed (read [`LogPageId::CHANGED_NS_LIST`]).
    pub const NOTICE_NS_ATTRIBUTE_CHANGED: u8 = 0x00;
    /// Notice info: firmware activation starting.
    pub const NOTICE_FW_ACTIVATION_STARTING: u8 = 0x01;
    /// Notice info: ANA change (read [`LogPageId::ANA`]).
    pub const NOTICE_ANA_CHANGE: u8 = 0x03;
    /// Notice info: discovery log page changed (read [`LogPageId::DISCOVERY`]).
    pub const NOTICE_DISCOVERY_LOG_CHANGED: u8 = 0xF0;

    /// The event a target posts when namespaces of a subsystem were added or removed.
    pub const NS_ATTRIBUTE_CHANGED: AsyncEvent = AsyncEvent {
        event_type: AsyncEventType::NOTICE,
        info: Self::NOTICE_NS_ATTRIBUTE_CHANGED,
        log_page: LogPageId::CHANGED_NS_LIST,
    };

    /// The event a discovery controller posts when its log changed.
    pub const DISCOVERY_LOG_CHANGED: AsyncEvent = AsyncEvent {
        event_type: AsyncEventType::NOTICE,
        info: Self::NOTICE_DISCOVERY_LOG_CHANGED,
        log_page: LogPageId::DISCOVERY,
    };

    /// The DW0 value (the type is masked to 3 bits).
    pub const fn to_dw0(self) -> u32 {
        (self.event_type.0 & 0x7) as u32 | (self.info as u32) << 8 | (self.log_page.0 as u32) << 16
    }

    /// Reads DW0 of an AER completion.
    pub const fn from_dw0(dw0: u32) -> Self {
        AsyncEvent {
            event_type: AsyncEventType((dw0 & 0x7) as u8),
            info: (dw0 >> 8) as u8,
            log_page: LogPageId((dw0 >> 16) as u8),
        }
    }
}

impl ProtoError {
    /// The completion status a controller returns for a command that failed to decode with this
    /// error: Invalid Command Opcode for an unknown opcode or Fabrics command type, SGL
    /// Descriptor Type Invalid for an unusable data pointer, Data Transfer Error for a data
    /// digest mismatch, Invalid Field in Command otherwise — all with DNR, since the same
    /// command would fail the same way again (a transport error is the exception and may be
    /// retried).
    pub fn status(&self) -> Status {
        match self {
            ProtoError::Field {
                field: "OPC" | "FCTYPE",
                ..
            } => StatusCode::INVALID_OPCODE.dnr(),
            ProtoError::Field {
                what: "SGL descriptor", ..
            } => StatusCode::SGL_DESCRIPTOR_TYPE_INVALID.dnr(),
            ProtoError::DataDigest { .. } => StatusCode::DATA_TRANSFER_ERROR.retryable(),
            ProtoError::Pdu { .. }
            | ProtoError::Unsupported { .. }
            | ProtoError::Limit { .. }
            | ProtoError::Sequence { .. }
            | ProtoError::TermReqLength { .. }
            | ProtoError::HeaderDigest { .. } => StatusCode::TRANSIENT_TRANSPORT_ERROR.retryable(),
            ProtoError::Truncated { .. }
            | ProtoError::BufferTooSmall { .. }
            | ProtoError::Field { .. }
            | ProtoError::Nqn { .. } => StatusCode::INVALID_FIELD.dnr(),
        }
    }
}

/// Fails unless `v` fits in `bits` bits; for encoders of packed fields.
pub(crate) fn check_bits(
    what: &'static str,
    field: &'static str,
    offset: usize,
    v: u64,
    bits: u32,
) -> Result<(), ProtoError> {
    if bits < 64 && v >> bits != 0 {
        return Err(ProtoError::field(
            what,
            field,
            offset,
            Expected::AtMost((1u64 << bits) - 1),
            v,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_status_values() {
        // nvme-tcp.md §8: nvmet Invalid Opcode = 0xC002 (sc 01, More, DNR).
        let (s, p) = Status::from_field(0xC002);
        assert!(!p);
        assert_eq!(s.code, StatusCode::INVALID_OPCODE);
        assert!(s.more && s.dnr);
        assert_eq!(s.to_field(false), 0xC002);
        // Connect invalid parameter = 0x8304 (sct 1, sc 0x82, DNR).
        assert_eq!(StatusCode::CONNECT_INVALID_PARAMETERS.dnr().to_field(false), 0x8304);
        assert_eq!(Status::SUCCESS.to_field(true), 1);
        assert_eq!(
            StatusCode::INVALID_FIELD.dnr().to_string(),
            "Invalid Field in Command (SCT 0x0, SC 0x02), DNR"
        );
        assert_eq!(sc(5, 0x42).to_string(), "status SCT 0x5, SC 0x42");
    }

    #[test]
    fn captured_connect_response() {
        // nvme-tcp.md §5: the CQE inside the captured CapsuleResp: CNTLID 1, SQHD 1.
        let b = [0x01, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0];
        let c = Cqe::decode(&b).unwrap();
        assert_eq!(ConnectResponse::from_dw0(c.dw0).cntlid, 1);
        assert_eq!(c.sq_head, 1);
        assert_eq!((c.sq_id, c.cid), (0, 0));
        assert!(c.status.is_success());
        assert_eq!(c.to_bytes(), b);
    }

    #[test]
    fn connect_invalid_parameter_dw0() {
        // nvme-tcp.md §9.1: admin CNTLID != FFFF -> 0x00010010; SQSIZE 0 -> 0x0000002C.
        assert_eq!(
            InvalidParameter {
                in_data: true,
                offset: 16
            }
            .to_dw0(),
            0x0001_0010
        );
        assert_eq!(
            InvalidParameter::from_dw0(0x2C),
            InvalidParameter {
                in_data: false,
                offset: 0x2C
            }
        );
    }

    #[test]
    fn async_event_dw0() {
        // AER for a namespace attribute change: type 2, info 0, LID 4.
        assert_eq!(AsyncEvent::NS_ATTRIBUTE_CHANGED.to_dw0(), 0x0004_0002);
        assert_eq!(AsyncEvent::from_dw0(0x0070_F002), AsyncEvent::DISCOVERY_LOG_CHANGED);
        // QEMU's invalid doorbell event: 0x00010000.
        let e = AsyncEvent::from_dw0(0x0001_0000);
        assert_eq!(
            (e.event_type, e.info, e.log_page),
            (AsyncEventType::ERROR, 0, LogPageId::ERROR)
        );
    }

    #[test]
    fn short_and_long_buffers() {
        assert!(matches!(
            Cqe::decode(&[0; 15]),
            Err(ProtoError::Truncated { need: 16, have: 15, .. })
        ));
        let mut out = [0xAAu8; 20];
        assert_eq!(Cqe::default().encode(&mut out), Ok(16));
        assert_eq!(&out[16..], &[0xAA; 4]);
    }
}
