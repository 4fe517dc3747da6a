//! The body of the `nbd_proto` fuzz target (`fuzz/fuzz_targets/nbd_proto.rs`), also replayed
//! over the committed corpus by `tests/fuzz_corpus.rs` in the normal test run.
//!
//! Input layout: byte 0 chooses the server configuration and the fragmentation; the rest is
//! what a client sends — client flags, options, then (if the negotiation ends) transmission
//! requests. The bytes are run through the handshake twice, once whole and once cut into small
//! pieces, and both runs must produce the same output and the same end; the handshake must
//! never hold more than one bounded message; its output must parse as a greeting followed by
//! well-formed option replies; the negotiated session must be consistent with the
//! configuration; and every request after it must decode to a request within the export, a
//! rejection or a close, whose reply encodes and decodes back to the same cookie and errno.
//! Any violation panics, which is what the fuzzer looks for.
//!
//! Runs on the calling thread; allocates freely (it is a test harness, not the data path).

use crate::client::{decode_chunk_payload, decode_greeting, decode_option_reply, decode_reply_header, ReplyHeader};
use crate::consts::*;
use crate::export::{BlockSizes, Capabilities, ExportInfo};
use crate::handshake::{Entry, Handshake, HandshakeConfig, Outcome, Session};
use crate::reply::{Extent, ReplyEncoder, ReplyMode, MAX_ERROR_REPLY_LEN};
use crate::request::{Command, Decoded, RequestDecoder};

/// The exports the fuzzed server offers: `disk` (the default; 512/4096/1 MiB, every
/// capability), `ro` (read-only, 4 KiB blocks) and `bytes` (byte-addressable, odd size).
pub fn catalog() -> Vec<ExportInfo> {
    let all = Capabilities {
        flush: true,
        fua: true,
        trim: true,
        write_zeroes: true,
        fast_zero: true,
        cache: true,
        multi_conn: true,
        rotational: false,
    };
    let mk = |name: &str, desc: &str, size, ro, bs: BlockSizes, caps| {
        ExportInfo::new(name, desc, size, ro, bs, caps).expect("valid fuzz export")
    };
    vec![
        mk(
            "disk",
            "a test disk",
            1 << 20,
            false,
            BlockSizes::new(512, 4096, 1 << 20).expect("sizes"),
            all,
        ),
        mk(
            "ro",
            "",
            64 * 1024,
            true,
            BlockSizes::new(4096, 4096, 64 * 1024).expect("sizes"),
            all,
        ),
        mk(
            "bytes",
            "odd",
            1000,
            false,
            BlockSizes::default(),
            Capabilities {
                flush: true,
                ..Capabilities::default()
            },
        ),
    ]
}

/// The configuration byte 0 selects.
pub fn config_for(ctl: u8) -> HandshakeConfig {
    HandshakeConfig {
        max_option_bytes: if ctl & 1 != 0 { 256 } else { DEFAULT_MAX_OPTION_LEN },
        offer_no_zeroes: ctl & 2 == 0,
        allow_structured_replies: ctl & 4 == 0,
        allow_extended_headers: ctl & 8 == 0,
        output_high_water_bytes: if ctl & 16 != 0 { 64 } else { 64 * 1024 },
    }
}

/// How one run of the handshake ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The input ran out mid-negotiation.
    NeedInput,
    /// Negotiation finished after `consumed` input bytes.
    Done {
        /// Handshake bytes.
        consumed: usize,
        /// The session.
        session: Session,
    },
    /// The connection was closed after `consumed` input bytes.
    Close {
        /// Handshake bytes.
        consumed: usize,
        /// Why.
        reason: crate::CloseReason,
    },
}

