//! Shared RAM: the memory of a RAM disk (the malloc bdev), which every core copies in and out
//! of at memory speed, without locks, and without a data race in Rust's sense.
//!
//! # The memory
//!
//! A [`Ram`] is an anonymous private mapping, its start aligned to 2 MiB and its length rounded
//! up to 2 MiB, advised `MADV_HUGEPAGE` once populated (below): where transparent huge pages are enabled (`always` or
//! `madvise` in `/sys/kernel/mm/transparent_hugepage/enabled`) the kernel backs it with 2 MiB
//! pages, so a random block costs no page walk — a 256 MiB disk is 128 TLB entries instead of
//! 65,536. Where THP is `never` (or not built) the advice is ignored and the disk runs on 4 KiB
//! pages: correct, but random copies out of a disk much larger than the TLB's reach then pay a
//! page walk each (about 25 % slower on the machines of `BENCHMARKS.md`); [`Ram::pages`] says
//! which policy the kernel reported. Nothing is written at creation: untouched anonymous memory
//! reads as zeros (the kernel maps its shared zero page) and is allocated by the kernel, one
//! page at a time, on the first write to it. Creating a 16 GiB disk therefore costs a few
//! system calls. `MADV_DONTDUMP` keeps the disk out of core dumps.
//!
//! # Populated in the background, not on the reactor
//!
//! Left lazy, the first write to each page would fault on the reactor that does it — and a
//! huge-page fault in a `MADV_HUGEPAGE` range zeroes 2 MiB and, with the kernel's `defrag`
//! setting `madvise` (the default), first compacts memory to find a free 2 MiB page, which on a
//! busy machine with a large page cache stalls for milliseconds: measured on the bench machine
//! under load, a fresh 1 GiB disk ran random writes at a few hundred IOPS for its first
//! seconds. So the huge-page advice is not given at creation. Instead every disk gets a
//! **populator** thread that, off the reactors:
//!
//! 1. allocates the disk in 4 KiB pages, 2 MiB at a time (`MADV_POPULATE_WRITE`, Linux 5.14+:
//!    it allocates without changing what the disk holds, so a block a reactor already wrote
//!    keeps its data). A write that overtakes it costs a 4 KiB fault, a few microseconds;
//! 2. then, where THP is enabled, advises `MADV_HUGEPAGE` and collapses each 2 MiB into a huge
//!    page (`MADV_COLLAPSE`, Linux 6.1+; the kernel copies the small pages into the huge one and
//!    swaps the mapping atomically, so concurrent I/O stays correct). Any compaction stall is
//!    the populator's. Where `MADV_COLLAPSE` is missing, khugepaged collapses the advised range
//!    later on its own.
//!
//! Creation still returns at once. The memory budget of the malloc module reserved the whole
//! size, so populating uses nothing that was not promised. Where the kernel lacks
//! `MADV_POPULATE_WRITE` the populator stops and the disk is faulted in as written. Dropping the
//! disk stops its populator (after its current step) before the mapping goes. A whole 2 MiB
//! chunk handed back by an unmap (below) faults back in as a huge page on its next write, on the
//! writing core: that is the one reactor fault left.

