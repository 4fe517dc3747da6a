//! What the handshake needs to know about exports: [`ExportInfo`] (name, description, size,
//! block-size constraints, what the backend can do) and the [`ExportCatalog`] that finds them.
//!
//! The server builds these from its bdevs on the reactor that owns its export table and hands a
//! catalog (a slice, a `Vec`, an `Rc`/`Arc` snapshot or its own type) to each connection's
//! [`Handshake`](crate::Handshake); the handshake only reads it.

use std::rc::Rc;
use std::sync::Arc;

use crate::consts::*;
use crate::error::NbdError;

/// Block-size constraints of an export (protocol section "Block size constraints"), checked
/// at construction so that every value in circulation is one the protocol allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockSizes {
    min_bytes: u32,
    preferred_bytes: u32,
    max_bytes: u32,
}

impl BlockSizes {
    /// No inherent payload limit (`0xffffffff`).
    pub const UNLIMITED: u32 = u32::MAX;

    /// Checks and builds constraints: `min` a power of two in 1..=65536; `preferred` a power of
    /// two, at least `max(min, 512)`; `max` either [`Self::UNLIMITED`] or a multiple of `min`
    /// no smaller than `preferred`.
    pub fn new(min_bytes: u32, preferred_bytes: u32, max_bytes: u32) -> Result<Self, NbdError> {
        let bad = |why| NbdError::InvalidBlockSizes {
            min_bytes,
            preferred_bytes,
            max_bytes,
            why,
        };
        if !min_bytes.is_power_of_two() || min_bytes > 65536 {
            return Err(bad("the minimum must be a power of two from 1 to 65536"));
        }
        if !preferred_bytes.is_power_of_two() || preferred_bytes < min_bytes.max(512) {
            return Err(bad(
                "the preferred size must be a power of two of at least max(minimum, 512)",
            ));
        }
        if max_bytes != Self::UNLIMITED && (!max_bytes.is_multiple_of(min_bytes) || max_bytes < preferred_bytes) {
            return Err(bad(
                "the maximum must be a multiple of the minimum, at least the preferred size",
            ));
        }
        Ok(Self {
            min_bytes,
            preferred_bytes,
            max_bytes,
        })
    }

    /// The recommended constraints for a bdev: minimum = its logical block size, preferred =
    /// max(4096, optimal I/O size) rounded up to a power of two, maximum = 32 MiB.
    pub fn for_block_device(block_bytes: u32, optimal_io_bytes: u32) -> Result<Self, NbdError> {
        let preferred = optimal_io_bytes
            .max(4096)
            .max(block_bytes)
            .checked_next_power_of_two()
            .unwrap_or(1 << 31);
        Self::new(block_bytes, preferred, PORTABLE_MAX_PAYLOAD.max(preferred))
    }

    /// Smallest addressable length and alignment.
    pub const fn min_bytes(&self) -> u32 {
        self.min_bytes
    }

    /// Smallest efficient size (no read-modify-write below it).
    pub const fn preferred_bytes(&self) -> u32 {
        self.preferred_bytes
    }

    /// Largest payload of a `READ` or `WRITE` ([`Self::UNLIMITED`] for no limit).
    pub const fn max_bytes(&self) -> u32 {
        self.max_bytes
    }
}

impl Default for BlockSizes {
    /// 1 / 4096 / 32 MiB: byte-addressable, with the portable payload limit.
    fn default() -> Self {
        Self {
            min_bytes: 1,
            preferred_bytes: 4096,
            max_bytes: PORTABLE_MAX_PAYLOAD,
        }
    }
}

/// What the backend behind an export can do; decides the transmission flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Capabilities {
    /// `FLUSH` makes completed writes durable.
    pub flush: bool,
    /// Writes can be made durable one by one (`FUA`).
    pub fua: bool,
    /// Ranges can be discarded (`TRIM` → unmap).
    pub trim: bool,
    /// Ranges can be zeroed without a payload (`WRITE_ZEROES`, with `NO_HOLE`).
    pub write_zeroes: bool,
    /// Zeroing is known to be faster than writing, so `FAST_ZERO` can be honoured.
    pub fast_zero: bool,
    /// `CACHE` (prefetch) is meaningful.
    pub cache: bool,
    /// Every connection submits to the same backend with no private cache (`CAN_MULTI_CONN`).
    pub multi_conn: bool,
    /// The medium is rotational (a hint).
    pub rotational: bool,
}

/// One export as the handshake describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    name: String,
    description: String,
    size_bytes: u64,
    read_only: bool,
    block_sizes: BlockSizes,
    caps: Capabilities,
}

