//! An in-process NVMe controller: the same registers, queues, doorbells, phase tags and PRPs as
//! a PCIe device, in safe code, so the driver's queue logic runs in unit tests without VFIO.
//!
//! # Design
//! [`Model`] implements [`Registers`] (the driver's BAR) and [`DmaMapper`] (the IOMMU): the
//! driver maps its regions into the model, which then reads SQEs, PRP lists and write data from
//! them and writes CQEs and read data into them by IOVA, exactly as a device would. The
//! simulated device runs inside register writes: an SQ tail doorbell fetches and executes the
//! new entries and posts their completions (with the phase tag of the CQ's current lap), a CQ
//! head doorbell frees CQ slots. With [`ModelConfig::deferred`] an I/O queue's doorbell only
//! records the tail and the commands run at [`Model::run`], so tests can fill queues and interleave.
//!
//! What it checks like QEMU does (nvme-pcie.md §5, §6, §8, §11): CC values at enable (queue
//! bases aligned, AQA non-zero, IOSQES/IOCQES 6/4, else CSTS.CFS), queue creation (QID range,
//! QSIZE ≤ MQES, CQ exists, PC = 1), PRP alignment (list entries and a direct PRP2 page
//! aligned), MDTS, LBA range, namespace id. Faults are injected by the test: a status for the
//! next I/O ([`Model::fail_next_io`]), commands held without completion until aborted
//! ([`Model::hold_lba`]), controller fatal status ([`Model::set_fatal`]) and surprise removal
//! ([`Model::remove`]). CC.EN = 0 deletes every I/O queue and drops held commands, as a reset
//! does.
//!
//! The model keeps its state behind one `Mutex` (the simulated device's, not the driver's: the
//! driver takes no lock; the model is a test device).

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use keel_nvme_proto::cqe::{Cqe, Status, StatusCode, CQE_LEN};
use keel_nvme_proto::identify::{
    encode_active_ns_list, IdentifyController, IdentifyNamespace, LbaFormat, IDENTIFY_LEN,
};
use keel_nvme_proto::nqn::{FixedText, NqnField};
use keel_nvme_proto::props::{Aqa, Cap, Cc, Csts, Shutdown, Vs};
use keel_nvme_proto::sqe::{
    admin_opcode, nvm_opcode, AdminCommand, Command, DsmRange, FeatureId, NvmCommand, QueueCounts, QueueKind, Sqe,
    DSM_RANGE_LEN, SQE_LEN,
};

use crate::dma::{DmaMapper, IovaAllocator};
use crate::error::PcieError;
use crate::regs::{off, Registers};
use crate::sys::DmaRegion;

const PAGE: u64 = 4096;

/// What the model looks like.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// CAP.MQES (zero-based).
    pub mqes_0based: u16,
    /// Identify MDTS (2^n pages; 0 = no limit).
    pub mdts: u8,
    /// I/O queue pairs the controller grants.
    pub max_io_queues: u16,
    /// Namespace 1's block size (512 or 4096).
    pub block_size: u32,
    /// Namespace 1's size in blocks.
    pub blocks: u64,
    /// Serial number.
    pub serial: String,
    /// Run I/O commands at [`Model::run`] instead of at the doorbell (admin commands always run
    /// at the doorbell).
    pub deferred: bool,
    /// Whether Abort of a held command succeeds (QEMU never aborts).
    pub abort_succeeds: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            mqes_0based: 2047,
            mdts: 7,
            max_io_queues: 4,
            block_size: 512,
            blocks: 32 * 1024,
            serial: "KEELMODEL0".into(),
            deferred: false,
            abort_succeeds: true,
        }
    }
}

/// Counters of the simulated device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// Admin commands executed.
    pub admin_commands: u64,
    /// I/O commands executed.
    pub io_commands: u64,
    /// Doorbell writes to queues that do not exist (ignored, as QEMU does).
    pub invalid_doorbells: u64,
    /// Completions posted.
    pub completions: u64,
}

struct Sq {
    base: u64,
    size: u16,
    head: u16,
    tail: u16,
    cqid: u16,
}

struct Cq {
    base: u64,
    size: u16,
    tail: u16,
    head: u16,
    phase: bool,
    /// Completions waiting for CQ space (only if a host overran its own CQ).
    pending: VecDeque<Cqe>,
}

