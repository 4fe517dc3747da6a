//! Data written through a raid0 array of unequal members (two zones, 4 KiB chunks) lands on
//! the members exactly where `md::raid0::Raid0` says, after data_offset; reads through the
//! array (whole-chunk forwards and chunk-crossing splits) return it; the superblocks say raid0.

mod common;

use common::{pattern, Rig};
use keel_bdev::{DmaBuf, IoOp, IoStatus};
use keel_md::array::default_data_offset_sectors;
use keel_md::raid0::{Raid0, Raid0Layout};
use keel_md::superblock::{feature, Superblock, V1_2_SUPER_OFFSET_SECTORS};

#[test]
fn raid0_data_lands_where_layout_says() {
    let r = Rig::new(1);
    r.malloc("M0", 8192, 512);
    r.malloc("M1", 12288, 512);
    r.create_simple("r0", "raid0", &["M0", "M1"], Some(4)).unwrap();
    let b = r.reg.get("r0").expect("array bdev named after the array");
    assert_eq!(b.claimed_by(), None);
    assert_eq!(r.reg.get("M0").unwrap().claimed_by().as_deref(), Some("md"));
    let data_offset = default_data_offset_sectors(8192, 8);
    assert_eq!(data_offset, 2048);
    let layout = Raid0::new(&[8192 - 2048, 12288 - 2048], 8, Raid0Layout::Original).unwrap();
    assert_eq!(layout.zone_count(), 2);
    assert_eq!(b.info().num_blocks, layout.size_sectors());
    let total = b.info().num_blocks;

    // Write the whole array in pieces of varying size (1..=37 blocks: inside a chunk, across
    // chunks, across the zone boundary).
    let data = pattern(7, (total * 512) as usize);
    let (mut at, mut step) = (0u64, 1u64);
    while at < total {
        let n = step.min(total - at);
        let s = r.write("r0", at, &data[(at * 512) as usize..((at + n) * 512) as usize]);
        assert_eq!(s, IoStatus::Success, "write at {at} len {n}");
        at += n;
        step = step % 37 + 1;
    }

    // Every sector is on its member at data_offset + the layout's sector.
    let m0 = r.read("M0", 0, 8192);
    let m1 = r.read("M1", 0, 12288);
    for s in 0..total {
        let (p, _) = layout.map(s);
        let member = if p.member.0 == 0 { &m0 } else { &m1 };
        let off = ((data_offset + p.sector) * 512) as usize;
        assert_eq!(
            &member[off..off + 512],
            &data[(s * 512) as usize..((s + 1) * 512) as usize],
            "array sector {s} -> {p:?}"
        );
    }

    // Reads through the array: whole and crossing chunks.
    for (off, n) in [(0u64, 8u64), (5, 20), (8192 - 2048 - 3, 17), (total - 9, 9), (0, 256)] {
        assert_eq!(
            r.read("r0", off, n),
            &data[(off * 512) as usize..((off + n) * 512) as usize]
        );
    }
    let buf = DmaBuf::new(512);
    assert_eq!(r.io("r0", IoOp::Flush, 0, 0, &buf), IoStatus::Success);

    // The superblocks: raid0, two zones → layout original with the feature bit.
    let sb = Superblock::decode(&r.read_bytes("M1", 4096, 4096), V1_2_SUPER_OFFSET_SECTORS).unwrap();
    assert_eq!((sb.level, sb.raid_disks, sb.chunk_sectors, sb.dev_number), (0, 2, 8, 1));
    assert_eq!(
        (sb.layout, sb.feature_map & feature::RAID0_LAYOUT),
        (1, feature::RAID0_LAYOUT)
    );
    assert_eq!((sb.data_offset_sectors, sb.data_size_sectors), (2048, 12288 - 2048));
    assert_eq!((sb.events, sb.is_clean()), (1, true));
    assert_eq!(sb.set_name, b"r0");

    r.stop("r0").unwrap();
    assert!(r.reg.get("r0").is_none());
    assert_eq!(r.reg.get("M0").unwrap().claimed_by(), None);
    let sb = Superblock::decode(&r.read_bytes("M0", 4096, 4096), V1_2_SUPER_OFFSET_SECTORS).unwrap();
    assert_eq!((sb.events, sb.is_clean(), sb.dev_number), (2, true, 0));
}

/// A one-zone raid0 publishes its mapping as a route (the bdev layer forwards fitting requests
/// without calling md), over two members (shifts) and three (a reciprocal multiply); one of
/// unequal members (two zones) does not. Either way data lands where the layout says and reads
/// back, across chunks too.
#[test]
fn raid0_of_one_zone_is_routed_and_lands_where_layout_says() {
    let r = Rig::new(1);
    for m in ["A0", "A1", "B0", "B1", "B2", "C0", "C1"] {
        r.malloc(m, 8192, 512);
    }
    r.malloc("C2", 4096, 512);
    r.create_simple("two", "raid0", &["A0", "A1"], Some(4)).unwrap();
    r.create_simple("three", "raid0", &["B0", "B1", "B2"], Some(4)).unwrap();
    r.create_simple("uneven", "raid0", &["C0", "C1", "C2"], Some(4))
        .unwrap();
    let data_offset = default_data_offset_sectors(8192, 8);
    for (name, members, routed) in [
        ("two", &["A0", "A1"][..], true),
        ("three", &["B0", "B1", "B2"][..], true),
        ("uneven", &["C0", "C1", "C2"][..], false),
    ] {
        let is_routed = r.d.enter(common::MAIN, || {
            let desc = r.reg.open(name, false, |_| {}).unwrap();
            desc.channel().is_routed()
        });
        assert_eq!(is_routed, routed, "{name}");
        let sizes: Vec<u64> = members
            .iter()
            .map(|m| r.reg.get(m).unwrap().info().num_blocks - data_offset)
            .collect();
        let layout = Raid0::new(&sizes, 8, Raid0Layout::Original).unwrap();
        assert_eq!(layout.zone_count() == 1, routed, "{name}: zones");
        let total = r.reg.get(name).unwrap().info().num_blocks;
        let data = pattern(11, (total * 512) as usize);
        let (mut at, mut step) = (0u64, 1u64);
        while at < total {
            let n = step.min(total - at);
            let s = r.write(name, at, &data[(at * 512) as usize..((at + n) * 512) as usize]);
            assert_eq!(s, IoStatus::Success, "{name}: write at {at} len {n}");
            at += n;
            step = step % 13 + 1;
        }
        let images: Vec<Vec<u8>> = members
            .iter()
            .map(|m| r.read(m, 0, r.reg.get(m).unwrap().info().num_blocks))
            .collect();
        for s in 0..total {
            let (p, _) = layout.map(s);
            let off = ((data_offset + p.sector) * 512) as usize;
            assert_eq!(
                &images[p.member.0 as usize][off..off + 512],
                &data[(s * 512) as usize..((s + 1) * 512) as usize],
                "{name}: array sector {s} -> {p:?}"
            );
        }
        for (off, n) in [(0u64, 8u64), (3, 2), (5, 20), (total - 9, 9)] {
            assert_eq!(
                r.read(name, off, n),
                &data[(off * 512) as usize..((off + n) * 512) as usize]
            );
        }
    }
}
