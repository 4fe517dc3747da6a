//! The NBD server's methods (Keel's own; `spdk-rpc --plugin keel_rpc` subcommands of the same
//! names) and the `"nbd"` subsystem. Handlers run on the main reactor and work on the
//! [`NbdServer`] of the context's bdev registry.
//!
//! | method | params | result |
//! |---|---|---|
//! | `nbd_server_start` | `listen`: `"HOST:PORT"` (port 10809 when omitted) or `"unix:/path"` | the address as bound (`"IP:PORT"`, the real port when 0 was asked) |
//! | `nbd_server_stop` | `listen` | `true` (the listener is closed; its connections end) |
//! | `nbd_server_get_listeners` | – | array of addresses |
//! | `nbd_server_add_export` | `bdev_name`, `name`?, `description`?, `read_only`? | the export's name (default: the bdev's) |
//! | `nbd_server_remove_export` | `name`, `force`? | `true` once the last connection closed |
//! | `nbd_server_get_exports` | – | array of `{name, bdev_name, description, read_only, connections: [{id, peer, core}]}` |
//!
//! Errors: -19 unknown export, listener or bdev; -17 an export or listener that exists; -16 an
//! export with connections (without `force`) or a bdev claimed by a module; -22 a bad address
//! or name; an OS error's own number for a failed bind (-98 address in use); malformed params
//! -32602.

use keel_nbd::{ExportOpts, NbdError, NbdServer};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{Ctx, Reply};
use crate::decode::{no_params, params};
use crate::error::RpcError;
use crate::table::{load_module, method, Subsystem, Table};

/// The NBD methods and the `"nbd"` subsystem (after `"bdev"` and `"dm"`: exports name bdevs).
pub(crate) static TABLE: Table = Table {
    methods: &[
        method!(nbd_server_start, Runtime),
        method!(nbd_server_stop, Runtime),
        method!(nbd_server_get_listeners, Runtime),
        method!(nbd_server_add_export, Runtime),
        method!(nbd_server_remove_export, Runtime),
        method!(nbd_server_get_exports, Runtime),
    ],
    subsystem: Some(Subsystem {
        declared: keel_nbd::server::SUBSYSTEM,
        load: Some(load_module::<NbdServer>),
        closing: &[],
    }),
};

/// Loads the NBD module into `ctx`'s registry, so that save_config lists its subsystem even
/// before the first export (keel-tgt calls it at start).
pub fn load(registry: &std::sync::Arc<keel_bdev::BdevRegistry>) {
    NbdServer::of(registry);
}

fn server(ctx: &Ctx) -> std::sync::Arc<NbdServer> {
    NbdServer::of(&ctx.registry)
}

fn nbd_err(e: NbdError) -> RpcError {
    RpcError::from_errno(e.errno(), e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Listen {
    listen: String,
}

fn nbd_server_start(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Listen = params!(params, reply);
    reply(server(ctx).start_listener(&p.listen).map(Value::from).map_err(nbd_err))
}

fn nbd_server_stop(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Listen = params!(params, reply);
    reply(
        server(ctx)
            .stop_listener(&p.listen)
            .map(|()| json!(true))
            .map_err(nbd_err),
    )
}

fn nbd_server_get_listeners(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    if let Err(e) = no_params(params) {
        return reply(Err(e));
    }
    reply(Ok(json!(server(ctx).listeners())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddExport {
    bdev_name: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    read_only: bool,
}

fn nbd_server_add_export(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: AddExport = params!(params, reply);
    let opts = ExportOpts {
        bdev_name: p.bdev_name,
        name: p.name,
        description: p.description,
        read_only: p.read_only,
    };
    reply(server(ctx).add_export(&opts).map(Value::from).map_err(nbd_err))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveExport {
    name: String,
    #[serde(default)]
    force: bool,
}

fn nbd_server_remove_export(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: RemoveExport = params!(params, reply);
    server(ctx).remove_export(&p.name, p.force, move |r| {
        reply(r.map(|()| json!(true)).map_err(nbd_err))
    });
}

fn nbd_server_get_exports(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    if let Err(e) = no_params(params) {
        return reply(Err(e));
    }
    let exports: Vec<Value> = server(ctx)
        .exports()
        .into_iter()
        .map(|e| {
            let conns: Vec<Value> = e
                .connections
                .iter()
                .map(|c| json!({"id": c.id, "peer": c.peer, "core": c.core}))
                .collect();
            json!({
                "name": e.name,
                "bdev_name": e.bdev_name,
                "description": e.description,
                "read_only": e.read_only,
                "connections": conns,
            })
        })
        .collect();
    reply(Ok(json!(exports)))
}
