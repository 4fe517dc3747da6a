//! The bdev modules' methods (spdk-rpc.md §8.2): create/delete for malloc, null, uring, aio,
//! error, delay and passthru, error injection, delay updates and `bdev_wait_for_examine`; and
//! the `"bdev"` subsystem, whose saved configuration is the constructor call of every bdev the
//! registry's save_config plan places there (those not built on a bdev of a later subsystem),
//! closed by `bdev_wait_for_examine`.

use std::sync::Arc;

use keel_bdev::modules::{delay, error, malloc, null, passthru, uring};
use keel_bdev::{BdevError, BdevRegistry};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{Ctx, Reply};
use crate::decode::{decode_internal, params};
use crate::error::RpcError;
use crate::retry::retry_every;
use crate::table::{method, Subsystem, Table};

/// The bdev modules' methods and the `"bdev"` subsystem.
pub(crate) static TABLE: Table = Table {
    methods: &[
        method!(bdev_malloc_create, Runtime),
        method!(bdev_malloc_delete, Runtime),
        method!(bdev_null_create, Runtime),
        method!(bdev_null_delete, Runtime),
        method!(bdev_uring_create, Runtime),
        method!(bdev_uring_delete, Runtime),
        method!(bdev_aio_create, Runtime),
        method!(bdev_aio_delete, Runtime),
        method!(bdev_error_create, Runtime),
        method!(bdev_error_delete, Runtime),
        method!(bdev_error_inject_error, Runtime),
        method!(bdev_delay_create, Runtime),
        method!(bdev_delay_delete, Runtime),
        method!(bdev_delay_update_latency, Runtime),
        method!(bdev_passthru_create, Runtime),
        method!(bdev_passthru_delete, Runtime),
        method!(bdev_wait_for_examine, Runtime),
        method!(bdev_examine, Runtime),
        method!(bdev_set_options, Startup),
    ],
    // Every bdev's own constructor call, in the order the registry's save_config plan gives;
    // configurations end the subsystem waiting for examinations (md's auto-assembly), as SPDK's.
    subsystem: Some(Subsystem {
        declared: keel_bdev::Subsystem::BDEV,
        load: None,
        closing: &["bdev_wait_for_examine"],
    }),
};

