//! Property tests: arbitrary client byte streams in arbitrary fragmentations never panic,
//! never make the handshake buffer more than one bounded message and give the same output and
//! outcome as the unfragmented stream; request headers and replies survive encode → decode.

mod common;

use common::FLAGS;
use keel_nbd::client::{
    decode_chunk_payload, decode_reply_header, encode_client_flags, encode_info_request, encode_meta_request,
    encode_option, ChunkPayload, ReplyHeader,
};
use keel_nbd::consts::*;
use keel_nbd::fuzz::{check_session, check_transcript, config_for, run_handshake, run_transmission, End};
use keel_nbd::{Errno, Extent, MetaContextId, ReplyEncoder, ReplyMode, RequestHeader};
use proptest::prelude::*;

/// One option as a client might send it: well-formed or not.
fn option() -> impl Strategy<Value = Vec<u8>> {
    let names = prop::sample::select(vec!["", "disk", "ro", "bytes", "nope"]);
    let infos = prop::collection::vec(prop::sample::select(vec![0u16, 1, 2, 3, 9]), 0..4);
    let queries = prop::collection::vec(
        prop::sample::select(vec!["base:allocation", "base:", "qemu:dirty", "x-a:b", "nocolon"]),
        0..3,
    );
    prop_oneof![
        // Payload-less options, sometimes with stray data.
        3 => (
            prop::sample::select(vec![OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_STRUCTURED_REPLY, OPT_EXTENDED_HEADERS]),
            prop::collection::vec(any::<u8>(), 0..3)
        )
            .prop_map(|(code, data)| {
                let mut v = Vec::new();
                let data = if data.len() < 2 { Vec::new() } else { data };
                encode_option(&mut v, code, &data);
                v
            }),
        3 => (prop::sample::select(vec![OPT_INFO, OPT_GO]), names.clone(), infos).prop_map(|(code, name, infos)| {
            let mut v = Vec::new();
            encode_info_request(&mut v, code, name, &infos);
            v
        }),
        3 => (prop::sample::select(vec![OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT]), names.clone(), queries)
            .prop_map(|(code, name, queries)| {
                let mut v = Vec::new();
                encode_meta_request(&mut v, code, name, &queries);
                v
            }),
        1 => names.prop_map(|name| {
            let mut v = Vec::new();
            encode_option(&mut v, OPT_EXPORT_NAME, name.as_bytes());
            v
        }),
        // Any code with random data (lengths consistent, contents not).
        2 => (0u32..16, prop::collection::vec(any::<u8>(), 0..40)).prop_map(|(code, data)| {
            let mut v = Vec::new();
            encode_option(&mut v, code, &data);
            v
        }),
        // Raw garbage (bad magic, lying lengths).
        1 => prop::collection::vec(any::<u8>(), 1..40),
    ]
}

/// A client stream: flags (usually the standard ones), options, then request-ish bytes.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![9 => Just(FLAGS), 1 => any::<u32>()],
        prop::collection::vec(option(), 0..8),
        prop::collection::vec(any::<u8>(), 0..96),
    )
        .prop_map(|(flags, options, tail)| {
            let mut v = Vec::new();
            encode_client_flags(&mut v, flags);
            options.iter().for_each(|o| v.extend_from_slice(o));
            v.extend_from_slice(&tail);
            v
        })
}

