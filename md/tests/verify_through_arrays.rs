//! keel-load verify jobs (write a pattern, read it back, compare) pass through a raid0 array
//! (8 KiB I/Os on 4 KiB chunks: splits and forwards) and a raid1 array (fanned-out writes,
//! round-robin reads), with one job per core on disjoint ranges of each array.

mod common;

use common::{Rig, MAIN};
use keel_load::{Job, JobSpec, JobStatus, Workload};
use keel_md::CreateOpts;
use keel_reactor::CoreId;

fn verify(r: &Rig, name: &str, io_size: u64) {
    let blocks = r.reg.get(name).unwrap().info().num_blocks;
    let half = blocks / 2;
    let jobs: Vec<_> = [MAIN, CoreId(1)]
        .into_iter()
        .enumerate()
        .map(|(i, core)| {
            let mut spec = JobSpec::new(name, Workload::Verify, 16, io_size, 0);
            spec.offset_blocks = i as u64 * half;
            spec.length_blocks = half;
            spec.seed = 17 + i as u64;
            r.d.enter(core, || {
                let desc = r.reg.open(name, true, |_| {}).unwrap();
                Job::start(spec, desc).unwrap()
            })
        })
        .collect();
    assert!(
        r.d.run_until(10_000_000, || jobs.iter().all(|j| j.completed_ios() >= 4_000)),
        "{name}: progress"
    );
    for j in &jobs {
        j.stop();
    }
    assert!(r.d.run_until(100_000, || jobs.iter().all(|j| j.is_done())));
    for j in &jobs {
        let res = j.result().unwrap();
        assert_eq!(res.status, JobStatus::Terminated, "{name}: {res:?}");
        assert_eq!(res.ios_failed, 0, "{name}");
        assert!(res.miscompare.is_none(), "{name}: {:?}", res.miscompare);
    }
}

#[test]
fn verify_passes_through_raid0_and_raid1() {
    let r = Rig::new(2);
    for m in ["A0", "A1", "B0", "B1"] {
        r.malloc(m, 16384, 512);
    }
    r.create_simple("r0", "raid0", &["A0", "A1"], Some(4)).unwrap();
    r.create(CreateOpts {
        name: "r1".into(),
        level: "raid1".into(),
        members: vec!["B0".into(), "B1".into()],
        assume_clean: true,
        ..Default::default()
    })
    .unwrap();
    verify(&r, "r0", 8192);
    verify(&r, "r1", 4096);
    // The mirrors agree after the verify workload.
    assert_eq!(r.read("B0", 2048, 8192), r.read("B1", 2048, 8192));
    r.stop("r0").unwrap();
    r.stop("r1").unwrap();
}
