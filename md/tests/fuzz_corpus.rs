//! Bounded fuzzing of md metadata in the normal test run: the committed corpus of the
//! `md_superblock` fuzz target (`fuzz/corpus/md_superblock/`: the superblocks and bitmaps of
//! mdadm's fixtures, and hostile ones with valid checksums — raid_disks 0xFFFFFFFF, sizes and
//! events at u64::MAX, bitmaps whose byte count overflows), then random bytes and mutated
//! corpus entries (checksum fixed, so the mutations reach the field checks), all through
//! `keel_md::fuzz::fuzz_one`.

use keel_md::superblock::{Superblock, BLOCK_BYTES};
use proptest::prelude::*;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/md_superblock");
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
    assert!(v.len() >= 30, "corpus too small");
    v
}

/// The superblock an entry decodes to (checksum fixed as the target does).
fn decoded(input: &[u8]) -> Result<Superblock, keel_md::MdError> {
    let mut block = [0xFFu8; BLOCK_BYTES];
    let n = (input.len() - 1).min(BLOCK_BYTES);
    block[..n].copy_from_slice(&input[1..1 + n]);
    if input[0] & keel_md::fuzz::FIX_CHECKSUM != 0 {
        let c = keel_md::superblock::checksum(&block);
        block[216..220].copy_from_slice(&c.to_le_bytes());
    }
    Superblock::decode(&block, 8)
}

#[test]
fn corpus_replays_cleanly() {
    for (name, input) in corpus() {
        keel_md::fuzz::fuzz_one(&input);
        // The mdadm fixtures decode; the hostile entries named after a bound are refused by it.
        let r = decoded(&input);
        let refused_field = |field: &str| match &r {
            Err(keel_md::MdError::BadSuperblock { field: f, .. }) => *f == field,
            _ => false,
        };
        match name.as_str() {
            n if n.ends_with("-m0") || n.ends_with("-m1") || n.ends_with("-m2") || n.ends_with("-m3") => {
                assert!(r.is_ok(), "{name}: {r:?}")
            }
            "raid_disks_ffffffff" | "raid_disks_zero" | "raid_disks_1921" => {
                assert!(refused_field("raid_disks"), "{name}: {r:?}")
            }
            "size_max" => assert!(refused_field("size"), "{name}: {r:?}"),
            "data_size_max" => assert!(refused_field("data_size"), "{name}: {r:?}"),
            "data_offset_max" => assert!(refused_field("data_offset"), "{name}: {r:?}"),
            "events_max" => assert!(refused_field("events"), "{name}: {r:?}"),
            "max_dev_1921" => assert!(refused_field("max_dev"), "{name}: {r:?}"),
            "raid_disks_1920" | "events_limit" => assert!(r.is_ok(), "{name}: {r:?}"),
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        keel_md::fuzz::fuzz_one(&data);
    }

    #[test]
    fn mutated_corpus(pick in any::<prop::sample::Index>(),
                      edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                      cut in any::<bool>()) {
        let c = corpus();
        let mut input = c[pick.index(c.len())].1.clone();
        input[0] |= keel_md::fuzz::FIX_CHECKSUM;
        // Mostly the fixed fields and the role table, sometimes the bitmap.
        for (pos, byte) in edits {
            let span = if byte & 1 == 0 { 1 + 512 } else { input.len() };
            let p = 1 + pos.index(span.min(input.len()) - 1);
            input[p] = byte;
        }
        if cut {
            let l = input.len();
            input.truncate(l - l / 3);
        }
        keel_md::fuzz::fuzz_one(&input);
    }
}
