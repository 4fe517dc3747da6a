//! `md_set_stripe_cache`: a raid5 shows Linux's default (256) in md_get_arrays, takes sizes in
//! 17..32768 and refuses others with the parameter named, changes size under I/O (shrink to the
//! minimum, grow to the maximum: data written at each size reads back), and levels without
//! parity refuse it.

mod common;

use common::{pattern, Rig};
use keel_md::{CreateOpts, MdError};

#[test]
fn stripe_cache_size_is_shown_bounded_and_followed() {
    let r = Rig::new(1);
    for m in ["A", "B", "C", "D", "E"] {
        r.malloc(m, 8192, 512);
    }
    r.create(CreateOpts {
        name: "r5".into(),
        level: "raid5".into(),
        members: vec!["A".into(), "B".into(), "C".into()],
        chunk_kb: Some(16),
        assume_clean: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.array("r5").stripe_cache_size, Some(256));
    assert_eq!(r.array("r5").to_json()["stripe_cache_size"], 256);
    for bad in [0, 16, 32769] {
        let e = r.md.set_stripe_cache("r5", bad).unwrap_err();
        assert!(matches!(e, MdError::InvalidParam { .. }), "{e:?}");
        assert!(e.to_string().contains("entries"), "{e}");
    }
    assert_eq!(r.array("r5").stripe_cache_size, Some(256));
    assert!(matches!(r.md.set_stripe_cache("nope", 64), Err(MdError::NotFound(_))));
    let size = r.reg.get("r5").unwrap().info().num_blocks;
    for (i, entries) in [17u32, 32768, 17, 256].into_iter().enumerate() {
        r.md.set_stripe_cache("r5", entries).unwrap();
        assert_eq!(r.array("r5").stripe_cache_size, Some(entries));
        r.run_for_ms(5);
        let data = pattern(i as u64 + 3, 96 * 512);
        let at = (i as u64 * 1000) % (size - 96);
        assert!(r.write("r5", at, &data).is_success());
        assert_eq!(r.read("r5", at, 96), data);
    }
    r.create_simple("m1", "raid1", &["D", "E"], None).unwrap();
    assert_eq!(r.array("m1").stripe_cache_size, None);
    assert!(matches!(r.md.set_stripe_cache("m1", 64), Err(MdError::Unsupported(_))));
    r.stop("r5").unwrap();
    r.stop("m1").unwrap();
}
