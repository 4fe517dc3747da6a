//! fio drives a malloc bdev through the engine: random reads, random writes with fsync
//! (→ flush), and random trims (→ unmap).

mod common;

use common::Scratch;

#[test]
fn randread_randwrite_and_trim_on_malloc() {
    let s = Scratch::default_stack();
    let run = s.run(
        &s.job_file(
            "[randread]\nfilename=Malloc0\nrw=randread\nbs=4k\niodepth=16\ntime_based=1\nruntime=1\n\n\
             [randwrite]\nstonewall\nfilename=Malloc0\nrw=randwrite\nbs=4k\niodepth=16\nfsync=32\ntime_based=1\nruntime=1\n\n\
             [randtrim]\nstonewall\nfilename=Malloc0\nrw=randtrim\nbs=64k\niodepth=8\nnumber_ios=500\n",
        ),
        &[],
    );
    let jobs = run.assert_ok();
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    assert!(jobs[0].read_bytes > 0, "{jobs:?}");
    assert!(jobs[1].write_bytes > 0, "{jobs:?}");
    assert!(jobs[2].trim_bytes > 0, "{jobs:?}");
}
