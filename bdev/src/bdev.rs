//! Bdevs, their backends (modules), channels, descriptors and claims.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keel_reactor::{try_current, CoreId, IoChannel, IoDevice};
use serde_json::Value;
use uuid::Uuid;

use crate::stats::{ChannelStats, IoStats, StatsReset};
use crate::{BdevError, CompletionQueue, ForwardCtx, IoBox, IoOp, IoStatus, Submit};

/// The set of ops a bdev supports, declared by its module as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoCaps(u8);

impl IoCaps {
    /// Nothing.
    pub const NONE: IoCaps = IoCaps(0);
    /// Read, write, flush, unmap, write_zeroes, reset.
    pub const ALL: IoCaps = IoCaps(0b11_1111);

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
    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.num_blocks * self.block_size as u64
    }
}

/// The RPC call that recreates a bdev (an entry of save_config).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigCall {
    pub method: &'static str,
    pub params: Value,
}

/// A bdev module's per-bdev object. `Send + Sync`: lives in the registry, used from any core.
pub trait BdevBackend: Send + Sync + 'static {
    /// Builds this core's channel. Called on `core`, once per core that does I/O to the bdev.
    fn create_channel(&self, core: CoreId) -> Box<dyn BackendChannel>;

    /// `driver_specific` of bdev_get_bdevs (`{}` if the module adds nothing).
    fn driver_specific(&self) -> Value {
        Value::Object(Default::default())
    }

    /// The RPC that recreates this bdev for save_config; `None` for bdevs that other modules
    /// create implicitly.
    fn config(&self, info: &BdevInfo) -> Option<ConfigCall>;

    /// Called once after the bdev was unregistered and every channel was told to abort: release
    /// what the bdev holds (descriptors of base bdevs, files). Called on the main core.
    fn on_unregister(&self) {}
}

/// A module's per-core channel of one bdev. `!Send`: it lives and dies on its core.
pub trait BackendChannel {
    /// Starts `io` (range and op already validated against the bdev). The module completes it
    /// with [`crate::IoRequest::complete`], now or later from a poller, or hands it back with
    /// `Submit::Requeue` when out of resources.
    fn submit(&mut self, io: IoBox) -> Submit;

    /// Hot removal: fail everything that can be failed now; what the device still owns must be
    /// failed when the device gives it back. Called on the channel's core.
    fn abort_all(&mut self) {}
}

pub(crate) struct BdevCore {
    pub info: BdevInfo,
    pub backend: Arc<dyn BdevBackend>,
    pub removed: AtomicBool,
    pub retired: Mutex<IoStats>,
}

/// The generic per-core channel of a bdev: validation, statistics and the module's channel.
/// Shared by every descriptor on the core.
pub struct BdevChannel {
    core: Arc<BdevCore>,
    backend: RefCell<Box<dyn BackendChannel>>,
    stats: Rc<ChannelStats>,
}

impl Drop for BdevChannel {
    fn drop(&mut self) {
        if let Ok(mut r) = self.core.retired.lock() {
            r.merge(&self.stats.snapshot());
        }
    }
}

impl BdevChannel {
    /// This channel's live statistics.
    pub fn stats(&self) -> &ChannelStats {
        &self.stats
    }

    pub(crate) fn abort_all(&self) {
        self.backend.borrow_mut().abort_all();
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
}

static NEXT_DESC: AtomicU64 = AtomicU64::new(1);

impl Bdev {
    pub(crate) fn new(info: BdevInfo, backend: Arc<dyn BdevBackend>) -> Arc<Bdev> {
        let core = Arc::new(BdevCore {
            info,
            backend,
            removed: AtomicBool::new(false),
            retired: Mutex::new(IoStats::default()),
        });
        let c2 = core.clone();
        let io_device = IoDevice::new(core.info.name.clone(), move |cpu| BdevChannel {
            core: c2.clone(),
            backend: RefCell::new(c2.backend.create_channel(cpu)),
            stats: Rc::new(ChannelStats::new(c2.info.block_size)),
        });
        Arc::new(Bdev {
            core,
            io_device,
            claim: Mutex::new(None),
            openers: Mutex::new(Vec::new()),
            aliases: Mutex::new(Vec::new()),
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

    /// Module claiming the bdev, if any.
    pub fn claimed_by(&self) -> Option<String> {
        self.claim.lock().unwrap().as_ref().map(|(_, m)| m.clone())
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

    /// This core's channel for submitting I/O. Called on a reactor; the first call on a core
    /// creates the module's channel there.
    pub fn channel(&self) -> Channel {
        Channel {
            ch: self.bdev.io_device.get_channel(),
            writable: self.writable,
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
        self.bdev.openers.lock().unwrap().retain(|o| o.id != self.id);
    }
}

/// A descriptor's handle on this core's channel: where I/O is submitted. `!Send`.
pub struct Channel {
    ch: IoChannel<BdevChannel>,
    writable: bool,
}

impl Channel {
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
        self.submit_stamped(io, cq, keel_reactor::ticks())
    }

    #[inline]
    fn submit_stamped(&self, mut io: IoBox, cq: &CompletionQueue, submit_ticks: u64) -> Submit {
        let ch = &*self.ch;
        if io.push_frame(cq, Some(ch.stats.clone()), submit_ticks).is_err() {
            io.complete_direct(cq, IoStatus::StackOverflow);
            return Submit::Accepted;
        }
        let info = &ch.core.info;
        let status = if ch.core.removed.load(Ordering::Relaxed) {
            IoStatus::Removed
        } else if !info.caps.supports(io.op) {
            IoStatus::Unsupported
        } else if !self.writable && matches!(io.op, IoOp::Write | IoOp::Unmap | IoOp::WriteZeroes) {
            IoStatus::ReadOnly
        } else if (io.op.needs_range()
            && (io.num_blocks == 0
                || io.offset_blocks >= info.num_blocks
                || io.num_blocks > info.num_blocks - io.offset_blocks))
            || (io.op.has_data() && io.iov_len_bytes() < io.num_blocks * info.block_size as u64)
        {
            IoStatus::InvalidRange
        } else {
            IoStatus::Pending
        };
        if status != IoStatus::Pending {
            io.complete(status);
            return Submit::Accepted;
        }
        match ch.backend.borrow_mut().submit(io) {
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

    /// In-place forwarding, for a layer inside its [`BackendChannel::submit`]: hands `io` (whose
    /// top frame is the layer's, its `offset_blocks` already remapped to this bdev) to this
    /// channel such that a **success** skips the layer's completion queue and poller — the
    /// layer's frame is finished on the way up with `offset_blocks` set back to
    /// `restore_offset_blocks` and `ctx`'s in-flight count dropped. A **failure** comes back to
    /// `ctx.cq()` with the layer's frame on top, exactly as after [`Channel::submit`]; the layer
    /// then calls `ctx.end()` itself and handles it. `ctx.inflight()` counts the request from
    /// here until either. `Submit::Requeue` hands the request back unmarked.
    #[inline]
    pub fn forward(&self, mut io: IoBox, ctx: &Rc<ForwardCtx>, restore_offset_blocks: u64) -> Submit {
        if !io.mark_forwarded(ctx, restore_offset_blocks) {
            // Not inside a layer: nothing to skip.
            return self.submit(io, ctx.cq());
        }
        let stamp = io.submit_ticks();
        match self.submit_stamped(io, ctx.cq(), stamp) {
            Submit::Accepted => Submit::Accepted,
            Submit::Requeue(mut io) => {
                io.unmark_forwarded();
                Submit::Requeue(io)
            }
        }
    }
}
