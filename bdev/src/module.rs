//! The module facility: what a bdev module (dm, md, an NVMe driver, an export) plugs into the
//! bdev registry besides its bdevs.
//!
//! # What a module is
//!
//! A bdev's [`crate::BdevBackend`] is per bdev. Some modules also have state that is per
//! *registry*: dm's table of mapped devices, md's arrays and its examine-on-appear table, an
//! NVMe driver's controllers, an export's connections. A [`BdevModule`] is that state: one value
//! per [`BdevRegistry`], of the module's own type, built by [`BdevModule::init`] and reached
//! with [`BdevRegistry::module`]. Besides how to build it, it tells the registry six things;
//! all but the name have defaults, so a module implements only what it has:
//!
//! * [`BdevModule::name`] — the module name its bdevs carry in [`crate::BdevInfo::module`];
//! * [`BdevModule::subsystem`] — the save_config **subsystem** it belongs to, declared with
//!   what that subsystem depends on ([`Subsystem`]);
//! * [`BdevModule::examine`] — a look at every bdev that registers from then on;
//! * [`BdevModule::fini`] — stop what it runs, at shutdown;
//! * [`BdevModule::config`] — its module-level save_config calls (those that are not one
//!   bdev's own [`crate::BdevBackend::config`]: a dm table, an NVMe controller attach, an NBD
//!   export);
//! * [`BdevModule::holds`] — which of its objects need a bdev and must not lose it (a dm table
//!   naming it): deletes of that bdev are refused, naming them (`holders.rs`).
//!
//! # Init: created on first use
//!
//! [`BdevRegistry::module::<T>`] returns the registry's `Arc<T>`, building it with
//! [`BdevModule::init`] the first time anyone asks. There is no separate registration step:
//! keel-tgt, keel-perf and the fio engine each build one registry and the many registries of
//! the tests each get their own module states without any set-up code, exactly where a module's
//! RPC or create function first touches it. A module whose *hooks* must run before any module
//! call — an examiner that must see the first bdev, a subsystem that save_config must list
//! even while empty — is simply asked for at start-up (`reg.module::<T>()`), which is the
//! explicit registration. The state lives as long as the registry: the registry owns it, and a
//! module keeps only a `Weak` to the registry (an `Arc` would be a cycle). No static maps keyed
//! by registry are needed, and none remain in `bdev`.
//!
//! `init` runs outside the registry's lock, so it may ask for other modules. Two threads asking
//! for a missing module at once may both build one; the first stored wins and the other is
//! dropped unused — so `init` only builds state (it starts no pollers and registers nothing)
//! and work starts on the module's first real call. A module that needs its state without
//! creating it (a lookup that must not conjure an empty module) uses
//! [`BdevRegistry::loaded_module`].
//!
//! # Examine
//!
//! After every successful [`BdevRegistry::register`] the registry calls each loaded module's
//! [`BdevModule::examine`] with the new bdev and an [`ExamineToken`], on the registering thread,
//! outside its lock (so the module may call back into the registry). The token holds one count
//! of [`BdevRegistry::examines_in_flight`] from the moment of registration until it drops, so
//! `bdev_wait_for_examine` answers only after every examination finished: a module that reads
//! metadata later moves the token into that work (typically a message to the main core) and
//! drops it when done; a module with nothing to do drops it at once. md's examine-on-appear is
//! such a hook: it reads the new bdev's superblock on the main core, holding the token until
//! the assembly (or re-add) it starts is done.
//!
//! # Fini
//!
//! [`BdevRegistry::fini_modules`] (keel-tgt's shutdown, before it removes the bdevs) calls each
//! loaded module's [`BdevModule::fini`], one after the other: consumers before providers, i.e.
//! latest subsystem first (exports stop before the dm devices they export, dm before the md
//! arrays under it) and, within a subsystem, the latest created first. A module finishes with
//! [`ModuleDone::done`] — later, from any core; the next module's `fini` then runs on the main
//! core. Dropping the [`ModuleDone`] counts as done, so a module cannot stall shutdown by
//! forgetting it.
//!
//! # save_config: subsystems and the place of every bdev
//!
//! save_config is a list of subsystems in dependency order, each a list of RPC calls.
//! [`BdevRegistry::config_plan`] computes it from what the modules and bdevs declare, without
//! knowing any module:
//!
//! 1. **Subsystems.** `"bdev"` ([`Subsystem::BDEV`]) and every loaded module's subsystem,
//!    ordered so each comes after what it `depends_on`; ties (and cycles) keep declaration
//!    order: `"bdev"` first, then in module creation order.
//! 2. **Where a bdev goes.** A bdev belongs to the subsystem of its module (`"bdev"` for a
//!    module that is not a [`BdevModule`]: malloc, null, the stacking layers), or of the module
//!    call that creates it ([`ConfigEntry::provides`]) — and moves to the *latest* subsystem of
//!    any of its bases ([`crate::BdevBackend::bases`]), transitively. A passthru over a dm device
//!    lands in `"dm"`; a passthru over that passthru too; a malloc next to them stays in
//!    `"bdev"`.
//! 3. **Consumers after what they name.** A module call that [`ConfigEntry::needs`] a bdev
//!    placed in a later subsystem moves its own subsystem after that one (an NBD export of a dm
//!    device puts `"nbd"` after `"dm"` without nbd knowing dm); steps 1–2 are then redone with
//!    that edge. What is still out of order after that (a cycle of declarations) is logged.
//! 4. **Order inside a subsystem** is registration order, which has bases before what is built
//!    on them: a bdev's call takes its bdev's place, a module call the place of the first bdev
//!    it creates (one that creates none comes right after the module's previous call, or
//!    first). On top of that an entry waits for the entries of its subsystem that provide what
//!    it needs, and a module's calls keep the order the module gave them (a dm table naming a
//!    passthru waits for that passthru, which waits for the dm device under it). So a reload
//!    registers the bdevs in their original order wherever the dependencies allow. Entries
//!    marked [`ConfigEntry::last`] (dm_suspend: nothing may do I/O to a suspended device after
//!    it) close the subsystem, in the order given.
//!
//! The result ([`ConfigPlan`]) is plain data; the RPC framework writes it out (adding what is
//! its own, such as `bdev_wait_for_examine` at the end of `"bdev"`).
//!
//! # Threads
//!
//! Everything here is control path: `module`, `loaded_module` and `subsystems` from any thread;
//! `config_plan` and `fini_modules` on the main core; `examine` on whichever thread registers.
//! No method here is on the data path and none touches I/O buffers.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{Bdev, BdevRegistry, ConfigCall};

