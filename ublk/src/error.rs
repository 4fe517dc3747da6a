//! The crate's one error type; each variant maps to the negative errno SPDK answers with.
#![forbid(unsafe_code)]

/// Why a ublk call failed.
#[derive(Debug, thiserror::Error)]
pub enum UblkError {
    /// No such bdev, disk or target (`-ENODEV`).
    #[error("{0}")]
    NoDevice(String),
    /// The target already exists, the id is in use, the disk is busy (`-EBUSY`).
    #[error("{0}")]
    Busy(String),
    /// Bad parameters (`-EINVAL`).
    #[error("{0}")]
    Invalid(String),
    /// The disk cannot do that (recovery of a disk made without it: `-ENOTSUP`).
    #[error("{0}")]
    NotSupported(String),
    /// No target to destroy (`-ENOENT`).
    #[error("{0}")]
    NoEntry(String),
    /// The kernel refused (its errno).
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl UblkError {
    /// The negative errno of the JSON-RPC error.
    pub fn errno(&self) -> i32 {
        match self {
            UblkError::NoDevice(_) => -libc::ENODEV,
            UblkError::Busy(_) => -libc::EBUSY,
            UblkError::Invalid(_) => -libc::EINVAL,
            UblkError::NoEntry(_) => -libc::ENOENT,
            UblkError::NotSupported(_) => -libc::ENOTSUP,
            UblkError::Os { source, .. } => -source.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    pub(crate) fn os(what: impl Into<String>, source: std::io::Error) -> UblkError {
        UblkError::Os {
            what: what.into(),
            source,
        }
    }
}
