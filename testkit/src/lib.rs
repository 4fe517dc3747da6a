//! Test support shared by Keel's crates. Not part of the product.
//!
//! [`CountingAlloc`] (keel-reactor's, which keel-tgt also runs on) is the allocator behind every
//! "no allocation per I/O" proof: install it in a test binary with
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
#![forbid(unsafe_code)]

pub mod lab;

pub use keel_reactor::{allocations, thread_allocations, CountingAlloc};

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