/// A save_config subsystem as a module declares it: its name and the subsystems whose
/// configuration must be loaded before it. `'static` data, usually a `const` next to the
/// module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subsystem {
    pub name: &'static str,
    pub depends_on: &'static [&'static str],
}

impl Subsystem {
    /// The subsystem of bdevs, always present and first: the base modules (malloc, null,
    /// uring, the stacking layers) and every module that does not declare another.
    pub const BDEV: Subsystem = Subsystem {
        name: "bdev",
        depends_on: &[],
    };
}

/// A subsystem as the registry knows it ([`BdevRegistry::subsystems`]): the union of what every
/// module declaring it said it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsystemInfo {
    pub name: &'static str,
    pub depends_on: Vec<&'static str>,
}

/// A module's per-registry state and hooks (see the module docs). One value per registry,
/// owned by the registry, created by [`BdevRegistry::module`]. `Send + Sync`: control-path
/// calls come from any thread.
pub trait BdevModule: Any + Send + Sync {
    /// Builds the module's state for `reg` (the first [`BdevRegistry::module`] call for this
    /// type). Keep a `Weak` of `reg`, not an `Arc`. Build state only: this may run twice under a
    /// race, and the loser is dropped unused. Called on the thread asking, outside the registry's
    /// lock.
    fn init(reg: &Arc<BdevRegistry>) -> Arc<Self>
    where
        Self: Sized;

    /// The module name its bdevs carry ([`crate::BdevInfo::module`]): save_config places them in
    /// [`BdevModule::subsystem`].
    fn name(&self) -> &'static str;

    /// The save_config subsystem of this module's calls and bdevs, with its dependencies.
    fn subsystem(&self) -> Subsystem {
        Subsystem::BDEV
    }

    /// A bdev registered (it is visible in the registry; the registry's lock is not held).
    /// Return quickly: record what is needed and do any reading later, keeping `token` until
    /// that work is finished (`bdev_wait_for_examine` waits for it). Called on the registering
    /// thread, for bdevs registered after the module was created, including the module's own
    /// (skip them if they are of no interest).
    fn examine(&self, bdev: &Arc<Bdev>, token: ExamineToken) {
        let _ = (bdev, token);
    }

    /// Shutdown: stop what the module runs (daemons, connections, timers) and call
    /// `done.done()` when that finished, from any core (dropping `done` counts as done). Its
    /// bdevs are removed after every module's fini. Called on the main core, once per
    /// [`BdevRegistry::fini_modules`].
    fn fini(&self, done: ModuleDone) {
        done.done();
    }

    /// What of this module needs `bdev` and must not lose it — a dm table (live or staged)
    /// that names it: one description per holder, naming it (`dm device 'x' (live table)`). A
    /// delete of `bdev`, or of a bdev whose removal would take it along, is refused with EBUSY
    /// naming these holders while any is listed ([`BdevRegistry::check_removable`]); the
    /// descriptions also name the holders in other "busy" errors ([`BdevRegistry::holders`]).
    /// Default: nothing (a module whose objects survive the loss, such as an md array that
    /// degrades, holds nothing here). Called on the main core.
    fn holds(&self, bdev: &Arc<Bdev>) -> Vec<String> {
        let _ = bdev;
        Vec::new()
    }

