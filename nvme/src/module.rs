//! The module state of one bdev registry: the attached controllers by name, attaches in
//! progress, the module options; attach, detach and save_config.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use keel_bdev::{BdevModule, BdevRegistry, ConfigCall, ConfigEntry};
use serde_json::{json, Value};

use crate::ctrlr::{Controller, ADMIN_CONNECT_TIMEOUT};
use crate::opts::{AttachOpts, ModuleOpts, TrType};
use crate::pcie::{PcieController, PcieDevice};
use crate::transport::Transport;
use crate::NvmeError;

/// The module name of namespace bdevs.
pub const MODULE_NAME: &str = "nvme";

/// See the module doc. One per registry ([`BdevRegistry::module`]); control path only.
pub struct NvmeModule {
    reg: Weak<BdevRegistry>,
    ctrlrs: Mutex<Vec<Arc<Controller>>>,
    pcie: Mutex<Vec<Arc<PcieController>>>,
    attaching: Mutex<BTreeSet<String>>,
    opts: Mutex<ModuleOpts>,
}

impl BdevModule for NvmeModule {
    fn init(reg: &Arc<BdevRegistry>) -> Arc<Self> {
        Arc::new(NvmeModule {
            reg: Arc::downgrade(reg),
            ctrlrs: Mutex::new(Vec::new()),
            pcie: Mutex::new(Vec::new()),
            attaching: Mutex::new(BTreeSet::new()),
            opts: Mutex::new(ModuleOpts::default()),
        })
    }

    fn name(&self) -> &'static str {
        MODULE_NAME
    }

    fn fini(&self, done: keel_bdev::ModuleDone) {
        let all: Vec<Arc<Controller>> = std::mem::take(&mut *self.ctrlrs.lock().unwrap());
        for c in all {
            c.delete();
        }
        let all: Vec<Arc<PcieController>> = std::mem::take(&mut *self.pcie.lock().unwrap());
        for c in all {
            c.delete(true);
        }
        done.done();
    }

    fn config(&self, _reg: &BdevRegistry) -> Vec<ConfigEntry> {
        let mut out = vec![ConfigEntry::new(ConfigCall {
            method: "bdev_nvme_set_options",
            params: self.opts.lock().unwrap().to_json(),
        })];
        for c in self.ctrlrs.lock().unwrap().iter() {
            let o = c.opts();
            let call = ConfigCall {
                method: "bdev_nvme_attach_controller",
                params: json!({
                    "name": o.name,
                    "trtype": o.trid.trtype.as_str(),
                    "adrfam": o.trid.adrfam,
                    "traddr": o.trid.traddr,
                    "trsvcid": o.trid.trsvcid,
                    "subnqn": o.trid.subnqn,
                    "hostnqn": o.hostnqn,
                    "prchk_reftag": false,
                    "prchk_guard": false,
                    "hdgst": o.hdgst,
                    "ddgst": o.ddgst,
                    "num_io_queues": o.num_io_queues,
                    "ctrlr_loss_timeout_sec": o.ctrlr_loss_timeout_sec,
                    "reconnect_delay_sec": o.reconnect_delay_sec,
                    "fast_io_fail_timeout_sec": o.fast_io_fail_timeout_sec,
                }),
            };
            let mut e = ConfigEntry::new(call);
            for n in c.bdev_names() {
                e = e.provides(n);
            }
            out.push(e);
        }
        for c in self.pcie.lock().unwrap().iter() {
            let o = c.opts();
            let call = ConfigCall {
                method: "bdev_nvme_attach_controller",
                params: json!({
                    "name": o.name,
                    "trtype": o.trid.trtype.as_str(),
                    "traddr": o.trid.traddr,
                    "prchk_reftag": false,
                    "prchk_guard": false,
                }),
            };
            let mut e = ConfigEntry::new(call);
            for n in c.bdev_names() {
                e = e.provides(n);
            }
            out.push(e);
        }
        out
    }
}

impl NvmeModule {
    /// The registry's module (created on first use).
    pub fn of(reg: &Arc<BdevRegistry>) -> Arc<NvmeModule> {
        reg.module::<NvmeModule>()
    }

