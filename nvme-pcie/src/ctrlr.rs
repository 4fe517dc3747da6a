//! The controller: bring-up, the admin queue, Identify, I/O queue-pair creation and deletion,
//! Abort, health, reset and shutdown (nvme-pcie.md §3, §5, §10).
//!
//! # Design
//! [`Controller`] owns the register access (`Arc<R>`), the DMA mapper, the admin queue pair and
//! one scratch page for admin data (Identify pages). Admin commands are synchronous: submit,
//! then poll the admin CQ until the completion or the admin timeout — they run at attach,
//! queue-pair creation, reset and detach, never per I/O. Its state is one enum
//! ([`CtrlrState`]) moved by each operation.
//!
//! I/O queue pairs are created here (Create I/O CQ, then SQ, on the device) and handed to the
//! caller, who moves each to the reactor that polls it; the controller only keeps which queue
//! ids are in use. A reset ([`Controller::reset`]) disables and re-enables the controller, which
//! deletes every I/O queue on the device; each owner then hands its in-flight requests back
//! ([`QueuePair::fail_outstanding`]) and asks [`Controller::restore_io_qpair`] to create its
//! queues again under the same id.
//!
//! Dropping an enabled controller writes the shutdown notification (CC.SHN = normal) and waits
//! for CSTS.SHST = complete, as [`Controller::shutdown`] does explicitly.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_nvme_proto::cqe::{Cqe, Status, StatusCode};
use keel_nvme_proto::identify::{decode_active_ns_list, Cns, IdentifyController, IdentifyNamespace, IDENTIFY_LEN};
use keel_nvme_proto::props::{Aqa, Cap, Cc, Csts, Shutdown, Vs};
use keel_nvme_proto::sqe::{
    AdminCommand, Command, CreateIoCq, CreateIoSq, DataPointer, FeatureId, Identify, QueueCounts, SetFeatures,
};

use crate::dma::{DmaMapper, DmaMem};
use crate::error::PcieError;
use crate::prp;
use crate::qpair::{DataBuf, QueueId, QueuePair, Submitted, MEMORY_PAGE_BYTES};
use crate::regs::{off, Registers};

/// Options of [`Controller::attach`] (SPDK's controller options, the part PCIe uses).
#[derive(Debug, Clone)]
pub struct ControllerOpts {
    /// Admin queue entries (2..=4096).
    pub admin_entries: u16,
    /// Entries of each I/O queue; capped at CAP.MQES + 1.
    pub io_entries: u16,
    /// I/O queue pairs to ask for (Set Features Number of Queues).
    pub io_queues: u16,
    /// Bound of one admin command.
    pub admin_timeout: Duration,
}

impl Default for ControllerOpts {
    fn default() -> Self {
        ControllerOpts {
            admin_entries: 32,
            io_entries: 256,
            io_queues: 4,
            admin_timeout: Duration::from_secs(30),
        }
    }
}

/// One active namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace id.
    pub nsid: u32,
    /// Data block size in bytes.
    pub block_size: u32,
    /// Size in blocks (NSZE).
    pub blocks: u64,
    /// DLFEAT: bits 2:0 = 001b means deallocated blocks read as zeroes.
    pub dlfeat: u8,
}

/// Where the controller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlrState {
    /// Enabled, queues may be created and used.
    Enabled,
    /// CSTS.CFS was seen or a reset failed: only [`Controller::reset`] helps.
    Failed,
    /// The device is gone (CSTS all ones): detach.
    Removed,
    /// Shut down (CC.SHN done); nothing more to do.
    ShutDown,
}

/// What [`Controller::health`] saw in CSTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Ready, no fatal status.
    Ok,
    /// CSTS.CFS: reset needed.
    Fatal,
    /// CSTS reads all ones: the device is gone.
    Gone,
    /// Not ready (disabled or shutting down).
    NotReady,
}

