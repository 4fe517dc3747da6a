//! Superblocks with valid checksums whose fields would size loops, strings or allocations
//! beyond reason get a clear refusal naming the field from every reader — `md_examine`,
//! `md_assemble` (the member is refused by name; a raid1 runs on the intact one) and
//! examine-on-appear (nothing assembles, the examination ends) — instead of a spin: `md_examine`
//! of a member claiming raid_disks 0xFFFFFFFF once looped four billion times on the main
//! reactor, growing memory by half a gigabyte a minute. Also events at u64::MAX (the counter
//! could not advance without wrapping) and sizes whose byte count overflows.

mod common;

use common::{Rig, MAIN};
use keel_bdev::IoStatus;
use keel_md::examine::{examine, Examine};
use keel_md::superblock::{Superblock, MAX_EVENTS, V1_2_SUPER_OFFSET_SECTORS};
use keel_md::{AssembleOpts, MdError, MdRegistry};

/// Rewrites `m`'s superblock with `edit` applied and a valid checksum.
fn rewrite(r: &Rig, m: &str, edit: impl FnOnce(&mut Superblock)) {
    let mut sb = r.superblock(m);
    edit(&mut sb);
    assert_eq!(r.write(m, V1_2_SUPER_OFFSET_SECTORS, &sb.encode()), IoStatus::Success);
}

/// A change to a superblock.
type Edit = fn(&mut Superblock);

fn examined(r: &Rig, m: &str) -> Result<Examine, MdError> {
    r.call(MAIN, "md_examine", |done| examine(&r.reg, m, done))
}

fn refused_field(e: &MdError, field: &str) {
    match e {
        MdError::BadSuperblock { field: f, .. } => assert_eq!(*f, field, "{e}"),
        other => panic!("expected a refusal of '{field}', got {other:?}"),
    }
    assert_eq!(e.errno(), -22, "{e}");
}

#[test]
fn examine_and_assemble_refuse_fields_beyond_their_bounds() {
    let r = Rig::new(1);
    let cases: [(&str, Edit); 5] = [
        ("raid_disks", |s| s.raid_disks = 0xFFFF_FFFF),
        ("raid_disks", |s| s.raid_disks = 0),
        ("events", |s| s.events = u64::MAX),
        ("size", |s| s.size_sectors = u64::MAX / 256),
        ("data_size", |s| s.data_size_sectors = u64::MAX),
    ];
    for (i, (field, edit)) in cases.into_iter().enumerate() {
        let (a, b, name) = (format!("A{i}"), format!("B{i}"), format!("mir{i}"));
        r.malloc(&a, 8192, 512);
        r.malloc(&b, 8192, 512);
        r.create_simple(&name, "raid1", &[&a, &b], None).unwrap();
        r.write(&name, 0, &common::pattern(i as u64, 4096));
        r.stop(&name).unwrap();
        rewrite(&r, &a, edit);
        refused_field(&examined(&r, &a).unwrap_err(), field);
        // The intact member still examines.
        assert_eq!(examined(&r, &b).unwrap().sb.raid_disks, 2);
        let got = r
            .assemble(AssembleOpts {
                members: Some(vec![a.clone(), b.clone()]),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(got, name);
        let info = r.array(&name);
        assert_eq!(info.members.len(), 1, "{field}: only '{b}' runs: {:?}", info.members);
        assert_eq!(info.members[0].bdev, b);
        assert_eq!(r.read(&name, 0, 8), common::pattern(i as u64, 4096), "data intact");
        let am = r.reg.get(&a).unwrap();
        assert!(
            am.claimed_by().is_none() && am.open_count() == 0,
            "refused member released"
        );
        r.stop(&name).unwrap();
    }
}

#[test]
fn examine_on_appear_ends_on_a_hostile_member() {
    let r = Rig::new(1);
    r.malloc("H0", 8192, 512);
    r.malloc("H1", 8192, 512);
    r.create_simple("hx", "raid1", &["H0", "H1"], None).unwrap();
    r.stop("hx").unwrap();
    let intact = r.superblock("H0");
    for m in ["H0", "H1"] {
        rewrite(&r, m, |s| s.raid_disks = 0xFFFF_FFFF);
    }
    // Copies of the members appear as new bdevs with examine-on-appear on.
    MdRegistry::enable_auto_assembly(&r.reg);
    for (from, to) in [("H0", "C0"), ("H1", "C1")] {
        let img = r.read_bytes(from, 0, 8192 * 512);
        r.malloc(to, 8192, 512);
        assert_eq!(r.write(to, 0, &img), IoStatus::Success);
    }
    // Registering again (a passthru over each copy) is what the examiner sees.
    for (c, p) in [("C0", "P0"), ("C1", "P1")] {
        r.d.enter(MAIN, || {
            keel_bdev::modules::passthru::create(&r.reg, &keel_bdev::modules::passthru::PassthruOpts::new(p, c))
                .unwrap()
        });
    }
    r.wait_until(5, "examinations end", |r| r.reg.examines_in_flight() == 0);
    assert!(r.md.arrays(None).unwrap().is_empty(), "nothing assembled");
    refused_field(&examined(&r, "P0").unwrap_err(), "raid_disks");
    // The largest legal value still examines, with one state character per raid disk.
    let write =
        |m: &str, sb: Superblock| assert_eq!(r.write(m, V1_2_SUPER_OFFSET_SECTORS, &sb.encode()), IoStatus::Success);
    write(
        "H0",
        Superblock {
            raid_disks: keel_md::superblock::MAX_DEV_LIMIT,
            ..intact.clone()
        },
    );
    let x = examined(&r, "H0").unwrap();
    assert_eq!(x.array_state().len(), 1920);
    write(
        "H0",
        Superblock {
            events: MAX_EVENTS,
            ..intact
        },
    );
    assert_eq!(examined(&r, "H0").unwrap().sb.events, MAX_EVENTS);
}
