//! `md_assemble` refusing what it must not trust: a member whose superblock fails its checksum
//! is refused by name (raid1 then assembles degraded without it; raid0 fails and the error
//! carries the refusal); members of two different arrays, a raid0 missing a role, a name in
//! use, an array already running, unknown members — each an error that says what is wrong,
//! and after every failure no member stays claimed.

mod common;

use common::{Rig, MAIN};
use keel_bdev::IoStatus;
use keel_md::superblock::{Superblock, V1_2_SUPER_OFFSET_SECTORS};
use keel_md::{AssembleOpts, MdError};

fn members(names: &[&str]) -> AssembleOpts {
    AssembleOpts {
        members: Some(names.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

/// Flips one byte of `m`'s superblock (inside set_name: covered by the checksum).
fn corrupt(r: &Rig, m: &str) {
    let mut b = r.read_bytes(m, 4096, 4096);
    b[0x30] ^= 0x5a;
    assert_eq!(r.write(m, 8, &b), IoStatus::Success);
    assert!(Superblock::decode(&b, V1_2_SUPER_OFFSET_SECTORS).is_err());
}

fn assert_unclaimed(r: &Rig, names: &[&str]) {
    for n in names {
        let b = r.reg.get(n).unwrap();
        assert!(b.claimed_by().is_none(), "{n} stayed claimed");
        assert_eq!(b.open_count(), 0, "{n} stayed open");
    }
}

fn made(r: &Rig, name: &str, level: &str, m: &[&str]) {
    for x in m {
        r.malloc(x, 8192, 512);
    }
    let chunk = (level == "raid0").then_some(64);
    r.create_simple(name, level, m, chunk).unwrap();
    r.stop(name).unwrap();
}

#[test]
fn corrupt_member_is_refused_and_raid1_runs_degraded() {
    let r = Rig::new(1);
    made(&r, "mir", "raid1", &["M0", "M1"]);
    corrupt(&r, "M1");
    let name = r.assemble(members(&["M0", "M1"])).unwrap();
    assert_eq!(name, "mir");
    let a = r.array("mir");
    assert_eq!(
        a.members
            .iter()
            .map(|m| (m.bdev.as_str(), m.role, m.state))
            .collect::<Vec<_>>(),
        [("M0", Some(0), "in_sync")]
    );
    assert!(a.state.contains("degraded"), "{}", a.state);
    assert!(
        r.reg.get("M1").unwrap().claimed_by().is_none(),
        "the refused member is left alone"
    );
    // The array is usable.
    let data = vec![0x6b; 4096];
    assert_eq!(r.write("mir", 0, &data), IoStatus::Success);
    assert_eq!(r.read("mir", 0, 8), data);
    r.stop("mir").unwrap();
    assert_unclaimed(&r, &["M0", "M1"]);
}

#[test]
fn corrupt_raid0_member_fails_with_the_refusal() {
    let r = Rig::new(1);
    made(&r, "str", "raid0", &["S0", "S1"]);
    corrupt(&r, "S1");
    let e = r.assemble(members(&["S0", "S1"])).unwrap_err().to_string();
    assert!(
        e.contains("member 'S1' refused: invalid md superblock: sb_csum"),
        "the error names the member and the field: {e}"
    );
    assert!(e.contains("role 1"), "and the missing role: {e}");
    assert!(r.reg.get("str").is_none());
    assert_unclaimed(&r, &["S0", "S1"]);
}

#[test]
fn raid0_missing_a_role() {
    let r = Rig::new(1);
    made(&r, "z", "raid0", &["Z0", "Z1", "Z2"]);
    let e = r.assemble(members(&["Z0", "Z2"])).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, MdError::InvalidParam { param: "members", .. }), "{e:?}");
    assert!(msg.contains("without role 1") && msg.contains("raid0"), "{msg}");
    assert_unclaimed(&r, &["Z0", "Z1", "Z2"]);
    // By uuid without members: the same.
    let uuid = Superblock::uuid_text(
        &Superblock::decode(&r.read_bytes("Z0", 4096, 4096), V1_2_SUPER_OFFSET_SECTORS)
            .unwrap()
            .set_uuid,
    );
    r.d.enter(MAIN, || {
        keel_bdev::modules::malloc::delete(&r.reg, "Z1", || {}).unwrap();
    });
    r.run_for_ms(20);
    let e = r
        .assemble(AssembleOpts {
            uuid: Some(uuid),
            ..Default::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("without role 1"), "{e}");
    assert_unclaimed(&r, &["Z0", "Z2"]);
}

#[test]
fn members_of_two_arrays() {
    let r = Rig::new(1);
    made(&r, "a1", "raid1", &["A0", "A1"]);
    made(&r, "b1", "raid1", &["B0", "B1"]);
    let e = r.assemble(members(&["A0", "A1", "B0"])).unwrap_err().to_string();
    assert!(
        e.contains("different arrays") && e.contains("B0") && e.contains("A0, A1"),
        "{e}"
    );
    assert_unclaimed(&r, &["A0", "A1", "B0", "B1"]);
    // A uuid that does not match a named member.
    let uuid_b = Superblock::uuid_text(
        &Superblock::decode(&r.read_bytes("B0", 4096, 4096), V1_2_SUPER_OFFSET_SECTORS)
            .unwrap()
            .set_uuid,
    );
    let e = r
        .assemble(AssembleOpts {
            uuid: Some(uuid_b.clone()),
            members: Some(vec!["A0".into()]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("not members of array") && e.contains("'A0'"), "{e}");
    assert_unclaimed(&r, &["A0"]);

    // By name, by uuid: each finds its own.
    assert_eq!(
        r.assemble(AssembleOpts {
            name: Some("a1".into()),
            ..Default::default()
        })
        .unwrap(),
        "a1"
    );
    assert_eq!(
        r.assemble(AssembleOpts {
            uuid: Some(uuid_b.clone()),
            name: Some("bee".into()),
            ..Default::default()
        })
        .unwrap(),
        "bee"
    );
    assert_eq!(r.array("bee").members.len(), 2);
    // Already running.
    let e = r
        .assemble(AssembleOpts {
            uuid: Some(uuid_b.clone()),
            name: Some("b2".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        matches!(&e, MdError::Exists(m) if m.contains("already running as 'bee'")),
        "{e:?}"
    );
    // Asking again for what runs is not an error (a replayed configuration).
    let again = AssembleOpts {
        uuid: Some(uuid_b),
        name: Some("bee".into()),
        members: Some(vec!["B1".into()]),
        force: false,
    };
    assert_eq!(r.assemble(again).unwrap(), "bee");
    r.stop("a1").unwrap();
    r.stop("bee").unwrap();
}

#[test]
fn bad_requests() {
    let r = Rig::new(1);
    made(&r, "m", "raid1", &["N0", "N1"]);
    r.malloc("taken", 64, 512);
    let e = r
        .assemble(AssembleOpts {
            name: Some("taken".into()),
            members: Some(vec!["N0".into(), "N1".into()]),
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(e, MdError::Exists(_)), "{e:?}");
    assert_unclaimed(&r, &["N0", "N1"]);
    let e = r.assemble(members(&["N0", "nope"])).unwrap_err();
    assert!(matches!(&e, MdError::NotFound(m) if m.contains("'nope'")), "{e:?}");
    let e = r.assemble(members(&["N0", "N0"])).unwrap_err();
    assert!(e.to_string().contains("listed twice"), "{e}");
    let e = r.assemble(AssembleOpts::default()).unwrap_err();
    assert!(matches!(e, MdError::InvalidParam { param: "uuid", .. }), "{e:?}");
    let e = r
        .assemble(AssembleOpts {
            uuid: Some("not-a-uuid".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(e, MdError::InvalidParam { param: "uuid", .. }), "{e:?}");
    let e = r
        .assemble(AssembleOpts {
            uuid: Some("01234567:89abcdef:01234567:89abcdef".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(e, MdError::NotFound(_)), "{e:?}");
    // A bdev without any superblock, named: refused by name; nothing usable is left.
    let e = r.assemble(members(&["taken"])).unwrap_err().to_string();
    assert!(e.contains("member 'taken' refused"), "{e}");
    assert_unclaimed(&r, &["N0", "N1", "taken"]);
    // Running array: its members are claimed.
    assert_eq!(r.assemble(members(&["N0", "N1"])).unwrap(), "m");
    let e = r.assemble(members(&["N0"])).unwrap_err();
    assert!(matches!(e, MdError::Busy(_)), "{e:?}");
    r.stop("m").unwrap();
}
