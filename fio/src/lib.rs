//! keel-fio: an fio ioengine that drives Keel bdevs from Debian's stock fio 3.33.
//!
//! ```sh
//! cargo build --release -p keel-fio
//! fio --name=j --thread=1 --ioengine=external:$PWD/target/release/libkeel_fio.so \
//!     --keel_json_conf=stack.json --filename=Null0 --rw=randread --bs=4k --iodepth=128 \
//!     --time_based --runtime=10
//! ```
//!
//! # Contract (what a job file sees)
//!
//! - `ioengine=external:/abs/path/libkeel_fio.so` (or the path alone). The engine is named
//!   `keel`; `fio --enghelp=/abs/path/libkeel_fio.so` lists its option.
//! - `keel_json_conf=FILE` (required): an SPDK-format JSON config (what `keel-perf --json` and
//!   `keel-tgt -c` read). The first job to start loads it; every job of the fio process shares
//!   the resulting bdevs (one Keel instance per process, like SPDK's `spdk_json_conf`).
//! - `filename=NAME[:NAME…]`: bdev names (or aliases, UUIDs); `filename=*` means every bdev no
//!   module claims. Their sizes are the file sizes fio sees.
//! - `thread=1` (required), any `rw=` pattern including `trim` (→ unmap), `bs` a multiple of the
//!   bdev's block size, `iodepth`, `numjobs`, `time_based`, `verify=` (fio verifies by reading
//!   back), `fsync=` (→ flush).
//! - Refusals, printed by fio's logger and failing the job: a fio other than 3.33 (at load:
//!   the engine mirrors that version's structs), `thread=0`, no `keel_json_conf`, a config that
//!   does not load (the entry and reason are named), an unknown bdev (the bdevs the config
//!   defines are listed), a second config file in the same process, more than 255 concurrent
//!   jobs. `io_submit_mode=offload` and `mem=`/`iomem=` are refused by fio itself because the
//!   engine declares `FIO_NO_OFFLOAD` and its own `iomem_alloc`.
//!
//! # Threads and ownership
//!
//! - Process: [`global::Global`] — attached cores (no threads), the bdev registry, the loaded
//!   config. Created once under a mutex, never dropped (the library is linked `-z nodelete`).
//! - fio job thread: [`engine::JobEngine`] — created by `init`, owned through
//!   `td->io_ops_data`, dropped by `cleanup` on the same thread. It attaches its own reactor
//!   ([`keel_reactor::AttachedReactor`]), so the job submits on its **own bdev channels** and
//!   polls its **own reactor** inside `getevents`: no Keel thread, no cross-thread hop.
//! - fio owns `thread_data`, `io_u` and `fio_file`; the engine owns its option-parsing statics,
//!   the `JobEngine`, the buffer area fio carves its I/O buffers from (`iomem_alloc`), and one
//!   preallocated request per `io_u` (`io_u->engine_data` = slot index, request `tag` = slot).
//!
//! # Data path
//!
//! `queue` fills the slot's request and queues it; `commit` submits the queue to the bdev
//! channels; `getevents` reaps completions, turning the job's reactor whenever the completions
//! at hand do not reach `min` (and at least every [`engine::TURN_EVERY`] calls); `event` returns
//! the `io_u`. No allocation, lock or syscall per I/O (`tests/no_alloc.rs`).
//!
//! # Modules
//!
//! - `abi` (private): fio's C structs mirrored, the exported `get_ioengine`, the callbacks.
//!   The only module with `unsafe`.
//! - [`engine`]: the per-job engine (safe).
//! - [`global`]: the per-process Keel instance (safe).
//!
//! # Limits
//!
//! - Only fio 3.33 (x86_64 layout of Debian bookworm's build).
//! - Visits over every core (dm table swaps, bdev removal) reach only the cores fio job threads
//!   hold; unattached cores have no reactor and are passed by.
//! - `verify_async` works: fio gives an I/O unit to its verify threads only after the engine
//!   completed it and does not reuse it before the check ended, and the engine touches a
//!   buffer only between its unit's submit and completion (`tests/verify_async.rs`).
#![deny(unsafe_code)]

mod abi;
pub mod engine;
pub mod global;

pub use abi::{check_fio_version, SUPPORTED_FIO_VERSION, TEST_VERSION_ENV};
pub use engine::{JobEngine, Queued};
pub use global::Global;
