//! DMA memory above [`sys::DmaRegion`](crate::sys::DmaRegion): who maps it (the [`DmaMapper`]:
//! the VFIO container, or the model), where it lands (the [`IovaAllocator`]), and the buffer
//! pool that gives I/O buffers whose IOVA is known without a system call.
//!
//! Regions are allocated and mapped at attach and queue-pair creation, never per I/O. A
//! [`DmaMem`] is a mapped region with its IOVA; its sub-ranges each have one owner (module doc
//! of [`crate::sys`]).

#![forbid(unsafe_code)]

use std::sync::Arc;

use crate::error::PcieError;
use crate::sys::{DmaRegion, PAGE_BYTES};

/// Maps regions into the device's address space. The VFIO container maps with
/// `VFIO_IOMMU_MAP_DMA`; the model records the region so its simulated device can reach it.
/// Called at set-up only (attach, queue-pair creation, pool creation), from any thread.
pub trait DmaMapper: Send + Sync {
    /// Makes `region` reachable by the device and returns its IOVA. The mapper keeps a clone of
    /// the `Arc` until the mapping ends (detach), so the memory outlives the mapping.
    fn map(&self, region: Arc<DmaRegion>) -> Result<u64, PcieError>;
}

/// A mapped region and its IOVA.
#[derive(Clone)]
pub struct DmaMem {
    /// The memory.
    pub region: Arc<DmaRegion>,
    /// The device address of byte 0.
    pub iova: u64,
}

impl DmaMem {
    /// Allocates `len_bytes` (whole pages) and maps them with `mapper`.
    pub fn new(mapper: &dyn DmaMapper, len_bytes: usize) -> Result<DmaMem, PcieError> {
        let region = Arc::new(DmaRegion::alloc(len_bytes).map_err(|e| PcieError::os("allocate DMA memory", e))?);
        let iova = mapper.map(region.clone())?;
        Ok(DmaMem { region, iova })
    }
}

/// Hands out IOVA ranges: a bump allocator over the usable ranges, starting at 1 MiB (IOVA 0
/// looks like a null PRP) and skipping the x86 MSI window 0xFEE00000–0xFEEFFFFF that the IOMMU
/// reserves (nvme-pcie.md §9.6). Owned by the VFIO container; mappings live until detach, so
/// nothing is ever freed.
#[derive(Debug, Clone)]
pub struct IovaAllocator {
    next: u64,
    ranges: Vec<(u64, u64)>,
}

impl IovaAllocator {
    /// First IOVA handed out.
    pub const BASE: u64 = 0x10_0000;

    /// An allocator over `ranges` (inclusive start, exclusive end), e.g. from the IOMMU's IOVA
    /// range capability.
    pub fn new(ranges: Vec<(u64, u64)>) -> IovaAllocator {
        IovaAllocator {
            next: Self::BASE,
            ranges,
        }
    }

    /// The ranges of the lab's (and any x86 VT-d) IOMMU: below the MSI window and above it, up
    /// to 48 bits.
    pub fn x86_default() -> IovaAllocator {
        IovaAllocator::new(vec![(0, 0xFEE0_0000), (0xFEF0_0000, 1 << 48)])
    }

    /// `len_bytes` (rounded up to pages) of IOVA space, page aligned, inside one range.
    pub fn alloc(&mut self, len_bytes: u64) -> Result<u64, PcieError> {
        let len = len_bytes.max(1).next_multiple_of(PAGE_BYTES as u64);
        for &(start, end) in &self.ranges {
            let at = self.next.max(start).next_multiple_of(PAGE_BYTES as u64);
            if at.checked_add(len).is_some_and(|e| e <= end) {
                self.next = at + len;
                return Ok(at);
            }
        }
        Err(PcieError::Unsupported(format!(
            "IOVA space exhausted: no room for {len} bytes"
        )))
    }
}

/// A buffer taken from a [`DmaPool`]: its index, IOVA and size. Owned by whoever took it until
/// given back with [`DmaPool::put`]; plain data, so it travels in an I/O request at no cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaBuf {
    index: u32,
    /// Device address of byte 0.
    pub iova: u64,
    /// Size in bytes.
    pub len_bytes: u32,
}

/// Fixed-size DMA buffers carved out of one mapped region at creation: `get`/`put` are a pop
/// and a push on a preallocated free list (no allocation, no lock, no system call), and every
/// buffer's IOVA is known. Owned by one reactor (or one test); the bdev layer's buffer pool is
/// the intended owner when bdev_nvme uses this transport.
pub struct DmaPool {
    mem: DmaMem,
    buf_bytes: u32,
    free: Vec<u32>,
    in_use: Vec<bool>,
    count: u32,
}

impl DmaPool {
    /// `count` buffers of `buf_bytes` (a multiple of 4 KiB) each, mapped with `mapper`.
    pub fn new(mapper: &dyn DmaMapper, count: u32, buf_bytes: u32) -> Result<DmaPool, PcieError> {
        if count == 0 || buf_bytes == 0 || !(buf_bytes as usize).is_multiple_of(PAGE_BYTES) {
            return Err(PcieError::Invalid(format!(
                "a DMA pool needs at least one buffer of a whole number of 4 KiB pages (got {count} × {buf_bytes})"
            )));
        }
        let mem = DmaMem::new(mapper, count as usize * buf_bytes as usize)?;
        Ok(DmaPool {
            mem,
            buf_bytes,
            free: (0..count).rev().collect(),
            in_use: vec![false; count as usize],
            count,
        })
    }

