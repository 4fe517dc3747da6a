//! Fuzz target: arbitrary bytes through the NVMe/TCP PDU parser (either side, any session, cut
//! into reads at data-chosen points), the command decoders and every structure decoder of
//! `keel-nvme-proto`, with round-trip checks on whatever decodes. Run with
//! `cargo fuzz run nvme_tcp_pdu fuzz/corpus/nvme_tcp_pdu`; `nvme-proto/tests/fuzz_corpus.rs`
//! replays the corpus in the normal test run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_nvme_proto::fuzz::fuzz_one(data);
});
