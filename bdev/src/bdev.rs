//! Bdevs, their backends (modules), channels, descriptors and claims.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keel_reactor::{try_current, CoreId, IoChannel, IoDevice};
use serde_json::Value;
use uuid::Uuid;

use crate::forward::{Route, RouteHandle};
use crate::gate::{Gate, GateConfig, Histogram, QosBucket, QosLimits};
use crate::stats::{ChannelStats, IoStats, StatsReset};
use crate::{BdevError, CompletionQueue, IoBox, IoOp, IoRequest, IoStatus, Submit};

/// The set of ops a bdev supports, declared by its module as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoCaps(u8);

impl IoCaps {
    /// Nothing.
    pub const NONE: IoCaps = IoCaps(0);
    /// Read, write, flush, unmap, write_zeroes, reset.
    pub const ALL: IoCaps = IoCaps(0b11_1111);
    /// The ops that address a block range: read, write, unmap, write_zeroes.
    pub const RANGED: IoCaps = IoCaps::ALL.without(IoOp::Flush).without(IoOp::Reset);

    /// The caps of exactly these ops.
    pub const fn of(ops: &[IoOp]) -> IoCaps {
        let mut bits = 0u8;
        let mut i = 0;
        while i < ops.len() {
            bits |= 1 << ops[i] as u8;
            i += 1;
        }
        IoCaps(bits)
    }

    /// Whether `op` is supported.
    #[inline]
    pub fn supports(self, op: IoOp) -> bool {
        self.0 & (1 << op as u8) != 0
    }

    /// These caps with `op` removed.
    pub const fn without(self, op: IoOp) -> IoCaps {
        IoCaps(self.0 & !(1 << op as u8))
    }

    /// The ops that do not write (what a read-only descriptor may submit).
    const NON_WRITING: IoCaps = IoCaps::ALL
        .without(IoOp::Write)
        .without(IoOp::Unmap)
        .without(IoOp::WriteZeroes);

    /// Ops in both sets.
    pub const fn and(self, other: IoCaps) -> IoCaps {
        IoCaps(self.0 & other.0)
    }
}

/// What a module declares about a bdev it registers.
#[derive(Debug, Clone)]
pub struct BdevParams {
    pub name: String,
    /// `None` = a random v4 UUID.
    pub uuid: Option<Uuid>,
    /// `product_name` in bdev_get_bdevs ("Malloc disk", ...).
    pub product_name: &'static str,
    /// Module name ("malloc", "null", ...); the module's delete RPC only deletes its own bdevs.
    pub module: &'static str,
    pub block_size: u32,
    pub num_blocks: u64,
    pub caps: IoCaps,
    /// Requests should not cross multiples of this many blocks (0 = no boundary).
    pub optimal_io_boundary_blocks: u32,
}

/// Immutable facts about a registered bdev. Readable from any core.
#[derive(Debug, Clone)]
pub struct BdevInfo {
    pub name: String,
    pub uuid: Uuid,
    pub product_name: &'static str,
    pub module: &'static str,
    pub block_size: u32,
    pub num_blocks: u64,
    pub caps: IoCaps,
    pub optimal_io_boundary_blocks: u32,
}

impl BdevInfo {
    /// Size in bytes. Never overflows: [`crate::BdevRegistry::register`] refuses a bdev whose
    /// size does not fit a u64 ([`size_bytes_checked`]).
    pub fn size_bytes(&self) -> u64 {
        self.num_blocks * self.block_size as u64
    }
}

/// `num_blocks × block_size` in bytes, or an error naming `num_blocks` when the product does
/// not fit a u64 (`bdev_null_create` with num_blocks 2^63 and 512-byte blocks). The one size
/// check of every create: [`crate::BdevRegistry::register`] makes it for every bdev any module
/// registers, so byte offsets and sizes computed from a registered bdev cannot overflow; a
/// module that needs the byte count before it registers (to allocate, to check a file) calls
/// it first. Pure; any thread.
pub fn size_bytes_checked(num_blocks: u64, block_size: u32) -> Result<u64, BdevError> {
    num_blocks.checked_mul(block_size as u64).ok_or_else(|| {
        BdevError::invalid(
            "num_blocks",
            format!("{num_blocks} blocks of {block_size} bytes is more than the 2^64 bytes a bdev can address"),
        )
    })
}

/// The RPC call that recreates a bdev (an entry of save_config).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigCall {
    pub method: &'static str,
    pub params: Value,
}

/// A bdev module's per-bdev object. `Send + Sync`: lives in the registry, used from any core.
///
/// `Any`: the module that registered a backend gets its concrete type back from the bdev with
/// [`Bdev::backend_as`] (control path: RPCs that change a bdev's module state).
pub trait BdevBackend: Any + Send + Sync {
    /// Builds this core's channel. Called on `cx.core()`, once per core that does I/O to the
    /// bdev.
    fn create_channel(&self, cx: &ChannelCx) -> Box<dyn BackendChannel>;

    /// `driver_specific` of bdev_get_bdevs (`{}` if the module adds nothing).
    fn driver_specific(&self) -> Value {
        Value::Object(Default::default())
    }

    /// The RPC that recreates this bdev for save_config; `None` for bdevs that other modules
    /// create implicitly (or that a module recreates with a module-level call,
    /// [`crate::BdevModule::config`]).
    fn config(&self, info: &BdevInfo) -> Option<ConfigCall>;

