//! Transmission-phase replies, encoded into caller-provided buffers.
//!
//! # Design
//!
//! One [`ReplyEncoder`] per connection knows the session's [`ReplyMode`] (simple, structured,
//! extended) and picks the form the protocol requires: simple replies without negotiation;
//! chunks for every `READ` and every error once structured replies are on (a simple reply is
//! still used for payload-less successes, as nbdkit does); only 32-byte chunks once extended
//! headers are on (a payload-less success is then a `NONE` chunk with `DONE`).
//!
//! Zero copy: data never passes through the encoder. For a `READ` the encoder writes only the
//! header (simple reply, or chunk header + the 8-byte data offset: at most
//! [`MAX_READ_HEADER_LEN`] bytes) and the server sends the bdev buffer right after it
//! (`writev`, io_uring). Everything else (status chunks, error chunks with their message) is
//! small and written whole. Every encoder checks the buffer length and returns
//! [`NbdError::BufferTooSmall`] instead of panicking; none allocates.

use crate::consts::*;
use crate::error::{Errno, NbdError};
use crate::handshake::{MetaContextId, Session};
use crate::request::Rejection;
use crate::wire::{put16, put32, put64};

/// Which reply forms a session uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyMode {
    /// Nothing negotiated: 16-byte simple replies only.
    Simple,
    /// `STRUCTURED_REPLY`: 20-byte chunks for reads and errors, simple replies otherwise.
    Structured,
    /// `EXTENDED_HEADERS`: 32-byte chunks only.
    Extended,
}

impl ReplyMode {
    /// A short name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Structured => "structured",
            Self::Extended => "extended",
        }
    }

    /// Length of a chunk header in this mode (16 for the simple reply).
    pub const fn header_len(self) -> usize {
        match self {
            Self::Simple => SIMPLE_REPLY_LEN,
            Self::Structured => STRUCTURED_REPLY_HEADER_LEN,
            Self::Extended => EXTENDED_REPLY_HEADER_LEN,
        }
    }
}

/// The longest header [`ReplyEncoder::read_data_header`] writes (extended chunk + offset).
pub const MAX_READ_HEADER_LEN: usize = EXTENDED_REPLY_HEADER_LEN + 8;

/// A buffer large enough for any error chunk with a maximal (4096-byte) message.
pub const MAX_ERROR_REPLY_LEN: usize = EXTENDED_REPLY_HEADER_LEN + 6 + MAX_STRING_LEN + 8;

/// One extent of a block-status reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Its length (nonzero; at most `u32::MAX` in structured mode).
    pub length_bytes: u64,
    /// Status flags of the context (`STATE_HOLE`, `STATE_ZERO` for `base:allocation`).
    pub flags: u32,
}

/// Encodes replies for one connection (see the module essay).
///
/// `Copy`, holds no buffers: the server on the connection's reactor passes its own output
/// buffer to each call and sends the bytes written (and, for reads, the data after them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyEncoder {
    mode: ReplyMode,
}

impl ReplyEncoder {
    /// An encoder for `mode`.
    pub const fn new(mode: ReplyMode) -> Self {
        Self { mode }
    }

    /// The encoder for a negotiated session.
    pub fn for_session(session: &Session) -> Self {
        Self::new(session.reply_mode())
    }

    /// The reply mode.
    pub const fn mode(&self) -> ReplyMode {
        self.mode
    }

    /// The header that precedes `data_len` bytes of a successful `READ` at `data_offset`; the
    /// caller sends exactly `data_len` data bytes after it. With simple replies the data must be
    /// the whole request (`data_offset == request_offset`, `done`); with chunks the reply may be
    /// split and `done` marks the last chunk (only when no error can follow).
    pub fn read_data_header(
        &self,
        out: &mut [u8],
        cookie: u64,
        request_offset: u64,
        data_offset: u64,
        data_len: u64,
        done: bool,
    ) -> Result<usize, NbdError> {
        if self.mode == ReplyMode::Simple {
            if data_offset != request_offset || !done {
                return Err(NbdError::NotInMode {
                    what: "a split read",
                    mode: self.mode.name(),
                });
            }
            return self.simple(out, cookie, 0);
        }
        if data_len == 0 {
            return Err(NbdError::Malformed {
                what: "OFFSET_DATA",
                why: "no data",
            });
        }
        let payload = data_len.checked_add(8).ok_or(NbdError::Malformed {
            what: "OFFSET_DATA",
            why: "data length overflows",
        })?;
        let flags = if done { REPLY_FLAG_DONE } else { 0 };
        let n = self.chunk(out, flags, REPLY_TYPE_OFFSET_DATA, cookie, request_offset, payload, 8)?;
        put64(out, n - 8, data_offset);
        Ok(n)
    }

