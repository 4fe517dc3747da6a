//! SPDK's raid RPCs through SPDK's unmodified spdk-rpc, with SPDK's CLI syntax, served by md
//! arrays: bdev_raid_create of raid0, raid1, concat and raid5f (an md raid5, left-asymmetric as
//! SPDK places raid5f's parity); bdev_raid_get_bdevs' shape per category
//! (a raid1's initial resync as a `process`); bdev_raid_remove_base_bdev and
//! bdev_raid_add_base_bdev (rebuild); bdev_raid_delete with and without clear_sb. The arrays are
//! md arrays (md_get_arrays shows them); a raid10 md array is not an SPDK raid. Errors use SPDK's
//! codes: -32700/-32603 for undecodable params, -17 duplicate, -19 unknown, -22 bad values,
//! -1 a claimed base bdev, -16 a raid0 member to remove (md refuses to lose data).

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

fn base_names(r: &Value) -> Vec<Value> {
    r["base_bdevs_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].clone())
        .collect()
}

/// Polls until the raid has no background process and `n` configured base bdevs.
fn wait_settled(t: &Target, name: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = raid(t, name);
        if r.get("process").is_none() && r["num_base_bdevs_discovered"] == n {
            return r;
        }
        assert!(Instant::now() < deadline, "{name} did not settle: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The error object of a raw JSON-RPC call.
fn raw(t: &Target, method: &str, params: Value) -> Value {
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let out = t.raw(req.to_string().as_bytes(), Duration::from_secs(5));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{method}: {e}: {out}"))
}

#[test]
fn bdev_raid_methods_over_md_arrays() {
    let t = Target::start(&[]);
    for i in 0..16 {
        t.ok(&["bdev_malloc_create", "-b", &format!("Malloc{i}"), "8", "512"]);
    }
    t.ok(&[
        "bdev_raid_create",
        "-n",
        "r0",
        "-r",
        "raid0",
        "-z",
        "64",
        "-b",
        "Malloc0 Malloc1",
    ]);
    t.ok(&["bdev_raid_create", "-n", "r1", "-r", "1", "-b", "Malloc2 Malloc3"]);
    t.ok(&["bdev_raid_create", "-n", "c0", "-r", "concat", "-b", "Malloc4 Malloc5"]);
    // Older clients send base_bdevs as one string.
    let v = raw(
        &t,
        "bdev_raid_create",
        json!({"name": "r2", "raid_level": "raid1", "base_bdevs": "Malloc6 Malloc7", "superblock": true}),
    );
    assert_eq!(v["result"], true, "{v}");
    // A raid10 md array is not an SPDK raid.
    let o = t.rpc_with(
        PLUGIN,
        &[
            "md_create",
            "-n",
            "ten",
            "-l",
            "raid10",
            "--assume-clean",
            "Malloc8",
            "Malloc9",
            "Malloc10",
            "Malloc11",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    // Shapes.
    let all = raids(&t, "all");
    let names: Vec<&str> = all.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["r0", "r1", "c0", "r2"]);
    for r in &all {
        for key in [
            "name",
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
            assert!(r.get(key).is_some(), "raid lacks '{key}': {r}");
        }
        assert_eq!(r["state"], "online");
        assert_eq!(r["superblock"], true);
        assert_eq!(r["num_base_bdevs"], 2);
        let bdev = t.json(&["bdev_get_bdevs", "-b", r["name"].as_str().unwrap()]);
        assert_eq!(bdev[0]["uuid"], r["uuid"], "the raid's uuid is its bdev's");
        for b in r["base_bdevs_list"].as_array().unwrap() {
            let base = t.json(&["bdev_get_bdevs", "-b", b["name"].as_str().unwrap()]);
            assert_eq!(b["uuid"], base[0]["uuid"]);
            assert_eq!(base[0]["claimed"], true);
            assert_eq!(b["is_configured"], true);
            assert!(b["data_offset"].as_u64().unwrap() > 0, "{b}");
            assert!(b["data_size"].as_u64().unwrap() > 0, "{b}");
        }
    }
    let r0 = raid(&t, "r0");
    assert_eq!(
        (r0["raid_level"].as_str(), r0["strip_size_kb"].as_u64()),
        (Some("raid0"), Some(64))
    );
    assert_eq!(base_names(&r0), [json!("Malloc0"), json!("Malloc1")]);
    let c0 = raid(&t, "c0");
    assert_eq!(c0["raid_level"], "concat");
    assert_eq!(raid(&t, "r1")["raid_level"], "raid1");
    assert_eq!(raids(&t, "online").len(), 4);
    assert!(raids(&t, "configuring").is_empty());
    assert!(raids(&t, "offline").is_empty());
    // They are md arrays (concat is md's linear).
    let o = t.rpc_with(PLUGIN, &["md_get_arrays", "c0"], None);
    let md: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(md[0]["level"], "linear");
    // raid1 starts with a background resync, shown as a process until it ends.
    let r1 = wait_settled(&t, "r1", 2);
    assert_eq!(r1["num_base_bdevs_operational"], 2);

    // Remove a base bdev: the slot empties, the array stays online.
    t.ok(&["bdev_raid_remove_base_bdev", "Malloc3"]);
    let r1 = raid(&t, "r1");
    assert_eq!(r1["state"], "online");
    assert_eq!(
        (
            r1["num_base_bdevs_discovered"].as_u64(),
            r1["num_base_bdevs_operational"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(base_names(&r1), [json!("Malloc2"), Value::Null]);
    assert_eq!(r1["base_bdevs_list"][1]["is_configured"], false);
    assert_eq!(r1["base_bdevs_list"][1]["uuid"], "00000000-0000-0000-0000-000000000000");
    let m3 = t.json(&["bdev_get_bdevs", "-b", "Malloc3"]);
    assert_eq!(m3[0]["claimed"], false, "the removed base bdev is released");

    // Add it back: rebuilt into the empty slot.
    t.ok(&["bdev_raid_add_base_bdev", "r1", "Malloc3"]);
    let r1 = wait_settled(&t, "r1", 2);
    assert_eq!(base_names(&r1), [json!("Malloc2"), json!("Malloc3")]);

    // Errors.
    let err = |args: &[&str]| t.err(args).0;
    assert_eq!(
        err(&["bdev_raid_create", "-n", "r1", "-r", "raid1", "-b", "Malloc8 Malloc9"]),
        -17
    );
    assert_eq!(
        err(&[
            "bdev_raid_create",
            "-n",
            "x",
            "-r",
            "raid1",
            "-z",
            "64",
            "-b",
            "Malloc8 Malloc9"
        ]),
        -22
    );
    assert_eq!(
        err(&["bdev_raid_create", "-n", "x", "-r", "raid0", "-b", "Malloc8 Malloc9"]),
        -22
    );
    assert_eq!(
        err(&[
            "bdev_raid_create",
            "-n",
            "x",
            "-r",
            "raid0",
            "-z",
            "48",
            "-b",
            "Malloc8 Malloc9"
        ]),
        -22
    );
    // A missing base bdev: the raid waits for it (configuring; rpc_raid_configuring.rs).
    t.ok(&["bdev_raid_create", "-n", "x", "-r", "raid1", "-b", "Malloc12 nope"]);
    assert_eq!(raid(&t, "x")["state"], "configuring");
    t.ok(&["bdev_raid_delete", "x"]);
    assert_eq!(
        err(&[
            "bdev_raid_create",
            "-n",
            "x",
            "-r",
            "5f",
            "-b",
            "Malloc13 Malloc14 Malloc15"
        ]),
        -22,
        "raid5f needs a strip size"
    );
    assert_eq!(
        err(&[
            "bdev_raid_create",
            "-n",
            "x",
            "-r",
            "5f",
            "-z",
            "64",
            "-b",
            "Malloc13 Malloc14"
        ]),
        -22,
        "raid5f needs 3 base bdevs"
    );
    // raid5f: an md raid5 in SPDK raid5f's layout.
    t.ok(&[
        "bdev_raid_create",
        "-n",
        "r5",
        "-r",
        "raid5f",
        "-z",
        "64",
        "-b",
        "Malloc13 Malloc14 Malloc15",
    ]);
    let r5 = raid(&t, "r5");
    assert_eq!(r5["raid_level"], "raid5f", "{r5}");
    assert_eq!(r5["strip_size_kb"], 64);
    assert_eq!(r5["num_base_bdevs"], 3);
    assert_eq!(
        base_names(&r5),
        [json!("Malloc13"), json!("Malloc14"), json!("Malloc15")]
    );
    let md: Value = serde_json::from_slice(&t.rpc_with(PLUGIN, &["md_get_arrays", "r5"], None).stdout).unwrap();
    assert_eq!(md[0]["level"], "raid5", "{md}");
    assert_eq!(md[0]["layout"], "left-asymmetric", "{md}");
    t.ok(&["bdev_raid_delete", "r5"]);
    // A base another module claimed: EPERM, SPDK's claim answer; nothing is stored.
    assert_eq!(
        err(&["bdev_raid_create", "-n", "x", "-r", "raid1", "-b", "Malloc0 nope"]),
        -1
    );
    assert_eq!(
        err(&["bdev_raid_create", "-n", "x", "-r", "raid1", "-b", "Malloc0 Malloc1"]),
        -1
    );
    assert!(raids(&t, "configuring").is_empty());
    assert_eq!(err(&["bdev_raid_delete", "nope"]), -19);
    assert_eq!(err(&["bdev_raid_delete", "ten"]), -19, "raid10 is md's only");
    assert_eq!(err(&["bdev_raid_remove_base_bdev", "nope"]), -19);
    assert_eq!(err(&["bdev_raid_remove_base_bdev", "Malloc8"]), -19, "a raid10 member");
    assert_eq!(
        err(&["bdev_raid_remove_base_bdev", "Malloc0"]),
        -16,
        "raid0 has no redundancy"
    );
    assert_eq!(err(&["bdev_raid_add_base_bdev", "nope", "Malloc3"]), -19);
    assert_eq!(err(&["bdev_raid_add_base_bdev", "r1", "nope"]), -19);
    assert_eq!(
        raw(&t, "bdev_raid_get_bdevs", json!({"category": "some"}))["error"]["code"],
        -22
    );
    for (method, params, code) in [
        ("bdev_raid_get_bdevs", json!({}), -32700),
        ("bdev_raid_get_bdevs", json!({"category": "all", "x": 1}), -32700),
        ("bdev_raid_create", json!({"name": "x", "raid_level": "raid1"}), -32700),
        (
            "bdev_raid_create",
            json!({"name": "x", "raid_level": "raid9", "base_bdevs": ["Malloc8", "Malloc9"]}),
            -32700,
        ),
        (
            "bdev_raid_create",
            json!({"name": "x", "raid_level": "raid1", "base_bdevs": ["Malloc8"], "strip_size_kb": "64"}),
            -32700,
        ),
        ("bdev_raid_delete", json!({"nme": "r1"}), -32700),
        ("bdev_raid_remove_base_bdev", json!({"name": 3}), -32700),
        ("bdev_raid_add_base_bdev", json!({"raid_bdev": "r1"}), -32603),
    ] {
        let v = raw(&t, method, params.clone());
        assert_eq!(v["error"]["code"], code, "{method} {params}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("spdk_json_decode_object failed"),
            "{v}"
        );
    }

    // Delete: the array stops and releases its base bdevs; with clear_sb their superblocks go.
    t.ok(&["bdev_raid_delete", "r0"]);
    t.ok(&["bdev_raid_delete", "-c", "r2"]);
    let names: Vec<Value> = raids(&t, "all").iter().map(|r| r["name"].clone()).collect();
    assert_eq!(names, [json!("r1"), json!("c0")]);
    for b in ["Malloc0", "Malloc1", "Malloc6", "Malloc7"] {
        assert_eq!(t.json(&["bdev_get_bdevs", "-b", b])[0]["claimed"], false, "{b}");
    }
    let kept = t.rpc_with(PLUGIN, &["md_examine", "Malloc0"], None);
    assert!(kept.status.success(), "without clear_sb the superblock stays");
    let cleared = t.rpc_with(PLUGIN, &["md_examine", "Malloc6"], None);
    assert!(!cleared.status.success(), "clear_sb wiped the superblock");
    t.ok(&["bdev_raid_delete", "r1"]);
    t.ok(&["bdev_raid_delete", "c0"]);
    assert!(raids(&t, "all").is_empty());
    assert!(t.rpc_with(PLUGIN, &["md_stop", "ten"], None).status.success());
    assert!(t.stop().success());
}
