//! Data written through a linear array lands on its members in role order after data_offset,
//! including across the member boundary and onto a member of a smaller block size (the array
//! takes the largest: 4096).

mod common;

use common::{pattern, Rig};
use keel_bdev::IoStatus;
use keel_md::linear::Linear;
use keel_md::superblock::{Superblock, V1_2_SUPER_OFFSET_SECTORS};

#[test]
fn linear_data_lands_in_role_order() {
    let r = Rig::new(1);
    r.malloc("A", 8192, 512); // 8192 sectors
    r.malloc("B", 2048, 4096); // 16384 sectors
    r.create_simple("lin", "linear", &["A", "B"], None).unwrap();
    let info = r.reg.get("lin").unwrap().info().clone();
    assert_eq!(info.block_size, 4096);
    let layout = Linear::new(&[8192 - 2048, 16384 - 2048]).unwrap();
    assert_eq!(info.num_blocks * 8, layout.size_sectors());

    let data = pattern(3, (info.num_blocks * 4096) as usize);
    let (mut at, mut step) = (0u64, 1u64);
    while at < info.num_blocks {
        let n = step.min(info.num_blocks - at);
        let s = r.write("lin", at, &data[(at * 4096) as usize..((at + n) * 4096) as usize]);
        assert_eq!(s, IoStatus::Success, "write at {at} len {n}");
        at += n;
        step = step % 13 + 1;
    }
    let a = r.read("A", 0, 8192);
    let b = r.read("B", 0, 2048);
    for s in 0..layout.size_sectors() {
        let (p, _) = layout.map(s);
        let m = if p.member.0 == 0 { &a } else { &b };
        let off = ((2048 + p.sector) * 512) as usize;
        assert_eq!(
            &m[off..off + 512],
            &data[(s * 512) as usize..((s + 1) * 512) as usize],
            "sector {s}"
        );
    }
    // A read across the boundary (block 768 = sector 6144 is the first of B).
    assert_eq!(r.read("lin", 760, 16), &data[760 * 4096..776 * 4096]);

    let sb = Superblock::decode(&r.read_bytes("B", 4096, 4096), V1_2_SUPER_OFFSET_SECTORS).unwrap();
    assert_eq!(
        (sb.level, sb.raid_disks, sb.dev_number, sb.chunk_sectors),
        (-1, 2, 1, 0)
    );
    r.stop("lin").unwrap();
}