    /// The names of the bdevs this bdev is built on (a layer's base, an array's members, the
    /// bdevs a table maps to): save_config recreates it after them, in the latest subsystem any
    /// of them lands in ([`crate::BdevRegistry::config_plan`]). Empty for a bdev on no other
    /// bdev. Control path (main core, save_config).
    fn bases(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether this bdev goes away by itself when a base of it ([`BdevBackend::bases`]) is
    /// removed: true for the stacking layers (passthru, delay, error), which unregister with
    /// their base as SPDK's do; false for bdevs that stay (a dm device keeps failing I/O to a
    /// lost base, an md array degrades). A delete follows these cascades to find every bdev it
    /// would take along ([`crate::BdevRegistry::check_removable`]). Control path.
    fn removed_with_base(&self) -> bool {
        false
    }

    /// Called once after the bdev was unregistered and every channel was told to abort: release
    /// what the bdev holds (descriptors of base bdevs, files). Called on the main core.
    fn on_unregister(&self) {}
}

/// A module's per-core channel of one bdev. `!Send`: it lives and dies on its core. The core
/// calls it through a shared reference (no borrow flag to set and clear per request): a module
/// keeps what changes per request in `Cell`s or behind its own `RefCell`.
pub trait BackendChannel {
    /// Starts `io` (range and op already validated against the bdev). The module completes it
    /// with [`crate::IoRequest::complete`], now or later from a poller, or hands it back with
    /// `Submit::Requeue` when out of resources.
    fn submit(&self, io: IoBox) -> Submit;

    /// Whether this channel is a **leaf**: it finishes every request itself — completing it, or
    /// handing it back — and never reads or writes the request's frames
    /// ([`IoRequest::layer_word`], [`IoRequest::submit_ticks`]) nor passes the request on to
    /// another bdev. A layer forwarding in place to a leaf keeps the leaf's part of the request
    /// on its own frame (see `forward.rs`). Asked once, when the channel is built.
    fn leaf(&self) -> bool {
        false
    }

    /// Hot removal: fail everything that can be failed now; what the device still owns must be
    /// failed when the device gives it back. Called on the channel's core.
    fn abort_all(&self) {}
}

pub(crate) struct BdevCore {
    pub info: BdevInfo,
    pub backend: Arc<dyn BdevBackend>,
    pub removed: AtomicBool,
    pub retired: Mutex<IoStats>,
    /// Rate limits and histogram (see `gate.rs`): what every channel's gate applies, new
    /// channels included. Control path.
    pub gate_config: Mutex<GateConfig>,
    /// The histogram counts of channels that closed while the histogram was on.
    pub retired_hist: Mutex<Option<Histogram>>,
}

/// What the generic layer hands a module building its channel on a core
/// ([`BdevBackend::create_channel`]). Lives only for that call; what the module keeps of it
/// (the statistics handle, a route handle) it clones.
pub struct ChannelCx {
    core: CoreId,
    stats: Rc<ChannelStats>,
    /// The channel being built.
    chan: Weak<BdevChannel>,
    /// The module asked for a route handle.
    routes: Cell<bool>,
    /// A route published while the channel is being built (moved into it afterwards).
    staged: Rc<RefCell<Route>>,
}

impl ChannelCx {
    /// The core the channel is built on.
    pub fn core(&self) -> CoreId {
        self.core
    }

    /// The statistics of the bdev channel being built, for [`crate::ForwardPath::new`] (the
    /// pair's shared statistics link to them).
    pub fn stats(&self) -> &Rc<ChannelStats> {
        &self.stats
    }

    /// Where the module publishes a [`crate::Route`] for the core to apply (a bdev whose module
    /// never asks has no route, and its submits skip routing).
    pub fn route_handle(&self) -> RouteHandle {
        self.routes.set(true);
        RouteHandle::new(self.chan.clone(), Rc::downgrade(&self.staged))
    }
}

/// The generic per-core channel of a bdev: validation, statistics and the module's channel.
/// Shared by every descriptor on the core.
///
/// `repr(C)`: what every submit reads (the shared facts, the module's channel, the flags) sits in
/// the first cache line, ahead of the route (up to a few hundred bytes, read only by submits to a
/// routing layer).
#[repr(C)]
pub struct BdevChannel {
    pub(crate) core: Arc<BdevCore>,
    pub(crate) backend: Box<dyn BackendChannel>,
    pub(crate) stats: Rc<ChannelStats>,
    /// The module publishes routes (it took a [`RouteHandle`]); `route` is the current one.
    routes: bool,
    /// The module's channel is a leaf ([`BackendChannel::leaf`]).
    leaf: bool,
    /// Hot removal reached this core ([`BdevChannel::abort_all`]): what a route forwards here
    /// fails. A per-core copy of the bdev's removal flag, in the line the dispatch reads anyway.
    pub(crate) aborted: Cell<bool>,
    /// The bdev has a rate limit or a histogram: submits go through `gate` (see `gate.rs`).
    pub(crate) gated: Cell<bool>,
    pub(crate) route: RefCell<Route>,
    /// The QoS/histogram gate, while the bdev has either (or it still drains).
    pub(crate) gate: RefCell<Option<Rc<Gate>>>,
    /// This channel, for the gate's poller.
    me: Weak<BdevChannel>,
}

impl Drop for BdevChannel {
    fn drop(&mut self) {
        if let Ok(mut r) = self.core.retired.lock() {
            r.merge(&self.stats.snapshot());
        }
        if let Some(h) = self.histogram() {
            if let Ok(mut r) = self.core.retired_hist.lock() {
                r.get_or_insert_with(Histogram::new).merge(&h);
            }
        }
    }
}

impl BdevChannel {
    /// This channel's live statistics.
    pub fn stats(&self) -> &ChannelStats {
        &self.stats
    }

    /// Hands a request (already validated, its part recorded as the request's `via`) to a leaf
    /// module; a `Requeue` comes back as it went.
    #[inline(always)]
    pub(crate) fn dispatch_leaf(&self, io: IoBox) -> Submit {
        debug_assert!(self.leaf);
        self.backend.submit(io)
    }

