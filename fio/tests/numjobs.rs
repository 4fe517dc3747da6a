//! Several fio job threads at once, each on its own reactor and channel: `numjobs=2` writing one
//! malloc bdev and reading one null bdev, then a second group that reuses the freed reactors.

mod common;

use common::Scratch;

#[test]
fn two_jobs_per_group_share_the_bdevs() {
    let s = Scratch::default_stack();
    let run = s.run(
        &s.job_file(
            "[writers]\nfilename=Malloc0\nrw=randwrite\nbs=4k\niodepth=8\nnumjobs=2\ntime_based=1\nruntime=1\n\n\
             [readers]\nstonewall\nfilename=Null0:Malloc0\nrw=randread\nbs=4k\niodepth=8\nnumjobs=2\ntime_based=1\nruntime=1\n",
        ),
        &[],
    );
    let jobs = run.assert_ok();
    assert_eq!(jobs.len(), 4, "{jobs:?}");
    for j in &jobs[..2] {
        assert!(j.write_bytes > 0, "{jobs:?}");
    }
    for j in &jobs[2..] {
        assert!(j.read_bytes > 0, "{jobs:?}");
    }
}
