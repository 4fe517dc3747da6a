//! `bdev_get_bdevs` and `bdev_get_iostat` (spdk-rpc.md §8.2, §8.7, §8.8).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_bdev::{Bdev, BdevRegistry, IoOp, IoStats, StatsReset};
use keel_reactor::{current, ticks, ticks_per_sec, PollStatus, PollerHandle};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::context::{Ctx, Reply};
use crate::decode::params;
use crate::error::{RpcError, INTERNAL_ERROR};
use crate::retry::retry_every;
use crate::table::{method, Table};

/// The bdev queries.
pub(crate) static TABLE: Table = Table {
    methods: &[
        method!(bdev_get_bdevs, Runtime),
        method!(bdev_get_iostat, Runtime),
        method!(bdev_reset_iostat, Runtime),
    ],
    subsystem: None,
};

/// Keys of `supported_io_types`, in SPDK's order, with the op that answers each (others false).
pub(crate) const IO_TYPE_KEYS: &[(&str, Option<IoOp>)] = &[
    ("read", Some(IoOp::Read)),
    ("write", Some(IoOp::Write)),
    ("unmap", Some(IoOp::Unmap)),
    ("flush", Some(IoOp::Flush)),
    ("reset", Some(IoOp::Reset)),
    ("nvme_admin", None),
    ("nvme_io", None),
    ("nvme_io_md", None),
    ("write_zeroes", Some(IoOp::WriteZeroes)),
    ("zcopy", None),
    ("get_zone_info", None),
    ("zone_management", None),
    ("zone_append", None),
    ("compare", None),
    ("compare_and_write", None),
    ("abort", None),
    ("seek_hole", None),
    ("seek_data", None),
    ("copy", None),
    ("nvme_iov_md", None),
    ("nvme_nssr", None),
    ("write_uncorrectable", None),
];

