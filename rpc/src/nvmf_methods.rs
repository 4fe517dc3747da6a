//! The NVMe-oF target's methods (SPDK's `nvmf_*`, with SPDK's params, results and error codes)
//! and the `"nvmf"` subsystem. Handlers run on the main reactor and work on the
//! [`NvmfTarget`] of the context's bdev registry.
//!
//! | method | params | result |
//! |---|---|---|
//! | `nvmf_create_transport` | `trtype` (`TCP`), `max_queue_depth`?, `max_io_qpairs_per_ctrlr`?, `in_capsule_data_size`?, `max_io_size`?, `io_unit_size`?, `max_aq_depth`?, `num_shared_buffers`?, `buf_cache_size`?, `c2h_success`?, `sock_priority`?, `abort_timeout_sec`?, and the keys rpc.py always sends | `true` |
//! | `nvmf_get_transports` | `trtype`?, `tgt_name`? | array of the transport's options |
//! | `nvmf_create_subsystem` | `nqn`, `serial_number`?, `model_number`?, `allow_any_host`?, `max_namespaces`?, `min_cntlid`?, `max_cntlid`?, … | `true` |
//! | `nvmf_delete_subsystem` | `nqn` | `true` |
//! | `nvmf_subsystem_add_ns` | `nqn`, `namespace: {bdev_name, nsid?, nguid?, eui64?, uuid?}` | the NSID |
//! | `nvmf_subsystem_remove_ns` | `nqn`, `nsid` | `true` |
//! | `nvmf_subsystem_add_listener` / `remove_listener` | `nqn`, `listen_address: {trtype, traddr, adrfam?, trsvcid?}` | `true` |
//! | `nvmf_subsystem_add_host` / `remove_host` | `nqn`, `host` | `true` |
//! | `nvmf_subsystem_allow_any_host` | `nqn`, `allow_any_host` | `true` |
//! | `nvmf_get_subsystems` | `nqn`? | array of subsystems |
//! | `nvmf_subsystem_get_controllers` / `get_qpairs` / `get_listeners` | `nqn` | arrays |
//!
//! Errors, as SPDK's nvmf methods: -32602 "Invalid parameters…" for malformed params, unknown
//! subsystems, namespaces, hosts and listeners, duplicates, an unsupported transport type or a
//! failed bind; -32603 "Unable to create subsystem …" when a subsystem cannot be created.
//! Features Keel's target does not have (ANA reporting, passthrough, TLS, DH-HMAC-CHAP, PSKs,
//! several targets) are refused with -32602 rather than accepted and ignored.

use keel_nvmf::config::parse_hex;
use keel_nvmf::{ListenAddress, NsOpts, NvmfError, NvmfTarget, SubsystemOpts, TransportOpts};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{Ctx, Reply};
use crate::decode::params;
use crate::error::RpcError;
use crate::table::{load_module, method, Subsystem, Table};

/// The NVMe-oF methods and the `"nvmf"` subsystem (after `"bdev"`: namespaces name bdevs).
pub(crate) static TABLE: Table = Table {
    methods: &[
        method!(nvmf_create_transport, Runtime),
        method!(nvmf_get_transports, Runtime),
        method!(nvmf_create_subsystem, Runtime),
        method!(nvmf_delete_subsystem, Runtime),
        method!(nvmf_subsystem_add_ns, Runtime),
        method!(nvmf_subsystem_remove_ns, Runtime),
        method!(nvmf_subsystem_add_listener, Runtime),
        method!(nvmf_subsystem_remove_listener, Runtime),
        method!(nvmf_subsystem_add_host, Runtime),
        method!(nvmf_subsystem_remove_host, Runtime),
        method!(nvmf_subsystem_allow_any_host, Runtime),
        method!(nvmf_get_subsystems, Runtime),
        method!(nvmf_subsystem_get_controllers, Runtime),
        method!(nvmf_subsystem_get_qpairs, Runtime),
        method!(nvmf_subsystem_get_listeners, Runtime),
    ],
    subsystem: Some(Subsystem {
        declared: keel_nvmf::target::SUBSYSTEM,
        load: Some(load_module::<NvmfTarget>),
        closing: &[],
    }),
};

fn target(ctx: &Ctx) -> std::sync::Arc<NvmfTarget> {
    NvmfTarget::of(&ctx.registry)
}

fn err(e: NvmfError) -> RpcError {
    RpcError::new(e.rpc_code(), e.to_string())
}

