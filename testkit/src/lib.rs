//! Test support shared by Keel's crates. Not part of the product.
//!
//! [`CountingAlloc`] is the allocator behind every "no allocation per I/O" proof: install it in a
//! test binary with
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: keel_testkit::CountingAlloc = keel_testkit::CountingAlloc;
//! ```
//!
//! then read [`allocations`] (every thread) or [`thread_allocations`] (the calling thread only,
//! so other tests running in parallel do not disturb the count) before and after the
//! steady-state window.
#![deny(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // A const-initialised Cell: touching it never allocates, so the allocator cannot recurse.
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

/// Allocations (alloc, alloc_zeroed, realloc) on every thread since the process started.
pub fn allocations() -> u64 {
    ALLOCS.load(Ordering::SeqCst)
}

/// Allocations made by the calling thread.
pub fn thread_allocations() -> u64 {
    THREAD_ALLOCS.with(|c| c.get())
}

#[inline]
fn count() {
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
}

/// The system allocator, counting.
pub struct CountingAlloc;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// GlobalAlloc contract is exactly System's; the only additions are a relaxed atomic increment and
// a const thread-local `Cell` increment, neither of which allocates.
#[allow(unsafe_code)]
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
