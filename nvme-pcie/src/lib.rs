//! A polled-mode userspace NVMe driver over VFIO — the PCIe transport of `bdev_nvme` — and an
//! in-process controller model that runs the same queue logic in tests.
//!
//! # The contract
//! - **Ownership.** A [`Controller`] is owned by one core (the module's admin core). It brings
//!   the device up, runs the admin queue synchronously (attach, queue creation, Abort, reset,
//!   detach) and creates I/O [`QueuePair`]s, each of which is moved to and owned by exactly one
//!   reactor. A reactor submits and polls its pair with no lock, no allocation and no system
//!   call: one SQE copy and one MMIO doorbell write per submission, one CQ doorbell write per
//!   polled batch.
//! - **Buffers.** Data buffers are given as [`DataBuf`] (an IOVA and a length) from memory
//!   mapped for the device: a [`DmaPool`]'s buffers, whose IOVAs are known up front. The caller
//!   owns the buffer; the device reads or writes it until the command's completion is polled.
//!   PRPs (and a PRP list from the command slot's preallocated page) are built per command; one
//!   command moves at most [`Controller::max_transfer_bytes`] (MDTS, and what one PRP list
//!   page expresses) — the bdev layer's splitter keeps I/O below it.
//! - **Completions** come only out of [`QueuePair::poll`], never on the submitter's stack:
//!   `poll` hands each request back to the caller's closure with a [`Completion`].
//!   Backpressure is a value: when every command slot is busy, [`QueuePair::submit`] returns
//!   [`Submitted::Requeue`] with the request.
//! - **Failure.** Per-command timeouts ([`QueuePair::expired`]) lead to Abort
//!   ([`Controller::abort`]); a failed abort, CSTS.CFS ([`Controller::health`]) or a dead
//!   device lead to [`Controller::reset`], after which every queue pair's in-flight requests are
//!   handed back with [`Completion::RESET`] (retry or fail by policy) and the pair is
//!   re-created ([`Controller::restore_io_qpair`]). [`Controller::shutdown`] (or dropping the
//!   controller) sends the shutdown notification (CC.SHN).
//! - **Unsafe code** lives in one module, [`sys`]: BAR0 mapping with volatile register
//!   accesses, DMA memory, and the VFIO ioctls. Its module doc holds the doorbell ordering
//!   argument (release fence before each doorbell write, acquire fence after each phase check).
//!   Every other module is `#![forbid(unsafe_code)]`.
//!
//! # Map
//! - [`sys`]: the unsafe module.
//! - [`regs`]: the [`Registers`] trait (BAR or model) and register offsets.
//! - [`dma`]: [`DmaMapper`] (VFIO or model), the IOVA allocator, [`DmaMem`], [`DmaPool`].
//! - [`prp`]: PRP entries and lists.
//! - [`qpair`]: the submission/completion queue pair.
//! - [`ctrlr`]: the controller.
//! - [`vfio`]: opening a PCI function through VFIO, DMA mapping.
//! - [`model`]: the in-process controller for tests and benchmarks.
//!
//! # Using it (what bdev_nvme's PCIe transport calls)
//! ```no_run
//! use keel_nvme_pcie::{
//!     Controller, ControllerOpts, DataBuf, DmaPool, IoCommand, Mmio, PciAddress, QueuePair, Submitted,
//!     VfioDevice,
//! };
//! # fn main() -> Result<(), keel_nvme_pcie::PcieError> {
//! // Admin core, at bdev_nvme_attach_controller -t PCIe -a 0000:00:04.0:
//! let dev = VfioDevice::open(&PciAddress::parse("0000:00:04.0")?)?;
//! let mut ctrlr = Controller::attach(dev.bar0(), dev.clone(), ControllerOpts::default())?;
//! let ns = ctrlr.namespaces()[0]; // one bdev per namespace: NAMEn1, ...
//! let max_io_bytes = ctrlr.max_transfer_bytes(); // the splitter's limit
//! let mut pool = DmaPool::new(&*dev, 64, 128 * 1024)?; // I/O buffers with known IOVAs
//! // A reactor's first channel: a queue pair, moved to that reactor.
//! let mut qp: QueuePair<Mmio, u64> = ctrlr.create_io_qpair()?;
//! // Reactor: submit ...
//! let b = pool.get().expect("a free buffer");
//! let buf = DataBuf { iova: b.iova, len_bytes: 4096 };
//! let cmd = IoCommand::Read { nsid: ns.nsid, slba: 0, blocks: 4096 / ns.block_size, buf };
//! match qp.submit(&cmd, 42) {
//!     Submitted::Accepted => {}
//!     Submitted::Requeue(_io) => { /* every slot busy: retry after a poll */ }
//!     Submitted::Rejected(_io, _e) => { /* fail the I/O */ }
//! }
//! // ... and poll (the poller returns Busy only when this reaped something).
//! let _reaped = qp.poll(32, |io, c| println!("{io}: {} (max {max_io_bytes})", c.status));
//! // Detach: delete the pair (in-flight I/O comes back with the reset status), shut down.
//! ctrlr.delete_io_qpair(qp, |_io, _c| {})?;
//! ctrlr.shutdown()?;
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod ctrlr;
pub mod dma;
mod error;
pub mod model;
pub mod prp;
pub mod qpair;
pub mod regs;
pub mod sys;
pub mod vfio;

pub use ctrlr::{Controller, ControllerOpts, CtrlrState, Health, Namespace};
pub use dma::{DmaBuf, DmaMapper, DmaMem, DmaPool};
pub use error::PcieError;
pub use qpair::{Completion, DataBuf, IoCommand, QueueId, QueuePair, Submitted};
pub use regs::Registers;
pub use sys::Mmio;
pub use vfio::{PciAddress, VfioDevice};

// A controller lives on the admin core and each queue pair moves to its reactor: both must be
// Send over the real BAR (a compile-time check).
#[allow(dead_code)]
fn _controller_and_queue_pairs_are_send() {
    fn send<T: Send>() {}
    send::<Controller<Mmio>>();
    send::<QueuePair<Mmio, u64>>();
    send::<DmaPool>();
}
