//! Mapped devices and their life cycle (spec §1, §4–§6).
//!
//! # Objects
//!
//! * [`DmRegistry`] — the mapped devices of one [`BdevRegistry`]: dm's [`BdevModule`], so the
//!   bdev registry owns it and builds it on first use ([`DmRegistry::of`], i.e.
//!   `reg.module::<DmRegistry>()`); it keeps only a `Weak` of the registry. It also holds the
//!   **shared dm claims**: one writable, `"dm"`-claimed descriptor per base bdev, shared by every
//!   table that names it (Linux's single dm holder), released when the last such table is
//!   destroyed. As a module it names the `"dm"` save_config subsystem ([`SUBSYSTEM`]) and gives
//!   its devices' calls (`config.rs`); it has no examine hook and nothing to stop at shutdown
//!   (no daemon: its devices go with their bdevs, which the application removes after the
//!   modules' fini, topmost first).
//! * `Device` — one mapped device: name, optional uuid, minor, event counter, live and inactive
//!   table slots, suspended flag, its bdev (once it had a live table) and its per-core
//!   [`IoDevice`]. Everything under a mutex: control path only.
//! * `DmBackend` — the bdev backend of a mapped device's bdev (module `"dm"`, product
//!   [`PRODUCT_NAME`]). Its channel is the device's [`DmCore`] on that core.
//!
//! # Operations
//!
//! Called on the main reactor (RPC handlers; tests inside `TestDriver::enter`). Quick ones
//! answer at once (`load`, `clear`, `info`, `table`, `status`, `deps`, `message`); the others take
//! a completion and are **serialised per device** (an operation queue, Linux's suspend lock):
//! `create` with a table, `suspend`, `resume`, `remove`, `rename`, `set_uuid`.
//!
//! * **suspend** publishes `suspended` (for channels created later), visits every core (hold new
//!   I/O, release delay FIFOs) and completes when every core drained its in-flight I/O. The
//!   drain is bounded ([`DRAIN_BOUND`] unless the caller says otherwise): I/O can stay in flight
//!   below the device for as long as something there holds it (a suspended device it maps
//!   onto), and an RPC must answer. Past the bound the device runs again — nothing changed —
//!   and the error names the suspended devices below. Linux waits without a bound instead.
//! * **resume** with an inactive table: checks that the swap can happen (a table that changes the
//!   device's size or block size needs the bdev closed: the bdev is then re-registered at the new
//!   geometry; open → EBUSY and nothing changes), suspends if needed, moves the inactive table to
//!   the live slot, publishes it, visits every core to install it and run again. Without one it
//!   just runs again. The event counter does not move (spec §6). A closed bdev is also
//!   re-registered when the new table supports other ops; an open one keeps its ops and a piece
//!   the new table cannot serve fails (`Unsupported`) per I/O.
//!   A staged table that names a bdev removed since it was loaded is refused (ENODEV) and
//!   nothing changes — checked before the suspend and again right before the swap.
//! * **remove**: EBUSY while the bdev is open unless `force`, the message naming who holds it
//!   ([`BdevRegistry::holders`]); even with `force`, EBUSY while another table names the
//!   device's bdev (or a layer over it that would go with it). Unregisters the bdev (new I/O
//!   fails, held I/O is aborted), waits for in-flight I/O, drops every core's snapshot, then the
//!   tables (releasing the claims), and forgets the device.
//! * **rename / set_uuid** raise an event; a rename re-registers the bdev under the new name and
//!   so needs it closed.
//!
//! # Bases: deletes refused, hot removal survived
//!
//! A bdev that a live or staged table names is *held*: as a [`BdevModule`], dm lists those
//! devices in [`BdevModule::holds`], and every module's delete refuses (EBUSY, naming the
//! devices) to remove such a bdev or one whose removal would take it along (a malloc under a
//! passthru a table names) — as Linux refuses to remove a disk dm holds. So a table never names
//! a bdev a user deleted, and save_config always reloads.
//!
//! A base bdev that is hot-removed anyway (the disk vanished) is not cascaded: the mapped device
//! stays (as in Linux), I/O to the missing base fails, and a new table can be swapped in to
//! replace it; a staged table naming it cannot be resumed. save_config then writes the live
//! table with `error` targets where the lost bdev was ([`Table::config_text`]: the I/O that
//! fails now fails after a reload) and leaves the unresumable staged table out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use keel_bdev::{
    BackendChannel, Bdev, BdevBackend, BdevError, BdevInfo, BdevModule, BdevParams, BdevRegistry, ChannelCx,
    ConfigCall, ConfigEntry, Descriptor, Subsystem,
};
use keel_reactor::{current, Cores, IoDevice, PollStatus};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::channel::{DmChannel, DmCore, DrainTicket, Published};
use crate::error::DmError;
use crate::events::Events;
use crate::table::{self, Table, TableDev};
use crate::target::{target_types, DevGeometry, SECTOR_BYTES};

/// Module name of dm bdevs (and of the claims dm takes).
pub const MODULE: &str = "dm";
/// The save_config subsystem of mapped devices: loaded after `"bdev"`, whose bdevs the tables
/// map. What [`DmRegistry`] declares as a [`BdevModule`] (the RPC layer serves it).
pub const SUBSYSTEM: Subsystem = Subsystem {
    name: "dm",
    depends_on: &["bdev"],
};
/// `product_name` of dm bdevs.
pub const PRODUCT_NAME: &str = "Device Mapper";
/// The block-device major number `info` reports (the capture machine's dm major).
pub const MAJOR: u32 = 253;
/// Longest device name (Linux: 127 bytes plus NUL).
pub const MAX_NAME_LEN: usize = 127;
/// Longest uuid (Linux: 128 bytes plus NUL).
pub const MAX_UUID_LEN: usize = 128;
/// How often a `wait` with a timeout checks its deadline.
const WAIT_CHECK_US: u64 = 10_000;

/// How long a suspend (and a resume's table swap) waits by default for in-flight I/O before it
/// gives up and runs the device again ([`DmError::DrainTimedOut`]).
pub const DRAIN_BOUND: Duration = Duration::from_secs(10);

type Done = Box<dyn FnOnce(Result<(), DmError>) + Send>;
/// What runs after a suspend's drain: `true` drained, `false` the bound passed first.
type Drained = Box<dyn FnOnce(bool) + Send>;

/// A shared dm claim on a base bdev: one writable descriptor claimed with module `"dm"`.
pub(crate) struct Claim {
    pub desc: Descriptor,
}

