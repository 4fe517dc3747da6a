//! The blocking connect sequences of NVMe/TCP queues, run on helper threads (never on a
//! reactor): the admin queue's (ICReq, Fabrics Connect, CC.EN and CSTS.RDY, Identify, Number of
//! Queues, Async Event Configuration, the active namespaces) and an I/O queue's (ICReq, Connect
//! to the controller id).

use std::time::Instant;

use keel_nvme_proto::identify::{
    decode_active_ns_list, decode_ns_id_descriptors, Cns, IdentifyController, IdentifyNamespace, NsIdDescriptor,
    IDENTIFY_LEN,
};
use keel_nvme_proto::nqn::NqnField;
use keel_nvme_proto::props::{Cap, Cc, Csts, PropertySize};
use keel_nvme_proto::sqe::{
    AdminCommand, AsyncEventConfig, Command, Connect, ConnectData, DataPointer, FabricsCommand, FeatureId, Identify,
    QueueCounts, SetFeatures, SglDescriptor, Sqe, CONNECT_DATA_LEN,
};
use uuid::Uuid;

use super::conn::{wait, Conn};
use crate::opts::AttachOpts;
use crate::transport::{AdminSetup, NsInfo};
use crate::NvmeError;

/// Send buffer of the admin queue.
const ADMIN_TX_BYTES: usize = 16 << 10;
/// Admin queue entries (zero-based 31: 32 entries).
const ADMIN_SQSIZE_0BASED: u16 = 31;
/// The host id sent at Connect.
const HOSTID: [u8; 16] = *b"keel-nvme-host-1";
/// Largest transfer per command Keel asks for, whatever MDTS allows.
pub(crate) const MAX_XFER_BYTES: u64 = 128 << 10;

/// Numbers admin commands of one setup.
struct Admin {
    conn: Conn,
    cid: u16,
    deadline: Instant,
}

impl Admin {
    fn exec(&mut self, cmd: Command, write: &[u8], read: &mut [u8], what: &'static str) -> Result<u32, NvmeError> {
        let dp = if write.is_empty() {
            DataPointer::NONE_TCP
        } else {
            DataPointer::Sgl(SglDescriptor::in_capsule(write.len() as u32))
        };
        let sqe: Sqe = cmd.to_sqe(0, dp)?;
        self.cid = self.cid.wrapping_add(1);
        let c = self
            .conn
            .exec_blocking(sqe, self.cid, write, read, what, self.deadline)?;
        if !c.status.is_success() {
            return Err(NvmeError::Status { what, status: c.status });
        }
        Ok(c.dw0)
    }

    fn prop_get(&mut self, offset: u32, size: PropertySize, what: &'static str) -> Result<u64, NvmeError> {
        let cmd = Command::Fabrics(FabricsCommand::PropertyGet { size, offset });
        let sqe = cmd.to_sqe(0, DataPointer::NONE_TCP)?;
        self.cid = self.cid.wrapping_add(1);
        let c = self
            .conn
            .exec_blocking(sqe, self.cid, &[], &mut [], what, self.deadline)?;
        if !c.status.is_success() {
            return Err(NvmeError::Status { what, status: c.status });
        }
        Ok(u64::from(c.dw0) | u64::from(c.dw1) << 32)
    }

    fn identify(&mut self, cns: Cns, nsid: u32, what: &'static str) -> Result<Vec<u8>, NvmeError> {
        let mut page = vec![0u8; IDENTIFY_LEN];
        self.exec(
            Command::Admin(AdminCommand::Identify(Identify {
                nsid,
                cns,
                cntid: 0,
                csi: 0,
            })),
            &[],
            &mut page,
            what,
        )?;
        Ok(page)
    }
}

/// Fabrics Connect of queue `qid` on `conn`: the controller id it answers.
fn fabrics_connect(
    conn: &mut Conn,
    opts: &AttachOpts,
    qid: u16,
    cntlid: u16,
    sqsize_0based: u16,
    kato_ms: u32,
    deadline: Instant,
) -> Result<u16, NvmeError> {
    let mut data = [0u8; CONNECT_DATA_LEN];
    ConnectData {
        hostid: HOSTID,
        cntlid,
        subnqn: NqnField::new_unchecked_format(opts.trid.subnqn.as_bytes())?,
        hostnqn: NqnField::new_unchecked_format(opts.hostnqn.as_bytes())?,
    }
    .encode(&mut data)?;
    let cmd = Command::Fabrics(FabricsCommand::Connect(Connect {
        recfmt: 0,
        qid,
        sqsize_0based,
        cattr: 0,
        kato_ms,
    }));
    let sqe = cmd.to_sqe(0, DataPointer::Sgl(SglDescriptor::in_capsule(CONNECT_DATA_LEN as u32)))?;
    let c = conn.exec_blocking(sqe, 0, &data, &mut [], "Fabrics Connect", deadline)?;
    if !c.status.is_success() {
        return Err(NvmeError::Status {
            what: "Fabrics Connect",
            status: c.status,
        });
    }
    Ok(c.dw0 as u16)
}

