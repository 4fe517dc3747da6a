//! Request parsing and validation against negotiated sessions (`shared/specs/nbd-ublk.md`
//! A6, A7, A9, A10, A15), with sessions obtained from real handshakes.

mod common;

use common::*;
use keel_nbd::consts::*;
use keel_nbd::{
    BlockSizes, CloseReason, Command, CommandFlags, Decoded, Errno, ExportInfo, HandshakeConfig, Rejection, Request,
    RequestDecoder, RequestHeader, Session,
};

/// The session a client gets on `exports` with `opening`.
fn session_with(exports: &[ExportInfo], opening: Client) -> Session {
    let (_, fed) = run(exports, HandshakeConfig::default(), opening.bytes());
    done(&fed).clone()
}

/// `disk` (512/4096/1 MiB, 1 MiB) negotiated the kernel's way: nothing but GO.
fn simple() -> Session {
    session_with(&three(), Client::flags(FLAGS).info(OPT_GO, "disk", &[]))
}

/// `disk` with structured replies and base:allocation.
fn structured() -> Session {
    session_with(
        &three(),
        Client::flags(FLAGS)
            .opt(OPT_STRUCTURED_REPLY, &[])
            .meta(OPT_SET_META_CONTEXT, "disk", &["base:allocation"])
            .info(OPT_GO, "disk", &[INFO_BLOCK_SIZE]),
    )
}

/// `disk` with extended headers and base:allocation.
fn extended() -> Session {
    session_with(
        &three(),
        Client::flags(FLAGS)
            .opt(OPT_EXTENDED_HEADERS, &[])
            .meta(OPT_SET_META_CONTEXT, "disk", &["base:allocation"])
            .info(OPT_GO, "disk", &[INFO_BLOCK_SIZE]),
    )
}

fn decode(s: &Session, flags: u16, command: u16, offset: u64, length: u64) -> Decoded {
    let mut h = [0u8; 32];
    let n = RequestHeader {
        flags,
        command,
        cookie: 0xc0ffee,
        offset_bytes: offset,
        length,
    }
    .encode(s.extended_headers, &mut h)
    .unwrap();
    RequestDecoder::new(s).decode(&h[..n])
}

fn request(s: &Session, flags: u16, command: u16, offset: u64, length: u64) -> Request {
    match decode(s, flags, command, offset, length) {
        Decoded::Request(r) => r,
        other => panic!("flags {flags:#x} cmd {command} {offset}+{length}: expected a request, got {other:?}"),
    }
}

fn rejected(s: &Session, flags: u16, command: u16, offset: u64, length: u64) -> Rejection {
    match decode(s, flags, command, offset, length) {
        Decoded::Reject(r) => {
            assert_eq!(r.cookie, 0xc0ffee);
            assert_eq!(r.command, command);
            assert!(!r.why.is_empty());
            r
        }
        other => panic!("flags {flags:#x} cmd {command} {offset}+{length}: expected a rejection, got {other:?}"),
    }
}

fn errno(s: &Session, flags: u16, command: u16, offset: u64, length: u64) -> Errno {
    rejected(s, flags, command, offset, length).errno
}

#[test]
fn worked_disc_and_spec_request_bytes() {
    let s = simple();
    let dec = RequestDecoder::new(&s);
    assert_eq!(dec.header_len(), 28);
    let disc = hex("25609513 0000 0002 0000000000000001 0000000000000000 00000000");
    let Decoded::Request(r) = dec.decode(&disc) else {
        panic!()
    };
    assert_eq!((r.command, r.cookie, r.payload_bytes), (Command::Disc, 1, 0));
    // A kernel READ: cookie = counter << 32 | tag.
    let read = hex("25609513 0000 0000 0000000500000007 0000000000001000 00002000");
    let Decoded::Request(r) = dec.decode(&read) else {
        panic!()
    };
    assert_eq!(
        r,
        Request {
            cookie: 0x5_0000_0007,
            command: Command::Read,
            flags: CommandFlags(0),
            offset_bytes: 4096,
            length_bytes: 8192,
            payload_bytes: 0,
        }
    );
    // The kernel writes flags+type as one u32: FUA write = 0x00010001.
    let write = hex("25609513 00010001 0000000000000002 0000000000000000 00000200");
    let Decoded::Request(r) = dec.decode(&write) else {
        panic!()
    };
    assert_eq!((r.command, r.flags.fua(), r.payload_bytes), (Command::Write, true, 512));
}

