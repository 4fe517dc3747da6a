//! SPDK's kernel NBD methods: a bdev attached to the kernel's `/dev/nbdX` through a socketpair
//! (keel-nbd's kernel disks). SPDK's own names, params and results, so the stock `spdk-rpc`
//! drives them without a plugin; saved by save_config in the `"nbd"` subsystem (the NBD
//! server's, as SPDK saves `nbd_start_disk` there). Handlers run on the main reactor.
//!
//! | method | params | result |
//! |---|---|---|
//! | `nbd_start_disk` | `bdev_name`, `nbd_device`? (default: the first free `/dev/nbdN`) | the device's path, once the kernel runs it |
//! | `nbd_stop_disk` | `nbd_device` | `true`, once the device is cleared and the bdev released |
//! | `nbd_get_disks` | `nbd_device`? | array of `{nbd_device, bdev_name}` |
//!
//! Errors (negative errno, as SPDK): -19 unknown bdev, no free device ("nbd device not
//! found"), `nbd_stop_disk` of a device that is not a disk ("invalid nbd device"),
//! `nbd_get_disks` of one ("No such device"); -16 a device that is a disk already or that
//! another process runs, a bdev claimed by a module; -22 a path that is not `/dev/nbdN` or a
//! block size the kernel's nbd does not take; an OS error's own number (e.g. -2 for a missing
//! device node). Malformed params: -32603 "spdk_json_decode_object failed", as SPDK.

use keel_nbd::{NbdError, NbdServer};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{Ctx, Reply};
use crate::decode::params;
use crate::error::{RpcError, INTERNAL_ERROR};
use crate::table::{method, Table};

/// The kernel NBD methods; they belong to the `"nbd"` subsystem that `nbd_methods` serves.
pub(crate) static TABLE: Table = Table {
    methods: &[
        method!(nbd_start_disk, Runtime),
        method!(nbd_stop_disk, Runtime),
        method!(nbd_get_disks, Runtime),
    ],
    subsystem: None,
};

fn nbd_err(e: NbdError) -> RpcError {
    RpcError::from_errno(e.errno(), e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartDisk {
    bdev_name: String,
    #[serde(default)]
    nbd_device: Option<String>,
}

fn nbd_start_disk(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: StartDisk = params!(params, INTERNAL_ERROR, reply);
    NbdServer::of(&ctx.registry).start_disk(&p.bdev_name, p.nbd_device.as_deref(), move |r| {
        reply(r.map(Value::from).map_err(nbd_err))
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopDisk {
    nbd_device: String,
}

fn nbd_stop_disk(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: StopDisk = params!(params, INTERNAL_ERROR, reply);
    NbdServer::of(&ctx.registry).stop_disk(&p.nbd_device, move |r| reply(r.map(|()| json!(true)).map_err(nbd_err)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetDisks {
    #[serde(default)]
    nbd_device: Option<String>,
}

fn nbd_get_disks(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetDisks = params!(params, INTERNAL_ERROR, reply);
    let disks = NbdServer::of(&ctx.registry).disks();
    let shown: Vec<Value> = disks
        .iter()
        .filter(|d| p.nbd_device.as_ref().is_none_or(|want| *want == d.nbd_device))
        .map(|d| json!({"nbd_device": d.nbd_device, "bdev_name": d.bdev_name}))
        .collect();
    if p.nbd_device.is_some() && shown.is_empty() {
        return reply(Err(RpcError::from_errno(-19, "No such device")));
    }
    reply(Ok(Value::Array(shown)))
}
