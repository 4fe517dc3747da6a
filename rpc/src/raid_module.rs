//! The part of SPDK's raid module that md does not keep: raids that wait for their base bdevs
//! (state `configuring`) and the process options (`bdev_raid_set_options`). [`RaidModule`] is a
//! [`BdevModule`] of the bdev registry ("raid"), reached with [`RaidModule::of`].
//!
//! # Configuring raids
//!
//! SPDK lets `bdev_raid_create` name base bdevs that do not exist yet: the raid is stored in
//! state `configuring`, each base is claimed as it appears (the bdev layer's examine), and the
//! raid comes `online` when the last one is there — how SPDK configs that create a raid before
//! its NVMe bdevs attach (or whose bases register after it, as save_config then orders them)
//! load. Keel's raids are md arrays, and md creates from existing bdevs only, so this module
//! holds the request until the array can be made:
//!
//! * A configuring raid is a [`Pending`]: the checked request ([`RaidSpec`], with its UUID fixed
//!   at the start so the array gets it) and one slot per base, holding the claimed
//!   [`Descriptor`] of each base that appeared. Claimed like SPDK's discovered bases: nobody else
//!   writes to them meanwhile.
//! * A base that appears is looked at on the main core (by message from [`BdevModule::examine`],
//!   holding the [`ExamineToken`], so `bdev_wait_for_examine` waits for it). One that cannot
//!   serve — claimed by another module, a block size md cannot take, too small for md's metadata
//!   and one chunk — is left alone with a log message and the raid stays configuring; a later
//!   bdev of that name (after the user fixed it) is looked at again.
//! * With every slot filled, the phase becomes [`Phase::Starting`]: the claims are dropped and
//!   md's create (which claims them again in the same main-core turn, so nothing can slip in
//!   between) writes fresh superblocks and starts the array. When it is running the pending entry
//!   goes and the raid is an md array like any other (save_config keeps it as `md_assemble`).
//!   When md refuses (the members do not fit together) the error is logged, the bases that are
//!   still there are claimed again and the raid stays configuring.
//! * A claimed base that is hot-removed empties its slot.
//! * `bdev_raid_delete` of a configuring raid drops it and its claims (refused, EBUSY, during
//!   the moment md is writing the new array's metadata).
//! * save_config writes each configuring raid as SPDK's own `bdev_raid_create` call; SPDK does
//!   not save a raid it has not registered, Keel does, so a restart keeps waiting.
//!
//! # Process options
//!
//! SPDK's `process_window_size_kb` and `process_max_bandwidth_mb_sec` are global: they size and
//! pace every raid's background process (rebuild). Keel maps them onto each md array's sync
//! window cap and max speed ([`MdRegistry::set_sync_process`]). Until `bdev_raid_set_options` is
//! called, md's (Linux's) defaults rule; once it is, the options are applied to every md array
//! of an SPDK level at once and to each that registers later (examine), and save_config keeps
//! the call.
//!
//! # Threads
//!
//! Control path only: the RPC methods and the examine work run on the main core; the state sits
//! behind one mutex that no I/O touches, and is never held across a call into md or the bdev
//! registry that could call back.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use keel_bdev::{Bdev, BdevEvent, BdevModule, BdevRegistry, ConfigCall, ConfigEntry, Descriptor, ExamineToken, IoOp};
use keel_md::array::default_data_offset_sectors;
use keel_md::{CreateOpts, MdRegistry};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// Module name (also the claim on a configuring raid's bases).
pub(crate) const MODULE: &str = "raid";

/// SPDK's defaults for `bdev_raid_set_options`.
pub(crate) const DEFAULT_WINDOW_KB: u32 = 1024;
pub(crate) const DEFAULT_MAX_BANDWIDTH_MB_SEC: u32 = 0;

/// SPDK's name of an md level, for the levels SPDK has.
pub(crate) fn spdk_level(md_level: &str) -> Option<&'static str> {
    match md_level {
        "raid0" => Some("raid0"),
        "raid1" => Some("raid1"),
        "linear" => Some("concat"),
        "raid5" => Some("raid5f"),
        _ => None,
    }
}

/// SPDK's raid process options (`bdev_raid_set_options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RaidOptions {
    pub process_window_size_kb: u32,
    /// 0: no limit.
    pub process_max_bandwidth_mb_sec: u32,
}