/// The bdev object of `bdev_get_bdevs`, keys in SPDK's order (a raid's product name and
/// `driver_specific.raid` from `raid_methods`).
pub fn bdev_json(reg: &Arc<BdevRegistry>, b: &Bdev) -> Value {
    let i = b.info();
    let mut m = Map::new();
    m.insert("name".into(), json!(i.name));
    m.insert("aliases".into(), json!(b.aliases()));
    m.insert("product_name".into(), json!(i.product_name));
    m.insert("block_size".into(), json!(i.block_size));
    m.insert("num_blocks".into(), json!(i.num_blocks));
    for k in [
        "preferred_write_alignment",
        "preferred_write_granularity",
        "optimal_write_size",
        "preferred_unmap_alignment",
        "preferred_unmap_granularity",
    ] {
        m.insert(k.into(), json!(0));
    }
    m.insert("uuid".into(), json!(i.uuid.to_string()));
    let q = b.qos_limits();
    m.insert(
        "assigned_rate_limits".into(),
        json!({
            "rw_ios_per_sec": q.rw_ios_per_sec,
            "rw_mbytes_per_sec": q.rw_mbytes_per_sec,
            "r_mbytes_per_sec": q.r_mbytes_per_sec,
            "w_mbytes_per_sec": q.w_mbytes_per_sec,
        }),
    );
    let claimed = b.claimed_by().is_some();
    m.insert("claimed".into(), json!(claimed));
    if claimed {
        m.insert("claim_type".into(), json!("exclusive_write"));
    }
    m.insert("zoned".into(), json!(false));
    let mut io = Map::new();
    for (k, op) in IO_TYPE_KEYS {
        io.insert((*k).into(), json!(op.is_some_and(|op| i.caps.supports(op))));
    }
    m.insert("supported_io_types".into(), Value::Object(io));
    m.insert("driver_specific".into(), b.backend().driver_specific());
    let mut v = Value::Object(m);
    crate::raid_methods::decorate_bdev(reg, b, &mut v);
    v
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GetBdevs {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    timeout: Option<u64>,
}

fn bdev_get_bdevs(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetBdevs = params!(params, INTERNAL_ERROR, reply);
    let Some(name) = p.name else {
        return list_in_slices(ctx.registry.clone(), ctx.registry.list(), reply);
    };
    if let Some(b) = ctx.registry.get(&name) {
        return reply(Ok(json!([bdev_json(&ctx.registry, &b)])));
    }
    let timeout_ms = p.timeout.unwrap_or(0);
    if timeout_ms == 0 {
        return reply(Err(RpcError::from_errno(-19, "No such device")));
    }
    // Wait for the bdev to appear, re-checking every 10 ms on this core.
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let reg = ctx.registry.clone();
    let mut reply = Some(reply);
    retry_every("bdev_get_bdevs_wait", 10_000, move || {
        let found = reg.get(&name);
        if found.is_none() && Instant::now() < deadline {
            return false;
        }
        if let Some(r) = reply.take() {
            r(match found {
                Some(b) => Ok(json!([bdev_json(&reg, &b)])),
                None => Err(RpcError::from_errno(-19, "No such device")),
            });
        }
        true
    });
}

/// Bdevs described per reactor turn by a full listing.
const LIST_SLICE: usize = 256;

/// Answers a full listing of `bdevs` (a snapshot taken now), describing [`LIST_SLICE`] of them
/// per turn of the main reactor so that 50,000 bdevs do not stall it for seconds. Called on the
/// main reactor; `reply` runs there.
fn list_in_slices(reg: Arc<BdevRegistry>, bdevs: Vec<Arc<Bdev>>, reply: Reply) {
    if bdevs.len() <= LIST_SLICE {
        return reply(Ok(Value::Array(bdevs.iter().map(|b| bdev_json(&reg, b)).collect())));
    }
    let mut out: Vec<Value> = Vec::with_capacity(bdevs.len());
    let mut reply = Some(reply);
    let handle: Rc<RefCell<Option<PollerHandle>>> = Rc::default();
    let h2 = handle.clone();
    // An active poller: every turn it runs it describes a slice (busy), the last one answers.
    let h = current().register_poller("bdev_get_bdevs_list", move || {
        let from = out.len();
        let to = (from + LIST_SLICE).min(bdevs.len());
        out.extend(bdevs[from..to].iter().map(|b| bdev_json(&reg, b)));
        if to == bdevs.len() {
            if let Some(r) = reply.take() {
                r(Ok(Value::Array(std::mem::take(&mut out))));
            }
            h2.borrow_mut().take();
        }
        PollStatus::Busy
    });
    *handle.borrow_mut() = Some(h);
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GetIostat {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    names: Option<Vec<String>>,
    #[serde(default)]
    per_channel: bool,
    #[serde(default)]
    reset_mode: Option<String>,
}

fn stat_json(name: Option<&str>, s: &IoStats) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(n) = name {
        m.insert("name".into(), json!(n));
    }
    let r = s.op(IoOp::Read);
    let w = s.op(IoOp::Write);
    let u = s.op(IoOp::Unmap);
    m.insert("bytes_read".into(), json!(r.bytes));
    m.insert("num_read_ops".into(), json!(r.ops));
    m.insert("bytes_written".into(), json!(w.bytes));
    m.insert("num_write_ops".into(), json!(w.ops));
    m.insert("bytes_unmapped".into(), json!(u.bytes));
    m.insert("num_unmap_ops".into(), json!(u.ops));
    m.insert("bytes_copied".into(), json!(0));
    m.insert("num_copy_ops".into(), json!(0));
    for (prefix, o) in [("read", r), ("write", w), ("unmap", u)] {
        m.insert(format!("{prefix}_latency_ticks"), json!(o.latency_ticks));
        m.insert(format!("max_{prefix}_latency_ticks"), json!(o.max_latency_ticks));
        m.insert(format!("min_{prefix}_latency_ticks"), json!(o.min_latency_ticks));
    }
    m.insert("copy_latency_ticks".into(), json!(0));
    m.insert("max_copy_latency_ticks".into(), json!(0));
    m.insert("min_copy_latency_ticks".into(), json!(0));
    if !s.errors.is_empty() {
        let e: Map<String, Value> = s.errors.iter().map(|(k, v)| ((*k).to_string(), json!(v))).collect();
        m.insert("io_error".into(), Value::Object(e));
    }
    m
}

fn bdev_get_iostat(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetIostat = params!(params, INTERNAL_ERROR, reply);
    let reset = match p.reset_mode.as_deref() {
        None | Some("none") => StatsReset::None,
        Some("all") => StatsReset::All,
        Some("maxmin") => StatsReset::MaxMin,
        Some("error") => StatsReset::Errors,
        Some(other) => {
            return reply(Err(RpcError::new(
                INTERNAL_ERROR,
                format!("spdk_json_decode_object failed: invalid reset_mode '{other}'"),
            )))
        }
    };
    let mut names: Vec<String> = p.names.unwrap_or_default();
    names.extend(p.name);
    if p.per_channel && names.len() != 1 {
        return reply(Err(RpcError::from_errno(
            -22,
            "per_channel requires exactly one bdev name",
        )));
    }
    let bdevs: Vec<Arc<Bdev>> = if names.is_empty() {
        ctx.registry.list()
    } else {
        let mut v = Vec::new();
        for n in &names {
            match ctx.registry.get(n) {
                Some(b) => v.push(b),
                None => return reply(Err(RpcError::from_errno(-19, "No such device"))),
            }
        }
        v
    };
    if p.per_channel {
        let b = bdevs[0].clone();
        return b.clone().collect_channel_stats(reset, move |per| {
            let channels: Vec<Value> = per
                .iter()
                .map(|(core, s)| {
                    let mut m = Map::new();
                    m.insert("thread_id".into(), json!(core.0 + 1));
                    m.extend(stat_json(None, s));
                    Value::Object(m)
                })
                .collect();
            reply(Ok(
                json!({"tick_rate": ticks_per_sec(), "ticks": ticks(), "name": b.name(), "channels": channels}),
            ))
        });
    }
    gather(bdevs, Vec::new(), reset, reply);
}

/// Collects each bdev's totals one after the other (each a round over the cores).
fn gather(mut left: Vec<Arc<Bdev>>, mut acc: Vec<Value>, reset: StatsReset, reply: Reply) {
    if left.is_empty() {
        return reply(Ok(
            json!({"tick_rate": ticks_per_sec(), "ticks": ticks(), "bdevs": acc}),
        ));
    }
    let b = left.remove(0);
    let name = b.name().to_string();
    b.collect_stats(reset, move |s| {
        acc.push(Value::Object(stat_json(Some(&name), &s)));
        gather(left, acc, reset, reply)
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetIostat {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    mode: Option<String>,
}

/// SPDK's `bdev_reset_iostat {name?, mode?}`: zeroes the statistics of one bdev (or every bdev)
/// on every core — `mode` "all" (the default), "maxmin" (the latency extremes), "error" (the
/// error counters) or "none"; answers
/// `true` once every core did it.
fn bdev_reset_iostat(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: ResetIostat = params!(params, INTERNAL_ERROR, reply);
    let reset = match p.mode.as_deref() {
        None | Some("all") => StatsReset::All,
        Some("maxmin") => StatsReset::MaxMin,
        Some("error") => StatsReset::Errors,
        Some("none") => StatsReset::None,
        Some(other) => {
            return reply(Err(RpcError::new(
                INTERNAL_ERROR,
                format!("spdk_json_decode_object failed: invalid mode '{other}' (all, maxmin, error or none)"),
            )))
        }
    };
    let bdevs: Vec<Arc<Bdev>> = match &p.name {
        None => ctx.registry.list(),
        Some(n) => match ctx.registry.get(n) {
            Some(b) => vec![b],
            None => return reply(Err(RpcError::from_errno(-19, "No such device"))),
        },
    };
    reset_each(bdevs, reset, reply);
}

/// Resets each bdev's statistics one after the other (each a round over the cores).
fn reset_each(mut left: Vec<Arc<Bdev>>, reset: StatsReset, reply: Reply) {
    if left.is_empty() {
        return reply(Ok(json!(true)));
    }
    let b = left.remove(0);
    b.collect_stats(reset, move |_| reset_each(left, reset, reply));
}