    pub(crate) fn abort_all(&self) {
        self.aborted.set(true);
        let gate = self.gate.borrow().clone();
        if let Some(g) = gate {
            g.abort_queued(self);
        }
        self.backend.abort_all();
    }

    /// This channel's histogram, if the bdev records one.
    fn histogram(&self) -> Option<Histogram> {
        self.gate.borrow().as_ref().and_then(|g| g.histogram())
    }
}

/// Events delivered to a descriptor's owner (on the core that opened it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BdevEvent {
    /// The bdev is being removed: stop submitting, let in-flight I/O complete (it fails), then
    /// drop the descriptor and its channels.
    Remove,
}

pub(crate) type EventFn = Arc<dyn Fn(BdevEvent) + Send + Sync>;

pub(crate) struct Opener {
    pub id: u64,
    pub core: Option<CoreId>,
    pub writable: bool,
    pub on_event: EventFn,
}

/// A registered block device. Shared (`Arc`) by the registry and descriptors.
pub struct Bdev {
    pub(crate) core: Arc<BdevCore>,
    pub(crate) io_device: IoDevice<BdevChannel>,
    pub(crate) claim: Mutex<Option<(u64, String)>>,
    pub(crate) openers: Mutex<Vec<Opener>>,
    pub(crate) aliases: Mutex<Vec<String>>,
    /// Holds ([`Descriptor::hold`]): descriptor id and holder, e.g. `nbd export 'disk0'`.
    pub(crate) holds: Mutex<Vec<(u64, String)>>,
}

static NEXT_DESC: AtomicU64 = AtomicU64::new(1);

impl Bdev {
    pub(crate) fn new(info: BdevInfo, backend: Arc<dyn BdevBackend>) -> Arc<Bdev> {
        let core = Arc::new(BdevCore {
            info,
            backend,
            removed: AtomicBool::new(false),
            retired: Mutex::new(IoStats::default()),
            gate_config: Mutex::new(GateConfig::default()),
            retired_hist: Mutex::new(None),
        });
        let c2 = core.clone();
        let io_device = IoDevice::new_cyclic(core.info.name.clone(), move |cpu, chan: &Weak<BdevChannel>| {
            let cx = ChannelCx {
                core: cpu,
                stats: Rc::new(ChannelStats::new(c2.info.block_size)),
                chan: chan.clone(),
                routes: Cell::new(false),
                staged: Rc::new(RefCell::new(Route::off())),
            };
            let backend = c2.backend.create_channel(&cx);
            let ch = BdevChannel {
                core: c2.clone(),
                leaf: backend.leaf(),
                backend,
                stats: cx.stats,
                routes: cx.routes.get(),
                route: RefCell::new(cx.staged.replace(Route::off())),
                aborted: Cell::new(false),
                gated: Cell::new(false),
                gate: RefCell::new(None),
                me: chan.clone(),
            };
            let cfg = c2.gate_config.lock().unwrap().clone();
            if cfg.is_active() {
                Gate::apply(&ch, chan, &cfg);
            }
            ch
        });
        Arc::new(Bdev {
            core,
            io_device,
            claim: Mutex::new(None),
            openers: Mutex::new(Vec::new()),
            aliases: Mutex::new(Vec::new()),
            holds: Mutex::new(Vec::new()),
        })
    }

    /// Immutable facts.
    pub fn info(&self) -> &BdevInfo {
        &self.core.info
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.core.info.name
    }

    /// Aliases (besides the name and UUID).
    pub fn aliases(&self) -> Vec<String> {
        self.aliases.lock().unwrap().clone()
    }

    /// The module's object.
    pub fn backend(&self) -> &Arc<dyn BdevBackend> {
        &self.core.backend
    }

    /// The module's object as its concrete type `T`, or `None` when this bdev's backend is of
    /// another type (another module's bdev). How a module reaches its own per-bdev state from a
    /// bdev found by name. Any thread (control path); borrows from the bdev.
    pub fn backend_as<T: BdevBackend>(&self) -> Option<&T> {
        let any: &dyn Any = &*self.core.backend;
        any.downcast_ref::<T>()
    }

    /// Module claiming the bdev, if any.
    pub fn claimed_by(&self) -> Option<String> {
        self.claim.lock().unwrap().as_ref().map(|(_, m)| m.clone())
    }

    /// Who holds the bdev ([`Descriptor::hold`]), in the order they took their holds. While
    /// this is not empty the module delete methods refuse to delete the bdev
    /// ([`BdevError::Held`]). Any thread.
    pub fn holders(&self) -> Vec<String> {
        self.holds.lock().unwrap().iter().map(|(_, h)| h.clone()).collect()
    }

    /// Whether hot removal started.
    pub fn is_removed(&self) -> bool {
        self.core.removed.load(Ordering::Acquire)
    }

    /// Number of open descriptors.
    pub fn open_count(&self) -> usize {
        self.openers.lock().unwrap().len()
    }

    /// Statistics of this core's channel plus closed channels — the caller sums over cores
    /// with [`Bdev::collect_stats`]. Called on a reactor.
    pub fn local_stats(&self) -> Option<IoStats> {
        self.io_device.existing_channel().map(|c| c.stats.snapshot())
    }

