//! The target contract: target **types** apart from target **instances** (design §5).
//!
//! A [`TargetType`] is static data — name, version, feature flags and a constructor. The
//! constructor parses one table line's arguments ([`CtorArgs`]) into a [`Target`]: an immutable,
//! `Send + Sync` instance shared by every core (`Arc<dyn Target>`). Per-core state a target needs
//! (delay FIFOs) lives in the core's table snapshot, not in the target; shared counters a target
//! reports (delay's held counts, striped's leg errors) are atomics in the target.
//!
//! # Units
//!
//! Targets speak 512-byte **sectors**, like Linux: table positions, device offsets and the
//! `rel_sector` given to [`Target::map`] (the position of the piece relative to the target's
//! start). The core converts to and from blocks of the device and of the underlying bdevs.
//!
//! # What the core guarantees to `map`
//!
//! The piece lies inside the target and, when the target declares [`Target::split_sectors`],
//! inside one aligned chunk of that size; its length is a whole number of the device's logical
//! blocks. `map` decides only where the piece goes — [`Map`] — and never sees the request: it is
//! a few arithmetic operations on the hot path. Targets that must touch the data around the
//! submission (flakey's corruption) say so with [`Target::tracked`]: their pieces always travel as
//! child requests, and the core calls [`Target::before_submit`] / [`Target::end_io`] with a word
//! of per-piece state.

use std::sync::Arc;

use keel_bdev::{IoCaps, IoOp, IoRequest, IoStatus, Striping};
use keel_reactor::ticks;

use crate::events::Events;

/// Bytes per sector: the unit of tables.
pub const SECTOR_BYTES: u64 = 512;

/// Index of a device in its table's device list.
pub type DevIndex = u32;

/// Linux's target feature flags that the table checks look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TypeFlags(pub u32);

impl TypeFlags {
    /// No special rules.
    pub const NONE: TypeFlags = TypeFlags(0);
    /// Must be the only target of its table.
    pub const SINGLETON: TypeFlags = TypeFlags(1);
    /// Cannot be in a read-only table.
    pub const ALWAYS_WRITEABLE: TypeFlags = TypeFlags(2);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: TypeFlags) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
}

/// A target constructor: parses one line's arguments.
pub type Ctor = fn(&mut CtorArgs<'_>) -> Result<Arc<dyn Target>, ArgError>;

/// A target type: what `dm_list_targets` lists and what a table line's third field names.
pub struct TargetType {
    pub name: &'static str,
    /// `(major, minor, patch)`, printed `v1.4.0`.
    pub version: (u32, u32, u32),
    pub flags: TypeFlags,
    pub ctor: Ctor,
}

impl std::fmt::Debug for TargetType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TargetType({} v{}.{}.{})",
            self.name, self.version.0, self.version.1, self.version.2
        )
    }
}

/// Every target type, in registration order (`dm_list_targets` prints them most recent first,
/// as `dmsetup targets`).
pub fn target_types() -> &'static [TargetType] {
    crate::targets::TYPES
}

/// Looks a target type up by name.
pub fn find_type(name: &str) -> Option<&'static TargetType> {
    target_types().iter().find(|t| t.name == name)
}

/// A constructor's complaint about one argument (`arg` = 0-based index into the arguments, `None`
/// for the line as a whole). The table builder turns it into a [`crate::DmError::Table`] naming
/// the line and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    pub arg: Option<usize>,
    /// The argument's name as the target's documentation writes it (`<chunk_sectors>`).
    pub name: &'static str,
    pub reason: String,
    /// EINVAL unless a device could not be claimed (EBUSY).
    pub errno: i32,
}

impl ArgError {
    /// A complaint about argument `arg`.
    pub fn at(arg: usize, name: &'static str, reason: impl Into<String>) -> ArgError {
        ArgError {
            arg: Some(arg),
            name,
            reason: reason.into(),
            errno: libc::EINVAL,
        }
    }

    /// A complaint about the line (argument count, feature conflicts).
    pub fn line(reason: impl Into<String>) -> ArgError {
        ArgError {
            arg: None,
            name: "",
            reason: reason.into(),
            errno: libc::EINVAL,
        }
    }
}

/// Geometry of a device a table names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevGeometry {
    pub block_size: u32,
    pub num_sectors: u64,
    pub caps: IoCaps,
}

