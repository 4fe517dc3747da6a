//! Keel's md RAID layer (Linux md compatible): arrays as bdevs over member bdevs, with v1.2
//! superblocks and internal write-intent bitmaps that mdadm and the kernel read.
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
pub mod linear;
pub mod meta_io;
mod mirror;
mod personality;
pub mod raid0;
mod raid1;
pub mod raid10;
mod shared;
mod split;
mod striped;
pub mod superblock;
mod sync;

pub use array::{ArrayInfo, CreateOpts, MdRegistry};
pub use assemble::AssembleOpts;
pub use error::MdError;