    /// Sums statistics over every core's channel and the closed ones, then calls `done` with
    /// them on the calling core. `reset` says what to zero after reading. Called on a reactor;
    /// completes later.
    pub fn collect_stats(self: &Arc<Self>, reset: StatsReset, done: impl FnOnce(IoStats) + Send + 'static) {
        let acc = Arc::new(Mutex::new(IoStats::default()));
        let acc2 = acc.clone();
        let core = self.core.clone();
        self.io_device.for_each_channel(
            move |ch: &BdevChannel| {
                acc2.lock().unwrap().merge(&ch.stats.snapshot());
                ch.stats.apply_reset(reset);
            },
            move || {
                let mut total = std::mem::take(&mut *acc.lock().unwrap());
                let mut retired = core.retired.lock().unwrap();
                total.merge(&retired);
                retired.apply_reset(reset);
                drop(retired);
                done(total)
            },
        );
    }

    /// Like [`Bdev::collect_stats`] but one entry per core that has a channel, in core order.
    pub fn collect_channel_stats(
        self: &Arc<Self>,
        reset: StatsReset,
        done: impl FnOnce(Vec<(CoreId, IoStats)>) + Send + 'static,
    ) {
        let acc = Arc::new(Mutex::new(Vec::new()));
        let acc2 = acc.clone();
        self.io_device.for_each_channel(
            move |ch: &BdevChannel| {
                let core = keel_reactor::current().core();
                acc2.lock().unwrap().push((core, ch.stats.snapshot()));
                ch.stats.apply_reset(reset);
            },
            move || done(std::mem::take(&mut *acc.lock().unwrap())),
        );
    }

    /// The rate limits in force (`assigned_rate_limits`; all zero when none). Any thread.
    pub fn qos_limits(&self) -> QosLimits {
        let cfg = self.core.gate_config.lock().unwrap();
        cfg.qos.as_ref().map(|q| q.limits()).unwrap_or_default()
    }

    /// Sets the rate limits (all zero: none) and applies them on every core's channel, then
    /// calls `done` on the calling core. A request that waited for tokens goes on when its
    /// limit is lifted. Called on a reactor (the main one, from RPC); completes later. Builds a
    /// new shared bucket (`gate.rs`): the budget restarts with the new limits.
    pub fn set_qos_limits(self: &Arc<Self>, limits: QosLimits, done: impl FnOnce() + Send + 'static) {
        let mut cfg = self.core.gate_config.lock().unwrap();
        cfg.qos = (!limits.is_unlimited()).then(|| Arc::new(QosBucket::new(limits)));
        drop(cfg);
        self.apply_gate(done);
    }

    /// Turns the latency histogram on for the ops in `ops` (`None`: off, dropping the counts)
    /// on every core's channel, then calls `done` on the calling core. Enabling an enabled
    /// histogram changes the ops and keeps the counts. Called on a reactor; completes later.
    pub fn set_histogram(self: &Arc<Self>, ops: Option<IoCaps>, done: impl FnOnce() + Send + 'static) {
        self.core.gate_config.lock().unwrap().hist_ops = ops;
        if ops.is_none() {
            *self.core.retired_hist.lock().unwrap() = None;
        }
        self.apply_gate(done);
    }

    /// The ops the histogram records, if it is on. Any thread.
    pub fn histogram_ops(&self) -> Option<IoCaps> {
        self.core.gate_config.lock().unwrap().hist_ops
    }

    /// Merges every core's histogram and calls `done` with the sum on the calling core (`None`
    /// when the bdev records none). Called on a reactor; completes later. The counts of channels
    /// that closed meanwhile are kept and included (a benchmark's channels close when its jobs
    /// end, before anyone asks).
    pub fn collect_histogram(self: &Arc<Self>, done: impl FnOnce(Option<Histogram>) + Send + 'static) {
        if self.histogram_ops().is_none() {
            return done(None);
        }
        let acc = Arc::new(Mutex::new(Histogram::new()));
        let acc2 = acc.clone();
        let core = self.core.clone();
        self.io_device.for_each_channel(
            move |ch: &BdevChannel| {
                if let Some(h) = ch.histogram() {
                    acc2.lock().unwrap().merge(&h);
                }
            },
            move || {
                let mut total = std::mem::take(&mut *acc.lock().unwrap());
                if let Some(r) = core.retired_hist.lock().unwrap().as_ref() {
                    total.merge(r);
                }
                done(Some(total))
            },
        );
    }

    /// The calls that restore this bdev's settings after it is created (save_config): a
    /// `bdev_set_qos_limit` with the limits set, as SPDK writes it. Control path.
    pub(crate) fn setting_calls(&self) -> Vec<ConfigCall> {
        let l = self.qos_limits();
        if l.is_unlimited() {
            return Vec::new();
        }
        let mut params = serde_json::Map::new();
        params.insert("name".into(), Value::from(self.name()));
        for (k, v) in [
            ("rw_ios_per_sec", l.rw_ios_per_sec),
            ("rw_mbytes_per_sec", l.rw_mbytes_per_sec),
            ("r_mbytes_per_sec", l.r_mbytes_per_sec),
            ("w_mbytes_per_sec", l.w_mbytes_per_sec),
        ] {
            if v > 0 {
                params.insert(k.into(), Value::from(v));
            }
        }
        vec![ConfigCall {
            method: "bdev_set_qos_limit",
            params: Value::Object(params),
        }]
    }

    /// Copies the bdev's gate configuration to every channel, then `done`.
    fn apply_gate(self: &Arc<Self>, done: impl FnOnce() + Send + 'static) {
        let core = self.core.clone();
        self.io_device.for_each_channel(
            move |ch: &BdevChannel| {
                let cfg = core.gate_config.lock().unwrap().clone();
                Gate::apply(ch, &ch.me, &cfg);
            },
            done,
        );
    }

