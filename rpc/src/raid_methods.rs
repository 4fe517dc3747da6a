//! SPDK's raid RPCs (`bdev_raid_*`, spdk-rpc.md §8.3) over Keel's md arrays.
//!
//! SPDK's raid module and Keel's md layer do the same job, so the SPDK methods are served by md:
//! an array made with `bdev_raid_create` is an md array (`md_get_arrays` shows it, `md_*`
//! methods work on it) and an md array of an SPDK level is a raid bdev here. Params, result
//! shapes and error codes are SPDK's; where the two differ, these are the decisions:
//!
//! - **Levels.** `raid0`/`0` → md raid0, `raid1`/`1` → md raid1, `concat` → md linear,
//!   `raid5f`/`5f` → md raid5 in the left-asymmetric layout (SPDK raid5f's placement: parity on
//!   member `n−1 − stripe mod n`, data in member order around it), at least 3 base bdevs,
//!   `strip_size_kb` required. Unlike SPDK's raid5f it takes writes of any size (read-modify-
//!   write), with md's internal bitmap and an initial resync. `bdev_raid_get_bdevs` and the
//!   other methods see only md arrays of those four levels (raid10, raid4 and raid6 are not SPDK
//!   levels: they live on `md_*` only), and report linear as `concat` and raid5 as `raid5f`.
//! - **Metadata.** Every md array has md v1.2 superblocks on its members (that is how it comes
//!   back after a restart), so `superblock` is accepted either way and always reported `true`;
//!   the data starts at the members' `data_offset` (shown per base bdev, in blocks).
//! - **raid1** gets md's defaults: an internal write-intent bitmap (a crash costs a resync of the
//!   dirty chunks only, not of the whole mirror) and an initial background resync (the array is
//!   online at once; `bdev_raid_get_bdevs` shows it as a `process` until it ends). Arrays without
//!   a bitmap, or created clean, come from `md_create`.
//! - **strip_size_kb**: required (a power of two) for raid0, must be absent or 0 for raid1
//!   (-22, as SPDK), optional for concat (checked, then unused: md linear has no chunk).
//! - **Missing base bdevs**: as SPDK, the raid waits in state `configuring` until they appear
//!   (`raid_module.rs`: the bases are claimed as they register, md creates the array when the
//!   last one is there; a configuring raid is saved as SPDK's `bdev_raid_create`). A base that
//!   exists and is claimed by another module is EPERM (-1, SPDK's claim answer); raid1 needs 2
//!   base bdevs, raid5f 3 (-22, SPDK's minimums), and raid0 2 (md's; SPDK takes one); the name
//!   is at most 32 bytes (md's set_name), checked at once. A failed array (data lost, e.g. a
//!   raid0 that lost a member) is "offline", every other md array "online".
//! - **Bdev view**: `bdev_get_bdevs` of an md array of an SPDK level says `product_name`
//!   "Raid Volume" and carries `driver_specific.raid` (the `bdev_raid_get_bdevs` object without
//!   its name) next to md's own `driver_specific.md`.
//! - **`bdev_raid_set_options`**: SPDK's process window and bandwidth become md's sync window
//!   cap and max speed on every md array of an SPDK level (`raid_module.rs`).
//! - **`bdev_raid_remove_base_bdev`** fails the member (if active) and removes it (`md_fail` +
//!   `md_remove`); a raid0/concat member, or the last in-sync copy of a raid1's data, cannot be
//!   removed (-16, as Linux md refuses to fail it: SPDK would take the array offline, md
//!   refuses to lose data). A discovered base of a configuring raid is released (its slot waits
//!   again); `bdev_raid_add_base_bdev` to a configuring raid is -22 (every slot is named).
//! - **`bdev_raid_delete`** stops the array (members marked clean, released) as a bdev delete:
//!   refused (-16) only while a dm table or an export holds it, where `md_stop` also refuses
//!   while anything has it open; with `clear_sb` the members' md superblocks are then zeroed so
//!   nothing reassembles them. A configuring raid is dropped with its claims.
//! - **Progress** (`process`): `type` is `"rebuild"` for md's recovery (target: the rebuilding
//!   member) and md's action name for resync, check and repair (target: the array).
//!
//! Param decode failures use SPDK's codes: -32700 "spdk_json_decode_object failed" (create,
//! delete, get_bdevs, remove_base_bdev, set_options) and -32603 (add_base_bdev), with serde's
//! description appended. Operational errors carry md's errno.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use keel_bdev::BdevRegistry;
use keel_md::superblock::V1_2_SUPER_OFFSET_SECTORS;
use keel_md::{ArrayInfo, CreateOpts, MdRegistry};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{Ctx, Reply};
use crate::decode::params;
use crate::error::{RpcError, INTERNAL_ERROR, PARSE_ERROR};
use crate::md_methods::{md_error, remove_member};
use crate::raid_module::{spdk_level, RaidModule, RaidOptions, RaidSpec};
use crate::table::{method, Table};

