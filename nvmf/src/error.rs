//! The crate's one error enum. Values only: the control path (RPC handlers on the main core)
//! gets them and turns them into SPDK's JSON-RPC errors.

use thiserror::Error;

/// What a control-path operation of the target refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NvmfError {
    /// A parameter is malformed or out of range (SPDK: -32602 "Invalid parameters").
    #[error("Invalid parameters: {0}")]
    Invalid(String),
    /// The subsystem, namespace, host, listener or bdev named does not exist (-32602).
    #[error("Invalid parameters: {0}")]
    NotFound(String),
    /// It exists already (-32602, except a subsystem: -32603 "Unable to create subsystem").
    #[error("Invalid parameters: {0}")]
    Exists(String),
    /// The operation failed for a reason that is not the caller's parameters (-32603).
    #[error("{0}")]
    Internal(String),
}

impl NvmfError {
    /// The JSON-RPC error code SPDK's nvmf methods use for this kind of failure.
    pub fn rpc_code(&self) -> i32 {
        match self {
            NvmfError::Invalid(_) | NvmfError::NotFound(_) | NvmfError::Exists(_) => -32602,
            NvmfError::Internal(_) => -32603,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>) -> NvmfError {
        NvmfError::Invalid(what.into())
    }
}
