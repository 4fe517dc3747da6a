use crate::CoreId;

/// Errors of the reactor crate. Control-path only: nothing on the data path returns these.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReactorError {
    /// A core mask string could not be parsed.
    #[error("invalid core mask '{mask}': {reason}")]
    InvalidCoreMask { mask: String, reason: String },
    /// A message was addressed to a core that has no reactor.
    #[error("no reactor on core {0}")]
    NoSuchCore(CoreId),
    /// The reactors are shutting down and take no new messages.
    #[error("reactors are shutting down")]
    ShuttingDown,
    /// An OS thread could not be started.
    #[error("cannot start reactor thread for core {core}: {reason}")]
    Spawn { core: CoreId, reason: String },
}
