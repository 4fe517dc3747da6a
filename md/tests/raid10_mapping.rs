//! Data written through raid10 arrays (near, far and offset layouts; 4 and 3 members; 4 KiB
//! chunks) lands on every copy exactly where `md::raid10::Raid10` says, after data_offset;
//! reads through the array (forwarded single-chunk reads and chunk-crossing splits) return it;
//! md_get_arrays and the superblocks carry the layout word.

mod common;

use common::{pattern, Rig};
use keel_bdev::IoStatus;
use keel_md::layout::{MemberIdx, Place, MAX_COPIES};
use keel_md::raid10::Raid10;
use keel_md::superblock::{Superblock, V1_2_SUPER_OFFSET_SECTORS};
use keel_md::CreateOpts;

fn check(members: usize, layout: &str, word: u32, text: &str) {
    let r = Rig::new(1);
    let names: Vec<String> = (0..members).map(|i| format!("M{i}")).collect();
    for n in &names {
        r.malloc(n, 8192, 512);
    }
    r.create(CreateOpts {
        name: "r10".into(),
        level: "raid10".into(),
        members: names.clone(),
        chunk_kb: Some(4),
        layout: Some(layout.into()),
        assume_clean: true,
        ..Default::default()
    })
    .unwrap();
    let sb = Superblock::decode(&r.read_bytes("M0", 4096, 4096), V1_2_SUPER_OFFSET_SECTORS).unwrap();
    assert_eq!((sb.level, sb.layout, sb.chunk_sectors), (10, word, 8));
    let a = r.array("r10");
    assert_eq!(a.layout.as_deref(), Some(text));
    let data_offset = sb.data_offset_sectors;
    let geo = Raid10::new(word, members as u32, 8, sb.size_sectors).unwrap();
    let total = r.reg.get("r10").unwrap().info().num_blocks;
    assert_eq!(total, geo.size_sectors());

    let data = pattern(members as u64 * 31 + word as u64, (total * 512) as usize);
    let (mut at, mut step) = (0u64, 1u64);
    while at < total {
        let n = step.min(total - at);
        let s = r.write("r10", at, &data[(at * 512) as usize..((at + n) * 512) as usize]);
        assert_eq!(s, IoStatus::Success, "write at {at} len {n}");
        at += n;
        step = step % 29 + 1;
    }
    let images: Vec<Vec<u8>> = names.iter().map(|n| r.read(n, 0, 8192)).collect();
    let mut out = [Place {
        member: MemberIdx(0),
        sector: 0,
    }; MAX_COPIES];
    for s in 0..total {
        let (k, _) = geo.map(s, &mut out);
        assert_eq!(k, 2);
        for p in &out[..k] {
            let off = ((data_offset + p.sector) * 512) as usize;
            assert_eq!(
                &images[p.member.0 as usize][off..off + 512],
                &data[(s * 512) as usize..((s + 1) * 512) as usize],
                "{layout}/{members}: sector {s} copy on member {} sector {}",
                p.member.0,
                p.sector
            );
        }
    }
    // Reads through the array: single blocks, chunk-crossing runs.
    for (at, n) in [(0u64, 1u64), (7, 3), (100, 64), (total - 9, 9)] {
        assert_eq!(
            r.read("r10", at, n),
            &data[(at * 512) as usize..((at + n) * 512) as usize],
            "{layout}: read {at}+{n}"
        );
    }
    r.stop("r10").unwrap();
}

#[test]
fn raid10_near_far_offset_land_where_layout_says() {
    check(4, "n2", 0x102, "near=2");
    check(3, "n2", 0x102, "near=2");
    check(4, "f2", 0x201, "far=2");
    check(3, "o2", 0x10201, "offset=2");
}
