//! Input that would make keel-perf run away is refused with a clear message and exit status 1
//! (issue 13, item 1): a run time of `-t 18446744073709551615` (u64::MAX seconds, whose
//! deadline overflowed and panicked) or one past bdevperf's `int` limit, a period `-S` as large,
//! and a config file that never ends (`--json /dev/zero`, which was read until memory ran out)
//! or is too large. Each run is bounded in time and address space, so a regression fails here
//! instead of eating the machine.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs keel-perf with `args` under a 4 GiB address-space limit, killed after `limit`.
/// Returns (exit code, stderr, elapsed); the code is `None` when it had to be killed.
fn run_bounded(args: &[&str], limit: Duration) -> (Option<i32>, String, Duration) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4194304 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_keel-perf"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keel-perf");
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (code, err, start.elapsed())
}

#[test]
fn huge_run_times_and_periods_are_refused() {
    let cfg = common::small_config();
    let c = cfg.path().to_str().unwrap();
    for (args, want) in [
        (
            vec!["--json", c, "-t", "18446744073709551615"],
            "invalid parameter -t: run time in seconds must be at most 2147483647",
        ),
        (vec!["-t", "18446744073709551615"], "invalid parameter -t"),
        (
            vec!["--json", c, "-t", "2147483648"],
            "must be at most 2147483647 (got '2147483648')",
        ),
        (
            vec!["--json", c, "-t", "1", "-S", "18446744073709551615"],
            "invalid parameter -S: report period in seconds must be at most 2147483647",
        ),
    ] {
        let (code, err, _) = run_bounded(&args, Duration::from_secs(20));
        assert_eq!(code, Some(1), "{args:?}: stderr {err}");
        assert!(err.contains(want), "{args:?}: stderr lacks '{want}':\n{err}");
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    }
}

#[test]
fn endless_and_oversized_config_files_are_refused() {
    // A character device that never ends: read up to the limit, then refused.
    let (code, err, took) = run_bounded(&["--json", "/dev/zero", "-t", "1"], Duration::from_secs(30));
    assert_eq!(code, Some(1), "--json /dev/zero: stderr {err}");
    assert!(
        err.contains("config file /dev/zero is too large")
            && err.contains("not a regular file")
            && err.contains("64 MiB"),
        "{err}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // A regular file over the limit (sparse): refused from its size, without reading it.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.json");
    std::fs::File::create(&big).unwrap().set_len((64 << 20) + 1).unwrap();
    let big_s = big.to_str().unwrap();
    let (code, err, _) = run_bounded(&["--json", big_s, "-t", "1"], Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is too large: 67108865 bytes"), "{err}");
    // A directory and binary junk name their problem.
    let d = dir.path().to_str().unwrap();
    let (code, err, _) = run_bounded(&["--json", d, "-t", "1"], Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is a directory"), "{err}");
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, [b'{', 0xff, 0xfe, b'}']).unwrap();
    let (code, err, _) = run_bounded(&["--json", junk.to_str().unwrap(), "-t", "1"], Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is not UTF-8 text (invalid byte at offset 1)"), "{err}");
}
