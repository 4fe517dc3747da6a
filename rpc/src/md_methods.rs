//! md RPC methods (Keel's own; reached through `spdk-rpc --plugin keel_rpc`, whose subcommands
//! mirror mdadm's verbs). Handlers run on the main reactor and work on the [`MdRegistry`] of the
//! context's bdev registry.
//!
//! | method | params | result |
//! |---|---|---|
//! | `md_create` | `name`, `level`, `members`, `chunk_kb`?, `layout`?, `bitmap`?, `assume_clean`?, `uuid`?, `force`? | the array's name |
//! | `md_assemble` | `name`?, `uuid`?, `members`? (at least one), `force`? (start dirty and degraded) | the array's name |
//! | `md_stop` | `name` | `true` (superblocks written, members released; -16 while the array is open) |
//! | `md_get_arrays` | `name`? | array of `mdadm --detail` objects ([`keel_md::ArrayInfo::to_json`]) |
//! | `md_examine` | `bdev` | `mdadm --examine`'s facts for one member |
//! | `md_add` | `name`, `bdev` | `true` (spare, or re-add into its old role) |
//! | `md_remove` | `name`, `bdev` | `true` (a spare or faulty member, released) |
//! | `md_fail` | `name`, `bdev` | `true` (the member is faulty; -16 if the array could not lose it) |
//! | `md_set_sync_action` | `name`, `action` (idle, frozen, resync, recover, check, repair) | `true` |
//! | `md_set_sync_speed` | `name`, `min_kbs`?, `max_kbs`? (at least one) | `true` |
//!
//! Malformed params (unknown keys, wrong types, missing required keys) are -32602 with serde's
//! description. Operational errors carry the errno of [`MdError::errno`]: -19 unknown array or
//! bdev, -17 name taken, -16 busy (a member claimed or carrying an md superblock without
//! `force`, an active member not failed first, a sync already running, failing what the array
//! cannot lose — the last in-sync copy, any raid0/linear member —, stopping an open array,
//! naming its holders), -22 bad values (the message names the parameter), -95 what the level
//! cannot do (adding a member of raid0/linear, syncing an array without redundancy), -5
//! metadata I/O.
//!
//! `md_assemble` is idempotent for an array already running with the requested UUID (and name,
//! if given): with auto-assembly on, the member bdevs replayed by a saved configuration
//! assemble the array before its own `md_assemble` entry comes, and that entry then just
//! confirms it. To find it running rather than race it, `md_assemble` first waits (up to
//! [`EXAMINE_WAIT_MS`]) until no examination is in flight, and a lost race (name taken,
//! members claimed by the same array) still answers the running array's name. Like every bdev
//! constructor of Keel it is a RUNTIME method: the members it needs
//! are created in RUNTIME, and SPDK's loaders run STARTUP-capable entries before those.
//!
//! `md_remove` right after `md_fail` waits (up to [`REMOVE_WAIT_MS`]) for the array's daemon to
//! move the failed member out of its role, as `mdadm --fail --remove` works in one go.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_bdev::BdevRegistry;
use keel_md::examine::{examine, level_name, Examine};
use keel_md::superblock::{feature, Superblock};
use keel_md::MdError;
use keel_md::{CreateOpts, MdRegistry};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{Ctx, Reply};
use crate::decode::params;
use crate::error::RpcError;
use crate::retry::retry_every;
use crate::table::{method, Table};

/// The md methods: runtime only, like every bdev constructor (the members they need are
/// created in RUNTIME).
pub(crate) static TABLE: Table = Table {
    methods: &[
        method!(md_examine, Runtime),
        method!(md_create, Runtime),
        method!(md_stop, Runtime),
        method!(md_get_arrays, Runtime),
        method!(md_assemble, Runtime),
        method!(md_add, Runtime),
        method!(md_remove, Runtime),
        method!(md_fail, Runtime),
        method!(md_set_sync_action, Runtime),
        method!(md_set_sync_speed, Runtime),
    ],
    subsystem: None,
};

/// How long `md_remove` waits for a just-failed member to leave its role (the daemon runs every
/// few milliseconds; in-flight I/O of the member has to complete first).
pub const REMOVE_WAIT_MS: u64 = 5_000;
/// How often that wait looks again.
const RETRY_PERIOD_US: u64 = 5_000;

