//! save_config for mapped devices: the calls that rebuild them, in dependency order.
//!
//! The RPC crate saves mapped devices in a `"dm"` subsystem that comes after `"bdev"`. Inside it
//! every device becomes `dm_create {name, table, readonly, uuid, bdev_uuid, minor}` (the live table),
//! then `dm_load {name, table, readonly}` for a staged table and `dm_suspend {name}` for a
//! suspended device, ordered so that whatever a device's tables name exists before it: a device
//! over another device comes after it even when a later reload made the older device depend on
//! the newer one (a topological order over the tables' dependencies, ties broken by bdev
//! registration order).
//!
//! Non-dm bdevs stacked **on** a mapped device (a passthru over a dm device) cannot be created in
//! the `"bdev"` subsystem, which loads first. Bdevs have no generic way to name their bases, so
//! the rule is conservative: once a dm device is claimed by another module, every non-dm bdev
//! registered after it is **deferred** — left out of `"bdev"` ([`ConfigPlan::deferred_bdevs`]) and
//! emitted in `"dm"` as a [`ConfigStep::Bdev`] after every dm device registered before it.

use serde_json::{json, Map as JsonMap, Value};
use uuid::Uuid;

use keel_bdev::BdevRegistry;

use crate::device::{DmRegistry, MODULE};

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

/// One entry of the `"dm"` subsystem's config.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigStep {
    /// A dm RPC call.
    Call { method: &'static str, params: Value },
    /// Recreate this non-dm bdev here (with its module's own config call).
    Bdev(String),
}

/// The `"dm"` subsystem's config and the bdevs it takes over from `"bdev"`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigPlan {
    /// Non-dm bdevs to leave out of the `"bdev"` subsystem.
    pub deferred_bdevs: Vec<String>,
    pub steps: Vec<ConfigStep>,
}

/// A step to order: a device's `dm_create` (with its live table), its `dm_load` (staged table),
/// or a deferred bdev.
enum Node {
    Create(usize),
    Load(usize),
    Bdev(String),
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

impl DmRegistry {
    /// The `"dm"` subsystem's configuration for save_config (see the module docs). Control
    /// path.
    pub fn config_plan(&self, bdevs: &BdevRegistry) -> ConfigPlan {
        let devs = self.snapshot();
        let list = bdevs.list();
        let pos_of = |name: &str| list.iter().position(|b| b.name() == name);
        let dm_names: Vec<&str> = devs.iter().filter_map(|d| d.bdev.as_deref()).collect();
        // The first dm bdev another module stacks on: non-dm bdevs after it are deferred.
        let first_stacked = list
            .iter()
            .position(|b| b.info().module == MODULE && b.claimed_by().is_some_and(|m| m != MODULE));
        let deferred: Vec<String> = match first_stacked {
            Some(p) => list[p + 1..]
                .iter()
                .filter(|b| b.info().module != MODULE && !dm_names.contains(&b.name()))
                .map(|b| b.name().to_string())
                .collect(),
            None => Vec::new(),
        };
        // Nodes with a sort key: twice the registration position (a load right after its
        // create); devices without a bdev after every registered one, in creation order.
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
        for name in &deferred {
            nodes.push((2 * pos_of(name).unwrap_or(1 << 41) as u64, Node::Bdev(name.clone())));
        }
        fn provides<'a>(devs: &'a [DevSnapshot], n: &'a Node) -> Option<&'a str> {
            match n {
                Node::Create(i) => devs[*i].bdev.as_deref(),
                Node::Load(_) => None,
                Node::Bdev(b) => Some(b),
            }
        }
        let providers = |deps: &[String]| -> Vec<usize> {
            nodes
                .iter()
                .enumerate()
                .filter(|(_, (_, m))| provides(&devs, m).is_some_and(|p| deps.iter().any(|d| d == p)))
                .map(|(j, _)| j)
                .collect()
        };
        // needs[i] = nodes that must come before i.
        let needs: Vec<Vec<usize>> = nodes
            .iter()
            .map(|(key, n)| match n {
                Node::Create(i) => providers(&devs[*i].live_deps),
                Node::Load(i) => {
                    let mut v = providers(&devs[*i].inactive_deps);
                    v.extend(nodes.iter().position(|(_, m)| matches!(m, Node::Create(j) if j == i)));
                    v
                }
                Node::Bdev(_) => nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, (k, m))| k < key && provides(&devs, m).is_some())
                    .map(|(j, _)| j)
                    .collect(),
            })
            .collect();
        let mut done = vec![false; nodes.len()];
        let mut order = Vec::with_capacity(nodes.len());
        while order.len() < nodes.len() {
            let ready = (0..nodes.len())
                .filter(|&i| !done[i] && needs[i].iter().all(|&j| done[j] || j == i))
                .min_by_key(|&i| nodes[i].0);
            // A cycle (only the conservative deferral edges can make one): take the lowest key.
            let pick = ready.or_else(|| (0..nodes.len()).filter(|&i| !done[i]).min_by_key(|&i| nodes[i].0));
            let Some(i) = pick else { break };
            done[i] = true;
            order.push(i);
        }
        let mut steps = Vec::new();
        for i in order {
            match &nodes[i].1 {
                Node::Create(d) => steps.push(ConfigStep::Call {
                    method: "dm_create",
                    params: create_params(&devs[*d]),
                }),
                Node::Load(d) => {
                    let d = &devs[*d];
                    if let Some((text, ro)) = &d.inactive {
                        let mut p = json!({"name": d.name, "table": text});
                        if *ro {
                            p["readonly"] = json!(true);
                        }
                        steps.push(ConfigStep::Call {
                            method: "dm_load",
                            params: p,
                        });
                    }
                }
                Node::Bdev(b) => steps.push(ConfigStep::Bdev(b.clone())),
            }
        }
        // Suspended devices last: everything that names them is created by then.
        for d in devs.iter().filter(|d| d.suspended) {
            steps.push(ConfigStep::Call {
                method: "dm_suspend",
                params: json!({"name": d.name}),
            });
        }
        ConfigPlan {
            deferred_bdevs: deferred,
            steps,
        }
    }
}
