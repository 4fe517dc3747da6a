//! Every negotiation path of the server's handshake, with byte-exact expectations from the
//! protocol (`shared/specs/nbd-ublk.md` A2–A5, A12–A16) and the openings of each client the
//! spec describes.

mod common;

use common::*;
use keel_nbd::client::{decode_info, Info};
use keel_nbd::consts::*;
use keel_nbd::{CloseReason, Entry, HandshakeConfig, MetaContextId, Outcome, BASE_ALLOCATION_ID};

fn cfg() -> HandshakeConfig {
    HandshakeConfig::default()
}

#[test]
fn greeting_is_the_spec_bytes() {
    let exports = three();
    let (_, greeting) = start(&exports, cfg());
    assert_eq!(greeting, hex("4e42444d41474943 49484156454f5054 0003"));
    let (_, greeting) = start(
        &exports,
        HandshakeConfig {
            offer_no_zeroes: false,
            ..cfg()
        },
    );
    assert_eq!(greeting, hex("4e42444d41474943 49484156454f5054 0001"));
}

/// A16: `nbdinfo --size` against nbdkit `memory 64M`, byte for byte. Keel adds an unrequested
/// `INFO_BLOCK_SIZE` before the `ACK` (allowed; qemu-nbd does the same).
#[test]
fn nbdinfo_size_worked_bytes() {
    let exports = vec![memory_64m()];
    let input = [
        hex("00000003"),
        hex("49484156454f5054 00000008 00000000"),
        hex("49484156454f5054 00000007 00000008 00000000 0001 0003"),
        hex("25609513 0000 0002 0000000000000001 0000000000000000 00000000"),
    ]
    .concat();
    let (out, fed) = run(&exports, cfg(), &input);
    let expected = [
        hex("0003e889045565a9 00000008 00000001 00000000"),
        hex("0003e889045565a9 00000007 00000003 0000000c 0000 0000000004000000 0ded"),
        hex("0003e889045565a9 00000007 00000003 0000000e 0003 00000001 00001000 02000000"),
        hex("0003e889045565a9 00000007 00000001 00000000"),
    ]
    .concat();
    assert_eq!(out, expected);
    let s = done(&fed);
    assert_eq!(
        fed.consumed,
        input.len() - 28,
        "the DISC request is left for transmission"
    );
    assert_eq!((s.size_bytes, s.transmission_flags), (64 << 20, 0x0ded));
    assert!(s.structured_replies && !s.extended_headers);
    assert!(s.block_sizes_acknowledged);
    assert_eq!(s.entry, Entry::Go);
    assert!(!s.check_alignment, "minimum block size 1");
}

#[test]
fn export_name_with_and_without_no_zeroes() {
    let exports = vec![memory_64m()];
    // Client sets NO_ZEROES: 10 bytes.
    let (out, fed) = run(&exports, cfg(), Client::flags(FLAGS).opt(OPT_EXPORT_NAME, b"").bytes());
    assert_eq!(out, hex("0000000004000000 0d6d"));
    assert_eq!(done(&fed).entry, Entry::ExportName);
    assert!(!done(&fed).block_sizes_acknowledged);
    // Client without NO_ZEROES: 134 bytes.
    let (out, _) = run(
        &exports,
        cfg(),
        Client::flags(FLAG_C_FIXED_NEWSTYLE).opt(OPT_EXPORT_NAME, b"").bytes(),
    );
    assert_eq!(out.len(), 134);
    assert_eq!(out[..10], hex("0000000004000000 0d6d")[..]);
    assert!(out[10..].iter().all(|&b| b == 0));
    // Server not offering it: padding whatever the client would like.
    let no = HandshakeConfig {
        offer_no_zeroes: false,
        ..cfg()
    };
    let (out, _) = run(
        &exports,
        no,
        Client::flags(FLAG_C_FIXED_NEWSTYLE).opt(OPT_EXPORT_NAME, b"").bytes(),
    );
    assert_eq!(out.len(), 134);
    // A non-fixed-newstyle client (flags 0) is still served.
    let (out, fed) = run(&exports, cfg(), Client::flags(0).opt(OPT_EXPORT_NAME, b"").bytes());
    assert_eq!(out.len(), 134);
    assert!(matches!(fed.outcome, Outcome::Done(_)));
}