//! # Why copies into shared memory are not data races
//!
//! Two cores may read and write the same block at the same time (a disk does not serialise its
//! users; the stack above orders what must be ordered). In Rust, two accesses of the abstract
//! machine to the same bytes, at least one a write, not both atomic and not ordered by
//! synchronisation, are a data race: undefined behaviour, whatever the hardware does. So the
//! disk's bytes are **never accessed by Rust code**: no `&[u8]` or `&mut [u8]` of them is ever
//! made, and no Rust load or store touches them. `Ram` holds only the mapping's address.
//!
//! * On x86-64 every access to the disk is an `asm!` block (the copy and zero kernels of this
//!   module). An `asm!` block is opaque to the compiler, like a call into foreign code: the
//!   compiler assumes it may read and write any memory the program could reach, and makes no
//!   assumption about what the disk holds before or after it. Rust's memory model speaks about
//!   the accesses the abstract machine performs; memory that only such blocks touch is, to it,
//!   like memory shared with another process or written by a device — what concurrent
//!   accesses produce is defined by the hardware (x86-TSO: a read racing a write sees, for each
//!   byte, the old or the new value; racing writes leave some mix of them, as on a real disk).
//!   The request's own buffer, the other side of the copy, is an ordinary Rust slice borrowed
//!   for the duration of the call, so no Rust access races with the block there either.
//! * Elsewhere the portable kernels access the disk only with relaxed atomic loads and stores
//!   (`AtomicU64::from_ptr`), which are never data races. There is no inline assembly for
//!   other architectures yet; the atomic copy is correct but not vectorised.
//!
//! Stores of a block become visible to other cores in the order the hardware gives: ordinary
//! x86 stores in program order; the non-temporal stores used for large disks end with an
//! `sfence`, so everything written is globally visible before the request completes (and the
//! completion travels by a release/acquire queue).
//!
//! # Kernels
//!
//! Chosen once per disk, by runtime CPU detection: AVX2 (32-byte loads and stores, 128 bytes
//! per loop turn), else SSE2 (16-byte, 64 per turn; every x86-64 has it), else the portable
//! atomic copy. Writes into a disk larger than the last-level cache use non-temporal stores
//! (`vmovntdq`/`movntdq`): a random block of such a disk is unlikely to be read again while it
//! is still cached, and streaming stores skip the read-for-ownership of the destination's
//! cache lines (about 1.5× the write rate of ordinary stores on the bench machine). Reads use
//! ordinary stores: they fill the caller's buffer, which the caller is about to use. Tails (a
//! length that is not a multiple of the loop's step) are finished with `rep movsb` /
//! `rep stosb`. No kernel allocates or locks.
//!
//! Zeroing a range (unmap, write_zeroes) stores zeros, except that whole 2 MiB-aligned chunks
//! inside the range are handed back to the kernel (`MADV_DONTNEED`): they read as zeros
//! afterwards, cost nothing until written again, and a large unmap does not spend the core's
//! time writing gigabytes of zeros.
#![allow(unsafe_code)]

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Alignment and length granule of the mapping: one x86-64 / arm64 transparent huge page.
pub(crate) const HUGE_PAGE_BYTES: usize = 2 << 20;

/// The page policy the kernel reported for a [`Ram`] (from `MADV_HUGEPAGE`'s result and the
/// THP mode in sysfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pages {
    /// THP is `always` or `madvise`: the disk is backed by 2 MiB pages as it is written (when
    /// the kernel finds free huge pages; it falls back to 4 KiB pages otherwise).
    Huge,
    /// THP is `never` or not built in: 4 KiB pages.
    Small,
}

impl Pages {
    /// For logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Pages::Huge => "2 MiB (transparent huge pages)",
            Pages::Small => "4 KiB (transparent huge pages disabled)",
        }
    }
}

/// Which copy kernel a disk uses (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Sse2,
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    Portable,
}

impl Kernel {
    fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
            Kernel::Sse2
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Kernel::Portable
        }
    }

    fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Kernel::Sse2 => "sse2",
            Kernel::Portable => "portable",
        }
    }
}

