//! spdk-rpc's script mode (several commands over one connection), batch mode, and the
//! save_config → restart with -c → identical stack round trip, plus load_config into a running
//! target.

mod common;

use common::Target;

#[test]
fn script_and_batch_modes() {
    let t = Target::start(&[]);
    let o = t.rpc_with(
        &[],
        &[],
        Some("bdev_null_create N0 8 512\n# a comment\nbdev_malloc_create -b M0 8 512\nbdev_get_bdevs -b M0\n"),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("N0") && out.contains("\"name\": \"M0\""), "{out}");
    // A failing line stops the script with exit 1.
    let o = t.rpc_with(&[], &[], Some("bdev_null_create N0 8 512\nbdev_null_create N9 8 512\n"));
    assert!(!o.status.success());
    assert!(t
        .json(&["bdev_get_bdevs"])
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["name"] != "N9"));
    // Batch mode: one array, one response array.
    let o = t.rpc_with(
        &["-b"],
        &[],
        Some("bdev_null_create B1 8 512\nbdev_null_create B2 8 512\n"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("B1") && out.contains("B2"), "{out}");
    assert_eq!(t.json(&["bdev_get_bdevs"]).as_array().unwrap().len(), 4);
}

#[test]
fn save_config_restart_gives_the_identical_stack() {
    let keep = tempfile::tempdir().unwrap(); // outlives the first target's own temp dir
    let t = Target::start(&["-m", "0x3"]);
    let img = keep.path().join("u.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    t.ok(&[
        "bdev_malloc_create",
        "-b",
        "M0",
        "8",
        "4096",
        "-u",
        "6f1f0a5e-1e6b-4ac4-8e0a-3b2c1d0e9f11",
    ]);
    t.ok(&["bdev_null_create", "N0", "16", "512"]);
    t.ok(&["bdev_passthru_create", "-b", "M0", "-p", "P0"]);
    t.ok(&[
        "bdev_delay_create",
        "-b",
        "N0",
        "-d",
        "D0",
        "-r",
        "5",
        "-t",
        "6",
        "-w",
        "7",
        "-n",
        "8",
    ]);
    t.ok(&["bdev_malloc_create", "-b", "M1", "4", "512"]);
    t.ok(&["bdev_error_create", "M1"]);
    t.ok(&["bdev_uring_create", img.to_str().unwrap(), "U0"]);
    let before = t.json(&["bdev_get_bdevs"]);
    let saved = t.ok(&["save_config"]);
    let cfg = keep.path().join("saved.json");
    std::fs::write(&cfg, &saved).unwrap();
    assert!(t.stop().success());

    let t2 = Target::start(&["-m", "0x3", "-c", cfg.to_str().unwrap()]);
    let after = t2.json(&["bdev_get_bdevs"]);
    assert_eq!(
        before, after,
        "restart from save_config must rebuild the identical stack"
    );
    assert_eq!(t2.ok(&["save_config"]), saved);
    // load_config into a fresh running target gives the same stack too (once t2 let go of the
    // file behind U0: one target per file).
    assert!(t2.stop().success());
    let t3 = Target::start(&[]);
    let o = t3.rpc_with(&[], &["load_config", "-j", cfg.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(t3.json(&["bdev_get_bdevs"]), after);
}

#[test]
fn bad_config_file_fails_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        ("{ not json", "invalid JSON"),
        (
            r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_nope"}]}]}"#,
            "unknown method 'bdev_nope'",
        ),
        (
            r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_null_create","params":{"name":"N","num_blocks":0,"block_size":512}}]}]}"#,
            "entry 0 (bdev_null_create)",
        ),
    ] {
        let cfg = dir.path().join("bad.json");
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel-tgt"))
            .args(["--no-pin", "-L", "error", "-r"])
            .arg(dir.path().join("s.sock"))
            .arg("-c")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{text}: {err}");
    }
}