#[test]
fn client_flag_refusals() {
    let exports = three();
    // nbdkit and qemu-nbd drop a client sending flag 0x80.
    let (out, fed) = run(&exports, cfg(), &hex("00000080"));
    assert_eq!(
        (out.len(), fed.outcome),
        (0, Outcome::Close(CloseReason::UnknownClientFlags(0x80)))
    );
    // NO_ZEROES not offered but set.
    let no = HandshakeConfig {
        offer_no_zeroes: false,
        ..cfg()
    };
    let (_, fed) = run(&exports, no, &hex("00000003"));
    assert_eq!(fed.outcome, Outcome::Close(CloseReason::NoZeroesNotOffered));
    // A client that skips the flags and sends an option at once: IHAVEOPT's first 4 bytes.
    let (_, fed) = run(&exports, cfg(), &[]);
    assert_eq!(fed.outcome, Outcome::NeedInput);
    let mut opt = Vec::new();
    keel_nbd::client::encode_option(&mut opt, OPT_GO, &[]);
    let (_, fed) = run(&exports, cfg(), &opt);
    assert_eq!(
        fed.outcome,
        Outcome::Close(CloseReason::UnknownClientFlags(0x4948_4156))
    );
    assert_eq!(fed.consumed, 4);
}

/// A13.1: qemu 10 — EXTENDED_HEADERS, SET_META_CONTEXT base:allocation, GO with BLOCK_SIZE.
#[test]
fn qemu_opening_with_extended_headers() {
    let exports = three();
    let c = Client::flags(FLAGS)
        .opt(OPT_EXTENDED_HEADERS, &[])
        .meta(OPT_SET_META_CONTEXT, "", &["base:allocation"])
        .info(OPT_GO, "", &[INFO_BLOCK_SIZE]);
    let (out, fed) = run(&exports, cfg(), c.bytes());
    let expected = [
        hex("0003e889045565a9 0000000b 00000001 00000000"),
        hex("0003e889045565a9 0000000a 00000004 00000013 00000001"),
        b"base:allocation".to_vec(),
        hex("0003e889045565a9 0000000a 00000001 00000000"),
        hex("0003e889045565a9 00000007 00000003 0000000c 0000 0000000000100000 0ded"),
        hex("0003e889045565a9 00000007 00000003 0000000e 0003 00000200 00001000 00100000"),
        hex("0003e889045565a9 00000007 00000001 00000000"),
    ]
    .concat();
    assert_eq!(out, expected);
    let s = done(&fed);
    assert!(s.extended_headers);
    assert_eq!(s.base_allocation, Some(BASE_ALLOCATION_ID));
    assert_eq!(s.export_name, "disk", "the empty name is the default export");
    assert!(s.check_alignment);
    assert_eq!(s.reply_mode(), keel_nbd::ReplyMode::Extended);
}

/// A13.1: qemu when the server refuses extended headers falls back to structured replies.
#[test]
fn qemu_falls_back_to_structured_replies() {
    let exports = three();
    let no_eh = HandshakeConfig {
        allow_extended_headers: false,
        ..cfg()
    };
    let c = Client::flags(FLAGS)
        .opt(OPT_EXTENDED_HEADERS, &[])
        .opt(OPT_STRUCTURED_REPLY, &[])
        .meta(OPT_SET_META_CONTEXT, "", &["base:allocation"])
        .info(OPT_GO, "", &[INFO_BLOCK_SIZE]);
    let (out, fed) = run(&exports, no_eh, c.bytes());
    let kinds = reply_kinds(&out);
    assert_eq!(
        kinds,
        [
            (OPT_EXTENDED_HEADERS, REP_ERR_UNSUP),
            (OPT_STRUCTURED_REPLY, REP_ACK),
            (OPT_SET_META_CONTEXT, REP_META_CONTEXT),
            (OPT_SET_META_CONTEXT, REP_ACK),
            (OPT_GO, REP_INFO),
            (OPT_GO, REP_INFO),
            (OPT_GO, REP_ACK),
        ]
    );
    let s = done(&fed);
    assert!(s.structured_replies && !s.extended_headers);
    assert_eq!(s.base_allocation, Some(BASE_ALLOCATION_ID));
}

