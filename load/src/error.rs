//! The one error type of keel-load: a job that cannot be built. Returned by [`crate::Job::start`]
//! and [`crate::Workload::parse`] on the control path; the I/O loop never builds one (I/O
//! outcomes are counted, and a miscompare is data, [`crate::Miscompare`]). Every variant's text
//! names what was wrong, with bdevperf's option name where a parameter is at fault, so a tool
//! can print it as is.

use keel_bdev::BdevError;

/// Errors of keel-load (control path only).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// A job parameter is invalid; `param` is bdevperf's option for it (`-q`, `-M`, `-w`).
    #[error("invalid parameter {param}: {reason}")]
    InvalidParam { param: &'static str, reason: String },
    /// The spec does not fit the bdev (I/O size not a multiple of the block size, range outside
    /// the bdev, a read-only descriptor for a writing workload, ...).
    #[error("job {job} rejected: {reason}")]
    JobRejected { job: String, reason: String },
    /// The bdev does not support one of the workload's operations (unmap, flush,
    /// write_zeroes, reset).
    #[error("Skipping {job} because it does not support {op}")]
    Unsupported { job: String, op: &'static str },
    /// The bdev is gone (hot-removed before the job started).
    #[error(transparent)]
    Bdev(#[from] BdevError),
    /// Not called on a reactor core, or a resource of the job could not be set up.
    #[error("reactors: {0}")]
    Reactor(String),
}

impl LoadError {
    /// Shorthand for [`LoadError::InvalidParam`].
    pub fn invalid(param: &'static str, reason: impl Into<String>) -> LoadError {
        LoadError::InvalidParam {
            param,
            reason: reason.into(),
        }
    }
}
