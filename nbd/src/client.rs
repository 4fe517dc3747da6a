//! The client's half of the wire: encoders for what a client sends during the handshake and
//! decoders for what the server answers, in both phases.
//!
//! Not on the server's path: used by this crate's tests and fuzz target to drive the server
//! side byte for byte, and by the server's integration tests as an in-process client. Encoders
//! append to the caller's `Vec`; decoders borrow from the caller's buffer and return the number
//! of bytes the message took. Decoders never panic on short or bad input.

use crate::consts::*;
use crate::error::NbdError;
use crate::reply::Extent;
use crate::wire::{be16, be32, be64};

/// Appends the 4 client-flag bytes.
pub fn encode_client_flags(out: &mut Vec<u8>, flags: u32) {
    out.extend_from_slice(&flags.to_be_bytes());
}

/// Appends an option request: `IHAVEOPT`, `option`, data length, `data`.
pub fn encode_option(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Appends an `INFO` or `GO` option for export `name` with the information requests `infos`.
pub fn encode_info_request(out: &mut Vec<u8>, option: u32, name: &str, infos: &[u16]) {
    let mut data = Vec::with_capacity(6 + name.len() + 2 * infos.len());
    data.extend_from_slice(&(name.len() as u32).to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        data.extend_from_slice(&i.to_be_bytes());
    }
    encode_option(out, option, &data);
}

/// Appends a `LIST_META_CONTEXT` or `SET_META_CONTEXT` option for `export` with `queries`.
pub fn encode_meta_request(out: &mut Vec<u8>, option: u32, export: &str, queries: &[&str]) {
    let mut data = Vec::new();
    data.extend_from_slice(&(export.len() as u32).to_be_bytes());
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        data.extend_from_slice(&(q.len() as u32).to_be_bytes());
        data.extend_from_slice(q.as_bytes());
    }
    encode_option(out, option, &data);
}

/// Checks the 18-byte newstyle greeting and returns its handshake flags.
pub fn decode_greeting(buf: &[u8]) -> Result<u16, NbdError> {
    let g = need(buf, GREETING_LEN)?;
    if be64(g, 0) != NBD_MAGIC || be64(g, 8) != IHAVEOPT {
        return Err(NbdError::Malformed {
            what: "greeting",
            why: "not a newstyle greeting",
        });
    }
    Ok(be16(g, 16))
}

/// One option reply, borrowed from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionReply<'a> {
    /// The option answered.
    pub option: u32,
    /// `REP_*`.
    pub reply_type: u32,
    /// The reply data.
    pub data: &'a [u8],
}

impl OptionReply<'_> {
    /// Whether this is an error reply (bit 31).
    pub const fn is_error(&self) -> bool {
        self.reply_type & REP_FLAG_ERROR != 0
    }
}

/// Decodes the option reply at the start of `buf`; returns it and its length.
pub fn decode_option_reply(buf: &[u8]) -> Result<(OptionReply<'_>, usize), NbdError> {
    let h = need(buf, OPTION_REPLY_HEADER_LEN)?;
    if be64(h, 0) != OPTION_REPLY_MAGIC {
        return Err(NbdError::Malformed {
            what: "option reply",
            why: "bad magic",
        });
    }
    let len = be32(h, 16) as usize;
    let total = OPTION_REPLY_HEADER_LEN + len;
    let all = need(buf, total)?;
    Ok((
        OptionReply {
            option: be32(h, 8),
            reply_type: be32(h, 12),
            data: &all[OPTION_REPLY_HEADER_LEN..],
        },
        total,
    ))
}

