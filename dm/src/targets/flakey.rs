//! `flakey <dev> <offset> <up_s> <down_s> [<#feature_args> <features…>]` (spec §3.6).
//!
//! Behaves like linear for `up_s` seconds, then misbehaves for `down_s` seconds, repeating,
//! timed from table load (whole seconds, as Linux: `elapsed_s mod (up+down) >= up` is down).
//! While down:
//!
//! * reads fail with `error_reads` (and with no features at all, which Linux reports as the two
//!   implicit features `error_reads error_writes`);
//! * writes (and unmap / write_zeroes) complete successfully without reaching the device with
//!   `drop_writes`, fail with `error_writes`;
//! * `corrupt_bio_byte <N> <r|w> <value> <flags>` sets byte N (1-based) of the piece's data to
//!   `value` — of a read after it succeeded, of a write before it goes down (the caller's buffer
//!   is restored when the write comes back, as Linux writes a copy). Keel's requests carry no
//!   bio flags, so only `flags = 0` ever matches;
//! * `random_read_corrupt <p>` / `random_write_corrupt <p>`: with probability p/10⁹ one random
//!   byte of the piece is changed (XORed with a random non-zero value).
//!
//! Corruption needs the data around the submission, so a flakey target with corruption features
//! is [`Target::tracked`]; the per-piece word says what to do (`WORD_*` in the low byte, the saved
//! original byte or a random seed above it). No message support (EINVAL), INFO empty.

use std::fmt::Write;
use std::sync::Arc;

use keel_bdev::{IoCaps, IoOp, IoRequest, IoStatus};
use keel_reactor::{ticks, ticks_per_sec};

use crate::target::{caps_of_devices, ArgError, CtorArgs, DevIndex, DevNames, Extent, Map, MapCx, Target};

/// Probability denominator of the random corruption features.
pub const RANDOM_SCALE: u64 = 1_000_000_000;

const WORD_FIXED_READ: u64 = 1;
const WORD_FIXED_WRITE: u64 = 2;
const WORD_RANDOM: u64 = 3;

/// `corrupt_bio_byte` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptByte {
    /// 1-based byte position within the piece.
    pub nth: u64,
    /// Corrupt writes (`w`) instead of reads (`r`).
    pub write: bool,
    pub value: u8,
    pub flags: u64,
}

/// A flakey target instance.
pub struct Flakey {
    pub dev: DevIndex,
    pub offset_sectors: u64,
    pub len_sectors: u64,
    pub up_s: u64,
    pub down_s: u64,
    pub error_reads: bool,
    pub drop_writes: bool,
    pub error_writes: bool,
    pub corrupt: Option<CorruptByte>,
    pub random_read_corrupt: u64,
    pub random_write_corrupt: u64,
    start_ticks: u64,
    ticks_per_sec: u64,
}

fn feature_count(a: &CtorArgs<'_>, i: usize) -> Result<usize, ArgError> {
    let n = a.number(i, "<#feature_args>", "flakey: Invalid number of feature args")?;
    if n as usize != a.count() - i - 1 {
        return Err(ArgError::at(
            i,
            "<#feature_args>",
            format!(
                "flakey: Invalid number of feature args ({n} given, {} words follow)",
                a.count() - i - 1
            ),
        ));
    }
    Ok(n as usize)
}

