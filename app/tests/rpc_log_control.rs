//! SPDK's log methods through the stock `spdk-rpc`: levels and flags as SPDK names them, the
//! refusals, and the effect on keel-tgt's log — a flag shows its component's debug messages
//! while the levels stay quiet, and clearing it hides them again.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Target;

fn log_text(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until the log holds `needle` `n` times (the writer is another process).
fn wait_for_count(path: &std::path::Path, needle: &str, n: usize) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if log_text(path).matches(needle).count() >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn levels_and_flags_as_spdk_and_their_effect_on_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("tgt.log");
    let t = Target::start_logging_to(&["-L", "error"], Stdio::from(std::fs::File::create(&log).unwrap()));
    assert_eq!(t.json(&["log_get_level"]), "ERROR");
    assert_eq!(t.json(&["log_get_print_level"]), "ERROR");
    let flags = t.json(&["log_get_flags"]);
    assert!(flags.as_object().unwrap().values().all(|v| v == false), "{flags}");
    assert_eq!(flags["vbdev_split"], false);

    // Refusals change nothing.
    // (spdk-rpc checks level names itself; a raw client reaches the server's check.)
    let out = t.raw(
        br#"{"jsonrpc":"2.0","id":1,"method":"log_set_level","params":{"level":"LOUD"}}"#,
        Duration::from_secs(10),
    );
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["error"]["code"], -32602, "{out}");
    assert_eq!(v["error"]["message"], "invalid log level", "{out}");
    let (code, msg) = t.err(&["log_set_flag", "no_such_flag"]);
    assert_eq!(code, -32602);
    assert!(msg.contains("no_such_flag") && msg.contains("vbdev_split"), "{msg}");
    assert_eq!(t.json(&["log_get_level"]), "ERROR");

    // Quiet: a split logs its debug line only with the flag.
    t.ok(&["bdev_malloc_create", "-b", "M0", "8", "512"]);
    t.ok(&["bdev_split_create", "M0", "2"]);
    t.ok(&["bdev_split_delete", "M0"]);
    t.ok(&["log_set_flag", "vbdev_split"]);
    assert_eq!(t.json(&["log_get_flags"])["vbdev_split"], true);
    t.ok(&["bdev_split_create", "M0", "2"]);
    assert!(wait_for_count(&log, "bdev split", 1), "{}", log_text(&log));
    assert!(
        !log_text(&log).contains("stacked bdev created"),
        "only the flag's targets"
    );
    t.ok(&["bdev_split_delete", "M0"]);
    t.ok(&["log_clear_flag", "vbdev_split"]);
    t.ok(&["bdev_split_create", "M0", "2"]);
    t.ok(&["bdev_split_delete", "M0"]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(log_text(&log).matches("bdev split").count(), 1, "{}", log_text(&log));

    // Levels: the more verbose of the two shows (Keel has one output).
    t.ok(&["log_set_print_level", "DEBUG"]);
    assert_eq!(t.json(&["log_get_print_level"]), "DEBUG");
    assert_eq!(t.json(&["log_get_level"]), "ERROR");
    t.ok(&["bdev_split_create", "M0", "2"]);
    assert!(wait_for_count(&log, "bdev split", 2), "{}", log_text(&log));
    t.ok(&["log_set_print_level", "WARNING"]);
    t.ok(&["log_set_flag", "all"]);
    assert!(t
        .json(&["log_get_flags"])
        .as_object()
        .unwrap()
        .values()
        .all(|v| v == true));
    t.ok(&["log_clear_flag", "all"]);
    assert!(t
        .json(&["log_get_flags"])
        .as_object()
        .unwrap()
        .values()
        .all(|v| v == false));
    assert!(t.stop().success());
}
