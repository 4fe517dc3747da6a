//! The uring bdev (`bdev_uring_create`) and the aio bdev (`bdev_aio_create`): a file or a block
//! device accessed through io_uring, polled.
//!
//! # One backend, two faces
//!
//! SPDK has two modules for "a bdev over a file": bdev_uring and bdev_aio (libaio). Keel serves
//! both with one backend and a small `Flavor` that only changes what is declared (product name,
//! module name, supported ops, `driver_specific`, `config()`) and how the file is opened (aio can
//! be read-only). The data path is the same io_uring code for both.
//!
//! # Opening
//!
//! The file is opened once, at create time, `O_RDWR` (aio `readonly`: `O_RDONLY`) with
//! `O_DIRECT`, and locked: an exclusive `flock`, or a shared one for aio `readonly` — a file
//! another bdev or process holds is refused, naming the holder (`file.rs` explains the lock). A filesystem that refuses `O_DIRECT` (EINVAL) gets buffered I/O and a warning.
//! The block size is the `block_size` parameter if given (a power of two ≥ 512 and, with
//! `O_DIRECT`, not below the device's logical block size), else auto-detected: `BLKSSZGET` for a
//! block device; for a regular file 512 as SPDK does, raised to the filesystem's direct-I/O
//! offset alignment (`statx` `STATX_DIOALIGN`) when that is larger. The size is the file size
//! rounded down to whole blocks. The fd is shared (`Arc<File>`) by the backend and every
//! channel, so it stays open as long as any ring may still use it; the backend lets go of it
//! when the bdev is unregistered, so the file (and its lock) closes with the last channel.
//!
//! # Parts
//!
//! * This file: the options, create and delete (control path, main core).
//! * `file.rs`, the file part: opening and checking the file, the backend every core shares,
//!   and the per-core channel — one io_uring per core, requests in flight in a
//!   [`crate::tokens::TokenQueue`] keyed by the SQE's `user_data`, SQEs built from requests,
//!   completions turned back into request completions, reset, hot removal and teardown.
//! * `ring.rs`, the ring part: the io_uring itself — set-up flags, the submission queue, at most
//!   one non-blocking `io_uring_enter` per reactor turn and only when needed, the completions,
//!   a cancel-all entry and the bounded teardown wait. It knows nothing of files or requests.
//!
//! # Not done
//!
//! * Registered (fixed) buffers: requests bring `DmaBuf`s from any pool or owner, so using
//!   `ReadFixed`/`WriteFixed` would need a registry of buffer regions shared by every ring and a
//!   lookup per I/O; it saves only the page pinning of `O_DIRECT` and is left for when the
//!   per-reactor buffer pool registers its arenas.
//! * aio `nowait` is accepted and reported but changes nothing: io_uring already tries every
//!   request without blocking first and punts to its worker pool only when it must.

mod file;
mod ring;

use std::sync::Arc;

use serde::Deserialize;

use super::{delete_of_module, parse_uuid};
use crate::{Bdev, BdevError, BdevParams, BdevRegistry, IoCaps, IoOp};
use file::{memory_backed, open_file, FileBackend};

/// Module name of `bdev_uring_create` bdevs.
pub const MODULE: &str = "uring";
/// Module name of `bdev_aio_create` bdevs.
pub const MODULE_AIO: &str = "aio";

/// Submission-ring entries per channel, and tokens (requests in flight) per channel. 512 covers
/// the deepest queue one core drives (bdevperf/fio runs use qd ≤ 256) with room for several
/// submitters; the SQ costs 32 KiB and the token queue ~150 KiB per channel. The completion
/// ring is twice as large (the kernel's default), so it cannot overflow: at most
/// `RING_DEPTH + 1` requests (the +1 is a cancel) are ever in the kernel.
pub const RING_DEPTH: u32 = 512;

// ---------------------------------------------------------------------------------------------
// Options and create/delete
// ---------------------------------------------------------------------------------------------

/// `bdev_uring_create` parameters (SPDK names), decoded by RPC or JSON config on the main core.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UringOpts {
    pub filename: String,
    pub name: String,
    /// Bytes; `None` or 0 = auto-detect.
    #[serde(default)]
    pub block_size: Option<u32>,
    #[serde(default)]
    pub uuid: Option<String>,
}

/// `bdev_aio_create` parameters (SPDK names), decoded by RPC or JSON config on the main core;
/// served by this module.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AioOpts {
    pub name: String,
    pub filename: String,
    /// Bytes; `None` or 0 = auto-detect.
    #[serde(default)]
    pub block_size: Option<u32>,
    /// Open `O_RDONLY`; the bdev then does not support write, unmap or write_zeroes.
    #[serde(default)]
    pub readonly: Option<bool>,
    /// Support unmap (`FALLOC_FL_PUNCH_HOLE`) and write_zeroes (`FALLOC_FL_ZERO_RANGE`).
    #[serde(default)]
    pub fallocate: Option<bool>,
    #[serde(default)]
    pub uuid: Option<String>,
    /// Accepted and reported; io_uring already submits without blocking (see module docs).
    #[serde(default)]
    pub nowait: Option<bool>,
}

/// Which RPC made the bdev: changes only what is declared, not the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Uring,
    Aio {
        readonly: bool,
        fallocate: bool,
        nowait: bool,
    },
}

impl Flavor {
    fn readonly(self) -> bool {
        matches!(self, Flavor::Aio { readonly: true, .. })
    }