    pub(crate) fn add_opener(&self, writable: bool, on_event: EventFn) -> Result<u64, BdevError> {
        if self.is_removed() {
            return Err(BdevError::Removed(self.name().to_string()));
        }
        if writable {
            if let Some((_, module)) = &*self.claim.lock().unwrap() {
                return Err(BdevError::Claimed {
                    name: self.name().to_string(),
                    module: module.clone(),
                });
            }
        }
        let id = NEXT_DESC.fetch_add(1, Ordering::Relaxed);
        self.openers.lock().unwrap().push(Opener {
            id,
            core: try_current().map(|r| r.core()),
            writable,
            on_event,
        });
        Ok(id)
    }
}

/// An open handle to a bdev. Owned by whoever opened it; dropping it closes it (and releases
/// its claim). `Send + Sync`, but events arrive on the core that opened it.
pub struct Descriptor {
    bdev: Arc<Bdev>,
    writable: bool,
    id: u64,
}

impl Descriptor {
    pub(crate) fn new(bdev: Arc<Bdev>, writable: bool, id: u64) -> Descriptor {
        Descriptor { bdev, writable, id }
    }

    /// The bdev.
    pub fn bdev(&self) -> &Arc<Bdev> {
        &self.bdev
    }

    /// Shorthand for the bdev's facts.
    pub fn info(&self) -> &BdevInfo {
        self.bdev.info()
    }

    /// Whether writes are allowed through this descriptor.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Claims the bdev exclusively for `module` (a layer built on it): nobody else may open it
    /// for writing or claim it until this descriptor drops.
    pub fn claim(&self, module: &str) -> Result<(), BdevError> {
        let mut claim = self.bdev.claim.lock().unwrap();
        if let Some((_, m)) = &*claim {
            return Err(BdevError::Claimed {
                name: self.bdev.name().to_string(),
                module: m.clone(),
            });
        }
        let other_writers = self
            .bdev
            .openers
            .lock()
            .unwrap()
            .iter()
            .any(|o| o.writable && o.id != self.id);
        if other_writers {
            return Err(BdevError::HasWriters {
                name: self.bdev.name().to_string(),
                module: module.to_string(),
            });
        }
        *claim = Some((self.id, module.to_string()));
        Ok(())
    }

    /// Holds the bdev for `holder` (a user that serves it to the outside, e.g. an NBD export)
    /// until this descriptor drops: the delete methods of the bdev modules then refuse to delete
    /// it with [`BdevError::Held`] (EBUSY) naming the holder, so the holder must let go first.
    /// Unlike a [`Descriptor::claim`] a hold is not exclusive (several holders, other openers and
    /// a claim may coexist), and it does not stop hot removal ([`crate::BdevRegistry::unregister`]),
    /// which a holder learns of through its descriptor's event. Control path, any thread.
    pub fn hold(&self, holder: impl Into<String>) {
        self.bdev.holds.lock().unwrap().push((self.id, holder.into()));
    }

    /// This core's channel for submitting I/O. Called on a reactor; the first call on a core
    /// creates the module's channel there.
    pub fn channel(&self) -> Channel {
        let caps = self.bdev.info().caps;
        Channel {
            ch: self.bdev.io_device.get_channel(),
            writable: self.writable,
            allowed: if self.writable {
                caps
            } else {
                caps.and(IoCaps::NON_WRITING)
            },
        }
    }
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        let mut claim = self.bdev.claim.lock().unwrap();
        if matches!(&*claim, Some((id, _)) if *id == self.id) {
            *claim = None;
        }
        drop(claim);
        self.bdev.holds.lock().unwrap().retain(|(id, _)| *id != self.id);
        self.bdev.openers.lock().unwrap().retain(|o| o.id != self.id);
    }
}

/// A descriptor's handle on this core's channel: where I/O is submitted. `!Send`; clones are
/// handles on the same channel.
#[derive(Clone)]
pub struct Channel {
    ch: IoChannel<BdevChannel>,
    writable: bool,
    /// The ops this handle may submit: the bdev's caps, without the writing ones when the
    /// descriptor is read-only. One bit test on the hot path; the precise refusal (unsupported
    /// or read-only) is worked out only for a refused request.
    allowed: IoCaps,
}

impl Channel {
    /// Whether the bdev's module currently publishes a [`crate::Route`] on this core, i.e.
    /// whether the bdev layer maps and forwards fitting requests itself (diagnostics, tests).
    pub fn is_routed(&self) -> bool {
        !self.ch.route.borrow().is_off()
    }

    /// Whether `other` is a handle on the same bdev channel.
    pub fn same_channel(&self, other: &Channel) -> bool {
        Rc::ptr_eq(self.ch.rc(), other.ch.rc())
    }

    /// Facts of the bdev.
    #[inline]
    pub fn info(&self) -> &BdevInfo {
        &self.ch.core.info
    }

    /// Submits `io`; its completion will be pushed to `cq` (and seen by `cq`'s poller). Checks
    /// op support, writability, range and buffer size first; a request that fails them — or
    /// reaches a removed bdev — completes with that status through `cq` like any other.
    /// `Submit::Requeue` hands it back untouched (backpressure). Called on this channel's core.
    #[inline]
    pub fn submit(&self, io: IoBox, cq: &CompletionQueue) -> Submit {
        if self.ch.gated.get() {
            self.submit_gated(io, cq)
        } else if self.ch.routes {
            self.submit_routed(io, cq)
        } else {
            self.submit_to_module(io, cq)
        }
    }

