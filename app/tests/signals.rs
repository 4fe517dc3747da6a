//! SIGINT and SIGTERM stop keel-tgt cleanly: exit status 0, socket and lock files removed.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{wait_exit, Target};

fn stop_with(sig: &str) {
    let mut t = Target::start(&["-m", "0x3"]);
    t.ok(&["bdev_malloc_create", "-b", "M0", "8", "512"]);
    t.ok(&["bdev_passthru_create", "-b", "M0", "-p", "P0"]);
    let pid = t.child.id().to_string();
    assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    let st = wait_exit(&mut t.child, Duration::from_secs(20)).expect("keel-tgt did not exit");
    assert!(st.success(), "{sig}: {st:?}");
    assert!(!t.sock.exists(), "socket left behind after {sig}");
    assert!(
        !t.sock.with_extension("sock.lock").exists(),
        "lock file left behind after {sig}"
    );
}

#[test]
fn sigterm_stops_cleanly() {
    stop_with("-TERM");
}

#[test]
fn sigint_stops_cleanly() {
    stop_with("-INT");
}
