//! Every number of the NBD wire protocol, by the names the protocol document gives them
//! (`shared/specs/nbd-ublk.md` Part A). All values travel **big-endian**.
//!
//! Plain constants, grouped by the field they go into; the typed views ([`Command`],
//! [`Errno`], [`CommandFlags`](crate::CommandFlags)) are built on them. Nothing here is called at
//! run time: any core may read them.
//!
//! [`Command`]: crate::Command
//! [`Errno`]: crate::Errno

// ---- magics -------------------------------------------------------------------------------

/// `NBDMAGIC` (`INIT_PASSWD`): bytes 0–7 of the server greeting.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: bytes 8–15 of the newstyle greeting, and the first 8 bytes of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// `cliserv_magic`: bytes 8–15 of the oldstyle greeting, which Keel never sends.
pub const CLISERV_MAGIC: u64 = 0x0000_4202_8186_1253;
/// The magic opening every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC`: the 28-byte compact request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_EXTENDED_REQUEST_MAGIC`: the 32-byte request after `EXTENDED_HEADERS`.
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// `NBD_SIMPLE_REPLY_MAGIC`: the 16-byte simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`: the 20-byte structured chunk header.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// `NBD_EXTENDED_REPLY_MAGIC`: the 32-byte extended chunk header.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;
/// Historic and internal magics that must never be sent (`0x12560953`, `0x96744668`,
/// `0x25609514`).
pub const RESERVED_MAGICS: [u32; 3] = [0x1256_0953, 0x9674_4668, 0x2560_9514];

// ---- handshake flags (server, u16) and client flags (u32) ---------------------------------

/// Handshake flag bit 0: the server speaks fixed newstyle (always set by Keel).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag bit 1: the server may omit the 124 zero bytes after `EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag bit 0: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag bit 1: omit the 124 zero bytes after `EXPORT_NAME` (only if offered).
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// ---- transmission flags (u16) -------------------------------------------------------------

/// Bit 0, always set.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Bit 1: writes, trims and zeroes fail with `EPERM`.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// Bit 2: `NBD_CMD_FLUSH` is supported.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Bit 3: the `FUA` command flag is supported.
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// Bit 4: the export behaves like a rotational medium (a hint).
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
/// Bit 5: `NBD_CMD_TRIM` is supported.
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// Bit 6: `NBD_CMD_WRITE_ZEROES` (and its `NO_HOLE` flag) is supported.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Bit 7: `READ` accepts the `DF` flag; only with structured replies or extended headers.
pub const FLAG_SEND_DF: u16 = 1 << 7;
/// Bit 8: every connection to the export sees one coherent cache.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// Bit 9: the experimental RESIZE extension (Keel never sets it).
pub const FLAG_SEND_RESIZE: u16 = 1 << 9;
/// Bit 10: `NBD_CMD_CACHE` is supported.
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
/// Bit 11: `WRITE_ZEROES` accepts `FAST_ZERO`; only together with bit 6.
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;
/// Bit 12: `BLOCK_STATUS` accepts a payload (extended headers only; Keel never sets it).
pub const FLAG_BLOCK_STAT_PAYLOAD: u16 = 1 << 12;

// ---- options (u32) ------------------------------------------------------------------------

/// Choose an export and enter transmission; answered by the export block, no reply header.
pub const OPT_EXPORT_NAME: u32 = 1;
/// End the negotiation (soft disconnect); answered by `ACK`.
pub const OPT_ABORT: u32 = 2;
/// List the exports: one `SERVER` reply each, then `ACK`.
pub const OPT_LIST: u32 = 3;
/// Withdrawn `PEEK_EXPORT`; answered `ERR_UNSUP`.
pub const OPT_PEEK_EXPORT: u32 = 4;
/// Upgrade to TLS; Keel has no TLS and answers `ERR_POLICY`.
pub const OPT_STARTTLS: u32 = 5;
/// Describe one export (`INFO` replies, then `ACK`), stay in the handshake.
pub const OPT_INFO: u32 = 6;
/// As `INFO`, then enter transmission after the `ACK`.
pub const OPT_GO: u32 = 7;
/// Switch on structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// List metadata contexts matching queries.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Select metadata contexts for `BLOCK_STATUS`.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Switch on 32-byte extended headers both ways.
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// ---- option reply types (u32) -------------------------------------------------------------

/// Success, or the end of a list. No data.
pub const REP_ACK: u32 = 1;
/// One export of a `LIST`: name length u32, name, description.
pub const REP_SERVER: u32 = 2;
/// One information item of `INFO`/`GO`: info type u16 + payload.
pub const REP_INFO: u32 = 3;
/// One metadata context: id u32 + name.
pub const REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks every error reply.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// The option is unknown to this server.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR + 1;
/// The option is known but forbidden by policy.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR + 2;
/// The option is malformed or not valid now.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR + 3;
/// The option is not supported on this platform/build.
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR + 4;
/// TLS is required first (TLS servers only; Keel never sends it).
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR + 5;
/// No such export.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR + 6;
/// The server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR + 7;
/// `GO` must request `INFO_BLOCK_SIZE` first.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR + 8;
/// The request or its reply is too large.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR + 9;
/// Extended headers are required (or already negotiated, for `STRUCTURED_REPLY`).
pub const REP_ERR_EXT_HEADER_REQD: u32 = REP_FLAG_ERROR + 10;

