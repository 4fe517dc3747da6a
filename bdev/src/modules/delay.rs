//! (being written) The delay bdev, as SPDK's bdev_delay.

use std::sync::Arc;

use serde::Deserialize;

use crate::{Bdev, BdevError, BdevRegistry};

/// Module name.
pub const MODULE: &str = "delay";

/// `bdev_delay_create` parameters (latencies in µs).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DelayOpts {
    pub base_bdev_name: String,
    pub name: String,
    #[serde(default)]
    pub uuid: Option<String>,
    pub avg_read_latency: u64,
    pub p99_read_latency: u64,
    pub avg_write_latency: u64,
    pub p99_write_latency: u64,
}

/// Creates a delay bdev over `base_bdev_name`, claiming it.
pub fn create(_reg: &BdevRegistry, _opts: &DelayOpts) -> Result<Arc<Bdev>, BdevError> {
    Err(BdevError::invalid("base_bdev_name", "delay module not built yet"))
}

/// Deletes a delay bdev (releases its base).
pub fn delete(reg: &BdevRegistry, name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    super::delete_of_module(reg, MODULE, name, done)
}
