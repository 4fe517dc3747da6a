//! The crate's only `unsafe` code: device registers (BAR0 mmap, volatile 32/64-bit accesses), DMA
//! memory (anonymous mappings the device reads and writes), and the VFIO ioctls.
//!
//! Everything here is small and mechanical; every policy (what to map, which register to write,
//! when) lives in the safe modules above. Each `unsafe` block carries a `// SAFETY:` note.
//!
//! # Memory model of device-shared memory
//! A [`DmaRegion`] is an anonymous, page-aligned, zero-filled mapping that the device reaches by
//! IOVA once it is mapped with `VFIO_IOMMU_MAP_DMA`. The CPU never forms a Rust reference
//! (`&[u8]`) into it: every access goes through a raw pointer, bounds-checked against the
//! region, so the device writing at any moment cannot invalidate a reference the compiler
//! relies on. Fields the device writes while the CPU polls them (the CQE status word) are read
//! with `read_volatile`, so each poll really loads memory. Bulk data (a read buffer) is copied
//! only after its completion was seen, behind an acquire fence.
//!
//! Each sub-range of a region has one owner in the safe code above — the admin queues belong to
//! the controller, an I/O queue pair's queues and PRP pages to that queue pair, a pool buffer to
//! whoever took it from the pool — so two CPU threads never access the same bytes concurrently.
//! That ownership discipline, not the type system, is what keeps the `Sync` impl sound; the
//! accessors below are raw-pointer copies precisely so that no `&mut` aliasing is ever claimed.
//!
//! # Doorbell ordering
//! A submission is: copy the 64-byte SQE into the ring slot (plain stores to DMA memory), then
//! write the new tail to the SQ doorbell (an MMIO store). The device may fetch the SQE as soon
//! as it sees the doorbell, so the SQE stores must be globally visible first. [`Mmio::write32`]
//! issues a `Release` fence before the volatile store: the fence orders all earlier memory
//! stores of this thread before the later store. On x86-64 stores are not reordered with older
//! stores and uncached (UC) MMIO stores drain the store buffer, so the fence costs nothing at
//! run time but stops the compiler from sinking the SQE copy below the doorbell. On weakly
//! ordered CPUs the release fence is the `dmb ish`-class barrier the ordering needs. The same
//! fence orders "I consumed these CQEs" before the CQ head doorbell that lets the device reuse
//! those slots.
//!
//! On the completion side, [`DmaRegion::read_u16_volatile`] loads the CQE status word; when its
//! phase bit says "new", the caller issues an `Acquire` fence ([`acquire_fence`]) before reading
//! the rest of the CQE and the data buffer, so those loads cannot be satisfied earlier than the
//! phase check.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, Ordering};

/// Size of a CPU page and of the smallest IOMMU page.
pub const PAGE_BYTES: usize = 4096;

/// An acquire fence: call after a CQE's phase bit said "new" and before reading the entry or the
/// data buffer of its command.
#[inline]
pub fn acquire_fence() {
    fence(Ordering::Acquire);
}

// ------------------------------------------------------------------------------------------------
// BAR0 registers

