//! A controller: the association one host made with one subsystem by its admin Connect, shared
//! (`Arc`) by the admin qpair and the I/O qpairs that joined it (on any cores). What several
//! cores touch is atomic (the failed flag, the keep-alive clock, the pending-event flag) or
//! behind a mutex read only by admin commands (registers, the changed-namespace list).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keel_nvme_proto::props::{Cc, Csts, Shutdown};
use keel_nvme_proto::sqe::AsyncEventConfig;

use crate::config::ListenAddress;
use crate::subsystem::Subsystem;

/// Controller registers of the fabrics property space that change (CC and CSTS).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Regs {
    pub cc: Cc,
    pub csts: Csts,
}

/// See the module doc.
pub struct Controller {
    /// The controller id the admin Connect returned.
    pub cntlid: u16,
    /// Its subsystem.
    pub subsys: Arc<Subsystem>,
    /// The host's NQN.
    pub hostnqn: String,
    /// The host identifier (Connect data).
    pub hostid: [u8; 16],
    /// The listener the admin queue came through.
    pub listen: ListenAddress,
    /// The local address of the admin connection (the discovery log's address for a wildcard
    /// listener).
    pub local_ip: String,
    /// Most I/O queues.
    pub max_io_queues: u16,
    kato_ms: AtomicU32,
    /// reactor ticks of the last Keep Alive (or of the Connect).
    last_keep_alive: AtomicU64,
    regs: Mutex<Regs>,
    aer_config: AtomicU32,
    vwc: AtomicBool,
    aen_pending: AtomicBool,
    changed_ns: Mutex<Vec<u32>>,
    io_qids: Mutex<Vec<u16>>,
    failed: AtomicBool,
}

impl Controller {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cntlid: u16,
        subsys: Arc<Subsystem>,
        hostnqn: String,
        hostid: [u8; 16],
        listen: ListenAddress,
        local_ip: String,
        max_io_queues: u16,
        kato_ms: u32,
        now_ticks: u64,
    ) -> Controller {
        Controller {
            cntlid,
            subsys,
            hostnqn,
            hostid,
            listen,
            local_ip,
            max_io_queues,
            kato_ms: AtomicU32::new(kato_ms),
            last_keep_alive: AtomicU64::new(now_ticks),
            regs: Mutex::new(Regs::default()),
            aer_config: AtomicU32::new(0),
            vwc: AtomicBool::new(true),
            aen_pending: AtomicBool::new(false),
            changed_ns: Mutex::new(Vec::new()),
            io_qids: Mutex::new(Vec::new()),
            failed: AtomicBool::new(false),
        }
    }

    /// The same controller under id `cntlid` (the target picks the id after building it).
    pub(crate) fn with_cntlid(self, cntlid: u16) -> Controller {
        Controller { cntlid, ..self }
    }

    /// Ends the association: every qpair of the controller closes at its next turn. Any core.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// Whether the association ended. One atomic load; qpairs check it every turn.
    #[inline]
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// KATO in milliseconds (0: disabled).
    pub fn kato_ms(&self) -> u32 {
        self.kato_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_kato_ms(&self, ms: u32) {
        self.kato_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn keep_alive(&self, now_ticks: u64) {
        self.last_keep_alive.store(now_ticks, Ordering::Relaxed);
    }

    pub(crate) fn last_keep_alive(&self) -> u64 {
        self.last_keep_alive.load(Ordering::Relaxed)
    }

    pub(crate) fn regs(&self) -> Regs {
        *self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a CC write: RDY follows EN, a shutdown request completes at once (no cache to
    /// write back), clearing EN resets the controller state the host set up.
    pub(crate) fn write_cc(&self, cc: Cc) {
        let mut r = self.regs.lock().unwrap_or_else(|e| e.into_inner());
        r.cc = cc;
        r.csts.ready = cc.enable;
        r.csts.shst = match cc.shn {
            Shutdown::None => Shutdown::None,
            _ => Shutdown::COMPLETE,
        };
    }

    pub(crate) fn aer_config(&self) -> u32 {
        self.aer_config.load(Ordering::Relaxed)
    }

    pub(crate) fn set_aer_config(&self, v: u32) {
        self.aer_config.store(v, Ordering::Relaxed);
    }

    pub(crate) fn vwc(&self) -> bool {
        self.vwc.load(Ordering::Relaxed)
    }

    pub(crate) fn set_vwc(&self, on: bool) {
        self.vwc.store(on, Ordering::Relaxed);
    }

    /// A namespace was added or removed: record it for the Changed Namespace List and raise a
    /// notice if the host enabled namespace attribute notices. Main core.
    pub(crate) fn ns_changed(&self, nsid: u32) {
        if self.aer_config() & AsyncEventConfig::NS_ATTRIBUTE == 0 {
            return;
        }
        let mut c = self.changed_ns.lock().unwrap_or_else(|e| e.into_inner());
        if !c.contains(&nsid) {
            c.push(nsid);
        }
        drop(c);
        self.aen_pending.store(true, Ordering::Release);
    }

    /// Takes the pending notice, if any (the admin qpair, when it holds an AER).
    pub(crate) fn take_aen(&self) -> bool {
        self.aen_pending.load(Ordering::Relaxed) && self.aen_pending.swap(false, Ordering::AcqRel)
    }

    /// The changed namespaces since the last read (the log page clears it).
    pub(crate) fn take_changed_ns(&self) -> Vec<u32> {
        std::mem::take(&mut *self.changed_ns.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Registers I/O queue `qid`; false if it is out of range or already connected.
    pub(crate) fn add_io_qid(&self, qid: u16) -> bool {
        let mut q = self.io_qids.lock().unwrap_or_else(|e| e.into_inner());
        if qid == 0 || qid > self.max_io_queues || q.contains(&qid) {
            return false;
        }
        q.push(qid);
        true
    }

    pub(crate) fn remove_io_qid(&self, qid: u16) {
        self.io_qids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|q| *q != qid);
    }

    /// I/O queues connected.
    pub fn num_io_qpairs(&self) -> usize {
        self.io_qids.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