/// An NVMe controller over register access `R` (the VFIO BAR or the model). Owned by the
/// module's controller object on one core (the admin core); queue pairs it creates go to
/// reactors.
pub struct Controller<R: Registers> {
    regs: Arc<R>,
    mapper: Arc<dyn DmaMapper>,
    opts: ControllerOpts,
    cap: Cap,
    vs: Vs,
    admin: QueuePair<R, ()>,
    scratch: DmaMem,
    identity: IdentifyController,
    namespaces: Vec<Namespace>,
    io_queues_granted: u16,
    qid_used: Vec<bool>,
    state: CtrlrState,
}

impl<R: Registers> Controller<R> {
    /// Brings the controller up: disable (waiting CAP.TO), program the admin queue, enable,
    /// Identify controller and namespaces, Set Features Number of Queues. Set-up path; blocks
    /// up to CAP.TO × 2 plus the admin commands.
    pub fn attach(regs: Arc<R>, mapper: Arc<dyn DmaMapper>, opts: ControllerOpts) -> Result<Self, PcieError> {
        let cap_bits = regs.read64(off::CAP);
        if cap_bits == u64::MAX {
            return Err(PcieError::DeviceGone);
        }
        let cap = Cap::from_bits(cap_bits);
        let vs = Vs::from_bits(regs.read32(off::VS));
        if cap.mpsmin != 0 {
            return Err(PcieError::Unsupported(format!(
                "the controller's smallest memory page is {} KiB; this driver uses 4 KiB pages",
                4u32 << cap.mpsmin
            )));
        }
        if cap.css & Cap::CSS_NVM == 0 {
            return Err(PcieError::Unsupported(
                "the controller does not support the NVM command set".into(),
            ));
        }
        if !(2..=4096).contains(&opts.admin_entries) || opts.io_entries < 2 || opts.io_queues == 0 {
            return Err(PcieError::Invalid(format!(
                "admin_entries {} (2..=4096), io_entries {} (≥ 2), io_queues {} (≥ 1)",
                opts.admin_entries, opts.io_entries, opts.io_queues
            )));
        }
        let admin = QueuePair::new(regs.clone(), &*mapper, QueueId(0), opts.admin_entries, cap.dstrd)?;
        let scratch = DmaMem::new(&*mapper, IDENTIFY_LEN)?;
        let mut c = Controller {
            regs,
            mapper,
            opts,
            cap,
            vs,
            admin,
            scratch,
            identity: IdentifyController::default(),
            namespaces: Vec::new(),
            io_queues_granted: 0,
            qid_used: Vec::new(),
            state: CtrlrState::Failed,
        };
        c.enable()?;
        c.identify()?;
        c.set_queue_count()?;
        Ok(c)
    }

    fn csts(&self) -> u32 {
        self.regs.read32(off::CSTS)
    }

