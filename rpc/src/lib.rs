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
//!    `decode` (`decode`, `decode_with`, `no_params`, `refuse_positional` and the `params!`
//!    macro that decodes or answers the error) and `context` ([`Ctx`], [`Reply`],
//!    [`Framework`]); `retry` (waiting on the main reactor without blocking it); and `table`
//!    ([`MethodInfo`], [`Phase`], [`Subsystem`] and a file's `Table`), which uses `context` for
//!    the handler's signature and `decode` for the one check every call passes
//!    ([`MethodInfo::call`]: params are objects).
//! 2. Method files, each declaring `pub(crate) static TABLE: Table` next to its handlers:
//!    [`framework`], `bdev_methods` (the bdev modules; serves `"bdev"`), `bdev_info`,
//!    `raid_methods`, [`md_methods`], [`dm_methods`] (serves `"dm"`), [`nbd_methods`] (serves
//!    `"nbd"`), [`nbd_disk_methods`] (kernel `/dev/nbdX`, in `"nbd"`), `ublk_methods`
//!    (serves `"ublk"`), [`nvme_methods`] (the NVMe initiator, in `"bdev"`) and `qos_methods`
//!    (per-bdev rate limits and histograms, saved by the bdev layer's plan). `raid_methods`
//!    serves SPDK's raid verbs with md's member removal from `md_methods` and the raid module's
//!    state (`raid_module`, a leaf besides md: configuring raids, process options; a
//!    `BdevModule` examining new bdevs), and gives `bdev_info` a raid's bdev view; no other
//!    method file imports another.
//! 3. [`registry`]: the list of tables, in a declared order that is the order of
//!    `rpc_get_methods`; method lookup and dispatch with the phase check; the subsystems the
//!    tables serve; and the three methods that describe the registry itself.
//! 4. [`config`], and the application (keel-tgt), which use the registry.
//!
//! # Subsystems and save_config
//!
//! A save_config subsystem (`"bdev"`, `"dm"`, later `"nvmf"`, `"nbd"`) is declared once, by the
//! bdev module that owns it: a [`keel_bdev::Subsystem`] constant with its name and the
//! subsystems it depends on, which the module returns from [`keel_bdev::BdevModule::subsystem`]
//! (`"bdev"` is the bdev layer's own, [`keel_bdev::Subsystem::BDEV`]). The bdev registry is the
//! one source of their order and content: [`keel_bdev::BdevRegistry::subsystems`] lists them in
//! dependency order — `framework_get_subsystems` answers with exactly that — and
//! [`keel_bdev::BdevRegistry::config_plan`] places every bdev's and every module's call in one
//! of them — `framework_get_config` answers with a subsystem's part, plus the closing calls of
//! the table that serves it (`bdev_wait_for_examine` for `"bdev"`). SPDK's `save_config`
//! (client side) asks both. Nothing here knows which module stacks on which: a passthru over a
//! dm device lands in `"dm"` because its backend names its base, and an md array over a dm
//! device because it names its members.
//!
//! A table serving a subsystem names the module's declaration and how to load the module into a
//! registry ([`registry::load_modules`]: keel-tgt does at start-up, the describing methods do
//! before they answer), so an empty subsystem is listed all the same. Configuration files may
//! name the served subsystems ([`registry::find_subsystem`]); others are skipped.
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
//!     subsystem: Some(Subsystem {
//!         declared: keel_nvmf::SUBSYSTEM, // Subsystem { name: "nvmf", depends_on: &["bdev"] }
//!         load: Some(load_module::<NvmfModule>),
//!         closing: &[],
//!     }),
//! };
//! ```
//!
//! plus its `mod` line here and one line, `&nvmf_methods::TABLE`, in the registry's list. The
//! module (`NvmfModule`, a [`keel_bdev::BdevModule`]) declares the subsystem and gives its
//! save_config calls with the bdevs each needs ([`keel_bdev::ConfigEntry`]); the registry orders
//! them after what they need. Configuration files then accept the subsystem and `save_config`
//! saves it. The registry's tests check that every method name is unique, that every `method!`
//! entry in the sources is reachable and that the listed subsystems are exactly the served
//! ones, each after its dependencies.
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
pub mod log_methods;
pub mod md_methods;
pub mod nbd_disk_methods;
pub mod nbd_methods;
pub mod nvme_methods;
pub mod nvmf_methods;
mod qos_methods;
mod raid_methods;
mod raid_module;
pub mod registry;
mod retry;
pub mod server;
mod split_methods;
mod table;
mod ublk_methods;

pub use context::{Ctx, Framework, Reply, StartInit};
pub use error::{RpcError, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR};
pub use registry::{call_method, find_method, load_modules, methods};
pub use table::{load_module, Handler, MethodInfo, Phase, Subsystem};