    /// The module-level calls of save_config (not the per-bdev [`crate::BdevBackend::config`]
    /// calls, which the registry collects itself), in the order they must run among themselves.
    /// Called on the main core.
    fn config(&self, reg: &BdevRegistry) -> Vec<ConfigEntry> {
        let _ = reg;
        Vec::new()
    }
}

/// One examination in flight ([`BdevModule::examine`]): holds one count of
/// [`BdevRegistry::examines_in_flight`] until dropped. `Send`: move it into the message that
/// does the reading.
#[must_use = "dropping the token ends the examination"]
pub struct ExamineToken {
    in_flight: Arc<AtomicUsize>,
}

impl ExamineToken {
    /// Counts one examination on `in_flight` until the token drops.
    pub(crate) fn begin(in_flight: &Arc<AtomicUsize>) -> ExamineToken {
        in_flight.fetch_add(1, Ordering::SeqCst);
        ExamineToken {
            in_flight: in_flight.clone(),
        }
    }
}

impl Drop for ExamineToken {
    fn drop(&mut self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

impl std::fmt::Debug for ExamineToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExamineToken")
    }
}

/// The completion of one module's [`BdevModule::fini`]. Call [`ModuleDone::done`] (or drop it)
/// once the module stopped; any thread.
#[must_use = "dropping it tells the registry the module has stopped"]
pub struct ModuleDone(Option<Box<dyn FnOnce() + Send>>);

impl ModuleDone {
    pub(crate) fn new(f: impl FnOnce() + Send + 'static) -> ModuleDone {
        ModuleDone(Some(Box::new(f)))
    }

    /// The module has stopped.
    pub fn done(mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl Drop for ModuleDone {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// One module-level save_config call ([`BdevModule::config`]) with what orders it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigEntry {
    pub call: ConfigCall,
    /// Bdev names this call creates: entries that need them (bdevs built on them, other calls
    /// naming them) come after it, in its subsystem or a later one.
    pub provides: Vec<String>,
    /// Bdev names that must exist before this call.
    pub needs: Vec<String>,
    /// Emit after every other entry of the subsystem (see the module docs, step 4).
    pub last: bool,
}

impl ConfigEntry {
    /// A call that creates nothing and needs nothing.
    pub fn new(call: ConfigCall) -> ConfigEntry {
        ConfigEntry {
            call,
            provides: Vec::new(),
            needs: Vec::new(),
            last: false,
        }
    }

    /// This call creates bdev `name`.
    pub fn provides(mut self, name: impl Into<String>) -> ConfigEntry {
        self.provides.push(name.into());
        self
    }

    /// This call needs the bdevs `names`.
    pub fn needs<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> ConfigEntry {
        self.needs.extend(names.into_iter().map(Into::into));
        self
    }

    /// This call closes its subsystem.
    pub fn last(mut self) -> ConfigEntry {
        self.last = true;
        self
    }
}

/// One subsystem's part of save_config, as [`BdevRegistry::config_plan`] orders it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubsystemConfig {
    pub name: &'static str,
    pub calls: Vec<ConfigCall>,
}

/// save_config's calls, every subsystem in load order (empty ones included).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigPlan {
    pub subsystems: Vec<SubsystemConfig>,
}

impl ConfigPlan {
    /// The calls of subsystem `name`; `None` for a subsystem the registry does not have.
    pub fn calls(&self, name: &str) -> Option<&[ConfigCall]> {
        self.subsystems
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.calls.as_slice())
    }

    /// Subsystem names in load order.
    pub fn names(&self) -> Vec<&'static str> {
        self.subsystems.iter().map(|s| s.name).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The registry's module table
// ---------------------------------------------------------------------------------------------

/// The modules of one registry, in creation order. Owned by the registry behind its mutex.
#[derive(Default)]
pub(crate) struct ModuleTable {
    modules: Vec<Arc<dyn BdevModule>>,
}

impl ModuleTable {
    /// The module of type `T`, if loaded.
    pub(crate) fn get<T: BdevModule>(&self) -> Option<Arc<T>> {
        self.modules.iter().find_map(|m| {
            let any: Arc<dyn Any + Send + Sync> = m.clone();
            any.downcast::<T>().ok()
        })
    }

    /// Stores `m` unless a module of its type is there already; returns the stored one.
    pub(crate) fn insert<T: BdevModule>(&mut self, m: Arc<T>) -> Arc<T> {
        if let Some(existing) = self.get::<T>() {
            return existing;
        }
        self.modules.push(m.clone());
        m
    }

    /// Every loaded module, in creation order.
    pub(crate) fn all(&self) -> Vec<Arc<dyn BdevModule>> {
        self.modules.clone()
    }
}

