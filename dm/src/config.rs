//! dm's part of save_config: the calls that rebuild the mapped devices, as module-level entries
//! of the bdev registry's save_config plan ([`keel_bdev::BdevModule::config`]).
//!
//! Mapped devices are saved in the `"dm"` subsystem ([`crate::SUBSYSTEM`], after `"bdev"`).
//! Every device becomes `dm_create {name, table, readonly, uuid, bdev_uuid, minor}` (its live
//! table), then `dm_load {name, table, readonly}` for a staged table, and `dm_suspend {name}`
//! for a suspended device. Each entry says what it needs (the bdevs its table names) and what it
//! provides (the device's bdev); the registry's planner places everything else around them:
//! a passthru over a mapped device goes into `"dm"` after that device, a malloc registered later
//! stays in `"bdev"` (see `keel_bdev`'s `module.rs`).
//!
//! What stays here is the order among dm's own entries, which the planner keeps as given: a
//! device comes after every device its tables stand on, directly or through bdevs of other
//! modules (a table naming a passthru over another device) — even when a later reload made an
//! older device depend on a newer one (a topological order, ties broken by bdev registration
//! order, devices without a bdev last in creation order); a staged table comes right after its
//! device's create and after what it names; suspends close the subsystem
//! ([`ConfigEntry::last`]): nothing may do I/O to a suspended device after it. They are preceded
//! by a `bdev_wait_for_examine`, so no examination's read of a device being loaded is held by
//! its suspend (the load would wait for that read forever).

use serde_json::{json, Map as JsonMap, Value};
use uuid::Uuid;

use keel_bdev::{BdevRegistry, ConfigCall, ConfigEntry};

use crate::device::DmRegistry;

/// What save_config needs of one device.
#[derive(Debug, Clone)]
pub(crate) struct DevSnapshot {
    pub name: String,
    pub uuid: Option<String>,
    /// TABLE text and read-only flag.
    pub live: Option<(String, bool)>,
    pub inactive: Option<(String, bool)>,
    pub suspended: bool,
    pub bdev_uuid: Uuid,
    pub minor: u32,
    /// The device's bdev name, once registered.
    pub bdev: Option<String>,
    /// Bdev names the live table uses.
    pub live_deps: Vec<String>,
    /// Bdev names the inactive table uses.
    pub inactive_deps: Vec<String>,
}

/// One of dm's entries to order: a device's `dm_create` (with its live table) or its `dm_load`
/// (staged table), by index into the snapshot.
#[derive(Clone, Copy, PartialEq)]
enum Node {
    Create(usize),
    Load(usize),
}

fn create_params(d: &DevSnapshot) -> Value {
    let mut m = JsonMap::new();
    m.insert("name".into(), json!(d.name));
    if let Some((text, ro)) = &d.live {
        m.insert("table".into(), json!(text));
        if *ro {
            m.insert("readonly".into(), json!(true));
        }
    }
    if let Some(u) = &d.uuid {
        m.insert("uuid".into(), json!(u));
    }
    m.insert("bdev_uuid".into(), json!(d.bdev_uuid.to_string()));
    m.insert("minor".into(), json!(d.minor));
    Value::Object(m)
}

fn load_params(d: &DevSnapshot) -> Option<Value> {
    let (text, ro) = d.inactive.as_ref()?;
    let mut p = json!({"name": d.name, "table": text});
    if *ro {
        p["readonly"] = json!(true);
    }
    Some(p)
}

/// The devices (snapshot indices) that bdev `name` is, or stands on through the bases of other
/// modules' bdevs ([`keel_bdev::BdevBackend::bases`]), appended to `out`. `depth` bounds a cycle
/// of bases.
fn devices_under(devs: &[DevSnapshot], reg: &BdevRegistry, name: &str, depth: usize, out: &mut Vec<usize>) {
    if let Some(i) = devs.iter().position(|d| d.bdev.as_deref() == Some(name)) {
        if !out.contains(&i) {
            out.push(i);
        }
        return;
    }
    if depth > 64 {
        return;
    }
    if let Some(b) = reg.get(name) {
        for base in b.backend().bases() {
            devices_under(devs, reg, &base, depth + 1, out);
        }
    }
}