    /// The module options.
    pub fn options(&self) -> ModuleOpts {
        self.opts.lock().unwrap().clone()
    }

    /// Replaces the module options (`bdev_nvme_set_options`). SPDK refuses it once a
    /// controller exists; so does Keel.
    pub fn set_options(&self, opts: ModuleOpts) -> Result<(), NvmeError> {
        if !self.ctrlrs.lock().unwrap().is_empty()
            || !self.pcie.lock().unwrap().is_empty()
            || !self.attaching.lock().unwrap().is_empty()
        {
            return Err(NvmeError::Invalid(
                "bdev_nvme_set_options is allowed only before any controller is attached".into(),
            ));
        }
        *self.opts.lock().unwrap() = opts;
        Ok(())
    }

    /// The controller named `name`.
    pub fn controller(&self, name: &str) -> Option<Arc<Controller>> {
        self.ctrlrs.lock().unwrap().iter().find(|c| c.name() == name).cloned()
    }

    /// The PCIe controller named `name`.
    pub fn pcie_controller(&self, name: &str) -> Option<Arc<PcieController>> {
        self.pcie.lock().unwrap().iter().find(|c| c.name() == name).cloned()
    }

    /// The transport id of controller `name` (fabrics or PCIe).
    pub fn trid_of(&self, name: &str) -> Option<crate::TransportId> {
        match self.controller(name) {
            Some(c) => Some(c.opts().trid.clone()),
            None => self.pcie_controller(name).map(|c| c.opts().trid.clone()),
        }
    }

