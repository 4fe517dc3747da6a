//! Fuzz target: arbitrary client bytes through the NBD server's handshake (whole and
//! fragmented, which must agree) and, when the negotiation ends, through the request parser and
//! the reply encoder. Byte 0 picks the server configuration and the fragmentation (see
//! `keel_nbd::fuzz`). Run with `cargo fuzz run nbd_proto fuzz/corpus/nbd_proto`;
//! `nbd/tests/fuzz_corpus.rs` replays the corpus in the normal test run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_nbd::fuzz::fuzz_one(data);
});