/// Where constructors get devices: resolves a bdev name (opening and claiming it, in a real
/// table) and gives its geometry.
pub trait DevSource {
    /// The table's index for device `name`, adding it to the table's device list on first use.
    /// `Err((reason, errno))` when it does not exist or cannot be claimed.
    fn resolve(&mut self, name: &str) -> Result<DevIndex, (String, i32)>;
    /// Geometry of a resolved device.
    fn geometry(&self, dev: DevIndex) -> DevGeometry;
}

/// One line's arguments, handed to a constructor on the control path.
pub struct CtorArgs<'a> {
    /// Length of the line's range.
    pub len_sectors: u64,
    /// The arguments after the target type (escapes already removed).
    pub args: &'a [String],
    /// The device's event counter (targets that raise events keep a clone).
    pub events: &'a Arc<Events>,
    pub(crate) devs: &'a mut dyn DevSource,
}

impl<'a> CtorArgs<'a> {
    /// Number of arguments.
    pub fn count(&self) -> usize {
        self.args.len()
    }

    /// Argument `i` as text.
    pub fn word(&self, i: usize) -> &str {
        &self.args[i]
    }

    /// Argument `i` as a decimal number. Junk after the digits, signs and empty strings are
    /// refused with `reason` (Linux's message for that argument).
    pub fn number(&self, i: usize, name: &'static str, reason: &str) -> Result<u64, ArgError> {
        let w = self.args[i].as_str();
        if w.is_empty() || !w.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ArgError::at(i, name, reason));
        }
        w.parse::<u64>()
            .map_err(|_| ArgError::at(i, name, format!("{reason} (out of range)")))
    }

    /// Argument `i` names a device: resolves (opens and claims) it.
    pub fn device(&mut self, i: usize, name: &'static str) -> Result<DevIndex, ArgError> {
        let w = self.args[i].clone();
        self.devs.resolve(&w).map_err(|(reason, errno)| ArgError {
            arg: Some(i),
            name,
            reason,
            errno,
        })
    }

    /// Geometry of a resolved device.
    pub fn geometry(&self, dev: DevIndex) -> DevGeometry {
        self.devs.geometry(dev)
    }
}

/// A range of a device a target maps onto: checked by the table builder to lie inside the device
/// and to be aligned to its block size. `arg` is the index of the device argument (the offset is
/// the argument after it), for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub dev: DevIndex,
    pub offset_sectors: u64,
    pub len_sectors: u64,
    pub arg: usize,
}

/// Per-call context of [`Target::map`]: the clock read at most once per submission, and a
/// per-core random state.
pub struct MapCx<'a> {
    now: u64,
    /// Per-core, per-target xorshift state (never 0).
    pub rng: &'a mut u64,
}

impl<'a> MapCx<'a> {
    /// A context over `rng` (xorshift state, not 0).
    pub fn new(rng: &'a mut u64) -> MapCx<'a> {
        MapCx { now: 0, rng }
    }

    /// The tick counter, read on first use.
    #[inline]
    pub fn now(&mut self) -> u64 {
        if self.now == 0 {
            self.now = ticks();
        }
        self.now
    }

    /// The next xorshift64 draw.
    #[inline]
    pub fn random(&mut self) -> u64 {
        let mut x = *self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *self.rng = x;
        x
    }
}

/// Where a piece goes. Small and `Copy`: the hot path's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Map {
    /// Submit to device `dev` at `sector` (the device's sectors).
    Remap { dev: DevIndex, sector: u64 },
    /// As `Remap`, with a word of per-piece state for [`Target::before_submit`] and
    /// [`Target::end_io`] (tracked targets only).
    Track { dev: DevIndex, sector: u64, word: u64 },
    /// Hold for `delay_ticks`, then submit to `dev` at `sector` (delay). `class` is the
    /// target's own counter index for [`Target::on_hold`] / [`Target::on_release`].
    Hold {
        dev: DevIndex,
        sector: u64,
        delay_ticks: u64,
        class: u8,
    },
    /// The target answers by itself with this status (error; dropped writes).
    Done(IoStatus),
    /// Reads return zeroes (zero): the core fills the piece's buffers and succeeds it.
    ZeroFill,
}