/// A13.2: `qemu-nbd -L` lists exports, asks INFO and meta contexts of each, then ABORTs.
#[test]
fn qemu_nbd_list() {
    let exports = three();
    let mut c = Client::flags(FLAGS).opt(OPT_STRUCTURED_REPLY, &[]).opt(OPT_LIST, &[]);
    for name in ["disk", "ro", "small"] {
        c = c
            .info(OPT_INFO, name, &[INFO_BLOCK_SIZE])
            .meta(OPT_LIST_META_CONTEXT, name, &[])
            .meta(OPT_LIST_META_CONTEXT, name, &["qemu:"]);
    }
    let c = c.opt(OPT_ABORT, &[]);
    let (out, fed) = run(&exports, cfg(), c.bytes());
    assert_eq!(fed.outcome, Outcome::Close(CloseReason::Aborted));
    assert_eq!(fed.consumed, c.bytes().len());
    let r = replies(&out);
    // SR ACK, 3 SERVER + ACK.
    assert_eq!((r[0].option, r[0].reply_type), (OPT_STRUCTURED_REPLY, REP_ACK));
    let servers: Vec<&[u8]> = r[1..4].iter().map(|r| r.data).collect();
    assert_eq!(servers[0], [&hex("00000004")[..], b"disk", b"a test disk"].concat());
    assert_eq!(servers[1], [&hex("00000002")[..], b"ro"].concat());
    assert_eq!(servers[2], [&hex("00000005")[..], b"small"].concat());
    assert_eq!(r[4].reply_type, REP_ACK);
    // Per export: INFO EXPORT, INFO BLOCK_SIZE, ACK; LIST_META []: base:allocation (id 0), ACK;
    // LIST_META [qemu:]: ACK only (unknown namespace ignored).
    let mut at = 5;
    for _ in 0..3 {
        let k: Vec<u32> = r[at..at + 6].iter().map(|r| r.reply_type).collect();
        assert_eq!(k, [REP_INFO, REP_INFO, REP_ACK, REP_META_CONTEXT, REP_ACK, REP_ACK]);
        assert_eq!(r[at + 3].data, [&hex("00000000")[..], b"base:allocation"].concat());
        assert_eq!(
            (r[at + 5].option, r[at + 5].reply_type),
            (OPT_LIST_META_CONTEXT, REP_ACK)
        );
        at += 6;
    }
    assert_eq!((r[at].option, r[at].reply_type, r.len()), (OPT_ABORT, REP_ACK, at + 1));
}

/// A13.3: `qemu-nbd --connect` negotiates nothing (simple mode, sizes not requested).
#[test]
fn qemu_nbd_connect_simple_mode() {
    let exports = three();
    let (out, fed) = run(&exports, cfg(), Client::flags(FLAGS).info(OPT_GO, "", &[]).bytes());
    assert_eq!(
        reply_kinds(&out),
        [(OPT_GO, REP_INFO), (OPT_GO, REP_INFO), (OPT_GO, REP_ACK)]
    );
    let s = done(&fed);
    assert!(!s.structured_replies && !s.extended_headers);
    assert!(!s.block_sizes_acknowledged);
    assert_eq!(
        s.transmission_flags & FLAG_SEND_DF,
        0,
        "no DF without structured replies"
    );
    assert_eq!(s.transmission_flags, 0x0d6d);
    assert_eq!(s.base_allocation, None);
}

/// A13.4: plain `nbdinfo`: SR, INFO with BLOCK_SIZE/NAME/DESCRIPTION, LIST_META_CONTEXT, GO.
#[test]
fn nbdinfo_plain() {
    let exports = three();
    let c = Client::flags(FLAGS)
        .opt(OPT_STRUCTURED_REPLY, &[])
        .info(OPT_INFO, "", &[INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION])
        .meta(OPT_LIST_META_CONTEXT, "", &[])
        .info(OPT_GO, "", &[INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION]);
    let (out, fed) = run(&exports, cfg(), c.bytes());
    let r = replies(&out);
    let infos: Vec<Info> = r
        .iter()
        .filter(|r| r.reply_type == REP_INFO)
        .map(|r| decode_info(r.data).unwrap())
        .collect();
    let one = [
        Info::Export {
            size_bytes: 1 << 20,
            flags: 0x0ded,
        },
        Info::Name("disk"),
        Info::Description("a test disk"),
        Info::BlockSize {
            min_bytes: 512,
            preferred_bytes: 4096,
            max_bytes: 1 << 20,
        },
    ];
    assert_eq!(
        infos,
        [one, one].concat(),
        "INFO and GO with the same parameters answer the same"
    );
    let s = done(&fed);
    assert_eq!(s.base_allocation, None, "LIST selects nothing");
}