/// A RAM disk's memory: a mapping of `len_bytes` (module docs). `Send + Sync`: every core
/// copies in and out of it through the methods below, concurrently. Owned by the disk's
/// backend and channels (`Arc<Ram>`); unmapped when the last owner drops it.
pub(crate) struct Ram {
    base: NonNull<u8>,
    len_bytes: usize,
    map_len_bytes: usize,
    kernel: Kernel,
    /// Writes use non-temporal stores (the disk is larger than the last-level cache).
    streaming_writes: bool,
    pages: Pages,
    /// The background populator (module docs) and its stop flag.
    populator: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

// SAFETY: `Ram` owns its mapping (nothing else unmaps it) and never hands out references to its
// bytes; every access goes through the kernels of this module, which are sound under concurrent
// use from any thread (module docs).
unsafe impl Send for Ram {}
// SAFETY: as above: shared use from several threads is what the kernels are built for.
unsafe impl Sync for Ram {}

impl Ram {
    /// Maps `len_bytes` (> 0) of zeroed memory, aligned and advised as the module docs say. No
    /// byte is touched: this is fast at any size. Control path (creation).
    pub(crate) fn new(len_bytes: usize) -> io::Result<Ram> {
        if len_bytes == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let map_len_bytes = len_bytes
            .checked_next_multiple_of(HUGE_PAGE_BYTES)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let over = map_len_bytes
            .checked_add(HUGE_PAGE_BYTES)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing: it
        // aliases nothing.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                over,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Trim the over-mapping so the disk starts on a huge-page boundary.
        let raw_addr = raw as usize;
        let base_addr = raw_addr.next_multiple_of(HUGE_PAGE_BYTES);
        let head = base_addr - raw_addr;
        let tail = over - head - map_len_bytes;
        // SAFETY: both ranges lie inside the mapping just made, outside what we keep, and are
        // referenced by nothing.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((base_addr + map_len_bytes) as *mut libc::c_void, tail);
            }
        }
        let base = base_addr as *mut u8;
        // SAFETY: advice on our own mapping; it does not change its contents.
        unsafe { libc::madvise(base.cast(), map_len_bytes, libc::MADV_DONTDUMP) };
        let pages = if thp_enabled() { Pages::Huge } else { Pages::Small };
        let stop = Arc::new(AtomicBool::new(false));
        let populator =
            spawn_populator(base_addr, map_len_bytes, pages == Pages::Huge, stop.clone()).map(|h| (stop, h));
        Ok(Ram {
            base: NonNull::new(base).expect("mmap returned a non-null address"),
            len_bytes,
            map_len_bytes,
            kernel: Kernel::detect(),
            streaming_writes: len_bytes > last_level_cache_bytes(),
            pages,
            populator,
        })
    }

    /// The page policy the kernel reported at creation.
    pub(crate) fn pages(&self) -> Pages {
        self.pages
    }

    /// The copy kernel in use and whether writes stream (for logs).
    pub(crate) fn kernel_name(&self) -> &'static str {
        match (self.kernel.name(), self.streaming_writes) {
            ("avx2", true) => "avx2, streaming writes",
            ("sse2", true) => "sse2, streaming writes",
            (name, _) => name,
        }
    }

    /// Panics unless `[pos, pos + len)` lies inside the disk: a range check the callers (the
    /// bdev layer validated the request) never fail, kept because the kernels trust it.
    #[inline(always)]
    fn check(&self, pos_bytes: u64, len_bytes: usize) -> *mut u8 {
        let end = pos_bytes.checked_add(len_bytes as u64);
        assert!(
            end.is_some_and(|e| e <= self.len_bytes as u64),
            "RAM access [{pos_bytes}, +{len_bytes}) outside a {}-byte disk",
            self.len_bytes
        );
        self.base.as_ptr().wrapping_add(pos_bytes as usize)
    }

    /// Copies `dst.len()` bytes from the disk at byte `pos_bytes` into `dst`. Any core, any
    /// time, concurrently with any other access (module docs). Panics if the range leaves the
    /// disk.
    #[inline]
    pub(crate) fn read(&self, pos_bytes: u64, dst: &mut [u8]) {
        let src = self.check(pos_bytes, dst.len());
        // SAFETY: `src` covers `dst.len()` bytes of our mapping (checked), `dst` is an exclusive
        // borrow of that many bytes, and they cannot overlap (the disk is never a Rust slice).
        unsafe { copy(self.kernel, false, dst.as_mut_ptr(), src, dst.len()) }
    }

    /// Copies `src` into the disk at byte `pos_bytes`. Any core, any time, concurrently with any
    /// other access (module docs). Panics if the range leaves the disk.
    #[inline]
    pub(crate) fn write(&self, pos_bytes: u64, src: &[u8]) {
        let dst = self.check(pos_bytes, src.len());
        // SAFETY: as in `read`, with the roles swapped.
        unsafe { copy(self.kernel, self.streaming_writes, dst, src.as_ptr(), src.len()) }
    }

    /// Zeroes `len_bytes` of the disk from byte `pos_bytes` (whole 2 MiB-aligned chunks by
    /// handing them back to the kernel, the rest by storing zeros). Any core, concurrently with
    /// any other access. Panics if the range leaves the disk.
    pub(crate) fn zero(&self, pos_bytes: u64, len_bytes: u64) {
        let len = usize::try_from(len_bytes).expect("zero length fits the address space");
        let start = self.check(pos_bytes, len);
        let (s, e) = (start as usize, start as usize + len);
        let (hs, he) = (
            s.next_multiple_of(HUGE_PAGE_BYTES),
            e / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES,
        );
        if hs < he {
            // SAFETY: [hs, he) lies inside our private anonymous mapping; MADV_DONTNEED makes it
            // read as zeros from now on. Concurrent accesses by other cores see old bytes or zeros,
            // never a fault: the mapping itself stays.
            let r = unsafe { libc::madvise(hs as *mut libc::c_void, he - hs, libc::MADV_DONTNEED) };
            if r == 0 {
                // SAFETY: the two edges lie inside the checked range.
                unsafe {
                    zero(self.kernel, start, hs - s);
                    zero(self.kernel, he as *mut u8, e - he);
                }
                return;
            }
        }
        // SAFETY: the checked range of our mapping.
        unsafe { zero(self.kernel, start, len) }
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // The populator must not touch the range once it is unmapped (the kernel could reuse
        // the addresses for another mapping).
        if let Some((stop, handle)) = self.populator.take() {
            stop.store(true, Ordering::Release);
            let _ = handle.join();
        }
        // SAFETY: the mapping is ours; every channel and backend holding this `Ram` is gone.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len_bytes) };
    }
}