/// The admin queue's whole connect sequence; see the module doc.
pub(crate) fn connect_admin(opts: &AttachOpts, deadline: Instant) -> Result<AdminSetup, NvmeError> {
    let addr = opts.trid.socket_addr()?;
    let mut conn = Conn::connect(addr, opts.hdgst, opts.ddgst, ADMIN_TX_BYTES, deadline)?;
    let cntlid = fabrics_connect(
        &mut conn,
        opts,
        0,
        0xFFFF,
        ADMIN_SQSIZE_0BASED,
        opts.keep_alive_timeout_ms,
        deadline,
    )?;
    let mut a = Admin { conn, cid: 0, deadline };
    let cap = Cap::from_bits(a.prop_get(0x00, PropertySize::Eight, "Property Get CAP")?);
    let cc = Cc {
        iosqes: 6,
        iocqes: 4,
        ..Cc::default()
    };
    let set_cc = |a: &mut Admin, cc: Cc| {
        a.exec(
            Command::Fabrics(FabricsCommand::PropertySet {
                size: PropertySize::Four,
                offset: 0x14,
                value: u64::from(cc.to_bits()),
            }),
            &[],
            &mut [],
            "Property Set CC",
        )
    };
    set_cc(&mut a, cc)?;
    set_cc(&mut a, Cc { enable: true, ..cc })?;
    loop {
        let csts = Csts::from_bits(a.prop_get(0x1C, PropertySize::Four, "Property Get CSTS")? as u32);
        if csts.fatal {
            return Err(NvmeError::Sequence("controller fatal status (CSTS.CFS) after enable"));
        }
        if csts.ready {
            break;
        }
        wait(deadline, "CSTS.RDY")?;
    }
    let ctrl = IdentifyController::decode(&a.identify(Cns::CONTROLLER, 0, "Identify Controller")?)?;
    let want = QueueCounts {
        nsq_0based: (opts.num_io_queues.min(0xFFFF) - 1) as u16,
        ncq_0based: (opts.num_io_queues.min(0xFFFF) - 1) as u16,
    };
    let got = QueueCounts::from_dword(a.exec(
        Command::Admin(AdminCommand::SetFeatures(SetFeatures {
            nsid: 0,
            fid: FeatureId::NUMBER_OF_QUEUES,
            save: false,
            value: want.to_dword(),
        })),
        &[],
        &mut [],
        "Set Features Number of Queues",
    )?);
    let io_queues = u32::from(got.nsq_0based.min(got.ncq_0based)) + 1;
    let aer = a
        .exec(
            Command::Admin(AdminCommand::SetFeatures(SetFeatures {
                nsid: 0,
                fid: FeatureId::ASYNC_EVENT_CONFIG,
                save: false,
                value: AsyncEventConfig::NS_ATTRIBUTE,
            })),
            &[],
            &mut [],
            "Set Features Async Event Configuration",
        )
        .is_ok();
    let list = a.identify(Cns::ACTIVE_NS_LIST, 0, "Identify Active Namespace List")?;
    let nsids: Vec<u32> = decode_active_ns_list(&list)?.collect();
    let mut namespaces = Vec::new();
    for nsid in nsids {
        if let Some(ns) = identify_ns(&mut a, nsid)? {
            namespaces.push(ns);
        }
    }
    let min_page = 4096u64 << cap.mpsmin;
    let max_xfer_bytes = ctrl
        .max_transfer_bytes(min_page)
        .unwrap_or(u64::MAX)
        .min(MAX_XFER_BYTES);
    Ok(AdminSetup {
        conn: a.conn,
        next_cid: a.cid.wrapping_add(1),
        cntlid,
        io_queues,
        aer_enabled: aer,
        in_capsule_bytes: (ctrl.in_capsule_data_bytes().min(u64::from(u32::MAX)) as u32).min(8192),
        max_xfer_bytes: max_xfer_bytes.max(4096),
        serial: String::from_utf8_lossy(ctrl.sn.trimmed()).into_owned(),
        model: String::from_utf8_lossy(ctrl.mn.trimmed()).into_owned(),
        firmware: String::from_utf8_lossy(ctrl.fr.trimmed()).into_owned(),
        oncs: ctrl.oncs,
        namespaces,
    })
}

/// Identify Namespace and its id descriptors; `None` for an inactive namespace (NSZE 0).
fn identify_ns(a: &mut Admin, nsid: u32) -> Result<Option<NsInfo>, NvmeError> {
    let ns = IdentifyNamespace::decode(&a.identify(Cns::NAMESPACE, nsid, "Identify Namespace")?)?;
    if ns.nsze == 0 {
        return Ok(None);
    }
    let uuid = a
        .identify(Cns::NS_ID_DESCRIPTORS, nsid, "Identify Namespace Id Descriptors")
        .ok()
        .and_then(|page| uuid_of(&page));
    Ok(Some(NsInfo::new(nsid, &ns, uuid)?))
}

/// The UUID among a namespace's id descriptors.
pub(crate) fn uuid_of(page: &[u8]) -> Option<Uuid> {
    decode_ns_id_descriptors(page)
        .map_while(Result::ok)
        .find_map(|d| match d {
            NsIdDescriptor::Uuid(b) => Some(Uuid::from_bytes(b)),
            _ => None,
        })
}

/// An I/O queue's connect sequence: the connection, ready for the poller that will own it.
pub(crate) fn connect_io(
    opts: &AttachOpts,
    cntlid: u16,
    qid: u16,
    tx_bytes: usize,
    deadline: Instant,
) -> Result<Conn, NvmeError> {
    let addr = opts.trid.socket_addr()?;
    let mut conn = Conn::connect(addr, opts.hdgst, opts.ddgst, tx_bytes, deadline)?;
    let got = fabrics_connect(&mut conn, opts, qid, cntlid, opts.io_queue_depth - 1, 0, deadline)?;
    if got != cntlid {
        return Err(NvmeError::Sequence("I/O Connect answered another controller id"));
    }
    Ok(conn)
}
