//! Property tests: every structure survives encode → decode, and no decoder panics on arbitrary
//! bytes.
//!
//! Small structures (commands, SGL descriptors, CQEs, PDU headers, registers) are generated
//! field by field within their legal ranges. The large pages (Identify, log pages, discovery
//! entries) are generated as random bytes and decoded first: each named field is a direct view
//! of its bytes, so the decoded values cover every field value, and `decode(encode(x)) == x`
//! then proves the encoder writes each field where the decoder reads it.

use keel_nvme_proto::cqe::{Cqe, Sct, Status, StatusCode};
use keel_nvme_proto::identify::{
    decode_active_ns_list, decode_ns_id_descriptors, encode_active_ns_list, encode_ns_id_descriptors, Cns,
    IdentifyController, IdentifyNamespace, NsIdDescriptor,
};
use keel_nvme_proto::log::{
    decode_changed_ns_list, encode_changed_ns_list, read_discovery_log, ChangedNamespaces, DiscoveryEntry,
    DiscoveryLogHeader, ErrorInfoEntry, LogPageId, SmartLog,
};
use keel_nvme_proto::nqn::{self, NqnField};
use keel_nvme_proto::props::{cq_head_doorbell, sq_tail_doorbell, Aqa, Cap, Cc, Csts, PropertySize, Vs};
use keel_nvme_proto::sqe::*;
use keel_nvme_proto::tcp::{
    C2HData, CapsuleCmd, CapsuleResp, Event, Fes, H2CData, IcReq, IcResp, Limits, PduHeader, PduParser, Role,
    SessionParams, TermReq, R2T,
};
use keel_nvme_proto::ProtoError;
use proptest::prelude::*;

fn page(len: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), len)
}

fn sgl() -> impl Strategy<Value = SglDescriptor> {
    let sub = (0u8..16).prop_map(SglSubtype);
    prop_oneof![
        (any::<u64>(), any::<u32>(), sub.clone()).prop_map(|(address, length, subtype)| SglDescriptor::DataBlock {
            address,
            length,
            subtype
        }),
        (any::<u32>(), sub.clone()).prop_map(|(length, subtype)| SglDescriptor::BitBucket { length, subtype }),
        (any::<u64>(), any::<u32>(), sub.clone()).prop_map(|(address, length, subtype)| SglDescriptor::Segment {
            address,
            length,
            subtype
        }),
        (any::<u64>(), any::<u32>(), sub.clone()).prop_map(|(address, length, subtype)| SglDescriptor::LastSegment {
            address,
            length,
            subtype
        }),
        (any::<u64>(), 0u32..1 << 24, any::<u32>(), sub.clone()).prop_map(|(address, length, key, subtype)| {
            SglDescriptor::KeyedDataBlock {
                address,
                length,
                key,
                subtype,
            }
        }),
        (any::<u64>(), any::<u32>(), sub.clone()).prop_map(|(address, length, subtype)| {
            SglDescriptor::TransportDataBlock {
                address,
                length,
                subtype,
            }
        }),
        (any::<[u8; 15]>(), sub).prop_map(|(bytes, subtype)| SglDescriptor::Vendor { bytes, subtype }),
    ]
}

fn data_pointer() -> impl Strategy<Value = DataPointer> {
    prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(prp1, prp2)| DataPointer::Prp { prp1, prp2 }),
        sgl().prop_map(DataPointer::Sgl),
    ]
}

