//! The method table: names, handlers and the states each may run in.

use std::sync::Arc;

use keel_bdev::modules::{delay, error, malloc, null, passthru, uring};
use keel_bdev::{BdevError, BdevRegistry};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::bdev_info::{bdev_get_bdevs, bdev_get_iostat};
use crate::context::{Ctx, Reply};
use crate::decode::{decode_internal, params};
use crate::dm_methods::*;
use crate::error::RpcError;
use crate::framework::*;
use crate::md_methods::{
    md_add, md_assemble, md_create, md_examine, md_fail, md_get_arrays, md_remove, md_set_sync_action,
    md_set_sync_speed, md_stop,
};
use crate::raid_methods::{
    bdev_raid_add_base_bdev, bdev_raid_create, bdev_raid_delete, bdev_raid_get_bdevs, bdev_raid_remove_base_bdev,
};
use crate::retry::retry_every;

/// A method handler. Runs on the main reactor.
pub type Handler = fn(&Ctx, Option<Value>, Reply);

/// One method of the table.
pub struct MethodInfo {
    pub name: &'static str,
    pub handler: Handler,
    /// Allowed before `framework_start_init` (SPDK's STARTUP state).
    pub startup: bool,
    /// Allowed after it (RUNTIME).
    pub runtime: bool,
}

fn reply_with(reply: Reply, r: Result<Value, BdevError>) {
    reply(r.map_err(RpcError::from))
}

fn create_with<T: DeserializeOwned>(
    params: Option<Value>,
    reply: Reply,
    f: impl FnOnce(&T) -> Result<Value, BdevError>,
) {
    match decode_internal::<T>(params) {
        Ok(opts) => reply_with(reply, f(&opts)),
        Err(e) => reply(Err(e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameOnly {
    name: String,
}

type DeleteFn = fn(&BdevRegistry, &str, Box<dyn FnOnce() + Send>) -> Result<(), BdevError>;

fn delete_with(params: Option<Value>, reply: Reply, ctx: &Ctx, f: DeleteFn) {
    let p: NameOnly = params!(params, reply);
    // `reply` moves into the completion; on an immediate error we need it back, so share it.
    let slot = Arc::new(std::sync::Mutex::new(Some(reply)));
    let s2 = slot.clone();
    let r = f(
        &ctx.registry,
        &p.name,
        Box::new(move || {
            if let Some(reply) = s2.lock().unwrap().take() {
                reply(Ok(json!(true)))
            }
        }),
    );
    if let Err(e) = r {
        if let Some(reply) = slot.lock().unwrap().take() {
            reply(Err(e.into()))
        }
    }
}

fn bdev_malloc_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    create_with(params, reply, |o: &malloc::MallocOpts| {
        malloc::create(&ctx.registry, o).map(|b| json!(b.name()))
    })
}
fn bdev_malloc_delete(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    delete_with(params, reply, ctx, malloc::delete)
}
fn bdev_null_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    create_with(params, reply, |o: &null::NullOpts| {
        null::create(&ctx.registry, o).map(|b| json!(b.name()))
    })
}
fn bdev_null_delete(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    delete_with(params, reply, ctx, null::delete)
}
fn bdev_uring_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    create_with(params, reply, |o: &uring::UringOpts| {
        uring::create(&ctx.registry, o).map(|b| json!(b.name()))
    })
}
fn bdev_uring_delete(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    delete_with(params, reply, ctx, uring::delete)
}
fn bdev_aio_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    create_with(params, reply, |o: &uring::AioOpts| {
        uring::create_aio(&ctx.registry, o).map(|b| json!(b.name()))
    })
}
fn bdev_aio_delete(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    delete_with(params, reply, ctx, uring::delete_aio)
}
fn bdev_error_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    // SPDK answers `true` here, not the name.
    create_with(params, reply, |o: &error::ErrorOpts| {
        error::create(&ctx.registry, o).map(|_| json!(true))
    })
}
fn bdev_error_delete(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    delete_with(params, reply, ctx, error::delete)
}
fn bdev_error_inject_error(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    create_with(params, reply, |o: &error::InjectOpts| {
        error::inject(&ctx.registry, o).map(|_| json!(true))
    })
}
fn bdev_delay_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    create_with(params, reply, |o: &delay::DelayOpts| {
        delay::create(&ctx.registry, o).map(|b| json!(b.name()))
    })
}
fn bdev_delay_delete(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    delete_with(params, reply, ctx, delay::delete)
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayUpdate {
    delay_bdev_name: String,
    latency_type: String,
    latency_us: u64,
}

fn bdev_delay_update_latency(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    create_with(params, reply, |o: &DelayUpdate| {
        delay::update_latency(&ctx.registry, &o.delay_bdev_name, &o.latency_type, o.latency_us).map(|_| json!(true))
    })
}

fn bdev_passthru_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    create_with(params, reply, |o: &passthru::PassthruOpts| {
        passthru::create(&ctx.registry, o).map(|b| json!(b.name()))
    })
}
fn bdev_passthru_delete(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    delete_with(params, reply, ctx, passthru::delete)
}
fn bdev_wait_for_examine(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    match params {
        None => {}
        Some(Value::Object(m)) if m.is_empty() => {}
        Some(_) => {
            return reply(Err(RpcError::invalid_params(
                "bdev_wait_for_examine takes no parameters",
            )))
        }
    }
    // Answers once no examiner (md's auto-assembly) is reading metadata or starting what it
    // found, re-checking every millisecond on this core.
    let reg = ctx.registry.clone();
    if reg.examines_in_flight() == 0 {
        return reply(Ok(json!(true)));
    }
    let mut reply = Some(reply);
    retry_every("bdev_wait_for_examine", 1_000, move || {
        if reg.examines_in_flight() != 0 {
            return false;
        }
        if let Some(r) = reply.take() {
            r(Ok(json!(true)));
        }
        true
    });
}

