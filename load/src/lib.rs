//! keel-load: Keel's workload driver — bdevperf-style jobs that keep a queue depth of I/O
//! outstanding on one bdev from one reactor core and measure it — shared by the benchmark
//! (keel-perf) and by the tests of every layer. It depends only on keel-reactor and keel-bdev,
//! so a layer's tests (dm, md, …) can drive load without linking the tools built on top of them.
//!
//! # Pieces
//!
//! - [`Job`] (module `job`): the I/O engine. One job lives on one reactor core, owns its bdev
//!   descriptor and channel, and keeps `queue_depth` requests outstanding from one active poller.
//!   After [`Job::start`] the I/O loop does not allocate or lock (keel-perf's `tests/no_alloc.rs`
//!   and every layer's no-allocation test prove it with a counting global allocator).
//! - [`JobSpec`] and [`Workload`] (module `workload`): what a job issues, as plain data.
//! - [`pattern`]: the verify data pattern (what a verify job writes and expects back).
//! - [`LoadError`]: why a job could not be built.
//! - `testing` (feature `testing`, for dev-dependencies only): the rig the tests of Keel's crates
//!   share — a deterministic single-thread reactor driver with a bdev registry and blocking
//!   helpers around it, an I/O client, and fault-injecting test bdevs.
//!
//! # Driving a job from a test (single thread, [`keel_reactor::TestDriver`])
//!
//! ```no_run
//! use keel_bdev::{modules::null, BdevRegistry};
//! use keel_load::{Job, JobSpec, Workload};
//! use keel_reactor::{CoreId, TestDriver};
//!
//! let d = TestDriver::new(1);
//! let reg = BdevRegistry::new(d.cores());
//! null::create(&reg, &null::NullOpts::new("Null0", 1 << 18, 4096)).unwrap();
//! // run_time_us = 0: the job runs until stopped.
//! let spec = JobSpec::new("Null0", Workload::RandRead, 32, 4096, 0);
//! let job = d.enter(CoreId(0), || {
//!     let desc = reg.open("Null0", false, |_| {}).unwrap();
//!     Job::start(spec, desc).unwrap()
//! });
//! // Warm up, then measure whatever you like over a window of completed I/Os.
//! assert!(d.run_until(1_000_000, || job.completed_ios() >= 10_000));
//! let before = job.completed_ios();
//! assert!(d.run_until(1_000_000, || job.completed_ios() >= before + 100_000));
//! job.stop();
//! assert!(d.run_until(1_000, || job.is_done()));
//! let result = job.result().unwrap();
//! assert_eq!(result.ios_failed, 0);
//! ```
//!
//! - [`Job::start`]`(spec, desc) -> JobHandle` — on the current reactor core (inside
//!   `TestDriver::enter` or a `Cores::run_on` message). The job takes ownership of the
//!   descriptor and releases it on that core when it ends.
//! - [`JobHandle::completed_ios`] / [`JobHandle::failed_ios`] — counters, updated once per poller
//!   turn. [`JobHandle::stop`] ends a job early; [`JobHandle::is_done`] and
//!   [`JobHandle::result`] give the outcome. [`JobHandle::progress`] is the `Send + Sync` view of
//!   the same counters and stop flag for other threads.
//! - [`Job::start_with`] adds a callback run with the [`JobResult`] when the job ended.
//!
//! A job ends at its deadline (`JobSpec::run_time_us`, 0 = never), when stopped, when its bdev is
//! hot-removed (status `terminated`; in-flight I/O completes as failed first), at the first
//! failed I/O without `continue_on_failure` (status `failed`), or at a verify miscompare (status
//! `failed`, [`JobResult::miscompare`] says where).
#![forbid(unsafe_code)]

mod error;
pub mod job;
pub mod pattern;
#[cfg(feature = "testing")]
pub mod testing;
pub mod workload;
pub mod zipf;

pub use error::LoadError;
pub use job::{
    Job, JobHandle, JobProgress, JobResult, JobStatus, Miscompare, ProgressSnapshot, VerifyRange, PERCENTILES,
};
pub use workload::{JobSpec, Workload, RESET_PERIOD_US};
