//! Who holds a bdev, and whether a delete may take it away.
//!
//! # Why deletes ask first
//!
//! Hot removal ([`BdevRegistry::unregister`]) always succeeds: a disk that vanishes is gone,
//! and every layer copes — a stacking layer (passthru, delay, error) unregisters itself with its
//! base, an md array degrades, a dm table keeps the device and fails I/O to the lost range until
//! a new table replaces it (as Linux). A *delete* is different: the user asks for it, and some
//! holders cannot lose their bdev without leaving the configuration broken — a dm table (live
//! or staged) that names a deleted bdev could never be loaded again from save_config, and a
//! staged one could never be resumed. So a delete first asks [`BdevRegistry::check_removable`]:
//!
//! 1. **What goes.** The bdev itself and, transitively, every bdev built on one that goes whose
//!    backend says it goes with its base ([`crate::BdevBackend::removed_with_base`]: the
//!    stacking layers). Deleting a malloc under a passthru under a dm table takes the passthru
//!    too, so the dm table's claim on the passthru counts.
//! 2. **Who must not lose it.** Every loaded module's [`crate::BdevModule::holds`] for each bdev
//!    that goes (dm: the devices whose live or staged tables name it), and every user serving
//!    one of them outside the process ([`crate::Descriptor::hold`]: an NBD export).
//!
//! Any such holder refuses the delete with EBUSY ([`BdevError::InUse`]) naming them, and nothing
//! changes: the bdev stays registered and every claim holds. Linux refuses the same way
//! (removing a disk dm holds is EBUSY until the table lets go).
//!
//! [`BdevRegistry::holders`] describes everyone who holds a bdev — those modules' holders, the
//! bdevs built on it and the claiming module — for the messages of other "busy" refusals
//! (`dm_remove` of an open device, a claim that is taken).
//!
//! Control path only, on the main core (modules read their state there).

use std::sync::Arc;

use crate::{Bdev, BdevError, BdevRegistry};

impl BdevRegistry {
    /// The bdevs that go when `bdev` is removed: itself first, then every bdev built on one of
    /// them that unregisters with its base ([`crate::BdevBackend::removed_with_base`]),
    /// transitively, in discovery order. Called on the main core.
    pub fn removal_set(&self, bdev: &Arc<Bdev>) -> Vec<Arc<Bdev>> {
        let all = self.list();
        let mut set = vec![bdev.clone()];
        let mut i = 0;
        while i < set.len() {
            let name = set[i].name().to_string();
            for b in &all {
                if set.iter().any(|s| Arc::ptr_eq(s, b)) || !b.backend().removed_with_base() {
                    continue;
                }
                if b.backend().bases().contains(&name) {
                    set.push(b.clone());
                }
            }
            i += 1;
        }
        set
    }

    /// Refuses (EBUSY, [`BdevError::InUse`] naming the holders) to delete `name` while a module
    /// holds it or a bdev its removal would take along (see the module docs); `Ok` when nothing
    /// does, or when there is no such bdev (the delete then reports that). Called on the main
    /// core by every module's delete before it unregisters.
    pub fn check_removable(&self, name: &str) -> Result<(), BdevError> {
        let Some(bdev) = self.get(name) else {
            return Ok(());
        };
        let modules = self.modules_snapshot();
        let mut holders: Vec<String> = Vec::new();
        for b in self.removal_set(&bdev) {
            // Module holders (dm tables), then users serving it outside (`Descriptor::hold`).
            let named: Vec<String> = modules.iter().flat_map(|m| m.holds(&b)).chain(b.holders()).collect();
            for h in named {
                let h = if Arc::ptr_eq(&b, &bdev) {
                    h
                } else {
                    format!("{h} through '{}', which goes with it", b.name())
                };
                if !holders.contains(&h) {
                    holders.push(h);
                }
            }
        }
        if holders.is_empty() {
            return Ok(());
        }
        Err(BdevError::InUse {
            name: bdev.name().to_string(),
            holders: holders.join(", "),
        })
    }

    /// Everyone who holds `bdev`, described for an error message: the modules' holders
    /// ([`crate::BdevModule::holds`]), the bdevs built on it (`passthru bdev 'P0'`; a module
    /// that described its holders itself is not repeated through its bdevs), and descriptors
    /// nobody above accounts for (I/O jobs, exports). Empty when nothing but a claim is known
    /// (the claim's module is in the claim error itself) or nobody holds it. Called on the main
    /// core.
    pub fn holders(&self, bdev: &Arc<Bdev>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut by_module: Vec<&'static str> = Vec::new();
        for m in self.modules_snapshot() {
            let h = m.holds(bdev);
            if !h.is_empty() {
                by_module.push(m.name());
                out.extend(h);
            }
        }
        // Users serving the bdev to the outside name themselves (`Descriptor::hold`).
        let held = bdev.holders();
        let serving = held.len();
        out.extend(held);
        let mut layers = 0;
        for b in self.list() {
            if Arc::ptr_eq(&b, bdev) || by_module.contains(&b.info().module) {
                continue;
            }
            if b.backend().bases().iter().any(|base| base == bdev.name()) {
                out.push(format!("{} bdev '{}'", b.info().module, b.name()));
                layers += 1;
            }
        }
        let opens = bdev.open_count();
        // One descriptor per layer and one per module that holds it (dm shares one claim among
        // its tables); a claim is one of those, or the one of a module that named nothing.
        let accounted = (layers + by_module.len()).max(usize::from(bdev.claimed_by().is_some())) + serving;
        if opens > accounted {
            let n = opens - accounted;
            out.push(format!(
                "{n} other open descriptor{} (I/O jobs, exports)",
                if n == 1 { "" } else { "s" }
            ));
        }
        out
    }
}
