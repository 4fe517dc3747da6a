//! The md arrays of one bdev registry ([`MdRegistry`]), the array bdev's backend, and the two
//! ends of an array's life: starting it (the end of create and of assembly: the bdev named after
//! the array and its daemon are registered) and stopping it.
//!
//! # md as a bdev module
//!
//! [`MdRegistry`] is md's [`BdevModule`]: the bdev registry owns it, builds it on first use
//! ([`MdRegistry::of`], i.e. `reg.module::<MdRegistry>()`) and keeps it as long as it lives; the
//! md registry keeps only a `Weak` of the bdev registry. As a module it
//!
//! * examines every bdev that registers ([`BdevModule::examine`]): examine-on-appear, once
//!   [`MdRegistry::enable_auto_assembly`] turned it on (`assemble/appear.rs`; its table of
//!   members seen is module state, next to the arrays);
//! * stops every array at shutdown ([`BdevModule::fini`], [`crate::array`]'s stop below), so the
//!   members get their final superblocks while they are still there: md is in the `"bdev"`
//!   subsystem, whose modules stop after those of later subsystems (exports, dm);
//! * has no module-level save_config calls: each array bdev saves its own `md_assemble`
//!   ([`BdevBackend::config`]) and names its members as its bases ([`BdevBackend::bases`]), so
//!   the registry's plan recreates it after them, in the latest subsystem any of them is in (an
//!   array over a dm device in `"dm"`).
//!
//! # Start
//!
//! `MdRegistry::start_array` takes a finished plan: it builds the array's shared state (slot
//! states, resync checkpoint, write gate, bitmap), its `IoDevice` whose per-core value the
//! layout builds (`Layout::core`), registers the bdev (optimal I/O boundary from the layout) and
//! starts the daemon.
//!
//! # Stop
//!
//! [`MdRegistry::stop`] hands the stop to the daemon: it stops a running sync at its next window
//! (keeping the checkpoint), unregisters the bdev (its channels fail new I/O), writes every
//! member's superblock with events + 1 ("clean" when nothing is in flight), and drops the member
//! descriptors (releasing the claims).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use keel_bdev::{
    BackendChannel, Bdev, BdevBackend, BdevInfo, BdevModule, BdevParams, BdevRegistry, ChannelCx, ConfigCall,
    ExamineToken, ModuleDone,
};
use keel_reactor::{CoreId, IoDevice};
use serde_json::{json, Value};

use super::{Array, ArrayInfo, Ctl, StartPlan, SyncRequest, DEFAULT_SPEED_MAX_KBS, DEFAULT_SPEED_MIN_KBS, MODULE};
use crate::assemble::AutoState;
use crate::channel::{CoreSetup, MdCore};
use crate::intent::Intent;
use crate::shared::Shared;
use crate::superblock::{Superblock, V1_2_SUPER_OFFSET_SECTORS};
use crate::sync::{SyncProgress, SyncSpeed};
use crate::MdError;

/// The array bdev's backend.
struct MdBackend {
    array: Arc<Array>,
}

impl MdBackend {
    /// The bdevs the array holds: its members in role order, then its spares.
    fn member_names(&self) -> Vec<String> {
        let ctl = self.array.ctl();
        ctl.slots
            .iter()
            .flatten()
            .chain(ctl.spares.iter())
            .map(|m| m.name.clone())
            .collect()
    }
}

impl BdevBackend for MdBackend {
    fn create_channel(&self, cx: &ChannelCx) -> Box<dyn BackendChannel> {
        MdCore::backend(self.array.io_device.get_channel(), cx)
    }

    fn driver_specific(&self) -> Value {
        json!({ "md": self.array.info().to_json() })
    }

    /// The bdev went away without `md_stop` (a shutdown removing every bdev, a forced delete):
    /// stop the array the same way, so the members get their final superblocks and are released.
    fn on_unregister(&self) {
        let _ = self.array.request_stop(None);
    }

    /// Arrays come back through `md_assemble` by UUID (never `md_create`, which would write
    /// fresh superblocks over the data).
    fn config(&self, _info: &BdevInfo) -> Option<ConfigCall> {
        let members = self.member_names();
        Some(ConfigCall {
            method: "md_assemble",
            params: json!({
                "name": self.array.name,
                "uuid": Superblock::uuid_text(&self.array.set_uuid),
                "members": members,
            }),
        })
    }

    /// The members and spares: save_config assembles the array after them (and in the latest
    /// subsystem any of them is in).
    fn bases(&self) -> Vec<String> {
        self.member_names()
    }
}

/// The md arrays of one bdev registry: md's module state, owned by that registry and reached
/// with [`MdRegistry::of`] (`reg.module::<MdRegistry>()`). `Send + Sync`; control path only.
pub struct MdRegistry {
    pub(crate) bdevs: Weak<BdevRegistry>,
    pub(crate) arrays: Mutex<Vec<Arc<Array>>>,
    /// Names being created or assembled (so two concurrent starts of one name cannot both pass).
    pub(crate) creating: Mutex<Vec<String>>,
    /// Examine-on-appear: whether it is on, the members it saw (`assemble/appear.rs`).
    pub(crate) auto: Mutex<AutoState>,
    pub(crate) me: Weak<MdRegistry>,
}

