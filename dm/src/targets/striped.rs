//! `striped <#stripes> <chunk_sectors> (<dev> <offset>){#stripes}`.
//!
//! Mapping (spec §3.2): `c = rel div chunk`, `stripe = c mod #stripes`, device sector
//! `offset[stripe] + (c div #stripes)·chunk + rel mod chunk`. The chunk is a power of two of at
//! least the device's block size (Keel's rule, stricter than Linux's), so the arithmetic is
//! keel-bdev's [`Striping`] in sectors — shifts and masks, and a reciprocal multiply for a stripe
//! count that is not a power of two — the same that striped routes use; the core splits pieces at
//! chunk boundaries ([`Target::split_sectors`]).
//!
//! Health: an error on a leg (other than "unsupported") counts against that leg; INFO shows `D`
//! for a leg that has seen errors, `A` otherwise, and each of a leg's first 15 errors raises a
//! device event (spec §3.2, §9.9). Flushes go to every stripe (one leg each).

use std::fmt::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use keel_bdev::{IoCaps, IoOp, IoStatus, Striping};

use crate::events::Events;
use crate::target::{
    caps_of_devices, ArgError, CtorArgs, DevIndex, DevNames, Extent, Layout, Map, MapCx, Piece, Target,
};

/// Errors per leg that raise an event (Linux's DM_IO_ERROR_THRESHOLD).
pub const EVENT_ERRORS: u32 = 15;

/// One stripe: a device and where the stripe starts on it.
#[derive(Debug, Clone, Copy)]
pub struct Stripe {
    pub dev: DevIndex,
    pub offset_sectors: u64,
}

/// A striped target instance.
pub struct Striped {
    pub stripes: Vec<Stripe>,
    pub chunk_sectors: u64,
    /// Chunks of `chunk_sectors` over the stripes.
    striping: Striping,
    /// Sectors per stripe (target length / #stripes).
    pub width_sectors: u64,
    errors: Vec<AtomicU32>,
    events: Arc<Events>,
}

/// Constructor (control path).
pub fn ctor(a: &mut CtorArgs<'_>) -> Result<Arc<dyn Target>, ArgError> {
    if a.count() < 2 {
        return Err(ArgError::line("striped: Not enough arguments"));
    }
    let n = a.number(0, "<#stripes>", "striped: Invalid stripe count")?;
    if n == 0 || n > u32::MAX as u64 {
        return Err(ArgError::at(0, "<#stripes>", "striped: Invalid stripe count"));
    }
    let chunk = a.number(1, "<chunk_sectors>", "striped: Invalid chunk_size")?;
    if chunk == 0 {
        return Err(ArgError::at(1, "<chunk_sectors>", "striped: Invalid chunk_size"));
    }
    if !chunk.is_power_of_two() {
        return Err(ArgError::at(
            1,
            "<chunk_sectors>",
            format!("striped: chunk size {chunk} sectors is not a power of two"),
        ));
    }
    if !a.len_sectors.is_multiple_of(n) {
        return Err(ArgError::line(
            "striped: Target length not divisible by number of stripes",
        ));
    }
    let width = a.len_sectors / n;
    if !width.is_multiple_of(chunk) {
        return Err(ArgError::line("striped: Target length not divisible by chunk size"));
    }
    if a.count() as u64 != 2 + 2 * n {
        return Err(ArgError::line(format!(
            "striped: Not enough destinations specified ({} stripes need {} arguments, got {})",
            n,
            2 + 2 * n,
            a.count()
        )));
    }
    let Some(striping) = Striping::new(chunk, n) else {
        return Err(ArgError::at(1, "<chunk_sectors>", "striped: Invalid chunk_size"));
    };
    let mut stripes = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        let offset_sectors = a.number(3 + 2 * i, "<offset>", "striped: Invalid stripe offset")?;
        let dev = a.device(2 + 2 * i, "<dev>")?;
        stripes.push(Stripe { dev, offset_sectors });
    }
    Ok(Arc::new(Striped {
        errors: (0..n).map(|_| AtomicU32::new(0)).collect(),
        stripes,
        chunk_sectors: chunk,
        striping,
        width_sectors: width,
        events: a.events.clone(),
    }))
}

impl Striped {
    /// Which stripe `rel_sector` falls on, and the sector on that stripe's device.
    #[inline]
    pub fn locate(&self, rel_sector: u64) -> (usize, u64) {
        let p = self.striping.locate(rel_sector);
        (p.leg, self.stripes[p.leg].offset_sectors + p.offset_blocks)
    }

    /// Errors seen on leg `i` so far.
    pub fn leg_errors(&self, i: usize) -> u32 {
        self.errors[i].load(Ordering::Relaxed)
    }
}

impl Target for Striped {
    fn extents(&self) -> Vec<Extent> {
        self.stripes
            .iter()
            .enumerate()
            .map(|(i, s)| Extent {
                dev: s.dev,
                offset_sectors: s.offset_sectors,
                len_sectors: self.width_sectors,
                arg: 2 + 2 * i,
            })
            .collect()
    }

    fn layout(&self) -> Layout {
        Layout::Striped {
            striping: self.striping,
            stripes: self.stripes.iter().map(|s| (s.dev, s.offset_sectors)).collect(),
        }
    }

    fn split_sectors(&self) -> Option<(u64, usize)> {
        Some((self.chunk_sectors, 1))
    }

    fn caps(&self, dev_caps: &dyn Fn(DevIndex) -> IoCaps) -> IoCaps {
        caps_of_devices(self.stripes.iter().map(|s| s.dev), dev_caps)
    }

    #[inline]
    fn map(&self, _op: IoOp, rel_sector: u64, _cx: &mut MapCx<'_>) -> Map {
        let (stripe, sector) = self.locate(rel_sector);
        Map::Remap {
            dev: self.stripes[stripe].dev,
            sector,
        }
    }

    fn flush_legs(&self) -> u32 {
        self.stripes.len() as u32
    }

    fn map_flush(&self, leg: u32, _cx: &mut MapCx<'_>) -> Map {
        Map::Remap {
            dev: self.stripes[leg as usize].dev,
            sector: 0,
        }
    }

    fn on_error(&self, piece: Piece, status: IoStatus) {
        if status == IoStatus::Unsupported {
            return;
        }
        let leg = match piece {
            Piece::Sector(rel) => self.locate(rel).0,
            Piece::Leg(l) => l as usize,
        };
        let n = self.errors[leg].fetch_add(1, Ordering::Relaxed) + 1;
        if n <= EVENT_ERRORS {
            self.events.raise();
        }
    }

    fn table_args(&self, names: &dyn DevNames, out: &mut String) {
        let _ = write!(out, "{} {}", self.stripes.len(), self.chunk_sectors);
        for s in &self.stripes {
            let _ = write!(out, " {} {}", names.name(s.dev), s.offset_sectors);
        }
    }

    fn info(&self, names: &dyn DevNames, out: &mut String) {
        let _ = write!(out, "{} ", self.stripes.len());
        for s in &self.stripes {
            let _ = write!(out, "{} ", names.name(s.dev));
        }
        out.push_str("1 ");
        for e in &self.errors {
            out.push(if e.load(Ordering::Relaxed) > 0 { 'D' } else { 'A' });
        }
    }

    fn read_ahead_sectors(&self) -> u64 {
        // Linux sets io_opt = chunk × stripes and read-ahead to twice that (observed: 512
        // sectors for 2 × 128).
        2 * self.chunk_sectors * self.stripes.len() as u64
    }
}
