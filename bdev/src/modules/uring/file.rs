//! The file part of the uring bdev: opening and checking the file, the per-bdev backend, and
//! the per-core channel that turns requests into SQEs on its [`Ring`] and completions back into
//! request completions.
//!
//! # Channels: one ring per core
//!
//! Each core that does I/O gets a `UringChannel` owning one io_uring ([`RING_DEPTH`] entries,
//! set up as `ring.rs` describes), created on that core. The file is registered with the ring so
//! SQEs use `types::Fixed(0)` and skip the per-I/O fd lookup; if registration fails the raw fd is
//! used. A channel whose ring cannot be created still exists and fails every I/O with
//! `IoStatus::Failed`.
//!
//! In-flight requests live in the channel's submission-token queue
//! ([`crate::tokens::TokenQueue`]) of [`RING_DEPTH`] tokens allocated with the channel. A token's
//! owner is the [`IoBox`] (and with it the `DmaBuf` clones of its scatter list, so the memory
//! stays alive while the kernel uses it) with the byte count a full success returns; its scratch
//! is an array of `MAX_IOVS` `iovec`s for multi-segment requests, at a fixed address. An SQE's
//! `user_data` is its token. Nothing on the data path allocates: the token queue and the reset
//! waiting list keep their capacity.
//!
//! * `submit` only writes an SQE into the submission ring (Read/Write for one segment,
//!   Readv/Writev for several, Fsync(DATASYNC) for flush, Fallocate for unmap/write_zeroes). When
//!   no token is free or the SQ is full it hands the request back (`Submit::Requeue`).
//! * The channel's **poller** makes the ring's one enter of the turn (only when there is
//!   something to do, never blocking), then reaps every CQE in the completion ring and completes
//!   the requests with [`crate::IoRequest::complete`]. It returns `Busy` iff it submitted or
//!   reaped something.
//! * Results: negative → `Failed` (`Aborted` for `-ECANCELED` or during hot removal); a short
//!   read or write is treated as a failure (logged at debug level): with whole-block requests
//!   inside the file's size it only happens when the file shrank under us.
//! * Reset waits until every request in flight on the channel came back, then succeeds.
//! * Files in memory (tmpfs, `/dev/shm`, ramfs; [`memory_backed`]): the kernel cannot start a
//!   read or write on them without blocking (they refuse `IOCB_NOWAIT`, even when opened with
//!   `O_DIRECT`, which tmpfs accepts since Linux 6.6), so io_uring would punt every one to an
//!   `iou-wrk` worker thread — which inherits the reactor's CPU and competes with the polling
//!   reactor for it — only to do a memory copy. Reads and writes on them are therefore done
//!   inline in `submit` with `preadv2`/`pwritev2` (a page-cache copy, as the worker would do)
//!   and completed with `IoRequest::complete`; flush, unmap, write-zeroes and reset still go
//!   through the ring. (Measured in BENCHMARKS.md: ~2× fio's io_uring on the same file, where
//!   punting with the workers moved to another CPU was slower than leaving them on the
//!   reactor's.)
//! * Other buffered files (a filesystem that refuses `O_DIRECT`): reads that miss the page
//!   cache are punted too. A poller turn of such a channel that found nothing to do while
//!   requests are in flight yields the core (`sched_yield`), so the workers sharing it make
//!   progress instead of waiting for the reactor's time slice to end.
//!
//! # One writer per file: the lock
//!
//! `open_file` takes an advisory `flock` on the file (or block device node) right after
//! opening it: `LOCK_EX` for a writable bdev, `LOCK_SH` for aio's `readonly: true` (SPDK's aio
//! parameter; several read-only bdevs may share a file, nobody writes under them), both
//! non-blocking. A lock that is taken refuses the create (EBUSY) naming the holder: the pid and
//! command from `/proc/locks` for another process, the bdev for this one. So two keel-tgt, or
//! keel-tgt and a fio process running the Keel engine, or two bdevs of one process, never write
//! one md member at once (the split brain of issue 13).
//!
//! Why `flock` and not fcntl locks: classic POSIX (`F_SETLK`) locks belong to the process, so a
//! second bdev of the same keel-tgt would get the lock too, and closing *any* fd of the file
//! drops them. `flock` and OFD (`F_OFD_SETLK`) locks both belong to the open file description:
//! they conflict between two opens even within one process, and go away exactly when the last
//! fd of that description closes, and a killed process releases them at once. The backend and
//! every channel share one `Arc<LockedFile>`; when the last of them drops — every ring has
//! returned every request by then — it unlocks explicitly before closing, because a ring's
//! registered-file table keeps the description alive until the kernel's asynchronous ring
//! teardown, and the next bdev over the file must not wait for that. A process that dies
//! cannot unlock that way, so a create that finds the lock held only by processes that exited
//! (or by no process `/proc/locks` lists: it leaves out owners whose pid is gone) waits for the
//! kernel to drop it (at most `DEAD_HOLDER_WAIT_MS`) instead of refusing: a
//! restart right after a SIGKILL gets its files back.
//! Of the two, only `flock` tells who holds it: `/proc/locks` records the pid of a `FLOCK`
//! holder, while OFD locks show pid -1 there and in `F_OFD_GETLK`. (The lock is advisory: tools
//! that do not lock, such as `dd` or mdadm's `--examine`, still read and write the file; and
//! `flock` does not see fcntl locks, such as QEMU's image locks.)
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
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use io_uring::{opcode, squeue, types};
use keel_reactor::{CoreId, PollStatus, PollerHandle};
use serde_json::{json, Value};