/// SPDK's raid methods, served by md.
pub(crate) static TABLE: Table = Table {
    methods: &[
        method!(bdev_raid_create, Runtime),
        method!(bdev_raid_delete, Runtime),
        method!(bdev_raid_get_bdevs, Runtime),
        method!(bdev_raid_add_base_bdev, Runtime),
        method!(bdev_raid_remove_base_bdev, Runtime),
        method!(bdev_raid_set_options, Both),
    ],
    subsystem: None,
};

/// SPDK's product name of a raid bdev.
const PRODUCT_NAME: &str = "Raid Volume";

/// The uuid SPDK shows for an empty base bdev slot.
const ZERO_UUID: &str = "00000000-0000-0000-0000-000000000000";

fn md(ctx: &Ctx) -> Arc<MdRegistry> {
    MdRegistry::of(&ctx.registry)
}

/// The md array `name` if it is of an SPDK level.
fn raid_array(ctx: &Ctx, name: &str) -> Option<ArrayInfo> {
    md(ctx)
        .arrays(Some(name))
        .ok()?
        .into_iter()
        .next()
        .filter(|a| spdk_level(&a.level).is_some())
}

/// A hyphenated UUID from mdadm's text form (or any form with 32 hex digits).
fn hyphenated(uuid: &str) -> String {
    let h: String = uuid
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_lowercase();
    if h.len() != 32 {
        return uuid.to_string();
    }
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// SPDK's raid state of an md array.
fn raid_state(a: &ArrayInfo) -> &'static str {
    if a.state.starts_with("failed") {
        "offline"
    } else {
        "online"
    }
}