    /// Every fabrics controller, in attach order.
    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        self.ctrlrs.lock().unwrap().clone()
    }

    /// Attaches a controller: connects its admin queue on a helper thread, then (on the main
    /// reactor) registers one bdev per active namespace and calls `done` with their names. Call
    /// on the main reactor; `done` runs there.
    pub fn attach(
        self: &Arc<Self>,
        opts: AttachOpts,
        done: impl FnOnce(Result<Vec<String>, NvmeError>) + Send + 'static,
    ) {
        if opts.trid.trtype == TrType::Pcie {
            let dev = match keel_nvme_pcie::PciAddress::parse(&opts.trid.traddr) {
                Ok(a) => PcieDevice::Pci(a),
                Err(e) => return done(Err(NvmeError::Invalid(e.to_string()))),
            };
            return self.attach_pcie(opts, dev, done);
        }
        if let Err(e) = self.begin_attach(&opts) {
            return done(Err(e));
        }
        let transport = match Transport::for_type(opts.trid.trtype) {
            Ok(t) => t,
            Err(e) => {
                self.attaching.lock().unwrap().remove(&opts.name);
                return done(Err(e));
            }
        };
        let Some(reg) = self.reg.upgrade() else {
            return done(Err(NvmeError::Invalid("the bdev registry is gone".into())));
        };
        let cores = reg.cores().clone();
        let main = cores.main_core();
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nvme-attach-{}", opts.name))
            .spawn(move || {
                let setup = transport.connect_admin(&opts, Instant::now() + ADMIN_CONNECT_TIMEOUT);
                let _ = cores.run_on(main, move || {
                    me.attaching.lock().unwrap().remove(&opts.name);
                    let setup = match setup {
                        Ok(s) => s,
                        Err(e) => return done(Err(e)),
                    };
                    let Some(reg) = me.reg.upgrade() else {
                        return done(Err(NvmeError::Invalid("the bdev registry is gone".into())));
                    };
                    let (c, names) = Controller::start(opts, transport, setup, &reg, &me);
                    me.ctrlrs.lock().unwrap().push(c);
                    done(Ok(names))
                });
            });
        if let Err(e) = spawned {
            tracing::error!("nvme: cannot start an attach thread: {e}");
        }
    }

    /// Attaches PCIe controller `dev` (a PCI function, or a model in tests and benchmarks):
    /// opens and brings it up on a helper thread (VFIO, CC.EN, Identify, Number of Queues),
    /// then (on the main reactor) registers one bdev per namespace and calls `done` with their
    /// names. Call on the main reactor; `done` runs there.
    pub fn attach_pcie(
        self: &Arc<Self>,
        opts: AttachOpts,
        dev: PcieDevice,
        done: impl FnOnce(Result<Vec<String>, NvmeError>) + Send + 'static,
    ) {
        if let Err(e) = self.begin_attach(&opts) {
            return done(Err(e));
        }
        let Some(reg) = self.reg.upgrade() else {
            return done(Err(NvmeError::Invalid("the bdev registry is gone".into())));
        };
        let cores = reg.cores().clone();
        let main = cores.main_core();
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nvme-attach-{}", opts.name))
            .spawn(move || {
                let setup = crate::pcie::connect(&dev, &opts);
                let _ = cores.run_on(main, move || {
                    me.attaching.lock().unwrap().remove(&opts.name);
                    let setup = match setup {
                        Ok(s) => s,
                        Err(e) => return done(Err(e.into())),
                    };
                    let Some(reg) = me.reg.upgrade() else {
                        return done(Err(NvmeError::Invalid("the bdev registry is gone".into())));
                    };
                    let timeout = crate::pcie::IoTimeout::from_module(&me.options());
                    let (c, names) = PcieController::start(opts, timeout, setup, &reg, &me);
                    me.pcie.lock().unwrap().push(c);
                    done(Ok(names))
                });
            });
        if let Err(e) = spawned {
            tracing::error!("nvme: cannot start an attach thread: {e}");
        }
    }

    fn begin_attach(&self, opts: &AttachOpts) -> Result<(), NvmeError> {
        opts.check()?;
        if self.controller(&opts.name).is_some()
            || self.pcie_controller(&opts.name).is_some()
            || !self.attaching.lock().unwrap().insert(opts.name.clone())
        {
            return Err(NvmeError::Exists(opts.name.clone()));
        }
        Ok(())
    }

    /// Detaches controller `name`: its bdevs are hot-removed and its connections closed. Main
    /// reactor.
    pub fn detach(&self, name: &str) -> Result<(), NvmeError> {
        if let Some(c) = self.pcie_controller(name) {
            c.delete(true);
            return Ok(());
        }
        let c = self
            .controller(name)
            .ok_or_else(|| NvmeError::NotFound(name.to_string()))?;
        c.delete();
        Ok(())
    }

    /// Drops `c` from the list (it deleted itself).
    pub(crate) fn forget(&self, name: &str, c: &Controller) {
        self.ctrlrs
            .lock()
            .unwrap()
            .retain(|x| !(x.name() == name && std::ptr::eq(Arc::as_ptr(x), c)));
    }

    /// Drops PCIe controller `c` from the list (it deleted itself).
    pub(crate) fn forget_pcie(&self, c: &PcieController) {
        self.pcie.lock().unwrap().retain(|x| !std::ptr::eq(Arc::as_ptr(x), c));
    }

    /// Resets controller `name` (`bdev_nvme_reset_controller`): a PCIe controller is reset
    /// by its admin poller (in-flight I/O is re-submitted afterwards). Fabrics controllers
    /// are not reset this way yet (`Unsupported`).
    pub fn reset(&self, name: &str) -> Result<(), NvmeError> {
        if let Some(c) = self.pcie_controller(name) {
            c.request_reset();
            return Ok(());
        }
        if self.controller(name).is_some() {
            return Err(NvmeError::Unsupported(
                "bdev_nvme_reset_controller is supported for PCIe controllers only".into(),
            ));
        }
        Err(NvmeError::NotFound(name.to_string()))
    }

    /// bdev_nvme_get_controllers' result (all, or `name` only).
    pub fn controllers_json(&self, name: Option<&str>) -> Result<Value, NvmeError> {
        let list: Vec<Value> = self
            .controllers()
            .iter()
            .filter(|c| name.is_none_or(|n| c.name() == n))
            .map(|c| json!({"name": c.name(), "ctrlrs": [c.ctrlr_json()]}))
            .chain(
                self.pcie
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|c| name.is_none_or(|n| c.name() == n))
                    .map(|c| json!({"name": c.name(), "ctrlrs": [c.ctrlr_json()]})),
            )
            .collect();
        if let Some(n) = name {
            if list.is_empty() {
                return Err(NvmeError::NotFound(n.to_string()));
            }
        }
        Ok(Value::Array(list))
    }
}
