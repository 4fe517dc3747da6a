//! The NVMe bdev module's methods (SPDK's `bdev_nvme_*`, spdk-rpc.md §8.4). Handlers run on the
//! main reactor and work on the [`NvmeModule`] of the context's registry; its controllers and
//! their namespace bdevs belong to the `"bdev"` subsystem, where save_config writes
//! `bdev_nvme_set_options` and one `bdev_nvme_attach_controller` per controller.
//!
//! | method | params | result |
//! |---|---|---|
//! | `bdev_nvme_attach_controller` | `name`, `trtype`, `traddr`, `adrfam`?, `trsvcid`?, `subnqn`?, `hostnqn`?, `hdgst`?, `ddgst`?, `num_io_queues`?, `ctrlr_loss_timeout_sec`?, `reconnect_delay_sec`?, `fast_io_fail_timeout_sec`?, and the keys rpc.py always sends | array of the namespace bdev names |
//! | `bdev_nvme_detach_controller` | `name` (+ path filters) | `true` |
//! | `bdev_nvme_get_controllers` | `name`? | `[{name, ctrlrs: [{state, trid, cntlid, host}]}]` (PCIe: also `ctrlr_data`, the controller's identity) |
//! | `bdev_nvme_reset_controller` | `name`, `cntlid`? | `true` (PCIe controllers; fabrics ones -95) |
//! | `bdev_nvme_set_options` | SPDK's option keys | `true` |
//!
//! Errors: malformed params -32602 (a PCIe `traddr` that is not a PCI address too); a name in use
//! -17 (EEXIST); an unknown controller -19 (ENODEV); a failed connect -5 (EIO) naming the step;
//! a PCIe function that cannot be taken (not bound to vfio-pci, IOMMU group not viable,
//! RLIMIT_MEMLOCK too low) -5 with a message that says what to do (scripts/nvme-bind.sh, ulimit).
//! Options that need features Keel's initiator lacks (TLS PSKs, DH-HMAC-CHAP, multipath,
//! protection information checks) are refused with -32602 rather than ignored.

use keel_nvme::opts::DEFAULT_HOSTNQN;
use keel_nvme::{AttachOpts, NvmeError, NvmeModule, TrType, TransportId};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{Ctx, Reply};
use crate::decode::params;
use crate::error::RpcError;
use crate::table::{method, Table};

/// The NVMe bdev methods (their subsystem is `"bdev"`, served by `bdev_methods`).
pub(crate) static TABLE: Table = Table {
    methods: &[
        method!(bdev_nvme_attach_controller, Runtime),
        method!(bdev_nvme_detach_controller, Runtime),
        method!(bdev_nvme_get_controllers, Runtime),
        method!(bdev_nvme_reset_controller, Runtime),
        method!(bdev_nvme_set_options, Both),
    ],
    subsystem: None,
};

fn err(e: NvmeError) -> RpcError {
    match e {
        NvmeError::Invalid(m) => RpcError::new(-32602, format!("Invalid parameters: {m}")),
        e => RpcError::new(e.rpc_code(), e.to_string()),
    }
}

