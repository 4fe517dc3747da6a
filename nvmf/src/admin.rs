//! The admin command set's data pages, built on demand into the caller's buffer: Identify
//! (controller, namespace, active namespace list, namespace id descriptors), log pages (error,
//! SMART, firmware slot, changed namespaces, discovery) and the fabrics properties. Called by an
//! admin qpair on its reactor; the buffer is the command's pool buffer, owned by its slot.

use keel_nvme_proto::cqe::{Status, StatusCode};
use keel_nvme_proto::identify::{
    encode_active_ns_list, encode_ns_id_descriptors, Cns, IdentifyController, IdentifyNamespace, LbaFormat,
    NsIdDescriptor, IDENTIFY_LEN,
};
use keel_nvme_proto::log::{
    encode_changed_ns_list, DiscoveryEntry, DiscoveryLogHeader, LogPageId, DISCOVERY_RECORD_LEN, SMART_LEN,
};
use keel_nvme_proto::nqn::{FixedText, NqnField};
use keel_nvme_proto::props::{Cap, Property, Vs};
use keel_nvme_proto::sqe::{GetLogPage, Identify};

use crate::config::{ListenAddress, TransportOpts};
use crate::ctrlr::Controller;
use crate::target::NvmfTarget;

/// The firmware revision Identify reports.
pub const FIRMWARE_REVISION: &str = "keel0.1";

/// KAS: keep-alive granularity in 100 ms units.
const KAS_100MS: u16 = 10;

/// CAP as a fabrics controller reports it: MQES from the transport's queue depth, contiguous
/// queues, a 15 s enable timeout, the NVM command set.
pub fn cap(opts: &TransportOpts) -> u64 {
    Cap {
        mqes_0based: opts.max_queue_depth - 1,
        cqr: true,
        timeout_500ms: 30,
        css: Cap::CSS_NVM,
        ..Cap::default()
    }
    .to_bits()
}

/// Property Get: the value of `offset`, or `Err` with the status for a property a fabrics
/// controller does not have.
pub fn property_get(ctrl: &Controller, opts: &TransportOpts, offset: u32) -> Result<u64, Status> {
    let prop = Property::from_offset(offset).map_err(|_| StatusCode::INVALID_FIELD.dnr())?;
    let regs = ctrl.regs();
    Ok(match prop {
        Property::Cap => cap(opts),
        Property::Vs => u64::from(Vs::V1_3_0.to_bits()),
        Property::Cc => u64::from(regs.cc.to_bits()),
        Property::Csts => u64::from(regs.csts.to_bits()),
        _ => return Err(StatusCode::INVALID_FIELD.dnr()),
    })
}

/// Identify into `out` (zeroed by the caller, at least 4096 bytes or the transfer's length).
pub fn identify(ctrl: &Controller, opts: &TransportOpts, id: &Identify, out: &mut [u8]) -> Result<(), Status> {
    let s = &ctrl.subsys;
    let mut page = [0u8; IDENTIFY_LEN];
    let invalid_ns = StatusCode::INVALID_NAMESPACE_OR_FORMAT.dnr();
    let max_ns = s.opts().max_namespaces;
    match id.cns {
        Cns::CONTROLLER => {
            identify_controller(ctrl, opts)
                .encode(&mut page)
                .map_err(|_| StatusCode::INTERNAL_ERROR.dnr())?;
        }
        _ if s.discovery => return Err(StatusCode::INVALID_FIELD.dnr()),
        Cns::NAMESPACE => {
            if id.nsid == 0 || (id.nsid > max_ns && id.nsid != u32::MAX) {
                return Err(invalid_ns);
            }
            // An inactive NSID within range reads as zeros.
            if let Some(ns) = s.namespace(id.nsid) {
                let mut lbaf = [LbaFormat::default(); keel_nvme_proto::identify::LBA_FORMATS];
                lbaf[0] = LbaFormat {
                    ms: 0,
                    lbads: ns.block_size.trailing_zeros() as u8,
                    rp: 0,
                };
                let idns = IdentifyNamespace {
                    nsze: ns.num_blocks,
                    ncap: ns.num_blocks,
                    nuse: ns.num_blocks,
                    nmic: 1,
                    nguid: ns.nguid,
                    eui64: ns.eui64.unwrap_or([0; 8]),
                    lbaf,
                    ..IdentifyNamespace::default()
                };
                idns.encode(&mut page).map_err(|_| StatusCode::INTERNAL_ERROR.dnr())?;
            }
        }
        Cns::ACTIVE_NS_LIST => {
            if id.nsid >= 0xFFFF_FFFE {
                return Err(invalid_ns);
            }
            let list: Vec<u32> = s.namespaces().iter().map(|n| n.nsid).filter(|n| *n > id.nsid).collect();
            encode_active_ns_list(list, &mut page).map_err(|_| StatusCode::INTERNAL_ERROR.dnr())?;
        }
        Cns::NS_ID_DESCRIPTORS => {
            let ns = s.namespace(id.nsid).ok_or(invalid_ns)?;
            let mut descs = Vec::with_capacity(3);
            if let Some(e) = ns.eui64 {
                descs.push(NsIdDescriptor::Eui64(e));
            }
            descs.push(NsIdDescriptor::Nguid(ns.nguid));
            descs.push(NsIdDescriptor::Uuid(*ns.uuid.as_bytes()));
            encode_ns_id_descriptors(&descs, &mut page).map_err(|_| StatusCode::INTERNAL_ERROR.dnr())?;
        }
        _ => return Err(StatusCode::INVALID_FIELD.dnr()),
    }
    let n = out.len().min(IDENTIFY_LEN);
    out[..n].copy_from_slice(&page[..n]);
    Ok(())
}