#[test]
fn incomplete_headers_ask_for_the_rest() {
    let s = extended();
    let dec = RequestDecoder::new(&s);
    assert_eq!(dec.decode(&[]), Decoded::Incomplete { need_bytes: 32 });
    assert_eq!(
        dec.decode(&hex("21e41c71 0000")),
        Decoded::Incomplete { need_bytes: 26 }
    );
}

#[test]
fn bad_magic_closes() {
    let s = simple();
    let dec = RequestDecoder::new(&s);
    let bad = hex("25609514 0000 0000 0000000000000001 0000000000000000 00000200");
    assert_eq!(
        dec.decode(&bad),
        Decoded::Close(CloseReason::BadRequestMagic(0x2560_9514))
    );
    // A compact header in an extended session, and the reverse.
    let x = extended();
    let compact = hex("25609513 0000 0000 0000000000000001 0000000000000000 00000200 00000000");
    assert_eq!(
        RequestDecoder::new(&x).decode(&compact),
        Decoded::Close(CloseReason::BadRequestMagic(REQUEST_MAGIC))
    );
    let ext = hex("21e41c71 0000 0000 0000000000000001 0000000000000000 0000000000000200");
    assert!(matches!(
        dec.decode(&ext),
        Decoded::Close(CloseReason::BadRequestMagic(_))
    ));
}

#[test]
fn what_qemu_io_sends_is_accepted() {
    let s = structured();
    // qemu-io: WRITE with FUA (0x0001), WRITE_ZEROES with FUA|NO_HOLE (0x0003).
    let w = request(&s, 0x0001, CMD_WRITE, 0, 4096);
    assert_eq!((w.flags.fua(), w.payload_bytes), (true, 4096));
    let z = request(&s, 0x0003, CMD_WRITE_ZEROES, 4096, 8192);
    assert!(z.flags.fua() && z.flags.no_hole() && z.payload_bytes == 0);
    // BLOCK_STATUS with REQ_ONE, FLUSH, TRIM, CACHE, FAST_ZERO, DF.
    assert!(request(&s, CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 0, 1 << 20)
        .flags
        .req_one());
    assert_eq!(request(&s, 0, CMD_FLUSH, 0, 0).command, Command::Flush);
    assert_eq!(request(&s, 0, CMD_TRIM, 512, 512).command, Command::Trim);
    assert_eq!(request(&s, 0, CMD_CACHE, 0, 65536).command, Command::Cache);
    assert!(request(&s, CMD_FLAG_FAST_ZERO, CMD_WRITE_ZEROES, 0, 1 << 20)
        .flags
        .fast_zero());
    assert!(request(&s, CMD_FLAG_DF, CMD_READ, 0, 65536).flags.df());
    // DISC with cookie 0, whatever it carries.
    assert_eq!(request(&s, 0xffff, CMD_DISC, 7, 7).command, Command::Disc);
}

#[test]
fn unknown_commands_and_flags_get_einval() {
    let s = structured();
    assert_eq!(errno(&s, 0, 9, 0, 512), Errno::Inval);
    assert_eq!(errno(&s, 0, CMD_RESIZE, 0, 512), Errno::Inval);
    // READ with flag 0x40: both nbdkit and qemu-nbd answer 22.
    assert_eq!(errno(&s, 0x40, CMD_READ, 0, 512), Errno::Inval);
    assert_eq!(errno(&s, CMD_FLAG_NO_HOLE, CMD_WRITE, 0, 512), Errno::Inval);
    assert_eq!(errno(&s, CMD_FLAG_DF, CMD_WRITE, 0, 512), Errno::Inval);
    assert_eq!(errno(&s, CMD_FLAG_REQ_ONE, CMD_READ, 0, 512), Errno::Inval);
    assert_eq!(errno(&s, CMD_FLAG_FAST_ZERO, CMD_TRIM, 0, 512), Errno::Inval);
    assert_eq!(
        errno(&s, CMD_FLAG_PAYLOAD_LEN, CMD_WRITE, 0, 512),
        Errno::Inval,
        "compact headers"
    );
    // A rejected compact WRITE still has its payload drained.
    assert_eq!(rejected(&s, 0x40, CMD_WRITE, 0, 4096).discard_bytes, 4096);
}

