//! The crate's one error type.

use keel_nvme_proto::cqe::Status;
use keel_nvme_proto::ProtoError;

/// Errors of attaching, connecting and running NVMe controllers.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    /// A parameter is invalid (name taken, bad address, unsupported option).
    #[error("{0}")]
    Invalid(String),
    /// The transport type is not (yet) supported.
    #[error("{0}")]
    Unsupported(String),
    /// A controller of that name exists (or is being attached).
    #[error("A controller named {0} already exists")]
    Exists(String),
    /// No controller of that name.
    #[error("Controller {0} not found")]
    NotFound(String),
    /// A socket error (connect, read, write).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The socket error.
        source: std::io::Error,
    },
    /// The peer sent bytes the parser refused.
    #[error("malformed PDU from the controller: {0}")]
    Proto(ProtoError),
    /// The peer sent a well-formed PDU out of sequence or inconsistent with what was asked.
    #[error("controller protocol error: {0}")]
    Sequence(&'static str),
    /// The controller terminated the connection (C2HTermReq) or closed it.
    #[error("connection closed by the controller{0}")]
    Closed(String),
    /// A command failed.
    #[error("{what} failed: {status}")]
    Status {
        /// The command.
        what: &'static str,
        /// Its completion status.
        status: Status,
    },
    /// The PCIe driver refused (its message says what to do: bind with scripts/nvme-bind.sh,
    /// raise RLIMIT_MEMLOCK, fix the address, ...).
    #[error("{0}")]
    Pcie(#[from] keel_nvme_pcie::PcieError),
    /// Nothing arrived in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

impl From<ProtoError> for NvmeError {
    fn from(e: ProtoError) -> Self {
        NvmeError::Proto(e)
    }
}

impl NvmeError {
    /// The JSON-RPC error code SPDK uses for this failure (`-EINVAL`, `-ENODEV`, …).
    pub fn rpc_code(&self) -> i32 {
        match self {
            NvmeError::Invalid(_) => -22,
            NvmeError::Exists(_) => -17,
            NvmeError::Unsupported(_) => -95,
            NvmeError::NotFound(_) => -19,
            NvmeError::Pcie(keel_nvme_pcie::PcieError::NoSuchDevice { .. }) => -19,
            _ => -5,
        }
    }

    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> NvmeError {
        move |source| NvmeError::Io { what, source }
    }
}