    fn wait_ready(&self, ready: bool, what: &'static str) -> Result<(), PcieError> {
        let bound = Duration::from_millis(u64::from(self.cap.timeout_ms().max(500)));
        let t0 = Instant::now();
        loop {
            let v = self.csts();
            if v == Csts::DEVICE_GONE {
                return Err(PcieError::DeviceGone);
            }
            let s = Csts::from_bits(v);
            if s.ready == ready {
                return Ok(());
            }
            if ready && s.fatal {
                return Err(PcieError::ControllerFatal);
            }
            if t0.elapsed() > bound {
                return Err(PcieError::Timeout {
                    what,
                    csts: v,
                    waited_ms: t0.elapsed().as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// CC.EN = 0 and wait for RDY = 0 (first waiting for RDY = 1 if EN was just set).
    fn disable(&mut self) -> Result<(), PcieError> {
        let cc = Cc::from_bits(self.regs.read32(off::CC));
        let csts = self.csts();
        if csts == Csts::DEVICE_GONE {
            return Err(PcieError::DeviceGone);
        }
        if cc.enable && !Csts::from_bits(csts).ready && !Csts::from_bits(csts).fatal {
            self.wait_ready(true, "RDY = 1 before disabling")?;
        }
        if cc.enable {
            self.regs.write32(off::CC, Cc { enable: false, ..cc }.to_bits());
        }
        self.wait_ready(false, "RDY = 0 after CC.EN = 0")
    }

    /// Disable, program AQA/ASQ/ACQ over an empty admin queue, enable, wait for RDY.
    fn enable(&mut self) -> Result<(), PcieError> {
        self.disable()?;
        self.admin.fail_outstanding(crate::qpair::Completion::RESET, |(), _| {});
        self.admin.restored();
        let n = self.admin.entries() - 1;
        self.regs.write32(
            off::AQA,
            Aqa {
                asqs_0based: n,
                acqs_0based: n,
            }
            .to_bits(),
        );
        self.regs.write64(off::ASQ, self.admin.sq_iova());
        self.regs.write64(off::ACQ, self.admin.cq_iova());
        let cc = Cc {
            enable: false,
            css: 0,
            mps: 0,
            ams: 0,
            shn: Shutdown::None,
            iosqes: 6,
            iocqes: 4,
            crime: false,
        };
        self.regs.write32(off::CC, cc.to_bits());
        self.regs.write32(off::CC, Cc { enable: true, ..cc }.to_bits());
        self.wait_ready(true, "RDY = 1 after CC.EN = 1")?;
        self.state = CtrlrState::Enabled;
        Ok(())
    }

    /// Runs one admin command synchronously; with `with_data` its data is the scratch page.
    /// Errors: timeout (then the controller needs a reset), a failed status.
    fn admin(&mut self, name: &'static str, cmd: AdminCommand, with_data: bool) -> Result<Cqe, PcieError> {
        let sqe = Command::Admin(cmd).to_sqe(0, DataPointer::NONE_PRP)?;
        let data = with_data.then_some(DataBuf {
            iova: self.scratch.iova,
            len_bytes: IDENTIFY_LEN as u32,
        });
        self.admin_sqe(name, sqe, data)
    }

    fn read_scratch(&self) -> [u8; IDENTIFY_LEN] {
        let mut page = [0u8; IDENTIFY_LEN];
        crate::sys::acquire_fence();
        self.scratch.region.read(0, &mut page);
        page
    }

    fn identify(&mut self) -> Result<(), PcieError> {
        let id = |cns, nsid| {
            AdminCommand::Identify(Identify {
                nsid,
                cns,
                cntid: 0,
                csi: 0,
            })
        };
        self.admin("Identify Controller", id(Cns::CONTROLLER, 0), true)?;
        self.identity = IdentifyController::decode(&self.read_scratch())?;
        self.admin("Identify active namespace list", id(Cns::ACTIVE_NS_LIST, 0), true)?;
        let list = self.read_scratch();
        let nsids: Vec<u32> = decode_active_ns_list(&list)?.collect();
        let mut namespaces = Vec::with_capacity(nsids.len());
        for nsid in nsids {
            self.admin("Identify Namespace", id(Cns::NAMESPACE, nsid), true)?;
            let ns = IdentifyNamespace::decode(&self.read_scratch())?;
            if ns.nsze == 0 {
                continue;
            }
            namespaces.push(Namespace {
                nsid,
                block_size: ns.block_size_bytes()?,
                blocks: ns.nsze,
                dlfeat: ns.dlfeat,
            });
        }
        self.namespaces = namespaces;
        Ok(())
    }

    fn set_queue_count(&mut self) -> Result<(), PcieError> {
        let want = self.opts.io_queues - 1;
        let cqe = self.admin(
            "Set Features (Number of Queues)",
            AdminCommand::SetFeatures(SetFeatures {
                nsid: 0,
                fid: FeatureId::NUMBER_OF_QUEUES,
                save: false,
                value: QueueCounts {
                    nsq_0based: want,
                    ncq_0based: want,
                }
                .to_dword(),
            }),
            false,
        )?;
        let got = QueueCounts::from_dword(cqe.dw0);
        self.io_queues_granted = got.nsq_0based.min(got.ncq_0based).min(want).saturating_add(1);
        self.qid_used = vec![false; usize::from(self.io_queues_granted) + 1];
        self.qid_used[0] = true;
        Ok(())
    }

    /// CAP as read at attach.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// VS as read at attach.
    pub fn version(&self) -> Vs {
        self.vs
    }

    /// Identify Controller as read at attach (or the last reset).
    pub fn identity(&self) -> &IdentifyController {
        &self.identity
    }

    /// The active namespaces with a non-zero size.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }

    /// I/O queue pairs the controller granted (≤ the options' `io_queues`).
    pub fn io_queues_granted(&self) -> u16 {
        self.io_queues_granted
    }

    /// The state.
    pub fn state(&self) -> CtrlrState {
        self.state
    }

    /// Entries of the I/O queues this controller creates: the options', capped at MQES + 1.
    pub fn io_entries(&self) -> u16 {
        self.opts
            .io_entries
            .min(self.cap.mqes_0based.saturating_add(1))
            .min(4096)
    }

    /// Largest transfer of one command in bytes: MDTS, and what one PRP list page describes.
    /// The bdev layer splits larger I/O.
    pub fn max_transfer_bytes(&self) -> u64 {
        let prp_max = prp::max_transfer_bytes(MEMORY_PAGE_BYTES);
        self.identity
            .max_transfer_bytes(MEMORY_PAGE_BYTES)
            .map_or(prp_max, |m| m.min(prp_max))
    }

    /// Reads CSTS: is the controller usable? Called by the admin poller (not per I/O: an MMIO
    /// read is slow) and after a timeout. Moves the state to Failed / Removed as seen.
    pub fn health(&mut self) -> Health {
        let v = self.csts();
        if v == Csts::DEVICE_GONE {
            self.state = CtrlrState::Removed;
            return Health::Gone;
        }
        let s = Csts::from_bits(v);
        if s.fatal {
            self.state = CtrlrState::Failed;
            Health::Fatal
        } else if !s.ready {
            Health::NotReady
        } else {
            Health::Ok
        }
    }

    fn require_enabled(&self) -> Result<(), PcieError> {
        match self.state {
            CtrlrState::Enabled => Ok(()),
            CtrlrState::Failed => Err(PcieError::State("failed (reset it)")),
            CtrlrState::Removed => Err(PcieError::DeviceGone),
            CtrlrState::ShutDown => Err(PcieError::State("shut down")),
        }
    }

    /// Creates an I/O queue pair on the device (Create I/O CQ, then SQ, polled: no interrupts)
    /// with [`Controller::io_entries`] entries, and returns it for a reactor to own. Set-up
    /// path (a reactor's first channel). Errors when every granted queue id is in use.
    pub fn create_io_qpair<T>(&mut self) -> Result<QueuePair<R, T>, PcieError> {
        self.require_enabled()?;
        let Some(qid) = self.qid_used.iter().position(|u| !u) else {
            return Err(PcieError::Unsupported(format!(
                "all {} I/O queue pairs the controller granted are in use",
                self.io_queues_granted
            )));
        };
        let qp = QueuePair::new(
            self.regs.clone(),
            &*self.mapper,
            QueueId(qid as u16),
            self.io_entries(),
            self.cap.dstrd,
        )?;
        self.create_on_device(&qp)?;
        self.qid_used[qid] = true;
        Ok(qp)
    }

    fn create_on_device<T>(&mut self, qp: &QueuePair<R, T>) -> Result<(), PcieError> {
        let qid = qp.qid().0;
        let qsize_0based = qp.entries() - 1;
        self.admin_with_prp1(
            "Create I/O Completion Queue",
            AdminCommand::CreateIoCq(CreateIoCq {
                qid,
                qsize_0based,
                physically_contiguous: true,
                interrupts_enabled: false,
                interrupt_vector: 0,
            }),
            qp.cq_iova(),
        )?;
        let sq = self.admin_with_prp1(
            "Create I/O Submission Queue",
            AdminCommand::CreateIoSq(CreateIoSq {
                qid,
                qsize_0based,
                physically_contiguous: true,
                priority: 0,
                cqid: qid,
                nvm_set_id: 0,
            }),
            qp.sq_iova(),
        );
        if let Err(e) = sq {
            let _ = self.admin("Delete I/O Completion Queue", AdminCommand::DeleteIoCq { qid }, false);
            return Err(e);
        }
        Ok(())
    }

    fn admin_with_prp1(&mut self, name: &'static str, cmd: AdminCommand, prp1: u64) -> Result<Cqe, PcieError> {
        // Queue bases are one contiguous, page-aligned range: PRP1 alone names it.
        let sqe = Command::Admin(cmd).to_sqe(0, DataPointer::Prp { prp1, prp2: 0 })?;
        self.admin_sqe(name, sqe, None)
    }

    fn admin_sqe(
        &mut self,
        name: &'static str,
        sqe: keel_nvme_proto::sqe::Sqe,
        data: Option<DataBuf>,
    ) -> Result<Cqe, PcieError> {
        match self.admin.submit_sqe(sqe, data, ()) {
            Submitted::Accepted => {}
            Submitted::Requeue(()) => return Err(PcieError::State("admin queue full")),
            Submitted::Rejected((), e) => return Err(e),
        }
        let t0 = Instant::now();
        let mut spins = 0u32;
        loop {
            let mut got = None;
            self.admin.poll(1, |(), c| got = Some(c));
            if let Some(c) = got {
                if !c.status.is_success() {
                    return Err(PcieError::Command {
                        command: name,
                        status: c.status,
                    });
                }
                return Ok(Cqe {
                    dw0: c.dw0,
                    status: c.status,
                    ..Cqe::default()
                });
            }
            spins += 1;
            if !spins.is_multiple_of(1024) {
                std::hint::spin_loop();
                continue;
            }
            let v = self.csts();
            if v == Csts::DEVICE_GONE {
                self.state = CtrlrState::Removed;
                return Err(PcieError::DeviceGone);
            }
            if Csts::from_bits(v).fatal {
                self.state = CtrlrState::Failed;
                return Err(PcieError::ControllerFatal);
            }
            if t0.elapsed() > self.opts.admin_timeout {
                self.state = CtrlrState::Failed;
                return Err(PcieError::Timeout {
                    what: name,
                    csts: v,
                    waited_ms: t0.elapsed().as_millis() as u64,
                });
            }
        }
    }

    /// Deletes the pair's queues on the device (SQ, then CQ) and frees its queue id. Commands
    /// still in flight are handed back through `done` with [`crate::qpair::Completion::RESET`]
    /// (deleting an SQ aborts them). Set-up path (a reactor's last channel closed).
    pub fn delete_io_qpair<T>(
        &mut self,
        mut qp: QueuePair<R, T>,
        done: impl FnMut(T, crate::qpair::Completion),
    ) -> Result<(), PcieError> {
        let qid = qp.qid().0;
        let r = if self.state == CtrlrState::Enabled {
            self.admin("Delete I/O Submission Queue", AdminCommand::DeleteIoSq { qid }, false)
                .and_then(|_| self.admin("Delete I/O Completion Queue", AdminCommand::DeleteIoCq { qid }, false))
                .map(|_| ())
        } else {
            Ok(())
        };
        qp.fail_outstanding(crate::qpair::Completion::RESET, done);
        if let Some(u) = self.qid_used.get_mut(usize::from(qid)) {
            *u = false;
        }
        r
    }

    /// Sends Abort for command `cid` of queue `qid` (after [`QueuePair::expired`] named it).
    /// Returns whether the controller says it aborted the command (DW0 bit 0 = 0); the aborted
    /// command then completes on its queue with Abort Requested. `Ok(false)` (QEMU always
    /// answers so) or an error means: reset the controller.
    pub fn abort(&mut self, qid: QueueId, cid: u16) -> Result<bool, PcieError> {
        self.require_enabled()?;
        let cqe = self.admin("Abort", AdminCommand::Abort { sqid: qid.0, cid }, false)?;
        Ok(cqe.dw0 & 1 == 0)
    }

    /// Controller reset: CC.EN = 0 (the device deletes every I/O queue and drops its commands),
    /// then the bring-up again (admin queue, Identify, Number of Queues). Afterwards every queue
    /// pair's owner calls [`Controller::restore_io_qpair`]. Admin path; blocks up to 2 × CAP.TO.
    pub fn reset(&mut self) -> Result<(), PcieError> {
        if self.state == CtrlrState::Removed || self.state == CtrlrState::ShutDown {
            return Err(PcieError::State("removed or shut down: cannot reset"));
        }
        let used = std::mem::take(&mut self.qid_used);
        let r = self
            .enable()
            .and_then(|()| self.identify())
            .and_then(|()| self.set_queue_count());
        if r.is_err() {
            self.state = if self.csts() == Csts::DEVICE_GONE {
                CtrlrState::Removed
            } else {
                CtrlrState::Failed
            };
            self.qid_used = used;
            return r;
        }
        // Queue ids stay reserved for their owners' restore.
        for (i, u) in used.into_iter().enumerate() {
            if let Some(slot) = self.qid_used.get_mut(i) {
                *slot = u;
            }
        }
        Ok(())
    }

    /// After [`Controller::reset`]: hands the pair's in-flight requests back through `done`
    /// with [`crate::qpair::Completion::RESET`] (the caller retries or fails them by policy),
    /// empties its rings and creates its queues on the device again under the same id.
    pub fn restore_io_qpair<T>(
        &mut self,
        qp: &mut QueuePair<R, T>,
        done: impl FnMut(T, crate::qpair::Completion),
    ) -> Result<(), PcieError> {
        qp.fail_outstanding(crate::qpair::Completion::RESET, done);
        self.require_enabled()?;
        if usize::from(qp.qid().0) > usize::from(self.io_queues_granted) {
            qp.mark_failed();
            return Err(PcieError::Unsupported(format!(
                "queue id {} is beyond the {} queues granted after the reset",
                qp.qid().0,
                self.io_queues_granted
            )));
        }
        self.create_on_device(qp)?;
        qp.restored();
        Ok(())
    }

    /// Normal shutdown: CC.SHN = 01b, wait for CSTS.SHST = 10b (bounded by RTD3E, at least 5 s
    /// and at most 60 s, as Linux does), then CC.EN = 0. Detach path. Queue pairs still held by
    /// reactors must not be used afterwards (their submissions would go to a disabled device;
    /// fail them first).
    pub fn shutdown(mut self) -> Result<(), PcieError> {
        self.shutdown_inner()
    }

    fn shutdown_inner(&mut self) -> Result<(), PcieError> {
        if matches!(self.state, CtrlrState::ShutDown | CtrlrState::Removed) {
            return Ok(());
        }
        let cc = Cc::from_bits(self.regs.read32(off::CC));
        self.regs.write32(
            off::CC,
            Cc {
                shn: Shutdown::Normal,
                ..cc
            }
            .to_bits(),
        );
        let bound = Duration::from_micros(u64::from(self.identity.rtd3e))
            .clamp(Duration::from_secs(5), Duration::from_secs(60));
        let t0 = Instant::now();
        let r = loop {
            let v = self.csts();
            if v == Csts::DEVICE_GONE {
                break Err(PcieError::DeviceGone);
            }
            if Csts::from_bits(v).shst == Shutdown::COMPLETE {
                break Ok(());
            }
            if t0.elapsed() > bound {
                break Err(PcieError::Timeout {
                    what: "CSTS.SHST = shutdown complete",
                    csts: v,
                    waited_ms: t0.elapsed().as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        self.regs.write32(off::CC, 0);
        self.state = CtrlrState::ShutDown;
        r
    }
}

impl<R: Registers> Drop for Controller<R> {
    fn drop(&mut self) {
        let _ = self.shutdown_inner();
    }
}

/// Whether a completion status means the command may be retried (DNR clear).
pub fn retryable(status: Status) -> bool {
    !status.is_success() && !status.dnr
}

/// The status a command gets when the controller is gone (hot removal): Internal Error with DNR.
pub const DEVICE_GONE_STATUS: Status = StatusCode::INTERNAL_ERROR.dnr();