impl std::fmt::Debug for Ram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ram")
            .field("len_bytes", &self.len_bytes)
            .field("kernel", &self.kernel_name())
            .field("pages", &self.pages)
            .finish()
    }
}

/// `MADV_COLLAPSE` (Linux 6.1, uapi value; not in the libc crate yet).
const MADV_COLLAPSE: libc::c_int = 25;

/// Starts the populator of the mapping `[base_addr, base_addr + map_len_bytes)` (module docs);
/// `None` if no thread could be started (the disk then stays lazy).
fn spawn_populator(
    base_addr: usize,
    map_len_bytes: usize,
    huge: bool,
    stop: Arc<AtomicBool>,
) -> Option<JoinHandle<()>> {
    // One `madvise` over each 2 MiB step, stopping at the first refusal or when told to.
    let each_step = move |advice: libc::c_int, stop: &AtomicBool| -> io::Result<()> {
        let mut off = 0;
        while off < map_len_bytes && !stop.load(Ordering::Acquire) {
            let step = HUGE_PAGE_BYTES.min(map_len_bytes - off);
            // SAFETY: the range lies inside the mapping, which stays mapped until `Ram::drop` has
            // stopped and joined this thread; these advices do not change the contents.
            let r = unsafe { libc::madvise((base_addr + off) as *mut libc::c_void, step, advice) };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            off += step;
        }
        Ok(())
    };
    std::thread::Builder::new()
        .name("keel-ram-populate".into())
        .spawn(move || {
            if let Err(e) = each_step(libc::MADV_POPULATE_WRITE, &stop) {
                // EINVAL: a kernel before 5.14; ENOMEM: memory pressure. The rest is faulted in
                // as written.
                tracing::debug!(error = %e, "ram populator stops; the rest of the disk is allocated as written");
                return;
            }
            if !huge || stop.load(Ordering::Acquire) {
                return;
            }
            // SAFETY: advice on the mapping (alive as above); it does not change the contents.
            unsafe { libc::madvise(base_addr as *mut libc::c_void, map_len_bytes, libc::MADV_HUGEPAGE) };
            if let Err(e) = each_step(MADV_COLLAPSE, &stop) {
                tracing::debug!(error = %e, "ram populator leaves the huge-page collapse to khugepaged");
            }
        })
        .ok()
}

