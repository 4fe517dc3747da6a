//! Keel's device-mapper (`shared/design.md` §5, `shared/specs/dm-targets.md`).
//!
//! A **mapped device** is a bdev of module `"dm"` whose blocks are defined by a **table**: an
//! ordered, gap-free list of **targets**, each covering a range of the device and mapping it onto
//! other bdevs (`linear`, `striped`, `delay`, `flakey`) or answering by itself (`error`, `zero`).
//! Tables are written in dmsetup's syntax with bdev names as device arguments:
//!
//! ```text
//! 0 2097152 linear Malloc0 0
//! 2097152 4194304 striped 2 128 Malloc1 0 Malloc2 0
//! ```
//!
//! # Pieces
//!
//! | module | what it is | who calls it |
//! |---|---|---|
//! | [`target`] | the target contract: a [`TargetType`] (name, version, flags, constructor) apart from a [`Target`] instance (one table line) that maps I/O, reports status and takes messages | the table builder (constructor), the data path (`map`), the control path (status) |
//! | [`targets`] | the six target types | through [`target::target_types`] |
//! | [`table`] | dmsetup table text → validated immutable [`Table`]; errors name the line and the field | the control path |
//! | `device` | the registry of mapped devices ([`DmRegistry`]) and their life cycle: create → load (inactive) → resume (swap) → suspend (flush/noflush) → resume → remove; rename, events, deps, claims | RPC handlers on the main core |
//! | `channel` | the per-core data path: table snapshot, splitting, holding, draining | keel-bdev, on every core that does I/O |
//! | `config` | dm's save_config calls, in dependency order among themselves | the bdev registry's save_config plan |
//!
//! # Where the registry lives
//!
//! [`DmRegistry`] is dm's [`keel_bdev::BdevModule`]: each [`keel_bdev::BdevRegistry`] owns one,
//! built the first time anyone asks for it — [`DmRegistry::of`], which is
//! `reg.module::<DmRegistry>()` — and dropped with the registry. There is no process-wide
//! state: the many registries of the tests each have their own devices. As a module it declares
//! the `"dm"` save_config subsystem ([`SUBSYSTEM`], after `"bdev"`) and gives the bdev
//! registry its devices' calls (`dm_create`, `dm_load`, `dm_suspend`) with the bdevs each needs
//! and provides; a mapped device's bdev names the bdevs of its live table as its bases. The
//! registry's planner orders all of save_config from that, so bdevs of other modules built on a
//! mapped device are saved after it without dm or the RPC layer knowing about them.
//!
//! # Threads and ownership
//!
//! Everything under [`DmRegistry`] is control path: it runs on the main reactor (RPC handlers,
//! or a test inside `TestDriver::enter`), is `Send + Sync` and locks freely. A [`Table`] is built
//! and validated there, then handed to every core **finished and immutable** (`Arc<Table>`) with
//! `IoDevice::for_each_channel`; each core builds its own snapshot around it (the base bdevs'
//! channels on that core, per-target FIFOs) and from then on reads it without any lock.
//!
//! # The data path (see `channel.rs` for the essay)
//!
//! An I/O that lies inside one target (and inside one stripe chunk) is remapped in place and
//! forwarded as the same request: no allocation, no child. An I/O that crosses a target or chunk
//! boundary is split by the core into children taken from a preallocated per-channel pool
//! (keel-bdev's splitter, dm its policy), so targets never see a crossing I/O. A suspended device holds new I/O in a per-channel queue
//! (never fails it); suspend completes only when every core has drained what it had in flight.
//! Table swaps happen at resume, between a drain and the release of the held I/O, so no I/O is
//! ever mapped by one table and completed against another.
//!
//! # Claims
//!
//! Every bdev named by a live or inactive table is opened writable and claimed with module
//! `"dm"`. As in Linux (where all mapped devices share one holder), the claim is shared by every
//! dm table that names the bdev — two devices over one disk are fine, an md array or a passthru
//! over it is not — and released when the last table naming it is destroyed (clear, swap,
//! remove). A bdev a table names is *held*: deleting it (or a bdev whose removal would take it
//! along) is refused with EBUSY naming the devices (`device.rs`, via the bdev registry's
//! `check_removable`), so save_config never saves a table naming a deleted bdev.
//!
//! # Fuzzing
//!
//! [`fuzz::fuzz_one`] runs arbitrary bytes through table parsing, building, rendering and
//! mapping; the `dm_table` cargo-fuzz target calls it and `tests/fuzz_corpus.rs` replays its
//! corpus (`fuzz/corpus/dm_table/`) with random and mutated inputs in the normal test run.
#![forbid(unsafe_code)]

mod channel;
mod config;
mod device;
mod error;
mod events;
pub mod fuzz;
pub mod table;
pub mod target;
pub mod targets;

pub use device::{CreateOpts, DmInfo, DmRegistry, DRAIN_BOUND, MAJOR, MODULE, PRODUCT_NAME, SUBSYSTEM};
pub use error::DmError;
pub use events::Events;
pub use table::{LineSpec, Table};
pub use target::{Map, MapCx, Target, TargetType};
