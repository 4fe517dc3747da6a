//! Keel's md RAID layer (Linux md compatible): arrays as bdevs over member bdevs, with v1.2
//! superblocks and internal write-intent bitmaps that mdadm and the kernel read.
//!
//! - Formats: [`superblock`] (the v1.x superblock, fixed-size little-endian with its checksum
//!   and the kernel's load checks), [`bitmap`] (the bitmap header and bit math), [`layout`]
//!   (linear, raid0 zones, raid10 near/far/offset address math); [`meta_io`] and [`examine`]
//!   read and write metadata through the bdev layer (`md_examine`).
//! - The array core, [`array`]: [`MdRegistry`] creates, assembles and stops arrays, adds, fails
//!   and removes members, and drives sync actions; each array's state shared with every core is
//!   in the private `shared` module (member slot states, resync checkpoint, the write gate:
//!   dirty marking, the sync window barrier, the bitmap), its immutable mapping in `geometry`.
//! - The data path, `channel`: per-core in-place forwarding and splitting for linear/raid0,
//!   read balancing with retry on another copy and gated mirrored writes for raid1/raid10.
//! - The control poller, `daemon` (one per array, main reactor): superblock writes, dirty/clean
//!   marking (safe mode), member failure and spare activation, the bitmap's disk side
//!   (`intent`), and sync runs.
//! - Resync, recovery, check and repair, `sync`: a poller task walking the array in windows
//!   locked against writes, speed-limited, checkpointed.
//!
//! Parity levels (raid4/5/6) are the next step (`shared/design.md` §6): a personality adds a
//! `Mapping`, a data-path write plan and a sync step; the core around them stays.
#![forbid(unsafe_code)]

pub mod array;
mod assemble;
pub mod bitmap;
mod channel;
mod daemon;
mod error;
pub mod examine;
mod geometry;
mod intent;
pub mod layout;
pub mod meta_io;
mod shared;
pub mod superblock;
mod sync;

pub use array::{ArrayInfo, CreateOpts, Level, MdRegistry};
pub use assemble::AssembleOpts;
pub use error::MdError;