/// `create` parameters.
#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    pub name: String,
    /// dmsetup table text; `None` or no target lines = create without a table (`--notable`).
    pub table: Option<String>,
    /// dm uuid (any string up to 128 bytes; not the bdev's UUID).
    pub uuid: Option<String>,
    /// The table given here is read-only.
    pub readonly: bool,
    /// UUID of the device's bdev (random when `None`); save_config keeps it.
    pub bdev_uuid: Option<Uuid>,
    /// The minor number (dmsetup's `--minor`); the lowest free one when `None`.
    pub minor: Option<u32>,
}

/// What `dmsetup info` shows about a device (spec §7.1/§7.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmInfo {
    pub name: String,
    pub uuid: Option<String>,
    pub suspended: bool,
    /// The live table is read-only.
    pub read_only: bool,
    pub live_table: bool,
    pub inactive_table: bool,
    /// Descriptors open on the device's bdev.
    pub open_count: usize,
    pub event_nr: u32,
    pub major: u32,
    pub minor: u32,
    /// Targets of the live table.
    pub target_count: usize,
    /// `None` without a live table (dmsetup omits the line).
    pub read_ahead_sectors: Option<u64>,
    pub size_sectors: u64,
    /// The live table's logical block size.
    pub block_size: Option<u32>,
}

impl DmInfo {
    /// `ACTIVE` or `SUSPENDED`, with ` (READ-ONLY)` when the live table is read-only.
    pub fn state(&self) -> String {
        let mut s = if self.suspended { "SUSPENDED" } else { "ACTIVE" }.to_string();
        if self.read_only {
            s.push_str(" (READ-ONLY)");
        }
        s
    }

    /// `None`, `LIVE`, `INACTIVE` or `LIVE & INACTIVE`.
    pub fn tables_present(&self) -> &'static str {
        match (self.live_table, self.inactive_table) {
            (false, false) => "None",
            (true, false) => "LIVE",
            (false, true) => "INACTIVE",
            (true, true) => "LIVE & INACTIVE",
        }
    }

    /// The 4-character `Stat` column: `L`/`-`, `I`/`-`, `s`/`-`, `r`/`w`.
    pub fn attr(&self) -> String {
        [
            if self.live_table { 'L' } else { '-' },
            if self.inactive_table { 'I' } else { '-' },
            if self.suspended { 's' } else { '-' },
            if self.read_only { 'r' } else { 'w' },
        ]
        .iter()
        .collect()
    }
}

/// Serialises a device's asynchronous operations.
#[derive(Default)]
struct OpQueue {
    busy: bool,
    waiting: VecDeque<Box<dyn FnOnce(OpGuard) + Send>>,
}

/// Held by the running operation; dropping it starts the next one.
pub(crate) struct OpGuard {
    dev: Arc<Device>,
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        let next = {
            let mut q = self.dev.ops.lock().unwrap_or_else(|e| e.into_inner());
            match q.waiting.pop_front() {
                Some(op) => Some(op),
                None => {
                    q.busy = false;
                    None
                }
            }
        };
        if let Some(op) = next {
            op(OpGuard { dev: self.dev.clone() });
        }
    }
}

/// The mutable state of a device.
pub(crate) struct DevState {
    pub name: String,
    pub uuid: Option<String>,
    pub live: Option<Arc<Table>>,
    pub inactive: Option<Arc<Table>>,
    pub suspended: bool,
    pub bdev: Option<Arc<Bdev>>,
    pub backend: Option<Arc<DmBackend>>,
    pub bdev_uuid: Uuid,
    /// Being removed or removed: operations fail with NotFound.
    pub removed: bool,
}

/// One mapped device.
pub(crate) struct Device {
    /// Creation order (save_config tie-break).
    pub id: u64,
    pub minor: u32,
    pub events: Arc<Events>,
    pub io_device: IoDevice<DmCore>,
    pub published: Arc<Mutex<Published>>,
    pub st: Mutex<DevState>,
    ops: Mutex<OpQueue>,
}

impl Device {
    pub(crate) fn state(&self) -> MutexGuard<'_, DevState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn published(&self) -> MutexGuard<'_, Published> {
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `op` when no other operation of this device runs.
    fn exclusive(self: &Arc<Self>, op: impl FnOnce(OpGuard) + Send + 'static) {
        {
            let mut q = self.ops.lock().unwrap_or_else(|e| e.into_inner());
            if q.busy {
                q.waiting.push_back(Box::new(op));
                return;
            }
            q.busy = true;
        }
        op(OpGuard { dev: self.clone() })
    }

    fn info(&self) -> DmInfo {
        let st = self.state();
        let live = st.live.as_deref();
        DmInfo {
            name: st.name.clone(),
            uuid: st.uuid.clone(),
            suspended: st.suspended,
            read_only: live.is_some_and(|t| t.readonly),
            live_table: live.is_some(),
            inactive_table: st.inactive.is_some(),
            open_count: st.bdev.as_ref().map(|b| b.open_count()).unwrap_or(0),
            event_nr: self.events.number(),
            major: MAJOR,
            minor: self.minor,
            target_count: live.map(|t| t.lines.len()).unwrap_or(0),
            read_ahead_sectors: live.map(|t| t.read_ahead_sectors()),
            size_sectors: live.map(|t| t.size_sectors).unwrap_or(0),
            block_size: live.map(|t| t.block_size),
        }
    }

    /// The bdevs this device's live and inactive tables use.
    fn dep_bdevs(&self) -> Vec<Arc<Bdev>> {
        let st = self.state();
        let mut v: Vec<Arc<Bdev>> = Vec::new();
        for t in [st.live.as_deref(), st.inactive.as_deref()].into_iter().flatten() {
            for d in &t.devs {
                if let Some(c) = &d.claim {
                    if !v.iter().any(|b| Arc::ptr_eq(b, c.desc.bdev())) {
                        v.push(c.desc.bdev().clone());
                    }
                }
            }
        }
        v
    }
}

/// The bdev backend of a mapped device's bdev.
pub(crate) struct DmBackend {
    io_device: IoDevice<DmCore>,
    /// dm itself unregisters this bdev to register it again (rename, new geometry).
    internal: Arc<AtomicBool>,
    /// dm itself removes the device (remove): no cascade from `on_unregister`.
    by_dm: AtomicBool,
    dev: Weak<Device>,
    reg: Weak<DmRegistry>,
}

impl BdevBackend for DmBackend {
    fn create_channel(&self, cx: &ChannelCx) -> Box<dyn BackendChannel> {
        Box::new(DmChannel::new(self.io_device.get_channel(), self.internal.clone(), cx))
    }

    fn driver_specific(&self) -> Value {
        let Some(dev) = self.dev.upgrade() else {
            return json!({});
        };
        let info = dev.info();
        let table = dev.state().live.as_ref().map(|t| t.table_text()).unwrap_or_default();
        json!({"dm": {
            "name": info.name,
            "uuid": info.uuid,
            "minor": info.minor,
            "state": info.state(),
            "tables_present": info.tables_present(),
            "table": table,
        }})
    }

