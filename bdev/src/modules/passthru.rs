//! (being written) The passthru bdev, as SPDK's bdev_passthru.

use std::sync::Arc;

use serde::Deserialize;

use crate::{Bdev, BdevError, BdevRegistry};

/// Module name.
pub const MODULE: &str = "passthru";

/// `bdev_passthru_create` parameters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PassthruOpts {
    pub base_bdev_name: String,
    pub name: String,
    #[serde(default)]
    pub uuid: Option<String>,
}

/// Creates a passthru bdev over `base_bdev_name`, claiming it.
pub fn create(_reg: &BdevRegistry, _opts: &PassthruOpts) -> Result<Arc<Bdev>, BdevError> {
    Err(BdevError::invalid("base_bdev_name", "passthru module not built yet"))
}

/// Deletes a passthru bdev (releases its base).
pub fn delete(reg: &BdevRegistry, name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    super::delete_of_module(reg, MODULE, name, done)
}