impl ExportInfo {
    /// Checks and builds an export description: `name` and `description` are protocol strings
    /// (UTF-8, no NUL, at most 4096 bytes; the name may be empty for a default-only export).
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        size_bytes: u64,
        read_only: bool,
        block_sizes: BlockSizes,
        caps: Capabilities,
    ) -> Result<Self, NbdError> {
        let name = name.into();
        let description = description.into();
        check_string(&name)?;
        check_string(&description)?;
        Ok(Self {
            name,
            description,
            size_bytes,
            read_only,
            block_sizes,
            caps,
        })
    }

    /// The canonical export name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The human description (may be empty).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The export's size in bytes.
    pub const fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Whether writes, trims and zeroes are refused.
    pub const fn read_only(&self) -> bool {
        self.read_only
    }

    /// The block-size constraints.
    pub const fn block_sizes(&self) -> BlockSizes {
        self.block_sizes
    }

    /// What the backend can do.
    pub const fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// The transmission flags this export gets on a connection that negotiated structured
    /// replies or extended headers (`chunked_replies`) or not. Write-side features are not
    /// advertised on a read-only export; `SEND_DF` only with chunked replies (Keel always
    /// answers a `READ` with one data chunk); `FAST_ZERO` only with `WRITE_ZEROES`.
    pub fn transmission_flags(&self, chunked_replies: bool) -> u16 {
        let c = &self.caps;
        let writable = !self.read_only;
        let mut flags = FLAG_HAS_FLAGS;
        let mut set = |on: bool, bit: u16| {
            if on {
                flags |= bit;
            }
        };
        set(self.read_only, FLAG_READ_ONLY);
        set(c.flush, FLAG_SEND_FLUSH);
        set(c.fua, FLAG_SEND_FUA);
        set(c.rotational, FLAG_ROTATIONAL);
        set(writable && c.trim, FLAG_SEND_TRIM);
        set(writable && c.write_zeroes, FLAG_SEND_WRITE_ZEROES);
        set(chunked_replies, FLAG_SEND_DF);
        set(c.multi_conn, FLAG_CAN_MULTI_CONN);
        set(c.cache, FLAG_SEND_CACHE);
        set(writable && c.write_zeroes && c.fast_zero, FLAG_SEND_FAST_ZERO);
        flags
    }
}

/// Checks a protocol string: at most 4096 bytes, no NUL (UTF-8 is guaranteed by `str`).
pub(crate) fn check_string(s: &str) -> Result<(), NbdError> {
    if s.len() > MAX_STRING_LEN {
        return Err(NbdError::InvalidString("longer than 4096 bytes"));
    }
    if s.contains('\0') {
        return Err(NbdError::InvalidString("contains NUL"));
    }
    Ok(())
}

/// The exports a connection may choose from, as the handshake sees them.
///
/// Called by [`Handshake::feed`](crate::Handshake::feed) on the connection's reactor, so an
/// implementation is read on that core only (it need not be `Send`).
pub trait ExportCatalog {
    /// The export a client means by `name`; the empty name means the default export.
    fn find(&self, name: &str) -> Option<&ExportInfo>;

    /// Visits every export in listing order (for `LIST`).
    fn for_each(&self, visit: &mut dyn FnMut(&ExportInfo));
}

/// A slice of exports: names match exactly; the empty name means the export named `""` if
/// there is one, else the first export (the default is the first one added).
impl ExportCatalog for [ExportInfo] {
    fn find(&self, name: &str) -> Option<&ExportInfo> {
        self.iter()
            .find(|e| e.name == name)
            .or_else(|| if name.is_empty() { self.first() } else { None })
    }

    fn for_each(&self, visit: &mut dyn FnMut(&ExportInfo)) {
        self.iter().for_each(visit)
    }
}

impl ExportCatalog for Vec<ExportInfo> {
    fn find(&self, name: &str) -> Option<&ExportInfo> {
        self.as_slice().find(name)
    }

    fn for_each(&self, visit: &mut dyn FnMut(&ExportInfo)) {
        self.as_slice().for_each(visit)
    }
}

impl<C: ExportCatalog + ?Sized> ExportCatalog for &C {
    fn find(&self, name: &str) -> Option<&ExportInfo> {
        (**self).find(name)
    }

    fn for_each(&self, visit: &mut dyn FnMut(&ExportInfo)) {
        (**self).for_each(visit)
    }
}

impl<C: ExportCatalog + ?Sized> ExportCatalog for Rc<C> {
    fn find(&self, name: &str) -> Option<&ExportInfo> {
        (**self).find(name)
    }

