//! Device-mapper RPC methods (Keel's own; `spdk-rpc --plugin keel_rpc` subcommands mirror
//! dmsetup's verbs). Handlers run on the main reactor and work on the [`DmRegistry`] of the
//! context's bdev registry (dm's bdev module), and the file serves dm's `"dm"` save_config
//! subsystem.
//!
//! | method | params | result |
//! |---|---|---|
//! | `dm_create` | `name`, `table`?, `uuid`?, `readonly`?, `bdev_uuid`?, `minor`? | the name |
//! | `dm_load` | `name`, `table`, `readonly`? | `true` |
//! | `dm_suspend` | `name`, `noflush`?, `timeout_ms`? | `true` (once drained) |
//! | `dm_resume` | `name`, `timeout_ms`? | `true` |
//! | `dm_clear` | `name` | `true` |
//! | `dm_remove` | `name`, `force`? | `true` (once the claims are released) |
//! | `dm_rename` | `name`, `new_name` or `new_uuid` | `true` |
//! | `dm_info` | `name`? | an info object (an array of them without `name`) |
//! | `dm_table` | `name`?, `inactive`? | dmsetup's `table` text |
//! | `dm_status` | `name`? | dmsetup's `status` text |
//! | `dm_message` | `name`, `sector`, `message` | the target's answer (`""` if none) |
//! | `dm_deps` | `name` | array of bdev names |
//! | `dm_list_devices` | – | array of `{name, major, minor}` in name order |
//! | `dm_list_targets` | – | array of `{name, version: [maj, min, patch]}` |
//! | `dm_wait` | `name`, `event_nr`?, `timeout_ms`? | the info object once the event number differs |
//!
//! Errors carry Linux's errno for the same failure: -6 (ENXIO) for an unknown device, -16 (EBUSY)
//! for names/uuids in use and open devices, -22 (EINVAL) for tables (the message names the line
//! and field) and bad values, -110 for a `dm_wait` that timed out and for a suspend (or a
//! resume's table swap) whose in-flight I/O did not drain within `timeout_ms` (default
//! [`keel_dm::DRAIN_BOUND`], 10 s; 0 waits as long as it takes, as Linux) — the device then runs
//! again unchanged; malformed params are -32602.

use keel_bdev::modules::parse_uuid;
use keel_dm::{CreateOpts, DmError, DmInfo, DmRegistry};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{Ctx, Reply};
use crate::decode::{no_params, params};
use crate::error::RpcError;
use crate::table::{load_module, method, Subsystem, Table};

/// The dm methods and the `"dm"` subsystem (after `"bdev"`: devices map bdevs).
pub(crate) static TABLE: Table = Table {
    methods: &[
        method!(dm_create, Runtime),
        method!(dm_load, Runtime),
        method!(dm_suspend, Runtime),
        method!(dm_resume, Runtime),
        method!(dm_clear, Runtime),
        method!(dm_remove, Runtime),
        method!(dm_rename, Runtime),
        method!(dm_info, Runtime),
        method!(dm_table, Runtime),
        method!(dm_status, Runtime),
        method!(dm_message, Runtime),
        method!(dm_deps, Runtime),
        method!(dm_list_devices, Runtime),
        method!(dm_list_targets, Runtime),
        method!(dm_wait, Runtime),
    ],
    // dm's own calls (`dm_create`, `dm_load`, `dm_suspend`) and the bdevs built on mapped
    // devices, as the registry's save_config plan places them.
    subsystem: Some(Subsystem {
        declared: keel_dm::SUBSYSTEM,
        load: Some(load_module::<DmRegistry>),
        closing: &[],
    }),
};

fn dm_err(e: DmError) -> RpcError {
    RpcError::from_errno(e.errno(), e.to_string())
}

/// The context's dm module (created on first use).
fn reg(ctx: &Ctx) -> std::sync::Arc<DmRegistry> {
    ctx.registry.module::<DmRegistry>()
}

/// A one-shot reply for dm's asynchronous operations.
fn done_with(reply: Reply, value: Value) -> impl FnOnce(Result<(), DmError>) + Send + 'static {
    move |r| reply(r.map(|()| value).map_err(dm_err))
}

