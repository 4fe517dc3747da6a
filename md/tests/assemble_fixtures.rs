//! Assembling arrays that the real Linux kernel and mdadm made (`fixtures/`, see its README):
//! each member image is decompressed with the `zstd` command (missing zstd fails the test),
//! loaded into a malloc bdev, and `md_assemble` starts the array from the superblocks alone.
//! Then the array's size and every block of the pattern are checked through the array bdev.
//! raid1-degraded: member 1 is stale (events 17 against 22, removed in the freshest role
//! table) and must come back rebuilding — never trusted for reads — and after the recovery both
//! members hold the 0xbeef data. The parity sets (issue 14): raid4 (layout word 0, the last
//! member's dev_number 4), raid5 left-symmetric with and without a bitmap, raid6; raid5 with a
//! stale member and raid6 with two, which come back rebuilding and are never read; raid6 on
//! three of five members.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Rig;
use keel_md::AssembleOpts;
use serde_json::Value;

fn fixture_dir(set: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(set)
}

fn fixture(set: &str) -> Value {
    let text = std::fs::read_to_string(fixture_dir(set).join("fixture.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Decompresses `m<i>.img.zst` of `set` and returns the image bytes.
fn image(set: &str, file: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.img");
    let status = Command::new("zstd")
        .arg("-q")
        .arg("-d")
        .arg("-f")
        .arg("-o")
        .arg(&out)
        .arg(fixture_dir(set).join(file))
        .status()
        .expect("the zstd command is needed to decompress the md fixtures (apt-get install zstd)");
    assert!(status.success(), "zstd -d {set}/{file} failed: {status}");
    std::fs::read(&out).unwrap()
}

/// A malloc bdev `name` (512-byte blocks) holding `img` (only non-zero 64 KiB pieces are
/// written: malloc memory starts zeroed).
fn load(r: &Rig, name: &str, img: &[u8]) {
    r.malloc(name, img.len() as u64 / 512, 512);
    const PIECE: usize = 64 * 1024;
    for (i, piece) in img.chunks(PIECE).enumerate() {
        if piece.iter().any(|&b| b != 0) {
            assert_eq!(
                r.write(name, (i * PIECE / 512) as u64, piece),
                keel_bdev::IoStatus::Success
            );
        }
    }
}

/// Loads every member of `set` as `<prefix><i>`; returns the names in role order.
fn load_set(r: &Rig, set: &str, prefix: &str) -> Vec<String> {
    let fx = fixture(set);
    fx["members"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let name = format!("{prefix}{i}");
            load(r, &name, &image(set, f.as_str().unwrap()));
            name
        })
        .collect()
}

/// Block `i` of the pattern with `seed`: the u64 `i ^ seed` (LE) repeated over 4 KiB.
fn block(i: u64, seed: u64) -> Vec<u8> {
    (i ^ seed).to_le_bytes().repeat(512)
}

/// Checks the whole pattern of `fx` through bdev `name` (1 MiB reads).
fn verify_pattern(r: &Rig, name: &str, fx: &Value) {
    let bs = r.reg.get(name).unwrap().info().block_size as u64;
    for range in fx["pattern"].as_array().unwrap() {
        let (start, end, seed) = (
            range["start_block"].as_u64().unwrap(),
            range["end_block"].as_u64().unwrap(),
            range["seed"].as_u64().unwrap(),
        );
        let mut b = start;
        while b < end {
            let n = (end - b).min(256);
            let data = r.read(name, b * 4096 / bs, n * 4096 / bs);
            for k in 0..n {
                let got = &data[(k * 4096) as usize..((k + 1) * 4096) as usize];
                assert!(
                    got == block(b + k, seed).as_slice(),
                    "{name}: block {} is not seed {seed:#x} (starts {:02x?})",
                    b + k,
                    &got[..8]
                );
            }
            b += n;
        }
    }
}

fn check_set(set: &str, name: &str, opts: AssembleOpts, prefix: &str) -> Rig {
    let r = Rig::new(2);
    let fx = fixture(set);
    let members = load_set(&r, set, prefix);
    let opts = AssembleOpts {
        members: opts.members.or(Some(members)),
        ..opts
    };
    let got = r.assemble(opts).unwrap();
    assert_eq!(got, name);
    assert_eq!(got, fx["name"].as_str().unwrap());
    let info = r.reg.get(name).unwrap().info().clone();
    assert_eq!(
        info.size_bytes(),
        fx["array_size_bytes"].as_u64().unwrap(),
        "{set} size"
    );
    let a = r.array(name);
    assert_eq!(a.uuid, fx["uuid"].as_str().unwrap());
    assert_eq!(a.chunk_kb as u64, fx["chunk_kb"].as_u64().unwrap());
    assert_eq!(a.data_offset_sectors, fx["data_offset_sectors"].as_u64().unwrap());
    verify_pattern(&r, name, &fx);
    r
}

#[test]
fn raid0_two_zones() {
    let r = check_set("raid0", "fxr0", AssembleOpts::default(), "R0_");
    let a = r.array("fxr0");
    assert_eq!((a.level.as_str(), a.layout.as_deref()), ("raid0", Some("original")));
    assert_eq!(a.events, 0, "the kernel left raid0 at events 0");
    r.stop("fxr0").unwrap();
}

#[test]
fn linear_by_uuid_without_members() {
    let r = Rig::new(1);
    let fx = fixture("linear");
    load_set(&r, "linear", "L");
    // Some other unclaimed bdev without a superblock is looked at and ignored.
    r.malloc("junk", 4096, 512);
    let name = r
        .assemble(AssembleOpts {
            uuid: Some(fx["uuid"].as_str().unwrap().into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(name, "fxlin");
    assert_eq!(
        r.reg.get("fxlin").unwrap().info().size_bytes(),
        fx["array_size_bytes"].as_u64().unwrap()
    );
    verify_pattern(&r, "fxlin", &fx);
    let a = r.array("fxlin");
    assert_eq!(
        a.members.iter().map(|m| (m.bdev.as_str(), m.role)).collect::<Vec<_>>(),
        [("L0", Some(0)), ("L1", Some(1))]
    );
    assert_eq!(r.reg.get("L0").unwrap().claimed_by().as_deref(), Some("md"));
    r.stop("fxlin").unwrap();
    assert!(r.reg.get("L0").unwrap().claimed_by().is_none());
}

#[test]
fn raid10_near2_under_another_name() {
    let r = check_set(
        "raid10",
        "fxr10",
        AssembleOpts {
            name: None,
            ..Default::default()
        },
        "T",
    );
    let a = r.array("fxr10");
    assert_eq!((a.level.as_str(), a.layout.as_deref()), ("raid10", Some("near=2")));
    assert_eq!(a.state, "clean");
    assert_eq!(a.events, 17);
    r.stop("fxr10").unwrap();

    // Assembled again from what Keel wrote at stop, under a name of our choosing.
    let name = r
        .assemble(AssembleOpts {
            name: Some("again".into()),
            members: Some((0..4).map(|i| format!("T{i}")).collect()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(name, "again");
    verify_pattern(&r, "again", &fixture("raid10"));
    r.stop("again").unwrap();
}

#[test]
fn raid1_with_bitmap() {
    let r = check_set("raid1-bitmap", "fxr1", AssembleOpts::default(), "B");
    let a = r.array("fxr1");
    assert_eq!(a.state, "clean");
    assert_eq!(a.bitmap.map(|b| b.0), Some(1024), "1 MiB bitmap chunks");
    assert_eq!(
        a.members.iter().map(|m| m.state).collect::<Vec<_>>(),
        ["in_sync", "in_sync"]
    );
    r.stop("fxr1").unwrap();
    assert!(r.superblock("B0").events > 17);
}

#[test]
fn raid1_degraded_stale_member_rebuilds() {
    let r = Rig::new(2);
    let fx = fixture("raid1-degraded");
    let members = load_set(&r, "raid1-degraded", "D");
    // Before: m1 holds the old 0x5eed data in the first MiB of its data area.
    let m1_before = r.read("D1", 2048, 8);
    assert_eq!(&m1_before[..4096], block(0, 0x5eed).as_slice());

    let name = r
        .assemble(AssembleOpts {
            members: Some(members),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(name, "fxr1d");
    let a = r.array("fxr1d");
    assert_eq!(
        a.members.iter().map(|m| (m.bdev.as_str(), m.role)).collect::<Vec<_>>(),
        [("D0", Some(0)), ("D1", Some(1))]
    );
    assert_eq!(
        a.members.iter().map(|m| m.state).collect::<Vec<_>>(),
        ["in_sync", "rebuilding"],
        "the stale member is not trusted"
    );
    assert!(a.state.contains("degraded"), "{}", a.state);
    assert!(a.events >= 22, "the freshest member defines the array: {a:?}");
    // Reads never come from the stale copy: the 0xbeef MiB reads back, repeatedly (raid1
    // alternates members).
    for _ in 0..4 {
        verify_pattern(&r, "fxr1d", &fx);
    }
    // The recovery finishes (sync engine) and both members hold the array's data.
    r.wait_until(20, "recovery onto D1", |r| {
        r.array("fxr1d").members.iter().all(|m| m.state == "in_sync")
    });
    let a = r.array("fxr1d");
    assert!(!a.state.contains("degraded"), "{}", a.state);
    for m in ["D0", "D1"] {
        let data = r.read(m, 2048, 256 * 8);
        for i in 0..256u64 {
            assert_eq!(
                &data[(i * 4096) as usize..((i + 1) * 4096) as usize],
                block(i, 0xbeef).as_slice(),
                "{m} block {i}"
            );
        }
    }
    r.stop("fxr1d").unwrap();
    let (s0, s1) = (r.superblock("D0"), r.superblock("D1"));
    assert_eq!(s0.events, s1.events);
    assert_eq!(s0.dev_roles[..2], [0, 1]);
}

// ---------------------------------------------------------------------------------------------
// Parity levels (issue 14): raid4, raid5 and raid6 made by the guest kernel (fixtures/README.md).

/// A healthy parity set: assembled, its level, layout and events as the kernel wrote them, the
/// whole pattern read back.
fn check_parity(set: &str, name: &str, prefix: &str, level: &str, layout: Option<&str>) -> Rig {
    let r = check_set(set, name, AssembleOpts::default(), prefix);
    let fx = fixture(set);
    let a = r.array(name);
    assert_eq!(a.level, level, "{set}");
    if let Some(l) = layout {
        assert_eq!(a.layout.as_deref(), Some(l), "{set}");
    }
    assert_eq!(a.state, "clean", "{set}");
    assert_eq!(a.events, fx["events"][0].as_u64().unwrap(), "{set}");
    assert!(a.members.iter().all(|m| m.state == "in_sync"), "{set}: {a:?}");
    r
}

#[test]
fn raid5_left_symmetric_four_disks() {
    let r = check_parity("raid5", "fxr5", "P", "raid5", Some("left-symmetric"));
    // Again after Keel rewrote the superblocks at stop.
    r.stop("fxr5").unwrap();
    let name = r
        .assemble(AssembleOpts {
            members: Some((0..4).map(|i| format!("P{i}")).collect()),
            ..Default::default()
        })
        .unwrap();
    verify_pattern(&r, &name, &fixture("raid5"));
    r.stop(&name).unwrap();
}

#[test]
fn raid4_parity_on_the_last_member() {
    // The kernel stores layout word 0 for raid4 and the last member's dev_number is 4 (it was
    // built by recovery onto a spare): roles come from the role table.
    let r = check_parity("raid4", "fxr4", "Q", "raid4", None);
    let a = r.array("fxr4");
    assert_eq!(
        a.members.iter().map(|m| (m.bdev.as_str(), m.role)).collect::<Vec<_>>(),
        [("Q0", Some(0)), ("Q1", Some(1)), ("Q2", Some(2)), ("Q3", Some(3))]
    );
    r.stop("fxr4").unwrap();
}

#[test]
fn raid5_with_a_bitmap() {
    let r = check_parity("raid5-bitmap", "fxr5b", "W", "raid5", Some("left-symmetric"));
    assert_eq!(r.array("fxr5b").bitmap.map(|b| b.0), Some(512), "512 KiB bitmap chunks");
    r.stop("fxr5b").unwrap();
}

#[test]
fn raid6_five_disks() {
    let r = check_parity("raid6", "fxr6", "S", "raid6", Some("left-symmetric"));
    r.stop("fxr6").unwrap();
}

/// A degraded set with every member given: the stale ones (events behind) come back
/// rebuilding and are never read (the 0xbeef range written after they failed reads back,
/// repeatedly), the recovery completes, and the rebuilt array reads the same.
fn degraded_set_rebuilds(set: &str, name: &str, prefix: &str) {
    let r = Rig::new(2);
    let fx = fixture(set);
    let members = load_set(&r, set, prefix);
    let stale: Vec<usize> = fx["stale_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let got = r
        .assemble(AssembleOpts {
            members: Some(members.clone()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(got, name);
    let a = r.array(name);
    for (i, m) in members.iter().enumerate() {
        let info = a
            .members
            .iter()
            .find(|x| &x.bdev == m)
            .unwrap_or_else(|| panic!("{m}: {a:?}"));
        if stale.contains(&i) {
            assert_ne!(info.state, "in_sync", "{set}: stale {m} must not be trusted: {a:?}");
        } else {
            assert_eq!(info.state, "in_sync", "{set}: {m}: {a:?}");
        }
    }
    assert!(a.state.contains("degraded"), "{set}: {}", a.state);
    for _ in 0..3 {
        verify_pattern(&r, name, &fx);
    }
    r.wait_until(60, "recovery of the stale members", |r| {
        r.array(name).members.iter().all(|m| m.state == "in_sync")
    });
    assert!(!r.array(name).state.contains("degraded"));
    verify_pattern(&r, name, &fx);
    r.stop(name).unwrap();
    // Every member now carries the same events and the array assembles whole.
    let events: Vec<u64> = members.iter().map(|m| r.superblock(m).events).collect();
    assert!(events.windows(2).all(|w| w[0] == w[1]), "{set}: {events:?}");
    let again = r
        .assemble(AssembleOpts {
            members: Some(members),
            ..Default::default()
        })
        .unwrap();
    assert!(r.array(&again).members.iter().all(|m| m.state == "in_sync"));
    verify_pattern(&r, &again, &fx);
    r.stop(&again).unwrap();
}

#[test]
fn raid5_degraded_stale_member_rebuilds() {
    degraded_set_rebuilds("raid5-degraded", "fxr5d", "E");
}

#[test]
fn raid6_two_stale_members_rebuild() {
    degraded_set_rebuilds("raid6-degraded", "fxr6d", "G");
}

#[test]
fn raid6_runs_on_three_of_five_members() {
    // Only the fresh members: every stripe misses two blocks (data, P or Q), each rebuilt from
    // what is left.
    let r = Rig::new(2);
    let fx = fixture("raid6-degraded");
    let members = load_set(&r, "raid6-degraded", "H");
    let fresh: Vec<String> = [0usize, 2, 4].iter().map(|&i| members[i].clone()).collect();
    let name = r
        .assemble(AssembleOpts {
            members: Some(fresh),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(name, "fxr6d");
    assert!(r.array(&name).state.contains("degraded"));
    verify_pattern(&r, &name, &fx);
    r.stop(&name).unwrap();
}
