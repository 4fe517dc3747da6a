//! The registry: every method file's `Table` in one list, and what is derived from it — the
//! method lookup ([`find_method`], [`call_method`]), the subsystems served ([`find_subsystem`],
//! [`load_modules`], [`subsystems`], [`subsystem_config`]) and the three methods that describe
//! the registry itself (`rpc_get_methods`, `framework_get_subsystems`, `framework_get_config`;
//! SPDK serves them from its RPC and subsystem registries too).
//!
//! The order of `TABLES` is declared here and is the order of `rpc_get_methods`. Subsystems are
//! not ordered here: each is declared once by the bdev module that owns it, and the bdev
//! registry lists them in dependency order ([`BdevRegistry::subsystems`]) and plans their
//! save_config calls ([`BdevRegistry::config_plan`]). A table that serves a subsystem names that
//! declaration, says how to load the module into a registry, and what the RPC layer appends.
//! Adding a subsystem or a method file is one line here.

use std::sync::Arc;

use keel_bdev::{BdevRegistry, SubsystemInfo};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{Ctx, Reply};
use crate::decode::{no_params, params};
use crate::error::{RpcError, INVALID_PARAMS};
use crate::table::{method, MethodInfo, Subsystem, Table};
use crate::{
    bdev_info, bdev_methods, dm_methods, framework, log_methods, md_methods, nbd_disk_methods, nbd_methods,
    nvme_methods, nvmf_methods, raid_methods, split_methods, ublk_methods,
};

/// Every method file's table, in listing order (see the module docs).
static TABLES: &[&Table] = &[
    &framework::TABLE,
    &TABLE,
    &log_methods::TABLE,
    &md_methods::TABLE,
    &bdev_info::TABLE,
    &bdev_methods::TABLE, // serves "bdev"
    &nvme_methods::TABLE,
    &split_methods::TABLE,
    &raid_methods::TABLE,
    &dm_methods::TABLE,   // serves "dm"
    &nvmf_methods::TABLE, // serves "nvmf"
    &nbd_methods::TABLE,  // serves "nbd"
    &nbd_disk_methods::TABLE,
    &ublk_methods::TABLE, // serves "ublk"
];

/// The methods that describe the registry.
static TABLE: Table = Table {
    methods: &[
        method!(rpc_get_methods, Both),
        method!(framework_get_subsystems, Runtime),
        method!(framework_get_config, Runtime),
    ],
    subsystem: None,
};

/// Every method Keel serves, in listing order.
pub fn methods() -> impl Iterator<Item = &'static MethodInfo> {
    TABLES.iter().flat_map(|t| t.methods)
}

/// Looks a method up by name.
pub fn find_method(name: &str) -> Option<&'static MethodInfo> {
    methods().find(|m| m.name == name)
}

/// Every subsystem Keel serves (the tables' order; [`subsystems`] gives the load order).
pub fn served_subsystems() -> impl Iterator<Item = &'static Subsystem> {
    TABLES.iter().filter_map(|t| t.subsystem.as_ref())
}

/// Looks a served subsystem up by name: what a configuration file may name. Any thread.
pub fn find_subsystem(name: &str) -> Option<&'static Subsystem> {
    served_subsystems().find(|s| s.name() == name)
}

/// Loads into `reg` the bdev module behind every served subsystem, so that the registry lists
/// each (even while empty) and stops it at shutdown. keel-tgt calls it at start-up; the methods
/// that describe the subsystems call it too (a context may be new). Idempotent; any thread.
pub fn load_modules(reg: &Arc<BdevRegistry>) {
    for load in served_subsystems().filter_map(|s| s.load) {
        load(reg);
    }
}

/// Every subsystem of `reg` in load order, as its bdev modules declare them (after
/// [`load_modules`]): what `framework_get_subsystems` lists and `save_config` saves. Any thread.
pub fn subsystems(reg: &Arc<BdevRegistry>) -> Vec<SubsystemInfo> {
    load_modules(reg);
    reg.subsystems()
}

/// The configuration calls that recreate subsystem `name` (`None` if `reg` has no such
/// subsystem): the registry's save_config plan for it, then the served subsystem's closing
/// calls. Called on the main reactor.
pub fn subsystem_config(reg: &Arc<BdevRegistry>, name: &str) -> Option<Vec<Value>> {
    load_modules(reg);
    let plan = reg.config_plan();
    let calls = plan.calls(name)?;
    let closing = find_subsystem(name).map_or(&[][..], |s| s.closing);
    Some(
        calls
            .iter()
            .map(|c| match &c.params {
                // A call without parameters is written as SPDK writes one: no "params".
                Value::Null => json!({"method": c.method}),
                p => json!({"method": c.method, "params": p}),
            })
            .chain(closing.iter().map(|m| json!({ "method": m })))
            .collect(),
    )
}