    /// An `OFFSET_HOLE` chunk: `hole_len` bytes at `hole_offset` read as zeroes (chunked modes).
    pub fn hole(
        &self,
        out: &mut [u8],
        cookie: u64,
        request_offset: u64,
        hole_offset: u64,
        hole_len: u32,
        done: bool,
    ) -> Result<usize, NbdError> {
        self.need_chunks("OFFSET_HOLE")?;
        if hole_len == 0 {
            return Err(NbdError::Malformed {
                what: "OFFSET_HOLE",
                why: "zero hole size",
            });
        }
        let flags = if done { REPLY_FLAG_DONE } else { 0 };
        let n = self.chunk(out, flags, REPLY_TYPE_OFFSET_HOLE, cookie, request_offset, 12, 12)?;
        put64(out, n - 12, hole_offset);
        put32(out, n - 4, hole_len);
        Ok(n)
    }

    /// The complete reply to a successful command without reply data (`WRITE`, `FLUSH`, `TRIM`,
    /// `CACHE`, `WRITE_ZEROES`): a simple reply, or a `NONE` chunk under extended headers.
    pub fn success(&self, out: &mut [u8], cookie: u64, request_offset: u64) -> Result<usize, NbdError> {
        match self.mode {
            ReplyMode::Simple | ReplyMode::Structured => self.simple(out, cookie, 0),
            ReplyMode::Extended => self.none(out, cookie, request_offset),
        }
    }

    /// A `NONE` chunk with `DONE`: ends a chunked reply whose earlier chunks were not final.
    pub fn none(&self, out: &mut [u8], cookie: u64, request_offset: u64) -> Result<usize, NbdError> {
        self.need_chunks("NONE")?;
        self.chunk(out, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, request_offset, 0, 0)
    }

    /// The complete error reply to a request: a simple reply with `errno`, or (chunked modes)
    /// an `ERROR` chunk with `DONE` carrying `message` (at most 4096 bytes).
    pub fn error(
        &self,
        out: &mut [u8],
        cookie: u64,
        request_offset: u64,
        errno: Errno,
        message: &str,
    ) -> Result<usize, NbdError> {
        if self.mode == ReplyMode::Simple {
            return self.simple(out, cookie, errno.wire());
        }
        let msg = checked_message(message)?;
        let body = 6 + msg.len();
        let n = self.chunk(
            out,
            REPLY_FLAG_DONE,
            REPLY_TYPE_ERROR,
            cookie,
            request_offset,
            body as u64,
            body,
        )?;
        let at = n - body;
        put32(out, at, errno.wire());
        put16(out, at + 4, msg.len() as u16);
        out[at + 6..n].copy_from_slice(msg);
        Ok(n)
    }

    /// An `ERROR_OFFSET` chunk (chunked modes): the request failed at `error_offset`.
    #[allow(clippy::too_many_arguments)]
    pub fn error_offset(
        &self,
        out: &mut [u8],
        cookie: u64,
        request_offset: u64,
        errno: Errno,
        message: &str,
        error_offset: u64,
        done: bool,
    ) -> Result<usize, NbdError> {
        self.need_chunks("ERROR_OFFSET")?;
        let msg = checked_message(message)?;
        let body = 6 + msg.len() + 8;
        let flags = if done { REPLY_FLAG_DONE } else { 0 };
        let n = self.chunk(
            out,
            flags,
            REPLY_TYPE_ERROR_OFFSET,
            cookie,
            request_offset,
            body as u64,
            body,
        )?;
        let at = n - body;
        put32(out, at, errno.wire());
        put16(out, at + 4, msg.len() as u16);
        out[at + 6..at + 6 + msg.len()].copy_from_slice(msg);
        put64(out, n - 8, error_offset);
        Ok(n)
    }

    /// The error reply for a rejected request (see [`Rejection`]); the caller first drops the
    /// rejection's payload bytes from its receive stream.
    pub fn reject(&self, out: &mut [u8], rejection: &Rejection) -> Result<usize, NbdError> {
        self.error(
            out,
            rejection.cookie,
            rejection.offset_bytes,
            rejection.errno,
            rejection.why,
        )
    }