    /// [`Channel::submit`] of a bdev with a rate limit or a histogram (`gate.rs`): validated
    /// as always, then handed to the gate, which queues it for tokens or sends it to the module
    /// (never along a route: the gate must see every request).
    #[cold]
    #[inline(never)]
    fn submit_gated(&self, mut io: IoBox, cq: &CompletionQueue) -> Submit {
        let gate = self.ch.gate.borrow().clone();
        let Some(gate) = gate else {
            return self.submit_to_module(io, cq);
        };
        if io.push_frame(cq, None, keel_reactor::ticks()).is_err() {
            io.complete_direct(cq, IoStatus::StackOverflow);
            return Submit::Accepted;
        }
        match self.check(&io) {
            IoStatus::Pending => gate.admit(&self.ch, io),
            status => {
                io.charge_top_to(&self.ch.stats);
                io.complete(status);
                Submit::Accepted
            }
        }
    }

    /// [`Channel::submit`] of a bdev whose module publishes no route.
    #[inline(always)]
    fn submit_to_module(&self, mut io: IoBox, cq: &CompletionQueue) -> Submit {
        if io
            .push_frame(cq, Some(self.ch.stats.clone()), keel_reactor::ticks())
            .is_err()
        {
            io.complete_direct(cq, IoStatus::StackOverflow);
            return Submit::Accepted;
        }
        match self.check(&io) {
            IoStatus::Pending => self.dispatch(io),
            status => {
                io.complete(status);
                Submit::Accepted
            }
        }
    }

    /// [`Channel::submit`] of a bdev with a route slot: a request the route takes is charged
    /// to the path's shared statistics, so its frame gets the bdev's own statistics only when
    /// something else happens to it — refused here, sent to the module, or back from a failed
    /// forward (see `forward.rs`).
    #[inline(always)]
    fn submit_routed(&self, mut io: IoBox, cq: &CompletionQueue) -> Submit {
        if io.push_frame(cq, None, keel_reactor::ticks()).is_err() {
            io.complete_direct(cq, IoStatus::StackOverflow);
            return Submit::Accepted;
        }
        match self.check(&io) {
            IoStatus::Pending => match crate::forward::forward_routed(&self.ch.route, io) {
                Ok(Submit::Accepted) => Submit::Accepted,
                Ok(Submit::Requeue(mut io)) => {
                    io.pop_frame();
                    Submit::Requeue(io)
                }
                Err(mut io) => {
                    io.charge_top_to(&self.ch.stats);
                    self.dispatch(io)
                }
            },
            status => {
                io.charge_top_to(&self.ch.stats);
                io.complete(status);
                Submit::Accepted
            }
        }
    }

    /// What [`Channel::submit`] refuses, in this order: a removed bdev, an op the bdev lacks or
    /// this handle may not write, a range outside the bdev (or empty), buffers shorter than the
    /// range. `Pending` = go ahead.
    #[inline(always)]
    fn check(&self, io: &IoRequest) -> IoStatus {
        let core = &*self.ch.core;
        let info = &core.info;
        let (op, n) = (io.op, io.num_blocks);
        if core.removed.load(Ordering::Relaxed) {
            IoStatus::Removed
        } else if !self.allowed.supports(op) {
            self.refusal(op)
        } else if (op.needs_range()
            && (n == 0 || io.offset_blocks >= info.num_blocks || n > info.num_blocks - io.offset_blocks))
            || (op.has_data() && io.iov_len_bytes() < n * info.block_size as u64)
        {
            IoStatus::InvalidRange
        } else {
            IoStatus::Pending
        }
    }

    /// What [`crate::ForwardPath::forward`] refuses: as [`Channel::check`], minus what the
    /// forwarding layer already validated against its own geometry. The request's size and
    /// buffers are the ones the layer accepted and the layer has this bdev's block size, so an empty
    /// range or short buffers cannot reach here (debug builds assert it); what remains is one
    /// compare of the mapped range's end against this bdev's size.
    #[inline(always)]
    pub(crate) fn check_forwarded(&self, io: &IoRequest) -> IoStatus {
        let core = &*self.ch.core;
        let info = &core.info;
        let op = io.op;
        debug_assert!(!op.needs_range() || io.num_blocks > 0, "forwarded an empty range");
        debug_assert!(
            !op.has_data() || io.iov_len_bytes() >= io.num_blocks * info.block_size as u64,
            "forwarded buffers do not cover the range on {}",
            info.name
        );
        if core.removed.load(Ordering::Relaxed) {
            IoStatus::Removed
        } else if !self.allowed.supports(op) {
            self.refusal(op)
        } else if op.needs_range()
            && io
                .offset_blocks
                .checked_add(io.num_blocks)
                .is_none_or(|end| end > info.num_blocks)
        {
            IoStatus::InvalidRange
        } else {
            IoStatus::Pending
        }
    }

    /// Why an op outside `allowed` is refused: the bdev lacks it, or the descriptor is
    /// read-only.
    #[cold]
    fn refusal(&self, op: IoOp) -> IoStatus {
        if !self.ch.core.info.caps.supports(op) {
            IoStatus::Unsupported
        } else {
            debug_assert!(!self.writable);
            IoStatus::ReadOnly
        }
    }

    /// Hands a validated `io` to a leaf module (whose part is the `via` of the frame on top); a
    /// `Requeue` comes back as it went.
    #[inline(always)]
    pub(crate) fn dispatch_leaf(&self, io: IoBox) -> Submit {
        self.ch.dispatch_leaf(io)
    }

    /// The bdev channel this handle is on.
    pub(crate) fn bdev_channel(&self) -> &Rc<BdevChannel> {
        self.ch.rc()
    }

    /// Whether the bdev's module channel is a leaf ([`BackendChannel::leaf`]).
    pub(crate) fn is_leaf(&self) -> bool {
        self.ch.leaf
    }

    /// The ops this handle may submit.
    pub(crate) fn allowed(&self) -> IoCaps {
        self.allowed
    }

    /// The channel's statistics, shared.
    pub(crate) fn stats_rc(&self) -> &Rc<ChannelStats> {
        &self.ch.stats
    }

