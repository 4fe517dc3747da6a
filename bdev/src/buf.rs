//! Aligned data buffers and the per-reactor buffer pool.
//!
//! A [`DmaBuf`] is a 4 KiB-aligned, zero-initialised allocation behind a reference-counted,
//! borrow-checked handle. I/O requests carry [`crate::IoVec`]s that hold a `DmaBuf` clone, so a
//! buffer stays alive while any layer (or the kernel, for io_uring) may still touch it. Code that
//! reads or writes the bytes borrows them with [`DmaBuf::bytes`] / [`DmaBuf::bytes_mut`]; a
//! conflicting borrow is a programming error and panics like `RefCell`.
//!
//! [`BufPool`] is a per-reactor free list by size class, so steady-state I/O reuses buffers:
//! take them at set-up time, return them when done.
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::{Ref, RefCell, RefMut};
use std::ptr::NonNull;
use std::rc::Rc;

/// Buffer alignment: a page, which satisfies O_DIRECT, io_uring fixed buffers and NVMe PRPs.
pub const BUF_ALIGN: usize = 4096;

struct AlignedMem {
    ptr: NonNull<u8>,
    len: usize,
}

impl AlignedMem {
    fn new(len: usize) -> AlignedMem {
        let size = len.max(1).next_multiple_of(BUF_ALIGN);
        let layout = Layout::from_size_align(size, BUF_ALIGN).expect("buffer layout");
        // SAFETY: `layout` has a non-zero size. A null return is handled by the std helper.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedMem { ptr, len }
    }

    fn layout(&self) -> Layout {
        Layout::from_size_align(self.len.max(1).next_multiple_of(BUF_ALIGN), BUF_ALIGN).expect("buffer layout")
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to an allocation of at least `len` initialised (zeroed) bytes that
        // lives as long as `self`; shared access is mediated by the RefCell around us.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout()) }
    }
}

/// A page-aligned data buffer. Cloning shares it (reference count, no copy). `!Send`: it lives
/// on the reactor that allocated it.
#[derive(Clone)]
pub struct DmaBuf {
    mem: Rc<RefCell<AlignedMem>>,
}

impl DmaBuf {
    /// Allocates a zeroed buffer of `len_bytes`. This allocates: call at set-up time, or take
    /// one from [`BufPool`].
    pub fn new(len_bytes: usize) -> DmaBuf {
        DmaBuf {
            mem: Rc::new(RefCell::new(AlignedMem::new(len_bytes))),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.mem.borrow().len
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Borrows the bytes for reading.
    pub fn bytes(&self) -> Ref<'_, [u8]> {
        Ref::map(self.mem.borrow(), |m| m.as_slice())
    }

    /// Borrows the bytes for writing.
    pub fn bytes_mut(&self) -> RefMut<'_, [u8]> {
        RefMut::map(self.mem.borrow_mut(), |m| m.as_mut_slice())
    }

    /// Raw start address, for handing the buffer to the kernel or a device. Dereferencing it is
    /// the caller's (unsafe) business: it must hold a clone of this `DmaBuf` until the device is
    /// done, and nobody may borrow the bytes meanwhile.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.mem.borrow().ptr.as_ptr()
    }

    /// Whether two handles share one allocation.
    pub fn same(&self, other: &DmaBuf) -> bool {
        Rc::ptr_eq(&self.mem, &other.mem)
    }
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DmaBuf({} bytes @ {:p})", self.len(), self.as_mut_ptr())
    }
}

/// A free list of buffers by power-of-two size class (4 KiB and up). One per reactor: get it
/// with [`BufPool::with`]. Owns the buffers it holds; [`BufPool::get`] hands ownership out and
/// [`BufPool::put`] takes it back.
#[derive(Default)]
pub struct BufPool {
    classes: Vec<Vec<DmaBuf>>,
}

thread_local! {
    static POOL: RefCell<BufPool> = RefCell::new(BufPool::default());
}

fn class_of(len_bytes: usize) -> (usize, usize) {
    let size = len_bytes.max(BUF_ALIGN).next_power_of_two();
    (
        size.trailing_zeros() as usize - BUF_ALIGN.trailing_zeros() as usize,
        size,
    )
}

impl BufPool {
    /// Runs `f` with this thread's (reactor's) pool.
    pub fn with<R>(f: impl FnOnce(&mut BufPool) -> R) -> R {
        POOL.with(|p| f(&mut p.borrow_mut()))
    }

    /// A buffer of at least `len_bytes` (rounded up to a power of two ≥ 4 KiB): from the free
    /// list when one is there, else newly allocated.
    pub fn get(&mut self, len_bytes: usize) -> DmaBuf {
        let (class, size) = class_of(len_bytes);
        if let Some(b) = self.classes.get_mut(class).and_then(|c| c.pop()) {
            return b;
        }
        DmaBuf::new(size)
    }

    /// Returns a buffer for reuse. Buffers still shared elsewhere, or of a size that is not a
    /// class size, are just dropped.
    pub fn put(&mut self, buf: DmaBuf) {
        if Rc::strong_count(&buf.mem) != 1 {
            return;
        }
        let len = buf.len();
        let (class, size) = class_of(len);
        if size != len {
            return;
        }
        if self.classes.len() <= class {
            self.classes.resize_with(class + 1, Vec::new);
        }
        self.classes[class].push(buf);
    }

    /// Buffers held, over all classes.
    pub fn free_count(&self) -> usize {
        self.classes.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_shared() {
        let b = DmaBuf::new(8192);
        assert_eq!(b.as_mut_ptr() as usize % BUF_ALIGN, 0);
        assert!(b.bytes().iter().all(|&x| x == 0));
        let c = b.clone();
        c.bytes_mut()[5] = 7;
        assert_eq!(b.bytes()[5], 7);
        assert!(b.same(&c));
    }

    #[test]
    fn pool_reuses_by_class() {
        BufPool::with(|p| {
            let a = p.get(5000);
            assert_eq!(a.len(), 8192);
            let addr = a.as_mut_ptr();
            p.put(a);
            assert_eq!(p.free_count(), 1);
            let b = p.get(8000);
            assert_eq!(b.as_mut_ptr(), addr);
            let shared = b.clone();
            p.put(b); // still shared: not pooled
            assert_eq!(p.free_count(), 0);
            drop(shared);
        });
    }
}
