//! Fuzz target: arbitrary bytes through the JSON-RPC framing, envelope validation and response
//! encoding, split into two reads at a data-chosen point. Run with
//! `cargo fuzz run jsonrpc fuzz/corpus/jsonrpc`; `rpc/tests/fuzz_corpus.rs` replays the corpus in
//! the normal test run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_rpc::server::fuzz_one(data);
});
