//! Framework methods through spdk-rpc: version, method lists and state gating, reactors and
//! threads, subsystems and config, the plugin, kill.

mod common;

use common::Target;

#[test]
fn framework_methods_and_plugin() {
    let t = Target::start(&["-m", "0x3"]);
    let v = t.json(&["spdk_get_version"]);
    assert_eq!(v["fields"]["major"], 26);
    assert!(v["version"].as_str().unwrap().contains("Keel"));

    let all = t.json(&["rpc_get_methods"]);
    let current = t.json(&["rpc_get_methods", "-c"]);
    let has = |v: &serde_json::Value, m: &str| v.as_array().unwrap().iter().any(|x| x == m);
    assert!(has(&all, "framework_start_init"));
    assert!(!has(&current, "framework_start_init"), "start_init is STARTUP-only");
    assert!(has(&current, "bdev_malloc_create"));
    let (code, msg) = t.err(&["framework_start_init"]);
    assert_eq!(code, -1, "{msg}");
    t.ok(&["framework_wait_init"]);

    let r = t.json(&["framework_get_reactors"]);
    assert!(r["tick_rate"].as_u64().unwrap() > 0);
    let reactors = r["reactors"].as_array().unwrap();
    assert_eq!(reactors.len(), 2);
    assert_eq!(reactors[1]["lcore"], 1);
    assert_eq!(reactors[1]["lw_threads"][0]["cpumask"], "2");
    assert!(reactors[0]["tid"].as_u64().unwrap() > 0);
    let th = t.json(&["thread_get_stats"]);
    assert_eq!(th["threads"].as_array().unwrap().len(), 2);
    assert!(th["threads"][0]["idle"].as_u64().unwrap() > 0);

    let subs = t.json(&["framework_get_subsystems"]);
    assert_eq!(subs[0]["subsystem"], "bdev");
    t.ok(&["bdev_null_create", "N0", "8", "512"]);
    let cfg = t.json(&["framework_get_config", "bdev"]);
    assert_eq!(cfg[0]["method"], "bdev_null_create");
    let (code, msg) = t.err(&["framework_get_config", "nope"]);
    assert_eq!((code, msg.as_str()), (-32602, "Subsystem 'nope' not found"));

    // The plugin: Keel's poller view.
    let o = t.rpc_with(&["--plugin", "keel_rpc"], &["keel_get_pollers"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(p["reactors"].as_array().unwrap().len(), 2);
    let o = t.rpc_with(&["--plugin", "keel_rpc"], &["keel_get_pollers", "-l", "1"], None);
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(p["reactors"].as_array().unwrap().len(), 1);
    let o = t.rpc_with(&["--plugin", "keel_rpc"], &["keel_get_pollers", "-l", "7"], None);
    assert!(!o.status.success());

    // Unknown method (as a raw call, since the CLI refuses unknown subcommands itself).
    let out = t.raw(
        br#"{"jsonrpc":"2.0","method":"nope","id":1}"#,
        std::time::Duration::from_secs(5),
    );
    assert_eq!(
        out,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32601,\"message\":\"Method not found\"}}\n"
    );
    // The CLI only offers valid signal names; a raw call with another is refused.
    let out = t.raw(
        br#"{"method":"spdk_kill_instance","id":9,"params":{"sig_name":"SIGNOPE"}}"#,
        std::time::Duration::from_secs(5),
    );
    assert!(out.contains("-32602") && out.contains("SIGNOPE"), "{out}");
    assert!(t.stop().success());
}

#[test]
fn wait_for_rpc_holds_runtime_methods_until_start_init() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.json");
    std::fs::write(
        &cfg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_null_create","params":{"name":"N0","num_blocks":64,"block_size":512}}]}]}"#,
    )
    .unwrap();
    let sock = dir.path().join("s.sock");
    let t = Target::start_at(dir, sock, &["--wait-for-rpc", "-c", cfg.to_str().unwrap()]);
    let (code, msg) = t.err(&["bdev_get_bdevs"]);
    assert_eq!(code, -1, "{msg}");
    let current = t.json(&["rpc_get_methods", "-c"]);
    assert!(current.as_array().unwrap().iter().any(|m| m == "framework_start_init"));
    t.ok(&["framework_start_init"]);
    // The config's runtime entries ran during init.
    assert_eq!(t.json(&["bdev_get_bdevs"])[0]["name"], "N0");
    assert_eq!(t.err(&["framework_start_init"]).0, -1);
    assert!(t.stop().success());
}
