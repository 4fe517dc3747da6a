//! Examine on appear (`mdadm --incremental`, done by udev on Linux).
//!
//! [`MdRegistry::enable_auto_assembly`] registers an examiner with the bdev registry
//! ([`BdevRegistry::add_examiner`]). For every bdev that registers later (not claimed, not an
//! md array) it reads the superblock on the main reactor, holding the registry's
//! examine-in-flight count ([`BdevRegistry::examine_begin`]) until everything it started is
//! done. A member of a running array that misses a role (of a level with spares) is re-added to it
//! ([`MdRegistry::add`]). Otherwise the member is remembered in a per-registry table (array
//! uuid → members and their superblocks); as soon as every role that the freshest recorded
//! superblock lists as active has a fresh holder in the table, the array is assembled with
//! those members (name from set_name). A failed automatic assembly is logged and keeps the
//! table, so a later bdev can complete it. Nothing is claimed until assembly.

use std::sync::{Arc, Mutex, Weak};

use keel_bdev::BdevRegistry;

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

/// Per md registry: whether the examiner is installed, and what it saw.
#[derive(Default)]
struct AutoState {
    enabled: bool,
    /// Array uuid → members seen (one entry per bdev name).
    table: Vec<([u8; 16], Vec<Examined>)>,
    /// Arrays being assembled automatically right now.
    assembling: Vec<[u8; 16]>,
}

type AutoStates = Mutex<Vec<(Weak<MdRegistry>, Arc<Mutex<AutoState>>)>>;
static AUTO: AutoStates = Mutex::new(Vec::new());

fn auto_state(md: &Arc<MdRegistry>) -> Arc<Mutex<AutoState>> {
    let mut all = AUTO.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|(w, _)| w.strong_count() > 0);
    if let Some((_, s)) = all
        .iter()
        .find(|(w, _)| w.upgrade().is_some_and(|m| Arc::ptr_eq(&m, md)))
    {
        return s.clone();
    }
    let s = Arc::new(Mutex::new(AutoState::default()));
    all.push((Arc::downgrade(md), s.clone()));
    s
}

/// The auto state of `md` if it has one (never creates it).
fn existing_auto_state(md: &MdRegistry) -> Option<Arc<Mutex<AutoState>>> {
    let all = AUTO.lock().unwrap_or_else(|e| e.into_inner());
    all.iter()
        .find(|(w, _)| std::ptr::eq(w.as_ptr(), md))
        .map(|(_, s)| s.clone())
}

fn lock(s: &Mutex<AutoState>) -> std::sync::MutexGuard<'_, AutoState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bdev names examine-on-appear recorded for array `uuid`.
pub(super) fn examined_members(md: &MdRegistry, uuid: &[u8; 16]) -> Vec<String> {
    let Some(st) = existing_auto_state(md) else {
        return Vec::new();
    };
    let st = lock(&st);
    st.table
        .iter()
        .find(|(u, _)| u == uuid)
        .map(|(_, v)| v.iter().map(|e| e.bdev.clone()).collect())
        .unwrap_or_default()
}

/// Drops what examine-on-appear recorded for array `uuid` (it is running now).
pub(super) fn forget_examined(md: &MdRegistry, uuid: &[u8; 16]) {
    if let Some(st) = existing_auto_state(md) {
        lock(&st).table.retain(|(u, _)| u != uuid);
    }
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

/// Holds one examine-in-flight count of the bdev registry until dropped.
struct ExamineToken(Arc<BdevRegistry>);

impl Drop for ExamineToken {
    fn drop(&mut self) {
        self.0.examine_end();
    }
}

impl MdRegistry {
    /// Examine-on-appear (module docs): from now on every bdev that registers in `reg` is
    /// examined for an md superblock, and arrays assemble (or members re-add) by themselves.
    /// Idempotent; bdevs registered before the first call are not examined (assemble them with
    /// `md_assemble`). Any thread; the examination itself runs on the main reactor.
    pub fn enable_auto_assembly(reg: &Arc<BdevRegistry>) {
        let md = MdRegistry::of(reg);
        let st = auto_state(&md);
        {
            let mut s = lock(&st);
            if s.enabled {
                return;
            }
            s.enabled = true;
        }
        let (wreg, wmd) = (Arc::downgrade(reg), Arc::downgrade(&md));
        reg.add_examiner(Arc::new(move |name: &str| {
            let (Some(reg), Some(md)) = (wreg.upgrade(), wmd.upgrade()) else {
                return;
            };
            reg.examine_begin();
            let token = ExamineToken(reg.clone());
            let name = name.to_string();
            let main = reg.cores().main_core();
            // Always by message, even on the main core: the registering module is still on its
            // stack and may not expect a reader of its new bdev yet.
            if let Err(e) = reg.cores().run_on(main, move || md.examine_appeared(token, name)) {
                tracing::warn!(error = %e, "md: cannot examine a new bdev");
            }
        }));
    }

    /// Main reactor: examines the new bdev `name`.
    fn examine_appeared(self: Arc<Self>, token: ExamineToken, name: String) {
        let reg = token.0.clone();
        match reg.get(&name) {
            Some(b) if b.claimed_by().is_none() && b.info().module != MODULE && !b.is_removed() => {}
            _ => return,
        }
        let me = self.clone();
        let n2 = name.clone();
        crate::examine::examine(&reg, &n2, move |r| match r {
            Ok(ex) => me.examined(token, name, ex.sb),
            Err(e) => tracing::debug!(bdev = %name, error = %e, "md examine: no md member"),
        });
    }

    /// Main reactor: bdev `name` holds `sb`.
    fn examined(self: Arc<Self>, token: ExamineToken, name: String, sb: Superblock) {
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
        let st = auto_state(&self);
        let members = {
            let mut s = lock(&st);
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
            let reg = token.0.clone();
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
        };
        self.assemble(opts, move |r| {
            lock(&st).assembling.retain(|u| *u != uuid);
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