/// One information item of an `INFO` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Info<'a> {
    /// `INFO_EXPORT`.
    Export {
        /// Export size.
        size_bytes: u64,
        /// Transmission flags.
        flags: u16,
    },
    /// `INFO_NAME`.
    Name(&'a str),
    /// `INFO_DESCRIPTION`.
    Description(&'a str),
    /// `INFO_BLOCK_SIZE`.
    BlockSize {
        /// Minimum block size.
        min_bytes: u32,
        /// Preferred block size.
        preferred_bytes: u32,
        /// Maximum payload.
        max_bytes: u32,
    },
    /// A type this decoder does not know (clients ignore these).
    Unknown(u16),
}

/// Decodes the data of a `REP_INFO` reply.
pub fn decode_info(data: &[u8]) -> Result<Info<'_>, NbdError> {
    let bad = |why| NbdError::Malformed {
        what: "INFO reply",
        why,
    };
    let kind = be16(need(data, 2)?, 0);
    let text = || std::str::from_utf8(&data[2..]).map_err(|_| bad("not UTF-8"));
    Ok(match kind {
        INFO_EXPORT if data.len() == 12 => Info::Export {
            size_bytes: be64(data, 2),
            flags: be16(data, 10),
        },
        INFO_BLOCK_SIZE if data.len() == 14 => Info::BlockSize {
            min_bytes: be32(data, 2),
            preferred_bytes: be32(data, 6),
            max_bytes: be32(data, 10),
        },
        INFO_EXPORT | INFO_BLOCK_SIZE => return Err(bad("wrong length")),
        INFO_NAME => Info::Name(text()?),
        INFO_DESCRIPTION => Info::Description(text()?),
        other => Info::Unknown(other),
    })
}

/// A transmission-phase reply header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A 16-byte simple reply.
    Simple {
        /// 0 or an errno.
        error: u32,
        /// The request's cookie.
        cookie: u64,
    },
    /// A structured (20-byte) or extended (32-byte) chunk header.
    Chunk {
        /// Reply flags (`DONE`).
        flags: u16,
        /// Chunk type.
        kind: u16,
        /// The request's cookie.
        cookie: u64,
        /// The request's offset (extended headers only).
        offset_bytes: Option<u64>,
        /// Payload bytes that follow.
        payload_bytes: u64,
    },
}

/// Decodes the reply header at the start of `buf` (the form is told by its magic); returns it
/// and its length.
pub fn decode_reply_header(buf: &[u8]) -> Result<(ReplyHeader, usize), NbdError> {
    let magic = be32(need(buf, 4)?, 0);
    match magic {
        SIMPLE_REPLY_MAGIC => {
            let h = need(buf, SIMPLE_REPLY_LEN)?;
            Ok((
                ReplyHeader::Simple {
                    error: be32(h, 4),
                    cookie: be64(h, 8),
                },
                SIMPLE_REPLY_LEN,
            ))
        }
        STRUCTURED_REPLY_MAGIC => {
            let h = need(buf, STRUCTURED_REPLY_HEADER_LEN)?;
            let header = ReplyHeader::Chunk {
                flags: be16(h, 4),
                kind: be16(h, 6),
                cookie: be64(h, 8),
                offset_bytes: None,
                payload_bytes: u64::from(be32(h, 16)),
            };
            Ok((header, STRUCTURED_REPLY_HEADER_LEN))
        }
        EXTENDED_REPLY_MAGIC => {
            let h = need(buf, EXTENDED_REPLY_HEADER_LEN)?;
            let header = ReplyHeader::Chunk {
                flags: be16(h, 4),
                kind: be16(h, 6),
                cookie: be64(h, 8),
                offset_bytes: Some(be64(h, 16)),
                payload_bytes: be64(h, 24),
            };
            Ok((header, EXTENDED_REPLY_HEADER_LEN))
        }
        _ => Err(NbdError::Malformed {
            what: "reply",
            why: "bad magic",
        }),
    }
}

