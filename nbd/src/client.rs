//! The client's half of the wire: encoders for what a client sends during the handshake and
//! decoders for what the server answers, in both phases.
//!
//! Not on the server's path: used by this crate's tests and fuzz target to drive the server
//! side byte for byte, and by the server's integration tests as an in-process client. Encoders
//! append to the caller's `Vec`; decoders borrow from the caller's buffer and return the number
//! of bytes the message took. Decoders never panic on short or bad input.

use std::io::{Read, Write};

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

/// A minimal blocking NBD client over any byte stream: fixed-newstyle negotiation ending in
/// `GO`, requests, and their replies (simple, or structured chunks gathered until `DONE`).
///
/// For tests and tools (the crash test, the bad-input scenarios), never for the data path: it
/// allocates per request and blocks on its stream. Owned by the calling thread.
pub struct BlockingClient<S: Read + Write> {
    /// The stream (reach it for raw bytes, timeouts or shutdown).
    pub stream: S,
    /// The export's size.
    pub size_bytes: u64,
    /// The transmission flags the server sent.
    pub transmission_flags: u16,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// Data length of every READ in flight, by cookie (simple replies do not carry it).
    reads: std::collections::HashMap<u64, u64>,
    next_cookie: u64,
}

/// One complete reply, as [`BlockingClient::reply`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request's cookie.
    pub cookie: u64,
    /// 0 or the errno.
    pub error: u32,
    /// A READ's data (empty otherwise, or on error).
    pub data: Vec<u8>,
}