/// Constructor (control path).
pub fn ctor(a: &mut CtorArgs<'_>) -> Result<Arc<dyn Target>, ArgError> {
    if a.count() < 4 {
        return Err(ArgError::line("flakey: Invalid argument count"));
    }
    let offset_sectors = a.number(1, "<offset>", "flakey: Invalid device sector")?;
    let up_s = a.number(2, "<up_interval>", "flakey: Invalid up interval")?;
    let down_s = a.number(3, "<down_interval>", "flakey: Invalid down interval")?;
    if up_s > u32::MAX as u64 {
        return Err(ArgError::at(2, "<up_interval>", "flakey: Invalid up interval"));
    }
    if down_s > u32::MAX as u64 {
        return Err(ArgError::at(3, "<down_interval>", "flakey: Invalid down interval"));
    }
    if up_s + down_s == 0 {
        return Err(ArgError::line("flakey: Total (up + down) interval is zero"));
    }
    let mut f = Flakey {
        dev: 0,
        offset_sectors,
        len_sectors: a.len_sectors,
        up_s,
        down_s,
        error_reads: false,
        drop_writes: false,
        error_writes: false,
        corrupt: None,
        random_read_corrupt: 0,
        random_write_corrupt: 0,
        start_ticks: ticks(),
        ticks_per_sec: ticks_per_sec().max(1),
    };
    if a.count() > 4 {
        feature_count(a, 4)?;
        parse_features(a, 5, &mut f)?;
    }
    let any = f.error_reads
        || f.drop_writes
        || f.error_writes
        || f.corrupt.is_some()
        || f.random_read_corrupt > 0
        || f.random_write_corrupt > 0;
    if !any {
        f.error_reads = true;
        f.error_writes = true;
    }
    f.dev = a.device(0, "<dev>")?;
    Ok(Arc::new(f))
}

fn parse_features(a: &CtorArgs<'_>, mut i: usize, f: &mut Flakey) -> Result<(), ArgError> {
    let dup = |i: usize, w: &str| ArgError::at(i, "<feature>", format!("flakey: Feature {w} duplicated"));
    while i < a.count() {
        let w = a.word(i).to_string();
        match w.as_str() {
            "error_reads" => {
                if f.error_reads {
                    return Err(dup(i, &w));
                }
                f.error_reads = true;
                i += 1;
            }
            "drop_writes" => {
                if f.drop_writes {
                    return Err(dup(i, &w));
                }
                if f.error_writes {
                    return Err(ArgError::at(
                        i,
                        "<feature>",
                        "flakey: Feature drop_writes conflicts with feature error_writes",
                    ));
                }
                f.drop_writes = true;
                i += 1;
            }
            "error_writes" => {
                if f.error_writes {
                    return Err(dup(i, &w));
                }
                if f.drop_writes {
                    return Err(ArgError::at(
                        i,
                        "<feature>",
                        "flakey: Feature error_writes conflicts with feature drop_writes",
                    ));
                }
                f.error_writes = true;
                i += 1;
            }
            "corrupt_bio_byte" => {
                if f.corrupt.is_some() {
                    return Err(dup(i, &w));
                }
                if i + 4 >= a.count() {
                    return Err(ArgError::at(
                        i,
                        "<feature>",
                        "flakey: Feature corrupt_bio_byte requires parameters",
                    ));
                }
                let nth = a.number(i + 1, "<Nth_byte>", "flakey: Invalid corrupt bio byte")?;
                if nth == 0 || nth > u32::MAX as u64 {
                    return Err(ArgError::at(i + 1, "<Nth_byte>", "flakey: Invalid corrupt bio byte"));
                }
                let write = match a.word(i + 2) {
                    "r" => false,
                    "w" => true,
                    _ => {
                        return Err(ArgError::at(
                            i + 2,
                            "<direction>",
                            "flakey: Invalid corrupt bio direction (r or w)",
                        ))
                    }
                };
                let value = a.number(i + 3, "<value>", "flakey: Invalid corrupt bio byte value")?;
                if value > 255 {
                    return Err(ArgError::at(i + 3, "<value>", "flakey: Invalid corrupt bio byte value"));
                }
                let flags = a.number(i + 4, "<flags>", "flakey: Invalid corrupt bio flags mask")?;
                f.corrupt = Some(CorruptByte {
                    nth,
                    write,
                    value: value as u8,
                    flags,
                });
                i += 5;
            }
            "random_read_corrupt" | "random_write_corrupt" => {
                if i + 1 >= a.count() {
                    return Err(ArgError::at(
                        i,
                        "<feature>",
                        format!("flakey: Feature {w} requires a parameter"),
                    ));
                }
                let p = a.number(i + 1, "<probability>", "flakey: Invalid random corrupt argument")?;
                if p > RANDOM_SCALE {
                    return Err(ArgError::at(
                        i + 1,
                        "<probability>",
                        "flakey: Invalid random corrupt argument",
                    ));
                }
                if w == "random_read_corrupt" {
                    f.random_read_corrupt = p;
                } else {
                    f.random_write_corrupt = p;
                }
                i += 2;
            }
            _ => {
                return Err(ArgError::at(
                    i,
                    "<feature>",
                    format!("flakey: Unrecognised flakey feature requested '{w}'"),
                ))
            }
        }
    }
    if let Some(c) = f.corrupt {
        if c.write && (f.drop_writes || f.error_writes) {
            return Err(ArgError::line(
                "flakey: corrupt_bio_byte with 'w' conflicts with drop_writes/error_writes",
            ));
        }
    }
    Ok(())
}