/// A13.4: `nbdinfo --list`: LIST, then INFO per export, then ABORT.
#[test]
fn nbdinfo_list() {
    let exports = three();
    let c = Client::flags(FLAGS)
        .opt(OPT_STRUCTURED_REPLY, &[])
        .opt(OPT_LIST, &[])
        .info(OPT_INFO, "ro", &[INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION])
        .opt(OPT_ABORT, &[]);
    let (out, fed) = run(&exports, cfg(), c.bytes());
    assert_eq!(fed.outcome, Outcome::Close(CloseReason::Aborted));
    let r = replies(&out);
    let ro_info: Vec<Info> = r
        .iter()
        .filter(|r| r.reply_type == REP_INFO)
        .map(|r| decode_info(r.data).unwrap())
        .collect();
    // HAS_FLAGS | READ_ONLY | FLUSH | FUA | DF | MULTI_CONN | CACHE: no TRIM/ZEROES when read-only.
    assert_eq!(
        ro_info[0],
        Info::Export {
            size_bytes: 64 << 10,
            flags: 0x058f
        }
    );
    assert_eq!(
        ro_info[2],
        Info::Description(""),
        "an empty description is still answered when asked"
    );
    assert_eq!(r.last().map(|r| (r.option, r.reply_type)), Some((OPT_ABORT, REP_ACK)));
}

/// A13.4–6: libnbd with extents (`nbdinfo --map`, nbdcopy): SR, SET_META, GO; fio: SR, GO.
#[test]
fn libnbd_openings() {
    let exports = three();
    let with_map = Client::flags(FLAGS)
        .opt(OPT_STRUCTURED_REPLY, &[])
        .meta(OPT_SET_META_CONTEXT, "", &["base:allocation"])
        .info(OPT_GO, "", &[INFO_BLOCK_SIZE]);
    let (_, fed) = run(&exports, cfg(), with_map.bytes());
    assert_eq!(done(&fed).base_allocation, Some(BASE_ALLOCATION_ID));
    let fio = Client::flags(FLAGS)
        .opt(OPT_STRUCTURED_REPLY, &[])
        .info(OPT_GO, "", &[INFO_BLOCK_SIZE]);
    let (out, fed) = run(&exports, cfg(), fio.bytes());
    assert_eq!(reply_kinds(&out).last(), Some(&(OPT_GO, REP_ACK)));
    let s = done(&fed);
    assert_eq!((s.base_allocation, s.block_sizes_acknowledged), (None, true));
}

/// A13.7: the kernel via nbd-client: GO(name, []) — and the EXPORT_NAME fallback.
#[test]
fn kernel_nbd_client() {
    let exports = three();
    let (out, fed) = run(&exports, cfg(), Client::flags(FLAGS).info(OPT_GO, "ro", &[]).bytes());
    assert_eq!(replies(&out).len(), 3);
    let s = done(&fed);
    assert_eq!(s.export_name, "ro");
    assert_ne!(s.transmission_flags & FLAG_READ_ONLY, 0);
    assert_eq!(s.transmission_flags & (FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES), 0);
    let (out, fed) = run(
        &exports,
        cfg(),
        Client::flags(FLAGS).opt(OPT_EXPORT_NAME, b"small").bytes(),
    );
    assert_eq!(out, hex("0000000000001000 0001"), "no capabilities: HAS_FLAGS only");
    assert_eq!(done(&fed).export_name, "small");
}

#[test]
fn unknown_and_refused_options_keep_negotiating() {
    let exports = three();
    let c = Client::flags(FLAGS)
        .opt(42, b"some data the server must skip")
        .opt(OPT_PEEK_EXPORT, &[])
        .opt(OPT_STARTTLS, &[])
        .opt(OPT_STARTTLS, b"x")
        .opt(OPT_LIST, b"x")
        .opt(OPT_STRUCTURED_REPLY, b"x")
        .opt(OPT_EXTENDED_HEADERS, b"x")
        .info(OPT_GO, "", &[]);
    let (out, fed) = run(&exports, cfg(), c.bytes());
    let kinds = reply_kinds(&out);
    assert_eq!(
        kinds[..7],
        [
            (42, REP_ERR_UNSUP),
            (OPT_PEEK_EXPORT, REP_ERR_UNSUP),
            (OPT_STARTTLS, REP_ERR_POLICY),
            (OPT_STARTTLS, REP_ERR_INVALID),
            (OPT_LIST, REP_ERR_INVALID),
            (OPT_STRUCTURED_REPLY, REP_ERR_INVALID),
            (OPT_EXTENDED_HEADERS, REP_ERR_INVALID),
        ]
    );
    let r = replies(&out);
    assert!(
        r[..7].iter().all(|r| r.is_error() && !r.data.is_empty()),
        "errors carry a message"
    );
    assert!(matches!(fed.outcome, Outcome::Done(_)));
    // The exact bytes of an UNSUP reply to option 42: header, then the message.
    let first = &out[..20];
    assert_eq!(first[..16], hex("0003e889045565a9 0000002a 80000001")[..]);
}