    /// A status chunk for `context` (chunked modes): `BLOCK_STATUS` with 32-bit extents under
    /// structured replies, `BLOCK_STATUS_EXT` with 64-bit extents under extended headers.
    /// Extents must be nonzero, at most 2^20 of them, at least one.
    pub fn block_status(
        &self,
        out: &mut [u8],
        cookie: u64,
        request_offset: u64,
        context: MetaContextId,
        extents: &[Extent],
        done: bool,
    ) -> Result<usize, NbdError> {
        self.need_chunks("BLOCK_STATUS")?;
        if extents.is_empty() || extents.len() > MAX_EXTENTS_PER_CHUNK {
            return Err(NbdError::InvalidExtents("between 1 and 2^20 extents per chunk"));
        }
        if extents.iter().any(|e| e.length_bytes == 0) {
            return Err(NbdError::InvalidExtents("zero-length extent"));
        }
        let flags = if done { REPLY_FLAG_DONE } else { 0 };
        if self.mode == ReplyMode::Extended {
            let body = 8 + 16 * extents.len();
            let n = self.chunk(
                out,
                flags,
                REPLY_TYPE_BLOCK_STATUS_EXT,
                cookie,
                request_offset,
                body as u64,
                body,
            )?;
            let mut at = n - body;
            put32(out, at, context.0);
            put32(out, at + 4, extents.len() as u32);
            at += 8;
            for e in extents {
                put64(out, at, e.length_bytes);
                put64(out, at + 8, u64::from(e.flags));
                at += 16;
            }
            Ok(n)
        } else {
            if extents.iter().any(|e| e.length_bytes > u64::from(u32::MAX)) {
                return Err(NbdError::InvalidExtents("extent over 32 bits without extended headers"));
            }
            let body = 4 + 8 * extents.len();
            let n = self.chunk(
                out,
                flags,
                REPLY_TYPE_BLOCK_STATUS,
                cookie,
                request_offset,
                body as u64,
                body,
            )?;
            let mut at = n - body;
            put32(out, at, context.0);
            at += 4;
            for e in extents {
                put32(out, at, e.length_bytes as u32);
                put32(out, at + 4, e.flags);
                at += 8;
            }
            Ok(n)
        }
    }

    /// Fails unless the mode has chunks.
    fn need_chunks(&self, what: &'static str) -> Result<(), NbdError> {
        if self.mode == ReplyMode::Simple {
            return Err(NbdError::NotInMode {
                what,
                mode: self.mode.name(),
            });
        }
        Ok(())
    }

    /// Writes a 16-byte simple reply.
    fn simple(&self, out: &mut [u8], cookie: u64, error: u32) -> Result<usize, NbdError> {
        fits(out, SIMPLE_REPLY_LEN)?;
        put32(out, 0, SIMPLE_REPLY_MAGIC);
        put32(out, 4, error);
        put64(out, 8, cookie);
        Ok(SIMPLE_REPLY_LEN)
    }

    /// Writes a chunk header announcing `payload_len` bytes, after checking that `out` also
    /// holds the `written_body` bytes of payload the caller writes itself; returns header +
    /// `written_body`.
    #[allow(clippy::too_many_arguments)]
    fn chunk(
        &self,
        out: &mut [u8],
        flags: u16,
        kind: u16,
        cookie: u64,
        request_offset: u64,
        payload_len: u64,
        written_body: usize,
    ) -> Result<usize, NbdError> {
        let header = self.mode.header_len();
        fits(out, header + written_body)?;
        match self.mode {
            ReplyMode::Structured => {
                let len = u32::try_from(payload_len).map_err(|_| NbdError::Malformed {
                    what: "structured chunk",
                    why: "payload over 32 bits",
                })?;
                put32(out, 0, STRUCTURED_REPLY_MAGIC);
                put16(out, 4, flags);
                put16(out, 6, kind);
                put64(out, 8, cookie);
                put32(out, 16, len);
            }
            ReplyMode::Extended => {
                put32(out, 0, EXTENDED_REPLY_MAGIC);
                put16(out, 4, flags);
                put16(out, 6, kind);
                put64(out, 8, cookie);
                put64(out, 16, request_offset);
                put64(out, 24, payload_len);
            }
            ReplyMode::Simple => {
                return Err(NbdError::NotInMode {
                    what: "a chunk",
                    mode: self.mode.name(),
                })
            }
        }
        Ok(header + written_body)
    }
}

/// Checks that `out` holds `need` bytes.
fn fits(out: &[u8], need: usize) -> Result<(), NbdError> {
    if out.len() < need {
        return Err(NbdError::BufferTooSmall {
            need_bytes: need,
            have_bytes: out.len(),
        });
    }
    Ok(())
}

/// An error message as bytes, checked against the protocol's string rules.
fn checked_message(message: &str) -> Result<&[u8], NbdError> {
    crate::export::check_string(message)?;
    Ok(message.as_bytes())
}
