//! The PCIe transport of bdev_nvme: a local controller driven by keel-nvme-pcie (VFIO, BAR0
//! mapped into the process), or by its in-process controller model in tests and benchmarks.
//!
//! # Design
//!
//! A PCIe controller ([`PcieController`]) is one object per `bdev_nvme_attach_controller -t
//! PCIe`, held by the [`NvmeModule`](crate::NvmeModule) beside the fabrics controllers. Its
//! parts:
//!
//! * **The driver's [`Controller`]** sits in a mutex of [`PcieShared`]: the admin queue runs
//!   synchronously under it. It is locked only on control paths: attach, the admin poller's
//!   health check and reset, a reactor's first channel (Create I/O CQ/SQ) and last channel
//!   (Delete), detach. Never per I/O.
//! * **The admin poller** runs on the main reactor every millisecond: it reads CSTS
//!   ([`Controller::health`]). Fatal status, a controller that dropped ready, or a reset asked
//!   with [`PcieController::request_reset`] (`bdev_nvme_reset_controller`) → the gate goes to
//!   *hold*, the controller is reset (CC.EN 0 → 1, bring-up again, blocking the main reactor for
//!   at most 2 × CAP.TO), the generation grows and the gate opens: each qpair sees the new
//!   generation on its next poll, re-creates its queues and re-submits what was in flight. A
//!   device that reads all ones (surprise removal) or a failed reset → the gate goes to
//!   *deleted*, in-flight and new I/O fail, and the namespace bdevs are hot-removed.
//! * **One I/O qpair per reactor** ([`qpair`]), created by the first namespace channel there.
//! * **Timeouts** follow bdev_nvme_set_options' `timeout_us` (0, the default: none) and
//!   `action_on_timeout`: every 256 polls a qpair reads the clock and scans for commands older
//!   than that; `abort` sends Abort (the command then fails) and asks for a reset when the
//!   controller does not abort it, `reset` asks for a reset (the command is re-submitted
//!   after it), `none` logs.
//! * **Detach** closes the gate (every qpair fails what it holds on its next poll and new I/O at
//!   once), unregisters the bdevs and sends the shutdown notification (CC.SHN) once the last
//!   holder lets the controller go.
//!
//! The bdev layer's buffers are not mapped for the device: each command slot of a qpair owns a
//! bounce buffer from a per-qpair [`DmaPool`](keel_nvme_pcie::DmaPool) and data is copied in
//! (writes) and out (reads) — one copy per I/O, no allocation, no lock. Namespace bdevs advertise
//! no split boundary: a request larger than the chunk is cut into several commands by the qpair.

pub(crate) mod qpair;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use keel_bdev::{BdevParams, BdevRegistry};
use keel_nvme_pcie::model::Model;
use keel_nvme_pcie::{
    Controller, ControllerOpts, DmaMapper, Health, Mmio, PciAddress, PcieError, Registers, VfioDevice,
};
use keel_reactor::{current, IoDevice, PollStatus, PollerHandle};
use serde_json::{json, Value};

use crate::bdev::{NsBdev, NsController};
use crate::module::NvmeModule;
use crate::opts::AttachOpts;
use qpair::{PcieQpairCell, CHUNK_BYTES};

/// How often the admin poller runs.
const ADMIN_POLL_US: u64 = 1000;

/// The register space of a PCIe controller: the mapped BAR0 of a VFIO device, or the
/// in-process model. One branch per register access (not per I/O beyond the doorbells).
pub enum Regs {
    /// BAR0 of a device bound to vfio-pci.
    Bar(Arc<Mmio>),
    /// keel-nvme-pcie's controller model.
    Model(Arc<Model>),
}

impl Registers for Regs {
    #[inline]
    fn read32(&self, off: usize) -> u32 {
        match self {
            Regs::Bar(m) => Registers::read32(&**m, off),
            Regs::Model(m) => m.read32(off),
        }
    }

    #[inline]
    fn write32(&self, off: usize, v: u32) {
        match self {
            Regs::Bar(m) => Registers::write32(&**m, off, v),
            Regs::Model(m) => m.write32(off, v),
        }
    }
}

/// Where a PCIe controller is: a PCI function (opened through VFIO at attach) or a model.
pub enum PcieDevice {
    /// The function at this address (`traddr`).
    Pci(PciAddress),
    /// An in-process model (tests, benchmarks); `traddr` is only a label.
    Model(Arc<Model>),
}

/// What the qpairs do with I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PcieGate {
    /// Live: issue.
    Open = 0,
    /// Resetting: hold.
    Hold = 1,
    /// Detached or removed: fail.
    Deleted = 2,
}

