//! Bounded fuzzing of dm table text in the normal test run: the committed corpus of the
//! `dm_table` fuzz target (`fuzz/corpus/dm_table/`), then random bytes, mutated corpus entries
//! and random tables assembled from table words (so that most of them parse and reach the
//! builder, the renderer and the targets' mapping), all through `keel_dm::fuzz::fuzz_one`.

use proptest::prelude::*;

fn corpus() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dm_table");
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
        keel_dm::fuzz::fuzz_one(&input);
    }
}

/// Words a table line is made of: numbers of every size, target types, device names (odd
/// length: 4 KiB blocks; `missing*`: absent) and feature words.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..4096).prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            0u64,
            1,
            7,
            8,
            16,
            512,
            2047,
            2048,
            2049,
            4096,
            1 << 21,
            (1 << 21) + 8,
            u64::MAX / 512,
            u64::MAX / 512 + 1,
            u64::MAX,
        ])
        .prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "zero",
            "error",
            "linear",
            "striped",
            "delay",
            "flakey",
            "da",
            "db",
            "dev",
            "devb",
            "missing0",
            "drop_writes",
            "error_reads",
            "error_writes",
            "corrupt_bio_byte",
            "r",
            "w",
            "-1",
            "1x",
            "\\",
            "#",
        ])
        .prop_map(str::to_string),
    ]
}

/// A table of 1..4 lines with mostly consistent starts, random lengths, types and arguments.
fn table() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            any::<bool>(),
            prop::sample::select(vec![8u64, 16, 512, 1024, 2048, 4096, 7, 0]),
            prop::sample::select(vec!["zero", "error", "linear", "striped", "delay", "flakey"]),
            prop::collection::vec(word(), 0..9),
        ),
        1..4,
    )
    .prop_map(|lines| {
        let mut out = String::new();
        let mut start = 0u64;
        for (gap, len, ty, args) in lines {
            let s = if gap { start + 8 } else { start };
            out.push_str(&format!("{s} {len} {ty} {}\n", args.join(" ")));
            start = s + len;
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        keel_dm::fuzz::fuzz_one(&data);
    }

    #[test]
    fn random_tables(t in table()) {
        keel_dm::fuzz::fuzz_one(t.as_bytes());
    }

    #[test]
    fn mutated_corpus(pick in any::<prop::sample::Index>(), pos in any::<prop::sample::Index>(), byte: u8, cut in any::<bool>()) {
        let c = corpus();
        let mut input = c[pick.index(c.len())].clone();
        if !input.is_empty() {
            let p = pos.index(input.len());
            if cut { input.truncate(p) } else { input[p] = byte }
        }
        keel_dm::fuzz::fuzz_one(&input);
    }
}
