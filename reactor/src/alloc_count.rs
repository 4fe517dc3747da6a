//! Counting heap allocations: [`CountingAlloc`], the process's global allocator in keel-tgt and
//! in every "no allocation per I/O" test.
//!
//! It forwards to the system allocator and counts each allocation (alloc, alloc_zeroed,
//! realloc) twice: in a process-wide atomic ([`allocations`]) and in a counter of the calling
//! thread ([`thread_allocations`]). A reactor's thread count is what proves its data path does
//! not allocate: keel-tgt reports it per reactor (`keel_get_pollers`), so a test can drive I/O
//! through a real export in a real process and see the serving reactor's count stand still.
//! The cost is one relaxed atomic add and one thread-local add per allocation; the data path
//! makes none.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // A const-initialised Cell: touching it never allocates, so the allocator cannot recurse.
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

/// Allocations on every thread since the process started (0 unless [`CountingAlloc`] is the
/// global allocator). Any thread.
pub fn allocations() -> u64 {
    ALLOCS.load(Ordering::SeqCst)
}

/// Allocations made by the calling thread (0 unless [`CountingAlloc`] is the global allocator).
pub fn thread_allocations() -> u64 {
    THREAD_ALLOCS.with(|c| c.get())
}

#[inline]
fn count() {
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
}

/// The system allocator, counting. Install with
/// `#[global_allocator] static A: keel_reactor::CountingAlloc = keel_reactor::CountingAlloc;`.
pub struct CountingAlloc;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// GlobalAlloc contract is exactly System's; the only additions are a relaxed atomic increment and
// a const thread-local `Cell` increment, neither of which allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged (see above).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}
