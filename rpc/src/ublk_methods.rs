//! SPDK's ublk methods (keel-ublk): bdevs as the kernel's `/dev/ublkbN`. SPDK's own names,
//! params and results, so the stock `spdk-rpc` drives them without a plugin; saved by
//! save_config in the `"ublk"` subsystem. Handlers run on the main reactor.
//!
//! | method | params | result |
//! |---|---|---|
//! | `ublk_create_target` | `cpumask`? (default: every reactor), `disable_user_copy`? (Keel never uses user copy) | `true` |
//! | `ublk_destroy_target` | – | `true`, once every disk is deleted |
//! | `ublk_start_disk` | `bdev_name`, `ublk_id`, `num_queues`? (1, max 32), `queue_depth`? (128, max 1024) | `ublk_id`, once `/dev/ublkbN` exists |
//! | `ublk_stop_disk` | `ublk_id` | `true`, once the device is deleted and the bdev released |
//! | `ublk_get_disks` | `ublk_id`? (absent or 0: all) | `[{ublk_device, id, queue_depth, num_queues, bdev_name}]` |
//! | `ublk_recover_disk` | `bdev_name`, `ublk_id` | `ublk_id`, once the disk a dead server left is served again |
//!
//! Errors (negative errno, as SPDK): -16 a target that exists, an id in use, a disk being
//! started or stopped; -19 no target, an unknown bdev or disk; -2 `ublk_destroy_target`
//! without a target; -22 bad sizes or cpumask, a recovery bdev that does not match the disk;
//! -95 (ENOTSUP) recovering a disk made without user recovery; the OS's errno where the kernel refuses (e.g.
//! -2 when `/dev/ublk-control` is missing: no `ublk_drv`). Malformed params: -32603
//! "spdk_json_decode_object failed", as SPDK.

use keel_ublk::{StartDisk, UblkError, UblkTarget};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{Ctx, Reply};
use crate::decode::{no_params, params};
use crate::error::{RpcError, INTERNAL_ERROR};
use crate::table::{load_module, method, Subsystem, Table};

/// The ublk methods and the `"ublk"` subsystem.
pub(crate) static TABLE: Table = Table {
    methods: &[
        method!(ublk_create_target, Runtime),
        method!(ublk_destroy_target, Runtime),
        method!(ublk_start_disk, Runtime),
        method!(ublk_stop_disk, Runtime),
        method!(ublk_get_disks, Runtime),
        method!(ublk_recover_disk, Runtime),
    ],
    subsystem: Some(Subsystem {
        declared: keel_ublk::SUBSYSTEM,
        load: Some(load_module::<UblkTarget>),
        closing: &[],
    }),
};

fn ublk_err(e: UblkError) -> RpcError {
    RpcError::from_errno(e.errno(), e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTarget {
    #[serde(default)]
    cpumask: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    disable_user_copy: bool,
}

fn ublk_create_target(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: CreateTarget = match params {
        None => CreateTarget {
            cpumask: None,
            disable_user_copy: false,
        },
        some => params!(some, INTERNAL_ERROR, reply),
    };
    reply(
        UblkTarget::of(&ctx.registry)
            .create_target(p.cpumask.as_deref())
            .map(|()| json!(true))
            .map_err(ublk_err),
    )
}

fn ublk_destroy_target(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    if let Err(e) = no_params(params) {
        return reply(Err(e));
    }
    UblkTarget::of(&ctx.registry).destroy_target(move |r| reply(r.map(|()| json!(true)).map_err(ublk_err)));
}

fn default_queues() -> u16 {
    1
}

fn default_depth() -> u16 {
    128
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartParams {
    bdev_name: String,
    ublk_id: u32,
    #[serde(default = "default_queues")]
    num_queues: u16,
    #[serde(default = "default_depth")]
    queue_depth: u16,
}

fn ublk_start_disk(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: StartParams = params!(params, INTERNAL_ERROR, reply);
    let start = StartDisk {
        bdev_name: p.bdev_name,
        ublk_id: p.ublk_id,
        num_queues: p.num_queues,
        queue_depth: p.queue_depth,
    };
    UblkTarget::of(&ctx.registry).start_disk(&start, move |r| reply(r.map(Value::from).map_err(ublk_err)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverParams {
    bdev_name: String,
    ublk_id: u32,
}

fn ublk_recover_disk(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: RecoverParams = params!(params, INTERNAL_ERROR, reply);
    UblkTarget::of(&ctx.registry).recover_disk(&p.bdev_name, p.ublk_id, move |r| {
        reply(r.map(Value::from).map_err(ublk_err))
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopParams {
    ublk_id: u32,
}

fn ublk_stop_disk(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: StopParams = params!(params, INTERNAL_ERROR, reply);
    UblkTarget::of(&ctx.registry).stop_disk(p.ublk_id, move |r| reply(r.map(|()| json!(true)).map_err(ublk_err)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetDisks {
    #[serde(default)]
    ublk_id: Option<u32>,
}

fn ublk_get_disks(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetDisks = match params {
        None => GetDisks { ublk_id: None },
        some => params!(some, INTERNAL_ERROR, reply),
    };
    let want = p.ublk_id.filter(|&id| id != 0);
    let shown: Vec<Value> = UblkTarget::of(&ctx.registry)
        .disks()
        .iter()
        .filter(|d| want.is_none_or(|id| id == d.id))
        .map(|d| {
            json!({
                "ublk_device": d.ublk_device,
                "id": d.id,
                "queue_depth": d.queue_depth,
                "num_queues": d.num_queues,
                "bdev_name": d.bdev_name,
            })
        })
        .collect();
    if want.is_some() && shown.is_empty() {
        return reply(Err(RpcError::from_errno(-libc::ENODEV, "No such device")));
    }
    reply(Ok(Value::Array(shown)))
}
