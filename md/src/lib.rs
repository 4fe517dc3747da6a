//! Keel's md RAID layer (Linux md compatible).
//!
//! Built in steps. Present now:
//! - [`superblock`]: the Linux md v1.x superblock as a fixed-size, explicit little-endian format
//!   with its checksum and the kernel's load-time validation, byte-compatible with mdadm;
//! - [`bitmap`]: the write-intent bitmap header and bit math;
//! - [`layout`]: linear, raid0 zone and raid10 address math;
//! - [`meta_io`] and [`examine`]: reading a member's superblock through the bdev layer
//!   (`md_examine`).
//!
//! - [`array`] (with the private `channel` data path): arrays as bdevs for linear, raid0 and
//!   raid1 — `md_create`, `md_stop`, `md_get_arrays` ([`array::MdRegistry`]).
//!
//! The write-intent bitmap, resync/recovery pollers, assembly, member failure, raid10 and the
//! parity levels follow (`shared/design.md` §6).
#![forbid(unsafe_code)]

pub mod array;
pub mod bitmap;
mod channel;
mod error;
pub mod examine;
pub mod layout;
pub mod meta_io;
pub mod superblock;

pub use array::{ArrayInfo, CreateOpts, Level, MdRegistry};
pub use error::MdError;
