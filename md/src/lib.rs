//! Keel's md RAID layer (Linux md compatible): arrays as bdevs over member bdevs, with v1.2
//! superblocks and internal write-intent bitmaps that mdadm and the kernel read.
//!
//! The crate is an **array core** and **personalities** (the RAID levels) behind a small set of
//! contracts, the private `personality` module (its docs are the design essay: who calls what
//! on which core, who owns what). The core never matches on a level; a level is one file plus
//! one line in the personality registry.
//!
//! - Formats: [`superblock`] (the v1.x superblock, fixed-size little-endian with its checksum and
//!   the kernel's load checks) and [`bitmap`] (the bitmap header and bit math); [`meta_io`] and
//!   [`examine`] read and write metadata through the bdev layer (`md_examine`); [`fuzz`] is the
//!   md_superblock fuzz target's body (decoders, examine, assembly's decision on hostile
//!   metadata).
//! - The array core, [`array`](mod@array): [`MdRegistry`] creates, assembles and stops arrays,
//!   adds, fails and removes members and drives sync actions. It is md's bdev module
//!   ([`keel_bdev::BdevModule`]): one per bdev registry, owned by it
//!   (`reg.module::<MdRegistry>()`, no process-wide map), examining new bdevs for
//!   examine-on-appear and stopping every array at the registry's `fini_modules`; an array bdev
//!   names its members as its bases, so save_config recreates it after them. Each array's state
//!   shared with every core is in the private `shared` module (member slot states, resync checkpoint, the write gate: dirty
//!   marking, the sync window barrier, the bitmap), its level-independent geometry in `geometry`.
//!   Assembly (`assemble`): classify members from their superblocks, start, examine-on-appear.
//! - The per-core data path, `channel`: the core around a level's lane (dead arrays, flush and
//!   reset fan-out, the write gate, in-place forwarding, routes); what a lane works with and
//!   md's policy for keel-bdev's splitter (one engine for every layer that splits) in `lane`.
//! - The control poller, `daemon` (one per array, main reactor): superblock writes, dirty/clean
//!   marking (safe mode), member failure and spare activation, the bitmap's disk side
//!   (`intent`), and sync runs.
//! - Resync, recovery, check and repair, `sync`: a poller task walking the array in windows
//!   locked against writes, paced, checkpointed; the level's sync step does each piece.
//! - The personalities: [`linear`], [`raid0`] (their address math is public for tests and
//!   tools), `raid1` and [`raid10`]; linear and raid0 share the one-copy data path `striped`,
//!   raid1 and raid10 the copy levels' lane and sync step `mirror`; [`layout`] has what their
//!   math shares. Parity levels (raid4/5/6, `shared/design.md` §6) come as further files behind
//!   the same contracts.
#![forbid(unsafe_code)]

pub mod array;
mod assemble;
pub mod bitmap;
mod channel;
mod daemon;
mod error;
pub mod examine;
pub mod fuzz;
mod geometry;
mod intent;
mod lane;
pub mod layout;
pub mod linear;
pub mod meta_io;
mod mirror;
mod personality;
pub mod raid0;
mod raid1;
pub mod raid10;
mod shared;
mod striped;
pub mod superblock;
mod sync;

pub use array::{ArrayInfo, CreateOpts, MdRegistry};
pub use assemble::AssembleOpts;
pub use error::MdError;
