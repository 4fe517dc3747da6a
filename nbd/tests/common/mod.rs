//! Helpers shared by the integration tests: a hex notation for expected bytes, a driver that
//! runs a client's bytes through a handshake, and a splitter for the server's option replies.
#![allow(dead_code)]

use keel_nbd::client::{decode_option_reply, OptionReply};
use keel_nbd::consts::*;
use keel_nbd::{BlockSizes, Capabilities, ExportInfo, Fed, Handshake, HandshakeConfig, Outcome};

/// Bytes from hex text; whitespace is ignored (so expectations can be written as the spec
/// prints them, field by field).
pub fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd hex: {text}");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// Every backend capability.
pub fn all_caps() -> Capabilities {
    Capabilities {
        flush: true,
        fua: true,
        trim: true,
        write_zeroes: true,
        fast_zero: true,
        cache: true,
        multi_conn: true,
        rotational: false,
    }
}

/// nbdkit's `memory 64M` look-alike: byte-addressable, every capability (flags 0x0ded).
pub fn memory_64m() -> ExportInfo {
    ExportInfo::new("", "", 64 << 20, false, BlockSizes::default(), all_caps()).unwrap()
}

/// Three exports: `disk` (default; 512/4096/1 MiB, 1 MiB, described), `ro` (read-only 4 KiB
/// blocks, 64 KiB) and `small` (no capabilities, 4 KiB).
pub fn three() -> Vec<ExportInfo> {
    vec![
        ExportInfo::new(
            "disk",
            "a test disk",
            1 << 20,
            false,
            BlockSizes::new(512, 4096, 1 << 20).unwrap(),
            all_caps(),
        )
        .unwrap(),
        ExportInfo::new(
            "ro",
            "",
            64 << 10,
            true,
            BlockSizes::new(4096, 4096, 64 << 10).unwrap(),
            all_caps(),
        )
        .unwrap(),
        ExportInfo::new("small", "", 4096, false, BlockSizes::default(), Capabilities::default()).unwrap(),
    ]
}

/// A handshake over `exports` with `config`; returns it with the greeting it wrote.
pub fn start(exports: &[ExportInfo], config: HandshakeConfig) -> (Handshake<&[ExportInfo]>, Vec<u8>) {
    let mut out = Vec::new();
    let hs = Handshake::new(exports, config, &mut out);
    (hs, out)
}

/// Feeds all of `input` at once; returns the output (without the greeting) and the result.
pub fn run(exports: &[ExportInfo], config: HandshakeConfig, input: &[u8]) -> (Vec<u8>, Fed) {
    let (mut hs, _greeting) = start(exports, config);
    let mut out = Vec::new();
    let fed = hs.feed(input, &mut out);
    (out, fed)
}

/// The option replies in `out`, which must hold nothing else.
pub fn replies(mut out: &[u8]) -> Vec<OptionReply<'_>> {
    let mut v = Vec::new();
    while !out.is_empty() {
        let (r, n) = decode_option_reply(out).expect("option reply");
        v.push(r);
        out = &out[n..];
    }
    v
}

/// `(option, reply type)` of every reply in `out`.
pub fn reply_kinds(out: &[u8]) -> Vec<(u32, u32)> {
    replies(out).iter().map(|r| (r.option, r.reply_type)).collect()
}

/// The session of a `Done` result.
pub fn done(fed: &Fed) -> &keel_nbd::Session {
    match &fed.outcome {
        Outcome::Done(s) => s,
        other => panic!("expected Done, got {other:?}"),
    }
}

/// Client bytes builder: flags then options.
pub struct Client(pub Vec<u8>);

impl Client {
    /// Starts with client flags.
    pub fn flags(flags: u32) -> Self {
        let mut v = Vec::new();
        keel_nbd::client::encode_client_flags(&mut v, flags);
        Self(v)
    }

    /// Appends an option with raw data.
    pub fn opt(mut self, option: u32, data: &[u8]) -> Self {
        keel_nbd::client::encode_option(&mut self.0, option, data);
        self
    }

    /// Appends `INFO`/`GO`.
    pub fn info(mut self, option: u32, name: &str, infos: &[u16]) -> Self {
        keel_nbd::client::encode_info_request(&mut self.0, option, name, infos);
        self
    }

    /// Appends `LIST_META_CONTEXT`/`SET_META_CONTEXT`.
    pub fn meta(mut self, option: u32, name: &str, queries: &[&str]) -> Self {
        keel_nbd::client::encode_meta_request(&mut self.0, option, name, queries);
        self
    }

    /// Appends raw bytes.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// Appends a compact (or extended) request header.
    pub fn req(mut self, extended: bool, flags: u16, command: u16, cookie: u64, offset: u64, length: u64) -> Self {
        let mut h = [0u8; 32];
        let n = keel_nbd::RequestHeader {
            flags,
            command,
            cookie,
            offset_bytes: offset,
            length,
        }
        .encode(extended, &mut h)
        .unwrap();
        self.0.extend_from_slice(&h[..n]);
        self
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The standard client flags (fixed newstyle + no zeroes), as every listed client sends.
pub const FLAGS: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
pub mod pipe;
