//! Fuzz target: arbitrary bytes as an md member's metadata — the v1.x superblock (byte 0's
//! flag can make its checksum valid), what md_examine prints from it, assembly's decision and
//! the level's start over copies of it, and the write-intent bitmap header and bits
//! (`keel_md::fuzz::fuzz_one`). Run with `cargo fuzz run md_superblock
//! fuzz/corpus/md_superblock`; `md/tests/fuzz_corpus.rs` replays the corpus in the normal test
//! run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_md::fuzz::fuzz_one(data);
});
