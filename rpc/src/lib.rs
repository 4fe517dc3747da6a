//! Keel's control plane: the SPDK-compatible JSON-RPC methods and JSON configuration files.
//!
//! Method handlers run on the main reactor. Each takes the decoded `params` (absent or a JSON
//! value) and a [`Reply`] that it calls exactly once, now or later (deletes finish after the
//! hot-removal round trip through every core). Parameter names, result shapes and error codes
//! follow SPDK (`shared/specs/spdk-rpc.md` §8) so SPDK's `rpc.py` and SPDK-format config files
//! work unmodified.
//!
//! [`config`] reads `{"subsystems": [...]}` files (as `spdk_tgt -c` / `bdevperf --json` do) and
//! applies their entries through the same handlers; [`server`] is the socket, which knows no
//! method: the application's dispatch function calls [`call_method`].
//!
//! # Layout
//!
//! Imports go one way, from the leaves up; no module imports one that imports it:
//!
//! 1. Leaves: `error` ([`RpcError`] and the JSON-RPC codes); importing only the error type,
//!    `decode` (`decode`, `decode_with`, `no_params` and the `params!` macro that decodes or
//!    answers the error) and `context` ([`Ctx`], [`Reply`], [`Framework`]); `retry` (waiting
//!    on the main reactor without blocking it); and `table` ([`MethodInfo`], [`Phase`],
//!    [`Subsystem`] and a file's `Table`), which uses `context` for the handler's signature.
//! 2. Method files, each declaring `pub(crate) static TABLE: Table` next to its handlers:
//!    [`framework`], `bdev_methods` (the bdev modules and the `"bdev"` subsystem), `bdev_info`,
//!    `raid_methods`, [`md_methods`] and [`dm_methods`] (with the `"dm"` subsystem).
//!    `raid_methods` serves SPDK's raid verbs with md's member removal from `md_methods`; no
//!    other method file imports another.
//! 3. [`registry`]: the list of tables, in a declared order that is the order of
//!    `rpc_get_methods` and, for the tables that bring a subsystem, of
//!    `framework_get_subsystems` and `save_config`; method lookup and dispatch with the phase
//!    check; and the three methods that describe the registry itself.
//! 4. [`config`], and the application (keel-tgt), which use the registry.
//!
//! # Adding a method
//!
//! Write `fn my_method(ctx: &Ctx, params: Option<Value>, reply: Reply)` in the method file of
//! its area (`params!` decodes the request or answers the error) and add
//! `method!(my_method, Runtime)` to that file's `TABLE`: the wire name is the function's name,
//! the [`Phase`] says whether it may run before `framework_start_init`, after it, or both.
//!
//! # Adding a method file or a subsystem
//!
//! A new area (nvmf, nbd, ublk) is one file, say `nvmf_methods.rs`, with its handlers and
//!
//! ```text
//! pub(crate) static TABLE: Table = Table {
//!     methods: &[method!(nvmf_create_subsystem, Runtime), /* … */],
//!     // `None` for a file whose methods belong to an existing subsystem.
//!     subsystem: Some(Subsystem { name: "nvmf", depends_on: &["bdev"], config: nvmf_config }),
//! };
//! ```
//!
//! plus its `mod` line here and one line, `&nvmf_methods::TABLE`, in the registry's list,
//! after the tables of the subsystems it depends on. `config` returns the calls that recreate
//! the subsystem's current state; configuration files then accept the subsystem and
//! `save_config` saves it. The registry's tests check that every method name is unique, that
//! every `method!` entry in the sources is reachable and that subsystems follow their
//! dependencies.
#![forbid(unsafe_code)]

mod bdev_info;
mod bdev_methods;
pub mod config;
mod context;
mod decode;
pub mod dm_methods;
mod error;
pub mod framework;
pub mod jsonrpc;
pub mod md_methods;
pub mod nbd_methods;
mod raid_methods;
pub mod registry;
mod retry;
pub mod server;
mod table;

pub use context::{Ctx, Framework, Reply, StartInit};
pub use error::{RpcError, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR};
pub use registry::{call_method, find_method, methods};
pub use table::{Handler, MethodInfo, Phase, Subsystem};
