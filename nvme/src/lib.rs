//! Keel's `bdev_nvme`: NVMe controllers attached over a transport, their namespaces as bdevs.
//!
//! # Contract
//!
//! * **The controller** ([`Controller`]) is one object per `bdev_nvme_attach_controller`,
//!   owned by the [`NvmeModule`] of the bdev registry and driven by one poller on the **main
//!   reactor**. That poller owns the admin queue: it sends Keep Alive every half KATO, keeps one
//!   Asynchronous Event Request posted and, when a namespace-attribute notice completes it,
//!   re-reads the active namespace list and adds or hot-removes namespace bdevs. Its life is a
//!   state machine (`ctrlr::CtrlrState`, an enum with one `apply` step per poll):
//!   `Live` → (the admin connection or an I/O qpair fails, or a reset is asked) → `Resetting`,
//!   which retries the whole connect sequence every `reconnect_delay_sec` → `Live` again with a
//!   new controller id; or, after `ctrlr_loss_timeout_sec` (-1 = never), `Deleted`: the
//!   namespace bdevs are unregistered (the bdev layer's hot removal) and the controller leaves
//!   the module. While resetting, I/O waits in its qpair; after `fast_io_fail_timeout_sec` it is
//!   failed and new I/O fails at once, until the controller is live again.
//! * **An I/O qpair** is per controller per reactor: the first channel of any of the
//!   controller's namespace bdevs on a reactor creates it (a [`keel_reactor::IoDevice`]
//!   channel), every namespace bdev channel on that reactor shares it, and its own poller on that
//!   reactor owns it. It connects in the background (the blocking TCP connect and the Fabrics
//!   Connect run on a short-lived helper thread and hand the connected socket back through a
//!   channel the poller checks while connecting); I/O submitted before then waits in the qpair.
//! * **Connect sequences run off the reactors.** The admin connect (TCP, ICReq, Fabrics
//!   Connect, CC.EN, Identify, Set Features) of an attach or a reconnect runs on a helper
//!   thread with blocking I/O and deadlines; the main reactor polls for its result. No reactor
//!   ever blocks on the network.
//! * **Data path** (after a qpair is connected): non-blocking socket polled by the owning
//!   reactor; PDUs are encoded with [`keel_nvme_proto`] into one preallocated send buffer and go
//!   out in one `write` per poll (batched); receives read up to 64 KiB per call into a
//!   preallocated buffer fed to the incremental [`keel_nvme_proto::tcp::PduParser`]; read data
//!   is copied once, from that buffer into the bdev request's buffers; completions go through
//!   [`keel_bdev::IoRequest::complete`] from the poller or the submit call. No allocation and
//!   no lock per I/O (`tests/no_alloc.rs`).
//! * **Transports** are an internal seam ([`transport::Transport`]): every transport-specific
//!   byte lives under `tcp/` (NVMe/TCP now); the PCIe driver (keel-nvme-pcie) plugs in as the
//!   second transport: `trtype PCIe` controllers are [`pcie::PcieController`]s, held by the
//!   module beside the fabrics controllers (see [`pcie`] for their design: one keel-nvme-pcie
//!   queue pair per reactor, bounce buffers, reset and hot removal).
//!
//! # Map
//! - [`module`]: the per-registry module state: controllers by name, attach, detach, save_config.
//! - [`ctrlr`]: the controller, its state machine and the admin poller.
//! - `bdev`: a namespace as a bdev; its channel hands requests to the core's qpair.
//! - [`pcie`]: the PCIe transport (keel-nvme-pcie): controller, admin poller, qpairs.
//! - [`transport`]: the transport seam; `tcp/`: NVMe/TCP connections, the I/O qpair, the admin queue.
//! - [`opts`]: attach options, transport ids, module options (`bdev_nvme_set_options`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bdev;
pub mod ctrlr;
mod error;
pub mod module;
pub mod opts;
pub mod pcie;
mod tcp;
pub mod transport;

pub use ctrlr::Controller;
pub use error::NvmeError;
pub use module::NvmeModule;
pub use opts::{AttachOpts, ModuleOpts, TrType, TransportId};
pub use pcie::{PcieController, PcieDevice};
