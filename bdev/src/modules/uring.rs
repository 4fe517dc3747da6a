//! The uring bdev (`bdev_uring_create`) and the aio bdev (`bdev_aio_create`): a file or a block
//! device accessed through io_uring, polled.
//!
//! # One backend, two faces
//!
//! SPDK has two modules for "a bdev over a file": bdev_uring and bdev_aio (libaio). Keel serves
//! both with one backend, [`FileBackend`], and a small [`Flavor`] that only changes what is
//! declared (product name, module name, supported ops, `driver_specific`, `config()`) and how the
//! file is opened (aio can be read-only). The data path is the same io_uring code for both.
//!
//! # Opening
//!
//! The file is opened once, at create time, `O_RDWR` (aio `readonly`: `O_RDONLY`) with
//! `O_DIRECT`. A filesystem that refuses `O_DIRECT` (EINVAL) gets buffered I/O and a warning.
//! The block size is the `block_size` parameter if given (a power of two ≥ 512 and, with
//! `O_DIRECT`, not below the device's logical block size), else auto-detected: `BLKSSZGET` for a
//! block device; for a regular file 512 as SPDK does, raised to the filesystem's direct-I/O
//! offset alignment (`statx` `STATX_DIOALIGN`) when that is larger. The size is the file size
//! rounded down to whole blocks. The fd is shared (`Arc<File>`) by the backend and every
//! channel, so it stays open as long as any ring may still use it.
//!
//! # Channels: one ring per core
//!
//! Each core that does I/O gets a [`UringChannel`] owning one io_uring ([`RING_DEPTH`] entries),
//! created on that core. It is set up with `SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN |
//! TASKRUN_FLAG | SUBMIT_ALL` where the kernel has them (falling back to `COOP_TASKRUN |
//! TASKRUN_FLAG`, then to a plain ring): completion work then runs only when the reactor asks
//! for it, without inter-processor interrupts, and the kernel raises `IORING_SQ_TASKRUN` in the
//! shared ring when there is some. The file is registered (`register_files`) so SQEs use
//! `types::Fixed(0)` and skip the per-I/O fd lookup; if registration fails the raw fd is used.
//! A channel whose ring cannot be created still exists and fails every I/O with
//! `IoStatus::Failed`.
//!
//! In-flight requests live in a per-channel **slab** of [`RING_DEPTH`] slots allocated with the
//! channel. A slot keeps the [`IoBox`] (and with it the `DmaBuf` clones of its scatter list, so
//! the memory stays alive while the kernel uses it) and an array of `MAX_IOVS` `iovec`s for
//! multi-segment requests. An SQE's `user_data` is its slot index. Nothing on the data path
//! allocates: the slab, its free list and the reset waiting list keep their capacity.
//!
//! * `submit` only writes an SQE into the submission ring (Read/Write for one segment,
//!   Readv/Writev for several, Fsync(DATASYNC) for flush, Fallocate for unmap/write_zeroes). When
//!   the slab or the SQ is full it hands the request back (`Submit::Requeue`).
//! * The channel's **poller** makes at most one `io_uring_enter` per reactor turn, and only when
//!   there is something to do: SQEs queued (batched submission of everything queued since the
//!   last turn), `IORING_SQ_TASKRUN` raised (completions waiting to be posted), or a CQ
//!   overflow. The enter carries `GETEVENTS` with `min_complete = 0`, so it never blocks. It then
//!   reaps every CQE in the completion ring and completes the requests with
//!   [`crate::IoRequest::complete`]. It returns `Busy` iff it submitted or reaped something. As a
//!   safety net for kernels that would not raise the task-run flag, a channel with requests in
//!   flight and no progress for [`STALL_ENTER_US`] makes one enter anyway.
//! * Results: negative → `Failed` (`Aborted` for `-ECANCELED` or during hot removal); a short
//!   read or write is treated as a failure (logged at debug level): with whole-block requests
//!   inside the file's size it only happens when the file shrank under us.
//! * Reset waits until every request in flight on the channel came back, then succeeds.
//!
//! # Hot removal and teardown
//!
//! `abort_all` marks the channel removing and queues one `IORING_OP_ASYNC_CANCEL` matching any
//! request; requests come back (cancelled as `Aborted`, or finished as they finished) and are
//! completed only then — never while the kernel may still write into their buffers. Dropping a
//! channel with requests in flight cancels them and waits (blocking, with a 1 s timeout per wait
//! and a warning each time; this is teardown, not the data path) until the ring has returned
//! every one, then completes them. If the ring cannot be waited on at all, the ring and the
//! in-flight buffers are deliberately leaked rather than freed under the kernel's feet.
//!
//! # Not done
//!
//! * Registered (fixed) buffers: requests bring `DmaBuf`s from any pool or owner, so using
//!   `ReadFixed`/`WriteFixed` would need a registry of buffer regions shared by every ring and a
//!   lookup per I/O; it saves only the page pinning of `O_DIRECT` and is left for when the
//!   per-reactor buffer pool registers its arenas.
//! * aio `nowait` is accepted and reported but changes nothing: io_uring already tries every
//!   request without blocking first and punts to its worker pool only when it must.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};
use keel_reactor::{ticks, ticks_per_sec, CoreId, PollStatus, PollerHandle};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{delete_of_module, obj, parse_uuid};
use crate::{
    BackendChannel, Bdev, BdevBackend, BdevError, BdevInfo, BdevParams, BdevRegistry, ChannelCx, ConfigCall, IoBox,
    IoCaps, IoOp, IoRequest, IoStatus, Submit, MAX_IOVS,
};