    fn caps(self) -> IoCaps {
        let all = IoCaps::of(&[
            IoOp::Read,
            IoOp::Write,
            IoOp::Flush,
            IoOp::Unmap,
            IoOp::WriteZeroes,
            IoOp::Reset,
        ]);
        match self {
            Flavor::Uring => all,
            Flavor::Aio {
                readonly, fallocate, ..
            } => {
                let mut caps = all;
                if readonly || !fallocate {
                    caps = caps.without(IoOp::Unmap).without(IoOp::WriteZeroes);
                }
                if readonly {
                    caps = caps.without(IoOp::Write);
                }
                caps
            }
        }
    }
}

/// Creates a uring bdev over `opts.filename` (a regular file or a block device). Opens the file
/// now (see the module docs for O_DIRECT and block size); channels and their rings are made
/// lazily on each core that does I/O. Called on the main core (or any control thread).
pub fn create(reg: &BdevRegistry, opts: &UringOpts) -> Result<Arc<Bdev>, BdevError> {
    create_flavor(
        reg,
        &opts.name,
        &opts.filename,
        opts.block_size,
        opts.uuid.as_deref(),
        Flavor::Uring,
    )
}

/// Creates a bdev for `bdev_aio_create` (product name "AIO disk", module "aio"), served by the
/// same io_uring backend. Called on the main core (or any control thread).
pub fn create_aio(reg: &BdevRegistry, opts: &AioOpts) -> Result<Arc<Bdev>, BdevError> {
    create_flavor(
        reg,
        &opts.name,
        &opts.filename,
        opts.block_size,
        opts.uuid.as_deref(),
        Flavor::Aio {
            readonly: opts.readonly.unwrap_or(false),
            fallocate: opts.fallocate.unwrap_or(false),
            nowait: opts.nowait.unwrap_or(false),
        },
    )
}

/// Deletes a uring bdev (hot removal: in-flight I/O is cancelled and completed when the kernel
/// returns it; the file closes when the last channel closes). `done` runs on the main core.
pub fn delete(reg: &BdevRegistry, name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    delete_of_module(reg, MODULE, name, done)
}

/// Deletes an aio bdev (as [`delete`]).
pub fn delete_aio(reg: &BdevRegistry, name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    delete_of_module(reg, MODULE_AIO, name, done)
}

fn create_flavor(
    reg: &BdevRegistry,
    name: &str,
    filename: &str,
    block_size: Option<u32>,
    uuid: Option<&str>,
    flavor: Flavor,
) -> Result<Arc<Bdev>, BdevError> {
    if filename.is_empty() {
        return Err(BdevError::invalid("filename", "must not be empty"));
    }
    let block_size_param = block_size.filter(|&b| b != 0);
    if let Some(bs) = block_size_param {
        if bs < 512 || !bs.is_power_of_two() {
            return Err(BdevError::invalid(
                "block_size",
                format!("{bs} is not a power of two of at least 512"),
            ));
        }
    }
    let uuid = parse_uuid("uuid", uuid)?;
    if reg.get(name).is_some() {
        return Err(BdevError::Exists(name.to_string()));
    }
    let opened = open_file(filename, flavor.readonly(), name)?;
    let block_size = match block_size_param {
        Some(bs) => {
            if let Some(min) = opened.min_block_size.filter(|&m| opened.direct && bs < m) {
                return Err(BdevError::invalid(
                    "block_size",
                    format!("{bs} is smaller than the logical block size {min} of '{filename}' (required by O_DIRECT)"),
                ));
            }
            bs
        }
        None => opened
            .min_block_size
            .unwrap_or(512)
            .max(512)
            .checked_next_power_of_two()
            .ok_or_else(|| BdevError::invalid("block_size", format!("cannot detect the block size of '{filename}'")))?,
    };
    let num_blocks = opened.size_bytes / block_size as u64;
    if opened.size_bytes == 0 {
        return Err(BdevError::invalid("filename", format!("'{filename}' is empty")));
    }
    if num_blocks == 0 {
        return Err(BdevError::invalid(
            "filename",
            format!(
                "'{filename}' is {} bytes, smaller than one {block_size}-byte block",
                opened.size_bytes
            ),
        ));
    }
    let (product_name, module) = match flavor {
        Flavor::Uring => ("URING bdev", MODULE),
        Flavor::Aio { .. } => ("AIO disk", MODULE_AIO),
    };
    let inline_data = memory_backed(&opened.file);
    let backend = FileBackend {
        flavor,
        filename: filename.to_string(),
        file: std::sync::Mutex::new(Some(Arc::new(opened.file))),
        lock: std::sync::Mutex::new(Some(opened.lock)),
        block_size,
        block_size_override: block_size_param.is_some(),
        direct: opened.direct,
        inline_data,
        name: name.to_string(),
    };
    let bdev = reg.register(
        BdevParams {
            name: name.to_string(),
            uuid,
            product_name,
            module,
            block_size,
            num_blocks,
            caps: flavor.caps(),
            optimal_io_boundary_blocks: 0,
        },
        Arc::new(backend),
    )?;
    tracing::info!(
        name,
        filename,
        module,
        block_size,
        num_blocks,
        direct = opened.direct,
        "file bdev created"
    );
    Ok(bdev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_follow_the_flavor() {
        assert!(Flavor::Uring.caps().supports(IoOp::WriteZeroes));
        let ro = Flavor::Aio {
            readonly: true,
            fallocate: true,
            nowait: false,
        };
        assert!(!ro.caps().supports(IoOp::Write));
        assert!(!ro.caps().supports(IoOp::Unmap));
        assert!(ro.caps().supports(IoOp::Read));
        let rw = Flavor::Aio {
            readonly: false,
            fallocate: false,
            nowait: false,
        };
        assert!(rw.caps().supports(IoOp::Write));
        assert!(!rw.caps().supports(IoOp::WriteZeroes));
    }
}
