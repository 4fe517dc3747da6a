//! The application-level methods (spdk-rpc.md §8.1): version, STARTUP/RUNTIME state and
//! `framework_start_init`, reactor, thread and poller statistics, kill. The method list and the
//! subsystems (`rpc_get_methods`, `framework_get_subsystems`, `framework_get_config`) describe
//! the registry and live there ([`crate::registry`]); the framework state is
//! [`Framework`](crate::Framework).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use keel_reactor::{current, ticks_per_sec, CoreId, Cores};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{Ctx, Reply};
use crate::decode::{no_params, params};
use crate::error::{RpcError, INTERNAL_ERROR, INVALID_PARAMS};
use crate::table::{method, Table};

/// The framework methods.
pub(crate) static TABLE: Table = Table {
    methods: &[
        method!(spdk_get_version, Both),
        method!(framework_start_init, Startup),
        method!(framework_wait_init, Both),
        method!(framework_get_reactors, Runtime),
        method!(thread_get_stats, Runtime),
        method!(spdk_kill_instance, Runtime),
        method!(keel_get_pollers, Runtime),
    ],
    subsystem: None,
};

/// Signals `spdk_kill_instance` accepts.
pub const KILL_SIGNALS: &[&str] = &["SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1"];

fn spdk_get_version(_ctx: &Ctx, params: Option<Value>, reply: Reply) {
    if let Err(e) = no_params(params) {
        return reply(Err(e));
    }
    reply(Ok(json!({
        "version": format!("SPDK v26.09 compatible (Keel v{})", env!("CARGO_PKG_VERSION")),
        "fields": {"major": 26, "minor": 9, "patch": 0, "suffix": format!("-keel{}", env!("CARGO_PKG_VERSION"))}
    })))
}

fn framework_start_init(ctx: &Ctx, params: Option<Value>, reply: Reply) {
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

fn framework_wait_init(ctx: &Ctx, params: Option<Value>, reply: Reply) {
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
    /// Heap allocations the reactor's thread made before this visit (see
    /// [`keel_reactor::thread_allocations`]).
    allocations: u64,
}

/// Visits every core, collecting its report, then calls `done` on the calling core.
fn collect_cores(cores: &Cores, done: impl FnOnce(Vec<CoreReport>) + Send + 'static) {
    let acc = Arc::new(Mutex::new(Vec::new()));
    let a2 = acc.clone();
    let c2 = cores.clone();
    cores.for_each_core(
        move || {
            // First, before this visit allocates anything itself.
            let allocations = keel_reactor::thread_allocations();
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
                allocations,
            });
        },
        current().core(),
        move || done(std::mem::take(&mut *acc.lock().unwrap())),
    );
}

fn cpumask_hex(core: CoreId) -> String {
    keel_reactor::CoreMask::from_cores([core]).to_hex()
}

fn framework_get_reactors(ctx: &Ctx, params: Option<Value>, reply: Reply) {
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

fn thread_get_stats(ctx: &Ctx, params: Option<Value>, reply: Reply) {
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

fn spdk_kill_instance(ctx: &Ctx, params: Option<Value>, reply: Reply) {
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
fn keel_get_pollers(ctx: &Ctx, params: Option<Value>, reply: Reply) {
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
                json!({"lcore": r.core.0, "busy": r.busy, "idle": r.idle, "allocations": r.allocations, "pollers": pollers})
            })
            .collect();
        reply(Ok(json!({"tick_rate": ticks_per_sec(), "reactors": reactors})))
    });
}