/// What a qpair does with a command older than `timeout_us` (bdev_nvme_set_options'
/// `action_on_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeoutAction {
    /// Log it.
    None,
    /// Send Abort for it; if the controller does not abort it, reset the controller.
    Abort,
    /// Reset the controller (the command is re-submitted afterwards).
    Reset,
}

/// Per-command timeout policy of a controller, from the module options at attach.
#[derive(Debug, Clone, Copy)]
pub struct IoTimeout {
    /// `timeout_us` (None: 0, no timeouts, SPDK's default).
    pub(crate) after: Option<std::time::Duration>,
    pub(crate) action: TimeoutAction,
}

impl IoTimeout {
    /// From bdev_nvme_set_options' `timeout_us` and `action_on_timeout` (kept in
    /// [`ModuleOpts::other`](crate::ModuleOpts)).
    pub(crate) fn from_module(o: &crate::ModuleOpts) -> IoTimeout {
        let us = o.other.get("timeout_us").and_then(Value::as_u64).unwrap_or(0);
        let action = match o.other.get("action_on_timeout").and_then(Value::as_str) {
            Some("abort") => TimeoutAction::Abort,
            Some("reset") => TimeoutAction::Reset,
            _ => TimeoutAction::None,
        };
        IoTimeout {
            after: (us > 0).then(|| std::time::Duration::from_micros(us)),
            action,
        }
    }
}

/// What every core knows of a PCIe controller. The gate and generation are written by the
/// main reactor and read with atomic loads by the qpairs; the driver's controller is locked on
/// control paths only (see the module doc).
pub(crate) struct PcieShared {
    pub name: String,
    pub opts: AttachOpts,
    pub ctrlr: Mutex<Option<Controller<Regs>>>,
    pub mapper: Arc<dyn DmaMapper>,
    /// Bytes of one command (and bounce buffer).
    pub chunk_bytes: u32,
    /// Per-command timeout policy.
    pub timeout: IoTimeout,
    gate: AtomicU8,
    generation: AtomicU64,
    reset_requested: AtomicBool,
}

impl PcieShared {
    pub(crate) fn gate(&self) -> PcieGate {
        match self.gate.load(Ordering::Acquire) {
            0 => PcieGate::Open,
            1 => PcieGate::Hold,
            _ => PcieGate::Deleted,
        }
    }