fn io_err(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

impl<S: Read + Write> BlockingClient<S> {
    /// Negotiates on `stream`: client flags `FIXED_NEWSTYLE | NO_ZEROES`, `STRUCTURED_REPLY`
    /// if `structured`, then `GO(export, [BLOCK_SIZE])`. An option error is `InvalidData`.
    pub fn connect(mut stream: S, export: &str, structured: bool) -> std::io::Result<Self> {
        let mut g = [0u8; GREETING_LEN];
        stream.read_exact(&mut g)?;
        decode_greeting(&g).map_err(io_err)?;
        let mut out = Vec::new();
        encode_client_flags(&mut out, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        if structured {
            encode_option(&mut out, OPT_STRUCTURED_REPLY, &[]);
        }
        encode_info_request(&mut out, OPT_GO, export, &[INFO_BLOCK_SIZE]);
        stream.write_all(&out)?;
        let mut client = BlockingClient {
            stream,
            size_bytes: 0,
            transmission_flags: 0,
            structured,
            reads: std::collections::HashMap::new(),
            next_cookie: 1,
        };
        loop {
            let (option, reply_type, data) = client.option_reply()?;
            if reply_type & REP_FLAG_ERROR != 0 {
                return Err(io_err(format!(
                    "option {option} refused with {reply_type:#x}: {}",
                    String::from_utf8_lossy(&data)
                )));
            }
            match (option, reply_type) {
                (OPT_GO, REP_INFO) => {
                    if let Ok(Info::Export { size_bytes, flags }) = decode_info(&data) {
                        client.size_bytes = size_bytes;
                        client.transmission_flags = flags;
                    }
                }
                (OPT_GO, REP_ACK) => return Ok(client),
                _ => {}
            }
        }
    }

    /// A client already in transmission with simple replies (no negotiation: a socketpair to a
    /// server started that way, as the kernel client's).
    pub fn in_transmission(stream: S) -> Self {
        BlockingClient {
            stream,
            size_bytes: 0,
            transmission_flags: 0,
            structured: false,
            reads: std::collections::HashMap::new(),
            next_cookie: 1,
        }
    }

    fn option_reply(&mut self) -> std::io::Result<(u32, u32, Vec<u8>)> {
        let mut h = [0u8; OPTION_REPLY_HEADER_LEN];
        self.stream.read_exact(&mut h)?;
        if be64(&h, 0) != OPTION_REPLY_MAGIC {
            return Err(io_err("bad option reply magic"));
        }
        let len = be32(&h, 16) as usize;
        let mut data = vec![0u8; len];
        self.stream.read_exact(&mut data)?;
        Ok((be32(&h, 8), be32(&h, 12), data))
    }

    /// Sends one compact request (with `payload` after it, for a WRITE) and returns its cookie.
    pub fn send(
        &mut self,
        flags: u16,
        command: u16,
        offset_bytes: u64,
        length: u32,
        payload: &[u8],
    ) -> std::io::Result<u64> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let mut h = [0u8; COMPACT_REQUEST_LEN];
        crate::request::RequestHeader {
            flags,
            command,
            cookie,
            offset_bytes,
            length: u64::from(length),
        }
        .encode(false, &mut h)
        .map_err(io_err)?;
        if command == CMD_READ {
            self.reads.insert(cookie, u64::from(length));
        }
        let mut msg = Vec::with_capacity(h.len() + payload.len());
        msg.extend_from_slice(&h);
        msg.extend_from_slice(payload);
        self.stream.write_all(&msg)?;
        Ok(cookie)
    }

    /// Reads the next complete reply (all chunks of it up to `DONE`).
    pub fn reply(&mut self) -> std::io::Result<Reply> {
        let mut magic = [0u8; 4];
        self.stream.read_exact(&mut magic)?;
        let hlen = match be32(&magic, 0) {
            SIMPLE_REPLY_MAGIC => SIMPLE_REPLY_LEN,
            STRUCTURED_REPLY_MAGIC => STRUCTURED_REPLY_HEADER_LEN,
            other => return Err(io_err(format!("bad reply magic {other:#x}"))),
        };
        let mut h = vec![0u8; hlen];
        h[..4].copy_from_slice(&magic);
        self.stream.read_exact(&mut h[4..])?;
        let (header, _) = decode_reply_header(&h).map_err(io_err)?;
        match header {
            ReplyHeader::Simple { error, cookie } => {
                let len = self.reads.remove(&cookie).unwrap_or(0);
                let mut data = Vec::new();
                if error == 0 && len > 0 {
                    data = vec![0u8; len as usize];
                    self.stream.read_exact(&mut data)?;
                }
                Ok(Reply { cookie, error, data })
            }
            ReplyHeader::Chunk {
                flags,
                kind,
                cookie,
                payload_bytes,
                ..
            } => {
                let mut reply = Reply {
                    cookie,
                    error: 0,
                    data: Vec::new(),
                };
                let (mut flags, mut kind, mut payload_bytes) = (flags, kind, payload_bytes);
                loop {
                    let mut payload = vec![0u8; payload_bytes as usize];
                    self.stream.read_exact(&mut payload)?;
                    match decode_chunk_payload(kind, &payload).map_err(io_err)? {
                        ChunkPayload::OffsetData { data, .. } => reply.data.extend_from_slice(data),
                        ChunkPayload::Error { errno, .. } => reply.error = errno,
                        _ => {}
                    }
                    if flags & REPLY_FLAG_DONE != 0 {
                        self.reads.remove(&cookie);
                        return Ok(reply);
                    }
                    let mut h = [0u8; STRUCTURED_REPLY_HEADER_LEN];
                    self.stream.read_exact(&mut h)?;
                    match decode_reply_header(&h).map_err(io_err)? {
                        (
                            ReplyHeader::Chunk {
                                flags: f,
                                kind: k,
                                cookie: c,
                                payload_bytes: p,
                                ..
                            },
                            _,
                        ) if c == cookie => (flags, kind, payload_bytes) = (f, k, p),
                        _ => return Err(io_err("interleaved chunks are not supported by this client")),
                    }
                }
            }
        }
    }

    /// WRITE (with `FUA` if asked); returns the reply's errno.
    pub fn write(&mut self, offset_bytes: u64, data: &[u8], fua: bool) -> std::io::Result<u32> {
        let flags = if fua { CMD_FLAG_FUA } else { 0 };
        self.send(flags, CMD_WRITE, offset_bytes, data.len() as u32, data)?;
        Ok(self.reply()?.error)
    }

    /// READ; `Err(errno)` inside when the server refused.
    pub fn read(&mut self, offset_bytes: u64, len: u32) -> std::io::Result<Result<Vec<u8>, u32>> {
        self.send(0, CMD_READ, offset_bytes, len, &[])?;
        let r = self.reply()?;
        Ok(if r.error == 0 { Ok(r.data) } else { Err(r.error) })
    }

    /// FLUSH; returns the reply's errno.
    pub fn flush(&mut self) -> std::io::Result<u32> {
        self.send(0, CMD_FLUSH, 0, 0, &[])?;
        Ok(self.reply()?.error)
    }

    /// Sends `DISC` and gives the stream back (the server closes after its replies).
    pub fn disconnect(mut self) -> std::io::Result<S> {
        self.send(0, CMD_DISC, 0, 0, &[])?;
        Ok(self.stream)
    }
}