#[test]
fn flags_depend_on_negotiation() {
    // Without structured replies: no DF, no BLOCK_STATUS.
    let s = simple();
    assert_eq!(errno(&s, CMD_FLAG_DF, CMD_READ, 0, 512), Errno::Inval);
    assert_eq!(errno(&s, 0, CMD_BLOCK_STATUS, 0, 512), Errno::Inval);
    // Structured replies but no context selected.
    let sr = session_with(
        &three(),
        Client::flags(FLAGS)
            .opt(OPT_STRUCTURED_REPLY, &[])
            .info(OPT_GO, "disk", &[]),
    );
    assert_eq!(errno(&sr, 0, CMD_BLOCK_STATUS, 0, 512), Errno::Inval);
    // An export without capabilities: FUA, FLUSH, TRIM, WRITE_ZEROES, FAST_ZERO refused;
    // CACHE accepted anyway (clients send it unadvertised).
    let bare = session_with(&three(), Client::flags(FLAGS).info(OPT_GO, "small", &[]));
    assert_eq!(errno(&bare, CMD_FLAG_FUA, CMD_WRITE, 0, 512), Errno::Inval);
    assert_eq!(errno(&bare, 0, CMD_FLUSH, 0, 0), Errno::Inval);
    assert_eq!(errno(&bare, 0, CMD_TRIM, 0, 512), Errno::Inval);
    assert_eq!(errno(&bare, 0, CMD_WRITE_ZEROES, 0, 512), Errno::Inval);
    assert_eq!(errno(&bare, CMD_FLAG_FAST_ZERO, CMD_WRITE_ZEROES, 0, 512), Errno::Inval);
    assert_eq!(request(&bare, 0, CMD_CACHE, 0, 512).command, Command::Cache);
    assert_eq!(
        request(&bare, 0, CMD_WRITE, 1, 3).payload_bytes,
        3,
        "byte-addressable export"
    );
}

#[test]
fn read_only_exports_refuse_writes_with_eperm() {
    let s = session_with(
        &three(),
        Client::flags(FLAGS)
            .opt(OPT_STRUCTURED_REPLY, &[])
            .info(OPT_GO, "ro", &[]),
    );
    let w = rejected(&s, 0, CMD_WRITE, 0, 4096);
    assert_eq!(
        (w.errno, w.discard_bytes),
        (Errno::Perm, 4096),
        "the payload is still consumed"
    );
    assert_eq!(errno(&s, 0, CMD_TRIM, 0, 4096), Errno::Perm);
    assert_eq!(errno(&s, 0, CMD_WRITE_ZEROES, 0, 4096), Errno::Perm);
    assert_eq!(request(&s, 0, CMD_READ, 0, 4096).command, Command::Read);
    assert_eq!(request(&s, 0, CMD_FLUSH, 0, 0).command, Command::Flush);
}

#[test]
fn ranges_past_the_end() {
    let s = structured();
    let size = 1 << 20;
    assert_eq!(errno(&s, 0, CMD_READ, size - 512, 1024), Errno::Inval);
    assert_eq!(errno(&s, 0, CMD_TRIM, size, 512), Errno::Inval);
    assert_eq!(errno(&s, 0, CMD_BLOCK_STATUS, size, 512), Errno::Inval);
    assert_eq!(errno(&s, 0, CMD_CACHE, size, 512), Errno::Inval);
    let w = rejected(&s, 0, CMD_WRITE, size - 512, 1024);
    assert_eq!((w.errno, w.discard_bytes), (Errno::NoSpc, 1024));
    assert_eq!(errno(&s, 0, CMD_WRITE_ZEROES, size, 512), Errno::NoSpc);
    assert_eq!(
        errno(&s, 0, CMD_READ, u64::MAX - 511, 512),
        Errno::Inval,
        "offset + length overflows"
    );
    assert_eq!(request(&s, 0, CMD_READ, size - 512, 512).offset_bytes, size - 512);
}