/// Module name of `bdev_uring_create` bdevs.
pub const MODULE: &str = "uring";
/// Module name of `bdev_aio_create` bdevs.
pub const MODULE_AIO: &str = "aio";

/// Submission-ring entries per channel, and slab slots (requests in flight) per channel. 512
/// covers the deepest queue one core drives (bdevperf/fio runs use qd ≤ 256) with room for
/// several submitters; the SQ costs 32 KiB and the slab ~150 KiB per channel. The completion
/// ring is twice as large (the kernel's default), so it cannot overflow: at most
/// `RING_DEPTH + 1` requests (the +1 is a cancel) are ever in the kernel.
pub const RING_DEPTH: u32 = 512;

/// With requests in flight and no completion for this long, the poller enters the ring once
/// even though the kernel did not raise `IORING_SQ_TASKRUN`: a guard against a kernel that
/// defers completion work without flagging it. 1 ms costs nothing when the flag works (the
/// normal case) and bounds the damage when it does not.
const STALL_ENTER_US: u64 = 1_000;

/// `user_data` of the cancel-all SQE (slot indices are `< RING_DEPTH`).
const CANCEL_USER_DATA: u64 = u64::MAX;

/// Longest single read or write the kernel performs in one call (`MAX_RW_COUNT`); a CQE's
/// result is an `i32`, so larger requests could not even report success.
const MAX_RW_BYTES: u64 = 0x7fff_f000;

