//! `linear <dev> <offset>`: maps `[start, start+len)` onto `dev` sectors `[offset, offset+len)`.
//! Every op passes through; one flush leg. TABLE `<dev> <offset>`, INFO empty.

use std::fmt::Write;
use std::sync::Arc;

use keel_bdev::{IoCaps, IoOp};

use crate::target::{caps_of_devices, ArgError, CtorArgs, DevIndex, DevNames, Extent, Layout, Map, MapCx, Target};

/// A linear target instance.
#[derive(Debug)]
pub struct Linear {
    pub dev: DevIndex,
    pub offset_sectors: u64,
    pub len_sectors: u64,
}

/// Constructor (control path).
pub fn ctor(a: &mut CtorArgs<'_>) -> Result<Arc<dyn Target>, ArgError> {
    if a.count() != 2 {
        return Err(ArgError::line("linear: Invalid argument count"));
    }
    let offset_sectors = a.number(1, "<offset>", "linear: Invalid device sector")?;
    let dev = a.device(0, "<dev>")?;
    Ok(Arc::new(Linear {
        dev,
        offset_sectors,
        len_sectors: a.len_sectors,
    }))
}

impl Target for Linear {
    fn extents(&self) -> Vec<Extent> {
        vec![Extent {
            dev: self.dev,
            offset_sectors: self.offset_sectors,
            len_sectors: self.len_sectors,
            arg: 0,
        }]
    }

    fn layout(&self) -> Layout {
        Layout::Linear {
            dev: self.dev,
            offset_sectors: self.offset_sectors,
        }
    }

    fn caps(&self, dev_caps: &dyn Fn(DevIndex) -> IoCaps) -> IoCaps {
        caps_of_devices([self.dev], dev_caps)
    }

    #[inline]
    fn map(&self, _op: IoOp, rel_sector: u64, _cx: &mut MapCx<'_>) -> Map {
        Map::Remap {
            dev: self.dev,
            sector: self.offset_sectors + rel_sector,
        }
    }

    fn flush_legs(&self) -> u32 {
        1
    }

    fn map_flush(&self, _leg: u32, _cx: &mut MapCx<'_>) -> Map {
        Map::Remap {
            dev: self.dev,
            sector: 0,
        }
    }

    fn table_args(&self, names: &dyn DevNames, out: &mut String) {
        let _ = write!(out, "{} {}", names.name(self.dev), self.offset_sectors);
    }
}
