//! A member failing under a verify workload (raid1 and raid10 near-2 over error bdevs): every
//! read and write after the failure is injected keeps succeeding (reads retried on another copy,
//! writes kept by the surviving copies), the member is marked faulty in md_get_arrays and in the
//! surviving superblocks (role 0xfffe), the array is degraded, and a verify afterwards still
//! passes. Then a spare is added: recovery rebuilds onto it under load and a check reports 0
//! mismatches.

mod common;

use common::{Rig, MAIN};
use keel_bdev::modules::error::{self, ErrorOpts, InjectOpts};
use keel_load::{Job, JobHandle, JobSpec, JobStatus, Workload};
use keel_md::superblock::ROLE_FAULTY;
use keel_md::CreateOpts;
use keel_reactor::CoreId;

fn start_verify(r: &Rig, name: &str) -> Vec<JobHandle> {
    let blocks = r.reg.get(name).unwrap().info().num_blocks;
    let half = blocks / 2;
    [MAIN, CoreId(1)]
        .into_iter()
        .enumerate()
        .map(|(i, core)| {
            let mut spec = JobSpec::new(name, Workload::Verify, 16, 4096, 0);
            spec.offset_blocks = i as u64 * half;
            spec.length_blocks = half;
            spec.seed = 29 + i as u64;
            r.d.enter(core, || {
                let desc = r.reg.open(name, true, |_| {}).unwrap();
                Job::start(spec, desc).unwrap()
            })
        })
        .collect()
}

fn run_ios(r: &Rig, jobs: &[JobHandle], n: u64) {
    let base: Vec<u64> = jobs.iter().map(|j| j.completed_ios()).collect();
    assert!(
        r.d.run_until(20_000_000, || jobs
            .iter()
            .zip(&base)
            .all(|(j, b)| j.completed_ios() >= b + n)),
        "workload made no progress"
    );
}

fn finish(r: &Rig, jobs: Vec<JobHandle>, what: &str) {
    for j in &jobs {
        j.stop();
    }
    assert!(r.d.run_until(1_000_000, || jobs.iter().all(|j| j.is_done())));
    for j in &jobs {
        let res = j.result().unwrap();
        assert_eq!(res.status, JobStatus::Terminated, "{what}: {res:?}");
        assert_eq!(res.ios_failed, 0, "{what}: failed I/O");
        assert!(res.miscompare.is_none(), "{what}: {:?}", res.miscompare);
    }
}

fn scenario(level: &str, members: usize, layout: Option<&str>) {
    let r = Rig::new(2);
    let mut names = Vec::new();
    for i in 0..members {
        let m = format!("M{i}");
        r.malloc(&m, 16384, 512);
        r.d.enter(MAIN, || {
            error::create(
                &r.reg,
                &ErrorOpts {
                    base_name: m.clone(),
                    uuid: None,
                },
            )
            .unwrap()
        });
        names.push(format!("EE_{m}"));
    }
    r.malloc("S0", 16384, 512);
    r.create(CreateOpts {
        name: "md".into(),
        level: level.into(),
        members: names.clone(),
        chunk_kb: Some(64),
        layout: layout.map(str::to_string),
        assume_clean: true,
        ..Default::default()
    })
    .unwrap();

    let jobs = start_verify(&r, "md");
    run_ios(&r, &jobs, 2_000);
    // Member 1 fails every read and write from now on.
    for io_type in ["read", "write"] {
        let mut o = InjectOpts::new("EE_M1", io_type, "failure");
        o.num = Some(u32::MAX);
        error::inject(&r.reg, &o).unwrap();
    }
    run_ios(&r, &jobs, 4_000);
    let a = r.array("md");
    assert!(a.state.contains("degraded"), "{a:?}");
    let bad = a.members.iter().find(|m| m.bdev == "EE_M1").unwrap();
    assert_eq!((bad.state, bad.role), ("faulty", None));
    finish(&r, jobs, "after failure");
    // The survivors' superblocks record it.
    r.wait_until(5, "faulty role on disk", |r| {
        r.superblock("M0").dev_roles[1] == ROLE_FAULTY
    });

    // Remove the failed member, add a spare: recovery under load, then a check.
    r.md.remove("md", "EE_M1").unwrap();
    assert!(r.reg.get("EE_M1").unwrap().claimed_by().is_none());
    let jobs = start_verify(&r, "md");
    run_ios(&r, &jobs, 1_000);
    r.add("md", "S0").unwrap();
    r.wait_until(30, "recovery onto the spare", |r| {
        let a = r.array("md");
        a.sync.action == "idle" && a.members.iter().all(|m| m.state == "in_sync")
    });
    finish(&r, jobs, "during recovery");
    let a = r.array("md");
    assert!(!a.state.contains("degraded"), "{a:?}");
    assert_eq!(a.members.iter().find(|m| m.bdev == "S0").unwrap().role, Some(1));
    r.md.set_sync_action("md", "check").unwrap();
    r.wait_until(30, "check", |r| {
        let a = r.array("md");
        a.sync.action == "idle" && a.sync.last_action == Some("check")
    });
    assert_eq!(r.array("md").sync.mismatch_sectors, 0);
    r.stop("md").unwrap();
}

#[test]
fn raid1_member_failure_then_spare() {
    scenario("raid1", 2, None);
}

#[test]
fn raid10_member_failure_then_spare() {
    scenario("raid10", 4, Some("n2"));
}
