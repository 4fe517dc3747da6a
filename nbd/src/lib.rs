//! Keel's NBD export (`shared/design.md` §8, `shared/specs/nbd-ublk.md` Part A): the server's
//! side of the Network Block Device protocol, in two layers.
//!
//! * The **protocol core** — pure functions over bytes: no sockets, no threads, no bdevs. It is
//!   deterministic, allocation-free on the transmission path and fuzzed.
//! * The **server** ([`server`]) — a bdev module that exports bdevs: listeners polled on the
//!   main reactor, each connection owned by one reactor and polled there over a non-blocking
//!   socket, calling into the core between polls with its own buffers. It is what
//!   `nbd_server_*` (keel-rpc) drives.
//!
//! # Pieces
//!
//! | module | what it is | who calls it |
//! |---|---|---|
//! | [`consts`] | every magic, flag, option, reply type, command and size of the protocol | everyone |
//! | [`export`] | [`ExportInfo`] (size, block sizes, backend capabilities → transmission flags), [`ExportCatalog`] | the server, when it builds its export table |
//! | [`handshake`] | [`Handshake`]: the fixed-newstyle negotiation as a sans-IO state machine that yields a [`Session`] | the server, per accepted connection |
//! | [`request`] | [`RequestHeader`] framing and [`RequestDecoder`] validation → [`Request`] or [`Rejection`] | the server, per received header |
//! | [`reply`] | [`ReplyEncoder`]: simple replies, structured and extended chunks, into caller buffers | the server, per completion |
//! | [`client`] | the client's half (option encoders, reply decoders) | tests, fuzzing, in-process clients |
//! | [`fuzz`] | [`fuzz::fuzz_one`], the body of the `nbd_proto` fuzz target | `fuzz/`, `tests/fuzz_corpus.rs` |
//! | [`server`] | [`NbdServer`]: listeners, exports (each holding its bdev), connections; the design essay of the data path is in `server/conn.rs` | keel-rpc's `nbd_server_*`, keel-tgt |
//! | `server/disk.rs` | kernel disks: a bdev as the kernel's `/dev/nbdX` over a socketpair ([`NbdServer::start_disk`]) | keel-rpc's `nbd_start_disk` / `nbd_stop_disk` / `nbd_get_disks` |
//!
//! # A connection's life, as the server drives it
//!
//! ```text
//! accept ──► Handshake::new(catalog, config, &mut out)        greeting into `out`
//!   loop: recv → Handshake::feed(bytes, &mut out) → send `out`
//!           NeedInput | OutputFull → continue
//!           Close(reason)          → send `out`, close
//!           Done(session)          → leftover bytes are requests
//! RequestDecoder::new(&session), ReplyEncoder::for_session(&session)
//!   loop: decode(header bytes) →
//!           Request   → read `payload_bytes` into a bdev buffer, submit, on completion encode
//!                       the reply header and send it followed by the data (READ)
//!           Reject    → drop `discard_bytes`, send `ReplyEncoder::reject`
//!           Close     → stop reading, finish in-flight I/O, close
//! ```
//!
//! Bad input never panics and is never buffered without bound: option data is capped (64 KiB
//! by default) and refused before it is read, the handshake's output is flow-controlled, and
//! request payloads are either received into the server's own buffers (≤ the advertised
//! maximum), drained (bounded) or answered by closing the connection.
//!
//! # Unsafe
//!
//! None, except the kernel disks' ioctls (`server/disk/ioctl.rs`: by-value arguments only,
//! each call with its `// SAFETY:` note); every other module is checked by `deny(unsafe_code)`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod consts;
mod error;
pub mod export;
pub mod fuzz;
pub mod handshake;
pub mod reply;
pub mod request;
pub mod server;
mod wire;

pub use error::{CloseReason, Errno, NbdError};
pub use export::{BlockSizes, Capabilities, ExportCatalog, ExportInfo};
pub use handshake::{Entry, Fed, Handshake, HandshakeConfig, MetaContextId, Outcome, Session, BASE_ALLOCATION_ID};
pub use reply::{Extent, ReplyEncoder, ReplyMode};
pub use request::{Command, CommandFlags, Decoded, Rejection, Request, RequestDecoder, RequestHeader};
pub use server::{ConnStatus, DiskStatus, ExportOpts, ExportStatus, NbdServer, ServerConfig};
