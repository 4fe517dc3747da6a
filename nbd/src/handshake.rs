//! The server side of the fixed-newstyle handshake, sans IO.
//!
//! # Design
//!
//! A [`Handshake`] is created when a connection is accepted; its constructor writes the 18-byte
//! greeting into the caller's output buffer. From then on the server hands it whatever bytes
//! the socket produced ([`Handshake::feed`]) and sends whatever it appended to the output
//! buffer. The machine never reads or writes a socket, never blocks and never spawns anything,
//! so it runs on the connection's reactor between two polls and is tested by feeding bytes.
//!
//! The input side is a framing loop over one state enum (`Expect`): each state names the next
//! message (client flags: 4 bytes; an option header: 16 bytes; an option's data: the length the
//! header announced). Bytes are gathered in one internal buffer until the message is complete,
//! then one apply step handles it — writes the replies, updates the negotiated state and names
//! the next message. The buffer never holds more than one message, and option data is bounded
//! by [`HandshakeConfig::max_option_bytes`] (64 KiB by default): a header announcing more is
//! refused (`ERR_TOO_BIG`) and the connection closed **before** any of the data is buffered.
//! Because only complete messages are acted upon, the output is the same whatever the
//! fragmentation of the input.
//!
//! The output side is flow-controlled: once the caller's output buffer holds more than
//! [`HandshakeConfig::output_high_water_bytes`], `feed` stops consuming and says so
//! ([`Outcome::OutputFull`]), so a client that pipelines options without reading replies cannot
//! make the server buffer without bound.
//!
//! Keel never insists on its block sizes (`ERR_BLOCK_SIZE_REQD` would lock out the kernel
//! client, which sends `GO` without `INFO_BLOCK_SIZE`): `INFO_BLOCK_SIZE` is sent to every
//! `INFO`/`GO`, the [`Session`] records whether the client asked for it, and requests outside
//! the sizes are refused cleanly in transmission.
//!
//! Every malformed option gets the error reply the protocol names (`ERR_INVALID` for bad
//! lengths and syntax, `ERR_UNSUP` for unknown options, `ERR_UNKNOWN` for unknown exports, …)
//! and negotiation continues; only what the protocol says cannot be answered (bad magic,
//! unknown client flags, over-long options, `EXPORT_NAME` for a missing export, `ABORT`) ends
//! in a typed [`CloseReason`]. The negotiation ends with `GO` → `ACK` or with `EXPORT_NAME`;
//! [`Outcome::Done`] then carries the negotiated [`Session`] and says how many of the fed bytes
//! belonged to the handshake — the rest are already transmission-phase requests.

use std::fmt;

use crate::consts::*;
use crate::error::CloseReason;
use crate::export::{BlockSizes, ExportCatalog, ExportInfo};
use crate::reply::ReplyMode;
use crate::wire::{be16, be32, be64};

/// Tunables of the handshake. `Default` is what Keel's server uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// Longest option data accepted; a longer option is refused and the connection closed.
    pub max_option_bytes: u32,
    /// Offer `NO_ZEROES` in the greeting.
    pub offer_no_zeroes: bool,
    /// Accept `STRUCTURED_REPLY` (else `ERR_UNSUP`).
    pub allow_structured_replies: bool,
    /// Accept `EXTENDED_HEADERS` (else `ERR_UNSUP`).
    pub allow_extended_headers: bool,
    /// Stop consuming input while the output buffer holds more than this.
    pub output_high_water_bytes: usize,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        Self {
            max_option_bytes: DEFAULT_MAX_OPTION_LEN,
            offer_no_zeroes: true,
            allow_structured_replies: true,
            allow_extended_headers: true,
            output_high_water_bytes: 64 * 1024,
        }
    }
}

/// A metadata context id, chosen by the server in `SET_META_CONTEXT` and echoed in
/// `BLOCK_STATUS` chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetaContextId(pub u32);

/// The id Keel gives `base:allocation`.
pub const BASE_ALLOCATION_ID: MetaContextId = MetaContextId(1);

/// How the client entered transmission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// `GO` answered with `ACK`.
    Go,
    /// `EXPORT_NAME` answered with the export block.
    ExportName,
}