struct State {
    cfg: ModelConfig,
    cc: Cc,
    csts: Csts,
    aqa: Aqa,
    asq: u64,
    acq: u64,
    regions: Vec<(u64, Arc<DmaRegion>)>,
    iovas: IovaAllocator,
    sqs: Vec<Option<Sq>>,
    cqs: Vec<Option<Cq>>,
    queues_created: bool,
    disk: Vec<u8>,
    held: Vec<(u16, Sqe)>,
    hold_lba: Option<u64>,
    fail_next: Option<Status>,
    removed: bool,
    stats: ModelStats,
}

/// The in-process controller. Share it as `Arc<Model>`: it is the driver's register access and
/// DMA mapper at once, and the test's handle for faults and inspection.
pub struct Model {
    state: Mutex<State>,
}

impl Model {
    /// A controller with `cfg`, disabled, its namespace zero-filled.
    pub fn new(cfg: ModelConfig) -> Arc<Model> {
        let disk = vec![0u8; (cfg.blocks * u64::from(cfg.block_size)) as usize];
        let n = usize::from(cfg.max_io_queues) + 1;
        Arc::new(Model {
            state: Mutex::new(State {
                cfg,
                cc: Cc::default(),
                csts: Csts::default(),
                aqa: Aqa::default(),
                asq: 0,
                acq: 0,
                regions: Vec::new(),
                iovas: IovaAllocator::x86_default(),
                sqs: (0..n).map(|_| None).collect(),
                cqs: (0..n).map(|_| None).collect(),
                queues_created: false,
                disk,
                held: Vec::new(),
                hold_lba: None,
                fail_next: None,
                removed: false,
                stats: ModelStats::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The CAP value the model reports.
    pub fn cap(&self) -> Cap {
        self.lock().cap()
    }

    /// Executes the commands fetched since the last run (deferred mode; a no-op otherwise).
    pub fn run(&self) {
        let mut s = self.lock();
        let n = s.sqs.len();
        for qid in 0..n {
            s.process_sq(qid as u16);
        }
    }

    /// The next I/O command completes with `status` instead of executing.
    pub fn fail_next_io(&self, status: Status) {
        self.lock().fail_next = Some(status);
    }

    /// I/O commands starting at `slba` are held (never completed) until aborted or the
    /// controller is disabled; `None` stops holding.
    pub fn hold_lba(&self, slba: Option<u64>) {
        self.lock().hold_lba = slba;
    }

    /// Commands currently held.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Sets CSTS.CFS: the controller stops processing until disabled.
    pub fn set_fatal(&self) {
        self.lock().csts.fatal = true;
    }

    /// Surprise removal: every register read returns all ones, writes are dropped.
    pub fn remove(&self) {
        self.lock().removed = true;
    }

    /// Counters.
    pub fn stats(&self) -> ModelStats {
        self.lock().stats
    }

    /// Copies namespace bytes at `offset` into `out` (test inspection).
    pub fn read_media(&self, offset: usize, out: &mut [u8]) {
        let s = self.lock();
        out.copy_from_slice(&s.disk[offset..offset + out.len()]);
    }

    /// Number of I/O submission queues that exist.
    pub fn io_sq_count(&self) -> usize {
        self.lock().sqs.iter().skip(1).filter(|q| q.is_some()).count()
    }
}

impl Registers for Model {
    fn read32(&self, o: usize) -> u32 {
        let s = self.lock();
        if s.removed {
            return u32::MAX;
        }
        let cap = s.cap().to_bits();
        match o {
            off::CAP => cap as u32,
            0x04 => (cap >> 32) as u32,
            off::VS => Vs {
                major: 1,
                minor: 4,
                tertiary: 0,
            }
            .to_bits(),
            off::CC => s.cc.to_bits(),
            off::CSTS => s.csts.to_bits(),
            off::AQA => s.aqa.to_bits(),
            off::ASQ => s.asq as u32,
            0x2C => (s.asq >> 32) as u32,
            off::ACQ => s.acq as u32,
            0x34 => (s.acq >> 32) as u32,
            _ => 0,
        }
    }

    fn write32(&self, o: usize, v: u32) {
        let mut s = self.lock();
        if s.removed {
            return;
        }
        match o {
            off::CC => s.write_cc(Cc::from_bits(v)),
            off::AQA => s.aqa = Aqa::from_bits(v),
            off::ASQ => s.asq = (s.asq & !0xFFFF_FFFF) | u64::from(v),
            0x2C => s.asq = (s.asq & 0xFFFF_FFFF) | u64::from(v) << 32,
            off::ACQ => s.acq = (s.acq & !0xFFFF_FFFF) | u64::from(v),
            0x34 => s.acq = (s.acq & 0xFFFF_FFFF) | u64::from(v) << 32,
            o if o >= 0x1000 => s.doorbell((o - 0x1000) / 4, v),
            _ => {}
        }
    }
}

impl DmaMapper for Model {
    fn map(&self, region: Arc<DmaRegion>) -> Result<u64, PcieError> {
        let mut s = self.lock();
        let iova = s.iovas.alloc(region.len() as u64)?;
        s.regions.push((iova, region));
        Ok(iova)
    }
}

/// Why a command failed inside the model.
type Done = Result<u32, Status>;

fn st(code: StatusCode) -> Status {
    code.dnr()
}

impl State {
    fn cap(&self) -> Cap {
        Cap {
            mqes_0based: self.cfg.mqes_0based,
            cqr: true,
            timeout_500ms: 1,
            css: Cap::CSS_NVM,
            mpsmax: 4,
            ..Cap::default()
        }
    }

    fn write_cc(&mut self, new: Cc) {
        let old = self.cc;
        self.cc = new;
        if old.enable && !new.enable {
            // Controller reset: queues and their commands are gone.
            for q in &mut self.sqs {
                *q = None;
            }
            for q in &mut self.cqs {
                *q = None;
            }
            self.held.clear();
            self.queues_created = false;
            self.csts = Csts::default();
            return;
        }
        if !old.enable && new.enable {
            let bad = self.aqa.asqs_0based == 0
                || self.aqa.acqs_0based == 0
                || !self.asq.is_multiple_of(PAGE)
                || !self.acq.is_multiple_of(PAGE)
                || new.mps != 0
                || new.css != 0;
            if bad || self.csts.fatal {
                self.csts.fatal = true;
                return;
            }
            self.sqs[0] = Some(Sq {
                base: self.asq,
                size: self.aqa.asqs_0based + 1,
                head: 0,
                tail: 0,
                cqid: 0,
            });
            self.cqs[0] = Some(Cq {
                base: self.acq,
                size: self.aqa.acqs_0based + 1,
                tail: 0,
                head: 0,
                phase: true,
                pending: VecDeque::new(),
            });
            self.csts.ready = true;
        }
        if new.enable && new.shn != Shutdown::None {
            self.csts.shst = Shutdown::COMPLETE;
        }
    }

    fn doorbell(&mut self, index: usize, v: u32) {
        let qid = index / 2;
        if !self.csts.ready || self.csts.fatal {
            return;
        }
        if index.is_multiple_of(2) {
            let Some(Some(sq)) = self.sqs.get_mut(qid) else {
                self.stats.invalid_doorbells += 1;
                return;
            };
            if v >= u32::from(sq.size) {
                self.stats.invalid_doorbells += 1;
                return;
            }
            sq.tail = v as u16;
            if !self.cfg.deferred || qid == 0 {
                self.process_sq(qid as u16);
            }
        } else {
            let Some(Some(cq)) = self.cqs.get_mut(qid) else {
                self.stats.invalid_doorbells += 1;
                return;
            };
            if v >= u32::from(cq.size) {
                self.stats.invalid_doorbells += 1;
                return;
            }
            cq.head = v as u16;
            // Room again: post what waited.
            while let Some(c) = self.cqs[qid].as_mut().and_then(|cq| cq.pending.pop_front()) {
                if !self.post(qid as u16, c) {
                    break;
                }
            }
        }
    }

    // -- memory access by IOVA --------------------------------------------------------------

    fn find(&self, iova: u64, len: usize) -> Option<(&DmaRegion, usize)> {
        self.regions.iter().find_map(|(base, r)| {
            let off = iova.checked_sub(*base)? as usize;
            (off.checked_add(len)? <= r.len()).then_some((&**r, off))
        })
    }

    fn dma_read(&self, iova: u64, out: &mut [u8]) -> bool {
        match self.find(iova, out.len()) {
            Some((r, off)) => {
                r.read(off, out);
                true
            }
            None => false,
        }
    }

    fn dma_write(&self, iova: u64, data: &[u8]) -> bool {
        match self.find(iova, data.len()) {
            Some((r, off)) => {
                r.write(off, data);
                true
            }
            None => false,
        }
    }

    /// The device side of PRPs: calls `f(iova, offset_in_transfer, len)` for each contiguous
    /// piece of a `len`-byte transfer, reading the PRP list from host memory. Written from the
    /// spec, independently of the driver's builder.
    fn walk_prps(&self, sqe: &Sqe, len: u64, mut f: impl FnMut(&State, u64, u64, u64) -> bool) -> Done {
        let prp1 = u64::from_le_bytes(sqe.dptr[0..8].try_into().unwrap_or_default());
        let prp2 = u64::from_le_bytes(sqe.dptr[8..16].try_into().unwrap_or_default());
        if prp1 % 4 != 0 {
            return Err(st(StatusCode::INVALID_PRP_OFFSET));
        }
        let first = (PAGE - prp1 % PAGE).min(len);
        if !f(self, prp1, 0, first) {
            return Err(st(StatusCode::DATA_TRANSFER_ERROR));
        }
        let mut done = first;
        if done == len {
            return Ok(0);
        }
        if len - done <= PAGE {
            if prp2 % PAGE != 0 {
                return Err(st(StatusCode::INVALID_PRP_OFFSET));
            }
            return if f(self, prp2, done, len - done) {
                Ok(0)
            } else {
                Err(st(StatusCode::DATA_TRANSFER_ERROR))
            };
        }
        if prp2 % 8 != 0 {
            return Err(st(StatusCode::INVALID_PRP_OFFSET));
        }
        let mut entry = prp2;
        while done < len {
            let mut raw = [0u8; 8];
            // The last slot of a list page chains to the next list page.
            if (entry + 8) % PAGE == 0 && len - done > PAGE {
                if !self.dma_read(entry, &mut raw) {
                    return Err(st(StatusCode::DATA_TRANSFER_ERROR));
                }
                entry = u64::from_le_bytes(raw);
                continue;
            }
            if !self.dma_read(entry, &mut raw) {
                return Err(st(StatusCode::DATA_TRANSFER_ERROR));
            }
            let page = u64::from_le_bytes(raw);
            if page % PAGE != 0 {
                return Err(st(StatusCode::INVALID_PRP_OFFSET));
            }
            let n = (len - done).min(PAGE);
            if !f(self, page, done, n) {
                return Err(st(StatusCode::DATA_TRANSFER_ERROR));
            }
            done += n;
            entry += 8;
        }
        Ok(0)
    }

    // -- queues -------------------------------------------------------------------------------

    fn process_sq(&mut self, qid: u16) {
        loop {
            if self.csts.fatal || !self.csts.ready {
                return;
            }
            let Some(Some(sq)) = self.sqs.get_mut(usize::from(qid)) else {
                return;
            };
            if sq.head == sq.tail {
                return;
            }
            let at = sq.base + u64::from(sq.head) * SQE_LEN as u64;
            sq.head = (sq.head + 1) % sq.size;
            let (sq_head, cqid) = (sq.head, sq.cqid);
            let mut raw = [0u8; SQE_LEN];
            if !self.dma_read(at, &mut raw) {
                // An unreadable SQ is fatal (QEMU does the same).
                self.csts.fatal = true;
                return;
            }
            let sqe = Sqe::from_bytes(&raw);
            let result = if qid == 0 {
                self.stats.admin_commands += 1;
                self.admin(&sqe)
            } else {
                self.stats.io_commands += 1;
                match self.io(qid, &sqe) {
                    Some(r) => r,
                    None => continue, // held
                }
            };
            let (dw0, status) = match result {
                Ok(dw0) => (dw0, Status::SUCCESS),
                Err(s) => (0, s),
            };
            let cqe = Cqe {
                dw0,
                dw1: 0,
                sq_head,
                sq_id: qid,
                cid: sqe.cid,
                status,
                phase: false,
            };
            self.complete(cqid, cqe);
        }
    }

    fn complete(&mut self, cqid: u16, cqe: Cqe) {
        let waiting = self
            .cqs
            .get(usize::from(cqid))
            .and_then(|c| c.as_ref())
            .is_some_and(|c| !c.pending.is_empty());
        if waiting || !self.post(cqid, cqe) {
            if let Some(Some(cq)) = self.cqs.get_mut(usize::from(cqid)) {
                cq.pending.push_back(cqe);
            }
        }
    }

    /// Writes `cqe` into the CQ's tail slot with the lap's phase; false if the CQ is full.
    fn post(&mut self, cqid: u16, mut cqe: Cqe) -> bool {
        let Some(Some(cq)) = self.cqs.get_mut(usize::from(cqid)) else {
            return true; // the CQ is gone: the completion is dropped
        };
        if (cq.tail + 1) % cq.size == cq.head {
            return false;
        }
        cqe.phase = cq.phase;
        let at = cq.base + u64::from(cq.tail) * CQE_LEN as u64;
        cq.tail += 1;
        if cq.tail == cq.size {
            cq.tail = 0;
            cq.phase = !cq.phase;
        }
        if !self.dma_write(at, &cqe.to_bytes()) {
            self.csts.fatal = true;
            return true;
        }
        self.stats.completions += 1;
        true
    }

    fn admin(&mut self, sqe: &Sqe) -> Done {
        let cmd = match Command::decode(sqe, QueueKind::Admin) {
            Ok(Command::Admin(c)) => c,
            _ => return Err(st(StatusCode::INVALID_OPCODE)),
        };
        match cmd {
            AdminCommand::Identify(id) => {
                let mut page = [0u8; IDENTIFY_LEN];
                match id.cns.0 {
                    0x01 => {
                        IdentifyController {
                            vid: 0x1B36,
                            ssvid: 0x1AF4,
                            sn: FixedText::space_padded(&self.cfg.serial).unwrap_or_default(),
                            mn: FixedText::space_padded("Keel NVMe model").unwrap_or_default(),
                            fr: FixedText::space_padded("1.0").unwrap_or_default(),
                            mdts: self.cfg.mdts,
                            ver: 0x0001_0400,
                            acl: 3,
                            aerl: 3,
                            sqes: 0x66,
                            cqes: 0x44,
                            nn: 1,
                            oncs: IdentifyController::ONCS_DSM | IdentifyController::ONCS_WRITE_ZEROES,
                            vwc: 0x07,
                            subnqn: NqnField::new("nqn.2019-08.org.qemu:KEELMODEL0").unwrap_or_default(),
                            ..IdentifyController::default()
                        }
                        .encode(&mut page)
                        .map_err(|_| st(StatusCode::INTERNAL_ERROR))?;
                    }
                    0x02 => {
                        let list = if id.nsid < 1 { &[1u32][..] } else { &[][..] };
                        encode_active_ns_list(list.iter().copied(), &mut page)
                            .map_err(|_| st(StatusCode::INTERNAL_ERROR))?;
                    }
                    0x00 if id.nsid == 1 => {
                        let mut lbaf = [LbaFormat::default(); 64];
                        lbaf[0].lbads = self.cfg.block_size.trailing_zeros() as u8;
                        IdentifyNamespace {
                            nsze: self.cfg.blocks,
                            ncap: self.cfg.blocks,
                            nuse: self.cfg.blocks,
                            dlfeat: 1,
                            lbaf,
                            ..IdentifyNamespace::default()
                        }
                        .encode(&mut page)
                        .map_err(|_| st(StatusCode::INTERNAL_ERROR))?;
                    }
                    0x00 => {}
                    _ => return Err(st(StatusCode::INVALID_FIELD)),
                }
                self.walk_prps(sqe, IDENTIFY_LEN as u64, |s, iova, at, n| {
                    s.dma_write(iova, &page[at as usize..(at + n) as usize])
                })
            }
            AdminCommand::SetFeatures(f) if f.fid == FeatureId::NUMBER_OF_QUEUES => {
                if self.queues_created {
                    return Err(st(StatusCode::COMMAND_SEQUENCE_ERROR));
                }
                let n = self.cfg.max_io_queues - 1;
                Ok(QueueCounts {
                    nsq_0based: n,
                    ncq_0based: n,
                }
                .to_dword())
            }
            AdminCommand::CreateIoCq(q) => {
                let base = u64::from_le_bytes(sqe.dptr[0..8].try_into().unwrap_or_default());
                self.check_new_queue(q.qid, q.qsize_0based, base, true)?;
                if !q.physically_contiguous {
                    return Err(st(StatusCode::INVALID_FIELD));
                }
                if self.find(base, usize::from(q.qsize_0based + 1) * CQE_LEN).is_none() {
                    return Err(st(StatusCode::INVALID_FIELD));
                }
                self.cqs[usize::from(q.qid)] = Some(Cq {
                    base,
                    size: q.qsize_0based + 1,
                    tail: 0,
                    head: 0,
                    phase: true,
                    pending: VecDeque::new(),
                });
                self.queues_created = true;
                Ok(0)
            }
            AdminCommand::CreateIoSq(q) => {
                let base = u64::from_le_bytes(sqe.dptr[0..8].try_into().unwrap_or_default());
                self.check_new_queue(q.qid, q.qsize_0based, base, false)?;
                if !matches!(self.cqs.get(usize::from(q.cqid)), Some(Some(_))) || q.cqid == 0 {
                    return Err(st(StatusCode::COMPLETION_QUEUE_INVALID));
                }
                if !q.physically_contiguous || self.find(base, usize::from(q.qsize_0based + 1) * SQE_LEN).is_none() {
                    return Err(st(StatusCode::INVALID_FIELD));
                }
                self.sqs[usize::from(q.qid)] = Some(Sq {
                    base,
                    size: q.qsize_0based + 1,
                    head: 0,
                    tail: 0,
                    cqid: q.cqid,
                });
                Ok(0)
            }
            AdminCommand::DeleteIoSq { qid } => {
                if qid == 0 || !matches!(self.sqs.get(usize::from(qid)), Some(Some(_))) {
                    return Err(st(StatusCode::INVALID_QUEUE_IDENTIFIER));
                }
                self.sqs[usize::from(qid)] = None;
                self.held.retain(|(q, _)| *q != qid);
                Ok(0)
            }
            AdminCommand::DeleteIoCq { qid } => {
                if qid == 0 || !matches!(self.cqs.get(usize::from(qid)), Some(Some(_))) {
                    return Err(st(StatusCode::COMPLETION_QUEUE_INVALID));
                }
                if self.sqs.iter().flatten().any(|s| s.cqid == qid) {
                    return Err(StatusCode::INVALID_QUEUE_DELETION.retryable());
                }
                self.cqs[usize::from(qid)] = None;
                Ok(0)
            }
            AdminCommand::Abort { sqid, cid } => {
                let pos = self.held.iter().position(|(q, s)| *q == sqid && s.cid == cid);
                match pos {
                    Some(i) if self.cfg.abort_succeeds => {
                        let (q, s) = self.held.remove(i);
                        let sq_head = self.sqs[usize::from(q)].as_ref().map_or(0, |x| x.head);
                        let cqid = self.sqs[usize::from(q)].as_ref().map_or(0, |x| x.cqid);
                        self.complete(
                            cqid,
                            Cqe {
                                sq_head,
                                sq_id: q,
                                cid: s.cid,
                                status: StatusCode::ABORT_REQUESTED.retryable(),
                                ..Cqe::default()
                            },
                        );
                        Ok(0)
                    }
                    _ => Ok(1),
                }
            }
            _ => Err(st(StatusCode::INVALID_OPCODE)),
        }
    }

    fn check_new_queue(&self, qid: u16, qsize_0based: u16, base: u64, cq: bool) -> Result<(), Status> {
        let exists = if cq {
            self.cqs.get(usize::from(qid)).is_some_and(|q| q.is_some())
        } else {
            self.sqs.get(usize::from(qid)).is_some_and(|q| q.is_some())
        };
        if qid == 0 || usize::from(qid) >= self.sqs.len() || exists {
            return Err(st(StatusCode::INVALID_QUEUE_IDENTIFIER));
        }
        if qsize_0based == 0 || qsize_0based > self.cfg.mqes_0based {
            return Err(st(StatusCode::INVALID_QUEUE_SIZE));
        }
        if !base.is_multiple_of(PAGE) {
            return Err(st(StatusCode::INVALID_PRP_OFFSET));
        }
        if self.cc.iosqes != 6 || self.cc.iocqes != 4 {
            return Err(st(StatusCode::INVALID_QUEUE_SIZE));
        }
        Ok(())
    }

    /// Executes an I/O command; `None` if it is held.
    fn io(&mut self, qid: u16, sqe: &Sqe) -> Option<Done> {
        let cmd = match Command::decode(sqe, QueueKind::Io) {
            Ok(Command::Nvm(c)) => c,
            _ => return Some(Err(st(StatusCode::INVALID_OPCODE))),
        };
        let slba = match cmd {
            NvmCommand::Read(rw) | NvmCommand::Write(rw) => Some(rw.slba),
            NvmCommand::WriteZeroes(w) => Some(w.slba),
            _ => None,
        };
        if slba.is_some() && slba == self.hold_lba {
            self.held.push((qid, *sqe));
            return None;
        }
        if let Some(s) = self.fail_next.take() {
            return Some(Err(s));
        }
        let bs = u64::from(self.cfg.block_size);
        let check = |nsid: u32, slba: u64, blocks: u64, blocks_total: u64| -> Result<(), Status> {
            if nsid != 1 {
                return Err(st(StatusCode::INVALID_NAMESPACE_OR_FORMAT));
            }
            if slba.checked_add(blocks).is_none_or(|e| e > blocks_total) {
                return Err(st(StatusCode::LBA_OUT_OF_RANGE));
            }
            Ok(())
        };
        let total = self.cfg.blocks;
        Some(match cmd {
            NvmCommand::Read(rw) | NvmCommand::Write(rw) => {
                let blocks = u64::from(rw.block_count());
                if let Err(e) = check(rw.nsid, rw.slba, blocks, total) {
                    return Some(Err(e));
                }
                let len = blocks * bs;
                if self.cfg.mdts != 0 && len > (PAGE << self.cfg.mdts) {
                    return Some(Err(st(StatusCode::INVALID_FIELD)));
                }
                let base = (rw.slba * bs) as usize;
                let write = sqe.opcode == nvm_opcode::WRITE;
                if write {
                    // Move the disk out so the walker can borrow the state immutably.
                    let mut disk = std::mem::take(&mut self.disk);
                    let r = self.walk_prps(sqe, len, |s, iova, at, n| {
                        let at = base + at as usize;
                        s.dma_read(iova, &mut disk[at..at + n as usize])
                    });
                    self.disk = disk;
                    r
                } else {
                    self.walk_prps(sqe, len, |s, iova, at, n| {
                        let at = base + at as usize;
                        s.dma_write(iova, &s.disk[at..at + n as usize])
                    })
                }
            }
            NvmCommand::Flush { nsid } => {
                if nsid == 1 || nsid == u32::MAX {
                    Ok(0)
                } else {
                    Err(st(StatusCode::INVALID_NAMESPACE_OR_FORMAT))
                }
            }
            NvmCommand::WriteZeroes(w) => {
                let blocks = u64::from(w.block_count());
                check(w.nsid, w.slba, blocks, total).map(|()| {
                    let a = (w.slba * bs) as usize;
                    self.disk[a..a + (blocks * bs) as usize].fill(0);
                    0
                })
            }
            NvmCommand::DatasetManagement(d) => {
                if d.nsid != 1 {
                    return Some(Err(st(StatusCode::INVALID_NAMESPACE_OR_FORMAT)));
                }
                let n = d.range_count();
                let mut raw = [0u8; DSM_RANGE_LEN * 256];
                let len = (n * DSM_RANGE_LEN) as u64;
                if let Err(e) = self.walk_prps(sqe, len, |s, iova, at, k| {
                    s.dma_read(iova, &mut raw[at as usize..(at + k) as usize])
                }) {
                    return Some(Err(e));
                }
                for chunk in raw[..n * DSM_RANGE_LEN].chunks_exact(DSM_RANGE_LEN) {
                    let mut b = [0u8; DSM_RANGE_LEN];
                    b.copy_from_slice(chunk);
                    let r = DsmRange::from_bytes(&b);
                    if let Err(e) = check(1, r.slba, u64::from(r.block_count), total) {
                        return Some(Err(e));
                    }
                    if d.deallocate {
                        let a = (r.slba * bs) as usize;
                        self.disk[a..a + (u64::from(r.block_count) * bs) as usize].fill(0);
                    }
                }
                Ok(0)
            }
            NvmCommand::Compare(_) => Err(st(StatusCode::INVALID_OPCODE)),
        })
    }
}

// Opcodes the model serves, named so a reader can find them.
const _: [u8; 2] = [admin_opcode::IDENTIFY, nvm_opcode::READ];