fn invalid(why: impl std::fmt::Display) -> RpcError {
    RpcError::new(-32602, format!("Invalid parameters: {why}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MultipathOpts {
    policy: Option<String>,
    selector: Option<String>,
    min_io: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Attach {
    name: String,
    trtype: String,
    traddr: String,
    adrfam: Option<String>,
    trsvcid: Option<String>,
    priority: Option<String>,
    subnqn: Option<String>,
    hostnqn: Option<String>,
    hostaddr: Option<String>,
    hostsvcid: Option<String>,
    #[serde(default)]
    prchk_reftag: bool,
    #[serde(default)]
    prchk_guard: bool,
    #[serde(default)]
    hdgst: bool,
    #[serde(default)]
    ddgst: bool,
    fabrics_connect_timeout_us: Option<u64>,
    multipath: Option<String>,
    num_io_queues: Option<u32>,
    ctrlr_loss_timeout_sec: Option<i64>,
    reconnect_delay_sec: Option<u64>,
    fast_io_fail_timeout_sec: Option<u64>,
    psk: Option<String>,
    max_bdevs: Option<u32>,
    dhchap_key: Option<String>,
    dhchap_ctrlr_key: Option<String>,
    #[serde(default)]
    allow_unrecognized_csi: bool,
    #[serde(default)]
    disable_sq_flow_control: bool,
    multipath_opts: Option<MultipathOpts>,
}

fn bdev_nvme_attach_controller(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Attach = params!(params, reply);
    let trtype = match TrType::parse(&p.trtype) {
        Ok(t) => t,
        Err(e) => return reply(Err(err(e))),
    };
    if p.prchk_reftag || p.prchk_guard {
        return reply(Err(invalid("protection information checks are not supported")));
    }
    if p.psk.is_some() || p.dhchap_key.is_some() || p.dhchap_ctrlr_key.is_some() {
        return reply(Err(invalid("TLS PSKs and DH-HMAC-CHAP are not supported")));
    }
    if p.multipath.as_deref().is_some_and(|m| m != "disable") || p.multipath_opts.is_some() {
        return reply(Err(invalid("multipath is not supported")));
    }
    let _ = (
        p.priority,
        p.hostaddr,
        p.hostsvcid,
        p.fabrics_connect_timeout_us,
        p.max_bdevs,
        p.allow_unrecognized_csi,
        p.disable_sq_flow_control,
        p.multipath_opts.map(|m| (m.policy, m.selector, m.min_io)),
    );
    let module = NvmeModule::of(&ctx.registry);
    let mo = module.options();
    let trsvcid = match (trtype, p.trsvcid) {
        (_, Some(s)) => s,
        (TrType::Tcp, None) => "4420".to_string(),
        (TrType::Pcie, None) => String::new(),
    };
    let opts = AttachOpts {
        name: p.name,
        trid: TransportId {
            trtype,
            adrfam: p.adrfam.unwrap_or_else(|| "IPv4".to_string()),
            traddr: p.traddr,
            trsvcid,
            subnqn: p
                .subnqn
                .unwrap_or_else(|| "nqn.2014-08.org.nvmexpress.discovery".to_string()),
        },
        hostnqn: p.hostnqn.unwrap_or_else(|| DEFAULT_HOSTNQN.to_string()),
        hdgst: p.hdgst,
        ddgst: p.ddgst,
        num_io_queues: p.num_io_queues.unwrap_or(1024),
        io_queue_depth: mo.io_queue_depth(),
        ctrlr_loss_timeout_sec: p.ctrlr_loss_timeout_sec.unwrap_or(mo.ctrlr_loss_timeout_sec),
        reconnect_delay_sec: p.reconnect_delay_sec.unwrap_or(mo.reconnect_delay_sec),
        fast_io_fail_timeout_sec: p.fast_io_fail_timeout_sec.unwrap_or(mo.fast_io_fail_timeout_sec),
        keep_alive_timeout_ms: mo.keep_alive_timeout_ms,
    };
    module.attach(opts, move |r| reply(r.map(|names| json!(names)).map_err(err)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Detach {
    name: String,
    trtype: Option<String>,
    traddr: Option<String>,
    adrfam: Option<String>,
    trsvcid: Option<String>,
    subnqn: Option<String>,
    hostaddr: Option<String>,
    hostsvcid: Option<String>,
}

fn bdev_nvme_detach_controller(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: Detach = params!(params, reply);
    let module = NvmeModule::of(&ctx.registry);
    let Some(t) = module.trid_of(&p.name) else {
        return reply(Err(err(NvmeError::NotFound(p.name))));
    };
    // A path filter that does not match the controller's path: SPDK answers ENODEV.
    let matches = p
        .trtype
        .as_deref()
        .is_none_or(|v| v.eq_ignore_ascii_case(t.trtype.as_str()))
        && p.traddr.as_deref().is_none_or(|v| v == t.traddr)
        && p.adrfam.as_deref().is_none_or(|v| v.eq_ignore_ascii_case(&t.adrfam))
        && p.trsvcid.as_deref().is_none_or(|v| v == t.trsvcid)
        && p.subnqn.as_deref().is_none_or(|v| v == t.subnqn);
    let _ = (p.hostaddr, p.hostsvcid);
    if !matches {
        return reply(Err(err(NvmeError::NotFound(p.name))));
    }
    reply(module.detach(&p.name).map(|()| json!(true)).map_err(err))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetControllers {
    name: Option<String>,
}

fn bdev_nvme_get_controllers(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetControllers = params!(params, reply);
    let module = NvmeModule::of(&ctx.registry);
    reply(module.controllers_json(p.name.as_deref()).map_err(err))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetController {
    name: String,
    cntlid: Option<u16>,
}

fn bdev_nvme_reset_controller(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: ResetController = params!(params, reply);
    let _ = p.cntlid;
    let module = NvmeModule::of(&ctx.registry);
    reply(module.reset(&p.name).map(|()| json!(true)).map_err(err))
}

/// SPDK's bdev_nvme_set_options keys Keel accepts and saves without acting on them.
const PASSIVE_OPTIONS: &[&str] = &[
    "action_on_timeout",
    "timeout_us",
    "timeout_admin_us",
    "arbitration_burst",
    "low_priority_weight",
    "medium_priority_weight",
    "high_priority_weight",
    "nvme_adminq_poll_period_us",
    "nvme_ioq_poll_period_us",
    "delay_cmd_submit",
    "transport_retry_count",
    "bdev_retry_count",
    "transport_ack_timeout",
    "disable_auto_failback",
    "generate_uuids",
    "transport_tos",
    "nvme_error_stat",
    "rdma_srq_size",
    "io_path_stat",
    "allow_accel_sequence",
    "rdma_max_cq_size",
    "rdma_cm_event_timeout_ms",
    "dhchap_digests",
    "dhchap_dhgroups",
    "rdma_umr_per_io",
    "tcp_connect_timeout_ms",
    "enable_flush",
    "retry_count",
];

fn bdev_nvme_set_options(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let map = match params {
        None => serde_json::Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return reply(Err(invalid("params must be an object"))),
    };
    let module = NvmeModule::of(&ctx.registry);
    let mut o = module.options();
    for (k, v) in map {
        let bad = |what: &str| invalid(format!("{k}: expected {what}"));
        match k.as_str() {
            "keep_alive_timeout_ms" => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => o.keep_alive_timeout_ms = n,
                None => return reply(Err(bad("a u32"))),
            },
            "ctrlr_loss_timeout_sec" => match v.as_i64().filter(|n| *n >= -1) {
                Some(n) => o.ctrlr_loss_timeout_sec = n,
                None => return reply(Err(bad("an integer >= -1"))),
            },
            "reconnect_delay_sec" => match v.as_u64() {
                Some(n) => o.reconnect_delay_sec = n,
                None => return reply(Err(bad("an unsigned integer"))),
            },
            "fast_io_fail_timeout_sec" => match v.as_u64() {
                Some(n) => o.fast_io_fail_timeout_sec = n,
                None => return reply(Err(bad("an unsigned integer"))),
            },
            "io_queue_requests" => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => o.io_queue_requests = n,
                None => return reply(Err(bad("a u32"))),
            },
            k if PASSIVE_OPTIONS.contains(&k) => {
                o.other.insert(k.to_string(), v);
            }
            _ => return reply(Err(invalid(format!("unknown field `{k}`")))),
        }
    }
    reply(module.set_options(o).map(|()| json!(true)).map_err(err))
}
