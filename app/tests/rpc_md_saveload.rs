//! md arrays survive save_config → restart. On aio bdevs backed by image files: a raid1 made with
//! md_create, a raid0 made with SPDK's bdev_raid_create, a raid1 over a dm device (array over
//! dm), a dm device over the raid0 (dm over array) and a raid6 over four images. save_config writes md_assemble (never a
//! create) in dependency order. keel-perf loads that file and writes/verifies through the
//! arrays; the image files then hold its pattern exactly where md's layout puts each array
//! offset (both mirrors equal). keel-tgt restarted with `-c` — and a fresh keel-tgt given the
//! file through spdk-rpc's load_config — brings every array back with the same UUID, members and
//! roles, clean, and leaves the data areas byte for byte as they were.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{workspace, Target};
use serde_json::Value;

const PLUGIN: &[&str] = &["--plugin", "keel_rpc"];
const MEMBER_BYTES: u64 = 16 << 20;
const CHUNK_BYTES: u64 = 64 << 10;
/// Where d4 starts on F4. Not 0: with a linear map at 0, F4 itself would show mdd's member
/// superblock and auto-assembly would take F4 before d4 exists (as Linux md would).
const D4_SHIFT_BYTES: u64 = 1 << 20;

/// keel-perf from the same build, brought up to date first (it links the RPC crate, whose
/// methods the saved config calls; `cargo test -p keel-app` does not rebuild it).
fn keel_perf() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap(); // target/<profile>/deps/..
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace()).args(["build", "-q", "-p", "keel-perf"]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    assert!(cmd.status().unwrap().success(), "cannot build keel-perf");
    dir.join("keel-perf")
}

