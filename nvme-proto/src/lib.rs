//! NVMe and NVMe/TCP wire formats, encoded and decoded in one place.
//!
//! The NVMe/TCP target (`nvmf`), the NVMe/TCP initiator and the userspace PCIe driver (`nvme`) all
//! speak the same structures: 64-byte submission entries, 16-byte completions, the 4096-byte
//! Identify pages, log pages, controller properties and — over TCP — the PDUs that carry them.
//! This crate is the only place where those bytes are read or written. It knows nothing about
//! sockets, reactors or bdevs, and depends on no other Keel crate.
//!
//! # Conventions
//! - Every multi-byte field is explicitly little-endian (`from_le_bytes` / `to_le_bytes`); no
//!   structure is transmuted or cast from memory. Every fixed structure has a `const` length
//!   (`SQE_LEN`, `IDENTIFY_LEN`, …) tied to the spec's size by a const assertion; encoders and
//!   decoders work on a `[u8; LEN]` view, and each field offset is checked against that length
//!   at compile time (the private `wire` module), so no field can land outside its structure.
//! - Decoders take `&[u8]` and return a typed value or a [`ProtoError`] naming the structure,
//!   the field, its byte offset, what was expected and what was found. No input makes them panic;
//!   property tests and a fuzz target (`fuzz/fuzz_targets/nvme_tcp_pdu.rs`) hold them to it.
//! - Encoders write into a caller-owned `&mut [u8]` (a DMA page, a socket send buffer, a
//!   preallocated PDU header slot) and return how many bytes they wrote. Nothing here allocates,
//!   so the data path (capsules, completions, data PDUs) can use it per I/O.
//! - Values the spec counts from zero are named so (`qsize_0based`), values in other units carry
//!   the unit (`kato_ms`, `offset_bytes`, `block_count`).
//!
//! # Map
//! - [`sqe`]: the submission queue entry and typed admin, Fabrics and NVM commands.
//! - [`cqe`]: the completion queue entry and [`cqe::Status`].
//! - [`identify`]: Identify Controller / Namespace, the active namespace list, namespace ids.
//! - [`log`]: Get Log Page payloads (error, SMART, changed namespaces, discovery).
//! - [`props`]: controller properties / registers (CAP, VS, CC, CSTS, AQA, ASQ, ACQ).
//! - [`tcp`]: NVMe/TCP PDUs, their encoders and the incremental receive parser.
//! - [`digest`]: CRC32C for the NVMe/TCP header and data digests.
//! - [`nqn`]: NVMe Qualified Names and the fixed-size text fields that carry them.
//! - [`fuzz`]: the entry point shared by the fuzz target and the corpus replay test.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cqe;
pub mod digest;
mod error;
pub mod fuzz;
pub mod identify;
pub mod log;
pub mod nqn;
pub mod props;
pub mod sqe;
pub mod tcp;
mod wire;

pub use error::{Expected, ProtoError};
