//! The crate's one error enum.

#![forbid(unsafe_code)]

use std::io;
use std::path::PathBuf;

use keel_nvme_proto::cqe::Status;
use keel_nvme_proto::ProtoError;

/// Everything that can go wrong in the PCIe driver. Messages say what to do where there is
/// something to do (binding, IOMMU groups, memlock).
#[derive(Debug, thiserror::Error)]
pub enum PcieError {
    /// The PCI address is not of the form `DDDD:BB:DD.F` or names no device.
    #[error("no PCI device {bdf}: {why} (use the full address, e.g. 0000:00:04.0; `lspci -D` lists them)")]
    NoSuchDevice {
        /// The address as given.
        bdf: String,
        /// What was wrong.
        why: String,
    },
    /// The device is bound to another driver (or none).
    #[error(
        "PCI device {bdf} is bound to {driver}, not vfio-pci: run `scripts/nvme-bind.sh vfio {bdf}` (as root) first"
    )]
    NotBoundToVfio {
        /// The address.
        bdf: String,
        /// The current driver ("no driver" if unbound).
        driver: String,
    },
    /// The device has no IOMMU group: no IOMMU is enabled.
    #[error(
        "PCI device {bdf} has no IOMMU group: boot with intel_iommu=on (or amd_iommu=on) so vfio-pci can isolate it"
    )]
    NoIommuGroup {
        /// The address.
        bdf: String,
    },
    /// Another device of the group is bound to a host driver.
    #[error("IOMMU group {group} of {bdf} is not viable: every device in /sys/kernel/iommu_groups/{group}/devices must be bound to vfio-pci or to no driver (bind them with scripts/nvme-bind.sh)")]
    GroupNotViable {
        /// The address.
        bdf: String,
        /// The IOMMU group number.
        group: u32,
    },
    /// Pinning DMA memory failed for lack of locked-memory allowance.
    #[error("cannot pin {len_bytes} bytes of DMA memory: RLIMIT_MEMLOCK is {limit} — raise it (`ulimit -l unlimited`, limits.conf) or run with CAP_IPC_LOCK")]
    MemlockTooLow {
        /// Bytes that were to be pinned.
        len_bytes: u64,
        /// The soft limit, as text.
        limit: String,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done (names the file or ioctl).
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// A sysfs or device file could not be used.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The controller did not reach the state it was asked for in time.
    #[error("controller timeout: {what} (CSTS {csts:#x}) after {waited_ms} ms")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// CSTS when giving up.
        csts: u32,
        /// How long was waited.
        waited_ms: u64,
    },
    /// CSTS.CFS is set: the controller needs a reset.
    #[error("controller fatal status (CSTS.CFS) — reset the controller")]
    ControllerFatal,
    /// CSTS reads all ones: the device is gone (hot removal or broken PCI access).
    #[error("the device is gone (CSTS reads 0xFFFFFFFF)")]
    DeviceGone,
    /// An admin command failed.
    #[error("{command} failed: {status}")]
    Command {
        /// The command.
        command: &'static str,
        /// Its status.
        status: Status,
    },
    /// The controller's capabilities or answers do not allow what was asked.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A caller's argument is out of range.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A structure the controller returned could not be decoded.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The controller is not in a state that allows the operation.
    #[error("controller is {0}")]
    State(&'static str),
}

impl PcieError {
    /// Wraps an OS error with what was being done.
    pub(crate) fn os(what: impl Into<String>, source: io::Error) -> PcieError {
        PcieError::Os {
            what: what.into(),
            source,
        }
    }
}
