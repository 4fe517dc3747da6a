//! fio's crc32c verify through md arrays built by the config file: a raid1 over two malloc
//! bdevs (internal bitmap, initial resync running under the workload) and a raid10 near-2 over
//! four (12 KiB writes across 64 KiB chunks: split and mirrored).

mod common;

use common::Scratch;

fn verify_through(level: &str, members: usize, extra: serde_json::Value) {
    let mallocs: Vec<serde_json::Value> = (0..members)
        .map(|i| {
            serde_json::json!({"method": "bdev_malloc_create",
                               "params": {"name": format!("M{i}"), "num_blocks": 8192, "block_size": 4096}})
        })
        .collect();
    let mut create = serde_json::json!({"name": "md0", "level": level,
        "members": (0..members).map(|i| format!("M{i}")).collect::<Vec<_>>()});
    for (k, v) in extra.as_object().unwrap() {
        create[k] = v.clone();
    }
    let mut all = mallocs;
    all.push(serde_json::json!({"method": "md_create", "params": create}));
    let s = Scratch::with_bdevs(serde_json::Value::Array(all));
    let job = "[verify]\nfilename=md0\nrw=randwrite\nbs=12k\niodepth=16\nsize=24m\nverify=crc32c\nverify_fatal=1\n";
    let run = s.run(&s.job_file(job), &[]);
    let jobs = run.assert_ok();
    assert_eq!(jobs[0].write_bytes, 24 << 20, "{level}: {jobs:?}");
    assert_eq!(
        jobs[0].read_bytes,
        24 << 20,
        "{level}: the verify phase reads everything back"
    );
}

#[test]
fn crc32c_verify_passes_through_md_raid1() {
    verify_through("raid1", 2, serde_json::json!({}));
}

#[test]
fn crc32c_verify_passes_through_md_raid10() {
    verify_through("raid10", 4, serde_json::json!({"chunk_kb": 64, "assume_clean": true}));
}
