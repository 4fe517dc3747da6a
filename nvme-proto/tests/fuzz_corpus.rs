//! Bounded fuzzing in the normal test run: the committed corpus of the `nvme_tcp_pdu` fuzz
//! target, then random and mutated inputs, through everything the crate does with untrusted
//! bytes (`keel_nvme_proto::fuzz::fuzz_one`). The corpus itself is checked too: its `valid_*`
//! inputs parse cleanly, its `bad_*` inputs each end in the error they were made for, and
//! together they cover every PDU type.

use std::collections::BTreeSet;
use std::path::PathBuf;

use keel_nvme_proto::fuzz::{fuzz_one, parser};
use keel_nvme_proto::tcp::{Event, PduHeader};
use keel_nvme_proto::ProtoError;
use proptest::prelude::*;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/nvme_tcp_pdu");
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(v.len() >= 20, "corpus too small");
    v
}

/// How one corpus stream ended.
#[derive(Debug, Default)]
struct Outcome {
    types: Vec<u8>,
    fatal: Option<ProtoError>,
    digest_mismatch: bool,
    mid_pdu: bool,
}

/// Parses a corpus input the way `fuzz_one` does, in one read, recording what happened.
fn outcome(input: &[u8]) -> Outcome {
    let mut out = Outcome::default();
    let (config, stream) = match input {
        [c, _, rest @ ..] => (*c, rest),
        _ => return out,
    };
    let (_, params, _) = keel_nvme_proto::fuzz::config(config);
    let mut p = parser(config);
    let mut rest = stream;
    let mut header: Option<PduHeader> = None;
    loop {
        match p.feed(rest) {
            Err(e) => {
                out.fatal = Some(e);
                return out;
            }
            Ok((used, ev)) => {
                rest = &rest[used..];
                match ev {
                    None => break,
                    Some(Event::Header { pdu, .. }) => header = Some(pdu),
                    Some(Event::Data { .. }) => {}
                    Some(Event::End { data_digest }) => {
                        let h = header.take().unwrap();
                        out.types.push(h.pdu_type().to_u8());
                        out.digest_mismatch |= data_digest.is_err();
                        if matches!(h, PduHeader::IcReq(_) | PduHeader::IcResp(_)) {
                            p.set_session(params);
                        }
                    }
                }
            }
        }
    }
    out.mid_pdu = !p.at_boundary();
    out
}

#[test]
fn corpus_replays_cleanly() {
    for (_, input) in corpus() {
        fuzz_one(&input);
    }
}

#[test]
fn corpus_inputs_do_what_their_names_say() {
    let mut types = BTreeSet::new();
    let mut bad = 0;
    for (name, input) in corpus() {
        let o = outcome(&input);
        types.extend(o.types.iter().copied());
        if name.starts_with("valid_") {
            assert!(o.fatal.is_none() && !o.digest_mismatch && !o.mid_pdu, "{name}: {o:?}");
            assert!(!o.types.is_empty(), "{name}: no PDU");
        } else if name.starts_with("bad_") {
            assert!(
                o.fatal.is_some() || o.digest_mismatch || o.mid_pdu,
                "{name} was accepted: {o:?}"
            );
            bad += 1;
        }
    }
    assert_eq!(
        types,
        BTreeSet::from([0, 1, 2, 3, 4, 5, 6, 7, 9]),
        "every PDU type in the corpus"
    );
    assert!(bad >= 10, "only {bad} broken inputs");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        fuzz_one(&data);
    }

    #[test]
    fn mutated_corpus(
        pick in any::<prop::sample::Index>(),
        pos in any::<prop::sample::Index>(),
        byte: u8,
        how in 0u8..4,
    ) {
        let c = corpus();
        let mut input = c[pick.index(c.len())].1.clone();
        if !input.is_empty() {
            let p = pos.index(input.len());
            match how {
                0 => input.truncate(p),
                1 => input[p] = byte,
                2 => input[p] ^= 1 << (byte % 8),
                _ => input.insert(p, byte),
            }
        }
        fuzz_one(&input);
    }
}
