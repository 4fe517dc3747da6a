//! How a method file describes itself: a [`Table`] of [`MethodInfo`] entries, each with the
//! [`Phase`]s it may run in, and optionally the save_config [`Subsystem`] the file serves.
//!
//! Uses only the leaves [`crate::context`] and `decode`; the method files build their tables from these types
//! and the registry ([`crate::registry`]) lists the tables.

use std::sync::Arc;

use keel_bdev::{BdevModule, BdevRegistry};
use serde_json::Value;

use crate::context::{Ctx, Reply};
use crate::decode::refuse_positional;

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

impl MethodInfo {
    /// Runs the handler on `params` — the one way the server ([`crate::call_method`]) and
    /// configuration files ([`crate::config`]) call a method. Positional (array) params are
    /// refused here for every method, before the handler, with SPDK's -32603
    /// "spdk_json_decode_object failed" (`decode.rs`). Called on the main reactor; `reply` is
    /// called once.
    pub fn call(&self, ctx: &Ctx, params: Option<Value>, reply: Reply) {
        if let Err(e) = refuse_positional(&params) {
            return reply(Err(e));
        }
        (self.handler)(ctx, params, reply)
    }
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

/// The save_config subsystem a method file serves. The subsystem itself — its name and what it
/// depends on — is declared once, by the bdev module that owns it ([`keel_bdev::Subsystem`]:
/// `Subsystem::BDEV`, `keel_dm::SUBSYSTEM`), and the bdev registry orders the subsystems and
/// plans their calls ([`BdevRegistry::config_plan`]); the method file adds what only the RPC
/// layer knows.
pub struct Subsystem {
    /// The module's declaration (the `"subsystem"` key of a configuration file is its name).
    pub declared: keel_bdev::Subsystem,
    /// Loads the module that declares it into a registry ([`load_module`]), so the registry
    /// lists the subsystem even while it is empty; `None` for `"bdev"`, which every registry
    /// has. Called on any thread.
    pub load: Option<fn(&Arc<BdevRegistry>)>,
    /// Methods `framework_get_config` appends, without params, after the subsystem's planned
    /// calls (`bdev_wait_for_examine` closes `"bdev"`).
    pub closing: &'static [&'static str],
}

impl Subsystem {
    /// The subsystem's name.
    pub fn name(&self) -> &'static str {
        self.declared.name
    }
}

/// [`Subsystem::load`] for bdev module `T`: asks `reg` for it, creating it on first use.
pub fn load_module<T: BdevModule>(reg: &Arc<BdevRegistry>) {
    let _ = reg.module::<T>();
}

/// What one method file contributes to the registry.
pub struct Table {
    /// Its methods, in the order `rpc_get_methods` lists them.
    pub methods: &'static [MethodInfo],
    /// The subsystem it serves, if any.
    pub subsystem: Option<Subsystem>,
}
