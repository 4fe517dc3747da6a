//! The split module, as SPDK's `bdev_split`: cuts one base bdev into `split_count` equal
//! parts named `BASEp0`, `BASEp1`, … (product name "Split Disk").
//!
//! # Configurations, not just bdevs
//!
//! As in SPDK, what the user creates is a *configuration* per base bdev (`base_bdev`,
//! `split_count`, `split_size_mb`), kept by the [`SplitModule`] of the registry:
//!
//! * `bdev_split_create` over a base that does not exist yet stores the configuration and
//!   answers with no names; the parts appear when the base registers (the module's examine
//!   hook). So a config that splits an NVMe namespace before it attaches loads unchanged.
//! * A base already split (or waiting to be) refuses a second configuration (EEXIST); a base
//!   that is claimed by another module refuses the split and nothing is stored.
//! * Part size: `split_size_mb` MiB when given (a whole number of the base's blocks, else
//!   EINVAL), else the base divided evenly (the remainder is unused). When fewer parts fit than
//!   asked, the count is clamped to what fits, with a warning, as SPDK does; a base too small
//!   for even one part refuses the split.
//! * `bdev_split_delete {base_bdev}` removes every part and the configuration (ENOENT, SPDK's
//!   code, when there is none). A part that something must not lose — a dm table naming it, an
//!   export serving it — refuses the delete naming the holder, and nothing changes
//!   ([`BdevRegistry::check_removable`]); an md array over a part degrades, as with any removal.
//! * Hot removal of the base removes the parts and, with the last of them, the configuration
//!   (SPDK frees it with the part base).
//! * save_config writes one `bdev_split_create` per configuration, live or waiting, after the
//!   base's own call ([`SplitModule::config`]).
//!
//! # Data path
//!
//! The parts share one claimed descriptor of the base ([`SplitBase`]); each part is a stacking
//! layer over it (`stack.rs`) whose channel forwards in place at the part's start, and that
//! publishes a linear route there: the core maps a part's requests onto the base without calling
//! the module, as for passthru. A split costs a route per request and nothing else.
//!
//! # Threads
//!
//! Creation, deletion, examine and save_config are control path (main core, or the registering
//! thread for examine); the configurations sit behind one mutex no I/O touches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::obj;
use super::stack::{Hooks, StackChannel};
use crate::module::{BdevModule, ConfigEntry, ExamineToken};
use crate::{
    BackendChannel, Bdev, BdevBackend, BdevError, BdevEvent, BdevInfo, BdevParams, BdevRegistry, ChannelCx, ConfigCall,
    Descriptor,
};

/// Module name (also the claim on the base).
pub const MODULE: &str = "split";

/// `product_name` of the parts (SPDK's).
pub const PRODUCT_NAME: &str = "Split Disk";

const MIB: u64 = 1024 * 1024;

/// `bdev_split_create` parameters (SPDK's).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitOpts {
    pub base_bdev: String,
    pub split_count: u32,
    /// Size of each part in MiB; 0 or absent = the base divided evenly.
    #[serde(default)]
    pub split_size_mb: u64,
}

/// `bdev_split_delete` parameters (SPDK's).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitDeleteOpts {
    pub base_bdev: String,
}

/// One split configuration and, once the base exists, its live parts.
struct SplitConfig {
    opts: SplitOpts,
    live: Option<Arc<SplitBase>>,
}

/// The split module of one registry: the configurations, one per base bdev, in creation order
/// (save_config keeps it). Control path only.
pub struct SplitModule {
    me: Weak<SplitModule>,
    reg: Weak<BdevRegistry>,
    configs: Mutex<Vec<SplitConfig>>,
}

/// What the parts of one split share: the claimed base descriptor, dropped (claim released)
/// when the last part unregisters.
struct SplitBase {
    base_name: String,
    desc: Mutex<Option<Descriptor>>,
    /// Parts still registered.
    parts_left: AtomicUsize,
    /// Part names, in order.
    parts: Vec<String>,
    module: Weak<SplitModule>,
}

impl SplitBase {
    fn part_gone(&self) {
        if self.parts_left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        drop(self.desc.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(m) = self.module.upgrade() {
            m.forget_live(&self.base_name, self);
        }
    }
}

/// One part's backend.
struct SplitPart {
    base: Arc<SplitBase>,
    offset_blocks: u64,
}

/// Parts only remap: every request goes down in place, along the route.
struct SplitHooks;

impl Hooks for SplitHooks {
    const FORWARD_IN_PLACE: bool = true;
    const ROUTE: bool = true;
}

impl BdevBackend for SplitPart {
    fn create_channel(&self, cx: &ChannelCx) -> Box<dyn BackendChannel> {
        let base = self
            .base
            .desc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|d| d.channel());
        let name = format!("split_{}_{}", self.base.base_name, self.offset_blocks);
        Box::new(StackChannel::new(cx, base, SplitHooks, name, self.offset_blocks))
    }

