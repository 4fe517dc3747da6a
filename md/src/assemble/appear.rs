//! Examine on appear (`mdadm --incremental`, done by udev on Linux).
//!
//! md's module hook [`keel_bdev::BdevModule::examine`] sees every bdev that registers; once
//! [`MdRegistry::enable_auto_assembly`] turned examine-on-appear on, it hands each one (by
//! message, with the registry's [`ExamineToken`]) to the main reactor, which reads the
//! superblock of those that are not claimed and not md arrays. The token counts the
//! examination in the registry's examine-in-flight count (`bdev_wait_for_examine`) until
//! everything it started is done. A member of a running array that misses a role (of a level
//! with spares) is re-added to it ([`MdRegistry::add`]). Otherwise the member is remembered in
//! the module's table ([`AutoState`]: array uuid → members and their superblocks); as soon as
//! every role that the freshest recorded superblock lists as active has a fresh holder in the
//! table, the array is assembled with those members (name from set_name). A failed automatic
//! assembly is logged and keeps the table, so a later bdev can complete it. Nothing is claimed
//! until assembly.

use std::sync::{Arc, MutexGuard};

use keel_bdev::{Bdev, BdevRegistry, ExamineToken};

use super::classify::{is_fresh, table_role};
use super::AssembleOpts;
use crate::array::{MdRegistry, MODULE};
use crate::shared::SlotState;
use crate::superblock::{Role, Superblock};

/// A member seen by the examiner, waiting for the rest of its array.
#[derive(Debug, Clone)]
struct Examined {
    bdev: String,
    sb: Superblock,
}

/// What examine-on-appear keeps per md registry (a field of [`MdRegistry`], md's module state):
/// whether it is on, and what it saw.
#[derive(Default)]
pub(crate) struct AutoState {
    enabled: bool,
    /// Array uuid → members seen (one entry per bdev name).
    table: Vec<([u8; 16], Vec<Examined>)>,
    /// Arrays being assembled automatically right now.
    assembling: Vec<[u8; 16]>,
}

impl MdRegistry {
    fn auto_state(&self) -> MutexGuard<'_, AutoState> {
        self.auto.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Bdev names examine-on-appear recorded for array `uuid`.
pub(super) fn examined_members(md: &MdRegistry, uuid: &[u8; 16]) -> Vec<String> {
    md.auto_state()
        .table
        .iter()
        .find(|(u, _)| u == uuid)
        .map(|(_, v)| v.iter().map(|e| e.bdev.clone()).collect())
        .unwrap_or_default()
}

/// Drops what examine-on-appear recorded for array `uuid` (it is running now).
pub(super) fn forget_examined(md: &MdRegistry, uuid: &[u8; 16]) {
    md.auto_state().table.retain(|(u, _)| u != uuid);
}

/// Whether the recorded members complete their array: every role that the freshest recorded
/// superblock lists as active has a fresh holder among them.
fn complete(entries: &[Examined]) -> bool {
    let Some(fresh) = entries
        .iter()
        .filter(|e| matches!(e.sb.own_role(), Role::Active(_)))
        .max_by_key(|e| e.sb.events)
    else {
        return false;
    };
    let t = &fresh.sb;
    let needed: Vec<u16> = (0..t.raid_disks.min(u16::MAX as u32) as u16)
        .filter(|&r| t.dev_roles.iter().any(|&v| Role::from_raw(v) == Role::Active(r)))
        .collect();
    !needed.is_empty()
        && needed.iter().all(|&r| {
            entries.iter().any(|e| {
                e.sb.ctime == t.ctime
                    && is_fresh(e.sb.events, t.events)
                    && table_role(&t.dev_roles, e.sb.dev_number) == Role::Active(r)
            })
        })
}

impl MdRegistry {
    /// Examine-on-appear (module docs): from now on every bdev that registers in `reg` is
    /// examined for an md superblock, and arrays assemble (or members re-add) by themselves.
    /// Loads md's module into `reg` if it was not. Idempotent; bdevs registered before the first
    /// call are not examined (assemble them with `md_assemble`). Any thread; the examination
    /// itself runs on the main reactor.
    pub fn enable_auto_assembly(reg: &Arc<BdevRegistry>) {
        MdRegistry::of(reg).auto_state().enabled = true;
    }

    /// md's examine hook: `bdev` registered. With examine-on-appear on, hands it to the main
    /// reactor with `token`; otherwise drops `token` at once. Called on the registering thread.
    pub(crate) fn examine_appeared(&self, bdev: &Arc<Bdev>, token: ExamineToken) {
        if !self.auto_state().enabled {
            return;
        }
        let (Some(reg), Some(md)) = (self.bdevs.upgrade(), self.me.upgrade()) else {
            return;
        };
        let name = bdev.name().to_string();
        let cores = reg.cores().clone();
        // Always by message, even on the main core: the registering module is still on its
        // stack and may not expect a reader of its new bdev yet.
        if let Err(e) = cores.run_on(cores.main_core(), move || md.examine_new(reg, token, name)) {
            tracing::warn!(error = %e, "md: cannot examine a new bdev");
        }
    }

