//! The passthru bdev, as SPDK's `bdev_passthru`: a layer that forwards every request unchanged
//! to the bdev below it. It exists to show (and test) the stacking contract: it claims its base,
//! has the base's geometry and supported ops, keeps its own statistics, completes from its own
//! poller, and disappears when its base is hot-removed.
//!
//! All the forwarding is the shared machinery of `modules/stack.rs`; passthru adds no per-I/O
//! behaviour (its hooks are the defaults), only its names and JSON views:
//! `driver_specific` = `{"passthru": {"name", "base_bdev_name"}}`, `config()` =
//! `bdev_passthru_create {name, base_bdev_name, uuid}`.

use std::sync::Arc;

use keel_reactor::CoreId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::stack::{create_layer, Hooks, Layer, LayerSpec, LinkInfo};
use super::{obj, parse_uuid};
use crate::{Bdev, BdevError, BdevInfo, BdevRegistry, ConfigCall};

/// Module name.
pub const MODULE: &str = "passthru";

/// `product_name` of passthru bdevs (SPDK's).
pub const PRODUCT_NAME: &str = "passthru";

/// `bdev_passthru_create` parameters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PassthruOpts {
    pub base_bdev_name: String,
    pub name: String,
    #[serde(default)]
    pub uuid: Option<String>,
}

impl PassthruOpts {
    /// Options without a UUID (a random one is chosen).
    pub fn new(name: &str, base_bdev_name: &str) -> PassthruOpts {
        PassthruOpts {
            base_bdev_name: base_bdev_name.to_string(),
            name: name.to_string(),
            uuid: None,
        }
    }
}

struct PassthruLayer;

/// Passthru forwards everything: the default hooks.
struct PassthruHooks;

impl Hooks for PassthruHooks {
    // Passthru does nothing with a success: it goes straight to the layer above.
    const FORWARD_IN_PLACE: bool = true;
    const ROUTE: bool = true;
}

impl Layer for PassthruLayer {
    type Hooks = PassthruHooks;

    fn hooks(&self, _core: CoreId) -> PassthruHooks {
        PassthruHooks
    }

    fn driver_specific(&self, link: &LinkInfo) -> Value {
        json!({"passthru": {"name": link.name, "base_bdev_name": link.base_name}})
    }

    fn config(&self, info: &BdevInfo, link: &LinkInfo) -> Option<ConfigCall> {
        Some(ConfigCall {
            method: "bdev_passthru_create",
            params: obj([
                ("name", json!(info.name)),
                ("base_bdev_name", json!(link.base_name)),
                ("uuid", json!(info.uuid.to_string())),
            ]),
        })
    }
}

/// Creates a passthru bdev `name` over `base_bdev_name`, claiming the base. Fails with
/// `NotFound` (no such base), `Claimed`/`HasWriters` (base taken), `Exists` (name taken) or
/// `InvalidParam` (bad name or UUID), leaving nothing registered or claimed. Called on the main
/// core; the base's hot removal removes the passthru bdev too. Takes the registry's `Arc`
/// because that cascade needs to reach the registry later.
pub fn create(reg: &Arc<BdevRegistry>, opts: &PassthruOpts) -> Result<Arc<Bdev>, BdevError> {
    let uuid = parse_uuid("uuid", opts.uuid.as_deref())?;
    create_layer(
        reg,
        LayerSpec {
            module: MODULE,
            product_name: PRODUCT_NAME,
            name: opts.name.clone(),
            base_name: &opts.base_bdev_name,
            uuid,
        },
        PassthruLayer,
    )
}

/// Deletes a passthru bdev; its base is released (claimable again) when `done` runs. Called on
/// the main core.
pub fn delete(reg: &BdevRegistry, name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    super::delete_of_module(reg, MODULE, name, done)
}
