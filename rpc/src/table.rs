//! How a method file describes itself: a [`Table`] of [`MethodInfo`] entries, each with the
//! [`Phase`]s it may run in, and optionally the [`Subsystem`] the file brings.
//!
//! Uses only the leaf [`crate::context`]; the method files build their tables from these types
//! and the registry ([`crate::registry`]) lists the tables.

use serde_json::Value;

use crate::context::{Ctx, Reply};

/// A method handler. Runs on the main reactor; owns `params` and calls the [`Reply`] exactly
/// once, now or later.
pub type Handler = fn(&Ctx, Option<Value>, Reply);

/// When a method may be called: SPDK's `SPDK_RPC_STARTUP` / `SPDK_RPC_RUNTIME` masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Only before `framework_start_init` (SPDK's STARTUP state).
    Startup,
    /// Only after it (RUNTIME). Every bdev constructor: the bdevs it needs exist only then.
    Runtime,
    /// In both states.
    Both,
}

impl Phase {
    /// Whether the method may run before `framework_start_init`.
    pub fn in_startup(self) -> bool {
        matches!(self, Phase::Startup | Phase::Both)
    }

    /// Whether the method may run after it.
    pub fn in_runtime(self) -> bool {
        matches!(self, Phase::Runtime | Phase::Both)
    }

    /// Whether the method may run now, `runtime` telling the framework's state.
    pub fn allows(self, runtime: bool) -> bool {
        if runtime {
            self.in_runtime()
        } else {
            self.in_startup()
        }
    }
}

/// One method: its wire name, its handler and when it may run.
pub struct MethodInfo {
    pub name: &'static str,
    pub handler: Handler,
    pub phase: Phase,
}

/// The table entry of handler `$f` (the wire name is the function's name) for phase `$phase`
/// (a [`Phase`] variant): `method!(bdev_null_create, Runtime)`.
macro_rules! method {
    ($f:ident, $phase:ident) => {
        $crate::table::MethodInfo {
            name: stringify!($f),
            handler: $f,
            phase: $crate::table::Phase::$phase,
        }
    };
}
pub(crate) use method;

/// A subsystem as `framework_get_subsystems` and `save_config` show it.
pub struct Subsystem {
    /// SPDK's subsystem name (`"bdev"`, …): the `"subsystem"` key of a configuration file.
    pub name: &'static str,
    /// Subsystems that must be configured before this one (their tables come earlier in the
    /// registry).
    pub depends_on: &'static [&'static str],
    /// The `{"method", "params"}` calls that recreate the subsystem's current state, in order
    /// (`framework_get_config`, hence `save_config`). Called on the main reactor.
    pub config: fn(&Ctx) -> Vec<Value>,
}

/// What one method file contributes to the registry.
pub struct Table {
    /// Its methods, in the order `rpc_get_methods` lists them.
    pub methods: &'static [MethodInfo],
    /// The subsystem it brings, if any.
    pub subsystem: Option<Subsystem>,
}