/// Runs the handshake over `input` cut into pieces of the `pieces` sizes (cycled; 0 stands for
/// "everything left"), draining the output after every call. Returns everything the server
/// wrote and how it ended. Panics if the handshake buffers more than one bounded message.
pub fn run_handshake(config: HandshakeConfig, shutdown: bool, input: &[u8], pieces: &[usize]) -> (Vec<u8>, End) {
    let exports = catalog();
    let mut out = Vec::new();
    let mut hs = Handshake::new(exports.as_slice(), config, &mut out);
    if shutdown {
        hs.begin_shutdown();
    }
    let bound = (config.max_option_bytes as usize).max(OPTION_HEADER_LEN);
    let mut transcript = std::mem::take(&mut out);
    let mut pos = 0;
    let mut piece = 0;
    loop {
        let size = match pieces[piece % pieces.len()] {
            0 => input.len() - pos,
            n => n.min(input.len() - pos),
        };
        piece += 1;
        let chunk = &input[pos..pos + size];
        let mut off = 0;
        loop {
            let fed = hs.feed(&chunk[off..], &mut out);
            assert!(
                hs.buffered_bytes() <= bound,
                "handshake buffered {} bytes",
                hs.buffered_bytes()
            );
            assert!(fed.consumed <= chunk.len() - off);
            transcript.append(&mut out);
            off += fed.consumed;
            match fed.outcome {
                Outcome::NeedInput => {
                    assert_eq!(off, chunk.len(), "NeedInput with input left");
                    break;
                }
                Outcome::OutputFull => assert!(off < chunk.len()),
                Outcome::Done(session) => {
                    return (
                        transcript,
                        End::Done {
                            consumed: pos + off,
                            session,
                        },
                    )
                }
                Outcome::Close(reason) => {
                    return (
                        transcript,
                        End::Close {
                            consumed: pos + off,
                            reason,
                        },
                    )
                }
            }
        }
        pos += size;
        if pos == input.len() {
            return (transcript, End::NeedInput);
        }
    }
}

/// Checks that `transcript` is a greeting followed by well-formed option replies, ending with
/// the `EXPORT_NAME` answer when the negotiation ended that way.
pub fn check_transcript(config: &HandshakeConfig, input: &[u8], transcript: &[u8], end: &End) {
    let flags = decode_greeting(transcript).expect("greeting");
    assert_eq!(flags, crate::handshake::handshake_flags(config));
    let mut rest = &transcript[GREETING_LEN..];
    if let End::Done { session, .. } = end {
        if session.entry == Entry::ExportName {
            let client_no_zeroes = input.len() >= 4 && input[3] & 2 != 0;
            let block = EXPORT_NAME_REPLY_LEN
                + if config.offer_no_zeroes && client_no_zeroes {
                    0
                } else {
                    EXPORT_NAME_PADDING_LEN
                };
            assert!(rest.len() >= block, "EXPORT_NAME answer missing");
            let (replies, answer) = rest.split_at(rest.len() - block);
            assert_eq!(
                u64::from_be_bytes(answer[..8].try_into().expect("8 bytes")),
                session.size_bytes
            );
            assert_eq!(u16::from_be_bytes([answer[8], answer[9]]), session.transmission_flags);
            assert!(answer[10..].iter().all(|&b| b == 0));
            rest = replies;
        }
    }
    let mut last = None;
    while !rest.is_empty() {
        let (reply, len) = decode_option_reply(rest).expect("well-formed option reply");
        if reply.is_error() {
            assert!(std::str::from_utf8(reply.data).is_ok(), "error text is UTF-8");
        }
        last = Some(reply.reply_type);
        rest = &rest[len..];
    }
    if let End::Done { session, .. } = end {
        if session.entry == Entry::Go {
            assert_eq!(last, Some(REP_ACK), "GO must end with ACK");
        }
    }
}

/// Checks a session against the configuration it was negotiated under.
pub fn check_session(config: &HandshakeConfig, session: &Session) {
    let f = session.transmission_flags;
    let chunked = session.structured_replies || session.extended_headers;
    assert_ne!(f & FLAG_HAS_FLAGS, 0);
    assert!(config.allow_structured_replies || !session.structured_replies);
    assert!(config.allow_extended_headers || !session.extended_headers);
    assert!(chunked || f & FLAG_SEND_DF == 0, "DF without chunked replies");
    assert!(
        chunked || session.base_allocation.is_none(),
        "meta context without chunked replies"
    );
    assert!(f & FLAG_SEND_FAST_ZERO == 0 || f & FLAG_SEND_WRITE_ZEROES != 0);
    assert_eq!(f & FLAG_BLOCK_STAT_PAYLOAD, 0);
    assert!(!(session.extended_headers && session.entry == Entry::ExportName));
}

