//! fio's crc32c verify through a dm stack: a striped dm device over two malloc bdevs, with a
//! passthru on top, all built by the same JSON config file keel-tgt would read.

mod common;

use common::Scratch;

#[test]
fn crc32c_verify_passes_through_a_dm_stack() {
    let s = Scratch::with_bdevs(serde_json::json!([
        {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 4096, "block_size": 4096}},
        {"method": "bdev_malloc_create", "params": {"name": "M1", "num_blocks": 4096, "block_size": 4096}}
    ]));
    // Add the dm subsystem after bdev, as save_config orders it.
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(s.config()).unwrap()).unwrap();
    cfg["subsystems"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"subsystem": "dm", "config": [
            {"method": "dm_create", "params": {"name": "stripe0", "table": "0 65536 striped 2 16 M0 0 M1 0"}},
            {"method": "bdev_passthru_create", "params": {"name": "P0", "base_bdev_name": "stripe0"}}
        ]}));
    std::fs::write(s.config(), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let job = "[verify]\nfilename=P0\nrw=randwrite\nbs=12k\niodepth=16\nsize=24m\nverify=crc32c\nverify_fatal=1\n";
    let run = s.run(&s.job_file(job), &[]);
    let jobs = run.assert_ok();
    assert_eq!(jobs[0].write_bytes, 24 << 20, "{jobs:?}");
    assert_eq!(
        jobs[0].read_bytes,
        24 << 20,
        "the verify phase reads everything back: {jobs:?}"
    );
}