/// The subsystems of these modules plus `"bdev"`, deduplicated by name (dependencies merged) in
/// declaration order, then ordered by dependency.
pub(crate) fn subsystems_of(modules: &[Arc<dyn BdevModule>]) -> Vec<SubsystemInfo> {
    let mut declared: Vec<SubsystemInfo> = Vec::new();
    let decls = std::iter::once(Subsystem::BDEV).chain(modules.iter().map(|m| m.subsystem()));
    for s in decls {
        match declared.iter_mut().find(|d| d.name == s.name) {
            Some(d) => {
                for dep in s.depends_on {
                    if !d.depends_on.contains(dep) {
                        d.depends_on.push(dep);
                    }
                }
            }
            None => declared.push(SubsystemInfo {
                name: s.name,
                depends_on: s.depends_on.to_vec(),
            }),
        }
    }
    let order = order_subsystems(&declared, &[]);
    order.into_iter().map(|i| declared[i].clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// The planner (pure; see the module docs, "save_config")
// ---------------------------------------------------------------------------------------------

/// What the planner knows of one module.
pub(crate) struct ModuleInput {
    pub name: &'static str,
    pub subsystem: &'static str,
    pub entries: Vec<ConfigEntry>,
}

/// What the planner knows of one bdev.
pub(crate) struct BdevInput {
    pub name: String,
    pub module: &'static str,
    pub call: Option<ConfigCall>,
    pub bases: Vec<String>,
    /// Calls that configure the bdev once it exists (`bdev_set_qos_limit`), saved after
    /// whatever creates it.
    pub settings: Vec<ConfigCall>,
}

/// Kahn's algorithm over the nodes `0..key.len()` where `before[i]` lists the nodes that must
/// precede `i`, always taking the ready node with the lowest `(key, number)`; on a cycle the
/// lowest remaining node goes next (its unmet predecessors are ignored). Returns the nodes in
/// order.
fn order_nodes(key: &[usize], before: &[Vec<usize>]) -> Vec<usize> {
    let n = key.len();
    let mut waiting = vec![0usize; n];
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, deps) in before.iter().enumerate() {
        for &d in deps {
            if d != i && d < n {
                waiting[i] += 1;
                after[d].push(i);
            }
        }
    }
    let mut done = vec![false; n];
    let mut ready: BinaryHeap<Reverse<(usize, usize)>> = (0..n)
        .filter(|&i| waiting[i] == 0)
        .map(|i| Reverse((key[i], i)))
        .collect();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = match ready.pop() {
            Some(Reverse((_, i))) if done[i] => continue,
            Some(Reverse((_, i))) => i,
            None => match (0..n).filter(|&i| !done[i]).min_by_key(|&i| (key[i], i)) {
                Some(i) => i,
                None => break,
            },
        };
        done[next] = true;
        out.push(next);
        for &j in &after[next] {
            waiting[j] = waiting[j].saturating_sub(1);
            if waiting[j] == 0 && !done[j] {
                ready.push(Reverse((key[j], j)));
            }
        }
    }
    out
}

/// Subsystem indices in load order: each after its declared dependencies and the `extra`
/// (after, before) pairs; ties and cycles in declaration order.
fn order_subsystems(subs: &[SubsystemInfo], extra: &[(usize, usize)]) -> Vec<usize> {
    let idx = |name: &str| subs.iter().position(|s| s.name == name);
    let mut before: Vec<Vec<usize>> = subs
        .iter()
        .map(|s| s.depends_on.iter().filter_map(|d| idx(d)).collect())
        .collect();
    for &(a, b) in extra {
        before[a].push(b);
    }
    let key: Vec<usize> = (0..subs.len()).collect();
    order_nodes(&key, &before)
}

/// The rank (load position) of every bdev's subsystem: its own (module or providing call),
/// raised to the latest of its bases', transitively.
fn place_bdevs(bdevs: &[BdevInput], own_rank: &[usize]) -> Vec<usize> {
    let by_name: HashMap<&str, usize> = bdevs.iter().enumerate().map(|(i, b)| (b.name.as_str(), i)).collect();
    let mut placed: Vec<Option<usize>> = vec![None; bdevs.len()];
    let mut visiting = vec![false; bdevs.len()];
    fn visit(
        i: usize,
        bdevs: &[BdevInput],
        own: &[usize],
        by_name: &HashMap<&str, usize>,
        placed: &mut [Option<usize>],
        visiting: &mut [bool],
    ) -> usize {
        if let Some(r) = placed[i] {
            return r;
        }
        if visiting[i] {
            // A cycle of bases (a dm table reloaded onto a bdev above it): stop here.
            return own[i];
        }
        visiting[i] = true;
        let mut r = own[i];
        for base in &bdevs[i].bases {
            if let Some(&j) = by_name.get(base.as_str()) {
                r = r.max(visit(j, bdevs, own, by_name, placed, visiting));
            }
        }
        visiting[i] = false;
        placed[i] = Some(r);
        r
    }
    (0..bdevs.len())
        .map(|i| visit(i, bdevs, own_rank, &by_name, &mut placed, &mut visiting))
        .collect()
}