    fn driver_specific(&self) -> Value {
        json!({"split": {"base_bdev": self.base.base_name, "offset_blocks": self.offset_blocks}})
    }

    /// The module's `bdev_split_create` recreates every part.
    fn config(&self, _info: &BdevInfo) -> Option<ConfigCall> {
        None
    }

    fn bases(&self) -> Vec<String> {
        vec![self.base.base_name.clone()]
    }

    fn removed_with_base(&self) -> bool {
        true
    }

    fn on_unregister(&self) {
        self.base.part_gone();
    }
}

impl BdevModule for SplitModule {
    fn init(reg: &Arc<BdevRegistry>) -> Arc<Self> {
        Arc::new_cyclic(|me| SplitModule {
            me: me.clone(),
            reg: Arc::downgrade(reg),
            configs: Mutex::new(Vec::new()),
        })
    }

    fn name(&self) -> &'static str {
        MODULE
    }

    /// A base with a waiting configuration appeared: split it now.
    fn examine(&self, bdev: &Arc<Bdev>, token: ExamineToken) {
        let waiting = self.with_config(bdev.name(), |c| c.filter(|c| c.live.is_none()).map(|c| c.opts.clone()));
        if let (Some(opts), Some(reg)) = (waiting, self.reg.upgrade()) {
            if let Err(e) = self.split_now(&reg, &opts) {
                tracing::error!(base = %opts.base_bdev, error = %e, "could not split the bdev that appeared");
            }
        }
        drop(token);
    }

    fn config(&self, _reg: &BdevRegistry) -> Vec<ConfigEntry> {
        self.configs()
            .iter()
            .map(|c| {
                let call = ConfigCall {
                    method: "bdev_split_create",
                    params: obj([
                        ("base_bdev", json!(c.opts.base_bdev)),
                        ("split_count", json!(c.opts.split_count)),
                        ("split_size_mb", json!(c.opts.split_size_mb)),
                    ]),
                };
                let parts = c.live.as_ref().map(|l| l.parts.clone()).unwrap_or_default();
                let mut e = ConfigEntry::new(call).needs([c.opts.base_bdev.clone()]);
                for p in parts {
                    e = e.provides(p);
                }
                e
            })
            .collect()
    }
}

impl SplitModule {
    /// Stores the configuration and splits the base if it exists; returns the part names
    /// (empty while the base is missing). On any error nothing is stored, registered or
    /// claimed. Called on the main core.
    pub fn create(&self, reg: &Arc<BdevRegistry>, opts: &SplitOpts) -> Result<Vec<String>, BdevError> {
        if opts.split_count == 0 {
            return Err(BdevError::invalid("split_count", "must be at least 1"));
        }
        if opts.base_bdev.is_empty() {
            return Err(BdevError::invalid("base_bdev", "must not be empty"));
        }
        {
            let mut configs = self.configs();
            if configs.iter().any(|c| c.opts.base_bdev == opts.base_bdev) {
                return Err(BdevError::AlreadyConfigured(format!(
                    "split configuration for base bdev '{}'",
                    opts.base_bdev
                )));
            }
            configs.push(SplitConfig {
                opts: opts.clone(),
                live: None,
            });
        }
        if reg.get(&opts.base_bdev).is_none() {
            tracing::info!(base = %opts.base_bdev, "split waits for its base bdev");
            return Ok(Vec::new());
        }
        match self.split_now(reg, opts) {
            Ok(names) => Ok(names),
            Err(e) => {
                self.forget(&opts.base_bdev);
                Err(e)
            }
        }
    }