/// The outcome of a successful negotiation: what the transmission phase must honour.
///
/// Produced by [`Handshake::feed`] on the connection's reactor and owned by the connection from
/// then on; [`RequestDecoder::new`](crate::RequestDecoder::new) and
/// [`ReplyEncoder::for_session`](crate::ReplyEncoder::for_session) are built from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The canonical name of the chosen export.
    pub export_name: String,
    /// Its size, as announced.
    pub size_bytes: u64,
    /// The transmission flags sent to the client (`INFO_EXPORT` or the `EXPORT_NAME` answer).
    pub transmission_flags: u16,
    /// `STRUCTURED_REPLY` was acknowledged (extended headers take precedence over it: see
    /// [`Session::reply_mode`]).
    pub structured_replies: bool,
    /// Extended (32-byte) headers were negotiated.
    pub extended_headers: bool,
    /// The id of `base:allocation` if the client selected it for this export.
    pub base_allocation: Option<MetaContextId>,
    /// The block-size constraints advertised (or the export's own, for `EXPORT_NAME`).
    pub block_sizes: BlockSizes,
    /// The client asked for `INFO_BLOCK_SIZE` in `GO`, so it promised to obey them.
    pub block_sizes_acknowledged: bool,
    /// Requests must be aligned to the minimum block size (true when it is above 1). A server
    /// that can read-modify-write for clients that did not acknowledge the sizes may clear it.
    pub check_alignment: bool,
    /// How the client entered transmission.
    pub entry: Entry,
}

impl Session {
    /// The reply forms this session uses.
    pub fn reply_mode(&self) -> ReplyMode {
        if self.extended_headers {
            ReplyMode::Extended
        } else if self.structured_replies {
            ReplyMode::Structured
        } else {
            ReplyMode::Simple
        }
    }
}

/// What [`Handshake::feed`] did with the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input that were consumed; the rest must be fed again (after
    /// [`Outcome::OutputFull`]) or belong to the transmission phase (after [`Outcome::Done`]).
    pub consumed: usize,
    /// What to do next.
    pub outcome: Outcome,
}

/// Next step for the caller of [`Handshake::feed`]; in every case, send the output buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All input consumed; feed more when it arrives.
    NeedInput,
    /// The output buffer is above its high-water mark: send it, then feed the unconsumed rest.
    OutputFull,
    /// Negotiation finished: send the output, then serve `Session` in transmission.
    Done(Session),
    /// Send the output (it may end with a last reply, e.g. `ABORT`'s `ACK`), then close.
    Close(CloseReason),
}

/// The message the framing loop waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// 4 bytes of client flags.
    ClientFlags,
    /// A 16-byte option header.
    OptionHeader,
    /// `len` bytes of data of `option`.
    OptionData { option: u32, len: usize },
    /// Done or closed: nothing more belongs to the handshake.
    Over,
}

impl Expect {
    const fn len(self) -> usize {
        match self {
            Expect::ClientFlags => CLIENT_FLAGS_LEN,
            Expect::OptionHeader => OPTION_HEADER_LEN,
            Expect::OptionData { len, .. } => len,
            Expect::Over => 0,
        }
    }
}

/// The last `SET_META_CONTEXT`: for which export, and whether it selected `base:allocation`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MetaSelection {
    export: String,
    base_allocation: bool,
}

/// Negotiated so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Negotiated {
    client_no_zeroes: bool,
    structured: bool,
    extended: bool,
    meta: Option<MetaSelection>,
    shutting_down: bool,
}

/// The server side of one connection's handshake (see the module essay).
///
/// Owned by the connection on its reactor; `C` is the view of the exports it answers from.
pub struct Handshake<C: ExportCatalog> {
    catalog: C,
    config: HandshakeConfig,
    expect: Expect,
    buf: Vec<u8>,
    neg: Negotiated,
}

impl<C: ExportCatalog> fmt::Debug for Handshake<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("expect", &self.expect)
            .field("buffered", &self.buf.len())
            .field("neg", &self.neg)
            .finish_non_exhaustive()
    }
}