/// How a teardown wait is bounded before it logs and waits again.
const DRAIN_WAIT_SEC: i64 = 1;

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
    let opened = open_file(filename, flavor.readonly())?;
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
    let backend = FileBackend {
        flavor,
        filename: filename.to_string(),
        file: Arc::new(opened.file),
        block_size,
        block_size_override: block_size_param.is_some(),
        direct: opened.direct,
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

struct Opened {
    file: File,
    direct: bool,
    size_bytes: u64,
    /// Smallest block size direct I/O accepts, where the kernel tells.
    min_block_size: Option<u32>,
}

fn open_file(filename: &str, readonly: bool) -> Result<Opened, BdevError> {
    let open = |direct: bool| {
        let mut o = OpenOptions::new();
        o.read(true).write(!readonly);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(filename)
    };
    let (file, direct) = match open(true) {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(filename, "filesystem refuses O_DIRECT; falling back to buffered I/O");
            let f = open(false).map_err(|e| BdevError::io(format!("cannot open '{filename}'"), e))?;
            (f, false)
        }
        Err(e) => return Err(BdevError::io(format!("cannot open '{filename}'"), e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| BdevError::io(format!("cannot stat '{filename}'"), e))?;
    let ft = meta.file_type();
    let (size_bytes, min_block_size) = if ft.is_block_device() {
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|e| BdevError::io(format!("cannot get the size of '{filename}'"), e))?;
        let lbs = logical_block_size(file.as_raw_fd())
            .map_err(|e| BdevError::io(format!("cannot get the logical block size of '{filename}'"), e))?;
        (size, Some(lbs))
    } else if ft.is_file() {
        let align = if direct {
            dio_offset_align(file.as_raw_fd())
        } else {
            None
        };
        (meta.len(), align)
    } else {
        return Err(BdevError::invalid(
            "filename",
            format!("'{filename}' is neither a regular file nor a block device"),
        ));
    };
    Ok(Opened {
        file,
        direct,
        size_bytes,
        min_block_size,
    })
}

/// `BLKSSZGET`: the logical block size of a block device.
fn logical_block_size(fd: RawFd) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one c_int through the pointer, which points to a live local.
    let rc = unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut size as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The file's direct-I/O offset alignment (`statx` `STATX_DIOALIGN`, Linux 6.1+), if reported.
fn dio_offset_align(fd: RawFd) -> Option<u32> {
    // SAFETY: `statx` is a plain C struct for which all-zero bytes are a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid NUL-terminated empty string, used with AT_EMPTY_PATH on an
    // open fd; `stx` is a live, writable statx buffer.
    let rc = unsafe { libc::statx(fd, c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_DIOALIGN, &mut stx) };
    (rc == 0 && stx.stx_mask & libc::STATX_DIOALIGN != 0 && stx.stx_dio_offset_align != 0)
        .then_some(stx.stx_dio_offset_align)
}

// ---------------------------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------------------------

/// The per-bdev object shared by every core: the open file and what was declared.
struct FileBackend {
    flavor: Flavor,
    filename: String,
    file: Arc<File>,
    block_size: u32,
    block_size_override: bool,
    direct: bool,
    name: String,
}

impl BdevBackend for FileBackend {
    fn create_channel(&self, cx: &ChannelCx) -> Box<dyn BackendChannel> {
        Box::new(UringChannel::new(
            &self.name,
            cx.core(),
            self.file.clone(),
            self.block_size,
        ))
    }

    fn driver_specific(&self) -> Value {
        match self.flavor {
            Flavor::Uring => json!({"uring": {"filename": self.filename}}),
            Flavor::Aio {
                readonly,
                fallocate,
                nowait,
            } => json!({"aio": {
                "filename": self.filename,
                "block_size_override": self.block_size_override,
                "readonly": readonly,
                "fallocate": fallocate,
                "nowait": nowait,
            }}),
        }
    }

    fn config(&self, info: &BdevInfo) -> Option<ConfigCall> {
        Some(match self.flavor {
            Flavor::Uring => ConfigCall {
                method: "bdev_uring_create",
                params: obj([
                    ("filename", json!(self.filename)),
                    ("name", json!(info.name)),
                    ("block_size", json!(info.block_size)),
                    ("uuid", json!(info.uuid.to_string())),
                ]),
            },
            Flavor::Aio {
                readonly,
                fallocate,
                nowait,
            } => ConfigCall {
                method: "bdev_aio_create",
                params: obj([
                    ("name", json!(info.name)),
                    ("filename", json!(self.filename)),
                    ("block_size", json!(info.block_size)),
                    ("readonly", json!(readonly)),
                    ("fallocate", json!(fallocate)),
                    ("nowait", json!(nowait)),
                    ("uuid", json!(info.uuid.to_string())),
                ]),
            },
        })
    }

    fn on_unregister(&self) {
        tracing::debug!(
            name = self.name,
            filename = self.filename,
            direct = self.direct,
            "file bdev unregistered"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Channel
// ---------------------------------------------------------------------------------------------

/// One in-flight request's home. Slots never move (boxed slice allocated with the channel), so
/// the kernel may read `iovecs` until the request is submitted.
struct Slot {
    io: Option<IoBox>,
    iovecs: [libc::iovec; MAX_IOVS],
    /// Result a fully successful read/write returns; 0 for ops whose result is just 0.
    expected_bytes: u64,
}

/// How SQEs address the file.
#[derive(Clone, Copy)]
struct FileTarget {
    /// The file is registered at index 0 (`types::Fixed(0)`).
    fixed: bool,
    fd: RawFd,
}

/// The ring and its file target.
struct Ring {
    ring: IoUring,
    target: FileTarget,
}

/// State shared by the channel (submit side) and its poller (reap side), on one core.
struct ChanState {
    name: Rc<str>,
    ring: Option<Ring>,
    /// Keeps the fd open while the ring may use it.
    file: Option<Arc<File>>,
    block_shift: u32,
    slots: Box<[Slot]>,
    /// Free slot indices (LIFO: the most recently used slot is hot in cache).
    free: Vec<u32>,
    in_flight: u32,
    /// Hot removal started: failures and cancellations come back as `Aborted`.
    removing: bool,
    /// A cancel-all SQE must be queued (set by `abort_all`; the poller queues and submits it).
    cancel_wanted: bool,
    /// Resets waiting for the in-flight requests to drain.
    resets: Vec<IoBox>,
    /// Ticks of the last progress (submission or completion) while requests are in flight.
    last_progress_ticks: u64,
    stall_ticks: u64,
}

/// Runs `$body` with `$t` bound to the SQE target of `$r` (fixed-file index or raw fd): the
/// opcode builders take a sealed trait that cannot be named in a helper's signature.
macro_rules! with_target {
    ($r:expr, |$t:ident| $body:expr) => {
        if $r.fixed {
            let $t = types::Fixed(0);
            $body
        } else {
            let $t = types::Fd($r.fd);
            $body
        }
    };
}

fn build_ring() -> io::Result<IoUring> {
    let mut full = IoUring::builder();
    full.setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_submit_all();
    if let Ok(r) = full.build(RING_DEPTH) {
        return Ok(r);
    }
    let mut coop = IoUring::builder();
    coop.setup_coop_taskrun().setup_taskrun_flag().setup_submit_all();
    if let Ok(r) = coop.build(RING_DEPTH) {
        return Ok(r);
    }
    IoUring::new(RING_DEPTH)
}

impl ChanState {
    fn new(name: &str, file: Option<Arc<File>>, ring: Option<Ring>, block_size: u32) -> ChanState {
        let slots: Box<[Slot]> = (0..RING_DEPTH)
            .map(|_| Slot {
                io: None,
                iovecs: [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_IOVS],
                expected_bytes: 0,
            })
            .collect();
        ChanState {
            name: Rc::from(name),
            ring,
            file,
            block_shift: block_size.trailing_zeros(),
            slots,
            free: (0..RING_DEPTH).rev().collect(),
            in_flight: 0,
            removing: false,
            cancel_wanted: false,
            resets: Vec::with_capacity(8),
            last_progress_ticks: 0,
            stall_ticks: (STALL_ENTER_US as u128 * ticks_per_sec() as u128 / 1_000_000) as u64,
        }
    }

    /// Queues `io` as an SQE (no syscall). See [`BackendChannel::submit`].
    #[inline]
    fn submit(&mut self, io: IoBox) -> Submit {
        let Some(r) = self.ring.as_mut() else {
            io.complete(IoStatus::Failed);
            return Submit::Accepted;
        };
        if self.removing {
            io.complete(IoStatus::Removed);
            return Submit::Accepted;
        }
        if io.op == IoOp::Reset {
            if self.in_flight == 0 {
                io.complete(IoStatus::Success);
            } else {
                self.resets.push(io);
            }
            return Submit::Accepted;
        }
        let Some(&idx) = self.free.last() else {
            return Submit::Requeue(io);
        };
        let mut sq = r.ring.submission();
        if sq.is_full() {
            return Submit::Requeue(io);
        }
        let slot = &mut self.slots[idx as usize];
        let entry = match prepare_sqe(r.target, slot, &io, self.block_shift) {
            Ok(e) => e.user_data(idx as u64),
            Err(status) => {
                drop(sq);
                io.complete(status);
                return Submit::Accepted;
            }
        };
        // SAFETY: everything the SQE points to outlives the operation: the data buffers are
        // `DmaBuf`s held by `io`, which stays in `slot` until its CQE is reaped; the iovec array
        // is in the slab, which is never moved and is freed only after every request came back
        // (channel drop waits); the fd is kept open by `self.file`.
        if unsafe { sq.push(&entry) }.is_err() {
            return Submit::Requeue(io);
        }
        drop(sq);
        self.free.pop();
        slot.io = Some(io);
        if self.in_flight == 0 {
            self.last_progress_ticks = ticks();
        }
        self.in_flight += 1;
        Submit::Accepted
    }

    /// One poller turn: submit what is queued and reap what completed, with at most one
    /// non-blocking `io_uring_enter` and none when there is nothing to do.
    #[inline]
    fn poll(&mut self) -> PollStatus {
        let Some(r) = self.ring.as_mut() else {
            return PollStatus::Idle;
        };
        if self.cancel_wanted {
            let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(CANCEL_USER_DATA);
            // SAFETY: a cancel SQE points to no memory.
            if unsafe { r.ring.submission().push(&entry) }.is_ok() {
                self.cancel_wanted = false;
            }
        }
        let (queued, kernel_wants) = {
            let sq = r.ring.submission();
            (sq.len(), sq.taskrun() || sq.cq_overflow())
        };
        let mut did_work = false;
        if queued > 0
            || kernel_wants
            || (self.in_flight > 0 && ticks().wrapping_sub(self.last_progress_ticks) > self.stall_ticks)
        {
            match enter(&r.ring, queued as u32, 0) {
                Ok(n) => did_work |= n > 0,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY) => {}
                    _ => tracing::debug!(bdev = &*self.name, error = %e, "io_uring_enter failed"),
                },
            }
            if self.in_flight > 0 {
                self.last_progress_ticks = ticks();
            }
        }
        let reaped = self.reap();
        if reaped > 0 {
            did_work = true;
            self.last_progress_ticks = ticks();
        }
        if self.in_flight == 0 && !self.resets.is_empty() {
            let status = if self.removing {
                IoStatus::Aborted
            } else {
                IoStatus::Success
            };
            for io in self.resets.drain(..) {
                io.complete(status);
            }
            did_work = true;
        }
        PollStatus::from_work(did_work)
    }

    /// Completes every request whose CQE is in the completion ring. Returns the CQEs seen.
    #[inline]
    fn reap(&mut self) -> usize {
        let Some(r) = self.ring.as_mut() else {
            return 0;
        };
        let mut n = 0;
        for cqe in r.ring.completion() {
            n += 1;
            let ud = cqe.user_data();
            if ud == CANCEL_USER_DATA {
                continue;
            }
            let Some(slot) = self.slots.get_mut(ud as usize) else {
                debug_assert!(false, "CQE with unknown user_data {ud}");
                continue;
            };
            let Some(io) = slot.io.take() else {
                debug_assert!(false, "CQE for an empty slot {ud}");
                continue;
            };
            let res = cqe.result();
            let status = if res < 0 {
                if res == -libc::ECANCELED || self.removing {
                    IoStatus::Aborted
                } else {
                    tracing::debug!(
                        bdev = &*self.name,
                        op = io.op.name(),
                        offset_blocks = io.offset_blocks,
                        num_blocks = io.num_blocks,
                        errno = -res,
                        "file I/O failed"
                    );
                    IoStatus::Failed
                }
            } else if slot.expected_bytes != 0 && res as u64 != slot.expected_bytes {
                tracing::debug!(
                    bdev = &*self.name,
                    op = io.op.name(),
                    offset_blocks = io.offset_blocks,
                    expected_bytes = slot.expected_bytes,
                    got_bytes = res,
                    "short file I/O treated as failure"
                );
                IoStatus::Failed
            } else {
                IoStatus::Success
            };
            self.free.push(ud as u32);
            self.in_flight -= 1;
            io.complete(status);
        }
        n
    }

    /// Hot removal: from now on failures come back as `Aborted`, and everything in the kernel
    /// is asked to cancel (the poller queues and submits the cancel).
    fn abort_all(&mut self) {
        self.removing = true;
        if self.in_flight > 0 && self.ring.is_some() {
            self.cancel_wanted = true;
        }
    }

    /// Teardown: cancel and wait until the kernel returned every request, then complete them.
    fn drain_for_drop(&mut self) {
        self.removing = true;
        let mut cancel_sent = false;
        let mut waited_sec = 0u64;
        while self.in_flight > 0 {
            let Some(r) = self.ring.as_mut() else { break };
            if !cancel_sent {
                let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                    .build()
                    .user_data(CANCEL_USER_DATA);
                // SAFETY: a cancel SQE points to no memory.
                cancel_sent = unsafe { r.ring.submission().push(&entry) }.is_ok();
            }
            let queued = r.ring.submission().len() as u32;
            let ts = types::Timespec::new().sec(DRAIN_WAIT_SEC as u64);
            let args = types::SubmitArgs::new().timespec(&ts);
            let res = if r.ring.params().is_feature_ext_arg() {
                r.ring.submitter().submit_with_args(1, &args)
            } else {
                // Old kernels: an unbounded wait (requests do come back; cancel was sent).
                enter(&r.ring, queued, 1)
            };
            match res {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                    ) =>
                {
                    if e.raw_os_error() == Some(libc::ETIME) {
                        waited_sec += DRAIN_WAIT_SEC as u64;
                        tracing::warn!(
                            bdev = &*self.name,
                            in_flight = self.in_flight,
                            waited_sec,
                            "channel teardown still waiting for the kernel to return requests"
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(
                        bdev = &*self.name,
                        in_flight = self.in_flight,
                        error = %e,
                        "cannot wait for in-flight requests; leaking their buffers and the ring"
                    );
                    self.leak_in_flight();
                    return;
                }
            }
            self.reap();
        }
        for io in self.resets.drain(..) {
            io.complete(IoStatus::Aborted);
        }
        // Close the ring (and drop our hold on the fd) now rather than when the reactor prunes
        // the dead poller.
        self.ring = None;
        self.file = None;
    }

    /// Last resort when the ring cannot be waited on: never free memory the kernel may write.
    fn leak_in_flight(&mut self) {
        for slot in self.slots.iter_mut() {
            if let Some(io) = slot.io.take() {
                std::mem::forget(io);
            }
        }
        std::mem::forget(std::mem::take(&mut self.slots));
        if let Some(r) = self.ring.take() {
            std::mem::forget(r);
        }
        self.in_flight = 0;
    }
}

/// `io_uring_enter(to_submit, min_complete, GETEVENTS)`: with `min_complete == 0` it never
/// blocks; `GETEVENTS` makes the kernel run deferred completion work so CQEs get posted.
#[inline]
fn enter(ring: &IoUring, to_submit: u32, min_complete: u32) -> io::Result<usize> {
    // SAFETY: no argument pointer is passed (`None`), so there is nothing for the kernel to read
    // beyond the ring itself, whose SQEs were validated when pushed.
    unsafe {
        ring.submitter()
            .enter::<libc::sigset_t>(to_submit, min_complete, io_uring::EnterFlags::GETEVENTS.bits(), None)
    }
}

/// Builds the SQE for `io` (not Reset), filling `slot.iovecs` for multi-segment transfers.
#[inline]
fn prepare_sqe(r: FileTarget, slot: &mut Slot, io: &IoRequest, block_shift: u32) -> Result<squeue::Entry, IoStatus> {
    let offset_bytes = io.offset_blocks << block_shift;
    let len_bytes = io.num_blocks << block_shift;
    slot.expected_bytes = 0;
    let entry = match io.op {
        IoOp::Read | IoOp::Write => {
            if len_bytes > MAX_RW_BYTES {
                tracing::debug!(len_bytes, "request larger than one kernel read/write");
                return Err(IoStatus::Failed);
            }
            let mut left = len_bytes;
            let mut n = 0usize;
            for v in io.iovs.iter() {
                if left == 0 {
                    break;
                }
                let take = (v.len_bytes as u64).min(left);
                if take == 0 {
                    continue;
                }
                let start = v.offset_bytes as usize;
                // The kernel must never touch memory outside the buffer.
                if start + take as usize > v.buf.len() {
                    return Err(IoStatus::InvalidRange);
                }
                slot.iovecs[n] = libc::iovec {
                    iov_base: v.buf.as_mut_ptr().wrapping_add(start).cast(),
                    iov_len: take as usize,
                };
                n += 1;
                left -= take;
            }
            if left != 0 || n == 0 {
                return Err(IoStatus::InvalidRange);
            }
            slot.expected_bytes = len_bytes;
            let iov0 = slot.iovecs[0];
            match (io.op, n) {
                (IoOp::Read, 1) => with_target!(r, |t| opcode::Read::new(t, iov0.iov_base.cast(), len_bytes as u32)
                    .offset(offset_bytes)
                    .build()),
                (IoOp::Read, _) => with_target!(r, |t| opcode::Readv::new(t, slot.iovecs.as_ptr(), n as u32)
                    .offset(offset_bytes)
                    .build()),
                (_, 1) => with_target!(r, |t| opcode::Write::new(
                    t,
                    iov0.iov_base.cast_const().cast(),
                    len_bytes as u32
                )
                .offset(offset_bytes)
                .build()),
                _ => with_target!(r, |t| opcode::Writev::new(t, slot.iovecs.as_ptr(), n as u32)
                    .offset(offset_bytes)
                    .build()),
            }
        }
        IoOp::Flush => with_target!(r, |t| opcode::Fsync::new(t).flags(types::FsyncFlags::DATASYNC).build()),
        IoOp::Unmap => with_target!(r, |t| opcode::Fallocate::new(t, len_bytes)
            .offset(offset_bytes)
            .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
            .build()),
        IoOp::WriteZeroes => with_target!(r, |t| opcode::Fallocate::new(t, len_bytes)
            .offset(offset_bytes)
            .mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
            .build()),
        IoOp::Reset => return Err(IoStatus::Unsupported),
    };
    Ok(entry)
}

/// This core's channel of a uring/aio bdev: the ring, the slab and the poller. Created on its
/// core by `create_channel`, dropped there. The poller closure and this struct share the state
/// (`Rc`); dropping the channel stops the poller (the handle) after draining the ring.
struct UringChannel {
    state: Rc<RefCell<ChanState>>,
    poller: PollerHandle,
}

impl UringChannel {
    /// Called on `core` (a reactor): creates the ring, registers the file, starts the poller.
    fn new(name: &str, core: CoreId, file: Arc<File>, block_size: u32) -> UringChannel {
        let fd = file.as_raw_fd();
        let ring = match build_ring() {
            Ok(ring) => {
                let fixed = ring.submitter().register_files(&[fd]).is_ok();
                tracing::debug!(
                    bdev = name,
                    core = core.0,
                    fixed,
                    single_issuer = ring.params().is_setup_single_issuer(),
                    "io_uring channel created"
                );
                Some(Ring {
                    ring,
                    target: FileTarget { fixed, fd },
                })
            }
            Err(e) => {
                tracing::warn!(bdev = name, core = core.0, error = %e, "cannot create io_uring; I/O on this core will fail");
                None
            }
        };
        let state = Rc::new(RefCell::new(ChanState::new(name, Some(file), ring, block_size)));
        let st2 = state.clone();
        let poller =
            keel_reactor::current().register_poller(format!("uring_poll_{name}"), move || st2.borrow_mut().poll());
        UringChannel { state, poller }
    }
}

impl BackendChannel for UringChannel {
    /// Queues the request's SQE; the poller submits it this turn. Requeue when the slab or SQ
    /// is full. Buffers stay owned by the request, which the slab holds until the kernel is done.
    #[inline]
    fn submit(&self, io: IoBox) -> Submit {
        self.state.borrow_mut().submit(io)
    }

    /// Requests are finished from the ring's completions; the frames are never touched.
    fn leaf(&self) -> bool {
        true
    }

    fn abort_all(&self) {
        self.state.borrow_mut().abort_all();
    }
}

impl Drop for UringChannel {
    fn drop(&mut self) {
        self.state.borrow_mut().drain_for_drop();
        self.poller.unregister();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CompletionQueue, DmaBuf, IoVec};

    #[test]
    fn channel_without_ring_fails_io_instead_of_panicking() {
        let mut st = ChanState::new("t", None, None, 512);
        let cq = CompletionQueue::with_capacity(2);
        let mut io = IoRequest::new_boxed();
        io.iovs.push(IoVec::whole(DmaBuf::new(512)));
        io.prepare(IoOp::Read, 0, 1);
        io.push_frame(&cq, None, 0).unwrap();
        assert!(matches!(st.submit(io), Submit::Accepted));
        assert_eq!(cq.pop().unwrap().status(), IoStatus::Failed);
        assert_eq!(st.poll(), PollStatus::Idle);
        st.drain_for_drop();
    }

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