/// A mapped device BAR (BAR0 of an NVMe function): 32/64-bit volatile register accesses at
/// checked offsets. Created by [`crate::vfio`] at attach; shared (`Arc`) by the controller and
/// every queue pair, whose reactors each write only their own doorbells.
pub struct Mmio {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is process-wide and not tied to a thread; every access is a volatile load
// or store of an aligned 32/64-bit word, which the device serialises per register. Two threads
// writing different doorbells (the design) touch different words.
unsafe impl Send for Mmio {}
// SAFETY: as above; `&Mmio` only offers volatile register accesses through raw pointers.
unsafe impl Sync for Mmio {}

impl Mmio {
    /// Maps `len` bytes of the device file `fd` at `offset` (a VFIO region) read-write, shared.
    pub fn map(fd: &File, offset: u64, len: usize) -> io::Result<Mmio> {
        if len == 0 || !len.is_multiple_of(8) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "BAR size is not a multiple of 8",
            ));
        }
        // SAFETY: mmap with a null hint creates a new mapping and touches no existing memory; the
        // fd is valid for the call (borrowed File). The result is checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmio { ptr: p.cast(), len })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: `map` refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: usize, width: usize) {
        assert!(
            off.is_multiple_of(width) && off.checked_add(width).is_some_and(|end| end <= self.len),
            "register access at {off:#x} (width {width}) outside the {:#x}-byte BAR or unaligned",
            self.len
        );
    }

    /// Volatile 32-bit read at `off`. Panics if `off` is unaligned or outside the BAR (a driver
    /// bug: offsets come from the spec's register map and checked queue ids).
    #[inline]
    pub fn read32(&self, off: usize) -> u32 {
        self.check(off, 4);
        // SAFETY: `check` proved [off, off+4) inside the live mapping and 4-aligned (the base is
        // page aligned); a volatile load of device memory has no other requirement.
        unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u32>()) }
    }

    /// Volatile 32-bit write at `off`, after a release fence (see the module doc: doorbell
    /// ordering). Panics as [`Mmio::read32`].
    #[inline]
    pub fn write32(&self, off: usize, v: u32) {
        self.check(off, 4);
        fence(Ordering::Release);
        // SAFETY: as in read32; the store goes to the device register at `off`.
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u32>(), v) }
    }

    /// 64-bit register read as two 32-bit reads, low first (CAP).
    pub fn read64(&self, off: usize) -> u64 {
        u64::from(self.read32(off)) | u64::from(self.read32(off + 4)) << 32
    }

    /// 64-bit register write as two 32-bit writes, low first (ASQ, ACQ), as nvme-pcie.md §2
    /// allows.
    pub fn write64(&self, off: usize, v: u64) {
        self.write32(off, v as u32);
        self.write32(off + 4, (v >> 32) as u32);
    }
}

impl Drop for Mmio {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; no reference into the mapping exists
        // (all accesses were raw-pointer copies), so unmapping cannot leave a dangling borrow.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// DMA memory

/// A page-aligned, zero-filled anonymous mapping the device reaches by IOVA. Accessed only
/// through the bounds-checked copies below (see the module doc for the ownership rule that
/// keeps concurrent use sound). Created at attach / queue-pair creation, never per I/O.
pub struct DmaRegion {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the region is plain anonymous memory; it may be used from any thread.
unsafe impl Send for DmaRegion {}
// SAFETY: `&DmaRegion` offers only raw-pointer copies into bounds-checked ranges, never a Rust
// reference into the memory; the safe layers give each sub-range a single owner (module doc), so
// no two threads race on the same bytes.
unsafe impl Sync for DmaRegion {}

impl DmaRegion {
    /// Allocates `len_bytes` (rounded up to whole pages) of zeroed memory, populated and excluded
    /// from fork (MADV_DONTFORK: a child must not get copy-on-write pages the IOMMU pins).
    pub fn alloc(len_bytes: usize) -> io::Result<DmaRegion> {
        let len = len_bytes
            .max(1)
            .checked_next_multiple_of(PAGE_BYTES)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "DMA region too large"))?;
        // SAFETY: an anonymous private mapping with a null hint creates fresh memory and touches
        // nothing existing; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: p/len is the mapping just created; madvise only changes fork behaviour.
        unsafe {
            libc::madvise(p, len, libc::MADV_DONTFORK);
        }
        Ok(DmaRegion { ptr: p.cast(), len })
    }

    /// Length in bytes (a multiple of [`PAGE_BYTES`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never: `alloc` rounds up to a page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The process virtual address of byte 0 (for VFIO_IOMMU_MAP_DMA's `vaddr`).
    pub fn vaddr(&self) -> u64 {
        self.ptr as u64
    }

    fn check(&self, off: usize, len: usize) {
        assert!(
            off.checked_add(len).is_some_and(|end| end <= self.len),
            "DMA access [{off:#x}, +{len:#x}) outside the {:#x}-byte region",
            self.len
        );
    }

    /// Copies `src` into the region at `off`. Panics if the range is outside the region.
    #[inline]
    pub fn write(&self, off: usize, src: &[u8]) {
        self.check(off, src.len());
        // SAFETY: the destination range is inside the live mapping (checked) and cannot overlap
        // `src`, a Rust slice, which never points into a DmaRegion (no references are handed
        // out).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(off), src.len()) }
    }