/// Orders the calls of one subsystem: by their items' keys (registration order), each after the
/// in-subsystem providers of what it needs and a module's entries in the module's order; then
/// the `last` entries.
fn order_within(items: Vec<Item>, last: Vec<ConfigCall>) -> Vec<ConfigCall> {
    let mut provider: HashMap<&str, usize> = HashMap::new();
    for (i, it) in items.iter().enumerate() {
        for p in &it.provides {
            provider.entry(p.as_str()).or_insert(i);
        }
    }
    let before: Vec<Vec<usize>> = items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let mut v: Vec<usize> = it
                .needs
                .iter()
                .filter_map(|n| provider.get(n.as_str()).copied())
                .filter(|&j| j != i)
                .collect();
            v.extend(it.after);
            v
        })
        .collect();
    let key: Vec<usize> = items.iter().map(|it| it.key).collect();
    let order = order_nodes(&key, &before);
    let mut slots: Vec<Option<ConfigCall>> = items.into_iter().map(|it| Some(it.call)).collect();
    order.into_iter().filter_map(|i| slots[i].take()).chain(last).collect()
}

/// One call to order inside a subsystem.
struct Item {
    call: ConfigCall,
    provides: Vec<String>,
    needs: Vec<String>,
    /// The previous entry of the same module (module entries keep their given order).
    after: Option<usize>,
    /// Where it goes when nothing else decides: the registration position of the bdev it
    /// creates (for a module call creating none, its predecessor's; 0 for a first one).
    key: usize,
}

