//! Configurations as SPDK's own save_config writes them (`fixtures/spdk/`, see its README) load
//! into keel-tgt unmodified (`-c`) and give the bdevs SPDK would have: names, sizes, uuids,
//! product names, claims, raid states and levels, split parts — checked through the stock
//! spdk-rpc. A raid saved before its bases loads configuring and comes online as they appear.
//! Keel's own save_config of each then keeps SPDK's raid options.

mod common;

use common::{workspace, Target};
use serde_json::{json, Value};

fn load(fixture: &str) -> Target {
    let path = workspace().join("app/tests/fixtures/spdk").join(fixture);
    assert!(path.exists(), "{} missing", path.display());
    Target::start(&["-c", path.to_str().unwrap()])
}

fn bdev(t: &Target, name: &str) -> Value {
    t.json(&["bdev_get_bdevs", "-b", name])[0].clone()
}

fn names(t: &Target) -> Vec<String> {
    t.json(&["bdev_get_bdevs"])
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

/// The bdev's (product_name, block_size, num_blocks, uuid, claimed).
fn facts(t: &Target, name: &str) -> (String, u64, u64, String, bool) {
    let b = bdev(t, name);
    (
        b["product_name"].as_str().unwrap().to_string(),
        b["block_size"].as_u64().unwrap(),
        b["num_blocks"].as_u64().unwrap(),
        b["uuid"].as_str().unwrap().to_string(),
        b["claimed"].as_bool().unwrap(),
    )
}

fn fact(product: &str, bs: u64, blocks: u64, uuid: &str, claimed: bool) -> (String, u64, u64, String, bool) {
    (product.into(), bs, blocks, uuid.into(), claimed)
}

const M0: &str = "2f9b2c1e-5a7d-4c3b-8e1f-0a1b2c3d4e01";
const M1: &str = "2f9b2c1e-5a7d-4c3b-8e1f-0a1b2c3d4e02";

/// Checks the raid `name` is online with `level`, `strip_kb` and `bases`, its bdev SPDK's raid
/// view with `uuid`; returns its bdev.
fn check_raid(t: &Target, name: &str, uuid: &str, level: &str, strip_kb: u64, bases: &[&str]) -> Value {
    let r = t.json(&["bdev_raid_get_bdevs", "online"]);
    let r = r
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} not online: {r}"))
        .clone();
    assert_eq!(
        (
            r["uuid"].as_str(),
            r["raid_level"].as_str(),
            r["strip_size_kb"].as_u64()
        ),
        (Some(uuid), Some(level), Some(strip_kb)),
        "{r}"
    );
    let listed: Vec<Value> = r["base_bdevs_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].clone())
        .collect();
    assert_eq!(listed, bases.iter().map(|b| json!(b)).collect::<Vec<_>>());
    assert_eq!(r["num_base_bdevs_discovered"], bases.len());
    for b in bases {
        assert!(bdev(t, b)["claimed"].as_bool().unwrap(), "{b} not claimed");
    }
    let b = bdev(t, name);
    assert_eq!(
        (b["product_name"].as_str(), b["uuid"].as_str()),
        (Some("Raid Volume"), Some(uuid))
    );
    assert_eq!(b["driver_specific"]["raid"]["state"], "online");
    assert_eq!(b["block_size"], 4096);
    b
}

/// Keel's save_config of the loaded target keeps SPDK's raid options as loaded.
fn saves_raid_options(t: &Target) {
    let saved: Value = serde_json::from_str(&t.ok(&["save_config"])).unwrap();
    let bdev = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == "bdev")
        .unwrap()["config"]
        .clone();
    let opts = bdev
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["method"] == "bdev_raid_set_options")
        .unwrap_or_else(|| panic!("no bdev_raid_set_options in {bdev}"));
    assert_eq!(
        opts["params"],
        json!({"process_window_size_kb": 1024, "process_max_bandwidth_mb_sec": 0})
    );
}

#[test]
fn null_and_malloc_configs() {
    let t = load("null.json");
    assert_eq!(names(&t), ["Null0", "Null1"]);
    assert_eq!(
        facts(&t, "Null1"),
        fact("Null disk", 4096, 32768, "6b1d0f3a-9c2e-4d5f-8a7b-1c2d3e4f5a02", false)
    );
    saves_raid_options(&t);
    assert!(t.stop().success());

    let t = load("malloc.json");
    assert_eq!(names(&t), ["Malloc0", "Malloc1"]);
    assert_eq!(facts(&t, "Malloc0"), fact("Malloc disk", 4096, 16384, M0, false));
    assert_eq!(facts(&t, "Malloc1"), fact("Malloc disk", 4096, 16384, M1, false));
    assert!(t.stop().success());
}

#[test]
fn raid0_and_raid1_configs() {
    let t = load("raid0.json");
    assert_eq!(names(&t), ["Malloc0", "Malloc1", "Raid0"]);
    let b = check_raid(
        &t,
        "Raid0",
        "9e4f3a2b-1c0d-4e5f-a6b7-c8d9e0f1a2b3",
        "raid0",
        64,
        &["Malloc0", "Malloc1"],
    );
    // Two 64 MiB members less md's metadata area (SPDK without a superblock would give all of
    // it: Keel's arrays always carry md's).
    let blocks = b["num_blocks"].as_u64().unwrap();
    assert!(blocks > 28_000 && blocks < 32_768, "{blocks}");
    assert_eq!(facts(&t, "Malloc0"), fact("Malloc disk", 4096, 16384, M0, true));
    saves_raid_options(&t);
    assert!(t.stop().success());

    let t = load("raid1.json");
    let b = check_raid(
        &t,
        "Raid1",
        "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
        "raid1",
        0,
        &["Malloc0", "Malloc1"],
    );
    let blocks = b["num_blocks"].as_u64().unwrap();
    assert!(blocks > 14_000 && blocks < 16_384, "{blocks}");
    assert!(t.stop().success());
}

#[test]
fn split_config() {
    let t = load("split.json");
    assert_eq!(
        names(&t),
        ["Malloc0", "Malloc0p0", "Malloc0p1", "Malloc0p2", "Malloc0p3"]
    );
    assert!(bdev(&t, "Malloc0")["claimed"].as_bool().unwrap());
    for i in 0..4 {
        let p = bdev(&t, &format!("Malloc0p{i}"));
        assert_eq!(
            (
                p["product_name"].as_str(),
                p["num_blocks"].as_u64(),
                p["block_size"].as_u64()
            ),
            (Some("Split Disk"), Some(4096), Some(4096))
        );
        assert_eq!(p["driver_specific"]["split"]["offset_blocks"], i * 4096);
    }
    assert!(t.stop().success());
}

#[test]
fn a_raid_saved_before_its_bases() {
    let t = load("raid1_before_bases.json");
    // Configuring while the file ran, online once the passthrus registered.
    check_raid(
        &t,
        "Raid1",
        "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
        "raid1",
        0,
        &["Pt0", "Pt1"],
    );
    assert!(t
        .json(&["bdev_raid_get_bdevs", "configuring"])
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(names(&t), ["Malloc0", "Malloc1", "Pt0", "Pt1", "Raid1"]);
    assert_eq!(
        facts(&t, "Pt1"),
        fact("passthru", 4096, 16384, "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c02", true)
    );
    saves_raid_options(&t);
    assert!(t.stop().success());
}
