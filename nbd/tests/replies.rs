//! Reply encoding for each mode, byte for byte (`shared/specs/nbd-ublk.md` A8, A12, A16), and
//! the encoder's refusals (small buffers, forms the mode lacks, invalid extents).

mod common;

use common::hex;
use keel_nbd::client::{decode_chunk_payload, decode_reply_header, ChunkPayload, ReplyHeader};
use keel_nbd::reply::{MAX_ERROR_REPLY_LEN, MAX_READ_HEADER_LEN};
use keel_nbd::{Errno, Extent, MetaContextId, NbdError, ReplyEncoder, ReplyMode};

const COOKIE: u64 = 0x0102_0304_0506_0708;

fn enc(mode: ReplyMode) -> ReplyEncoder {
    ReplyEncoder::new(mode)
}

#[test]
fn simple_replies() {
    let e = enc(ReplyMode::Simple);
    let mut b = [0u8; 64];
    let n = e.success(&mut b, COOKIE, 4096).unwrap();
    assert_eq!(b[..n], hex("67446698 00000000 0102030405060708")[..]);
    let n = e
        .error(&mut b, COOKIE, 4096, Errno::Inval, "ignored in simple mode")
        .unwrap();
    assert_eq!(b[..n], hex("67446698 00000016 0102030405060708")[..]);
    let n = e.read_data_header(&mut b, COOKIE, 4096, 4096, 8192, true).unwrap();
    assert_eq!(b[..n], hex("67446698 00000000 0102030405060708")[..]);
    // No chunks in simple mode, and a read cannot be split.
    assert!(matches!(e.none(&mut b, COOKIE, 0), Err(NbdError::NotInMode { .. })));
    assert!(matches!(
        e.hole(&mut b, COOKIE, 0, 0, 512, true),
        Err(NbdError::NotInMode { .. })
    ));
    assert!(matches!(
        e.read_data_header(&mut b, COOKIE, 0, 512, 512, true),
        Err(NbdError::NotInMode { .. })
    ));
    assert!(matches!(
        e.read_data_header(&mut b, COOKIE, 0, 0, 512, false),
        Err(NbdError::NotInMode { .. })
    ));
    let x = [Extent {
        length_bytes: 512,
        flags: 0,
    }];
    assert!(matches!(
        e.block_status(&mut b, COOKIE, 0, MetaContextId(1), &x, true),
        Err(NbdError::NotInMode { .. })
    ));
}

#[test]
fn structured_chunks() {
    let e = enc(ReplyMode::Structured);
    let mut b = [0u8; 128];
    // A16: the answer to an 8 KiB READ at 0.
    let n = e.read_data_header(&mut b, COOKIE, 0, 0, 8192, true).unwrap();
    assert_eq!(
        b[..n],
        hex("668e33ef 0001 0001 0102030405060708 00002008 0000000000000000")[..]
    );
    // A split read: first part not final.
    let n = e.read_data_header(&mut b, COOKIE, 0, 4096, 4096, false).unwrap();
    assert_eq!(
        b[..n],
        hex("668e33ef 0000 0001 0102030405060708 00001008 0000000000001000")[..]
    );
    // Payload-less success stays a simple reply (as nbdkit does).
    let n = e.success(&mut b, COOKIE, 0).unwrap();
    assert_eq!(b[..n], hex("67446698 00000000 0102030405060708")[..]);
    let n = e.none(&mut b, COOKIE, 0).unwrap();
    assert_eq!(b[..n], hex("668e33ef 0001 0000 0102030405060708 00000000")[..]);
    let n = e.error(&mut b, COOKIE, 0, Errno::Inval, "oops").unwrap();
    assert_eq!(
        b[..n],
        [
            &hex("668e33ef 0001 8001 0102030405060708 0000000a 00000016 0004")[..],
            b"oops"
        ]
        .concat()
    );
    let n = e
        .error_offset(&mut b, COOKIE, 0, Errno::Io, "bad", 0x2000, false)
        .unwrap();
    assert_eq!(
        b[..n],
        [
            &hex("668e33ef 0000 8002 0102030405060708 00000011 00000005 0003")[..],
            b"bad",
            &hex("0000000000002000")
        ]
        .concat()
    );
    let n = e.hole(&mut b, COOKIE, 0, 0x1000, 0x3000, true).unwrap();
    assert_eq!(
        b[..n],
        hex("668e33ef 0001 0002 0102030405060708 0000000c 0000000000001000 00003000")[..]
    );
    let extents = [
        Extent {
            length_bytes: 0x1000,
            flags: 0,
        },
        Extent {
            length_bytes: 0x2000,
            flags: 3,
        },
    ];
    let n = e
        .block_status(&mut b, COOKIE, 0, MetaContextId(1), &extents, true)
        .unwrap();
    assert_eq!(
        b[..n],
        hex("668e33ef 0001 0005 0102030405060708 00000014 00000001 00001000 00000000 00002000 00000003")[..]
    );
    // 32-bit extents only.
    let long = [Extent {
        length_bytes: 1 << 32,
        flags: 0,
    }];
    assert!(matches!(
        e.block_status(&mut b, COOKIE, 0, MetaContextId(1), &long, true),
        Err(NbdError::InvalidExtents(_))
    ));
}