/// Decodes every request in `input` for `session`, encodes the reply each would get and
/// decodes it back. Panics on any inconsistency.
pub fn run_transmission(session: &Session, mut input: &[u8]) {
    let dec = RequestDecoder::new(session);
    let enc = ReplyEncoder::for_session(session);
    let mut scratch = vec![0u8; MAX_ERROR_REPLY_LEN];
    loop {
        let (skip, cookie, errno) = match dec.decode(input) {
            Decoded::Incomplete { need_bytes } => {
                assert!(need_bytes > 0 && input.len() + need_bytes == dec.header_len());
                return;
            }
            Decoded::Close(_) => return,
            Decoded::Request(r) => {
                if r.command == Command::Disc {
                    return;
                }
                if r.command != Command::Flush {
                    assert!(r.length_bytes > 0);
                    assert!(r.offset_bytes + r.length_bytes <= session.size_bytes);
                }
                assert!(u64::from(r.payload_bytes) <= dec.max_payload_bytes());
                assert_eq!(r.payload_bytes > 0, r.command == Command::Write);
                let n = match r.command {
                    Command::Read => enc
                        .read_data_header(
                            &mut scratch,
                            r.cookie,
                            r.offset_bytes,
                            r.offset_bytes,
                            r.length_bytes,
                            true,
                        )
                        .expect("read header"),
                    Command::BlockStatus => {
                        let context = session.base_allocation.expect("context selected");
                        let e = Extent {
                            length_bytes: r.length_bytes.min(u64::from(u32::MAX)),
                            flags: 0,
                        };
                        enc.block_status(&mut scratch, r.cookie, r.offset_bytes, context, &[e], true)
                            .expect("status chunk")
                    }
                    _ => enc
                        .success(&mut scratch, r.cookie, r.offset_bytes)
                        .expect("success reply"),
                };
                assert!(n > 0);
                (dec.header_len() + r.payload_bytes as usize, r.cookie, 0)
            }
            Decoded::Reject(rj) => {
                enc.reject(&mut scratch, &rj).expect("error reply");
                (dec.header_len() + rj.discard_bytes as usize, rj.cookie, rj.errno.wire())
            }
        };
        let (header, hlen) = decode_reply_header(&scratch).expect("reply decodes");
        match header {
            ReplyHeader::Simple { error, cookie: c } => {
                assert_ne!(enc.mode(), ReplyMode::Extended, "simple reply under extended headers");
                assert_eq!((c, error), (cookie, errno));
            }
            ReplyHeader::Chunk {
                kind,
                cookie: c,
                payload_bytes,
                ..
            } => {
                assert_eq!(c, cookie);
                if errno != 0 {
                    let payload = &scratch[hlen..hlen + payload_bytes as usize];
                    match decode_chunk_payload(kind, payload).expect("error chunk decodes") {
                        crate::client::ChunkPayload::Error { errno: e, .. } => assert_eq!(e, errno),
                        other => panic!("rejection answered with {other:?}"),
                    }
                }
            }
        }
        input = &input[skip.min(input.len())..];
    }
}

/// One fuzz case (see the module doc).
pub fn fuzz_one(data: &[u8]) {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let config = config_for(ctl);
    let shutdown = ctl & 32 != 0;
    let (whole_out, whole_end) = run_handshake(config, shutdown, input, &[0]);
    let pattern: &[usize] = match ctl >> 6 {
        0 => &[1],
        1 => &[3, 1, 16],
        2 => &[7, 2, 29, 1],
        _ => &[16, 5, 64, 1, 2],
    };
    let (split_out, split_end) = run_handshake(config, shutdown, input, pattern);
    assert_eq!(whole_out, split_out, "output depends on fragmentation");
    assert_eq!(whole_end, split_end, "outcome depends on fragmentation");
    check_transcript(&config, input, &whole_out, &whole_end);
    if let End::Done { consumed, session } = &whole_end {
        check_session(&config, session);
        run_transmission(session, &input[*consumed..]);
    }
}