use super::ring::Ring;
use super::{Flavor, RING_DEPTH};
use crate::modules::obj;
use crate::tokens::TokenQueue;
use crate::{
    BackendChannel, BdevBackend, BdevError, BdevInfo, ChannelCx, ConfigCall, IoBox, IoOp, IoRequest, IoStatus, Submit,
    MAX_IOVS,
};

/// `user_data` of the cancel-all SQE (tokens are `< RING_DEPTH`).
const CANCEL_USER_DATA: u64 = u64::MAX;

/// Longest single read or write the kernel performs in one call (`MAX_RW_COUNT`); a CQE's
/// result is an `i32`, so larger requests could not even report success.
const MAX_RW_BYTES: u64 = 0x7fff_f000;

/// How a teardown wait is bounded before it logs and waits again.
const DRAIN_WAIT_SEC: u64 = 1;

// ---------------------------------------------------------------------------------------------
// Opening
// ---------------------------------------------------------------------------------------------

/// A file opened for a file bdev (by `open_file`), with what was learnt about it.
pub(super) struct Opened {
    /// Open, and locked (module docs).
    pub(super) file: LockedFile,
    /// Names this bdev as the lock's holder in this process while the backend lives.
    pub(super) lock: LockNote,
    /// Opened with `O_DIRECT`.
    pub(super) direct: bool,
    pub(super) size_bytes: u64,
    /// Smallest block size direct I/O accepts, where the kernel tells.
    pub(super) min_block_size: Option<u32>,
}

/// Opens `filename` (read-only when `readonly`) with `O_DIRECT` where the filesystem allows it,
/// locks it for bdev `bdev` (exclusive, or shared when `readonly`; refused naming the holder
/// when taken), and finds its size and the smallest block size it takes (module docs of
/// `uring`). Called on the control path (create).
pub(super) fn open_file(filename: &str, readonly: bool, bdev: &str) -> Result<Opened, BdevError> {
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
    if !ft.is_block_device() && !ft.is_file() {
        return Err(BdevError::invalid(
            "filename",
            format!("'{filename}' is neither a regular file nor a block device"),
        ));
    }
    let lock = lock_file(&file, filename, readonly, bdev, (meta.dev(), meta.ino()))?;
    let (size_bytes, min_block_size) = if ft.is_block_device() {
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|e| BdevError::io(format!("cannot get the size of '{filename}'"), e))?;
        let lbs = logical_block_size(file.as_raw_fd())
            .map_err(|e| BdevError::io(format!("cannot get the logical block size of '{filename}'"), e))?;
        (size, Some(lbs))
    } else {
        let align = if direct {
            dio_offset_align(file.as_raw_fd())
        } else {
            None
        };
        (meta.len(), align)
    };
    Ok(Opened {
        file: LockedFile(file),
        lock,
        direct,
        size_bytes,
        min_block_size,
    })
}