/// Finds byte `pos` of a request's data (across its segments).
fn with_byte(io: &IoRequest, pos: u64, f: impl FnOnce(&mut u8)) -> bool {
    let mut at = 0u64;
    for v in &io.iovs {
        let len = v.len_bytes as u64;
        if pos < at + len {
            let mut b = v.buf.bytes_mut();
            f(&mut b[v.offset_bytes as usize + (pos - at) as usize]);
            return true;
        }
        at += len;
    }
    false
}

impl Flakey {
    /// Whether the target is in its down interval at tick `now`.
    #[inline]
    pub fn is_down_at(&self, now: u64) -> bool {
        if self.down_s == 0 {
            return false;
        }
        if self.up_s == 0 {
            return true;
        }
        let elapsed_s = now.saturating_sub(self.start_ticks) / self.ticks_per_sec;
        elapsed_s % (self.up_s + self.down_s) >= self.up_s
    }

    #[inline]
    fn plain(&self, sector: u64) -> Map {
        Map::Remap { dev: self.dev, sector }
    }

    fn corrupts(&self) -> bool {
        self.corrupt.is_some() || self.random_read_corrupt > 0 || self.random_write_corrupt > 0
    }

    fn data_bytes(io: &IoRequest) -> u64 {
        io.iov_len_bytes()
    }
}

impl Target for Flakey {
    fn extents(&self) -> Vec<Extent> {
        vec![Extent {
            dev: self.dev,
            offset_sectors: self.offset_sectors,
            len_sectors: self.len_sectors,
            arg: 0,
        }]
    }

    fn caps(&self, dev_caps: &dyn Fn(DevIndex) -> IoCaps) -> IoCaps {
        caps_of_devices([self.dev], dev_caps)
    }

    fn tracked(&self) -> bool {
        self.corrupts()
    }

    #[inline]
    fn map(&self, op: IoOp, rel_sector: u64, cx: &mut MapCx<'_>) -> Map {
        let sector = self.offset_sectors + rel_sector;
        let now = cx.now();
        if !self.is_down_at(now) {
            return self.plain(sector);
        }
        let track = |word: u64| Map::Track {
            dev: self.dev,
            sector,
            word,
        };
        match op {
            IoOp::Read => {
                if self.error_reads {
                    return Map::Done(IoStatus::Failed);
                }
                if matches!(self.corrupt, Some(c) if !c.write && c.flags == 0) {
                    return track(WORD_FIXED_READ);
                }
                if self.random_read_corrupt > 0 && cx.random() % RANDOM_SCALE < self.random_read_corrupt {
                    return track(WORD_RANDOM | (cx.random() << 8));
                }
                self.plain(sector)
            }
            IoOp::Write | IoOp::Unmap | IoOp::WriteZeroes => {
                if self.drop_writes {
                    return Map::Done(IoStatus::Success);
                }
                if self.error_writes {
                    return Map::Done(IoStatus::Failed);
                }
                if op == IoOp::Write {
                    if matches!(self.corrupt, Some(c) if c.write && c.flags == 0) {
                        return track(WORD_FIXED_WRITE);
                    }
                    if self.random_write_corrupt > 0 && cx.random() % RANDOM_SCALE < self.random_write_corrupt {
                        return track(WORD_RANDOM | (cx.random() << 8));
                    }
                }
                self.plain(sector)
            }
            _ => self.plain(sector),
        }
    }

