//! The application-level methods (spdk-rpc.md §8.1): version, method list,
//! STARTUP/RUNTIME state and `framework_start_init`, reactor and thread statistics, subsystems
//! and their configuration (what the stock client's `save_config` assembles), kill.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use keel_reactor::{current, ticks_per_sec, CoreId, Cores};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{Ctx, Reply};
use crate::decode::{no_params, params};
use crate::error::{RpcError, INTERNAL_ERROR, INVALID_PARAMS};
use crate::methods::methods;

/// Signals `spdk_kill_instance` accepts.
pub const KILL_SIGNALS: &[&str] = &["SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1"];

pub(crate) fn spdk_get_version(_ctx: &Ctx, params: Option<Value>, reply: Reply) {
    if let Err(e) = no_params(params) {
        return reply(Err(e));
    }
    reply(Ok(json!({
        "version": format!("SPDK v26.09 compatible (Keel v{})", env!("CARGO_PKG_VERSION")),
        "fields": {"major": 26, "minor": 9, "patch": 0, "suffix": format!("-keel{}", env!("CARGO_PKG_VERSION"))}
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GetMethods {
    #[serde(default)]
    current: bool,
    #[serde(default)]
    include_aliases: bool,
}

pub(crate) fn rpc_get_methods(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetMethods = params!(params, reply);
    let _ = p.include_aliases; // Keel has no deprecated aliases.
    let runtime = ctx.fw.is_runtime();
    let names: Vec<&str> = methods()
        .iter()
        .filter(|m| !p.current || if runtime { m.runtime } else { m.startup })
        .map(|m| m.name)
        .collect();
    reply(Ok(json!(names)))
}

pub(crate) fn framework_start_init(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    if let Err(e) = no_params(params) {
        return reply(Err(e));
    }
    let Some(start) = ctx.fw.take_start_init() else {
        return reply(Err(RpcError::new(
            -1,
            "framework_initialization failed: already initialized",
        )));
    };
    let fw = ctx.fw.clone();
    start(Box::new(move |r| match r {
        Ok(()) => {
            fw.set_runtime();
            reply(Ok(json!(true)))
        }
        Err(e) => reply(Err(RpcError::new(
            INTERNAL_ERROR,
            format!("framework_initialization failed: {}", e.message),
        ))),
    }));
}

pub(crate) fn framework_wait_init(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    if let Err(e) = no_params(params) {
        return reply(Err(e));
    }
    ctx.fw.wait_init(reply);
}

/// Per-core facts gathered on each core by message.
struct CoreReport {
    core: CoreId,
    busy: u64,
    idle: u64,
    tid: u64,
    active_pollers: usize,
    timed_pollers: usize,
    pollers: Vec<keel_reactor::PollerStats>,
}

/// Visits every core, collecting its report, then calls `done` on the calling core.
fn collect_cores(cores: &Cores, done: impl FnOnce(Vec<CoreReport>) + Send + 'static) {
    let acc = Arc::new(Mutex::new(Vec::new()));
    let a2 = acc.clone();
    let c2 = cores.clone();
    cores.for_each_core(
        move || {
            let r = current();
            let st = c2.stats(r.core()).expect("stats of own core");
            let (active, timed) = r.poller_counts();
            a2.lock().unwrap().push(CoreReport {
                core: r.core(),
                busy: st.busy_ticks.load(Ordering::Relaxed),
                idle: st.idle_ticks.load(Ordering::Relaxed),
                tid: st.tid.load(Ordering::Relaxed),
                active_pollers: active,
                timed_pollers: timed,
                pollers: r.poller_stats(),
            });
        },
        current().core(),
        move || done(std::mem::take(&mut *acc.lock().unwrap())),
    );
}

fn cpumask_hex(core: CoreId) -> String {
    keel_reactor::CoreMask::from_cores([core]).to_hex()
}

pub(crate) fn framework_get_reactors(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    if let Err(e) = no_params(params) {
        return reply(Err(e));
    }
    collect_cores(ctx.registry.cores(), move |reports| {
        let reactors: Vec<Value> = reports
            .iter()
            .map(|r| {
                json!({
                    "lcore": r.core.0, "numa_id": 0, "tid": r.tid, "busy": r.busy, "idle": r.idle,
                    "in_interrupt": false, "irq": 0, "sys": 0, "usr": 0,
                    "lw_threads": [{"name": format!("reactor_{}", r.core.0), "id": r.core.0 + 1,
                                    "cpumask": cpumask_hex(r.core), "elapsed": r.busy + r.idle}]
                })
            })
            .collect();
        reply(Ok(
            json!({"tick_rate": ticks_per_sec(), "pid": std::process::id(), "reactors": reactors}),
        ))
    });
}

pub(crate) fn thread_get_stats(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    if let Err(e) = no_params(params) {
        return reply(Err(e));
    }
    collect_cores(ctx.registry.cores(), move |reports| {
        let threads: Vec<Value> = reports
            .iter()
            .map(|r| {
                json!({
                    "name": format!("reactor_{}", r.core.0), "id": r.core.0 + 1, "cpumask": cpumask_hex(r.core),
                    "busy": r.busy, "idle": r.idle, "active_pollers_count": r.active_pollers,
                    "timed_pollers_count": r.timed_pollers, "paused_pollers_count": 0
                })
            })
            .collect();
        reply(Ok(json!({"tick_rate": ticks_per_sec(), "threads": threads})))
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kill {
    sig_name: String,
}

pub(crate) fn spdk_kill_instance(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Kill = params!(params, reply);
    if !KILL_SIGNALS.contains(&p.sig_name.as_str()) {
        return reply(Err(RpcError::new(
            INVALID_PARAMS,
            format!("Invalid signal name '{}'", p.sig_name),
        )));
    }
    // Answer first, then stop: the client also tolerates a closed socket here.
    reply(Ok(json!(true)));
    ctx.fw.kill(&p.sig_name);
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GetPollers {
    #[serde(default)]
    lcore: Option<u32>,
}

/// Keel's poller view (plugin command `keel_get_pollers`): per reactor its busy/idle ticks and
/// every poller with period, run count and busy count.
pub(crate) fn keel_get_pollers(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetPollers = params!(params, reply);
    if let Some(l) = p.lcore {
        if !ctx.registry.cores().core_ids().contains(&CoreId(l)) {
            return reply(Err(RpcError::from_errno(-19, format!("no reactor on core {l}"))));
        }
    }
    collect_cores(ctx.registry.cores(), move |reports| {
        let reactors: Vec<Value> = reports
            .iter()
            .filter(|r| p.lcore.is_none_or(|l| l == r.core.0))
            .map(|r| {
                let pollers: Vec<Value> = r
                    .pollers
                    .iter()
                    .map(|q| {
                        json!({"name": q.name, "type": if q.period_us == 0 { "active" } else { "timed" },
                               "period_us": q.period_us, "run_count": q.run_count, "busy_count": q.busy_count})
                    })
                    .collect();
                json!({"lcore": r.core.0, "busy": r.busy, "idle": r.idle, "pollers": pollers})
            })
            .collect();
        reply(Ok(json!({"tick_rate": ticks_per_sec(), "reactors": reactors})))
    });
}

/// Subsystems in initialisation order, with what each depends on.
/// `dm` (mapped devices, after the bdevs they stack on) is Keel's own.
pub const SUBSYSTEMS: &[(&str, &[&str])] = &[("bdev", &[]), ("dm", &["bdev"])];

pub(crate) fn framework_get_subsystems(_ctx: &Ctx, params: Option<Value>, reply: Reply) {
    if let Err(e) = no_params(params) {
        return reply(Err(e));
    }
    let v: Vec<Value> = SUBSYSTEMS
        .iter()
        .map(|(n, d)| json!({"subsystem": n, "depends_on": d}))
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

/// The configuration calls that recreate subsystem `name` (`None` if unknown).
pub fn subsystem_config(ctx: &Ctx, name: &str) -> Option<Vec<Value>> {
    match name {
        "bdev" => {
            // Bdevs stacked on mapped devices are saved in "dm", after the devices.
            let (deferred, _) = crate::dm_methods::dm_subsystem_config(ctx);
            let mut calls: Vec<Value> = ctx
                .registry
                .list()
                .iter()
                .filter(|b| !deferred.iter().any(|d| d == b.name()))
                .filter_map(|b| b.backend().config(b.info()))
                .map(|c| json!({"method": c.method, "params": c.params}))
                .collect();
            calls.push(json!({"method": "bdev_wait_for_examine"}));
            Some(calls)
        }
        "dm" => Some(crate::dm_methods::dm_subsystem_config(ctx).1),
        _ => None,
    }
}

pub(crate) fn framework_get_config(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetConfig = params!(params, reply);
    let _ = p.with_batches; // Keel's subsystems produce no batches.
    match subsystem_config(ctx, &p.name) {
        Some(calls) => reply(Ok(json!(calls))),
        None => reply(Err(RpcError::new(
            INVALID_PARAMS,
            format!("Subsystem '{}' not found", p.name),
        ))),
    }
}
