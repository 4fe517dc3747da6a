//! Assembly never picks a corrupt member over a good one. Superblocks are rewritten with valid
//! checksums and the same events as the intact members (what a corrupting bug or a hostile
//! writer leaves):
//!
//! * raid1 of two, one member's raid_disks changed to 1: before, that member could be taken as
//!   the freshest and the array started as a "clean" one-disk array without the intact member;
//!   now the assembly is refused naming both members, nothing stays claimed, and the intact
//!   member assembles when named alone;
//! * raid1 of three, one member's level changed: it is refused as the odd one out (named, with
//!   the field) and the array runs on the two that agree, with its data;
//! * raid1 of two, one member's role table changed (the other member made a spare): refused
//!   naming both, as the two tables of one update cannot both be right.

mod common;

use common::Rig;
use keel_bdev::IoStatus;
use keel_md::superblock::{Superblock, ROLE_SPARE, V1_2_SUPER_OFFSET_SECTORS};
use keel_md::{AssembleOpts, MdError};

fn rewrite(r: &Rig, m: &str, edit: impl FnOnce(&mut Superblock)) {
    let mut sb = r.superblock(m);
    edit(&mut sb);
    assert_eq!(r.write(m, V1_2_SUPER_OFFSET_SECTORS, &sb.encode()), IoStatus::Success);
}

fn by_name(m: &[&str]) -> AssembleOpts {
    AssembleOpts {
        members: Some(m.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

fn made(r: &Rig, name: &str, m: &[&str], seed: u64) {
    for x in m {
        r.malloc(x, 8192, 512);
    }
    r.create_simple(name, "raid1", m, None).unwrap();
    assert_eq!(r.write(name, 0, &common::pattern(seed, 8192)), IoStatus::Success);
    r.stop(name).unwrap();
    let events: Vec<u64> = m.iter().map(|x| r.superblock(x).events).collect();
    assert!(events.windows(2).all(|w| w[0] == w[1]), "equal events: {events:?}");
}

fn unclaimed(r: &Rig, m: &[&str]) {
    for x in m {
        let b = r.reg.get(x).unwrap();
        assert!(b.claimed_by().is_none() && b.open_count() == 0, "{x} released");
    }
}

fn refused_whole(e: MdError, what: &str) {
    let t = e.to_string();
    assert_eq!(e.errno(), -22, "{t}");
    assert!(t.contains("'M0'") && t.contains("'M1'") && t.contains(what), "{t}");
    assert!(t.contains("cannot tell which superblock is intact"), "{t}");
}

#[test]
fn one_against_one_is_refused_naming_both() {
    let r = Rig::new(1);
    made(&r, "mir", &["M0", "M1"], 3);
    rewrite(&r, "M1", |s| s.raid_disks = 1);
    // Either order: the corrupt member is never the template.
    for order in [["M0", "M1"], ["M1", "M0"]] {
        refused_whole(r.assemble(by_name(&order)).unwrap_err(), "raid_disks");
        unclaimed(&r, &["M0", "M1"]);
        assert!(r.md.arrays(None).unwrap().is_empty());
    }
    // The user names the intact member: it runs, degraded, with the data.
    assert_eq!(r.assemble(by_name(&["M0"])).unwrap(), "mir");
    let a = r.array("mir");
    assert_eq!(a.raid_devices, 2);
    assert!(a.state.contains("degraded"), "{}", a.state);
    assert_eq!(r.read("mir", 0, 16), common::pattern(3, 8192));
    r.stop("mir").unwrap();
}

#[test]
fn the_odd_one_out_is_refused_and_named() {
    let r = Rig::new(1);
    made(&r, "tri", &["T0", "T1", "T2"], 4);
    rewrite(&r, "T0", |s| s.level = 10);
    let name = r.assemble(by_name(&["T0", "T1", "T2"])).unwrap();
    let a = r.array(&name);
    let members: Vec<(&str, Option<u32>)> = a.members.iter().map(|m| (m.bdev.as_str(), m.role)).collect();
    assert_eq!(members, [("T1", Some(1)), ("T2", Some(2))]);
    assert_eq!(r.read(&name, 0, 16), common::pattern(4, 8192));
    unclaimed(&r, &["T0"]);
    r.stop(&name).unwrap();
}

#[test]
fn role_tables_of_one_update_must_agree() {
    let r = Rig::new(1);
    made(&r, "mir", &["M0", "M1"], 5);
    rewrite(&r, "M1", |s| s.dev_roles[0] = ROLE_SPARE);
    refused_whole(r.assemble(by_name(&["M0", "M1"])).unwrap_err(), "role table");
    unclaimed(&r, &["M0", "M1"]);
}
