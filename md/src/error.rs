use keel_bdev::BdevError;

/// Errors of the md layer (control path). Each names what was wrong and where.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MdError {
    /// A superblock failed a load-time check; `field` names the offending field.
    #[error("invalid md superblock: {field}: {reason}")]
    BadSuperblock { field: &'static str, reason: String },
    /// The bdev layer refused something (registering the array bdev, opening a bdev to examine
    /// it), as it said.
    #[error("{0}")]
    Bdev(#[from] BdevError),
    /// A member bdev could not be opened or claimed for the array.
    #[error("member '{bdev}': {source}")]
    Member {
        bdev: String,
        #[source]
        source: BdevError,
    },
    /// The bdev registry the md registry serves is gone (the process is shutting down).
    #[error("the bdev registry is gone")]
    RegistryGone,
    /// `source`, with what assembly refused on the way (for errors whose own text cannot carry
    /// it).
    #[error("{source}{refused}")]
    Refused {
        #[source]
        source: Box<MdError>,
        /// " (refused: …)".
        refused: String,
    },
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

    /// Negative errno for the RPC edge: -19 for what does not exist (an array, a bdev), -17 a
    /// taken name, -16 a member in use, -5 metadata I/O, -95 what md cannot do, -22 the rest.
    pub fn errno(&self) -> i32 {
        match self {
            MdError::NotFound(_) => -libc_enodev(),
            MdError::Exists(_) => -17,
            MdError::Busy(_) => -16,
            MdError::Io(_) => -5,
            MdError::Unsupported(_) => -95,
            MdError::Bdev(BdevError::NotFound(_))
            | MdError::Member {
                source: BdevError::NotFound(_),
                ..
            } => -libc_enodev(),
            MdError::Refused { source, .. } => source.errno(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdev_errors_keep_their_text_and_code() {
        let e = MdError::from(BdevError::NotFound("x".into()));
        assert_eq!((e.to_string().as_str(), e.errno()), ("bdev 'x' not found", -19));
        let e = MdError::Member {
            bdev: "m".into(),
            source: BdevError::Removed("m".into()),
        };
        assert_eq!(
            (e.to_string().as_str(), e.errno()),
            ("member 'm': bdev 'm' is being removed", -22)
        );
        assert!(
            std::error::Error::source(&e).is_some(),
            "the bdev error stays structured"
        );
        let e = MdError::Refused {
            source: Box::new(MdError::from(BdevError::NotFound("y".into()))),
            refused: " (refused: member 'z' refused: stale)".into(),
        };
        assert_eq!(e.errno(), -19);
        assert_eq!(e.to_string(), "bdev 'y' not found (refused: member 'z' refused: stale)");
        assert_eq!(MdError::RegistryGone.errno(), -22);
    }
}
