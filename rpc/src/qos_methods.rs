//! SPDK's per-bdev QoS and histogram methods: `bdev_set_qos_limit`, `bdev_enable_histogram`,
//! `bdev_get_histogram`. The bdev layer does the work on every core (`keel_bdev::gate`); the
//! limits are saved by the bdev layer's save_config plan (a `bdev_set_qos_limit` after the
//! bdev's creation), so this table serves no subsystem of its own.
//!
//! Refusals follow SPDK's `bdev_rpc.c`: an unknown bdev is -19 "No such device"; no limit given
//! is -22 "No rate limits specified"; an IOPS limit that is not a multiple of 1000 is -32602
//! "Failed to configure rate limit: Invalid argument"; an unknown `opc` is -32603 "Invalid Io
//! type"; the histogram of a bdev without one is -32603 "Bad address" (SPDK's -EFAULT). Keel
//! adds one refusal: limits and histograms on a **claimed** bdev are refused with -32602
//! "…: Device or resource busy", because a layer that claimed a bdev forwards its requests in
//! place below the bdev's submit, where the gate would not see them (`keel_bdev::gate`).

use keel_bdev::{Bdev, IoCaps, QosLimits};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::bdev_info::IO_TYPE_KEYS;
use crate::context::{Ctx, Reply};
use crate::decode::params;
use crate::error::{RpcError, INTERNAL_ERROR, INVALID_PARAMS};
use crate::table::{method, Table};

/// The QoS and histogram methods.
pub(crate) static TABLE: Table = Table {
    methods: &[
        method!(bdev_set_qos_limit, Runtime),
        method!(bdev_enable_histogram, Runtime),
        method!(bdev_get_histogram, Runtime),
    ],
    subsystem: None,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetQosLimit {
    name: String,
    rw_ios_per_sec: Option<u64>,
    rw_mbytes_per_sec: Option<u64>,
    r_mbytes_per_sec: Option<u64>,
    w_mbytes_per_sec: Option<u64>,
}

/// The bdev named `name` (name, alias or UUID), or SPDK's -19.
fn find(ctx: &Ctx, name: &str) -> Result<std::sync::Arc<Bdev>, RpcError> {
    ctx.registry
        .get(name)
        .ok_or_else(|| RpcError::from_errno(-19, "No such device"))
}

/// Keel's refusal of a claimed bdev (module docs), worded as SPDK words its -EBUSY.
fn refuse_claimed(b: &Bdev, what: &str) -> Result<(), RpcError> {
    match b.claimed_by() {
        Some(module) => Err(RpcError::invalid_params(format!(
            "{what}: Device or resource busy (bdev '{}' is claimed by module '{module}', which forwards its I/O below the bdev's submit)",
            b.name()
        ))),
        None => Ok(()),
    }
}

/// Sets the given limits (0 lifts one; those not given keep their value), as SPDK.
fn bdev_set_qos_limit(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: SetQosLimit = params!(params, INTERNAL_ERROR, reply);
    let b = match find(ctx, &p.name) {
        Ok(b) => b,
        Err(e) => return reply(Err(e)),
    };
    let given = [
        p.rw_ios_per_sec,
        p.rw_mbytes_per_sec,
        p.r_mbytes_per_sec,
        p.w_mbytes_per_sec,
    ];
    if given.iter().all(Option::is_none) {
        return reply(Err(RpcError::from_errno(-22, "No rate limits specified")));
    }
    let failed = |why: &str| RpcError::new(INVALID_PARAMS, format!("Failed to configure rate limit: {why}"));
    if let Some(iops) = p.rw_ios_per_sec {
        if iops % keel_bdev::gate::QOS_MIN_IOS_PER_SEC != 0 {
            return reply(Err(failed(&format!(
                "Invalid argument (rw_ios_per_sec {iops} is not a multiple of {})",
                keel_bdev::gate::QOS_MIN_IOS_PER_SEC
            ))));
        }
    }
    const MIB: u64 = 1024 * 1024;
    for (key, v) in [
        ("rw_mbytes_per_sec", p.rw_mbytes_per_sec),
        ("r_mbytes_per_sec", p.r_mbytes_per_sec),
        ("w_mbytes_per_sec", p.w_mbytes_per_sec),
    ] {
        if v.is_some_and(|mb| mb.checked_mul(MIB).is_none()) {
            return reply(Err(failed(&format!(
                "Invalid argument ({key} {} MiB/s does not fit in bytes per second)",
                v.unwrap_or(0)
            ))));
        }
    }
    if let Err(e) = refuse_claimed(&b, "Failed to configure rate limit") {
        return reply(Err(e));
    }
    let cur = b.qos_limits();
    let limits = QosLimits {
        rw_ios_per_sec: p.rw_ios_per_sec.unwrap_or(cur.rw_ios_per_sec),
        rw_mbytes_per_sec: p.rw_mbytes_per_sec.unwrap_or(cur.rw_mbytes_per_sec),
        r_mbytes_per_sec: p.r_mbytes_per_sec.unwrap_or(cur.r_mbytes_per_sec),
        w_mbytes_per_sec: p.w_mbytes_per_sec.unwrap_or(cur.w_mbytes_per_sec),
    };
    b.set_qos_limits(limits, move || reply(Ok(json!(true))));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableHistogram {
    name: String,
    enable: bool,
    opc: Option<String>,
}

/// Turns a bdev's histogram on (for one SPDK io type with `opc`, else for all) or off.
fn bdev_enable_histogram(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: EnableHistogram = params!(params, INTERNAL_ERROR, reply);
    let b = match find(ctx, &p.name) {
        Ok(b) => b,
        Err(e) => return reply(Err(e)),
    };
    let ops = match p.opc.as_deref() {
        None => IoCaps::ALL,
        Some(name) => match IO_TYPE_KEYS.iter().find(|(k, _)| *k == name) {
            // An SPDK io type Keel has no op for records nothing, but is a valid choice.
            Some((_, op)) => op.map_or(IoCaps::NONE, |op| IoCaps::of(&[op])),
            None => return reply(Err(RpcError::new(INTERNAL_ERROR, "Invalid Io type"))),
        },
    };
    if p.enable {
        if let Err(e) = refuse_claimed(&b, "Failed to enable the histogram") {
            return reply(Err(e));
        }
    }
    b.set_histogram(p.enable.then_some(ops), move || reply(Ok(json!(true))));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetHistogram {
    name: String,
}

/// The merged histogram in SPDK's encoded form: base64 of the little-endian bucket counters,
/// with the layout keys of both SPDK generations (`bucket_shift`; `granularity`, `min_range`,
/// `max_range`) and `tsc_rate` (Keel's tick rate: the counters are ticks).
fn bdev_get_histogram(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetHistogram = params!(params, INTERNAL_ERROR, reply);
    let b = match find(ctx, &p.name) {
        Ok(b) => b,
        Err(e) => return reply(Err(e)),
    };
    b.collect_histogram(move |h| {
        let Some(h) = h else {
            return reply(Err(RpcError::new(INTERNAL_ERROR, "Bad address")));
        };
        let g = keel_bdev::gate::HISTOGRAM_GRANULARITY;
        reply(Ok(json!({
            "histogram": base64(&h.to_le_bytes()),
            "bucket_shift": g,
            "granularity": g,
            "min_range": 0,
            "max_range": keel_bdev::gate::HISTOGRAM_RANGES - 1,
            "tsc_rate": keel_reactor::ticks_per_sec(),
        })))
    });
}

/// Standard base64 (RFC 4648 alphabet, `=` padding), as SPDK's `spdk_base64_encode`.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }
}