macro_rules! m {
    ($f:ident, $s:expr, $r:expr) => {
        MethodInfo {
            name: stringify!($f),
            handler: $f,
            startup: $s,
            runtime: $r,
        }
    };
}

static METHODS: &[MethodInfo] = &[
    m!(spdk_get_version, true, true),
    m!(rpc_get_methods, true, true),
    m!(framework_start_init, true, false),
    m!(framework_wait_init, true, true),
    m!(framework_get_reactors, false, true),
    m!(thread_get_stats, false, true),
    m!(spdk_kill_instance, false, true),
    m!(framework_get_subsystems, false, true),
    m!(framework_get_config, false, true),
    m!(keel_get_pollers, false, true),
    m!(md_examine, false, true),
    m!(md_create, false, true),
    m!(md_stop, false, true),
    m!(md_get_arrays, false, true),
    // Runtime only, like every bdev constructor: the members it needs are created in RUNTIME.
    m!(md_assemble, false, true),
    m!(md_add, false, true),
    m!(md_remove, false, true),
    m!(md_fail, false, true),
    m!(md_set_sync_action, false, true),
    m!(md_set_sync_speed, false, true),
    m!(bdev_get_bdevs, false, true),
    m!(bdev_get_iostat, false, true),
    m!(bdev_malloc_create, false, true),
    m!(bdev_malloc_delete, false, true),
    m!(bdev_null_create, false, true),
    m!(bdev_null_delete, false, true),
    m!(bdev_uring_create, false, true),
    m!(bdev_uring_delete, false, true),
    m!(bdev_aio_create, false, true),
    m!(bdev_aio_delete, false, true),
    m!(bdev_error_create, false, true),
    m!(bdev_error_delete, false, true),
    m!(bdev_error_inject_error, false, true),
    m!(bdev_delay_create, false, true),
    m!(bdev_delay_delete, false, true),
    m!(bdev_delay_update_latency, false, true),
    m!(bdev_passthru_create, false, true),
    m!(bdev_passthru_delete, false, true),
    m!(bdev_raid_create, false, true),
    m!(bdev_raid_delete, false, true),
    m!(bdev_raid_get_bdevs, false, true),
    m!(bdev_raid_add_base_bdev, false, true),
    m!(bdev_raid_remove_base_bdev, false, true),
    m!(bdev_wait_for_examine, false, true),
    m!(dm_create, false, true),
    m!(dm_load, false, true),
    m!(dm_suspend, false, true),
    m!(dm_resume, false, true),
    m!(dm_clear, false, true),
    m!(dm_remove, false, true),
    m!(dm_rename, false, true),
    m!(dm_info, false, true),
    m!(dm_table, false, true),
    m!(dm_status, false, true),
    m!(dm_message, false, true),
    m!(dm_deps, false, true),
    m!(dm_list_devices, false, true),
    m!(dm_list_targets, false, true),
    m!(dm_wait, false, true),
];

/// Every method Keel serves.
pub fn methods() -> &'static [MethodInfo] {
    METHODS
}

/// Looks a method up by name.
pub fn find_method(name: &str) -> Option<&'static MethodInfo> {
    METHODS.iter().find(|m| m.name == name)
}

/// Looks `method` up, checks it may run in the current state and runs it. Called on the main
/// reactor; `reply` is called once.
pub fn call_method(ctx: &Ctx, method: &str, params: Option<Value>, reply: Reply) {
    let Some(m) = find_method(method) else {
        return reply(Err(RpcError::method_not_found(method)));
    };
    let runtime = ctx.fw.is_runtime();
    if runtime && !m.runtime {
        return reply(Err(RpcError::new(
            -1,
            "Method may only be called before framework is initialized. Use --wait-for-rpc command line parameter and then issue this RPC before the framework_start_init RPC.",
        )));
    }
    if !runtime && !m.startup {
        return reply(Err(RpcError::new(
            -1,
            "Method may only be called after framework is initialized using framework_start_init RPC.",
        )));
    }
    (m.handler)(ctx, params, reply)
}
