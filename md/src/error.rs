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
}

impl MdError {
    pub(crate) fn bad(field: &'static str, reason: impl Into<String>) -> MdError {
        MdError::BadSuperblock {
            field,
            reason: reason.into(),
        }
    }
}
