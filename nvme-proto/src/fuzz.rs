//! One fuzz input through everything this crate does with untrusted bytes.
//!
//! [`fuzz_one`] is the body of the cargo-fuzz target `nvme_tcp_pdu` (`fuzz/fuzz_targets/`)
//! and of the corpus replay test (`nvme-proto/tests/fuzz_corpus.rs`), so the committed corpus is
//! exercised by every `cargo test`. The input's first byte chooses the receiving side and the
//! session (bit 0 host, bit 1 header digests, bit 2 data digests, bit 3 handshake already done,
//! bit 4 SUCCESS allowed, bits 6:5 HPDA and CPDA); the second seeds how the stream is cut into
//! reads; the rest is the byte stream. Besides "no panic", it checks what must hold:
//! - the parser's feed contract (consumption, contiguous data offsets, one `End` per `Header`);
//! - every header it accepts encodes again, and the encoding parses back to the same header;
//! - every command in an accepted capsule, and every structure decoded from the raw bytes
//!   (SQE, CQE, Identify pages, log pages, Connect data, registers), survives encode → decode.

use crate::cqe::Cqe;
use crate::identify::{decode_active_ns_list, decode_ns_id_descriptors, IdentifyController, IdentifyNamespace};
use crate::log::{decode_changed_ns_list, DiscoveryEntry, DiscoveryLogHeader, ErrorInfoEntry, SmartLog};
use crate::props::{Cap, Cc, Csts};
use crate::sqe::{Command, ConnectData, DsmRange, NvmCommand, QueueKind, Sqe};
use crate::tcp::{Event, Limits, PduHeader, PduParser, Role, SessionParams};

/// In-capsule and data PDU limits the fuzzed parser runs with (the sizes Keel's target uses).
pub const LIMITS: Limits = Limits {
    max_capsule_data_bytes: 16384,
    max_data_pdu_bytes: 131072,
};

/// Reads a fuzz input's first byte: the receiving side, its session parameters, and whether the
/// handshake is already done (see the module doc for the bits).
pub fn config(byte: u8) -> (Role, SessionParams, bool) {
    let role = if byte & 1 != 0 { Role::Host } else { Role::Controller };
    let pda = (byte >> 5) & 0x3;
    let params = SessionParams {
        header_digest: byte & 2 != 0,
        data_digest: byte & 4 != 0,
        hpda: pda,
        cpda: pda,
        c2h_success_allowed: byte & 16 != 0,
    };
    (role, params, byte & 8 != 0)
}

/// The parser a fuzz input with first byte `byte` is fed to.
pub fn parser(byte: u8) -> PduParser {
    let (role, params, established) = config(byte);
    if established {
        PduParser::established(role, LIMITS, params)
    } else {
        PduParser::new(role, LIMITS)
    }
}

/// Runs one fuzz input; panics only if an invariant above is broken.
pub fn fuzz_one(data: &[u8]) {
    let (byte, seed, stream) = match data {
        [c, s, rest @ ..] => (*c, *s, rest),
        _ => return,
    };
    parse_stream(byte, seed, stream);
    decode_structures(stream);
}

/// Feeds `stream` in pieces whose sizes follow `seed`, checking the feed contract and round
/// tripping every accepted header.
fn parse_stream(byte: u8, seed: u8, stream: &[u8]) {
    let (role, params, _) = config(byte);
    let mut parser = parser(byte);
    let mut current: Option<(PduHeader, u32, u32, SessionParams)> = None;
    let mut last_data: &[u8] = &[];
    let mut step = usize::from(seed % 61) + 1;
    let mut at = 0;
    while at < stream.len() {
        let piece = &stream[at..(at + step).min(stream.len())];
        at += piece.len();
        step = (step * 7 + usize::from(seed)) % 257 + 1;
        let mut rest = piece;
        loop {
            let (used, event) = match parser.feed(rest) {
                Ok(r) => r,
                Err(e) => {
                    let _ = e.fatal_error();
                    let _ = e.status();
                    assert!(!e.to_string().is_empty());
                    assert!(parser.header_bytes().len() <= 128);
                    assert_eq!(parser.feed(rest), Err(e), "a fatal error sticks");
                    return;
                }
            };
            assert!(used <= rest.len());
            rest = &rest[used..];
            match event {
                None => {
                    assert!(rest.is_empty(), "no event means all input was taken");
                    break;
                }
                Some(Event::Header { pdu, data_len }) => {
                    assert!(current.is_none(), "Header inside a PDU");
                    current = Some((pdu, data_len, 0, *parser.session()));
                }
                Some(Event::Data { offset, bytes }) => {
                    let Some((_, data_len, seen, _)) = current.as_mut() else {
                        panic!("Data outside a PDU")
                    };
                    assert_eq!(offset, *seen, "data offsets are contiguous");
                    assert!(!bytes.is_empty());
                    *seen += bytes.len() as u32;
                    assert!(*seen <= *data_len);
                    last_data = bytes;
                }
                Some(Event::End { .. }) => {
                    let Some((pdu, data_len, seen, session)) = current.take() else {
                        panic!("End outside a PDU")
                    };
                    assert_eq!(seen, data_len, "all data delivered before End");
                    check_header_round_trip(role, &pdu, data_len, &session);
                    if let PduHeader::CapsuleCmd(c) = pdu {
                        // `last_data` is the capsule's data when it arrived in one piece.
                        let whole = if last_data.len() as u32 == data_len {
                            last_data
                        } else {
                            &[]
                        };
                        check_command(&c.sqe, whole);
                    }
                    if matches!(pdu, PduHeader::IcReq(_) | PduHeader::IcResp(_)) {
                        parser.set_session(params);
                    }
                }
            }
        }
    }
}