#[test]
fn zero_lengths_and_flush_fields() {
    let s = structured();
    for cmd in [
        CMD_READ,
        CMD_WRITE,
        CMD_TRIM,
        CMD_CACHE,
        CMD_WRITE_ZEROES,
        CMD_BLOCK_STATUS,
    ] {
        assert_eq!(errno(&s, 0, cmd, 0, 0), Errno::Inval, "command {cmd}");
    }
    assert_eq!(errno(&s, 0, CMD_FLUSH, 512, 0), Errno::Inval);
    assert_eq!(errno(&s, 0, CMD_FLUSH, 0, 512), Errno::Inval);
}

#[test]
fn alignment_to_the_minimum_block_size() {
    let s = structured();
    assert_eq!(errno(&s, 0, CMD_READ, 1, 512), Errno::Inval);
    assert_eq!(errno(&s, 0, CMD_READ, 0, 513), Errno::Inval);
    assert_eq!(rejected(&s, 0, CMD_WRITE, 100, 512).discard_bytes, 512);
    assert_eq!(errno(&s, 0, CMD_TRIM, 256, 512), Errno::Inval);
    // A length ending exactly at an (unaligned) export end is fine.
    let odd = ExportInfo::new(
        "odd",
        "",
        4096 + 100,
        false,
        BlockSizes::new(512, 4096, 1 << 20).unwrap(),
        all_caps(),
    )
    .unwrap();
    let s_odd = session_with(&[odd], Client::flags(FLAGS).info(OPT_GO, "", &[]));
    assert_eq!(request(&s_odd, 0, CMD_READ, 4096, 100).length_bytes, 100);
    // A server that read-modify-writes can switch the check off.
    let mut relaxed = structured();
    relaxed.check_alignment = false;
    assert_eq!(request(&relaxed, 0, CMD_READ, 1, 3).length_bytes, 3);
}

#[test]
fn payload_limits() {
    // Maximum payload 1 MiB on a 1 TiB export.
    let big = ExportInfo::new(
        "big",
        "",
        1 << 40,
        false,
        BlockSizes::new(512, 4096, 1 << 20).unwrap(),
        all_caps(),
    )
    .unwrap();
    let b = session_with(
        &[big],
        Client::flags(FLAGS)
            .opt(OPT_STRUCTURED_REPLY, &[])
            .info(OPT_GO, "", &[]),
    );
    assert_eq!(errno(&b, 0, CMD_READ, 0, (1 << 20) + 512), Errno::Inval);
    assert_eq!(errno(&b, 0, CMD_CACHE, 0, (1 << 20) + 512), Errno::Inval);
    // Over the maximum but within the drain limit (max(2 × 1 MiB, 32 MiB)): drained, EINVAL.
    let w = rejected(&b, 0, CMD_WRITE, 0, 32 << 20);
    assert_eq!((w.errno, w.discard_bytes), (Errno::Inval, 32 << 20));
    // Beyond it: close.
    assert_eq!(
        decode(&b, 0, CMD_WRITE, 0, (32 << 20) + 1),
        Decoded::Close(CloseReason::PayloadTooLarge {
            len_bytes: (32 << 20) + 1,
            max_bytes: 32 << 20
        })
    );
    // Payload-less commands may exceed the maximum.
    assert_eq!(request(&b, 0, CMD_TRIM, 0, 1 << 30).length_bytes, 1 << 30);
    assert_eq!(
        request(&b, 0, CMD_WRITE_ZEROES, 0, 2 << 30).command,
        Command::WriteZeroes
    );
}

