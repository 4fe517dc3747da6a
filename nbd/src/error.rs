//! The crate's one error enum ([`NbdError`]), the typed reasons a connection ends
//! ([`CloseReason`]) and the error numbers that travel in replies ([`Errno`]).
//!
//! Values only: whoever gets one (the connection's reactor, a test, a client helper) owns it.

use thiserror::Error;

/// Why a connection must be closed, as decided by the handshake or the request parser.
///
/// Returned to the server on the connection's reactor; after it the server sends whatever the
/// call already wrote into its output buffer (if anything) and closes the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum CloseReason {
    /// The client sent client flags with bits the server does not know.
    #[error("unknown client flags {0:#010x}")]
    UnknownClientFlags(u32),
    /// The client set `NO_ZEROES` though the server did not offer it.
    #[error("client set NO_ZEROES, which the server did not offer")]
    NoZeroesNotOffered,
    /// An option header did not start with `IHAVEOPT`.
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    /// An option announced more data than the configured maximum; refused without buffering.
    #[error("option {option} announces {len_bytes} bytes of data, more than the {max_bytes} allowed")]
    OptionTooLong {
        /// The option code.
        option: u32,
        /// The announced data length.
        len_bytes: u32,
        /// The configured maximum.
        max_bytes: u32,
    },
    /// The client asked to abort the negotiation (soft disconnect); the `ACK` is in the output.
    #[error("client aborted the negotiation")]
    Aborted,
    /// `EXPORT_NAME` named an export that does not exist (it cannot be answered with an error).
    #[error("EXPORT_NAME for an unknown export")]
    UnknownExport,
    /// `EXPORT_NAME` after extended headers were negotiated (forbidden by the protocol).
    #[error("EXPORT_NAME after extended headers were negotiated")]
    ExportNameWithExtendedHeaders,
    /// `EXPORT_NAME` while the server is shutting down (it cannot be answered with an error).
    #[error("EXPORT_NAME while the server is shutting down")]
    ShuttingDown,
    /// The handshake already finished; no more bytes belong to it.
    #[error("the handshake is over")]
    HandshakeOver,
    /// A request header did not start with the magic the session uses.
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    /// A request announced a payload larger than can be received, even to be discarded.
    #[error("request payload of {len_bytes} bytes is over the limit of {max_bytes}")]
    PayloadTooLarge {
        /// The announced payload length.
        len_bytes: u64,
        /// The largest payload this session receives or discards.
        max_bytes: u64,
    },
}

/// Error numbers carried in simple replies and error chunks (the protocol's own values).
///
/// `ENOMEM` exists on the wire but Keel avoids it, as the protocol asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Errno {
    /// 1: write, trim or zero on a read-only export.
    Perm = 1,
    /// 5: I/O failure.
    Io = 5,
    /// 12: out of memory (avoid).
    NoMem = 12,
    /// 22: bad command, flags, alignment or range.
    Inval = 22,
    /// 28: write or write-zeroes past the end.
    NoSpc = 28,
    /// 75: request too large (DF reads).
    Overflow = 75,
    /// 95: `FAST_ZERO` cannot be fast.
    NotSup = 95,
    /// 108: the server is shutting down; the client must soft-disconnect.
    Shutdown = 108,
}

impl Errno {
    /// The value on the wire.
    pub const fn wire(self) -> u32 {
        self as u32
    }

    /// The errno of a wire value; `None` for 0 and for values the protocol does not define
    /// (clients treat those as `EINVAL`).
    pub const fn from_wire(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::Perm,
            5 => Self::Io,
            12 => Self::NoMem,
            22 => Self::Inval,
            28 => Self::NoSpc,
            75 => Self::Overflow,
            95 => Self::NotSup,
            108 => Self::Shutdown,
            _ => return None,
        })
    }
}

