//! The crate's one error type, [`RpcError`], and the JSON-RPC 2.0 codes. A leaf.

use keel_bdev::BdevError;

/// A JSON-RPC error: code and message as they go on the wire. The one error type of this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

/// JSON-RPC 2.0 standard codes.
pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;
pub const METHOD_NOT_FOUND: i32 = -32601;
pub const INVALID_PARAMS: i32 = -32602;
pub const INTERNAL_ERROR: i32 = -32603;

impl RpcError {
    /// An error with this code and message.
    pub fn new(code: i32, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    /// -32602 with a message.
    pub fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }

    /// -32601 "Method not found".
    pub fn method_not_found(method: &str) -> RpcError {
        let _ = method;
        RpcError::new(METHOD_NOT_FOUND, "Method not found")
    }

    /// A negative-errno error whose message is the error's text (SPDK sends strerror text; ours
    /// names the cause more precisely and keeps the errno code).
    pub fn from_errno(errno: i32, message: impl Into<String>) -> RpcError {
        RpcError::new(errno, message)
    }
}

impl From<BdevError> for RpcError {
    fn from(e: BdevError) -> RpcError {
        RpcError::new(e.errno(), e.to_string())
    }
}