    /// Hands a validated `io` (this bdev's frame on top) to the module; a `Requeue` comes back
    /// without that frame.
    #[inline(always)]
    pub(crate) fn dispatch(&self, io: IoBox) -> Submit {
        match self.ch.backend.submit(io) {
            Submit::Accepted => Submit::Accepted,
            Submit::Requeue(mut io) => {
                io.pop_frame();
                Submit::Requeue(io)
            }
        }
    }

    /// Live statistics of this core's channel.
    pub fn stats(&self) -> &ChannelStats {
        &self.ch.stats
    }
}

#[cfg(test)]
mod tests {
    //! In-place forwarding on the deterministic driver: a test layer that shifts offsets by
    //! `SHIFT` blocks forwards everything to a scripted base (succeed, fail or requeue) — either
    //! from its own `submit` or through a route the core applies — and the base is a leaf (its
    //! part rides on the layer's frame) or not (a frame of its own). Every combination must
    //! behave the same.

    use std::cell::RefCell;
    use std::sync::atomic::AtomicU8;

    use keel_reactor::{CoreId, TestDriver};

    use super::*;
    use crate::{BdevRegistry, DmaBuf, ForwardCtx, ForwardPath, IoRequest, IoVec, Route, MAX_DEPTH};

    const SUCCEED: u8 = 0;
    const FAIL: u8 = 1;
    const REQUEUE: u8 = 2;
    const BLOCKS: u64 = 64;
    /// The layer's block 0 is the base's block `SHIFT`; both have `BLOCKS` blocks, so the
    /// layer's last `SHIFT` blocks map outside the base.
    const SHIFT: u64 = 10;

    struct Scripted {
        mode: Arc<AtomicU8>,
        leaf: bool,
    }
    struct ScriptedChannel {
        mode: Arc<AtomicU8>,
        leaf: bool,
    }

    impl BackendChannel for ScriptedChannel {
        fn submit(&self, io: IoBox) -> Submit {
            match self.mode.load(Ordering::Relaxed) {
                SUCCEED => io.complete(IoStatus::Success),
                FAIL => io.complete(IoStatus::Failed),
                _ => return Submit::Requeue(io),
            }
            Submit::Accepted
        }
        fn leaf(&self) -> bool {
            self.leaf
        }
    }

    impl BdevBackend for Scripted {
        fn create_channel(&self, _cx: &ChannelCx) -> Box<dyn BackendChannel> {
            Box::new(ScriptedChannel {
                mode: self.mode.clone(),
                leaf: self.leaf,
            })
        }
        fn config(&self, _info: &BdevInfo) -> Option<ConfigCall> {
            None
        }
    }

    thread_local! {
        /// The forwarding context of the layer channel created on this thread.
        static LAYER_CTX: RefCell<Option<Rc<ForwardCtx>>> = const { RefCell::new(None) };
    }

    struct Layer {
        base: Mutex<Option<Descriptor>>,
        /// Publish a route (the core forwards) instead of forwarding in `submit`.
        route: bool,
    }
    struct LayerChannel {
        path: ForwardPath,
    }

    impl BackendChannel for LayerChannel {
        fn submit(&self, mut io: IoBox) -> Submit {
            let orig = io.offset_blocks;
            *io.layer_word() = orig;
            io.offset_blocks = orig + SHIFT;
            match self.path.forward(io, orig) {
                Submit::Accepted => Submit::Accepted,
                Submit::Requeue(mut io) => {
                    io.offset_blocks = orig;
                    Submit::Requeue(io)
                }
            }
        }
    }

    impl BdevBackend for Layer {
        fn create_channel(&self, cx: &ChannelCx) -> Box<dyn BackendChannel> {
            let base = self.base.lock().unwrap().as_ref().expect("base open").channel();
            let ctx = ForwardCtx::new(CompletionQueue::with_capacity(4));
            LAYER_CTX.with(|c| *c.borrow_mut() = Some(ctx.clone()));
            let path = ForwardPath::new(&ctx, cx.stats(), base);
            if self.route {
                cx.route_handle().set(Route::linear(path.clone(), SHIFT, IoCaps::ALL));
            }
            Box::new(LayerChannel { path })
        }
        fn config(&self, _info: &BdevInfo) -> Option<ConfigCall> {
            None
        }
    }

    fn params(name: &str, num_blocks: u64) -> BdevParams {
        BdevParams {
            name: name.into(),
            uuid: None,
            product_name: "test",
            module: "test",
            block_size: 512,
            num_blocks,
            caps: IoCaps::ALL,
            optimal_io_boundary_blocks: 0,
        }
    }