impl Default for RaidOptions {
    fn default() -> RaidOptions {
        RaidOptions {
            process_window_size_kb: DEFAULT_WINDOW_KB,
            process_max_bandwidth_mb_sec: DEFAULT_MAX_BANDWIDTH_MB_SEC,
        }
    }
}

/// A checked `bdev_raid_create` request.
#[derive(Debug, Clone)]
pub(crate) struct RaidSpec {
    /// SPDK's level name ("raid0", "raid1", "raid5f", "concat").
    pub spdk_level: &'static str,
    /// As given (0: none); saved back as given.
    pub strip_size_kb: u32,
    pub uuid: Uuid,
    /// What md gets once every base is there (`uuid` set to the one above).
    pub md: CreateOpts,
}

impl RaidSpec {
    fn name(&self) -> &str {
        &self.md.name
    }

    fn bases(&self) -> &[String] {
        &self.md.members
    }
}

/// Where a configuring raid is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for bases.
    Configuring,
    /// Every base is there; md is creating the array.
    Starting,
}

/// A configuring raid (see the module docs).
struct Pending {
    spec: RaidSpec,
    /// Per base (in `spec.bases()` order), its claimed descriptor once it appeared.
    slots: Vec<Option<Descriptor>>,
    phase: Phase,
}

#[derive(Default)]
struct State {
    pending: Vec<Pending>,
    /// Set by `bdev_raid_set_options` (None: md's defaults rule).
    options: Option<RaidOptions>,
}

/// SPDK's raid module state of one registry (see the module docs). Control path only.
pub(crate) struct RaidModule {
    reg: Weak<BdevRegistry>,
    me: Weak<RaidModule>,
    state: Mutex<State>,
}

impl BdevModule for RaidModule {
    fn init(reg: &Arc<BdevRegistry>) -> Arc<RaidModule> {
        Arc::new_cyclic(|me| RaidModule {
            reg: Arc::downgrade(reg),
            me: me.clone(),
            state: Mutex::new(State::default()),
        })
    }

    fn name(&self) -> &'static str {
        MODULE
    }

    /// A base of a configuring raid, or an md array (to get the process options), registered:
    /// looked at on the main core, by message (the registering module is still on its stack).
    fn examine(&self, bdev: &Arc<Bdev>, token: ExamineToken) {
        let name = bdev.name().to_string();
        let is_array = bdev.info().module == keel_md::array::MODULE;
        let wanted = if is_array {
            self.state().options.is_some()
        } else {
            self.state()
                .pending
                .iter()
                .any(|p| p.phase == Phase::Configuring && p.spec.bases().contains(&name))
        };
        let (true, Some(reg), Some(me)) = (wanted, self.reg.upgrade(), self.me.upgrade()) else {
            return;
        };
        let cores = reg.cores().clone();
        let r = cores.run_on(cores.main_core(), move || {
            if is_array {
                me.apply_options_to(&reg, &name);
            } else {
                me.base_appeared(&reg, &name, token);
            }
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "raid: cannot examine a new bdev");
        }
    }

    /// `bdev_raid_set_options` once it was called, then every configuring raid as SPDK's
    /// `bdev_raid_create` (no bdev is created by them yet).
    fn config(&self, _reg: &BdevRegistry) -> Vec<ConfigEntry> {
        let st = self.state();
        let mut out = Vec::new();
        if let Some(o) = st.options {
            out.push(ConfigEntry::new(ConfigCall {
                method: "bdev_raid_set_options",
                params: json!({
                    "process_window_size_kb": o.process_window_size_kb,
                    "process_max_bandwidth_mb_sec": o.process_max_bandwidth_mb_sec,
                }),
            }));
        }
        for p in &st.pending {
            out.push(ConfigEntry::new(ConfigCall {
                method: "bdev_raid_create",
                params: create_params(&p.spec),
            }));
        }
        out
    }
}

/// SPDK's saved `bdev_raid_create` params: name, uuid, strip_size_kb (when not 0), raid_level,
/// base_bdevs.
pub(crate) fn create_params(spec: &RaidSpec) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(spec.name()));
    m.insert("uuid".into(), json!(spec.uuid.to_string()));
    if spec.strip_size_kb != 0 {
        m.insert("strip_size_kb".into(), json!(spec.strip_size_kb));
    }
    m.insert("raid_level".into(), json!(spec.spdk_level));
    m.insert("base_bdevs".into(), json!(spec.bases()));
    Value::Object(m)
}