/// Orders `nodes` (each with its sort key) so that every node comes after the nodes listed in
/// its `before`, taking the lowest key among the ready ones; on a cycle the lowest remaining
/// key goes next.
fn order(keys: &[u64], before: &[Vec<usize>]) -> Vec<usize> {
    let n = keys.len();
    let mut done = vec![false; n];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let ready = (0..n)
            .filter(|&i| !done[i] && before[i].iter().all(|&j| done[j] || j == i))
            .min_by_key(|&i| keys[i]);
        let pick = ready.or_else(|| (0..n).filter(|&i| !done[i]).min_by_key(|&i| keys[i]));
        let Some(i) = pick else { break };
        done[i] = true;
        out.push(i);
    }
    out
}

impl DmRegistry {
    /// dm's save_config entries in the order described in the module docs (what
    /// [`keel_bdev::BdevModule::config`] returns). Called on the main core.
    pub(crate) fn config_entries(&self, reg: &BdevRegistry) -> Vec<ConfigEntry> {
        let devs = self.snapshot();
        let list = reg.list();
        let pos_of = |name: &str| list.iter().position(|b| b.name() == name);
        // Sort key: twice the registration position (a load right after its create); devices
        // without a bdev after every registered one, in creation order.
        let mut nodes: Vec<(u64, Node)> = Vec::new();
        for (i, d) in devs.iter().enumerate() {
            let key = 2 * d
                .bdev
                .as_deref()
                .and_then(pos_of)
                .map(|p| p as u64)
                .unwrap_or(1 << 40 | i as u64);
            nodes.push((key, Node::Create(i)));
            if d.inactive.is_some() {
                nodes.push((key + 1, Node::Load(i)));
            }
        }
        let creates_under = |deps: &[String]| -> Vec<usize> {
            let mut under = Vec::new();
            for dep in deps {
                devices_under(&devs, reg, dep, 0, &mut under);
            }
            under
                .into_iter()
                .filter_map(|d| nodes.iter().position(|(_, n)| *n == Node::Create(d)))
                .collect()
        };
        let before: Vec<Vec<usize>> = nodes
            .iter()
            .map(|(_, n)| match *n {
                Node::Create(i) => creates_under(&devs[i].live_deps),
                Node::Load(i) => {
                    let mut v = creates_under(&devs[i].inactive_deps);
                    v.extend(nodes.iter().position(|(_, m)| *m == Node::Create(i)));
                    v
                }
            })
            .collect();
        let keys: Vec<u64> = nodes.iter().map(|(k, _)| *k).collect();
        let mut entries: Vec<ConfigEntry> = Vec::new();
        for i in order(&keys, &before) {
            match nodes[i].1 {
                Node::Create(d) => {
                    let d = &devs[d];
                    let mut e = ConfigEntry::new(ConfigCall {
                        method: "dm_create",
                        params: create_params(d),
                    })
                    .needs(d.live_deps.iter().cloned());
                    if let Some(b) = &d.bdev {
                        e = e.provides(b.clone());
                    }
                    entries.push(e);
                }
                Node::Load(d) => {
                    let d = &devs[d];
                    if let Some(params) = load_params(d) {
                        entries.push(
                            ConfigEntry::new(ConfigCall {
                                method: "dm_load",
                                params,
                            })
                            .needs(d.inactive_deps.iter().cloned()),
                        );
                    }
                }
            }
        }
        // Examinations of the devices just created (md reading a device for a superblock) must
        // finish before any is suspended, or their reads would be held until a resume that a
        // loading configuration never sends — and the load would wait for them forever.
        if devs.iter().any(|d| d.suspended) {
            entries.push(
                ConfigEntry::new(ConfigCall {
                    method: "bdev_wait_for_examine",
                    params: Value::Null,
                })
                .last(),
            );
        }
        for d in devs.iter().filter(|d| d.suspended) {
            entries.push(
                ConfigEntry::new(ConfigCall {
                    method: "dm_suspend",
                    params: json!({"name": d.name}),
                })
                .last(),
            );
        }
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_topological_with_keys_breaking_ties_and_cycles() {
        // 0 needs 2; 1 free; 2 free; 3 needs 0.
        let before = vec![vec![2], vec![], vec![], vec![0]];
        assert_eq!(order(&[0, 1, 2, 3], &before), [1, 2, 0, 3]);
        // A cycle (0 ↔ 1): what is ready goes first, then the lowest key of the cycle.
        let before = vec![vec![1], vec![0], vec![]];
        assert_eq!(order(&[5, 3, 9], &before), [2, 1, 0]);
        assert_eq!(order(&[], &[]), Vec::<usize>::new());
    }
}
