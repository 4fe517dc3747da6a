//! The split module's methods (SPDK's `bdev_split_create` / `bdev_split_delete`). The parts
//! and pending configurations are saved by the split module itself, inside `"bdev"`
//! (`keel_bdev::modules::split`), so this table serves no subsystem of its own.

use std::sync::{Arc, Mutex};

use keel_bdev::modules::split::{self, SplitDeleteOpts, SplitOpts};
use serde_json::{json, Value};

use crate::context::{Ctx, Reply};
use crate::decode::decode_internal;
use crate::error::RpcError;
use crate::table::{method, Table};

/// The split methods.
pub(crate) static TABLE: Table = Table {
    methods: &[method!(bdev_split_create, Runtime), method!(bdev_split_delete, Runtime)],
    subsystem: None,
};

/// Answers the names of the parts (an empty list while the base does not exist yet), as SPDK.
fn bdev_split_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let opts: SplitOpts = match decode_internal(params) {
        Ok(o) => o,
        Err(e) => return reply(Err(e)),
    };
    let r = split::module(&ctx.registry).create(&ctx.registry, &opts);
    reply(r.map(|names| json!(names)).map_err(RpcError::from))
}

/// Answers `true` once every part is gone.
fn bdev_split_delete(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let opts: SplitDeleteOpts = match decode_internal(params) {
        Ok(o) => o,
        Err(e) => return reply(Err(e)),
    };
    let slot = Arc::new(Mutex::new(Some(reply)));
    let s2 = slot.clone();
    let r = split::module(&ctx.registry).delete(&ctx.registry, &opts.base_bdev, move || {
        if let Some(reply) = s2.lock().unwrap_or_else(|e| e.into_inner()).take() {
            reply(Ok(json!(true)))
        }
    });
    if let Err(e) = r {
        if let Some(reply) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
            reply(Err(RpcError::from(e)))
        }
    }
}
