//! keel-perf: Keel's bdevperf-style benchmark, as a library (the engine, the orchestrator, the
//! report formats, the command line) and a thin binary.
//!
//! # Pieces
//!
//! - [`Job`] (module `job`): the I/O engine. One job lives on one reactor core, owns its bdev
//!   descriptor and channel, and keeps `queue_depth` requests outstanding from one active poller.
//!   After [`Job::start`] the I/O loop does not allocate or lock (`tests/no_alloc.rs` proves it
//!   with a counting global allocator).
//! - [`run()`] (module `run`): the orchestrator. Starts the reactors ([`keel_reactor::Runtime`]),
//!   creates bdevs (JSON config through `keel_rpc::config`, or the embedded default stack),
//!   sends each job to its core, collects results over an `mpsc` channel, prints.
//! - [`report`]: bdevperf's text table and `perform_tests` JSON, plus exact latency percentiles.
//! - [`cli`]: bdevperf's options.
//!
//! # Driving a job from a test (single thread, [`keel_reactor::TestDriver`])
//!
//! ```no_run
//! use keel_bdev::{modules::null, BdevRegistry};
//! use keel_perf::{Job, JobSpec, Workload};
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

pub mod cli;
mod error;
pub mod job;
pub mod pattern;
pub mod report;
pub mod run;
pub mod workload;

pub use error::PerfError;
pub use job::{Job, JobHandle, JobProgress, JobResult, JobStatus, Miscompare, VerifyRange};
pub use run::{run, BdevSetup, OutputFormat, RunOptions, RunSummary};
pub use workload::{parse_size, JobSpec, Workload};