    /// Main reactor: examines the new bdev `name` of `reg`.
    fn examine_new(self: Arc<Self>, reg: Arc<BdevRegistry>, token: ExamineToken, name: String) {
        match reg.get(&name) {
            Some(b) if b.claimed_by().is_none() && b.info().module != MODULE && !b.is_removed() => {}
            _ => return,
        }
        let me = self.clone();
        let (n2, r2) = (name.clone(), reg.clone());
        crate::examine::examine(&r2, &n2, move |r| match r {
            Ok(ex) => me.examined(reg, token, name, ex.sb),
            Err(e) => tracing::debug!(bdev = %name, error = %e, "md examine: no md member"),
        });
    }

    /// Main reactor: bdev `name` of `reg` holds `sb`.
    fn examined(self: Arc<Self>, reg: Arc<BdevRegistry>, token: ExamineToken, name: String, sb: Superblock) {
        let uuid = sb.set_uuid;
        let running = self
            .arrays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|a| a.set_uuid == uuid)
            .cloned();
        if let Some(a) = running {
            let missing = a.personality.caps().spares
                && a.shared.slots.iter().any(|s| s.state() == SlotState::Missing)
                && a.ctl().stop.is_none();
            if !missing {
                tracing::info!(bdev = %name, array = %a.name, "md examine: member of a running array that misses nothing; left alone");
                return;
            }
            tracing::info!(bdev = %name, array = %a.name, "md examine: re-adding a member of a degraded array");
            let an = a.name.clone();
            self.add(&a.name, &name.clone(), move |r| {
                match r {
                    Ok(()) => tracing::info!(bdev = %name, array = %an, "md examine: member re-added"),
                    Err(e) => tracing::warn!(bdev = %name, array = %an, error = %e, "md examine: re-add failed"),
                }
                drop(token);
            });
            return;
        }
        let members = {
            let mut s = self.auto_state();
            let pos = match s.table.iter().position(|(u, _)| *u == uuid) {
                Some(p) => p,
                None => {
                    s.table.push((uuid, Vec::new()));
                    s.table.len() - 1
                }
            };
            let entries = &mut s.table[pos].1;
            entries.retain(|e| e.bdev != name);
            entries.push(Examined { bdev: name.clone(), sb });
            // Forget members whose bdev went away or was taken meanwhile.
            entries.retain(|e| reg.get(&e.bdev).is_some_and(|b| b.claimed_by().is_none()));
            if s.assembling.contains(&uuid) || !complete(&s.table[pos].1) {
                None
            } else {
                s.assembling.push(uuid);
                Some(s.table[pos].1.iter().map(|e| e.bdev.clone()).collect::<Vec<_>>())
            }
        };
        let Some(members) = members else {
            tracing::debug!(bdev = %name, uuid = %Superblock::uuid_text(&uuid), "md examine: member recorded; array incomplete");
            return;
        };
        tracing::info!(uuid = %Superblock::uuid_text(&uuid), ?members, "md examine: every member present; assembling");
        let opts = AssembleOpts {
            name: None,
            uuid: Some(Superblock::uuid_text(&uuid)),
            members: Some(members),
            force: false,
        };
        let me = self.clone();
        self.assemble(opts, move |r| {
            me.auto_state().assembling.retain(|u| *u != uuid);
            match r {
                Ok(n) => tracing::info!(array = %n, "md examine: array assembled automatically"),
                Err(e) => tracing::warn!(uuid = %Superblock::uuid_text(&uuid), error = %e, "md examine: automatic assembly failed"),
            }
            drop(token);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::classify::fixtures::sb;
    use crate::assemble::classify::name_from_set_name;
    use crate::superblock::ROLE_SPARE;

    #[test]
    fn names_and_completeness() {
        assert_eq!(name_from_set_name(b"host:arr"), "arr");
        assert_eq!(name_from_set_name(b"fxr1"), "fxr1");
        let e = |bdev: &str, s: Superblock| Examined {
            bdev: bdev.into(),
            sb: s,
        };
        let a = e("a", sb(1, 2, 0, 22, &[0, ROLE_SPARE]));
        let b = e("b", sb(1, 2, 1, 17, &[0, 1]));
        assert!(!complete(std::slice::from_ref(&b)), "b alone believes in two roles");
        assert!(complete(&[b.clone(), a.clone()]), "a's table only needs role 0");
        assert!(complete(&[a]));
        let c0 = e("c0", sb(0, 2, 0, 0, &[0, 1]));
        let c1 = e("c1", sb(0, 2, 1, 0, &[0, 1]));
        assert!(!complete(std::slice::from_ref(&c0)));
        assert!(complete(&[c0, c1]));
    }
}
