//! The bdev registry: names, aliases and UUIDs → bdevs; open, claim and hot removal; the
//! modules of this registry (`module.rs`).
//!
//! # Examine on appear
//!
//! Layers that recognise their own metadata on a bdev (md's superblock, later partitions or
//! lvol stores) look at every bdev that registers. A [`crate::BdevModule`] does it in its
//! [`crate::BdevModule::examine`] hook, which [`BdevRegistry::register`] calls after every
//! successful registration with an [`ExamineToken`] counting the examination until it drops. The
//! hook runs on the registering thread and outside the registry's lock (so it may call back into
//! the registry), and must return quickly: it records the bdev and does its reading later
//! (typically by message to the main core), keeping the token until that work is done.
//! `bdev_wait_for_examine` can wait until [`BdevRegistry::examines_in_flight`] is 0.
//!
//! # Indexes
//!
//! Targets hold thousands of bdevs, so nothing that touches one bdev scans them all: the
//! registry keeps the bdevs in registration order keyed by a sequence number (a `BTreeMap`, so
//! an unregister does not shift the rest) and two hash indexes onto those numbers — names and
//! aliases (one namespace: a name is refused if it is any bdev's name or alias) and UUIDs.
//! Register, lookup, alias and unregister cost the same at 50,000 bdevs as at 10; only
//! [`BdevRegistry::list`] is linear, in what it returns.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use keel_reactor::{try_current, Cores};
use uuid::Uuid;

use crate::bdev::{BdevBackend, BdevEvent, EventFn};
use crate::module::{self, BdevInput, ModuleInput, ModuleTable};
use crate::{
    Bdev, BdevError, BdevInfo, BdevModule, BdevParams, ConfigPlan, Descriptor, ExamineToken, ModuleDone, SubsystemInfo,
};

/// All bdevs of one Keel instance. Control-path object (`Send + Sync`, internally locked):
/// called on the main core by RPC and by modules; never on the data path.
pub struct BdevRegistry {
    cores: Cores,
    bdevs: Mutex<Index>,
    /// Examinations started and not yet finished: every live [`ExamineToken`] counts one.
    examines_in_flight: Arc<AtomicUsize>,
    /// This registry's modules, in creation order ([`BdevRegistry::module`]).
    modules: Mutex<ModuleTable>,
}

/// The registered bdevs and their indexes (module docs). Owned by the registry's lock.
#[derive(Default)]
struct Index {
    /// Registration order: sequence number → bdev.
    order: BTreeMap<u64, Arc<Bdev>>,
    next_seq: u64,
    /// Every name and alias → the bdev's sequence number.
    names: HashMap<String, u64>,
    /// Every UUID → the bdev's sequence number.
    uuids: HashMap<Uuid, u64>,
}

impl Index {
    fn by_seq(&self, seq: Option<&u64>) -> Option<&Arc<Bdev>> {
        self.order.get(seq?)
    }

    /// By name or alias, then by UUID string (what [`BdevRegistry::get`] documents).
    fn find(&self, name: &str) -> Option<&Arc<Bdev>> {
        self.by_seq(self.names.get(name)).or_else(|| {
            let u = Uuid::parse_str(name).ok()?;
            self.by_seq(self.uuids.get(&u))
        })
    }
}

/// Longest bdev name accepted (SPDK has no hard limit; this keeps names printable in reports).
const MAX_NAME_LEN: usize = 255;

impl BdevRegistry {
    /// An empty registry whose removal notices travel over `cores`.
    pub fn new(cores: Cores) -> Arc<BdevRegistry> {
        Arc::new(BdevRegistry {
            cores,
            bdevs: Mutex::new(Index::default()),
            examines_in_flight: Arc::new(AtomicUsize::new(0)),
            modules: Mutex::new(ModuleTable::default()),
        })
    }

    /// The reactors this registry's bdevs run on.
    pub fn cores(&self) -> &Cores {
        &self.cores
    }