    /// Copies `dst.len()` bytes at `off` out of the region. Panics if outside.
    #[inline]
    pub fn read(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len());
        // SAFETY: as in `write`, with the roles swapped.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), dst.as_mut_ptr(), dst.len()) }
    }

    /// Sets `len` bytes at `off` to `byte`. Panics if outside.
    pub fn fill(&self, off: usize, len: usize, byte: u8) {
        self.check(off, len);
        // SAFETY: the range is inside the live mapping (checked).
        unsafe { std::ptr::write_bytes(self.ptr.add(off), byte, len) }
    }

    /// Volatile 16-bit little-endian load at `off` (the CQE status word the device writes while
    /// the CPU polls). Panics if outside or unaligned.
    #[inline]
    pub fn read_u16_volatile(&self, off: usize) -> u16 {
        self.check(off, 2);
        assert!(off.is_multiple_of(2), "unaligned 16-bit DMA load at {off:#x}");
        // SAFETY: in bounds and 2-aligned (page-aligned base); a volatile load of plain memory.
        u16::from_le(unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u16>()) })
    }

    /// Volatile 64-bit little-endian store at `off` (a PRP list entry). Panics if outside or
    /// unaligned.
    #[inline]
    pub fn write_u64(&self, off: usize, v: u64) {
        self.check(off, 8);
        assert!(off.is_multiple_of(8), "unaligned 64-bit DMA store at {off:#x}");
        // SAFETY: in bounds and 8-aligned; a store to plain memory.
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u64>(), v.to_le()) }
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // SAFETY: ptr/len are what mmap returned; no reference into it exists. The owner (the
        // VFIO container) unmaps the IOVA before the last Arc to the region drops.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// VFIO ioctls (include/uapi/linux/vfio.h; nvme-pcie.md §9.2–9.3)

const VFIO_TYPE: libc::c_ulong = b';' as libc::c_ulong;
const fn io(nr: libc::c_ulong) -> libc::c_ulong {
    // _IO(type, nr): no size, no direction bits.
    (VFIO_TYPE << 8) | nr
}
/// VFIO_GET_API_VERSION.
pub const GET_API_VERSION: libc::c_ulong = io(100);
/// VFIO_CHECK_EXTENSION.
pub const CHECK_EXTENSION: libc::c_ulong = io(101);
/// VFIO_SET_IOMMU.
pub const SET_IOMMU: libc::c_ulong = io(102);
/// VFIO_GROUP_GET_STATUS.
pub const GROUP_GET_STATUS: libc::c_ulong = io(103);
/// VFIO_GROUP_SET_CONTAINER.
pub const GROUP_SET_CONTAINER: libc::c_ulong = io(104);
/// VFIO_GROUP_GET_DEVICE_FD.
pub const GROUP_GET_DEVICE_FD: libc::c_ulong = io(106);
/// VFIO_DEVICE_GET_INFO.
pub const DEVICE_GET_INFO: libc::c_ulong = io(107);
/// VFIO_DEVICE_GET_REGION_INFO.
pub const DEVICE_GET_REGION_INFO: libc::c_ulong = io(108);
/// VFIO_DEVICE_RESET.
pub const DEVICE_RESET: libc::c_ulong = io(111);
/// VFIO_IOMMU_MAP_DMA.
pub const IOMMU_MAP_DMA: libc::c_ulong = io(113);
/// VFIO_IOMMU_UNMAP_DMA.
pub const IOMMU_UNMAP_DMA: libc::c_ulong = io(114);

const _: () = assert!(GET_API_VERSION == 0x3B64 && GROUP_GET_DEVICE_FD == 0x3B6A && IOMMU_UNMAP_DMA == 0x3B72);

/// struct vfio_group_status.
#[repr(C)]
#[derive(Default)]
pub struct GroupStatus {
    /// sizeof.
    pub argsz: u32,
    /// VIABLE 1, CONTAINER_SET 2.
    pub flags: u32,
}

/// struct vfio_device_info.
#[repr(C)]
#[derive(Default)]
pub struct DeviceInfo {
    /// sizeof.
    pub argsz: u32,
    /// RESET 1, PCI 2.
    pub flags: u32,
    /// Regions (BARs, ROM, config, VGA).
    pub num_regions: u32,
    /// IRQ indexes.
    pub num_irqs: u32,
    /// Capability chain offset.
    pub cap_offset: u32,
    /// Padding.
    pub pad: u32,
}