    /// Mapped devices are saved by dm's module-level `dm_create` calls ([`BdevModule::config`]),
    /// not here.
    fn config(&self, _info: &BdevInfo) -> Option<ConfigCall> {
        None
    }

    /// The bdevs the live table maps (current names): what this device stands on, for
    /// save_config's placement of bdevs built on it. Empty while the device is being removed.
    fn bases(&self) -> Vec<String> {
        let Some(dev) = self.dev.upgrade() else {
            return Vec::new();
        };
        let st = dev.state();
        st.live.as_ref().map(|t| t.deps()).unwrap_or_default()
    }

    fn on_unregister(&self) {
        if self.internal.load(Ordering::Acquire) || self.by_dm.load(Ordering::Acquire) {
            return;
        }
        // Someone else removed the bdev (shutdown): the mapped device goes with it.
        if let (Some(reg), Some(dev)) = (self.reg.upgrade(), self.dev.upgrade()) {
            tracing::debug!(name = %dev.state().name, "dm bdev unregistered from outside: removing the device");
            let dev2 = dev.clone();
            dev.exclusive(move |guard| reg.finish_remove(dev2, guard, Box::new(|_| {})));
        }
    }
}

struct RegInner {
    devices: Vec<Arc<Device>>,
    claims: Vec<Weak<Claim>>,
    next_id: u64,
}

/// The mapped devices of one bdev registry: dm's module state, owned by that registry and
/// reached with [`DmRegistry::of`] (`reg.module::<DmRegistry>()`). `Send + Sync`; control path
/// only.
///
/// Methods run on the main reactor (RPC handlers; `TestDriver::enter` in tests). The ones that
/// answer at once (`load`, `clear`, `set_uuid`, `info`, `list`, `table`, `status`, `deps`,
/// `message`) may also be called off the reactors. The ones that take `done` (`create`,
/// `suspend`, `resume`, `remove`, `rename`, `wait`) complete later: they visit every core and
/// call `done` exactly once, on the calling core. No method touches I/O buffers.
pub struct DmRegistry {
    bdevs: Weak<BdevRegistry>,
    cores: Cores,
    inner: Mutex<RegInner>,
    me: Weak<DmRegistry>,
}

/// dm as a bdev module: the registry's one [`DmRegistry`] (see the module docs).
impl BdevModule for DmRegistry {
    /// An empty set of devices for `bdevs` (state only: nothing starts before the first call).
    fn init(bdevs: &Arc<BdevRegistry>) -> Arc<DmRegistry> {
        Arc::new_cyclic(|me| DmRegistry {
            bdevs: Arc::downgrade(bdevs),
            cores: bdevs.cores().clone(),
            inner: Mutex::new(RegInner {
                devices: Vec::new(),
                claims: Vec::new(),
                next_id: 1,
            }),
            me: me.clone(),
        })
    }

    fn name(&self) -> &'static str {
        MODULE
    }

    fn subsystem(&self) -> Subsystem {
        SUBSYSTEM
    }

    /// Every device's `dm_create`, staged `dm_load` and `dm_suspend` (`config.rs`).
    fn config(&self, reg: &BdevRegistry) -> Vec<ConfigEntry> {
        self.config_entries(reg)
    }

    /// The devices whose live or staged table names `bdev`: a delete of it is refused while
    /// one does (a table naming a deleted bdev could neither be resumed nor loaded from
    /// save_config again).
    fn holds(&self, bdev: &Arc<Bdev>) -> Vec<String> {
        self.devices()
            .iter()
            .filter_map(|d| {
                let st = d.state();
                if st.removed {
                    return None;
                }
                let live = st.live.as_ref().is_some_and(|t| t.names_bdev(bdev));
                let staged = st.inactive.as_ref().is_some_and(|t| t.names_bdev(bdev));
                let which = match (live, staged) {
                    (true, true) => "live and staged tables",
                    (true, false) => "live table",
                    (false, true) => "staged table",
                    (false, false) => return None,
                };
                Some(format!("dm device '{}' ({which})", st.name))
            })
            .collect()
    }
}

fn validate_name(param: &'static str, name: &str) -> Result<(), DmError> {
    if name.is_empty() {
        return Err(DmError::invalid(param, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(DmError::invalid(param, format!("longer than {MAX_NAME_LEN} bytes")));
    }
    if name.contains('/') || name == "." || name == ".." {
        return Err(DmError::invalid(
            param,
            format!("'{name}': device name cannot contain '/' or be . or .."),
        ));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(DmError::invalid(
            param,
            format!("'{name}' contains whitespace or control characters"),
        ));
    }
    Ok(())
}

/// A claim error's text with who holds the bdev, when that is known.
fn with_holders(reg: &BdevRegistry, bdev: &Arc<Bdev>, e: &BdevError) -> String {
    let holders = reg.holders(bdev);
    if holders.is_empty() {
        e.to_string()
    } else {
        format!("{e} (held by {})", holders.join(", "))
    }
}

/// `'a', 'b'`: names for a message.
fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
}

fn validate_uuid(uuid: &str) -> Result<(), DmError> {
    if uuid.len() > MAX_UUID_LEN {
        return Err(DmError::invalid("uuid", format!("longer than {MAX_UUID_LEN} bytes")));
    }
    if uuid.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(DmError::invalid(
            "uuid",
            format!("'{uuid}' contains whitespace or control characters"),
        ));
    }
    Ok(())
}

impl DmRegistry {
    /// The dm registry of `bdevs`, created on first use: `bdevs.module::<DmRegistry>()`. Any
    /// thread.
    pub fn of(bdevs: &Arc<BdevRegistry>) -> Arc<DmRegistry> {
        bdevs.module::<DmRegistry>()
    }