impl<C: ExportCatalog> Handshake<C> {
    /// Starts a handshake on a freshly accepted connection and appends the greeting
    /// (`NBDMAGIC`, `IHAVEOPT`, handshake flags) to `out`, which the caller owns and sends.
    pub fn new(catalog: C, config: HandshakeConfig, out: &mut Vec<u8>) -> Self {
        out.extend_from_slice(&NBD_MAGIC.to_be_bytes());
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&handshake_flags(&config).to_be_bytes());
        Self {
            catalog,
            config,
            expect: Expect::ClientFlags,
            buf: Vec::new(),
            neg: Negotiated::default(),
        }
    }

    /// The catalog this handshake answers from.
    pub fn catalog(&self) -> &C {
        &self.catalog
    }

    /// Bytes held for an incomplete message (never more than one option's data, which is at
    /// most [`HandshakeConfig::max_option_bytes`]).
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Marks the server as shutting down: from now on every option but `ABORT` is answered
    /// `ERR_SHUTDOWN`, and `EXPORT_NAME` closes the connection.
    pub fn begin_shutdown(&mut self) {
        self.neg.shutting_down = true;
    }

    /// Consumes bytes received from the client and appends the replies to `out` (caller-owned;
    /// the caller sends it). Call on the connection's reactor whenever bytes arrive; see
    /// [`Outcome`] for what to do next. After `Done` or `Close`, further calls consume nothing
    /// and return `Close(HandshakeOver)`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Fed {
        let mut consumed = 0;
        loop {
            if self.expect == Expect::Over {
                return Fed {
                    consumed,
                    outcome: Outcome::Close(CloseReason::HandshakeOver),
                };
            }
            if out.len() > self.config.output_high_water_bytes && consumed < input.len() {
                return Fed {
                    consumed,
                    outcome: Outcome::OutputFull,
                };
            }
            let want = self.expect.len() - self.buf.len();
            if want > 0 {
                let take = want.min(input.len() - consumed);
                if take == 0 {
                    return Fed {
                        consumed,
                        outcome: Outcome::NeedInput,
                    };
                }
                self.buf.extend_from_slice(&input[consumed..consumed + take]);
                consumed += take;
                if take < want {
                    return Fed {
                        consumed,
                        outcome: Outcome::NeedInput,
                    };
                }
            }
            let msg = std::mem::take(&mut self.buf);
            let step = self.apply(&msg, out);
            self.buf = msg;
            self.buf.clear();
            match step {
                Ok(None) => {}
                Ok(Some(session)) => {
                    self.expect = Expect::Over;
                    self.buf = Vec::new();
                    return Fed {
                        consumed,
                        outcome: Outcome::Done(session),
                    };
                }
                Err(reason) => {
                    self.expect = Expect::Over;
                    self.buf = Vec::new();
                    return Fed {
                        consumed,
                        outcome: Outcome::Close(reason),
                    };
                }
            }
        }
    }

    /// The one apply step: handles the complete message `msg` the current state waited for,
    /// writes replies to `out` and moves to the next state. `Ok(Some)` ends the negotiation.
    fn apply(&mut self, msg: &[u8], out: &mut Vec<u8>) -> Result<Option<Session>, CloseReason> {
        match self.expect {
            Expect::ClientFlags => {
                let flags = be32(msg, 0);
                let known = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
                if flags & !known != 0 {
                    return Err(CloseReason::UnknownClientFlags(flags));
                }
                if flags & FLAG_C_NO_ZEROES != 0 && !self.config.offer_no_zeroes {
                    return Err(CloseReason::NoZeroesNotOffered);
                }
                // A client without FIXED_NEWSTYLE is served as fixed newstyle: the protocol
                // allows it, and such a client only ever sends EXPORT_NAME, answered the same.
                self.neg.client_no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
                self.expect = Expect::OptionHeader;
                Ok(None)
            }
            Expect::OptionHeader => {
                let magic = be64(msg, 0);
                if magic != IHAVEOPT {
                    return Err(CloseReason::BadOptionMagic(magic));
                }
                let option = be32(msg, 8);
                let len = be32(msg, 12);
                if len > self.config.max_option_bytes {
                    if option != OPT_EXPORT_NAME {
                        reply_error(out, option, REP_ERR_TOO_BIG, "option data too long");
                    }
                    return Err(CloseReason::OptionTooLong {
                        option,
                        len_bytes: len,
                        max_bytes: self.config.max_option_bytes,
                    });
                }
                self.expect = Expect::OptionData {
                    option,
                    len: len as usize,
                };
                Ok(None)
            }
            Expect::OptionData { option, .. } => {
                self.expect = Expect::OptionHeader;
                self.option(option, msg, out)
            }
            Expect::Over => Err(CloseReason::HandshakeOver),
        }
    }

    /// Answers one complete option.
    fn option(&mut self, option: u32, data: &[u8], out: &mut Vec<u8>) -> Result<Option<Session>, CloseReason> {
        if option == OPT_EXPORT_NAME {
            return self.export_name(data, out).map(Some);
        }
        if self.neg.shutting_down && option != OPT_ABORT {
            reply_error(out, option, REP_ERR_SHUTDOWN, "server is shutting down");
            return Ok(None);
        }
        match option {
            OPT_ABORT => {
                // Data is ignored, as the protocol asks.
                reply(out, option, REP_ACK, &[]);
                return Err(CloseReason::Aborted);
            }
            OPT_LIST => self.list(data, out),
            OPT_STARTTLS if !data.is_empty() => reply_error(out, option, REP_ERR_INVALID, "STARTTLS takes no data"),
            OPT_STARTTLS => reply_error(out, option, REP_ERR_POLICY, "TLS is not supported by this server"),
            OPT_INFO | OPT_GO => return self.info_or_go(option, data, out),
            OPT_STRUCTURED_REPLY => self.structured_reply(data, out),
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => self.meta_context(option, data, out),
            OPT_EXTENDED_HEADERS => self.extended_headers(data, out),
            _ => reply_error(out, option, REP_ERR_UNSUP, "unsupported option"),
        }
        Ok(None)
    }

    /// `EXPORT_NAME`: the export block, or a hard disconnect (it has no error reply).
    fn export_name(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<Session, CloseReason> {
        if self.neg.shutting_down {
            return Err(CloseReason::ShuttingDown);
        }
        if self.neg.extended {
            return Err(CloseReason::ExportNameWithExtendedHeaders);
        }
        let name = std::str::from_utf8(data).map_err(|_| CloseReason::UnknownExport)?;
        let export = self.catalog.find(name).ok_or(CloseReason::UnknownExport)?;
        let session = session_for(&self.neg, export, Entry::ExportName, false);
        out.extend_from_slice(&session.size_bytes.to_be_bytes());
        out.extend_from_slice(&session.transmission_flags.to_be_bytes());
        if !(self.config.offer_no_zeroes && self.neg.client_no_zeroes) {
            out.extend_from_slice(&[0u8; EXPORT_NAME_PADDING_LEN]);
        }
        Ok(session)
    }

    /// `LIST`: one `SERVER` reply per export, then `ACK`.
    fn list(&self, data: &[u8], out: &mut Vec<u8>) {
        if !data.is_empty() {
            return reply_error(out, OPT_LIST, REP_ERR_INVALID, "LIST takes no data");
        }
        self.catalog.for_each(&mut |e: &ExportInfo| {
            let name = e.name().as_bytes();
            let desc = e.description().as_bytes();
            reply_header(out, OPT_LIST, REP_SERVER, 4 + name.len() + desc.len());
            out.extend_from_slice(&(name.len() as u32).to_be_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(desc);
        });
        reply(out, OPT_LIST, REP_ACK, &[]);
    }

    /// `INFO` and `GO`: the export's information items, then `ACK` (and, for `GO`, the end of
    /// the negotiation) or an error.
    fn info_or_go(&mut self, option: u32, data: &[u8], out: &mut Vec<u8>) -> Result<Option<Session>, CloseReason> {
        let Some(req) = parse_info_request(data) else {
            reply_error(out, option, REP_ERR_INVALID, "malformed INFO/GO data");
            return Ok(None);
        };
        let Ok(name) = std::str::from_utf8(req.name) else {
            reply_error(out, option, REP_ERR_INVALID, "export name is not UTF-8");
            return Ok(None);
        };
        let Some(export) = self.catalog.find(name) else {
            reply_error(out, option, REP_ERR_UNKNOWN, "no such export");
            return Ok(None);
        };
        let session = session_for(&self.neg, export, Entry::Go, req.block_size);
        let mut info = [0u8; 14];
        info[..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
        info[2..10].copy_from_slice(&session.size_bytes.to_be_bytes());
        info[10..12].copy_from_slice(&session.transmission_flags.to_be_bytes());
        reply(out, option, REP_INFO, &info[..12]);
        if req.name_info {
            reply_info_string(out, option, INFO_NAME, export.name());
        }
        if req.description {
            reply_info_string(out, option, INFO_DESCRIPTION, export.description());
        }
        // Sent even unrequested (the protocol allows it; qemu-nbd does the same): clients that
        // did not ask only learn from it, and those that asked promised to obey it.
        let bs = export.block_sizes();
        info[..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        info[2..6].copy_from_slice(&bs.min_bytes().to_be_bytes());
        info[6..10].copy_from_slice(&bs.preferred_bytes().to_be_bytes());
        info[10..14].copy_from_slice(&bs.max_bytes().to_be_bytes());
        reply(out, option, REP_INFO, &info);
        reply(out, option, REP_ACK, &[]);
        Ok((option == OPT_GO).then_some(session))
    }

    /// `STRUCTURED_REPLY`.
    fn structured_reply(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let option = OPT_STRUCTURED_REPLY;
        if !self.config.allow_structured_replies {
            reply_error(out, option, REP_ERR_UNSUP, "structured replies are disabled");
        } else if !data.is_empty() {
            reply_error(out, option, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data");
        } else if self.neg.extended {
            reply_error(
                out,
                option,
                REP_ERR_EXT_HEADER_REQD,
                "extended headers already negotiated",
            );
        } else {
            // A repeat is acknowledged again (as nbdkit does): the state is the same.
            self.neg.structured = true;
            reply(out, option, REP_ACK, &[]);
        }
    }

    /// `EXTENDED_HEADERS`.
    fn extended_headers(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let option = OPT_EXTENDED_HEADERS;
        if !self.config.allow_extended_headers {
            reply_error(out, option, REP_ERR_UNSUP, "extended headers are disabled");
        } else if !data.is_empty() {
            reply_error(out, option, REP_ERR_INVALID, "EXTENDED_HEADERS takes no data");
        } else {
            // A repeat is acknowledged again, like a repeated STRUCTURED_REPLY.
            self.neg.extended = true;
            reply(out, option, REP_ACK, &[]);
        }
    }

    /// `LIST_META_CONTEXT` and `SET_META_CONTEXT` for the one context Keel has,
    /// `base:allocation`.
    fn meta_context(&mut self, option: u32, data: &[u8], out: &mut Vec<u8>) {
        let set = option == OPT_SET_META_CONTEXT;
        if set {
            // A SET replaces the selection even when it fails.
            self.neg.meta = None;
        }
        if !(self.neg.structured || self.neg.extended) {
            return reply_error(
                out,
                option,
                REP_ERR_INVALID,
                "negotiate structured replies or extended headers first",
            );
        }
        let req = match parse_meta_request(data) {
            Ok(req) => req,
            Err(why) => return reply_error(out, option, REP_ERR_INVALID, why),
        };
        let Some(export) = self.catalog.find(req.export) else {
            return reply_error(out, option, REP_ERR_UNKNOWN, "no such export");
        };
        let matched = if req.queries == 0 {
            // No query: LIST lists everything, SET selects nothing.
            !set
        } else {
            req.iter().any(|q| q == BASE_ALLOCATION || (!set && q == "base:"))
        };
        if matched {
            let id = if set { BASE_ALLOCATION_ID.0 } else { 0 };
            reply_header(out, option, REP_META_CONTEXT, 4 + BASE_ALLOCATION.len());
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(BASE_ALLOCATION.as_bytes());
        }
        if set {
            self.neg.meta = Some(MetaSelection {
                export: export.name().to_owned(),
                base_allocation: matched,
            });
        }
        reply(out, option, REP_ACK, &[]);
    }
}

/// The handshake flags of the greeting for `config`.
pub fn handshake_flags(config: &HandshakeConfig) -> u16 {
    FLAG_FIXED_NEWSTYLE | if config.offer_no_zeroes { FLAG_NO_ZEROES } else { 0 }
}

/// The session that entering transmission on `export` would give.
fn session_for(neg: &Negotiated, export: &ExportInfo, entry: Entry, acknowledged: bool) -> Session {
    let chunked = neg.structured || neg.extended;
    let selected = neg
        .meta
        .as_ref()
        .is_some_and(|m| m.base_allocation && m.export == export.name());
    let block_sizes = export.block_sizes();
    Session {
        export_name: export.name().to_owned(),
        size_bytes: export.size_bytes(),
        transmission_flags: export.transmission_flags(chunked),
        structured_replies: neg.structured,
        extended_headers: neg.extended,
        base_allocation: (chunked && selected).then_some(BASE_ALLOCATION_ID),
        block_sizes,
        block_sizes_acknowledged: acknowledged,
        check_alignment: block_sizes.min_bytes() > 1,
        entry,
    }
}

/// Parsed `INFO`/`GO` data.
struct InfoRequest<'a> {
    name: &'a [u8],
    name_info: bool,
    description: bool,
    block_size: bool,
}

/// Name length u32, name, count u16, count × info type u16 — lengths must agree exactly.
/// Unknown info types are ignored, duplicates count once.
fn parse_info_request(data: &[u8]) -> Option<InfoRequest<'_>> {
    let name_len = usize::try_from(be32(data.get(..4)?, 0)).ok()?;
    if name_len > data.len().checked_sub(6)? || name_len > MAX_STRING_LEN {
        return None;
    }
    let name = &data[4..4 + name_len];
    let rest = &data[4 + name_len..];
    let count = usize::from(be16(rest, 0));
    if rest.len() != 2 + 2 * count {
        return None;
    }
    let mut req = InfoRequest {
        name,
        name_info: false,
        description: false,
        block_size: false,
    };
    for code in rest[2..].chunks_exact(2).map(|c| be16(c, 0)) {
        match code {
            INFO_NAME => req.name_info = true,
            INFO_DESCRIPTION => req.description = true,
            INFO_BLOCK_SIZE => req.block_size = true,
            _ => {}
        }
    }
    Some(req)
}

/// Parsed and validated meta-context data; queries are re-read from `data` by [`Self::iter`].
struct MetaRequest<'a> {
    export: &'a str,
    queries: u32,
    data: &'a [u8],
}

impl<'a> MetaRequest<'a> {
    /// The queries (validated UTF-8) in order.
    fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let data = self.data;
        let mut at = 0;
        (0..self.queries).map(move |_| {
            let len = be32(data, at) as usize;
            let q = std::str::from_utf8(&data[at + 4..at + 4 + len]).unwrap_or("");
            at += 4 + len;
            q
        })
    }
}