/// The RPC error of a bdev-layer error. A base that is taken (claimed, or open for writing by
/// someone else) is named with who holds it ([`BdevRegistry::holders`]): "bdev 'M0' is claimed by
/// module 'dm' (held by dm device 'x' (live table))".
fn rpc_error(reg: &BdevRegistry, e: BdevError) -> RpcError {
    let holders = match &e {
        BdevError::Claimed { name, .. } | BdevError::HasWriters { name, .. } => {
            reg.get(name).map(|b| reg.holders(&b)).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let mut err = RpcError::from(e);
    if !holders.is_empty() {
        err.message = format!("{} (held by {})", err.message, holders.join(", "));
    }
    err
}

fn create_with<T: DeserializeOwned>(
    ctx: &Ctx,
    params: Option<Value>,
    reply: Reply,
    f: impl FnOnce(&T) -> Result<Value, BdevError>,
) {
    match decode_internal::<T>(params) {
        Ok(opts) => reply(f(&opts).map_err(|e| rpc_error(&ctx.registry, e))),
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
            reply(Err(rpc_error(&ctx.registry, e)))
        }
    }
}

fn bdev_malloc_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    create_with(ctx, params, reply, |o: &malloc::MallocOpts| {
        malloc::create(&ctx.registry, o).map(|b| json!(b.name()))
    })
}
fn bdev_malloc_delete(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    delete_with(params, reply, ctx, malloc::delete)
}
fn bdev_null_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    create_with(ctx, params, reply, |o: &null::NullOpts| {
        null::create(&ctx.registry, o).map(|b| json!(b.name()))
    })
}
fn bdev_null_delete(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    delete_with(params, reply, ctx, null::delete)
}
fn bdev_uring_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    create_with(ctx, params, reply, |o: &uring::UringOpts| {
        uring::create(&ctx.registry, o).map(|b| json!(b.name()))
    })
}
fn bdev_uring_delete(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    delete_with(params, reply, ctx, uring::delete)
}
fn bdev_aio_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    create_with(ctx, params, reply, |o: &uring::AioOpts| {
        uring::create_aio(&ctx.registry, o).map(|b| json!(b.name()))
    })
}
fn bdev_aio_delete(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    delete_with(params, reply, ctx, uring::delete_aio)
}
fn bdev_error_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    // SPDK answers `true` here, not the name.
    create_with(ctx, params, reply, |o: &error::ErrorOpts| {
        error::create(&ctx.registry, o).map(|_| json!(true))
    })
}
fn bdev_error_delete(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    delete_with(params, reply, ctx, error::delete)
}
fn bdev_error_inject_error(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    create_with(ctx, params, reply, |o: &error::InjectOpts| {
        error::inject(&ctx.registry, o).map(|_| json!(true))
    })
}
fn bdev_delay_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    create_with(ctx, params, reply, |o: &delay::DelayOpts| {
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
    create_with(ctx, params, reply, |o: &DelayUpdate| {
        delay::update_latency(&ctx.registry, &o.delay_bdev_name, &o.latency_type, o.latency_us).map(|_| json!(true))
    })
}

fn bdev_passthru_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    create_with(ctx, params, reply, |o: &passthru::PassthruOpts| {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExamineParams {
    name: String,
}

/// SPDK's `bdev_examine {name}`: asks the modules to examine a bdev when automatic examination
/// is off. Keel always examines every bdev as it registers (md's auto-assembly, split
/// configurations), so — as SPDK answers while `bdev_auto_examine` is on — a manual examine is
/// refused (-EINVAL) with the reason; an unknown bdev is -ENODEV.
fn bdev_examine(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: ExamineParams = params!(params, reply);
    if ctx.registry.get(&p.name).is_none() {
        return reply(Err(RpcError::from_errno(-19, format!("bdev '{}' not found", p.name))));
    }
    reply(Err(RpcError::from_errno(
        -22,
        "Manual examine is not allowed if auto examine is enabled (Keel always examines bdevs as they register)",
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BdevOptions {
    #[serde(default)]
    bdev_io_pool_size: Option<u32>,
    #[serde(default)]
    bdev_io_cache_size: Option<u32>,
    #[serde(default)]
    bdev_auto_examine: Option<bool>,
    #[serde(default)]
    iobuf_small_cache_size: Option<u32>,
    #[serde(default)]
    iobuf_large_cache_size: Option<u32>,
}

/// SPDK's `bdev_set_options` (STARTUP only, as SPDK). Keel has no global bdev_io pool or iobuf
/// caches — every job, export and layer owns request pools sized at channel creation — so the
/// sizes are checked as SPDK checks them (a cache of at least one entry, a pool that can fill
/// it) and accepted with nothing to apply; `bdev_auto_examine: false` is refused, because Keel
/// always examines (md's auto-assembly depends on it).
fn bdev_set_options(_ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: BdevOptions = params!(params, reply);
    if p.bdev_auto_examine == Some(false) {
        return reply(Err(RpcError::from_errno(
            -22,
            "bdev_auto_examine false is not supported: Keel always examines bdevs as they register",
        )));
    }
    if p.bdev_io_pool_size == Some(0) || p.bdev_io_cache_size == Some(0) {
        return reply(Err(RpcError::from_errno(
            -22,
            "bdev_io_pool_size and bdev_io_cache_size must be at least 1",
        )));
    }
    tracing::info!(
        pool = ?p.bdev_io_pool_size,
        cache = ?p.bdev_io_cache_size,
        small = ?p.iobuf_small_cache_size,
        large = ?p.iobuf_large_cache_size,
        "bdev_set_options: Keel has no global bdev_io pool or iobuf caches; nothing to apply"
    );
    reply(Ok(json!(true)))
}
