//! SPDK's raid states through the stock spdk-rpc: a raid created before its base bdevs waits
//! `configuring` (bases claimed as they appear, an unusable one — too small, claimed by another
//! module — left alone), comes `online` when the last one appears (as an md array), survives
//! save_config while waiting, and can be deleted or lose a base meanwhile; a raid0 that loses a
//! member goes `offline`; `bdev_get_bdevs` of a raid carries SPDK's product name and
//! `driver_specific.raid`; `bdev_raid_set_options` sets md's sync window and max speed (a rebuild
//! shows as SPDK's `process`) and is kept by save_config. Refusals with SPDK's codes.

mod common;

use std::time::{Duration, Instant};

use common::Target;
use serde_json::{json, Value};

const PLUGIN: &[&str] = &["--plugin", "keel_rpc"];

fn raids(t: &Target, category: &str) -> Vec<Value> {
    t.json(&["bdev_raid_get_bdevs", category]).as_array().unwrap().clone()
}

fn raid(t: &Target, name: &str) -> Value {
    raids(t, "all")
        .into_iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no raid '{name}'"))
}

fn bdev(t: &Target, name: &str) -> Value {
    t.json(&["bdev_get_bdevs", "-b", name])[0].clone()
}

fn md_array(t: &Target, name: &str) -> Value {
    let o = t.rpc_with(PLUGIN, &["md_get_arrays", name], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<Value>(&o.stdout).unwrap()[0].clone()
}

/// Polls `bdev_raid_get_bdevs all` until `f` holds for raid `name`.
fn wait_raid(t: &Target, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = raid(t, name);
        if f(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{name}: {what}: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn raw(t: &Target, method: &str, params: Value) -> Value {
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let out = t.raw(req.to_string().as_bytes(), Duration::from_secs(5));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{method}: {e}: {out}"))
}

fn base_field(r: &Value, field: &str) -> Vec<Value> {
    r["base_bdevs_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[field].clone())
        .collect()
}

#[test]
fn a_raid_waits_configuring_for_its_base_bdevs() {
    let t = Target::start(&[]);
    let uuid = "6d1c3c47-2b3a-4f8e-9e3b-7a0f1d2c3b4a";
    t.ok(&[
        "bdev_raid_create",
        "-n",
        "R",
        "-r",
        "raid1",
        "--uuid",
        uuid,
        "-b",
        "A B",
    ]);
    let r = raid(&t, "R");
    assert_eq!(r["state"], "configuring", "{r}");
    assert_eq!(r["uuid"], uuid);
    assert_eq!(r["superblock"], true);
    assert_eq!(
        (
            r["num_base_bdevs"].as_u64(),
            r["num_base_bdevs_discovered"].as_u64(),
            r["num_base_bdevs_operational"].as_u64()
        ),
        (Some(2), Some(0), Some(2))
    );
    assert_eq!(base_field(&r, "name"), [json!("A"), json!("B")]);
    assert_eq!(base_field(&r, "is_configured"), [json!(false), json!(false)]);
    assert_eq!(raids(&t, "configuring").len(), 1);
    assert!(raids(&t, "online").is_empty());
    assert_eq!(
        t.err(&["bdev_get_bdevs", "-b", "R"]).0,
        -19,
        "no bdev while configuring"
    );

    // Kept by save_config as SPDK's own bdev_raid_create while it waits.
    let saved: Value = serde_json::from_str(&t.ok(&["save_config"])).unwrap();
    let bdev_cfg = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == "bdev")
        .unwrap()["config"]
        .clone();
    let create = bdev_cfg
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["method"] == "bdev_raid_create")
        .unwrap_or_else(|| panic!("no bdev_raid_create in {bdev_cfg}"));
    assert_eq!(
        create["params"],
        json!({"name": "R", "uuid": uuid, "raid_level": "raid1", "base_bdevs": ["A", "B"]})
    );

    // The first base: claimed by the raid, still configuring.
    t.ok(&["bdev_malloc_create", "-b", "A", "8", "512"]);
    t.ok(&["bdev_wait_for_examine"]);
    let r = raid(&t, "R");
    assert_eq!(
        (r["state"].as_str(), r["num_base_bdevs_discovered"].as_u64()),
        (Some("configuring"), Some(1))
    );
    assert_eq!(base_field(&r, "is_configured"), [json!(true), json!(false)]);
    assert_eq!(r["base_bdevs_list"][0]["uuid"], bdev(&t, "A")["uuid"]);
    assert_eq!(bdev(&t, "A")["claimed"], true);

    // A base too small for md's metadata (1 MiB): left alone, the raid keeps waiting.
    t.ok(&["bdev_malloc_create", "-b", "B", "1", "512"]);
    t.ok(&["bdev_wait_for_examine"]);
    let r = raid(&t, "R");
    assert_eq!(
        (r["state"].as_str(), r["num_base_bdevs_discovered"].as_u64()),
        (Some("configuring"), Some(1))
    );
    assert_eq!(bdev(&t, "B")["claimed"], false);
    t.ok(&["bdev_malloc_delete", "B"]);

    // The last base: online, an md array with the raid's uuid.
    t.ok(&["bdev_malloc_create", "-b", "B", "8", "512"]);
    t.ok(&["bdev_wait_for_examine"]);
    let r = raid(&t, "R");
    assert_eq!(r["state"], "online", "{r}");
    assert_eq!(r["uuid"], uuid);
    assert_eq!(base_field(&r, "name"), [json!("A"), json!("B")]);
    assert!(raids(&t, "configuring").is_empty());
    assert_eq!(md_array(&t, "R")["level"], "raid1");
    let b = bdev(&t, "R");
    assert_eq!(b["product_name"], "Raid Volume");
    assert_eq!(b["uuid"], uuid);
    let ds = &b["driver_specific"]["raid"];
    for key in [
        "uuid",
        "strip_size_kb",
        "state",
        "raid_level",
        "superblock",
        "num_base_bdevs",
        "num_base_bdevs_discovered",
        "num_base_bdevs_operational",
        "base_bdevs_list",
    ] {
        assert!(ds.get(key).is_some(), "driver_specific.raid lacks '{key}': {b}");
    }
    assert!(ds.get("name").is_none(), "{ds}");
    assert_eq!(
        (ds["raid_level"].as_str(), ds["superblock"].as_bool()),
        (Some("raid1"), Some(true))
    );
    for base in ds["base_bdevs_list"].as_array().unwrap() {
        for key in ["name", "uuid", "is_configured", "data_offset", "data_size"] {
            assert!(base.get(key).is_some(), "base lacks '{key}': {base}");
        }
        assert!(base["data_offset"].as_u64().unwrap() > 0 && base["data_size"].as_u64().unwrap() > 0);
    }
    assert!(b["driver_specific"].get("md").is_some(), "md's own view stays");

    // Refusals with SPDK's codes; nothing changes.
    t.ok(&["bdev_raid_create", "-n", "W", "-r", "raid0", "-z", "64", "-b", "C D"]);
    let err = |args: &[&str]| t.err(args).0;
    assert_eq!(err(&["bdev_raid_create", "-n", "W", "-r", "raid1", "-b", "E F"]), -17);
    assert_eq!(err(&["bdev_raid_create", "-n", "R", "-r", "raid1", "-b", "E F"]), -17);
    assert_eq!(
        err(&["bdev_raid_create", "-n", "X", "-r", "raid1", "-b", "E"]),
        -22,
        "raid1 needs 2"
    );
    assert_eq!(err(&["bdev_raid_create", "-n", "X", "-r", "raid1", "-b", "E E"]), -22);
    assert_eq!(
        err(&["bdev_raid_create", "-n", "X", "-r", "raid1", "-b", "A E"]),
        -1,
        "A is R's"
    );
    assert_eq!(err(&["bdev_raid_add_base_bdev", "W", "A"]), -22);
    assert_eq!(
        raw(
            &t,
            "bdev_raid_create",
            json!({"name": "X", "raid_level": "1", "base_bdevs": ["E", "F"], "uuid": "x"})
        )["error"]["code"],
        -32700
    );
    assert_eq!(raids(&t, "all").len(), 2);

    // A base claimed by another module when it appears (a split waiting for it): left alone.
    t.ok(&["bdev_split_create", "C", "2"]);
    t.ok(&["bdev_malloc_create", "-b", "C", "8", "512"]);
    t.ok(&["bdev_wait_for_examine"]);
    assert_eq!(raid(&t, "W")["num_base_bdevs_discovered"], 0);
    assert_eq!(bdev(&t, "C")["claimed"], true);
    t.ok(&["bdev_split_delete", "C"]);
    t.ok(&["bdev_malloc_delete", "C"]);

    // Discovered, then hot-removed: the slot empties. Discovered, then removed by RPC: released.
    t.ok(&["bdev_malloc_create", "-b", "C", "8", "512"]);
    t.ok(&["bdev_wait_for_examine"]);
    assert_eq!(raid(&t, "W")["num_base_bdevs_discovered"], 1);
    t.ok(&["bdev_malloc_delete", "C"]);
    wait_raid(&t, "W", "slot empties", |r| r["num_base_bdevs_discovered"] == 0);
    t.ok(&["bdev_malloc_create", "-b", "C", "8", "512"]);
    t.ok(&["bdev_wait_for_examine"]);
    assert_eq!(raid(&t, "W")["num_base_bdevs_discovered"], 1);
    t.ok(&["bdev_raid_remove_base_bdev", "C"]);
    assert_eq!(raid(&t, "W")["num_base_bdevs_discovered"], 0);
    assert_eq!(bdev(&t, "C")["claimed"], false);

    // Delete while configuring: gone, nothing claimed.
    t.ok(&["bdev_raid_delete", "W"]);
    assert_eq!(raids(&t, "all").len(), 1);
    assert_eq!(err(&["bdev_raid_delete", "W"]), -19);
    t.ok(&["bdev_malloc_create", "-b", "D", "8", "512"]);
    t.ok(&["bdev_wait_for_examine"]);
    assert_eq!(bdev(&t, "D")["claimed"], false);
    assert!(t.stop().success());
}

#[test]
fn raid0_that_loses_a_member_goes_offline() {
    let t = Target::start(&[]);
    t.ok(&["bdev_malloc_create", "-b", "M0", "8", "512"]);
    t.ok(&["bdev_malloc_create", "-b", "M1", "8", "512"]);
    t.ok(&["bdev_raid_create", "-n", "S", "-r", "0", "-z", "64", "-b", "M0 M1"]);
    assert_eq!(raid(&t, "S")["state"], "online");
    t.ok(&["bdev_malloc_delete", "M1"]);
    let r = wait_raid(&t, "S", "offline", |r| r["state"] == "offline");
    assert_eq!(r["num_base_bdevs_discovered"], 1, "{r}");
    assert_eq!(raids(&t, "offline").len(), 1);
    assert!(raids(&t, "online").is_empty());
    t.ok(&["bdev_raid_delete", "S"]);
    assert!(raids(&t, "all").is_empty());
    assert!(t.stop().success());
}

#[test]
fn raid_options_pace_md_sync_and_are_saved() {
    let t = Target::start(&[]);
    for b in ["M0", "M1", "M2", "M3", "M4", "M5", "M6"] {
        t.ok(&["bdev_malloc_create", "-b", b, "16", "512"]);
    }
    // An md raid10 is not an SPDK raid: the options leave it alone.
    let o = t.rpc_with(
        PLUGIN,
        &[
            "md_create",
            "-n",
            "ten",
            "-l",
            "raid10",
            "--assume-clean",
            "M2",
            "M3",
            "M4",
            "M5",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // Before any bdev_raid_set_options: md's (Linux's) defaults, nothing saved.
    assert!(!t.ok(&["save_config"]).contains("bdev_raid_set_options"));
    // 1 MB/s: the raid1's initial resync of 16 MiB runs for seconds, shown as a process.
    t.ok(&["bdev_raid_set_options", "-w", "2048", "-b", "1"]);
    t.ok(&["bdev_raid_create", "-n", "R", "-r", "raid1", "-b", "M0 M1"]);
    let r = wait_raid(&t, "R", "a process", |r| r.get("process").is_some());
    let p = &r["process"];
    assert_eq!(
        (p["type"].as_str(), p["target"].as_str()),
        (Some("resync"), Some("R")),
        "{r}"
    );
    assert!(p["progress"]["blocks"].as_u64().is_some(), "{p}");
    assert!(p["progress"]["percent"].as_f64().unwrap() < 100.0, "{p}");
    let a = md_array(&t, "R");
    assert_eq!(
        (a["sync_speed_max_kbs"].as_u64(), a["sync_window_kb"].as_u64()),
        (Some(1024), Some(2048))
    );
    let ten = md_array(&t, "ten");
    assert_eq!(
        (ten["sync_speed_max_kbs"].as_u64(), ten["sync_window_kb"].as_u64()),
        (Some(200_000), Some(0))
    );
    let saved = t.ok(&["save_config"]);
    assert!(
        saved.contains(r#""process_window_size_kb": 2048"#) && saved.contains(r#""process_max_bandwidth_mb_sec": 1"#),
        "{saved}"
    );
    // Only the given option changes; 0 is "no limit": the resync finishes.
    t.ok(&["bdev_raid_set_options", "-b", "0"]);
    let a = md_array(&t, "R");
    assert_eq!(
        (a["sync_speed_max_kbs"].as_u64(), a["sync_window_kb"].as_u64()),
        (Some(0), Some(2048))
    );
    wait_raid(&t, "R", "resync done", |r| r.get("process").is_none());

    // A rebuild: a base removed and a fresh one added rebuilds onto it, shown as SPDK's
    // "rebuild" with the new base as its target.
    t.ok(&["bdev_raid_set_options", "-b", "1"]);
    t.ok(&["bdev_raid_remove_base_bdev", "M1"]);
    t.ok(&["bdev_raid_add_base_bdev", "R", "M6"]);
    let r = wait_raid(&t, "R", "a rebuild", |r| r.get("process").is_some());
    assert_eq!(
        (r["process"]["type"].as_str(), r["process"]["target"].as_str()),
        (Some("rebuild"), Some("M6")),
        "{r}"
    );
    t.ok(&["bdev_raid_set_options", "-b", "0"]);
    wait_raid(&t, "R", "rebuild done", |r| {
        r.get("process").is_none() && r["num_base_bdevs_discovered"] == 2
    });

    // Refusals: a window of 0 (EINVAL, as SPDK), an unknown or mistyped param (-32700).
    assert_eq!(t.err(&["bdev_raid_set_options", "-w", "0"]).0, -22);
    assert_eq!(
        raw(&t, "bdev_raid_set_options", json!({"process_window_kb": 4}))["error"]["code"],
        -32700
    );
    assert_eq!(
        raw(&t, "bdev_raid_set_options", json!({"process_window_size_kb": "4"}))["error"]["code"],
        -32700
    );
    assert_eq!(md_array(&t, "R")["sync_window_kb"], 2048, "nothing changed");
    assert!(t.rpc_with(PLUGIN, &["md_stop", "ten"], None).status.success());
    assert!(t.stop().success());
}