/// Identify Controller for `ctrl` (nvme-tcp.md §15: what the Linux host checks).
pub fn identify_controller(ctrl: &Controller, opts: &TransportOpts) -> IdentifyController {
    let s = &ctrl.subsys;
    let o = s.opts();
    let mut id = IdentifyController {
        sn: FixedText::space_padded(&o.serial_number).unwrap_or_default(),
        mn: FixedText::space_padded(&o.model_number).unwrap_or_default(),
        fr: FixedText::space_padded(FIRMWARE_REVISION).unwrap_or_default(),
        cntlid: ctrl.cntlid,
        ver: Vs::V1_3_0.to_bits(),
        mdts: opts.mdts(),
        acl: 3,
        aerl: 3,
        frmw: 1 | 1 << 1,
        lpa: 1 << 2,
        kas: KAS_100MS,
        sqes: 0x66,
        cqes: 0x44,
        maxcmd: opts.max_queue_depth,
        sgls: 0x0010_0001,
        subnqn: NqnField::new(&s.nqn).unwrap_or_default(),
        msdbd: 1,
        ..IdentifyController::default()
    };
    if s.discovery {
        id.cntrltype = 2;
        id.oaes = 1 << 31;
    } else {
        id.cntrltype = 1;
        id.cmic = 1 << 1;
        id.oaes = 1 << 8;
        id.nn = o.max_namespaces;
        id.mnan = o.max_namespaces;
        id.oncs = 1 << 2 | 1 << 3;
        id.vwc = 1;
        id.ioccsz = (opts.in_capsule_data_size + 64) / 16;
        id.iorcsz = 1;
    }
    id
}

/// Get Log Page into `out` (zeroed by the caller; `out.len()` is the transfer length).
pub fn log_page(
    target: &NvmfTarget,
    ctrl: &Controller,
    opts: &TransportOpts,
    g: &GetLogPage,
    out: &mut [u8],
) -> Result<(), Status> {
    let offset = usize::try_from(g.offset_bytes).map_err(|_| StatusCode::INVALID_FIELD.dnr())?;
    if !g.offset_bytes.is_multiple_of(4) {
        return Err(StatusCode::INVALID_FIELD.dnr());
    }
    let page: Vec<u8> = match g.lid {
        LogPageId::ERROR => vec![0; 64],
        LogPageId::SMART => vec![0; SMART_LEN],
        LogPageId::FIRMWARE_SLOT => {
            let mut p = vec![0u8; 512];
            p[0] = 1;
            let fr = FIRMWARE_REVISION.as_bytes();
            p[8..8 + fr.len()].copy_from_slice(fr);
            p
        }
        LogPageId::CHANGED_NS_LIST if !ctrl.subsys.discovery => {
            let mut p = vec![0u8; keel_nvme_proto::log::CHANGED_NS_LIST_LEN];
            let changed = ctrl.take_changed_ns();
            encode_changed_ns_list(&changed, &mut p).map_err(|_| StatusCode::INTERNAL_ERROR.dnr())?;
            p
        }
        LogPageId::DISCOVERY if ctrl.subsys.discovery => discovery_log(target, ctrl, opts),
        _ => return Err(StatusCode::INVALID_LOG_PAGE.dnr()),
    };
    if offset < page.len() {
        let n = (page.len() - offset).min(out.len());
        out[..n].copy_from_slice(&page[offset..offset + n]);
    }
    Ok(())
}

/// The discovery log page for the host of `ctrl`: one record per listener of every subsystem
/// it may connect to (the discovery subsystem's own listeners as "current discovery
/// subsystem" records).
fn discovery_log(target: &NvmfTarget, ctrl: &Controller, opts: &TransportOpts) -> Vec<u8> {
    let (genctr, recs) = target.discovery_view(&ctrl.hostnqn);
    let mut out = vec![0u8; DISCOVERY_RECORD_LEN * (1 + recs.len())];
    let hdr = DiscoveryLogHeader {
        genctr,
        numrec: recs.len() as u64,
        recfmt: 0,
    };
    out[..DISCOVERY_RECORD_LEN].copy_from_slice(&hdr.to_bytes());
    for (i, (nqn, l, is_discovery)) in recs.iter().enumerate() {
        let e = entry(nqn, l, *is_discovery, &ctrl.local_ip, opts, i as u16);
        let at = DISCOVERY_RECORD_LEN * (i + 1);
        out[at..at + DISCOVERY_RECORD_LEN].copy_from_slice(&e.to_bytes());
    }
    out
}

fn entry(
    nqn: &str,
    l: &ListenAddress,
    discovery: bool,
    local_ip: &str,
    opts: &TransportOpts,
    port: u16,
) -> DiscoveryEntry {
    let wildcard = l.traddr == "0.0.0.0" || l.traddr == "::";
    let traddr = if wildcard { local_ip } else { &l.traddr };
    DiscoveryEntry {
        trtype: 3,
        adrfam: if l.adrfam == "IPv6" { 2 } else { 1 },
        subtype: if discovery { 3 } else { 2 },
        treq: 0,
        portid: port,
        cntlid: 0xFFFF,
        asqsz: opts.max_aq_depth,
        eflags: 0,
        trsvcid: FixedText::nul_padded(&l.trsvcid).unwrap_or_default(),
        subnqn: NqnField::new(nqn).unwrap_or_default(),
        traddr: FixedText::nul_padded(traddr).unwrap_or_default(),
        tsas: [0; 256],
    }
}