    /// Registers a bdev built by a module. Fails on an empty or duplicate name/UUID, a block size
    /// that is not a power of two ≥ 512 (or 520.. for md formats: not supported), zero blocks,
    /// or a size whose byte count does not fit a u64 ([`crate::size_bytes_checked`]).
    pub fn register(&self, params: BdevParams, backend: Arc<dyn BdevBackend>) -> Result<Arc<Bdev>, BdevError> {
        validate_name(&params.name)?;
        if params.block_size < 512 || !params.block_size.is_power_of_two() {
            return Err(BdevError::invalid(
                "block_size",
                format!("{} is not a power of two of at least 512", params.block_size),
            ));
        }
        if params.num_blocks == 0 {
            return Err(BdevError::invalid("num_blocks", "must be greater than 0"));
        }
        crate::size_bytes_checked(params.num_blocks, params.block_size)?;
        let uuid = params.uuid.unwrap_or_else(Uuid::new_v4);
        let mut bdevs = self.bdevs.lock().unwrap();
        if bdevs.names.contains_key(&params.name) {
            return Err(BdevError::Exists(params.name));
        }
        if bdevs.uuids.contains_key(&uuid) {
            return Err(BdevError::Exists(uuid.to_string()));
        }
        let info = BdevInfo {
            name: params.name,
            uuid,
            product_name: params.product_name,
            module: params.module,
            block_size: params.block_size,
            num_blocks: params.num_blocks,
            caps: params.caps,
            optimal_io_boundary_blocks: params.optimal_io_boundary_blocks,
        };
        let bdev = Bdev::new(info, backend);
        let seq = bdevs.next_seq;
        bdevs.next_seq += 1;
        bdevs.names.insert(bdev.name().to_string(), seq);
        bdevs.uuids.insert(uuid, seq);
        bdevs.order.insert(seq, bdev.clone());
        tracing::debug!(name = bdev.name(), "bdev registered");
        drop(bdevs);
        self.examine(&bdev);
        Ok(bdev)
    }

    /// Looks a bdev up by name, alias or UUID string.
    /// Constant time (hash indexes, module docs).
    pub fn get(&self, name: &str) -> Option<Arc<Bdev>> {
        self.bdevs.lock().unwrap().find(name).cloned()
    }

    /// Every registered bdev in registration order (dependencies before dependents).
    pub fn list(&self) -> Vec<Arc<Bdev>> {
        self.bdevs.lock().unwrap().order.values().cloned().collect()
    }

