//! `delay <dev> <offset> <delay_ms> [<write_dev> <write_offset> <write_delay_ms> [<flush_dev>
//! <flush_offset> <flush_delay_ms>]]` (spec §3.5).
//!
//! Classes: the first triple serves reads (and writes and flushes when nothing else is given),
//! the second writes (and flushes), the third flushes. Each piece is remapped to its class's
//! device and **held for the class delay before it is submitted** (`Map::Hold`; the core keeps a
//! per-core FIFO per delay target and releases due pieces from its poller). A delay of 0 does not
//! hold. On suspend the core releases everything held at once and stops holding until resume.
//!
//! TABLE echoes the classes given; INFO is `<reads_held> <writes_held> <flushes_held>`, counted
//! in shared atomics by [`Target::on_hold`] / [`Target::on_release`].

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keel_bdev::{IoCaps, IoOp};
use keel_reactor::ticks_per_sec;

use crate::target::{caps_of_devices, ArgError, CtorArgs, DevIndex, DevNames, Extent, Map, MapCx, Target};

/// Held-counter index of reads, writes (write, unmap, write_zeroes) and flushes.
pub const KIND_READ: u8 = 0;
/// See [`KIND_READ`].
pub const KIND_WRITE: u8 = 1;
/// See [`KIND_READ`].
pub const KIND_FLUSH: u8 = 2;

/// One class: where its pieces go and how long they wait.
#[derive(Debug, Clone, Copy)]
pub struct Class {
    pub dev: DevIndex,
    pub offset_sectors: u64,
    pub delay_ms: u64,
    delay_ticks: u64,
}

/// A delay target instance.
pub struct Delay {
    /// 1, 2 or 3 classes as given.
    pub classes: Vec<Class>,
    pub len_sectors: u64,
    held: [AtomicU64; 3],
}

/// Constructor (control path).
pub fn ctor(a: &mut CtorArgs<'_>) -> Result<Arc<dyn Target>, ArgError> {
    if !matches!(a.count(), 3 | 6 | 9) {
        return Err(ArgError::line("delay: Requires exactly 3, 6 or 9 arguments"));
    }
    let tps = ticks_per_sec() as u128;
    let mut classes = Vec::with_capacity(3);
    for c in 0..a.count() / 3 {
        let offset_sectors = a.number(3 * c + 1, "<offset>", "delay: Invalid device sector")?;
        let delay_ms = a.number(3 * c + 2, "<delay_ms>", "delay: Invalid delay")?;
        let dev = a.device(3 * c, "<dev>")?;
        let delay_ticks = u64::try_from(delay_ms as u128 * tps / 1000).unwrap_or(u64::MAX);
        classes.push(Class {
            dev,
            offset_sectors,
            delay_ms,
            delay_ticks,
        });
    }
    Ok(Arc::new(Delay {
        classes,
        len_sectors: a.len_sectors,
        held: Default::default(),
    }))
}

impl Delay {
    #[inline]
    fn class_for(&self, kind: u8) -> &Class {
        let n = self.classes.len();
        let i = match kind {
            KIND_READ => 0,
            KIND_WRITE => 1.min(n - 1),
            _ => n - 1,
        };
        &self.classes[i]
    }

    #[inline]
    fn route(&self, kind: u8, rel_sector: u64) -> Map {
        let c = self.class_for(kind);
        let sector = c.offset_sectors + rel_sector;
        if c.delay_ticks == 0 {
            Map::Remap { dev: c.dev, sector }
        } else {
            Map::Hold {
                dev: c.dev,
                sector,
                delay_ticks: c.delay_ticks,
                class: kind,
            }
        }
    }

    /// Pieces of each kind held right now (reads, writes, flushes).
    pub fn held(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.held[i].load(Ordering::Relaxed))
    }
}

impl Target for Delay {
    fn extents(&self) -> Vec<Extent> {
        self.classes
            .iter()
            .enumerate()
            .map(|(i, c)| Extent {
                dev: c.dev,
                offset_sectors: c.offset_sectors,
                len_sectors: self.len_sectors,
                arg: 3 * i,
            })
            .collect()
    }

    fn caps(&self, dev_caps: &dyn Fn(DevIndex) -> IoCaps) -> IoCaps {
        caps_of_devices(self.classes.iter().map(|c| c.dev), dev_caps)
    }

    #[inline]
    fn map(&self, op: IoOp, rel_sector: u64, _cx: &mut MapCx<'_>) -> Map {
        let kind = if op == IoOp::Read { KIND_READ } else { KIND_WRITE };
        self.route(kind, rel_sector)
    }

    fn flush_legs(&self) -> u32 {
        1
    }

    fn map_flush(&self, _leg: u32, _cx: &mut MapCx<'_>) -> Map {
        match self.route(KIND_FLUSH, 0) {
            Map::Remap { dev, .. } => Map::Remap { dev, sector: 0 },
            Map::Hold {
                dev,
                delay_ticks,
                class,
                ..
            } => Map::Hold {
                dev,
                sector: 0,
                delay_ticks,
                class,
            },
            other => other,
        }
    }

    fn on_hold(&self, class: u8) {
        self.held[class as usize % 3].fetch_add(1, Ordering::Relaxed);
    }

    fn on_release(&self, class: u8) {
        self.held[class as usize % 3].fetch_sub(1, Ordering::Relaxed);
    }

    fn table_args(&self, names: &dyn DevNames, out: &mut String) {
        for (i, c) in self.classes.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let _ = write!(out, "{} {} {}", names.name(c.dev), c.offset_sectors, c.delay_ms);
        }
    }

    fn info(&self, _names: &dyn DevNames, out: &mut String) {
        let [r, w, f] = self.held();
        let _ = write!(out, "{r} {w} {f}");
    }
}
