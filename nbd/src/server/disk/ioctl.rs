//! The `/dev/nbdX` ioctls (`shared/specs/nbd-ublk.md` B1) — the crate's only `unsafe` code.
//!
//! Every NBD ioctl takes its argument **by value** (an fd, a size, a flag word, or nothing):
//! none passes a pointer, so the kernel reads or writes no memory of ours and the only things
//! to uphold are a valid descriptor of an NBD device (a `&File` the caller opened on
//! `/dev/nbdX`) and, for [`set_sock`], a valid socket descriptor for the duration of the call
//! (the kernel takes its own reference to the socket). Numbers are `_IO(0xab, n)`, checked
//! against Linux 6.12's `uapi/linux/nbd.h`.
//!
//! Called on the main reactor (the quick set-up ioctls), on the disk's `NBD_DO_IT` thread
//! ([`do_it`] blocks until the connection ends, then the clean-up ioctls) and on a short-lived
//! helper thread ([`disconnect`]).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

const NBD_SET_SOCK: libc::Ioctl = 0xab00;
const NBD_SET_BLKSIZE: libc::Ioctl = 0xab01;
const NBD_DO_IT: libc::Ioctl = 0xab03;
const NBD_CLEAR_SOCK: libc::Ioctl = 0xab04;
const NBD_CLEAR_QUE: libc::Ioctl = 0xab05;
const NBD_SET_SIZE_BLOCKS: libc::Ioctl = 0xab07;
const NBD_DISCONNECT: libc::Ioctl = 0xab08;
const NBD_SET_TIMEOUT: libc::Ioctl = 0xab09;
const NBD_SET_FLAGS: libc::Ioctl = 0xab0a;

/// `ioctl(dev, request, arg)` with a by-value argument.
fn ioctl(dev: &File, request: libc::Ioctl, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: `dev` is an open descriptor for the lifetime of the borrow, and every request
    // used here (the constants above) takes its argument by value — an integer the kernel
    // never dereferences — so no memory of this process is read or written by the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), request, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `NBD_SET_SOCK`: adds the connected stream socket `sock` as the device's connection (the
/// kernel holds its own reference afterwards). `EBUSY` when another task is setting the device
/// up or it is already running.
pub(crate) fn set_sock(dev: &File, sock: BorrowedFd<'_>) -> io::Result<()> {
    let fd: RawFd = sock.as_raw_fd();
    ioctl(dev, NBD_SET_SOCK, fd as libc::c_ulong)
}

/// `NBD_SET_BLKSIZE`: the logical (= physical) block size, a power of two in 512..=4096.
pub(crate) fn set_blksize(dev: &File, bytes: u32) -> io::Result<()> {
    ioctl(dev, NBD_SET_BLKSIZE, bytes as libc::c_ulong)
}

/// `NBD_SET_SIZE_BLOCKS`: the size in blocks of the size set before.
pub(crate) fn set_size_blocks(dev: &File, blocks: u64) -> io::Result<()> {
    ioctl(dev, NBD_SET_SIZE_BLOCKS, blocks as libc::c_ulong)
}

/// `NBD_SET_TIMEOUT`: seconds a request may take before the kernel declares the connection
/// dead (0 = wait for ever).
pub(crate) fn set_timeout(dev: &File, secs: u64) -> io::Result<()> {
    ioctl(dev, NBD_SET_TIMEOUT, secs as libc::c_ulong)
}

/// `NBD_SET_FLAGS`: the transmission flags the kernel may use (FLUSH, FUA, TRIM, ...).
pub(crate) fn set_flags(dev: &File, flags: u16) -> io::Result<()> {
    ioctl(dev, NBD_SET_FLAGS, libc::c_ulong::from(flags))
}

/// `NBD_DO_IT`: starts the device and **blocks** until its connection ends. `Ok` after a
/// requested disconnect; an error when the connection died (or timed out).
pub(crate) fn do_it(dev: &File) -> io::Result<()> {
    ioctl(dev, NBD_DO_IT, 0)
}

/// `NBD_DISCONNECT`: the kernel sends `NBD_CMD_DISC` on the connection (it may wait for room
/// in the socket).
pub(crate) fn disconnect(dev: &File) -> io::Result<()> {
    ioctl(dev, NBD_DISCONNECT, 0)
}

/// `NBD_CLEAR_QUE` (a no-op on current kernels, kept for the documented sequence).
pub(crate) fn clear_que(dev: &File) -> io::Result<()> {
    ioctl(dev, NBD_CLEAR_QUE, 0)
}

/// `NBD_CLEAR_SOCK`: drops the connection and the configuration; the device is free again.
pub(crate) fn clear_sock(dev: &File) -> io::Result<()> {
    ioctl(dev, NBD_CLEAR_SOCK, 0)
}