/// Errors of the crate's API (not of the peer's protocol, which end in an error reply or a
/// [`CloseReason`]): the protocol core's encoders and the server's control path
/// ([`crate::server`]). [`NbdError::errno`] gives the negative errno the RPC edge reports.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum NbdError {
    /// No export, listener or bdev of that name (ENODEV).
    #[error("{0}")]
    NotFound(String),
    /// An export or listener of that name exists already (EEXIST).
    #[error("{0}")]
    Exists(String),
    /// In use: an export with connections, a bdev held or claimed by someone else (EBUSY).
    #[error("{0}")]
    Busy(String),
    /// A control-path parameter Keel does not accept (EINVAL).
    #[error("invalid parameter '{param}': {reason}")]
    InvalidParam {
        /// The parameter's name.
        param: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An operating-system call of the control path failed (bind, listen).
    #[error("{context}: {message}")]
    Os {
        /// What was being done.
        context: String,
        /// The OS error number (positive).
        errno: i32,
        /// The OS error's text.
        message: String,
    },
    /// The bdev layer refused (open, hold).
    #[error("{message}")]
    Bdev {
        /// The bdev error's negative errno.
        errno: i32,
        /// Its text.
        message: String,
    },
    /// A caller-provided output buffer is too small for what must be encoded.
    #[error("buffer too small: need {need_bytes} bytes, have {have_bytes}")]
    BufferTooSmall {
        /// Bytes the encoding needs.
        need_bytes: usize,
        /// Bytes the buffer has.
        have_bytes: usize,
    },
    /// Block-size constraints that the protocol does not allow.
    #[error("invalid block sizes min {min_bytes} preferred {preferred_bytes} max {max_bytes}: {why}")]
    InvalidBlockSizes {
        /// Minimum block size.
        min_bytes: u32,
        /// Preferred block size.
        preferred_bytes: u32,
        /// Maximum payload.
        max_bytes: u32,
        /// The rule broken.
        why: &'static str,
    },
    /// A string (export name, description, message, query) that the protocol does not allow.
    #[error("invalid string: {0}")]
    InvalidString(&'static str),
    /// The reply form asked for does not exist in this session's reply mode.
    #[error("{what} is not available with {mode} replies")]
    NotInMode {
        /// What was asked for.
        what: &'static str,
        /// The session's reply mode.
        mode: &'static str,
    },
    /// Invalid block-status extents (none, a zero length, too many, or too long).
    #[error("invalid extents: {0}")]
    InvalidExtents(&'static str),
    /// Bytes to decode end before the message does.
    #[error("truncated: need {need_bytes} bytes, have {have_bytes}")]
    Truncated {
        /// Bytes the message needs.
        need_bytes: usize,
        /// Bytes available.
        have_bytes: usize,
    },
    /// Bytes to decode are not a valid message.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// The message kind.
        what: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl NbdError {
    /// The negative errno of the error at the RPC edge (SPDK style): -19 not found, -17 exists,
    /// -16 busy, -22 invalid, the OS's or bdev layer's own number otherwise.
    pub fn errno(&self) -> i32 {
        match self {
            NbdError::NotFound(_) => -19,
            NbdError::Exists(_) => -17,
            NbdError::Busy(_) => -16,
            NbdError::Os { errno, .. } => -errno.abs(),
            NbdError::Bdev { errno, .. } => *errno,
            _ => -22,
        }
    }

    /// Wraps an OS error with what was being done.
    pub fn os(context: impl Into<String>, e: &std::io::Error) -> NbdError {
        NbdError::Os {
            context: context.into(),
            errno: e.raw_os_error().unwrap_or(5),
            message: e.to_string(),
        }
    }

    /// Shorthand for [`NbdError::InvalidParam`].
    pub fn invalid(param: &'static str, reason: impl Into<String>) -> NbdError {
        NbdError::InvalidParam {
            param,
            reason: reason.into(),
        }
    }
}

impl From<keel_bdev::BdevError> for NbdError {
    fn from(e: keel_bdev::BdevError) -> NbdError {
        NbdError::Bdev {
            errno: e.errno(),
            message: e.to_string(),
        }
    }
}