// ---- information types (u16) --------------------------------------------------------------

/// Size u64 + transmission flags u16; mandatory before a successful `ACK`.
pub const INFO_EXPORT: u16 = 0;
/// The canonical export name.
pub const INFO_NAME: u16 = 1;
/// The human description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Minimum, preferred and maximum block sizes (u32 each).
pub const INFO_BLOCK_SIZE: u16 = 3;

// ---- commands (u16) -----------------------------------------------------------------------

/// Read `length` bytes at `offset`.
pub const CMD_READ: u16 = 0;
/// Write the payload at `offset`.
pub const CMD_WRITE: u16 = 1;
/// Disconnect once everything in flight is answered; no reply.
pub const CMD_DISC: u16 = 2;
/// Make every write already answered durable.
pub const CMD_FLUSH: u16 = 3;
/// Discard a range (a hint).
pub const CMD_TRIM: u16 = 4;
/// Prefetch a range (a hint).
pub const CMD_CACHE: u16 = 5;
/// Make a range read back as zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Report metadata (allocation) of a range.
pub const CMD_BLOCK_STATUS: u16 = 7;
/// The experimental RESIZE extension; Keel answers `EINVAL`.
pub const CMD_RESIZE: u16 = 8;

// ---- command flags (u16) ------------------------------------------------------------------

/// Bit 0: reply only once this command's writes are durable (with `SEND_FUA`).
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Bit 1: `WRITE_ZEROES` must allocate (no hole).
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Bit 2: `READ` in at most one content chunk (with `SEND_DF`).
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Bit 3: `BLOCK_STATUS` wants one extent per context, not past the request.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Bit 4: `WRITE_ZEROES` must fail fast with `ENOTSUP` unless faster than writing.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
/// Bit 5: the length is a payload length (extended headers only).
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

// ---- structured/extended reply flags and chunk types (u16) --------------------------------

/// Reply flag bit 0: the last chunk of this reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// No payload; always with `DONE`.
pub const REPLY_TYPE_NONE: u16 = 0;
/// Absolute offset u64, then data.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Offset u64, hole size u32: reads as zeroes.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Context id u32, then (length u32, flags u32) extents.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Context id u32, count u32, then (length u64, flags u64) extents; extended headers only.
pub const REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
/// Bit 15 marks an error chunk.
pub const REPLY_TYPE_FLAG_ERROR: u16 = 1 << 15;
/// Error u32, message length u16, message.
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_FLAG_ERROR + 1;
/// Error u32, message length u16, message, offset u64.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_FLAG_ERROR + 2;

// ---- base:allocation status bits ----------------------------------------------------------

/// `base:allocation` bit 0: the extent is unallocated.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` bit 1: the extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;
/// The one metadata context Keel offers.
pub const BASE_ALLOCATION: &str = "base:allocation";

// ---- sizes --------------------------------------------------------------------------------

/// Server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub const GREETING_LEN: usize = 18;
/// Client flags after the greeting.
pub const CLIENT_FLAGS_LEN: usize = 4;
/// Option request header: `IHAVEOPT`, option u32, length u32.
pub const OPTION_HEADER_LEN: usize = 16;
/// Option reply header: magic u64, option u32, reply type u32, length u32.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// `EXPORT_NAME` answer without padding: size u64, transmission flags u16.
pub const EXPORT_NAME_REPLY_LEN: usize = 10;
/// The zero padding after the `EXPORT_NAME` answer unless both sides set `NO_ZEROES`.
pub const EXPORT_NAME_PADDING_LEN: usize = 124;
/// Compact request header.
pub const COMPACT_REQUEST_LEN: usize = 28;
/// Extended request header.
pub const EXTENDED_REQUEST_LEN: usize = 32;
/// Simple reply.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Structured chunk header.
pub const STRUCTURED_REPLY_HEADER_LEN: usize = 20;
/// Extended chunk header.
pub const EXTENDED_REPLY_HEADER_LEN: usize = 32;
/// Strings (names, descriptions, messages, queries) must not be longer.
pub const MAX_STRING_LEN: usize = 4096;
/// At most this many extents in one block-status chunk.
pub const MAX_EXTENTS_PER_CHUNK: usize = 1 << 20;
/// Default cap on option data: longer options are refused and the connection closed.
pub const DEFAULT_MAX_OPTION_LEN: u32 = 64 * 1024;
/// The payload any client may send or ask for without being taken for an attacker (32 MiB).
pub const PORTABLE_MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;
