//! `error [<dev> <offset>]`: every read, write, unmap and write_zeroes fails (EIO → `Failed`).
//! The optional device arguments (accepted by recent kernels to inherit that device's limits)
//! make the device a dependency but are not echoed. TABLE and INFO empty. Flushes do not reach
//! it (no flush legs), so a flush of a device with error targets succeeds, as in Linux.

use std::sync::Arc;

use keel_bdev::{IoCaps, IoOp, IoStatus};

use crate::target::{ArgError, CtorArgs, DevIndex, DevNames, Extent, Map, MapCx, Target};

/// An error target instance.
#[derive(Debug)]
pub struct Error {
    /// The inherited device, if given.
    pub dev: Option<(DevIndex, u64)>,
    pub len_sectors: u64,
}

/// Constructor (control path).
pub fn ctor(a: &mut CtorArgs<'_>) -> Result<Arc<dyn Target>, ArgError> {
    let dev = match a.count() {
        0 => None,
        2 => {
            let offset = a.number(1, "<offset>", "error: Invalid device sector")?;
            Some((a.device(0, "<dev>")?, offset))
        }
        _ => return Err(ArgError::line("error: Invalid argument count")),
    };
    Ok(Arc::new(Error {
        dev,
        len_sectors: a.len_sectors,
    }))
}

impl Target for Error {
    fn extents(&self) -> Vec<Extent> {
        self.dev
            .map(|(dev, offset_sectors)| Extent {
                dev,
                offset_sectors,
                len_sectors: self.len_sectors,
                arg: 0,
            })
            .into_iter()
            .collect()
    }

    fn caps(&self, _dev_caps: &dyn Fn(DevIndex) -> IoCaps) -> IoCaps {
        IoCaps::ALL
    }

    #[inline]
    fn map(&self, _op: IoOp, _rel_sector: u64, _cx: &mut MapCx<'_>) -> Map {
        Map::Done(IoStatus::Failed)
    }

    fn table_args(&self, _names: &dyn DevNames, _out: &mut String) {}
}