/// One raid object of `bdev_raid_get_bdevs` (SPDK's key order). `None` for levels SPDK lacks.
fn raid_json(reg: &BdevRegistry, a: &ArrayInfo) -> Option<Value> {
    let level = spdk_level(&a.level)?;
    let bs = u64::from(a.block_size.max(1));
    let data_offset_blocks = a.data_offset_sectors * 512 / bs;
    let n = a.raid_devices as usize;
    // Per role, the member holding it (in sync or rebuilding).
    let mut slots: Vec<Option<&str>> = vec![None; n];
    for m in &a.members {
        if let (Some(r), "in_sync" | "rebuilding") = (m.role, m.state) {
            if let Some(s) = slots.get_mut(r as usize) {
                *s = Some(m.bdev.as_str());
            }
        }
    }
    let present = slots.iter().flatten().count();
    let data_size_blocks = |member: Option<&str>| -> u64 {
        match level {
            "raid1" => a.size_blocks,
            "raid0" => a.size_blocks / (n.max(1) as u64),
            "raid5f" => a.size_blocks / (n.max(2) as u64 - 1),
            // concat: each member contributes its data area.
            _ => member
                .and_then(|m| reg.get(m))
                .map(|b| (b.info().size_bytes() / bs).saturating_sub(data_offset_blocks))
                .unwrap_or(0),
        }
    };
    let base: Vec<Value> = slots
        .iter()
        .map(|s| match s {
            Some(name) => json!({
                "name": name,
                "uuid": reg.get(name).map_or_else(|| ZERO_UUID.to_string(), |b| b.info().uuid.to_string()),
                "is_configured": true,
                "data_offset": data_offset_blocks,
                "data_size": data_size_blocks(Some(name)),
            }),
            None => json!({
                "name": null,
                "uuid": ZERO_UUID,
                "is_configured": false,
                "data_offset": 0,
                "data_size": 0,
            }),
        })
        .collect();
    let uuid = reg
        .get(&a.name)
        .map_or_else(|| hyphenated(&a.uuid), |b| b.info().uuid.to_string());
    let mut v = json!({
        "name": a.name,
        "uuid": uuid,
        "strip_size_kb": a.chunk_kb,
        "state": raid_state(a),
        "raid_level": level,
        "superblock": true,
        "num_base_bdevs": n,
        "num_base_bdevs_discovered": present,
        "num_base_bdevs_operational": present,
    });
    let m = v.as_object_mut().expect("object");
    if !matches!(a.sync.action, "idle" | "frozen") {
        let target = if a.sync.action == "recover" {
            a.members
                .iter()
                .find(|m| m.state == "rebuilding")
                .map_or(a.name.as_str(), |m| m.bdev.as_str())
        } else {
            a.name.as_str()
        };
        let percent = if a.sync.total_sectors > 0 {
            a.sync.done_sectors as f64 * 100.0 / a.sync.total_sectors as f64
        } else {
            0.0
        };
        m.insert(
            "process".into(),
            json!({
                "type": if a.sync.action == "recover" { "rebuild" } else { a.sync.action },
                "target": target,
                "progress": {"blocks": a.sync.done_sectors * 512 / bs, "percent": percent},
            }),
        );
    }
    m.insert("base_bdevs_list".into(), json!(base));
    Some(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBdevs {
    category: String,
}

/// `bdev_raid_get_bdevs {category}` → array of raid objects.
fn bdev_raid_get_bdevs(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetBdevs = params!(params, PARSE_ERROR, reply);
    let want = match p.category.as_str() {
        "all" => None,
        c @ ("online" | "configuring" | "offline") => Some(c),
        _ => return reply(Err(RpcError::from_errno(-22, "Invalid argument"))),
    };
    let arrays = md(ctx).arrays(None).unwrap_or_default();
    let mut out: Vec<Value> = arrays
        .iter()
        .filter(|a| want.is_none_or(|w| raid_state(a) == w))
        .filter_map(|a| raid_json(&ctx.registry, a))
        .collect();
    if want.is_none_or(|w| w == "configuring") {
        if let Some(m) = RaidModule::loaded(&ctx.registry) {
            out.extend(m.configuring_json());
        }
    }
    reply(Ok(json!(out)))
}

/// `bdev_get_bdevs` of an md array of an SPDK level: SPDK's product name "Raid Volume" and
/// `driver_specific.raid` (the `bdev_raid_get_bdevs` object without its name), next to md's
/// own `driver_specific.md`. Other bdevs are left as they are. Main core.
pub(crate) fn decorate_bdev(reg: &Arc<BdevRegistry>, b: &keel_bdev::Bdev, v: &mut Value) {
    if b.info().module != keel_md::array::MODULE {
        return;
    }
    let Some(a) = MdRegistry::of(reg)
        .arrays(Some(b.name()))
        .ok()
        .and_then(|a| a.into_iter().next())
    else {
        return;
    };
    let Some(Value::Object(mut raid)) = raid_json(reg, &a) else {
        return;
    };
    raid.remove("name");
    v["product_name"] = json!(PRODUCT_NAME);
    if let Some(ds) = v.get_mut("driver_specific").and_then(Value::as_object_mut) {
        ds.insert("raid".into(), Value::Object(raid));
    }
}

/// `base_bdevs`: SPDK's client sends an array; older clients a whitespace-separated string.
#[derive(Deserialize)]
#[serde(untagged)]
enum BaseBdevs {
    List(Vec<String>),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RaidCreate {
    name: String,
    raid_level: String,
    base_bdevs: BaseBdevs,
    #[serde(default)]
    strip_size_kb: Option<u32>,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    superblock: bool,
}

/// The checked request of a `bdev_raid_create` call: SPDK's checks, then the md create options
/// (see the module docs).
fn create_opts(p: RaidCreate) -> Result<RaidSpec, RpcError> {
    let fail =
        |errno: i32, why: String| RpcError::from_errno(errno, format!("Failed to create RAID bdev {}: {why}", p.name));
    crate::md_methods::check_md_name("name", &p.name)?;
    // Checked now rather than when md creates the array, which for a configuring raid is later.
    if p.name.is_empty() || p.name.len() > 32 {
        return Err(fail(-22, "the name must be 1 to 32 bytes (it is md's set_name)".into()));
    }
    let members: Vec<String> = match &p.base_bdevs {
        BaseBdevs::List(v) => v.clone(),
        BaseBdevs::Text(s) => s.split_whitespace().map(str::to_string).collect(),
    };
    if members.iter().any(|m| m.is_empty()) {
        return Err(RpcError::from_errno(
            -22,
            "The base bdev name cannot be empty: Invalid argument",
        ));
    }
    let (level, spdk, min_bases) = match p.raid_level.to_ascii_lowercase().as_str() {
        // SPDK takes a raid0 of one base bdev; md's raid0 needs two (as Linux's).
        "raid0" | "0" => ("raid0", "raid0", 2),
        "raid1" | "1" => ("raid1", "raid1", 2),
        "concat" => ("linear", "concat", 1),
        "raid5f" | "5f" => ("raid5", "raid5f", 3),
        other => {
            return Err(RpcError::new(
                PARSE_ERROR,
                format!("spdk_json_decode_object failed: raid_level '{other}' is not one of raid0, 0, raid1, 1, raid5f, 5f, concat"),
            ))
        }
    };
    let uuid = match &p.uuid {
        None => uuid::Uuid::new_v4(),
        Some(u) => uuid::Uuid::parse_str(u)
            .map_err(|e| RpcError::new(PARSE_ERROR, format!("spdk_json_decode_object failed: uuid '{u}': {e}")))?,
    };
    let strip = p.strip_size_kb.filter(|&s| s != 0);
    let chunk_kb = match (level, strip) {
        ("raid1", Some(s)) => return Err(fail(-22, format!("strip_size_kb {s}: raid1 has no strip size"))),
        ("raid0" | "raid5", None) => return Err(fail(-22, format!("strip_size_kb is required for {}", p.raid_level))),
        (_, Some(s)) if !s.is_power_of_two() => {
            return Err(fail(-22, format!("strip_size_kb {s} is not a power of two")))
        }
        ("raid0" | "raid5", Some(s)) => Some(s),
        _ => None,
    };
    if members.len() < min_bases {
        return Err(fail(
            -22,
            format!(
                "At least {min_bases} base devices required for {spdk}, not {}",
                members.len()
            ),
        ));
    }
    if let Some(twice) = members.iter().enumerate().find(|(i, m)| members[..*i].contains(m)) {
        return Err(fail(-22, format!("base bdev {} is listed twice", twice.1)));
    }
    let _ = p.superblock; // md arrays always carry md v1.2 superblocks
    Ok(RaidSpec {
        spdk_level: spdk,
        strip_size_kb: p.strip_size_kb.unwrap_or(0),
        uuid,
        md: CreateOpts {
            name: p.name.clone(),
            level: level.into(),
            members,
            chunk_kb,
            layout: (level == "raid5").then(|| "left-asymmetric".to_string()),
            bitmap: matches!(level, "raid1" | "raid5").then(|| "internal".to_string()),
            assume_clean: false,
            uuid: Some(uuid.to_string()),
            // SPDK creates over whatever the base bdevs hold; md_create asks for `force`.
            force: true,
        },
    })
}

/// `bdev_raid_create {name, raid_level, base_bdevs, strip_size_kb?, uuid?, superblock?}` → true:
/// an md array now when every base bdev exists, else a configuring raid ([`RaidModule`]).
fn bdev_raid_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: RaidCreate = params!(params, PARSE_ERROR, reply);
    let name = p.name.clone();
    let spec = match create_opts(p) {
        Ok(o) => o,
        Err(e) => return reply(Err(e)),
    };
    let module = RaidModule::of(&ctx.registry);
    if module.is_pending(&name) || md(ctx).arrays(Some(&name)).is_ok() || ctx.registry.get(&name).is_some() {
        return reply(Err(RpcError::from_errno(
            -17,
            format!("Failed to create RAID bdev {name}: Duplicate raid bdev name found: File exists"),
        )));
    }
    let add_failed = |base: &str, errno: i32, why: String| {
        RpcError::from_errno(
            errno,
            format!("Failed to add base bdev {base} to RAID bdev {name}: {why}"),
        )
    };
    let missing = spec.md.members.iter().any(|m| ctx.registry.get(m).is_none());
    if missing {
        return reply(match module.configure(&ctx.registry, spec) {
            Ok(()) => Ok(json!(true)),
            Err((errno, why)) => Err(RpcError::from_errno(
                errno,
                format!("Failed to create RAID bdev {name}: {why}"),
            )),
        });
    }
    // SPDK claims each base: one another module holds is EPERM.
    for m in &spec.md.members {
        if let Some(by) = ctx.registry.get(m).and_then(|b| b.claimed_by()) {
            return reply(Err(add_failed(
                m,
                -1,
                format!("already claimed by {by}: Operation not permitted"),
            )));
        }
    }
    md(ctx).create(spec.md, move |r| {
        reply(
            r.map(|()| json!(true))
                .map_err(|e| RpcError::from_errno(e.errno(), format!("Failed to create RAID bdev {name}: {e}"))),
        )
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetOptions {
    #[serde(default)]
    process_window_size_kb: Option<u32>,
    #[serde(default)]
    process_max_bandwidth_mb_sec: Option<u32>,
}

/// `bdev_raid_set_options {process_window_size_kb?, process_max_bandwidth_mb_sec?}` → true:
/// the given options replace the current ones (SPDK's defaults before the first call); a window
/// of 0 is EINVAL, as SPDK. Applied to every md array of an SPDK level ([`RaidModule`]).
fn bdev_raid_set_options(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    // SPDK's client often sends no params at all.
    let p: SetOptions = params!(Some(params.unwrap_or_else(|| json!({}))), PARSE_ERROR, reply);
    let module = RaidModule::of(&ctx.registry);
    let cur = module.options().unwrap_or_default();
    let o = RaidOptions {
        process_window_size_kb: p.process_window_size_kb.unwrap_or(cur.process_window_size_kb),
        process_max_bandwidth_mb_sec: p
            .process_max_bandwidth_mb_sec
            .unwrap_or(cur.process_max_bandwidth_mb_sec),
    };
    if o.process_window_size_kb == 0 {
        return reply(Err(RpcError::from_errno(-22, "Invalid argument")));
    }
    module.set_options(&ctx.registry, o);
    reply(Ok(json!(true)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RaidDelete {
    name: String,
    #[serde(default)]
    clear_sb: bool,
}

/// Zeroes the md superblock of every bdev in `members` (after the array released them), then
/// calls `done`. Called on the main reactor; `done` runs there.
fn clear_superblocks(reg: &BdevRegistry, members: Vec<String>, done: Box<dyn FnOnce(Result<(), RpcError>)>) {
    let left = Rc::new(Cell::new(members.len() + 1));
    let first_err: Rc<std::cell::RefCell<Option<RpcError>>> = Rc::default();
    let done = Rc::new(std::cell::RefCell::new(Some(done)));
    let finish_one = {
        let left = left.clone();
        let first_err = first_err.clone();
        let done = done.clone();
        move |err: Option<RpcError>| {
            if let Some(e) = err {
                first_err.borrow_mut().get_or_insert(e);
            }
            left.set(left.get() - 1);
            if left.get() == 0 {
                if let Some(d) = done.borrow_mut().take() {
                    d(match first_err.borrow_mut().take() {
                        Some(e) => Err(e),
                        None => Ok(()),
                    })
                }
            }
        }
    };
    let finish_one = Rc::new(finish_one);
    for name in members {
        let desc = match reg.open(&name, true, |_| {}) {
            Ok(d) => d,
            Err(e) => {
                finish_one(Some(RpcError::from_errno(
                    e.errno(),
                    format!("clear_sb: cannot open '{name}': {e}"),
                )));
                continue;
            }
        };
        let ch = desc.channel();
        let bs = u64::from(desc.info().block_size.max(1));
        let sb_bytes = V1_2_SUPER_OFFSET_SECTORS * 512;
        // The 4 KiB superblock area, widened to whole blocks.
        let offset = sb_bytes / bs * bs;
        let len = (sb_bytes + 4096).div_ceil(bs) * bs - offset;
        let zeros = vec![0u8; len as usize];
        let f = finish_one.clone();
        keel_md::meta_io::write(&ch, offset, &zeros, move |status| {
            let _keep = desc;
            f((!status.is_success())
                .then(|| RpcError::from_errno(-5, format!("clear_sb: writing '{name}' failed: {status:?}"))));
        });
    }
    finish_one(None);
}

/// `bdev_raid_delete {name, clear_sb?}` → true: the array stops as a bdev delete does (refused
/// only while a dm table or an export holds it; `MdRegistry::delete`), and zeroed superblocks
/// with `clear_sb`.
fn bdev_raid_delete(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: RaidDelete = params!(params, PARSE_ERROR, reply);
    if let Some(r) = RaidModule::loaded(&ctx.registry).and_then(|m| m.delete(&p.name)) {
        return reply(
            r.map(|()| json!(true))
                .map_err(|(errno, why)| RpcError::from_errno(errno, why)),
        );
    }
    let Some(a) = raid_array(ctx, &p.name) else {
        return reply(Err(RpcError::from_errno(
            -19,
            format!("raid bdev {} not found", p.name),
        )));
    };
    let members: Vec<String> = a.members.iter().map(|m| m.bdev.clone()).collect();
    let reg = ctx.registry.clone();
    let clear = p.clear_sb;
    md(ctx).delete(&p.name, move |r| {
        if let Err(e) = r {
            return reply(Err(md_error(e)));
        }
        if !clear {
            return reply(Ok(json!(true)));
        }
        clear_superblocks(&reg, members, Box::new(move |r| reply(r.map(|()| json!(true)))));
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBase {
    raid_bdev: String,
    base_bdev: String,
}

/// `bdev_raid_add_base_bdev {raid_bdev, base_bdev}` → true: `md_add`.
fn bdev_raid_add_base_bdev(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: AddBase = params!(params, INTERNAL_ERROR, reply);
    if RaidModule::loaded(&ctx.registry).is_some_and(|m| m.is_pending(&p.raid_bdev)) {
        return reply(Err(RpcError::from_errno(
            -22,
            format!(
                "Failed to add base bdev to RAID bdev: raid bdev {} is configuring: every slot is named, its bases are awaited",
                p.raid_bdev
            ),
        )));
    }
    if raid_array(ctx, &p.raid_bdev).is_none() {
        return reply(Err(RpcError::from_errno(
            -19,
            format!("raid bdev {} is not found in config", p.raid_bdev),
        )));
    }
    md(ctx).add(&p.raid_bdev, &p.base_bdev, move |r| {
        reply(
            r.map(|()| json!(true))
                .map_err(|e| RpcError::from_errno(e.errno(), format!("Failed to add base bdev to RAID bdev: {e}"))),
        )
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBase {
    name: String,
}

/// `bdev_raid_remove_base_bdev {name}` (the base bdev) → true: `md_fail` (when active) and
/// `md_remove` on the array holding it.
fn bdev_raid_remove_base_bdev(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: RemoveBase = params!(params, PARSE_ERROR, reply);
    // A discovered base of a configuring raid: released, its slot waits again.
    if RaidModule::loaded(&ctx.registry)
        .and_then(|m| m.release_base(&p.name))
        .is_some()
    {
        return reply(Ok(json!(true)));
    }
    let md = md(ctx);
    let arrays = md.arrays(None).unwrap_or_default();
    let found = arrays.iter().filter(|a| spdk_level(&a.level).is_some()).find_map(|a| {
        a.members
            .iter()
            .find(|m| m.bdev == p.name)
            .map(|m| (a.name.clone(), m.state))
    });
    let Some((array, state)) = found else {
        let why = if ctx.registry.get(&p.name).is_some() {
            format!(
                "Failed to remove base bdev from raid bdev: '{}' is not a base bdev of any raid bdev",
                p.name
            )
        } else {
            format!("Failed to remove base bdev from raid bdev: bdev '{}' not found", p.name)
        };
        return reply(Err(RpcError::from_errno(-19, why)));
    };
    if matches!(state, "in_sync" | "rebuilding") {
        if let Err(e) = md.fail(&array, &p.name) {
            return reply(Err(RpcError::from_errno(
                e.errno(),
                format!("Failed to remove base bdev from raid bdev: {e}"),
            )));
        }
    }
    remove_member(md, array, p.name, reply);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_with;

    fn req(level: &str, strip: Option<u32>, base: Value) -> Result<CreateOpts, RpcError> {
        spec(level, strip, base).map(|s| s.md)
    }

    fn spec(level: &str, strip: Option<u32>, base: Value) -> Result<RaidSpec, RpcError> {
        let mut p = json!({"name": "r", "raid_level": level, "base_bdevs": base, "superblock": false});
        if let Some(s) = strip {
            p["strip_size_kb"] = json!(s);
        }
        create_opts(decode_with(Some(p), PARSE_ERROR)?)
    }

    #[test]
    fn levels_strips_and_base_bdev_forms() {
        let o = req("0", Some(64), json!(["A", "B"])).unwrap();
        assert_eq!((o.level.as_str(), o.chunk_kb, o.bitmap), ("raid0", Some(64), None));
        let o = req("raid1", Some(0), json!("A  B")).unwrap();
        assert_eq!(o.members, ["A", "B"]);
        assert_eq!(
            (o.level.as_str(), o.chunk_kb, o.bitmap.as_deref()),
            ("raid1", None, Some("internal"))
        );
        assert!(!o.assume_clean);
        let s = spec("raid1", None, json!(["A", "B"])).unwrap();
        assert_eq!((s.spdk_level, s.strip_size_kb), ("raid1", 0));
        assert_eq!(s.md.uuid, Some(s.uuid.to_string()), "md gets the raid's uuid");
        let o = req("CONCAT", Some(128), json!(["A"])).unwrap();
        assert_eq!((o.level.as_str(), o.chunk_kb), ("linear", None));
        assert_eq!(req("concat", None, json!(["A"])).unwrap().level, "linear");
        for (level, strip, code) in [
            ("raid1", Some(64), -22),
            ("raid0", None, -22),
            ("raid0", Some(0), -22),
            ("raid0", Some(48), -22),
            ("concat", Some(3), -22),
            ("5f", Some(64), -22),
            ("raid5f", None, -22),
            ("raid10", Some(64), PARSE_ERROR),
        ] {
            assert_eq!(
                req(level, strip, json!(["A", "B"])).unwrap_err().code,
                code,
                "{level} {strip:?}"
            );
        }
        let o = req("raid5f", Some(64), json!(["A", "B", "C"])).unwrap();
        assert_eq!(
            (o.level.as_str(), o.chunk_kb, o.layout.as_deref(), o.bitmap.as_deref()),
            ("raid5", Some(64), Some("left-asymmetric"), Some("internal"))
        );
        assert_eq!(req("raid1", None, json!(["A", ""])).unwrap_err().code, -22);
        // SPDK's minimum base bdev counts; a base listed twice.
        assert_eq!(req("raid1", None, json!(["A"])).unwrap_err().code, -22);
        assert_eq!(req("raid1", None, json!(["A", "A"])).unwrap_err().code, -22);
        assert_eq!(req("raid0", Some(64), json!(["A"])).unwrap_err().code, -22);
        assert_eq!(req("concat", None, json!(["A"])).unwrap().members, ["A"]);
        // md's name limit, checked before any base exists.
        let long = json!({"name": "r".repeat(33), "raid_level": "1", "base_bdevs": ["A", "B"]});
        assert_eq!(
            create_opts(decode_with(Some(long), PARSE_ERROR).unwrap())
                .unwrap_err()
                .code,
            -22
        );
        // A uuid that does not parse is a decode failure, as SPDK's uuid decoder.
        let mut p = json!({"name": "r", "raid_level": "1", "base_bdevs": ["A", "B"], "uuid": "nope"});
        assert_eq!(
            create_opts(decode_with(Some(p.clone()), PARSE_ERROR).unwrap())
                .unwrap_err()
                .code,
            PARSE_ERROR
        );
        p["uuid"] = json!("8a3e0f37-3d2b-4d5e-9a47-0b1c2d3e4f50");
        let s = create_opts(decode_with(Some(p), PARSE_ERROR).unwrap()).unwrap();
        assert_eq!(s.uuid.to_string(), "8a3e0f37-3d2b-4d5e-9a47-0b1c2d3e4f50");
        assert_eq!(req("raid1", None, json!([1, 2])).unwrap_err().code, PARSE_ERROR);
    }

    #[test]
    fn uuid_forms() {
        assert_eq!(
            hyphenated("01234567:89abcdef:01234567:89ABCDEF"),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
        assert_eq!(hyphenated("short"), "short");
        assert_eq!(spdk_level("linear"), Some("concat"));
        assert_eq!(spdk_level("raid10"), None);
        assert_eq!(spdk_level("raid5"), Some("raid5f"));
        assert_eq!(spdk_level("raid6"), None);
    }
}
