//! Transmission-phase requests: the raw header ([`RequestHeader`], compact 28 bytes or
//! extended 32 bytes) and its validation against the session ([`RequestDecoder`]).
//!
//! # Design
//!
//! Framing and meaning are separate steps. [`RequestHeader::decode`] only splits bytes into
//! fields and checks the magic — a wrong magic means the stream is out of step and the only
//! safe answer is to close. [`RequestDecoder::decode`] then checks everything else in one pass
//! and yields either a typed [`Request`], a [`Rejection`] (the errno to answer the cookie with,
//! and how many payload bytes to read and drop first so the stream stays in step), or a
//! [`CloseReason`] when the payload is too large even to drop.
//!
//! The decoder is built once per connection from the [`Session`] and holds only integers: no
//! allocation, no lock and no dynamic call per request, so it is fit for the data path.
//!
//! Checks, in order (the first failure decides the errno):
//! 1. magic (close); announced payload beyond what may be drained (close);
//! 2. command known (`EINVAL`); `DISC` is accepted whatever else it carries — it has no reply;
//! 3. flags known and valid for the command and the negotiated features (`EINVAL`);
//!    `PAYLOAD_LEN` only with extended headers, and there only on `WRITE` (where it is
//!    redundant: a `WRITE`'s length is always its payload's, and qemu 10 does not set the flag)
//!    or on a command that would take a payload (none is offered: `EINVAL`, payload drained);
//! 4. write-side command on a read-only export (`EPERM`);
//! 5. command advertised (`FLUSH`, `TRIM`, `WRITE_ZEROES`; `BLOCK_STATUS` needs chunked replies
//!    and a selected context) (`EINVAL`). `CACHE` is accepted unadvertised, as clients send it;
//! 6. `FLUSH` with nonzero offset/length, or a zero length elsewhere (`EINVAL`);
//! 7. range past the end (`ENOSPC` for `WRITE`/`WRITE_ZEROES`, else `EINVAL`);
//! 8. offset/length not multiples of the minimum block size when the session checks alignment
//!    (a length may end exactly at the export's end) (`EINVAL`);
//! 9. `READ`/`WRITE`/`CACHE` longer than the maximum payload (`EINVAL`). Payload-less
//!    commands (`TRIM`, `WRITE_ZEROES`, `BLOCK_STATUS`) may exceed it.
//!
//! A compact `WRITE` whose payload is over the maximum is rejected but its payload drained, up
//! to `max(2 × maximum, 32 MiB)`; beyond that, and for any extended `PAYLOAD_LEN` over the
//! maximum (as the protocol recommends), the connection is closed.

use crate::consts::*;
use crate::error::{CloseReason, Errno, NbdError};
use crate::handshake::Session;
use crate::wire::{be16, be32, be64, put16, put32, put64};