fn pieces() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..40, 1..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn structured_streams_are_fragmentation_independent(ctl: u8, input in stream(), pieces in pieces()) {
        let config = config_for(ctl);
        let (whole_out, whole_end) = run_handshake(config, ctl & 32 != 0, &input, &[0]);
        let (split_out, split_end) = run_handshake(config, ctl & 32 != 0, &input, &pieces);
        prop_assert_eq!(&whole_out, &split_out);
        prop_assert_eq!(&whole_end, &split_end);
        check_transcript(&config, &input, &whole_out, &whole_end);
        if let End::Done { consumed, session } = &whole_end {
            check_session(&config, session);
            run_transmission(session, &input[*consumed..]);
        }
    }

    #[test]
    fn random_bytes_never_panic(ctl: u8, input in prop::collection::vec(any::<u8>(), 0..600), pieces in pieces()) {
        let config = config_for(ctl);
        let (whole_out, whole_end) = run_handshake(config, false, &input, &[0]);
        let (split_out, split_end) = run_handshake(config, false, &input, &pieces);
        prop_assert_eq!(whole_out, split_out);
        prop_assert_eq!(whole_end, split_end);
    }

    #[test]
    fn request_headers_round_trip(
        extended: bool, flags: u16, command: u16, cookie: u64, offset: u64, length: u64,
    ) {
        let length = if extended { length } else { length & 0xffff_ffff };
        let h = RequestHeader { flags, command, cookie, offset_bytes: offset, length };
        let mut buf = [0u8; 32];
        let n = h.encode(extended, &mut buf).unwrap();
        prop_assert_eq!(n, RequestHeader::len(extended));
        prop_assert_eq!(RequestHeader::decode(extended, &buf[..n]), Ok(Some(h)));
    }

    #[test]
    fn chunk_replies_round_trip(
        extended: bool,
        cookie: u64,
        request_offset: u64,
        errno in prop::sample::select(vec![Errno::Perm, Errno::Io, Errno::Inval, Errno::NoSpc, Errno::Overflow, Errno::NotSup, Errno::Shutdown]),
        message in "[ -~]{0,80}",
        extents in prop::collection::vec((1u64..=u64::from(u32::MAX), any::<u32>()), 1..12),
        data_offset: u64,
        data_len in 1u64..=u64::from(u32::MAX - 8),
        done: bool,
    ) {
        let mode = if extended { ReplyMode::Extended } else { ReplyMode::Structured };
        let e = ReplyEncoder::new(mode);
        let mut buf = vec![0u8; 4096 + 256];
        let header = |buf: &[u8]| {
            let (h, hl) = decode_reply_header(buf).unwrap();
            let ReplyHeader::Chunk { flags, kind, cookie: c, offset_bytes, payload_bytes } = h else {
                panic!("simple reply in {mode:?}")
            };
            assert_eq!(c, cookie);
            assert_eq!(offset_bytes, extended.then_some(request_offset));
            (flags, kind, payload_bytes, hl)
        };

        let n = e.error(&mut buf, cookie, request_offset, errno, &message).unwrap();
        let (flags, kind, len, hl) = header(&buf[..n]);
        prop_assert_eq!((flags, hl + len as usize), (REPLY_FLAG_DONE, n));
        prop_assert_eq!(
            decode_chunk_payload(kind, &buf[hl..n]).unwrap(),
            ChunkPayload::Error { errno: errno.wire(), message: &message, offset_bytes: None }
        );

        let ex: Vec<Extent> = extents.iter().map(|&(l, f)| Extent { length_bytes: l, flags: f }).collect();
        let n = e.block_status(&mut buf, cookie, request_offset, MetaContextId(1), &ex, done).unwrap();
        let (flags, kind, len, hl) = header(&buf[..n]);
        prop_assert_eq!((flags == REPLY_FLAG_DONE, hl + len as usize), (done, n));
        prop_assert_eq!(
            decode_chunk_payload(kind, &buf[hl..n]).unwrap(),
            ChunkPayload::BlockStatus { context: 1, extents: ex }
        );

        let n = e.read_data_header(&mut buf, cookie, request_offset, data_offset, data_len, done).unwrap();
        let (flags, kind, len, hl) = header(&buf[..n]);
        prop_assert_eq!((flags == REPLY_FLAG_DONE, kind, len), (done, REPLY_TYPE_OFFSET_DATA, data_len + 8));
        prop_assert_eq!(u64::from_be_bytes(buf[hl..hl + 8].try_into().unwrap()), data_offset);
    }

    #[test]
    fn simple_replies_round_trip(cookie: u64, errno in prop::option::of(prop::sample::select(vec![Errno::Perm, Errno::Io, Errno::Inval]))) {
        let e = ReplyEncoder::new(ReplyMode::Simple);
        let mut buf = [0u8; 16];
        let n = match errno {
            Some(errno) => e.error(&mut buf, cookie, 0, errno, "x").unwrap(),
            None => e.success(&mut buf, cookie, 0).unwrap(),
        };
        prop_assert_eq!(
            decode_reply_header(&buf[..n]).unwrap(),
            (ReplyHeader::Simple { error: errno.map_or(0, Errno::wire), cookie }, 16)
        );
    }
}
