//! The transport seam: what the controller and the qpairs need from a transport, as one enum
//! ([`Transport`]) whose variants hold the transport-specific code (`tcp/`). NVMe/TCP is the one
//! variant today; the PCIe driver (keel-nvme-pcie) becomes the second: its admin setup fills an
//! [`AdminSetup`] with a [`QueueLink::Pcie`]-style link, its I/O queues another link variant,
//! and nothing above this module changes.

use std::time::Instant;

use keel_nvme_proto::identify::IdentifyNamespace;
use uuid::Uuid;

use crate::opts::{AttachOpts, TrType};
use crate::tcp;
use crate::NvmeError;

/// A transport, chosen from the attach's `trtype`. Immutable; any thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// NVMe over TCP (`tcp/`).
    Tcp,
}

impl Transport {
    /// The fabrics transport for `trtype`; `Unsupported` for PCIe, whose controllers are not
    /// fabrics controllers (the module attaches them through [`crate::pcie`]).
    pub fn for_type(trtype: TrType) -> Result<Transport, NvmeError> {
        match trtype {
            TrType::Tcp => Ok(Transport::Tcp),
            TrType::Pcie => Err(NvmeError::Unsupported(
                "trtype PCIe controllers are attached by the PCIe transport, not a fabrics one".into(),
            )),
        }
    }

    /// Connects and enables the admin queue and reads what the controller is. Blocking, with
    /// `deadline`: helper threads only.
    pub(crate) fn connect_admin(&self, opts: &AttachOpts, deadline: Instant) -> Result<AdminSetup, NvmeError> {
        match self {
            Transport::Tcp => tcp::setup::connect_admin(opts, deadline),
        }
    }

    /// Connects I/O queue `qid` of controller `cntlid`. Blocking: helper threads only.
    pub(crate) fn connect_io(
        &self,
        opts: &AttachOpts,
        cntlid: u16,
        qid: u16,
        deadline: Instant,
    ) -> Result<QueueLink, NvmeError> {
        match self {
            Transport::Tcp => {
                tcp::setup::connect_io(opts, cntlid, qid, tcp::qpair::TX_BYTES, deadline).map(QueueLink::Tcp)
            }
        }
    }
}

/// A connected queue of some transport, on its way to the poller that will own it. `Send`.
pub(crate) enum QueueLink {
    /// An NVMe/TCP connection.
    Tcp(tcp::conn::Conn),
}

/// A namespace as Identify described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsInfo {
    /// Namespace id.
    pub nsid: u32,
    /// Logical block size.
    pub block_size: u32,
    /// Size in blocks (NSZE).
    pub num_blocks: u64,
    /// The UUID from the namespace id descriptors, if the controller gave one.
    pub uuid: Option<Uuid>,
}

impl NsInfo {
    /// From Identify Namespace (`ns`) and the descriptors' UUID.
    pub(crate) fn new(nsid: u32, ns: &IdentifyNamespace, uuid: Option<Uuid>) -> Result<NsInfo, NvmeError> {
        Ok(NsInfo {
            nsid,
            block_size: ns.block_size_bytes()?,
            num_blocks: ns.nsze,
            uuid,
        })
    }
}

/// What an admin connect produced: the live admin queue and the controller's facts.
pub(crate) struct AdminSetup {
    /// The admin queue's connection (transport-specific).
    pub conn: tcp::conn::Conn,
    /// The next admin CID to use.
    pub next_cid: u16,
    /// Controller id.
    pub cntlid: u16,
    /// I/O queues granted.
    pub io_queues: u32,
    /// Whether namespace-attribute notices were enabled.
    pub aer_enabled: bool,
    /// In-capsule data bytes of I/O queues.
    pub in_capsule_bytes: u32,
    /// Largest transfer per command.
    pub max_xfer_bytes: u64,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Firmware revision.
    pub firmware: String,
    /// Optional NVM commands supported (ONCS: bit 2 Dataset Management, bit 3 Write Zeroes).
    pub oncs: u16,
    /// Active namespaces.
    pub namespaces: Vec<NsInfo>,
}