#[test]
fn go_and_info_with_bad_lengths_get_err_invalid() {
    let exports = three();
    let cases: Vec<Vec<u8>> = vec![
        hex(""),                            // empty
        hex("00000000 00"),                 // 5 bytes
        hex("00000005 6469736b 0000"),      // name length + 6 > data length
        hex("00000004 6469736b 0001"),      // one info announced, none sent
        hex("00000004 6469736b 0000 0003"), // none announced, one sent
        hex("ffffffff 0000"),               // absurd name length
        hex("00000002 ff fe 0000"),         // name not UTF-8
    ];
    for data in cases {
        for option in [OPT_INFO, OPT_GO] {
            let (out, fed) = run(&exports, cfg(), Client::flags(FLAGS).opt(option, &data).bytes());
            assert_eq!(reply_kinds(&out), [(option, REP_ERR_INVALID)], "{data:02x?}");
            assert_eq!(fed.outcome, Outcome::NeedInput);
        }
    }
    // Unknown info types are ignored; duplicates answered once.
    let (out, _) = run(
        &exports,
        cfg(),
        Client::flags(FLAGS)
            .info(OPT_INFO, "disk", &[99, INFO_NAME, INFO_NAME])
            .bytes(),
    );
    assert_eq!(
        reply_kinds(&out),
        [
            (OPT_INFO, REP_INFO),
            (OPT_INFO, REP_INFO),
            (OPT_INFO, REP_INFO),
            (OPT_INFO, REP_ACK)
        ]
    );
}

#[test]
fn unknown_exports() {
    let exports = three();
    let c = Client::flags(FLAGS)
        .info(OPT_INFO, "nope", &[])
        .info(OPT_GO, "nope", &[])
        .info(OPT_GO, "disk", &[]);
    let (out, fed) = run(&exports, cfg(), c.bytes());
    let k = reply_kinds(&out);
    assert_eq!(k[..2], [(OPT_INFO, REP_ERR_UNKNOWN), (OPT_GO, REP_ERR_UNKNOWN)]);
    assert_eq!(done(&fed).export_name, "disk");
    // EXPORT_NAME cannot answer with an error: hard disconnect, nothing written.
    let (out, fed) = run(
        &exports,
        cfg(),
        Client::flags(FLAGS).opt(OPT_EXPORT_NAME, b"nope").bytes(),
    );
    assert_eq!(
        (out.len(), fed.outcome),
        (0, Outcome::Close(CloseReason::UnknownExport))
    );
    let (_, fed) = run(
        &exports,
        cfg(),
        Client::flags(FLAGS).opt(OPT_EXPORT_NAME, &[0xff]).bytes(),
    );
    assert_eq!(fed.outcome, Outcome::Close(CloseReason::UnknownExport));
    // No exports at all: even the default is unknown.
    let (out, _) = run(&[], cfg(), Client::flags(FLAGS).info(OPT_GO, "", &[]).bytes());
    assert_eq!(reply_kinds(&out), [(OPT_GO, REP_ERR_UNKNOWN)]);
}

#[test]
fn over_long_option_is_refused_without_buffering() {
    let exports = three();
    let (mut hs, _) = start(&exports, cfg());
    let mut out = Vec::new();
    // Only the header arrives: the refusal must not wait for (or hold) the data.
    let input = [hex("00000003"), hex("49484156454f5054 00000003 00010001")].concat();
    let fed = hs.feed(&input, &mut out);
    assert_eq!(
        fed.outcome,
        Outcome::Close(CloseReason::OptionTooLong {
            option: OPT_LIST,
            len_bytes: 65537,
            max_bytes: 65536
        })
    );
    assert_eq!(fed.consumed, input.len());
    assert_eq!(hs.buffered_bytes(), 0);
    assert_eq!(reply_kinds(&out), [(OPT_LIST, REP_ERR_TOO_BIG)]);
    // Exactly the maximum is accepted (as data of an unknown option).
    let big = vec![7u8; 65536];
    let (out, fed) = run(&exports, cfg(), Client::flags(FLAGS).opt(99, &big).bytes());
    assert_eq!(
        (reply_kinds(&out), fed.outcome),
        (vec![(99, REP_ERR_UNSUP)], Outcome::NeedInput)
    );
    // EXPORT_NAME has no error reply: just close.
    let (out, fed) = run(
        &exports,
        cfg(),
        &[hex("00000003"), hex("49484156454f5054 00000001 ffffffff")].concat(),
    );
    assert!(out.is_empty());
    assert!(matches!(fed.outcome, Outcome::Close(CloseReason::OptionTooLong { .. })));
    // A smaller configured cap.
    let small = HandshakeConfig {
        max_option_bytes: 16,
        ..cfg()
    };
    let (_, fed) = run(
        &exports,
        small,
        Client::flags(FLAGS).info(OPT_GO, "a-long-export-name", &[]).bytes(),
    );
    assert!(matches!(
        fed.outcome,
        Outcome::Close(CloseReason::OptionTooLong { max_bytes: 16, .. })
    ));
}

