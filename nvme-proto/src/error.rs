//! The crate's one error type.
//!
//! Every decoder and encoder returns [`ProtoError`]. It is `Copy` and holds only static strings
//! and integers, so a reactor can return it from the data path without allocating. The variants
//! say which layer rejected the input, so the caller can answer the way the spec asks:
//! - [`ProtoError::Field`]: a field of an NVMe structure (SQE, Connect data, Identify, …) has a
//!   value this crate cannot represent; a target answers with [`ProtoError::status`]
//!   (`crate::cqe`), Connect errors also carry the byte offset for the IPO of the response.
//! - [`ProtoError::Pdu`], [`ProtoError::Unsupported`], [`ProtoError::Limit`],
//!   [`ProtoError::Sequence`], [`ProtoError::HeaderDigest`]: an NVMe/TCP stream error; the
//!   connection is terminated with the TermReq that [`ProtoError::fatal_error`] (`crate::tcp`)
//!   names.
//! - [`ProtoError::DataDigest`]: only the command that owned the data fails.

use std::fmt;

/// What a rejected field should have held. Part of [`ProtoError`]; printed by its `Display`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Exactly this value.
    Exactly(u64),
    /// One of these values.
    OneOf(&'static [u64]),
    /// A value in `min..=max`.
    Range {
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// At least this value.
    AtLeast(u64),
    /// At most this value.
    AtMost(u64),
    /// A multiple of this value.
    MultipleOf(u64),
    /// A condition described in words.
    Text(&'static str),
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Exactly(v) => write!(f, "{v:#x}"),
            Expected::OneOf(vs) => {
                f.write_str("one of ")?;
                for (i, v) in vs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v:#x}")?;
                }
                Ok(())
            }
            Expected::Range { min, max } => write!(f, "{min:#x}..={max:#x}"),
            Expected::AtLeast(v) => write!(f, ">= {v:#x}"),
            Expected::AtMost(v) => write!(f, "<= {v:#x}"),
            Expected::MultipleOf(v) => write!(f, "a multiple of {v}"),
            Expected::Text(t) => f.write_str(t),
        }
    }
}

/// Why bytes could not be decoded or encoded. Returned by every function of this crate that can
/// fail; never a panic instead. Cheap to copy and to return from a poller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The input ended before the structure did.
    #[error("{what}: need {need} bytes, have {have}")]
    Truncated {
        /// The structure being decoded.
        what: &'static str,
        /// Bytes the structure needs.
        need: usize,
        /// Bytes the input had.
        have: usize,
    },
    /// The caller's output buffer is smaller than the encoding.
    #[error("{what}: output buffer needs {need} bytes, has {have}")]
    BufferTooSmall {
        /// The structure being encoded.
        what: &'static str,
        /// Bytes the encoding needs.
        need: usize,
        /// Bytes the buffer has.
        have: usize,
    },
    /// A field of an NVMe structure (command, Connect data, Identify, log page, …) holds a value
    /// that is invalid or that this crate does not know.
    #[error("{what} {field} (byte {offset}): expected {expected}, found {found:#x}")]
    Field {
        /// The structure.
        what: &'static str,
        /// The field's name as the spec writes it.
        field: &'static str,
        /// Byte offset of the field in the structure.
        offset: usize,
        /// What the field should hold.
        expected: Expected,
        /// What it held.
        found: u64,
    },
    /// An NVMe/TCP PDU header field is invalid (fatal: FES 01h, FEI = `offset`).
    #[error("{pdu} PDU header {field} (byte {offset}): expected {expected}, found {found:#x}")]
    Pdu {
        /// The PDU type's name (or "PDU" if the type itself is wrong).
        pdu: &'static str,
        /// The field.
        field: &'static str,
        /// Byte offset of the field from the start of the PDU.
        offset: usize,
        /// What the field should hold.
        expected: Expected,
        /// What it held.
        found: u64,
    },
    /// An NVMe/TCP parameter this side does not support (fatal: FES 06h, FEI = `offset`).
    #[error("{pdu} {field} (byte {offset}) unsupported: expected {expected}, found {found:#x}")]
    Unsupported {
        /// The PDU type's name.
        pdu: &'static str,
        /// The field.
        field: &'static str,
        /// Byte offset of the field from the start of the PDU.
        offset: usize,
        /// What this side supports.
        expected: Expected,
        /// What the peer sent.
        found: u64,
    },
    /// A PDU carries more data than this side accepts (fatal: FES 05h).
    #[error("{pdu} {field}: {found} bytes exceed the limit of {limit}")]
    Limit {
        /// The PDU type's name.
        pdu: &'static str,
        /// What is limited.
        field: &'static str,
        /// The negotiated or configured limit.
        limit: u64,
        /// What the PDU carried.
        found: u64,
    },
    /// A PDU arrived where the connection's state does not allow it (fatal: FES 02h).
    #[error("PDU sequence: expected {expected}, received {found}")]
    Sequence {
        /// What the state allows.
        expected: &'static str,
        /// The PDU type's name.
        found: &'static str,
    },
    /// A termination request PDU with an impossible length: the spec says to close the
    /// connection without answering.
    #[error("termination request PDU length {plen} outside 24..=152")]
    TermReqLength {
        /// The PLEN received.
        plen: u32,
    },
    /// The header digest does not match the header (fatal: FES 03h).
    #[error("header digest mismatch: computed {computed:#010x}, received {received:#010x}")]
    HeaderDigest {
        /// CRC32C of the received header.
        computed: u32,
        /// The HDGST field.
        received: u32,
    },
    /// The data digest does not match the data. Not fatal for the stream: the PDU was consumed
    /// whole and parsing goes on; the command that owned the data fails.
    #[error("data digest mismatch: computed {computed:#010x}, received {received:#010x}")]
    DataDigest {
        /// CRC32C of the received data.
        computed: u32,
        /// The DDGST field.
        received: u32,
    },
    /// An NVMe Qualified Name is malformed.
    #[error("invalid NQN: {reason}")]
    Nqn {
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl ProtoError {
    /// Shorthand used by the decoders of this crate.
    pub(crate) const fn field(
        what: &'static str,
        field: &'static str,
        offset: usize,
        expected: Expected,
        found: u64,
    ) -> Self {
        ProtoError::Field {
            what,
            field,
            offset,
            expected,
            found,
        }
    }
}