/// Whether THP is `always` or `madvise` (sysfs); false when the file is missing.
fn thp_enabled() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
}

/// The last-level cache's size: the largest cache of CPU 0 in sysfs; 32 MiB if unknown.
fn last_level_cache_bytes() -> usize {
    const UNKNOWN: usize = 32 << 20;
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache") else {
        return UNKNOWN;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("size")).ok())
        .filter_map(|s| {
            let s = s.trim();
            let (digits, mult) = match s.strip_suffix('K') {
                Some(d) => (d, 1 << 10),
                None => match s.strip_suffix('M') {
                    Some(d) => (d, 1 << 20),
                    None => (s, 1),
                },
            };
            digits.parse::<usize>().ok().map(|n| n * mult)
        })
        .max()
        .unwrap_or(UNKNOWN)
}

// ---------------------------------------------------------------------------------------------
// Kernels. Every function below is `unsafe`: the caller guarantees that `dst` and `src` are
// valid for `len` bytes and do not overlap, and that whichever of them is Rust memory is
// borrowed by the caller for the call (module docs).
// ---------------------------------------------------------------------------------------------

/// Copies `len` bytes with `kernel`; `streaming` asks for non-temporal stores (used when `dst`
/// is suitably aligned).
#[inline(always)]
unsafe fn copy(kernel: Kernel, streaming: bool, dst: *mut u8, src: *const u8, len: usize) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 was detected at run time; the pointer contract is the caller's.
        Kernel::Avx2 => unsafe {
            if streaming && (dst as usize).is_multiple_of(32) {
                x86::copy_avx2_nt(dst, src, len)
            } else {
                x86::copy_avx2(dst, src, len)
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSE2 is part of x86-64; the pointer contract is the caller's.
        Kernel::Sse2 => unsafe {
            if streaming && (dst as usize).is_multiple_of(16) {
                x86::copy_sse2_nt(dst, src, len)
            } else {
                x86::copy_sse2(dst, src, len)
            }
        },
        // SAFETY: the caller's pointer contract.
        Kernel::Portable => unsafe { portable::copy(dst, src, len) },
    }
}