    /// Removes every part of `base_bdev` and its configuration; `done` runs when the parts
    /// are gone. `NotConfigured` (ENOENT, as SPDK) without a configuration; `InUse` when a part
    /// must not go (nothing changes then). Called on the main core.
    pub fn delete(
        &self,
        reg: &BdevRegistry,
        base_bdev: &str,
        done: impl FnOnce() + Send + 'static,
    ) -> Result<(), BdevError> {
        let Some(live) = self.with_config(base_bdev, |c| c.map(|c| c.live.clone())) else {
            return Err(BdevError::NotConfigured(format!(
                "split configuration for base bdev '{base_bdev}'"
            )));
        };
        let parts: Vec<String> = live.map(|l| l.parts.clone()).unwrap_or_default();
        let present: Vec<String> = parts.into_iter().filter(|p| reg.get(p).is_some()).collect();
        // Names dm tables and exports alike (module holds and `Descriptor::hold`).
        for p in &present {
            reg.check_removable(p)?;
        }
        self.forget(base_bdev);
        let left = Arc::new(AtomicUsize::new(present.len() + 1));
        let done = Arc::new(Mutex::new(Some(Box::new(done) as Box<dyn FnOnce() + Send>)));
        let finish = move |left: &AtomicUsize, done: &Mutex<Option<Box<dyn FnOnce() + Send>>>| {
            if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                if let Some(f) = done.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    f();
                }
            }
        };
        for p in &present {
            let (l, d) = (left.clone(), done.clone());
            if let Err(e) = reg.unregister(p, move || finish(&l, &d)) {
                tracing::warn!(part = %p, error = %e, "split part vanished during delete");
                finish(&left, &done);
            }
        }
        finish(&left, &done);
        Ok(())
    }

    /// Names of the parts of `base_bdev` that are registered now.
    pub fn parts_of(&self, base_bdev: &str) -> Vec<String> {
        self.with_config(base_bdev, |c| c.and_then(|c| c.live.as_ref()).map(|l| l.parts.clone()))
            .unwrap_or_default()
    }

    fn configs(&self) -> std::sync::MutexGuard<'_, Vec<SplitConfig>> {
        self.configs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `f` of the configuration of `base_bdev`, if there is one (under the lock).
    fn with_config<R>(&self, base_bdev: &str, f: impl FnOnce(Option<&mut SplitConfig>) -> R) -> R {
        f(self.configs().iter_mut().find(|c| c.opts.base_bdev == base_bdev))
    }

    fn forget(&self, base_bdev: &str) {
        self.configs().retain(|c| c.opts.base_bdev != base_bdev);
    }

    /// The last part of `live` went (deleted or hot-removed with its base): the configuration
    /// goes with it, as SPDK frees it with the part base.
    fn forget_live(&self, base_bdev: &str, live: &SplitBase) {
        let is_it = self.with_config(base_bdev, |c| {
            c.and_then(|c| c.live.as_ref())
                .is_some_and(|l| std::ptr::eq(Arc::as_ptr(l), live))
        });
        if is_it {
            self.forget(base_bdev);
        }
    }

    /// Opens and claims the base and registers the parts; on error unregisters what it
    /// registered and releases the base.
    fn split_now(&self, reg: &Arc<BdevRegistry>, opts: &SplitOpts) -> Result<Vec<String>, BdevError> {
        let me = self.me.clone();
        let weak_reg = Arc::downgrade(reg);
        let base_for_event = opts.base_bdev.clone();
        let desc = reg.open(&opts.base_bdev, true, move |ev| match ev {
            BdevEvent::Remove => remove_parts(&weak_reg, &me, &base_for_event),
        })?;
        let info = desc.info().clone();
        let part_blocks = part_size_blocks(&info, opts)?;
        let count = (info.num_blocks / part_blocks).min(u64::from(opts.split_count));
        if count < u64::from(opts.split_count) {
            tracing::warn!(
                base = %opts.base_bdev,
                asked = opts.split_count,
                fits = count,
                "split count is greater than the number of parts that fit: clamping"
            );
        }
        let parts: Vec<String> = (0..count).map(|i| format!("{}p{i}", info.name)).collect();
        if let Some(p) = parts.iter().find(|p| reg.get(p).is_some()) {
            return Err(BdevError::Exists(p.clone()));
        }
        desc.claim(MODULE)?;
        let base = Arc::new(SplitBase {
            base_name: info.name.clone(),
            desc: Mutex::new(Some(desc)),
            parts_left: AtomicUsize::new(0),
            parts: parts.clone(),
            module: self.me.clone(),
        });
        let boundary = info.optimal_io_boundary_blocks;
        for (i, name) in parts.iter().enumerate() {
            let offset_blocks = i as u64 * part_blocks;
            let aligned = boundary != 0 && offset_blocks.is_multiple_of(u64::from(boundary));
            let params = BdevParams {
                name: name.clone(),
                uuid: Some(part_uuid(&info.uuid, offset_blocks)),
                product_name: PRODUCT_NAME,
                module: MODULE,
                block_size: info.block_size,
                num_blocks: part_blocks,
                caps: info.caps,
                optimal_io_boundary_blocks: if aligned { boundary } else { 0 },
            };
            base.parts_left.fetch_add(1, Ordering::AcqRel);
            let backend = Arc::new(SplitPart {
                base: base.clone(),
                offset_blocks,
            });
            if let Err(e) = reg.register(params, backend) {
                base.parts_left.fetch_sub(1, Ordering::AcqRel);
                for done in &parts[..i] {
                    let _ = reg.unregister(done, || {});
                }
                if base.parts_left.load(Ordering::Acquire) == 0 {
                    drop(base.desc.lock().unwrap_or_else(|e| e.into_inner()).take());
                }
                return Err(e);
            }
        }
        self.with_config(&opts.base_bdev, |c| {
            if let Some(c) = c {
                c.live = Some(base.clone());
            }
        });
        // The base may have gone while the parts registered: follow it.
        let gone = base
            .desc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|d| d.bdev().is_removed());
        if gone {
            remove_parts(&Arc::downgrade(reg), &self.me, &opts.base_bdev);
        }
        tracing::debug!(base = %opts.base_bdev, parts = count, part_blocks, "bdev split");
        Ok(parts)
    }
}

