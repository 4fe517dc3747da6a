//! Bounded fuzzing in the normal test run: the committed corpus of the `nbd_proto` fuzz target
//! (`fuzz/corpus/nbd_proto/`), then random and mutated inputs, through `keel_nbd::fuzz::fuzz_one`.
//!
//! The seeds are built here from the client encoders — the opening of each client the spec
//! describes, followed by the requests it sends, and broken variants — and
//! `corpus_holds_the_seeds` checks that each is committed byte for byte and ends the way it
//! should. `KEEL_NBD_WRITE_CORPUS=1 cargo test -p keel-nbd --test fuzz_corpus` (re)writes them.

mod common;

use common::{Client, FLAGS};
use keel_nbd::consts::*;
use keel_nbd::fuzz::{config_for, fuzz_one, run_handshake, End};
use keel_nbd::{CloseReason, ReplyMode};
use proptest::prelude::*;

fn corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/nbd_proto")
}

fn corpus() -> Vec<Vec<u8>> {
    let dir = corpus_dir();
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    v.sort();
    assert!(v.len() >= 20, "corpus too small");
    v
}

/// How a seed's negotiation must end.
#[derive(Debug)]
enum Ends {
    Done(ReplyMode),
    Close(fn(&CloseReason) -> bool),
    NeedInput,
}

/// A seed: the configuration byte, then what the client sends.
fn seed(ctl: u8, c: Client) -> Vec<u8> {
    [vec![ctl], c.0].concat()
}

/// Requests appended to a client stream (`ext`: extended headers).
fn write(c: Client, ext: bool, flags: u16, cookie: u64, offset: u64, len: usize) -> Client {
    let flags = if ext { flags | CMD_FLAG_PAYLOAD_LEN } else { flags };
    c.req(ext, flags, CMD_WRITE, cookie, offset, len as u64)
        .raw(&vec![0x5a; len])
}