/// Zeroes `len` bytes at `dst` (disk memory).
#[inline]
unsafe fn zero(kernel: Kernel, dst: *mut u8, len: usize) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's pointer contract.
        Kernel::Avx2 | Kernel::Sse2 => unsafe { x86::zero(dst, len) },
        // SAFETY: the caller's pointer contract.
        Kernel::Portable => unsafe { portable::zero(dst, len) },
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The x86-64 kernels: each one `asm!` block, so every access to disk memory is made by
    //! instructions the compiler does not see (module docs). `rep movsb`/`rep stosb` need the
    //! direction flag clear, which the ABI guarantees on entry to an `asm!` block.

    use std::arch::asm;

    /// AVX2: 128 bytes per turn through ymm0-3 with unaligned loads and stores, the tail with
    /// `rep movsb`; `vzeroupper` at the end (no AVX-SSE transition penalty for the caller).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn copy_avx2(dst: *mut u8, src: *const u8, len: usize) {
        // SAFETY: the module contract: `dst`/`src` valid for `len` bytes, not overlapping.
        unsafe {
            asm!(
                "cmp rcx, 128",
                "jb 3f",
                "2:",
                "vmovdqu ymm0, ymmword ptr [rsi]",
                "vmovdqu ymm1, ymmword ptr [rsi + 32]",
                "vmovdqu ymm2, ymmword ptr [rsi + 64]",
                "vmovdqu ymm3, ymmword ptr [rsi + 96]",
                "vmovdqu ymmword ptr [rdi], ymm0",
                "vmovdqu ymmword ptr [rdi + 32], ymm1",
                "vmovdqu ymmword ptr [rdi + 64], ymm2",
                "vmovdqu ymmword ptr [rdi + 96], ymm3",
                "add rsi, 128",
                "add rdi, 128",
                "sub rcx, 128",
                "cmp rcx, 128",
                "jae 2b",
                "3:",
                "rep movsb",
                "vzeroupper",
                inout("rdi") dst => _,
                inout("rsi") src => _,
                inout("rcx") len => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                options(nostack),
            );
        }
    }

    /// AVX2 with non-temporal stores (`dst` 32-byte aligned), then `sfence`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn copy_avx2_nt(dst: *mut u8, src: *const u8, len: usize) {
        debug_assert_eq!(dst as usize % 32, 0);
        // SAFETY: the module contract, and `dst` is 32-byte aligned as vmovntdq requires (the
        // pointer advances in steps of 128).
        unsafe {
            asm!(
                "cmp rcx, 128",
                "jb 3f",
                "2:",
                "vmovdqu ymm0, ymmword ptr [rsi]",
                "vmovdqu ymm1, ymmword ptr [rsi + 32]",
                "vmovdqu ymm2, ymmword ptr [rsi + 64]",
                "vmovdqu ymm3, ymmword ptr [rsi + 96]",
                "vmovntdq ymmword ptr [rdi], ymm0",
                "vmovntdq ymmword ptr [rdi + 32], ymm1",
                "vmovntdq ymmword ptr [rdi + 64], ymm2",
                "vmovntdq ymmword ptr [rdi + 96], ymm3",
                "add rsi, 128",
                "add rdi, 128",
                "sub rcx, 128",
                "cmp rcx, 128",
                "jae 2b",
                "3:",
                "rep movsb",
                "sfence",
                "vzeroupper",
                inout("rdi") dst => _,
                inout("rsi") src => _,
                inout("rcx") len => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                options(nostack),
            );
        }
    }

    /// SSE2: 64 bytes per turn through xmm0-3, the tail with `rep movsb`.
    pub(super) unsafe fn copy_sse2(dst: *mut u8, src: *const u8, len: usize) {
        // SAFETY: the module contract.
        unsafe {
            asm!(
                "cmp rcx, 64",
                "jb 3f",
                "2:",
                "movdqu xmm0, xmmword ptr [rsi]",
                "movdqu xmm1, xmmword ptr [rsi + 16]",
                "movdqu xmm2, xmmword ptr [rsi + 32]",
                "movdqu xmm3, xmmword ptr [rsi + 48]",
                "movdqu xmmword ptr [rdi], xmm0",
                "movdqu xmmword ptr [rdi + 16], xmm1",
                "movdqu xmmword ptr [rdi + 32], xmm2",
                "movdqu xmmword ptr [rdi + 48], xmm3",
                "add rsi, 64",
                "add rdi, 64",
                "sub rcx, 64",
                "cmp rcx, 64",
                "jae 2b",
                "3:",
                "rep movsb",
                inout("rdi") dst => _,
                inout("rsi") src => _,
                inout("rcx") len => _,
                out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                options(nostack),
            );
        }
    }

    /// SSE2 with non-temporal stores (`dst` 16-byte aligned), then `sfence`.
    pub(super) unsafe fn copy_sse2_nt(dst: *mut u8, src: *const u8, len: usize) {
        debug_assert_eq!(dst as usize % 16, 0);
        // SAFETY: the module contract, and `dst` is 16-byte aligned as movntdq requires.
        unsafe {
            asm!(
                "cmp rcx, 64",
                "jb 3f",
                "2:",
                "movdqu xmm0, xmmword ptr [rsi]",
                "movdqu xmm1, xmmword ptr [rsi + 16]",
                "movdqu xmm2, xmmword ptr [rsi + 32]",
                "movdqu xmm3, xmmword ptr [rsi + 48]",
                "movntdq xmmword ptr [rdi], xmm0",
                "movntdq xmmword ptr [rdi + 16], xmm1",
                "movntdq xmmword ptr [rdi + 32], xmm2",
                "movntdq xmmword ptr [rdi + 48], xmm3",
                "add rsi, 64",
                "add rdi, 64",
                "sub rcx, 64",
                "cmp rcx, 64",
                "jae 2b",
                "3:",
                "rep movsb",
                "sfence",
                inout("rdi") dst => _,
                inout("rsi") src => _,
                inout("rcx") len => _,
                out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                options(nostack),
            );
        }
    }

    /// `rep stosb` of zeros.
    pub(super) unsafe fn zero(dst: *mut u8, len: usize) {
        // SAFETY: the module contract.
        unsafe {
            asm!(
                "rep stosb",
                inout("rdi") dst => _,
                inout("rcx") len => _,
                in("al") 0u8,
                options(nostack),
            );
        }
    }
}