fn invalid(why: impl std::fmt::Display) -> RpcError {
    RpcError::new(-32602, format!("Invalid parameters: {why}"))
}

fn done(r: Result<(), NvmfError>) -> Result<Value, RpcError> {
    r.map(|()| json!(true)).map_err(err)
}

/// Only the default target exists: a `tgt_name` naming another is refused.
fn check_tgt(tgt_name: &Option<String>) -> Result<(), RpcError> {
    match tgt_name {
        Some(n) if n != "nvmf_tgt" => Err(RpcError::new(-32603, "Unable to find a target.")),
        _ => Ok(()),
    }
}

macro_rules! tgt_ok {
    ($p:expr, $reply:expr) => {
        if let Err(e) = check_tgt(&$p.tgt_name) {
            return $reply(Err(e));
        }
    };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTransport {
    trtype: String,
    tgt_name: Option<String>,
    max_queue_depth: Option<u16>,
    max_io_qpairs_per_ctrlr: Option<u16>,
    in_capsule_data_size: Option<u32>,
    max_io_size: Option<u32>,
    io_unit_size: Option<u32>,
    max_aq_depth: Option<u16>,
    num_shared_buffers: Option<u32>,
    buf_cache_size: Option<u32>,
    c2h_success: Option<bool>,
    sock_priority: Option<u32>,
    abort_timeout_sec: Option<u32>,
    // Sent by rpc.py or meaningful to other transports; accepted as SPDK's TCP transport does.
    iobuf_small_cache_size: Option<u32>,
    iobuf_large_cache_size: Option<u32>,
    num_cqe: Option<i32>,
    max_srq_depth: Option<i32>,
    no_srq: Option<bool>,
    zcopy: Option<bool>,
    dif_insert_or_strip: Option<bool>,
    no_wr_batching: Option<bool>,
    disable_mappable_bar0: Option<bool>,
    disable_adaptive_irq: Option<bool>,
    disable_shadow_doorbells: Option<bool>,
    disable_command_passthru: Option<bool>,
    acceptor_backlog: Option<i32>,
    control_msg_num: Option<u32>,
    acceptor_poll_rate: Option<u32>,
    ack_timeout: Option<u32>,
    data_wr_pool_size: Option<u32>,
    kas: Option<u32>,
    min_kato: Option<u32>,
    masked_oncs: Option<Vec<String>>,
    masked_fuses: Option<Vec<String>>,
}

fn nvmf_create_transport(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: CreateTransport = params!(params, reply);
    tgt_ok!(p, reply);
    if !p.trtype.eq_ignore_ascii_case("tcp") {
        return reply(Err(invalid(format!("Transport type '{}' unsupported", p.trtype))));
    }
    if p.zcopy == Some(true) || p.dif_insert_or_strip == Some(true) {
        return reply(Err(invalid("zcopy and dif_insert_or_strip are not supported")));
    }
    if p.masked_oncs.as_ref().is_some_and(|v| !v.is_empty()) || p.masked_fuses.as_ref().is_some_and(|v| !v.is_empty()) {
        return reply(Err(invalid("masked_oncs and masked_fuses are not supported")));
    }
    let _ = (
        p.iobuf_small_cache_size,
        p.iobuf_large_cache_size,
        p.num_cqe,
        p.max_srq_depth,
        p.no_srq,
        p.no_wr_batching,
        p.disable_mappable_bar0,
        p.disable_adaptive_irq,
        p.disable_shadow_doorbells,
        p.disable_command_passthru,
        p.acceptor_backlog,
        p.control_msg_num,
        p.acceptor_poll_rate,
        p.ack_timeout,
        p.data_wr_pool_size,
        p.kas,
        p.min_kato,
    );
    let d = TransportOpts::default();
    let opts = TransportOpts {
        max_queue_depth: p.max_queue_depth.unwrap_or(d.max_queue_depth),
        max_io_qpairs_per_ctrlr: p.max_io_qpairs_per_ctrlr.unwrap_or(d.max_io_qpairs_per_ctrlr),
        in_capsule_data_size: p.in_capsule_data_size.unwrap_or(d.in_capsule_data_size),
        max_io_size: p.max_io_size.unwrap_or(d.max_io_size),
        io_unit_size: p.io_unit_size.unwrap_or(d.io_unit_size),
        max_aq_depth: p.max_aq_depth.unwrap_or(d.max_aq_depth),
        num_shared_buffers: p.num_shared_buffers.unwrap_or(d.num_shared_buffers),
        buf_cache_size: p.buf_cache_size.unwrap_or(d.buf_cache_size),
        c2h_success: p.c2h_success.unwrap_or(d.c2h_success),
        sock_priority: p.sock_priority.unwrap_or(d.sock_priority),
        abort_timeout_sec: p.abort_timeout_sec.unwrap_or(d.abort_timeout_sec),
    };
    reply(done(target(ctx).create_transport(opts)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetTransports {
    trtype: Option<String>,
    tgt_name: Option<String>,
}

fn nvmf_get_transports(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetTransports = params!(params, reply);
    tgt_ok!(p, reply);
    let all = target(ctx).transports_json();
    if let Some(t) = &p.trtype {
        if !t.eq_ignore_ascii_case("tcp") || all.as_array().is_some_and(|a| a.is_empty()) {
            return reply(Err(RpcError::new(-19, "No such device")));
        }
    }
    reply(Ok(all))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSubsystem {
    nqn: String,
    tgt_name: Option<String>,
    serial_number: Option<String>,
    model_number: Option<String>,
    #[serde(default)]
    allow_any_host: bool,
    max_namespaces: Option<u32>,
    min_cntlid: Option<u16>,
    max_cntlid: Option<u16>,
    #[serde(default)]
    ana_reporting: bool,
    #[serde(default)]
    passthrough: bool,
    #[serde(default)]
    enable_nssr: bool,
    dmrsl: Option<u32>,
    wzsl: Option<u32>,
    admin_label: Option<String>,
}

fn nvmf_create_subsystem(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: CreateSubsystem = params!(params, reply);
    tgt_ok!(p, reply);
    if p.ana_reporting || p.passthrough || p.enable_nssr {
        return reply(Err(invalid(
            "ana_reporting, passthrough and enable_nssr are not supported",
        )));
    }
    let _ = (p.dmrsl, p.wzsl, p.admin_label);
    let d = SubsystemOpts::default();
    let opts = SubsystemOpts {
        serial_number: p.serial_number.unwrap_or(d.serial_number),
        model_number: p.model_number.unwrap_or(d.model_number),
        allow_any_host: p.allow_any_host,
        max_namespaces: match p.max_namespaces {
            None | Some(0) => d.max_namespaces,
            Some(n) => n,
        },
        min_cntlid: p.min_cntlid.unwrap_or(d.min_cntlid),
        max_cntlid: p.max_cntlid.unwrap_or(d.max_cntlid),
    };
    reply(done(target(ctx).create_subsystem(&p.nqn, opts)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Nqn {
    nqn: String,
    tgt_name: Option<String>,
}

fn nvmf_delete_subsystem(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Nqn = params!(params, reply);
    tgt_ok!(p, reply);
    reply(done(target(ctx).delete_subsystem(&p.nqn)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NsParams {
    bdev_name: String,
    nsid: Option<u32>,
    nguid: Option<String>,
    eui64: Option<String>,
    uuid: Option<String>,
    ptpl_file: Option<String>,
    anagrpid: Option<u32>,
    #[serde(default)]
    no_auto_visible: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNs {
    nqn: String,
    tgt_name: Option<String>,
    namespace: NsParams,
}

fn nvmf_subsystem_add_ns(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: AddNs = params!(params, reply);
    tgt_ok!(p, reply);
    let n = p.namespace;
    if n.ptpl_file.is_some() || n.anagrpid.is_some_and(|g| g > 1) || n.no_auto_visible {
        return reply(Err(invalid(
            "ptpl_file, ANA groups and no_auto_visible are not supported",
        )));
    }
    let opts = (|| -> Result<NsOpts, RpcError> {
        Ok(NsOpts {
            bdev_name: n.bdev_name.clone(),
            nsid: n.nsid.unwrap_or(0),
            nguid: n
                .nguid
                .as_deref()
                .map(|t| parse_hex::<16>("nguid", t))
                .transpose()
                .map_err(err)?,
            eui64: n
                .eui64
                .as_deref()
                .map(|t| parse_hex::<8>("eui64", t))
                .transpose()
                .map_err(err)?,
            uuid: n
                .uuid
                .as_deref()
                .map(|t| uuid::Uuid::parse_str(t).map_err(|_| invalid(format!("uuid '{t}' is not a UUID"))))
                .transpose()?,
        })
    })();
    match opts {
        Ok(o) => reply(target(ctx).add_ns(&p.nqn, &o).map(Value::from).map_err(err)),
        Err(e) => reply(Err(e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveNs {
    nqn: String,
    nsid: u32,
    tgt_name: Option<String>,
}

fn nvmf_subsystem_remove_ns(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: RemoveNs = params!(params, reply);
    tgt_ok!(p, reply);
    reply(done(target(ctx).remove_ns(&p.nqn, p.nsid)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenAddr {
    trtype: String,
    traddr: String,
    adrfam: Option<String>,
    trsvcid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Listener {
    nqn: String,
    tgt_name: Option<String>,
    listen_address: ListenAddr,
    #[serde(default)]
    secure_channel: bool,
    ana_state: Option<String>,
    sock_impl: Option<String>,
    numa_id: Option<i32>,
}

/// rpc.py rewrites the literal `discovery`; configuration files may still carry it.
fn nqn_of(nqn: &str) -> &str {
    if nqn == "discovery" {
        keel_nvme_proto::nqn::DISCOVERY_NQN
    } else {
        nqn
    }
}

fn listen_of(p: &Listener) -> Result<ListenAddress, RpcError> {
    if p.secure_channel {
        return Err(invalid("secure channels (TLS) are not supported"));
    }
    if p.ana_state.as_deref().is_some_and(|s| s != "optimized") || p.sock_impl.as_deref().is_some_and(|s| s != "posix")
    {
        return Err(invalid(
            "only the optimized ANA state and the posix socket implementation are supported",
        ));
    }
    let _ = p.numa_id;
    let a = &p.listen_address;
    ListenAddress::parse(&a.trtype, a.adrfam.as_deref(), &a.traddr, a.trsvcid.as_deref()).map_err(err)
}

fn nvmf_subsystem_add_listener(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Listener = params!(params, reply);
    tgt_ok!(p, reply);
    match listen_of(&p) {
        Ok(l) => reply(done(target(ctx).add_listener(nqn_of(&p.nqn), l))),
        Err(e) => reply(Err(e)),
    }
}

fn nvmf_subsystem_remove_listener(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Listener = params!(params, reply);
    tgt_ok!(p, reply);
    match listen_of(&p) {
        Ok(l) => reply(done(target(ctx).remove_listener(nqn_of(&p.nqn), &l))),
        Err(e) => reply(Err(e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Host {
    nqn: String,
    host: String,
    tgt_name: Option<String>,
    psk: Option<String>,
    dhchap_key: Option<String>,
    dhchap_ctrlr_key: Option<String>,
    timeout_ms: Option<u64>,
}

fn nvmf_subsystem_add_host(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Host = params!(params, reply);
    tgt_ok!(p, reply);
    if p.psk.is_some() || p.dhchap_key.is_some() || p.dhchap_ctrlr_key.is_some() {
        return reply(Err(invalid("PSKs and DH-HMAC-CHAP keys are not supported")));
    }
    reply(done(target(ctx).add_host(&p.nqn, &p.host)))
}

fn nvmf_subsystem_remove_host(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Host = params!(params, reply);
    tgt_ok!(p, reply);
    let _ = p.timeout_ms;
    reply(done(target(ctx).remove_host(&p.nqn, &p.host)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowAny {
    nqn: String,
    allow_any_host: bool,
    tgt_name: Option<String>,
}

fn nvmf_subsystem_allow_any_host(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: AllowAny = params!(params, reply);
    tgt_ok!(p, reply);
    reply(done(target(ctx).allow_any_host(&p.nqn, p.allow_any_host)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetSubsystems {
    nqn: Option<String>,
    tgt_name: Option<String>,
}

fn nvmf_get_subsystems(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetSubsystems = params!(params, reply);
    tgt_ok!(p, reply);
    reply(target(ctx).subsystems_json(p.nqn.as_deref()).map_err(err))
}

fn nvmf_subsystem_get_controllers(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Nqn = params!(params, reply);
    tgt_ok!(p, reply);
    reply(target(ctx).controllers_json(&p.nqn).map_err(err))
}

fn nvmf_subsystem_get_qpairs(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Nqn = params!(params, reply);
    tgt_ok!(p, reply);
    reply(target(ctx).qpairs_json(&p.nqn).map_err(err))
}

fn nvmf_subsystem_get_listeners(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Nqn = params!(params, reply);
    tgt_ok!(p, reply);
    reply(target(ctx).listeners_json(&p.nqn).map_err(err))
}