fn admin() -> impl Strategy<Value = AdminCommand> {
    prop_oneof![
        any::<u16>().prop_map(|qid| AdminCommand::DeleteIoSq { qid }),
        (
            any::<u16>(),
            any::<u16>(),
            any::<bool>(),
            0u8..4,
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(
                |(qid, qsize_0based, physically_contiguous, priority, cqid, nvm_set_id)| {
                    AdminCommand::CreateIoSq(CreateIoSq {
                        qid,
                        qsize_0based,
                        physically_contiguous,
                        priority,
                        cqid,
                        nvm_set_id,
                    })
                }
            ),
        (
            any::<u32>(),
            any::<u8>(),
            0u8..128,
            any::<bool>(),
            any::<u32>(),
            any::<u16>(),
            any::<u64>(),
            0u8..128,
            any::<u8>()
        )
            .prop_map(|(nsid, lid, lsp, rae, numd_0based, lsi, off, uuid_index, csi)| {
                AdminCommand::GetLogPage(GetLogPage {
                    nsid,
                    lid: LogPageId(lid),
                    lsp,
                    rae,
                    numd_0based,
                    lsi,
                    offset_bytes: off & !3,
                    uuid_index,
                    csi,
                })
            }),
        any::<u16>().prop_map(|qid| AdminCommand::DeleteIoCq { qid }),
        (any::<u16>(), any::<u16>(), any::<bool>(), any::<bool>(), any::<u16>()).prop_map(
            |(qid, qsize_0based, physically_contiguous, interrupts_enabled, interrupt_vector)| {
                AdminCommand::CreateIoCq(CreateIoCq {
                    qid,
                    qsize_0based,
                    physically_contiguous,
                    interrupts_enabled,
                    interrupt_vector,
                })
            }
        ),
        (any::<u32>(), any::<u8>(), any::<u16>(), any::<u8>()).prop_map(|(nsid, cns, cntid, csi)| {
            AdminCommand::Identify(Identify {
                nsid,
                cns: Cns(cns),
                cntid,
                csi,
            })
        }),
        (any::<u16>(), any::<u16>()).prop_map(|(sqid, cid)| AdminCommand::Abort { sqid, cid }),
        (any::<u32>(), any::<u8>(), any::<bool>(), any::<u32>()).prop_map(|(nsid, fid, save, value)| {
            AdminCommand::SetFeatures(SetFeatures {
                nsid,
                fid: FeatureId(fid),
                save,
                value,
            })
        }),
        (any::<u32>(), any::<u8>(), 0u8..8, any::<u32>()).prop_map(|(nsid, fid, select, cdw11)| {
            AdminCommand::GetFeatures(GetFeatures {
                nsid,
                fid: FeatureId(fid),
                select,
                cdw11,
            })
        }),
        Just(AdminCommand::AsyncEventRequest),
        Just(AdminCommand::KeepAlive),
    ]
}

fn fabrics() -> impl Strategy<Value = FabricsCommand> {
    let size = prop_oneof![Just(PropertySize::Four), Just(PropertySize::Eight)];
    prop_oneof![
        (size.clone(), any::<u32>(), any::<u64>()).prop_map(|(size, offset, value)| FabricsCommand::PropertySet {
            size,
            offset,
            value
        }),
        (any::<u16>(), any::<u16>(), any::<u16>(), any::<u8>(), any::<u32>()).prop_map(
            |(recfmt, qid, sqsize_0based, cattr, kato_ms)| {
                FabricsCommand::Connect(Connect {
                    recfmt,
                    qid,
                    sqsize_0based,
                    cattr,
                    kato_ms,
                })
            }
        ),
        (size, any::<u32>()).prop_map(|(size, offset)| FabricsCommand::PropertyGet { size, offset }),
        any::<u16>().prop_map(|recfmt| FabricsCommand::Disconnect { recfmt }),
    ]
}

fn nvm() -> impl Strategy<Value = NvmCommand> {
    let rw = (any::<u32>(), any::<u64>(), any::<u16>(), any::<bool>(), any::<bool>()).prop_map(
        |(nsid, slba, nlb_0based, fua, limited_retry)| ReadWrite {
            nsid,
            slba,
            nlb_0based,
            fua,
            limited_retry,
        },
    );
    prop_oneof![
        any::<u32>().prop_map(|nsid| NvmCommand::Flush { nsid }),
        rw.clone().prop_map(NvmCommand::Write),
        rw.clone().prop_map(NvmCommand::Read),
        rw.prop_map(NvmCommand::Compare),
        (
            any::<u32>(),
            any::<u64>(),
            any::<u16>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(nsid, slba, nlb_0based, deallocate, fua, limited_retry)| {
                NvmCommand::WriteZeroes(WriteZeroes {
                    nsid,
                    slba,
                    nlb_0based,
                    deallocate,
                    fua,
                    limited_retry,
                })
            }),
        (any::<u32>(), any::<u8>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(nsid, nr_0based, integral_read, integral_write, deallocate)| {
                NvmCommand::DatasetManagement(DatasetManagement {
                    nsid,
                    nr_0based,
                    integral_read,
                    integral_write,
                    deallocate,
                })
            }
        ),
    ]
}

fn status() -> impl Strategy<Value = Status> {
    (0u8..8, any::<u8>(), 0u8..4, any::<bool>(), any::<bool>()).prop_map(|(sct, sc, crd, more, dnr)| Status {
        code: StatusCode { sct: Sct(sct), sc },
        crd,
        more,
        dnr,
    })
}

fn cqe() -> impl Strategy<Value = Cqe> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
        any::<u16>(),
        status(),
        any::<bool>(),
    )
        .prop_map(|(dw0, dw1, sq_head, sq_id, cid, status, phase)| Cqe {
            dw0,
            dw1,
            sq_head,
            sq_id,
            cid,
            status,
            phase,
        })
}

