//! Keel's ublk export: bdevs as the kernel's `/dev/ublkbN` (Linux's userspace block driver,
//! `ublk_drv`), served by io_uring `URING_CMD` queues that the reactors poll — SPDK's
//! `ublk_create_target` / `ublk_start_disk` / `ublk_stop_disk` / `ublk_get_disks` /
//! `ublk_recover_disk` / `ublk_destroy_target` (`shared/specs/nbd-ublk.md` Part C).
//!
//! | module | what | used by |
//! |---|---|---|
//! | [`wire`] | the driver's structures, explicit little-endian | everything here, tests |
//! | `ctrl.rs` | `/dev/ublk-control`: quick and slow control rings | the target (main core) |
//! | `queue.rs` | one queue on its reactor: the ring, tags, buffers (design essay there) | the target |
//! | `target.rs` | [`UblkTarget`], the bdev module: target, disks, their life | keel-rpc's `ublk_*` |
//!
//! # A disk's life
//!
//! `ublk_start_disk` (main core) opens the bdev writable and holds it, ADD_DEV and SET_PARAMS
//! (quick, answered at once), opens `/dev/ublkcN` and sends each queue to its reactor (round
//! robin over the target's cores, as SPDK deals queues to its poll groups); each queue arms
//! its tags there and reports back. With every queue armed, START_DEV goes to the slow control
//! ring; the kernel answers it once it has seen every tag fetched and added `/dev/ublkbN`, and
//! only then is the RPC answered. Stopping (`ublk_stop_disk`, the bdev's hot removal, target
//! destruction, shutdown) sends STOP_DEV: the kernel removes the disk — waiting for the
//! requests in flight, which the queues keep serving — and aborts every armed tag; each queue
//! then finishes on its core. Once STOP_DEV is answered and every queue is gone, the char
//! device is closed and DEL_DEV sent; its answer releases the bdev and answers the stop. The
//! life is a state machine (`target.rs`: `Phase::apply`).
//!
//! # Surviving a crash
//!
//! Disks are made with `USER_RECOVERY | USER_RECOVERY_REISSUE` where the driver offers them (as
//! SPDK): if keel-tgt dies, the kernel keeps `/dev/ublkbN`, quiesced — requests wait, those the
//! dead process held are re-issued later. `ublk_recover_disk` in a new keel-tgt checks the
//! device is quiesced and that its bdev has the disk's geometry, sends START_USER_RECOVERY,
//! opens the char device and arms the queues exactly as a start does (the disk's own queue
//! count and depth); the last queue armed sends END_USER_RECOVERY instead of START_DEV, and
//! its answer answers the RPC. From there the disk is like any other.
//!
//! # Unsafe
//!
//! Only where the kernel is handed memory: the SQEs naming buffers (`ctrl.rs`, `queue.rs`) and
//! the read-only mapping of a queue's request descriptors (`queue.rs`), each with its
//! `// SAFETY:` note; everything else is checked by `deny(unsafe_code)`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod ctrl;
mod error;
mod queue;
mod target;
pub mod wire;

pub use ctrl::CONTROL_PATH;
pub use error::UblkError;
pub use target::{DiskStatus, StartDisk, UblkTarget, MODULE, SUBSYSTEM};
