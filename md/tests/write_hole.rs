//! The write hole: a raid6 stopped dirty (its initial resync frozen half way) and then missing
//! a member is refused by assembly with an error naming the reason, changes nothing, and starts
//! with `force`; a raid5 stopped clean starts degraded without it.

mod common;

use common::Rig;
use keel_md::superblock::MAX_SECTOR;
use keel_md::{AssembleOpts, CreateOpts, MdError};

fn members(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn dirty_and_degraded_parity_arrays_need_force() {
    let r = Rig::new(1);
    let six = members("S", 5);
    let five = members("F", 4);
    for m in six.iter().chain(&five) {
        r.malloc(m, 16384, 512);
    }
    r.create(CreateOpts {
        name: "six".into(),
        level: "raid6".into(),
        members: six.clone(),
        bitmap: Some("none".into()),
        chunk_kb: Some(64),
        ..Default::default()
    })
    .unwrap();
    r.md.set_sync_action("six", "frozen").unwrap();
    r.stop("six").unwrap();
    assert_ne!(r.superblock("S0").resync_offset, MAX_SECTOR, "stopped dirty");

    let opts = |force| AssembleOpts {
        name: Some("six".into()),
        members: Some(six[..4].to_vec()),
        force,
        ..Default::default()
    };
    let e = r.assemble(opts(false)).unwrap_err();
    assert!(matches!(e, MdError::Busy(_)), "{e:?}");
    assert!(e.to_string().contains("dirty and degraded"), "{e}");
    assert!(e.to_string().contains("force"), "{e}");
    assert!(r.reg.get("six").is_none());
    assert!(r.reg.get("S0").unwrap().claimed_by().is_none(), "nothing stays claimed");
    assert_eq!(r.assemble(opts(true)).unwrap(), "six");
    assert!(r.array("six").state.contains("degraded"));
    r.stop("six").unwrap();

    // Clean and degraded: no force needed.
    r.create(CreateOpts {
        name: "five".into(),
        level: "raid5".into(),
        members: five.clone(),
        assume_clean: true,
        chunk_kb: Some(64),
        ..Default::default()
    })
    .unwrap();
    r.stop("five").unwrap();
    let got = r.assemble(AssembleOpts {
        name: Some("five".into()),
        members: Some(five[1..].to_vec()),
        ..Default::default()
    });
    assert_eq!(got.unwrap(), "five");
    assert!(r.array("five").state.contains("degraded"));
    r.stop("five").unwrap();
}