/// struct vfio_region_info.
#[repr(C)]
#[derive(Default)]
pub struct RegionInfo {
    /// sizeof.
    pub argsz: u32,
    /// READ 1, WRITE 2, MMAP 4, CAPS 8.
    pub flags: u32,
    /// Region index (0 = BAR0, 7 = config).
    pub index: u32,
    /// Capability chain offset.
    pub cap_offset: u32,
    /// Region size in bytes.
    pub size: u64,
    /// Offset of the region in the device fd.
    pub offset: u64,
}

/// struct vfio_iommu_type1_dma_map.
#[repr(C)]
#[derive(Default)]
pub struct DmaMap {
    /// sizeof.
    pub argsz: u32,
    /// READ 1 | WRITE 2.
    pub flags: u32,
    /// Process virtual address.
    pub vaddr: u64,
    /// Device address.
    pub iova: u64,
    /// Bytes.
    pub size: u64,
}

/// struct vfio_iommu_type1_dma_unmap (without the trailing data[]).
#[repr(C)]
#[derive(Default)]
pub struct DmaUnmap {
    /// sizeof.
    pub argsz: u32,
    /// 0.
    pub flags: u32,
    /// Device address.
    pub iova: u64,
    /// Bytes (written back: bytes unmapped).
    pub size: u64,
}

const _: () = assert!(
    std::mem::size_of::<GroupStatus>() == 8
        && std::mem::size_of::<DeviceInfo>() == 24
        && std::mem::size_of::<RegionInfo>() == 32
        && std::mem::size_of::<DmaMap>() == 32
        && std::mem::size_of::<DmaUnmap>() == 24
);

/// Marker for the `#[repr(C)]` argument structs above: plain integers, any bit pattern valid.
pub trait IoctlArg {}
impl IoctlArg for GroupStatus {}
impl IoctlArg for DeviceInfo {}
impl IoctlArg for RegionInfo {}
impl IoctlArg for DmaMap {}
impl IoctlArg for DmaUnmap {}
impl IoctlArg for i32 {}

/// `ioctl(fd, req, arg)` with an integer argument; returns the non-negative result.
pub fn ioctl_value(fd: RawFd, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: the requests used with this function (API version, check extension, set IOMMU,
    // device reset) take an integer, not a pointer; the kernel validates the fd.
    let r = unsafe { libc::ioctl(fd, req, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `ioctl(fd, req, &mut arg)` for one of the VFIO argument structs; returns the result.
pub fn ioctl_struct<T: IoctlArg>(fd: RawFd, req: libc::c_ulong, arg: &mut T) -> io::Result<i32> {
    // SAFETY: `arg` is a live, exclusively borrowed #[repr(C)] struct whose layout matches the
    // uapi struct of `req` (sizes asserted above; argsz set by the caller), so the kernel reads
    // and writes only within it; any bit pattern it writes is a valid value of the integers.
    let r = unsafe { libc::ioctl(fd, req, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// VFIO_GROUP_GET_DEVICE_FD: the device fd of `name` ("0000:00:04.0") in the group `group`.
pub fn group_get_device_fd(group: &File, name: &str) -> io::Result<File> {
    let c = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in device name"))?;
    // SAFETY: the argument is a NUL-terminated string that lives across the call; the kernel
    // only reads it.
    let r = unsafe { libc::ioctl(group.as_raw_fd(), GROUP_GET_DEVICE_FD, c.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: on success the ioctl returned a new fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(r) })
}

/// The soft RLIMIT_MEMLOCK in bytes (`None` = unlimited).
pub fn memlock_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the live, exclusively borrowed struct.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } == 0;
    if !ok || r.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        Some(r.rlim_cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dma_region_copies_and_bounds() {
        let r = DmaRegion::alloc(100).unwrap();
        assert_eq!(r.len(), PAGE_BYTES);
        assert_eq!(r.vaddr() % PAGE_BYTES as u64, 0);
        r.write(10, &[1, 2, 3]);
        let mut b = [0u8; 5];
        r.read(9, &mut b);
        assert_eq!(b, [0, 1, 2, 3, 0]);
        r.write_u64(16, 0x0102_0304_0506_0708);
        assert_eq!(r.read_u16_volatile(16), 0x0708);
        r.fill(16, 8, 0);
        assert_eq!(r.read_u16_volatile(16), 0);
        let out = std::panic::catch_unwind(|| r.write(PAGE_BYTES - 1, &[0, 0]));
        assert!(out.is_err(), "a write past the end must be refused");
    }
}
