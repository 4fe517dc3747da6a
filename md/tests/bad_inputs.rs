//! md_create refuses bad requests with an error naming the problem and leaves nothing claimed
//! or registered: unknown or claimed or duplicate members, too few members, a bad chunk, an
//! unsupported level, layout (raid6 DDF) or bitmap, a taken name, members too small; md_stop of an unknown array.

mod common;

use common::Rig;
use keel_md::{CreateOpts, MdError};

fn opts(name: &str, level: &str, members: &[&str]) -> CreateOpts {
    CreateOpts {
        name: name.into(),
        level: level.into(),
        members: members.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn bad_creates_leave_nothing_behind() {
    let r = Rig::new(1);
    r.malloc("M0", 8192, 512);
    r.malloc("M1", 8192, 512);
    r.malloc("M2", 8192, 4096);
    r.malloc("tiny", 2100, 512);
    let err = |o: CreateOpts| r.create(o).expect_err("must fail");
    let check = |e: MdError, errno: i32, text: &str| {
        assert_eq!(e.errno(), errno, "{e}");
        assert!(e.to_string().contains(text), "'{e}' lacks '{text}'");
    };

    check(err(opts("a", "raid1", &["M0", "nope"])), -19, "'nope' not found");
    check(err(opts("a", "raid1", &["M0"])), -22, "at least 2 members");
    check(err(opts("a", "raid1", &["M0", "M0"])), -16, "listed twice");
    check(err(opts("a", "raid5", &["M0", "M1"])), -22, "at least 3 members");
    check(err(opts("a", "raid6", &["M0", "M1", "M2"])), -22, "at least 4 members");
    let mut o = opts("a", "raid6", &["M0", "M1", "M2", "tiny"]);
    o.layout = Some("ddf-N-restart".into());
    check(err(o), -22, "DDF layout");
    let mut o = opts("a", "raid4", &["M0", "M1", "tiny"]);
    o.layout = Some("left-symmetric".into());
    check(err(o), -22, "'layout'");
    let mut o = opts("a", "raid5", &["M0", "M1", "tiny"]);
    o.layout = Some("left-symmetric-6".into());
    check(err(o), -22, "'layout'");
    check(err(opts("a", "raid7", &["M0", "M1"])), -22, "'level'");
    check(err(opts("", "raid1", &["M0", "M1"])), -22, "'name'");
    check(err(opts("a", "raid1", &["M0", "tiny"])), -22, "'tiny' has 2100 sectors");
    let mut o = opts("a", "raid0", &["M0", "M1"]);
    o.chunk_kb = Some(6);
    check(err(o), -22, "'chunk_kb'");
    let mut o = opts("a", "raid0", &["M0", "M1"]);
    o.chunk_kb = Some(2);
    check(err(o), -22, "'chunk_kb'");
    let mut o = opts("a", "raid0", &["M0", "M1"]);
    o.bitmap = Some("internal".into());
    check(err(o), -22, "not meaningful for raid0");
    let mut o = opts("a", "raid1", &["M0", "M1"]);
    o.bitmap = Some("external".into());
    check(err(o), -22, "'bitmap'");
    let mut o = opts("a", "raid10", &["M0", "M1"]);
    o.layout = Some("n3".into());
    check(err(o), -22, "'layout'");
    let mut o = opts("a", "raid1", &["M0", "M1"]);
    o.layout = Some("far2".into());
    check(err(o), -22, "'layout'");
    let mut o = opts("a", "raid1", &["M0", "M1"]);
    o.uuid = Some("zz".into());
    check(err(o), -22, "'uuid'");
    check(err(opts("M2", "raid1", &["M0", "M1"])), -17, "already in use");
    for m in ["M0", "M1", "M2", "tiny"] {
        assert_eq!(r.reg.get(m).unwrap().claimed_by(), None, "{m}");
        assert_eq!(r.reg.get(m).unwrap().open_count(), 0, "{m}");
    }
    assert!(r.reg.get("a").is_none());

    // A member another array holds; then a duplicate array name.
    r.create(opts("one", "raid1", &["M0", "M1"])).unwrap();
    check(err(opts("two", "linear", &["M2", "M1"])), -16, "'M1'");
    assert_eq!(r.reg.get("M2").unwrap().claimed_by(), None);
    check(err(opts("one", "linear", &["M2"])), -17, "already in use");
    // Mixed block sizes are fine (the array takes the largest).
    r.create(opts("two", "linear", &["M2"])).unwrap();
    assert_eq!(r.reg.get("two").unwrap().info().block_size, 4096);

    let e = r.stop("nope").expect_err("unknown array");
    check(e, -19, "'nope' not found");
    r.stop("one").unwrap();
    r.stop("two").unwrap();
    for m in ["M0", "M1", "M2"] {
        assert_eq!(r.reg.get(m).unwrap().claimed_by(), None, "{m}");
    }
}
