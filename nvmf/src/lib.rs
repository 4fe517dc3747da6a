//! Keel's NVMe over TCP target: bdevs served as NVMe namespaces to NVMe/TCP hosts (the Linux
//! kernel's `nvme-tcp`, SPDK's initiator, Keel's own), configured with SPDK's `nvmf_*` methods.
//!
//! # Design
//!
//! The target is a bdev module ([`NvmfTarget`], one per [`keel_bdev::BdevRegistry`], reached
//! with [`NvmfTarget::of`]) whose save_config subsystem is `"nvmf"` (after `"bdev"`). Its
//! control-path state — the TCP transport's options, the subsystems (the discovery subsystem
//! always first) with their namespaces, allowed hosts and listeners, the bound listening
//! sockets, the controllers and the qpairs — sits behind one mutex, changed on the main core by
//! the RPC methods and read at Connect and by admin commands; the I/O path never takes it.
//!
//! * A **listener** is a non-blocking TCP socket, bound once per address however many
//!   subsystems listen there, and polled by a timed poller on the main reactor. Each connection
//!   it accepts goes by message to the next reactor in round-robin order and lives there.
//! * A **qpair** (one TCP connection, `qpair.rs`) is polled by its own poller on that reactor:
//!   ICReq/ICResp, then Fabrics Connect, then commands. The wire formats and the incremental
//!   PDU parser come from [`keel_nvme_proto`]. No thread per connection, no lock and no
//!   allocation per I/O once connected.
//! * A **controller** (`ctrlr.rs`) is what an admin Connect creates (dynamic controller ids
//!   from the subsystem's range); I/O Connects join it by CNTLID. It ends — and every qpair of
//!   it closes — when its admin qpair closes, when KATO expires, when its host is removed from
//!   the subsystem or the subsystem is deleted.
//! * A **namespace** (`subsystem.rs`) holds its bdev open (and held) until removed. Adding or
//!   removing one bumps the subsystem's namespace generation (I/O qpairs rebuild their channel
//!   table when they see it move) and raises a namespace-attribute notice on every controller
//!   whose host enabled it (completing a held Asynchronous Event Request).
//!
//! Admin pages (Identify, log pages, properties) are built in `admin.rs`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
pub mod config;
mod ctrlr;
mod error;
mod qpair;
mod subsystem;
pub mod target;

pub use config::{ListenAddress, NsOpts, SubsystemOpts, TransportOpts};
pub use ctrlr::Controller;
pub use error::NvmfError;
pub use subsystem::{Namespace, Subsystem};
pub use target::NvmfTarget;
#[cfg(feature = "testing")]
pub mod testhost;
