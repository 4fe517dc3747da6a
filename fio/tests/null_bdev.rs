//! fio drives a null bdev through the engine: random reads and random writes (one group each),
//! and `filename=*` expanding to every unclaimed bdev of the config.

mod common;

use common::Scratch;

#[test]
fn randread_and_randwrite_on_null() {
    let s = Scratch::default_stack();
    let run = s.run(
        &s.job_file(
            "[randread]\nfilename=Null0\nrw=randread\nbs=4k\niodepth=32\ntime_based=1\nruntime=1\n\n\
             [randwrite]\nstonewall\nfilename=Null0\nrw=randwrite\nbs=64k\niodepth=8\ntime_based=1\nruntime=1\n",
        ),
        &[],
    );
    let jobs = run.assert_ok();
    assert_eq!(jobs.len(), 2);
    assert!(jobs[0].read_bytes > 0 && jobs[0].write_bytes == 0, "{jobs:?}");
    assert!(jobs[1].write_bytes > 0 && jobs[1].read_bytes == 0, "{jobs:?}");
}

#[test]
fn filename_star_means_every_unclaimed_bdev() {
    let s = Scratch::default_stack();
    let run = s.run(
        &s.job_file("[all]\nfilename=*\nrw=randread\nbs=4k\niodepth=4\nnumber_ios=2000\n"),
        &[],
    );
    let jobs = run.assert_ok();
    assert!(jobs[0].read_bytes > 0, "{jobs:?}");
}