    /// Adds an alias.
    pub fn add_alias(&self, name: &str, alias: &str) -> Result<(), BdevError> {
        validate_name(alias)?;
        let mut bdevs = self.bdevs.lock().unwrap();
        if bdevs.find(alias).is_some() {
            return Err(BdevError::Exists(alias.to_string()));
        }
        let (b, seq) = {
            let b = bdevs.find(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
            (b.clone(), bdevs.names[b.name()])
        };
        bdevs.names.insert(alias.to_string(), seq);
        b.aliases.lock().unwrap().push(alias.to_string());
        Ok(())
    }

    /// Opens a bdev. `on_event` runs on the calling core (by message) when the bdev is being
    /// removed; off a reactor it runs on the thread that removes the bdev.
    pub fn open(
        &self,
        name: &str,
        writable: bool,
        on_event: impl Fn(BdevEvent) + Send + Sync + 'static,
    ) -> Result<Descriptor, BdevError> {
        let bdev = self.get(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        let id = bdev.add_opener(writable, Arc::new(on_event) as EventFn)?;
        Ok(Descriptor::new(bdev, writable, id))
    }

    /// Hot-removes a bdev: it leaves the registry at once (its name is free again), new I/O to it
    /// fails with `Removed`, every channel aborts what it can, every opener gets
    /// [`BdevEvent::Remove`] on its core, and when all that ran the module's `on_unregister`
    /// follows. `done` runs after that (on the main core). Returns at once.
    pub fn unregister(&self, name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
        let bdev = {
            let mut bdevs = self.bdevs.lock().unwrap();
            let seq = match bdevs.names.get(name) {
                Some(&seq) if bdevs.order.get(&seq).is_some_and(|b| b.name() == name) => seq,
                _ => return Err(BdevError::NotFound(name.to_string())),
            };
            let bdev = bdevs.order.remove(&seq).expect("indexed");
            bdevs.names.remove(bdev.name());
            for a in bdev.aliases() {
                bdevs.names.remove(&a);
            }
            bdevs.uuids.remove(&bdev.info().uuid);
            bdev
        };
        bdev.core.removed.store(true, std::sync::atomic::Ordering::Release);
        tracing::debug!(name, "bdev unregistering");
        let openers: Vec<(Option<keel_reactor::CoreId>, EventFn)> = bdev
            .openers
            .lock()
            .unwrap()
            .iter()
            .map(|o| (o.core, o.on_event.clone()))
            .collect();
        for (core, cb) in openers {
            match core {
                Some(c) => {
                    if self.cores.run_on(c, move || cb(BdevEvent::Remove)).is_err() {
                        tracing::warn!(core = c.0, "cannot deliver remove event");
                    }
                }
                None => cb(BdevEvent::Remove),
            }
        }
        let origin = try_current()
            .map(|r| r.core())
            .unwrap_or_else(|| self.cores.main_core());
        let b2 = bdev.clone();
        self.cores.for_each_core(
            move || {
                if let Some(ch) = b2.io_device.existing_channel() {
                    ch.abort_all();
                }
            },
            origin,
            move || {
                bdev.core.backend.on_unregister();
                done();
            },
        );
        Ok(())
    }
}

impl BdevRegistry {
    /// Examinations in flight: `bdev_wait_for_examine` answers once this is 0. Any thread.
    pub fn examines_in_flight(&self) -> usize {
        self.examines_in_flight.load(Ordering::SeqCst)
    }

    /// An [`ExamineToken`] counting one examination until it drops: what
    /// [`crate::BdevModule::examine`] receives, for a module that starts another examination
    /// of its own (an `md_examine`-like RPC). Any thread.
    pub fn examine_token(&self) -> ExamineToken {
        ExamineToken::begin(&self.examines_in_flight)
    }

    /// Shows `bdev` to every loaded module's examine hook, each with its token (a snapshot of
    /// the modules, so a hook may load another module).
    fn examine(&self, bdev: &Arc<Bdev>) {
        for m in self.modules_snapshot() {
            m.examine(bdev, self.examine_token());
        }
    }
}

/// The module facility (see `module.rs` for the design).
impl BdevRegistry {
    /// This registry's module of type `T`, created with [`BdevModule::init`] on first use (that
    /// is how a module is registered; start-up code asks early for modules whose examine hook
    /// must see the first bdev or whose subsystem save_config must list). Any thread; `init`
    /// runs on it, outside the registry's locks.
    pub fn module<T: BdevModule>(self: &Arc<Self>) -> Arc<T> {
        if let Some(m) = self.loaded_module::<T>() {
            return m;
        }
        let fresh = T::init(self);
        let m = self.modules.lock().unwrap_or_else(|e| e.into_inner()).insert(fresh);
        tracing::debug!(module = m.name(), "bdev module loaded");
        m
    }

    /// This registry's module of type `T` if it was created; never creates it. Any thread.
    pub fn loaded_module<T: BdevModule>(&self) -> Option<Arc<T>> {
        self.modules.lock().unwrap_or_else(|e| e.into_inner()).get::<T>()
    }

    /// The subsystems of save_config: `"bdev"` and those of the loaded modules, each after what
    /// it depends on (ties in declaration order: `"bdev"`, then module creation order). What
    /// `framework_get_subsystems` lists. Any thread.
    pub fn subsystems(&self) -> Vec<SubsystemInfo> {
        module::subsystems_of(&self.modules_snapshot())
    }

    /// save_config's calls per subsystem, in load order: every bdev's own
    /// [`BdevBackend::config`] call in the latest subsystem of its module and its bases, every
    /// module's [`BdevModule::config`] calls in its subsystem, ordered as `module.rs` explains.
    /// Called on the main core (modules read their state there).
    pub fn config_plan(&self) -> ConfigPlan {
        let modules = self.modules_snapshot();
        let subsystems = module::subsystems_of(&modules);
        let inputs: Vec<ModuleInput> = modules
            .iter()
            .map(|m| ModuleInput {
                name: m.name(),
                subsystem: m.subsystem().name,
                entries: m.config(self),
            })
            .collect();
        let bdevs: Vec<BdevInput> = self
            .list()
            .iter()
            .map(|b| BdevInput {
                name: b.name().to_string(),
                module: b.info().module,
                call: b.backend().config(b.info()),
                bases: b.backend().bases(),
                settings: b.setting_calls(),
            })
            .collect();
        module::plan(&subsystems, inputs, bdevs)
    }

    /// Shutdown: calls every loaded module's [`BdevModule::fini`], one at a time — the latest
    /// subsystem first, within one the latest created first — each after the previous one
    /// finished. `done` runs when the last one did. Called on the main core; the next `fini`
    /// and `done` run there too (by message when a module finished on another core), possibly
    /// before this returns when nothing had to wait.
    pub fn fini_modules(&self, done: impl FnOnce() + Send + 'static) {
        let modules = self.modules_snapshot();
        let subsystems = module::subsystems_of(&modules);
        let rank = |m: &Arc<dyn BdevModule>| subsystems.iter().position(|s| s.name == m.subsystem().name);
        // Stable sort by subsystem: popping from the end takes the latest subsystem and, within
        // it, the latest created module first.
        let mut stack: Vec<Arc<dyn BdevModule>> = modules;
        stack.sort_by_key(|m| rank(m));
        fini_next(self.cores.clone(), stack, Box::new(done));
    }

    pub(crate) fn modules_snapshot(&self) -> Vec<Arc<dyn BdevModule>> {
        self.modules.lock().unwrap_or_else(|e| e.into_inner()).all()
    }
}

/// Runs the `fini` of the last module of `stack`, and on its completion (brought to the main
/// core) the next; `done` after the last.
fn fini_next(cores: Cores, mut stack: Vec<Arc<dyn BdevModule>>, done: Box<dyn FnOnce() + Send>) {
    let Some(m) = stack.pop() else {
        return done();
    };
    tracing::debug!(module = m.name(), "bdev module fini");
    let c2 = cores.clone();
    m.fini(ModuleDone::new(move || {
        let main = c2.main_core();
        let on_main = try_current().is_none_or(|r| r.core() == main);
        if on_main {
            return fini_next(c2, stack, done);
        }
        let c3 = c2.clone();
        if let Err(e) = c2.run_on(main, move || fini_next(c3, stack, done)) {
            tracing::warn!(error = %e, "cannot reach the main core to finish the bdev modules");
        }
    }));
}

fn validate_name(name: &str) -> Result<(), BdevError> {
    if name.is_empty() {
        return Err(BdevError::invalid("name", "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(BdevError::invalid("name", format!("longer than {MAX_NAME_LEN} bytes")));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(BdevError::invalid("name", "contains whitespace or control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod examine_tests {
    use std::sync::{Arc, Mutex, Weak};

    use keel_reactor::TestDriver;

    use crate::modules::null::{self, NullOpts};
    use crate::{Bdev, BdevModule, BdevRegistry, ExamineToken};

    /// A module that looks every bdev it examines up in its registry: that would deadlock if the
    /// registry still held its lock, and finds nothing if the bdev were not visible yet.
    struct Lookup {
        reg: Weak<BdevRegistry>,
        seen: Mutex<Vec<(String, bool)>>,
    }

    impl BdevModule for Lookup {
        fn init(reg: &Arc<BdevRegistry>) -> Arc<Lookup> {
            Arc::new(Lookup {
                reg: Arc::downgrade(reg),
                seen: Mutex::new(Vec::new()),
            })
        }

        fn name(&self) -> &'static str {
            "lookup"
        }

        fn examine(&self, bdev: &Arc<Bdev>, token: ExamineToken) {
            let reg = self.reg.upgrade().expect("the registry examines");
            let found = reg.get(bdev.name()).is_some_and(|b| Arc::ptr_eq(&b, bdev)) && !reg.list().is_empty();
            assert_eq!(reg.examines_in_flight(), 1, "this examination is counted");
            self.seen.lock().unwrap().push((bdev.name().to_string(), found));
            drop(token);
        }
    }

    #[test]
    fn examine_sees_every_later_registration_outside_the_lock() {
        let d = TestDriver::new(1);
        let reg = BdevRegistry::new(d.cores());
        null::create(&reg, &NullOpts::new("before", 8, 512)).unwrap();
        let m = reg.module::<Lookup>();
        null::create(&reg, &NullOpts::new("n1", 8, 512)).unwrap();
        assert!(null::create(&reg, &NullOpts::new("n1", 8, 512)).is_err());
        null::create(&reg, &NullOpts::new("n2", 8, 512)).unwrap();
        assert_eq!(
            *m.seen.lock().unwrap(),
            [("n1".to_string(), true), ("n2".to_string(), true)],
            "only successful registrations after the module was loaded"
        );
        assert_eq!(reg.examines_in_flight(), 0, "dropped tokens end their examinations");
    }
}

#[cfg(test)]
mod index_tests {
    use keel_reactor::TestDriver;

    use crate::modules::null::{self, NullOpts};
    use crate::{BdevError, BdevRegistry};

    /// Names, aliases and UUIDs share the lookups; an unregister frees all three and keeps the
    /// order of the rest; duplicates in any of them are refused and change nothing.
    #[test]
    fn names_aliases_and_uuids_are_indexed_and_freed_together() {
        let d = TestDriver::new(1);
        let reg = BdevRegistry::new(d.cores());
        for i in 0..100 {
            null::create(&reg, &NullOpts::new(&format!("n{i}"), 8, 512)).unwrap();
        }
        reg.add_alias("n7", "seven").unwrap();
        let n7 = reg.get("n7").unwrap();
        let uuid = n7.info().uuid.to_string();
        for key in ["n7", "seven", uuid.as_str()] {
            assert!(std::sync::Arc::ptr_eq(&reg.get(key).unwrap(), &n7), "{key}");
        }
        // Every namespace refuses a duplicate: a name that is an alias, an alias that is a name.
        assert!(matches!(
            null::create(&reg, &NullOpts::new("seven", 8, 512)),
            Err(BdevError::Exists(_))
        ));
        assert!(matches!(reg.add_alias("n8", "n9"), Err(BdevError::Exists(_))));
        assert!(matches!(reg.add_alias("n8", "seven"), Err(BdevError::Exists(_))));
        assert!(matches!(reg.add_alias("nope", "x"), Err(BdevError::NotFound(_))));
        let mut dup = NullOpts::new("other", 8, 512);
        dup.uuid = Some(uuid.clone());
        assert!(matches!(null::create(&reg, &dup), Err(BdevError::Exists(_))));
        assert!(reg.get("other").is_none());
        // An alias is not a name to unregister by.
        assert!(matches!(reg.unregister("seven", || {}), Err(BdevError::NotFound(_))));
        reg.unregister("n7", || {}).unwrap();
        d.run_until_idle(100);
        for key in ["n7", "seven", uuid.as_str()] {
            assert!(reg.get(key).is_none(), "{key} is free");
        }
        let names: Vec<String> = reg.list().iter().map(|b| b.name().to_string()).collect();
        let want: Vec<String> = (0..100).filter(|&i| i != 7).map(|i| format!("n{i}")).collect();
        assert_eq!(names, want, "registration order survives an unregister");
        // Freed names and UUIDs can be taken again; the newcomer goes last.
        let mut again = NullOpts::new("seven", 8, 512);
        again.uuid = Some(uuid.clone());
        null::create(&reg, &again).unwrap();
        assert_eq!(reg.get(&uuid).unwrap().name(), "seven");
        assert_eq!(reg.list().last().unwrap().name(), "seven");
    }
}