/// The payload of one chunk, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkPayload<'a> {
    /// `NONE`.
    None,
    /// `OFFSET_DATA`.
    OffsetData {
        /// Absolute offset of the data.
        offset_bytes: u64,
        /// The data.
        data: &'a [u8],
    },
    /// `OFFSET_HOLE`.
    OffsetHole {
        /// Absolute offset of the hole.
        offset_bytes: u64,
        /// Its size.
        len_bytes: u32,
    },
    /// `BLOCK_STATUS` or `BLOCK_STATUS_EXT`.
    BlockStatus {
        /// The context id.
        context: u32,
        /// The extents.
        extents: Vec<Extent>,
    },
    /// `ERROR` or `ERROR_OFFSET`.
    Error {
        /// The errno.
        errno: u32,
        /// The message.
        message: &'a str,
        /// The failing offset (`ERROR_OFFSET`).
        offset_bytes: Option<u64>,
    },
    /// A type this decoder does not know.
    Unknown(u16),
}

/// Decodes a chunk payload of type `kind`, checking the lengths the protocol fixes.
pub fn decode_chunk_payload(kind: u16, payload: &[u8]) -> Result<ChunkPayload<'_>, NbdError> {
    let bad = |why| NbdError::Malformed { what: "chunk", why };
    let n = payload.len();
    Ok(match kind {
        REPLY_TYPE_NONE if n == 0 => ChunkPayload::None,
        REPLY_TYPE_OFFSET_DATA if n >= 9 => ChunkPayload::OffsetData {
            offset_bytes: be64(payload, 0),
            data: &payload[8..],
        },
        REPLY_TYPE_OFFSET_HOLE if n == 12 => ChunkPayload::OffsetHole {
            offset_bytes: be64(payload, 0),
            len_bytes: be32(payload, 8),
        },
        REPLY_TYPE_BLOCK_STATUS if n >= 12 && (n - 4).is_multiple_of(8) => ChunkPayload::BlockStatus {
            context: be32(payload, 0),
            extents: payload[4..]
                .chunks_exact(8)
                .map(|e| Extent {
                    length_bytes: u64::from(be32(e, 0)),
                    flags: be32(e, 4),
                })
                .collect(),
        },
        REPLY_TYPE_BLOCK_STATUS_EXT if n >= 24 && (n - 8).is_multiple_of(16) => {
            let count = be32(payload, 4) as usize;
            if count != 0 && count != (n - 8) / 16 {
                return Err(bad("descriptor count disagrees with the length"));
            }
            ChunkPayload::BlockStatus {
                context: be32(payload, 0),
                extents: payload[8..]
                    .chunks_exact(16)
                    .map(|e| Extent {
                        length_bytes: be64(e, 0),
                        flags: be64(e, 8) as u32,
                    })
                    .collect(),
            }
        }
        REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
            let tail = if kind == REPLY_TYPE_ERROR_OFFSET { 8 } else { 0 };
            let fixed = need(payload, 6 + tail)?;
            let msg_len = usize::from(be16(fixed, 4));
            if 6 + msg_len + tail != n {
                return Err(bad("message length disagrees with the chunk length"));
            }
            let message = std::str::from_utf8(&payload[6..6 + msg_len]).map_err(|_| bad("message not UTF-8"))?;
            ChunkPayload::Error {
                errno: be32(payload, 0),
                message,
                offset_bytes: (tail > 0).then(|| be64(payload, n - 8)),
            }
        }
        REPLY_TYPE_NONE
        | REPLY_TYPE_OFFSET_DATA
        | REPLY_TYPE_OFFSET_HOLE
        | REPLY_TYPE_BLOCK_STATUS
        | REPLY_TYPE_BLOCK_STATUS_EXT => return Err(bad("wrong payload length for the type")),
        other => ChunkPayload::Unknown(other),
    })
}

/// The first `len` bytes of `buf`, or `Truncated`.
fn need(buf: &[u8], len: usize) -> Result<&[u8], NbdError> {
    buf.get(..len).ok_or(NbdError::Truncated {
        need_bytes: len,
        have_bytes: buf.len(),
    })
}