/// The save_config plan (see the module docs, steps 1–4). `subsystems` in declared load order
/// ([`subsystems_of`]), `modules` in creation order, `bdevs` in registration order.
pub(crate) fn plan(subsystems: &[SubsystemInfo], modules: Vec<ModuleInput>, bdevs: Vec<BdevInput>) -> ConfigPlan {
    let sub_idx = |name: &str| subsystems.iter().position(|s| s.name == name);
    let bdev_sub = sub_idx(Subsystem::BDEV.name).unwrap_or(0);
    // Subsystem (declaration index) of each module and of each bdev a module call provides.
    let module_sub = |module: &str| {
        modules
            .iter()
            .find(|m| m.name == module)
            .and_then(|m| sub_idx(m.subsystem))
            .unwrap_or(bdev_sub)
    };
    let mut provided_in: HashMap<&str, usize> = HashMap::new();
    for m in &modules {
        let s = sub_idx(m.subsystem).unwrap_or(bdev_sub);
        for e in &m.entries {
            for p in &e.provides {
                provided_in.entry(p.as_str()).or_insert(s);
            }
        }
    }
    let own_sub: Vec<usize> = bdevs.iter().map(|b| module_sub(b.module)).collect();

    // Steps 1–3: order, place, add the consumers' edges, order and place again.
    let place = |order: &[usize]| -> (Vec<usize>, Vec<usize>) {
        let mut rank = vec![0; subsystems.len()];
        for (r, &s) in order.iter().enumerate() {
            rank[s] = r;
        }
        let own_rank: Vec<usize> = bdevs
            .iter()
            .zip(&own_sub)
            .map(|(b, &s)| {
                let via_call = provided_in.get(b.name.as_str()).map_or(0, |&p| rank[p]);
                rank[s].max(via_call)
            })
            .collect();
        (rank, place_bdevs(&bdevs, &own_rank))
    };
    let bdev_idx: HashMap<&str, usize> = bdevs.iter().enumerate().map(|(i, b)| (b.name.as_str(), i)).collect();
    // (consumer subsystem, subsystem it must follow) for module calls needing later bdevs.
    let late_needs = |rank: &[usize], placed: &[usize], order: &[usize]| -> Vec<(usize, usize)> {
        let mut edges = Vec::new();
        for m in &modules {
            let s = sub_idx(m.subsystem).unwrap_or(bdev_sub);
            for need in m.entries.iter().flat_map(|e| &e.needs) {
                if let Some(&b) = bdev_idx.get(need.as_str()) {
                    if placed[b] > rank[s] && !edges.contains(&(s, order[placed[b]])) {
                        edges.push((s, order[placed[b]]));
                    }
                }
            }
        }
        edges
    };
    let mut order = order_subsystems(subsystems, &[]);
    let (mut rank, mut placed) = place(&order);
    let edges = late_needs(&rank, &placed, &order);
    if !edges.is_empty() {
        order = order_subsystems(subsystems, &edges);
        (rank, placed) = place(&order);
        for (s, t) in late_needs(&rank, &placed, &order) {
            tracing::warn!(
                subsystem = subsystems[s].name,
                after = subsystems[t].name,
                "save_config: a call names a bdev of a later subsystem (circular subsystem dependencies)"
            );
        }
    }

    // Step 4: the calls of each subsystem.
    let mut items: Vec<Vec<Item>> = (0..subsystems.len()).map(|_| Vec::new()).collect();
    let mut last: Vec<Vec<ConfigCall>> = vec![Vec::new(); subsystems.len()];
    for m in modules {
        let s = sub_idx(m.subsystem).unwrap_or(bdev_sub);
        let mut prev: Option<usize> = None;
        for e in m.entries {
            if e.last {
                last[s].push(e.call);
                continue;
            }
            let key = e
                .provides
                .iter()
                .filter_map(|p| bdev_idx.get(p.as_str()).copied())
                .min()
                .or_else(|| prev.map(|p| items[s][p].key))
                .unwrap_or(0);
            items[s].push(Item {
                call: e.call,
                provides: e.provides,
                needs: e.needs,
                after: prev,
                key,
            });
            prev = Some(items[s].len() - 1);
        }
    }
    for (i, (b, r)) in bdevs.into_iter().zip(&placed).enumerate() {
        for call in b.settings {
            items[order[*r]].push(Item {
                call,
                provides: Vec::new(),
                needs: vec![b.name.clone()],
                after: None,
                key: i,
            });
        }
        if let Some(call) = b.call {
            items[order[*r]].push(Item {
                call,
                provides: vec![b.name],
                needs: b.bases,
                after: None,
                key: i,
            });
        }
    }
    let mut per_sub: Vec<Option<Vec<ConfigCall>>> = items
        .into_iter()
        .zip(last)
        .map(|(it, l)| Some(order_within(it, l)))
        .collect();
    ConfigPlan {
        subsystems: order
            .iter()
            .map(|&s| SubsystemConfig {
                name: subsystems[s].name,
                calls: per_sub[s].take().unwrap_or_default(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    //! The planner on plain data: fake modules in "bdev", a later "dm"-like subsystem and an
    //! export subsystem, bdevs stacked across them.

    use serde_json::json;

    use super::*;

    const DM: Subsystem = Subsystem {
        name: "dm",
        depends_on: &["bdev"],
    };
    const EXPORT: Subsystem = Subsystem {
        name: "export",
        depends_on: &["bdev"],
    };

    fn call(method: &'static str, name: &str) -> ConfigCall {
        ConfigCall {
            method,
            params: json!({ "name": name }),
        }
    }

    fn bdev(name: &str, module: &'static str, bases: &[&str]) -> BdevInput {
        BdevInput {
            name: name.into(),
            module,
            call: Some(call("create", name)),
            bases: bases.iter().map(|s| s.to_string()).collect(),
            settings: Vec::new(),
        }
    }

    /// A bdev created by a module-level call (its own config() is `None`).
    fn implicit(name: &str, module: &'static str, bases: &[&str]) -> BdevInput {
        BdevInput {
            call: None,
            ..bdev(name, module, bases)
        }
    }

    fn module(name: &'static str, sub: Subsystem, entries: Vec<ConfigEntry>) -> ModuleInput {
        ModuleInput {
            name,
            subsystem: sub.name,
            entries,
        }
    }

    fn subs(list: &[Subsystem]) -> Vec<SubsystemInfo> {
        list.iter()
            .map(|s| SubsystemInfo {
                name: s.name,
                depends_on: s.depends_on.to_vec(),
            })
            .collect()
    }

    /// "subsystem: method name, ..." per subsystem, for compact assertions.
    fn show(p: &ConfigPlan) -> Vec<String> {
        p.subsystems
            .iter()
            .map(|s| {
                let calls: Vec<String> = s
                    .calls
                    .iter()
                    .map(|c| format!("{} {}", c.method, c.params["name"].as_str().unwrap_or("")))
                    .collect();
                format!("{}: {}", s.name, calls.join(", "))
            })
            .collect()
    }

    /// A dm-like module: `dm_create` per device, providing its bdev and needing its table's.
    fn dm_create(name: &str, table: &[&str]) -> ConfigEntry {
        ConfigEntry::new(call("dm_create", name))
            .provides(name)
            .needs(table.iter().copied())
    }

    #[test]
    fn a_bdevs_settings_follow_its_creation_even_by_a_module_call() {
        let setting = |name: &str| call("bdev_set_qos_limit", name);
        let p = plan(
            &subs(&[Subsystem::BDEV, DM]),
            vec![module("dm", DM, vec![dm_create("a", &["M0"])])],
            vec![
                BdevInput {
                    settings: vec![setting("M0")],
                    ..bdev("M0", "malloc", &[])
                },
                BdevInput {
                    settings: vec![setting("a")],
                    ..implicit("a", "dm", &["M0"])
                },
                bdev("M1", "malloc", &[]),
            ],
        );
        assert_eq!(
            show(&p),
            [
                "bdev: create M0, bdev_set_qos_limit M0, create M1",
                "dm: dm_create a, bdev_set_qos_limit a"
            ]
        );
    }

    #[test]
    fn independent_bdevs_keep_registration_order() {
        let p = plan(
            &subs(&[Subsystem::BDEV, DM]),
            vec![],
            vec![
                bdev("M0", "malloc", &[]),
                bdev("N0", "null", &[]),
                bdev("M1", "malloc", &[]),
            ],
        );
        assert_eq!(show(&p), ["bdev: create M0, create N0, create M1", "dm: "]);
    }

    #[test]
    fn a_layer_over_a_later_subsystem_bdev_moves_after_it() {
        let p = plan(
            &subs(&[Subsystem::BDEV, DM]),
            vec![module("dm", DM, vec![dm_create("a", &["M0"])])],
            vec![
                bdev("M0", "malloc", &[]),
                implicit("a", "dm", &["M0"]),
                bdev("P0", "passthru", &["a"]),
                bdev("M1", "malloc", &[]),
            ],
        );
        assert_eq!(
            show(&p),
            ["bdev: create M0, create M1", "dm: dm_create a, create P0"],
            "P0 follows its base into dm; M1, registered later but on nothing, stays"
        );
    }

    #[test]
    fn a_chain_of_three_layers_follows_its_root() {
        let p = plan(
            &subs(&[Subsystem::BDEV, DM]),
            vec![module("dm", DM, vec![dm_create("a", &["M0"])])],
            vec![
                bdev("M0", "malloc", &[]),
                implicit("a", "dm", &["M0"]),
                bdev("P1", "passthru", &["a"]),
                bdev("P2", "passthru", &["P1"]),
                bdev("P3", "delay", &["P2"]),
            ],
        );
        assert_eq!(
            show(&p),
            ["bdev: create M0", "dm: dm_create a, create P1, create P2, create P3"]
        );
    }

    #[test]
    fn a_module_call_waits_for_a_bdev_of_its_subsystem() {
        // b's table names P0, a passthru over the dm device a: dm_create b must follow P0 (and a
        // later independent device keeps its place in the module's order, after b).
        let p = plan(
            &subs(&[Subsystem::BDEV, DM]),
            vec![module(
                "dm",
                DM,
                vec![
                    dm_create("a", &["M0"]),
                    dm_create("b", &["P0"]),
                    dm_create("c", &["M0"]),
                    ConfigEntry::new(call("dm_suspend", "a")).last(),
                ],
            )],
            vec![
                bdev("M0", "malloc", &[]),
                implicit("a", "dm", &["M0"]),
                bdev("P0", "passthru", &["a"]),
                implicit("b", "dm", &["P0"]),
                implicit("c", "dm", &["M0"]),
                bdev("P1", "passthru", &["c"]),
            ],
        );
        assert_eq!(
            show(&p),
            [
                "bdev: create M0",
                "dm: dm_create a, create P0, dm_create b, dm_create c, create P1, dm_suspend a"
            ]
        );
    }

    #[test]
    fn module_calls_take_the_place_of_the_bdevs_they_create() {
        // An NVMe-like attach in "bdev" creates n1; it goes where n1 registered, and a layer on
        // n1 after it.
        let attach = || ConfigEntry::new(call("attach", "ctrl")).provides("n1");
        let p = plan(
            &subs(&[Subsystem::BDEV]),
            vec![module("nvme", Subsystem::BDEV, vec![attach()])],
            vec![
                bdev("M0", "malloc", &[]),
                implicit("n1", "nvme", &[]),
                bdev("P0", "passthru", &["n1"]),
                bdev("P1", "passthru", &["M0"]),
            ],
        );
        assert_eq!(show(&p), ["bdev: create M0, attach ctrl, create P0, create P1"]);
        let p = plan(
            &subs(&[Subsystem::BDEV]),
            vec![module("nvme", Subsystem::BDEV, vec![attach()])],
            vec![
                implicit("n1", "nvme", &[]),
                bdev("M0", "malloc", &[]),
                bdev("P1", "passthru", &["M0"]),
                bdev("P0", "passthru", &["n1"]),
            ],
        );
        assert_eq!(show(&p), ["bdev: attach ctrl, create M0, create P1, create P0"]);
    }

    #[test]
    fn a_dm_like_module_saves_in_registration_order_around_its_dependencies() {
        // The stack of the dm save_config end-to-end test: a over M0, b over M1 and a, c over M2,
        // then a's staged table naming c (created after a), a passthru on b, s suspended, and a
        // device without a bdev. dm gives its calls in its own dependency order; the layer on b
        // keeps its registration place between c and s, so a reload registers every bdev in the
        // original order.
        let load_a = ConfigEntry::new(call("dm_load", "a")).needs(["c"]);
        let p = plan(
            &subs(&[Subsystem::BDEV, DM]),
            vec![module(
                "dm",
                DM,
                vec![
                    dm_create("a", &["M0"]),
                    dm_create("b", &["M1", "a"]),
                    dm_create("c", &["M2"]),
                    load_a,
                    dm_create("s", &[]),
                    ConfigEntry::new(call("dm_create", "n")),
                    ConfigEntry::new(call("dm_suspend", "s")).last(),
                ],
            )],
            vec![
                bdev("M0", "malloc", &[]),
                bdev("M1", "malloc", &[]),
                bdev("M2", "malloc", &[]),
                implicit("a", "dm", &["M0"]),
                implicit("b", "dm", &["M1", "a"]),
                implicit("c", "dm", &["M2"]),
                bdev("P0", "passthru", &["b"]),
                implicit("s", "dm", &[]),
            ],
        );
        assert_eq!(
            show(&p),
            [
                "bdev: create M0, create M1, create M2",
                "dm: dm_create a, dm_create b, dm_create c, dm_load a, create P0, dm_create s, dm_create n, \
                 dm_suspend s"
            ]
        );
    }

    #[test]
    fn an_export_of_a_later_bdev_moves_its_subsystem_after_it() {
        // "export" is declared before "dm" and depends only on "bdev"; exporting a dm device puts
        // it after "dm" all the same.
        let export = ConfigEntry::new(call("export_start", "a")).needs(["a"]);
        let export_m0 = ConfigEntry::new(call("export_start", "M0")).needs(["M0"]);
        let p = plan(
            &subs(&[Subsystem::BDEV, EXPORT, DM]),
            vec![
                module("export", EXPORT, vec![export_m0.clone()]),
                module("dm", DM, vec![dm_create("a", &["M0"])]),
            ],
            vec![bdev("M0", "malloc", &[]), implicit("a", "dm", &["M0"])],
        );
        assert_eq!(
            show(&p),
            ["bdev: create M0", "export: export_start M0", "dm: dm_create a"]
        );
        let p = plan(
            &subs(&[Subsystem::BDEV, EXPORT, DM]),
            vec![
                module("export", EXPORT, vec![export_m0, export]),
                module("dm", DM, vec![dm_create("a", &["M0"])]),
            ],
            vec![bdev("M0", "malloc", &[]), implicit("a", "dm", &["M0"])],
        );
        assert_eq!(
            show(&p),
            [
                "bdev: create M0",
                "dm: dm_create a",
                "export: export_start M0, export_start a"
            ]
        );
    }

    #[test]
    fn subsystems_follow_their_dependencies_and_cycles_do_not_hang() {
        let late = Subsystem {
            name: "late",
            depends_on: &["dm"],
        };
        // Declared before what it depends on: still after it.
        let p = plan(&subs(&[Subsystem::BDEV, late, DM]), vec![], vec![]);
        assert_eq!(p.names(), ["bdev", "dm", "late"]);
        let x = Subsystem {
            name: "x",
            depends_on: &["y"],
        };
        let y = Subsystem {
            name: "y",
            depends_on: &["x", "nowhere"],
        };
        let p = plan(&subs(&[Subsystem::BDEV, x, y]), vec![], vec![]);
        assert_eq!(p.names(), ["bdev", "x", "y"], "a cycle falls back to declaration order");
    }

    #[test]
    fn cycles_of_bases_and_needs_still_emit_every_call_once() {
        // Two bdevs naming each other (impossible to load, but the plan must not hang or lose
        // calls) and a module call needing a bdev it provides itself.
        let p = plan(
            &subs(&[Subsystem::BDEV, DM]),
            vec![module("dm", DM, vec![dm_create("a", &["a", "X"])])],
            vec![
                bdev("X", "passthru", &["Y"]),
                bdev("Y", "passthru", &["X"]),
                implicit("a", "dm", &["X"]),
            ],
        );
        assert_eq!(show(&p), ["bdev: create X, create Y", "dm: dm_create a"]);
    }

    #[test]
    fn order_nodes_is_a_stable_topological_order() {
        // 0 needs 2, 1 free, 2 free, 3 needs 0 and 1.
        let before = vec![vec![2], vec![], vec![], vec![0, 1]];
        assert_eq!(order_nodes(&[0, 1, 2, 3], &before), [1, 2, 0, 3]);
        // Keys decide among the ready ones: 3 (key 0) waits for 0 and 1 all the same.
        assert_eq!(order_nodes(&[5, 4, 3, 0], &before), [2, 1, 0, 3]);
        assert_eq!(order_nodes(&[], &[]), Vec::<usize>::new());
    }

    #[test]
    fn examine_tokens_count_until_dropped_and_never_underflow() {
        let n = Arc::new(AtomicUsize::new(0));
        let a = ExamineToken::begin(&n);
        let b = ExamineToken::begin(&n);
        assert_eq!(n.load(Ordering::SeqCst), 2);
        drop(a);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        n.store(0, Ordering::SeqCst); // a count lowered behind the tokens' backs
        drop(b);
        assert_eq!(n.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn module_done_runs_once_whether_called_or_dropped() {
        let n = Arc::new(AtomicUsize::new(0));
        let (n1, n2) = (n.clone(), n.clone());
        ModuleDone::new(move || {
            n1.fetch_add(1, Ordering::SeqCst);
        })
        .done();
        assert_eq!(n.load(Ordering::SeqCst), 1);
        drop(ModuleDone::new(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }
}