    fn inner(&self) -> MutexGuard<'_, RegInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bdevs(&self) -> Result<Arc<BdevRegistry>, DmError> {
        self.bdevs
            .upgrade()
            .ok_or_else(|| DmError::invalid("registry", "the bdev registry is gone"))
    }

    fn devices(&self) -> Vec<Arc<Device>> {
        self.inner().devices.clone()
    }

    fn device(&self, name: &str) -> Result<Arc<Device>, DmError> {
        self.devices()
            .into_iter()
            .find(|d| {
                let st = d.state();
                !st.removed && st.name == name
            })
            .ok_or_else(|| DmError::NotFound(name.to_string()))
    }

    /// The device whose bdev is `bdev`.
    fn device_of_bdev(&self, bdev: &Arc<Bdev>) -> Option<Arc<Device>> {
        self.devices()
            .into_iter()
            .find(|d| d.state().bdev.as_ref().is_some_and(|b| Arc::ptr_eq(b, bdev)))
    }

    /// Whether `bdev` is `target`'s bdev or is built on it: through dm tables (a device's live
    /// and staged tables) and through any other layer's bases ([`keel_bdev::BdevBackend::bases`]:
    /// a passthru over a dm device), so a table cannot close a cycle through another module.
    fn built_on(&self, reg: &BdevRegistry, bdev: &Arc<Bdev>, target: &Arc<Device>, depth: usize) -> bool {
        if depth > 64 {
            return true;
        }
        match self.device_of_bdev(bdev) {
            Some(d) if Arc::ptr_eq(&d, target) => true,
            Some(d) => d.dep_bdevs().iter().any(|b| self.built_on(reg, b, target, depth + 1)),
            None => bdev
                .backend()
                .bases()
                .iter()
                .filter_map(|n| reg.get(n))
                .any(|b| self.built_on(reg, &b, target, depth + 1)),
        }
    }

    /// Opens and claims `name` for a table of `dev` (sharing an existing dm claim).
    fn resolve(&self, dev: &Arc<Device>, name: &str) -> Result<TableDev, (String, i32)> {
        let reg = self.bdevs().map_err(|e| (e.to_string(), libc::EINVAL))?;
        let bdev = reg
            .get(name)
            .ok_or_else(|| (format!("Device lookup failed: bdev '{name}' not found"), libc::EINVAL))?;
        if self.built_on(&reg, &bdev, dev, 0) {
            return Err((
                format!("'{name}' is (or is built on) this device: the table would make a dependency cycle"),
                libc::EINVAL,
            ));
        }
        let existing = {
            let mut inner = self.inner();
            inner.claims.retain(|w| w.strong_count() > 0);
            inner
                .claims
                .iter()
                .filter_map(Weak::upgrade)
                .find(|c| Arc::ptr_eq(c.desc.bdev(), &bdev))
        };
        let claim = match existing {
            Some(c) => c,
            None => {
                let bname = bdev.name().to_string();
                let desc = reg
                    .open(bdev.name(), true, move |_| {
                        tracing::warn!(
                            bdev = %bname,
                            "a bdev under dm tables was removed: their I/O to it fails until new tables replace it"
                        );
                    })
                    .map_err(|e| match e {
                        BdevError::Claimed { .. } | BdevError::HasWriters { .. } => {
                            (with_holders(&reg, &bdev, &e), libc::EBUSY)
                        }
                        _ => (e.to_string(), libc::EINVAL),
                    })?;
                desc.claim(MODULE)
                    .map_err(|e| (with_holders(&reg, &bdev, &e), libc::EBUSY))?;
                let c = Arc::new(Claim { desc });
                self.inner().claims.push(Arc::downgrade(&c));
                c
            }
        };
        let info = bdev.info();
        Ok(TableDev {
            name: name.to_string(),
            geometry: DevGeometry {
                block_size: info.block_size,
                num_sectors: info.num_blocks * (info.block_size as u64 / SECTOR_BYTES),
                caps: info.caps,
            },
            claim: Some(claim),
        })
    }

    fn build_table(&self, dev: &Arc<Device>, specs: &[table::LineSpec], readonly: bool) -> Result<Table, DmError> {
        let mut resolve = |name: &str| self.resolve(dev, name);
        table::build(specs, &mut resolve, &dev.events, readonly)
    }

    /// Whether `name` is free for a device (no dm device, no other bdev has it).
    fn name_free(&self, name: &str, mine: Option<&Arc<Device>>) -> Result<(), DmError> {
        let taken_by_dm = self.devices().iter().any(|d| {
            let st = d.state();
            !st.removed && st.name == name && !mine.is_some_and(|m| Arc::ptr_eq(m, d))
        });
        let own_bdev = mine.and_then(|m| m.state().bdev.clone());
        let taken_by_bdev = self
            .bdevs()?
            .get(name)
            .is_some_and(|b| !own_bdev.as_ref().is_some_and(|o| Arc::ptr_eq(o, &b)));
        if taken_by_dm || taken_by_bdev {
            return Err(DmError::Busy(format!("name '{name}' is in use")));
        }
        Ok(())
    }

    /// Creates a mapped device; with a table, loads it and makes it live (a failed load or
    /// resume removes the device again). `done` runs on the calling (main) core.
    pub fn create(&self, opts: CreateOpts, done: impl FnOnce(Result<(), DmError>) + Send + 'static) {
        let done: Done = Box::new(done);
        let r = (|| {
            validate_name("name", &opts.name)?;
            let uuid = opts.uuid.clone().filter(|u| !u.is_empty());
            if let Some(u) = &uuid {
                validate_uuid(u)?;
                if self.devices().iter().any(|d| d.state().uuid.as_deref() == Some(u)) {
                    return Err(DmError::Busy(format!("uuid '{u}' is in use")));
                }
            }
            self.name_free(&opts.name, None)?;
            if let Some(m) = opts.minor {
                if self.devices().iter().any(|d| d.minor == m) {
                    return Err(DmError::Busy(format!("minor {m} is in use")));
                }
            }
            let specs = match &opts.table {
                Some(text) => table::parse(text)?,
                None => Vec::new(),
            };
            let dev = self.new_device(&opts.name, uuid, opts.bdev_uuid, opts.minor);
            Ok((dev, specs))
        })();
        let (dev, specs) = match r {
            Ok(x) => x,
            Err(e) => return done(Err(e)),
        };
        if specs.is_empty() {
            tracing::debug!(name = %opts.name, "dm device created without a table");
            return done(Ok(()));
        }
        match self.build_table(&dev, &specs, opts.readonly) {
            Ok(t) => dev.state().inactive = Some(Arc::new(t)),
            Err(e) => {
                self.forget(&dev);
                return done(Err(e));
            }
        }
        let me = self.me.upgrade().expect("registry alive");
        let dev2 = dev.clone();
        dev.exclusive(move |guard| {
            let me2 = me.clone();
            let dev3 = dev2.clone();
            me.do_resume(
                dev2,
                Some(DRAIN_BOUND),
                guard,
                Box::new(move |r: Result<(), DmError>| {
                    if r.is_err() {
                        me2.forget(&dev3);
                    }
                    done(r)
                }),
            )
        });
    }

    fn new_device(&self, name: &str, uuid: Option<String>, bdev_uuid: Option<Uuid>, minor: Option<u32>) -> Arc<Device> {
        let published = Arc::new(Mutex::new(Published::default()));
        let p2 = published.clone();
        let pname = name.to_string();
        let io_device = IoDevice::new(format!("dm_{name}"), move |core| DmCore::new(core, &p2, &pname));
        let main = self.cores.main_core();
        let mut inner = self.inner();
        let minor = minor.unwrap_or_else(|| {
            (0u32..)
                .find(|m| !inner.devices.iter().any(|d| d.minor == *m))
                .expect("a free minor")
        });
        let dev = Arc::new(Device {
            id: inner.next_id,
            minor,
            events: Events::new(self.cores.clone(), main),
            io_device,
            published,
            st: Mutex::new(DevState {
                name: name.to_string(),
                uuid,
                live: None,
                inactive: None,
                suspended: false,
                bdev: None,
                backend: None,
                bdev_uuid: bdev_uuid.unwrap_or_else(Uuid::new_v4),
                removed: false,
            }),
            ops: Mutex::new(OpQueue::default()),
        });
        inner.next_id += 1;
        inner.devices.push(dev.clone());
        dev
    }

    /// Drops a device from the registry (its tables and claims go with the last reference).
    fn forget(&self, dev: &Arc<Device>) {
        {
            let mut st = dev.state();
            st.removed = true;
            st.live = None;
            st.inactive = None;
        }
        dev.events.cancel_all();
        self.inner().devices.retain(|d| !Arc::ptr_eq(d, dev));
    }

    /// Loads `text` into the inactive slot of `name` (replacing a staged table). The live table
    /// and I/O are untouched; the device need not be suspended. Control path; answers at once.
    pub fn load(&self, name: &str, text: &str, readonly: bool) -> Result<(), DmError> {
        let dev = self.device(name)?;
        let specs = table::parse(text)?;
        let t = self.build_table(&dev, &specs, readonly)?;
        let old = dev.state().inactive.replace(Arc::new(t));
        drop(old);
        tracing::debug!(name, "dm table loaded (inactive)");
        Ok(())
    }

    /// Drops the inactive table of `name` (releasing claims only it held).
    pub fn clear(&self, name: &str) -> Result<(), DmError> {
        let dev = self.device(name)?;
        let old = dev.state().inactive.take();
        drop(old);
        Ok(())
    }

    /// Suspends `name`: new I/O is held, in-flight I/O drains; `done` runs when it has. With
    /// `noflush`, pieces that fail because their base is gone are requeued, not failed.
    /// Idempotent. The drain is bounded by [`DRAIN_BOUND`]: see [`DmRegistry::suspend_within`].
    pub fn suspend(&self, name: &str, noflush: bool, done: impl FnOnce(Result<(), DmError>) + Send + 'static) {
        self.suspend_within(name, noflush, Some(DRAIN_BOUND), done)
    }

    /// [`DmRegistry::suspend`] with an explicit bound on the drain (`None`: wait as long as it
    /// takes, as Linux does). I/O in flight can be held below the device — by a suspended
    /// device it maps onto, a reconnecting remote disk — for as long as that lasts; past
    /// `bound` the suspend gives up: the device runs again (held I/O goes on), nothing has
    /// changed, and `done` gets [`DmError::DrainTimedOut`] naming suspended devices below.
    /// Called on a reactor (the main core); `done` runs there.
    pub fn suspend_within(
        &self,
        name: &str,
        noflush: bool,
        bound: Option<Duration>,
        done: impl FnOnce(Result<(), DmError>) + Send + 'static,
    ) {
        let dev = match self.device(name) {
            Ok(d) => d,
            Err(e) => return done(Err(e)),
        };
        let me = self.me.upgrade().expect("registry alive");
        let dev2 = dev.clone();
        dev.exclusive(move |guard| {
            if dev2.state().removed {
                let n = dev2.state().name.clone();
                return done(Err(DmError::NotFound(n)));
            }
            let me2 = me.clone();
            let dev3 = dev2.clone();
            me.do_suspend(
                &dev2,
                noflush,
                bound,
                Box::new(move |drained| {
                    if drained {
                        done(Ok(()));
                        drop(guard);
                        return;
                    }
                    let err = me2.drain_timed_out(&dev3, bound);
                    me2.run_again(dev3, None, guard, Box::new(move |_| done(Err(err))));
                }),
            )
        });
    }

    /// Suspends `dev` (hold new I/O, drain in flight) and calls `then(true)` once drained, or
    /// `then(false)` if `bound` passes first (the device is still marked suspended: the caller
    /// runs it again). A device already suspended is drained: `then(true)` at once.
    fn do_suspend(&self, dev: &Arc<Device>, noflush: bool, bound: Option<Duration>, then: Drained) {
        let already = {
            let mut st = dev.state();
            let already = st.suspended;
            if !already {
                st.suspended = true;
                let mut p = dev.published();
                p.suspended = true;
                p.noflush = noflush;
            }
            already
        };
        if already {
            return then(true);
        }
        // Whichever comes first — the drain or the deadline — takes `then`; both run on this
        // core, the other finds the slot empty.
        let slot: Arc<Mutex<Option<Drained>>> = Arc::new(Mutex::new(Some(then)));
        let take = |slot: &Mutex<Option<Drained>>| slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        let s2 = slot.clone();
        let ticket = DrainTicket::new(self.cores.clone(), current().core(), move || {
            if let Some(then) = take(&s2) {
                then(true);
            }
        });
        let t2 = ticket.clone();
        dev.io_device
            .for_each_channel(move |c: &DmCore| c.suspend(noflush, &t2), move || ticket.release());
        let Some(bound) = bound else { return };
        let deadline = std::time::Instant::now() + bound;
        let handle: std::rc::Rc<std::cell::RefCell<Option<keel_reactor::PollerHandle>>> = Default::default();
        let h2 = handle.clone();
        let period_us = (bound.as_micros() as u64).clamp(1, WAIT_CHECK_US);
        let h = current().register_timed_poller("dm_drain_bound", period_us, move || {
            if slot.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
                h2.borrow_mut().take();
                return PollStatus::Idle;
            }
            if std::time::Instant::now() < deadline {
                return PollStatus::Idle;
            }
            h2.borrow_mut().take();
            if let Some(then) = take(&slot) {
                then(false);
            }
            PollStatus::Busy
        });
        *handle.borrow_mut() = Some(h);
    }

    /// The error of a drain that outlived `bound`, naming the suspended dm devices `dev` maps
    /// onto (directly or through other layers) — the usual reason I/O stays in flight.
    fn drain_timed_out(&self, dev: &Arc<Device>, bound: Option<Duration>) -> DmError {
        let mut below: Vec<String> = Vec::new();
        if let Ok(reg) = self.bdevs() {
            let mut todo = dev.dep_bdevs();
            let mut seen = 0usize;
            while let Some(b) = todo.pop() {
                seen += 1;
                if seen > 4096 {
                    break;
                }
                match self.device_of_bdev(&b) {
                    Some(d) => {
                        let (suspended, name) = {
                            let st = d.state();
                            (st.suspended, st.name.clone())
                        };
                        if suspended && !below.contains(&name) {
                            below.push(name);
                        }
                        todo.extend(d.dep_bdevs());
                    }
                    None => todo.extend(b.backend().bases().iter().filter_map(|n| reg.get(n))),
                }
            }
        }
        below.sort();
        DmError::DrainTimedOut {
            device: dev.state().name.clone(),
            waited_ms: bound.map_or(0, |b| b.as_millis() as u64),
            held_by: if below.is_empty() {
                String::new()
            } else {
                format!(" (held below by suspended {})", quoted(&below))
            },
        }
    }

    /// Resumes `name`: swaps in the inactive table if there is one (see the module docs), then
    /// lets held I/O go. Resuming a running device without a staged table does nothing.
    /// The swap's drain is bounded by [`DRAIN_BOUND`] (see [`DmRegistry::resume_within`]).
    pub fn resume(&self, name: &str, done: impl FnOnce(Result<(), DmError>) + Send + 'static) {
        self.resume_within(name, Some(DRAIN_BOUND), done)
    }

    /// [`DmRegistry::resume`] with an explicit bound on the drain a table swap needs (`None`:
    /// unbounded). Past it the old table stays live, the device runs again, the staged table
    /// stays staged, and `done` gets [`DmError::DrainTimedOut`]. Called on the main reactor.
    pub fn resume_within(
        &self,
        name: &str,
        bound: Option<Duration>,
        done: impl FnOnce(Result<(), DmError>) + Send + 'static,
    ) {
        let dev = match self.device(name) {
            Ok(d) => d,
            Err(e) => return done(Err(e)),
        };
        let me = self.me.upgrade().expect("registry alive");
        let dev2 = dev.clone();
        dev.exclusive(move |guard| me.do_resume(dev2, bound, guard, Box::new(done)));
    }

    fn do_resume(self: Arc<Self>, dev: Arc<Device>, bound: Option<Duration>, guard: OpGuard, done: Done) {
        let (inactive, suspended, bdev, removed, name) = {
            let st = dev.state();
            (
                st.inactive.clone(),
                st.suspended,
                st.bdev.clone(),
                st.removed,
                st.name.clone(),
            )
        };
        if removed {
            return done(Err(DmError::NotFound(name)));
        }
        let Some(table) = inactive else {
            if !suspended {
                return done(Ok(()));
            }
            return self.run_again(dev, None, guard, done);
        };
        let gone = table.removed_deps();
        if !gone.is_empty() {
            return done(Err(DmError::BaseRemoved {
                device: name,
                bdevs: quoted(&gone),
            }));
        }
        let regeom = match &bdev {
            None => true,
            Some(b) => b.info().block_size != table.block_size || b.info().num_blocks != table.num_blocks(),
        };
        let open = bdev.as_ref().is_some_and(|b| b.open_count() > 0);
        // Supported ops that change are re-registered too when nobody has the bdev open; while it
        // is open the bdev keeps its caps and pieces a new target cannot serve fail per I/O.
        let recaps = bdev.as_ref().is_some_and(|b| b.info().caps != table.caps) && !open;
        let regeom = regeom || recaps;
        if regeom {
            if let Some(b) = &bdev {
                if open {
                    return done(Err(DmError::Busy(format!(
                        "dm device '{name}': the new table changes the device from {} blocks of {} bytes to {} blocks of {} bytes while its bdev is open",
                        b.info().num_blocks,
                        b.info().block_size,
                        table.num_blocks(),
                        table.block_size
                    ))));
                }
            }
            if let Err(e) = self.name_free(&name, Some(&dev)) {
                return done(Err(e));
            }
        }
        let me = self.clone();
        let dev2 = dev.clone();
        let swap = move |drained: bool| {
            if !drained {
                let err = me.drain_timed_out(&dev2, bound);
                return me.run_again(dev2, None, guard, Box::new(move |_| done(Err(err))));
            }
            // A bdev the table names may have gone while the device drained: then the old table
            // stays live, the device runs again and the resume fails.
            let gone = table.removed_deps();
            if !gone.is_empty() {
                let device = dev2.state().name.clone();
                let err = DmError::BaseRemoved {
                    device,
                    bdevs: quoted(&gone),
                };
                return me.run_again(dev2, None, guard, Box::new(move |_| done(Err(err))));
            }
            {
                let mut st = dev2.state();
                if st.inactive.as_ref().is_some_and(|t| Arc::ptr_eq(t, &table)) {
                    st.inactive = None;
                }
                st.live = Some(table.clone());
            }
            dev2.published().table = Some(table.clone());
            if regeom {
                if let Err(e) = me.register_bdev(&dev2, &table) {
                    tracing::error!(error = %e, "dm: cannot register the device's bdev after a swap");
                }
            }
            me.run_again(dev2, Some(table), guard, done);
        };
        self.do_suspend(&dev, false, bound, Box::new(swap));
    }

    /// Clears `suspended` everywhere (installing `table` on every core first when given).
    fn run_again(self: Arc<Self>, dev: Arc<Device>, table: Option<Arc<Table>>, guard: OpGuard, done: Done) {
        {
            let mut p = dev.published();
            p.suspended = false;
            p.noflush = false;
        }
        let dev2 = dev.clone();
        dev.io_device.for_each_channel(
            move |c: &DmCore| c.resume(table.as_ref()),
            move || {
                dev2.state().suspended = false;
                done(Ok(()));
                drop(guard);
            },
        );
    }

    /// (Re-)registers the device's bdev with `table`'s geometry under its current name.
    fn register_bdev(&self, dev: &Arc<Device>, table: &Arc<Table>) -> Result<(), DmError> {
        let reg = self.bdevs()?;
        let (name, old, old_backend, uuid) = {
            let st = dev.state();
            (st.name.clone(), st.bdev.clone(), st.backend.clone(), st.bdev_uuid)
        };
        if let (Some(old), Some(ob)) = (old, old_backend) {
            ob.internal.store(true, Ordering::Release);
            if let Err(e) = reg.unregister(old.name(), || {}) {
                tracing::warn!(error = %e, "dm: old bdev already gone");
            }
        }
        let backend = Arc::new(DmBackend {
            io_device: dev.io_device.clone(),
            internal: Arc::new(AtomicBool::new(false)),
            by_dm: AtomicBool::new(false),
            dev: Arc::downgrade(dev),
            reg: self.me.clone(),
        });
        let boundary = match table.lines.as_slice() {
            [one] => one
                .target
                .split_sectors()
                .map(|(c, _)| (c * SECTOR_BYTES / table.block_size as u64) as u32)
                .unwrap_or(0),
            _ => 0,
        };
        let result = reg.register(
            BdevParams {
                name,
                uuid: Some(uuid),
                product_name: PRODUCT_NAME,
                module: MODULE,
                block_size: table.block_size,
                num_blocks: table.num_blocks(),
                caps: table.caps,
                optimal_io_boundary_blocks: boundary,
            },
            backend.clone(),
        );
        let mut st = dev.state();
        match result {
            Ok(b) => {
                st.bdev = Some(b);
                st.backend = Some(backend);
                Ok(())
            }
            Err(e) => {
                st.bdev = None;
                st.backend = None;
                Err(e.into())
            }
        }
    }

    /// Removes `name`. Refused (EBUSY) while its bdev is open unless `force`; with `force` held
    /// I/O is aborted and new I/O fails, in-flight I/O completes first. `done` runs once the
    /// claims are released.
    pub fn remove(&self, name: &str, force: bool, done: impl FnOnce(Result<(), DmError>) + Send + 'static) {
        let dev = match self.device(name) {
            Ok(d) => d,
            Err(e) => return done(Err(e)),
        };
        let me = self.me.upgrade().expect("registry alive");
        let dev2 = dev.clone();
        dev.exclusive(move |guard| {
            let (bdev, backend, removed, name) = {
                let st = dev2.state();
                (st.bdev.clone(), st.backend.clone(), st.removed, st.name.clone())
            };
            if removed {
                return done(Err(DmError::NotFound(name)));
            }
            let reg = match me.bdevs() {
                Ok(r) => r,
                Err(e) => return done(Err(e)),
            };
            if let Some(b) = &bdev {
                if !force && b.open_count() > 0 {
                    let holders = reg.holders(b);
                    let by = if holders.is_empty() {
                        String::new()
                    } else {
                        format!(": held by {}", holders.join(", "))
                    };
                    return done(Err(DmError::Busy(format!(
                        "dm device '{name}' is open ({} descriptors){by}",
                        b.open_count()
                    ))));
                }
                // Even forced, a device another table names stays (Linux keeps a held device
                // too): that table could never be loaded again.
                if force && reg.get(b.name()).is_some_and(|x| Arc::ptr_eq(&x, b)) {
                    if let Err(e) = reg.check_removable(b.name()) {
                        return done(Err(e.into()));
                    }
                }
            }
            dev2.state().removed = true;
            dev2.published().dead = true;
            match (bdev, backend) {
                (Some(b), Some(be)) if reg.get(b.name()).is_some_and(|x| Arc::ptr_eq(&x, &b)) => {
                    be.by_dm.store(true, Ordering::Release);
                    let me2 = me.clone();
                    let dev3 = dev2.clone();
                    // The name was checked just above on this core: unregister cannot miss it.
                    let r = reg.unregister(b.name(), move || me2.finish_remove(dev3, guard, Box::new(done)));
                    if let Err(e) = r {
                        tracing::error!(error = %e, "dm: bdev vanished during remove");
                    }
                }
                _ => me.finish_remove(dev2, guard, Box::new(done)),
            }
        });
    }

    /// Remove, after the bdev is gone: kill, drain, drop snapshots, then tables and the device.
    fn finish_remove(self: Arc<Self>, dev: Arc<Device>, guard: OpGuard, done: Done) {
        {
            let mut st = dev.state();
            st.removed = true;
            st.bdev = None;
            st.backend = None;
        }
        dev.published().dead = true;
        let origin = current().core();
        let dev2 = dev.clone();
        let me = self.clone();
        let after_drain = move || {
            let dev3 = dev2.clone();
            dev2.io_device.for_each_channel(
                |c: &DmCore| c.drop_table(),
                move || {
                    me.forget(&dev3);
                    dev3.published().table = None;
                    tracing::debug!(name = %dev3.state().name, "dm device removed");
                    done(Ok(()));
                    drop(guard);
                },
            );
        };
        let ticket = DrainTicket::new(self.cores.clone(), origin, after_drain);
        let t2 = ticket.clone();
        dev.io_device.for_each_channel(
            move |c: &DmCore| {
                c.kill();
                c.drain(&t2)
            },
            move || ticket.release(),
        );
    }

    /// Renames `name` to `new_name` (raises an event). The bdev is re-registered under the new
    /// name, which needs it closed (EBUSY otherwise).
    pub fn rename(&self, name: &str, new_name: &str, done: impl FnOnce(Result<(), DmError>) + Send + 'static) {
        if let Err(e) = validate_name("new_name", new_name) {
            return done(Err(e));
        }
        let dev = match self.device(name) {
            Ok(d) => d,
            Err(e) => return done(Err(e)),
        };
        let me = self.me.upgrade().expect("registry alive");
        let dev2 = dev.clone();
        let new_name = new_name.to_string();
        dev.exclusive(move |_guard| {
            let r = me.do_rename(&dev2, &new_name);
            done(r)
        });
    }

    fn do_rename(&self, dev: &Arc<Device>, new_name: &str) -> Result<(), DmError> {
        let (old_name, bdev, removed) = {
            let st = dev.state();
            (st.name.clone(), st.bdev.clone(), st.removed)
        };
        if removed {
            return Err(DmError::NotFound(old_name));
        }
        if old_name == new_name {
            return Err(DmError::Busy(format!("name '{new_name}' is in use")));
        }
        self.name_free(new_name, Some(dev))?;
        if let Some(b) = &bdev {
            if b.open_count() > 0 {
                return Err(DmError::Busy(format!(
                    "dm device '{old_name}' is open: its bdev cannot be renamed while open"
                )));
            }
        }
        dev.state().name = new_name.to_string();
        if bdev.is_some() {
            let live = dev.state().live.clone();
            if let Some(t) = live {
                if let Err(e) = self.register_bdev(dev, &t) {
                    dev.state().name = old_name;
                    return Err(e);
                }
            }
        }
        dev.events.raise();
        tracing::debug!(from = %old_name, to = new_name, "dm device renamed");
        Ok(())
    }

    /// Sets the uuid of a device that has none (raises an event); EINVAL when it has one.
    pub fn set_uuid(&self, name: &str, uuid: &str) -> Result<(), DmError> {
        validate_uuid(uuid)?;
        if uuid.is_empty() {
            return Err(DmError::invalid("uuid", "must not be empty"));
        }
        let dev = self.device(name)?;
        if self.devices().iter().any(|d| d.state().uuid.as_deref() == Some(uuid)) {
            return Err(DmError::Busy(format!("uuid '{uuid}' is in use")));
        }
        {
            let mut st = dev.state();
            if st.uuid.is_some() {
                return Err(DmError::invalid(
                    "uuid",
                    format!("Unable to change uuid of mapped device {name} because uuid is already set"),
                ));
            }
            st.uuid = Some(uuid.to_string());
        }
        dev.events.raise();
        Ok(())
    }

    /// `dmsetup info` of one device.
    pub fn info(&self, name: &str) -> Result<DmInfo, DmError> {
        Ok(self.device(name)?.info())
    }

    /// Every device's info, in name order.
    pub fn list(&self) -> Vec<DmInfo> {
        let mut v: Vec<DmInfo> = self
            .devices()
            .iter()
            .filter(|d| !d.state().removed)
            .map(|d| d.info())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn text_of(&self, name: Option<&str>, form: impl Fn(&Arc<Device>) -> Option<String>) -> Result<String, DmError> {
        match name {
            Some(n) => Ok(form(&self.device(n)?).unwrap_or_default()),
            None => {
                let mut out = String::new();
                for info in self.list() {
                    let Ok(d) = self.device(&info.name) else { continue };
                    match form(&d) {
                        Some(text) if !text.is_empty() => {
                            for line in text.lines() {
                                out.push_str(&info.name);
                                out.push_str(": ");
                                out.push_str(line);
                                out.push('\n');
                            }
                        }
                        _ => {
                            out.push_str(&info.name);
                            out.push_str(": \n");
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// `dmsetup table [--inactive] [name]`: the TABLE form, one line per target (with a `name: `
    /// prefix when no name is given). A device without that table gives an empty text.
    pub fn table(&self, name: Option<&str>, inactive: bool) -> Result<String, DmError> {
        self.text_of(name, |d| {
            let st = d.state();
            let t = if inactive { &st.inactive } else { &st.live };
            t.as_ref().map(|t| t.table_text())
        })
    }

    /// `dmsetup status [name]`: the INFO form of the live table.
    pub fn status(&self, name: Option<&str>) -> Result<String, DmError> {
        self.text_of(name, |d| d.state().live.as_ref().map(|t| t.status_text()))
    }

    /// The bdevs the live table of `name` uses.
    pub fn deps(&self, name: &str) -> Result<Vec<String>, DmError> {
        let dev = self.device(name)?;
        let st = dev.state();
        Ok(st.live.as_ref().map(|t| t.deps()).unwrap_or_default())
    }

    /// `dmsetup message name sector text`: delivered to the live target containing `sector`.
    pub fn message(&self, name: &str, sector: u64, message: &str) -> Result<Option<String>, DmError> {
        let dev = self.device(name)?;
        let live = dev.state().live.clone();
        let Some(t) = live else {
            return Err(DmError::Message(format!("dm device '{name}' has no live table")));
        };
        let words: Vec<&str> = message.split_whitespace().collect();
        if words.is_empty() {
            return Err(DmError::invalid("message", "must not be empty"));
        }
        let Some(i) = t.find(sector) else {
            return Err(DmError::Message(format!(
                "Target message sector {sector} outside device ({} sectors)",
                t.size_sectors
            )));
        };
        t.lines[i]
            .target
            .message(&words)
            .map_err(|reason| DmError::Message(format!("{}: {reason}", t.lines[i].ttype.name)))
    }

    /// Calls `done` with the device's info once its event number differs from `event_nr` (at
    /// once if it already does). With `timeout_us`, gives up after that long (`TimedOut`).
    /// Called on a reactor (the main core); `done` runs there.
    pub fn wait(
        &self,
        name: &str,
        event_nr: u32,
        timeout_us: Option<u64>,
        done: impl FnOnce(Result<DmInfo, DmError>) + Send + 'static,
    ) {
        let dev = match self.device(name) {
            Ok(d) => d,
            Err(e) => return done(Err(e)),
        };
        let finished = Arc::new(AtomicBool::new(false));
        let timed_out = Arc::new(AtomicBool::new(false));
        let (f2, t2, dev2, name2) = (finished.clone(), timed_out.clone(), dev.clone(), name.to_string());
        let id = dev.events.wait(
            event_nr,
            Box::new(move |r| {
                f2.store(true, Ordering::Release);
                match r {
                    Ok(_) => done(Ok(dev2.info())),
                    Err(()) if t2.load(Ordering::Acquire) => done(Err(DmError::TimedOut(name2))),
                    Err(()) => done(Err(DmError::NotFound(name2))),
                }
            }),
        );
        let (Some(id), Some(us)) = (id, timeout_us) else { return };
        let deadline = std::time::Instant::now() + Duration::from_micros(us);
        let events = dev.events.clone();
        let slot: std::rc::Rc<std::cell::RefCell<Option<keel_reactor::PollerHandle>>> = Default::default();
        let s2 = slot.clone();
        let cores = self.cores.clone();
        let h = current().register_timed_poller("dm_wait", WAIT_CHECK_US.min(us.max(1)), move || {
            if finished.load(Ordering::Acquire) {
                s2.borrow_mut().take();
                return PollStatus::Idle;
            }
            if std::time::Instant::now() >= deadline || cores.is_stopping() {
                timed_out.store(true, Ordering::Release);
                events.cancel(id);
                s2.borrow_mut().take();
                return PollStatus::Busy;
            }
            PollStatus::Idle
        });
        *slot.borrow_mut() = Some(h);
    }

    /// Every target type as `(name, (major, minor, patch))`, most recently registered first.
    pub fn target_versions() -> Vec<(&'static str, (u32, u32, u32))> {
        target_types().iter().rev().map(|t| (t.name, t.version)).collect()
    }

    /// What save_config needs of every device, in creation order.
    pub(crate) fn snapshot(&self) -> Vec<crate::config::DevSnapshot> {
        let mut v: Vec<(u64, crate::config::DevSnapshot)> = self
            .devices()
            .iter()
            .filter(|d| !d.state().removed)
            .map(|d| {
                let st = d.state();
                let deps = |t: &Option<Arc<Table>>| t.as_ref().map(|t| t.present_deps()).unwrap_or_default();
                // A staged table naming a removed bdev can never be resumed: it is not saved.
                let inactive = st.inactive.as_ref().filter(|t| {
                    let gone = t.removed_deps();
                    if !gone.is_empty() {
                        tracing::warn!(
                            device = %st.name,
                            removed = %quoted(&gone),
                            "save_config: leaving out a staged table that names removed bdevs"
                        );
                    }
                    gone.is_empty()
                });
                (
                    d.id,
                    crate::config::DevSnapshot {
                        name: st.name.clone(),
                        uuid: st.uuid.clone(),
                        live: st.live.as_ref().map(|t| (t.config_text(), t.readonly)),
                        inactive: inactive.map(|t| (t.table_text(), t.readonly)),
                        suspended: st.suspended,
                        bdev_uuid: st.bdev_uuid,
                        minor: d.minor,
                        bdev: st.bdev.as_ref().map(|b| b.name().to_string()),
                        live_deps: deps(&st.live),
                        inactive_deps: deps(&inactive.cloned()),
                    },
                )
            })
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v.into_iter().map(|(_, s)| s).collect()
    }
}