    /// Takes a free buffer, or `None` when all are in use.
    pub fn get(&mut self) -> Option<DmaBuf> {
        let index = self.free.pop()?;
        self.in_use[index as usize] = true;
        Some(DmaBuf {
            index,
            iova: self.mem.iova + u64::from(index) * u64::from(self.buf_bytes),
            len_bytes: self.buf_bytes,
        })
    }

    /// Gives a buffer back. A buffer of another pool, or one given back twice, is refused
    /// (returns false) rather than corrupting the free list.
    pub fn put(&mut self, buf: DmaBuf) -> bool {
        if buf.index >= self.count
            || buf.iova != self.mem.iova + u64::from(buf.index) * u64::from(self.buf_bytes)
            || !self.in_use[buf.index as usize]
        {
            return false;
        }
        self.in_use[buf.index as usize] = false;
        self.free.push(buf.index);
        true
    }

    /// Buffers currently free.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    fn off(&self, buf: &DmaBuf, off: usize, len: usize) -> Result<usize, PcieError> {
        if buf.index >= self.count || off.checked_add(len).is_none_or(|e| e > self.buf_bytes as usize) {
            return Err(PcieError::Invalid(format!(
                "[{off}, +{len}) is outside a {}-byte pool buffer",
                self.buf_bytes
            )));
        }
        Ok(buf.index as usize * self.buf_bytes as usize + off)
    }

    /// Copies `src` into `buf` at `off`.
    pub fn write(&self, buf: &DmaBuf, off: usize, src: &[u8]) -> Result<(), PcieError> {
        let at = self.off(buf, off, src.len())?;
        self.mem.region.write(at, src);
        Ok(())
    }

    /// Copies bytes of `buf` at `off` into `dst`. Call after the read's completion was polled.
    pub fn read(&self, buf: &DmaBuf, off: usize, dst: &mut [u8]) -> Result<(), PcieError> {
        let at = self.off(buf, off, dst.len())?;
        self.mem.region.read(at, dst);
        Ok(())
    }

    /// Sets `len` bytes of `buf` at `off` to `byte`.
    pub fn fill(&self, buf: &DmaBuf, off: usize, len: usize, byte: u8) -> Result<(), PcieError> {
        let at = self.off(buf, off, len)?;
        self.mem.region.fill(at, len, byte);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Bump(Mutex<IovaAllocator>, Mutex<Vec<Arc<DmaRegion>>>);
    impl DmaMapper for Bump {
        fn map(&self, region: Arc<DmaRegion>) -> Result<u64, PcieError> {
            let iova = self.0.lock().unwrap().alloc(region.len() as u64)?;
            self.1.lock().unwrap().push(region);
            Ok(iova)
        }
    }

    #[test]
    fn pool_buffers_have_distinct_iovas_and_refuse_double_puts() {
        let m = Bump(Mutex::new(IovaAllocator::x86_default()), Mutex::new(Vec::new()));
        assert!(DmaPool::new(&m, 2, 1000).is_err());
        let mut p = DmaPool::new(&m, 3, 8192).unwrap();
        let (a, b, c) = (p.get().unwrap(), p.get().unwrap(), p.get().unwrap());
        assert!(p.get().is_none());
        assert_eq!(b.iova - a.iova, 8192);
        assert_eq!(c.iova - b.iova, 8192);
        p.write(&b, 8190, &[1, 2]).unwrap();
        assert!(p.write(&b, 8191, &[1, 2]).is_err());
        let mut two = [0u8; 2];
        p.read(&b, 8190, &mut two).unwrap();
        assert_eq!(two, [1, 2]);
        assert!(p.put(b));
        assert!(!p.put(b), "a second put is refused");
        let forged = DmaBuf { iova: a.iova + 1, ..a };
        assert!(!p.put(forged));
        assert_eq!(p.free_count(), 1);
        assert_eq!(p.get(), Some(b));
    }

    #[test]
    fn iova_allocator_skips_the_msi_window() {
        let mut a = IovaAllocator::x86_default();
        assert_eq!(a.alloc(1).unwrap(), IovaAllocator::BASE);
        assert_eq!(a.alloc(4096).unwrap(), IovaAllocator::BASE + 4096);
        let big = a.alloc(0xFEE0_0000 - 0x10_2000 - 4096).unwrap();
        assert_eq!(big, 0x10_2000);
        // Only one page is left below the window: a two-page request goes above it.
        assert_eq!(a.alloc(8192).unwrap(), 0xFEF0_0000);
        let mut tiny = IovaAllocator::new(vec![(0, 0x20_0000)]);
        tiny.alloc(0x10_0000).unwrap();
        assert!(tiny.alloc(1).is_err());
    }
}