    fn set_gate(&self, g: PcieGate) {
        self.gate.store(g as u8, Ordering::Release);
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Asks the admin poller for a controller reset. Any core.
    pub(crate) fn request_reset(&self) {
        self.reset_requested.store(true, Ordering::Release);
    }
}

/// The controller's facts read at attach (Identify), for get_controllers and the bdevs.
struct Facts {
    cntlid: u16,
    serial: String,
    model: String,
    firmware: String,
    vid: u16,
    oncs: u16,
    max_transfer_bytes: u64,
    io_queues: u16,
}

/// A namespace exported as a bdev.
struct NsEntry {
    nsid: u32,
    bdev: String,
}

/// A brought-up controller on its way from the attach helper thread to the main reactor.
pub(crate) struct PcieSetup {
    ctrlr: Controller<Regs>,
    mapper: Arc<dyn DmaMapper>,
    /// Keeps the VFIO device open as long as the controller (`None` for a model).
    _vfio: Option<Arc<VfioDevice>>,
}

/// Opens the device and brings the controller up (controller disable/enable, admin queue,
/// Identify, Number of Queues). Blocking: helper threads only.
pub(crate) fn connect(dev: &PcieDevice, opts: &AttachOpts) -> Result<PcieSetup, PcieError> {
    let copts = ControllerOpts {
        io_entries: ControllerOpts::default()
            .io_entries
            .max(opts.io_queue_depth.saturating_add(1)),
        ..ControllerOpts::default()
    };
    match dev {
        PcieDevice::Pci(addr) => {
            let vfio = VfioDevice::open(addr)?;
            let mapper: Arc<dyn DmaMapper> = vfio.clone();
            let ctrlr = Controller::attach(Arc::new(Regs::Bar(vfio.bar0())), mapper.clone(), copts)?;
            Ok(PcieSetup {
                ctrlr,
                mapper,
                _vfio: Some(vfio),
            })
        }
        PcieDevice::Model(m) => {
            let mapper: Arc<dyn DmaMapper> = m.clone();
            let ctrlr = Controller::attach(Arc::new(Regs::Model(m.clone())), mapper.clone(), copts)?;
            Ok(PcieSetup {
                ctrlr,
                mapper,
                _vfio: None,
            })
        }
    }
}

/// One attached PCIe controller; see the module doc. `Send + Sync`: held by the module; its
/// state changes on the main reactor only.
pub struct PcieController {
    shared: Arc<PcieShared>,
    io_device: IoDevice<PcieQpairCell>,
    facts: Facts,
    namespaces: Mutex<Vec<NsEntry>>,
    reg: Weak<BdevRegistry>,
    module: Weak<NvmeModule>,
    _vfio: Option<Arc<VfioDevice>>,
}

impl PcieController {
    /// A live controller from a finished bring-up: registers its namespace bdevs and starts the
    /// admin poller. Returns it with the bdev names. Main reactor.
    pub(crate) fn start(
        opts: AttachOpts,
        timeout: IoTimeout,
        setup: PcieSetup,
        reg: &Arc<BdevRegistry>,
        module: &Arc<NvmeModule>,
    ) -> (Arc<PcieController>, Vec<String>) {
        let PcieSetup { ctrlr, mapper, _vfio } = setup;
        let id = ctrlr.identity();
        let facts = Facts {
            cntlid: id.cntlid,
            serial: text(id.sn.as_str()),
            model: text(id.mn.as_str()),
            firmware: text(id.fr.as_str()),
            vid: id.vid,
            oncs: id.oncs,
            max_transfer_bytes: ctrlr.max_transfer_bytes(),
            io_queues: ctrlr.io_queues_granted(),
        };
        let namespaces = ctrlr.namespaces().to_vec();
        let chunk_bytes = ctrlr.max_transfer_bytes().min(u64::from(CHUNK_BYTES)) as u32;
        let shared = Arc::new(PcieShared {
            name: opts.name.clone(),
            opts,
            ctrlr: Mutex::new(Some(ctrlr)),
            mapper,
            chunk_bytes,
            timeout,
            gate: AtomicU8::new(PcieGate::Open as u8),
            generation: AtomicU64::new(0),
            reset_requested: AtomicBool::new(false),
        });
        let s2 = shared.clone();
        let io_device = IoDevice::new_cyclic(format!("nvme_pcie_{}", shared.name), move |_core, me| {
            PcieQpairCell::new(s2.clone(), me)
        });
        let c = Arc::new(PcieController {
            shared,
            io_device,
            facts,
            namespaces: Mutex::new(Vec::new()),
            reg: Arc::downgrade(reg),
            module: Arc::downgrade(module),
            _vfio,
        });
        let mut names = Vec::new();
        for ns in namespaces {
            let name = format!("{}n{}", c.shared.name, ns.nsid);
            let params = BdevParams {
                name: name.clone(),
                uuid: None,
                product_name: "NVMe disk",
                module: crate::module::MODULE_NAME,
                block_size: ns.block_size,
                num_blocks: ns.blocks,
                caps: crate::ctrlr::ns_caps(c.facts.oncs),
                optimal_io_boundary_blocks: 0,
            };
            let backend = Arc::new(NsBdev::new(
                Arc::downgrade(&c),
                c.io_device.clone(),
                ns.nsid,
                ns.block_size,
            ));
            match reg.register(params, backend) {
                Ok(_) => {
                    c.namespaces.lock().unwrap().push(NsEntry {
                        nsid: ns.nsid,
                        bdev: name.clone(),
                    });
                    names.push(name);
                }
                Err(e) => tracing::error!("nvme {}: namespace {} not registered: {e}", c.shared.name, ns.nsid),
            }
        }
        // The poller stops itself once the controller is deleted (a handle is not Send).
        let weak = Arc::downgrade(&c);
        let slot: Rc<RefCell<Option<PollerHandle>>> = Default::default();
        let slot2 = slot.clone();
        let h =
            current().register_timed_poller(format!("nvme_pcie_admin_{}", c.shared.name), ADMIN_POLL_US, move || {
                let work = match weak.upgrade() {
                    Some(c) if c.shared.gate() != PcieGate::Deleted => c.admin_poll(),
                    _ => {
                        if let Some(h) = slot2.borrow_mut().take() {
                            h.unregister();
                        }
                        false
                    }
                };
                PollStatus::from_work(work)
            });
        *slot.borrow_mut() = Some(h);
        (c, names)
    }

    /// The controller's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Its attach options.
    pub fn opts(&self) -> &AttachOpts {
        &self.shared.opts
    }

    /// Names of its namespace bdevs.
    pub fn bdev_names(&self) -> Vec<String> {
        self.namespaces.lock().unwrap().iter().map(|n| n.bdev.clone()).collect()
    }