/// md as a bdev module: the registry's one [`MdRegistry`] (see the module docs).
impl BdevModule for MdRegistry {
    /// No arrays yet, examine-on-appear off (state only: nothing starts before the first call).
    fn init(bdevs: &Arc<BdevRegistry>) -> Arc<MdRegistry> {
        Arc::new_cyclic(|me| MdRegistry {
            bdevs: Arc::downgrade(bdevs),
            arrays: Mutex::new(Vec::new()),
            creating: Mutex::new(Vec::new()),
            auto: Mutex::new(AutoState::default()),
            me: me.clone(),
        })
    }

    fn name(&self) -> &'static str {
        MODULE
    }

    /// Examine-on-appear, when enabled: the superblock is read on the main reactor, holding
    /// `token` until what it started (an assembly, a re-add) is done.
    fn examine(&self, bdev: &Arc<Bdev>, token: ExamineToken) {
        self.examine_appeared(bdev, token);
    }

    /// Stops every array (final superblocks written, members released), then `done`.
    fn fini(&self, done: ModuleDone) {
        self.stop_all(move || done.done());
    }
}

impl MdRegistry {
    /// The md registry of `bdevs`, created on first use: `bdevs.module::<MdRegistry>()`. Any
    /// thread.
    pub fn of(bdevs: &Arc<BdevRegistry>) -> Arc<MdRegistry> {
        bdevs.module::<MdRegistry>()
    }

    pub(crate) fn bdevs(&self) -> Result<Arc<BdevRegistry>, MdError> {
        self.bdevs.upgrade().ok_or(MdError::RegistryGone)
    }

    /// The arrays (all, or the one named), as `md_get_arrays` shows them. Any thread.
    pub fn arrays(&self, name: Option<&str>) -> Result<Vec<ArrayInfo>, MdError> {
        let arrays: Vec<Arc<Array>> = self.arrays.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let out: Vec<ArrayInfo> = arrays
            .iter()
            .filter(|a| name.is_none_or(|n| a.name == n))
            .map(|a| a.info())
            .collect();
        if let (Some(n), true) = (name, out.is_empty()) {
            return Err(MdError::NotFound(format!("md array '{n}' not found")));
        }
        Ok(out)
    }