#[test]
fn extended_headers_requests() {
    let s = extended();
    let dec = RequestDecoder::new(&s);
    assert_eq!(dec.header_len(), 32);
    // A WRITE's length is its payload, with PAYLOAD_LEN (redundant) or without (qemu 10).
    let w = request(&s, CMD_FLAG_PAYLOAD_LEN | CMD_FLAG_FUA, CMD_WRITE, 0, 4096);
    assert_eq!((w.payload_bytes, w.flags.fua()), (4096, true));
    let w = request(&s, CMD_FLAG_FUA, CMD_WRITE, 4096, 4096);
    assert_eq!((w.payload_bytes, w.length_bytes), (4096, 4096));
    let r = rejected(&s, 0, CMD_WRITE, 1 << 30, 4096);
    assert_eq!(
        (r.errno, r.discard_bytes),
        (Errno::NoSpc, 4096),
        "past the end: the payload is drained all the same"
    );
    assert!(matches!(
        decode(&s, 0, CMD_WRITE, 0, (1 << 20) + 1),
        Decoded::Close(CloseReason::PayloadTooLarge { .. })
    ));
    // PAYLOAD_LEN on another command: EINVAL, but the payload is consumed.
    let r = rejected(&s, CMD_FLAG_PAYLOAD_LEN, CMD_READ, 0, 512);
    assert_eq!((r.errno, r.discard_bytes), (Errno::Inval, 512));
    let r = rejected(&s, CMD_FLAG_PAYLOAD_LEN, CMD_BLOCK_STATUS, 0, 8);
    assert_eq!(r.discard_bytes, 8, "BLOCK_STAT_PAYLOAD is not offered");
    // PAYLOAD_LEN over the maximum payload: close (no drain for extended headers).
    assert!(matches!(
        decode(&s, CMD_FLAG_PAYLOAD_LEN, CMD_WRITE, 0, (1 << 20) + 1),
        Decoded::Close(CloseReason::PayloadTooLarge { .. })
    ));
    // 64-bit effect lengths on a large export.
    let big = ExportInfo::new(
        "big",
        "",
        1 << 40,
        false,
        BlockSizes::new(512, 4096, 1 << 20).unwrap(),
        all_caps(),
    )
    .unwrap();
    let b = session_with(
        &[big],
        Client::flags(FLAGS)
            .opt(OPT_EXTENDED_HEADERS, &[])
            .info(OPT_GO, "", &[]),
    );
    assert_eq!(request(&b, 0, CMD_TRIM, 0, 1 << 33).length_bytes, 1 << 33);
    assert_eq!(request(&b, 0, CMD_WRITE_ZEROES, 1 << 32, 1 << 39).length_bytes, 1 << 39);
    assert_eq!(errno(&b, 0, CMD_TRIM, 1 << 39, 1 << 40), Errno::Inval);
}

#[test]
fn decoder_reads_only_the_header() {
    let s = simple();
    let mut stream = Vec::new();
    let mut h = [0u8; 32];
    let n = RequestHeader {
        flags: 0,
        command: CMD_WRITE,
        cookie: 9,
        offset_bytes: 0,
        length: 512,
    }
    .encode(false, &mut h)
    .unwrap();
    stream.extend_from_slice(&h[..n]);
    stream.extend_from_slice(&[0xaa; 512]);
    stream.extend_from_slice(&hex("25609513 0000 0003 000000000000000a 0000000000000000 00000000"));
    let dec = RequestDecoder::new(&s);
    let Decoded::Request(w) = dec.decode(&stream) else {
        panic!()
    };
    let next = &stream[dec.header_len() + w.payload_bytes as usize..];
    let Decoded::Request(f) = dec.decode(next) else {
        panic!()
    };
    assert_eq!((f.command, f.cookie), (Command::Flush, 10));
}

#[test]
fn request_header_encoding_limits() {
    let h = RequestHeader {
        flags: 0,
        command: 0,
        cookie: 1,
        offset_bytes: 0,
        length: 1 << 32,
    };
    assert!(h.encode(false, &mut [0u8; 28]).is_err(), "compact length is 32 bits");
    assert_eq!(h.encode(true, &mut [0u8; 32]), Ok(32));
    assert!(h.encode(true, &mut [0u8; 31]).is_err());
    assert_eq!(RequestHeader::decode(false, &[0u8; 27]), Ok(None));
}