    /// The controller generation: grows with every successful reset. Any thread.
    pub fn generation(&self) -> u64 {
        self.shared.generation()
    }

    /// Asks for a controller reset (`bdev_nvme_reset_controller`); the admin poller carries it
    /// out on its next run. Any thread.
    pub fn request_reset(&self) {
        self.shared.request_reset();
    }

    /// SPDK's state name.
    pub fn state_name(&self) -> &'static str {
        match self.shared.gate() {
            PcieGate::Open => "enabled",
            PcieGate::Hold => "resetting",
            PcieGate::Deleted => "deleting",
        }
    }

    /// One entry of bdev_nvme_get_controllers' `ctrlrs`: state, trid, cntlid and the
    /// controller's identity.
    pub fn ctrlr_json(&self) -> Value {
        let f = &self.facts;
        json!({
            "state": self.state_name(),
            "trid": self.shared.opts.trid.to_json(),
            "cntlid": f.cntlid,
            "ctrlr_data": {
                "vendor_id": format!("{:#06x}", f.vid),
                "serial_number": f.serial,
                "model_number": f.model,
                "firmware_revision": f.firmware,
                "oncs": f.oncs,
                "max_transfer_bytes": f.max_transfer_bytes,
                "io_queues": f.io_queues,
            },
        })
    }

    /// One admin poll (main reactor): health check, reset, removal. Whether it did work.
    fn admin_poll(self: &Arc<Self>) -> bool {
        if self.shared.gate() == PcieGate::Deleted {
            return false;
        }
        let asked = self.shared.reset_requested.swap(false, Ordering::AcqRel);
        let mut guard = self.shared.ctrlr.lock().unwrap();
        let Some(ctrlr) = guard.as_mut() else {
            return false;
        };
        let health = ctrlr.health();
        let reset = match health {
            Health::Ok => asked,
            Health::Gone => {
                drop(guard);
                tracing::warn!("nvme {}: the device is gone; removing its bdevs", self.shared.name);
                self.delete(false);
                return true;
            }
            Health::Fatal | Health::NotReady => true,
        };
        if !reset {
            return false;
        }
        tracing::warn!("nvme {}: resetting the controller ({health:?})", self.shared.name);
        self.shared.set_gate(PcieGate::Hold);
        match ctrlr.reset() {
            Ok(()) => {
                self.shared.generation.fetch_add(1, Ordering::AcqRel);
                self.shared.set_gate(PcieGate::Open);
                tracing::info!("nvme {}: controller reset done", self.shared.name);
            }
            Err(e) => {
                drop(guard);
                tracing::error!("nvme {}: reset failed ({e}); removing its bdevs", self.shared.name);
                self.delete(false);
            }
        }
        true
    }

    /// Detaches (or, with `shutdown` false, drops a dead device): closes the gate, hot-removes
    /// the bdevs (the admin poller stops on its next run) and leaves the module. The shutdown notification goes
    /// out when the driver's controller is dropped or shut down, here. Main reactor.
    pub(crate) fn delete(self: &Arc<Self>, shutdown: bool) {
        self.shared.set_gate(PcieGate::Deleted);
        let entries: Vec<NsEntry> = std::mem::take(&mut *self.namespaces.lock().unwrap());
        if let Some(reg) = self.reg.upgrade() {
            for e in entries {
                let _ = reg.unregister(&e.bdev, || {});
                let _ = e.nsid;
            }
        }
        if let Some(m) = self.module.upgrade() {
            m.forget_pcie(self);
        }
        let taken = self.shared.ctrlr.lock().unwrap().take();
        if let Some(c) = taken {
            if shutdown {
                if let Err(e) = c.shutdown() {
                    tracing::warn!("nvme {}: shutdown notification: {e}", self.shared.name);
                }
            } else {
                drop(c);
            }
        }
    }
}

/// An Identify text field, trimmed ("" when not UTF-8).
fn text(s: Option<&str>) -> String {
    s.map(str::trim).unwrap_or("").to_string()
}

impl NsController for PcieController {
    type Queue = PcieQpairCell;

    fn ns_json(&self, nsid: u32) -> Value {
        let f = &self.facts;
        json!([{
            "pci_address": self.shared.opts.trid.traddr,
            "trid": self.shared.opts.trid.to_json(),
            "ctrlr_data": {
                "cntlid": f.cntlid,
                "vendor_id": format!("{:#06x}", f.vid),
                "serial_number": f.serial,
                "model_number": f.model,
                "firmware_revision": f.firmware,
            },
            "ns_data": {"id": nsid},
        }])
    }
}
