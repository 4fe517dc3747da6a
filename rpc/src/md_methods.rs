//! md RPC methods (Keel's own; reached through `spdk-rpc --plugin keel_rpc`).

use serde::Deserialize;
use serde_json::{json, Value};

use keel_md::examine::{examine, level_name, Examine};
use keel_md::superblock::{feature, Superblock};
use keel_md::MdError;

use crate::methods::decode;
use crate::{Ctx, Reply, RpcError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExamineParams {
    bdev: String,
}

fn md_error(e: MdError) -> RpcError {
    let code = match &e {
        MdError::Bdev(m) if m.contains("not found") => -libc::ENODEV,
        MdError::Io(_) => -libc::EIO,
        _ => -libc::EINVAL,
    };
    RpcError::new(code, e.to_string())
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
