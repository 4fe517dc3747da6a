//! `zero`: reads return zeroes, writes and unmaps are accepted and dropped, write_zeroes is not
//! supported (Linux kills every other op). No arguments ("No arguments required"). TABLE and
//! INFO empty; no flush legs.

use std::sync::Arc;

use keel_bdev::{IoCaps, IoOp, IoStatus};

use crate::target::{ArgError, CtorArgs, DevIndex, DevNames, Extent, Map, MapCx, Target};

/// A zero target instance.
#[derive(Debug)]
pub struct Zero;

/// Constructor (control path).
pub fn ctor(a: &mut CtorArgs<'_>) -> Result<Arc<dyn Target>, ArgError> {
    if a.count() != 0 {
        return Err(ArgError::line("zero: No arguments required"));
    }
    Ok(Arc::new(Zero))
}

impl Target for Zero {
    fn extents(&self) -> Vec<Extent> {
        Vec::new()
    }

    fn caps(&self, _dev_caps: &dyn Fn(DevIndex) -> IoCaps) -> IoCaps {
        IoCaps::of(&[IoOp::Read, IoOp::Write, IoOp::Unmap, IoOp::Flush, IoOp::Reset])
    }

    #[inline]
    fn map(&self, op: IoOp, _rel_sector: u64, _cx: &mut MapCx<'_>) -> Map {
        match op {
            IoOp::Read => Map::ZeroFill,
            IoOp::Write | IoOp::Unmap => Map::Done(IoStatus::Success),
            _ => Map::Done(IoStatus::Unsupported),
        }
    }

    fn table_args(&self, _names: &dyn DevNames, _out: &mut String) {}
}
