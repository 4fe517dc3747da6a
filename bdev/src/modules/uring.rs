//! (being written) The uring bdev: a file or block device through io_uring.

use std::sync::Arc;

use serde::Deserialize;

use crate::{Bdev, BdevError, BdevRegistry};

/// `bdev_uring_create` parameters (SPDK names).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UringOpts {
    pub filename: String,
    pub name: String,
    #[serde(default)]
    pub block_size: Option<u32>,
    #[serde(default)]
    pub uuid: Option<String>,
}

/// `bdev_aio_create` parameters (SPDK names); served by this module.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AioOpts {
    pub name: String,
    pub filename: String,
    #[serde(default)]
    pub block_size: Option<u32>,
    #[serde(default)]
    pub readonly: Option<bool>,
    #[serde(default)]
    pub fallocate: Option<bool>,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub nowait: Option<bool>,
}

/// Creates a uring bdev.
pub fn create(_reg: &BdevRegistry, _opts: &UringOpts) -> Result<Arc<Bdev>, BdevError> {
    Err(BdevError::invalid("filename", "uring module not built yet"))
}

/// Creates a bdev for `bdev_aio_create` (product name "AIO disk", module "aio").
pub fn create_aio(_reg: &BdevRegistry, _opts: &AioOpts) -> Result<Arc<Bdev>, BdevError> {
    Err(BdevError::invalid("filename", "uring module not built yet"))
}

/// Deletes a uring bdev.
pub fn delete(reg: &BdevRegistry, name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    super::delete_of_module(reg, "uring", name, done)
}

/// Deletes an aio bdev.
pub fn delete_aio(reg: &BdevRegistry, name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    super::delete_of_module(reg, "aio", name, done)
}
