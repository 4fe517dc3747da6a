/// Errors of the md layer (control path). Each names what was wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MdError {
    /// A superblock failed a load-time check; `field` names the offending field.
    #[error("invalid md superblock: {field}: {reason}")]
    BadSuperblock { field: &'static str, reason: String },
    /// A bdev could not be opened or used.
    #[error("{0}")]
    Bdev(String),
    /// Metadata I/O failed.
    #[error("{0}")]
    Io(String),
    /// A buffer of the wrong size was handed to a decoder.
    #[error("short buffer: need {need} bytes, got {got}")]
    ShortBuffer { need: usize, got: usize },
    /// A request parameter was wrong; `param` names it.
    #[error("invalid parameter '{param}': {reason}")]
    InvalidParam { param: &'static str, reason: String },
    /// Something asked for (a level, an option) is not implemented yet.
    #[error("{0}")]
    Unsupported(String),
    /// No array (or bdev) of that name.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken.
    #[error("{0}")]
    Exists(String),
    /// A member is in use (claimed, opened for writing, or listed twice).
    #[error("{0}")]
    Busy(String),
}

impl MdError {
    /// Shorthand for [`MdError::InvalidParam`].
    pub fn invalid(param: &'static str, reason: impl Into<String>) -> MdError {
        MdError::InvalidParam {
            param,
            reason: reason.into(),
        }
    }

    /// Negative errno for the RPC edge.
    pub fn errno(&self) -> i32 {
        match self {
            MdError::NotFound(_) => -libc_enodev(),
            MdError::Exists(_) => -17,
            MdError::Busy(_) => -16,
            MdError::Io(_) => -5,
            MdError::Unsupported(_) => -95,
            MdError::Bdev(m) if m.contains("not found") => -libc_enodev(),
            _ => -22,
        }
    }

    pub(crate) fn bad(field: &'static str, reason: impl Into<String>) -> MdError {
        MdError::BadSuperblock {
            field,
            reason: reason.into(),
        }
    }
}

/// ENODEV (19 on Linux; md does not depend on libc for one constant).
const fn libc_enodev() -> i32 {
    19
}