    fn flush_legs(&self) -> u32 {
        1
    }

    fn map_flush(&self, _leg: u32, _cx: &mut MapCx<'_>) -> Map {
        self.plain(0)
    }

    fn before_submit(&self, io: &mut IoRequest, word: &mut u64) {
        match *word & 0xff {
            WORD_FIXED_WRITE => {
                let Some(c) = self.corrupt else { return };
                let mut orig = 0u8;
                if with_byte(io, c.nth - 1, |b| {
                    orig = *b;
                    *b = c.value;
                }) {
                    // Remember the caller's byte to put it back when the write returns.
                    *word = WORD_FIXED_WRITE | (1 << 8) | ((orig as u64) << 16);
                }
            }
            WORD_RANDOM if io.op == IoOp::Write => {
                let len = Self::data_bytes(io);
                if len == 0 {
                    return;
                }
                let seed = *word >> 8;
                let pos = seed % len;
                let x = ((seed >> 32) as u8) | 1;
                with_byte(io, pos, |b| *b ^= x);
                // The XOR is undone by applying it again in end_io.
            }
            _ => {}
        }
    }

    fn end_io(&self, io: &mut IoRequest, status: IoStatus, word: u64) -> IoStatus {
        match word & 0xff {
            WORD_FIXED_READ if status == IoStatus::Success => {
                if let Some(c) = self.corrupt {
                    with_byte(io, c.nth - 1, |b| *b = c.value);
                }
            }
            WORD_FIXED_WRITE if (word >> 8) & 1 == 1 => {
                if let Some(c) = self.corrupt {
                    let orig = (word >> 16) as u8;
                    with_byte(io, c.nth - 1, |b| *b = orig);
                }
            }
            WORD_RANDOM => {
                let len = Self::data_bytes(io);
                if len > 0 && (io.op == IoOp::Write || status == IoStatus::Success) {
                    let seed = word >> 8;
                    let x = ((seed >> 32) as u8) | 1;
                    with_byte(io, seed % len, |b| *b ^= x);
                }
            }
            _ => {}
        }
        status
    }

    fn table_args(&self, names: &dyn DevNames, out: &mut String) {
        let _ = write!(
            out,
            "{} {} {} {}",
            names.name(self.dev),
            self.offset_sectors,
            self.up_s,
            self.down_s
        );
        let words = self.error_reads as u64
            + self.drop_writes as u64
            + self.error_writes as u64
            + self.corrupt.is_some() as u64 * 5
            + (self.random_read_corrupt > 0) as u64 * 2
            + (self.random_write_corrupt > 0) as u64 * 2;
        let _ = write!(out, " {words}");
        if self.error_reads {
            out.push_str(" error_reads");
        }
        if self.drop_writes {
            out.push_str(" drop_writes");
        } else if self.error_writes {
            out.push_str(" error_writes");
        }
        if let Some(c) = self.corrupt {
            let _ = write!(
                out,
                " corrupt_bio_byte {} {} {} {}",
                c.nth,
                if c.write { 'w' } else { 'r' },
                c.value,
                c.flags
            );
        }
        if self.random_read_corrupt > 0 {
            let _ = write!(out, " random_read_corrupt {}", self.random_read_corrupt);
        }
        if self.random_write_corrupt > 0 {
            let _ = write!(out, " random_write_corrupt {}", self.random_write_corrupt);
        }
    }
}