fn sqe() -> impl Strategy<Value = Sqe> {
    (
        (
            any::<u8>(),
            any::<u8>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
        ),
        (any::<[u8; 16]>(), any::<[u32; 6]>()),
    )
        .prop_map(|((opcode, flags, cid, nsid, cdw2, cdw3, mptr), (dptr, c))| Sqe {
            opcode,
            flags,
            cid,
            nsid,
            cdw2,
            cdw3,
            mptr,
            dptr,
            cdw10: c[0],
            cdw11: c[1],
            cdw12: c[2],
            cdw13: c[3],
            cdw14: c[4],
            cdw15: c[5],
        })
}

fn nqn_field() -> impl Strategy<Value = NqnField> {
    proptest::collection::vec(1u8..=255, 0..=255).prop_map(|b| NqnField::new_unchecked_format(&b).unwrap())
}

fn session() -> impl Strategy<Value = SessionParams> {
    (any::<bool>(), any::<bool>(), 0u8..32, 0u8..32, any::<bool>()).prop_map(
        |(header_digest, data_digest, hpda, cpda, c2h_success_allowed)| SessionParams {
            header_digest,
            data_digest,
            hpda,
            cpda,
            c2h_success_allowed,
        },
    )
}

/// A PDU header (not a handshake) and its data length.
fn pdu() -> impl Strategy<Value = (PduHeader, u32)> {
    let term = (any::<u16>(), any::<u32>(), 0u32..=128).prop_map(|(fes, fei, n)| (TermReq { fes: Fes(fes), fei }, n));
    prop_oneof![
        term.clone().prop_map(|(t, n)| (PduHeader::H2CTermReq(t), n)),
        term.prop_map(|(t, n)| (PduHeader::C2HTermReq(t), n)),
        (sqe(), 0u32..3000).prop_map(|(sqe, n)| (PduHeader::CapsuleCmd(CapsuleCmd { sqe }), n)),
        cqe().prop_map(|cqe| (PduHeader::CapsuleResp(CapsuleResp { cqe }), 0)),
        (any::<u16>(), any::<u16>(), any::<u32>(), 1u32..3000, any::<bool>()).prop_map(
            |(cccid, ttag, datao, datal, last_pdu)| {
                (
                    PduHeader::H2CData(H2CData {
                        cccid,
                        ttag,
                        datao,
                        datal,
                        last_pdu,
                    }),
                    datal,
                )
            }
        ),
        (any::<u16>(), any::<u32>(), 1u32..3000, any::<bool>(), any::<bool>()).prop_map(
            |(cccid, datao, datal, last_pdu, success)| {
                let success = success && last_pdu;
                (
                    PduHeader::C2HData(C2HData {
                        cccid,
                        datao,
                        datal,
                        last_pdu,
                        success,
                    }),
                    datal,
                )
            }
        ),
        (any::<u16>(), any::<u16>(), any::<u32>(), 1u32..).prop_map(|(cccid, ttag, r2to, r2tl)| {
            (
                PduHeader::R2T(R2T {
                    cccid,
                    ttag,
                    r2to,
                    r2tl,
                }),
                0,
            )
        }),
    ]
}

/// One received PDU: header, data, data digest verdict.
type Received = (PduHeader, Vec<u8>, Result<(), ProtoError>);

