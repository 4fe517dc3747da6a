/// Errors of the bdev layer's control path (create, open, claim, delete). The data path reports
/// outcomes as [`crate::IoStatus`] instead.
#[derive(Debug, thiserror::Error, Clone)]
pub enum BdevError {
    #[error("bdev '{0}' not found")]
    NotFound(String),
    #[error("bdev name '{0}' already exists")]
    Exists(String),
    #[error("bdev '{name}' is claimed by module '{module}'")]
    Claimed { name: String, module: String },
    #[error("bdev '{name}' has writers open; cannot claim it for '{module}'")]
    HasWriters { name: String, module: String },
    /// A delete refused because something must not lose the bdev (`holders.rs`); EBUSY.
    #[error("bdev '{name}' is in use by {holders}: Device or resource busy")]
    InUse { name: String, holders: String },
    #[error("bdev '{0}' is being removed")]
    Removed(String),
    #[error("bdev '{name}' is in use by {}; remove that first", holders.join(", "))]
    Held { name: String, holders: Vec<String> },
    /// A module configuration exists already for this object (a split of the same base); EEXIST.
    #[error("{0} already exists")]
    AlreadyConfigured(String),
    /// No module configuration for this object (a split delete of an unsplit base); ENOENT.
    #[error("{0} not found")]
    NotConfigured(String),
    /// The machine cannot hold what was asked for (a malloc bdev larger than the memory left).
    #[error("{0}")]
    NoMemory(String),
    #[error("invalid parameter '{param}': {reason}")]
    InvalidParam { param: &'static str, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
}

impl BdevError {
    /// Shorthand for [`BdevError::InvalidParam`].
    pub fn invalid(param: &'static str, reason: impl Into<String>) -> BdevError {
        BdevError::InvalidParam {
            param,
            reason: reason.into(),
        }
    }

    /// Wraps an OS error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> BdevError {
        BdevError::Io {
            context: context.into(),
            source: std::sync::Arc::new(source),
        }
    }

    /// Negative errno for the RPC edge (SPDK reports these codes).
    pub fn errno(&self) -> i32 {
        match self {
            BdevError::NotFound(_) => -libc::ENODEV,
            BdevError::Exists(_) => -libc::EEXIST,
            BdevError::Claimed { .. } | BdevError::HasWriters { .. } => -libc::EPERM,
            BdevError::InUse { .. } => -libc::EBUSY,
            BdevError::Removed(_) => -libc::ENODEV,
            BdevError::Held { .. } => -libc::EBUSY,
            BdevError::InvalidParam { .. } => -libc::EINVAL,
            BdevError::NoMemory(_) => -libc::ENOMEM,
            BdevError::AlreadyConfigured(_) => -libc::EEXIST,
            BdevError::NotConfigured(_) => -libc::ENOENT,
            BdevError::Io { source, .. } => -source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}
