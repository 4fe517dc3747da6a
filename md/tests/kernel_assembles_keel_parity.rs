//! The reverse direction of the kernel fixtures (issue 14): a raid5 and a raid6, both with an
//! internal write-intent bitmap, created and written by Keel, are assembled by the lab guest's
//! Linux md (`mdadm --assemble --run`), which reads every block of the pattern back through
//! `/dev/md0` and runs a `check` (mismatch_cnt must be 0): Keel's placement, parity, superblocks
//! and bitmap are what the kernel expects. Through `md/tests/fixtures/kernel-check.sh` (the same
//! checker the kernel-made sets pass) and `scripts/lab.sh`: a lab that cannot start fails the
//! test. Member images are dumped from the malloc members after a clean stop.

mod common;

use std::path::Path;
use std::process::Command;

use common::Rig;
use keel_md::CreateOpts;
use serde_json::json;

const SEED: u64 = 0x6b65656c;
/// 8 MiB members of 512-byte blocks.
const MEMBER_BLOCKS: u64 = 16384;

fn block(i: u64) -> Vec<u8> {
    (i ^ SEED).to_le_bytes().repeat(512)
}

/// Creates `level` over `n` members with a bitmap, waits for its initial build, writes the
/// pattern over the whole array, stops it, and writes the members and a fixture.json into
/// `dir`.
fn make_set(r: &Rig, level: &str, n: usize, dir: &Path) {
    let members: Vec<String> = (0..n).map(|i| format!("{level}_m{i}")).collect();
    for m in &members {
        r.malloc(m, MEMBER_BLOCKS, 512);
    }
    r.create(CreateOpts {
        name: level.into(),
        level: level.into(),
        members: members.clone(),
        chunk_kb: Some(64),
        bitmap: Some("internal".into()),
        ..Default::default()
    })
    .unwrap();
    r.wait_until(120, "initial build", |r| {
        let a = r.array(level);
        a.sync.action == "idle" && a.members.iter().all(|m| m.state == "in_sync")
    });
    let size_bytes = r.reg.get(level).unwrap().info().size_bytes();
    let blocks = size_bytes / 4096;
    let mut b = 0;
    while b < blocks {
        let n = (blocks - b).min(64);
        let data: Vec<u8> = (b..b + n).flat_map(block).collect();
        assert_eq!(r.write(level, b * 8, &data), keel_bdev::IoStatus::Success);
        b += n;
    }
    r.stop(level).unwrap();
    let mut files = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let img = r.read(m, 0, MEMBER_BLOCKS);
        let f = format!("m{i}.img");
        std::fs::write(dir.join(&f), img).unwrap();
        files.push(f);
    }
    let level_num = if level == "raid5" { 5 } else { 6 };
    let fx = json!({
        "name": level,
        "level": level_num,
        "members": files,
        "array_size_bytes": size_bytes,
        "pattern": [{"start_block": 0, "end_block": blocks, "seed": SEED}],
    });
    std::fs::write(dir.join("fixture.json"), serde_json::to_vec_pretty(&fx).unwrap()).unwrap();
}

#[test]
fn linux_md_assembles_and_checks_keel_raid5_and_raid6() {
    let r = Rig::new(2);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let work = tempfile::tempdir().unwrap();
    let (d5, d6) = (work.path().join("keel-raid5"), work.path().join("keel-raid6"));
    std::fs::create_dir_all(&d5).unwrap();
    std::fs::create_dir_all(&d6).unwrap();
    make_set(&r, "raid5", 4, &d5);
    make_set(&r, "raid6", 5, &d6);
    let out = work.path().join("out");
    let o = Command::new(root.join("md/tests/fixtures/kernel-check.sh"))
        .current_dir(&root)
        .arg(&d5)
        .arg(&d6)
        .env("OUT", &out)
        .env("LAB_TIMEOUT", "600")
        .output()
        .expect("run kernel-check.sh");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let log = std::fs::read_to_string(out.join("guest.log")).unwrap_or_default();
    assert!(
        o.status.success(),
        "the kernel did not accept Keel's arrays ({}):\n{stdout}\n{}\n{log}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    for set in ["keel-raid5", "keel-raid6"] {
        let result = std::fs::read_to_string(out.join(set).join("result.txt")).unwrap_or_default();
        assert!(result.starts_with("ok"), "{set}: {result}\n{stdout}");
        let check = std::fs::read_to_string(out.join(set).join("check.txt")).unwrap_or_default();
        assert_eq!(check.trim(), "check done: mismatch_cnt=0", "{set}");
    }
}