/// The JSON of a device's info (dmsetup info's fields).
pub fn info_json(i: &DmInfo) -> Value {
    json!({
        "name": i.name,
        "uuid": i.uuid,
        "state": i.state(),
        "suspended": i.suspended,
        "read_only": i.read_only,
        "tables_present": i.tables_present(),
        "attr": i.attr(),
        "open_count": i.open_count,
        "event_nr": i.event_nr,
        "major": i.major,
        "minor": i.minor,
        "target_count": i.target_count,
        "read_ahead": i.read_ahead_sectors,
        "size_sectors": i.size_sectors,
        "block_size": i.block_size,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    name: String,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    readonly: bool,
    #[serde(default)]
    bdev_uuid: Option<String>,
    #[serde(default)]
    minor: Option<u32>,
}

fn dm_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Create = params!(params, reply);
    let bdev_uuid = match parse_uuid("bdev_uuid", p.bdev_uuid.as_deref()) {
        Ok(u) => u,
        Err(e) => return reply(Err(e.into())),
    };
    let name = p.name.clone();
    reg(ctx).create(
        CreateOpts {
            name: p.name,
            table: p.table,
            uuid: p.uuid,
            readonly: p.readonly,
            bdev_uuid,
            minor: p.minor,
        },
        done_with(reply, json!(name)),
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Load {
    name: String,
    table: String,
    #[serde(default)]
    readonly: bool,
}

fn dm_load(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Load = params!(params, reply);
    reply(
        reg(ctx)
            .load(&p.name, &p.table, p.readonly)
            .map(|()| json!(true))
            .map_err(dm_err),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Suspend {
    name: String,
    #[serde(default)]
    noflush: bool,
    timeout_ms: Option<u64>,
}

/// The drain bound of a suspend or swap: `timeout_ms` (0 = none, as Linux) or dm's default.
fn drain_bound(timeout_ms: Option<u64>) -> Option<std::time::Duration> {
    match timeout_ms {
        None => Some(keel_dm::DRAIN_BOUND),
        Some(0) => None,
        Some(ms) => Some(std::time::Duration::from_millis(ms)),
    }
}

fn dm_suspend(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Suspend = params!(params, reply);
    reg(ctx).suspend_within(
        &p.name,
        p.noflush,
        drain_bound(p.timeout_ms),
        done_with(reply, json!(true)),
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Name {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resume {
    name: String,
    timeout_ms: Option<u64>,
}

fn dm_resume(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Resume = params!(params, reply);
    reg(ctx).resume_within(&p.name, drain_bound(p.timeout_ms), done_with(reply, json!(true)));
}

fn dm_clear(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Name = params!(params, reply);
    reply(reg(ctx).clear(&p.name).map(|()| json!(true)).map_err(dm_err))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Remove {
    name: String,
    #[serde(default)]
    force: bool,
}

fn dm_remove(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Remove = params!(params, reply);
    reg(ctx).remove(&p.name, p.force, done_with(reply, json!(true)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rename {
    name: String,
    #[serde(default)]
    new_name: Option<String>,
    #[serde(default)]
    new_uuid: Option<String>,
}

fn dm_rename(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Rename = params!(params, reply);
    match (p.new_name, p.new_uuid) {
        (Some(n), None) => reg(ctx).rename(&p.name, &n, done_with(reply, json!(true))),
        (None, Some(u)) => reply(reg(ctx).set_uuid(&p.name, &u).map(|()| json!(true)).map_err(dm_err)),
        _ => reply(Err(RpcError::invalid_params(
            "Invalid parameters: exactly one of new_name and new_uuid is required",
        ))),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MaybeName {
    #[serde(default)]
    name: Option<String>,
}

fn dm_info(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: MaybeName = params!(params, reply);
    let r = reg(ctx);
    reply(match p.name {
        Some(n) => r.info(&n).map(|i| info_json(&i)).map_err(dm_err),
        None => Ok(Value::Array(r.list().iter().map(info_json).collect())),
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TableParams {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    inactive: bool,
}

fn dm_table(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: TableParams = params!(params, reply);
    reply(
        reg(ctx)
            .table(p.name.as_deref(), p.inactive)
            .map(Value::String)
            .map_err(dm_err),
    )
}

fn dm_status(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: MaybeName = params!(params, reply);
    reply(reg(ctx).status(p.name.as_deref()).map(Value::String).map_err(dm_err))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    name: String,
    sector: u64,
    message: String,
}

fn dm_message(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Message = params!(params, reply);
    reply(
        reg(ctx)
            .message(&p.name, p.sector, &p.message)
            .map(|a| json!(a.unwrap_or_default()))
            .map_err(dm_err),
    )
}

fn dm_deps(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Name = params!(params, reply);
    reply(reg(ctx).deps(&p.name).map(|d| json!(d)).map_err(dm_err))
}

fn dm_list_devices(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    if let Err(e) = no_params(params) {
        return reply(Err(e));
    }
    let v: Vec<Value> = reg(ctx)
        .list()
        .iter()
        .map(|i| json!({"name": i.name, "major": i.major, "minor": i.minor}))
        .collect();
    reply(Ok(Value::Array(v)))
}

fn dm_list_targets(_ctx: &Ctx, params: Option<Value>, reply: Reply) {
    if let Err(e) = no_params(params) {
        return reply(Err(e));
    }
    let v: Vec<Value> = DmRegistry::target_versions()
        .iter()
        .map(|(n, (a, b, c))| json!({"name": n, "version": [a, b, c]}))
        .collect();
    reply(Ok(Value::Array(v)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wait {
    name: String,
    #[serde(default)]
    event_nr: u32,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn dm_wait(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Wait = params!(params, reply);
    let timeout_us = p.timeout_ms.map(|ms| ms.saturating_mul(1000));
    reg(ctx).wait(&p.name, p.event_nr, timeout_us, move |r| {
        reply(r.map(|i| info_json(&i)).map_err(dm_err))
    });
}