pub(crate) fn md_error(e: MdError) -> RpcError {
    RpcError::from_errno(e.errno(), e.to_string())
}

/// Refuses an array name that could not be a device name, as dm refuses its device names: one
/// with a `/`, `.` or `..`, or with whitespace or control characters (-22, naming the
/// parameter). md_create, md_assemble and bdev_raid_create check it before md sees the name.
pub(crate) fn check_md_name(param: &str, name: &str) -> Result<(), RpcError> {
    let bad = |why: &str| {
        Err(RpcError::from_errno(
            -libc::EINVAL,
            format!("invalid parameter '{param}': '{name}': {why}"),
        ))
    };
    if name.contains('/') || name == "." || name == ".." {
        return bad("an md array name cannot contain '/' or be . or ..");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("an md array name cannot contain whitespace or control characters");
    }
    Ok(())
}

fn reg(ctx: &Ctx) -> Arc<MdRegistry> {
    MdRegistry::of(&ctx.registry)
}

/// Loads md's bdev module into `registry` (so shutdown's `fini_modules` stops the arrays) and
/// turns on examination of new bdevs: a bdev whose md superblock names an array is claimed and
/// the array assembles once enough members are there (`keel_md`'s assembly). keel-tgt calls this
/// once at startup, before loading its configuration.
pub fn enable_md_auto_assembly(registry: &Arc<BdevRegistry>) {
    MdRegistry::enable_auto_assembly(registry);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExamineParams {
    bdev: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: String,
    level: String,
    members: Vec<String>,
    #[serde(default)]
    chunk_kb: Option<u32>,
    #[serde(default)]
    layout: Option<String>,
    #[serde(default)]
    bitmap: Option<String>,
    #[serde(default)]
    assume_clean: bool,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberParams {
    name: String,
    bdev: String,
}

/// `md_create {name, level, members, chunk_kb?, layout?, bitmap?, assume_clean?, uuid?,
/// force?}` → the array bdev's name. Without `force`, members that already carry an md
/// superblock are refused (-16), as mdadm asks before it overwrites one.
fn md_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: CreateParams = params!(params, reply);
    if let Err(e) = check_md_name("name", &p.name) {
        return reply(Err(e));
    }
    let name = p.name.clone();
    let opts = CreateOpts {
        name: p.name,
        level: p.level,
        members: p.members,
        chunk_kb: p.chunk_kb,
        layout: p.layout,
        bitmap: p.bitmap,
        assume_clean: p.assume_clean,
        uuid: p.uuid,
        force: p.force,
    };
    reg(ctx).create(opts, move |r| reply(r.map(|()| json!(name)).map_err(md_error)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssembleParams {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    members: Option<Vec<String>>,
    #[serde(default)]
    force: bool,
}

/// Canonical hex digits of an array UUID in any of mdadm's or the hyphenated forms.
fn uuid_hex(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The running array with this UUID, if any: its name.
fn running_with_uuid(md: &MdRegistry, uuid: &str) -> Option<String> {
    let want = uuid_hex(uuid);
    md.arrays(None)
        .ok()?
        .into_iter()
        .find(|a| uuid_hex(&a.uuid) == want)
        .map(|a| a.name)
}

/// How long `md_assemble` waits for examinations in flight (auto-assembly reading the
/// superblocks of bdevs that just appeared) before it assembles itself.
pub const EXAMINE_WAIT_MS: u64 = 10_000;

/// `md_assemble {name?, uuid?, members?}` → the array's name. With `members`: assembles from
/// exactly those bdevs; without: from every examined bdev whose superblock matches `uuid` (or
/// `name`). Waits for examinations in flight first, so that an array auto-assembly is about to
/// start is found running instead of raced (see the module docs).
fn md_assemble(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: AssembleParams = params!(params, reply);
    if p.name.is_none() && p.uuid.is_none() && p.members.is_none() {
        return reply(Err(RpcError::invalid_params(
            "Invalid parameters: give at least one of name, uuid and members",
        )));
    }
    if let Some(Err(e)) = p.name.as_deref().map(|n| check_md_name("name", n)) {
        return reply(Err(e));
    }
    let md = reg(ctx);
    let bdevs = ctx.registry.clone();
    if bdevs.examines_in_flight() == 0 {
        return assemble_now(md, p, reply);
    }
    let deadline = Instant::now() + Duration::from_millis(EXAMINE_WAIT_MS);
    let mut job = Some((md, p, reply));
    retry_every("md_assemble_wait", RETRY_PERIOD_US, move || {
        if bdevs.examines_in_flight() != 0 && Instant::now() < deadline {
            return false;
        }
        if let Some((md, p, reply)) = job.take() {
            assemble_now(md, p, reply);
        }
        true
    });
}

/// The answer for an array already running with the requested uuid (and name), if it is.
fn already_running(md: &MdRegistry, p: &AssembleParams) -> Option<Result<Value, RpcError>> {
    let uuid = p.uuid.as_deref()?;
    let running = running_with_uuid(md, uuid)?;
    Some(match &p.name {
        Some(n) if *n != running => Err(RpcError::from_errno(
            -17,
            format!("the array with uuid {uuid} is already running as '{running}'"),
        )),
        _ => Ok(json!(running)),
    })
}

fn assemble_now(md: Arc<MdRegistry>, p: AssembleParams, reply: Reply) {
    if let Some(r) = already_running(&md, &p) {
        return reply(r);
    }
    let opts = keel_md::AssembleOpts {
        name: p.name.clone(),
        uuid: p.uuid.clone(),
        members: p.members.clone(),
        force: p.force,
    };
    let md2 = md.clone();
    md.assemble(opts, move |r: Result<String, MdError>| match r {
        Ok(n) => reply(Ok(json!(n))),
        // Lost a race with auto-assembly of the same array: that is success.
        Err(e @ (MdError::Exists(_) | MdError::Busy(_))) => {
            reply(already_running(&md2, &p).unwrap_or_else(|| Err(md_error(e))))
        }
        Err(e) => reply(Err(md_error(e))),
    });
}

/// `md_stop {name}` → true.
fn md_stop(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: NameParams = params!(params, reply);
    reg(ctx).stop(&p.name, move |r| reply(r.map(|()| json!(true)).map_err(md_error)));
}

/// `md_get_arrays {name?}` → a list of arrays (what `mdadm --detail` shows).
fn md_get_arrays(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetParams = params!(params, reply);
    let r = reg(ctx)
        .arrays(p.name.as_deref())
        .map(|v| Value::Array(v.iter().map(|a| a.to_json()).collect()))
        .map_err(md_error);
    reply(r)
}

/// `md_add {name, bdev}` → true: `mdadm --add` (a spare, or a re-add into the role it held).
fn md_add(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: MemberParams = params!(params, reply);
    reg(ctx).add(&p.name, &p.bdev, move |r| {
        reply(r.map(|()| json!(true)).map_err(md_error))
    });
}

/// `md_fail {name, bdev}` → true: `mdadm --fail`.
fn md_fail(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: MemberParams = params!(params, reply);
    reply(reg(ctx).fail(&p.name, &p.bdev).map(|()| json!(true)).map_err(md_error))
}

/// Whether `bdev` is a member of array `name` that md_get_arrays shows as faulty (failed but
/// not yet moved out of its role by the daemon).
fn is_failing(md: &MdRegistry, name: &str, bdev: &str) -> bool {
    md.arrays(Some(name))
        .ok()
        .and_then(|v| v.into_iter().next())
        .is_some_and(|a| a.members.iter().any(|m| m.bdev == bdev && m.state == "faulty"))
}

/// Removes `bdev` from array `name`, waiting while a just-failed member is still in its role.
/// Called on the main reactor; `done` runs there.
pub(crate) fn remove_member(md: Arc<MdRegistry>, name: String, bdev: String, done: Reply) {
    let first = md.remove(&name, &bdev);
    match first {
        Err(MdError::Busy(_)) if is_failing(&md, &name, &bdev) => {}
        r => return done(r.map(|()| json!(true)).map_err(md_error)),
    }
    let deadline = Instant::now() + Duration::from_millis(REMOVE_WAIT_MS);
    let mut done = Some(done);
    retry_every("md_remove_wait", RETRY_PERIOD_US, move || {
        let r = md.remove(&name, &bdev);
        let keep_waiting =
            matches!(r, Err(MdError::Busy(_))) && Instant::now() < deadline && is_failing(&md, &name, &bdev);
        if keep_waiting {
            return false;
        }
        if let Some(d) = done.take() {
            d(r.map(|()| json!(true)).map_err(md_error));
        }
        true
    });
}

/// `md_remove {name, bdev}` → true: `mdadm --remove` of a spare or faulty member.
fn md_remove(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: MemberParams = params!(params, reply);
    remove_member(reg(ctx), p.name, p.bdev, reply);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncActionParams {
    name: String,
    action: String,
}

/// `md_set_sync_action {name, action}` → true: writing md's `sync_action`.
fn md_set_sync_action(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: SyncActionParams = params!(params, reply);
    reply(
        reg(ctx)
            .set_sync_action(&p.name, &p.action)
            .map(|()| json!(true))
            .map_err(md_error),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncSpeedParams {
    name: String,
    #[serde(default)]
    min_kbs: Option<u64>,
    #[serde(default)]
    max_kbs: Option<u64>,
}

/// `md_set_sync_speed {name, min_kbs?, max_kbs?}` → true: md's `sync_speed_min`/`_max` (KiB/s).
fn md_set_sync_speed(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: SyncSpeedParams = params!(params, reply);
    if p.min_kbs.is_none() && p.max_kbs.is_none() {
        return reply(Err(RpcError::invalid_params(
            "Invalid parameters: give min_kbs, max_kbs or both",
        )));
    }
    reply(
        reg(ctx)
            .set_sync_speed(&p.name, p.min_kbs, p.max_kbs)
            .map(|()| json!(true))
            .map_err(md_error),
    )
}

/// The JSON of `md_examine`: mdadm --examine's facts under snake_case keys.
pub fn examine_json(bdev: &str, x: &Examine) -> Value {
    let sb = &x.sb;
    let mut v = json!({
        "bdev": bdev,
        "magic": "a92b4efc",
        "version": "1.2",
        "feature_map": format!("{:#x}", sb.feature_map),
        "array_uuid": Superblock::uuid_text(&sb.set_uuid),
        "name": String::from_utf8_lossy(&sb.set_name),
        "creation_time": sb.ctime & 0xFF_FFFF_FFFF,
        "raid_level": level_name(sb.level),
        "raid_devices": sb.raid_disks,
        "avail_dev_size_sectors": sb.data_size_sectors,
        "used_dev_size_sectors": sb.size_sectors,
        "array_size_kib": x.array_size_kib(),
        "data_offset_sectors": sb.data_offset_sectors,
        "super_offset_sectors": sb.super_offset_sectors,
        "state": if sb.is_clean() { "clean" } else { "active" },
        "device_uuid": Superblock::uuid_text(&sb.device_uuid),
        "update_time": sb.utime & 0xFF_FFFF_FFFF,
        "checksum": format!("{:08x}", keel_md::superblock::checksum(&sb.encode())),
        "events": sb.events,
        "device_role": x.role_text(),
        "array_state": x.array_state(),
    });
    let m = v.as_object_mut().expect("object");
    if sb.feature_map & feature::BITMAP_OFFSET != 0 {
        m.insert("internal_bitmap_sectors".into(), json!(sb.bitmap_offset_sectors));
    }
    if sb.feature_map & feature::RECOVERY_OFFSET != 0 {
        m.insert("recovery_offset_sectors".into(), json!(sb.recovery_offset_sectors));
    }
    if sb.chunk_sectors != 0 && sb.level != 1 {
        m.insert("chunk_size_kib".into(), json!(sb.chunk_sectors / 2));
    }
    if let Some(l) = x.layout_text() {
        m.insert("layout".into(), json!(l));
    }
    v
}

/// `md_examine {bdev}` → mdadm --examine's facts for one member bdev.
fn md_examine(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: ExamineParams = params!(params, reply);
    let name = p.bdev.clone();
    examine(&ctx.registry, &p.bdev, move |r| {
        reply(r.map(|x| examine_json(&name, &x)).map_err(md_error));
    });
}