/// A command the server knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE` (a payload follows).
    Write,
    /// `NBD_CMD_DISC`: finish what is in flight, then close; no reply.
    Disc,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_CACHE`.
    Cache,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus,
}

impl Command {
    /// The command of a wire value, `None` if unknown.
    pub const fn from_wire(value: u16) -> Option<Self> {
        Some(match value {
            CMD_READ => Self::Read,
            CMD_WRITE => Self::Write,
            CMD_DISC => Self::Disc,
            CMD_FLUSH => Self::Flush,
            CMD_TRIM => Self::Trim,
            CMD_CACHE => Self::Cache,
            CMD_WRITE_ZEROES => Self::WriteZeroes,
            CMD_BLOCK_STATUS => Self::BlockStatus,
            _ => return None,
        })
    }

    /// The wire value.
    pub const fn wire(self) -> u16 {
        match self {
            Self::Read => CMD_READ,
            Self::Write => CMD_WRITE,
            Self::Disc => CMD_DISC,
            Self::Flush => CMD_FLUSH,
            Self::Trim => CMD_TRIM,
            Self::Cache => CMD_CACHE,
            Self::WriteZeroes => CMD_WRITE_ZEROES,
            Self::BlockStatus => CMD_BLOCK_STATUS,
        }
    }
}

/// Command flags of a request (validated when they come from a [`Request`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CommandFlags(pub u16);

impl CommandFlags {
    /// Every flag the protocol defines.
    pub const KNOWN: u16 =
        CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO | CMD_FLAG_PAYLOAD_LEN;

    /// The raw bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Whether every bit of `flag` is set.
    pub const fn contains(self, flag: u16) -> bool {
        self.0 & flag == flag
    }

    /// Reply only once this command's writes are durable.
    pub const fn fua(self) -> bool {
        self.contains(CMD_FLAG_FUA)
    }

    /// `WRITE_ZEROES` must allocate.
    pub const fn no_hole(self) -> bool {
        self.contains(CMD_FLAG_NO_HOLE)
    }

    /// `READ` in at most one content chunk.
    pub const fn df(self) -> bool {
        self.contains(CMD_FLAG_DF)
    }

    /// `BLOCK_STATUS`: one extent per context, not past the request.
    pub const fn req_one(self) -> bool {
        self.contains(CMD_FLAG_REQ_ONE)
    }

    /// `WRITE_ZEROES`: fail fast with `ENOTSUP` unless faster than writing.
    pub const fn fast_zero(self) -> bool {
        self.contains(CMD_FLAG_FAST_ZERO)
    }

    /// The length is a payload length (extended headers).
    pub const fn payload_len(self) -> bool {
        self.contains(CMD_FLAG_PAYLOAD_LEN)
    }
}

/// The fields of a request header as sent, before any validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestHeader {
    /// Command flags.
    pub flags: u16,
    /// Command type (may be unknown).
    pub command: u16,
    /// The client's opaque cookie, echoed in every reply.
    pub cookie: u64,
    /// Offset in the export.
    pub offset_bytes: u64,
    /// Length: payload length for `WRITE` (and extended `PAYLOAD_LEN`), else effect length.
    /// Compact headers carry 32 bits of it.
    pub length: u64,
}

impl RequestHeader {
    /// Header length: 32 bytes with extended headers, else 28.
    pub const fn len(extended: bool) -> usize {
        if extended {
            EXTENDED_REQUEST_LEN
        } else {
            COMPACT_REQUEST_LEN
        }
    }

    /// Splits the first [`Self::len`] bytes of `buf` into fields. `Ok(None)`: `buf` is shorter
    /// than a header. `Err`: the magic is not the one the session uses (close the connection).
    pub fn decode(extended: bool, buf: &[u8]) -> Result<Option<Self>, CloseReason> {
        let Some(h) = buf.get(..Self::len(extended)) else {
            return Ok(None);
        };
        let magic = be32(h, 0);
        let expected = if extended {
            EXTENDED_REQUEST_MAGIC
        } else {
            REQUEST_MAGIC
        };
        if magic != expected {
            return Err(CloseReason::BadRequestMagic(magic));
        }
        Ok(Some(Self {
            flags: be16(h, 4),
            command: be16(h, 6),
            cookie: be64(h, 8),
            offset_bytes: be64(h, 16),
            length: if extended { be64(h, 24) } else { u64::from(be32(h, 24)) },
        }))
    }

    /// Encodes the header into `out` (a client's side: tests, fuzz seeds, in-process clients)
    /// and returns its length. Compact headers need `length` to fit 32 bits.
    pub fn encode(&self, extended: bool, out: &mut [u8]) -> Result<usize, NbdError> {
        let len = Self::len(extended);
        let have_bytes = out.len();
        let h = out.get_mut(..len).ok_or(NbdError::BufferTooSmall {
            need_bytes: len,
            have_bytes,
        })?;
        put32(
            h,
            0,
            if extended {
                EXTENDED_REQUEST_MAGIC
            } else {
                REQUEST_MAGIC
            },
        );
        put16(h, 4, self.flags);
        put16(h, 6, self.command);
        put64(h, 8, self.cookie);
        put64(h, 16, self.offset_bytes);
        if extended {
            put64(h, 24, self.length);
        } else {
            let l = u32::try_from(self.length).map_err(|_| NbdError::Malformed {
                what: "compact request",
                why: "length over 32 bits",
            })?;
            put32(h, 24, l);
        }
        Ok(len)
    }
}

/// A validated request, ready to be turned into bdev I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    /// Echo in every reply.
    pub cookie: u64,
    /// What to do.
    pub command: Command,
    /// Its flags (only ones valid for the command and negotiated).
    pub flags: CommandFlags,
    /// Offset in the export (0 for `FLUSH` and `DISC`).
    pub offset_bytes: u64,
    /// Length in bytes: data for `READ`/`WRITE`, effect for the others; nonzero except for
    /// `FLUSH` and `DISC`.
    pub length_bytes: u64,
    /// Payload bytes that follow the header (the `WRITE` data; 0 otherwise).
    pub payload_bytes: u32,
}

/// A request answered with an error without being executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The request's cookie.
    pub cookie: u64,
    /// The request's command as sent (a `READ` must be answered with an error chunk when
    /// structured replies are on; [`ReplyEncoder::reject`](crate::ReplyEncoder::reject) does so).
    pub command: u16,
    /// The request's offset (echoed by extended reply headers).
    pub offset_bytes: u64,
    /// The error to answer with.
    pub errno: Errno,
    /// Payload bytes to read and drop before reading the next header.
    pub discard_bytes: u32,
    /// Why, for the error chunk's message and for logs.
    pub why: &'static str,
}

/// What [`RequestDecoder::decode`] found at the start of the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Fewer bytes than a header: receive at least `need_bytes` more.
    Incomplete {
        /// Bytes still missing.
        need_bytes: usize,
    },
    /// A valid request: drop the header ([`RequestDecoder::header_len`] bytes) from the receive
    /// buffer; its `payload_bytes` follow.
    Request(Request),
    /// An invalid request: drop `discard_bytes` after the header, answer with the errno,
    /// keep serving.
    Reject(Rejection),
    /// The stream cannot be followed any more: close without a reply.
    Close(CloseReason),
}

/// Validates request headers against one connection's session (see the module essay).
///
/// Built once when the connection enters transmission and used on its reactor for every
/// request; holds no buffers (the caller owns the receive buffer it passes in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestDecoder {
    extended: bool,
    size_bytes: u64,
    flags: u16,
    chunked: bool,
    block_status: bool,
    align_bytes: u64,
    max_payload_bytes: u64,
    drain_limit_bytes: u64,
}

impl RequestDecoder {
    /// The decoder for `session`.
    pub fn new(session: &Session) -> Self {
        let max = u64::from(session.block_sizes.max_bytes());
        let align = if session.check_alignment {
            u64::from(session.block_sizes.min_bytes())
        } else {
            1
        };
        Self {
            extended: session.extended_headers,
            size_bytes: session.size_bytes,
            flags: session.transmission_flags,
            chunked: session.structured_replies || session.extended_headers,
            block_status: session.base_allocation.is_some(),
            align_bytes: align,
            max_payload_bytes: max,
            drain_limit_bytes: (2 * max).max(u64::from(PORTABLE_MAX_PAYLOAD)).min(u64::from(u32::MAX)),
        }
    }

    /// Bytes of one request header in this session (28 or 32).
    pub const fn header_len(&self) -> usize {
        RequestHeader::len(self.extended)
    }

    /// The largest `READ`/`WRITE` payload accepted.
    pub const fn max_payload_bytes(&self) -> u64 {
        self.max_payload_bytes
    }

    /// Decodes and validates the request at the start of `buf` (the caller's receive buffer;
    /// only the first [`Self::header_len`] bytes are read).
    pub fn decode(&self, buf: &[u8]) -> Decoded {
        match RequestHeader::decode(self.extended, buf) {
            Ok(Some(h)) => self.validate(&h),
            Ok(None) => Decoded::Incomplete {
                need_bytes: self.header_len() - buf.len(),
            },
            Err(reason) => Decoded::Close(reason),
        }
    }

    /// Validates a header already split into fields.
    pub fn validate(&self, h: &RequestHeader) -> Decoded {
        let flags = CommandFlags(h.flags);
        // A WRITE's length is its payload's; under extended headers PAYLOAD_LEN says the same
        // of any other command (which Keel then refuses after draining the payload).
        let payload = if h.command == CMD_WRITE || (self.extended && flags.payload_len()) {
            h.length
        } else {
            0
        };
        let payload_limit = if self.extended {
            self.max_payload_bytes
        } else {
            self.drain_limit_bytes
        };
        if payload > payload_limit {
            return Decoded::Close(CloseReason::PayloadTooLarge {
                len_bytes: payload,
                max_bytes: payload_limit,
            });
        }
        // `payload` fits 32 bits: compact lengths are 32-bit, extended ones were just bounded.
        let payload = payload as u32;
        let reject = |errno, why| {
            Decoded::Reject(Rejection {
                cookie: h.cookie,
                command: h.command,
                offset_bytes: h.offset_bytes,
                errno,
                discard_bytes: payload,
                why,
            })
        };
        use Command::*;
        use Errno::*;
        let Some(command) = Command::from_wire(h.command) else {
            return reject(Inval, "unknown command");
        };
        if command == Disc {
            return Decoded::Request(Request {
                cookie: h.cookie,
                command,
                flags,
                offset_bytes: h.offset_bytes,
                length_bytes: h.length,
                payload_bytes: 0,
            });
        }
        let tflag = |bit: u16| self.flags & bit != 0;
        if h.flags & !CommandFlags::KNOWN != 0 {
            return reject(Inval, "unknown command flag");
        }
        if flags.payload_len() && !self.extended {
            return reject(Inval, "PAYLOAD_LEN needs extended headers");
        }
        if self.extended && command != Write && flags.payload_len() {
            return reject(Inval, "this command takes no payload");
        }
        if flags.fua() && !tflag(FLAG_SEND_FUA) {
            return reject(Inval, "FUA was not offered");
        }
        if flags.no_hole() && command != WriteZeroes {
            return reject(Inval, "NO_HOLE is only for WRITE_ZEROES");
        }
        if flags.df() && (command != Read || !tflag(FLAG_SEND_DF)) {
            return reject(Inval, "DF is only for READ with structured replies");
        }
        if flags.req_one() && command != BlockStatus {
            return reject(Inval, "REQ_ONE is only for BLOCK_STATUS");
        }
        if flags.fast_zero() && (command != WriteZeroes || !tflag(FLAG_SEND_FAST_ZERO)) {
            return reject(Inval, "FAST_ZERO was not offered");
        }
        if tflag(FLAG_READ_ONLY) && matches!(command, Write | Trim | WriteZeroes) {
            return reject(Perm, "the export is read-only");
        }
        let offered = match command {
            Flush => tflag(FLAG_SEND_FLUSH),
            Trim => tflag(FLAG_SEND_TRIM),
            WriteZeroes => tflag(FLAG_SEND_WRITE_ZEROES),
            BlockStatus => self.chunked && self.block_status,
            Read | Write | Cache | Disc => true,
        };
        if !offered {
            return reject(Inval, "command not offered on this connection");
        }
        if command == Flush {
            if h.offset_bytes != 0 || h.length != 0 {
                return reject(Inval, "FLUSH offset and length must be zero");
            }
            return Decoded::Request(Request {
                cookie: h.cookie,
                command,
                flags,
                offset_bytes: 0,
                length_bytes: 0,
                payload_bytes: 0,
            });
        }
        if h.length == 0 {
            return reject(Inval, "zero length");
        }
        let end = h.offset_bytes.checked_add(h.length);
        if end.is_none_or(|end| end > self.size_bytes) {
            return if matches!(command, Write | WriteZeroes) {
                reject(NoSpc, "range past the end of the export")
            } else {
                reject(Inval, "range past the end of the export")
            };
        }
        let end = h.offset_bytes + h.length;
        if self.align_bytes > 1
            && (!h.offset_bytes.is_multiple_of(self.align_bytes)
                || (!h.length.is_multiple_of(self.align_bytes) && end != self.size_bytes))
        {
            return reject(Inval, "not aligned to the minimum block size");
        }
        if matches!(command, Read | Write | Cache) && h.length > self.max_payload_bytes {
            return reject(Inval, "longer than the maximum payload");
        }
        Decoded::Request(Request {
            cookie: h.cookie,
            command,
            flags,
            offset_bytes: h.offset_bytes,
            length_bytes: h.length,
            payload_bytes: if command == Write { payload } else { 0 },
        })
    }
}
