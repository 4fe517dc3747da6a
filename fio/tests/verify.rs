//! fio's own verification (`verify=crc32c`: write, then read back and check) passes on a malloc
//! bdev; on a null bdev, which returns no data, the same job fails — the read-back really
//! reaches the bdev.

mod common;

use common::Scratch;

const VERIFY_JOB: &str = "rw=randwrite\nbs=4k\niodepth=16\nsize=8m\nverify=crc32c\nverify_fatal=1\n";

#[test]
fn crc32c_verify_passes_on_malloc_and_fails_on_null() {
    let s = Scratch::default_stack();
    let run = s.run(&s.job_file(&format!("[verify]\nfilename=Malloc0\n{VERIFY_JOB}")), &[]);
    let jobs = run.assert_ok();
    assert_eq!(jobs[0].write_bytes, 8 << 20, "{jobs:?}");
    assert_eq!(
        jobs[0].read_bytes,
        8 << 20,
        "the verify phase reads everything back: {jobs:?}"
    );

    let run = s.run(&s.job_file(&format!("[verify]\nfilename=Null0\n{VERIFY_JOB}")), &[]);
    run.assert_refused("verify");
}