#[test]
fn bad_option_magic_closes() {
    let exports = three();
    let input = [hex("00000003"), hex("49484156454f5055 00000007 00000000")].concat();
    let (out, fed) = run(&exports, cfg(), &input);
    assert!(out.is_empty());
    assert_eq!(
        fed.outcome,
        Outcome::Close(CloseReason::BadOptionMagic(0x4948_4156_454f_5055))
    );
}

#[test]
fn meta_contexts_need_structured_replies() {
    let exports = three();
    let c = Client::flags(FLAGS)
        .meta(OPT_LIST_META_CONTEXT, "", &[])
        .meta(OPT_SET_META_CONTEXT, "", &["base:allocation"])
        .info(OPT_GO, "", &[]);
    let (out, fed) = run(&exports, cfg(), c.bytes());
    assert_eq!(
        reply_kinds(&out)[..2],
        [
            (OPT_LIST_META_CONTEXT, REP_ERR_INVALID),
            (OPT_SET_META_CONTEXT, REP_ERR_INVALID)
        ]
    );
    assert_eq!(done(&fed).base_allocation, None);
}

#[test]
fn meta_context_queries() {
    let exports = three();
    let list = |queries: &[&str]| {
        let c = Client::flags(FLAGS)
            .opt(OPT_STRUCTURED_REPLY, &[])
            .meta(OPT_LIST_META_CONTEXT, "disk", queries);
        let (out, _) = run(&exports, cfg(), c.bytes());
        replies(&out)[1..]
            .iter()
            .map(|r| (r.reply_type, r.data.to_vec()))
            .collect::<Vec<_>>()
    };
    let base = (REP_META_CONTEXT, [&hex("00000000")[..], b"base:allocation"].concat());
    let ack = (REP_ACK, vec![]);
    assert_eq!(list(&[]), [base.clone(), ack.clone()], "no query lists everything");
    assert_eq!(
        list(&["base:"]),
        [base.clone(), ack.clone()],
        "base: is a wildcard in LIST"
    );
    assert_eq!(
        list(&["base:allocation", "base:"]),
        [base.clone(), ack.clone()],
        "listed once"
    );
    assert_eq!(list(&["base:nothing", "x-foo:bar", "qemu:dirty-bitmap:a"]), [ack]);
    assert_eq!(list(&["nocolon"])[0].0, REP_ERR_INVALID);

    let set = |queries: &[&str], go: &str| {
        let c = Client::flags(FLAGS)
            .opt(OPT_STRUCTURED_REPLY, &[])
            .meta(OPT_SET_META_CONTEXT, "disk", queries)
            .info(OPT_GO, go, &[]);
        let (out, fed) = run(&exports, cfg(), c.bytes());
        let k: Vec<u32> = replies(&out)[1..].iter().map(|r| r.reply_type).collect();
        (k, done(&fed).base_allocation)
    };
    assert_eq!(set(&["base:allocation"], "disk").1, Some(MetaContextId(1)));
    assert_eq!(
        set(&["base:allocation"], "").1,
        Some(BASE_ALLOCATION_ID),
        "\"\" is disk"
    );
    assert_eq!(set(&["base:allocation"], "ro").1, None, "selected for another export");
    assert_eq!(
        set(&["base:"], "disk"),
        (vec![REP_ACK, REP_INFO, REP_INFO, REP_ACK], None),
        "base: selects nothing"
    );
    assert_eq!(set(&[], "disk").1, None, "no query selects nothing");
    let (k, sel) = set(&["base:allocation", "base:allocation"], "disk");
    assert_eq!(
        (k[..2].to_vec(), sel),
        (vec![REP_META_CONTEXT, REP_ACK], Some(BASE_ALLOCATION_ID))
    );
    // SET on an unknown export.
    let c = Client::flags(FLAGS)
        .opt(OPT_STRUCTURED_REPLY, &[])
        .meta(OPT_SET_META_CONTEXT, "zz", &["base:allocation"]);
    let (out, _) = run(&exports, cfg(), c.bytes());
    assert_eq!(reply_kinds(&out)[1], (OPT_SET_META_CONTEXT, REP_ERR_UNKNOWN));
}

