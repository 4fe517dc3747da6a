//! Bounded fuzzing in the normal test run: the committed corpus of the `jsonrpc` fuzz target,
//! then random and mutated inputs, through everything the server does with untrusted bytes.

use proptest::prelude::*;

fn corpus() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/jsonrpc");
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    v.sort();
    assert!(v.len() >= 20, "corpus too small");
    v
}

#[test]
fn corpus_replays_cleanly() {
    for input in corpus() {
        keel_rpc::server::fuzz_one(&input);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        keel_rpc::server::fuzz_one(&data);
    }

    #[test]
    fn mutated_corpus(pick in any::<prop::sample::Index>(), pos in any::<prop::sample::Index>(), byte: u8, cut in any::<bool>()) {
        let c = corpus();
        let mut input = c[pick.index(c.len())].clone();
        if !input.is_empty() {
            let p = pos.index(input.len());
            if cut { input.truncate(p) } else { input[p] = byte }
        }
        keel_rpc::server::fuzz_one(&input);
    }
}