fn seeds() -> Vec<(&'static str, Vec<u8>, Ends)> {
    use Ends::*;
    let go_bs = |c: Client| c.info(OPT_GO, "", &[INFO_BLOCK_SIZE]);
    let sr = || Client::flags(FLAGS).opt(OPT_STRUCTURED_REPLY, &[]);
    let set_base = |c: Client| c.meta(OPT_SET_META_CONTEXT, "", &["base:allocation"]);
    let mut v = Vec::new();

    // qemu 10 (qemu-img, qemu-io): EH, SET_META, GO; BLOCK_STATUS with REQ_ONE, FUA writes,
    // WRITE_ZEROES FUA|NO_HOLE, FLUSH, DISC with cookie 0.
    let c = go_bs(set_base(Client::flags(FLAGS).opt(OPT_EXTENDED_HEADERS, &[]))).req(
        true,
        CMD_FLAG_REQ_ONE,
        CMD_BLOCK_STATUS,
        1,
        0,
        1 << 20,
    );
    let c = write(c, true, CMD_FLAG_FUA, 2, 0, 512)
        .req(true, 0, CMD_READ, 2, 0, 4096)
        .req(true, 0x0003, CMD_WRITE_ZEROES, 3, 4096, 8192)
        .req(true, 0, CMD_FLUSH, 4, 0, 0)
        .req(true, 0, CMD_DISC, 0, 0, 0);
    v.push(("qemu_extended", seed(0, c), Done(ReplyMode::Extended)));

    // qemu against a server without extended headers: falls back to structured replies.
    let c = go_bs(set_base(
        Client::flags(FLAGS)
            .opt(OPT_EXTENDED_HEADERS, &[])
            .opt(OPT_STRUCTURED_REPLY, &[]),
    ))
    .req(false, CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 1, 0, 65536);
    let c = write(c, false, CMD_FLAG_FUA, 2, 512, 512)
        .req(false, 0, CMD_READ, 3, 0, 8192)
        .req(false, 0, CMD_DISC, 0, 0, 0);
    v.push(("qemu_structured_fallback", seed(8, c), Done(ReplyMode::Structured)));

    // qemu-nbd -L: list, INFO and LIST_META_CONTEXT per export, ABORT.
    let mut c = sr().opt(OPT_LIST, &[]);
    for name in ["disk", "ro", "bytes"] {
        c = c
            .info(OPT_INFO, name, &[INFO_BLOCK_SIZE])
            .meta(OPT_LIST_META_CONTEXT, name, &[])
            .meta(OPT_LIST_META_CONTEXT, name, &["qemu:"]);
    }
    v.push((
        "qemu_nbd_list",
        seed(0, c.opt(OPT_ABORT, &[])),
        Close(|r| *r == CloseReason::Aborted),
    ));

    // qemu-nbd --connect: simple mode.
    let c = Client::flags(FLAGS)
        .info(OPT_GO, "", &[])
        .req(false, 0, CMD_READ, 1, 0, 4096);
    let c = write(c, false, 0, 2, 4096, 512)
        .req(false, 0, CMD_FLUSH, 3, 0, 0)
        .req(false, 0, CMD_DISC, 0, 0, 0);
    v.push(("qemu_nbd_connect", seed(0, c), Done(ReplyMode::Simple)));

    // nbdinfo --size: the spec's worked bytes.
    let c = go_bs(sr()).req(false, 0, CMD_DISC, 1, 0, 0);
    v.push(("nbdinfo_size", seed(0, c), Done(ReplyMode::Structured)));

    // Plain nbdinfo: INFO with three requests, LIST_META, GO, an 8 KiB probe read, DISC.
    let c = sr()
        .info(OPT_INFO, "", &[INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION])
        .meta(OPT_LIST_META_CONTEXT, "", &[])
        .info(OPT_GO, "", &[INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION])
        .req(false, 0, CMD_READ, 1, 0, 8192)
        .req(false, 0, CMD_DISC, 2, 0, 0);
    v.push(("nbdinfo_plain", seed(0, c), Done(ReplyMode::Structured)));

    // nbdinfo --list.
    let c = sr()
        .opt(OPT_LIST, &[])
        .info(OPT_INFO, "disk", &[INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION]);
    v.push((
        "nbdinfo_list",
        seed(0, c.opt(OPT_ABORT, &[])),
        Close(|r| *r == CloseReason::Aborted),
    ));

    // nbdinfo --map: base:allocation over the whole export.
    let c = go_bs(set_base(sr()))
        .req(false, 0, CMD_BLOCK_STATUS, 1, 0, 1 << 20)
        .req(false, 0, CMD_DISC, 2, 0, 0);
    v.push(("nbdinfo_map", seed(0, c), Done(ReplyMode::Structured)));

    // fio's nbd engine: iodepth requests in flight, EOF without DISC.
    let mut c = go_bs(sr());
    for i in 0..4 {
        c = c.req(false, 0, CMD_READ, i, i * 4096, 4096);
        c = write(c, false, 0, 100 + i, i * 4096, 512);
    }
    v.push(("fio_nbd_engine", seed(0, c), Done(ReplyMode::Structured)));

    // nbdcopy: one BLOCK_STATUS (no REQ_ONE), then 256 KiB reads.
    let c = go_bs(set_base(sr()))
        .req(false, 0, CMD_BLOCK_STATUS, 1, 0, 1 << 20)
        .req(false, 0, CMD_READ, 2, 0, 256 << 10)
        .req(false, 0, CMD_READ, 3, 256 << 10, 256 << 10);
    v.push(("nbdcopy", seed(0, c), Done(ReplyMode::Structured)));

    // The kernel via nbd-client: GO(name, []), then every command it sends.
    let c = Client::flags(FLAGS)
        .info(OPT_GO, "disk", &[])
        .req(false, 0, CMD_READ, 0x1_0000_0000, 0, 4096);
    let c = write(c, false, CMD_FLAG_FUA, 0x1_0000_0001, 8192, 1024)
        .req(false, 0, CMD_FLUSH, 0x1_0000_0002, 0, 0)
        .req(false, 0, CMD_TRIM, 0x1_0000_0003, 0, 65536)
        .req(false, CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES, 0x1_0000_0004, 65536, 65536)
        .req(false, 0, CMD_DISC, 0x1_0000_0005, 0, 0);
    v.push(("kernel_go", seed(0, c), Done(ReplyMode::Simple)));

    // nbd-client's fallback to EXPORT_NAME (with NO_ZEROES), and an old client without it.
    let c = Client::flags(FLAGS)
        .opt(OPT_EXPORT_NAME, b"disk")
        .req(false, 0, CMD_READ, 1, 0, 512);
    v.push(("kernel_export_name", seed(0, c), Done(ReplyMode::Simple)));
    let c = Client::flags(FLAG_C_FIXED_NEWSTYLE)
        .opt(OPT_EXPORT_NAME, b"")
        .req(false, 0, CMD_READ, 1, 0, 512);
    v.push(("export_name_with_zeroes", seed(0, c), Done(ReplyMode::Simple)));

    // ---- broken openings ----
    v.push((
        "bad_client_flags",
        seed(0, Client::flags(0x80)),
        Close(|r| matches!(r, CloseReason::UnknownClientFlags(_))),
    ));
    let c = Client::flags(FLAGS).opt(OPT_LIST, &[]);
    v.push((
        "no_zeroes_not_offered",
        seed(2, c),
        Close(|r| *r == CloseReason::NoZeroesNotOffered),
    ));
    let c = Client::flags(FLAGS).raw(b"IHAVEOPX\0\0\0\x07\0\0\0\0");
    v.push((
        "bad_option_magic",
        seed(0, c),
        Close(|r| matches!(r, CloseReason::BadOptionMagic(_))),
    ));
    let c = Client::flags(FLAGS).opt(OPT_LIST_META_CONTEXT, &[0u8; 300]);
    v.push((
        "option_over_small_cap",
        seed(1, c),
        Close(|r| matches!(r, CloseReason::OptionTooLong { .. })),
    ));
    let c = Client::flags(FLAGS)
        .raw(&IHAVEOPT.to_be_bytes())
        .raw(&[0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    v.push((
        "option_len_4g",
        seed(0, c),
        Close(|r| matches!(r, CloseReason::OptionTooLong { .. })),
    ));
    let c = Client::flags(FLAGS)
        .opt(42, b"skip me")
        .opt(OPT_PEEK_EXPORT, &[])
        .opt(OPT_STARTTLS, &[])
        .opt(OPT_LIST, b"x")
        .opt(OPT_STRUCTURED_REPLY, b"x")
        .info(OPT_GO, "", &[]);
    v.push(("unknown_and_invalid_options", seed(0, c), Done(ReplyMode::Simple)));
    let c = Client::flags(FLAGS)
        .opt(OPT_GO, &[0, 0, 0, 9, b'd', b'i', b's', b'k', 0, 0])
        .opt(OPT_INFO, &[0, 0, 0, 4, b'd', b'i', b's', b'k', 0, 1])
        .opt(OPT_GO, &[0xff, 0xff, 0xff, 0xff, 0, 0])
        .info(OPT_GO, "disk", &[9, 9]);
    v.push(("go_bad_lengths", seed(0, c), Done(ReplyMode::Simple)));
    let c = Client::flags(FLAGS)
        .meta(OPT_SET_META_CONTEXT, "", &["base:allocation"])
        .info(OPT_GO, "", &[]);
    v.push((
        "meta_before_structured",
        seed(0, c.req(false, 0, CMD_BLOCK_STATUS, 1, 0, 512)),
        Done(ReplyMode::Simple),
    ));
    let c = sr()
        .opt(OPT_SET_META_CONTEXT, &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x20, b'b'])
        .meta(OPT_LIST_META_CONTEXT, "", &["nocolon"])
        .meta(OPT_SET_META_CONTEXT, "ro", &["base:allocation"])
        .info(OPT_GO, "disk", &[]);
    v.push((
        "meta_malformed",
        seed(0, c.req(false, 0, CMD_BLOCK_STATUS, 1, 0, 512)),
        Done(ReplyMode::Structured),
    ));
    let c = Client::flags(FLAGS)
        .info(OPT_GO, "nope", &[])
        .opt(OPT_EXPORT_NAME, b"nope");
    v.push((
        "unknown_export",
        seed(0, c),
        Close(|r| *r == CloseReason::UnknownExport),
    ));
    let c = Client::flags(FLAGS).opt(OPT_ABORT, b"trailing data").opt(OPT_LIST, &[]);
    v.push(("abort_with_data", seed(0, c), Close(|r| *r == CloseReason::Aborted)));
    let c = Client::flags(FLAGS)
        .opt(OPT_EXTENDED_HEADERS, &[])
        .opt(OPT_STRUCTURED_REPLY, &[])
        .opt(OPT_EXPORT_NAME, b"");
    v.push((
        "export_name_after_extended",
        seed(0, c),
        Close(|r| *r == CloseReason::ExportNameWithExtendedHeaders),
    ));
    let c = Client::flags(FLAGS)
        .opt(OPT_LIST, &[])
        .info(OPT_GO, "", &[])
        .opt(OPT_EXPORT_NAME, b"");
    v.push(("shutting_down", seed(32, c), Close(|r| *r == CloseReason::ShuttingDown)));
    let mut c = Client::flags(FLAGS);
    for _ in 0..20 {
        c = c.opt(OPT_LIST, &[]);
    }
    v.push((
        "flow_control",
        seed(16, c.info(OPT_GO, "bytes", &[])),
        Done(ReplyMode::Simple),
    ));
    let c = Client::flags(FLAGS)
        .opt(OPT_STRUCTURED_REPLY, &[])
        .raw(&IHAVEOPT.to_be_bytes())
        .raw(&[0, 0, 0, 7, 0, 0, 0]);
    v.push(("truncated_mid_option", seed(0, c), NeedInput));

    // ---- bad requests after a good opening ----
    let c = sr().info(OPT_GO, "ro", &[]);
    let c = write(c, false, 0, 1, 0, 512) // EPERM, payload drained
        .req(false, 0x40, CMD_READ, 2, 0, 4096) // unknown flag
        .req(false, 0, 9, 3, 0, 4096) // unknown command
        .req(false, 0, CMD_READ, 4, 1 << 20, 4096) // past the end
        .req(false, 0, CMD_READ, 5, 100, 4096) // unaligned
        .req(false, 0, CMD_READ, 6, 0, 0) // zero length
        .req(false, 0, CMD_FLUSH, 7, 8, 0) // FLUSH with an offset
        .req(false, CMD_FLAG_DF, CMD_READ, 8, 0, 4096)
        .raw(&[0x25, 0x60, 0x95, 0x14]); // bad magic: close
    v.push(("bad_requests_read_only", seed(0, c), Done(ReplyMode::Structured)));
    let c = Client::flags(FLAGS)
        .info(OPT_GO, "disk", &[])
        .req(false, 0, CMD_WRITE, 1, 0, 2 << 20)
        .raw(&[0; 64]);
    v.push(("oversize_write_drained", seed(0, c), Done(ReplyMode::Simple)));
    let c = Client::flags(FLAGS)
        .info(OPT_GO, "disk", &[])
        .req(false, 0, CMD_WRITE, 1, 0, 0xffff_ffff);
    v.push(("write_beyond_drain_limit", seed(0, c), Done(ReplyMode::Simple)));
    let c = Client::flags(FLAGS)
        .opt(OPT_EXTENDED_HEADERS, &[])
        .info(OPT_GO, "disk", &[]);
    let c = c
        .req(true, 0, CMD_WRITE, 1, 0, 512) // WRITE without PAYLOAD_LEN (as qemu sends it)
        .raw(&[7; 512])
        .req(true, CMD_FLAG_PAYLOAD_LEN, CMD_READ, 2, 0, 8)
        .raw(&[1; 8])
        .req(true, 0, CMD_TRIM, 3, 0, 1 << 20)
        .req(true, CMD_FLAG_PAYLOAD_LEN, CMD_WRITE, 4, 0, (1 << 20) + 1); // close
    v.push(("extended_bad_requests", seed(0, c), Done(ReplyMode::Extended)));
    v
}

#[test]
fn corpus_holds_the_seeds() {
    let dir = corpus_dir();
    let write = std::env::var_os("KEEL_NBD_WRITE_CORPUS").is_some();
    let seeds = seeds();
    assert!(seeds.len() >= 20);
    for (name, bytes, ends) in &seeds {
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("seed {name}: {e} (KEEL_NBD_WRITE_CORPUS=1)"));
        assert!(committed == *bytes, "seed {name} differs from the committed file");
        let config = config_for(bytes[0]);
        let (_, end) = run_handshake(config, bytes[0] & 32 != 0, &bytes[1..], &[0]);
        match (ends, &end) {
            (Ends::Done(mode), End::Done { session, .. }) => assert_eq!(session.reply_mode(), *mode, "{name}"),
            (Ends::Close(ok), End::Close { reason, .. }) => assert!(ok(reason), "{name}: {reason:?}"),
            (Ends::NeedInput, End::NeedInput) => {}
            (want, got) => panic!("seed {name}: expected {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn corpus_replays_cleanly() {
    for input in corpus() {
        fuzz_one(&input);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz_one(&data);
    }

    #[test]
    fn mutated_corpus(
        pick in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..4),
    ) {
        let c = corpus();
        let mut input = c[pick.index(c.len())].clone();
        for (pos, byte, op) in edits {
            if input.is_empty() {
                break;
            }
            let p = pos.index(input.len());
            match op {
                0 => input.truncate(p),
                1 => input[p] = byte,
                2 => input.insert(p, byte),
                _ => { input.remove(p); }
            }
        }
        fuzz_one(&input);
    }
}