#[test]
fn malformed_meta_data_gets_err_invalid_and_clears_the_selection() {
    let exports = three();
    let cases: Vec<Vec<u8>> = vec![
        hex(""),
        hex("00000000"),                            // no query count
        hex("00000000 00000001"),                   // one query announced, none sent
        hex("00000000 00000001 00000010 62617365"), // query longer than the data
        hex("00000000 00000000 00"),                // trailing byte
        hex("00000009 6469736b 00000000"),          // name longer than the data
        hex("00000000 7fffffff 00000000"),          // absurd query count
        hex("00000000 00000001 00000002 ff3a"),     // query not UTF-8
        hex("00000000 00000001 00002000"),          // query over 4096 bytes
    ];
    for data in cases {
        let c = Client::flags(FLAGS)
            .opt(OPT_STRUCTURED_REPLY, &[])
            .meta(OPT_SET_META_CONTEXT, "", &["base:allocation"])
            .opt(OPT_SET_META_CONTEXT, &data)
            .info(OPT_GO, "", &[]);
        let (out, fed) = run(&exports, cfg(), c.bytes());
        assert_eq!(
            reply_kinds(&out)[3],
            (OPT_SET_META_CONTEXT, REP_ERR_INVALID),
            "{data:02x?}"
        );
        assert_eq!(done(&fed).base_allocation, None, "a failed SET replaces the selection");
    }
}

#[test]
fn extended_headers_rules() {
    let exports = three();
    // SR after EH: ERR_EXT_HEADER_REQD; repeats are acknowledged.
    let c = Client::flags(FLAGS)
        .opt(OPT_EXTENDED_HEADERS, &[])
        .opt(OPT_EXTENDED_HEADERS, &[])
        .opt(OPT_STRUCTURED_REPLY, &[])
        .info(OPT_GO, "", &[]);
    let (out, fed) = run(&exports, cfg(), c.bytes());
    assert_eq!(
        reply_kinds(&out)[..3],
        [
            (OPT_EXTENDED_HEADERS, REP_ACK),
            (OPT_EXTENDED_HEADERS, REP_ACK),
            (OPT_STRUCTURED_REPLY, REP_ERR_EXT_HEADER_REQD)
        ]
    );
    let s = done(&fed);
    assert!(s.extended_headers && !s.structured_replies);
    assert_eq!(s.reply_mode(), keel_nbd::ReplyMode::Extended);
    assert_ne!(s.transmission_flags & FLAG_SEND_DF, 0);
    // EH after SR is fine and takes precedence.
    let c = Client::flags(FLAGS)
        .opt(OPT_STRUCTURED_REPLY, &[])
        .opt(OPT_EXTENDED_HEADERS, &[])
        .info(OPT_GO, "", &[]);
    let (_, fed) = run(&exports, cfg(), c.bytes());
    assert_eq!(done(&fed).reply_mode(), keel_nbd::ReplyMode::Extended);
    // EXPORT_NAME after EH is forbidden: close.
    let c = Client::flags(FLAGS)
        .opt(OPT_EXTENDED_HEADERS, &[])
        .opt(OPT_EXPORT_NAME, b"");
    let (_, fed) = run(&exports, cfg(), c.bytes());
    assert_eq!(fed.outcome, Outcome::Close(CloseReason::ExportNameWithExtendedHeaders));
    // Disabled structured replies.
    let no_sr = HandshakeConfig {
        allow_structured_replies: false,
        ..cfg()
    };
    let (out, _) = run(
        &exports,
        no_sr,
        Client::flags(FLAGS).opt(OPT_STRUCTURED_REPLY, &[]).bytes(),
    );
    assert_eq!(reply_kinds(&out), [(OPT_STRUCTURED_REPLY, REP_ERR_UNSUP)]);
}

#[test]
fn abort_ignores_data_and_closes_after_ack() {
    let exports = three();
    let c = Client::flags(FLAGS).opt(OPT_ABORT, b"junk").opt(OPT_LIST, &[]);
    let (out, fed) = run(&exports, cfg(), c.bytes());
    assert_eq!(out, hex("0003e889045565a9 00000002 00000001 00000000"));
    assert_eq!(fed.outcome, Outcome::Close(CloseReason::Aborted));
    assert_eq!(fed.consumed, c.bytes().len() - 16, "nothing after ABORT is consumed");
}

