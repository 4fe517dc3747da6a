//! Keel's control plane: the SPDK-compatible JSON-RPC methods and JSON configuration files.
//!
//! Method handlers run on the main reactor. Each takes the decoded `params` (absent or a JSON
//! value) and a [`Reply`] that it calls exactly once, now or later (deletes finish after the
//! hot-removal round trip through every core). Parameter names, result shapes and error codes
//! follow SPDK (`shared/specs/spdk-rpc.md` §8) so SPDK's `rpc.py` and SPDK-format config files
//! work unmodified.
//!
//! [`config`] reads `{"subsystems": [...]}` files (as `spdk_tgt -c` / `bdevperf --json` do) and
//! applies their entries through the same handlers.
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
mod raid_methods;
pub mod registry;
mod retry;
pub mod server;
mod table;

pub use context::{Ctx, Framework, Reply, StartInit};
pub use error::{RpcError, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR};
pub use registry::{call_method, find_method, methods};
pub use table::{Handler, MethodInfo, Phase, Subsystem};