/// A part's UUID: derived from the base's and the part's offset, so a configuration reloaded
/// over the same base gives the same parts (as SPDK derives them). A version-8 (custom) UUID:
/// the base's bits with the low 64 mixed by the offset (splitmix64), version and variant set.
fn part_uuid(base: &Uuid, offset_blocks: u64) -> Uuid {
    let mut z = offset_blocks.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let mut b = (base.as_u128() ^ u128::from(z)).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    Uuid::from_bytes(b)
}

/// The size of each part in blocks, or why there is none.
fn part_size_blocks(info: &BdevInfo, opts: &SplitOpts) -> Result<u64, BdevError> {
    let blocks = if opts.split_size_mb != 0 {
        let bytes = opts
            .split_size_mb
            .checked_mul(MIB)
            .ok_or_else(|| BdevError::invalid("split_size_mb", "too large"))?;
        if !bytes.is_multiple_of(u64::from(info.block_size)) {
            return Err(BdevError::invalid(
                "split_size_mb",
                format!(
                    "{} MiB is not a whole number of blocks of {} bytes",
                    opts.split_size_mb, info.block_size
                ),
            ));
        }
        bytes / u64::from(info.block_size)
    } else {
        info.num_blocks / u64::from(opts.split_count)
    };
    if blocks == 0 || blocks > info.num_blocks {
        return Err(BdevError::invalid(
            "split_count",
            format!(
                "base bdev '{}' ({} blocks) is too small for a part of {} blocks",
                info.name,
                info.num_blocks,
                blocks.max(1)
            ),
        ));
    }
    Ok(blocks)
}

/// Hot removal of a split base: unregisters every part still registered.
fn remove_parts(reg: &Weak<BdevRegistry>, module: &Weak<SplitModule>, base_bdev: &str) {
    let (Some(reg), Some(module)) = (reg.upgrade(), module.upgrade()) else {
        return;
    };
    for p in module.parts_of(base_bdev) {
        let ours = reg.get(&p).is_some_and(|b| {
            b.backend_as::<SplitPart>()
                .is_some_and(|s| s.base.base_name == base_bdev)
        });
        if ours {
            tracing::debug!(part = %p, "base removed: removing split part");
            if let Err(e) = reg.unregister(&p, || {}) {
                tracing::warn!(part = %p, error = %e, "cannot remove split part after its base");
            }
        }
    }
}

/// The split module of `reg`, created on first use. Control path.
pub fn module(reg: &Arc<BdevRegistry>) -> Arc<SplitModule> {
    reg.module::<SplitModule>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_uuids_are_stable_distinct_and_well_formed() {
        let base = Uuid::parse_str("6f1f0a5e-1e6b-4ac4-8e0a-3b2c1d0e9f11").unwrap();
        let a: Vec<Uuid> = (0..64).map(|i| part_uuid(&base, i * 2048)).collect();
        let b: Vec<Uuid> = (0..64).map(|i| part_uuid(&base, i * 2048)).collect();
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), a.len());
        assert!(a.iter().all(|u| *u != base && u.get_version_num() == 8));
        assert_ne!(part_uuid(&Uuid::new_v4(), 0), a[0]);
    }
}