    fn for_each(&self, visit: &mut dyn FnMut(&ExportInfo)) {
        (**self).for_each(visit)
    }
}

impl<C: ExportCatalog + ?Sized> ExportCatalog for Arc<C> {
    fn find(&self, name: &str) -> Option<&ExportInfo> {
        (**self).find(name)
    }

    fn for_each(&self, visit: &mut dyn FnMut(&ExportInfo)) {
        (**self).for_each(visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_follow_the_protocol_rules() {
        assert!(BlockSizes::new(512, 4096, 32 << 20).is_ok());
        assert!(BlockSizes::new(1, 512, 1024).is_ok());
        assert!(BlockSizes::new(4096, 4096, BlockSizes::UNLIMITED).is_ok());
        assert!(BlockSizes::new(65536, 65536, 1 << 20).is_ok());
        for (min, pref, max) in [
            (0, 4096, 1 << 20),          // zero minimum
            (3, 4096, 1 << 20),          // not a power of two
            (1 << 17, 1 << 17, 1 << 20), // over 64 KiB
            (512, 256, 1 << 20),         // preferred under 512
            (4096, 2048, 1 << 20),       // preferred under the minimum
            (512, 3000, 1 << 20),        // preferred not a power of two
            (512, 4096, 2048),           // maximum under preferred
            (4096, 4096, 4096 * 3 + 1),  // maximum not a multiple of the minimum
        ] {
            assert!(BlockSizes::new(min, pref, max).is_err(), "{min}/{pref}/{max} accepted");
        }
        let b = BlockSizes::for_block_device(512, 0).unwrap();
        assert_eq!(
            (b.min_bytes(), b.preferred_bytes(), b.max_bytes()),
            (512, 4096, 32 << 20)
        );
        let b = BlockSizes::for_block_device(4096, 96 * 1024).unwrap();
        assert_eq!(
            (b.min_bytes(), b.preferred_bytes(), b.max_bytes()),
            (4096, 128 * 1024, 32 << 20)
        );
        assert!(BlockSizes::for_block_device(1000, 0).is_err());
    }

    #[test]
    fn export_strings_are_checked() {
        let bs = BlockSizes::default();
        let caps = Capabilities::default();
        assert!(ExportInfo::new("a\0b", "", 0, false, bs, caps).is_err());
        assert!(ExportInfo::new("a", "x".repeat(4097), 0, false, bs, caps).is_err());
        assert!(ExportInfo::new("x".repeat(4096), "", 0, false, bs, caps).is_ok());
    }

    #[test]
    fn transmission_flags_match_nbdkit_and_respect_read_only() {
        let caps = Capabilities {
            flush: true,
            fua: true,
            trim: true,
            write_zeroes: true,
            fast_zero: true,
            cache: true,
            multi_conn: true,
            rotational: false,
        };
        let e = ExportInfo::new("", "", 1 << 26, false, BlockSizes::default(), caps).unwrap();
        // nbdkit's memory plugin: 0x0ded with structured replies, 0x0d6d without (DF dropped).
        assert_eq!(e.transmission_flags(true), 0x0ded);
        assert_eq!(e.transmission_flags(false), 0x0d6d);
        let ro = ExportInfo::new("", "", 1 << 26, true, BlockSizes::default(), caps).unwrap();
        let f = ro.transmission_flags(true);
        assert_eq!(f & (FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO), 0);
        assert_ne!(f & FLAG_READ_ONLY, 0);
        let no_wz = Capabilities {
            write_zeroes: false,
            ..caps
        };
        let e = ExportInfo::new("", "", 0, false, BlockSizes::default(), no_wz).unwrap();
        assert_eq!(
            e.transmission_flags(true) & FLAG_SEND_FAST_ZERO,
            0,
            "FAST_ZERO only with WRITE_ZEROES"
        );
    }

    #[test]
    fn slice_catalog_default_export() {
        let mk = |n: &str| ExportInfo::new(n, "", 0, false, BlockSizes::default(), Capabilities::default()).unwrap();
        let v = vec![mk("a"), mk("b")];
        assert_eq!(v.find("").unwrap().name(), "a");
        assert_eq!(v.find("b").unwrap().name(), "b");
        assert!(v.find("c").is_none());
        let w = vec![mk("a"), mk("")];
        assert_eq!(w.find("").unwrap().name(), "", "an export named \"\" is the default");
        let empty: Vec<ExportInfo> = Vec::new();
        assert!(empty.find("").is_none());
        let mut names = Vec::new();
        Rc::new(v).for_each(&mut |e| names.push(e.name().to_owned()));
        assert_eq!(names, ["a", "b"]);
    }
}