    fn forwarded_success_failure_requeue_and_refusals(leaf: bool, route: bool) {
        let d = TestDriver::new(1);
        let reg = BdevRegistry::new(d.cores());
        let mode = Arc::new(AtomicU8::new(SUCCEED));
        let base = reg
            .register(
                params("B", BLOCKS),
                Arc::new(Scripted {
                    mode: mode.clone(),
                    leaf,
                }),
            )
            .unwrap();
        let base_desc = reg.open("B", true, |_| {}).unwrap();
        // A route must stay inside its base: the routed layer is `SHIFT` blocks smaller.
        let layer_blocks = if route { BLOCKS - SHIFT } else { BLOCKS };
        reg.register(
            params("L", layer_blocks),
            Arc::new(Layer {
                base: Mutex::new(Some(base_desc)),
                route,
            }),
        )
        .unwrap();
        let desc = reg.open("L", true, |_| {}).unwrap();
        let buf = DmaBuf::new(512);
        // Test code: a fresh request each time.
        let request = |off: u64| {
            let mut io = IoRequest::new_boxed();
            io.iovs.push(IoVec::whole(buf.clone()));
            io.prepare(IoOp::Read, off, 1);
            io
        };
        let cq = CompletionQueue::with_capacity(4);
        let (ch, ctx) = d.enter(CoreId(0), || {
            let ch = desc.channel();
            let ctx = LAYER_CTX.with(|c| c.borrow().clone()).expect("layer channel built");
            let layer_stats = || ch.stats().snapshot();
            let base_stats = || base.local_stats().expect("base channel on this core");

            // Success: straight to the submitter, offset restored, both bdevs charged with the
            // same latency (one stamp, one completion time).
            for _ in 0..2 {
                assert!(matches!(ch.submit(request(5), &cq), Submit::Accepted));
                let io = cq.pop().expect("success queued for the submitter");
                assert_eq!((io.status(), io.offset_blocks, io.depth()), (IoStatus::Success, 5, 0));
            }
            assert_eq!((ctx.inflight(), ctx.cq().len()), (0, 0));
            let (top, below) = (*layer_stats().op(IoOp::Read), *base_stats().op(IoOp::Read));
            assert_eq!((top.ops, top.bytes, below.ops, below.bytes), (2, 1024, 2, 1024));
            assert_eq!(top.latency_ticks, below.latency_ticks);
            assert_eq!(
                (top.min_latency_ticks, top.max_latency_ticks),
                (below.min_latency_ticks, below.max_latency_ticks)
            );

            // Resetting one bdev's statistics leaves the other's whole.
            ch.stats().apply_reset(StatsReset::All);
            assert_eq!(layer_stats().op(IoOp::Read).ops, 0);
            assert_eq!(*base_stats().op(IoOp::Read), below);

            // Failure: back to the layer's queue with the layer's frame on top and its offset
            // restored, counted in flight until the layer ends it.
            mode.store(FAIL, Ordering::Relaxed);
            assert!(matches!(ch.submit(request(5), &cq), Submit::Accepted));
            assert!(cq.is_empty());
            let io = ctx.cq().pop().expect("failure comes back to the layer");
            assert_eq!((io.status(), io.depth(), io.offset_blocks), (IoStatus::Failed, 1, 5));
            assert_eq!(ctx.inflight(), 1);
            assert_eq!(base_stats().errors, vec![("failed", 1)]);
            assert_eq!(layer_stats().failed(), 0);
            // The layer finishes it upward.
            ctx.end();
            let status = io.status();
            io.complete(status);
            let io = cq.pop().expect("the layer completed it");
            assert_eq!((io.status(), io.depth(), io.offset_blocks), (IoStatus::Failed, 0, 5));
            assert_eq!(layer_stats().errors, vec![("failed", 1)]);

            // Requeue: handed back as submitted, nothing counted.
            mode.store(REQUEUE, Ordering::Relaxed);
            let Submit::Requeue(io) = ch.submit(request(5), &cq) else {
                panic!("base backpressure goes back to the submitter");
            };
            assert_eq!((io.depth(), io.offset_blocks, ctx.inflight()), (0, 5, 0));
            assert_eq!(
                (layer_stats().op(IoOp::Read).ops, base_stats().op(IoOp::Read).ops),
                (0, 2)
            );
            mode.store(SUCCEED, Ordering::Relaxed);

            if !route {
                // A mapped range past the base's end is refused by the base, as a failure.
                assert!(matches!(ch.submit(request(BLOCKS - 1), &cq), Submit::Accepted));
                let io = ctx.cq().pop().expect("refusal comes back to the layer");
                assert_eq!(
                    (io.status(), io.depth(), io.offset_blocks, ctx.inflight()),
                    (IoStatus::InvalidRange, 1, BLOCKS - 1, 1)
                );
                assert!(base_stats().errors.contains(&("invalid_range", 1)));
                ctx.end();
            }

            if !leaf {
                // No room for the base's frame: StackOverflow, to the layer as a failure.
                let mut io = request(0);
                for _ in 0..MAX_DEPTH - 1 {
                    io.push_frame(&cq, None, 0).unwrap();
                }
                assert!(matches!(ch.submit(io, &cq), Submit::Accepted));
                let io = ctx.cq().pop().expect("overflow comes back to the layer");
                assert_eq!(
                    (io.status(), io.depth(), io.offset_blocks, ctx.inflight()),
                    (IoStatus::StackOverflow, MAX_DEPTH, 0, 1)
                );
                ctx.end();
            }

            (ch, ctx)
        });

        // A removed base refuses what is forwarded to it (once the removal reached this core).
        d.enter(CoreId(0), || reg.unregister("B", || {}).unwrap());
        d.run_until_idle(100);
        d.enter(CoreId(0), || {
            assert!(matches!(ch.submit(request(0), &cq), Submit::Accepted));
            let io = ctx.cq().pop().expect("removal comes back to the layer");
            assert_eq!(
                (io.status(), io.offset_blocks, ctx.inflight()),
                (IoStatus::Removed, 0, 1)
            );
            ctx.end();
            drop(ch);
        });
        d.run_until_idle(100);
    }

    #[test]
    fn forwarded_by_the_layer_to_a_leaf() {
        forwarded_success_failure_requeue_and_refusals(true, false);
    }

    #[test]
    fn forwarded_by_the_layer_to_a_layer() {
        forwarded_success_failure_requeue_and_refusals(false, false);
    }

    #[test]
    fn routed_by_the_core_to_a_leaf() {
        forwarded_success_failure_requeue_and_refusals(true, true);
    }

    #[test]
    fn routed_by_the_core_to_a_layer() {
        forwarded_success_failure_requeue_and_refusals(false, true);
    }
}
