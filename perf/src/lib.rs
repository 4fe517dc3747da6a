//! keel-perf: Keel's bdevperf-style benchmark, as a library (the orchestrator, the report
//! formats, the command line) and a thin binary. The I/O engine it runs is keel-load's: the job
//! types are re-exported here unchanged.
//!
//! # Pieces
//!
//! - [`Job`] (crate `keel_load`): the I/O engine. One job lives on one reactor core, owns its
//!   bdev descriptor and channel, and keeps `queue_depth` requests outstanding from one active
//!   poller. After [`Job::start`] the I/O loop does not allocate or lock (`tests/no_alloc.rs`
//!   proves it with a counting global allocator). The keel-load docs show how to drive one from
//!   a test.
//! - [`run()`] (module `run`): the orchestrator. Starts the reactors ([`keel_reactor::Runtime`]),
//!   creates bdevs (JSON config through `keel_rpc::config`, or the embedded default stack),
//!   sends each job to its core, collects results over an `mpsc` channel, prints.
//! - [`report`]: bdevperf's text table and `perform_tests` JSON, plus exact latency percentiles.
//! - [`cli`]: bdevperf's options.
#![forbid(unsafe_code)]

pub mod cli;
mod error;
pub mod report;
pub mod run;
pub mod serve;

pub use cli::parse_size;
pub use error::PerfError;
pub use keel_load::{
    Job, JobHandle, JobProgress, JobResult, JobSpec, JobStatus, LoadError, Miscompare, VerifyRange, Workload,
};
pub use run::{run, BdevSetup, OutputFormat, RunOptions, RunSummary};