/// A mapping simple enough for the core to compute inline on its hot path, without calling
/// [`Target::map`]: declared once by the target, used by every core's snapshot. `map` must
/// agree with it (the property tests check both against the model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `rel_sector` → `dev` at `offset_sectors + rel_sector`, for every op.
    Linear { dev: DevIndex, offset_sectors: u64 },
    /// Spec §3.2's stripe arithmetic over `stripes` (device, offset): `striping` in sectors.
    Striped {
        striping: Striping,
        stripes: Vec<(DevIndex, u64)>,
    },
    /// Anything else: the core calls `map`.
    Other,
}

/// What a failed piece was, for [`Target::on_error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// A data piece at this sector relative to the target's start.
    Sector(u64),
    /// Flush leg number.
    Leg(u32),
}

/// How tables print device arguments: the bdev's current name.
pub trait DevNames {
    /// Name of device `dev`.
    fn name(&self, dev: DevIndex) -> String;
}

/// A target instance: one table line. Immutable and shared by every core; the methods that run
/// per I/O (`map`, `map_flush`, `before_submit`, `end_io`) run on data cores and must not
/// allocate or lock; the others run on the control path.
pub trait Target: Send + Sync + 'static {
    /// The device ranges the target maps onto (validated by the table builder).
    fn extents(&self) -> Vec<Extent>;

    /// Pieces must not cross multiples of this many sectors (a power of two); with the index of
    /// the argument that set it. `None`: split only at the target's boundaries.
    fn split_sectors(&self) -> Option<(u64, usize)> {
        None
    }

    /// The target's mapping as data, if the core may compute it inline (see [`Layout`]).
    fn layout(&self) -> Layout {
        Layout::Other
    }

    /// Ops this target can serve, given its devices' caps.
    fn caps(&self, dev_caps: &dyn Fn(DevIndex) -> IoCaps) -> IoCaps;

    /// Whether pieces need per-piece state (forces child requests; see the module docs).
    fn tracked(&self) -> bool {
        false
    }

    /// Maps one piece of a read, write, unmap or write_zeroes. Data core, hot path.
    fn map(&self, op: IoOp, rel_sector: u64, cx: &mut MapCx<'_>) -> Map;

    /// How many flushes one flush of the device sends through this target (Linux's
    /// `num_flush_bios`): one per leg.
    fn flush_legs(&self) -> u32 {
        0
    }

    /// Maps flush leg `leg`.
    fn map_flush(&self, _leg: u32, _cx: &mut MapCx<'_>) -> Map {
        Map::Done(IoStatus::Success)
    }

    /// A tracked piece is about to go down (its buffers are the caller's): change what must be
    /// changed and remember it in `word`.
    fn before_submit(&self, _io: &mut IoRequest, _word: &mut u64) {}

    /// A tracked piece came back with `status`: undo/apply what must be, return the status to
    /// report.
    fn end_io(&self, _io: &mut IoRequest, status: IoStatus, _word: u64) -> IoStatus {
        status
    }

    /// A piece failed (cold path): record it (striped's leg health) and maybe raise an event.
    fn on_error(&self, _piece: Piece, _status: IoStatus) {}

    /// A piece of class `class` is being held / was released (delay's counters).
    fn on_hold(&self, _class: u8) {}
    /// See [`Target::on_hold`].
    fn on_release(&self, _class: u8) {}

    /// The TABLE form of the arguments (what `dmsetup table` prints after the type).
    fn table_args(&self, names: &dyn DevNames, out: &mut String);

    /// The INFO form (what `dmsetup status` prints after the type); empty by default.
    fn info(&self, _names: &dyn DevNames, _out: &mut String) {}

    /// A `dmsetup message` to this target: an optional text answer, or a refusal.
    fn message(&self, _words: &[&str]) -> Result<Option<String>, String> {
        Err("Target type does not support messages".into())
    }

    /// Read-ahead this target suggests for the device, in sectors (0 = no opinion).
    fn read_ahead_sectors(&self) -> u64 {
        0
    }
}

/// The caps every device-backed target derives from its devices.
pub(crate) fn caps_of_devices(
    devs: impl IntoIterator<Item = DevIndex>,
    dev_caps: &dyn Fn(DevIndex) -> IoCaps,
) -> IoCaps {
    let mut caps = IoCaps::ALL;
    for d in devs {
        caps = intersect(caps, dev_caps(d));
    }
    caps
}

/// The ops in both sets.
pub(crate) fn intersect(a: IoCaps, b: IoCaps) -> IoCaps {
    let mut c = a;
    for op in IoOp::ALL {
        if !b.supports(op) {
            c = c.without(op);
        }
    }
    c
}
