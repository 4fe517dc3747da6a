//! (being written) The error-injection bdev, as SPDK's bdev_error.

use std::sync::Arc;

use serde::Deserialize;

use crate::{Bdev, BdevError, BdevRegistry};

/// Module name.
pub const MODULE: &str = "error";

/// `bdev_error_create` parameters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ErrorOpts {
    pub base_name: String,
    #[serde(default)]
    pub uuid: Option<String>,
}

/// `bdev_error_inject_error` parameters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InjectOpts {
    pub name: String,
    pub io_type: String,
    pub error_type: String,
    #[serde(default)]
    pub num: Option<u32>,
    #[serde(default)]
    pub queue_depth: Option<u64>,
    #[serde(default)]
    pub corrupt_offset: Option<u64>,
    #[serde(default)]
    pub corrupt_value: Option<u8>,
    #[serde(default)]
    pub nvme_sct: Option<u32>,
    #[serde(default)]
    pub nvme_sc: Option<u32>,
}

/// Creates `EE_<base_name>` over `base_name`, claiming it.
pub fn create(_reg: &BdevRegistry, _opts: &ErrorOpts) -> Result<Arc<Bdev>, BdevError> {
    Err(BdevError::invalid("base_name", "error module not built yet"))
}

/// Arms (or with io_type "clear", disarms) an injection.
pub fn inject(_reg: &BdevRegistry, _opts: &InjectOpts) -> Result<(), BdevError> {
    Err(BdevError::invalid("name", "error module not built yet"))
}

/// Deletes an error bdev (releases its base).
pub fn delete(reg: &BdevRegistry, name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    super::delete_of_module(reg, MODULE, name, done)
}
