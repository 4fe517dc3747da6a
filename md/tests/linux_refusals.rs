//! md refuses what Linux md refuses, and changes nothing when it does:
//!
//! * `md_fail` of the last in-sync copy of some data — the second member of a raid1, the second
//!   of a raid10 near-2 copy set — and of any member of raid0 or linear: EBUSY (-16), the
//!   member stays in sync and the array stays operational (before: accepted, array `failed`);
//! * `md_stop` of an array that is open — a passthru over it, an I/O descriptor, an export's
//!   hold — EBUSY naming the holder; the array keeps running, and stops once they let go.
//!   `bdev_raid_delete` (`MdRegistry::delete`) refuses only for holders that a bdev delete
//!   refuses for (an export), not for plain openers (SPDK's unregister);
//! * `md_create` over members that already carry an md superblock: EBUSY naming each member
//!   and the array it belongs to, nothing claimed or written; with `force` it creates.

mod common;

use common::{Rig, MAIN};
use keel_bdev::modules::passthru;
use keel_md::{CreateOpts, MdError};

fn busy(e: MdError, text: &str) {
    assert_eq!(e.errno(), -16, "{e}");
    assert!(e.to_string().contains(text), "'{e}' lacks '{text}'");
}

fn states(r: &Rig, name: &str) -> Vec<(String, String)> {
    r.array(name)
        .members
        .iter()
        .map(|m| (m.bdev.clone(), m.state.to_string()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn failing_the_last_in_sync_copy_is_refused() {
    let r = Rig::new(1);
    for m in ["A0", "A1"] {
        r.malloc(m, 8192, 512);
    }
    r.create_simple("mir", "raid1", &["A0", "A1"], None).unwrap();
    r.md.fail("mir", "A0").unwrap();
    // The daemon moves it from its role to the faulty list.
    r.wait_until(5, "A0 out", |r| r.array("mir").members[0].bdev == "A1");
    let before = states(&r, "mir");
    busy(r.md.fail("mir", "A1").unwrap_err(), "last in-sync copy");
    r.run_for_ms(20);
    assert_eq!(states(&r, "mir"), before, "nothing changed");
    let st = r.array("mir").state;
    assert!(st.contains("degraded") && !st.contains("failed"), "{st}");
    assert!(
        before.contains(&("A1".to_string(), "in_sync".to_string())),
        "{before:?}"
    );

    // raid10 near-2 over four: copy sets {0,1} and {2,3}.
    let m: Vec<String> = (0..4).map(|i| format!("T{i}")).collect();
    for x in &m {
        r.malloc(x, 8192, 512);
    }
    let refs: Vec<&str> = m.iter().map(String::as_str).collect();
    r.create_simple("ten", "raid10", &refs, Some(64)).unwrap();
    r.md.fail("ten", "T0").unwrap();
    r.md.fail("ten", "T2").unwrap();
    r.run_for_ms(20);
    busy(r.md.fail("ten", "T1").unwrap_err(), "last in-sync copy");
    busy(r.md.fail("ten", "T3").unwrap_err(), "last in-sync copy");
    r.run_for_ms(20);
    let st = r.array("ten").state;
    assert!(st.contains("degraded") && !st.contains("failed"), "{st}");

    // No redundancy: any member.
    for (level, name, chunk) in [("raid0", "str", Some(64)), ("linear", "lin", None)] {
        let a = format!("{name}0");
        let b = format!("{name}1");
        r.malloc(&a, 8192, 512);
        r.malloc(&b, 8192, 512);
        r.create_simple(name, level, &[&a, &b], chunk).unwrap();
        busy(r.md.fail(name, &a).unwrap_err(), "has no redundancy");
        r.run_for_ms(20);
        assert_eq!(
            states(&r, name),
            pairs(&[(a.as_str(), "in_sync"), (b.as_str(), "in_sync")]),
            "{level}"
        );
    }
}

#[test]
fn stopping_an_open_array_is_refused_naming_the_holder() {
    let r = Rig::new(1);
    for m in ["M0", "M1"] {
        r.malloc(m, 8192, 512);
    }
    r.create_simple("mir", "raid1", &["M0", "M1"], None).unwrap();

    // A layer over it.
    r.d.enter(MAIN, || {
        passthru::create(&r.reg, &passthru::PassthruOpts::new("P", "mir")).unwrap()
    });
    busy(r.stop("mir").unwrap_err(), "passthru bdev 'P'");
    assert!(r.md.arrays(Some("mir")).is_ok(), "still running");
    r.d.enter(MAIN, || passthru::delete(&r.reg, "P", || {}).unwrap());
    r.run_for_ms(20);

    // An export's hold: md_stop and bdev_raid_delete refuse.
    let desc = r.d.enter(MAIN, || r.reg.open("mir", true, |_| {}).unwrap());
    desc.hold("nbd export 'e0'");
    busy(r.stop("mir").unwrap_err(), "nbd export 'e0'");
    let e = r.call(MAIN, "delete", |done| r.md.delete("mir", done)).unwrap_err();
    busy(e, "nbd export 'e0'");
    r.d.enter(MAIN, || drop(desc));

    // A plain opener (an I/O job): md_stop refuses, bdev_raid_delete takes the array away.
    let desc = r.d.enter(MAIN, || r.reg.open("mir", false, |_| {}).unwrap());
    busy(r.stop("mir").unwrap_err(), "1 other open descriptor");
    r.d.enter(MAIN, || drop(desc));
    r.stop("mir").unwrap();

    r.create(CreateOpts {
        name: "again".into(),
        level: "raid1".into(),
        members: vec!["M0".into(), "M1".into()],
        assume_clean: true,
        force: true,
        ..Default::default()
    })
    .unwrap();
    let desc = r.d.enter(MAIN, || r.reg.open("again", false, |_| {}).unwrap());
    r.call(MAIN, "delete", |done| r.md.delete("again", done)).unwrap();
    assert!(r.md.arrays(Some("again")).is_err());
    r.d.enter(MAIN, || drop(desc));
}

#[test]
fn creating_over_an_md_member_needs_force() {
    let r = Rig::new(1);
    for m in ["M0", "M1", "M2"] {
        r.malloc(m, 8192, 512);
    }
    r.create_simple("old", "raid1", &["M0", "M1"], None).unwrap();
    let uuid = r.array("old").uuid.clone();
    r.stop("old").unwrap();
    let opts = |force: bool| CreateOpts {
        name: "new".into(),
        level: "raid0".into(),
        members: vec!["M2".into(), "M1".into()],
        chunk_kb: Some(64),
        force,
        ..Default::default()
    };
    let e = r.create(opts(false)).unwrap_err();
    busy(e.clone(), "'M1' holds a v1.2 superblock of raid1 array");
    busy(e.clone(), &uuid);
    assert!(!e.to_string().contains("'M2'"), "M2 is blank: {e}");
    for m in ["M1", "M2"] {
        let b = r.reg.get(m).unwrap();
        assert!(b.claimed_by().is_none() && b.open_count() == 0, "{m} released");
    }
    assert!(r.md.arrays(Some("new")).is_err());
    assert_eq!(r.superblock("M1").set_uuid, r.superblock("M0").set_uuid, "M1 untouched");
    r.create(opts(true)).unwrap();
    assert_eq!(r.superblock("M1").level, 0);
}