/// Looks `method` up, checks it may run in the current state and runs it. Called on the main
/// reactor; `reply` is called once.
pub fn call_method(ctx: &Ctx, method: &str, params: Option<Value>, reply: Reply) {
    let Some(m) = find_method(method) else {
        return reply(Err(RpcError::method_not_found(method)));
    };
    let runtime = ctx.fw.is_runtime();
    if runtime && !m.phase.in_runtime() {
        return reply(Err(RpcError::new(
            -1,
            "Method may only be called before framework is initialized. Use --wait-for-rpc command line parameter and then issue this RPC before the framework_start_init RPC.",
        )));
    }
    if !runtime && !m.phase.in_startup() {
        return reply(Err(RpcError::new(
            -1,
            "Method may only be called after framework is initialized using framework_start_init RPC.",
        )));
    }
    m.call(ctx, params, reply)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GetMethods {
    #[serde(default)]
    current: bool,
    #[serde(default)]
    include_aliases: bool,
}

/// `rpc_get_methods {current?, include_aliases?}` → every method's name; with `current`, only
/// those allowed in the framework's present state.
fn rpc_get_methods(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetMethods = params!(params, reply);
    let _ = p.include_aliases; // Keel has no deprecated aliases.
    let runtime = ctx.fw.is_runtime();
    let names: Vec<&str> = methods()
        .filter(|m| !p.current || m.phase.allows(runtime))
        .map(|m| m.name)
        .collect();
    reply(Ok(json!(names)))
}

/// `framework_get_subsystems` → `[{subsystem, depends_on}]` in load order.
fn framework_get_subsystems(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    if let Err(e) = no_params(params) {
        return reply(Err(e));
    }
    let v: Vec<Value> = subsystems(&ctx.registry)
        .iter()
        .map(|s| json!({"subsystem": s.name, "depends_on": s.depends_on}))
        .collect();
    reply(Ok(json!(v)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfig {
    name: String,
    #[serde(default)]
    with_batches: bool,
}

/// `framework_get_config {name, with_batches?}` → the subsystem's configuration calls.
fn framework_get_config(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetConfig = params!(params, reply);
    let _ = p.with_batches; // Keel's subsystems produce no batches.
    match subsystem_config(&ctx.registry, &p.name) {
        Some(calls) => reply(Ok(json!(calls))),
        None => reply(Err(RpcError::new(
            INVALID_PARAMS,
            format!("Subsystem '{}' not found", p.name),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use keel_bdev::BdevRegistry;
    use keel_reactor::TestDriver;

    use super::*;
    use crate::context::Framework;
    use crate::table::Phase;

    #[test]
    fn method_names_are_unique_across_tables() {
        let mut seen = HashSet::new();
        for (i, t) in TABLES.iter().enumerate() {
            for m in t.methods {
                assert!(
                    seen.insert(m.name),
                    "method {} listed twice (again in table {i})",
                    m.name
                );
            }
        }
        assert!(seen.len() > 50, "{} methods", seen.len());
    }

    #[test]
    fn every_table_entry_is_reachable_by_name() {
        for t in TABLES {
            for m in t.methods {
                let found = find_method(m.name).unwrap_or_else(|| panic!("{} not found", m.name));
                assert!(std::ptr::eq(found, m), "{} is shadowed", m.name);
            }
        }
        assert_eq!(methods().count(), TABLES.iter().map(|t| t.methods.len()).sum::<usize>());
        assert!(find_method("nope").is_none());
    }

    /// A table missing from [`TABLES`] would serve nothing: every `method!` entry in the
    /// crate's sources is found through the registry, and nothing else is.
    #[test]
    fn every_table_in_the_sources_is_registered() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut entries = Vec::new();
        for file in std::fs::read_dir(&src).unwrap() {
            let path = file.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
            for rest in code.flat_map(|l| l.split("method!(").skip(1)) {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name.is_empty() || !rest[name.len()..].starts_with(',') {
                    continue; // not an entry (this test's own text)
                }
                assert!(
                    find_method(&name).is_some(),
                    "{name} of {} is not registered",
                    path.display()
                );
                entries.push(name);
            }
        }
        assert_eq!(entries.len(), methods().count(), "{entries:?}");
    }

    #[test]
    fn subsystems_are_the_modules_declarations_in_dependency_order() {
        let d = TestDriver::new(1);
        let reg = BdevRegistry::new(d.cores());
        let fresh: Vec<&str> = reg.subsystems().iter().map(|s| s.name).collect();
        assert_eq!(fresh, ["bdev"], "nothing loaded yet");
        let listed = subsystems(&reg);
        let order: Vec<&str> = listed.iter().map(|s| s.name).collect();
        assert_eq!(order, ["bdev", "dm", "nvmf", "nbd", "ublk"]);
        for (i, s) in listed.iter().enumerate() {
            for d in &s.depends_on {
                let at = order.iter().position(|n| n == d);
                assert!(
                    at.is_some_and(|at| at < i),
                    "{} depends on {d}, which must come first",
                    s.name
                );
            }
        }
        // What the registry lists is exactly what the tables serve, as the modules declare it.
        let mut served: Vec<&str> = served_subsystems().map(|s| s.name()).collect();
        served.sort_unstable();
        let mut names = order.clone();
        names.sort_unstable();
        assert_eq!(served, names);
        for s in served_subsystems() {
            let info = listed.iter().find(|i| i.name == s.name()).unwrap();
            assert_eq!(info.depends_on, s.declared.depends_on, "{}", s.name());
        }
        assert!(find_subsystem("iscsi").is_none());
    }

    /// Runs `method` synchronously (handlers that answer at once) in a framework that is in
    /// RUNTIME or not.
    fn call(runtime: bool, method: &str, params: Value) -> Result<Value, RpcError> {
        let d = TestDriver::new(1);
        let fw = if runtime {
            Framework::running()
        } else {
            Framework::starting(Box::new(|done| done(Ok(()))), Box::new(|_| {}))
        };
        let ctx = Ctx {
            registry: BdevRegistry::new(d.cores()),
            fw,
        };
        let out = Arc::new(Mutex::new(None));
        let o2 = out.clone();
        call_method(
            &ctx,
            method,
            Some(params),
            Box::new(move |r| *o2.lock().unwrap() = Some(r)),
        );
        let r = out.lock().unwrap().take();
        r.expect("answered at once")
    }

    fn names(v: Value) -> Vec<String> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn phases_gate_calls_and_filter_the_current_list() {
        let all = names(call(true, "rpc_get_methods", json!({})).unwrap());
        assert_eq!(all, methods().map(|m| m.name).collect::<Vec<_>>());
        assert_eq!(names(call(false, "rpc_get_methods", json!({})).unwrap()), all);
        for (runtime, phase_ok) in [
            (true, Phase::in_runtime as fn(Phase) -> bool),
            (false, Phase::in_startup),
        ] {
            let current = names(call(runtime, "rpc_get_methods", json!({"current": true})).unwrap());
            let want: Vec<&str> = methods().filter(|m| phase_ok(m.phase)).map(|m| m.name).collect();
            assert_eq!(current, want);
        }
        let startup = names(call(false, "rpc_get_methods", json!({"current": true})).unwrap());
        assert_eq!(
            startup,
            [
                "spdk_get_version",
                "framework_start_init",
                "framework_wait_init",
                "rpc_get_methods",
                "log_set_print_level",
                "log_get_print_level",
                "log_set_level",
                "log_get_level",
                "log_set_flag",
                "log_clear_flag",
                "log_get_flags",
                "bdev_set_options",
                "bdev_nvme_set_options",
                "bdev_raid_set_options"
            ]
        );
        let e = call(true, "framework_start_init", json!({})).unwrap_err();
        assert_eq!(e.code, -1);
        assert!(
            e.message.starts_with("Method may only be called before"),
            "{}",
            e.message
        );
        let e = call(false, "bdev_null_create", json!({})).unwrap_err();
        assert_eq!(e.code, -1);
        assert!(
            e.message.starts_with("Method may only be called after"),
            "{}",
            e.message
        );
        assert_eq!(
            call(true, "nope", json!({})).unwrap_err().code,
            crate::error::METHOD_NOT_FOUND
        );
    }

    #[test]
    fn subsystem_list_and_unknown_config() {
        let v = call(true, "framework_get_subsystems", json!({})).unwrap();
        assert_eq!(
            v,
            json!([{"subsystem": "bdev", "depends_on": []}, {"subsystem": "dm", "depends_on": ["bdev"]},
                   {"subsystem": "nvmf", "depends_on": ["bdev"]}, {"subsystem": "nbd", "depends_on": ["bdev"]},
                   {"subsystem": "ublk", "depends_on": ["bdev"]}])
        );
        assert_eq!(
            call(true, "framework_get_config", json!({"name": "bdev"})).unwrap(),
            json!([{"method": "bdev_wait_for_examine"}])
        );
        assert_eq!(
            call(true, "framework_get_config", json!({"name": "dm"})).unwrap(),
            json!([])
        );
        let e = call(true, "framework_get_config", json!({"name": "nope"})).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (INVALID_PARAMS, "Subsystem 'nope' not found")
        );
    }
}