fn plugin(t: &Target, args: &[&str]) -> String {
    let o = t.rpc_with(PLUGIN, args, None);
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// What must come back of one array: name, uuid, level, data_offset_sectors, members with roles.
type ArrayIdentity = (String, String, String, u64, Vec<(String, Value)>);

/// Every array's identity, by name.
fn arrays(t: &Target) -> Vec<ArrayIdentity> {
    let v: Value = serde_json::from_str(&plugin(t, &["md_get_arrays"])).unwrap();
    let mut out: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["uuid"].as_str().unwrap().to_string(),
                a["level"].as_str().unwrap().to_string(),
                a["data_offset_sectors"].as_u64().unwrap(),
                a["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| (m["bdev"].as_str().unwrap().to_string(), m["role"].clone()))
                    .collect(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Takes the stack down top first (dm over the array, the arrays, the dm device under one), so
/// every array stops cleanly before the target exits.
fn teardown(t: &Target) {
    plugin(t, &["dm_remove", "over"]);
    for a in ["mirror", "stripe", "mdd", "par"] {
        plugin(t, &["md_stop", a]);
    }
    plugin(t, &["dm_remove", "d4"]);
}

/// Waits until no array syncs, then checks every one is clean and not degraded.
fn assert_all_clean(t: &Target) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value = serde_json::from_str(&plugin(t, &["md_get_arrays"])).unwrap();
        let list = v.as_array().unwrap();
        if list.iter().all(|a| a["sync_action"] == "idle") {
            for a in list {
                assert_eq!(a["state"], "clean", "{a}");
                assert!(
                    a["members"].as_array().unwrap().iter().all(|m| m["state"] == "in_sync"),
                    "{a}"
                );
            }
            return;
        }
        assert!(Instant::now() < deadline, "arrays still syncing: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The data area (bytes after `data_offset`, `len` long) of an image file.
fn data_area(img: &Path, data_offset_bytes: u64, len: u64) -> Vec<u8> {
    let all = std::fs::read(img).unwrap();
    all[data_offset_bytes as usize..(data_offset_bytes + len) as usize].to_vec()
}

/// keel-perf's pattern header (word 0: the byte offset on the bdev it wrote) of every written
/// 4 KiB block of a member's data area, with the block's offset in that area.
fn written_headers(area: &[u8]) -> Vec<(u64, u64)> {
    area.chunks(4096)
        .enumerate()
        .filter(|(_, b)| b.iter().any(|&x| x != 0))
        .map(|(i, b)| (i as u64 * 4096, u64::from_le_bytes(b[..8].try_into().unwrap())))
        .collect()
}

#[test]
fn md_arrays_come_back_from_saved_config() {
    let keep = tempfile::tempdir().unwrap();
    let imgs: Vec<PathBuf> = (0..10).map(|i| keep.path().join(format!("f{i}.img"))).collect();
    for img in &imgs {
        std::fs::File::create(img).unwrap().set_len(MEMBER_BYTES).unwrap();
    }
    let t = Target::start(&[]);
    for (i, img) in imgs.iter().enumerate() {
        t.ok(&["bdev_aio_create", img.to_str().unwrap(), &format!("F{i}"), "512"]);
    }
    plugin(
        &t,
        &["md_create", "-n", "mirror", "-l", "raid1", "--assume-clean", "F0", "F1"],
    );
    t.ok(&[
        "bdev_raid_create",
        "-n",
        "stripe",
        "-r",
        "raid0",
        "-z",
        "64",
        "-b",
        "F2 F3",
    ]);
    let d4_table = format!(
        "0 {} linear F4 {}",
        (MEMBER_BYTES - D4_SHIFT_BYTES) / 512,
        D4_SHIFT_BYTES / 512
    );
    plugin(&t, &["dm_create", "d4", "--table", &d4_table]);
    plugin(
        &t,
        &["md_create", "-n", "mdd", "-l", "raid1", "--assume-clean", "d4", "F5"],
    );
    plugin(
        &t,
        &[
            "md_create",
            "-n",
            "par",
            "-l",
            "raid6",
            "-c",
            "64",
            "--assume-clean",
            "F6",
            "F7",
            "F8",
            "F9",
        ],
    );
    let stripe_sectors = t.json(&["bdev_get_bdevs", "-b", "stripe"])[0]["num_blocks"]
        .as_u64()
        .unwrap();
    plugin(
        &t,
        &[
            "dm_create",
            "over",
            "--table",
            &format!("0 {stripe_sectors} linear stripe 0"),
        ],
    );
    let before = arrays(&t);
    let mdd: Value = serde_json::from_str(&plugin(&t, &["md_get_arrays", "mdd"])).unwrap();
    let mdd_bytes = mdd[0]["size_blocks"].as_u64().unwrap() * mdd[0]["block_size"].as_u64().unwrap();
    assert_eq!(before.len(), 4);

    // save_config: md_assemble for every array, after what it stands on.
    let text = t.ok(&["save_config"]);
    let cfg = keep.path().join("stack.json");
    std::fs::write(&cfg, &text).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut calls: Vec<(String, String)> = Vec::new();
    for s in doc["subsystems"].as_array().unwrap() {
        for c in s["config"].as_array().into_iter().flatten() {
            let name = c["params"]["name"].as_str().unwrap_or("").to_string();
            calls.push((c["method"].as_str().unwrap().to_string(), name));
        }
    }
    let pos = |m: &str, n: &str| {
        calls
            .iter()
            .position(|c| c.0 == m && c.1 == n)
            .unwrap_or_else(|| panic!("no {m} {n} in {calls:?}"))
    };
    assert!(
        !calls.iter().any(|c| c.0 == "md_create" || c.0 == "bdev_raid_create"),
        "{calls:?}"
    );
    assert!(pos("md_assemble", "mirror") > pos("bdev_aio_create", "F1"));
    assert!(pos("md_assemble", "stripe") > pos("bdev_aio_create", "F3"));
    assert!(
        pos("md_assemble", "mdd") > pos("dm_create", "d4"),
        "array over dm: {calls:?}"
    );
    assert!(
        pos("dm_create", "over") > pos("md_assemble", "stripe"),
        "dm over array: {calls:?}"
    );
    let entry = doc["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["config"].as_array().cloned().unwrap_or_default())
        .find(|c| c["method"] == "md_assemble" && c["params"]["name"] == "mirror")
        .unwrap();
    assert_eq!(entry["params"]["members"], serde_json::json!(["F0", "F1"]));
    teardown(&t);
    assert!(t.stop().success());

    // keel-perf runs on the same file: writes and verifies through every array.
    let out = Command::new(keel_perf())
        .args(["--no-pin", "--json"])
        .arg(&cfg)
        .args([
            "-q",
            "8",
            "-o",
            "4096",
            "-w",
            "verify",
            "-t",
            "1",
            "--output-format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut jobs: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            assert_eq!(j["status"], "finished", "{j}");
            assert_eq!(j["io_failed"], 0, "{j}");
            j["job"].as_str().unwrap()
        })
        .collect();
    jobs.sort();
    assert_eq!(jobs, ["mdd", "mirror", "over", "par"]);

    // The pattern sits where md's layout puts it (data_offset is the same on every member here).
    let off = |name: &str| before.iter().find(|a| a.0 == name).unwrap().3 * 512;
    let mirror_len = MEMBER_BYTES - off("mirror");
    let m0 = data_area(&imgs[0], off("mirror"), mirror_len);
    assert_eq!(m0, data_area(&imgs[1], off("mirror"), mirror_len), "mirrors differ");
    let h = written_headers(&m0);
    assert!(!h.is_empty(), "keel-perf wrote nothing to mirror");
    assert!(h.iter().all(|(at, hdr)| at == hdr), "raid1 maps offsets 1:1");
    let d0 = data_area(&imgs[4], D4_SHIFT_BYTES + off("mdd"), mdd_bytes);
    assert_eq!(d0, data_area(&imgs[5], off("mdd"), mdd_bytes), "mdd's mirrors differ");
    assert!(!written_headers(&d0).is_empty());
    let stripe_len = (MEMBER_BYTES - off("stripe")) / CHUNK_BYTES * CHUNK_BYTES;
    let mut stripe_written = 0;
    for m in 0..2u64 {
        let area = data_area(&imgs[2 + m as usize], off("stripe"), stripe_len);
        for (at, hdr) in written_headers(&area) {
            let chunk = (at / CHUNK_BYTES) * 2 + m;
            assert_eq!(hdr, chunk * CHUNK_BYTES + at % CHUNK_BYTES, "raid0 layout, member {m}");
            stripe_written += 1;
        }
    }
    assert!(stripe_written > 0);
    // Each image's data area, to compare after the restarts.
    let mut img_offsets: Vec<u64> = [
        "mirror", "mirror", "stripe", "stripe", "mdd", "mdd", "par", "par", "par", "par",
    ]
    .iter()
    .map(|a| off(a))
    .collect();
    img_offsets[4] += D4_SHIFT_BYTES;
    let area_of = |i: usize| data_area(&imgs[i], img_offsets[i], MEMBER_BYTES - img_offsets[i]);
    let snapshot: Vec<Vec<u8>> = (0..imgs.len()).map(area_of).collect();

    // keel-tgt -c: everything back, same identity, clean.
    let t = Target::start(&["-c", cfg.to_str().unwrap()]);
    assert_eq!(arrays(&t), before);
    assert_all_clean(&t);
    let r = t.json(&["bdev_raid_get_bdevs", "all"]);
    assert_eq!(
        r.as_array().unwrap().len(),
        3,
        "raid1 mirror and mdd, raid0 stripe: {r}"
    );
    assert_eq!(
        t.json(&["bdev_get_bdevs", "-b", "over"])[0]["num_blocks"],
        stripe_sectors
    );
    teardown(&t);
    assert!(t.stop().success());

    // load_config into a running target: the same.
    let t = Target::start(&[]);
    let o = t.rpc_with(&[], &["load_config", "-j", cfg.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(arrays(&t), before);
    assert_all_clean(&t);
    teardown(&t);
    assert!(t.stop().success());

    for (i, area) in snapshot.iter().enumerate() {
        assert!(area_of(i) == *area, "data of f{i} changed across the restarts");
    }
}
