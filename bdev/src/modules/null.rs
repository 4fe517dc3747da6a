//! The null bdev: completes every request successfully without touching data (reads leave the
//! buffers as they were). For measuring the stack itself.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::{delete_of_module, obj, parse_uuid, refuse_md};
use crate::{
    BackendChannel, Bdev, BdevBackend, BdevError, BdevInfo, BdevParams, BdevRegistry, ChannelCx, ConfigCall, IoBox,
    IoCaps, IoOp, IoStatus, Submit,
};

/// `bdev_null_create` parameters (SPDK names).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NullOpts {
    pub name: String,
    pub num_blocks: u64,
    pub block_size: u32,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub physical_block_size: Option<u32>,
    #[serde(default)]
    pub md_size: Option<u32>,
    #[serde(default)]
    pub dif_type: Option<i32>,
    #[serde(default)]
    pub dif_is_head_of_md: Option<bool>,
    #[serde(default)]
    pub dif_pi_format: Option<u32>,
    #[serde(default)]
    pub preferred_write_alignment: Option<u32>,
    #[serde(default)]
    pub preferred_write_granularity: Option<u32>,
    #[serde(default)]
    pub optimal_write_size: Option<u32>,
    #[serde(default)]
    pub preferred_unmap_alignment: Option<u32>,
    #[serde(default)]
    pub preferred_unmap_granularity: Option<u32>,
}

impl NullOpts {
    /// Minimal options.
    pub fn new(name: &str, num_blocks: u64, block_size: u32) -> NullOpts {
        serde_json::from_value(json!({"name": name, "num_blocks": num_blocks, "block_size": block_size}))
            .expect("valid null options")
    }
}

/// Module name.
pub const MODULE: &str = "null";

struct NullBackend {
    physical_block_size: u32,
}

struct NullChannel;

impl BackendChannel for NullChannel {
    #[inline]
    fn submit(&self, io: IoBox) -> Submit {
        io.complete(IoStatus::Success);
        Submit::Accepted
    }

    fn leaf(&self) -> bool {
        true
    }
}

impl BdevBackend for NullBackend {
    fn create_channel(&self, _cx: &ChannelCx) -> Box<dyn BackendChannel> {
        Box::new(NullChannel)
    }

    fn config(&self, info: &BdevInfo) -> Option<ConfigCall> {
        Some(ConfigCall {
            method: "bdev_null_create",
            params: obj([
                ("name", json!(info.name)),
                ("num_blocks", json!(info.num_blocks)),
                ("block_size", json!(info.block_size)),
                ("physical_block_size", json!(self.physical_block_size)),
                ("uuid", json!(info.uuid.to_string())),
            ]),
        })
    }
}

/// Creates a null bdev. Called on the main core.
pub fn create(reg: &BdevRegistry, opts: &NullOpts) -> Result<Arc<Bdev>, BdevError> {
    refuse_md(opts.md_size, opts.dif_type)?;
    let physical_block_size = opts.physical_block_size.unwrap_or(opts.block_size);
    if physical_block_size < opts.block_size || !physical_block_size.is_power_of_two() {
        return Err(BdevError::invalid(
            "physical_block_size",
            format!("{physical_block_size} must be a power of two not below block_size"),
        ));
    }
    reg.register(
        BdevParams {
            name: opts.name.clone(),
            uuid: parse_uuid("uuid", opts.uuid.as_deref())?,
            product_name: "Null disk",
            module: MODULE,
            block_size: opts.block_size,
            num_blocks: opts.num_blocks,
            caps: IoCaps::of(&[
                IoOp::Read,
                IoOp::Write,
                IoOp::Flush,
                IoOp::Unmap,
                IoOp::WriteZeroes,
                IoOp::Reset,
            ]),
            optimal_io_boundary_blocks: 0,
        },
        Arc::new(NullBackend { physical_block_size }),
    )
}

/// Deletes a null bdev (hot removal). Called on the main core.
pub fn delete(reg: &BdevRegistry, name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    delete_of_module(reg, MODULE, name, done)
}