/// An accepted header must encode under the session it arrived in and parse back unchanged.
fn check_header_round_trip(role: Role, pdu: &PduHeader, data_len: u32, session: &SessionParams) {
    // `data_len` is bounded by LIMITS (or 128 for a termination request).
    let payload = vec![0x5Au8; data_len as usize];
    let mut buf = vec![0u8; 512 + payload.len()];
    let n = pdu
        .encode_pdu(&payload, session, &mut buf)
        .expect("an accepted header encodes");
    let handshake = matches!(pdu, PduHeader::IcReq(_) | PduHeader::IcResp(_));
    let mut p = if handshake {
        PduParser::new(role, LIMITS)
    } else {
        PduParser::established(role, LIMITS, *session)
    };
    match p.feed(&buf[..n]) {
        Ok((
            _,
            Some(Event::Header {
                pdu: again,
                data_len: len,
            }),
        )) => {
            assert_eq!(again, *pdu, "header round trip");
            assert_eq!(len, data_len);
        }
        other => panic!("re-encoded header did not parse: {other:?}"),
    }
}

/// A decodable command encodes back to an entry that decodes to the same command.
fn check_command(sqe: &Sqe, data: &[u8]) {
    let _ = sqe.fuse();
    let dp = sqe.data_pointer();
    for queue in [QueueKind::Admin, QueueKind::Io] {
        let Ok(cmd) = Command::decode(sqe, queue) else { continue };
        if let Ok(dp) = dp {
            let again = cmd.to_sqe(sqe.cid, dp).expect("a decoded command encodes");
            assert_eq!(Command::decode(&again, queue), Ok(cmd), "command round trip");
            assert_eq!(again.data_pointer(), Ok(dp));
        }
        if let Command::Nvm(NvmCommand::DatasetManagement(d)) = cmd {
            if let Ok(ranges) = DsmRange::decode_list(data, d.range_count()) {
                for r in ranges {
                    assert_eq!(DsmRange::from_bytes(&r.to_bytes()), r);
                }
            }
        }
    }
    if let Ok(c) = ConnectData::decode(data) {
        let mut buf = [0u8; 1024];
        c.encode(&mut buf).expect("Connect data encodes");
        assert_eq!(ConnectData::decode(&buf), Ok(c));
    }
}

/// Decodes the raw bytes as every fixed structure (the input repeated to fill the larger ones)
/// and round trips whatever decodes.
fn decode_structures(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let mut page = [0u8; 4096];
    for (dst, src) in page.iter_mut().zip(bytes.iter().cycle()) {
        *dst = *src;
    }
    let mut out = [0u8; 4096];

    let sqe = Sqe::from_bytes(page.first_chunk::<64>().unwrap_or(&[0; 64]));
    assert_eq!(Sqe::from_bytes(&sqe.to_bytes()), sqe);
    check_command(&sqe, &page[64..]);
    let cqe = Cqe::from_bytes(page.first_chunk::<16>().unwrap_or(&[0; 16]));
    assert_eq!(Cqe::from_bytes(&cqe.to_bytes()), cqe);

    if let Ok(c) = IdentifyController::decode(&page) {
        c.encode(&mut out).expect("encodes");
        assert_eq!(IdentifyController::decode(&out), Ok(c));
    }
    if let Ok(n) = IdentifyNamespace::decode(&page) {
        n.encode(&mut out).expect("encodes");
        assert_eq!(IdentifyNamespace::decode(&out), Ok(n));
        let _ = n.block_size_bytes();
    }
    if let Ok(list) = decode_active_ns_list(&page) {
        assert!(list.count() <= 1024);
    }
    for d in decode_ns_id_descriptors(bytes).take(1100).flatten() {
        assert!(d.encoded_len() <= 20);
    }
    if let Ok(e) = ErrorInfoEntry::decode(&page) {
        e.encode(&mut out).expect("encodes");
        assert_eq!(ErrorInfoEntry::decode(&out), Ok(e));
    }
    if let Ok(s) = SmartLog::decode(&page) {
        s.encode(&mut out).expect("encodes");
        assert_eq!(SmartLog::decode(&out), Ok(s));
    }
    let _ = decode_changed_ns_list(bytes).map(|c| format!("{c:?}"));
    if let Ok(h) = DiscoveryLogHeader::decode(&page) {
        assert_eq!(DiscoveryLogHeader::decode(&h.to_bytes()), Ok(h));
    }
    if let Ok(e) = DiscoveryEntry::decode(&page) {
        assert_eq!(DiscoveryEntry::decode(&e.to_bytes()), Ok(e));
    }
    let word = u64::from_le_bytes(*page.first_chunk::<8>().unwrap_or(&[0; 8]));
    let cap = Cap::from_bits(word);
    assert_eq!(Cap::from_bits(cap.to_bits()), cap);
    let cc = Cc::from_bits(word as u32);
    assert_eq!(Cc::from_bits(cc.to_bits()), cc);
    let csts = Csts::from_bits(word as u32);
    assert_eq!(Csts::from_bits(csts.to_bits()), csts);
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = crate::nqn::validate(text);
    }
}
