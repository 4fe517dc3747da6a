//! save_config places every bdev by what it stands on, not by when it was registered: layers of
//! other modules over a mapped device, a dm table reloaded onto a malloc created after them, and
//! a device reloaded onto a layer over a newer device.
//!
//! The stack (registration order): malloc M0 and M2; dm `b` over M2; dm `a` over M0; passthru
//! P0 over `a`; delay D0 over P0; malloc M1 and null N0 (after a claimed dm device); then `a`
//! reloaded onto M1 and `b` onto D0 (same sizes, so both keep their bdevs and places). The
//! saved configuration keeps M1 and N0 in `"bdev"` (a rule that deferred every bdev registered
//! after a claimed dm device into `"dm"` wrote `a` before M1 there, which cannot load), puts P0
//! and D0 in `"dm"` after `a` and `b` after D0 (through the layers, although `b` is older than
//! `a`). keel-tgt restarted with `-c`, and a fresh keel-tgt given the file with load_config,
//! rebuild the identical stack, and saving it again gives the same file.

mod common;

use common::Target;
use serde_json::Value;

const PLUGIN: &[&str] = &["--plugin", "keel_rpc"];

/// stdout of a plugin command that must succeed.
fn dm(t: &Target, args: &[&str]) -> String {
    let o = t.rpc_with(PLUGIN, args, None);
    assert!(
        o.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Every bdev's full bdev_get_bdevs object, by name.
fn bdevs(t: &Target) -> Vec<Value> {
    let mut v = t.json(&["bdev_get_bdevs"]).as_array().unwrap().clone();
    v.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
    v
}

/// (live, inactive) tables of every device.
fn tables(t: &Target) -> (String, String) {
    (dm(t, &["dm_table"]), dm(t, &["dm_table", "--inactive"]))
}

/// "method name" of every call of subsystem `sub` in a saved configuration.
fn calls(saved: &Value, sub: &str) -> Vec<String> {
    let s = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == sub)
        .unwrap_or_else(|| panic!("no subsystem {sub} in {saved}"));
    s["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let p = &c["params"];
            let name = p["name"].as_str().or(p["delay_bdev_name"].as_str()).unwrap_or("");
            format!("{} {name}", c["method"].as_str().unwrap())
        })
        .collect()
}

#[test]
fn layers_over_mapped_devices_save_where_their_bases_are() {
    let keep = tempfile::tempdir().unwrap();
    let t = Target::start(&["-m", "0x3"]);
    t.ok(&["bdev_malloc_create", "-b", "M0", "4", "512"]);
    t.ok(&["bdev_malloc_create", "-b", "M2", "4", "512"]);
    dm(&t, &["dm_create", "b", "--table", "0 2048 linear M2 0"]);
    dm(&t, &["dm_create", "a", "--table", "0 4096 linear M0 0"]);
    t.ok(&["bdev_passthru_create", "-b", "a", "-p", "P0"]);
    t.ok(&[
        "bdev_delay_create",
        "-b",
        "P0",
        "-d",
        "D0",
        "-r",
        "10",
        "-t",
        "20",
        "-w",
        "30",
        "-n",
        "40",
    ]);
    t.ok(&["bdev_malloc_create", "-b", "M1", "4", "512"]);
    t.ok(&["bdev_null_create", "N0", "4", "512"]);
    // a now maps the malloc created after P0 claimed it; b maps the delay over a.
    dm(&t, &["dm_load", "a", "--table", "0 4096 linear M1 0"]);
    dm(&t, &["dm_resume", "a"]);
    dm(&t, &["dm_load", "b", "--table", "0 2048 linear D0 8"]);
    dm(&t, &["dm_resume", "b"]);
    let names: Vec<String> = t
        .json(&["bdev_get_bdevs"])
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["M0", "M2", "b", "a", "P0", "D0", "M1", "N0"],
        "the swaps kept every bdev"
    );
    let bdevs_before = bdevs(&t);
    let tables_before = tables(&t);
    assert_eq!(tables_before.0, "a: 0 4096 linear M1 0\nb: 0 2048 linear D0 8\n");

    let saved = t.ok(&["save_config"]);
    let v: Value = serde_json::from_str(&saved).unwrap();
    let subs: Vec<&str> = v["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subsystem"].as_str().unwrap())
        .collect();
    assert_eq!(subs, ["bdev", "dm", "nvmf", "nbd", "ublk"]);
    assert_eq!(
        calls(&v, "bdev"),
        [
            "bdev_malloc_create M0",
            "bdev_malloc_create M2",
            "bdev_malloc_create M1",
            "bdev_null_create N0",
            "bdev_wait_for_examine ",
        ]
    );
    assert_eq!(
        calls(&v, "dm"),
        [
            "dm_create a",
            "bdev_passthru_create P0",
            "bdev_delay_create D0",
            "dm_create b"
        ]
    );
    let cfg = keep.path().join("saved.json");
    std::fs::write(&cfg, &saved).unwrap();
    assert!(t.stop().success());

    // keel-tgt -c: the same bdevs (registered in the saved order), tables and configuration.
    let t2 = Target::start(&["-m", "0x3", "-c", cfg.to_str().unwrap()]);
    assert_eq!(bdevs(&t2), bdevs_before);
    assert_eq!(tables(&t2), tables_before);
    assert_eq!(t2.ok(&["save_config"]), saved);
    assert!(t2.stop().success());

    // load_config into a fresh running target: the same.
    let t3 = Target::start(&[]);
    let o = t3.rpc_with(&[], &["load_config", "-j", cfg.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(bdevs(&t3), bdevs_before);
    assert_eq!(tables(&t3), tables_before);
    assert_eq!(t3.ok(&["save_config"]), saved);
    assert!(t3.stop().success());
}
