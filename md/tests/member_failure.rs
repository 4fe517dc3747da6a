//! A member failing under a verify workload (raid1, raid10 near-2, raid5 and raid6 over error
//! bdevs): every
//! read and write after the failure is injected keeps succeeding (reads retried on another copy,
//! writes kept by the surviving copies; raid5/6: reads rebuilt from parity, writes completed
//! degraded), the member is marked faulty in md_get_arrays and in the
//! surviving superblocks (role 0xfffe), the array is degraded, and a verify afterwards still
//! passes (raid6: two members fail, one after the other). Then spares are added: recovery
//! rebuilds onto them under load and a check reports 0 mismatches.

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
    scenario_failing(level, members, layout, &[1]);
}

/// `victims`: the roles that fail, one after the other, under the workload.
fn scenario_failing(level: &str, members: usize, layout: Option<&str>, victims: &[usize]) {
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
    r.malloc("S1", 16384, 512);
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
    // Each victim fails every read and write from its turn on.
    for &v in victims {
        for io_type in ["read", "write"] {
            let mut o = InjectOpts::new(&format!("EE_M{v}"), io_type, "failure");
            o.num = Some(u32::MAX);
            error::inject(&r.reg, &o).unwrap();
        }
        run_ios(&r, &jobs, 4_000);
    }
    let a = r.array("md");
    assert!(a.state.contains("degraded"), "{a:?}");
    for &v in victims {
        let bad = a.members.iter().find(|m| m.bdev == format!("EE_M{v}")).unwrap();
        assert_eq!((bad.state, bad.role), ("faulty", None));
    }
    finish(&r, jobs, "after failure");
    // The survivors' superblocks record it.
    let survivor = (0..members).find(|i| !victims.contains(i)).unwrap();
    r.wait_until(5, "faulty roles on disk", |r| {
        let sb = r.superblock(&format!("M{survivor}"));
        victims.iter().all(|&v| sb.dev_roles[v] == ROLE_FAULTY)
    });

    // Remove the failed members, add spares: recovery under load, then a check.
    for &v in victims {
        let bdev = format!("EE_M{v}");
        r.md.remove("md", &bdev).unwrap();
        assert!(r.reg.get(&bdev).unwrap().claimed_by().is_none());
    }
    let jobs = start_verify(&r, "md");
    run_ios(&r, &jobs, 1_000);
    for (i, _) in victims.iter().enumerate() {
        r.add("md", &format!("S{i}")).unwrap();
    }
    r.wait_until(60, "recovery onto the spares", |r| {
        let a = r.array("md");
        a.sync.action == "idle" && a.members.iter().all(|m| m.state == "in_sync")
    });
    finish(&r, jobs, "during recovery");
    let a = r.array("md");
    assert!(!a.state.contains("degraded"), "{a:?}");
    let mut roles: Vec<u32> = (0..victims.len())
        .map(|i| {
            a.members
                .iter()
                .find(|m| m.bdev == format!("S{i}"))
                .unwrap()
                .role
                .unwrap()
        })
        .collect();
    roles.sort_unstable();
    let mut want: Vec<u32> = victims.iter().map(|&v| v as u32).collect();
    want.sort_unstable();
    assert_eq!(roles, want);
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
fn raid5_member_failure_then_spare() {
    scenario("raid5", 4, None);
}

#[test]
fn raid6_two_member_failures_then_spares() {
    scenario_failing("raid6", 5, Some("left-asymmetric"), &[1, 3]);
}

#[test]
fn raid10_member_failure_then_spare() {
    scenario("raid10", 4, Some("n2"));
}
