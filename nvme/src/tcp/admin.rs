//! The NVMe/TCP admin queue once the controller is live, polled by the main reactor: several
//! commands may be out at once (Keep Alive, the Asynchronous Event Request, the reads a
//! namespace notice calls for), each answered as an [`AdminEvent`]. Control path: admin
//! commands are rare and may allocate their pages.

use keel_nvme_proto::cqe::Status;
use keel_nvme_proto::identify::{Cns, IDENTIFY_LEN};
use keel_nvme_proto::log::LogPageId;
use keel_nvme_proto::sqe::{AdminCommand, Command, DataPointer, GetLogPage, Identify, SglDescriptor};
use keel_nvme_proto::tcp::{CapsuleCmd, Event, PduHeader};

use super::conn::Conn;
use crate::NvmeError;

/// What an admin command was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminOp {
    /// Keep Alive.
    KeepAlive,
    /// Asynchronous Event Request.
    Aer,
    /// Get Log Page, changed namespace list (clears the notice).
    ChangedNsLog,
    /// Identify, active namespace list.
    ActiveNsList,
    /// Identify, namespace id descriptors of a namespace.
    NsDescs(u32),
    /// Identify Namespace.
    IdentifyNs(u32),
}

/// A completed admin command.
pub(crate) struct AdminEvent {
    /// What it was.
    pub op: AdminOp,
    /// Its status.
    pub status: Status,
    /// DW0 of the completion.
    pub dw0: u32,
    /// The data it read.
    pub data: Vec<u8>,
}

struct Pending {
    cid: u16,
    op: AdminOp,
    data: Vec<u8>,
}

/// See the module doc. Owned by the controller's state on the main reactor.
pub(crate) struct AdminQueue {
    conn: Conn,
    next_cid: u16,
    pending: Vec<Pending>,
    /// (CID, DATAO) of the C2HData being received.
    rx: Option<(u16, u32)>,
}

impl AdminQueue {
    /// The admin queue on `conn`, numbering commands from `next_cid`.
    pub(crate) fn new(conn: Conn, next_cid: u16) -> AdminQueue {
        AdminQueue {
            conn,
            next_cid,
            pending: Vec::with_capacity(16),
            rx: None,
        }
    }

    /// Whether a command for `op` is out.
    pub(crate) fn outstanding(&self, op: AdminOp) -> bool {
        self.pending.iter().any(|p| p.op == op)
    }

    /// Queues the command for `op` (sent at the next poll).
    pub(crate) fn submit(&mut self, op: AdminOp) -> Result<(), NvmeError> {
        let identify = |cns, nsid| {
            Command::Admin(AdminCommand::Identify(Identify {
                nsid,
                cns,
                cntid: 0,
                csi: 0,
            }))
        };
        let (cmd, len) = match op {
            AdminOp::KeepAlive => (Command::Admin(AdminCommand::KeepAlive), 0),
            AdminOp::Aer => (Command::Admin(AdminCommand::AsyncEventRequest), 0),
            AdminOp::ChangedNsLog => (
                Command::Admin(AdminCommand::GetLogPage(GetLogPage::new(
                    0xFFFF_FFFF,
                    LogPageId::CHANGED_NS_LIST,
                    0,
                    IDENTIFY_LEN as u64,
                )?)),
                IDENTIFY_LEN,
            ),
            AdminOp::ActiveNsList => (identify(Cns::ACTIVE_NS_LIST, 0), IDENTIFY_LEN),
            AdminOp::NsDescs(n) => (identify(Cns::NS_ID_DESCRIPTORS, n), IDENTIFY_LEN),
            AdminOp::IdentifyNs(n) => (identify(Cns::NAMESPACE, n), IDENTIFY_LEN),
        };
        let mut cid = self.next_cid;
        while self.pending.iter().any(|p| p.cid == cid) {
            cid = cid.wrapping_add(1);
        }
        self.next_cid = cid.wrapping_add(1);
        let sqe = cmd.to_sqe(cid, DataPointer::Sgl(SglDescriptor::transport(len as u32)))?;
        if !self.conn.push(&PduHeader::CapsuleCmd(CapsuleCmd { sqe }), 0, |_| {})? {
            return Err(NvmeError::Sequence("admin send buffer full"));
        }
        self.pending.push(Pending {
            cid,
            op,
            data: vec![0u8; len],
        });
        Ok(())
    }

    /// Sends what is queued and collects completions into `out`. `Err`: the connection is
    /// unusable (closed, malformed PDU, termination request).
    pub(crate) fn poll(&mut self, out: &mut Vec<AdminEvent>) -> Result<bool, NvmeError> {
        let mut did = self.conn.flush()?;
        let pending = &mut self.pending;
        let rx = &mut self.rx;
        did |= self.conn.recv(4, |ev| {
            match ev {
                Event::Header { pdu, .. } => match pdu {
                    PduHeader::CapsuleResp(r) => {
                        let Some(i) = pending.iter().position(|p| p.cid == r.cqe.cid) else {
                            return Err(NvmeError::Sequence("admin completion for an unknown command"));
                        };
                        let p = pending.swap_remove(i);
                        out.push(AdminEvent {
                            op: p.op,
                            status: r.cqe.status,
                            dw0: r.cqe.dw0,
                            data: p.data,
                        });
                    }
                    PduHeader::C2HData(d) => {
                        let Some(p) = pending.iter().find(|p| p.cid == d.cccid) else {
                            return Err(NvmeError::Sequence("admin data for an unknown command"));
                        };
                        if u64::from(d.datao) + u64::from(d.datal) > p.data.len() as u64 {
                            return Err(NvmeError::Sequence("admin data beyond the command's buffer"));
                        }
                        *rx = Some((d.cccid, d.datao));
                    }
                    PduHeader::C2HTermReq(t) => {
                        return Err(NvmeError::Closed(format!(" (termination request, FES {:#x})", t.fes.0)))
                    }
                    _ => return Err(NvmeError::Sequence("unexpected PDU on the admin queue")),
                },
                Event::Data { offset, bytes } => {
                    let Some((cid, datao)) = *rx else {
                        return Err(NvmeError::Sequence("data without a C2HData header"));
                    };
                    if let Some(p) = pending.iter_mut().find(|p| p.cid == cid) {
                        let at = datao as usize + offset as usize;
                        p.data[at..at + bytes.len()].copy_from_slice(bytes);
                    }
                }
                Event::End { data_digest } => {
                    *rx = None;
                    data_digest?;
                }
            }
            Ok(())
        })?;
        did |= self.conn.flush()?;
        Ok(did)
    }
}
