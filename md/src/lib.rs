//! Keel's md RAID layer (Linux md compatible).
//!
//! Built in steps. Present now: [`superblock`], the Linux md v1.x superblock as a fixed-size,
//! explicit little-endian format with its checksum and the kernel's load-time validation,
//! byte-compatible with what `mdadm --examine` reads. The array core, bitmap, personalities
//! and resync pollers follow (`shared/design.md` §6).
#![forbid(unsafe_code)]

pub mod bitmap;
mod error;
pub mod layout;
pub mod superblock;

pub use error::MdError;