#[test]
fn shutdown_refuses_options_but_abort() {
    let exports = three();
    let (mut hs, _) = start(&exports, cfg());
    hs.begin_shutdown();
    let mut out = Vec::new();
    let c = Client::flags(FLAGS)
        .opt(OPT_LIST, &[])
        .info(OPT_GO, "", &[])
        .opt(OPT_ABORT, &[]);
    let fed = hs.feed(c.bytes(), &mut out);
    assert_eq!(
        reply_kinds(&out),
        [
            (OPT_LIST, REP_ERR_SHUTDOWN),
            (OPT_GO, REP_ERR_SHUTDOWN),
            (OPT_ABORT, REP_ACK)
        ]
    );
    assert_eq!(fed.outcome, Outcome::Close(CloseReason::Aborted));
    let (mut hs, _) = start(&exports, cfg());
    hs.begin_shutdown();
    let fed = hs.feed(Client::flags(FLAGS).opt(OPT_EXPORT_NAME, b"").bytes(), &mut Vec::new());
    assert_eq!(fed.outcome, Outcome::Close(CloseReason::ShuttingDown));
}

#[test]
fn output_is_flow_controlled() {
    let exports = three();
    let config = HandshakeConfig {
        output_high_water_bytes: 100,
        ..cfg()
    };
    let mut c = Client::flags(FLAGS);
    for _ in 0..50 {
        c = c.opt(OPT_LIST, &[]);
    }
    let (mut hs, _) = start(&exports, config);
    let mut input = c.bytes();
    let mut total = Vec::new();
    let mut calls = 0;
    loop {
        let mut out = Vec::new();
        let fed = hs.feed(input, &mut out);
        calls += 1;
        // One LIST answer is 4 replies (~110 bytes): never more than one past the mark.
        assert!(out.len() <= 100 + 120, "{} bytes buffered", out.len());
        total.extend_from_slice(&out);
        input = &input[fed.consumed..];
        match fed.outcome {
            Outcome::OutputFull => assert!(!input.is_empty()),
            Outcome::NeedInput => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(calls > 10);
    assert_eq!(replies(&total).len(), 50 * 4);
    // A caller that never drains makes no progress (and the output stops growing).
    let (mut hs, _) = start(&exports, config);
    let mut out = Vec::new();
    let first = hs.feed(c.bytes(), &mut out);
    let len = out.len();
    let again = hs.feed(&c.bytes()[first.consumed..], &mut out);
    assert_eq!(
        (again.consumed, again.outcome, out.len()),
        (0, Outcome::OutputFull, len)
    );
}

#[test]
fn feeding_after_the_end_consumes_nothing() {
    let exports = three();
    let (mut hs, _) = start(&exports, cfg());
    let input = Client::flags(FLAGS).info(OPT_GO, "", &[]);
    let fed = hs.feed(input.bytes(), &mut Vec::new());
    assert!(matches!(fed.outcome, Outcome::Done(_)));
    let again = hs.feed(b"more", &mut Vec::new());
    assert_eq!(
        (again.consumed, again.outcome),
        (0, Outcome::Close(CloseReason::HandshakeOver))
    );
}

#[test]
fn byte_at_a_time_gives_the_same_result() {
    let exports = three();
    let c = Client::flags(FLAGS)
        .opt(OPT_EXTENDED_HEADERS, &[])
        .opt(OPT_LIST, &[])
        .meta(OPT_SET_META_CONTEXT, "", &["base:allocation"])
        .info(OPT_GO, "", &[INFO_BLOCK_SIZE])
        .raw(b"leftover request bytes");
    let (whole_out, whole) = run(&exports, cfg(), c.bytes());
    let (mut hs, _) = start(&exports, cfg());
    let mut out = Vec::new();
    let mut end = None;
    for (i, b) in c.bytes().iter().enumerate() {
        let fed = hs.feed(std::slice::from_ref(b), &mut out);
        assert!(hs.buffered_bytes() <= 64);
        if let Outcome::Done(s) = fed.outcome {
            assert_eq!(fed.consumed, 1);
            end = Some((i + 1, s));
            break;
        }
    }
    let (consumed, session) = end.expect("done");
    assert_eq!(out, whole_out);
    assert_eq!((consumed, &session), (whole.consumed, done(&whole)));
    assert_eq!(&c.bytes()[consumed..], b"leftover request bytes");
}
