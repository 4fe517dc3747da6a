//! The one error type of keel-perf's control path: invalid parameters, configuration failures,
//! jobs that cannot be built. Every variant's text names what was wrong so it can be printed as
//! is on stderr before exiting with status 1. The data path never builds one of these: I/O
//! outcomes are counted, and a miscompare is data ([`keel_load::Miscompare`]). A job that cannot
//! be built comes back from keel-load as a [`LoadError`] and maps onto the variant of the same
//! name and text.

use keel_bdev::BdevError;
use keel_load::LoadError;

/// Errors of keel-perf (control path only).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PerfError {
    /// A command-line parameter (or the equivalent library field) is invalid.
    #[error("invalid parameter {param}: {reason}")]
    InvalidParam { param: &'static str, reason: String },
    /// The command line could not be parsed (clap's message, with usage).
    #[error("{0}")]
    Usage(String),
    /// The JSON configuration file could not be read, parsed or applied.
    #[error("configuration: {0}")]
    Config(String),
    /// `-T NAME` names no bdev.
    #[error("bdev '{0}' not found")]
    BdevNotFound(String),
    /// There is nothing to run against (no leaf bdev, or every job was skipped).
    #[error("no jobs defined or bdevs created")]
    NoJobs,
    /// A job was rejected at construction (e.g. io size not a multiple of the block size).
    #[error("job {job} rejected: {reason}")]
    JobRejected { job: String, reason: String },
    /// The bdev does not support the workload's operation (unmap, flush, write_zeroes); the
    /// orchestrator prints bdevperf's "Skipping" notice for it and goes on.
    #[error("Skipping {job} because it does not support {op}")]
    Unsupported { job: String, op: &'static str },
    /// Opening or using a bdev failed.
    #[error(transparent)]
    Bdev(#[from] BdevError),
    /// The reactors could not be started or messaged.
    #[error("reactors: {0}")]
    Reactor(String),
}

impl PerfError {
    /// Shorthand for [`PerfError::InvalidParam`].
    pub fn invalid(param: &'static str, reason: impl Into<String>) -> PerfError {
        PerfError::InvalidParam {
            param,
            reason: reason.into(),
        }
    }
}

impl From<keel_reactor::ReactorError> for PerfError {
    fn from(e: keel_reactor::ReactorError) -> PerfError {
        PerfError::Reactor(e.to_string())
    }
}

impl From<keel_rpc::RpcError> for PerfError {
    fn from(e: keel_rpc::RpcError) -> PerfError {
        PerfError::Config(e.to_string())
    }
}

impl From<LoadError> for PerfError {
    fn from(e: LoadError) -> PerfError {
        match e {
            LoadError::InvalidParam { param, reason } => PerfError::InvalidParam { param, reason },
            LoadError::JobRejected { job, reason } => PerfError::JobRejected { job, reason },
            LoadError::Unsupported { job, op } => PerfError::Unsupported { job, op },
            LoadError::Bdev(e) => PerfError::Bdev(e),
            LoadError::Reactor(text) => PerfError::Reactor(text),
        }
    }
}
