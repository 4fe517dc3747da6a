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
//!
//! [`lab`] boots the shared lab guest (Linux 6.12 under QEMU, with the kernel's nbd, ublk, md,
//! dm and nvme) and runs a script in it: the one way every crate's lab tests reach it.
#![deny(unsafe_code)]

pub mod lab;

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

/// Debian's mdadm, from PATH or /usr/sbin (not always on a non-root PATH). Missing → panics with
/// the set-up hint: tests that talk to mdadm must fail, not skip, without it.
pub fn mdadm() -> &'static str {
    ["mdadm", "/usr/sbin/mdadm", "/sbin/mdadm"]
        .into_iter()
        .find(|m| {
            std::process::Command::new(m)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("mdadm not found: run scripts/deps.sh (scripts/test.sh does)")
}

/// `mdadm <args>` on `path` (e.g. `--examine`, `-X`); panics with mdadm's output if it fails.
pub fn mdadm_run(args: &[&str], path: &std::path::Path) -> String {
    let out = std::process::Command::new(mdadm())
        .args(args)
        .arg(path)
        .output()
        .expect("run mdadm");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "mdadm {args:?} {} failed: {text}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The value of a `Label : value` line of mdadm's output (trimmed); panics naming the label.
pub fn mdadm_field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| {
            l.trim_start()
                .strip_prefix(label)
                .and_then(|r| r.trim_start().strip_prefix(':'))
        })
        .map(str::trim)
        .unwrap_or_else(|| panic!("no '{label}' in:\n{text}"))
}