/// Feeds `bytes` in pieces of `step` and returns what each PDU brought.
fn parse_all(parser: &mut PduParser, bytes: &[u8], step: usize) -> Result<Vec<Received>, ProtoError> {
    let mut out = Vec::new();
    let mut cur = None;
    for piece in bytes.chunks(step.max(1)) {
        let mut rest = piece;
        loop {
            let (used, ev) = parser.feed(rest)?;
            rest = &rest[used..];
            match ev {
                None => break,
                Some(Event::Header { pdu, .. }) => cur = Some((pdu, Vec::new())),
                Some(Event::Data { bytes, .. }) => cur.as_mut().unwrap().1.extend_from_slice(bytes),
                Some(Event::End { data_digest }) => {
                    let (h, d) = cur.take().unwrap();
                    out.push((h, d, data_digest));
                }
            }
        }
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn sqe_round_trip(s in sqe()) {
        let mut buf = [0u8; 64];
        prop_assert_eq!(s.encode(&mut buf), Ok(64));
        prop_assert_eq!(Sqe::decode(&buf), Ok(s));
    }

    #[test]
    fn commands_round_trip(
        cmd in prop_oneof![admin().prop_map(Command::Admin), fabrics().prop_map(Command::Fabrics), nvm().prop_map(Command::Nvm)],
        cid: u16,
        dp in data_pointer(),
    ) {
        let s = cmd.to_sqe(cid, dp).unwrap();
        let queue = if matches!(cmd, Command::Nvm(_)) { QueueKind::Io } else { QueueKind::Admin };
        let back = Sqe::from_bytes(&s.to_bytes());
        prop_assert_eq!(back.cid, cid);
        prop_assert_eq!(Command::decode(&back, queue), Ok(cmd));
        prop_assert_eq!(back.data_pointer(), Ok(dp));
    }

    #[test]
    fn sgl_round_trip(d in sgl()) {
        prop_assert_eq!(SglDescriptor::from_bytes(&d.to_bytes().unwrap()), Ok(d));
    }

    #[test]
    fn cqe_round_trip(c in cqe()) {
        let mut buf = [0u8; 16];
        c.encode(&mut buf).unwrap();
        prop_assert_eq!(Cqe::decode(&buf), Ok(c));
        prop_assert!(!c.status.to_string().is_empty());
    }

    #[test]
    fn connect_data_round_trip(hostid: [u8; 16], cntlid: u16, subnqn in nqn_field(), hostnqn in nqn_field()) {
        let d = ConnectData { hostid, cntlid, subnqn, hostnqn };
        let mut buf = [0u8; 1024];
        d.encode(&mut buf).unwrap();
        prop_assert_eq!(ConnectData::decode(&buf), Ok(d));
    }

    #[test]
    fn dsm_ranges_round_trip(ranges in proptest::collection::vec((any::<u32>(), any::<u32>(), any::<u64>()), 1..=256)) {
        let ranges: Vec<DsmRange> =
            ranges.into_iter().map(|(attributes, block_count, slba)| DsmRange { attributes, block_count, slba }).collect();
        let mut buf = vec![0u8; 4096];
        let n = DsmRange::encode_list(&ranges, &mut buf).unwrap();
        prop_assert_eq!(n, ranges.len() * 16);
        prop_assert_eq!(DsmRange::decode_list(&buf, ranges.len()).unwrap().collect::<Vec<_>>(), ranges);
    }

    #[test]
    fn identify_controller_round_trip(b in page(4096)) {
        let c = IdentifyController::decode(&b).unwrap();
        let _ = (c.in_capsule_data_bytes(), c.max_transfer_bytes(1 << (b[0] % 64)));
        let mut out = vec![0u8; 4096];
        c.encode(&mut out).unwrap();
        prop_assert_eq!(IdentifyController::decode(&out), Ok(c));
    }

    #[test]
    fn identify_namespace_round_trip(b in page(4096)) {
        let n = IdentifyNamespace::decode(&b).unwrap();
        let _ = n.block_size_bytes();
        let mut out = vec![0u8; 4096];
        n.encode(&mut out).unwrap();
        prop_assert_eq!(IdentifyNamespace::decode(&out), Ok(n));
    }

    #[test]
    fn namespace_lists_round_trip(set in proptest::collection::btree_set(1u32.., 0..1100)) {
        let nsids: Vec<u32> = set.into_iter().collect();
        let mut out = vec![0u8; 4096];
        let n = encode_active_ns_list(nsids.iter().copied(), &mut out).unwrap();
        prop_assert_eq!(n, nsids.len().min(1024));
        prop_assert_eq!(decode_active_ns_list(&out).unwrap().collect::<Vec<_>>(), &nsids[..n]);
        encode_changed_ns_list(&nsids, &mut out).unwrap();
        match decode_changed_ns_list(&out).unwrap() {
            ChangedNamespaces::TooMany => prop_assert!(nsids.len() > 1024),
            ChangedNamespaces::List(l) => prop_assert_eq!(l.collect::<Vec<_>>(), nsids),
        }
    }

    #[test]
    fn ns_id_descriptors_round_trip(descs in proptest::collection::vec(prop_oneof![
        any::<[u8; 8]>().prop_map(NsIdDescriptor::Eui64),
        any::<[u8; 16]>().prop_map(NsIdDescriptor::Nguid),
        any::<[u8; 16]>().prop_map(NsIdDescriptor::Uuid),
        any::<u8>().prop_map(NsIdDescriptor::Csi),
    ], 0..40)) {
        let mut out = vec![0u8; 4096];
        encode_ns_id_descriptors(&descs, &mut out).unwrap();
        let back: Result<Vec<_>, _> = decode_ns_id_descriptors(&out).collect();
        prop_assert_eq!(back.unwrap(), descs);
    }

    #[test]
    fn log_pages_round_trip(b in page(1024)) {
        let e = ErrorInfoEntry::decode(&b).unwrap();
        let mut out = vec![0u8; 1024];
        e.encode(&mut out).unwrap();
        prop_assert_eq!(ErrorInfoEntry::decode(&out), Ok(e));
        let s = SmartLog::decode(&b).unwrap();
        s.encode(&mut out).unwrap();
        prop_assert_eq!(SmartLog::decode(&out), Ok(s));
        let d = DiscoveryEntry::decode(&b).unwrap();
        prop_assert_eq!(DiscoveryEntry::decode(&d.to_bytes()), Ok(d));
        let h = DiscoveryLogHeader::decode(&b).unwrap();
        prop_assert_eq!(DiscoveryLogHeader::decode(&h.to_bytes()), Ok(h));
    }

    #[test]
    fn discovery_windows_match_the_whole_log(entries in proptest::collection::vec(page(1024), 0..4), off in 0u64..6000, len in 0usize..3000) {
        let entries: Vec<DiscoveryEntry> = entries.iter().map(|b| DiscoveryEntry::decode(b).unwrap()).collect();
        let h = DiscoveryLogHeader { genctr: 1, numrec: entries.len() as u64, recfmt: 0 };
        let mut whole = vec![0u8; 9000];
        read_discovery_log(&h, &entries, 0, &mut whole);
        let mut window = vec![0xAAu8; len];
        read_discovery_log(&h, &entries, off, &mut window);
        prop_assert_eq!(&window[..], &whole[off as usize..off as usize + len]);
    }

    #[test]
    fn registers_round_trip(v: u64) {
        let cap = Cap::from_bits(v);
        prop_assert_eq!(Cap::from_bits(cap.to_bits()), cap);
        let cc = Cc::from_bits(v as u32);
        prop_assert_eq!(Cc::from_bits(cc.to_bits()), cc);
        prop_assert_eq!(cc.to_bits(), v as u32 & 0x01FF_FFF1);
        let csts = Csts::from_bits(v as u32);
        prop_assert_eq!(Csts::from_bits(csts.to_bits()), csts);
        prop_assert_eq!(csts.to_bits(), v as u32 & 0x3F);
        prop_assert_eq!(Vs::from_bits(v as u32).to_bits(), v as u32);
        prop_assert_eq!(Aqa::from_bits(v as u32).to_bits(), v as u32 & 0x0FFF_0FFF);
        // The arithmetic helpers are total (tests run with overflow checks).
        let _ = (cap.doorbell_stride_bytes(), cap.timeout_ms());
        let (qid, dstrd) = (v as u16, (v >> 16) as u8);
        prop_assert!(sq_tail_doorbell(qid, dstrd) < cq_head_doorbell(qid, dstrd));
    }

    #[test]
    fn pdus_round_trip_through_the_parser(
        pdus in proptest::collection::vec(pdu(), 1..6),
        params in session(),
        step in 1usize..200,
        fill: u8,
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (h, n) in pdus {
            // The receiver is the controller for host PDUs; one stream has one direction.
            if !h.pdu_type().to_controller() { continue; }
            let data: Vec<u8> = (0..n).map(|i| fill.wrapping_add(i as u8)).collect();
            let mut buf = vec![0u8; 512 + data.len()];
            let len = h.encode_pdu(&data, &params, &mut buf).unwrap();
            stream.extend_from_slice(&buf[..len]);
            expected.push((h, data, Ok(())));
        }
        let mut p = PduParser::established(Role::Controller, Limits::NONE, params);
        prop_assert_eq!(parse_all(&mut p, &stream, step).unwrap(), expected);
        prop_assert!(p.at_boundary());
    }

    #[test]
    fn host_bound_pdus_round_trip(pdus in proptest::collection::vec(pdu(), 1..6), params in session(), step in 1usize..200) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (h, n) in pdus {
            if h.pdu_type().to_controller() { continue; }
            if let PduHeader::C2HData(d) = h { if d.success && !params.c2h_success_allowed { continue; } }
            let data = vec![0x3Cu8; n as usize];
            let mut buf = vec![0u8; 512 + data.len()];
            let len = h.encode_pdu(&data, &params, &mut buf).unwrap();
            stream.extend_from_slice(&buf[..len]);
            expected.push((h, data, Ok(())));
        }
        let mut p = PduParser::established(Role::Host, Limits::NONE, params);
        prop_assert_eq!(parse_all(&mut p, &stream, step).unwrap(), expected);
    }

    #[test]
    fn handshake_round_trip(hpda in 0u8..32, hd: bool, dd: bool, maxr2t_0based: u32, cpda in 0u8..32, words in 1024u32..(1 << 30)) {
        let req = PduHeader::IcReq(IcReq { pfv: 0, hpda, header_digest: hd, data_digest: dd, maxr2t_0based });
        let resp = PduHeader::IcResp(IcResp { pfv: 0, cpda, header_digest: hd, data_digest: dd, maxh2cdata: words.saturating_mul(4) });
        for (h, role) in [(req, Role::Controller), (resp, Role::Host)] {
            let mut buf = [0u8; 128];
            prop_assert_eq!(h.encode_pdu(&[], &SessionParams::INITIAL, &mut buf), Ok(128));
            let mut p = PduParser::new(role, Limits::NONE);
            let got = parse_all(&mut p, &buf, 17).unwrap();
            prop_assert_eq!(got, vec![(h, Vec::new(), Ok(()))]);
        }
    }

    #[test]
    fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..1200)) {
        let _ = Sqe::decode(&b).map(|s| (Command::decode(&s, QueueKind::Admin), Command::decode(&s, QueueKind::Io), s.data_pointer(), s.fuse()));
        let _ = Cqe::decode(&b);
        let _ = SglDescriptor::decode(&b);
        let _ = ConnectData::decode(&b);
        let _ = DsmRange::decode_list(&b, 1 + b.len() % 256).map(|l| l.count());
        let _ = IdentifyController::decode(&b);
        let _ = IdentifyNamespace::decode(&b);
        let _ = decode_active_ns_list(&b).map(|l| l.count());
        let _ = decode_ns_id_descriptors(&b).count();
        let _ = ErrorInfoEntry::decode(&b);
        let _ = SmartLog::decode(&b);
        let _ = decode_changed_ns_list(&b).map(|c| matches!(c, ChangedNamespaces::TooMany));
        let _ = DiscoveryLogHeader::decode(&b);
        let _ = DiscoveryEntry::decode(&b);
        for role in [Role::Controller, Role::Host] {
            let _ = parse_all(&mut PduParser::new(role, Limits::NONE), &b, 1 + b.len() % 13);
            let params = SessionParams { header_digest: b.first().is_some_and(|x| x & 1 != 0), ..SessionParams::INITIAL };
            let _ = parse_all(&mut PduParser::established(role, Limits::NONE, params), &b, 7);
        }
        if let Ok(s) = std::str::from_utf8(&b) { let _ = nqn::validate(s); }
    }

    #[test]
    fn nqn_rules(date in "[0-9]{4}-[0-9]{2}", labels in proptest::collection::vec("[a-z][a-z0-9-]{0,10}[a-z0-9]", 1..4), name in "[^\u{0}]{1,40}") {
        let nqn = format!("nqn.{date}.{}:{name}", labels.join("."));
        if nqn.len() <= nqn::NQN_MAX_LEN {
            prop_assert_eq!(nqn::validate(&nqn), Ok(nqn::NqnKind::Named));
            let field = NqnField::new(&nqn).unwrap();
            prop_assert_eq!(field.as_str(), Some(nqn.as_str()));
        } else {
            prop_assert!(nqn::validate(&nqn).is_err());
        }
    }
}
