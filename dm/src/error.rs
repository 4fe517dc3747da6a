//! The control-path error of the dm crate. The data path reports outcomes as
//! [`keel_bdev::IoStatus`] instead.

use keel_bdev::BdevError;

/// Errors of dm operations (create, load, suspend, ...). [`DmError::errno`] gives the negative
/// errno the RPC edge reports: the codes the Linux dm ioctls return for the same failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DmError {
    /// No mapped device of that name (Linux: ENXIO).
    #[error("dm device '{0}' does not exist")]
    NotFound(String),
    /// Name or uuid in use, device open, or an operation that needs it closed (EBUSY).
    #[error("{0}: Device or resource busy")]
    Busy(String),
    /// A bad parameter outside the table text (EINVAL).
    #[error("invalid parameter '{param}': {reason}")]
    Invalid { param: &'static str, reason: String },
    /// A table that does not parse or validate. `line` is 1-based; `field` names the field
    /// (`"field 5 <chunk_sectors> '96'"`), or the whole line when the problem is not one field.
    #[error("table line {line}, {field}: {reason}")]
    Table {
        line: usize,
        field: String,
        reason: String,
        /// EINVAL, or EBUSY when a named bdev is claimed by someone else.
        errno: i32,
    },
    /// A table with no target lines where one is required (EINVAL).
    #[error("table: no targets specified")]
    EmptyTable,
    /// The target does not take messages, or refused this one (EINVAL).
    #[error("{0}")]
    Message(String),
    /// `wait` gave up (ETIMEDOUT).
    #[error("timed out waiting for an event on dm device '{0}'")]
    TimedOut(String),
    /// A suspend (or a resume's table swap) whose in-flight I/O did not drain within its bound
    /// (ETIMEDOUT); the device runs again as before. `held_by` names suspended devices below.
    #[error("dm device '{device}': in-flight I/O did not drain within {waited_ms} ms{held_by}; the device is running again and nothing changed")]
    DrainTimedOut {
        device: String,
        waited_ms: u64,
        held_by: String,
    },
    /// A table to make live names bdevs that were removed after it was loaded (ENODEV).
    #[error("dm device '{device}': its table names bdev(s) {bdevs} that were removed; load a table without them")]
    BaseRemoved { device: String, bdevs: String },
    /// The bdev layer refused something (its own errno).
    #[error(transparent)]
    Bdev(#[from] BdevError),
}

impl DmError {
    /// Negative errno for the RPC edge.
    pub fn errno(&self) -> i32 {
        match self {
            DmError::NotFound(_) => -libc::ENXIO,
            DmError::Busy(_) => -libc::EBUSY,
            DmError::Invalid { .. } | DmError::EmptyTable | DmError::Message(_) => -libc::EINVAL,
            DmError::Table { errno, .. } => -errno.abs(),
            DmError::TimedOut(_) | DmError::DrainTimedOut { .. } => -libc::ETIMEDOUT,
            DmError::BaseRemoved { .. } => -libc::ENODEV,
            DmError::Bdev(e) => e.errno(),
        }
    }

    /// Shorthand for [`DmError::Invalid`].
    pub fn invalid(param: &'static str, reason: impl Into<String>) -> DmError {
        DmError::Invalid {
            param,
            reason: reason.into(),
        }
    }
}