    pub(crate) fn find(&self, name: &str) -> Result<Arc<Array>, MdError> {
        self.arrays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|a| a.name == name)
            .cloned()
            .ok_or_else(|| MdError::NotFound(format!("md array '{name}' not found")))
    }

    /// Whether `name` is taken by a bdev, an array or a start in progress.
    pub(crate) fn name_taken(&self, reg: &BdevRegistry, name: &str) -> bool {
        reg.get(name).is_some()
            || self
                .arrays
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|a| a.name == name)
            || self
                .creating
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|n| n == name)
    }

    /// Reserves `name` for a start in progress; `false` if taken.
    pub(crate) fn reserve(&self, reg: &BdevRegistry, name: &str) -> bool {
        if self.name_taken(reg, name) {
            return false;
        }
        self.creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.to_string());
        true
    }

    pub(crate) fn unreserve(&self, name: &str) {
        self.creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|n| n != name);
    }

    /// Starts an array whose metadata is on its members: registers the bdev (named after the
    /// array) and the daemon. Called on the main reactor by create and assembly.
    pub(crate) fn start_array(self: &Arc<Self>, plan: StartPlan) -> Result<(), MdError> {
        let reg = self.bdevs()?;
        let intent = match &plan.bitmap {
            Some((h, bits)) => Some(Intent::with_resync_offset(h.clone(), bits, plan.resync_cp)?),
            None => None,
        };
        let bitmap_offset_bytes = plan
            .bitmap
            .as_ref()
            .map(|_| (V1_2_SUPER_OFFSET_SECTORS as i64 + plan.template.bitmap_offset_sectors as i64) as u64 * 512);
        let shared = Arc::new(Shared::new(&plan.states, plan.resync_cp, plan.dirty, intent));
        for (r, &s) in plan.recovered_sectors.iter().enumerate() {
            shared.slots[r].set_recovered_sectors(s);
        }
        let layout = plan.layout.clone();
        let gated = plan.personality.caps().resync;
        let name = plan.name.clone();
        let array = Arc::new_cyclic(|weak: &Weak<Array>| {
            let w = weak.clone();
            let (l2, s2, n2) = (layout.clone(), shared.clone(), name.clone());
            let io_device = IoDevice::new(format!("md_{name}"), move |core: CoreId| {
                let members = match w.upgrade() {
                    Some(a) => a
                        .ctl()
                        .slots
                        .iter()
                        .map(|s| s.as_ref().map_or((0, None), |m| (m.id, Some(m.desc.channel()))))
                        .collect(),
                    None => (0..l2.geometry().roles()).map(|_| (0, None)).collect(),
                };
                l2.clone().core(CoreSetup {
                    name: n2.clone(),
                    core: core.0,
                    layout: l2.clone(),
                    shared: s2.clone(),
                    members,
                    gated,
                })
            });
            let events = plan.template.events;
            Array {
                name: name.clone(),
                personality: plan.personality,
                set_uuid: plan.set_uuid,
                chunk_kb: plan.chunk_kb,
                block_size: plan.block_size,
                num_blocks: plan.num_blocks,
                layout: layout.clone(),
                shared: shared.clone(),
                io_device,
                speed: Arc::new(SyncSpeed {
                    min_kbs: AtomicU64::new(DEFAULT_SPEED_MIN_KBS),
                    max_kbs: AtomicU64::new(DEFAULT_SPEED_MAX_KBS),
                    window_kb: AtomicU64::new(0),
                }),
                progress: Arc::new(SyncProgress::default()),
                bitmap_offset_bytes,
                ctl: Mutex::new(Ctl {
                    slots: plan.slots,
                    spares: plan.spares,
                    faulty: Vec::new(),
                    template: plan.template,
                    events,
                    request: SyncRequest::Auto,
                    sb_needed: false,
                    readd_bitmap: plan.readd_bitmap,
                    mismatch_sectors: 0,
                    last_action: None,
                    stop: None,
                    stopping: false,
                    failed: false,
                    interrupt: false,
                }),
                wake: AtomicBool::new(true),
            }
        });
        let params = BdevParams {
            name: name.clone(),
            uuid: Some(uuid::Uuid::from_bytes(array.set_uuid)),
            product_name: "md RAID",
            module: MODULE,
            block_size: array.block_size,
            num_blocks: array.num_blocks,
            caps: plan.caps,
            optimal_io_boundary_blocks: (layout.optimal_io_boundary_sectors() * 512 / array.block_size as u64) as u32,
        };
        reg.register(params, Arc::new(MdBackend { array: array.clone() }))
            .map_err(|e| match e {
                keel_bdev::BdevError::Exists(n) => MdError::Exists(format!("name '{n}' is already in use")),
                other => MdError::Bdev(other),
            })?;
        self.arrays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(array.clone());
        crate::daemon::start(self.clone(), array);
        Ok(())
    }

    /// `md_stop`: stops array `name` (see the module docs). Refused (`Busy`, naming the
    /// holders) while the array's bdev is open, as Linux md refuses to stop an open array.
    /// Called on the main reactor; `done` runs there once the superblocks are written and the
    /// members released.
    pub fn stop(self: &Arc<Self>, name: &str, done: impl FnOnce(Result<(), MdError>) + Send + 'static) {
        match self.find(name).and_then(|_| self.check_stoppable(name)) {
            Ok(()) => self.stop_now(name, done),
            Err(e) => done(Err(e)),
        }
    }

    /// `bdev_raid_delete`: stops array `name` as a bdev delete does — refused (`Busy`) only
    /// while a module or an export holds the bdev ([`keel_bdev::BdevRegistry::check_removable`]:
    /// a dm table, an NBD export), while other openers see the bdev go (SPDK's unregister).
    /// Main reactor; `done` runs there.
    pub fn delete(self: &Arc<Self>, name: &str, done: impl FnOnce(Result<(), MdError>) + Send + 'static) {
        let held = self.find(name).and_then(|_| {
            self.bdevs()?
                .check_removable(name)
                .map_err(|e| MdError::Busy(e.to_string()))
        });
        match held {
            Ok(()) => self.stop_now(name, done),
            Err(e) => done(Err(e)),
        }
    }

    /// Stops array `name` whoever has it open.
    fn stop_now(self: &Arc<Self>, name: &str, done: impl FnOnce(Result<(), MdError>) + Send + 'static) {
        let array = match self.find(name) {
            Ok(a) => a,
            Err(e) => return done(Err(e)),
        };
        if let Err(Some(done)) = array.request_stop(Some(Box::new(done))) {
            done(Err(MdError::Busy(format!("md array '{name}' is already stopping"))));
        }
    }

    /// Stops every array (shutdown: [`BdevModule::fini`]). Called on the main reactor; `done`
    /// runs there once every array's members have their final superblocks and are released.
    fn stop_all(&self, done: impl FnOnce() + Send + 'static) {
        let arrays: Vec<Arc<Array>> = self.arrays.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let left = Arc::new(std::sync::atomic::AtomicUsize::new(arrays.len() + 1));
        type Once = Mutex<Option<Box<dyn FnOnce() + Send>>>;
        let done: Arc<Once> = Arc::new(Mutex::new(Some(Box::new(done))));
        let finish = {
            let (left, done) = (left.clone(), done.clone());
            move || {
                if left.fetch_sub(1, Ordering::SeqCst) == 1 {
                    if let Some(d) = done.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        d();
                    }
                }
            }
        };
        for a in arrays {
            let f = finish.clone();
            if a.request_stop(Some(Box::new(move |_| f()))).is_err() {
                // Already stopping: its daemon ends soon; do not wait for it.
                finish();
            }
        }
        finish();
    }
}