/// Why bdev `info` cannot be a member of an md array with `chunk_kb` chunks, if it cannot.
fn unusable(info: &keel_bdev::BdevInfo, chunk_kb: u32) -> Option<String> {
    let bs = info.block_size;
    if !bs.is_power_of_two() || !(512..=4096).contains(&bs) {
        return Some(format!("block size {bs}: md needs 512 to 4096 bytes"));
    }
    if !info.caps.supports(IoOp::Read) || !info.caps.supports(IoOp::Write) {
        return Some("it does not take reads and writes".into());
    }
    let sectors = info.size_bytes() / 512;
    let chunk_sectors = u64::from(chunk_kb) * 2;
    let need = default_data_offset_sectors(sectors, chunk_sectors) + chunk_sectors.max(128);
    (sectors < need).then(|| format!("{sectors} sectors: md's metadata and one chunk need {need}"))
}

impl RaidModule {
    /// The raid module of `reg`, created on first use. Any thread.
    pub(crate) fn of(reg: &Arc<BdevRegistry>) -> Arc<RaidModule> {
        reg.module::<RaidModule>()
    }

    /// The raid module of `reg` if it was ever used (a lookup that must not create it).
    pub(crate) fn loaded(reg: &BdevRegistry) -> Option<Arc<RaidModule>> {
        reg.loaded_module::<RaidModule>()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a configuring raid is named `name`.
    pub(crate) fn is_pending(&self, name: &str) -> bool {
        self.state().pending.iter().any(|p| p.spec.name() == name)
    }

    /// Stores a raid whose bases are not all there yet and claims those that are. Every base
    /// present must serve (claimed by another module: EPERM, as SPDK's claim; unusable: EINVAL);
    /// on an error nothing is stored or claimed. Main core.
    pub(crate) fn configure(&self, reg: &Arc<BdevRegistry>, spec: RaidSpec) -> Result<(), (i32, String)> {
        let mut slots = Vec::with_capacity(spec.bases().len());
        for base in spec.bases() {
            if reg.get(base).is_none() {
                slots.push(None);
                continue;
            }
            slots.push(Some(self.claim_base(reg, spec.name(), base, spec.md.chunk_kb)?));
        }
        let missing: Vec<&String> = spec
            .bases()
            .iter()
            .zip(&slots)
            .filter(|(_, s)| s.is_none())
            .map(|(b, _)| b)
            .collect();
        tracing::info!(raid = %spec.name(), ?missing, "raid configuring: waiting for base bdevs");
        self.state().pending.push(Pending {
            spec,
            slots,
            phase: Phase::Configuring,
        });
        Ok(())
    }

    /// Opens and claims `base` for configuring raid `raid`: errno and why when it cannot serve.
    fn claim_base(
        &self,
        reg: &Arc<BdevRegistry>,
        raid: &str,
        base: &str,
        chunk_kb: Option<u32>,
    ) -> Result<Descriptor, (i32, String)> {
        let me = self.me.clone();
        let (r, b) = (raid.to_string(), base.to_string());
        let desc = reg
            .open(base, true, move |BdevEvent::Remove| {
                if let Some(m) = me.upgrade() {
                    m.base_removed(&r, &b);
                }
            })
            .map_err(|e| (claim_errno(&e), format!("base bdev '{base}': {e}")))?;
        if let Some(why) = unusable(desc.info(), chunk_kb.unwrap_or(0)) {
            return Err((-22, format!("base bdev '{base}' cannot serve: {why}")));
        }
        desc.claim(MODULE)
            .map_err(|e| (claim_errno(&e), format!("base bdev '{base}': {e}")))?;
        Ok(desc)
    }

    /// Main core: bdev `name` registered and a configuring raid lists it.
    fn base_appeared(self: Arc<Self>, reg: &Arc<BdevRegistry>, name: &str, token: ExamineToken) {
        let Some(b) = reg.get(name) else { return };
        if b.is_removed() {
            return;
        }
        // Every configuring raid with an empty slot for it (a bdev serves one raid: the first).
        let want: Option<(String, Option<u32>)> = self.state().pending.iter().find_map(|p| {
            let free = p.phase == Phase::Configuring
                && p.spec
                    .bases()
                    .iter()
                    .zip(&p.slots)
                    .any(|(n, s)| n == name && s.is_none());
            free.then(|| (p.spec.name().to_string(), p.spec.md.chunk_kb))
        });
        let Some((raid, chunk_kb)) = want else { return };
        let desc = match self.claim_base(reg, &raid, name, chunk_kb) {
            Ok(d) => d,
            Err((_, why)) => {
                tracing::warn!(raid = %raid, "raid stays configuring: {why}");
                return;
            }
        };
        let complete = {
            let mut st = self.state();
            let Some(p) = st.pending.iter_mut().find(|p| p.spec.name() == raid) else {
                return;
            };
            if let Some(i) = p.spec.bases().iter().position(|n| n == name) {
                p.slots[i] = Some(desc);
            }
            p.slots.iter().all(Option::is_some)
        };
        tracing::info!(raid = %raid, base = %name, "raid: base bdev discovered");
        if complete {
            self.start(reg, &raid, token);
        }
    }

    /// Main core: every base of configuring raid `raid` is claimed; md creates the array
    /// (see the module docs). `token` is held until md is done.
    fn start(self: Arc<Self>, reg: &Arc<BdevRegistry>, raid: &str, token: ExamineToken) {
        let opts = {
            let mut st = self.state();
            let Some(p) = st.pending.iter_mut().find(|p| p.spec.name() == raid) else {
                return;
            };
            p.phase = Phase::Starting;
            // Release the claims: md claims the same bases again below, in this turn.
            p.slots.iter_mut().for_each(|s| drop(s.take()));
            p.spec.md.clone()
        };
        let md = MdRegistry::of(reg);
        let (me, reg2, name) = (self.clone(), reg.clone(), raid.to_string());
        md.create(opts, move |r| {
            let _token = token;
            match r {
                Ok(()) => {
                    me.state().pending.retain(|p| p.spec.name() != name);
                    tracing::info!(raid = %name, "raid online");
                    me.apply_options_to(&reg2, &name);
                }
                Err(e) => {
                    tracing::error!(raid = %name, error = %e, "raid stays configuring: md cannot create it");
                    me.reclaim(&reg2, &name);
                }
            }
        });
    }

    /// Main core: md refused to create `raid`; its bases that are still there are claimed
    /// again and it waits as before.
    fn reclaim(&self, reg: &Arc<BdevRegistry>, raid: &str) {
        let Some((bases, chunk_kb)) = self
            .state()
            .pending
            .iter_mut()
            .find(|p| p.spec.name() == raid)
            .map(|p| {
                p.phase = Phase::Configuring;
                (p.spec.bases().to_vec(), p.spec.md.chunk_kb)
            })
        else {
            return;
        };
        for (i, base) in bases.iter().enumerate() {
            if reg.get(base).is_none() {
                continue;
            }
            match self.claim_base(reg, raid, base, chunk_kb) {
                Ok(d) => {
                    if let Some(p) = self.state().pending.iter_mut().find(|p| p.spec.name() == raid) {
                        p.slots[i] = Some(d);
                    }
                }
                Err((_, why)) => tracing::warn!(raid = %raid, "raid: {why}"),
            }
        }
    }

    /// A claimed base of configuring raid `raid` is being hot-removed: its slot empties. On
    /// the core that opened it (the main core).
    fn base_removed(&self, raid: &str, base: &str) {
        let dropped = {
            let mut st = self.state();
            let Some(p) = st.pending.iter_mut().find(|p| p.spec.name() == raid) else {
                return;
            };
            let Some(i) = p.spec.bases().iter().position(|n| n == base) else {
                return;
            };
            match &p.slots[i] {
                Some(d) if d.bdev().is_removed() => p.slots[i].take(),
                _ => None,
            }
        };
        if dropped.is_some() {
            tracing::warn!(raid = %raid, base = %base, "raid: base bdev removed, raid configuring");
        }
        drop(dropped);
    }

    /// Drops configuring raid `name` and its claims: `None` when there is none, EBUSY while md
    /// is creating it. Main core.
    pub(crate) fn delete(&self, name: &str) -> Option<Result<(), (i32, String)>> {
        let mut st = self.state();
        let i = st.pending.iter().position(|p| p.spec.name() == name)?;
        if st.pending[i].phase == Phase::Starting {
            return Some(Err((-16, format!("raid bdev {name} is being started"))));
        }
        let p = st.pending.remove(i);
        drop(st);
        drop(p);
        tracing::info!(raid = %name, "configuring raid deleted");
        Some(Ok(()))
    }

    /// Releases base `base` of a configuring raid (`bdev_raid_remove_base_bdev`): `None` when
    /// no configuring raid has it claimed. Main core.
    pub(crate) fn release_base(&self, base: &str) -> Option<()> {
        let d = {
            let mut st = self.state();
            st.pending
                .iter_mut()
                .filter(|p| p.phase == Phase::Configuring)
                .find_map(|p| {
                    let i = p.spec.bases().iter().position(|n| n == base)?;
                    p.slots[i].take()
                })?
        };
        drop(d);
        Some(())
    }

    /// The configuring raids as `bdev_raid_get_bdevs` shows them, in creation order.
    pub(crate) fn configuring_json(&self) -> Vec<Value> {
        self.state()
            .pending
            .iter()
            .map(|p| {
                let discovered = p.slots.iter().flatten().count();
                let base: Vec<Value> = p
                    .spec
                    .bases()
                    .iter()
                    .zip(&p.slots)
                    .map(|(n, s)| {
                        json!({
                            "name": n,
                            "uuid": s.as_ref().map_or_else(|| Uuid::nil().to_string(), |d| d.info().uuid.to_string()),
                            "is_configured": s.is_some(),
                            "data_offset": 0,
                            "data_size": 0,
                        })
                    })
                    .collect();
                json!({
                    "name": p.spec.name(),
                    "uuid": p.spec.uuid.to_string(),
                    "strip_size_kb": p.spec.strip_size_kb,
                    "state": "configuring",
                    "raid_level": p.spec.spdk_level,
                    "superblock": true,
                    "num_base_bdevs": p.slots.len(),
                    "num_base_bdevs_discovered": discovered,
                    "num_base_bdevs_operational": p.slots.len(),
                    "base_bdevs_list": base,
                })
            })
            .collect()
    }

    /// The options `bdev_raid_set_options` set, if it was called.
    pub(crate) fn options(&self) -> Option<RaidOptions> {
        self.state().options
    }

    /// `bdev_raid_set_options`: keeps `o` and applies it to every md array of an SPDK level.
    /// Main core.
    pub(crate) fn set_options(&self, reg: &Arc<BdevRegistry>, o: RaidOptions) {
        self.state().options = Some(o);
        let md = MdRegistry::of(reg);
        for a in md.arrays(None).unwrap_or_default() {
            if spdk_level(&a.level).is_some() {
                apply(&md, &a.name, o);
            }
        }
    }

    /// Main core: md array `name` registered (or was made from a configuring raid); it gets
    /// the options when they were set and it is of an SPDK level.
    fn apply_options_to(&self, reg: &Arc<BdevRegistry>, name: &str) {
        let Some(o) = self.state().options else { return };
        let md = MdRegistry::of(reg);
        let level = md
            .arrays(Some(name))
            .ok()
            .and_then(|a| a.into_iter().next())
            .map(|a| a.level);
        if level.is_some_and(|l| spdk_level(&l).is_some()) {
            apply(&md, name, o);
        }
    }
}

/// SPDK's options onto md array `name`: the window in KiB, the bandwidth as KiB/s (MiB × 1024;
/// 0 stays "no limit").
fn apply(md: &MdRegistry, name: &str, o: RaidOptions) {
    let max_kbs = u64::from(o.process_max_bandwidth_mb_sec) * 1024;
    if let Err(e) = md.set_sync_process(name, u64::from(o.process_window_size_kb), max_kbs) {
        tracing::warn!(array = %name, error = %e, "raid options not applied");
    }
}

/// SPDK's errno for a base that cannot be opened or claimed: EPERM for a claim held by another
/// module (SPDK's claim answer), the bdev error's own otherwise.
fn claim_errno(e: &keel_bdev::BdevError) -> i32 {
    match e {
        keel_bdev::BdevError::Claimed { .. } | keel_bdev::BdevError::HasWriters { .. } => -1,
        other => other.errno(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_create_params_are_spdks() {
        let spec = RaidSpec {
            spdk_level: "raid1",
            strip_size_kb: 0,
            uuid: Uuid::nil(),
            md: CreateOpts {
                name: "R".into(),
                members: vec!["A".into(), "B".into()],
                ..CreateOpts::default()
            },
        };
        let v = create_params(&spec);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["name", "uuid", "raid_level", "base_bdevs"]);
        let spec = RaidSpec {
            spdk_level: "raid0",
            strip_size_kb: 64,
            ..spec
        };
        let v = create_params(&spec);
        assert_eq!(v["strip_size_kb"], 64);
        assert_eq!(v["base_bdevs"], json!(["A", "B"]));
    }
}