#[test]
fn extended_chunks() {
    let e = enc(ReplyMode::Extended);
    let mut b = [0u8; 128];
    let off = 0x10_0000;
    let n = e.success(&mut b, COOKIE, off).unwrap();
    assert_eq!(
        b[..n],
        hex("6e8a278c 0001 0000 0102030405060708 0000000000100000 0000000000000000")[..]
    );
    let n = e.read_data_header(&mut b, COOKIE, off, off, 4096, true).unwrap();
    assert_eq!(n, MAX_READ_HEADER_LEN);
    assert_eq!(
        b[..n],
        hex("6e8a278c 0001 0001 0102030405060708 0000000000100000 0000000000001008 0000000000100000")[..]
    );
    let n = e.error(&mut b, COOKIE, off, Errno::Perm, "").unwrap();
    assert_eq!(
        b[..n],
        hex("6e8a278c 0001 8001 0102030405060708 0000000000100000 0000000000000006 00000001 0000")[..]
    );
    let extents = [Extent {
        length_bytes: 1 << 33,
        flags: 2,
    }];
    let n = e
        .block_status(&mut b, COOKIE, off, MetaContextId(1), &extents, true)
        .unwrap();
    assert_eq!(
        b[..n],
        hex("6e8a278c 0001 0006 0102030405060708 0000000000100000 0000000000000018
             00000001 00000001 0000000200000000 0000000000000002")[..]
    );
}

#[test]
fn encoders_refuse_bad_arguments_instead_of_panicking() {
    for mode in [ReplyMode::Simple, ReplyMode::Structured, ReplyMode::Extended] {
        let e = enc(mode);
        let mut tiny = [0u8; 8];
        assert!(
            matches!(e.success(&mut tiny, 1, 0), Err(NbdError::BufferTooSmall { .. })),
            "{mode:?}"
        );
        assert!(matches!(
            e.error(&mut tiny, 1, 0, Errno::Io, "x"),
            Err(NbdError::BufferTooSmall { .. })
        ));
        assert!(e.read_data_header(&mut tiny, 1, 0, 0, 1, true).is_err());
    }
    let e = enc(ReplyMode::Structured);
    let mut b = vec![0u8; MAX_ERROR_REPLY_LEN];
    assert!(e.error(&mut b, 1, 0, Errno::Io, &"m".repeat(4096)).is_ok());
    assert!(matches!(
        e.error(&mut b, 1, 0, Errno::Io, &"m".repeat(4097)),
        Err(NbdError::InvalidString(_))
    ));
    assert!(matches!(
        e.error(&mut b, 1, 0, Errno::Io, "nul\0"),
        Err(NbdError::InvalidString(_))
    ));
    assert!(e.hole(&mut b, 1, 0, 0, 0, true).is_err(), "zero hole");
    assert!(e.read_data_header(&mut b, 1, 0, 0, 0, true).is_err(), "no data");
    assert!(e.read_data_header(&mut b, 1, 0, 0, u64::MAX, true).is_err(), "overflow");
    assert!(
        e.read_data_header(&mut b, 1, 0, 0, 1 << 32, true).is_err(),
        "over 32 bits"
    );
    let ctx = MetaContextId(1);
    assert!(matches!(
        e.block_status(&mut b, 1, 0, ctx, &[], true),
        Err(NbdError::InvalidExtents(_))
    ));
    let zero = [Extent {
        length_bytes: 0,
        flags: 0,
    }];
    assert!(matches!(
        e.block_status(&mut b, 1, 0, ctx, &zero, true),
        Err(NbdError::InvalidExtents(_))
    ));
    let many = vec![
        Extent {
            length_bytes: 1,
            flags: 0
        };
        3
    ];
    assert!(matches!(
        e.block_status(&mut b[..40], 1, 0, ctx, &many, true),
        Err(NbdError::BufferTooSmall { .. })
    ));
}

#[test]
fn encoded_replies_decode_back() {
    let e = enc(ReplyMode::Extended);
    let mut b = [0u8; 256];
    let n = e.error_offset(&mut b, 7, 512, Errno::Io, "media", 1024, true).unwrap();
    let (h, hl) = decode_reply_header(&b[..n]).unwrap();
    let ReplyHeader::Chunk {
        flags,
        kind,
        cookie,
        offset_bytes,
        payload_bytes,
    } = h
    else {
        panic!()
    };
    assert_eq!(
        (flags, cookie, offset_bytes, payload_bytes as usize + hl),
        (1, 7, Some(512), n)
    );
    assert_eq!(
        decode_chunk_payload(kind, &b[hl..n]).unwrap(),
        ChunkPayload::Error {
            errno: 5,
            message: "media",
            offset_bytes: Some(1024)
        }
    );
}