/// Export-name length u32, name, query count u32, count × (length u32, query): every length
/// must fit exactly, every string be UTF-8 of at most 4096 bytes, every query hold a colon.
fn parse_meta_request(data: &[u8]) -> Result<MetaRequest<'_>, &'static str> {
    const SHORT: &str = "meta context data shorter than its lengths";
    let name_len = be32(data.get(..4).ok_or(SHORT)?, 0) as usize;
    if name_len > MAX_STRING_LEN {
        return Err("export name longer than 4096 bytes");
    }
    let name = data.get(4..4 + name_len).ok_or(SHORT)?;
    let export = std::str::from_utf8(name).map_err(|_| "export name is not UTF-8")?;
    let count_at = 4 + name_len;
    let queries = be32(data.get(count_at..count_at + 4).ok_or(SHORT)?, 0);
    let body = &data[count_at + 4..];
    if queries as usize > body.len() / 4 {
        return Err("more queries than the data can hold");
    }
    let mut at = 0;
    for _ in 0..queries {
        let len = be32(body.get(at..at + 4).ok_or(SHORT)?, 0) as usize;
        if len > MAX_STRING_LEN {
            return Err("query longer than 4096 bytes");
        }
        let q = body.get(at + 4..at + 4 + len).ok_or(SHORT)?;
        let q = std::str::from_utf8(q).map_err(|_| "query is not UTF-8")?;
        if !q.contains(':') {
            return Err("query without a namespace");
        }
        at += 4 + len;
    }
    if at != body.len() {
        return Err("trailing bytes after the last query");
    }
    Ok(MetaRequest {
        export,
        queries,
        data: body,
    })
}

/// Appends an option reply header announcing `len` bytes of data.
fn reply_header(out: &mut Vec<u8>, option: u32, reply_type: u32, len: usize) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

/// Appends a complete option reply.
fn reply(out: &mut Vec<u8>, option: u32, reply_type: u32, data: &[u8]) {
    reply_header(out, option, reply_type, data.len());
    out.extend_from_slice(data);
}

/// Appends an error reply with a human-readable message.
fn reply_error(out: &mut Vec<u8>, option: u32, reply_type: u32, message: &str) {
    debug_assert!(reply_type & REP_FLAG_ERROR != 0);
    reply(out, option, reply_type, message.as_bytes());
}

/// Appends an `INFO` reply carrying a string item.
fn reply_info_string(out: &mut Vec<u8>, option: u32, info: u16, s: &str) {
    reply_header(out, option, REP_INFO, 2 + s.len());
    out.extend_from_slice(&info.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}
