//! md RPC methods (Keel's own; reached through `spdk-rpc --plugin keel_rpc`).

use serde::Deserialize;
use serde_json::{json, Value};

use keel_md::examine::{examine, level_name, Examine};
use keel_md::superblock::{feature, Superblock};
use keel_md::MdError;
use keel_md::{CreateOpts, MdRegistry};

use crate::methods::decode;
use crate::{Ctx, Reply, RpcError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExamineParams {
    bdev: String,
}

fn md_error(e: MdError) -> RpcError {
    RpcError::new(e.errno(), e.to_string())
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

/// `md_create {name, level, members, chunk_kb?, layout?, bitmap?, assume_clean?, uuid?}` →
/// the array bdev's name.
pub(crate) fn md_create(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: CreateParams = match decode(params) {
        Ok(p) => p,
        Err(e) => return reply(Err(e)),
    };
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
    };
    MdRegistry::of(&ctx.registry).create(opts, move |r| reply(r.map(|()| json!(name)).map_err(md_error)));
}

/// `md_stop {name}` → true.
pub(crate) fn md_stop(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: NameParams = match decode(params) {
        Ok(p) => p,
        Err(e) => return reply(Err(e)),
    };
    MdRegistry::of(&ctx.registry).stop(&p.name, move |r| reply(r.map(|()| json!(true)).map_err(md_error)));
}

/// `md_get_arrays {name?}` → a list of arrays (what `mdadm --detail` shows, phase 1 subset).
pub(crate) fn md_get_arrays(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: GetParams = match decode(params) {
        Ok(p) => p,
        Err(e) => return reply(Err(e)),
    };
    let r = MdRegistry::of(&ctx.registry)
        .arrays(p.name.as_deref())
        .map(|v| Value::Array(v.iter().map(|a| a.to_json()).collect()))
        .map_err(md_error);
    reply(r)
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

pub(crate) fn md_examine(ctx: &Ctx, params: Option<Value>, reply: Reply) {
    let p: ExamineParams = match decode(params) {
        Ok(p) => p,
        Err(e) => return reply(Err(e)),
    };
    let name = p.bdev.clone();
    examine(&ctx.registry, &p.bdev, move |r| {
        reply(r.map(|x| examine_json(&name, &x)).map_err(md_error));
    });
}
