//! Keel's block-device layer.
//!
//! A **bdev** is a registered block device ([`Bdev`]) built by a **module** (malloc, null,
//! uring, error, delay, passthru here; dm and md elsewhere). Modules declare what a bdev is as
//! data ([`BdevParams`]: size, block size, supported ops) and implement two small traits:
//! [`BdevBackend`] (per bdev, shared by all cores) and [`BackendChannel`] (per bdev per core).
//! The core does the generic work: naming, claims, validation of every request, statistics,
//! hot removal.
//!
//! A module with state of its own per registry (dm's devices, md's arrays, later an NVMe
//! driver's controllers or an export's connections) also implements [`BdevModule`]: the
//! registry creates it on first use ([`BdevRegistry::module`]) and keeps it, shows it every new
//! bdev (examine), stops it at shutdown ([`BdevRegistry::fini_modules`]) and asks it for its
//! part of save_config. [`BdevRegistry::config_plan`] orders all of save_config — subsystems by
//! their declared dependencies, every bdev after its bases ([`BdevBackend::bases`]) in the
//! latest subsystem among theirs — without knowing any module. A module reaches its own backend
//! behind a bdev with [`Bdev::backend_as`]. The design essay is in `module.rs`.
//!
//! A layer over other bdevs forwards requests in place along [`ForwardPath`]s or publishes its
//! mapping as a [`Route`] (`forward.rs`: passthru, dm, md). One with per-core state of its own
//! keeps it in a [`LayerCore`] (the state, its completion queue and the poller draining it:
//! `layer.rs`; dm and md), and cuts what it cannot forward into children with a [`Splitter`]
//! driven by its [`SplitPolicy`] (`split.rs`); chunks round-robin over legs are a [`Striping`].
//!
//! # Using a bdev
//!
//! 1. [`BdevRegistry::open`] gives a [`Descriptor`] (read-only or writable); a module stacking
//!    on a bdev also [`Descriptor::claim`]s it so nobody writes under its feet.
//! 2. On each core that does I/O, [`Descriptor::channel`] gives a [`Channel`].
//! 3. Take requests from an [`IoPool`] (allocated once), fill them with
//!    [`IoRequest::prepare`] and buffers ([`DmaBuf`] windows), and [`Channel::submit`] them
//!    with a [`CompletionQueue`] that one of your pollers drains.
//!
//! After step 2 nothing on this path allocates or locks: requests and buffers are reused,
//! completion queues keep their capacity, statistics are per-channel `Cell`s, the removal flag
//! is an atomic load. `tests/no_alloc.rs` holds the proof.
//!
//! # Threading
//!
//! `Bdev`, `BdevRegistry`, `Descriptor` and modules are `Send + Sync` control-path objects. Channels,
//! requests, buffers and completion queues are `!Send` and stay on the core that made them.
#![deny(unsafe_code)]

mod bdev;
pub mod buf;
mod error;
mod forward;
pub mod gate;
mod holders;
mod io;
mod layer;
mod module;
pub mod modules;
mod ram;
mod registry;
mod split;
pub mod stats;
mod striping;
pub mod tokens;

pub use bdev::{
    size_bytes_checked, BackendChannel, Bdev, BdevBackend, BdevChannel, BdevEvent, BdevInfo, BdevParams, Channel,
    ChannelCx, ConfigCall, Descriptor, IoCaps,
};
pub use buf::{BufPool, DmaBuf};
pub use error::BdevError;
pub use forward::{ForwardCtx, ForwardPath, Leg, Route, RouteHandle, ROUTE_LEGS};
pub use gate::{Histogram, QosLimits};
pub use io::{
    iov_windows, slice_iovs, zero_iovs, CompletionQueue, IoBox, IoOp, IoPool, IoRequest, IoStatus, IoVec, SgList,
    Submit, MAX_DEPTH, MAX_IOVS,
};
pub use layer::{LayerCore, LayerHandle, LayerState};
pub use module::{
    BdevModule, ConfigEntry, ConfigPlan, ExamineToken, ModuleDone, Subsystem, SubsystemConfig, SubsystemInfo,
};
pub use registry::BdevRegistry;
pub use split::{BaseId, ChildDone, Children, Parent, Sent, SplitPolicy, Splitter, Step};
pub use stats::{ChannelStats, IoStats, OpStats, StatsReset};
pub use striping::{StripePlace, Striping};
