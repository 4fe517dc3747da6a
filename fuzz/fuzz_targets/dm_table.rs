//! Fuzz target: arbitrary bytes as dm table text through parsing, building over detached
//! devices, rendering, lookup, mapping, status and messages (`keel_dm::fuzz::fuzz_one`). Run with
//! `cargo fuzz run dm_table fuzz/corpus/dm_table`; `dm/tests/fuzz_corpus.rs` replays the corpus
//! in the normal test run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_dm::fuzz::fuzz_one(data);
});