mod portable {
    //! The portable kernels: relaxed atomic accesses to disk memory (bytes up to the first
    //! 8-byte boundary, then 64-bit words, then bytes), plain accesses to the caller's buffer.

    use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

    /// Copies `len` bytes; whichever of `dst`/`src` is disk memory is accessed atomically (both
    /// are, which costs nothing extra and spares a flag).
    pub(super) unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
        let mut i = 0;
        // SAFETY (whole body): the module contract makes every offset below `len` valid in both
        // buffers; atomic views of disk bytes are sound because disk memory is only ever
        // accessed atomically on this architecture, and `from_ptr` gets aligned pointers (bytes
        // have no alignment; words are taken only once `dst + i` is 8-aligned and `src + i` is
        // too).
        unsafe {
            let words = (dst as usize).wrapping_sub(src as usize).is_multiple_of(8);
            while i < len && (!words || !(dst as usize + i).is_multiple_of(8)) {
                let b = AtomicU8::from_ptr(src.add(i) as *mut u8).load(Ordering::Relaxed);
                AtomicU8::from_ptr(dst.add(i)).store(b, Ordering::Relaxed);
                i += 1;
            }
            while words && i + 8 <= len {
                let w = AtomicU64::from_ptr(src.add(i) as *mut u64).load(Ordering::Relaxed);
                AtomicU64::from_ptr(dst.add(i) as *mut u64).store(w, Ordering::Relaxed);
                i += 8;
            }
            while i < len {
                let b = AtomicU8::from_ptr(src.add(i) as *mut u8).load(Ordering::Relaxed);
                AtomicU8::from_ptr(dst.add(i)).store(b, Ordering::Relaxed);
                i += 1;
            }
        }
    }

    /// Zeroes `len` bytes of disk memory with atomic stores.
    pub(super) unsafe fn zero(dst: *mut u8, len: usize) {
        let mut i = 0;
        // SAFETY: as in `copy`.
        unsafe {
            while i < len && !(dst as usize + i).is_multiple_of(8) {
                AtomicU8::from_ptr(dst.add(i)).store(0, Ordering::Relaxed);
                i += 1;
            }
            while i + 8 <= len {
                AtomicU64::from_ptr(dst.add(i) as *mut u64).store(0, Ordering::Relaxed);
                i += 8;
            }
            while i < len {
                AtomicU8::from_ptr(dst.add(i)).store(0, Ordering::Relaxed);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    /// Every kernel this CPU can run, each with and without streaming stores.
    fn kernels() -> Vec<(Kernel, bool)> {
        let mut v = vec![(Kernel::Portable, false)];
        #[cfg(target_arch = "x86_64")]
        {
            v.extend([(Kernel::Sse2, false), (Kernel::Sse2, true)]);
            if std::arch::is_x86_feature_detected!("avx2") {
                v.extend([(Kernel::Avx2, false), (Kernel::Avx2, true)]);
            }
        }
        v
    }

    /// Writes racing the populator (both its allocation and its huge-page collapse) keep their
    /// data, and the populator finishes.
    #[test]
    fn writes_racing_the_populator_keep_their_data() {
        let mut ram = Ram::new(64 << 20).unwrap();
        let blocks: Vec<u64> = (0..64u64).map(|i| (i * 1_000_003 * 4096) % (64 << 20)).collect();
        for (i, &pos) in blocks.iter().enumerate() {
            ram.write(pos, &pattern(4096, i as u8));
        }
        let (stop, handle) = ram.populator.take().expect("a populator runs");
        handle.join().unwrap();
        assert!(!stop.load(Ordering::Acquire));
        for (i, &pos) in blocks.iter().enumerate() {
            let mut back = vec![0u8; 4096];
            ram.read(pos, &mut back);
            assert_eq!(back, pattern(4096, i as u8), "block at {pos}");
        }
        let mut z = vec![0xffu8; 4096];
        ram.read(4096 * 7, &mut z);
        assert!(z.iter().all(|&b| b == 0));
    }

    #[test]
    fn fresh_memory_reads_zero_and_is_huge_page_aligned() {
        let ram = Ram::new(3 << 20).unwrap();
        assert_eq!(ram.base.as_ptr() as usize % HUGE_PAGE_BYTES, 0);
        assert_eq!(ram.map_len_bytes, 4 << 20);
        let mut buf = vec![0xffu8; 4096];
        ram.read((3 << 20) - 4096, &mut buf);
        assert!(buf.iter().all(|&b| b == 0));
        assert!(Ram::new(0).is_err());
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn access_outside_the_disk_panics() {
        let ram = Ram::new(4096).unwrap();
        ram.write(4090, &[1u8; 8]);
    }

    proptest! {
        /// Any kernel, any window (alignment and length), both directions: bytes round-trip and
        /// nothing around the window changes.
        #[test]
        fn kernels_copy_exactly_the_window(pos in 0u64..8192, len in 0usize..1200, seed: u8, which in 0usize..5) {
            let all = kernels();
            let (kernel, streaming) = all[which % all.len()];
            let mut ram = Ram::new(16384).unwrap();
            ram.kernel = kernel;
            ram.streaming_writes = streaming;
            let base = pattern(16384, seed.wrapping_add(7));
            ram.write(0, &base);
            let data = pattern(len, seed);
            ram.write(pos, &data);
            let mut back = vec![0u8; 16384];
            ram.read(0, &mut back);
            let mut expect = base.clone();
            expect[pos as usize..pos as usize + len].copy_from_slice(&data);
            prop_assert_eq!(&back, &expect);
            // Reads at odd offsets into odd destinations.
            let mut part = vec![0u8; len + 3];
            ram.read(pos, &mut part[3..]);
            prop_assert_eq!(&part[3..], &data[..]);
            // Zeroing a window.
            ram.zero(pos, len as u64);
            ram.read(0, &mut back);
            expect[pos as usize..pos as usize + len].fill(0);
            prop_assert_eq!(&back, &expect);
        }
    }

    #[test]
    fn zero_hands_whole_huge_pages_back_and_stores_the_edges() {
        let ram = Ram::new(8 << 20).unwrap();
        let data = pattern(8 << 20, 3);
        ram.write(0, &data);
        // From 1 MiB + 512 to 7 MiB - 512: chunks [2, 4) and [4, 6) MiB go back to the kernel.
        let (pos, len) = ((1 << 20) + 512, (6 << 20) - 1024);
        ram.zero(pos, len);
        let mut back = vec![0u8; 8 << 20];
        ram.read(0, &mut back);
        let (s, e) = (pos as usize, pos as usize + len as usize);
        assert_eq!(&back[..s], &data[..s]);
        assert!(back[s..e].iter().all(|&b| b == 0));
        assert_eq!(&back[e..], &data[e..]);
    }
}