/// A file bdev's open file, locked by `open_file`. Shared (`Arc`) by the backend and every
/// channel; dropping the last reference unlocks it, then closes it (module docs). Only dropped
/// once no request of it is in the kernel: a channel that cannot wait for its ring leaks its
/// reference instead.
pub(super) struct LockedFile(File);

impl AsRawFd for LockedFile {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Drop for LockedFile {
    fn drop(&mut self) {
        // SAFETY: flock on the fd this value owns, which is still open.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The bdevs of this process holding a file lock, by the file's (device, inode): what a
/// refusal names when the holder is this process. Control path only.
static LOCAL_HOLDERS: Mutex<Vec<((u64, u64), String)>> = Mutex::new(Vec::new());

/// This process's note that bdev `name` holds the lock of a file; removed when dropped (the
/// backend drops it; the lock itself goes with the last fd).
pub(super) struct LockNote {
    key: (u64, u64),
    bdev: String,
}

impl Drop for LockNote {
    fn drop(&mut self) {
        let mut v = LOCAL_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = v.iter().position(|(k, b)| *k == self.key && *b == self.bdev) {
            v.remove(i);
        }
    }
}

/// How long a create waits for a lock whose every holder has exited: the kernel drops a dead
/// process's `flock` only when the last reference to its open file goes, and an io_uring that
/// registered the file keeps one until its asynchronous teardown ends (usually within
/// milliseconds). A restart right after a crash waits for that instead of failing.
const DEAD_HOLDER_WAIT_MS: u64 = 2_000;

/// Takes the file's `flock` (module docs): shared for a read-only bdev, else exclusive. Never
/// waits for a live holder: a taken lock is refused with EBUSY naming the holder. A lock held
/// only by processes that exited is waited for, at most [`DEAD_HOLDER_WAIT_MS`].
fn lock_file(file: &File, filename: &str, shared: bool, bdev: &str, key: (u64, u64)) -> Result<LockNote, BdevError> {
    let op = if shared { libc::LOCK_SH } else { libc::LOCK_EX } | libc::LOCK_NB;
    let started = std::time::Instant::now();
    loop {
        // SAFETY: flock on an fd this function borrows (open for the call's duration).
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {
                if holders_all_exited(key) && started.elapsed() < std::time::Duration::from_millis(DEAD_HOLDER_WAIT_MS)
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                let holder = lock_holder(key);
                let wanted = if shared { "shared (read-only)" } else { "exclusive" };
                return Err(BdevError::io(
                    format!("cannot take an {wanted} lock on '{filename}': it is in use by {holder}"),
                    io::Error::from_raw_os_error(libc::EBUSY),
                ));
            }
            _ => return Err(BdevError::io(format!("cannot lock '{filename}'"), e)),
        }
    }
    LOCAL_HOLDERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((key, bdev.to_string()));
    Ok(LockNote {
        key,
        bdev: bdev.to_string(),
    })
}

/// Whether the `flock`s on `key` listed in `/proc/locks` all belong to processes that exited —
/// also when none is listed: the kernel leaves out of `/proc/locks` a lock whose owner's pid is
/// gone (`locks_translate_pid` gives 0), which is exactly the lock a SIGKILLed process's ring
/// keeps until its teardown ends (seen as "the holder is not listed" on restarts in the NBD
/// crash matrix). A live holder in another pid namespace is unlisted too; it is refused after
/// the wait.
fn holders_all_exited(key: (u64, u64)) -> bool {
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    flock_holders(&text, key)
        .iter()
        .all(|(pid, _, _)| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Who holds the `flock` of the file with (device, inode) `key`: this process's bdev, or a
/// process from `/proc/locks` (pid and command), described for a message.
fn lock_holder(key: (u64, u64)) -> String {
    let me = std::process::id();
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let mut holders: Vec<(u32, &'static str)> = Vec::new();
    for (pid, mode, exact) in flock_holders(&text, key) {
        if exact || holders.is_empty() {
            holders.push((pid, mode));
        }
    }
    let local: Vec<String> = LOCAL_HOLDERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(k, _)| *k == key)
        .map(|(_, b)| format!("bdev '{b}' of this process"))
        .collect();
    let mut out: Vec<String> = Vec::new();
    for (pid, mode) in holders {
        if pid == me {
            if local.is_empty() {
                out.push(format!("this process ({mode} lock)"));
            }
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        if comm.is_empty() {
            out.push(format!("pid {pid} ({mode} lock)"));
        } else {
            out.push(format!("pid {pid} ({comm}, {mode} lock)"));
        }
    }
    out.extend(local);
    if out.is_empty() {
        return "another open file (the holder is not listed in /proc/locks)".to_string();
    }
    out.dedup();
    out.join(", ")
}

/// The `FLOCK` entries of `/proc/locks` text on the file `key` (device, inode): (pid, "shared"
/// or "exclusive", whether the device matched too). Lines look like
/// `1: FLOCK  ADVISORY  WRITE 21419 fe:00:6833690 0 EOF` (device major:minor in hex); waiters
/// (`1: -> FLOCK ...`) are skipped. The inode alone also matches (with `false`): on stacked
/// filesystems the device a lock is listed under may differ from what `stat` reports.
fn flock_holders(text: &str, key: (u64, u64)) -> Vec<(u32, &'static str, bool)> {
    let (dev, ino) = key;
    let (major, minor) = (libc::major(dev) as u64, libc::minor(dev) as u64);
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" {
            continue;
        }
        let mode = match f[3] {
            "WRITE" => "exclusive",
            "READ" => "shared",
            _ => continue,
        };
        let Ok(pid) = f[4].parse::<u32>() else { continue };
        let mut parts = f[5].split(':');
        let (Some(ma), Some(mi), Some(i)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(ma), Ok(mi), Ok(i)) = (
            u64::from_str_radix(ma, 16),
            u64::from_str_radix(mi, 16),
            i.parse::<u64>(),
        ) else {
            continue;
        };
        if i == ino {
            out.push((pid, mode, ma == major && mi == minor));
        }
    }
    out
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
pub(super) struct FileBackend {
    pub(super) flavor: Flavor,
    pub(super) filename: String,
    /// The open, locked file; taken at unregistration so that the backend no longer keeps it
    /// open (the channels still hold it until the kernel returned their last request).
    pub(super) file: Mutex<Option<Arc<LockedFile>>>,
    /// This process's record of the file lock (for refusals naming this bdev); dropped with
    /// the file at unregistration.
    pub(super) lock: Mutex<Option<LockNote>>,
    pub(super) block_size: u32,
    pub(super) block_size_override: bool,
    pub(super) direct: bool,
    /// Buffered and in memory: reads and writes are done inline ([`memory_backed`]).
    pub(super) inline_data: bool,
    pub(super) name: String,
}

impl BdevBackend for FileBackend {
    fn create_channel(&self, cx: &ChannelCx) -> Box<dyn BackendChannel> {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Box::new(UringChannel::new(
            &self.name,
            cx.core(),
            file,
            self.block_size,
            self.direct,
            self.inline_data,
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

    /// Lets go of the file: once the channels are gone too, the fd closes and the lock is
    /// free for a new bdev over the file.
    fn on_unregister(&self) {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
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

/// A request in flight: the owner of its token.
struct InFlight {
    io: IoBox,
    /// Result a fully successful read/write returns; 0 for ops whose result is just 0.
    expected_bytes: u64,
}

/// A token's scratch: the `iovec`s of a multi-segment read/write, which the kernel may read
/// until the request is submitted (the token queue keeps them at a fixed address).
type Iovecs = [libc::iovec; MAX_IOVS];

/// How SQEs address the file.
#[derive(Clone, Copy)]
struct FileTarget {
    /// The file is registered at index 0 (`types::Fixed(0)`).
    fixed: bool,
    fd: RawFd,
}

/// The ring and its file target.
struct FileRing {
    ring: Ring,
    target: FileTarget,
}

/// State shared by the channel (submit side) and its poller (reap side), on one core.
struct ChanState {
    name: Rc<str>,
    ring: Option<FileRing>,
    /// Keeps the fd open while the ring may use it.
    file: Option<Arc<LockedFile>>,
    block_shift: u32,
    /// Requests in flight, by the token their SQE carries.
    tokens: TokenQueue<InFlight, Iovecs>,
    /// Hot removal started: failures and cancellations come back as `Aborted`.
    removing: bool,
    /// A cancel-all SQE must be queued (set by `abort_all`; the poller queues and submits it).
    cancel_wanted: bool,
    /// Resets waiting for the in-flight requests to drain.
    resets: Vec<IoBox>,
    /// Yield the core while only punted work is pending (module docs).
    yield_while_punted: bool,
    /// Reads and writes are done inline (a buffered file in memory; module docs).
    inline_data: bool,
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

impl ChanState {
    fn new(name: &str, file: Option<Arc<LockedFile>>, ring: Option<FileRing>, block_size: u32) -> ChanState {
        ChanState {
            name: Rc::from(name),
            ring,
            file,
            block_shift: block_size.trailing_zeros(),
            tokens: TokenQueue::new(RING_DEPTH, || {
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_IOVS]
            }),
            removing: false,
            cancel_wanted: false,
            resets: Vec::with_capacity(8),
            yield_while_punted: false,
            inline_data: false,
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
        if self.inline_data && io.op.has_data() {
            let status = match &self.file {
                Some(f) => transfer_inline(f.as_raw_fd(), &io, self.block_shift),
                None => IoStatus::Failed,
            };
            io.complete(status);
            return Submit::Accepted;
        }
        if io.op == IoOp::Reset {
            if self.tokens.is_idle() {
                io.complete(IoStatus::Success);
            } else {
                self.resets.push(io);
            }
            return Submit::Accepted;
        }
        let was_idle = self.tokens.is_idle();
        let Some(mut token) = self.tokens.vacant() else {
            return Submit::Requeue(io);
        };
        let mut sq = r.ring.sq();
        if sq.is_full() {
            return Submit::Requeue(io);
        }
        let (entry, expected_bytes) = match prepare_sqe(r.target, token.scratch(), &io, self.block_shift) {
            Ok((e, expected_bytes)) => (e.user_data(token.token().as_u64()), expected_bytes),
            Err(status) => {
                drop(sq);
                io.complete(status);
                return Submit::Accepted;
            }
        };
        // SAFETY: everything the SQE points to outlives the operation: the data buffers are
        // `DmaBuf`s held by `io`, which stays in the token queue until its CQE is reaped; the
        // iovec array is the token's scratch, which never moves and is freed only after every
        // request came back (channel drop waits); the fd is kept open by `self.file`.
        if unsafe { sq.push(&entry) }.is_err() {
            return Submit::Requeue(io);
        }
        drop(sq);
        token.insert(InFlight { io, expected_bytes });
        if was_idle {
            r.ring.note_progress();
        }
        Submit::Accepted
    }

    /// One poller turn: submit what is queued and reap what completed, with at most one
    /// non-blocking `io_uring_enter` and none when there is nothing to do.
    #[inline]
    fn poll(&mut self) -> PollStatus {
        let Some(r) = self.ring.as_mut() else {
            return PollStatus::Idle;
        };
        if self.cancel_wanted && r.ring.push_cancel_all(CANCEL_USER_DATA) {
            self.cancel_wanted = false;
        }
        let mut did_work = false;
        match r.ring.enter_if_needed(!self.tokens.is_idle()) {
            Ok(submitted) => did_work |= submitted,
            Err(e) => match e.raw_os_error() {
                Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY) => {}
                _ => tracing::debug!(bdev = &*self.name, error = %e, "io_uring_enter failed"),
            },
        }
        if self.reap() > 0 {
            did_work = true;
        }
        if self.tokens.is_idle() && !self.resets.is_empty() {
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
        if !did_work && self.yield_while_punted && !self.tokens.is_idle() {
            super::ring::yield_core();
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
        for (ud, res) in r.ring.completions() {
            n += 1;
            if ud == CANCEL_USER_DATA {
                continue;
            }
            let Some(InFlight { io, expected_bytes }) = self.tokens.take(ud) else {
                debug_assert!(false, "CQE for no request in flight: user_data {ud}");
                continue;
            };
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
            } else if expected_bytes != 0 && res as u64 != expected_bytes {
                tracing::debug!(
                    bdev = &*self.name,
                    op = io.op.name(),
                    offset_blocks = io.offset_blocks,
                    expected_bytes,
                    got_bytes = res,
                    "short file I/O treated as failure"
                );
                IoStatus::Failed
            } else {
                IoStatus::Success
            };
            io.complete(status);
        }
        if n > 0 {
            r.ring.note_progress();
        }
        n
    }

    /// Hot removal: from now on failures come back as `Aborted`, and everything in the kernel
    /// is asked to cancel (the poller queues and submits the cancel).
    fn abort_all(&mut self) {
        self.removing = true;
        if !self.tokens.is_idle() && self.ring.is_some() {
            self.cancel_wanted = true;
        }
    }

    /// Teardown: cancel and wait until the kernel returned every request, then complete them.
    fn drain_for_drop(&mut self) {
        self.removing = true;
        let mut cancel_sent = false;
        let mut waited_sec = 0u64;
        while !self.tokens.is_idle() {
            let Some(r) = self.ring.as_mut() else { break };
            if !cancel_sent {
                cancel_sent = r.ring.push_cancel_all(CANCEL_USER_DATA);
            }
            match r.ring.wait_for_completion(DRAIN_WAIT_SEC) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                    ) =>
                {
                    if e.raw_os_error() == Some(libc::ETIME) {
                        waited_sec += DRAIN_WAIT_SEC;
                        tracing::warn!(
                            bdev = &*self.name,
                            in_flight = self.tokens.in_flight(),
                            waited_sec,
                            "channel teardown still waiting for the kernel to return requests"
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(
                        bdev = &*self.name,
                        in_flight = self.tokens.in_flight(),
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

    /// Last resort when the ring cannot be waited on: never free memory the kernel may write,
    /// and keep the file locked (nobody else may write it while our requests may still land).
    fn leak_in_flight(&mut self) {
        self.tokens.leak();
        if let Some(f) = self.file.take() {
            std::mem::forget(f);
        }
        if let Some(r) = self.ring.take() {
            std::mem::forget(r);
        }
    }
}

/// Fills `iovecs` with the segments of `io`'s scatter list that carry its `len_bytes` and returns
/// how many it used; refuses a transfer larger than one kernel call moves or buffers that do not
/// cover it.
#[inline]
fn fill_iovecs(iovecs: &mut Iovecs, io: &IoRequest, len_bytes: u64) -> Result<usize, IoStatus> {
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
        iovecs[n] = libc::iovec {
            iov_base: v.buf.as_mut_ptr().wrapping_add(start).cast(),
            iov_len: take as usize,
        };
        n += 1;
        left -= take;
    }
    if left != 0 || n == 0 {
        return Err(IoStatus::InvalidRange);
    }
    Ok(n)
}

/// Reads or writes `io`'s data at once with `preadv2`/`pwritev2` on `fd` (a file in memory:
/// see [`memory_backed`]). A short transfer is a failure, as on the ring.
#[inline]
fn transfer_inline(fd: RawFd, io: &IoRequest, block_shift: u32) -> IoStatus {
    let offset_bytes = io.offset_blocks << block_shift;
    let len_bytes = io.num_blocks << block_shift;
    let mut iovecs: Iovecs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_IOVS];
    let n = match fill_iovecs(&mut iovecs, io, len_bytes) {
        Ok(n) => n,
        Err(status) => return status,
    };
    let r = loop {
        // SAFETY: every iovec points into a `DmaBuf` that `io` holds for the duration of the call
        // (checked against the buffer's length by `fill_iovecs`), and no Rust borrow of those
        // bytes is live during it; `fd` is kept open by the channel.
        let r = unsafe {
            if io.op == IoOp::Read {
                libc::preadv2(fd, iovecs.as_ptr(), n as i32, offset_bytes as libc::off_t, 0)
            } else {
                libc::pwritev2(fd, iovecs.as_ptr(), n as i32, offset_bytes as libc::off_t, 0)
            }
        };
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break r;
        }
    };
    if r as u64 == len_bytes {
        return IoStatus::Success;
    }
    tracing::debug!(
        op = io.op.name(),
        offset_blocks = io.offset_blocks,
        len_bytes,
        result = r,
        error = %io::Error::last_os_error(),
        "inline file I/O failed or was short"
    );
    IoStatus::Failed
}

/// `statfs` magic numbers of filesystems that keep files only in memory: tmpfs (also
/// `/dev/shm`) and ramfs. io_uring punts every read and write on them to its worker threads
/// (they do not support `IOCB_NOWAIT`), while the transfer itself is a memory copy.
const TMPFS_MAGIC: u64 = 0x0102_1994;
const RAMFS_MAGIC: u64 = 0x8584_58f6;

/// Whether `file` lives on a memory-only filesystem ([`TMPFS_MAGIC`], [`RAMFS_MAGIC`]): its
/// buffered reads and writes are then done inline by the channel (module docs). Control path.
pub(super) fn memory_backed(file: &impl AsRawFd) -> bool {
    // SAFETY: `statfs` is a plain C struct for which all-zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a live fd and a live, writable statfs buffer.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    rc == 0 && matches!(st.f_type as u64, TMPFS_MAGIC | RAMFS_MAGIC)
}

/// Builds the SQE for `io` (not Reset), filling `iovecs` (the token's scratch) for multi-segment
/// transfers. Returns it with the result a fully successful completion reports (bytes moved; 0
/// for ops whose result is just 0).
#[inline]
fn prepare_sqe(
    r: FileTarget,
    iovecs: &mut Iovecs,
    io: &IoRequest,
    block_shift: u32,
) -> Result<(squeue::Entry, u64), IoStatus> {
    let offset_bytes = io.offset_blocks << block_shift;
    let len_bytes = io.num_blocks << block_shift;
    let mut expected_bytes = 0;
    let entry = match io.op {
        IoOp::Read | IoOp::Write => {
            let n = fill_iovecs(iovecs, io, len_bytes)?;
            expected_bytes = len_bytes;
            let iov0 = iovecs[0];
            match (io.op, n) {
                (IoOp::Read, 1) => with_target!(r, |t| opcode::Read::new(t, iov0.iov_base.cast(), len_bytes as u32)
                    .offset(offset_bytes)
                    .build()),
                (IoOp::Read, _) => with_target!(r, |t| opcode::Readv::new(t, iovecs.as_ptr(), n as u32)
                    .offset(offset_bytes)
                    .build()),
                (_, 1) => with_target!(r, |t| opcode::Write::new(
                    t,
                    iov0.iov_base.cast_const().cast(),
                    len_bytes as u32
                )
                .offset(offset_bytes)
                .build()),
                _ => with_target!(r, |t| opcode::Writev::new(t, iovecs.as_ptr(), n as u32)
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
    Ok((entry, expected_bytes))
}

/// This core's channel of a uring/aio bdev: the ring, the token queue and the poller. Created on
/// its core by `create_channel`, dropped there. The poller closure and this struct share the
/// state (`Rc`); dropping the channel stops the poller (the handle) after draining the ring.
struct UringChannel {
    state: Rc<RefCell<ChanState>>,
    poller: PollerHandle,
}

impl UringChannel {
    /// Called on `core` (a reactor): creates the ring, registers the file, starts the poller.
    /// Without a file (a channel made after the bdev was unregistered) every I/O fails.
    /// `direct`: the file is open with `O_DIRECT`; `inline_data`: reads and writes are done
    /// inline (module docs).
    fn new(
        name: &str,
        core: CoreId,
        file: Option<Arc<LockedFile>>,
        block_size: u32,
        direct: bool,
        inline_data: bool,
    ) -> UringChannel {
        let Some(file) = file else {
            let state = Rc::new(RefCell::new(ChanState::new(name, None, None, block_size)));
            let st2 = state.clone();
            let poller =
                keel_reactor::current().register_poller(format!("uring_poll_{name}"), move || st2.borrow_mut().poll());
            return UringChannel { state, poller };
        };
        let fd = file.as_raw_fd();
        let ring = match Ring::new(RING_DEPTH) {
            Ok(ring) => {
                let fixed = ring.register_file(fd);
                tracing::debug!(
                    bdev = name,
                    core = core.0,
                    fixed,
                    single_issuer = ring.single_issuer(),
                    "io_uring channel created"
                );
                Some(FileRing {
                    ring,
                    target: FileTarget { fixed, fd },
                })
            }
            Err(e) => {
                tracing::warn!(bdev = name, core = core.0, error = %e, "cannot create io_uring; I/O on this core will fail");
                None
            }
        };
        let mut st = ChanState::new(name, Some(file), ring, block_size);
        st.yield_while_punted = !direct;
        st.inline_data = inline_data;
        let state = Rc::new(RefCell::new(st));
        let st2 = state.clone();
        let poller =
            keel_reactor::current().register_poller(format!("uring_poll_{name}"), move || st2.borrow_mut().poll());
        UringChannel { state, poller }
    }
}

impl BackendChannel for UringChannel {
    /// Queues the request's SQE; the poller submits it this turn. Requeue when no token is free
    /// or the SQ is full. Buffers stay owned by the request, which the token queue holds until
    /// the kernel is done.
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
    fn proc_locks_lines_name_the_holder() {
        let dev = libc::makedev(0xfe, 0);
        let text = "1: FLOCK  ADVISORY  WRITE 21419 fe:00:6833690 0 EOF\n\
                    2: FLOCK  ADVISORY  READ 77 fe:00:10133507 0 EOF\n\
                    2: -> FLOCK  ADVISORY  WRITE 78 fe:00:10133507 0 EOF\n\
                    3: OFDLCK ADVISORY  WRITE -1 fe:00:6833690 0 EOF\n\
                    4: FLOCK  ADVISORY  READ 90 08:01:10133507 0 EOF\n\
                    garbage\n";
        assert_eq!(flock_holders(text, (dev, 6833690)), vec![(21419, "exclusive", true)]);
        assert_eq!(
            flock_holders(text, (dev, 10133507)),
            vec![(77, "shared", true), (90, "shared", false)]
        );
        assert!(flock_holders(text, (dev, 1)).is_empty());
    }

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
}
